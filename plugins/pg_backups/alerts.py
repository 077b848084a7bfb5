"""Slack alerts for the Ops channel, in one format for every DAG and task.

Airflow calls the notifier after the task's own failure is recorded; a notifier that raises is
logged by Airflow and changes nothing about the task's state, so an unreachable Slack never
hides the original failure. ``on_failure_callback`` fires only after the last retry (no spam).
"""

from __future__ import annotations

# One Jinja template for every failure alert: cluster, DAG, task, try, error, log link.
FAILURE_TEXT = (
    ":red_circle: *Backup job failed* - cluster `{cluster}`\n"
    "*DAG:* `{{{{ dag.dag_id }}}}`  *Task:* `{{{{ ti.task_id }}}}`  *Try:* {{{{ ti.try_number }}}}\n"
    "*Run:* `{{{{ run_id }}}}`\n"
    "*Error:* {{{{ (exception | string | truncate(400)) if exception else 'see log' }}}}\n"
    "*Log:* {{{{ ti.log_url }}}}"
)
RETRY_TEXT = (
    ":warning: *Backup job retrying* - cluster `{cluster}` - `{{{{ dag.dag_id }}}}.{{{{ ti.task_id }}}}` "
    "try {{{{ ti.try_number }}}}: {{{{ (exception | string | truncate(300)) if exception else '' }}}} {{{{ ti.log_url }}}}"
)


def failure_notifier(cluster):
    from airflow.providers.slack.notifications.slack_webhook import SlackWebhookNotifier

    return SlackWebhookNotifier(slack_webhook_conn_id=cluster.alerts.slack_conn_id,
                                text=FAILURE_TEXT.format(cluster=cluster.name), timeout=10)


def retry_notifier(cluster):
    from airflow.providers.slack.notifications.slack_webhook import SlackWebhookNotifier

    return SlackWebhookNotifier(slack_webhook_conn_id=cluster.alerts.slack_conn_id,
                                text=RETRY_TEXT.format(cluster=cluster.name), timeout=10)


def post(cluster, text: str) -> None:
    """A message that is not a failure (drift repaired, restore test summary)."""
    from airflow.providers.slack.hooks.slack_webhook import SlackWebhookHook

    SlackWebhookHook(slack_webhook_conn_id=cluster.alerts.slack_conn_id, timeout=10).send(text=text)
