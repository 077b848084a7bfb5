"""Secrets in the sandbox: the files that hold them are owner-only, and nothing people and tools
read carries one (the unit cases, the scripts and the restore guard, are in tests/unit/test_security.py)."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from pg_backups import pgbackrest
from support import file_mode as mode

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = REPO / "include" / "scripts"


@pytest.mark.sandbox
def test_sandbox_files_holding_secrets_are_owner_only(sandbox):
    L, c = sandbox.layout, sandbox.cluster()
    assert mode(L.env_file) == 0o600 and mode(L.credentials_file) == 0o600
    creds = Path(pgbackrest.include_path(c)) / "s3-credentials.conf"
    import pwd

    assert creds.stat().st_uid == pwd.getpwnam("postgres").pw_uid  # the tool's user, no one else
    assert mode(creds) == 0o600
    conf = Path(c.pgbackrest.config_path).read_text()
    assert mode(c.pgbackrest.config_path) & 0o007 == 0
    for secret in sandbox.secrets():
        assert secret not in conf


def _texts_of_files(root: Path):
    for path in sorted(root.rglob("*")) if root.exists() else ():
        if path.is_file() and not path.is_symlink():
            yield path, path.read_bytes().decode("utf-8", "replace")


def _leaks(sandbox, named: dict[str, str]) -> list[str]:
    secrets = sandbox.secrets()
    return [f"{where}: secret #{i}" for where, text in named.items() for i, s in enumerate(secrets) if s in text]


@pytest.mark.sandbox
def test_cron_failure_output_and_its_slack_alert_carry_no_secret(first_backup, sandbox):
    """S3 down: the cron script fails loudly (exit 1, Slack) with the endpoint named and no key or
    password in its output, although all of them are in its environment."""
    creds = json.loads(sandbox.layout.credentials_file.read_text())
    seen = len(sandbox.slack_messages())
    sandbox.stop_s3()
    try:
        proc = sandbox.run(SCRIPTS / "pgbackrest_backup.sh", check=False, timeout=300,
                           env={"PGPASSWORD": creds["pg_password"]})
    finally:
        sandbox.start_s3()
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "is unreachable for bucket asso-prod-backups" in proc.stderr
    alerts = sandbox.slack_texts_since(seen)
    assert any("cron pgbackrest-backup failed" in a for a in alerts), alerts
    assert not _leaks(sandbox, {"stdout": proc.stdout, "stderr": proc.stderr, "slack": "\n".join(alerts)})


@pytest.mark.sandbox
def test_no_secret_in_task_logs_xcoms_rendered_fields_audit_slack_or_tool_logs(first_backup, sandbox):
    """Read everything the session has written so far (this file runs after the others in a full
    session: it then also covers the fault cases, the restore tests, the cron runs)."""
    L = sandbox.layout
    named: dict[str, str] = {}
    for root in (L.airflow_home / "logs", L.logs, L.root / "pgbackrest" / "log", L.root / "metrics"):
        for path, text in _texts_of_files(root):
            named[str(path)] = text
    named["production.log"] = (L.pgdata.parent / "production.log").read_text(errors="replace") \
        if (L.pgdata.parent / "production.log").exists() else ""
    # `airflow dags test` prints the task logs instead of writing files: the first backup's run
    # (every task of the DAG, success path) is read from its output; the fault tests read theirs.
    named["airflow dags test output (first backup)"] = first_backup.output
    assert "running: runuser -u postgres -- pgbackrest" in first_backup.output  # the task logs are in it
    with sqlite3.connect(L.airflow_home / "airflow.db") as db:
        tables = {t for t, in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        for table, column in (("xcom", "value"), ("rendered_task_instance_fields", "rendered_fields"),
                              ("dag_run", "conf"), ("log", "extra"), ("asset_event", "extra"),
                              ("hitl_detail", "params_input"), ("task_instance", "rendered_map_index")):
            if table in tables:
                rows = db.execute(f"SELECT {column} FROM {table}").fetchall()
                named[f"airflow.db {table}.{column}"] = "\n".join(str(v) for v, in rows)
    assert named["airflow.db xcom.value"], "no XCom found"
    # Slack: what the channel shows (the body); the receiver's path is Slack's own URL, token included.
    named["slack bodies"] = "\n".join(json.dumps(m["body"]) for m in sandbox.slack_messages())
    leaks = _leaks(sandbox, named)
    assert not leaks, leaks
