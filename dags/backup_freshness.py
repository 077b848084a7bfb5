"""Hourly freshness check of each configured cluster's backups and WAL archiving (runbook 4)."""

from airflow.sdk import DAG, task

from pg_backups.airflow import freshness_tasks
from pg_backups.airflow.common import dag_args, dag_clusters

DOC = """
### Backup freshness of cluster `{name}` (hourly)
Notices what a failed task cannot report: a paused backup DAG, a dead scheduler, a cron line gone.
1. **check_backups**: the newest good backup of each tool ({tools}) from `pgbackrest info` /
   `wal-g backup-list --json --detail`; fails (and alerts Slack) when it is older than
   {hours} h or missing, or when that backup's verification drill failed or did not prove it
   within {delay} min (the drills' results in the bucket). Refreshes the backup metrics.
2. **check_wal_archiving**: `pg_stat_archiver` through connection `{conn}`; fails when the last
   archive attempt failed, when failures grew since the previous check, or when WAL waits to be
   archived. Writes the WAL archive metrics.
3. **bucket_usage**: bytes and objects of `{bucket}` by storage class, noncurrent versions
   included, as metrics (S3 cost; Prometheus alerts on unusual growth).

**Time**: every check judges the state now, whatever the run's logical date; a backfill run checks
now too (the past state of a repository cannot be read back).
"""

for cluster in dag_clusters("freshness"):
    with DAG(
        dag_id=cluster.dag_id("freshness"),
        schedule=cluster.hourly_schedule,
        **dag_args(cluster, "monitoring", queue=cluster.database_queue),
        doc_md=DOC.format(name=cluster.name, tools=", ".join(cluster.tools), hours=cluster.alerts.max_backup_age_hours,
                          delay=cluster.verify.max_delay_minutes,
                          conn=cluster.pg_conn_id, bucket=cluster.s3.bucket),
    ):
        task(task_id="check_backups")(freshness_tasks.check_backups)(cluster.name)
        task(task_id="check_wal_archiving")(freshness_tasks.check_wal_archiving)(cluster.name)
        task(task_id="bucket_usage")(freshness_tasks.bucket_usage)(cluster.name)
