"""Restore test logic that needs no server: the guard (tmp dirs), command building (pgBackRest and
WAL-G), the audit line. Every guard refusal leaves the files in place."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pg_backups import audit, cli, marker, operations, staging
from pg_backups.config import build_cluster
from pg_backups.errors import RestoreRefused

REPO = Path(__file__).resolve().parents[2]


def staged_cluster(tmp_path, **restore_over):
    root = tmp_path / "staging"
    data = root / "data"
    data.mkdir(parents=True, exist_ok=True)
    (tmp_path / "prod").mkdir(exist_ok=True)
    rt = {"staging_root": str(root), "staging_data_directory": str(data), "staging_port": 6543,
          "staging_socket_directory": str(tmp_path), "smoke_log": str(tmp_path / "smoke.log"),
          "audit_log": str(tmp_path / "audit" / "audit.log"), **restore_over}
    return build_cluster({"name": "asso", "host": "127.0.0.1", "port": 5432, "data_directory": str(tmp_path / "prod"),
                          "tools": ["pgbackrest", "walg"], "pgbackrest": {"lock_path": str(tmp_path / "lock")},
                          "walg": {"binary": "/opt/wal-g", "config_path": "/etc/wal-g/walg.json"},
                          "restore_test": rt})


def fill(directory: Path) -> list[Path]:
    files = [directory / "PG_VERSION", directory / "base" / "1" / "1259"]
    for f in files:
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text("x")
    return files


def write_pid(directory: Path, pid: int, port: int, datadir: str | None = None):
    (directory / "postmaster.pid").write_text(
        f"{pid}\n{datadir or directory}\n1700000000\n{port}\n/tmp\n127.0.0.1\n  1234 5678\nready   \n")


def test_guard_accepts_staging(tmp_path):
    c = staged_cluster(tmp_path)
    info = staging.guard(c, staging.StagingConnection("127.0.0.1", 6543, "app"))
    assert info["staging_data_directory"] == os.path.realpath(tmp_path / "staging" / "data")


def test_guard_refuses_dotdot_outside_root(tmp_path):
    outside = tmp_path / "elsewhere"
    files = fill(outside)
    c = staged_cluster(tmp_path)
    # '..' passes the configuration's lexical check only when normalised; here a symlink inside
    # the root leads outside it, which only realpath sees.
    (tmp_path / "staging" / "data").rmdir()
    (tmp_path / "staging" / "data").symlink_to(outside)
    with pytest.raises(RestoreRefused) as err:
        staging.purge_staging(c)
    assert "outside restore_test.staging_root" in str(err.value)
    assert all(f.exists() for f in files)


def test_guard_refuses_running_server_that_is_not_staging(tmp_path):
    c = staged_cluster(tmp_path)
    files = fill(tmp_path / "staging" / "data")
    write_pid(tmp_path / "staging" / "data", os.getpid(), 5432)  # a live pid, production's port
    with pytest.raises(RestoreRefused) as err:
        staging.purge_staging(c)
    assert "not staging" in str(err.value) and "staging_port" in str(err.value)
    assert all(f.exists() for f in files)


def test_guard_ignores_stale_pid_file(tmp_path):
    c = staged_cluster(tmp_path)
    fill(tmp_path / "staging" / "data")
    proc = subprocess.Popen(["true"])
    proc.wait()
    write_pid(tmp_path / "staging" / "data", proc.pid, 5432)  # dead process
    assert staging.purge_staging(c)["entries_removed"] == 3
    assert list((tmp_path / "staging" / "data").iterdir()) == []
    assert oct((tmp_path / "staging" / "data").stat().st_mode & 0o777) == "0o700"


@pytest.mark.parametrize("conn", [staging.StagingConnection("127.0.0.1", 5432, "app"),
                                  staging.StagingConnection("localhost", 5432, "postgres")])
def test_guard_refuses_staging_connection_to_production(tmp_path, conn):
    c = staged_cluster(tmp_path)
    files = fill(tmp_path / "staging" / "data")
    with pytest.raises(RestoreRefused) as err:
        staging.purge_staging(c, conn)
    assert "points at the production database" in str(err.value) and "pg_asso_staging" in str(err.value)
    assert all(f.exists() for f in files)


def test_staging_uri_parsing():
    conn = staging.StagingConnection.from_uri("postgresql://staging_user:s3cret@staging-db.internal:5433/app")
    assert (conn.host, conn.port, conn.dbname) == ("staging-db.internal", 5433, "app")
    assert "s3cret" not in repr(conn)
    with pytest.raises(RestoreRefused):
        staging.StagingConnection.from_uri("mysql://x@y/z")


def test_start_command_uses_staging_port_socket_and_no_archiving(tmp_path):
    c = staged_cluster(tmp_path)
    argv = staging.start_staging_command(c)
    assert argv[0].endswith("/pg_ctl") and argv[-1] == "start"
    assert argv[argv.index("-o") + 1] == f"-p 6543 -k {tmp_path} -c archive_mode=off"
    assert argv[argv.index("-D") + 1] == os.path.realpath(tmp_path / "staging" / "data")


def test_pgbackrest_restore_never_archives_to_production(tmp_path, monkeypatch):
    from pg_backups import pgbackrest

    c = staged_cluster(tmp_path)
    seen = []
    monkeypatch.setattr(pgbackrest.runner, "run", lambda argv, **kw: seen.append(argv))
    staging.restore_into_staging(c, "pgbackrest", None, "20261124-010203F", "2026-11-24 01:30:00+00")
    argv = seen[0]
    assert argv[-1] == "restore" and "--archive-mode=off" in argv and "--set=20261124-010203F" in argv
    assert f"--pg1-path={os.path.realpath(tmp_path / 'staging' / 'data')}" in argv
    assert "--type=time" in argv and "--target-action=promote" in argv
    # staging's restore_command (written by pgBackRest with this option) never takes production's
    # archive lock, <lock_path>/asso-archive.lock
    assert f"--lock-path={tmp_path / 'lock' / 'restored-copy'}" in argv and (tmp_path / "lock" / "restored-copy").is_dir()


def test_walg_restore_commands(tmp_path):
    c = staged_cluster(tmp_path)
    settings = staging.walg_recovery_settings(c)
    assert settings == {"restore_command": "/opt/wal-g --config /etc/wal-g/walg.json wal-fetch %f %p",
                        "archive_mode": "off"}
    pitr = staging.walg_recovery_settings(c, "2026-11-24 01:30:00+00")
    assert pitr["recovery_target_time"] == "2026-11-24 01:30:00+00" and pitr["recovery_target_action"] == "promote"
    conf = staging.render_auto_conf({"restore_command": "x 'y'", "archive_mode": "off"})
    assert "restore_command = 'x ''y'''" in conf and "archive_mode = 'off'" in conf


def test_walg_restore_writes_recovery_settings(tmp_path, monkeypatch):
    from pg_backups import walg
    from pg_backups.s3_access import S3Access

    c = staged_cluster(tmp_path)
    calls = []
    monkeypatch.setattr(walg.runner, "run", lambda argv, **kw: calls.append((argv, kw["env"])))
    staging.restore_walg(c, S3Access(region="eu-west-3", access_key="AKIAX", secret_key="supersecret"), None)
    argv, env = calls[0]
    assert argv[3:5] == ["backup-fetch", os.path.realpath(tmp_path / "staging" / "data")] and argv[-1] == "LATEST"
    assert "supersecret" not in " ".join(argv) and env["AWS_SECRET_ACCESS_KEY"] == "supersecret"
    data = tmp_path / "staging" / "data"
    assert (data / "recovery.signal").exists()
    auto = (data / "postgresql.auto.conf").read_text()
    assert "wal-fetch %f %p" in auto and "archive_mode = 'off'" in auto


def test_marker_sql_quotes_run_id():
    sql = marker.marker_sql("manual__2026-11-24T00:00:00+00:00'; DROP TABLE x; --", "pgbackrest")
    assert "'manual__2026-11-24T00:00:00+00:00''; DROP TABLE x; --'" in sql
    assert sql.startswith("CREATE TABLE IF NOT EXISTS pg_backups_marker")


RECORD = {"label": "20261124-010203F", "stop_time": "2026-11-24T01:02:33+00:00", "airflow_run_id": "r1"}
CHECKS = [{"check": "backup_marker", "result": "ok", "detail": "found"}]


def test_audit_success_needs_restore_checks_and_approval(tmp_path, monkeypatch):
    monkeypatch.setenv("PGPASSWORD", "pg-secret-value")
    c = staged_cluster(tmp_path)
    ok = audit.audit_record(c, run_id="r9", tool="pgbackrest", record=RECORD, restore_seconds=12.34,
                              smoke_result={"pg_tables": 68}, checks=CHECKS,
                              signoff={"status": "approved", "by": "qa", "at": "2026-11-24T03:00:00+00:00"})
    assert ok["outcome"] == "success" and ok["restore_duration_seconds"] == 12.3
    assert ok["checks"][0] == {"check": "smoke_query", "result": "ok", "detail": "68 pg_tables"}
    assert ok["backup_label"] == RECORD["label"] and ok["backup_time"] == RECORD["stop_time"]
    cases = [dict(record=None, restore_seconds=None),  # the restore did not happen
             dict(signoff={"status": "rejected", "by": "qa", "comment": "members page broken"}),
             dict(checks=[{"check": "amcheck:app", "result": "failed", "detail": "corrupt"}]),
             dict(smoke_result=None), dict(signoff=None), dict(errors=["restore_latest_backup: failed"])]
    for case in cases:
        args = dict(run_id="r9", tool="pgbackrest", record=RECORD, restore_seconds=1.0, smoke_result={"pg_tables": 1},
                    checks=CHECKS, signoff={"status": "approved"}, **{})
        args.update(case)
        assert audit.audit_record(c, **args)["outcome"] == "failed", case
    rejected = audit.audit_record(c, run_id="r", tool="walg", record=RECORD, restore_seconds=1, smoke_result=None,
                                    checks=None, signoff={"status": "rejected", "comment": "pg-secret-value leaked"})
    assert rejected["signoff"]["comment"] == "*** leaked"  # QA's comment kept, secrets never
    path = audit.append_audit(c, ok)
    audit.append_audit(c, rejected)
    lines = Path(path).read_text().splitlines()
    assert len(lines) == 2 and json.loads(lines[0])["run_id"] == "r9"


def test_pending_signoff_for_cron(tmp_path):
    c = staged_cluster(tmp_path)
    line = audit.audit_record(c, run_id="cron__x", tool="pgbackrest", record=RECORD, restore_seconds=3,
                                smoke_result={"pg_tables": 3}, checks=CHECKS, signoff={"status": "pending"})
    assert line["outcome"] == "success" and line["signoff"]["status"] == "pending"


def test_archive_keys_and_upload(tmp_path):
    c = staged_cluster(tmp_path)
    Path(c.restore_test.smoke_log).write_text("smoke\n")
    uploads = []

    class Client:
        def upload_file(self, path, bucket, key):
            uploads.append((path, bucket, key))

    uris = audit.archive_logs(c, Client(), "manual__2026-11-24T10:00:00+00:00")
    assert len(uploads) == 1  # no audit log yet: only what exists is uploaded
    assert uploads[0][2].startswith("audit/asso/") and uploads[0][2].endswith("/smoke.log")
    assert ":" not in uploads[0][2].split("/")[3] and uris[0].startswith("s3://asso-prod-backups/audit/asso/")


def test_metrics_hook_is_optional(tmp_path, monkeypatch):
    c = staged_cluster(tmp_path)
    line = audit.audit_record(c, run_id="r", tool="pgbackrest", record=None, restore_seconds=None, smoke_result=None,
                                checks=None, signoff=None)
    monkeypatch.setitem(sys.modules, "pg_backups.metrics", None)  # import fails: logged, not raised
    result = operations.restore_audit_and_archive(c, type("C", (), {"upload_file": lambda *a: None})(), line)
    assert result["outcome"] == "failed"


def test_cli_runbook_variables():
    over = cli.runbook_overrides({"RESTORE_TOOL": "walg", "STAGING_PGDATA": "/var/lib/postgresql/staging/x"})
    assert over["restore_test"] == {"tool": "walg", "staging_data_directory": "/var/lib/postgresql/staging/x"}


def test_script_help_and_shellcheck():
    script = REPO / "include" / "scripts" / "quarterly_restore_test.sh"
    out = subprocess.run([script, "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "STAGING_CONNECTION_URI" in out.stdout
    assert subprocess.run([script, "bogus"], capture_output=True, text=True).returncode == 2
    sc = subprocess.run(["shellcheck", script], capture_output=True, text=True)
    assert sc.returncode == 0, sc.stdout


def test_walg_restore_operation_fetches_the_chosen_backup(tmp_path, monkeypatch):
    """The WAL-G path of the operation, without a wal-g binary: backup-list, then backup-fetch."""
    from pg_backups import walg
    from pg_backups.s3_access import S3Access

    c = staged_cluster(tmp_path)
    listing = [{"backup_name": "base_000000010000000000000003", "start_time": "2026-11-23T01:00:00Z",
                "finish_time": "2026-11-23T01:01:00Z", "user_data": {"airflow_run_id": "r1"}},
               {"backup_name": "base_000000010000000000000007", "start_time": "2026-11-24T01:00:00Z",
                "finish_time": "2026-11-24T01:01:00Z", "user_data": {"airflow_run_id": "r2"}}]
    calls = []

    def fake_run(argv, **kw):
        calls.append(argv)
        out = json.dumps(listing) if "backup-list" in argv else ""
        return subprocess.CompletedProcess(argv, 0, out, "")

    monkeypatch.setattr(walg.runner, "run", fake_run)
    monkeypatch.setattr(walg, "write_config", lambda *a: [])
    access = S3Access(region="eu-west-3", access_key="AKIAX", secret_key="supersecret")
    done = operations.restore_latest_backup(c, "walg", access)
    assert done["record"]["label"] == "base_000000010000000000000007" and done["record"]["airflow_run_id"] == "r2"
    fetch = [a for a in calls if "backup-fetch" in a][0]
    assert fetch[-1] == "base_000000010000000000000007"
    older = operations.restore_latest_backup(c, "walg", access, "base_000000010000000000000003")
    assert older["record"]["label"] == "base_000000010000000000000003"
    assert [a for a in calls if "backup-fetch" in a][-1][-1] == "base_000000010000000000000003"


def test_staging_psql_uses_the_local_socket(tmp_path):
    c = staged_cluster(tmp_path)
    argv = staging.psql_command(c, "SELECT 1", "app")
    assert argv[argv.index("-h") + 1] == str(tmp_path) and argv[argv.index("-p") + 1] == "6543"
    c2 = staged_cluster(tmp_path, staging_socket_directory=None)
    assert "-h" not in staging.psql_command(c2, "SELECT 1")  # libpq's default socket, as pg_ctl starts it
    assert "-k" not in staging.start_staging_command(c2)[staging.start_staging_command(c2).index("-o") + 1]


def test_every_query_to_production_goes_one_way_with_the_password_over_tcp(tmp_path, monkeypatch):
    """The login check, the archiving pre-check and watchdog, and the marker row all send their SQL
    to production the same way: over TCP to the cluster's host with PGPASSWORD (when given); through
    the socket without it. The archiving pre-check used to go without the password over TCP."""
    from pg_backups import archiving, runner

    calls = []

    def fake_run(argv, *, env=None, **kw):
        calls.append((argv, dict(env or {})))
        sql = argv[argv.index("-c") + 1]
        out = "|".join(["5", "", "2026-12-02 05:00:00+00", "0", "", "", "", "0", "", "on"]) if "pg_stat_archiver" in sql \
            else "4242|9999" if archiving.ARCHIVE_WAIT_EVENT in sql else "1"
        return subprocess.CompletedProcess(argv, 0, out, "")

    monkeypatch.setattr(runner, "run", fake_run)
    monkeypatch.setenv("PGPASSWORD", "pg-secret-value")
    over_tcp = staged_cluster(tmp_path)
    assert over_tcp.socket_directory is None and over_tcp.host == "127.0.0.1"

    def every_path(cluster):
        calls.clear()
        operations.check_postgres_reachable(cluster)
        archiving.check_before_backup(cluster, "pgBackRest", wait_seconds=0)
        assert marker.write_marker(cluster, "manual__1", "pgbackrest")
        with pytest.raises(archiving.ArchivingBroken):
            archiving.watchdog(cluster, "WAL-G", limit=1)()  # waiting, archiver stats, terminate
        assert len(calls) == 6
        return calls

    for argv, env in every_path(over_tcp):
        assert argv[argv.index("-h") + 1] == "127.0.0.1" and argv[argv.index("-d") + 1] == "postgres", argv
        assert env.get("PGPASSWORD") == "pg-secret-value", argv[-1]
        assert "pg-secret-value" not in " ".join(argv)
    through_socket = dataclasses.replace(over_tcp, socket_directory=str(tmp_path))
    for argv, env in every_path(through_socket):
        assert argv[argv.index("-h") + 1] == str(tmp_path) and "PGPASSWORD" not in env, argv[-1]
    monkeypatch.delenv("PGPASSWORD")
    assert all("PGPASSWORD" not in env for _, env in every_path(over_tcp))  # none given: none passed


def test_pitr_restore_tests_success_message_names_the_target_time(tmp_path):
    c = staged_cluster(tmp_path)
    args = dict(run_id="backfill__2026-11-20T02:00:00+00:00", tool="pgbackrest", record=RECORD, restore_seconds=3,
                smoke_result={"pg_tables": 3}, checks=CHECKS, signoff={"status": "approved", "by": "qa"})
    pitr = audit.audit_record(c, **args, target_time="2026-11-20T02:00:00+00:00")
    text = audit.summary_text(c, pitr)
    assert "*Target:* 2026-11-20T02:00:00+00:00 (point in time)" in text and RECORD["label"] in text
    latest = audit.summary_text(c, audit.audit_record(c, **args))
    assert "*Target:* latest" in latest and "point in time" not in latest


def test_a_cancelled_drill_is_audited_as_cancelled_whatever_passed(tmp_path):
    """A run marked failed by hand: outcome ``cancelled`` even when every step so far passed, and its
    Slack text says where it stopped and what ran."""
    c = staged_cluster(tmp_path)
    steps = {"guard": "success", "restore_latest_backup": "success", "data_checks": "success", "qa_signoff": "failed"}
    line = audit.audit_record(c, run_id="manual__x", tool="pgbackrest", record=RECORD, restore_seconds=3,
                              smoke_result={"pg_tables": 3}, checks=CHECKS, signoff=None,
                              cancelled={"at": "2026-12-02T06:00:00+00:00", "by": None, "steps": steps})
    assert line["outcome"] == "cancelled" and line["cancelled"]["steps"] == steps
    text = audit.cancelled_text(c, line)
    assert text.startswith(":no_entry: *Restore test cancelled* - cluster `asso`") and "manual__x" in text
    assert "*Stopped in:* qa_signoff" in text and "restore_latest_backup" in text
    assert "cancelled" not in audit.audit_record(c, run_id="r", tool="pgbackrest", record=RECORD, restore_seconds=3,
                                                 smoke_result={"pg_tables": 3}, checks=CHECKS,
                                                 signoff={"status": "approved"})


def test_the_restore_lock_is_held_while_the_restore_writes_staging(tmp_path, monkeypatch):
    """The teardown of a cancelled run takes this lock before it releases staging: it is held for
    exactly as long as the restore runs (and, an flock, dropped with the process that holds it)."""
    import fcntl

    c = staged_cluster(tmp_path)
    seen = {}

    def restore(*args, **kwargs):
        with open(Path(c.lock_directory) / "asso.restore.lock") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                seen["held"] = False
            except BlockingIOError:
                seen["held"] = True

    monkeypatch.setattr(staging, "restore_into_staging", restore)
    monkeypatch.setattr(staging, "guard", lambda *a, **k: {})
    operations.restore_latest_backup(c, "pgbackrest", None, record=RECORD)
    assert seen == {"held": True}
    with operations.restore_lock(c, timeout=1):  # free again
        pass
