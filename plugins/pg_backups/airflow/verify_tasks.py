"""Task bodies of the verification DAG (``dags/verify_backup.py``): resolve the cluster and its S3
access from Airflow, then call :mod:`pg_backups.verification`, the same code as
``pg_backups.cli verify-backup``.

Which backup: the record that ``publish_backup`` put in the asset event that started the run (the
newest one when several were queued), else the run's params (a run triggered by hand).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from airflow.sdk.exceptions import AirflowFailException

from pg_backups import pitr, times, verification
from pg_backups.airflow import restore_tasks
from pg_backups.airflow.common import ERROR_XCOM_KEY, cluster_named, context, params, s3_access, s3_client, task_body
from pg_backups.errors import CheckFailed

if TYPE_CHECKING:
    from pg_backups.config import Cluster

log = logging.getLogger(__name__)

PLAN_TASK, DRILL_TASK = "choose_backup", "drill"
CHOOSE_TARGET_TASK, PITR_PLAN_TASK = "choose_target", "plan"  # the PITR drill's first two tasks
STEP_XCOM_PREFIX = "step_"
CHECKS_XCOM_KEY = "checks_failed"
LINE_XCOM_KEY = "verification"  # the line, success or not


def triggering_record(ctx) -> dict | None:
    """The newest backup record among the asset events that started this run."""
    events = ctx.get("triggering_asset_events") or {}
    found = []
    for asset_events in events.values():
        for event in asset_events:
            extra = dict(getattr(event, "extra", None) or {})
            if extra.get("label") and extra.get("tool"):
                found.append((str(getattr(event, "timestamp", "")), extra))
    if len(found) > 1:
        log.info("%d backups published since the last drill: drilling the newest; the others stay pending: %s",
                 len(found), ", ".join(e["label"] for _, e in sorted(found, key=lambda f: f[0])[:-1]))
    return max(found, key=lambda f: f[0])[1] if found else None


@task_body
def choose_backup(cluster_name: str) -> dict:
    """The backup to drill, the target's guard, the free space of verify.root: every refusal before
    anything is restored."""
    cluster = cluster_named(cluster_name)
    ctx = context()
    record = triggering_record(ctx)
    p = params(ctx)
    tool = (record or {}).get("tool") or p.get("tool") or cluster.restore_test.tool
    label = None if record else ((p.get("backup_label") or "").strip() or None)
    if label == "latest":
        label = None
    planned = verification.plan(cluster, tool, s3_access(cluster), label, record)
    log.info("drilling %s backup %s (finished %s) on %s", tool, planned["record"]["label"],
             planned["record"].get("stop_time"), planned["target"])
    return {**planned, "started_at": times.iso(times.now())}


@task_body
def drill(cluster_name: str, planned: dict, chosen: dict | None = None) -> dict:
    """``chosen``: the PITR drill's target (pg_backups.pitr.choose_target); none: a backup's drill."""
    cluster = cluster_named(cluster_name)
    ti = context()["ti"]

    def progress(step: str, result) -> None:
        ti.xcom_push(STEP_XCOM_PREFIX + step, result)

    pitr_args = {} if chosen is None else {
        "kind": verification.PITR, "target_time": chosen["target_time"],
        "extra_checks": lambda target: pitr.heartbeat_checks(target, chosen, planned["record"].get("stop_time"))}
    try:
        # The check tables' database: the restore test's (its staging connection's), judged the same way.
        return verification.drill(cluster, planned["tool"], s3_access(cluster), planned["record"], progress,
                                  restore_tasks.staging_dbname(cluster), **pitr_args)
    except CheckFailed as exc:
        ti.xcom_push(CHECKS_XCOM_KEY, exc.checks)  # the line shows every result
        raise


def _xcom(ti, task_id: str, key: str = "return_value"):
    try:
        return ti.xcom_pull(task_ids=task_id, key=key)
    except Exception as exc:  # noqa: BLE001
        log.warning("no %s XCom from %s: %s", key, task_id, exc)
        return None


def _evidence(cluster: Cluster, ctx, pitr_drill: bool = False) -> tuple[dict, dict]:
    """Build and record the run's verification line from what its tasks left (XComs, states)."""
    ti, run_id = ctx["ti"], ctx["run_id"]
    plan_task = PITR_PLAN_TASK if pitr_drill else PLAN_TASK
    planned = _xcom(ti, plan_task) or {}
    steps = {step: value for step in verification.STEPS[1:]
             if (value := _xcom(ti, DRILL_TASK, STEP_XCOM_PREFIX + step)) is not None} if planned else {}
    failed_checks = _xcom(ti, DRILL_TASK, CHECKS_XCOM_KEY)
    if failed_checks:
        steps["checks_failed"] = failed_checks
    errors = []
    try:
        tasks = [CHOOSE_TARGET_TASK, plan_task, DRILL_TASK] if pitr_drill else [plan_task, DRILL_TASK]
        states = ti.get_task_states(dag_id=ti.dag_id, run_ids=[run_id], task_ids=tasks).get(run_id, {})
        for task_id in tasks:
            if states.get(task_id) != "success":
                cause = _xcom(ti, task_id, ERROR_XCOM_KEY)
                errors.append(f"{task_id}: {states.get(task_id) or 'not run'}" + (f": {cause}" if cause else ""))
    except Exception as exc:  # noqa: BLE001 - the XComs alone already decide the outcome
        log.warning("could not read the task states: %s", exc)
    if pitr_drill:
        line = pitr.pitr_line(cluster, run_id=run_id, chosen=_xcom(ti, CHOOSE_TARGET_TASK), record=planned.get("record"),
                              steps=steps, errors=errors, started_at=planned.get("started_at"))
    else:
        line = verification.verification_line(cluster, run_id=run_id, tool=planned.get("tool") or
                                              cluster.restore_test.tool, record=planned.get("record"), steps=steps,
                                              errors=errors, started_at=planned.get("started_at"))
    if not planned:
        line["failed_step"] = "plan"
    result = verification.record_evidence(cluster, s3_client(cluster), line)
    ti.xcom_push(LINE_XCOM_KEY, line)
    if pitr_drill:
        ti.xcom_push(pitr.RESULT_XCOM[1], pitr.result(line))  # for the inventory
    else:
        ti.xcom_push(verification.RESULT_XCOM[1], verification.result(line))
    return line, result


@task_body
def record_evidence(cluster_name: str, pitr_drill: bool = False) -> dict:
    """A teardown: runs whatever happened, also when the run was failed from the UI (the drill task
    was killed then: its state says so). The verification line (log + S3), the metrics; a drill
    that did not pass fails this task, which fails the run, and its alert is the run's one alert,
    naming the backup (the PITR drill: and the target), the step, the cause."""
    cluster = cluster_named(cluster_name)
    line, result = _evidence(cluster, context(), pitr_drill)
    if line["outcome"] != "success":
        text = pitr.failure_text(line) if pitr_drill else verification.failure_text(line)
        raise AirflowFailException(f"{text}; evidence: {result['archived']}")
    return {**result, "line": line}


@task_body
def remove_target(cluster_name: str, pitr_drill: bool = False) -> dict:
    """Teardown: always, also when the run was failed or cancelled from the UI (Airflow still runs
    teardowns then)."""
    return verification.teardown(cluster_named(cluster_name), verification.PITR if pitr_drill else verification.BACKUP)


# --------------------------------------------------------------------------------------------
# The daily random-point PITR drill (dags/verify_pitr.py) and its heartbeats (dags/heartbeat.py)


@task_body
def write_heartbeat(cluster_name: str) -> dict:
    return pitr.write_heartbeat(cluster_named(cluster_name))


@task_body
def choose_target(cluster_name: str) -> dict:
    """On the database host: the recovery window, the target drawn in it from the run id (or the
    run's ``target_time``), production's heartbeats around it."""
    cluster = cluster_named(cluster_name)
    ctx = context()
    p = params(ctx)
    target = (p.get("target_time") or "").strip() if isinstance(p.get("target_time"), str) else None
    return pitr.choose_target(cluster, p.get("tool") or cluster.restore_test.tool, s3_access(cluster), ctx["run_id"],
                              target or None)


@task_body
def plan_pitr(cluster_name: str, chosen: dict) -> dict:
    """On the verification host: the backup that finished before the target, the guards."""
    cluster = cluster_named(cluster_name)
    planned = verification.plan(cluster, chosen["tool"], s3_access(cluster), kind=verification.PITR,
                                target_time=chosen["target_time"])
    log.info("PITR to %s from %s backup %s on %s", chosen["target_time"], chosen["tool"], planned["record"]["label"],
             planned["target"])
    return {**planned, "started_at": times.iso(times.now())}
