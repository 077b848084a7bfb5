"""The verification drill through a real scheduler (REST API): a backup's asset event starts the
drill of that backup; an altered backup fails its drill with one alert; the disk guard refuses; a
run failed from the UI mid-drill leaves no target and its evidence.

These run with the scheduler tests, last in the session (the ``scheduler`` marker). The drill DAG
is paused again at the end of each case, so that the other tests' backups start no drill.
"""

from __future__ import annotations

import fcntl
import json
import shutil
import subprocess
from pathlib import Path

import pytest

import sandbox as sandbox_module
from support import wait_for

pytestmark = [pytest.mark.sandbox, pytest.mark.scheduler, pytest.mark.slow]

BACKUP_DAG, DRILL_DAG = "pgbackrest_backup_asso", "verify_backup_asso"


def verify_lines(sandbox) -> list[dict]:
    path = Path(sandbox.cluster().verify.log)
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def line_of(sandbox, run_id: str) -> dict:
    return next(line for line in verify_lines(sandbox) if line["run_id"] == run_id)


def target_dir(sandbox) -> Path:
    return sandbox.layout.verify_root / "asso"


def staging_listing(sandbox) -> list[str]:
    data = sandbox.layout.staging_root / "data"
    return sorted(str(p.relative_to(data)) for p in data.glob("*")) if data.exists() else []


def drill_of(stack, before: set, label: str, drill_dag: str = DRILL_DAG) -> dict | None:
    """The asset-triggered drill run that chose backup ``label``: unpausing the backup DAG also
    starts a run for its latest slot, whose backup gets a drill of its own."""
    for run in stack.runs(drill_dag, "asset_triggered"):
        if run["dag_run_id"] in before:
            continue
        try:
            chosen = stack.xcom(drill_dag, run["dag_run_id"], "choose_backup")
        except Exception:  # noqa: BLE001 - not chosen yet (no XCom: the API answers 404)
            continue
        if chosen and chosen["record"]["label"] == label:
            return run
    return None


def ready(stack, *dag_ids: str) -> None:
    stack.wait_parsed(*dag_ids)
    for dag_id in dag_ids:
        stack.unpause(dag_id)


def _drilled_by_its_asset_event(stack, sandbox, backup_dag: str, tool: str) -> None:
    ready(stack, backup_dag, DRILL_DAG)
    before = {r["dag_run_id"] for r in stack.runs(DRILL_DAG)}
    staged = staging_listing(sandbox)
    try:
        backup_run = stack.trigger(backup_dag)
        assert stack.wait_run(backup_dag, backup_run)["state"] == "success"
        record = stack.xcom(backup_dag, backup_run, "publish_backup")
        drill = wait_for(lambda: drill_of(stack, before, record["label"]), 900, every=5,
                         what=f"the drill of backup {record['label']}")
        final = stack.wait_run(DRILL_DAG, drill["dag_run_id"], seconds=900)
    finally:
        stack.unpause(DRILL_DAG, paused=True)
    tasks = stack.tasks(DRILL_DAG, drill["dag_run_id"])
    assert final["state"] == "success", {t: v["state"] for t, v in tasks.items()}
    evidence = stack.xcom(DRILL_DAG, drill["dag_run_id"], "record_evidence")
    line = evidence["line"]
    assert line == line_of(sandbox, drill["dag_run_id"])
    assert line["outcome"] == "success" and line["backup_label"] == record["label"] and line["tool"] == tool
    assert line["backup_run_id"] == backup_run  # the marker row of that backup's run was found
    assert {c["check"]: c["result"] for c in line["checks"]}["backup_marker"] == "ok"
    assert line["rto_seconds"] > 0 and line["target"]["data_directory"] == str(target_dir(sandbox))
    metrics = (sandbox.layout.root / "metrics" / f"pg_backups_asso_verify_{tool}.prom").read_text()
    assert f'backup_label="{record["label"]}"' in metrics and "pg_backups_verify_last_result{" in metrics
    key = evidence["archived"][0].split(f"s3://{sandbox.cluster().s3.bucket}/", 1)[1]
    assert sandbox.s3_client().get_object(Bucket=sandbox.cluster().s3.bucket, Key=key)["ContentLength"] > 0
    assert tasks["remove_target"]["state"] == "success" and not target_dir(sandbox).exists()
    assert staging_listing(sandbox) == staged  # QA's staging untouched
    # The inventory (its JSON API, as Ops and Grafana read it) names that backup verified, with its RTO.
    row = stack.request("GET", "/backup-inventory/api/clusters/asso")
    newest = row["backups"][tool]
    assert newest["label"] == record["label"] and newest["verification"]["state"] == "verified", newest
    assert row["verification"][tool]["last_verified"]["backup_label"] == record["label"]
    assert row["verification"][tool]["last_verified"]["rto_seconds"] == line["rto_seconds"]


def test_a_backup_triggered_through_the_api_is_drilled_by_its_asset_event(stack, sandbox):
    _drilled_by_its_asset_event(stack, sandbox, BACKUP_DAG, "pgbackrest")


def test_a_walg_backup_is_drilled_by_its_asset_event(stack, sandbox):
    if "walg" not in sandbox.cluster().tools:
        pytest.skip(sandbox_module.WALG_MISSING)
    _drilled_by_its_asset_event(stack, sandbox, "walg_backup_asso", "walg")


def _alter_one_bundle(sandbox, label: str) -> tuple[str, str]:
    """Overwrite one bundle file of ``label`` in the bucket (versioned: the original stays a
    noncurrent version, put back afterwards). Returns (key, version id of the altered object)."""
    cluster = sandbox.cluster()
    s3 = sandbox.s3_client()
    prefix = f"{cluster.pgbackrest.repo_path.strip('/')}/backup/{cluster.stanza}/{label}/"
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=cluster.s3.bucket, Prefix=prefix).get("Contents", [])]
    bundles = sorted(k for k in keys if "/bundle/" in k)
    assert bundles, keys
    original = s3.get_object(Bucket=cluster.s3.bucket, Key=bundles[0])["Body"].read()
    altered = bytes(b ^ 0xFF for b in original)  # same size, every byte wrong
    put = s3.put_object(Bucket=cluster.s3.bucket, Key=bundles[0], Body=altered)
    return bundles[0], put["VersionId"]


def test_a_backup_altered_in_the_bucket_fails_its_drill_with_one_alert(stack, sandbox):
    """The drill's pool is closed (0 slots) while the backup runs, so its asset-triggered drill
    chooses the backup and waits; one bundle file is altered; the pool opens again."""
    pool = sandbox.cluster().verify.pool

    def pool_slots(n: int) -> None:  # the API validates the whole pool, not only the patched field
        stack.request("PATCH", f"/api/v2/pools/{pool}", {"pool": pool, "slots": n, "include_deferred": False})

    ready(stack, BACKUP_DAG, DRILL_DAG)
    before = {r["dag_run_id"] for r in stack.runs(DRILL_DAG)}
    staged = staging_listing(sandbox)
    altered = None
    pool_slots(0)
    try:
        backup_run = stack.trigger(BACKUP_DAG)
        assert stack.wait_run(BACKUP_DAG, backup_run)["state"] == "success"
        label = stack.xcom(BACKUP_DAG, backup_run, "publish_backup")["label"]
        drill = wait_for(lambda: drill_of(stack, before, label), 900, every=5, what=f"the drill of {label}")
        altered = _alter_one_bundle(sandbox, label)
        seen = len(sandbox.slack_messages())
        pool_slots(1)
        run_id = drill["dag_run_id"]
        final = stack.wait_run(DRILL_DAG, run_id, seconds=900)
    finally:
        pool_slots(1)
        stack.unpause(DRILL_DAG, paused=True)
        if altered:
            sandbox.s3_client().delete_object(Bucket=sandbox.cluster().s3.bucket, Key=altered[0], VersionId=altered[1])
    assert final["state"] == "failed"
    line = line_of(sandbox, run_id)
    assert line["outcome"] == "failed" and line["backup_label"] == label and line["failed_step"] == "restore", line
    alerts = [t for t in sandbox.slack_texts_since(seen) if label in t]
    assert len(alerts) == 1, alerts
    assert "step restore" in alerts[0] and "verification drill" in alerts[0], alerts[0]
    assert not target_dir(sandbox).exists() and staging_listing(sandbox) == staged
    metrics = (sandbox.layout.root / "metrics" / "pg_backups_asso_verify_pgbackrest.prom").read_text()
    assert "pg_backups_verify_last_result{" in metrics and 'failed_step="restore"' in metrics
    row = stack.request("GET", "/backup-inventory/api/clusters/asso")
    newest = row["backups"]["pgbackrest"]
    assert newest["label"] == label and newest["verification"]["state"] == "failed", newest
    assert newest["verification"]["drill"]["run_id"] == run_id
    assert row["status"]["colour"] == "red" and any(label in r and "drill failed at restore" in r
                                                    for r in row["status"]["reasons"]), row["status"]


def test_two_clusters_backups_at_once_are_drilled_one_after_the_other_on_their_shared_host(stack, sandbox):
    """asso's and billing's drills run on the same verification host, so they share its pool
    (verify.pool, one slot): both backups at once, then both drills, one after the other, both pass."""
    from pg_backups.config import load_config

    clusters = {c.name: c for c in load_config(sandbox.layout.clusters_file).clusters}
    assert clusters["asso"].verify.pool == clusters["billing"].verify.pool  # one host, one pool
    dags = {name: (c.dag_id("pgbackrest"), c.dag_id("verify_backup")) for name, c in clusters.items()
            if name in ("asso", "billing")}
    ready(stack, *[dag for pair in dags.values() for dag in pair])
    before = {name: {r["dag_run_id"] for r in stack.runs(drill)} for name, (_, drill) in dags.items()}
    drills = {}
    try:
        backups = {name: stack.trigger(backup) for name, (backup, _) in dags.items()}
        for name, (backup, drill) in dags.items():
            assert stack.wait_run(backup, backups[name])["state"] == "success"
            label = stack.xcom(backup, backups[name], "publish_backup")["label"]
            drills[name] = wait_for(lambda seen=before[name], label=label, drill=drill: drill_of(stack, seen, label, drill),
                                    900, every=5,
                                    what=f"the drill of {name}'s backup {label}")["dag_run_id"]
        finals = {name: stack.wait_run(dags[name][1], run_id, seconds=900)["state"] for name, run_id in drills.items()}
    finally:
        for _, drill in dags.values():
            stack.unpause(drill, paused=True)
    assert finals == {"asso": "success", "billing": "success"}, finals
    spans = sorted((stack.tasks(dags[name][1], run_id)["drill"]["start_date"],
                    stack.tasks(dags[name][1], run_id)["drill"]["end_date"]) for name, run_id in drills.items())
    (_, first_end), (second_start, _) = spans
    assert first_end <= second_start, f"the drills overlapped: {spans}"


def test_the_disk_guard_refuses_a_backup_that_does_not_fit(stack, sandbox):
    """verify.root on a real 8 MiB tmpfs: the sandbox's backups restore ~30 MiB."""
    root = sandbox.layout.verify_root
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m,mode=0755", "tmpfs", str(root)],
                             capture_output=True, text=True)
    assert mounted.returncode == 0, f"cannot mount a small tmpfs as verify.root here: {mounted.stderr}"
    try:
        shutil.chown(root, "postgres", "postgres")
        stack.wait_parsed(DRILL_DAG)
        stack.unpause(DRILL_DAG)
        run_id = stack.trigger(DRILL_DAG, conf={"tool": "pgbackrest", "backup_label": "latest"})
        final = stack.wait_run(DRILL_DAG, run_id)
        assert not any(root.iterdir())  # nothing restored
    finally:
        stack.unpause(DRILL_DAG, paused=True)
        if subprocess.run(["umount", str(root)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(root)], capture_output=True)
    assert final["state"] == "failed"
    tasks = stack.tasks(DRILL_DAG, run_id)
    assert tasks["choose_backup"]["state"] == "failed" and tasks["drill"]["state"] == "upstream_failed"
    log = stack.log_with(DRILL_DAG, run_id, "choose_backup", "verify.root")
    assert "verify.root" in log and "MiB free" in log and "needs" in log and "nothing was restored" in log
    line = line_of(sandbox, run_id)
    assert line["outcome"] == "failed" and line["failed_step"] == "plan"


def test_a_drill_failed_from_the_ui_mid_drill_removes_its_target_and_keeps_its_evidence(stack, sandbox):
    """The drill's own archive lock is held, so its recovery waits for WAL (a drill in progress
    for as long as the test wants); then the run is marked failed through the REST API, as the
    UI does. The teardown still runs: target removed, run failed, a verification line written."""
    from pg_backups import pgbackrest, verification

    cluster = sandbox.cluster()
    lock_dir = Path(pgbackrest.restore_lock_path(cluster, verification.LOCK_COPY))
    lock_dir.mkdir(parents=True, exist_ok=True)
    shutil.chown(lock_dir, cluster.os_user, cluster.os_user)
    lock_file = lock_dir / f"{cluster.stanza}-archive.lock"
    stack.wait_parsed(DRILL_DAG)
    with open(lock_file, "a") as held:
        shutil.chown(lock_file, cluster.os_user, cluster.os_user)
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        try:
            stack.unpause(DRILL_DAG)
            run_id = stack.trigger(DRILL_DAG, conf={"tool": "pgbackrest", "backup_label": "latest"})
            wait_for(lambda: (target_dir(sandbox) / "PG_VERSION").exists()
                     and stack.tasks(DRILL_DAG, run_id)["drill"]["state"] == "running", 600, every=2,
                     what="the drill restoring")
            stack.request("PATCH", stack.run_path(DRILL_DAG, run_id), {"state": "failed"})
            wait_for(lambda: stack.run(DRILL_DAG, run_id)["state"] in ("success", "failed")
                     and stack.tasks(DRILL_DAG, run_id)["remove_target"]["state"] in ("success", "failed"),
                     600, every=3, what="the teardowns")
        finally:
            stack.unpause(DRILL_DAG, paused=True)
    tasks = stack.tasks(DRILL_DAG, run_id)
    assert stack.run(DRILL_DAG, run_id)["state"] == "failed"
    # record_evidence is a teardown too: it ran, wrote the line and failed the run (as an ordinary
    # task it was skipped, and the run ended "success" once its teardown had succeeded).
    states = {t: v["state"] for t, v in tasks.items()}
    assert states["record_evidence"] == "failed" and states["remove_target"] == "success", states
    assert not target_dir(sandbox).exists()
    line = line_of(sandbox, run_id)
    assert line["outcome"] == "failed" and line["failed_step"] in ("restore", "start"), line
    assert "drill: failed" in json.dumps(line["errors"]), line
