"""The tool table (pg_backups.tools): each tool module answers the same questions, and the
backup asset's URI and the retention in a refusal come from it. No servers."""

from __future__ import annotations

import pytest

from pg_backups import pgbackrest, tools, walg
from pg_backups.airflow.common import backup_asset
from pg_backups.config import TOOLS

INTERFACE = ("write_config", "repository_path", "retention_days")


@pytest.mark.parametrize("tool", TOOLS)
def test_every_tool_module_answers_the_interface(tool):
    module = tools.of(tool)
    assert all(callable(getattr(module, name, None)) for name in INTERFACE), tool


def test_the_asset_uri_is_where_each_tool_keeps_its_backups(make_cluster):
    cluster = make_cluster({"tools": ["pgbackrest", "walg"], "s3": {"bucket": "asso-prod-backups"},
                            "pgbackrest": {"repo_path": "/pgbackrest"}, "walg": {"prefix": "postgres"}})
    assert backup_asset(cluster, "pgbackrest").uri == "s3://asso-prod-backups/pgbackrest/backup/asso"
    assert backup_asset(cluster, "walg").uri == "s3://asso-prod-backups/postgres/basebackups_005"
    assert tools.of("pgbackrest") is pgbackrest and tools.of("walg") is walg


def test_each_tool_says_its_own_retention(make_cluster):
    cluster = make_cluster({"tools": ["pgbackrest", "walg"], "pgbackrest": {"retention_full_days": 35},
                            "walg": {"retention_days": 40}})
    assert [tools.of(t).retention_days(cluster) for t in ("pgbackrest", "walg")] == [35, 40]
