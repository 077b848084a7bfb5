"""WAL-G: its settings, its command lines, and what its output means.

WAL-G takes its settings from the environment or from a JSON file (``--config``). The same
:func:`settings` dict feeds both: the environment of the DAG's tasks and cron scripts, and the
owner-only walg.json that the database server's ``archive_command`` reads.
"""

from __future__ import annotations

import json
import logging
import shlex
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from pg_backups import files, runner, times
from pg_backups.errors import ToolError
from pg_backups.s3_access import S3Access

if TYPE_CHECKING:
    from pg_backups.config import Cluster

log = logging.getLogger(__name__)


def settings(cluster: Cluster, access: S3Access, *, secrets: bool = True) -> dict[str, str]:
    w = cluster.walg
    env = {
        "WALG_S3_PREFIX": cluster.walg_s3_prefix,
        "AWS_REGION": access.region,
        "WALG_COMPRESSION_METHOD": w.compression,
        "PGDATA": cluster.data_directory,
        "PGHOST": cluster.socket_directory or cluster.host,
        "PGPORT": str(cluster.port),
        "PGUSER": cluster.user,
    }
    if access.endpoint_url:
        env["AWS_ENDPOINT"] = access.endpoint_url
        env["AWS_S3_FORCE_PATH_STYLE"] = "true"
    if access.ca_file:
        env["WALG_S3_CA_CERT_FILE"] = access.ca_file
    if w.pgp_key_path:
        env["WALG_PGP_KEY_PATH"] = w.pgp_key_path
    if secrets and access.access_key:
        env["AWS_ACCESS_KEY_ID"] = access.access_key
        env["AWS_SECRET_ACCESS_KEY"] = access.secret_key or ""
        if access.session_token:
            env["AWS_SESSION_TOKEN"] = access.session_token
    return env


def write_config(cluster: Cluster, access: S3Access) -> list[str]:
    """walg.json for archive_command on the database host (it holds the S3 keys: mode 0600)."""
    files.write_private(cluster.walg.config_path, json.dumps(settings(cluster, access), indent=2, sort_keys=True) + "\n",
                  cluster.os_user)
    return [cluster.walg.config_path]


def command(cluster: Cluster, name: str, *args: str) -> list[str]:
    return [cluster.walg.binary, "--config", cluster.walg.config_path, name, *args]


def archive_command(cluster: Cluster) -> str:
    return shlex.join(command(cluster, "wal-push")) + " %p"


def restore_command(cluster: Cluster) -> str:
    return shlex.join(command(cluster, "wal-fetch")) + " %f %p"


def run(cluster: Cluster, access: S3Access, name: str, *args: str, extra_env: dict | None = None,
        timeout: float | None = None, check: bool = True, watch=None):
    env = {**settings(cluster, access), **runner.pg_password_env(cluster), **(extra_env or {})}
    return runner.run(command(cluster, name, *args), env=env, os_user=cluster.os_user, timeout=timeout, check=check,
                      watch=watch)


def backup_push(cluster: Cluster, access: S3Access, run_id: str | None = None, timeout: float | None = None,
                run_type: str | None = None, watch=None) -> dict:
    """One backup, tagged with the Airflow run that made it (and its kind: scheduled, manual,
    backfill); never reported without a listed result."""
    tag = {key: value for key, value in (("airflow_run_id", run_id), ("airflow_run_type", run_type)) if value}
    extra = {"WALG_SENTINEL_USER_DATA": json.dumps(tag)} if tag else {}
    run(cluster, access, "backup-push", cluster.data_directory, extra_env=extra, timeout=timeout, watch=watch)
    backups = backup_list(cluster, access)
    if not backups:
        raise ToolError("wal-g backup-push exited 0 but backup-list shows no backup")
    latest = newest(backups)
    if run_id and run_tag(latest) != run_id:
        raise ToolError(f"wal-g backup-push exited 0 but the newest backup {latest.get('backup_name')} "
                               f"is not tagged with run {run_id}")
    return latest


# A listing is a read that the task retries as a whole. With WAL-G's S3 default (15 retries per
# request, backoff growing to 300 s) an unreachable endpoint kept `backup-list` waiting for more
# than 10 minutes, the hourly freshness check with it; a few quick retries ride out a blip, and the
# timeout bounds whatever else could hang (a listing of a 30-day store takes seconds).
LIST_S3_MAX_RETRIES = 3
LIST_TIMEOUT_SECONDS = 300


def repository_path(cluster: Cluster) -> str:
    """Where the backups live in the bucket (pg_backups.tools)."""
    return cluster.walg.prefix.strip("/") + "/basebackups_005"


def retention_days(cluster: Cluster) -> int:
    return cluster.walg.retention_days


def backup_list(cluster: Cluster, access: S3Access) -> list[dict]:
    proc = run(cluster, access, "backup-list", "--json", "--detail", check=False, timeout=LIST_TIMEOUT_SECONDS,
               extra_env={"WALG_S3_MAX_RETRIES": str(LIST_S3_MAX_RETRIES)})
    if proc.returncode != 0:
        output = proc.stdout + proc.stderr
        # WAL-G says "No backups found" on stderr (exit 0 or 1 depending on version) for an empty store.
        if "no backups found" in output.lower():
            return []
        message, fix = runner.failure_summary(proc.args, proc.returncode, output)
        raise ToolError(message, proc.returncode, output, fix=fix)
    return parse_backup_list(proc.stdout)


def parse_backup_list(text: str) -> list[dict]:
    """``backup-list --json --detail`` sorted oldest first; an empty output is an empty store."""
    text = text.strip()
    if not text or text == "null":
        return []
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ToolError(f"wal-g backup-list did not return JSON ({exc}): {text[:200]!r}") from None
    if not isinstance(data, list) or not all(isinstance(b, dict) and "backup_name" in b for b in data):
        raise ToolError("wal-g backup-list returned JSON without a list of backups")
    return sorted(data, key=started)


def started(backup: dict) -> datetime:
    return times.utc(backup.get("start_time") or backup.get("time"))


def finished(backup: dict) -> datetime:
    return times.utc(backup.get("finish_time") or backup.get("time") or backup.get("start_time"))


def oldest_finished(backups: list[dict]) -> datetime | None:
    """Where the recovery window begins: the finish time of the oldest backup kept."""
    return min((finished(b) for b in backups), default=None)


def newest(backups: list[dict], label: str | None = None, finished_before: datetime | None = None) -> dict | None:
    """The one rule for "the newest good backup" (``backup-list`` shows only completed ones): the
    given label if any, finished before ``finished_before`` if given (a PITR target), and the
    latest finish time among those."""
    chosen = [b for b in backups if (label is None or b["backup_name"] == label)
              and (finished_before is None or finished(b) <= finished_before)]
    return max(chosen, key=finished) if chosen else None


def run_tag(backup: dict, key: str = "airflow_run_id") -> str | None:
    """What the backup's run tagged it with (``WALG_SENTINEL_USER_DATA``): its run id, or ``key``."""
    user_data = backup.get("user_data")
    if isinstance(user_data, str):
        try:
            user_data = json.loads(user_data)
        except json.JSONDecodeError:
            return None
    return user_data.get(key) if isinstance(user_data, dict) else None


def is_full(backup: dict) -> bool:
    return "_D_" not in backup["backup_name"]


def retention_target(backups: list[dict], now: datetime, days: int) -> str | None:
    """The oldest backup to keep: everything before it goes. None when nothing is to be deleted.

    Kept: every backup started within ``days``, and always the newest full backup (so a cluster
    whose backups stopped is never left without one). ``delete before FIND_FULL <target>`` then
    also keeps the full base of any kept delta, and the WAL that kept backups need.
    """
    if not backups:
        return None
    cutoff = now - timedelta(days=days)
    kept = [b for b in backups if started(b) >= cutoff]
    fulls = [b for b in backups if is_full(b)]
    if fulls:
        kept.append(fulls[-1])
    oldest_kept = min(kept, key=started) if kept else backups[-1]
    if oldest_kept is backups[0] or started(oldest_kept) <= started(backups[0]):
        return None
    return oldest_kept["backup_name"]


def delete_old(cluster: Cluster, access: S3Access, now: datetime | None = None) -> dict:
    """Retention. The runbook's `wal-g delete before --confirm` names no target and is not valid."""
    now = now or times.now()
    backups = backup_list(cluster, access)
    target = retention_target(backups, now, cluster.walg.retention_days)
    if target is None:
        log.info("retention: nothing older than %s days to delete", cluster.walg.retention_days)
        return {"deleted_before": None, "kept": len(backups)}
    run(cluster, access, "delete", "before", "FIND_FULL", target, "--confirm")
    left = backup_list(cluster, access)
    return {"deleted_before": target, "kept": len(left), "deleted": len(backups) - len(left)}


WAL_SEGMENT_BYTES = 16 * 1024 * 1024  # PostgreSQL's default (initdb --wal-segsize); WAL-G's too


def lsn_value(lsn) -> int | None:
    """An LSN as a number: WAL-G gives numbers (``finish_lsn``), PostgreSQL text ``X/Y``."""
    if lsn is None or lsn == "":
        return None
    if isinstance(lsn, int):
        return lsn
    high, _, low = str(lsn).partition("/")
    return (int(high, 16) << 32) + int(low, 16) if low else int(high)


def wal_file_name(timeline: int, lsn, segment_bytes: int = WAL_SEGMENT_BYTES) -> str | None:
    """The WAL segment that holds the last byte before ``lsn``, as ``pg_walfile_name(lsn)`` names it:
    the segment a backup that ended at ``lsn`` needs last."""
    value = lsn_value(lsn)
    if value is None:
        return None
    segment = max(value - 1, 0) // segment_bytes
    per_id = 0x100000000 // segment_bytes
    return f"{timeline:08X}{segment // per_id:08X}{segment % per_id:08X}"


def backup_record(cluster: Cluster, backup: dict, backups: list[dict]) -> dict:
    """The record pgBackRest's backups get too. Sizes mean the same for both tools: the database
    (uncompressed, of a full backup), the data the backup copied (uncompressed: pgBackRest's
    ``info.delta``) and what it added to the repository (compressed: ``info.repository.delta``)."""
    start, finish = started(backup), finished(backup)
    wal_start = backup.get("wal_file_name")
    timeline = int(wal_start[:8], 16) if wal_start else 1
    duration = (finish - start).total_seconds() if start and finish else None
    return {
        "cluster": cluster.name,
        "tool": "walg",
        "label": backup["backup_name"],
        "type": "full" if is_full(backup) else "delta",
        "start_time": times.iso(start),
        "stop_time": times.iso(finish),
        "duration_seconds": duration,
        "database_size_bytes": backup.get("uncompressed_size") if is_full(backup) else None,
        "backup_size_bytes": backup.get("uncompressed_size"),
        "repo_size_bytes": backup.get("compressed_size"),
        "wal_start": wal_start,
        "wal_stop": wal_file_name(timeline, backup.get("finish_lsn")),
        "airflow_run_id": run_tag(backup),
        "airflow_run_type": run_tag(backup, "airflow_run_type"),
        "backup_count": len(backups),
    }


def backup_fetch(cluster: Cluster, access: S3Access, target_directory: str, name: str = "LATEST",
                 timeout: float | None = None) -> None:
    run(cluster, access, "backup-fetch", target_directory, name, timeout=timeout)
