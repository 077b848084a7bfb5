"""Task bodies of the bucket and backup DAGs: resolve the cluster and its S3 access from Airflow,
then call :mod:`pg_backups.operations`, the same code the cron scripts run.

Each takes the cluster's name (not the object) so that DAG files can generate one DAG per cluster
in a loop without Python's late-binding closures mixing clusters up, and so that the
configuration is read when the task runs.
"""

from __future__ import annotations

from pg_backups import metrics, operations, pgbackrest
from pg_backups.airflow import notifiers
from pg_backups.airflow.common import (
    backup_asset,
    cluster_named,
    context,
    is_backfill,
    params,
    run_time,
    run_type,
    s3_access,
    s3_client,
    task_body,
)
from pg_backups.times import now


@task_body
def configure_bucket(cluster_name: str) -> dict:
    cluster = cluster_named(cluster_name)
    report = operations.configure_bucket(cluster, s3_client(cluster))
    if report["changed"]:
        removed = report.get("removed_lifecycle_rules") or []
        notifiers.post(cluster, f":wrench: S3 bucket `{report['bucket']}` of cluster `{cluster.name}`: "
                                f"{'created and configured' if report['created'] else 'drift repaired'}: "
                                f"{', '.join(report['drifted_settings'])}"
                                + (f" (removed lifecycle rules not managed here: {', '.join(map(str, removed))})"
                                   if removed else ""), severity=notifiers.WARNING)
    return report


@task_body
def pgbackrest_preflight(cluster_name: str) -> dict:
    cluster = cluster_named(cluster_name)
    return operations.pgbackrest_preflight(cluster, s3_access(cluster))


@task_body
def pgbackrest_backup(cluster_name: str) -> dict:
    """Backup type from the run's params: `auto` (the weekly policy, on the run's date: its logical
    date, or its start when it has none; a backfill run's backup is taken now, so now) or
    full/diff/incr by hand."""
    cluster = cluster_named(cluster_name)
    ctx = context()
    backup_type = params(ctx).get("backup_type", "auto")
    if backup_type == "auto":
        backup_type = pgbackrest.backup_type_for(cluster, now() if is_backfill(ctx) else run_time(ctx))
    return operations.pgbackrest_backup(cluster, backup_type, ctx["run_id"], run_type(ctx))


@task_body
def pgbackrest_expire(cluster_name: str) -> dict:
    return operations.pgbackrest_expire(cluster_named(cluster_name))


@task_body
def pgbackrest_verify(cluster_name: str, label: str | None = None) -> str:
    return operations.pgbackrest_verify(cluster_named(cluster_name), label)


@task_body
def publish_backup(cluster_name: str, record: dict) -> dict:
    """The backup's record (read by the backup task, so nothing here needs the repository): the
    task's return value, the asset event's extra (which starts the verification drill), the metrics.
    It follows the backup directly: expire and the others fail on their own, never hiding a backup."""
    cluster = cluster_named(cluster_name)
    context()["outlet_events"][backup_asset(cluster, record["tool"])].extra = record
    metrics.record_backup(cluster, record)
    return record


@task_body
def walg_backup(cluster_name: str) -> dict:
    cluster = cluster_named(cluster_name)
    ctx = context()
    return operations.walg_backup(cluster, s3_access(cluster), ctx["run_id"], run_type(ctx))


@task_body
def walg_delete_old(cluster_name: str) -> dict:
    cluster = cluster_named(cluster_name)
    return operations.walg_delete_old(cluster, s3_access(cluster))
