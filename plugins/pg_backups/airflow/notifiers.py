"""Alerts from Airflow: the failure notifiers every task carries, and plain messages (drift repaired,
a restore test passed), through Airflow's own providers: Slack (``alerts.slack_conn_id``), e-mail
(the SMTP provider's ``SmtpNotifier``, ``alerts.email_conn_id``) and PagerDuty (the PagerDuty
provider's ``PagerdutyNotifier``, ``alerts.pagerduty_conn_id``).

Which channels: by severity, per cluster (``alerts.critical_channels``, ``alerts.warning_channels``).
Critical: a task failed after its retries (backup, restore test, freshness check). Warning: a retry,
a bucket drift repaired, the bucket DAG failing (the backups' own alerts say when the bucket is
unusable). Info (a restore test passed): Slack only, as before.

Every channel carries the same one-line, redacted error summary (``error_summary``); e-mail and
PagerDuty carry the same line as subject and summary (``ONE_LINE``). Airflow calls a notifier after
the task's own failure is recorded; ``on_failure_callback`` fires only after the last retry (no
spam), ``on_retry_callback`` only when ``alerts.notify_on_retry``. An unreachable channel never
hides the original failure, nor stops the other channels.
"""

from __future__ import annotations

import logging
import re
from html import escape
from typing import TYPE_CHECKING

from airflow.providers.pagerduty.hooks.pagerduty_events import PagerdutyEventsHook, prepare_event_data
from airflow.providers.pagerduty.notifications.pagerduty import PagerdutyNotifier
from airflow.providers.slack.hooks.slack_webhook import SlackWebhookHook
from airflow.providers.slack.notifications.slack_webhook import SlackWebhookNotifier
from airflow.providers.smtp.hooks.smtp import SmtpHook
from airflow.providers.smtp.notifications.smtp import SmtpNotifier

from pg_backups import alerts
from pg_backups.errors import PgBackupsError

if TYPE_CHECKING:
    from pg_backups.config import Cluster

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
# E-mail subject and PagerDuty summary: what failed, where, and the error, on one line.
ONE_LINE = ("{{{{ alert_title }}}} - cluster {cluster} - {{{{ dag.dag_id }}}}.{{{{ ti.task_id }}}} "
            "try {{{{ ti.try_number }}}}: {{{{ error_summary }}}}")
RETRY_LINE = ("{{{{ alert_title }}}}, retrying - cluster {cluster} - {{{{ dag.dag_id }}}}.{{{{ ti.task_id }}}} "
              "try {{{{ ti.try_number }}}}: {{{{ error_summary }}}}")
# The e-mail body: the line, then the run and the log (HTML-escaped: an error may hold '<').
MAIL_BODY = ("<p>{{{{ alert_line | e }}}}</p><p>Run: {{{{ run_id | e }}}}<br>"
             "Log: <a href=\"{{{{ ti.log_url | e }}}}\">{{{{ ti.log_url | e }}}}</a>{{{{ log_url_note | e }}}}</p>")
# One incident per failed task of a run: a second alert for it (a retry) updates the same incident.
DEDUP_KEY = "pg_backups/{cluster}/{{{{ dag.dag_id }}}}/{{{{ ti.task_id }}}}/{{{{ run_id }}}}"
CRITICAL, WARNING, INFO = "critical", "warning", "info"
# What failed, by the purpose of the DAG (common.dag_args): the title of its alerts.
TITLES = {"pgbackrest": "Backup failed", "walg": "Backup failed", "restore-test": "Restore test failed",
          "s3": "Bucket configuration failed", "monitoring": "Backup freshness check failed",
          "configuration": "Configuration alert failed"}
QA_REJECTED = "QA rejected the restore test"
# A failure after the retries, by purpose: a bucket DAG failing is a warning (see the module doc).
FAILURE_SEVERITY = {"s3": WARNING}
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


class _OpsAlert:
    """What makes a provider's notifier safe to share and to fail, whatever the channel.

    * ``error_summary`` (redacted, one line), ``alert_title`` and ``alert_line`` join the context;
    * the templates are rendered from their original text on every call: one instance serves every
      task of a DAG (``default_args``), and rendering replaces the fields in place;
    * a channel that cannot be reached is logged as a warning and swallowed: the task's own failure
      stays the one recorded (Airflow would log and ignore it too, with a traceback).
    """

    channel = ""
    _templated: tuple[str, ...] = ()

    def _keep_templates(self, purpose: str, line: str = "") -> None:
        self._purpose, self._line = purpose, line
        self._templates = {name: getattr(self, name) for name in self._templated}

    def _update_context(self, context):
        exception = context.get("exception")
        context["error_summary"] = error_summary(exception)
        context["alert_title"] = title_for(self._purpose, exception)
        ti = context.get("ti")
        context["log_url_note"] = log_url_note(getattr(ti, "log_url", None))
        if self._line:
            context["alert_line"] = self.get_template_env(dag=context.get("dag")).from_string(self._line).render(
                **context)
        return super()._update_context(context)

    def render_template_fields(self, context, jinja_env=None):
        for name, template in self._templates.items():
            setattr(self, name, template)
        super().render_template_fields(context, jinja_env)

    def notify(self, context):
        if getattr(context.get("exception"), "already_reported", False):
            log.info("no Slack alert: this failure was reported already (%s)", context.get("exception"))
            return
        try:
            self._deliver(context)
        except Exception as exc:  # noqa: BLE001 - an alert must never replace the failure
            log.warning("%s alert not sent (%s: %s); the task's own state and error stand", self.channel,
                        type(exc).__name__, alerts.redact_text(str(exc))[:200])

    def _deliver(self, context):
        super().notify(context)  # the provider's notifier


class OpsSlackNotifier(_OpsAlert, SlackWebhookNotifier):
    """The Slack provider's notifier (``alerts.slack_conn_id``)."""

    channel, _templated = "Slack", ("text",)

    def __init__(self, *, text: str, purpose: str = "", **kwargs):
        super().__init__(text=text, **kwargs)
        self._keep_templates(purpose)


class OpsEmailNotifier(_OpsAlert, SmtpNotifier):
    """The SMTP provider's notifier (``alerts.email_conn_id``): subject the alert's line, body the
    line, the run and the log link; from the connection's ``from_email``."""

    channel, _templated = "E-mail", ("subject", "html_content")

    def __init__(self, *, line: str, purpose: str = "", **kwargs):
        super().__init__(subject=line, html_content=MAIL_BODY.format(), **kwargs)
        self._keep_templates(purpose, line)


class OpsPagerdutyNotifier(_OpsAlert, PagerdutyNotifier):
    """The PagerDuty provider's notifier (``alerts.pagerduty_conn_id``, password = integration key).

    Its hook posts to https://events.pagerduty.com only (the ``pagerduty`` client takes a base URL,
    the hook passes none): ``notify`` sends the same event (the provider's ``prepare_event_data``)
    through that client with ``alerts.pagerduty_events_url``, for an EU account or a stand-in."""

    channel, _templated = "PagerDuty", ("summary", "dedup_key", "component", "custom_details")

    def __init__(self, *, events_url: str, purpose: str = "", **kwargs):
        super().__init__(**kwargs)
        self._events_url = events_url
        self._keep_templates(purpose)

    def _deliver(self, context):
        _send_pagerduty(self.pagerduty_events_conn_id, self._events_url, prepare_event_data(
            summary=self.summary[:1024], severity=self.severity, source=self.source, action=self.action,
            dedup_key=self.dedup_key, custom_details=self.custom_details, component=self.component,
            group=self.group, class_type=self.class_type, links=self.links))


def _send_pagerduty(conn_id: str, events_url: str, event: dict) -> str:
    import pagerduty

    key = PagerdutyEventsHook(pagerduty_events_conn_id=conn_id).integration_key
    client = pagerduty.EventsApiV2Client(key, base_url=events_url)
    client.timeout = alerts.SLACK_TIMEOUT_SECONDS
    return client.send_event(**event)


def channels(cluster: Cluster, severity: str) -> list[str]:
    if severity == CRITICAL:
        return list(cluster.alerts.critical_channels)
    if severity == WARNING:
        return list(cluster.alerts.warning_channels)
    return ["slack"]


def _notifiers(cluster: Cluster, severity: str, purpose: str, slack_text: str, line: str) -> list:
    a, name = cluster.alerts, cluster.name
    out = []
    for channel in channels(cluster, severity):
        if channel == "slack":
            out.append(OpsSlackNotifier(slack_webhook_conn_id=a.slack_conn_id, purpose=purpose,
                                        text=slack_text.format(cluster=name), timeout=alerts.SLACK_TIMEOUT_SECONDS))
        elif channel == "email":
            out.append(OpsEmailNotifier(smtp_conn_id=a.email_conn_id, to=list(a.email_to), purpose=purpose,
                                        line=line.format(cluster=name)))
        elif channel == "pagerduty":
            out.append(OpsPagerdutyNotifier(
                pagerduty_events_conn_id=a.pagerduty_conn_id, events_url=a.pagerduty_events_url, purpose=purpose,
                summary=line.format(cluster=name), severity=severity, source=name,
                component="{{ dag.dag_id }}.{{ ti.task_id }}", dedup_key=DEDUP_KEY.format(cluster=name),
                custom_details={"run_id": "{{ run_id }}", "log_url": "{{ ti.log_url }}"}))
    return out


def failure_notifiers(cluster: Cluster, purpose: str = "") -> list:
    """The notifiers of a final failure, one per channel of its severity."""
    return _notifiers(cluster, FAILURE_SEVERITY.get(purpose, CRITICAL), purpose, FAILURE_TEXT, ONE_LINE)


def retry_notifiers(cluster: Cluster, purpose: str = "") -> list:
    return _notifiers(cluster, WARNING, purpose, RETRY_TEXT, RETRY_LINE)


def failure_notifier(cluster: Cluster, purpose: str = "") -> OpsSlackNotifier:
    """The Slack notifier of a final failure (whatever the channels: for its format)."""
    return OpsSlackNotifier(slack_webhook_conn_id=cluster.alerts.slack_conn_id, purpose=purpose,
                            text=FAILURE_TEXT.format(cluster=cluster.name), timeout=alerts.SLACK_TIMEOUT_SECONDS)


_MRKDWN = re.compile(r"^:[a-z_]+:\s*|[*`]")


def plain(text: str) -> str:
    """A Slack message without its emoji and mrkdwn marks, for the other channels."""
    return "\n".join(_MRKDWN.sub("", line) for line in text.splitlines())


def post(cluster: Cluster, text: str, severity: str = INFO) -> None:
    """A message that is not a failure (drift repaired: WARNING; restore test summary: INFO, Slack
    only). Each channel of the severity; a channel that fails is logged, the others still go, and
    the first failure is raised at the end (the caller decides whether it matters)."""
    text = alerts.redact_text(text)
    failed = None
    for channel in channels(cluster, severity):
        try:
            if channel == "slack":
                hook = SlackWebhookHook(slack_webhook_conn_id=cluster.alerts.slack_conn_id,
                                        timeout=alerts.SLACK_TIMEOUT_SECONDS)
                alerts.send(hook.client, text)
            elif channel == "email":
                lines = plain(text).splitlines()
                with SmtpHook(smtp_conn_id=cluster.alerts.email_conn_id) as smtp:
                    smtp.send_email_smtp(to=list(cluster.alerts.email_to), subject=lines[0],
                                         html_content="<br>".join(escape(line) for line in lines))
            elif channel == "pagerduty":
                _send_pagerduty(cluster.alerts.pagerduty_conn_id, cluster.alerts.pagerduty_events_url,
                                prepare_event_data(summary=plain(text).splitlines()[0][:1024], severity=severity,
                                                   source=cluster.name))
        except Exception as exc:  # noqa: BLE001 - one channel down must not silence the others
            log.warning("%s message not sent (%s: %s)", channel, type(exc).__name__, alerts.redact_text(str(exc))[:200])
            failed = failed or exc
    if failed is not None:
        raise failed
