"""The bodies of the DAGs' tasks: resolve the cluster and its S3 access from Airflow, then call
:mod:`pg_backups.operations`, the same code the cron scripts run.

Each callable takes the cluster's name (not the object) so that DAG files can generate one DAG per
cluster in a loop without Python's late-binding closures mixing clusters up, and so that the
configuration is read when the task runs.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta, timezone

from pg_backups import alerts, metrics, operations, pgbackrest
from pg_backups.config import load_config
from pg_backups.s3_access import S3Access

log = logging.getLogger(__name__)

START_DATE = datetime(2026, 1, 1, tzinfo=timezone.utc)


def default_args(cluster) -> dict:
    args = {
        "owner": cluster.owner,
        "retries": cluster.retries,
        "retry_delay": timedelta(seconds=cluster.retry_delay_seconds),
        "retry_exponential_backoff": True,
        "on_failure_callback": [alerts.failure_notifier(cluster)],
    }
    if cluster.alerts.notify_on_retry:
        args["on_retry_callback"] = [alerts.retry_notifier(cluster)]
    return args


def dag_args(cluster, purpose: str) -> dict:
    """What every DAG of a cluster shares: its start, no catchup, one run at a time, retries and
    Slack alerts, tags to filter by in the UI."""
    return {"start_date": START_DATE, "catchup": False, "max_active_runs": 1,
            "default_args": default_args(cluster), "tags": ["backups", purpose, cluster.name]}


def backup_asset(cluster, tool: str):
    """The asset a backup DAG updates; its events carry the backup record (label, times, sizes)."""
    from airflow.sdk import Asset

    path = cluster.pgbackrest.repo_path.strip("/") + f"/backup/{cluster.stanza}" if tool == "pgbackrest" \
        else cluster.walg.prefix.strip("/") + "/basebackups_005"
    return Asset(name=f"{tool}_backup_{cluster.name}", uri=f"s3://{cluster.s3.bucket}/{path}", group="backups")


def cluster_named(name: str):
    return load_config().cluster(name)


def s3_hook(cluster):
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook

    return S3Hook(aws_conn_id=cluster.s3.aws_conn_id, region_name=cluster.s3.region,
                  verify=cluster.s3.ca_file or None)


def s3_access(cluster) -> S3Access:
    """Credentials and endpoint from the cluster's Airflow AWS connection (never from code)."""
    hook = s3_hook(cluster)
    credentials = hook.get_credentials()
    conn = hook.conn_config
    verify = cluster.s3.ca_file or (conn.verify if isinstance(conn.verify, str) else None)
    return S3Access(region=cluster.s3.region, access_key=credentials.access_key, secret_key=credentials.secret_key,
                    session_token=credentials.token, endpoint_url=cluster.s3.endpoint_url or conn.endpoint_url,
                    ca_file=verify)


def s3_client(cluster):
    if cluster.s3.endpoint_url:  # the configuration overrides the connection's endpoint
        return s3_access(cluster).boto3_client()
    return s3_hook(cluster).get_conn()


def _context():
    from airflow.sdk import get_current_context

    return get_current_context()


# --------------------------------------------------------------------------------------------
# Task bodies


def configure_bucket(cluster_name: str) -> dict:
    cluster = cluster_named(cluster_name)
    report = operations.configure_bucket(cluster, s3_client(cluster))
    if report["changed"]:
        removed = report.get("removed_lifecycle_rules") or []
        alerts.post(cluster, f":wrench: S3 bucket `{report['bucket']}` of cluster `{cluster.name}`: "
                             f"{'created and configured' if report['created'] else 'drift repaired'}: "
                             f"{', '.join(report['drifted_settings'])}"
                             + (f" (removed lifecycle rules not managed here: {', '.join(map(str, removed))})"
                                if removed else ""))
    return report


def pgbackrest_preflight(cluster_name: str) -> dict:
    cluster = cluster_named(cluster_name)
    return operations.pgbackrest_preflight(cluster, s3_access(cluster))


def pgbackrest_backup(cluster_name: str) -> dict:
    """Backup type from the run's params: `auto` (the weekly policy) or full/diff/incr by hand."""
    cluster = cluster_named(cluster_name)
    context = _context()
    backup_type = (context.get("params") or {}).get("backup_type", "auto")
    if backup_type == "auto":
        backup_type = pgbackrest.backup_type_for(cluster, context["logical_date"] or datetime.now(timezone.utc))
    return operations.pgbackrest_backup(cluster, backup_type, context["run_id"])


def pgbackrest_expire(cluster_name: str) -> dict:
    return operations.pgbackrest_expire(cluster_named(cluster_name))


def pgbackrest_verify(cluster_name: str) -> str:
    return operations.pgbackrest_verify(cluster_named(cluster_name))


def publish_pgbackrest_backup(cluster_name: str, label: str) -> dict:
    cluster = cluster_named(cluster_name)
    record = operations.pgbackrest_latest_record(cluster, label)
    _context()["outlet_events"][backup_asset(cluster, "pgbackrest")].extra = record
    metrics.record_backup(cluster, record)
    return record


def walg_backup(cluster_name: str) -> dict:
    cluster = cluster_named(cluster_name)
    return operations.walg_backup(cluster, s3_access(cluster), _context()["run_id"])


def walg_delete_old(cluster_name: str) -> dict:
    cluster = cluster_named(cluster_name)
    return operations.walg_delete_old(cluster, s3_access(cluster))


def publish_walg_backup(cluster_name: str, label: str) -> dict:
    cluster = cluster_named(cluster_name)
    record = operations.walg_latest_record(cluster, s3_access(cluster), label)
    _context()["outlet_events"][backup_asset(cluster, "walg")].extra = record
    metrics.record_backup(cluster, record)
    return record
