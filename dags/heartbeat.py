"""A heartbeat row into each configured cluster's production every verify.heartbeat_minutes: what
the daily PITR drill checks a recovered point against (pg_backups.pitr)."""

from airflow.sdk import DAG, task

from pg_backups.airflow import verify_tasks
from pg_backups.airflow.common import dag_args, dag_clusters
from pg_backups.pitr import HEARTBEAT_TABLE

DOC = """
### Heartbeat of cluster `{name}` (every {minutes} min)
**write_heartbeat** (on the database host): one row into `{table}` in database `postgres` (its
time and WAL position, 16 bytes), rows older than the longest retention and a week deleted. The
daily PITR drill (`{drill}`) checks that the newest heartbeat before its target came back
and none after it. A missed beat only makes the drill's check coarser; it alerts like any task.
"""

for cluster in dag_clusters("heartbeat"):
    if "heartbeat" not in cluster.dag_kinds:
        continue
    minutes = cluster.verify.heartbeat_minutes
    with DAG(
        dag_id=cluster.dag_id("heartbeat"),
        schedule=cluster.heartbeat_schedule,
        **dag_args(cluster, "verify", queue=cluster.database_queue),
        doc_md=DOC.format(name=cluster.name, minutes=minutes, table=HEARTBEAT_TABLE,
                          drill=cluster.dag_id("verify_pitr")),
    ):
        task(task_id="write_heartbeat")(verify_tasks.write_heartbeat)(cluster.name)
