"""Daily WAL-G backup of each configured cluster (runbook 2.2): 02:45 UTC by default."""

from airflow.sdk import DAG, task

from pg_backups.airflow import backup_tasks
from pg_backups.airflow.common import backup_asset, dag_args, dag_clusters

DOC = """
### Daily WAL-G backup of cluster `{name}`
1. **backup_push**: `wal-g backup-push`, tagged with this run's id (`WALG_SENTINEL_USER_DATA`).
   Holds the cluster's pool slot `{pool}`: never at the same time as its pgBackRest backup.
2. **publish_backup** (right after `backup_push`): the backup's record, in the same form as the
   pgBackRest DAG's, as return value and as an event of asset `{asset}`, whatever follows.
3. **delete_old_backups** (beside `publish_backup`): backups older than {days} days go (`wal-g delete
   before FIND_FULL <oldest kept backup> --confirm`); the newest full backup and the WAL kept backups
   need stay. It fails (and alerts) on its own.

**Time**: nothing depends on the run's date: a run with or without a logical date backs up now.
`backup_push` and `delete_old_backups` take the cluster's lock (a second run waits).
**Backfill**: at most one backup, now, when the current slot has none (tagged
`airflow_run_type=backfill`); every other run is skipped, the reason in its `backup_push` log.
"""

for cluster in dag_clusters("walg"):
    if "walg" not in cluster.tools:
        continue
    with DAG(
        dag_id=cluster.dag_id("walg"),
        schedule=cluster.walg.schedule,
        **dag_args(cluster, "walg", queue=cluster.database_queue),
        doc_md=DOC.format(name=cluster.name, pool=cluster.pool, days=cluster.walg.retention_days,
                          asset=cluster.asset_name("walg")),
    ):
        backup = task(task_id="backup_push", pool=cluster.pool)(backup_tasks.walg_backup)(cluster.name)
        delete_old = task(task_id="delete_old_backups")(backup_tasks.walg_delete_old)(cluster.name)
        publish = task(task_id="publish_backup", outlets=[backup_asset(cluster, "walg")])(
            backup_tasks.publish_backup)(cluster.name, backup)
        backup >> [publish, delete_old]
