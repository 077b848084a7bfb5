"""Failures of real DAG runs reach the sandbox's Slack receiver in the one alert format; a Slack
that cannot be reached changes nothing about the failure that is recorded."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from support import alerts_for, assert_alert, config_copy

pytestmark = pytest.mark.sandbox

CLOSED_PORT_OFFSET = 9  # the sandbox uses its base port + 0..5; +9 has nobody listening


def closed_port(sandbox) -> int:
    return sandbox.layout.port_base + CLOSED_PORT_OFFSET


def test_s3_dag_failure_alerts_once_after_the_last_try_and_on_retry_when_asked(sandbox):
    config = config_copy(sandbox, "s3-down", {"s3": {"endpoint_url": f"https://localhost:{closed_port(sandbox)}"},
                                              "alerts": {"notify_on_retry": True}})
    count = len(sandbox.slack_messages())
    result = sandbox.dags_test("s3_bucket_config_asso", env={"PG_BACKUPS_CONFIG": config})
    assert result.state == "failed" and result.task_states["configure_bucket"] == "failed"
    assert result.try_numbers["configure_bucket"] == 2  # retries: 1 in the sandbox
    texts = sandbox.slack_texts_since(count)
    failures = alerts_for(texts, "s3_bucket_config_asso", "configure_bucket")
    assert len(failures) == 1, texts  # final failure only
    assert_alert(failures[0], "s3_bucket_config_asso", "configure_bucket", 2, "EndpointConnectionError", sandbox)
    retries = [t for t in texts if t.startswith(":warning: *Bucket configuration failed, retrying*")]
    assert len(retries) == 1 and "`s3_bucket_config_asso.configure_bucket` try 1: EndpointConnectionError" in retries[0]


def test_pgbackrest_dag_failure_alerts_with_every_field(configured_bucket, sandbox):
    # The bucket exists and PostgreSQL answers: preflight gets as far as writing pgbackrest.conf.
    config = config_copy(sandbox, "bad-pgbackrest-conf",
                         {"pgbackrest": {"config_path": "/proc/pg-backups-no-such-dir/pgbackrest.conf"}})
    count = len(sandbox.slack_messages())
    result = sandbox.dags_test("pgbackrest_backup_asso", env={"PG_BACKUPS_CONFIG": config})
    assert result.state == "failed" and result.task_states["preflight"] == "failed"
    texts = sandbox.slack_texts_since(count)
    failures = alerts_for(texts, "pgbackrest_backup_asso", "preflight")
    assert len(failures) == 1, texts
    assert_alert(failures[0], "pgbackrest_backup_asso", "preflight", 2, "/proc/pg-backups-no-such-dir", sandbox)
    assert not [t for t in texts if t.startswith(":warning:")], "no retry alert unless notify_on_retry"


def test_restore_test_dag_failure_alerts(sandbox):
    if not (Path(__file__).resolve().parents[2] / "dags" / "quarterly_restore.py").exists():
        pytest.fail("dags/quarterly_restore.py is missing")
    production = json.loads(sandbox.env["AIRFLOW_CONN_PG_ASSO"])
    count = len(sandbox.slack_messages())
    # The guard refuses a staging connection that points at production (and fails without retry).
    result = sandbox.dags_test("restore_test_asso", env={"AIRFLOW_CONN_PG_ASSO_STAGING": json.dumps(production)})
    assert result.state == "failed" and result.task_states["guard"] == "failed"
    texts = sandbox.slack_texts_since(count)
    assert len([t for t in texts if t.startswith(":red_circle:")]) == 1, texts  # one alert for the run
    failures = alerts_for(texts, "restore_test_asso", "audit_and_archive")
    assert len(failures) == 1, texts
    assert_alert(failures[0], "restore_test_asso", "audit_and_archive", 1, "guard: failed: RestoreRefused:", sandbox)
    assert "points at the production database" in failures[0]


def test_slack_unreachable_keeps_the_tasks_own_failure(configured_bucket, sandbox):
    config = config_copy(sandbox, "bad-pgbackrest-conf-2",
                         {"pgbackrest": {"config_path": "/proc/pg-backups-no-such-dir/pgbackrest.conf"}})
    slack = json.loads(sandbox.env["AIRFLOW_CONN_SLACK_OPS"])
    slack["host"] = f"http://127.0.0.1:{closed_port(sandbox)}/services"
    count = len(sandbox.slack_messages())
    result = sandbox.dags_test("pgbackrest_backup_asso",
                               env={"PG_BACKUPS_CONFIG": config, "AIRFLOW_CONN_SLACK_OPS": json.dumps(slack)})
    assert result.state == "failed"
    assert result.task_states["preflight"] == "failed" and result.try_numbers["preflight"] == 2
    assert result.task_states["backup"] == "upstream_failed"
    assert sandbox.slack_texts_since(count) == []
    assert "Slack alert not sent" in result.output
    assert "/proc/pg-backups-no-such-dir" in result.output  # the task's own error is what the log shows
