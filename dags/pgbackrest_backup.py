"""Daily pgBackRest backup of each configured cluster (runbook 2.1): 02:15 UTC by default."""

from airflow.sdk import DAG, Param, task

from pg_backups.airflow import backup_tasks
from pg_backups.airflow.common import backup_asset, dag_args, dag_clusters

DOC = """
### Daily pgBackRest backup of cluster `{name}`
1. **preflight**: writes pgbackrest.conf, creates the stanza on the first run, `pgbackrest check`
   proves WAL archiving works (PITR).
2. **backup**: full on {full_days}, `{incr}` otherwise (param `backup_type` forces one for a
   manual run); tagged with this run's id. Holds the
   cluster's pool slot `{pool}`: never at the same time as the WAL-G backup of the cluster.
3. **publish_backup** (right after `backup`): the backup's record (label, type, times, sizes, WAL
   range, read by `backup`) as return value and as an event of asset `{asset}`,
   whatever follows: a backup that exists is always published.
4. **expire** (after `backup`, beside `publish_backup`): time-based retention, {days} days of full
   backups and the WAL they need. It fails (and alerts) on its own.

The whole-repository `pgbackrest verify` runs in DAG `{repository_verify}` on its own schedule
(its cost grows with the backups kept; this DAG's must not); each new backup is proven by its
verification drill, `{drill}`, which its asset event starts.

**Time**: the full/{incr} choice reads the run's logical date, or its start when it has none (a
run triggered from the UI or the API without one). Runs of the cluster never overlap: `backup`
and `expire` take the cluster's lock (a second run waits).
**Backfill**: a backup cannot be taken of the past. A backfill takes at most one backup, now: its
first run backs up when the current slot of the schedule has no backup yet (annotated
`airflow_run_type=backfill`); every other run is skipped, the reason in its `backup` log.
"""

for cluster in dag_clusters("pgbackrest"):
    if "pgbackrest" not in cluster.tools:
        continue
    with DAG(
        dag_id=cluster.dag_id("pgbackrest"),
        schedule=cluster.pgbackrest.schedule,
        **dag_args(cluster, "pgbackrest", queue=cluster.database_queue),
        params={"backup_type": Param("auto", enum=["auto", "full", "diff", "incr"],
                                     description="auto: the weekly policy; or force a type for this run")},
        doc_md=DOC.format(name=cluster.name, full_days=", ".join(cluster.pgbackrest.full_backup_days),
                          incr=cluster.pgbackrest.incremental_type, pool=cluster.pool, asset=cluster.asset_name("pgbackrest"),
                          repository_verify=cluster.dag_id("pgbackrest_verify"), drill=cluster.dag_id("verify_backup"),
                          days=cluster.pgbackrest.retention_full_days),
    ):
        preflight = task(task_id="preflight")(backup_tasks.pgbackrest_preflight)(cluster.name)
        backup = task(task_id="backup", pool=cluster.pool)(backup_tasks.pgbackrest_backup)(cluster.name)
        expire = task(task_id="expire")(backup_tasks.pgbackrest_expire)(cluster.name)
        # That backup's own verify (2.55+, skipped before): beside publishing, never in its way.
        verify = task(task_id="verify")(backup_tasks.pgbackrest_verify)(cluster.name, backup["label"])
        publish = task(task_id="publish_backup", outlets=[backup_asset(cluster, "pgbackrest")])(
            backup_tasks.publish_backup)(cluster.name, backup)
        preflight >> backup >> [publish, expire, verify]
