"""Task bodies of each cluster's hourly freshness DAG (``Cluster.dag_id("freshness")``).

Each takes the cluster's name and reads the configuration when it runs. A task that finds a
problem raises: the task fails, and the cluster's Slack failure alert says what is wrong after the
last try. Metrics are published on the way, problem or not.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from airflow.providers.postgres.hooks.postgres import PostgresHook

from pg_backups import costs, freshness, metrics, pgbackrest, pitr, verification, walg
from pg_backups.airflow.common import cluster_named, context, s3_access, s3_client, task_body
from pg_backups.errors import NotVerified, StaleBackup, Unreachable, WalArchivingProblem
from pg_backups.times import now

if TYPE_CHECKING:
    from pg_backups.config import Cluster

log = logging.getLogger(__name__)

ARCHIVER_XCOM_KEY = "archiver_stats"


@task_body
def check_backups(cluster_name: str) -> dict:
    """The newest good backup of every tool of the cluster is younger than alerts.max_backup_age_hours."""
    cluster = cluster_named(cluster_name)
    at = now()
    limit = cluster.alerts.max_backup_age_hours
    verdicts = []
    stanza_info = backups = None
    if "pgbackrest" in cluster.tools:
        stanza_info = pgbackrest.info(cluster)
        newest = freshness.newest_pgbackrest(stanza_info)
        verdict = freshness.judge_backup("pgbackrest", newest, at, limit)
        status = (stanza_info.get("status") or {})
        if newest is None and status.get("code") not in (None, 0):  # e.g. the repository is unreachable
            verdict["problem"] += f" (pgbackrest info: {status.get('message')}; " + \
                "; ".join(str((r.get("status") or {}).get("message")) for r in stanza_info.get("repo", [])) + ")"
        verdicts.append(verdict)
        if newest:  # keep the backup metrics current even if the backup was published elsewhere
            entry = pgbackrest.newest_good(stanza_info)
            metrics.record_backup(cluster, pgbackrest.backup_record(cluster, entry, stanza_info))
    if "walg" in cluster.tools:
        access = s3_access(cluster)
        walg.write_config(cluster, access)  # as walg_backup does: `--config` must exist on this worker
        backups = walg.backup_list(cluster, access)
        newest = freshness.newest_walg(backups)
        verdicts.append(freshness.judge_backup("walg", newest, at, limit))
        if newest:
            metrics.record_backup(cluster, walg.backup_record(cluster, walg.newest(backups), backups))
    for verdict in verdicts:
        log.info("%s: newest good backup %s, finished %s, %s h old (limit %s h)", verdict["tool"],
                 verdict["label"], verdict["finished_at"], verdict["age_hours"], limit)
    windows = recovery_windows(cluster, stanza_info, backups)
    message = freshness.stale_message(cluster.name, verdicts)
    if message:
        raise StaleBackup(message)
    unverified = verification.unverified(cluster, s3_client(cluster), verdicts, at) if cluster.verify.enabled else []
    if unverified:
        raise NotVerified(f"cluster {cluster.name}: " + "; ".join(unverified),
                          "see the verify_backup run of that backup (its Slack alert names the step and cause), "
                          "or run verify_backup by hand for it")
    return {"cluster": cluster.name, "max_backup_age_hours": limit, "backups": verdicts, "recovery_windows": windows}


def recovery_windows(cluster: Cluster, stanza_info, backups) -> list[dict]:
    """Each tool's first and last recoverable point, as metrics (and the return value: the
    inventory). Informational: a failure to read it is logged, the backups' verdict stands."""
    try:
        windows = pitr.windows(cluster, s3_access(cluster), stanza_info, backups)
    except Exception as exc:  # noqa: BLE001
        log.warning("recovery window not measured: %s: %s", type(exc).__name__, exc)
        return []
    metrics.record_recovery_window(cluster, windows)
    for w in windows:
        log.info("%s recovery window: %s to %s (%s)", w["tool"], w["start"], w["end"], w["end_source"])
    return windows


def archiver_stats(cluster: Cluster) -> dict:
    row = PostgresHook(postgres_conn_id=cluster.pg_conn_id).get_first(freshness.ARCHIVER_SQL)
    return dict(zip(freshness.ARCHIVER_COLUMNS, row, strict=True))


@task_body
def check_wal_archiving(cluster_name: str) -> dict:
    """pg_stat_archiver: no failure since the last success, no new failures since the last check,
    no WAL piling up unarchived."""
    cluster = cluster_named(cluster_name)
    ti = context()["ti"]
    # The newest earlier value (one map index: XCom.get_one, newest logical date first).
    previous = ti.xcom_pull(task_ids=ti.task_id, key=ARCHIVER_XCOM_KEY, include_prior_dates=True,
                            map_indexes=ti.map_index)
    if not isinstance(previous, dict):
        previous = None
    stats = freshness.jsonable(archiver_stats(cluster))
    ti.xcom_push(key=ARCHIVER_XCOM_KEY, value=stats)  # the next check compares with it, even if this one fails
    metrics.record_archiver(cluster, stats)
    log.info("pg_stat_archiver: %s", stats)
    problems = freshness.archiver_problems(stats, previous, now(), cluster.alerts.max_wal_wait_minutes)
    if "pgbackrest" in cluster.tools:
        problems += [f"pgBackRest archive-push: {error}" for error in pgbackrest.async_archive_errors(cluster)]
    if problems:
        try:  # does the repository answer at all? (the first cause to rule out)
            s3_access(cluster).check_reachable(cluster.s3.bucket)
        except Unreachable as exc:
            problems.append(str(exc))
        raise WalArchivingProblem(f"cluster {cluster.name}: " + "; ".join(problems))
    return stats


@task_body
def bucket_usage(cluster_name: str) -> dict:
    """Bytes and objects of the bucket by storage class, noncurrent versions included (S3 cost)."""
    cluster = cluster_named(cluster_name)
    usage = metrics.record_bucket(cluster, s3_client(cluster))
    total = sum(row["bytes"] for row in usage["by_class"])
    log.info("bucket %s: %s bytes in %s objects", usage["bucket"], total, sum(r["objects"] for r in usage["by_class"]))
    log.info("bucket %s: estimated cost %s (docs/costs-and-channels.md)", usage["bucket"],
             costs.estimate(cluster, usage)["text"])
    return usage
