"""What an outage looks like to Ops: a tool's error keeps its cause (S3 down in the middle of a
backup), WAL that does not reach the repository is noticed in minutes (a real outage under write
load), and a running tool holds no secret but its own (real processes, read in /proc)."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from pg_backups import pgbackrest
from pg_backups.airflow.notifiers import error_summary
from pg_backups.errors import ToolError
from support import config_copy

pytestmark = [pytest.mark.sandbox, pytest.mark.slow]


def test_s3_down_in_the_middle_of_a_backup_keeps_the_cause(first_backup, sandbox):
    """pgBackRest's own error code and its cause lead the summary, then what to do; the command
    line, which used to fill the alert's 400 characters, is in the log only."""
    cluster = sandbox.cluster()
    sandbox.stop_s3()
    try:
        with pytest.raises(ToolError) as failed:
            pgbackrest.run(cluster, "backup", "--type=incr", timeout=600)
    finally:
        sandbox.start_s3()
    summary = error_summary(failed.value)
    assert summary.startswith("ToolError: pgbackrest backup failed (exit "), summary
    assert "cause: HostConnectError" in summary and "Connection refused" in summary, summary
    assert f"localhost:{sandbox.layout.s3_tls_port} is unreachable from this host" in summary, summary
    assert "--config" not in summary and "--stanza" not in summary
    assert failed.value.retryable  # the endpoint may come back


def test_wal_not_reaching_the_repository_is_seen_in_minutes(first_backup, sandbox):
    """S3 stopped while the database writes: asynchronous archiving keeps pg_stat_archiver quiet
    (no failure yet), so the age of the oldest waiting segment says it."""
    config = config_copy(sandbox, "wal-wait-1-minute", {"alerts": {"max_wal_wait_minutes": 1}})
    sandbox.stop_s3()
    try:
        for _ in range(3):  # write load, and segments to archive
            sandbox.psql("INSERT INTO events (title, starts_at) SELECT 'outage ' || g, now() "
                         "FROM generate_series(1, 20000) g")
            sandbox.psql("SELECT pg_switch_wal()", db="postgres")
        time.sleep(75)
        result = sandbox.dags_test("backup_freshness_asso", env={"PG_BACKUPS_CONFIG": config})
    finally:
        sandbox.start_s3()
    assert result.task_states["check_wal_archiving"] == "failed", result.output[-3000:]
    assert "WAL is not reaching the repository" in result.output and "limit 1 min" in result.output
    # Archiving catches up once S3 is back: nothing was lost.
    deadline = time.monotonic() + 300
    while sandbox.psql("SELECT count(*) FROM pg_ls_archive_statusdir() WHERE name LIKE '%.ready'",
                       db="postgres") != "0":
        assert time.monotonic() < deadline, "archiving did not catch up after the outage"
        time.sleep(5)


def environ_of(pid: int) -> dict:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    return dict(item.split("=", 1) for item in raw.decode(errors="replace").split("\0") if "=" in item)


def test_a_running_tool_holds_no_secret_but_its_own(first_backup, sandbox):
    """The backup's pgBackRest process, as postgres: no Airflow connection, no Slack webhook, no AWS
    key, no database password in its environment (any process of that user could read them)."""
    seen: dict[int, dict] = {}
    stop = threading.Event()
    ours = f"--config={sandbox.cluster().pgbackrest.config_path}".encode()  # not another sandbox's

    def watch():
        while not stop.is_set():
            for entry in Path("/proc").iterdir():
                if not entry.name.isdigit() or int(entry.name) in seen:
                    continue
                try:
                    cmdline = (entry / "cmdline").read_bytes().split(b"\0")
                    # The backup and its local processes (not archive-push, which PostgreSQL starts).
                    if cmdline and cmdline[0].endswith(b"pgbackrest") and ours in cmdline and any(
                            arg == b"backup" or arg.startswith(b"backup:") for arg in cmdline):
                        seen[int(entry.name)] = environ_of(int(entry.name))
                except OSError:
                    continue
            time.sleep(0.05)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        result = sandbox.dags_test("pgbackrest_backup_asso", conf={"backup_type": "full"})
    finally:
        stop.set()
        watcher.join(timeout=10)
    assert result.state == "success", result.output[-3000:]
    assert seen, "no running pgbackrest process was seen"
    secrets = sandbox.secrets()
    for pid, env in seen.items():
        assert not [k for k in env if k.startswith("AIRFLOW_CONN_")], (pid, sorted(env))
        for name in ("SLACK_WEBHOOK_URL", "AWS_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY_ID", "PGPASSWORD"):
            assert name not in env, (pid, name)
        for secret in secrets:
            assert secret not in "\0".join(env.values()), pid
    assert os.environ.get("AIRFLOW_CONN_AWS_BACKUPS")  # the worker itself had them all
