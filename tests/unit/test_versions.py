"""Versions read, not assumed (pg_backups.versions). The parsers are fed the tools' own output,
recorded from the two tested pairs (the host's PostgreSQL 15 / pgBackRest 2.45 and the trixie
image's PostgreSQL 17 / pgBackRest 2.55.1): the named RECORDED_* samples. The judge is fed the
combinations the real tools cannot produce on one machine (a PostgreSQL 17 server beside a 15 data
directory); the sandbox test at the end reads the real 15 / 2.45 pair."""

from __future__ import annotations

import pytest

from pg_backups import versions
from pg_backups.config import parse_config
from pg_backups.errors import Refused, VersionMismatch

# `postgres --version` and `pgbackrest version`, as printed by each pair.
RECORDED_POSTGRES_15 = "postgres (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)\n"
RECORDED_POSTGRES_17 = "postgres (PostgreSQL) 17.12 (Debian 17.12-1)\n"
RECORDED_PGBACKREST_245 = "pgBackRest 2.45\n"
RECORDED_PGBACKREST_2551 = "pgBackRest 2.55.1\n"
# SHOW server_version_num on each server.
RECORDED_SERVER_NUM_15, RECORDED_SERVER_NUM_17 = 150014, 170012


def cluster(**extra):
    return parse_config({"clusters": [{"name": "asso", "data_directory": "/srv/pg/asso", **extra}]}, "t.yaml").clusters[0]


def test_recorded_outputs_parse_to_their_versions():
    assert versions.parse_postgres_version(RECORDED_POSTGRES_15) == 15
    assert versions.parse_postgres_version(RECORDED_POSTGRES_17) == 17
    assert versions.parse_pgbackrest_version(RECORDED_PGBACKREST_245) == (2, 45, 0)
    assert versions.parse_pgbackrest_version(RECORDED_PGBACKREST_2551) == (2, 55, 1)
    assert versions.major_from_num(RECORDED_SERVER_NUM_15) == 15
    assert versions.major_from_num(str(RECORDED_SERVER_NUM_17)) == 17


def test_unreadable_version_output_is_an_error_not_a_guess():
    with pytest.raises(Exception, match="cannot read a pgBackRest version"):
        versions.parse_pgbackrest_version("command not found")
    with pytest.raises(Exception, match="cannot read a PostgreSQL version"):
        versions.parse_postgres_version("")


def test_bin_directory_is_derived_from_the_major_unless_set():
    assert cluster().bin_directory is None  # no PostgreSQL major assumed by the configuration
    assert versions.bin_directory(cluster(), 17) == "/usr/lib/postgresql/17/bin"
    assert versions.bin_directory(cluster(), 15) == "/usr/lib/postgresql/15/bin"
    assert versions.bin_directory(cluster(bin_directory="/opt/pg/bin"), 17) == "/opt/pg/bin"


def test_client_binaries_default_to_the_newest_installed_major(tmp_path, monkeypatch):
    for major in ("15", "17", "9.6"):
        (tmp_path / major / "bin").mkdir(parents=True)
        (tmp_path / major / "bin" / "pg_ctl").touch()
    (tmp_path / "16" / "bin").mkdir(parents=True)  # a client-only package: no server binaries
    assert versions.installed_majors(tmp_path) == [15, 17]
    monkeypatch.setattr(versions, "DEBIAN_ROOT", tmp_path)
    assert versions.bin_directory(cluster()) == str(tmp_path / "17" / "bin")
    monkeypatch.setattr(versions, "DEBIAN_ROOT", tmp_path / "none")
    with pytest.raises(VersionMismatch, match="no PostgreSQL is installed") as refused:
        versions.bin_directory(cluster())
    assert "set bin_directory" in str(refused.value)


def test_data_directory_major_reads_pg_version(tmp_path):
    (tmp_path / "PG_VERSION").write_text("17\n")
    assert versions.data_directory_major(tmp_path) == 17
    assert versions.data_directory_major(tmp_path / "missing") is None


def test_agreeing_versions_pass_on_both_pairs():
    assert versions.judge(cluster(), RECORDED_SERVER_NUM_15, 15, 15, "/usr/lib/postgresql/15/bin") == 15
    assert versions.judge(cluster(), RECORDED_SERVER_NUM_17, 17, 17, "/usr/lib/postgresql/17/bin") == 17


def test_server_of_another_major_than_its_data_directory_is_refused():
    """Recorded combination: a PostgreSQL 17 server on the port, data_directory still the 15 one
    (an upgrade with pg_upgrade that left the configuration behind)."""
    with pytest.raises(VersionMismatch) as refused:
        versions.judge(cluster(), RECORDED_SERVER_NUM_17, 15, 17, "/usr/lib/postgresql/17/bin")
    message = str(refused.value)
    assert "runs PostgreSQL 17" in message and "/srv/pg/asso is a PostgreSQL 15 data directory" in message
    assert "Fix:" in message and "data_directory" in message
    assert isinstance(refused.value, Refused) and not refused.value.retryable


def test_binaries_of_another_major_than_the_server_are_refused():
    with pytest.raises(VersionMismatch) as refused:
        versions.judge(cluster(bin_directory="/usr/lib/postgresql/15/bin"), RECORDED_SERVER_NUM_17, 17, 15,
                       "/usr/lib/postgresql/15/bin")
    assert "holds PostgreSQL 15's binaries" in str(refused.value)
    assert "/usr/lib/postgresql/17/bin" in refused.value.fix
    with pytest.raises(VersionMismatch, match="no PostgreSQL binaries in /usr/lib/postgresql/17/bin"):
        versions.judge(cluster(), RECORDED_SERVER_NUM_17, 17, None, "/usr/lib/postgresql/17/bin")


def test_a_data_directory_without_pg_version_is_refused():
    with pytest.raises(VersionMismatch, match="no readable PG_VERSION"):
        versions.judge(cluster(), RECORDED_SERVER_NUM_15, None, 15, "/usr/lib/postgresql/15/bin")


# --------------------------------------------------------------------------------------------
# What the newer pgBackRest gives, used where the version has it


def access():
    from pg_backups.s3_access import S3Access

    return S3Access(region="eu-west-3", access_key="AKIAEXAMPLE", secret_key="not-written-here",
                    endpoint_url="https://s3:443")


def conf_lines(version, **pgbackrest):
    from pg_backups import pgbackrest as pb

    return pb.render_config(cluster(pgbackrest=pgbackrest), access(), version).splitlines()


def test_block_incremental_is_on_by_default_from_2_46_with_bundling():
    lines = conf_lines(versions.parse_pgbackrest_version(RECORDED_PGBACKREST_2551))
    assert "repo1-block=y" in lines and "repo1-bundle=y" in lines
    assert any("For pgBackRest 2.55.1; repo1-block:" in line for line in lines)
    assert "repo1-block=y" in conf_lines((2, 46, 0))


def test_block_incremental_is_left_out_on_2_45_without_bundling_or_when_turned_off():
    on_245 = conf_lines(versions.parse_pgbackrest_version(RECORDED_PGBACKREST_245))
    assert not any(line.startswith("repo1-block") for line in on_245)
    assert any("pgBackRest 2.45 has no block incremental (needs 2.46+)" in line for line in on_245)
    unbundled = conf_lines((2, 55, 1), bundle=False)
    assert "repo1-block=y" not in unbundled and any("it needs repo1-bundle" in line for line in unbundled)
    assert "repo1-block=y" not in conf_lines((2, 55, 1), block_incremental=False)


def test_bundle_limit_is_written_only_when_set_and_bundling():
    assert "repo1-bundle-limit=8KiB" in conf_lines((2, 55, 1), bundle_limit_kib=8)
    assert not any(line.startswith("repo1-bundle-limit") for line in conf_lines((2, 55, 1)))
    with pytest.raises(Refused, match="bundle_limit_kib"):
        cluster(pgbackrest={"bundle_limit_kib": 4})


def test_verify_of_one_backup_uses_set_from_2_55_and_the_whole_repository_before():
    from pg_backups import pgbackrest as pb

    label = "20261202-061502F_20261203-061503D"
    assert pb.verify_scope(label, versions.parse_pgbackrest_version(RECORDED_PGBACKREST_2551)) == [f"--set={label}"]
    assert pb.verify_scope(label, (2, 54, 2)) == []
    assert pb.verify_scope(label, versions.parse_pgbackrest_version(RECORDED_PGBACKREST_245)) == []
    assert pb.verify_scope(None, (2, 55, 1)) == []  # the weekly whole-repository verify
