"""A real failing DAG run (``airflow dags test`` over the sandbox) alerts by e-mail and PagerDuty as
well as Slack when the cluster asks for them: the callbacks Airflow itself runs after the last try
reach a real SMTP server and an HTTPS stand-in for PagerDuty's Events API v2 (started by this module,
on the port base + 20/21, like the unit tests of test_alert_channels.py)."""

from __future__ import annotations

import json

import pytest

from support import ROUTING_KEY, SMTP_PORT, alerts_for, config_copy

pytestmark = [pytest.mark.sandbox, pytest.mark.slow]


def test_a_failed_backup_run_mails_and_pages_once(configured_bucket, sandbox, smtp_server, pagerduty_receiver):
    config = config_copy(sandbox, "bad-pgbackrest-conf-channels", {
        "pgbackrest": {"config_path": "/proc/pg-backups-no-such-dir/pgbackrest.conf"},
        "alerts": {"critical_channels": ["slack", "email", "pagerduty"], "email_to": ["ops@asso.example"],
                   "pagerduty_events_url": pagerduty_receiver.url}})
    env = {"PG_BACKUPS_CONFIG": config, "SSL_CERT_FILE": pagerduty_receiver.cert,
           "AIRFLOW_CONN_SMTP_OPS": json.dumps({"conn_type": "smtp", "host": "127.0.0.1", "port": SMTP_PORT, "extra": {
               "disable_tls": True, "disable_ssl": True, "from_email": "airflow@backups.example", "retry_limit": 0}}),
           "AIRFLOW_CONN_PAGERDUTY_OPS": json.dumps({"conn_type": "pagerduty_events", "password": ROUTING_KEY})}
    smtp_server.messages.clear()
    pagerduty_receiver.events.clear()
    count = len(sandbox.slack_messages())
    result = sandbox.dags_test("pgbackrest_backup_asso", env=env)
    assert result.state == "failed" and result.task_states["preflight"] == "failed"
    assert result.try_numbers["preflight"] == 2
    (slack,) = alerts_for(sandbox.slack_texts_since(count), "pgbackrest_backup_asso", "preflight")
    error_line = slack.splitlines()[3].removeprefix("*Error:* ")
    line = f"Backup failed - cluster asso - pgbackrest_backup_asso.preflight try 2: {error_line}"
    (mail,) = smtp_server.messages  # once, after the last try
    assert mail["to"] == ["ops@asso.example"] and mail["message"]["Subject"] == line
    (event,) = pagerduty_receiver.events
    payload = event["body"]["payload"]
    assert payload["summary"] == line and payload["severity"] == "critical" and payload["source"] == "asso"
    assert event["body"]["dedup_key"] == f"pg_backups/asso/pgbackrest_backup_asso/preflight/{result.run_id}"
    assert payload["custom_details"]["run_id"] == result.run_id
    raw = mail["message"].as_string() + json.dumps(event["body"])
    assert "{{" not in raw
    for secret in sandbox.secrets():
        assert secret not in raw
