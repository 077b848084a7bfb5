"""Verification drill of each configured cluster: every backup that a backup DAG publishes is
restored onto a disposable target, checked as the restore test checks, and torn down."""

import functools
import operator
from datetime import timedelta

from airflow.sdk import DAG, Param, task

from pg_backups.airflow import verify_tasks
from pg_backups.airflow.common import alert_args, backup_asset, dag_args, dag_clusters
from pg_backups.config import TOOLS
from pg_backups.verification import data_directory

DOC = """
### Verification drill of cluster `{name}`
Started by each event of {assets} (each `publish_backup` emits one): the backup it names is drilled
within minutes, with nobody in the UI. QA's staging and the quarterly restore test are not involved.

1. **choose_backup**: the backup of the asset event (its record: label, tool, sizes), or for a run
   triggered by hand the params `tool` / `backup_label`; refuses, before anything is restored, a
   target that is not provably the drill's (`{target}` under `verify.root`, port {port}) and a
   `verify.root` without room for the backup (its database size + {margin} %).
2. **drill** (pool `{pool}`: one drill at a time on the verification host; timeout {timeout} min):
   restores that backup onto `{target}` (`archive_mode=off`, a pgBackRest lock path of its own),
   starts it on port {port}, waits for the end of recovery, then the restore test's checks (smoke
   query, not in recovery, the backup's marker row, row counts, amcheck). RTO = restore + start +
   recovery. The target's server is stopped at the end.
3. **record_evidence** (teardown: always runs, also when the run is failed from the UI): one JSON line in `{log}` (backup, tool, target, RTO, checks,
   outcome, failed step and cause), archived to `s3://{bucket}/{prefix}/{name}/`; metrics
   `pg_backups_verify_*`. A failed drill fails this task: one Slack alert naming backup, step, cause.
4. **remove_target** (teardown, always runs, also when the run is failed from the UI): stops the
   target and removes `{target}`.
"""

for cluster in dag_clusters("verify_backup"):
    v = cluster.verify
    if not v.enabled:
        continue
    assets = [backup_asset(cluster, tool) for tool in cluster.tools]
    with DAG(
        dag_id=cluster.dag_id("verify_backup"),
        # Any of the cluster's backup assets (``|``; a list would wait for all of them).
        schedule=functools.reduce(operator.or_, assets),
        **dag_args(cluster, "verify", queue=v.queue, alert_every_task=False),
        params={
            "tool": Param(cluster.restore_test.tool, enum=[tool for tool in TOOLS if tool in cluster.tools],
                          description="A run by hand: which tool's backup to drill"),
            "backup_label": Param("latest", type="string", description="A run by hand: backup label, or 'latest'"),
        },
        doc_md=DOC.format(name=cluster.name, assets=", ".join(f"`{a.name}`" for a in assets),
                          target=data_directory(cluster), port=v.port, pool=v.pool, timeout=v.timeout_minutes,
                          margin=v.free_space_margin_percent, log=v.log, bucket=cluster.s3.bucket,
                          prefix=cluster.restore_test.audit_prefix),
    ):
        planned = task(task_id="choose_backup")(verify_tasks.choose_backup)(cluster.name)
        drilled = task(task_id="drill", pool=v.pool, execution_timeout=timedelta(minutes=v.timeout_minutes))(
            verify_tasks.drill)(cluster.name, planned)
        evidence = task(task_id="record_evidence", **alert_args(cluster, "verify"))(
            verify_tasks.record_evidence)(cluster.name)
        removed = task(task_id="remove_target", **alert_args(cluster, "verify"))(
            verify_tasks.remove_target)(cluster.name)
        # Both are teardowns: they run also when the run is failed from the UI (an ordinary
        # record_evidence was skipped then, and the run ended "success"). record_evidence fails the
        # run when the drill did not pass (on_failure_fail_dagrun); a teardown that fails the run
        # counts as its leaf, so the evidence must be that teardown, not remove_target.
        evidence = evidence.as_teardown(on_failure_fail_dagrun=True)
        drilled >> evidence >> removed.as_teardown()
