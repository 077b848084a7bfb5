"""The operations of the runbook, one implementation each, for the DAG tasks and the cron scripts.

Nothing here imports Airflow: a DAG task resolves the cluster and the S3 access from Airflow
connections and calls these; a cron script resolves them from the environment and calls the same.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime
from pathlib import Path

from pg_backups import audit, checks, marker, metrics, pgbackrest, runner, s3_bucket, staging, times, walg
from pg_backups.errors import CheckFailed, RestoreRefused, ToolError, Unreachable
from pg_backups.s3_access import S3Access

log = logging.getLogger(__name__)

BACKUP_TIMEOUT_SECONDS = 6 * 3600


def archive_command(cluster) -> str:
    """One archive_command feeding every configured tool. ``&&``: if either tool fails the
    command fails and PostgreSQL retries the segment, so neither repository silently loses WAL
    (pg_wal grows meanwhile: watch it)."""
    parts = []
    if "pgbackrest" in cluster.tools:
        parts.append(pgbackrest.archive_command(cluster))
    if "walg" in cluster.tools:
        parts.append(walg.archive_command(cluster))
    return " && ".join(parts)


def write_tool_configs(cluster, access: S3Access) -> list[str]:
    """pgbackrest.conf (+ credentials include) and walg.json, owner-only, for the configured tools."""
    written = []
    if "pgbackrest" in cluster.tools:
        written += pgbackrest.write_config(cluster, access)
    if "walg" in cluster.tools:
        written += walg.write_config(cluster, access)
    return written


# --------------------------------------------------------------------------------------------
# S3 bucket


def configure_bucket(cluster, client) -> dict:
    return s3_bucket.reconcile(client, cluster.s3).as_dict()


# --------------------------------------------------------------------------------------------
# pgBackRest


def check_postgres_reachable(cluster, timeout: int = 10) -> None:
    """Fail fast, naming the server, when production PostgreSQL does not accept connections:
    pgBackRest's own message for it (``check``: "unable to find primary cluster") hides the cause."""
    host = cluster.socket_directory or cluster.host
    proc = runner.run([str(Path(cluster.bin_directory) / "pg_isready"), "-h", host, "-p", str(cluster.port),
                       "-U", cluster.user, "-t", str(timeout)], os_user=cluster.os_user, timeout=timeout + 20,
                      check=False)
    if proc.returncode != 0:
        raise Unreachable(f"production PostgreSQL of cluster {cluster.name} ({cluster.host}:{cluster.port}) is not "
                          f"accepting connections (pg_isready: {runner.last_error_line(proc.stdout + proc.stderr)})."
                          " Nothing was backed up", "start it or fix host/port in the cluster configuration")


def pgbackrest_preflight(cluster, access: S3Access) -> dict:
    access.check_reachable(cluster.s3.bucket)
    check_postgres_reachable(cluster)
    written = pgbackrest.write_config(cluster, access)
    stanza = pgbackrest.ensure_stanza(cluster)
    return {"cluster": cluster.name, "stanza": stanza, "config_written": written}


def pgbackrest_backup(cluster, backup_type: str, run_id: str | None) -> dict:
    with runner.cluster_lock(cluster.lock_directory, cluster.name):
        marker.write_marker(cluster, run_id, "pgbackrest")  # the restore test looks for it
        entry = pgbackrest.backup(cluster, backup_type, run_id, timeout=BACKUP_TIMEOUT_SECONDS)
    return {"label": entry["label"], "type": entry["type"]}


def pgbackrest_expire(cluster) -> dict:
    before = len(pgbackrest.info(cluster).get("backup", []))
    pgbackrest.expire(cluster)
    after = len(pgbackrest.info(cluster).get("backup", []))
    return {"expired": before - after, "kept": after}


def pgbackrest_verify(cluster) -> str:
    return pgbackrest.verify(cluster)


def pgbackrest_latest_record(cluster, label: str | None = None) -> dict:
    stanza_info = pgbackrest.info(cluster)
    entry = pgbackrest.newest_good(stanza_info, label)
    if entry is None:
        raise ToolError(f"pgbackrest info lists no good backup{' ' + label if label else ''} "
                        f"for stanza {cluster.stanza}")
    return pgbackrest.backup_record(cluster, entry, stanza_info)


def pgbackrest_daily(cluster, access: S3Access, run_id: str | None, day: datetime | None = None) -> dict:
    """The whole daily chain, for cron: the DAG runs the same steps as separate tasks."""
    pgbackrest_preflight(cluster, access)
    done = pgbackrest_backup(cluster, pgbackrest.backup_type_for(cluster, day or times.now()), run_id)
    pgbackrest_expire(cluster)
    pgbackrest_verify(cluster)
    record = pgbackrest_latest_record(cluster, done["label"])
    metrics.record_backup(cluster, record)  # Prometheus textfile / Pushgateway; never fails the backup
    return record


# --------------------------------------------------------------------------------------------
# WAL-G


def walg_backup(cluster, access: S3Access, run_id: str | None) -> dict:
    access.check_reachable(cluster.s3.bucket)
    walg.write_config(cluster, access)
    with runner.cluster_lock(cluster.lock_directory, cluster.name):
        marker.write_marker(cluster, run_id, "walg")  # the restore test looks for it
        entry = walg.backup_push(cluster, access, run_id, timeout=BACKUP_TIMEOUT_SECONDS)
    return {"label": entry["backup_name"]}


def walg_delete_old(cluster, access: S3Access) -> dict:
    return walg.delete_old(cluster, access)


def walg_latest_record(cluster, access: S3Access, label: str | None = None) -> dict:
    backups = walg.backup_list(cluster, access)
    chosen = walg.newest(backups, label)
    if chosen is None:
        raise ToolError(f"wal-g backup-list shows no backup{' ' + label if label else ''} "
                        f"under {cluster.walg_s3_prefix}")
    return walg.backup_record(cluster, chosen, backups)


def walg_daily(cluster, access: S3Access, run_id: str | None) -> dict:
    done = walg_backup(cluster, access, run_id)
    walg_delete_old(cluster, access)
    record = walg_latest_record(cluster, access, done["label"])
    metrics.record_backup(cluster, record)  # Prometheus textfile / Pushgateway; never fails the backup
    return record


# --------------------------------------------------------------------------------------------
# Quarterly restore test (runbook 3): the DAG runs these as separate tasks, cron as one chain.

RESTORE_TIMEOUT_SECONDS = 6 * 3600


def restore_guard(cluster, staging_conn=None) -> dict:
    return staging.guard(cluster, staging_conn)


def restore_stop_staging(cluster, staging_conn=None) -> str:
    return staging.stop_staging(cluster, staging_conn)


def restore_purge_staging(cluster, staging_conn=None) -> dict:
    return staging.purge_staging(cluster, staging_conn)


def restore_backup_record(cluster, tool: str, access: S3Access | None, label: str | None = None) -> dict:
    """The backup to restore, read from the repository (``pgbackrest info`` / ``backup-list``)."""
    if tool == "walg":
        return walg_latest_record(cluster, access, label)
    return pgbackrest_latest_record(cluster, label)


def restore_latest_backup(cluster, tool: str, access: S3Access | None, label: str | None = None,
                          target_time: str | None = None, staging_conn=None) -> dict:
    """Restore ``label`` (default: the latest good backup) into staging; returns its record and
    the restore's wall time. A retry after a failed try purges the leftovers first."""
    if tool not in cluster.tools:
        raise RestoreRefused("tool", f"{tool!r} does not back up cluster {cluster.name} ({cluster.tools})",
                                     "choose one of the cluster's tools")
    if access is not None:  # first: on a staging host of its own, no earlier task has written it
        (walg if tool == "walg" else pgbackrest).write_config(cluster, access)
    record = restore_backup_record(cluster, tool, access, label)
    if not staging.staging_is_empty(cluster):
        staging.stop_staging(cluster, staging_conn)
        staging.purge_staging(cluster, staging_conn)
    else:
        staging.guard(cluster, staging_conn)
    started = time.monotonic()
    staging.restore_into_staging(cluster, tool, access, record["label"], target_time,
                                 timeout=RESTORE_TIMEOUT_SECONDS)
    return {"record": record, "restore_seconds": round(time.monotonic() - started, 2), "tool": tool,
            "target_time": target_time}


def restore_start_staging(cluster) -> dict:
    started = time.monotonic()
    staging.start_staging(cluster, timeout=RESTORE_TIMEOUT_SECONDS)
    staging.wait_recovery_end(cluster, timeout=RESTORE_TIMEOUT_SECONDS)
    return {"state": "started", "startup_seconds": round(time.monotonic() - started, 2)}


def restore_smoke(cluster, dbname: str | None = None) -> dict:
    return checks.smoke(cluster, dbname)


def restore_data_checks(cluster, record: dict, dbname: str | None = None) -> list[dict]:
    return checks.data_checks(cluster, record, dbname)


def restore_audit_and_archive(cluster, client, line: dict) -> dict:
    """Append the audit line, archive both logs to S3, publish the metrics (when available)."""
    path = audit.append_audit(cluster, line)
    uris = audit.archive_logs(cluster, client, line["run_id"])
    try:
        metrics.record_restore(cluster, line)
    except Exception as exc:  # the audit line is the evidence; a metrics outage must not change the outcome
        log.warning("restore metrics not published: %s: %s", type(exc).__name__, exc)
    return {"audit_log": path, "archived": uris, "outcome": line["outcome"]}


def restore_test(cluster, tool: str, access: S3Access | None, client, run_id: str, label: str | None = None,
                 target_time: str | None = None, staging_conn=None, dbname: str | None = None) -> dict:
    """The whole drill for cron: the audit line is written (sign-off "pending") whatever happens,
    and a drill that did not pass raises after it."""
    staging.guard(cluster, staging_conn)  # a refusal writes no audit line: nothing happened
    done = smoke = results = None
    seconds = None
    errors: list[str] = []
    try:
        restore_stop_staging(cluster, staging_conn)
        restore_purge_staging(cluster, staging_conn)
        done = restore_latest_backup(cluster, tool, access, label, target_time, staging_conn)
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
