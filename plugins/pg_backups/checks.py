"""What proves a restored cluster came back (runbook 3): the smoke query and the data checks.

Nothing here imports Airflow.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from pg_backups import marker
from pg_backups.errors import CheckFailed
from pg_backups.staging import DEFAULT_DATABASE, staging_sql
from pg_backups.times import now

if TYPE_CHECKING:
    from pg_backups.config import Cluster

SMOKE_SQL = "SELECT count(*) FROM pg_catalog.pg_tables;"  # runbook 3, step 3


def smoke(cluster: Cluster, dbname: str | None = None) -> dict:
    """The runbook's smoke query, its result appended to the smoke log."""
    count = int(staging_sql(cluster, SMOKE_SQL, dbname))
    path = Path(cluster.restore_test.smoke_log)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as out:
        out.write(f"{now().isoformat(timespec='seconds')} cluster={cluster.name} db={dbname or DEFAULT_DATABASE} port="
                  f"{cluster.restore_test.staging_port} query={SMOKE_SQL!r} result={count}\n")
    return {"query": SMOKE_SQL, "pg_tables": count, "smoke_log": str(path)}


AMCHECK_SQL = (
    "CREATE EXTENSION IF NOT EXISTS amcheck; "
    "SELECT count(*) FROM (SELECT bt_index_check(c.oid, true) FROM pg_index i "
    "JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_am a ON a.oid = c.relam "
    "WHERE a.amname = 'btree' AND i.indisvalid AND i.indisready AND c.relpersistence <> 't') s;")


def data_checks(cluster: Cluster, record: dict, dbname: str | None = None) -> list[dict]:
    """Checks proving the data came back; raises :class:`CheckFailed` (with every result) if one fails."""
    checks: list[dict] = []

    def check(name: str, fn):
        try:
            ok, detail = fn()
        except Exception as exc:  # one failing check must not hide the others
            ok, detail = False, f"{type(exc).__name__}: {exc}"
        checks.append({"check": name, "result": "ok" if ok else "failed", "detail": detail})

    check("not_in_recovery", lambda: (lambda v: (v == "f", f"pg_is_in_recovery() = {v}"))(
        staging_sql(cluster, "SELECT pg_is_in_recovery()")))
    run_id = record.get("airflow_run_id")

    def marker_row():
        if not run_id:
            return False, f"backup {record.get('label')} carries no run id, so no marker can prove it"
        found = staging_sql(cluster, marker.count_sql(run_id), marker.MARKER_DATABASE)
        return int(found) > 0, f"marker of run {run_id} found {found} time(s)"

    check("backup_marker", marker_row)
    for table in cluster.restore_test.check_tables:
        def rows(table=table):
            ident = ".".join('"' + part.replace('"', '""') + '"' for part in table.split("."))
            n = int(staging_sql(cluster, f"SELECT count(*) FROM {ident}", dbname))
            return n > 0, f"{n} rows"
        check(f"rows:{table}", rows)
    for db in dict.fromkeys([dbname or DEFAULT_DATABASE, DEFAULT_DATABASE]):
        check(f"amcheck:{db}", lambda db=db: (True, f"{staging_sql(cluster, AMCHECK_SQL, db)} btree indexes "
                                                    "checked (heapallindexed)"))
    failed = [c["check"] for c in checks if c["result"] != "ok"]
    if failed:
        raise CheckFailed(f"restored cluster failed checks: {', '.join(failed)}", checks)
    return checks
