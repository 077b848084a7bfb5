"""The DAGs as Ops run them: a real scheduler, dag-processor, triggerer and API server over the
sandbox (two clusters), runs triggered through the REST API (with and without a logical date and
conf) and the CLI, backfills, two clusters at once, QA's sign-off answered as ``qa``.

These run last in the session (see tests/conftest.py): the real scheduler would also pick up the runs that
``airflow dags test`` makes in the same metadata database.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from airflow_api import failure_report
from support import wait_for

pytestmark = [pytest.mark.sandbox, pytest.mark.scheduler, pytest.mark.slow]


def iso(dt: datetime) -> str:
    return dt.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


def pgbackrest_info(sandbox, cluster_name: str) -> list[dict]:
    from pg_backups import pgbackrest
    from pg_backups.config import load_config

    cluster = load_config(sandbox.layout.clusters_file).cluster(cluster_name)
    return pgbackrest.info(cluster).get("backup", [])


def annotation(backup: dict, key: str = "airflow_run_id"):
    return (backup.get("annotation") or {}).get(key)


def succeeded(stack, dag_id: str, run_id: str) -> dict:
    run = stack.wait_run(dag_id, run_id)
    tasks = stack.tasks(dag_id, run_id)
    if run["state"] != "success":  # the failed tasks' log tails: the cause, in CI's output
        pytest.fail(failure_report(dag_id, run_id, tasks,
                                   lambda task_id, try_number: stack.log(dag_id, run_id, task_id, try_number)))
    return tasks


def ready(stack, *dag_ids: str) -> None:
    stack.wait_parsed(*dag_ids)
    for dag_id in dag_ids:
        stack.unpause(dag_id)


def test_every_dag_runs_when_triggered_without_a_logical_date(stack, sandbox):
    """The REST API's default ({"logical_date": null}, what `airflow dags trigger` does too): the run
    has no logical date, and every task works anyway (it used to fail with KeyError: 'logical_date')."""
    dags = ["s3_bucket_config_asso", "pgbackrest_backup_asso", "backup_freshness_asso"]
    if "walg" in sandbox.cluster().tools:  # a WAL-G binary was found: the freshness check wants its backup too
        dags.insert(2, "walg_backup_asso")
    ready(stack, *dags)
    # Earlier tests of the session failed archiving on purpose (S3 stopped, archive_command broken),
    # and check_wal_archiving counts the failures since its previous run: this test is not about
    # them, so it starts from fresh pg_stat_archiver counters.
    sandbox.psql("SELECT pg_stat_reset_shared('archiver')", db="postgres")
    for dag_id in dags:
        run_id = stack.trigger(dag_id)
        assert stack.run(dag_id, run_id)["logical_date"] is None
        tasks = succeeded(stack, dag_id, run_id)
        # The backup's own verify needs pgBackRest 2.55+: skipped on the sandbox's 2.45.
        assert all(t["state"] == "success" or (name == "verify" and t["state"] == "skipped")
                   for name, t in tasks.items()), tasks
    backups = pgbackrest_info(sandbox, "asso")
    assert any(annotation(b) and annotation(b).startswith("manual__") for b in backups)


def test_a_run_with_a_logical_date_and_conf_as_the_ui_form_sends_it(stack, sandbox):
    """The trigger form: a logical date and the params as conf. backup_type=full is honoured, and the
    backup carries the run's id and kind."""
    ready(stack, "pgbackrest_backup_asso")
    logical = datetime.now(timezone.utc) - timedelta(minutes=30)
    run_id = stack.trigger("pgbackrest_backup_asso", iso(logical), {"backup_type": "full"})
    succeeded(stack, "pgbackrest_backup_asso", run_id)
    record = stack.xcom("pgbackrest_backup_asso", run_id, "publish_backup")
    assert record["type"] == "full" and record["airflow_run_id"] == run_id
    assert record["airflow_run_type"] == "manual"


def test_backfill_of_a_backup_dag_takes_at_most_one_backup_now(stack, sandbox):
    """Three past days, with the backfill's own max_active_runs of 10: never three backups, never one
    labelled as if taken in the past. A run that takes none is skipped and says why. (The runs that
    unpausing starts race for the cluster's lock: the backfill's first run or the scheduled run of
    the current slot backs up, and the slot is then covered.)"""
    dag_id = "pgbackrest_backup_billing"
    stack.wait_parsed(dag_id)  # still paused, never run: billing has no backup yet
    before = {b["label"] for b in pgbackrest_info(sandbox, "billing")}
    today = datetime.now(timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0)
    stack.request("POST", "/api/v2/backfills", {"dag_id": dag_id, "from_date": iso(today - timedelta(days=3)),
                                               "to_date": iso(today - timedelta(seconds=1))})
    stack.unpause(dag_id)  # its latest daily slot gets a scheduled run too: one of the two backs up
    runs = stack.wait_backfill(dag_id, count=3)
    assert all(r["state"] == "success" for r in runs), runs
    new = [b for b in pgbackrest_info(sandbox, "billing") if b["label"] not in before]
    backfill_ids = {r["dag_run_id"] for r in runs}
    by_backfill = [b for b in new if annotation(b) in backfill_ids]
    assert len(by_backfill) <= 1, by_backfill
    for backup in by_backfill:  # taken now, and said to be a backfill run's
        assert annotation(backup, "airflow_run_type") == "backfill"
        assert backup["timestamp"]["start"] > time.time() - 3600
    for run in runs:
        backup = stack.tasks(dag_id, run["dag_run_id"])["backup"]
        if backup["state"] == "skipped":
            assert "A backup cannot be taken of the past" in stack.log_with(
                dag_id, run["dag_run_id"], "backup", "A backup cannot be taken of the past")
        else:
            assert backup["state"] == "success" and by_backfill
    assert sum(stack.tasks(dag_id, r["dag_run_id"])["backup"]["state"] == "success" for r in runs) == len(by_backfill)


def test_airflow_dags_trigger_from_the_cli(stack, sandbox):
    ready(stack, "pgbackrest_backup_billing")
    before = {r["dag_run_id"] for r in stack.runs("pgbackrest_backup_billing")}
    proc = sandbox.airflow("dags", "trigger", "pgbackrest_backup_billing", "-o", "json",
                                 env={"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    run_id = wait_for(lambda: next((r["dag_run_id"] for r in stack.runs("pgbackrest_backup_billing")
                                    if r["dag_run_id"] not in before and r["run_type"] == "manual"), None),
                      60, what="the CLI's run")
    succeeded(stack, "pgbackrest_backup_billing", run_id)
    assert any(annotation(b) == run_id for b in pgbackrest_info(sandbox, "billing"))


def test_two_triggers_of_one_clusters_backup_run_one_after_the_other(stack, sandbox):
    ready(stack, "pgbackrest_backup_asso")
    first, second = stack.trigger("pgbackrest_backup_asso"), stack.trigger("pgbackrest_backup_asso")
    spans = []
    for run_id in (first, second):
        tasks = succeeded(stack, "pgbackrest_backup_asso", run_id)
        spans.append((tasks["preflight"]["start_date"], tasks["publish_backup"]["end_date"]))
    (start_a, end_a), (start_b, end_b) = sorted(spans)
    assert end_a <= start_b, f"runs overlapped: {spans}"
    labels = {annotation(b): b["label"] for b in pgbackrest_info(sandbox, "asso")}
    assert first in labels and second in labels and labels[first] != labels[second]


def test_two_clusters_back_up_at_once_without_breaking_each_other(stack, sandbox):
    """Each cluster has its own pgbackrest.conf (and credentials include): neither rewrites the
    other's stanza, and both keep archiving WAL after both backups."""
    ready(stack, "pgbackrest_backup_asso", "pgbackrest_backup_billing")
    runs = {dag_id: stack.trigger(dag_id) for dag_id in ("pgbackrest_backup_asso", "pgbackrest_backup_billing")}
    for dag_id, run_id in runs.items():
        succeeded(stack, dag_id, run_id)
    from pg_backups import pgbackrest
    from pg_backups.config import load_config

    config = load_config(sandbox.layout.clusters_file)
    paths = {c.name: c.pgbackrest.config_path for c in config.clusters}
    assert len(set(paths.values())) == 2, paths
    for cluster in config.clusters:
        text = Path(cluster.pgbackrest.config_path).read_text()
        assert f"[{cluster.name}]" in text and all(f"[{o}]" not in text for o in paths if o != cluster.name)
        pgbackrest.run(cluster, "check", timeout=300)  # archiving works for both, after both backups
        assert any(annotation(b) == runs[f"pgbackrest_backup_{cluster.name}"]
                   for b in pgbackrest.info(cluster).get("backup", []))


def test_restore_test_on_the_scheduler_signed_off_by_qa(stack, sandbox):
    dag_id = "restore_test_asso"
    ready(stack, dag_id)  # also starts the run of the latest quarterly slot: QA approves it too
    slack_before = len(sandbox.slack_messages())
    run_id = stack.trigger(dag_id)
    tasks = succeeded(stack, dag_id, run_id)
    assert tasks["qa_signoff"]["state"] == "success" and tasks["stop_staging_after"]["state"] == "success"
    audit = stack.xcom(dag_id, run_id, "audit_and_archive")["audit"]
    assert audit["outcome"] == "success" and audit["signoff"]["status"] == "approved" and audit["signoff"]["by"] == "qa"
    assert audit["target_time"] is None  # a run that is not a backfill restores the latest state
    texts = sandbox.slack_texts_since(slack_before)
    assert any("Restore test passed" in t for t in texts), texts


def test_backfill_of_the_restore_test_outside_the_retention_window_is_refused(stack, sandbox):
    """A quarterly slot months before the sandbox's first backup: the run fails in its guard, on its
    first try, naming the window, before staging is touched; its audit line records the target."""
    dag_id = "restore_test_asso"
    ready(stack, dag_id)
    stack.request("POST", "/api/v2/backfills", {"dag_id": dag_id, "from_date": "2026-07-01T00:00:00Z",
                                               "to_date": "2026-07-10T00:00:00Z"})
    (run,) = stack.wait_backfill(dag_id)
    assert run["state"] == "failed" and run["logical_date"].startswith("2026-07-05T02:00:00")
    tasks = stack.tasks(dag_id, run["dag_run_id"])
    assert tasks["guard"]["state"] == "failed" and tasks["guard"]["try_number"] == 1
    assert tasks["purge_staging"]["state"] == "upstream_failed"  # refused before staging was touched
    log = stack.log_with(dag_id, run["dag_run_id"], "guard", "is outside the recovery window", "nothing was deleted",
                         "Fix:")
    assert "is outside the recovery window" in log and "nothing was deleted" in log and "Fix:" in log
    lines = [json.loads(line) for line in
             Path(sandbox.cluster().restore_test.audit_log).read_text().splitlines()]
    line = next(entry for entry in lines if entry["run_id"] == run["dag_run_id"])
    assert line["outcome"] == "failed" and line["target_time"].startswith("2026-07-05T02:00:00")


def test_backfill_of_the_restore_test_proves_each_point_in_time(stack, sandbox):
    """billing's restore test runs every 2 minutes. A row committed before a slot and one after it:
    the backfill run of that slot restores the state as of its logical date (the first row, not the
    second), from the newest backup that finished before it, and its audit line says so."""
    backup_dag, dag_id = "pgbackrest_backup_billing", "restore_test_billing"
    ready(stack, backup_dag)
    backup_run = stack.trigger(backup_dag)
    succeeded(stack, backup_dag, backup_run)
    label = stack.xcom(backup_dag, backup_run, "publish_backup")["label"]
    port = sandbox.layout.billing_pg_port
    sandbox.psql("INSERT INTO invoices (number, amount_cents) VALUES ('BEFORE-SLOT', 1)", port=port)
    slot = datetime.now(timezone.utc).replace(second=0, microsecond=0)
    slot += timedelta(minutes=2 - slot.minute % 2)  # the next */2 slot
    time.sleep(max(0.0, (slot - datetime.now(timezone.utc)).total_seconds()) + 3)
    sandbox.psql("INSERT INTO invoices (number, amount_cents) VALUES ('AFTER-SLOT', 2)", port=port)
    sandbox.psql("SELECT pg_switch_wal()", port=port)  # the WAL past the slot reaches the repository
    wait_for(lambda: sandbox.psql("SELECT count(*) FROM pg_ls_archive_statusdir() WHERE name LIKE '%.ready'",
                                  db="postgres", port=port) == "0", 120, what="WAL archived")
    slack_before = len(sandbox.slack_messages())
    stack.request("POST", "/api/v2/backfills", {"dag_id": dag_id, "from_date": iso(slot), "to_date": iso(slot)})
    stack.unpause(dag_id)
    run = wait_for(lambda: next(iter(stack.runs(dag_id, "backfill")), None), 60, what="the backfill run")
    seen = {}

    def check_staging_then_approve():  # QA looks at staging while it is up, as QA does
        for run_id in stack.waiting_signoffs(dag_id):
            if run_id == run["dag_run_id"]:
                seen["rows"] = sandbox.psql("SELECT string_agg(number, ',' ORDER BY number) FROM invoices "
                                            "WHERE number LIKE '%-SLOT'", port=sandbox.layout.billing_staging_port)
            stack.api.answer(dag_id, run_id, "qa", "Approve", "checked by the test suite")
        final = stack.run(dag_id, run["dag_run_id"])
        return final if final["state"] in ("success", "failed") else None

    final = wait_for(check_staging_then_approve, 900, every=3, what="the backfill run to end")
    stack.unpause(dag_id, paused=True)  # no more runs every 2 minutes
    assert final["state"] == "success", stack.tasks(dag_id, run["dag_run_id"])
    assert seen["rows"] == "BEFORE-SLOT"
    audit = stack.xcom(dag_id, run["dag_run_id"], "audit_and_archive")["audit"]
    assert audit["target_time"].startswith(slot.isoformat()[:16]) and audit["backup_label"] == label
    texts = [t for t in sandbox.slack_texts_since(slack_before) if "Restore test passed" in t and label in t]
    assert any(f"*Target:* {audit['target_time']} (point in time)" in t for t in texts), texts  # not only the backup


def test_a_bad_cluster_entry_leaves_the_others_running(stack, sandbox):
    """Break billing's entry in the live configuration: one import error names it, asso's DAGs stay."""
    clusters_file = sandbox.layout.clusters_file
    original = clusters_file.read_text()
    try:
        clusters_file.write_text(original.replace('schedule: "*/2 * * * *"', 'schedule: "every two minutes"'))

        def one_error():
            errors = stack.request("GET", "/api/v2/importErrors")["import_errors"]
            return errors if errors and "restore_test.schedule" in errors[0]["stack_trace"] else None
        errors = wait_for(one_error, 180, every=5, what="the import error")
        assert len(errors) == 1 and errors[0]["filename"].endswith("configuration_errors.py")
        assert "clusters[1]" in errors[0]["stack_trace"] and "Fix:" in errors[0]["stack_trace"]
        dags = {d["dag_id"] for d in stack.request("GET", "/api/v2/dags?limit=200")["dags"]}
        assert {"pgbackrest_backup_asso", "restore_test_asso", "backup_freshness_asso"} <= dags
    finally:
        clusters_file.write_text(original)


# A run marked failed from the UI (Mark run as failed) or the REST API, as Ops cancel it ---------

# A pgBackRest backup or restore of the cluster's stanza, its local processes included; never the
# archive-push that production's archive_command runs at any time.
TOOL_PROCESS = r"pgbackrest .*--stanza={stanza} .*(backup|restore)(:local)?$"


def tool_processes(stanza: str) -> list[str]:
    found = subprocess.run(["pgrep", "-a", "-f", TOOL_PROCESS.format(stanza=stanza)], capture_output=True, text=True)
    return [line for line in found.stdout.splitlines() if "pgrep" not in line]


@contextmanager
def s3_stalled(sandbox):
    """S3 stops answering (moto's process group stopped, connections left open): a tool in the middle
    of a transfer waits, as on a stalled network, until the block ends."""
    pid = int((sandbox.layout.run_dir / "moto.pid").read_text())
    os.killpg(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.killpg(pid, signal.SIGCONT)


def mark_failed(stack, dag_id: str, run_id: str) -> None:
    """What the UI's "Mark run as failed" sends."""
    stack.request("PATCH", stack.run_path(dag_id, run_id), {"state": "failed"})


def polled(read):
    """``read()``, or None while the API does not answer in time: under load the sandbox's SQLite
    metadata database can keep a request waiting past the client's timeout (an HTTP error stands)."""
    try:
        return read()
    except urllib.error.HTTPError:
        raise
    except OSError:  # URLError, TimeoutError: not yet
        return None


def wait_task(stack, dag_id: str, run_id: str, task_id: str, *states: str, seconds: float = 900) -> None:
    """Until ``task_id`` of the run is in one of ``states``; meanwhile QA approves the DAG's other
    runs that wait for it (unpausing started one, and it holds staging), once per try: the task stays
    awaiting_input until the triggerer has read the answer, and a retry asks again."""
    answered = set()

    def there():
        for other in (polled(lambda: stack.waiting_signoffs(dag_id)) or []) if dag_id.startswith("restore_test_") else []:
            signoff = (polled(lambda other=other: stack.tasks(dag_id, other)) or {}).get("qa_signoff") or {}
            if other != run_id and signoff and (other, signoff.get("try_number")) not in answered:
                stack.api.answer(dag_id, other, "qa", "Approve", "approved by the test suite as QA")
                answered.add((other, signoff.get("try_number")))
        return ((polled(lambda: stack.tasks(dag_id, run_id)) or {}).get(task_id) or {}).get("state") in states
    wait_for(there, seconds, every=1, what=f"{task_id} of {dag_id} {run_id} in {states}")


def ended(stack, dag_id: str, run_id: str) -> dict:
    return wait_for(lambda: (lambda r: r if r and r["state"] in ("success", "failed") else None)(
        polled(lambda: stack.run(dag_id, run_id))), 600, every=3, what=f"{dag_id} {run_id} to end")


def audit_line(sandbox, run_id: str) -> dict | None:
    path = Path(sandbox.cluster().restore_test.audit_log)
    lines = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
    return next((line for line in lines if line["run_id"] == run_id), None)


def assert_cancelled_drill(stack, sandbox, dag_id: str, run_id: str, slack_before: int, step: str) -> dict:
    """Failed, its audit line says cancelled (which steps ran), staging stopped and released, one
    "Restore test cancelled" on Slack."""
    from pg_backups import staging

    final = ended(stack, dag_id, run_id)
    tasks = stack.tasks(dag_id, run_id)
    assert final["state"] == "failed", {t: ti["state"] for t, ti in tasks.items()}
    line = audit_line(sandbox, run_id)
    assert line and line["outcome"] == "cancelled", line
    assert line["cancelled"]["steps"][step] == "failed" and line["cancelled"]["at"], line
    cluster = sandbox.cluster()
    assert not staging.staging_running(cluster)
    assert staging.claim_holder(cluster) != f"run:{dag_id}:{run_id}"
    texts = [t for t in sandbox.slack_texts_since(slack_before) if run_id in t]
    assert len([t for t in texts if "Restore test cancelled" in t]) == 1, texts
    assert not [t for t in texts if "Restore test passed" in t or "Restore test failed" in t], texts
    return line


def test_a_restore_test_marked_failed_while_qa_signs_off_stays_failed_with_its_evidence(first_backup, stack, sandbox):
    """Mark run as failed while qa_signoff waits: Airflow fails the waiting task, skips the audit and
    runs the teardown, then judges the run by its leaves (it used to end success, no audit line,
    no Slack). The teardown decides: failed, audit line ``cancelled``, staging stopped, one alert.
    Airflow's own audit log names who marked it."""
    dag_id = "restore_test_asso"
    ready(stack, dag_id)
    slack_before = len(sandbox.slack_messages())
    run_id = stack.trigger(dag_id)
    wait_task(stack, dag_id, run_id, "qa_signoff", "awaiting_input")
    mark_failed(stack, dag_id, run_id)
    line = assert_cancelled_drill(stack, sandbox, dag_id, run_id, slack_before, "qa_signoff")
    assert line["cancelled"]["steps"]["data_checks"] == "success" and line["backup_label"], line
    query = urllib.parse.urlencode({"dag_id": dag_id, "run_id": run_id, "event": "patch_dag_run"})
    events = stack.request("GET", f"/api/v2/eventLogs?{query}")
    assert [e["owner"] for e in events["event_logs"]] == ["ops"], events


def test_a_restore_test_marked_failed_during_the_restore_stops_the_restore(first_backup, stack, sandbox):
    """Marked failed while pgbackrest restore writes staging (kept running by stalling S3 under
    it): the restore process is gone, staging stopped and released, the run failed and audited."""
    dag_id = "restore_test_asso"
    ready(stack, dag_id)
    stanza = sandbox.cluster().stanza
    slack_before = len(sandbox.slack_messages())
    run_id = stack.trigger(dag_id)
    wait_task(stack, dag_id, run_id, "restore_latest_backup", "running")
    wait_for(lambda: [p for p in tool_processes(stanza) if p.endswith("restore")], 600, every=0.1,
             what="pgbackrest restore running")
    with s3_stalled(sandbox):  # the restore cannot finish now: it is running when the run is cancelled
        mark_failed(stack, dag_id, run_id)
        wait_for(lambda: not tool_processes(stanza), 300, every=1, what="no pgbackrest restore left")
    assert_cancelled_drill(stack, sandbox, dag_id, run_id, slack_before, "restore_latest_backup")
    assert not tool_processes(stanza)


def test_a_backup_marked_failed_during_the_backup_leaves_nothing_behind(first_backup, stack, sandbox):
    """Marked failed while pgbackrest backup runs (kept running by stalling S3 under it): the run is
    failed, the tool gone, the cluster's lock free, and the next run backs up."""
    import fcntl

    dag_id = "pgbackrest_backup_asso"
    ready(stack, dag_id)
    cluster = sandbox.cluster()
    run_id = stack.trigger(dag_id)
    wait_task(stack, dag_id, run_id, "backup", "running")
    wait_for(lambda: [p for p in tool_processes(cluster.stanza) if p.endswith("backup")], 600, every=0.1,
             what="pgbackrest backup running")
    with s3_stalled(sandbox):
        mark_failed(stack, dag_id, run_id)
        wait_for(lambda: not tool_processes(cluster.stanza), 300, every=1, what="no pgbackrest backup left")
    assert ended(stack, dag_id, run_id)["state"] == "failed"
    with open(Path(cluster.lock_directory) / f"{cluster.name}.backup.lock", "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # free: raises BlockingIOError while held
        fcntl.flock(lock, fcntl.LOCK_UN)
    succeeded(stack, dag_id, stack.trigger(dag_id))
