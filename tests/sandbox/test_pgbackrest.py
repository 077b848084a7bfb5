"""Daily pgBackRest backups on the sandbox: a real PostgreSQL 15, real pgBackRest, S3 over TLS,
and the DAG run by a real Airflow (`airflow dags test`)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest

from pg_backups import pgbackrest
from support import wait_for

pytestmark = [pytest.mark.sandbox, pytest.mark.slow]

PG_BIN = Path("/usr/lib/postgresql/15/bin")


def pgbackrest_info(cluster) -> dict:
    return pgbackrest.info(cluster)


def test_dag_run_leaves_a_listed_verified_backup_tagged_with_its_run(first_backup, sandbox):
    # verify (--set, pgBackRest 2.55+) is skipped on the sandbox's 2.45, saying why; the rest succeeds.
    assert {t: s for t, s in first_backup.task_states.items() if t != "verify"} == {
        t: "success" for t in first_backup.task_states if t != "verify"}, first_backup.task_states
    record = first_backup.xcoms["publish_backup"]
    cluster = sandbox.cluster()
    labels = {b["label"]: b for b in pgbackrest_info(cluster)["backup"]}
    assert record["label"] in labels
    assert labels[record["label"]]["annotation"]["airflow_run_id"] == first_backup.run_id
    assert record["airflow_run_id"] == first_backup.run_id
    assert record["tool"] == "pgbackrest" and record["database_size_bytes"] > 1_000_000
    assert record["wal_start"] and record["wal_stop"] and record["duration_seconds"] >= 0
    # The backup's own verify needs verify --set (2.55+): skipped on the sandbox's 2.45 (the drill
    # proves the backup); the whole repository's, run directly, finds nothing wrong.
    assert first_backup.task_states["verify"] == "skipped"
    assert pgbackrest.verify(cluster) == "ok"


def _restore_and_start(sandbox, cluster, target: Path, *options: str) -> int:
    """Restore into a scratch directory and start it on a scratch port; returns the port."""
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(mode=0o700)
    shutil.chown(target, "postgres", "postgres")
    pgbackrest.run(cluster, "restore", f"--pg1-path={target}", "--archive-mode=off", *options)
    port = sandbox.layout.port_base + 8
    subprocess.run(["runuser", "-u", "postgres", "--", PG_BIN / "pg_ctl", "-D", target, "-w", "-t", "120",
                    "-l", sandbox.layout.run_dir / f"{target.name}.log",
                    "-o", f"-p {port} -k {sandbox.layout.run_dir} -c archive_mode=off", "start"], check=True,
                   capture_output=True)
    wait_for(lambda: sandbox.psql("SELECT NOT pg_is_in_recovery()", port=port) == "t", 120, what="recovery end")
    return port


def _stop(target: Path) -> None:
    subprocess.run(["runuser", "-u", "postgres", "--", PG_BIN / "pg_ctl", "-D", target, "-m", "immediate", "stop"],
                   capture_output=True)
    shutil.rmtree(target, ignore_errors=True)


def test_restore_of_the_backup_starts_and_has_the_seeded_rows(first_backup, sandbox):
    cluster = sandbox.cluster()
    label = first_backup.xcoms["publish_backup"]["label"]
    target = sandbox.layout.root / "scratch-restore"
    port = _restore_and_start(sandbox, cluster, target, f"--set={label}", "--type=immediate",
                              "--target-action=promote")
    try:
        assert sandbox.psql("SELECT count(*) FROM members", port=port) == "3000"
        assert sandbox.psql("SELECT count(*) FROM payments", port=port) == "9000"
    finally:
        _stop(target)


def _wait_archived(sandbox) -> None:
    """Switch WAL and wait until the segment holding everything so far is in the repository."""
    segment = sandbox.psql("SELECT pg_walfile_name(pg_current_wal_lsn())", db="postgres")
    sandbox.psql("SELECT pg_switch_wal()", db="postgres")
    wait_for(lambda: sandbox.psql("SELECT last_archived_wal >= '%s' FROM pg_stat_archiver" % segment,
                                  db="postgres") == "t", 120, what=f"archiving of {segment}")


def test_point_in_time_restore_recovers_a_row_committed_after_the_backup(first_backup, sandbox):
    cluster = sandbox.cluster()
    marker = f"pitr-{time.time_ns()}@example.org"
    sandbox.psql(f"INSERT INTO members (email, full_name, joined_on) VALUES ('{marker}', 'PITR', now())")
    time.sleep(1.1)
    target_time = sandbox.psql("SELECT now()", db="postgres")  # after the commit above
    time.sleep(1.1)
    late = f"late-{time.time_ns()}@example.org"
    sandbox.psql(f"INSERT INTO members (email, full_name, joined_on) VALUES ('{late}', 'too late', now())")
    _wait_archived(sandbox)

    target = sandbox.layout.root / "scratch-pitr"
    port = _restore_and_start(sandbox, cluster, target, "--type=time", f"--target={target_time}",
                              "--target-action=promote")
    try:
        assert sandbox.psql(f"SELECT count(*) FROM members WHERE email = '{marker}'", port=port) == "1"
        assert sandbox.psql(f"SELECT count(*) FROM members WHERE email = '{late}'", port=port) == "0"
    finally:
        _stop(target)


def test_retention_expires_old_full_backups_and_their_wal(first_backup, sandbox):
    """30 days cannot pass in a test: a count-based retention of 1 shows expire doing its work."""
    cluster = sandbox.cluster()
    pgbackrest.backup(cluster, "full")
    newest = pgbackrest.backup(cluster, "full")
    before = pgbackrest_info(cluster)
    assert len([b for b in before["backup"] if b["type"] == "full"]) >= 2
    oldest_wal_before = before["archive"][0]["min"]

    pgbackrest.run(cluster, "expire", "--repo1-retention-full-type=count", "--repo1-retention-full=1")

    after = pgbackrest_info(cluster)
    assert [b["label"] for b in after["backup"]] == [newest["label"]]
    assert after["archive"][0]["min"] > oldest_wal_before  # WAL before the kept backup went too
    assert after["archive"][0]["min"] <= newest["archive"]["start"]  # the kept backup's WAL stayed


def test_generated_config_keeps_30_days_of_full_backups_by_time(sandbox):
    text = Path(sandbox.cluster().pgbackrest.config_path).read_text()
    assert "repo1-retention-full-type=time\n" in text and "repo1-retention-full=30\n" in text
    assert "\nrepo1-retention-archive-type" not in text  # 'time' is rejected by pgBackRest 2.45
    assert "compress-type=zst" in text and "archive-async=y" in text and "start-fast=y" in text
    # the generated file is what pgBackRest itself accepts
    proc = pgbackrest.run(sandbox.cluster(), "info", "--output=json")
    assert json.loads(proc.stdout)[0]["status"]["code"] == 0


def test_s3_down_fails_clearly_retries_alerts_and_a_later_run_succeeds(first_backup, sandbox):
    seen = len(sandbox.slack_messages())
    sandbox.stop_s3()
    try:
        failed = sandbox.dags_test("pgbackrest_backup_asso")
    finally:
        sandbox.start_s3()
    assert failed.state == "failed"
    assert failed.task_states["preflight"] == "failed"
    assert failed.try_numbers["preflight"] == 2  # retried once (the sandbox's retries: 1) before failing
    assert "backup" not in failed.task_states or failed.task_states["backup"] in (None, "upstream_failed")
    assert "is unreachable for bucket asso-prod-backups" in failed.output
    alerts = [t for t in sandbox.slack_texts_since(seen) if "pgbackrest_backup_asso" in t]
    assert alerts, sandbox.slack_messages()[seen:]
    assert "preflight" in alerts[-1] and "asso" in alerts[-1] and "unreachable" in alerts[-1]
    assert "Try:* 2" in alerts[-1]

    again = sandbox.dags_test("pgbackrest_backup_asso")
    assert again.state == "success", again.output[-3000:]


def test_bad_configuration_is_refused_before_pgbackrest_runs(sandbox, tmp_path):
    """A spy pgbackrest first on PATH records any call: there must be none."""
    spy_dir = tmp_path / "bin"
    spy_dir.mkdir()
    calls = tmp_path / "calls"
    (spy_dir / "pgbackrest").write_text(f"#!/bin/sh\necho \"$@\" >> {calls}\nexit 0\n")
    (spy_dir / "pgbackrest").chmod(0o755)
    bad = tmp_path / "clusters.yaml"
    bad.write_text(sandbox.layout.clusters_file.read_text().replace("process_max: 2", "process_max: 0"))
    env = {"PG_BACKUPS_CONFIG": str(bad), "PATH": f"{spy_dir}:{os.environ['PATH']}"}

    script = sandbox.run("include/scripts/pgbackrest_backup.sh", env=env, check=False)
    assert script.returncode == 2
    assert "pgbackrest.process_max" in script.stderr and "Fix:" in script.stderr
    bad_port = sandbox.run("include/scripts/pgbackrest_backup.sh", env={**env, "PG_BACKUPS_CONFIG":
                           str(sandbox.layout.clusters_file), "PGPORT": "five"}, check=False)
    assert bad_port.returncode == 2 and "PGPORT" in bad_port.stderr
    assert not calls.exists()

    listing = sandbox.airflow("dags", "list-import-errors", "--local", "-o", "json", env=env, check=False)
    assert "pgbackrest.process_max" in listing.stdout + listing.stderr


def test_cron_script_runs_the_same_chain_and_prints_the_record(first_backup, sandbox):
    proc = sandbox.run("include/scripts/pgbackrest_backup.sh", timeout=900)
    record = json.loads(proc.stdout)
    assert record["tool"] == "pgbackrest" and record["airflow_run_id"].startswith("cron__")
    labels = [b["label"] for b in pgbackrest_info(sandbox.cluster())["backup"]]
    assert record["label"] == labels[-1]
    for step in ("check", "backup", "expire"):
        assert f" {step}" in proc.stderr, step
    assert "has no verify --set (2.55+)" in proc.stderr  # 2.45: the backup's own verify is skipped, saying why
    assert datetime.fromisoformat(record["stop_time"]) <= datetime.now(timezone.utc)
