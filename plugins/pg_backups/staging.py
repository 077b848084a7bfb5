"""Staging for the quarterly restore test (runbook 3): the guard, the server, psql, the restore.

:func:`guard` refuses before anything is stopped or deleted; :func:`stop_staging`,
:func:`purge_staging`, :func:`restore_into_staging` (pgBackRest or WAL-G), :func:`start_staging`
(own port and socket, ``archive_mode=off``: staging never archives into the production
repository) and :func:`wait_recovery_end` follow. Nothing here imports Airflow.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import shlex
import shutil
import socket
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pg_backups import files, pgbackrest, runner, versions, walg
from pg_backups.errors import RestoreRefused, ToolError
from pg_backups.times import now

if TYPE_CHECKING:
    from pg_backups.config import Cluster

log = logging.getLogger(__name__)

LOCAL_HOSTS = {"localhost", "127.0.0.1", "::1", "", None}
# Where the marker rows and the checks' default queries go: always there, in every cluster.
DEFAULT_DATABASE = "postgres"


@dataclass(frozen=True)
class StagingConnection:
    """Where the staging database answers (from the Airflow connection or STAGING_CONNECTION_URI).
    The password is never kept here: local psql uses the socket and peer authentication."""

    host: str | None = None
    port: int | None = None
    dbname: str | None = None

    @classmethod
    def from_uri(cls, uri: str) -> "StagingConnection":
        from urllib.parse import urlsplit

        parts = urlsplit(uri)
        if parts.scheme not in ("postgresql", "postgres"):
            raise RestoreRefused("STAGING_CONNECTION_URI", f"scheme {parts.scheme!r} is not postgresql",
                                 "write it as postgresql://user:password@host:port/dbname")
        return cls(parts.hostname, parts.port or 5432, parts.path.lstrip("/") or None)


# --------------------------------------------------------------------------------------------
# Who holds staging: one restore test at a time


def claim_path(cluster: Cluster) -> Path:
    # Beside the backup lock, not in staging: the purge empties staging.
    return Path(cluster.lock_directory) / f"{cluster.name}.restore-test-claim.json"


def pid_owner() -> str:
    """The claim owner of a process outside Airflow (the cron restore test)."""
    return f"pid:{socket.gethostname()}:{os.getpid()}"


def pid_owner_alive(owner: str) -> bool:
    """Whether the process that claimed staging still runs. An Airflow run, or another host's
    process, cannot be asked from here: assumed alive (the error names the claim file)."""
    kind, _, rest = owner.partition(":")
    host, _, pid = rest.partition(":")
    if kind != "pid" or host != socket.gethostname() or not pid.isdigit():
        return True
    return pid_running(int(pid))


@contextmanager
def _claim_lock(cluster: Cluster):
    path = claim_path(cluster).with_suffix(".lock")
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def claim_holder(cluster: Cluster) -> str | None:
    try:
        return json.loads(claim_path(cluster).read_text()).get("owner")
    except (FileNotFoundError, ValueError):
        return None


def claim(cluster: Cluster, owner: str, is_active) -> str | None:
    """Claim staging for ``owner`` (an Airflow run, or :func:`pid_owner`). None when it is ours now;
    else the owner that holds it. A claim whose owner is no longer active (``is_active(owner)``
    false: its run ended without its teardown) is taken over, and the log says so."""
    with _claim_lock(cluster):
        holder = claim_holder(cluster)
        if holder not in (None, owner):
            if is_active(holder):
                return holder
            log.warning("staging of cluster %s was held by %s, which is no longer running: taken over by %s",
                        cluster.name, holder, owner)
        files.write_private(claim_path(cluster), json.dumps({"owner": owner, "since": now().isoformat()}) + "\n",
                            None, 0o644)
        return None


def release(cluster: Cluster, owner: str) -> bool:
    """Give staging back (only a claim ``owner`` holds). True when it was released."""
    with _claim_lock(cluster):
        if claim_holder(cluster) != owner:
            return False
        claim_path(cluster).unlink(missing_ok=True)
        return True


# --------------------------------------------------------------------------------------------
# Paths and the guard


def staging_dir(cluster: Cluster) -> str:
    return os.path.realpath(cluster.restore_test.staging_data_directory)


def _inside(path: str, parent: str) -> bool:
    return path == parent or path.startswith(parent.rstrip("/") + "/")


def read_postmaster_pid(data_directory: str) -> dict | None:
    """postmaster.pid: pid, data directory, start time, port, socket directory (PostgreSQL docs)."""
    path = Path(data_directory) / "postmaster.pid"
    try:
        lines = path.read_text().splitlines()
    except (FileNotFoundError, NotADirectoryError):
        return None
    except PermissionError:
        return {"pid": None, "unreadable": True}

    def line(i):
        return lines[i].strip() if len(lines) > i else ""

    pid = int(line(0)) if line(0).lstrip("-").isdigit() else None
    return {"pid": abs(pid) if pid else None, "data_directory": line(1),
            "port": int(line(3)) if line(3).isdigit() else None, "socket_directory": line(4)}


def pid_running(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def guard(cluster: Cluster, staging_conn: StagingConnection | None = None) -> dict:
    """Refuse to touch staging unless it is provably not production. Deletes nothing itself."""
    rt = cluster.restore_test
    staging, root, prod = staging_dir(cluster), os.path.realpath(rt.staging_root), \
        os.path.realpath(cluster.data_directory)
    if _inside(staging, prod) or _inside(prod, staging):
        raise RestoreRefused("restore_test.staging_data_directory",
                             f"{rt.staging_data_directory} resolves to {staging}, which is (or holds, or sits in) "
                             f"the production data directory {prod}",
                             "point staging_data_directory at a directory of its own under staging_root")
    if not _inside(staging, root):
        raise RestoreRefused("restore_test.staging_data_directory",
                             f"{rt.staging_data_directory} resolves to {staging}, outside restore_test.staging_root "
                             f"{rt.staging_root} (resolves to {root})",
                             "put the staging data directory inside staging_root (symlinks and '..' are resolved)")
    if _inside(prod, root):
        raise RestoreRefused("restore_test.staging_root", f"{root} contains the production data directory {prod}",
                             "give staging a root of its own, away from production")
    pid = read_postmaster_pid(staging)
    if pid is not None:
        if pid.get("unreadable"):
            raise RestoreRefused("restore_test.staging_data_directory", f"{staging}/postmaster.pid cannot be read",
                                 "run the restore test as root or as the cluster's os_user")
        if pid_running(pid["pid"]):
            owner_dir = os.path.realpath(pid["data_directory"]) if pid["data_directory"] else staging
            if pid["port"] != rt.staging_port or owner_dir == prod:
                raise RestoreRefused("restore_test.staging_data_directory",
                                     f"{staging} holds a running PostgreSQL (pid {pid['pid']}, port {pid['port']}, "
                                     f"data {pid['data_directory']}) that is not staging "
                                     f"(staging_port is {rt.staging_port})",
                                     "stop that server and check which cluster it is before pointing the restore "
                                     "test at its directory, or fix restore_test.staging_port")
    if staging_conn is not None:
        same_host = (staging_conn.host in LOCAL_HOSTS and cluster.host in LOCAL_HOSTS) or \
            (staging_conn.host or "").lower() == (cluster.host or "").lower()
        if same_host and (staging_conn.port or 5432) == cluster.port:
            raise RestoreRefused(f"connection {cluster.staging_conn_id} (STAGING_CONNECTION_URI)",
                                 f"points at the production database {staging_conn.host}:{staging_conn.port}"
                                 f"/{staging_conn.dbname or ''}",
                                 f"point the staging connection at the staging server (port {rt.staging_port})")
        if staging_conn.port and staging_conn.host in LOCAL_HOSTS and staging_conn.port != rt.staging_port:
            raise RestoreRefused(f"connection {cluster.staging_conn_id} (STAGING_CONNECTION_URI)",
                                 f"port {staging_conn.port} is not restore_test.staging_port {rt.staging_port}",
                                 "make the connection and restore_test.staging_port agree")
    return {"staging_data_directory": staging, "staging_root": root, "production_data_directory": prod,
            "staging_port": rt.staging_port}


# --------------------------------------------------------------------------------------------
# Staging server


def server_binary(cluster: Cluster, name: str) -> str:
    """A server binary of staging's major: the restored data directory's PG_VERSION (production's
    major), the newest installed when there is none yet."""
    return str(Path(versions.bin_directory(cluster, versions.data_directory_major(staging_dir(cluster)))) / name)


def pg_ctl(cluster: Cluster, *args: str, timeout: float | None = 120, check: bool = True):
    return runner.run([server_binary(cluster, "pg_ctl"), "-D", staging_dir(cluster), *args],
                      os_user=cluster.os_user, timeout=timeout, check=check)


def staging_running(cluster: Cluster) -> bool:
    pid = read_postmaster_pid(staging_dir(cluster))
    return bool(pid and pid_running(pid.get("pid")))


def stop_staging(cluster: Cluster, staging_conn: StagingConnection | None = None) -> str:
    if not os.path.isdir(staging_dir(cluster)) or not staging_running(cluster):
        return "not running"
    guard(cluster, staging_conn)  # never stop a server that is not staging
    pg_ctl(cluster, "stop", "-m", "fast", "-w", "-t", "120")
    return "stopped"


def purge_staging(cluster: Cluster, staging_conn: StagingConnection | None = None) -> dict:
    """Empty and recreate the staging data directory (0700, owned by the cluster's OS user)."""
    info = guard(cluster, staging_conn)
    if staging_running(cluster):
        raise RestoreRefused("restore_test.staging_data_directory", "staging PostgreSQL is still running",
                             "stop it first (the stop_staging step)")
    staging = info["staging_data_directory"]
    removed = 0
    if os.path.isdir(staging):
        for entry in os.scandir(staging):
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path)
            else:
                os.unlink(entry.path)
            removed += 1
    os.makedirs(staging, mode=0o700, exist_ok=True)
    os.chmod(staging, 0o700)
    files.chown_to(staging, cluster.os_user)
    return {"staging_data_directory": staging, "entries_removed": removed}


def start_staging_command(cluster: Cluster) -> list[str]:
    rt = cluster.restore_test
    options = f"-p {rt.staging_port} -c archive_mode=off"
    if rt.staging_socket_directory:
        options = f"-p {rt.staging_port} -k {shlex.quote(rt.staging_socket_directory)} -c archive_mode=off"
    staging = staging_dir(cluster)
    return [server_binary(cluster, "pg_ctl"), "-D", staging, "-l", f"{staging}/staging_startup.log",
            "-o", options, "-w", "-t", "3600", "start"]


def start_staging(cluster: Cluster, timeout: float = 3600) -> str:
    try:
        runner.run(start_staging_command(cluster), os_user=cluster.os_user, timeout=timeout + 60)
    except ToolError as exc:  # pg_ctl says "could not start server": the server's log says why
        fatal = last_fatal_line(cluster)
        if fatal:
            raise ToolError(f"staging PostgreSQL of cluster {cluster.name} did not start: {fatal}", exc.returncode,
                            exc.output, retryable=not unreachable_target(fatal)) from None
        raise
    return "started"


def staging_log_paths(cluster: Cluster) -> list[Path]:
    """Where staging's server writes: pg_ctl's log, then the newest files of logging_collector's."""
    staging = Path(staging_dir(cluster))
    collected = sorted((p for p in (staging / "log").glob("*") if p.is_file()), key=lambda p: p.stat().st_mtime)
    return [staging / "staging_startup.log", *reversed(collected[-2:])]


def unreachable_target(fatal: str) -> bool:
    """A recovery target this backup cannot reach (it stays out of reach on a retry): PostgreSQL's
    "recovery ended before configured recovery target was reached" and "requested recovery stop
    point is before consistent recovery point"."""
    return "recovery target" in fatal or "recovery stop point" in fatal


# PostgreSQL logs each segment its restore_command brought back (whichever tool): the one after the
# last of them is where the archive ran out.
RESTORED_SEGMENT_RE = re.compile(r'restored log file "([0-9A-F]{24})" from archive')


def next_segment(name: str, segment_bytes: int = 16 * 2**20) -> str:
    """The WAL segment after ``name`` on its timeline (segments per 4 GiB "log" file: 2**32 / size)."""
    per_log = 2**32 // segment_bytes
    log_id, seg = int(name[8:16], 16), int(name[16:24], 16) + 1
    if seg >= per_log:
        log_id, seg = log_id + 1, 0
    return f"{name[:8]}{log_id:08X}{seg:08X}"


def segment_bytes(cluster: Cluster) -> int:
    """The restored copy's WAL segment size (pg_controldata), 16 MiB when it cannot be read."""
    try:
        out = runner.run([server_binary(cluster, "pg_controldata"), staging_dir(cluster)], os_user=cluster.os_user,
                         timeout=30, quiet=True).stdout
        match = re.search(r"Bytes per WAL segment:\s+(\d+)", out)
        return int(match.group(1)) if match else 16 * 2**20
    except Exception:  # noqa: BLE001 - only the explanation's precision depends on it
        return 16 * 2**20


def missing_segment(cluster: Cluster) -> str | None:
    """Why recovery ended before its target: the segment after the last one restored from the
    archive (a hole in the archive, or one it could not read), in words; None when no segment was
    restored at all."""
    last = None
    for path in staging_log_paths(cluster):
        try:
            found = RESTORED_SEGMENT_RE.findall(path.read_text(errors="replace"))
        except OSError:
            continue
        if found:
            last = max(found)
    if last is None:
        return None
    return (f"WAL segment {next_segment(last, segment_bytes(cluster))} is missing from the archive or unreadable "
            f"(the last segment restored was {last})")


def last_fatal_line(cluster: Cluster) -> str | None:
    """The last ``FATAL:`` (or ``PANIC:``) line staging's server logged: why it stopped."""
    for path in staging_log_paths(cluster):
        try:
            lines = path.read_text(errors="replace").splitlines()
        except OSError:
            continue
        for line in reversed(lines):
            if "FATAL:" in line or "PANIC:" in line:
                return line.strip()[:500]
    return None


def psql_command(cluster: Cluster, sql: str, dbname: str | None = None) -> list[str]:
    rt = cluster.restore_test
    # Staging is local: its socket (the configured one, or libpq's default, where pg_ctl starts
    # it without -k) with peer authentication as the OS user; no password is ever needed.
    return runner.psql_command(cluster, rt.staging_socket_directory, rt.staging_port, dbname or DEFAULT_DATABASE, sql)


def staging_sql(cluster: Cluster, sql: str, dbname: str | None = None, timeout: float = 600) -> str:
    return runner.run(psql_command(cluster, sql, dbname), os_user=cluster.os_user, timeout=timeout).stdout.strip()


def wait_recovery_end(cluster: Cluster, timeout: float = 3600, poll: float = 0.2) -> float:
    """Wait until staging has finished recovery (``pg_is_in_recovery()`` false); seconds waited.
    ``poll``: a psql of a few milliseconds; at 1 s it added up to a second to every RTO measured
    (benchmarks/bench_verify.py: the drill's restore, start and checks left about 1 s idle here).

    Each poll first checks that staging's postmaster is alive: a server that died in recovery
    (``FATAL: recovery ended before configured recovery target was reached``) fails at once,
    quoting its log, instead of being polled until the timeout."""
    started = time.monotonic()
    while True:
        if not staging_running(cluster):
            fatal = last_fatal_line(cluster) or "no FATAL line in its log"
            # The cause first: an alert keeps the first 400 characters.
            hole = missing_segment(cluster) if "recovery ended before" in fatal else None
            raise ToolError(f"staging PostgreSQL of cluster {cluster.name} stopped during recovery: "
                            + (f"{hole}; " if hole else "") + f"{fatal} (log: {staging_log_paths(cluster)[0]})",
                            retryable=not unreachable_target(fatal))
        try:
            if staging_sql(cluster, "SELECT pg_is_in_recovery()", timeout=30) == "f":
                return time.monotonic() - started
        except ToolError as exc:
            log.info("staging not answering yet: %s", exc)
        if time.monotonic() - started > timeout:
            raise ToolError(f"staging did not finish recovery within {timeout:.0f} s")
        time.sleep(poll)


# --------------------------------------------------------------------------------------------
# Restore


def staging_is_empty(cluster: Cluster) -> bool:
    staging = staging_dir(cluster)
    return not os.path.isdir(staging) or not any(os.scandir(staging))


def restore_into_staging(cluster: Cluster, tool: str, access, label: str | None = None, target_time: str | None = None,
                         timeout: float | None = None, copy: str = "restored-copy") -> None:
    """Restore ``label`` (a backup of ``tool``) into the staging data directory, archiving off.
    ``copy``: the pgBackRest lock path's name for this kind of copy (see pgbackrest.restore_lock_path)."""
    if tool == "walg":
        restore_walg(cluster, access, label, target_time, timeout)
    else:
        # --archive-mode=off: staging never archives into the production repository.
        pgbackrest.restore(cluster, staging_dir(cluster), set_label=label, target_time=target_time, timeout=timeout,
                           copy=copy)


def walg_recovery_settings(cluster: Cluster, target_time: str | None = None) -> dict[str, str]:
    """What WAL-G's restore needs in postgresql.auto.conf (with recovery.signal beside it)."""
    settings = {"restore_command": walg.restore_command(cluster), "archive_mode": "off"}
    if target_time:
        settings.update({"recovery_target_time": target_time, "recovery_target_action": "promote"})
    return settings


def render_auto_conf(settings: dict[str, str]) -> str:
    lines = ["# Written by pg_backups' restore test (WAL-G): recovery from the production repository,",
             "# no archiving from staging."]
    lines += [f"{key} = '{value.replace(chr(39), chr(39) * 2)}'" for key, value in settings.items()]
    return "\n".join(lines) + "\n"


def restore_walg(cluster: Cluster, access, label: str | None = None, target_time: str | None = None,
                 timeout: float | None = None) -> None:
    staging = staging_dir(cluster)
    walg.backup_fetch(cluster, access, staging, label or "LATEST", timeout=timeout)
    auto = Path(staging) / "postgresql.auto.conf"
    existing = auto.read_text() if auto.exists() else ""
    auto.write_text(existing + render_auto_conf(walg_recovery_settings(cluster, target_time)))
    (Path(staging) / "recovery.signal").write_text("")
    for path in (auto, Path(staging) / "recovery.signal"):
        os.chmod(path, 0o600)
        files.chown_to(str(path), cluster.os_user)
