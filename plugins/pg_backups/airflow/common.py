"""What every task body shares: the cluster by name, the run's time, S3 access from the Airflow
connection, the DAG arguments, and the one place where an error that a retry cannot fix becomes
a failure without retry.
"""

from __future__ import annotations

import functools
import logging
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING

from airflow.sdk import Asset, get_current_context, get_parsing_context
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

from pg_backups import tools
from pg_backups.airflow import notifiers
from pg_backups.config import load_config
from pg_backups.errors import NothingToDo, PgBackupsError
from pg_backups.operations import BACKFILL
from pg_backups.s3_access import S3Access
from pg_backups.times import now

if TYPE_CHECKING:
    from pg_backups.config import Cluster

log = logging.getLogger(__name__)

START_DATE = datetime(2026, 1, 1, tzinfo=timezone.utc)


def task_body(fn):
    """Run a task body; an error whose ``retryable`` is false fails the task at once, without retry
    (a refused staging path or an invalid pgBackRest option does not get better in five minutes),
    and a run with nothing to do is skipped, its reason in the log."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except NothingToDo as exc:
            log.info("skipped: %s", exc)
            raise AirflowSkipException(str(exc)) from exc
        except Exception as exc:
            keep_error(exc)
            if isinstance(exc, PgBackupsError) and not exc.retryable:
                raise AirflowFailException(str(exc)) from exc
            raise

    return wrapper


class AlreadyReported(AirflowFailException):
    """A failure whose alert and evidence were already sent (the restore test's audit, or its
    cancellation): the task fails, without retry and without a second Slack alert (the notifier
    reads ``already_reported``: it cannot import this module, which imports it)."""

    already_reported = True


ERROR_XCOM_KEY = "error"


def keep_error(exc: BaseException) -> None:
    """The failure's one-line, redacted summary as an XCom of the task: a later task (the restore
    test's audit) reports the cause, not only the state."""
    try:
        context()["ti"].xcom_push(ERROR_XCOM_KEY, notifiers.error_summary(exc))
    except Exception as problem:  # noqa: BLE001 - the failure itself must stand, whatever happens here
        log.warning("could not keep the error for the audit: %s", type(problem).__name__)


def alert_args(cluster: Cluster, purpose: str = "") -> dict:
    """The alert channels of the task's final failure (and of each retry when alerts.notify_on_retry)."""
    args = {"on_failure_callback": notifiers.failure_notifiers(cluster, purpose)}
    if cluster.alerts.notify_on_retry:
        args["on_retry_callback"] = notifiers.retry_notifiers(cluster, purpose)
    return args


def default_args(cluster: Cluster, queue: str | None = None, purpose: str = "", alerts: bool = True) -> dict:
    args = {
        "owner": cluster.owner,
        "retries": cluster.retries,
        "retry_delay": timedelta(seconds=cluster.retry_delay_seconds),
        "retry_exponential_backoff": True,
        **(alert_args(cluster, purpose) if alerts else {}),
    }
    if queue:  # none: Airflow's default queue
        args["queue"] = queue
    return args


def dag_clusters(kind: str) -> list[Cluster]:
    """The clusters whose DAG of ``kind`` this parse builds: every one, except in a task's own
    process. Airflow's task runner re-parses the DAG's file and names the DAG it runs (its parsing
    context): building only that one spares each task instance the rest of the fleet (a file of
    1,000 clusters costs about 4 CPU s to build; benchmarks/bench_fleet.py)."""
    clusters = load_config(strict=False).clusters
    running = get_parsing_context().dag_id
    return clusters if running is None else [c for c in clusters if c.dag_id(kind) == running]


def dag_args(cluster: Cluster, purpose: str, queue: str | None = None, alert_every_task: bool = True) -> dict:
    """What every DAG of a cluster shares: its start, no catchup, one run at a time, retries and
    Slack alerts, tags to filter by in the UI; ``queue``: the Celery queue of the host whose
    worker runs its tasks (the database host for backups, the staging host for the restore test).
    ``alert_every_task`` false: the DAG names the tasks that alert (``alert_args``), so that a failed
    run alerts once."""
    return {"start_date": START_DATE, "catchup": False, "max_active_runs": 1,
            "default_args": default_args(cluster, queue, purpose, alert_every_task),
            "tags": ["backups", purpose, cluster.name]}


def backup_asset(cluster: Cluster, tool: str) -> Asset:
    """The asset a backup DAG updates; its events carry the backup record (label, times, sizes)."""
    return Asset(name=cluster.asset_name(tool), uri=f"s3://{cluster.s3.bucket}/{tools.of(tool).repository_path(cluster)}",
                 group="backups")


def cluster_named(name: str):
    return load_config(strict=False).cluster(name)  # another cluster's mistake does not stop this one


def context():
    return get_current_context()


def run_time(ctx=None) -> datetime:
    """The time a run stands for: its logical date when it has one, else when the run started.

    A run triggered from the UI or the REST API with no logical date has none (Airflow 3):
    reading ``context["logical_date"]`` would fail.
    """
    ctx = ctx or context()
    logical = ctx.get("logical_date")
    if logical is not None:
        return logical
    dag_run = ctx.get("dag_run")
    return getattr(dag_run, "start_date", None) or getattr(dag_run, "run_after", None) or now()


def run_type(ctx=None) -> str:
    """``scheduled``, ``manual``, ``backfill`` or ``asset_triggered`` (Airflow's DagRunType)."""
    dag_run = (ctx or context()).get("dag_run")
    value = getattr(dag_run, "run_type", None)
    return str(getattr(value, "value", value) or "manual")


def is_backfill(ctx=None) -> bool:
    return run_type(ctx) == BACKFILL


def params(ctx=None) -> dict:
    return dict((ctx or context()).get("params") or {})


def s3_hook(cluster: Cluster):
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook

    return S3Hook(aws_conn_id=cluster.s3.aws_conn_id, region_name=cluster.s3.region,
                  verify=cluster.s3.ca_file or None)


def s3_access(cluster: Cluster) -> S3Access:
    """Credentials and endpoint from the cluster's Airflow AWS connection (never from code)."""
    hook = s3_hook(cluster)
    credentials = hook.get_credentials()
    conn = hook.conn_config
    verify = cluster.s3.ca_file or (conn.verify if isinstance(conn.verify, str) else None)
    return S3Access(region=cluster.s3.region, access_key=credentials.access_key, secret_key=credentials.secret_key,
                    session_token=credentials.token, endpoint_url=cluster.s3.endpoint_url or conn.endpoint_url,
                    ca_file=verify)


def s3_client(cluster: Cluster):
    if cluster.s3.endpoint_url:  # the configuration overrides the connection's endpoint
        return s3_access(cluster).boto3_client()
    return s3_hook(cluster).get_conn()
