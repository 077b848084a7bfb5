"""The daily random-point PITR drill of each configured cluster: a point of the recovery window
drawn, recovered onto a disposable target, checked against production's heartbeats, torn down."""

from datetime import timedelta

from airflow.sdk import DAG, Param, task

from pg_backups.airflow import verify_tasks
from pg_backups.airflow.common import alert_args, dag_args, dag_clusters
from pg_backups.config import TOOLS
from pg_backups.verification import PITR, data_directory

DOC = """
### PITR drill of cluster `{name}` (`{schedule}` UTC)
1. **choose_target** (database host): the recovery window of the tool (its oldest backup's stop
   time to the newest archived heartbeat), a target drawn in it from the run id (the same run draws
   the same point) or the param `target_time`, and what production had then (the newest heartbeat
   at or before it, the first after it).
2. **plan** (verification host): the newest backup that finished before the target, the target's
   guard (`{target}` under `verify.root`) and the disk guard.
3. **drill** (pool `{pool}`; timeout {timeout} min): that backup restored onto `{target}` and
   recovered to the target (`archive_mode=off`), started on port {port}; the restore test's checks,
   and the heartbeats: the newest one at or before the target is there, none after it; the
   achieved recovery point (the newest commit recovered) and its gap to the target.
4. **record_evidence** (teardown): one line in `{log}` (kind `pitr_verification`), archived to S3;
   metrics `pg_backups_verify_pitr_*`. A failed drill fails this task: one Slack alert naming the
   target, the backup, the step and the cause.
5. **remove_target** (teardown): stops the target and removes `{target}`.
"""

for cluster in dag_clusters("verify_pitr"):
    if "verify_pitr" not in cluster.dag_kinds:
        continue
    v = cluster.verify
    with DAG(
        dag_id=cluster.dag_id("verify_pitr"),
        schedule=v.pitr_schedule,
        **dag_args(cluster, "verify", queue=v.queue, alert_every_task=False),
        params={
            "tool": Param(cluster.restore_test.tool, enum=[tool for tool in TOOLS if tool in cluster.tools],
                          description="Whose recovery window: the backups and WAL of this tool"),
            "target_time": Param("", type="string", description="A run by hand: the point to recover to (ISO 8601 "
                                 "with its offset); empty: drawn from the recovery window"),
        },
        doc_md=DOC.format(name=cluster.name, schedule=v.pitr_schedule, target=data_directory(cluster, PITR),
                          pool=v.pool, timeout=v.timeout_minutes, port=v.port, log=v.log),
    ):
        # Production's heartbeats and pg_stat_archiver are read where the backups run.
        on_database_host = {"queue": cluster.database_queue} if cluster.database_queue else {}
        chosen = task(task_id="choose_target", **on_database_host)(verify_tasks.choose_target)(cluster.name)
        planned = task(task_id="plan")(verify_tasks.plan_pitr)(cluster.name, chosen)
        drilled = task(task_id="drill", pool=v.pool, execution_timeout=timedelta(minutes=v.timeout_minutes))(
            verify_tasks.drill)(cluster.name, planned, chosen)
        evidence = task(task_id="record_evidence", **alert_args(cluster, "verify"))(
            verify_tasks.record_evidence)(cluster.name, pitr_drill=True)
        removed = task(task_id="remove_target", **alert_args(cluster, "verify"))(
            verify_tasks.remove_target)(cluster.name, pitr_drill=True)
        # As in verify_backup: both teardowns run when the run is failed from the UI, and the
        # evidence, which fails the run when the drill did not pass, is the teardown that decides.
        evidence = evidence.as_teardown(on_failure_fail_dagrun=True)
        drilled >> evidence >> removed.as_teardown()
