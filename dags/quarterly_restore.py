"""Quarterly restore test of each configured cluster (runbook 3): the latest backup restored to
staging, checked, signed off by QA, audited. First Sunday of Jan/Apr/Jul/Oct, 02:00 UTC."""

from airflow.sdk import DAG, Param, task

from pg_backups.airflow import restore_tasks
from pg_backups.airflow.common import alert_args, backup_asset, dag_args, dag_clusters
from pg_backups.airflow.operators import qa_signoff_operator
from pg_backups.config import TOOLS

DOC = """
### Quarterly restore test of cluster `{name}` (runbook 3)
**Schedule** `{schedule}`: the first Sunday of January, April, July and October at 02:00 UTC, as the
runbook's text says. Its cron line (`0 2 1 JAN,APR,JUL,OCT *`) means the 1st of the month, whatever
the weekday; the text wins (a Sunday night keeps the restore off working hours), so `0#1` = first Sunday.

0. **claim_staging** (sensor): waits while another run holds staging (a backfill runs several at
   once); released by the teardown.
1. **guard**: refuses (and deletes nothing) when staging `{staging}` resolves to production's data
   directory, lies outside `{root}`, holds a running PostgreSQL that is not staging (port {port}), or
   when connection `{conn}` points at production; and when the backup to restore does not exist (a
   label not in the repository, a target time outside its window).
2. **stop_staging** (`pg_ctl stop -m fast`), **purge_staging** (empty, 0700, owned by the OS user).
3. **restore_latest_backup**: `{tool}` by default (param `tool`); param `backup_label` (default
   `latest`: the newest good backup in `pgbackrest info` / `wal-g backup-list`), optional
   `target_time` for PITR. Archiving is off in staging: it never writes to the production repository.
4. **start_staging** on port {port}, then waits for `pg_is_in_recovery()` to be false.
5. **smoke_query**: `SELECT count(*) FROM pg_catalog.pg_tables;` into `{smoke}`.
6. **data_checks**: the marker row written by the restored backup's run, row counts of {tables},
   amcheck (`bt_index_check` with heapallindexed), not in recovery.
7. **qa_signoff**: QA ({qa}) validates staging and answers in *Required Actions* (Approve / Reject
   with a comment) within {days} days. A Reject fails the run.
8. **audit_and_archive** (always runs): one JSON line in `{audit}` (backup, RTO, checks, sign-off,
   outcome), both logs archived to `s3://{bucket}/{prefix}/{name}/`; outcome `failed` fails the run.
   A success posts a summary to Slack.
9. **stop_staging_after** (teardown, always runs, even when the run is marked failed by hand): waits
   until no restore process is left, stops staging and releases it, if this run holds it; it decides
   the run's state (fails unless the drill passed). A run **marked failed** from the UI or the API
   (a cancelled drill) ends failed, with an audit line of outcome `cancelled` (each step's state;
   who marked it is in Airflow's audit log) and one "Restore test cancelled" alert.

**Time**: a scheduled or triggered run restores the latest state (end of the archived WAL), or
`target_time` when given. **Backfill** proves the past: each backfill run restores the state as of
its logical date (PITR), from the newest backup that finished before it, and its audit line records
that target; a date outside the repository's window (before the oldest backup kept, about
{retention} days) fails the run at `guard`, first try, before staging is touched, naming the window.
"""

for cluster in dag_clusters("restore_test"):
    rt = cluster.restore_test
    with DAG(
        dag_id=cluster.dag_id("restore_test"),
        schedule=rt.schedule,
        # One alert per failed run: audit_and_archive's, which names the failed step and its cause.
        **dag_args(cluster, "restore-test", queue=rt.staging_queue, alert_every_task=False),
        params={
            "tool": Param(rt.tool, enum=[tool for tool in TOOLS if tool in cluster.tools],
                          description="Which tool's backup to restore"),
            "backup_label": Param("latest", type="string", description="Backup label/name, or 'latest'"),
            "target_time": Param(None, type=["null", "string"],
                                 description="Point in time to recover to (e.g. '2026-01-04 01:30:00+00'); "
                                             "empty: end of the archived WAL"),
        },
        doc_md=DOC.format(name=cluster.name, schedule=rt.schedule, staging=rt.staging_data_directory,
                          root=rt.staging_root, port=rt.staging_port, conn=cluster.staging_conn_id, tool=rt.tool,
                          smoke=rt.smoke_log, tables=", ".join(rt.check_tables) or "(none configured)",
                          qa=", ".join(rt.qa_users), days=rt.signoff_timeout_days, audit=rt.audit_log,
                          bucket=cluster.s3.bucket, prefix=rt.audit_prefix,
                          retention=cluster.pgbackrest.retention_full_days),
    ):
        # Waits (rescheduled, no worker held) while another run, e.g. of a backfill, holds staging.
        claim = task.sensor(task_id="claim_staging", mode="reschedule", poke_interval=30,
                            timeout=(rt.signoff_timeout_days + 1) * 86400)(restore_tasks.claim_staging)(cluster.name)
        guard = task(task_id="guard")(restore_tasks.guard)(cluster.name)
        stop = task(task_id="stop_staging")(restore_tasks.stop_staging)(cluster.name)
        purge = task(task_id="purge_staging")(restore_tasks.purge_staging)(cluster.name)
        restored = task(task_id="restore_latest_backup",
                        inlets=[backup_asset(cluster, tool) for tool in cluster.tools])(
            restore_tasks.restore_latest_backup)(cluster.name)
        start = task(task_id="start_staging")(restore_tasks.start_staging)(cluster.name)
        smoke = task(task_id="smoke_query")(restore_tasks.smoke_query)(cluster.name)
        checks = task(task_id="data_checks")(restore_tasks.data_checks)(cluster.name, restored)
        signoff = qa_signoff_operator(cluster)
        audit = task(task_id="audit_and_archive", trigger_rule="all_done", **alert_args(cluster, "restore-test"))(
            restore_tasks.audit_and_archive)(cluster.name)
        stop_after = task(task_id="stop_staging_after", trigger_rule="all_done", **alert_args(cluster, "restore-test"))(
            restore_tasks.stop_staging_after)(cluster.name)
        # The teardown runs even when the run is marked failed by hand (Airflow then skips audit_and_archive)
        # and, with on_failure_fail_dagrun, it alone decides the run's state: it fails unless the drill passed.
        claim >> guard >> stop >> purge >> restored >> start >> smoke >> checks >> signoff >> audit >> \
            stop_after.as_teardown(on_failure_fail_dagrun=True)
