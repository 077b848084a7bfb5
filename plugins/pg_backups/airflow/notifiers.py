"""Slack from Airflow: the failure notifier every task carries, and plain messages (drift repaired,
a restore test passed), both through the Slack provider on connection ``alerts.slack_conn_id``.

Airflow calls the notifier after the task's own failure is recorded; ``on_failure_callback`` fires
only after the last retry (no spam), ``on_retry_callback`` only when ``alerts.notify_on_retry``.
An unreachable Slack never hides the original failure.
"""

from __future__ import annotations

import logging

from airflow.providers.slack.hooks.slack_webhook import SlackWebhookHook
from airflow.providers.slack.notifications.slack_webhook import SlackWebhookNotifier

from pg_backups import alerts
from pg_backups.errors import PgBackupsError

log = logging.getLogger(__name__)

# One Jinja template for every failure alert: what failed, cluster, DAG, task, try, error, log link.
FAILURE_TEXT = (
    ":red_circle: *{{{{ alert_title }}}}* - cluster `{cluster}`\n"
    "*DAG:* `{{{{ dag.dag_id }}}}`  *Task:* `{{{{ ti.task_id }}}}`  *Try:* {{{{ ti.try_number }}}}\n"
    "*Run:* `{{{{ run_id }}}}`\n"
    "*Error:* {{{{ error_summary }}}}\n"
    "*Log:* {{{{ ti.log_url }}}}{{{{ log_url_note }}}}"
)
RETRY_TEXT = (
    ":warning: *{{{{ alert_title }}}}, retrying* - cluster `{cluster}` - `{{{{ dag.dag_id }}}}.{{{{ ti.task_id }}}}` "
    "try {{{{ ti.try_number }}}}: {{{{ error_summary }}}} {{{{ ti.log_url }}}}"
)
# What failed, by the purpose of the DAG (common.dag_args): the title of its alerts.
TITLES = {"pgbackrest": "Backup failed", "walg": "Backup failed", "restore-test": "Restore test failed",
          "s3": "Bucket configuration failed", "monitoring": "Backup freshness check failed"}
QA_REJECTED = "QA rejected the restore test"
# Airflow's default [api] base_url: a link to it is no use to anyone reading Slack elsewhere.
DEFAULT_BASE_URL = "http://localhost:8080"


def title_for(purpose: str, exception) -> str:
    if str(exception or "").startswith(QA_REJECTED):
        return "Restore test rejected by QA"
    return TITLES.get(purpose, "Backup job failed")


def log_url_note(log_url: str | None) -> str:
    if log_url and log_url.startswith(DEFAULT_BASE_URL):
        log.warning("Slack alert links to %s: set [api] base_url (AIRFLOW__API__BASE_URL) to the UI's address",
                    DEFAULT_BASE_URL)
        return " (this link points at localhost: set AIRFLOW__API__BASE_URL)"
    return ""


def _airflow_mask(text: str) -> str:
    """What Airflow masks (connection passwords, values registered with mask_secret)."""
    from airflow.sdk.log import redact

    return str(redact(text))


def error_summary(exception) -> str:
    """The alert's error line. A failure made final by :func:`pg_backups.airflow.common.task_body`
    is reported as the error that caused it, not as the AirflowFailException that carries it."""
    cause = getattr(exception, "__cause__", None)
    if isinstance(cause, PgBackupsError):
        exception = cause
    return alerts.error_summary(exception, mask=_airflow_mask)


class OpsSlackNotifier(SlackWebhookNotifier):
    """The Slack provider's notifier, made safe to share and to fail.

    * ``error_summary`` (redacted, one line) joins the template context;
    * the template is rendered from its original text on every call: one instance serves every
      task of a DAG (``default_args``), and rendering replaces ``text`` in place;
    * a Slack that cannot be reached is logged as a warning and swallowed: the task's own failure
      stays the one recorded (Airflow would log and ignore it too, with a traceback).
    """

    def __init__(self, *, text: str, purpose: str = "", **kwargs):
        super().__init__(text=text, **kwargs)
        self._template_text, self._purpose = text, purpose

    def _update_context(self, context):
        exception = context.get("exception")
        context["error_summary"] = error_summary(exception)
        context["alert_title"] = title_for(self._purpose, exception)
        ti = context.get("ti")
        context["log_url_note"] = log_url_note(getattr(ti, "log_url", None))
        return super()._update_context(context)

    def render_template_fields(self, context, jinja_env=None):
        self.text = self._template_text
        super().render_template_fields(context, jinja_env)

    def notify(self, context):
        if getattr(context.get("exception"), "already_reported", False):
            log.info("no Slack alert: this failure was reported already (%s)", context.get("exception"))
            return
        try:
            super().notify(context)
        except Exception as exc:  # noqa: BLE001 - an alert must never replace the failure
            log.warning("Slack alert not sent (%s: %s); the task's own state and error stand",
                        type(exc).__name__, alerts.redact_text(str(exc))[:200])


def _notifier(cluster, template: str, purpose: str) -> OpsSlackNotifier:
    return OpsSlackNotifier(slack_webhook_conn_id=cluster.alerts.slack_conn_id, purpose=purpose,
                            text=template.format(cluster=cluster.name), timeout=alerts.SLACK_TIMEOUT_SECONDS)


def failure_notifier(cluster, purpose: str = "") -> OpsSlackNotifier:
    return _notifier(cluster, FAILURE_TEXT, purpose)


def retry_notifier(cluster, purpose: str = "") -> OpsSlackNotifier:
    return _notifier(cluster, RETRY_TEXT, purpose)


def post(cluster, text: str) -> None:
    """A message that is not a failure (drift repaired, restore test summary)."""
    hook = SlackWebhookHook(slack_webhook_conn_id=cluster.alerts.slack_conn_id, timeout=alerts.SLACK_TIMEOUT_SECONDS)
    alerts.send(hook.client, text)
