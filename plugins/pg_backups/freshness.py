"""Is the newest good backup recent enough, and is WAL archiving working? (runbook 4)

Pure judgements over what the tools and PostgreSQL report: ``pgbackrest info --output=json``,
``wal-g backup-list --json --detail`` and a ``pg_stat_archiver`` row. The hourly
freshness DAG of each cluster runs them (:mod:`pg_backups.airflow.freshness_tasks`); a backup DAG
that is paused, a dead scheduler or a cron line gone missing all end up here as a backup too old.
Nothing here imports Airflow.
"""

from __future__ import annotations

from datetime import datetime

from pg_backups import pgbackrest, walg
from pg_backups.times import utc

# WAL archiving lags when this many segments (16 MB each) wait in pg_wal/archive_status...
WAL_READY_LAG_SEGMENTS = 10
# ...or when any segment waits and nothing was archived for this long.
WAL_STALL_SECONDS = 3600


# --------------------------------------------------------------------------------------------
# Backups


def newest_pgbackrest(stanza_info: dict) -> dict | None:
    """The newest good backup of the stanza's ``info`` entry (None: no good backup)."""
    newest = pgbackrest.newest_good(stanza_info)
    if newest is None:
        return None
    return {"tool": "pgbackrest", "label": newest["label"], "type": newest.get("type"),
            "finished_at": utc(newest["timestamp"]["stop"]).isoformat()}


def newest_walg(backups: list[dict]) -> dict | None:
    """The newest backup of ``backup-list --json --detail`` (WAL-G lists only completed ones)."""
    newest = walg.newest(backups)
    if newest is None:
        return None
    return {"tool": "walg", "label": newest["backup_name"], "type": "full" if walg.is_full(newest) else "delta",
            "finished_at": walg.finished(newest).isoformat()}


def judge_backup(tool: str, newest: dict | None, now: datetime, max_age_hours: float) -> dict:
    """One tool's verdict: its newest good backup, its age, and whether that is too old."""
    if newest is None:
        return {"tool": tool, "label": None, "finished_at": None, "age_hours": None, "stale": True,
                "problem": f"{tool}: no good backup in the repository"}
    age_hours = (now - utc(newest["finished_at"])).total_seconds() / 3600
    stale = age_hours > max_age_hours
    verdict = {**newest, "age_hours": round(age_hours, 2), "stale": stale, "problem": None}
    if stale:
        verdict["problem"] = (f"{tool}: newest good backup {newest['label']} finished {age_hours:.1f} h ago "
                              f"(limit {max_age_hours} h)")
    return verdict


def stale_message(cluster_name: str, verdicts: list[dict]) -> str | None:
    problems = [v["problem"] for v in verdicts if v["stale"]]
    if not problems:
        return None
    return f"cluster {cluster_name}: " + "; ".join(problems)


# --------------------------------------------------------------------------------------------
# WAL archiving (pg_stat_archiver)

ARCHIVER_SQL = """
SELECT archived_count, last_archived_wal, last_archived_time, failed_count, last_failed_wal,
       last_failed_time, stats_reset,
       (SELECT count(*) FROM pg_ls_archive_statusdir() WHERE name LIKE '%.ready') AS ready_count,
       (SELECT min(modification) FROM pg_ls_archive_statusdir() WHERE name LIKE '%.ready') AS oldest_ready_time,
       current_setting('archive_mode') AS archive_mode
FROM pg_stat_archiver
"""
ARCHIVER_COLUMNS = ("archived_count", "last_archived_wal", "last_archived_time", "failed_count", "last_failed_wal",
                    "last_failed_time", "stats_reset", "ready_count", "oldest_ready_time", "archive_mode")


def archiver_failing(stats: dict) -> bool:
    """The last attempt failed: a failure newer than the last success (or failures and no success)."""
    failed, archived = utc(stats.get("last_failed_time")), utc(stats.get("last_archived_time"))
    return failed is not None and (archived is None or failed > archived)


def archiver_problems(stats: dict, previous: dict | None, now: datetime, max_wait_minutes: float = 15) -> list[str]:
    """What is wrong with WAL archiving; [] when it works. ``previous``: the last hour's row.

    Asynchronous archiving (pgBackRest's archive-async) holds failures back from pg_stat_archiver:
    during an outage segments only wait. So the age of the oldest waiting segment is judged too:
    older than ``max_wait_minutes``, WAL is not reaching the repository.
    """
    problems = []
    oldest = utc(stats.get("oldest_ready_time"))
    if oldest is not None and (now - oldest).total_seconds() > max_wait_minutes * 60:
        problems.append(f"WAL is not reaching the repository: the oldest segment waiting to be archived has waited "
                        f"{(now - oldest).total_seconds() / 60:.0f} min (limit {max_wait_minutes} min)")
    if str(stats.get("archive_mode", "on")).lower() == "off":
        return ["archive_mode is off: no WAL is archived, point-in-time recovery is impossible"]
    if archiver_failing(stats):
        problems.append(f"archive_command is failing: last failure {stats.get('last_failed_time')} "
                        f"({stats.get('last_failed_wal')}) is after the last success {stats.get('last_archived_time')}")
    if previous and str(previous.get("stats_reset")) == str(stats.get("stats_reset")):
        new_failures = int(stats.get("failed_count") or 0) - int(previous.get("failed_count") or 0)
        if new_failures > 0:
            problems.append(f"{new_failures} failed archive attempts since the previous check")
    ready = int(stats.get("ready_count") or 0)
    archived = utc(stats.get("last_archived_time"))
    idle = (now - archived).total_seconds() if archived else None
    if ready >= WAL_READY_LAG_SEGMENTS:
        problems.append(f"{ready} WAL segments wait to be archived (lag; pg_wal grows)")
    elif ready > 0 and (idle is None or idle > WAL_STALL_SECONDS):
        problems.append(f"{ready} WAL segments wait and nothing was archived for "
                        f"{'ever' if idle is None else f'{idle / 60:.0f} min'}")
    return problems


def jsonable(stats: dict) -> dict:
    return {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in stats.items()}
