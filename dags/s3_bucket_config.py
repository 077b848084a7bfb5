"""The backup bucket's configuration as desired state (runbook 2.3), checked and repaired daily."""

from airflow.sdk import DAG, task

from pg_backups.airflow import backup_tasks
from pg_backups.airflow.common import dag_args, dag_clusters

DOC = """
### S3 bucket configuration for cluster `{name}`: `{bucket}` in `{region}`
**configure_bucket** creates the bucket if missing, then compares its versioning, lifecycle,
public access block, default encryption and TLS-only policy with the desired state and applies
only the difference. The drift it repaired is in the log, the return value and Slack; a run with
no drift changes nothing. Safe to run every day, and at any time: nothing depends on the run's
logical date (a backfill run checks the bucket as it is now).
"""

for cluster in dag_clusters("s3_bucket"):
    with DAG(
        dag_id=cluster.dag_id("s3_bucket"),
        schedule=cluster.daily_schedule,
        **dag_args(cluster, "s3"),
        doc_md=DOC.format(name=cluster.name, bucket=cluster.s3.bucket, region=cluster.s3.region),
    ):
        task(task_id="configure_bucket")(backup_tasks.configure_bucket)(cluster.name)
