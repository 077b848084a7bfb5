"""Slack alerts for the Ops channel, in one format for every DAG and task.

Airflow calls the notifier after the task's own failure is recorded; a notifier that raises is
logged by Airflow and changes nothing about the task's state, so an unreachable Slack never
hides the original failure. ``on_failure_callback`` fires only after the last retry (no spam);
``on_retry_callback`` only when ``alerts.notify_on_retry`` is true.

The error line is a one-line summary (exception type and first line of its message), with every
secret Airflow knows (connection passwords, masked values), every secret of the environment and
any credentials in a URL replaced by ``***``.
"""

from __future__ import annotations

import logging
import os
import re

log = logging.getLogger(__name__)

ERROR_SUMMARY_CHARS = 400
_URL_USERINFO = re.compile(r"(\w+://)[^/\s:@]+(?::[^/\s@]*)?@")
_SECRET_ASSIGNMENT = re.compile(r"(?i)\b([\w-]*(?:password|passwd|secret|token|key-secret|api[_-]?key)[\w-]*)"
                                r"(\s*[=:]\s*)([^\s,;'\"]+)")
_SLACK_WEBHOOK_PATH = re.compile(r"(hooks\.slack\.com/services/|/services/)[A-Za-z0-9/_-]+")


def redact_text(text: str) -> str:
    """Text safe for Slack: known secrets, environment secrets, URL credentials, key=value secrets."""
    from pg_backups import runner

    try:
        from airflow.sdk.log import redact as airflow_redact

        text = str(airflow_redact(text))
    except Exception:  # noqa: BLE001 - outside a task (cron, tests): the other rules still apply
        pass
    text = runner.redact(text, runner.secrets_of(dict(os.environ)))
    text = _URL_USERINFO.sub(r"\1***@", text)
    text = _SECRET_ASSIGNMENT.sub(r"\1\2***", text)
    return _SLACK_WEBHOOK_PATH.sub(r"\1***", text)


def error_summary(exception, limit: int = ERROR_SUMMARY_CHARS) -> str:
    """``Type: first line of the message``, redacted and cut to ``limit`` characters."""
    if exception is None:
        return "no exception recorded (killed, timed out or marked failed): see the log"
    if isinstance(exception, BaseException):
        message = str(exception).strip()
        name = type(exception).__name__
        first = message.splitlines()[0] if message else ""
        text = f"{name}: {first}" if first else name
    else:
        text = str(exception).strip().splitlines()[0] if str(exception).strip() else "see the log"
    text = redact_text(text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# One Jinja template for every failure alert: cluster, DAG, task, try, error, log link.
FAILURE_TEXT = (
    ":red_circle: *Backup job failed* - cluster `{cluster}`\n"
    "*DAG:* `{{{{ dag.dag_id }}}}`  *Task:* `{{{{ ti.task_id }}}}`  *Try:* {{{{ ti.try_number }}}}\n"
    "*Run:* `{{{{ run_id }}}}`\n"
    "*Error:* {{{{ error_summary }}}}\n"
    "*Log:* {{{{ ti.log_url }}}}"
)
RETRY_TEXT = (
    ":warning: *Backup job retrying* - cluster `{cluster}` - `{{{{ dag.dag_id }}}}.{{{{ ti.task_id }}}}` "
    "try {{{{ ti.try_number }}}}: {{{{ error_summary }}}} {{{{ ti.log_url }}}}"
)


def _notifier_class():
    """Built on first use (Airflow is imported only where it runs), then a module attribute."""
    if "OpsSlackNotifier" in globals():
        return globals()["OpsSlackNotifier"]
    from airflow.providers.slack.notifications.slack_webhook import SlackWebhookNotifier

    class OpsSlackNotifier(SlackWebhookNotifier):
        """The Slack provider's notifier, made safe to share and to fail.

        * ``error_summary`` (redacted, one line) joins the template context;
        * the template is rendered from its original text on every call: one instance serves
          every task of a DAG (``default_args``), and rendering replaces ``text`` in place;
        * a Slack that cannot be reached is logged as a warning and swallowed: the task's own
          failure stays the one recorded (Airflow would log and ignore it too, with a traceback).
        """

        def __init__(self, *, text: str, **kwargs):
            super().__init__(text=text, **kwargs)
            self._template_text = text

        def _update_context(self, context):
            context["error_summary"] = error_summary(context.get("exception"))
            return super()._update_context(context)

        def render_template_fields(self, context, jinja_env=None):
            self.text = self._template_text
            super().render_template_fields(context, jinja_env)

        def notify(self, context):
            try:
                super().notify(context)
            except Exception as exc:  # noqa: BLE001 - an alert must never replace the failure
                log.warning("Slack alert not sent (%s: %s); the task's own state and error stand",
                            type(exc).__name__, redact_text(str(exc))[:200])

    OpsSlackNotifier.__qualname__ = "OpsSlackNotifier"  # picklable as pg_backups.alerts.OpsSlackNotifier
    globals()["OpsSlackNotifier"] = OpsSlackNotifier
    return OpsSlackNotifier


def _notifier(cluster, template: str):
    return _notifier_class()(slack_webhook_conn_id=cluster.alerts.slack_conn_id,
                             text=template.format(cluster=cluster.name), timeout=10)


def failure_notifier(cluster):
    return _notifier(cluster, FAILURE_TEXT)


def retry_notifier(cluster):
    return _notifier(cluster, RETRY_TEXT)


def post(cluster, text: str) -> None:
    """A message that is not a failure (drift repaired, restore test summary)."""
    from airflow.providers.slack.hooks.slack_webhook import SlackWebhookHook

    SlackWebhookHook(slack_webhook_conn_id=cluster.alerts.slack_conn_id, timeout=10).send(text=text)
