"""WAL-G against the real binary: the DAG, the cron script, the restore test with QA's sign-off,
PITR, retention, S3 down, archiving broken, a bad configuration. Real PostgreSQL 15, the sandbox's
S3 over TLS, Airflow.

The binary is found as the sandbox finds it: WALG_BIN, then .tools/bin/wal-g, then `wal-g` on
PATH. Without one, this module is skipped with one line saying how to provide one (nothing in the
project builds WAL-G: the Go module proxy here refuses it). The tests build on each other, in file
order.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from datetime import timedelta
from pathlib import Path

import pytest

import airflow_api
import sandbox as sandbox_module
from pg_backups import archiving, operations, staging, times, walg
from pg_backups.config import load_config
from pg_backups.errors import ArchivingBroken, ToolError
from support import REPO, DagRunResult, config_copy, wait_for

WALG = sandbox_module.find_walg()
if WALG is None:
    pytest.skip(sandbox_module.WALG_MISSING, allow_module_level=True)

pytestmark = [pytest.mark.sandbox, pytest.mark.slow]

DAG_ID = "walg_backup_asso"
RESTORE_DAG = "restore_test_asso"
CRON = {"PG_BACKREST_STANZA": "asso"}  # the sandbox has two clusters: the scripts name theirs


# --------------------------------------------------------------------------------------------
# Helpers


def access(sandbox):
    return sandbox_module.access(sandbox.layout, json.loads(sandbox.layout.credentials_file.read_text()))


def backup_list(sandbox) -> list[dict]:
    """`wal-g backup-list --json --detail`, run directly (not through the code under test's parser)."""
    proc = walg.run(sandbox.cluster(), access(sandbox), "backup-list", "--json", "--detail")
    return json.loads(proc.stdout) or []


def walfile(sandbox, lsn: int) -> str:
    return sandbox.psql(f"SELECT pg_walfile_name('{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}')", db="postgres")


def wait_archived(sandbox) -> None:
    """Switch WAL and wait until the segment holding everything so far is archived."""
    # A commit record first: pg_switch_wal() on a segment with nothing in it does nothing, and that
    # segment would then never be archived (after repair_archiving reset pg_stat_archiver, with no
    # write in between, this wait once timed out).
    sandbox.psql("SELECT txid_current()", db="postgres")
    segment = sandbox.psql("SELECT pg_walfile_name(pg_current_wal_lsn())", db="postgres")
    sandbox.psql("SELECT pg_switch_wal()", db="postgres")
    wait_for(lambda: sandbox.psql(f"SELECT last_archived_wal >= '{segment}' FROM pg_stat_archiver",
                                  db="postgres") == "t", 180, what=f"archiving of {segment}")


# pgBackRest refuses an archive_command that does not name it ([068]); this one does, and fails at
# once (as a missing stanza did in the field: the two-tool command failed on pgBackRest's part).
BROKEN_ARCHIVE_COMMAND = "pgbackrest --config=/nonexistent/pgbackrest.conf --stanza=asso archive-push %p"


def break_archiving(sandbox) -> None:
    """archive_command fails from now on (ALTER SYSTEM wins over the sandbox's conf.d)."""
    sandbox.psql(f"ALTER SYSTEM SET archive_command = '{BROKEN_ARCHIVE_COMMAND}'", db="postgres")
    sandbox.psql("SELECT pg_reload_conf()", db="postgres")
    wait_for(lambda: sandbox.psql("SHOW archive_command", db="postgres") == BROKEN_ARCHIVE_COMMAND, 30,
             what="reload")


def repair_archiving(sandbox) -> None:
    """archive_command as configured again, WAL archived, and pg_stat_archiver's counters reset: the
    failures made on purpose here must not read as new failures to later freshness checks."""
    sandbox.psql("ALTER SYSTEM RESET archive_command", db="postgres")
    sandbox.psql("SELECT pg_reload_conf()", db="postgres")
    wait_for(lambda: sandbox.psql("SHOW archive_command", db="postgres") != BROKEN_ARCHIVE_COMMAND, 30,
             what="reload")
    wait_archived(sandbox)
    sandbox.psql("SELECT pg_stat_reset_shared('archiver')", db="postgres")


def waiting_sessions(sandbox) -> str:
    return sandbox.psql(f"SELECT count(*) FROM pg_stat_activity WHERE wait_event = '{archiving.ARCHIVE_WAIT_EVENT}'",
                        db="postgres")


def insert_member(sandbox, email: str) -> None:
    sandbox.psql(f"INSERT INTO members (email, full_name, joined_on) VALUES ('{email}', 'WAL-G test', now())")


def staging_count(sandbox, email: str) -> str:
    return sandbox.psql(f"SELECT count(*) FROM members WHERE email = '{email}'", port=sandbox.layout.staging_port)


# --------------------------------------------------------------------------------------------
# Fixtures


@pytest.fixture(scope="module")
def walg_backup(first_backup, sandbox) -> DagRunResult:
    """One WAL-G backup taken by the real DAG (after pgBackRest's first backup made its stanza, so
    that the two-tool archive_command works)."""
    assert "walg" in sandbox.cluster().tools and sandbox.cluster().walg.binary == str(WALG)
    result = sandbox.dags_test(DAG_ID)
    assert result.state == "success", result.output[-5000:]
    return result


@pytest.fixture(scope="module")
def api(sandbox):
    with airflow_api.api_server(sandbox.layout, sandbox.env, sandbox.layout.logs / "walg-api-server.log") as server:
        yield server


# --------------------------------------------------------------------------------------------
# Install path (bug 1)


def test_setup_finds_the_given_binary_and_builds_nothing():
    proc = subprocess.run([REPO / "bin" / "setup"], env={**os.environ, "WALG_BIN": str(WALG)}, text=True,
                          capture_output=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = [line for line in (proc.stdout + proc.stderr).splitlines() if "WAL-G" in line or "wal-g" in line]
    assert lines == [f"[setup] WAL-G {sandbox_module.WALG_VERSION}: {WALG}"], proc.stdout + proc.stderr
    assert "go install" not in proc.stdout + proc.stderr and not (REPO / ".tools" / "go-build").exists()


# --------------------------------------------------------------------------------------------
# Backups


def test_dag_run_leaves_a_backup_that_backup_list_shows_with_its_run_tag(walg_backup, sandbox):
    assert set(walg_backup.task_states.values()) == {"success"}, walg_backup.task_states
    record = walg_backup.xcoms["publish_backup"]
    listed = {b["backup_name"]: b for b in backup_list(sandbox)}
    assert record["label"] in listed
    raw = listed[record["label"]]
    assert raw["user_data"]["airflow_run_id"] == walg_backup.run_id
    assert record["airflow_run_id"] == walg_backup.run_id and record["airflow_run_type"] == "manual"
    # The record means what pgBackRest's means (bug 5): copied bytes uncompressed, stored compressed.
    assert record["backup_size_bytes"] == raw["uncompressed_size"] == record["database_size_bytes"]
    assert record["repo_size_bytes"] == raw["compressed_size"] < raw["uncompressed_size"]
    assert record["wal_start"] == raw["wal_file_name"]
    assert record["wal_stop"] == walfile(sandbox, raw["finish_lsn"])  # as PostgreSQL names it
    assert record["wal_stop"] >= record["wal_start"]
    # The marker row the restore test looks for was written by this run.
    assert sandbox.psql(f"SELECT count(*) FROM pg_backups_marker WHERE run_id = '{walg_backup.run_id}'",
                        db="postgres") == "1"


def test_cron_script_backs_up_and_prints_the_record(walg_backup, sandbox):
    proc = sandbox.run("include/scripts/wal_g_backup.sh", timeout=900, env=CRON)
    record = json.loads(proc.stdout)
    assert record["tool"] == "walg" and record["airflow_run_id"].startswith("cron__")
    assert record["label"] == walg.newest(backup_list(sandbox))["backup_name"]
    for secret in sandbox.secrets():
        assert secret not in proc.stdout + proc.stderr


# --------------------------------------------------------------------------------------------
# Restore test, PITR (bugs 3 and 4)


def test_restore_test_with_walg_passes_every_check_and_qa_signs_off(walg_backup, sandbox, api):
    slack_before = len(sandbox.slack_messages())
    newest = walg.newest(backup_list(sandbox))["backup_name"]
    run_id, output = airflow_api.run_with_signoff(sandbox.layout, sandbox.env, api, RESTORE_DAG, "Approve",
                                                  "WAL-G restore checked by QA", conf={"tool": "walg"})
    (state,), = sandbox._db("SELECT state FROM dag_run WHERE dag_id = ? AND run_id = ?", RESTORE_DAG, run_id)
    tasks = dict(sandbox._db("SELECT task_id, state FROM task_instance WHERE dag_id = ? AND run_id = ?",
                             RESTORE_DAG, run_id))
    assert state == "success", output[-6000:]
    assert set(tasks.values()) == {"success"}, tasks
    line = [json.loads(x) for x in Path(sandbox.cluster().restore_test.audit_log).read_text().splitlines()][-1]
    assert line["run_id"] == run_id and line["outcome"] == "success" and line["tool"] == "walg"
    assert line["backup_label"] == newest
    assert line["signoff"]["status"] == "approved" and line["signoff"]["by"] == "qa"
    checks = {c["check"]: c["result"] for c in line["checks"]}
    assert checks["backup_marker"] == "ok" and checks["not_in_recovery"] == "ok" and checks["amcheck:app"] == "ok"
    assert all(result == "ok" for result in checks.values()), checks
    texts = sandbox.slack_texts_since(slack_before)
    assert any("Restore test passed" in t for t in texts), texts


def _restore_into_staging(sandbox, cluster, target_time: str | None = None, label: str | None = None) -> dict:
    operations.restore_stop_staging(cluster)
    operations.restore_purge_staging(cluster)
    if label:  # exactly this backup, whatever the target (what the restore did before the fix)
        staging.restore_into_staging(cluster, "walg", access(sandbox), label, target_time)
        return {"record": {"label": label}}
    return operations.restore_latest_backup(cluster, "walg", access(sandbox), target_time=target_time)


def test_pitr_between_two_rows_with_a_newer_backup_brings_back_the_first_only(walg_backup, sandbox):
    cluster = sandbox.cluster()
    first, second = f"walg-pitr-1-{time.time_ns()}@example.org", f"walg-pitr-2-{time.time_ns()}@example.org"
    insert_member(sandbox, first)
    time.sleep(1.1)
    target = sandbox.psql("SELECT now()", db="postgres")
    time.sleep(1.1)
    insert_member(sandbox, second)
    before_target = walg.newest(backup_list(sandbox))["backup_name"]
    newer = operations.walg_backup(cluster, access(sandbox), "test-pitr-newer")["label"]  # after the target
    assert newer != before_target
    try:
        done = _restore_into_staging(sandbox, cluster, target_time=target)
        assert done["record"]["label"] == before_target  # the newest that finished before the target
        operations.restore_start_staging(cluster)
        assert staging_count(sandbox, first) == "1"
        assert staging_count(sandbox, second) == "0"
    finally:
        operations.restore_stop_staging(cluster)


def test_staging_that_dies_in_recovery_fails_at_once_quoting_its_fatal_line(walg_backup, sandbox):
    """A backup newer than the recovery target: staging reaches consistency, then dies with
    FATAL (recovery target not reached). Noticed within seconds, not after the restore timeout."""
    cluster = sandbox.cluster()
    target = sandbox.psql("SELECT now()", db="postgres")
    time.sleep(1.1)
    newer = operations.walg_backup(cluster, access(sandbox), "test-staging-dies")["label"]
    try:
        _restore_into_staging(sandbox, cluster, target_time=target, label=newer)
        started = time.monotonic()
        with pytest.raises(ToolError) as caught:
            staging.start_staging(cluster, timeout=300)
            staging.wait_recovery_end(cluster, timeout=300)
        assert time.monotonic() - started < 120
        assert "FATAL:" in str(caught.value) and "recovery" in str(caught.value), str(caught.value)
        assert not caught.value.retryable  # the same target stays out of reach
    finally:
        operations.restore_stop_staging(cluster)


# --------------------------------------------------------------------------------------------
# Retention


def test_retention_with_a_small_window_keeps_the_newest_full_backup_and_its_wal(walg_backup, sandbox):
    cluster = sandbox.cluster()
    operations.walg_backup(cluster, access(sandbox), "test-retention")
    before = backup_list(sandbox)
    assert len(before) >= 3
    newest = walg.newest(before)
    # Two days later with a 1-day window: every backup is out of the window but the newest full one.
    short = load_config(config_copy(sandbox, "walg-retention-1d", {"walg": {"retention_days": 1}})).cluster("asso")
    done = walg.delete_old(short, access(sandbox), now=times.now() + timedelta(days=2))
    assert done["deleted_before"] == newest["backup_name"]
    after = backup_list(sandbox)
    assert [b["backup_name"] for b in after] == [newest["backup_name"]]
    s3 = sandbox.s3_client()
    prefix = cluster.walg.prefix.strip("/") + "/wal_005/"
    wal = sorted(o["Key"].rsplit("/", 1)[1][:24] for page in s3.get_paginator("list_objects_v2").paginate(
        Bucket=cluster.s3.bucket, Prefix=prefix) for o in page.get("Contents", []))
    assert wal and wal[0] >= newest["wal_file_name"]  # the WAL before the kept backup went
    wait_archived(sandbox)
    proc = walg.run(cluster, access(sandbox), "wal-verify", "integrity", "--json")
    report = json.loads(proc.stdout)
    assert report["integrity"]["status"] == "OK", proc.stdout


# --------------------------------------------------------------------------------------------
# Failures


def test_s3_stopped_fails_clearly_with_one_alert_and_a_later_run_succeeds(walg_backup, sandbox):
    seen = len(sandbox.slack_messages())
    sandbox.stop_s3()
    try:
        failed = sandbox.dags_test(DAG_ID)
    finally:
        sandbox.start_s3()
    assert failed.state == "failed"
    assert failed.task_states["backup_push"] == "failed" and failed.try_numbers["backup_push"] == 2
    assert "is unreachable for bucket asso-prod-backups" in failed.output
    alerts = [t for t in sandbox.slack_texts_since(seen) if f"`{DAG_ID}`" in t and t.startswith(":red_circle:")]
    assert len(alerts) == 1, sandbox.slack_texts_since(seen)
    assert "backup_push" in alerts[0] and "unreachable" in alerts[0]
    for secret in sandbox.secrets():
        assert secret not in alerts[0]
    again = sandbox.dags_test(DAG_ID)
    assert again.state == "success", again.output[-4000:]


def test_s3_stopped_backup_list_fails_with_its_cause_instead_of_retrying_for_minutes(walg_backup, sandbox):
    """With WAL-G's default S3 retries (15, backoff growing to 300 s) `backup-list` waited more than
    10 minutes for a stopped endpoint, and the hourly freshness check with it: the listing now fails
    with WAL-G's own error, not the runner's timeout."""
    sandbox.stop_s3()
    try:
        with pytest.raises(ToolError) as failed:
            walg.backup_list(sandbox.cluster(), access(sandbox))
    finally:
        sandbox.start_s3()
    message = str(failed.value)
    assert "wal-g backup-list failed" in message and "connection refused" in message.lower(), message
    assert "did not finish" not in message
    assert walg.backup_list(sandbox.cluster(), access(sandbox))  # the store is intact once S3 is back


def test_archiving_broken_before_the_backup_fails_it_in_minutes_with_the_reason(walg_backup, sandbox):
    config = config_copy(sandbox, "archive-wait-20", {"archive_wait_seconds": 20})
    break_archiving(sandbox)
    try:
        insert_member(sandbox, f"walg-unarchived-{time.time_ns()}@example.org")
        sandbox.psql("SELECT pg_switch_wal()", db="postgres")
        cluster = sandbox.cluster()
        wait_for(lambda: archiving.problem(archiving.archiver_stats(cluster)), 120, what="an archive failure")
        started = time.monotonic()
        result = sandbox.dags_test(DAG_ID, env={"PG_BACKUPS_CONFIG": config})
        elapsed = time.monotonic() - started
    finally:
        repair_archiving(sandbox)
    assert result.state == "failed" and result.task_states["backup_push"] == "failed"
    assert elapsed < 300, elapsed
    assert "WAL archiving of cluster asso is broken, no WAL-G backup taken: archive_command is failing" \
        in result.output
    assert "backup-push" not in result.output  # wal-g was never started


def test_archiving_broken_during_the_backup_stops_wal_g_with_the_reason(walg_backup, sandbox):
    """Archiving works when the backup starts, then fails: wal-g waits in pg_backup_stop()
    (BackupWaitWalArchive) and would wait for hours; the watchdog stops it."""
    cluster = load_config(config_copy(sandbox, "archive-wait-20", {"archive_wait_seconds": 20})).cluster("asso")
    before = {b["backup_name"] for b in backup_list(sandbox)}
    wait_archived(sandbox)
    break_archiving(sandbox)
    try:
        started = time.monotonic()
        with pytest.raises(ArchivingBroken) as caught:
            operations.walg_backup(cluster, access(sandbox), "test-archiving-breaks")
        elapsed = time.monotonic() - started
        assert waiting_sessions(sandbox) == "0"  # the waiting session was ended too
    finally:
        repair_archiving(sandbox)
    message = str(caught.value)
    assert elapsed < 180, elapsed
    assert "waited" in message and "BackupWaitWalArchive" in message and "wal-g stopped after" in message
    assert "Fix: make archive_command of cluster asso work" in message
    assert {b["backup_name"] for b in backup_list(sandbox)} == before  # no backup listed from it


def test_pgbackrest_cannot_hang_on_broken_archiving(walg_backup, sandbox):
    """pgBackRest calls pg_backup_stop(false) and checks its repository itself: with archiving
    broken during its backup it fails after archive-timeout ([082]); before the backup, the same
    check as WAL-G's refuses it."""
    cluster = load_config(config_copy(sandbox, "pgbackrest-archive-20", {
        "archive_wait_seconds": 20, "pgbackrest": {"archive_timeout_seconds": 20}})).cluster("asso")
    from pg_backups import pgbackrest

    pgbackrest.write_config(cluster, access(sandbox))  # archive-timeout=20
    wait_archived(sandbox)
    break_archiving(sandbox)
    try:
        started = time.monotonic()
        with pytest.raises(ToolError) as during:
            operations.pgbackrest_backup(cluster, "incr", "test-pgbackrest-archiving")
        during_seconds = time.monotonic() - started
        assert waiting_sessions(sandbox) == "0"
        wait_for(lambda: archiving.problem(archiving.archiver_stats(cluster)), 120, what="an archive failure")
        with pytest.raises(ArchivingBroken) as before:
            operations.pgbackrest_backup(cluster, "incr", "test-pgbackrest-archiving-2")
    finally:
        repair_archiving(sandbox)
        pgbackrest.write_config(sandbox.cluster(), access(sandbox))
    assert during_seconds < 180 and "[082]" in str(during.value), str(during.value)
    assert "no pgBackRest backup taken: archive_command is failing" in str(before.value)


def test_bad_configuration_is_refused_before_wal_g_runs(walg_backup, sandbox, tmp_path):
    calls = tmp_path / "calls"
    spy = tmp_path / "wal-g"
    spy.write_text(f"#!/bin/sh\necho \"$@\" >> {calls}\nexit 0\n")
    spy.chmod(0o755)
    bad = config_copy(sandbox, "walg-bad", {"walg": {"compression": "brotli", "binary": str(spy)}})
    script = sandbox.run("include/scripts/wal_g_backup.sh", env={**CRON, "PG_BACKUPS_CONFIG": bad}, check=False)
    assert script.returncode == 2, script.stdout + script.stderr
    assert "walg.compression" in script.stderr and "Fix:" in script.stderr
    spied = config_copy(sandbox, "walg-spy", {"walg": {"binary": str(spy)}})
    prefix = sandbox.run("include/scripts/wal_g_backup.sh", check=False,
                         env={**CRON, "PG_BACKUPS_CONFIG": spied, "WALG_S3_PREFIX": "asso-prod-backups/postgres"})
    assert prefix.returncode == 2 and "WALG_S3_PREFIX" in prefix.stderr and "Fix:" in prefix.stderr
    assert not calls.exists()
    listing = sandbox.airflow("dags", "list-import-errors", "--local", "-o", "json", env={"PG_BACKUPS_CONFIG": bad},
                              check=False)
    assert "walg.compression" in listing.stdout + listing.stderr
