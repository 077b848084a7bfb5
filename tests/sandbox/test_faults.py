"""Faults on the real sandbox: each case breaks something for real (S3, PostgreSQL, a worker, Slack,
a second trigger) and asserts that nothing is lost and that the failure is loud.

Every case puts the sandbox back as it found it (S3, PostgreSQL and the Slack receiver up, backups
restorable) in ``finally``: the whole test session shares one sandbox.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import sandbox as sandbox_module
from pg_backups import pgbackrest, runner
from support import REPO, wait_for

pytestmark = [pytest.mark.sandbox, pytest.mark.slow]


def _archiver(sandbox) -> dict:
    row = sandbox.psql("SELECT archived_count, failed_count, coalesce(last_archived_wal, ''), "
                       "coalesce(last_failed_wal, '') FROM pg_stat_archiver", db="postgres")
    archived, failed, last_archived, last_failed = row.split("|")
    return {"archived": int(archived), "failed": int(failed), "last_archived": last_archived,
            "last_failed": last_failed}


def _assert_no_secret(sandbox, *texts: str) -> None:
    for secret in sandbox.secrets():
        for text in texts:
            assert secret not in text, "a secret of the sandbox appears in the output"


def _production_up(sandbox, seconds: float = 120) -> None:
    """Start production again. Retried: while it was down, another program's outgoing connection
    may have been given its port as an ephemeral source port (seen here: "could not bind IPv4
    address: Address already in use"); that connection ends within seconds."""
    L = sandbox.layout
    deadline = time.monotonic() + seconds
    while not sandbox_module.pg_running(L.pgdata):
        started = sandbox_module.pg_ctl(L.pgdata, "-l", L.pgdata.parent / "production.log", "-w", "-t", "60", "start",
                                        check=False)
        if started.returncode != 0:
            assert time.monotonic() < deadline, f"production PostgreSQL does not start again: {started.stdout}"
            time.sleep(2)


def _pgbackrest_pids(config_path: str) -> list[int]:
    """pgBackRest processes of this sandbox (its config path on the command line) running a backup."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        args = [a.decode(errors="replace") for a in argv if a]
        if args and args[0].endswith("pgbackrest") and f"--config={config_path}" in args \
                and any(a.startswith("backup") for a in args[1:]):
            pids.append(int(entry.name))
    return pids


# --------------------------------------------------------------------------------------------


def test_s3_down_during_wal_archiving_queues_then_catches_up_and_loses_nothing(first_backup, sandbox):
    """archive-push (async) fails while S3 is down, so PostgreSQL keeps the segment in pg_wal and
    counts the failure; once S3 is back the segment reaches the repository with the row in it."""
    cluster = sandbox.cluster()
    before = _archiver(sandbox)
    marker = f"wal-fault-{time.time_ns()}@example.org"
    sandbox.stop_s3()
    try:
        sandbox.psql(f"INSERT INTO members (email, full_name, joined_on) VALUES ('{marker}', 'WAL fault', now())")
        segment = sandbox.psql("SELECT pg_walfile_name(pg_current_wal_insert_lsn())", db="postgres")
        sandbox.psql("SELECT pg_switch_wal()", db="postgres")
        # Loud: PostgreSQL counts the failed archive_command (the freshness DAG alerts on it).
        wait_for(lambda: _archiver(sandbox)["failed"] > before["failed"], 120, what="archive failure while S3 is down")
        # Not lost: the segment waits in pg_wal, flagged .ready, and is not reported as archived.
        pg_wal = sandbox.layout.pgdata / "pg_wal"
        assert (pg_wal / segment).exists()
        assert (pg_wal / "archive_status" / f"{segment}.ready").exists()
        assert _archiver(sandbox)["last_archived"] < segment
    finally:
        sandbox.start_s3()
    sandbox.psql("SELECT pg_reload_conf()", db="postgres")  # SIGHUP wakes the archiver: no 60 s nap
    wait_for(lambda: _archiver(sandbox)["last_archived"] >= segment, 180, every=2,
             what=f"archiving of {segment} to catch up after S3 came back")
    assert not (sandbox.layout.pgdata / "pg_wal" / "archive_status" / f"{segment}.ready").exists()

    archive = pgbackrest.info(cluster)["archive"][-1]
    assert archive["max"][:24] >= segment, archive  # the repository's WAL range moved past it
    # The segment itself comes back from the repository, and the row committed while S3 was down is
    # in it: a point-in-time restore can replay it.
    fetched = sandbox.layout.run_dir / f"fetched-{segment}"
    try:
        runner.run([*pgbackrest.command(cluster, "archive-get"), segment, str(fetched)], os_user=cluster.os_user,
                   timeout=120)
        assert marker.encode() in fetched.read_bytes()
    finally:
        fetched.unlink(missing_ok=True)


def test_production_down_fails_at_preflight_with_a_clear_message_and_alerts(first_backup, sandbox):
    L = sandbox.layout
    seen = len(sandbox.slack_messages())
    labels_before = [b["label"] for b in pgbackrest.info(sandbox.cluster())["backup"]]
    sandbox_module.pg_ctl(L.pgdata, "-m", "fast", "-w", "stop")
    try:
        failed = sandbox.dags_test("pgbackrest_backup_asso")
    finally:
        _production_up(sandbox)
    assert failed.state == "failed", failed.task_states
    assert failed.task_states["preflight"] == "failed"
    assert failed.task_states.get("backup") in (None, "upstream_failed")
    message = f"production PostgreSQL of cluster asso (127.0.0.1:{L.pg_port}) is not accepting connections"
    assert message in failed.output
    alerts = [t for t in sandbox.slack_texts_since(seen) if "pgbackrest_backup_asso" in t]
    assert alerts and "preflight" in alerts[-1] and "not accepting connections" in alerts[-1], alerts
    _assert_no_secret(sandbox, failed.output, *alerts)
    # Nothing was half-written: the repository lists the same backups, and PostgreSQL is back.
    assert [b["label"] for b in pgbackrest.info(sandbox.cluster())["backup"]] == labels_before
    assert sandbox.psql("SELECT count(*) FROM members WHERE id <= 3000") == "3000"


def test_worker_killed_mid_backup_is_never_a_success_and_the_next_run_is_clean(first_backup, sandbox):
    cluster = sandbox.cluster()
    config_path = cluster.pgbackrest.config_path
    env = {**os.environ, **sandbox.env}
    script = REPO / "include" / "scripts" / "pgbackrest_backup.sh"
    worker = subprocess.Popen([str(script)], env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, start_new_session=True)
    try:
        pids = wait_for(lambda: _pgbackrest_pids(config_path) or (worker.poll() is not None and ["gone"]), 180,
                        every=0.05, what="pgbackrest backup to start")
        assert pids != ["gone"], "the cron script ended before its backup could be killed"
        time.sleep(0.5)  # well inside the backup: started, copying
        # The whole worker dies at once (OOM killer, node lost): the script, Python, pgBackRest.
        os.killpg(worker.pid, signal.SIGKILL)
        for pid in _pgbackrest_pids(config_path):  # runuser may have put pgBackRest in its own group
            os.kill(pid, signal.SIGKILL)
        out, err = worker.communicate(timeout=60)
    finally:
        if worker.poll() is None:
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait()
    assert worker.returncode == -signal.SIGKILL
    assert not out.strip(), "a killed run printed a backup record"
    killed_run = sandbox.psql("SELECT run_id FROM pg_backups_marker ORDER BY created_at DESC LIMIT 1", db="postgres")
    assert killed_run.startswith("cron__")
    listed = pgbackrest.info(cluster)["backup"]
    assert not [b for b in listed if (b.get("annotation") or {}).get("airflow_run_id") == killed_run], \
        "the killed backup is listed as a backup"
    wait_for(lambda: not _pgbackrest_pids(config_path), 30, what="no pgBackRest of the killed run left")

    # The next run takes the locks the dead one held (flock: released with the process), and succeeds.
    again = sandbox.run(script, timeout=900)
    record = json.loads(again.stdout)
    assert record["airflow_run_id"] != killed_run
    newest = pgbackrest.info(cluster)["backup"][-1]
    assert newest["label"] == record["label"] and not newest.get("error")
    assert pgbackrest.verify(cluster) == "ok"
    _assert_no_secret(sandbox, out, err, again.stdout, again.stderr)


CONCURRENT_BACKUP = """
import json, logging, sys
logging.basicConfig(level=logging.INFO, stream=sys.stderr)
from pg_backups import operations, pgbackrest
from pg_backups.config import load_config
cluster = load_config().cluster("asso")
done = operations.pgbackrest_backup(cluster, "incr", sys.argv[1])
entry = next(b for b in pgbackrest.info(cluster)["backup"] if b["label"] == done["label"])
print(json.dumps({"label": done["label"], "start": entry["timestamp"]["start"], "stop": entry["timestamp"]["stop"]}))
"""


def test_two_triggers_of_the_same_backup_run_one_after_the_other_and_both_succeed(first_backup, sandbox):
    env = {**os.environ, **sandbox.env, "PYTHONPATH": str(REPO / "plugins")}
    procs = [subprocess.Popen([sys.executable, "-c", CONCURRENT_BACKUP, f"concurrent_{n}_{time.time_ns()}"], env=env,
                              cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for n in (1, 2)]
    results = []
    try:
        for proc in procs:
            out, err = proc.communicate(timeout=600)
            assert proc.returncode == 0, err[-3000:]
            results.append((json.loads(out.strip().splitlines()[-1]), err))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    (first, _), (second, _) = sorted(results, key=lambda r: r[0]["start"])
    assert first["label"] != second["label"]
    assert second["start"] >= first["stop"], (first, second)  # serial: never two backups at once
    waited = [err for _, err in results if "another backup of cluster asso is running; waiting" in err]
    assert len(waited) == 1, "exactly one of the two waited for the cluster lock"
    assert not any("[050]" in err or "unable to acquire lock" in err for _, err in results)


def test_slack_unreachable_keeps_the_tasks_own_failure(first_backup, sandbox):
    closed_port = sandbox.layout.port_base + 7  # nothing of the sandbox listens there
    assert not sandbox_module.port_open(closed_port)
    slack = {"conn_type": "slackwebhook", "host": f"http://127.0.0.1:{closed_port}/services",
             "password": "T0CLOSED/B0CLOSED/nobodylistens"}
    seen = len(sandbox.slack_messages())
    sandbox.stop_s3()
    try:
        failed = sandbox.dags_test("pgbackrest_backup_asso", env={"AIRFLOW_CONN_SLACK_OPS": json.dumps(slack)})
    finally:
        sandbox.start_s3()
    assert failed.state == "failed"
    assert failed.task_states["preflight"] == "failed" and failed.try_numbers["preflight"] == 2
    assert failed.task_states.get("backup") in (None, "upstream_failed")
    assert "is unreachable for bucket asso-prod-backups" in failed.output  # the original reason
    assert "Slack alert not sent" in failed.output  # the alert's own failure is a warning, not the error
    assert sandbox.slack_messages()[seen:] == []
    _assert_no_secret(sandbox, failed.output)


# --------------------------------------------------------------------------------------------
# Restore side, through the cron script (no QA sign-off to wait for): each failure writes a
# "failed" audit line, exits non-zero, alerts Slack, and leaves production alone.

RESTORE_SCRIPT = REPO / "include" / "scripts" / "quarterly_restore_test.sh"


def _restore_env(sandbox) -> dict:
    L = sandbox.layout
    return {"RESTORE_TOOL": "pgbackrest", "STAGING_PGDATA": str(L.staging_root / "data"), "PG_BACKREST_STANZA": "asso",
            "STAGING_CONNECTION_URI": f"postgresql://postgres:x@127.0.0.1:{L.staging_port}/app"}


def _audit_lines(sandbox) -> list[dict]:
    path = Path(sandbox.cluster().restore_test.audit_log)
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def _staging_stopped(sandbox) -> None:
    from pg_backups import staging

    staging.stop_staging(sandbox.cluster())


def _assert_failed_loudly(sandbox, proc, audits_before: int, slack_before: int) -> dict:
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert not proc.stdout.strip() or json.loads(proc.stdout).get("outcome") != "success"
    lines = _audit_lines(sandbox)[audits_before:]
    assert len(lines) == 1 and lines[0]["outcome"] == "failed", lines
    texts = sandbox.slack_texts_since(slack_before)
    assert any("cron restore-test failed" in t for t in texts), texts
    assert not any("Restore test passed" in t for t in texts)
    _assert_no_secret(sandbox, proc.stdout, proc.stderr, *texts, json.dumps(lines))
    assert sandbox.psql("SELECT count(*) FROM members WHERE id <= 3000") == "3000"  # production untouched
    return lines[0]


def test_restore_with_the_staging_port_taken_fails_loudly(first_backup, sandbox):
    import socket

    _staging_stopped(sandbox)
    audits, seen = len(_audit_lines(sandbox)), len(sandbox.slack_messages())
    squatter = socket.socket()
    squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    squatter.bind(("127.0.0.1", sandbox.layout.staging_port))
    squatter.listen()
    try:
        proc = sandbox.run(RESTORE_SCRIPT, env=_restore_env(sandbox), check=False, timeout=600)
    finally:
        squatter.close()
        _staging_stopped(sandbox)
    line = _assert_failed_loudly(sandbox, proc, audits, seen)
    assert "could not start server" in proc.stderr or "Address already in use" in proc.stderr, proc.stderr[-3000:]
    assert line["errors"]


def test_restore_into_a_full_staging_disk_fails_loudly(first_backup, sandbox):
    L = sandbox.layout
    _staging_stopped(sandbox)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=20m,mode=0755", "tmpfs", str(L.staging_root)],
                             capture_output=True, text=True)
    assert mounted.returncode == 0, f"cannot mount a small tmpfs as staging root here: {mounted.stderr}"
    audits, seen = len(_audit_lines(sandbox)), len(sandbox.slack_messages())
    try:
        proc = sandbox.run(RESTORE_SCRIPT, env=_restore_env(sandbox), check=False, timeout=600)
    finally:
        _staging_stopped(sandbox)
        if subprocess.run(["umount", str(L.staging_root)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(L.staging_root)], capture_output=True)
    line = _assert_failed_loudly(sandbox, proc, audits, seen)
    # pgBackRest names the file it could not write (not always errno 28): that line is the error reported.
    assert "unable to write '" + str(L.staging_root / "data") in json.dumps(line["errors"]), line["errors"]
    assert "unable to write" in sandbox.slack_texts_since(seen)[-1]
    assert line.get("restore_duration_seconds") is None


def test_restore_test_while_a_backup_runs_restores_a_complete_backup(first_backup, sandbox):
    cluster = sandbox.cluster()
    before = {b["label"] for b in pgbackrest.info(cluster)["backup"]}
    env = {**os.environ, **sandbox.env}
    backup = subprocess.Popen([str(REPO / "include" / "scripts" / "pgbackrest_backup.sh")], env=env, cwd=REPO,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        wait_for(lambda: _pgbackrest_pids(cluster.pgbackrest.config_path) or backup.poll() is not None, 180,
                 every=0.05, what="the backup to start")
        restored = sandbox.run(RESTORE_SCRIPT, env=_restore_env(sandbox), check=False, timeout=600)
        out, err = backup.communicate(timeout=600)
    finally:
        if backup.poll() is None:
            os.killpg(backup.pid, signal.SIGKILL)
        _staging_stopped(sandbox)
    assert backup.returncode == 0, err[-3000:]
    assert restored.returncode == 0, restored.stdout[-2000:] + restored.stderr[-3000:]
    line = _audit_lines(sandbox)[-1]
    assert line["outcome"] == "success"
    new_label = json.loads(out)["label"]
    # The restore took a complete backup: one listed before, or the new one once it had finished.
    assert line["backup_label"] in before | {new_label}
    good = {b["label"] for b in pgbackrest.info(cluster)["backup"] if not b.get("error")}
    assert line["backup_label"] in good and new_label in good


def test_staging_recovers_while_production_holds_its_archive_lock(first_backup, sandbox):
    """pgBackRest's asynchronous archive-get (staging's restore_command) and archive-push
    (production's archive_command) lock the same file, ``<lock-path>/<stanza>-archive.lock``. With
    one lock path, staging's recovery stalled production's archiving (CI: a backup beside a restore
    test failed with "[082] WAL segment ... was not archived before the 120000ms timeout"), and
    production's archive-push would stall staging's recovery. Here production's side holds the lock
    for the whole restore test: staging recovers anyway, on a lock path of its own."""
    cluster = sandbox.cluster()
    lock_file = Path(cluster.pgbackrest.lock_path) / f"{cluster.stanza}-archive.lock"
    created = not lock_file.exists()
    with open(lock_file, "a") as held:
        shutil.chown(lock_file, cluster.os_user, cluster.os_user)  # pgBackRest's own user opens it later
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)  # how pgBackRest locks it
        try:
            restored = sandbox.run(RESTORE_SCRIPT, env=_restore_env(sandbox), check=False, timeout=900)
        finally:
            _staging_stopped(sandbox)
            if created:
                lock_file.unlink(missing_ok=True)
    assert restored.returncode == 0, restored.stdout[-2000:] + restored.stderr[-3000:]
    assert _audit_lines(sandbox)[-1]["outcome"] == "success"
    auto_conf = (sandbox.layout.staging_root / "data" / "postgresql.auto.conf").read_text()
    restore_command = next(line for line in auto_conf.splitlines() if line.startswith("restore_command"))
    assert f"--lock-path={pgbackrest.restore_lock_path(cluster)} " in restore_command, restore_command


def _stop_s3_once_the_backup_releases_the_lock(sandbox, cluster, stopped: list) -> None:
    """Wait until the backup task holds the cluster's lock, then take it the moment the backup lets
    go, stop S3 while holding it, and let go: expire (which waits on the same lock) finds S3 down.
    Deterministic where polling the task's state would race with the next task's start."""
    path = Path(cluster.lock_directory) / f"{cluster.name}.backup.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + 600
    with open(path, "a+") as handle:
        while time.monotonic() < deadline:  # 1. the backup takes the lock
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                fcntl.flock(handle, fcntl.LOCK_UN)
                time.sleep(0.05)
            except BlockingIOError:
                break
        fcntl.flock(handle, fcntl.LOCK_EX)  # 2. blocks until the backup has ended
        try:
            sandbox.stop_s3()
            stopped.append(True)
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def test_s3_down_right_after_the_backup_still_publishes_it_and_expire_fails_alone(first_backup, sandbox):
    """Measured before: S3 stopped right after `backup` → expire failed, and verify and
    publish_backup were upstream_failed: the backup got no record, no asset event, no drill. Now
    publish_backup follows the backup directly and needs nothing more from S3."""
    import threading

    cluster = sandbox.cluster()
    seen = len(sandbox.slack_messages())
    stopped: list = []
    watcher = threading.Thread(target=_stop_s3_once_the_backup_releases_the_lock, args=(sandbox, cluster, stopped),
                               daemon=True)
    watcher.start()
    try:
        run = sandbox.dags_test("pgbackrest_backup_asso")
    finally:
        watcher.join(timeout=60)
        sandbox.start_s3()
    assert stopped, "S3 was never stopped: the backup did not take the cluster's lock"
    assert run.state == "failed", run.output[-3000:]
    assert run.task_states["backup"] == "success"
    assert run.task_states["expire"] == "failed", run.task_states
    assert run.task_states["publish_backup"] == "success", run.task_states
    record = run.xcoms["publish_backup"]
    assert record["label"] == run.xcoms["backup"]["label"] and record["airflow_run_id"] == run.run_id
    events = sandbox._db("SELECT e.extra FROM asset_event e JOIN asset a ON a.id = e.asset_id "
                         "WHERE a.name = 'pgbackrest_backup_asso' AND e.source_run_id = ?", run.run_id)
    assert len(events) == 1 and json.loads(events[0][0])["label"] == record["label"], events
    metrics = (sandbox.layout.root / "metrics" / "pg_backups_asso_pgbackrest.prom").read_text()
    assert f'label="{record["label"]}"' in metrics
    texts = sandbox.slack_texts_since(seen)
    assert any("expire" in t for t in texts), texts  # expire's own alert
    assert record["label"] in [b["label"] for b in pgbackrest.info(cluster)["backup"]]
