"""Names declared once: each DAG id and the backup asset name are formatted in
``pg_backups.config`` only (``Cluster.dag_id``, ``Cluster.asset_name``), so that renaming a DAG is
one edit. No servers."""

from __future__ import annotations

import re
from datetime import datetime, timezone
from pathlib import Path

import pytest

from pg_backups import freshness, inventory
from pg_backups.config import BACKUP_ASSET, DAG_KINDS, TOOLS, dag_kind

REPO = Path(__file__).resolve().parents[2]
# The code: what a rename must not have to touch twice. tests/ is left out on purpose: its literal
# ids ("pgbackrest_backup_asso") are the contract Ops rely on (the runbook, alerts, bookmarks),
# asserted from outside; docs/ describes the names.
CODE = ("dags", "plugins", "sandbox", "include", "bin", "benchmarks", "deploy", "monitoring")
SUFFIXES = {".py", ".sh", ".yaml", ".yml", ".json", ""}
CONFIG = REPO / "plugins" / "pg_backups" / "config" / "declarations.py"  # where DAG_KINDS and BACKUP_ASSET are


def code_files():
    for top in CODE:
        for path in (REPO / top).rglob("*"):
            if path.is_file() and path.suffix in SUFFIXES and "__pycache__" not in path.parts:
                yield path


def occurrences(pattern: re.Pattern) -> list[str]:
    hits = []
    for path in code_files():
        try:
            text = path.read_text()
        except UnicodeDecodeError:
            continue
        for number, line in enumerate(text.splitlines(), 1):
            if pattern.search(line):
                hits.append(f"{path.relative_to(REPO)}:{number}")
    return hits


@pytest.mark.parametrize("kind", list(DAG_KINDS))
def test_each_dag_id_pattern_is_written_in_one_place(kind):
    # The DAG id's fixed part followed by what builds or names an id: a placeholder ({cluster},
    # {c}, <cluster>), the end of a prefix string ("restore_test_"), or a sandbox cluster's name.
    prefix = DAG_KINDS[kind].partition("{cluster}")[0]
    pattern = re.compile(rf"\b{re.escape(prefix)}(\{{|<|[\"']|asso\b|billing\b)")
    assert occurrences(pattern) == [f"{CONFIG.relative_to(REPO)}:{_line_of(DAG_KINDS[kind])}"]


def test_the_backup_asset_name_is_written_in_one_place():
    hits = occurrences(re.compile(r"\}_backup_|<tool>_backup"))
    assert hits == [f"{CONFIG.relative_to(REPO)}:{_line_of(BACKUP_ASSET)}"]


def _line_of(text: str) -> int:
    return next(n for n, line in enumerate(CONFIG.read_text().splitlines(), 1) if f'"{text}"' in line)


def test_the_cluster_names_its_dags_and_assets(make_cluster):
    asso = make_cluster()
    assert [asso.dag_id(k) for k in DAG_KINDS] == ["s3_bucket_config_asso", "pgbackrest_backup_asso",
                                                  "walg_backup_asso", "pgbackrest_verify_asso", "verify_backup_asso",
                                                  "heartbeat_asso", "verify_pitr_asso", "restore_test_asso",
                                                  "backup_freshness_asso"]
    assert asso.asset_name("walg") == "walg_backup_asso" and asso.pool == "backups_asso" and asso.stanza == "asso"
    # A backup DAG only for the cluster's tools; the repository's verify only with pgBackRest; a drill
    # unless switched off.
    assert make_cluster({"name": "b", "tools": ["pgbackrest"]}).dag_kinds == [
        "s3_bucket", "pgbackrest", "pgbackrest_verify", "verify_backup", "heartbeat", "verify_pitr", "restore_test",
        "freshness"]
    assert make_cluster({"name": "b", "tools": ["walg"], "restore_test": {"tool": "walg"},
                          "verify": {"enabled": False}}).dag_kinds == ["s3_bucket", "walg", "restore_test", "freshness"]
    assert make_cluster({"name": "b", "tools": ["pgbackrest"], "verify": {"pitr_enabled": False}}).dag_kinds == [
        "s3_bucket", "pgbackrest", "pgbackrest_verify", "verify_backup", "restore_test", "freshness"]
    assert set(TOOLS) <= set(DAG_KINDS)  # a backup DAG's kind is its tool


def test_a_dag_id_is_parsed_back_to_its_kind(make_cluster):
    for kind in DAG_KINDS:
        assert dag_kind(make_cluster({"name": "billing"}).dag_id(kind)) == kind
    assert dag_kind("restore_test_") is None and dag_kind("example_dag") is None


def test_the_inventory_and_the_freshness_check_share_one_lag_limit(monkeypatch, make_cluster):
    # The inventory's "lagging" moves with the freshness check's limit: one number, not two.
    at = datetime(2026, 11, 25, 12, tzinfo=timezone.utc)
    cluster = make_cluster()
    stats = {"archived_count": 10, "failed_count": 0, "last_archived_time": at.isoformat(), "ready_count": 4}
    xcom = {"value": stats, "timestamp": at}
    assert not hasattr(inventory, "WAL_READY_LIMIT")
    assert inventory._wal(cluster, xcom, at)["state"] == "ok"
    monkeypatch.setattr(freshness, "WAL_READY_LAG_SEGMENTS", 4)
    assert inventory._wal(cluster, xcom, at)["state"] == "lagging"
    assert freshness.archiver_problems(stats, None, now=at) != []  # the check alerts at the same limit
