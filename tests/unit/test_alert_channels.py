"""E-mail and PagerDuty alerts through Airflow's own notifiers (the SMTP and PagerDuty providers),
chosen per cluster and per severity, against a real SMTP server (aiosmtpd on 127.0.0.1) and an HTTPS
receiver standing in for PagerDuty's Events API v2 (its client accepts only https:// URLs).

The connections are real Airflow connections (``AIRFLOW_CONN_*``), read by the providers' hooks;
Slack is stubbed as in test_alerts.py (its own tests are there and in tests/sandbox/test_alerts_sandbox.py).
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from pg_backups.airflow import common, notifiers
from pg_backups.config import ConfigError, build_cluster
from pg_backups.errors import ToolError
from support import CLOSED_PORT, ROUTING_KEY, SMTP_PORT


@pytest.fixture
def channels(smtp_server, pagerduty_receiver, monkeypatch):
    monkeypatch.setenv("SSL_CERT_FILE", pagerduty_receiver.cert)
    monkeypatch.setenv("AIRFLOW_CONN_SMTP_OPS_TEST", json.dumps({
        "conn_type": "smtp", "host": "127.0.0.1", "port": SMTP_PORT,
        "extra": {"disable_tls": True, "disable_ssl": True, "from_email": "airflow@backups.example", "timeout": 10,
                  "retry_limit": 0}}))
    monkeypatch.setenv("AIRFLOW_CONN_PAGERDUTY_OPS_TEST", json.dumps({"conn_type": "pagerduty_events",
                                                                      "password": ROUTING_KEY}))
    smtp_server.messages.clear()
    pagerduty_receiver.events.clear()
    return SimpleNamespace(mail=smtp_server.messages, pagerduty=pagerduty_receiver.events, url=pagerduty_receiver.url)


def cluster(name="asso", url="https://127.0.0.1:1", **alert_settings):
    return build_cluster({"name": name, "alerts": {
        "slack_conn_id": "slack_ops_test", "email_conn_id": "smtp_ops_test", "email_to": ["ops@asso.example"],
        "pagerduty_conn_id": "pagerduty_ops_test", "pagerduty_events_url": url, **alert_settings}})


def context(exception, dag_id="pgbackrest_backup_asso", task_id="backup", try_number=3):
    dag = SimpleNamespace(dag_id=dag_id, template_searchpath=None, template_undefined=None,
                          user_defined_macros=None, user_defined_filters=None, render_template_as_native_obj=False,
                          jinja_environment_kwargs=None, get_template_env=None)
    ti = SimpleNamespace(task_id=task_id, try_number=try_number,
                         log_url=f"http://airflow.example/dags/{dag_id}/runs/r1/tasks/{task_id}?try_number={try_number}")
    return {"dag": dag, "ti": ti, "run_id": "scheduled__2026-11-25T02:15:00+00:00", "exception": exception}


def fire(callbacks, ctx):
    """Every callback as Airflow calls it (``__call__``); Slack's hook replaced by a recorder."""
    import jinja2

    slack = []
    for callback in callbacks:
        callback.get_template_env = lambda dag=None: jinja2.Environment()
        if isinstance(callback, notifiers.OpsSlackNotifier):
            callback.__dict__["hook"] = SimpleNamespace(
                send=lambda **kw: slack.append(kw["text"]) or SimpleNamespace(status_code=200))
        callback(ctx)
    return slack


ONE_LINE = ("Backup failed - cluster asso - pgbackrest_backup_asso.backup try 3: ToolError: pgbackrest backup "
            "failed with exit code 82: ERROR: [082]: WAL segment was not archived")


def test_a_failed_backup_pages_and_mails_with_slacks_line(channels):
    c = cluster(url=channels.url, critical_channels=["slack", "email", "pagerduty"])
    callbacks = common.default_args(c, purpose="pgbackrest")["on_failure_callback"]
    error = ToolError("pgbackrest backup failed with exit code 82: ERROR: [082]: WAL segment was not archived")
    slack = fire(callbacks, context(error))
    assert len(slack) == 1 and "*Error:* ToolError: pgbackrest backup failed with exit code 82" in slack[0]
    (mail,) = channels.mail
    assert mail["to"] == ["ops@asso.example"] and mail["from"] == "airflow@backups.example"
    assert mail["message"]["Subject"] == ONE_LINE
    body = mail["message"].get_body(("html", "plain")).get_content()
    assert ONE_LINE in body and "http://airflow.example/dags/pgbackrest_backup_asso/runs/r1/tasks/backup" in body
    (event,) = channels.pagerduty
    assert event["path"] == "/v2/enqueue"
    sent = event["body"]
    assert sent["routing_key"] == ROUTING_KEY and sent["event_action"] == "trigger"
    assert sent["payload"]["summary"] == ONE_LINE and sent["payload"]["severity"] == "critical"
    assert sent["payload"]["source"] == "asso" and sent["payload"]["component"] == "pgbackrest_backup_asso.backup"
    assert sent["dedup_key"] == "pg_backups/asso/pgbackrest_backup_asso/backup/scheduled__2026-11-25T02:15:00+00:00"


def test_mail_and_page_are_redacted_like_slack(channels, monkeypatch):
    monkeypatch.setenv("PGPASSWORD", "s3cr3t-pg-pass")
    c = cluster(url=channels.url, critical_channels=["email", "pagerduty"])
    callbacks = common.default_args(c, purpose="monitoring")["on_failure_callback"]
    assert not any(isinstance(cb, notifiers.OpsSlackNotifier) for cb in callbacks)
    error = RuntimeError("connect to postgresql://ops:hunter22@db.internal/app failed; password=s3cr3t-pg-pass")
    fire(callbacks, context(error, dag_id="backup_freshness_asso", task_id="check_backups"))
    (mail,), (event,) = channels.mail, channels.pagerduty
    raw = mail["message"].as_string() + json.dumps(event["body"])
    for secret in ("hunter22", "s3cr3t-pg-pass"):
        assert secret not in raw
    assert "postgresql://***@db.internal/app" in mail["message"]["Subject"]
    assert event["body"]["payload"]["summary"].startswith("Backup freshness check failed - cluster asso")


def test_a_drift_repair_is_not_critical(channels):
    """Warning: e-mail only (warning_channels), never a page; the restore summary stays Slack's."""
    c = cluster(url=channels.url, critical_channels=["slack", "pagerduty"], warning_channels=["email"])
    notifiers.post(c, ":wrench: S3 bucket `asso-prod-backups` of cluster `asso`: drift repaired: versioning",
                   severity=notifiers.WARNING)
    (mail,) = channels.mail
    assert mail["message"]["Subject"] == "S3 bucket asso-prod-backups of cluster asso: drift repaired: versioning"
    assert channels.pagerduty == []


def test_channels_are_chosen_per_cluster(channels):
    loud = cluster("asso", url=channels.url, critical_channels=["slack", "email", "pagerduty"])
    quiet = cluster("billing")
    kinds = {c.name: [type(cb).__name__ for cb in common.default_args(c, purpose="walg")["on_failure_callback"]]
             for c in (loud, quiet)}
    assert kinds == {"asso": ["OpsSlackNotifier", "OpsEmailNotifier", "OpsPagerdutyNotifier"],
                     "billing": ["OpsSlackNotifier"]}
    from airflow.providers.pagerduty.notifications.pagerduty import PagerdutyNotifier
    from airflow.providers.smtp.notifications.smtp import SmtpNotifier

    callbacks = common.default_args(loud, purpose="walg")["on_failure_callback"]
    assert isinstance(callbacks[1], SmtpNotifier) and isinstance(callbacks[2], PagerdutyNotifier)
    # A retry is a warning: it never pages.
    retry = common.default_args(cluster(url=channels.url, notify_on_retry=True, critical_channels=["pagerduty"],
                                        warning_channels=["email"]), purpose="walg")["on_retry_callback"]
    assert [type(cb).__name__ for cb in retry] == ["OpsEmailNotifier"]


def test_one_shared_notifier_renders_each_failure_afresh(channels):
    (mailer,) = common.default_args(cluster(critical_channels=["email"]), purpose="pgbackrest")["on_failure_callback"]
    fire([mailer], context(RuntimeError("first problem")))
    fire([mailer], context(RuntimeError("second problem"), task_id="verify"))
    subjects = [m["message"]["Subject"] for m in channels.mail]
    assert subjects == ["Backup failed - cluster asso - pgbackrest_backup_asso.backup try 3: RuntimeError: first problem",
                        "Backup failed - cluster asso - pgbackrest_backup_asso.verify try 3: RuntimeError: second problem"]


def test_an_unreachable_channel_is_a_warning_not_an_exception(channels, monkeypatch, caplog):
    monkeypatch.setenv("AIRFLOW_CONN_SMTP_OPS_TEST", json.dumps({
        "conn_type": "smtp", "host": "127.0.0.1", "port": CLOSED_PORT,
        "extra": {"disable_tls": True, "disable_ssl": True, "from_email": "a@b.example", "timeout": 5, "retry_limit": 0}}))
    c = cluster(url=f"https://127.0.0.1:{CLOSED_PORT}", critical_channels=["email", "pagerduty"])
    fire(common.default_args(c, purpose="pgbackrest")["on_failure_callback"], context(RuntimeError("the real failure")))
    assert "E-mail alert not sent" in caplog.text and "PagerDuty alert not sent" in caplog.text


@pytest.mark.parametrize("settings,key", [
    ({"critical_channels": ["email"], "email_to": []}, "alerts.email_to"),
    ({"warning_channels": ["sms"]}, "alerts.warning_channels"),
    ({"critical_channels": ["pagerduty"], "pagerduty_events_url": "http://events.pagerduty.com"},
     "alerts.pagerduty_events_url"),
])
def test_a_channel_without_what_it_needs_is_refused(settings, key):
    with pytest.raises(ConfigError) as refused:
        build_cluster({"name": "asso", "alerts": settings})
    assert refused.value.setting.endswith(key), str(refused.value)
