"""Is WAL reaching the repositories? Asked of production PostgreSQL before a backup, and while the
backup tool waits for its WAL to be archived.

A backup ends when the WAL it needs is archived. WAL-G's ``backup-push`` calls ``pg_backup_stop()``,
which waits (wait event ``BackupWaitWalArchive``) for as long as ``archive_command`` fails and
prints nothing: with archiving broken, a backup hung for hours holding the cluster's lock and pool
slot. pgBackRest calls ``pg_backup_stop(false)`` and checks its repository itself, failing after
``archive-timeout`` ([082]): it cannot hang that way, but its message does not say why.

:func:`check_before_backup` refuses a backup while the last archive attempt failed (after waiting
``archive_wait_seconds`` for it to recover); :func:`watchdog` is the backup's ``runner.run`` watch:
it fails the backup once a session has waited on archiving for ``archive_wait_seconds``, with
``pg_stat_archiver``'s account of why. Nothing here imports Airflow.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from pg_backups import freshness, runner
from pg_backups.errors import ArchivingBroken, ToolError

if TYPE_CHECKING:
    from pg_backups.config import Cluster

log = logging.getLogger(__name__)

ARCHIVE_WAIT_EVENT = "BackupWaitWalArchive"
WAITING_SQL = (f"SELECT pid, extract(epoch FROM now() - state_change)::int FROM pg_stat_activity "
               f"WHERE wait_event = '{ARCHIVE_WAIT_EVENT}'")


def archiver_stats(cluster: Cluster, quiet: bool = False) -> dict:
    """``pg_stat_archiver`` and the count of waiting ``.ready`` segments (freshness.ARCHIVER_SQL)."""
    values = runner.production_sql(cluster, " ".join(freshness.ARCHIVER_SQL.split()), quiet=quiet).split("|")
    return {k: (v or None) for k, v in zip(freshness.ARCHIVER_COLUMNS, values, strict=True)}


def problem(stats: dict) -> str | None:
    """Why WAL is not being archived (None: the last attempt succeeded, or none was needed)."""
    if str(stats.get("archive_mode") or "on").lower() == "off":
        return "archive_mode is off: no WAL is archived, so no backup can be completed or recovered"
    if freshness.archiver_failing(stats):
        return (f"archive_command is failing: its last attempt (segment {stats.get('last_failed_wal')}, "
                f"{stats.get('last_failed_time')}) failed and none succeeded since "
                f"{stats.get('last_archived_time') or 'the server started'} ({stats.get('failed_count')} failed "
                f"attempts, {stats.get('ready_count')} segments waiting to be archived)")
    return None


def fix(cluster: Cluster) -> str:
    both = ("; with both tools, both must succeed: a pgBackRest stanza that does not exist yet fails it (run "
            f"{cluster.dag_id('pgbackrest')} first)") if {"pgbackrest", "walg"} <= set(cluster.tools) else ""
    return (f"make archive_command of cluster {cluster.name} work (PostgreSQL's log says why: 'archive command "
            f"failed'; check the repository is reachable{both}), then run the backup again")


def check_before_backup(cluster: Cluster, tool: str, wait_seconds: float | None = None, poll: float = 5.0) -> dict:
    """Refuse a backup while WAL archiving fails: it could never complete. A failing archiver gets
    ``archive_wait_seconds`` to succeed again (PostgreSQL retries a failed segment every minute)."""
    wait_seconds = cluster.archive_wait_seconds if wait_seconds is None else wait_seconds
    deadline = time.monotonic() + wait_seconds
    announced = False
    while True:
        stats = archiver_stats(cluster, quiet=announced)
        why = problem(stats)
        if why is None:
            return stats
        if time.monotonic() >= deadline:
            raise ArchivingBroken(f"WAL archiving of cluster {cluster.name} is broken, no {tool} backup taken: {why}",
                                  fix=fix(cluster))
        if not announced:
            log.warning("WAL archiving of cluster %s is failing (%s); waiting up to %.0f s for it to recover "
                        "before the %s backup", cluster.name, why, wait_seconds, tool)
            announced = True
        time.sleep(poll)


def watchdog(cluster: Cluster, tool: str, limit: float | None = None):
    """A ``runner.run`` watch for a backup: raises :class:`ArchivingBroken` once a session has waited
    in ``pg_backup_stop()`` for archiving longer than ``limit`` (default ``archive_wait_seconds``),
    after ending that session (its client is about to be stopped; nothing else waits on it)."""
    limit = cluster.archive_wait_seconds if limit is None else limit

    def watch() -> None:
        try:
            rows = [line.split("|") for line in runner.production_sql(cluster, WAITING_SQL, quiet=True).splitlines() if line]
        except ToolError as exc:  # the watchdog never fails a backup for its own trouble
            log.debug("archive watchdog: %s", exc)
            return
        if not rows:
            return
        pid, waited = rows[0][0], int(rows[0][1] or 0)
        if waited < limit:
            log.info("%s backup waits for WAL archiving (backend %s, %s s, limit %.0f s)", tool, pid, waited, limit)
            return
        stats = archiver_stats(cluster, quiet=True)
        runner.production_sql(cluster, f"SELECT pg_terminate_backend({int(pid)})", quiet=True)
        raise ArchivingBroken(f"WAL archiving of cluster {cluster.name} is broken: the {tool} backup waited {waited} s "
                              f"in pg_backup_stop() ({ARCHIVE_WAIT_EVENT}) for its WAL to be archived; "
                              f"{problem(stats) or 'pg_stat_archiver shows no failure yet'}", fix=fix(cluster))

    return watch
