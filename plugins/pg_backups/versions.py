"""The versions a cluster runs, read rather than assumed: PostgreSQL's major from the server
(``server_version_num``), from its data directory (``PG_VERSION``) and from its binaries; and
pgBackRest's from ``pgbackrest version``.

The PostgreSQL binaries (``bin_directory``) are derived from the major when the cluster does not
set them: Debian's ``/usr/lib/postgresql/<major>/bin``. A cluster whose server, data directory and
binaries disagree is refused (:class:`VersionMismatch`) before any backup tool runs: pgBackRest
would otherwise fail later with "PostgreSQL version N, system-id ... do not match" or back up the
wrong directory. What each pgBackRest version brings is named here once (docs/versions.md).
"""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import TYPE_CHECKING

from pg_backups.errors import ToolError, VersionMismatch

if TYPE_CHECKING:
    from pg_backups.config import Cluster

DEBIAN_ROOT = Path("/usr/lib/postgresql")  # Debian's PostgreSQL packages: <root>/<major>/bin

# pgBackRest features by the version that brought them (docs/versions.md's table).
BLOCK_INCREMENTAL = (2, 46)  # repo-block generally available (needs repo-bundle)
VERIFY_SET = (2, 55)  # verify --set <label>: one backup instead of the whole repository
REPO_TARGET_TIME = (2, 54)  # repo-target-time: read a versioned repository as it was at a time


def major_from_num(server_version_num: int | str) -> int:
    """170012 -> 17, 150014 -> 15 (server_version_num is major * 10000 + minor since PostgreSQL 10)."""
    return int(server_version_num) // 10000


def parse_postgres_version(output: str) -> int:
    """``postgres (PostgreSQL) 17.12 (Debian 17.12-1)`` -> 17."""
    found = re.search(r"\(PostgreSQL\)\s+(\d+)", output)
    if not found:
        raise ToolError(f"cannot read a PostgreSQL version from {output.strip()[:200]!r}")
    return int(found.group(1))


def parse_pgbackrest_version(output: str) -> tuple[int, ...]:
    """``pgBackRest 2.55.1`` -> (2, 55, 1); ``pgBackRest 2.45`` -> (2, 45, 0)."""
    found = re.search(r"pgBackRest\s+(\d+)\.(\d+)(?:\.(\d+))?", output)
    if not found:
        raise ToolError(f"cannot read a pgBackRest version from {output.strip()[:200]!r}")
    return tuple(int(part or 0) for part in found.groups())


def text(version: tuple[int, ...]) -> str:
    """(2, 45, 0) -> '2.45' (as pgBackRest names it), (2, 55, 1) -> '2.55.1'."""
    shown = version[:2] if len(version) > 2 and not any(version[2:]) else version
    return ".".join(map(str, shown))


def installed_majors(root: Path | None = None) -> list[int]:
    """The PostgreSQL majors installed the Debian way (``<root>/<major>/bin/pg_ctl``), newest last."""
    root = root or DEBIAN_ROOT
    if not root.is_dir():
        return []
    return sorted(int(p.name) for p in root.iterdir() if p.name.isdigit() and (p / "bin" / "pg_ctl").exists())


def bin_directory(cluster: Cluster, major: int | None = None) -> str:
    """The cluster's ``bin_directory`` when set; else Debian's directory of ``major``; else (a client
    such as psql, which reads any older server) the newest major installed."""
    if cluster.bin_directory:
        return cluster.bin_directory
    if major is None:
        majors = installed_majors()
        if not majors:
            raise VersionMismatch(f"cluster {cluster.name}: no bin_directory is set and no PostgreSQL is installed "
                                  f"under {DEBIAN_ROOT}", "install PostgreSQL there or set bin_directory "
                                  "in the cluster configuration")
        major = majors[-1]
    return debian_bin(major)


def debian_bin(major: int) -> str:
    return str(DEBIAN_ROOT / str(major) / "bin")


def data_directory_major(data_directory: str | Path) -> int | None:
    """The major in a data directory's PG_VERSION; None when there is none (or it cannot be read)."""
    try:
        return int((Path(data_directory) / "PG_VERSION").read_text().strip())
    except (OSError, ValueError):
        return None


@functools.lru_cache(maxsize=8)
def _pgbackrest_version(binary: str) -> tuple[int, ...]:
    from pg_backups import runner  # runner reads bin_directory from here

    return parse_pgbackrest_version(runner.run([binary, "version"], timeout=60).stdout)


def pgbackrest_version(binary: str = "pgbackrest") -> tuple[int, ...]:
    """``pgbackrest version`` on this host (read once per process: the package does not change
    under a running task)."""
    return _pgbackrest_version(binary)


def judge(cluster: Cluster, server_num: int, data_major: int | None, binaries_major: int | None, binaries: str) -> int:
    """Refuse a cluster whose server, data directory and binaries disagree; returns the major."""
    major = major_from_num(server_num)
    where = f"{cluster.host}:{cluster.port}"
    if data_major is None:
        raise VersionMismatch(f"cluster {cluster.name}: data_directory {cluster.data_directory} has no readable "
                              f"PG_VERSION, but the server at {where} runs PostgreSQL {major}",
                              "set data_directory to that server's data directory (SHOW data_directory), "
                              "readable by the tools' user on this host")
    if data_major != major:
        raise VersionMismatch(f"cluster {cluster.name}: the server at {where} runs PostgreSQL {major} but "
                              f"data_directory {cluster.data_directory} is a PostgreSQL {data_major} data directory",
                              "point data_directory and port at the same cluster (SHOW data_directory on the server)")
    if binaries_major is None:
        raise VersionMismatch(f"cluster {cluster.name}: the server runs PostgreSQL {major} but there are no "
                              f"PostgreSQL binaries in {binaries}",
                              f"install PostgreSQL {major}'s server package, or set bin_directory to its binaries")
    if binaries_major != major:
        raise VersionMismatch(f"cluster {cluster.name}: the server runs PostgreSQL {major} but bin_directory "
                              f"{binaries} holds PostgreSQL {binaries_major}'s binaries",
                              f"set bin_directory to PostgreSQL {major}'s (e.g. {debian_bin(major)}), "
                              "or remove it to have it derived from the server")
    return major


def check_cluster(cluster: Cluster) -> dict:
    """Read the versions on the database host and judge them (the backup DAGs' preflight and the
    cron scripts, before any tool runs). Returns what was read."""
    from pg_backups import runner

    server_num = int(runner.production_sql(cluster, "SHOW server_version_num"))
    major = major_from_num(server_num)
    data_major = _read_data_major(cluster)
    binaries = bin_directory(cluster, major)
    postgres = Path(binaries) / "postgres"
    binaries_major = None
    if postgres.exists():
        binaries_major = parse_postgres_version(runner.run([str(postgres), "--version"], timeout=60).stdout)
    judge(cluster, server_num, data_major, binaries_major, binaries)
    return {"postgres_major": major, "server_version_num": server_num, "bin_directory": binaries}


def _read_data_major(cluster: Cluster) -> int | None:
    """PG_VERSION as the tools' user reads it (the data directory is that user's, mode 0700)."""
    found = data_directory_major(cluster.data_directory)
    if found is not None or not cluster.os_user:
        return found
    from pg_backups import runner

    proc = runner.run(["cat", str(Path(cluster.data_directory) / "PG_VERSION")], os_user=cluster.os_user,
                      timeout=30, check=False)
    return int(proc.stdout.strip()) if proc.returncode == 0 and proc.stdout.strip().isdigit() else None
