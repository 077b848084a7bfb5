"""Task bodies of the quarterly restore test DAG (``dags/quarterly_restore.py``): resolve the
cluster, its S3 access and its staging connection from Airflow, then call
:mod:`pg_backups.operations`, the same code as ``pg_backups.cli restore-test``.

Results travel between tasks as XComs, none of them holding a secret: the restore's backup record
and duration, the startup time, the smoke result, the checks, QA's answer. ``audit_and_archive``
reads whatever exists (it runs even when an earlier task failed) and records ``failed`` unless the
restore happened, every check passed and QA approved; then it fails itself, so the run never
reports success for a restore that did not happen.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from airflow.sdk import BaseHook, PokeReturnValue
from airflow.sdk.exceptions import AirflowFailException

from pg_backups import audit, operations, staging
from pg_backups.airflow import notifiers
from pg_backups.airflow.common import (
    ERROR_XCOM_KEY,
    AlreadyReported,
    cluster_named,
    context,
    is_backfill,
    params,
    s3_access,
    s3_client,
    task_body,
)
from pg_backups.airflow.notifiers import QA_REJECTED
from pg_backups.airflow.operators import SIGNOFF_XCOM_KEY
from pg_backups.errors import CheckFailed
from pg_backups.times import now

if TYPE_CHECKING:
    from pg_backups.config import Cluster

log = logging.getLogger(__name__)

TASK_ORDER = ("claim_staging", "guard", "stop_staging", "purge_staging", "restore_latest_backup", "start_staging", "smoke_query",
              "data_checks", "qa_signoff")
CHECKS_XCOM_KEY = "checks"
AUDIT_XCOM_KEY = "audit"  # the audit line, success or not (pg_backups.inventory_sources.AUDIT_XCOM)


def staging_connection(cluster: Cluster) -> staging.StagingConnection | None:
    """host/port/dbname of the staging connection (its password is never read here)."""
    try:
        conn = BaseHook.get_connection(cluster.staging_conn_id)
    except Exception as exc:  # AirflowNotFoundException: the guard still checks the paths
        log.warning("no Airflow connection %s (%s): the guard checks the staging paths only",
                    cluster.staging_conn_id, type(exc).__name__)
        return None
    return staging.StagingConnection(conn.host, conn.port, conn.schema)


def restore_params() -> dict:
    """The run's params: tool, backup label (None for ``latest``), PITR target (None: end of WAL).

    A backfill run proves the past: with no ``target_time`` given, its target is its logical date
    (the state as of that time, restored from the newest backup that finished before it).
    """
    ctx = context()
    p = params(ctx)
    label = (p.get("backup_label") or "").strip()
    target = (p.get("target_time") or "").strip() if isinstance(p.get("target_time"), str) else None
    if not target and is_backfill(ctx) and ctx.get("logical_date") is not None:
        target = ctx["logical_date"].isoformat()
    return {"tool": p.get("tool"), "label": None if label in ("", "latest") else label, "target_time": target or None}


def staging_dbname(cluster: Cluster) -> str | None:
    """The database of the checks (the staging connection's; the verification drill's too)."""
    conn = staging_connection(cluster)
    return conn.dbname if conn else None


ACTIVE_RUN_STATES = ("queued", "running")


def _owner(ctx) -> str:
    return f"run:{ctx['dag'].dag_id}:{ctx['run_id']}"


def _owner_active(ti, owner: str) -> bool:
    kind, _, rest = owner.partition(":")
    if kind != "run":
        return staging.pid_owner_alive(owner)
    dag_id, _, run_id = rest.partition(":")
    try:
        return ti.get_dagrun_state(dag_id=dag_id, run_id=run_id) in ACTIVE_RUN_STATES
    except Exception as exc:  # a run Airflow no longer knows (deleted) holds nothing
        log.info("run %s of %s: %s", run_id, dag_id, exc)
        return False


@task_body
def claim_staging(cluster_name: str) -> PokeReturnValue:
    """A sensor: staging is this run's once no other active run holds it (a backfill runs several
    restore tests at once, whatever the DAG's max_active_runs). Released by stop_staging_after."""
    cluster = cluster_named(cluster_name)
    ctx = context()
    holder = staging.claim(cluster, _owner(ctx), lambda owner: _owner_active(ctx["ti"], owner))
    if holder:
        log.info("staging of cluster %s is held by %s; waiting", cluster.name, holder)
        return PokeReturnValue(is_done=False)
    return PokeReturnValue(is_done=True, xcom_value={"claimed_by": _owner(ctx)})


@task_body
def guard(cluster_name: str) -> dict:
    """Staging is provably not production, and the backup to restore exists (a PITR target inside
    the repository's window): both refused before anything is stopped or deleted."""
    cluster = cluster_named(cluster_name)
    checked = operations.restore_guard(cluster, staging_connection(cluster))
    p = restore_params()
    tool = p["tool"] or cluster.restore_test.tool
    record = operations.restore_backup_record(cluster, tool, s3_access(cluster), p["label"], p["target_time"])
    return {**checked, "backup_label": record["label"], "target_time": p["target_time"]}


@task_body
def stop_staging(cluster_name: str) -> str:
    cluster = cluster_named(cluster_name)
    return operations.restore_stop_staging(cluster, staging_connection(cluster))


@task_body
def purge_staging(cluster_name: str) -> dict:
    cluster = cluster_named(cluster_name)
    return operations.restore_purge_staging(cluster, staging_connection(cluster))


BACKUP_XCOM_KEY = "backup"


@task_body
def restore_latest_backup(cluster_name: str) -> dict:
    cluster = cluster_named(cluster_name)
    p = restore_params()
    tool = p["tool"] or cluster.restore_test.tool
    access = s3_access(cluster)
    # Which backup, kept before the restore starts: a restore that fails still names it in the audit.
    record = operations.restore_backup_record(cluster, tool, access, p["label"], p["target_time"])
    context()["ti"].xcom_push(BACKUP_XCOM_KEY, record)
    return operations.restore_latest_backup(cluster, tool, access, p["label"], p["target_time"],
                                            staging_connection(cluster), record=record)


@task_body
def start_staging(cluster_name: str) -> dict:
    return operations.restore_start_staging(cluster_named(cluster_name))


@task_body
def smoke_query(cluster_name: str) -> dict:
    cluster = cluster_named(cluster_name)
    return operations.restore_smoke(cluster, staging_dbname(cluster))


@task_body
def data_checks(cluster_name: str, restored: dict) -> list[dict]:
    cluster = cluster_named(cluster_name)
    try:
        return operations.restore_data_checks(cluster, restored["record"], staging_dbname(cluster))
    except CheckFailed as exc:
        context()["ti"].xcom_push(CHECKS_XCOM_KEY, exc.checks)  # the audit line shows every result
        raise


def _xcom(ti, task_id: str, key: str = "return_value"):
    try:
        return ti.xcom_pull(task_ids=task_id, key=key)
    except Exception as exc:
        log.warning("no %s XCom from %s: %s", key, task_id, exc)
        return None


def _audit_line(cluster: Cluster, ctx, cancelled: dict | None = None) -> tuple[dict, list[str], dict | None]:
    """The run's audit line from whatever its tasks left (XComs, states), its errors, QA's answer."""
    ti, run_id = ctx["ti"], ctx["run_id"]
    restored = _xcom(ti, "restore_latest_backup")
    started = _xcom(ti, "start_staging")
    smoke = _xcom(ti, "smoke_query")
    checks = _xcom(ti, "data_checks") or _xcom(ti, "data_checks", CHECKS_XCOM_KEY)
    signoff = _xcom(ti, "qa_signoff", SIGNOFF_XCOM_KEY)
    errors = []
    states = _states(ti, run_id)
    # Each failed step with its cause, as its task recorded it; a cancelled run's skipped steps are
    # what the cancellation skipped, listed in its "cancelled" steps, not errors.
    ignored = ("success", None, "skipped") if cancelled else ("success", None)
    for task_id in TASK_ORDER:
        if states.get(task_id) not in ignored:
            cause = _xcom(ti, task_id, ERROR_XCOM_KEY)
            errors.append(f"{task_id}: {states[task_id]}" + (f": {cause}" if cause else ""))
    p = restore_params()
    seconds = None
    if restored and started:
        seconds = restored["restore_seconds"] + started["startup_seconds"]
    record = (restored or {}).get("record") or _xcom(ti, "restore_latest_backup", BACKUP_XCOM_KEY)
    line = audit.audit_record(cluster, run_id=run_id, tool=(restored or {}).get("tool") or p["tool"]
                              or cluster.restore_test.tool, record=record,
                              restore_seconds=seconds, smoke_result=smoke, checks=checks, signoff=signoff,
                              errors=errors, target_time=p["target_time"], cancelled=cancelled)
    return line, errors, signoff


def _states(ti, run_id: str) -> dict:
    try:
        return ti.get_task_states(dag_id=ti.dag_id, run_ids=[run_id], task_ids=list(TASK_ORDER)).get(run_id, {})
    except Exception as exc:  # the XComs alone already decide the outcome
        log.warning("could not read the task states: %s", exc)
        return {}


@task_body
def audit_and_archive(cluster_name: str) -> dict:
    cluster = cluster_named(cluster_name)
    ctx = context()
    ti = ctx["ti"]
    line, errors, signoff = _audit_line(cluster, ctx)
    result = operations.restore_audit_and_archive(cluster, s3_client(cluster), line)
    ti.xcom_push(AUDIT_XCOM_KEY, line)  # for the backup inventory, where the audit log file is out of reach
    if line["outcome"] != "success":
        # No retry: the line is written. This task's alert is the run's one alert: it carries the cause.
        if (signoff or {}).get("status") == "rejected":
            raise AirflowFailException(f"{QA_REJECTED} of cluster {cluster.name} (qa_signoff, by "
                                       f"{signoff.get('by')}): {signoff.get('comment') or 'no comment'}; "
                                       f"audit: {result['archived']}")
        raise AirflowFailException(f"restore test of cluster {cluster.name} failed: "
                                   f"{'; '.join(errors) or 'see the audit line'}; audit: {result['archived']}")
    try:
        notifiers.post(cluster, audit.summary_text(cluster, line))
    except Exception as exc:  # the drill passed; a Slack outage must not turn it red
        log.warning("could not post the restore summary to Slack: %s", type(exc).__name__)
    return {**result, "audit": line}


# Airflow records who marked a run failed in its own audit log (the REST API's event logs), which a
# task cannot read (no metadata database access from tasks in Airflow 3): the line says where.
CANCELLED_BY = "not given to tasks by Airflow: its audit log (Browse > Audit Log, event patch_dag_run) names the user"


@task_body
def stop_staging_after(cluster_name: str) -> str:
    """Teardown, and the run's verdict (``on_failure_fail_dagrun``: Airflow judges the run by this
    task alone). It stops staging and gives it back, only if this run holds it (a run that never got
    it must not stop the one that has it), once no restore of this cluster is left writing staging.
    Then it fails when the drill did not pass: ``audit_and_archive`` failed (it wrote the line and
    alerted), or never ran, which only happens when the run was marked failed (or success) by hand:
    Airflow then skips it and runs this teardown. That cancelled drill gets its audit line (outcome
    ``cancelled``) and one Slack alert here."""
    cluster = cluster_named(cluster_name)
    ctx = context()
    holder = staging.claim_holder(cluster)
    if holder not in (None, _owner(ctx)):
        log.info("staging is held by %s: left as it is", holder)
        state = f"held by {holder}"
    else:
        # Staging is this run's: any restore writing it is this run's, killed when the run was marked
        # failed; Airflow gives a killed task a few seconds to end, the lock says when it has.
        with operations.restore_lock(cluster, timeout=900):
            state = operations.restore_stop_staging(cluster, staging_connection(cluster))
            staging.release(cluster, _owner(ctx))
    ti, run_id = ctx["ti"], ctx["run_id"]
    audited = _audit_state(ti, run_id)
    if audited == "success":
        return state
    if audited == "failed":
        raise AlreadyReported(f"restore test of cluster {cluster.name} failed (audit_and_archive); staging {state}")
    _report_cancelled(cluster, ctx)
    raise AlreadyReported(f"restore test of cluster {cluster.name} cancelled (run marked failed by hand); "
                          f"staging {state}")


def _audit_state(ti, run_id: str) -> str | None:
    try:
        return ti.get_task_states(dag_id=ti.dag_id, run_ids=[run_id],
                                  task_ids=["audit_and_archive"]).get(run_id, {}).get("audit_and_archive")
    except Exception as exc:  # unknown: judged by the audit line it would have left
        log.warning("could not read the state of audit_and_archive: %s", exc)
        line = _xcom(ti, "audit_and_archive", AUDIT_XCOM_KEY)
        return None if line is None else "success" if line.get("outcome") == "success" else "failed"


def _report_cancelled(cluster: Cluster, ctx) -> dict:
    """The audit line of a cancelled drill (each step's state, when it was seen), archived, and one
    "Restore test cancelled" on Slack; neither an S3 nor a Slack outage stops the other."""
    ti, run_id = ctx["ti"], ctx["run_id"]
    steps = {task_id: state for task_id, state in _states(ti, run_id).items() if task_id in TASK_ORDER}
    note = getattr(ctx.get("dag_run"), "note", None)
    cancelled = {"at": now().isoformat(timespec="seconds"), "by": None, "by_source": CANCELLED_BY,
                 "note": note, "steps": {task_id: steps.get(task_id) for task_id in TASK_ORDER}}
    line, _, _ = _audit_line(cluster, ctx, cancelled=cancelled)
    try:
        result = operations.restore_audit_and_archive(cluster, s3_client(cluster), line)
    except Exception as exc:  # the line must exist even when S3 is down
        log.warning("audit logs not archived to S3 (%s): %s", type(exc).__name__, exc)
        result = {"audit_log": audit.append_audit(cluster, line), "archived": [], "outcome": line["outcome"]}
    ti.xcom_push(AUDIT_XCOM_KEY, line)
    try:
        notifiers.post(cluster, audit.cancelled_text(cluster, line))
    except Exception as exc:  # noqa: BLE001 - the line is written; the task's failure still stands
        log.warning("could not post the cancellation to Slack: %s", type(exc).__name__)
    log.info("cancelled drill audited: %s", result)
    return line
