"""Failures of real DAG runs reach the sandbox's Slack receiver in the one alert format; a Slack
that cannot be reached changes nothing about the failure that is recorded."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.sandbox

CLOSED_PORT_OFFSET = 9  # the sandbox uses its base port + 0..5; +9 has nobody listening


def config_copy(sandbox, name: str, changes: dict) -> str:
    """A copy of the sandbox's clusters.yaml with ``changes`` merged into its cluster, somewhere the
    postgres user can read (the tools run as postgres)."""
    data = yaml.safe_load(sandbox.layout.clusters_file.read_text())

    def merge(base, over):
        for key, value in over.items():
            if isinstance(value, dict) and isinstance(base.get(key), dict):
                merge(base[key], value)
            else:
                base[key] = value

    merge(data["clusters"][0], changes)
    directory = sandbox.layout.root / "test-configs"
    directory.mkdir(exist_ok=True)
    directory.chmod(0o755)
    path = directory / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    path.chmod(0o644)
    return str(path)


def closed_port(sandbox) -> int:
    return sandbox.layout.port_base + CLOSED_PORT_OFFSET


TITLES = {"s3_bucket_config": "Bucket configuration failed", "pgbackrest_backup": "Backup failed",
          "restore_test": "Restore test failed", "backup_freshness": "Backup freshness check failed"}


def assert_alert(text: str, dag_id: str, task_id: str, try_number: int, error: str, sandbox) -> None:
    """Every field, in the one format of notifiers.FAILURE_TEXT, titled with what failed, and no secret."""
    lines = text.splitlines()
    assert lines[0] == f":red_circle: *{TITLES[dag_id.removesuffix('_asso')]}* - cluster `asso`", text
    assert lines[1] == f"*DAG:* `{dag_id}`  *Task:* `{task_id}`  *Try:* {try_number}", text
    assert re.fullmatch(r"\*Run:\* `manual__\S+`", lines[2]), text
    assert lines[3].startswith("*Error:* ") and error in lines[3], text
    assert "{{" not in text and "}}" not in text, text  # every template field rendered
    assert re.fullmatch(rf"\*Log:\* https?://\S+/dags/{dag_id}/runs/\S+/tasks/{task_id}\?try_number={try_number}",
                        lines[4]), text
    for secret in sandbox.secrets():
        assert secret not in text


def alerts_for(texts: list[str], dag_id: str, task_id: str) -> list[str]:
    return [t for t in texts if t.startswith(":red_circle:") and f"*DAG:* `{dag_id}`  *Task:* `{task_id}`" in t]


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
    if not (Path(__file__).resolve().parents[1] / "dags" / "quarterly_restore.py").exists():
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
