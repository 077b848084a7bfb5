"""The QA sign-off of the restore test: Airflow 3's human-in-the-loop ApprovalOperator, with a
Reject that fails the run and an answer that is kept for the audit line."""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING

from airflow.providers.standard.operators.hitl import ApprovalOperator
from airflow.sdk import Param
from airflow.sdk.exceptions import AirflowFailException

if TYPE_CHECKING:
    from pg_backups.config import Cluster

SIGNOFF_XCOM_KEY = "signoff"


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
        context["ti"].xcom_push(SIGNOFF_XCOM_KEY, {
            "status": status,
            "by": (by.get("name") or by.get("id")) if isinstance(by, dict) else by,
            "at": at.isoformat() if hasattr(at, "isoformat") else at,
            "comment": params_input.get("comment"),
        })
        if status == "rejected":
            # No retry: asking QA again would not change the answer.
            raise AirflowFailException(f"QA rejected the restore test: {params_input.get('comment') or 'no comment'}")
        if event.get("error_type") == "timeout":
            # No retry either: a retry would ask again and stretch the wait to (retries + 1) timeouts.
            raise AirflowFailException(f"QA did not sign off within {self.response_timeout}: the restore test "
                                       "is not validated")
        return super().execute_complete(context=context, event=event)


def qa_signoff_operator(cluster: Cluster, **kwargs) -> QASignoffOperator:
    """QA's sign-off, assigned to restore_test.qa_users, waiting signoff_timeout_days at most."""
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
