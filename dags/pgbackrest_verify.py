"""Whole-repository `pgbackrest verify` of each configured cluster, on a schedule of its own
(weekly by default): off the backup's path, whose time must not grow with the repository."""

from airflow.sdk import DAG, task

from pg_backups.airflow import backup_tasks
from pg_backups.airflow.common import dag_args, dag_clusters

DOC = """
### Repository verify of cluster `{name}` (pgBackRest)
**verify**: `pgbackrest verify` of the whole repository of stanza `{name}` (every backup kept and
the WAL archive: checksums, missing files), judged by its output as well as its exit code (it has
exited 0 while printing errors, pgbackrest#2502); a problem fails the task and alerts Slack.

**Schedule** `{schedule}` (`pgbackrest.verify_schedule`): its cost grows with every backup the
retention keeps (measured on the sandbox: 34.7 s with 5 backups kept, 79.4 s with 8), so it runs
apart from the daily backup, whose duration stays flat. Each new backup is proven by its own
verification drill (`{drill}`). Takes the cluster's lock and pool slot `{pool}`:
never during a backup of the cluster.
"""

for cluster in dag_clusters("pgbackrest_verify"):
    if "pgbackrest" not in cluster.tools:
        continue
    with DAG(
        dag_id=cluster.dag_id("pgbackrest_verify"),
        schedule=cluster.pgbackrest.verify_schedule,
        **dag_args(cluster, "pgbackrest", queue=cluster.database_queue),
        doc_md=DOC.format(name=cluster.name, schedule=cluster.pgbackrest.verify_schedule, pool=cluster.pool,
                          drill=cluster.dag_id("verify_backup")),
    ):
        task(task_id="verify", pool=cluster.pool)(backup_tasks.pgbackrest_verify)(cluster.name)
