"""The operations of the runbook, one implementation each, for the DAG tasks and the cron scripts.

Nothing here imports Airflow: a DAG task resolves the cluster and the S3 access from Airflow
connections and calls these; a cron script resolves them from the environment and calls the same.
"""

from __future__ import annotations

import logging
from datetime import datetime, timezone

from pg_backups import pgbackrest, runner, s3_bucket, walg
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


def pgbackrest_preflight(cluster, access: S3Access) -> dict:
    written = pgbackrest.write_config(cluster, access)
    stanza = pgbackrest.ensure_stanza(cluster)
    return {"cluster": cluster.name, "stanza": stanza, "config_written": written}


def pgbackrest_backup(cluster, backup_type: str, run_id: str | None) -> dict:
    with runner.cluster_lock(cluster.lock_directory, cluster.name):
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
    backups = [b for b in stanza_info.get("backup", []) if not b.get("error")]
    if label:
        backups = [b for b in backups if b["label"] == label]
    if not backups:
        raise runner.ToolError(f"pgbackrest info lists no good backup{' ' + label if label else ''} "
                               f"for stanza {cluster.stanza}")
    return pgbackrest.backup_record(cluster, backups[-1], stanza_info)


def pgbackrest_daily(cluster, access: S3Access, run_id: str | None, day: datetime | None = None) -> dict:
    """The whole daily chain, for cron: the DAG runs the same steps as separate tasks."""
    pgbackrest_preflight(cluster, access)
    done = pgbackrest_backup(cluster, pgbackrest.backup_type_for(cluster, day or datetime.now(timezone.utc)), run_id)
    pgbackrest_expire(cluster)
    pgbackrest_verify(cluster)
    return pgbackrest_latest_record(cluster, done["label"])


# --------------------------------------------------------------------------------------------
# WAL-G


def walg_backup(cluster, access: S3Access, run_id: str | None) -> dict:
    walg.write_config(cluster, access)
    with runner.cluster_lock(cluster.lock_directory, cluster.name):
        entry = walg.backup_push(cluster, access, run_id, timeout=BACKUP_TIMEOUT_SECONDS)
    return {"label": entry["backup_name"]}


def walg_delete_old(cluster, access: S3Access) -> dict:
    return walg.delete_old(cluster, access)


def walg_latest_record(cluster, access: S3Access, label: str | None = None) -> dict:
    backups = walg.backup_list(cluster, access)
    chosen = [b for b in backups if not label or b["backup_name"] == label]
    if not chosen:
        raise runner.ToolError(f"wal-g backup-list shows no backup{' ' + label if label else ''} "
                               f"under {cluster.walg_s3_prefix}")
    return walg.backup_record(cluster, chosen[-1], backups)


def walg_daily(cluster, access: S3Access, run_id: str | None) -> dict:
    done = walg_backup(cluster, access, run_id)
    walg_delete_old(cluster, access)
    return walg_latest_record(cluster, access, done["label"])
