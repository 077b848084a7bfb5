"""The marker row: written into production by each backup's run just before the backup, looked for
in staging after a restore. Finding it proves the restored data is that backup's, not an older one.

It lives in database ``postgres`` (always there, in every cluster), never in an application schema.
Nothing here imports Airflow.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from pg_backups import runner
from pg_backups.errors import ToolError

if TYPE_CHECKING:
    from pg_backups.config import Cluster

log = logging.getLogger(__name__)

MARKER_TABLE = "pg_backups_marker"
MARKER_DATABASE = runner.PRODUCTION_DATABASE


def quote(value: str) -> str:
    """A SQL string literal."""
    return "'" + value.replace("'", "''") + "'"


def marker_sql(run_id: str, tool: str) -> str:
    return (f"CREATE TABLE IF NOT EXISTS {MARKER_TABLE} (run_id text NOT NULL, tool text NOT NULL, "
            f"created_at timestamptz NOT NULL DEFAULT now()); "
            f"INSERT INTO {MARKER_TABLE} (run_id, tool) VALUES ({quote(run_id)}, {quote(tool)});")


def write_marker(cluster: Cluster, run_id: str | None, tool: str) -> bool:
    """Insert the backup's marker row into production just before the backup. Never fails a backup:
    a missing marker is reported by the restore test instead."""
    if not run_id:
        return False
    try:
        runner.production_sql(cluster, marker_sql(run_id, tool))
        return True
    except ToolError as exc:
        log.warning("could not write the restore-test marker row (the restore test will report it): %s", exc)
        return False


def count_sql(run_id: str) -> str:
    return f"SELECT count(*) FROM {MARKER_TABLE} WHERE run_id = {quote(run_id)}"
