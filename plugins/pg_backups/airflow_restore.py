"""The task bodies of the quarterly restore test DAG (``dags/restore_test.py``): resolve the
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
from datetime import timedelta

from pg_backups import alerts, operations, restore
from pg_backups.airflow_tasks import _context, cluster_named, s3_access, s3_client

log = logging.getLogger(__name__)

TASK_ORDER = ("guard", "stop_staging", "purge_staging", "restore_latest_backup", "start_staging", "smoke_query",
              "data_checks", "qa_signoff")


def staging_connection(cluster) -> restore.StagingConnection | None:
    """host/port/dbname of the staging connection (its password is never read here)."""
    from airflow.sdk import BaseHook

    try:
        conn = BaseHook.get_connection(cluster.staging_conn_id)
    except Exception as exc:  # AirflowNotFoundException: the guard still checks the paths
        log.warning("no Airflow connection %s (%s): the guard checks the staging paths only",
                    cluster.staging_conn_id, type(exc).__name__)
        return None
    return restore.StagingConnection(conn.host, conn.port, conn.schema)


def _params() -> dict:
    params = dict(_context()["params"] or {})
    label = (params.get("backup_label") or "").strip()
    target = (params.get("target_time") or "").strip() if isinstance(params.get("target_time"), str) else None
    return {"tool": params.get("tool"), "label": None if label in ("", "latest") else label,
            "target_time": target or None}


# --------------------------------------------------------------------------------------------
# Task bodies


def guard(cluster_name: str) -> dict:
    from airflow.sdk.exceptions import AirflowFailException

    cluster = cluster_named(cluster_name)
    try:
        return operations.restore_guard(cluster, staging_connection(cluster))
    except restore.RestoreRefused as exc:  # a configuration problem: retrying would not fix it
        raise AirflowFailException(str(exc)) from None


def stop_staging(cluster_name: str) -> str:
    cluster = cluster_named(cluster_name)
    return operations.restore_stop_staging(cluster, staging_connection(cluster))


def purge_staging(cluster_name: str) -> dict:
    cluster = cluster_named(cluster_name)
    return operations.restore_purge_staging(cluster, staging_connection(cluster))


def restore_latest_backup(cluster_name: str) -> dict:
    cluster = cluster_named(cluster_name)
    p = _params()
    tool = p["tool"] or cluster.restore_test.tool
    return operations.restore_latest_backup(cluster, tool, s3_access(cluster), p["label"], p["target_time"],
                                            staging_connection(cluster))


def start_staging(cluster_name: str) -> dict:
    return operations.restore_start_staging(cluster_named(cluster_name))


def smoke_query(cluster_name: str) -> dict:
    cluster = cluster_named(cluster_name)
    conn = staging_connection(cluster)
    return operations.restore_smoke(cluster, conn.dbname if conn else None)


def data_checks(cluster_name: str, restored: dict) -> list[dict]:
    cluster = cluster_named(cluster_name)
    conn = staging_connection(cluster)
    try:
        return operations.restore_data_checks(cluster, restored["record"], conn.dbname if conn else None)
    except restore.CheckFailed as exc:
        _context()["ti"].xcom_push("checks", exc.checks)  # the audit line shows every result
        raise


from airflow.providers.standard.operators.hitl import ApprovalOperator  # noqa: E402


class QASignoffOperator(ApprovalOperator):
    """An ApprovalOperator whose Reject fails the run without retry (by default a Reject ends the
    run as success) and whose answer, comment included, is kept for the audit line either way."""

    def execute_complete(self, context, event):
        event = event or {}
        params_input = event.get("params_input") or {}
        chosen = event.get("chosen_options") or []
        at, by = event.get("responded_at"), event.get("responded_by_user") or {}
        status = "approved" if chosen == [self.APPROVE] else "rejected" if chosen == [self.REJECT] else "no answer"
        if "error" in event:
            status = f"no answer ({event.get('error_type')})"
        context["ti"].xcom_push("signoff", {
            "status": status,
            "by": (by.get("name") or by.get("id")) if isinstance(by, dict) else by,
            "at": at.isoformat() if hasattr(at, "isoformat") else at,
            "comment": params_input.get("comment"),
        })
        from airflow.sdk.exceptions import AirflowFailException

        if status == "rejected":
            # No retry: asking QA again would not change the answer.
            raise AirflowFailException(f"QA rejected the restore test: {params_input.get('comment') or 'no comment'}")
        if event.get("error_type") == "timeout":
            # No retry either: a retry would ask again and stretch the wait to (retries + 1) timeouts.
            raise AirflowFailException(f"QA did not sign off within {self.response_timeout}: the restore test "
                                       "is not validated")
        return super().execute_complete(context=context, event=event)


def qa_signoff_operator(cluster, **kwargs):
    """QA's sign-off, assigned to restore_test.qa_users, waiting signoff_timeout_days at most."""
    from airflow.sdk import Param

    rt = cluster.restore_test
    return QASignoffOperator(
        task_id="qa_signoff",
        subject=f"Restore test of cluster {cluster.name}: staging is up, please validate",
        body=(f"The latest backup of `{cluster.name}` was restored to staging (port {rt.staging_port}). "
              "Check the key features on staging, then Approve or Reject; a Reject fails the run and its "
              "comment goes into the audit line."),
        assigned_users=[{"id": user, "name": user} for user in rt.qa_users],
        response_timeout=timedelta(days=rt.signoff_timeout_days),
        fail_on_reject=True,
        params={"comment": Param("", type=["string", "null"], description="What QA checked, or why it rejects")},
        **kwargs,
    )


def _xcom(ti, task_id: str, key: str = "return_value"):
    try:
        return ti.xcom_pull(task_ids=task_id, key=key)
    except Exception as exc:
        log.warning("no %s XCom from %s: %s", key, task_id, exc)
        return None


def audit_and_archive(cluster_name: str) -> dict:
    from airflow.sdk.exceptions import AirflowFailException

    cluster = cluster_named(cluster_name)
    context = _context()
    ti, run_id = context["ti"], context["run_id"]
    restored = _xcom(ti, "restore_latest_backup")
    started = _xcom(ti, "start_staging")
    smoke = _xcom(ti, "smoke_query")
    checks = _xcom(ti, "data_checks") or _xcom(ti, "data_checks", "checks")
    signoff = _xcom(ti, "qa_signoff", "signoff")
    errors = []
    try:
        states = ti.get_task_states(dag_id=ti.dag_id, run_ids=[run_id], task_ids=list(TASK_ORDER)).get(run_id, {})
        errors = [f"{task_id}: {states[task_id]}" for task_id in TASK_ORDER
                  if states.get(task_id) not in ("success", None)]
    except Exception as exc:  # the XComs alone already decide the outcome
        log.warning("could not read the task states: %s", exc)
    p = _params()
    seconds = None
    if restored and started:
        seconds = restored["restore_seconds"] + started["startup_seconds"]
    line = restore.audit_record(cluster, run_id=run_id, tool=(restored or {}).get("tool") or p["tool"]
                                or cluster.restore_test.tool, record=(restored or {}).get("record"),
                                restore_seconds=seconds, smoke_result=smoke, checks=checks, signoff=signoff,
                                errors=errors, target_time=p["target_time"])
    result = operations.restore_audit_and_archive(cluster, s3_client(cluster), line)
    if line["outcome"] != "success":
        # No retry: the line is written; the failure callback alerts Slack.
        raise AirflowFailException(f"restore test of cluster {cluster.name} failed "
                                   f"({'; '.join(errors) or 'see the audit line'}); audit: {result['archived']}")
    try:
        alerts.post(cluster, restore.summary_text(cluster, line))
    except Exception as exc:  # the drill passed; a Slack outage must not turn it red
        log.warning("could not post the restore summary to Slack: %s", type(exc).__name__)
    return {**result, "audit": line}


def stop_staging_after(cluster_name: str) -> str:
    return stop_staging(cluster_name)
