"""The operations of the runbook, one implementation each, for the DAG tasks and the cron scripts.

Nothing here imports Airflow: a DAG task resolves the cluster and the S3 access from Airflow
connections and calls these; a cron script resolves them from the environment and calls the same.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime
from typing import TYPE_CHECKING

from pg_backups import (
    archiving,
    audit,
    checks,
    marker,
    metrics,
    pgbackrest,
    runner,
    s3_bucket,
    staging,
    times,
    tools,
    versions,
    walg,
)
from pg_backups.errors import CheckFailed, NothingToDo, Refused, RestoreRefused, ToolError, Unreachable
from pg_backups.s3_access import S3Access

if TYPE_CHECKING:
    from pg_backups.config import Cluster

log = logging.getLogger(__name__)

BACKUP_TIMEOUT_SECONDS = 6 * 3600
# Airflow's run type of a backfill run (DagRunType.BACKFILL_JOB); the operations know no Airflow.
BACKFILL = "backfill"


def archive_command(cluster: Cluster) -> str:
    """One archive_command feeding every configured tool. ``&&``: if either tool fails the
    command fails and PostgreSQL retries the segment, so neither repository silently loses WAL
    (pg_wal grows meanwhile: watch it)."""
    parts = []
    if "pgbackrest" in cluster.tools:
        parts.append(pgbackrest.archive_command(cluster))
    if "walg" in cluster.tools:
        parts.append(walg.archive_command(cluster))
    return " && ".join(parts)


def write_tool_configs(cluster: Cluster, access: S3Access) -> list[str]:
    """pgbackrest.conf (+ credentials include) and walg.json, owner-only, for the configured tools."""
    written = []
    if "pgbackrest" in cluster.tools:
        written += pgbackrest.write_config(cluster, access)
    if "walg" in cluster.tools:
        written += walg.write_config(cluster, access)
    return written


# --------------------------------------------------------------------------------------------
# S3 bucket


def configure_bucket(cluster: Cluster, client) -> dict:
    return s3_bucket.reconcile(client, cluster.s3).as_dict()


# --------------------------------------------------------------------------------------------
# pgBackRest


# What PostgreSQL says when it answers but refuses the login: no retry makes these pass.
LOGIN_REFUSED = ("password authentication failed", "does not exist", "no pg_hba.conf entry",
                 "peer authentication failed", "no password supplied")


def check_postgres_reachable(cluster: Cluster, timeout: int = 10) -> None:
    """Fail fast, naming the server and the user, when production PostgreSQL does not let the
    tools in: pgBackRest's own messages for it ("unable to find primary cluster", "no database
    found") hide the cause. A login PostgreSQL refuses is not retried; a server that does not
    answer is."""
    where = f"{cluster.host}:{cluster.port}"
    how = f"as user {cluster.user}" + (f" through the socket in {cluster.socket_directory}"
                                       if cluster.socket_directory else "")
    proc = runner.production_psql(cluster, "SELECT 1", timeout=timeout + 20, check=False, connect_timeout=timeout)
    if proc.returncode == 0:
        return
    why = runner.last_error_line(proc.stdout + proc.stderr)
    if any(words in why.lower() for words in LOGIN_REFUSED):
        raise Refused(f"production PostgreSQL of cluster {cluster.name} ({where}) refused the login {how}: {why}. "
                      "Nothing was backed up", "check the user and its password (the cluster's user, or PGUSER "
                      "and PGPASSWORD for the cron scripts) and pg_hba.conf")
    raise Unreachable(f"production PostgreSQL of cluster {cluster.name} ({where}) is not accepting connections "
                      f"{how}: {why}. Nothing was backed up", "start it, or fix host/port in the cluster configuration "
                      "(PGHOST/PGPORT for the cron scripts)")


def pgbackrest_preflight(cluster: Cluster, access: S3Access) -> dict:
    pgbackrest.check_options(cluster)  # a hand-written file: its options, before anything runs
    access.check_reachable(cluster.s3.bucket)
    check_postgres_reachable(cluster)
    # Server, data directory and binaries of one PostgreSQL major, before pgBackRest runs.
    found = versions.check_cluster(cluster)
    written = pgbackrest.write_config(cluster, access)
    stanza = pgbackrest.ensure_stanza(cluster)
    return {"cluster": cluster.name, "stanza": stanza, "config_written": written,
            "postgres_major": found["postgres_major"],
            "pgbackrest_version": versions.text(versions.pgbackrest_version())}


def refuse_covered_backfill(tool: str, schedule: str, newest_label: str | None, newest_start) -> None:
    """A backfill run cannot back up the past: it takes one backup now only when the current slot
    of the schedule has none yet (so a backfill of N days takes at most one), else it is skipped."""
    slot = times.last_slot(schedule)
    if newest_start is not None and times.utc(newest_start) >= slot:
        raise NothingToDo(f"backfill run: no {tool} backup taken. A backup cannot be taken of the past, and the "
                          f"current slot of the schedule (since {slot.isoformat()}) already has backup "
                          f"{newest_label}, started {times.iso(newest_start)}")


def pgbackrest_backup(cluster: Cluster, backup_type: str, run_id: str | None, run_type: str | None = None) -> dict:
    """One backup under the cluster's lock (a second run waits); returns its record. ``run_type``
    ``backfill``: see :func:`refuse_covered_backfill`; the backup's annotation says it is a backfill
    run's, taken now.

    The record is read here, right after the backup, so that publishing it needs nothing more from
    the repository: a backup that exists is published even when S3 goes away just after it (then
    only expire and verify fail, each with its own alert)."""
    with runner.cluster_lock(cluster.lock_directory, cluster.name):
        if run_type == BACKFILL:
            newest = pgbackrest.latest_backup(cluster)
            refuse_covered_backfill("pgBackRest", cluster.pgbackrest.schedule, newest and newest["label"],
                                    newest and newest["timestamp"]["start"])
        archiving.check_before_backup(cluster, "pgBackRest")  # a backup cannot complete while archiving fails
        marker.write_marker(cluster, run_id, "pgbackrest")  # the restore test looks for it
        entry = pgbackrest.backup(cluster, backup_type, run_id, timeout=BACKUP_TIMEOUT_SECONDS, run_type=run_type,
                                  watch=archiving.watchdog(cluster, "pgBackRest"))
        return pgbackrest_latest_record(cluster, entry["label"])


def pgbackrest_expire(cluster: Cluster) -> dict:
    with runner.cluster_lock(cluster.lock_directory, cluster.name):  # never while a backup runs
        before = len(pgbackrest.info(cluster).get("backup", []))
        pgbackrest.expire(cluster)
        after = len(pgbackrest.info(cluster).get("backup", []))
    return {"expired": before - after, "kept": after}


def pgbackrest_verify(cluster: Cluster, label: str | None = None) -> str:
    """``label``: that backup, right after it, where pgBackRest verifies one backup (``verify --set``,
    2.55+); older versions are skipped (NothingToDo): the whole repository's verify grows with every
    backup kept and stays off the backup's path, and the backup's verification drill
    proves it. None: the whole repository (the cluster's weekly repository-verify DAG)."""
    if label:
        version = versions.pgbackrest_version(pgbackrest.BINARY)
        if version < versions.VERIFY_SET:
            raise NothingToDo(f"pgBackRest {versions.text(version)} has no verify --set "
                              f"({versions.text(versions.VERIFY_SET)}+): backup {label} is proven by its drill "
                              f"({cluster.dag_id('verify_backup')}), the repository weekly ({cluster.dag_id('pgbackrest_verify')})")
    with runner.cluster_lock(cluster.lock_directory, cluster.name):
        return pgbackrest.verify(cluster, label)


def pgbackrest_latest_record(cluster: Cluster, label: str | None = None) -> dict:
    stanza_info = pgbackrest.info(cluster)
    entry = pgbackrest.newest_good(stanza_info, label)
    if entry is None:
        raise ToolError(f"pgbackrest info lists no good backup{' ' + label if label else ''} "
                        f"for stanza {cluster.stanza}")
    return pgbackrest.backup_record(cluster, entry, stanza_info)


def pgbackrest_daily(cluster: Cluster, access: S3Access, run_id: str | None, day: datetime | None = None) -> dict:
    """The whole daily chain, for cron: the DAG runs the same steps as separate tasks. The backup
    is published (metrics) before expire, which then fails on its own, then verified alone where
    pgBackRest can (2.55+). The repository's verify is a command of its own (``pgbackrest-verify``,
    weekly), as in Airflow."""
    pgbackrest_preflight(cluster, access)
    record = pgbackrest_backup(cluster, pgbackrest.backup_type_for(cluster, day or times.now()), run_id)
    metrics.record_backup(cluster, record)  # Prometheus textfile / Pushgateway; never fails the backup
    pgbackrest_expire(cluster)
    try:
        pgbackrest_verify(cluster, record["label"])
    except NothingToDo as skipped:  # no verify --set before 2.55: the drill proves the backup
        log.info("%s", skipped)
    return record


# --------------------------------------------------------------------------------------------
# WAL-G


def walg_backup(cluster: Cluster, access: S3Access, run_id: str | None, run_type: str | None = None) -> dict:
    """As :func:`pgbackrest_backup`, with WAL-G: returns the backup's record, read right after it."""
    access.check_reachable(cluster.s3.bucket)
    versions.check_cluster(cluster)  # as pgbackrest_preflight: one PostgreSQL major, before WAL-G runs
    walg.write_config(cluster, access)
    with runner.cluster_lock(cluster.lock_directory, cluster.name):
        if run_type == BACKFILL:
            newest = walg.newest(walg.backup_list(cluster, access))
            refuse_covered_backfill("WAL-G", cluster.walg.schedule, newest and newest["backup_name"],
                                    newest and walg.started(newest))
        # backup-push would wait in pg_backup_stop() for as long as archiving fails: check first, and
        # stop it with the reason when it waits there anyway (archiving broke during the backup).
        archiving.check_before_backup(cluster, "WAL-G")
        marker.write_marker(cluster, run_id, "walg")  # the restore test looks for it
        entry = walg.backup_push(cluster, access, run_id, timeout=BACKUP_TIMEOUT_SECONDS, run_type=run_type,
                                 watch=archiving.watchdog(cluster, "WAL-G"))
        return walg_latest_record(cluster, access, entry["backup_name"])


def walg_delete_old(cluster: Cluster, access: S3Access) -> dict:
    with runner.cluster_lock(cluster.lock_directory, cluster.name):  # never while a backup runs
        return walg.delete_old(cluster, access)


def walg_latest_record(cluster: Cluster, access: S3Access, label: str | None = None) -> dict:
    backups = walg.backup_list(cluster, access)
    chosen = walg.newest(backups, label)
    if chosen is None:
        raise ToolError(f"wal-g backup-list shows no backup{' ' + label if label else ''} "
                        f"under {cluster.walg_s3_prefix}")
    return walg.backup_record(cluster, chosen, backups)


def walg_daily(cluster: Cluster, access: S3Access, run_id: str | None) -> dict:
    record = walg_backup(cluster, access, run_id)
    metrics.record_backup(cluster, record)  # Prometheus textfile / Pushgateway; never fails the backup
    walg_delete_old(cluster, access)  # after the publication: its failure does not hide the backup
    return record


# --------------------------------------------------------------------------------------------
# Quarterly restore test (runbook 3): the DAG runs these as separate tasks, cron as one chain.

RESTORE_TIMEOUT_SECONDS = 6 * 3600


def restore_guard(cluster: Cluster, staging_conn=None) -> dict:
    return staging.guard(cluster, staging_conn)


def restore_stop_staging(cluster: Cluster, staging_conn=None) -> str:
    return staging.stop_staging(cluster, staging_conn)


def restore_purge_staging(cluster: Cluster, staging_conn=None) -> dict:
    return staging.purge_staging(cluster, staging_conn)


def restore_backup_record(cluster: Cluster, tool: str, access: S3Access | None, label: str | None = None,
                          target_time: str | None = None) -> dict:
    """The backup to restore, read from the repository (``pgbackrest info`` / ``backup-list``): the
    given label, else the newest good one; with a PITR target, the newest that finished before it
    (a backup that ended after the target cannot recover to it). A target outside the window the
    repository covers is refused before staging is touched, naming the window."""
    target = _target(target_time)
    if access is not None:  # first: on a staging host of its own, no earlier task has written it
        tools.of(tool).write_config(cluster, access)
    if tool == "walg":
        backups = walg.backup_list(cluster, access)
        chosen = walg.newest(backups, label, finished_before=target)
        window = [walg.finished(b) for b in backups]
        record = walg.backup_record(cluster, chosen, backups) if chosen else None
    else:
        stanza_info = pgbackrest.info(cluster)
        chosen = pgbackrest.newest_good(stanza_info, label, finished_before=target)
        window = [times.utc(b["timestamp"]["stop"]) for b in stanza_info.get("backup", []) if not b.get("error")]
        record = pgbackrest.backup_record(cluster, chosen, stanza_info) if chosen else None
    if record is None:
        what = f"backup {label}" if label else "good backup"
        if target is None or not window:
            raise ToolError(f"the {tool} repository of cluster {cluster.name} lists no {what}")
        raise RestoreRefused("target_time", f"{target.isoformat()} is outside the recovery window of cluster "
                             f"{cluster.name}'s {tool} repository: no {what} finished before it (the oldest finished "
                             f"{min(window).isoformat()}; retention keeps about {tools.of(tool).retention_days(cluster)} days)",
                             "choose a target time between the oldest backup and now")
    if target is not None:
        log.info("PITR to %s: restoring %s backup %s, finished %s (the newest that finished before the target)",
                 target.isoformat(), tool, record["label"], record["stop_time"])
    return record


def _target(target_time: str | None):
    if not target_time:
        return None
    try:
        target = times.utc(target_time)
    except ValueError:
        raise RestoreRefused("target_time", f"{target_time!r} is not a time",
                             "write it as ISO 8601 with its offset, e.g. '2026-01-04 01:30:00+00'") from None
    if target > times.now():
        raise RestoreRefused("target_time", f"{target.isoformat()} is in the future", "choose a past time")
    return target


def restore_latest_backup(cluster: Cluster, tool: str, access: S3Access | None, label: str | None = None,
                          target_time: str | None = None, staging_conn=None, record: dict | None = None,
                          copy: str = "restored-copy") -> dict:
    """Restore ``label`` (default: the latest good backup) into staging; returns its record and
    the restore's wall time. A retry after a failed try purges the leftovers first. The
    verification drill calls it with its target as staging (``verification.target``)."""
    if tool not in cluster.tools:
        raise RestoreRefused("tool", f"{tool!r} does not back up cluster {cluster.name} ({cluster.tools})",
                             "choose one of the cluster's tools")
    record = record or restore_backup_record(cluster, tool, access, label, target_time)
    if not staging.staging_is_empty(cluster):
        staging.stop_staging(cluster, staging_conn)
        staging.purge_staging(cluster, staging_conn)
    else:
        staging.guard(cluster, staging_conn)
    started = time.monotonic()
    with restore_lock(cluster):
        staging.restore_into_staging(cluster, tool, access, record["label"], target_time,
                                     timeout=RESTORE_TIMEOUT_SECONDS, copy=copy)
    return {"record": record, "restore_seconds": round(time.monotonic() - started, 2), "tool": tool,
            "target_time": target_time}


def restore_lock(cluster: Cluster, timeout: float = RESTORE_TIMEOUT_SECONDS):
    """Held while a restore writes staging; whoever releases staging takes it first (a restore
    killed with its run may take a moment to go)."""
    return runner.cluster_lock(cluster.lock_directory, cluster.name, timeout=timeout, poll=1.0, kind="restore")


def restore_start_staging(cluster: Cluster) -> dict:
    started = time.monotonic()
    staging.start_staging(cluster, timeout=RESTORE_TIMEOUT_SECONDS)
    staging.wait_recovery_end(cluster, timeout=RESTORE_TIMEOUT_SECONDS)
    return {"state": "started", "startup_seconds": round(time.monotonic() - started, 2)}


def restore_smoke(cluster: Cluster, dbname: str | None = None) -> dict:
    return checks.smoke(cluster, dbname)


def restore_data_checks(cluster: Cluster, record: dict, dbname: str | None = None) -> list[dict]:
    return checks.data_checks(cluster, record, dbname)


def restore_audit_and_archive(cluster: Cluster, client, line: dict) -> dict:
    """Append the audit line, archive both logs to S3, publish the metrics (when available)."""
    path = audit.append_audit(cluster, line)
    uris = audit.archive_logs(cluster, client, line["run_id"])
    try:
        metrics.record_restore(cluster, line)
    except Exception as exc:  # the audit line is the evidence; a metrics outage must not change the outcome
        log.warning("restore metrics not published: %s: %s", type(exc).__name__, exc)
    return {"audit_log": path, "archived": uris, "outcome": line["outcome"]}


def restore_test(cluster: Cluster, tool: str, access: S3Access | None, client, run_id: str, label: str | None = None,
                 target_time: str | None = None, staging_conn=None, dbname: str | None = None) -> dict:
    """The whole drill for cron: the audit line is written (sign-off "pending") whatever happens,
    and a drill that did not pass raises after it."""
    staging.guard(cluster, staging_conn)  # a refusal writes no audit line: nothing happened
    owner = staging.pid_owner()
    holder = staging.claim(cluster, owner, staging.pid_owner_alive)
    if holder:
        raise RestoreRefused("restore_test.staging_data_directory", f"staging of cluster {cluster.name} is in use by "
                             f"{holder} (a restore test in progress; claim file {staging.claim_path(cluster)})",
                             "run again once that restore test has ended")
    done = smoke = results = None
    seconds = None
    errors: list[str] = []
    try:
        # Which backup, before staging is touched: a target outside the window is refused first.
        record = restore_backup_record(cluster, tool, access, label, target_time)
    except RestoreRefused:
        staging.release(cluster, owner)
        raise
    try:
        restore_stop_staging(cluster, staging_conn)
        restore_purge_staging(cluster, staging_conn)
        done = restore_latest_backup(cluster, tool, access, label, target_time, staging_conn, record=record)
        started = restore_start_staging(cluster)
        seconds = done["restore_seconds"] + started["startup_seconds"]
        smoke = restore_smoke(cluster, dbname)
        results = restore_data_checks(cluster, done["record"], dbname)
    except CheckFailed as exc:
        results = exc.checks
        errors.append(str(exc))
    except Exception as exc:
        errors.append(f"{type(exc).__name__}: {exc}")
    finally:
        try:
            restore_stop_staging(cluster, staging_conn)
        except Exception as exc:  # reported, but the audit line still gets written
            errors.append(f"stopping staging: {type(exc).__name__}: {exc}")
        staging.release(cluster, owner)
    line = audit.audit_record(cluster, run_id=run_id, tool=tool, record=done and done["record"],
                              restore_seconds=seconds, smoke_result=smoke, checks=results,
                              signoff={"status": "pending", "by": None, "at": None,
                                       "note": "cron run: QA signs off in the quality register"},
                              errors=errors, target_time=target_time)
    result = restore_audit_and_archive(cluster, client, line)
    if line["outcome"] != "success":
        raise ToolError(f"restore test of cluster {cluster.name} failed: {'; '.join(errors) or 'see audit'}",
                        retryable=False)
    return {**result, "audit": line}
