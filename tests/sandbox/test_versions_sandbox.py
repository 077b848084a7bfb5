"""Versions read on the loopback sandbox (the host's PostgreSQL 15 and pgBackRest 2.45, the older
tested pair): what the preflight reads there, and a cluster whose binaries or data directory are of
another major refused by the cron script before pgBackRest runs."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from pg_backups import versions

pytestmark = [pytest.mark.sandbox, pytest.mark.slow]


def test_versions_are_read_from_the_server_and_the_tools(sandbox):
    cluster = sandbox.cluster()
    assert cluster.bin_directory is None  # the sandbox's file sets none: derived from the server
    found = versions.check_cluster(cluster)
    assert found["postgres_major"] == 15 and found["server_version_num"] // 10000 == 15
    assert found["bin_directory"] == "/usr/lib/postgresql/15/bin"
    assert versions.pgbackrest_version() == (2, 45, 0)


def spy_and_config(sandbox, tmp_path, edit) -> tuple[dict, object]:
    """A spy pgbackrest first on PATH (it records any call) and the sandbox's cluster file with
    cluster asso's data_directory line replaced by ``edit(line, indent)``."""
    spy_dir = tmp_path / "spy"
    spy_dir.mkdir()
    calls = tmp_path / "calls"
    (spy_dir / "pgbackrest").write_text(f"#!/bin/sh\necho \"$@\" >> {calls}\nexit 0\n")
    (spy_dir / "pgbackrest").chmod(0o755)
    cluster = sandbox.cluster()
    text = sandbox.layout.clusters_file.read_text()
    anchor = f"data_directory: {cluster.data_directory}\n"
    assert text.count(anchor) == 1
    indent = text.split(anchor)[0].rsplit("\n", 1)[1]
    changed = tmp_path / "clusters.yaml"
    changed.write_text(text.replace(anchor, edit(anchor, indent)))
    return {"PG_BACKUPS_CONFIG": str(changed), "PATH": f"{spy_dir}:{os.environ['PATH']}"}, calls


def test_binaries_of_another_major_are_refused_before_pgbackrest_runs(configured_bucket, tmp_path):
    sandbox = configured_bucket
    # Outside pytest's tmp_path (0700, root's): the preflight's psql runs as the cluster's OS user.
    root = Path(tempfile.mkdtemp(prefix="pg16-binaries-"))
    root.chmod(0o755)
    fake = root / "bin"
    fake.mkdir(mode=0o755)
    (fake / "postgres").write_text("#!/bin/sh\necho 'postgres (PostgreSQL) 16.10 (Debian 16.10-1)'\n")
    (fake / "postgres").chmod(0o755)
    for name in ("psql",):  # the preflight's psql still reaches the real server
        (fake / name).symlink_to(f"/usr/lib/postgresql/15/bin/{name}")
    env, calls = spy_and_config(sandbox, tmp_path, lambda line, indent: f"{line}{indent}bin_directory: {fake}\n")
    script = sandbox.run("include/scripts/pgbackrest_backup.sh", env=env, check=False)
    assert script.returncode == 2, script.stdout + script.stderr
    assert f"bin_directory {fake} holds PostgreSQL 16's binaries" in script.stderr
    assert "the server runs PostgreSQL 15" in script.stderr and "Fix:" in script.stderr
    assert not calls.exists()
    shutil.rmtree(root)


def test_a_data_directory_of_another_major_is_refused_before_pgbackrest_runs(configured_bucket, tmp_path):
    sandbox = configured_bucket
    other = tmp_path / "pg16-data"
    other.mkdir()
    (other / "PG_VERSION").write_text("16\n")
    env, calls = spy_and_config(sandbox, tmp_path, lambda line, indent: f"data_directory: {other}\n")
    script = sandbox.run("include/scripts/pgbackrest_backup.sh", env=env, check=False)
    assert script.returncode == 2, script.stdout + script.stderr
    assert f"data_directory {other} is a PostgreSQL 16 data directory" in script.stderr
    assert not calls.exists()


def test_on_2_45_the_backup_dag_writes_no_block_option_and_skips_the_per_backup_verify(first_backup, sandbox):
    """The older pair's path: the DAG's run (conftest's first_backup) wrote pgbackrest.conf without
    repo1-block, and its verify was skipped, saying why (2.45 has no verify --set; the whole
    repository's verify, which grows with it, runs weekly in a DAG of its own)."""
    conf = sandbox.cluster().pgbackrest.config_path
    lines = open(conf).read().splitlines()
    assert not any(line.startswith("repo1-block") for line in lines)
    assert any("pgBackRest 2.45 has no block incremental (needs 2.46+)" in line for line in lines)
    assert first_backup.task_states["verify"] == "skipped", first_backup.task_states
    assert "has no verify --set (2.55+): backup" in first_backup.output
    assert "verify command begin" not in first_backup.output
