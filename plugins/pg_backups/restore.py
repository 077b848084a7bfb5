"""The quarterly restore test (runbook 3): restore the latest backup into staging and prove it.

Pure Python, no Airflow: the DAG's tasks (:mod:`pg_backups.airflow_restore`) and the cron command
(``pg_backups.cli restore-test``) call the same functions through :mod:`pg_backups.operations`.

Steps: :func:`guard` (refuses before anything is deleted), :func:`stop_staging`,
:func:`purge_staging`, :func:`restore_pgbackrest` / :func:`restore_walg`, :func:`start_staging`
(own port and socket, ``archive_mode=off``: staging never archives into the production
repository), :func:`wait_recovery_end`, :func:`smoke` (the runbook's query, written to the smoke
log), :func:`data_checks` (the backup's marker row, table row counts, amcheck, not in recovery),
:func:`audit_record` / :func:`append_audit` (one JSON line per run, no secret) and
:func:`archive_logs` (both logs to ``s3://<bucket>/<audit_prefix>/<cluster>/...``).
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import shutil
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from pg_backups import runner

log = logging.getLogger(__name__)

SMOKE_SQL = "SELECT count(*) FROM pg_catalog.pg_tables;"  # runbook 3, step 3
MARKER_TABLE = "pg_backups_marker"
MARKER_DATABASE = "postgres"  # always there, in every cluster: the marker never touches app schemas
LOCAL_HOSTS = {"localhost", "127.0.0.1", "::1", "", None}


class RestoreRefused(RuntimeError):
    """The guard refused: nothing was stopped or deleted. Names the setting and the fix."""

    def __init__(self, setting: str, problem: str, fix: str):
        self.setting, self.problem, self.fix = setting, problem, fix
        super().__init__(f"restore test refused, nothing was deleted: {setting}: {problem}. Fix: {fix}")


class CheckFailed(RuntimeError):
    """A check of the restored cluster failed; ``checks`` holds every result for the audit."""

    def __init__(self, message: str, checks: list[dict]):
        super().__init__(message)
        self.checks = checks


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
# Paths and the guard


def staging_dir(cluster) -> str:
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


def guard(cluster, staging_conn: StagingConnection | None = None) -> dict:
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


def pg_ctl(cluster, *args: str, timeout: float | None = 120, check: bool = True):
    return runner.run([str(Path(cluster.bin_directory) / "pg_ctl"), "-D", staging_dir(cluster), *args],
                      os_user=cluster.os_user, timeout=timeout, check=check)


def staging_running(cluster) -> bool:
    pid = read_postmaster_pid(staging_dir(cluster))
    return bool(pid and pid_running(pid.get("pid")))


def stop_staging(cluster, staging_conn: StagingConnection | None = None) -> str:
    if not os.path.isdir(staging_dir(cluster)) or not staging_running(cluster):
        return "not running"
    guard(cluster, staging_conn)  # never stop a server that is not staging
    pg_ctl(cluster, "stop", "-m", "fast", "-w", "-t", "120")
    return "stopped"


def _chown(path: str, os_user: str | None) -> None:
    if os_user and os.geteuid() == 0:
        shutil.chown(path, os_user, os_user)


def purge_staging(cluster, staging_conn: StagingConnection | None = None) -> dict:
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
    _chown(staging, cluster.os_user)
    return {"staging_data_directory": staging, "entries_removed": removed}


def start_staging_command(cluster) -> list[str]:
    rt = cluster.restore_test
    options = f"-p {rt.staging_port} -c archive_mode=off"
    if rt.staging_socket_directory:
        options = f"-p {rt.staging_port} -k {shlex.quote(rt.staging_socket_directory)} -c archive_mode=off"
    staging = staging_dir(cluster)
    return [str(Path(cluster.bin_directory) / "pg_ctl"), "-D", staging, "-l", f"{staging}/staging_startup.log",
            "-o", options, "-w", "-t", "3600", "start"]


def start_staging(cluster, timeout: float = 3600) -> str:
    runner.run(start_staging_command(cluster), os_user=cluster.os_user, timeout=timeout + 60)
    return "started"


def _psql(cluster, host: str | None, port: int, dbname: str, sql: str) -> list[str]:
    """The one psql command line: unaligned, quiet, stops at the first error."""
    return [str(Path(cluster.bin_directory) / "psql"), "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1",
            *(["-h", host] if host else []), "-p", str(port), "-U", cluster.user, "-d", dbname, "-c", sql]


def psql_command(cluster, sql: str, dbname: str | None = None) -> list[str]:
    rt = cluster.restore_test
    # Staging is local: its socket (the configured one, or libpq's default, where pg_ctl starts
    # it without -k) with peer authentication as the OS user; no password is ever needed.
    return _psql(cluster, rt.staging_socket_directory, rt.staging_port, dbname or MARKER_DATABASE, sql)


def staging_sql(cluster, sql: str, dbname: str | None = None, timeout: float = 600) -> str:
    return runner.run(psql_command(cluster, sql, dbname), os_user=cluster.os_user, timeout=timeout).stdout.strip()


def wait_recovery_end(cluster, timeout: float = 3600, poll: float = 1.0) -> float:
    """Wait until staging has finished recovery (``pg_is_in_recovery()`` false); seconds waited."""
    started = time.monotonic()
    while True:
        try:
            if staging_sql(cluster, "SELECT pg_is_in_recovery()", timeout=30) == "f":
                return time.monotonic() - started
        except runner.ToolError as exc:
            log.info("staging not answering yet: %s", exc)
        if time.monotonic() - started > timeout:
            raise runner.ToolError(f"staging did not finish recovery within {timeout:.0f} s")
        time.sleep(poll)


# --------------------------------------------------------------------------------------------
# Restore


def staging_is_empty(cluster) -> bool:
    staging = staging_dir(cluster)
    return not os.path.isdir(staging) or not any(os.scandir(staging))


def restore_pgbackrest(cluster, label: str | None = None, target_time: str | None = None,
                       timeout: float | None = None) -> None:
    from pg_backups import pgbackrest

    # --archive-mode=off: staging never archives into the production repository.
    pgbackrest.restore(cluster, staging_dir(cluster), set_label=label, target_time=target_time, timeout=timeout)


def walg_recovery_settings(cluster, target_time: str | None = None) -> dict[str, str]:
    """What WAL-G's restore needs in postgresql.auto.conf (with recovery.signal beside it)."""
    from pg_backups import walg

    settings = {"restore_command": walg.restore_command(cluster), "archive_mode": "off"}
    if target_time:
        settings.update({"recovery_target_time": target_time, "recovery_target_action": "promote"})
    return settings


def render_auto_conf(settings: dict[str, str]) -> str:
    lines = ["# Written by pg_backups' restore test (WAL-G): recovery from the production repository,",
             "# no archiving from staging."]
    lines += [f"{key} = '{value.replace(chr(39), chr(39) * 2)}'" for key, value in settings.items()]
    return "\n".join(lines) + "\n"


def walg_fetch_command(cluster, label: str | None = None) -> list[str]:
    from pg_backups import walg

    return walg.command(cluster, "backup-fetch", staging_dir(cluster), label or "LATEST")


def restore_walg(cluster, access, label: str | None = None, target_time: str | None = None,
                 timeout: float | None = None) -> None:
    from pg_backups import walg

    staging = staging_dir(cluster)
    walg.backup_fetch(cluster, access, staging, label or "LATEST", timeout=timeout)
    auto = Path(staging) / "postgresql.auto.conf"
    existing = auto.read_text() if auto.exists() else ""
    auto.write_text(existing + render_auto_conf(walg_recovery_settings(cluster, target_time)))
    (Path(staging) / "recovery.signal").write_text("")
    for path in (auto, Path(staging) / "recovery.signal"):
        os.chmod(path, 0o600)
        _chown(str(path), cluster.os_user)


# --------------------------------------------------------------------------------------------
# Marker rows (written by the backup operations, checked after the restore)


def marker_sql(run_id: str, tool: str) -> str:
    def q(v: str) -> str:
        return "'" + v.replace("'", "''") + "'"

    return (f"CREATE TABLE IF NOT EXISTS {MARKER_TABLE} (run_id text NOT NULL, tool text NOT NULL, "
            f"created_at timestamptz NOT NULL DEFAULT now()); "
            f"INSERT INTO {MARKER_TABLE} (run_id, tool) VALUES ({q(run_id)}, {q(tool)});")


def production_psql_command(cluster, sql: str) -> list[str]:
    return _psql(cluster, cluster.socket_directory or cluster.host, cluster.port, MARKER_DATABASE, sql)


def write_marker(cluster, run_id: str | None, tool: str) -> bool:
    """Insert the backup's marker row into production just before the backup. Never fails a backup:
    a missing marker is reported by the restore test instead."""
    if not run_id:
        return False
    try:
        runner.run(production_psql_command(cluster, marker_sql(run_id, tool)), os_user=cluster.os_user, timeout=60)
        return True
    except runner.ToolError as exc:
        log.warning("could not write the restore-test marker row (the restore test will report it): %s", exc)
        return False


# --------------------------------------------------------------------------------------------
# Checks


def smoke(cluster, dbname: str | None = None) -> dict:
    """The runbook's smoke query, its result appended to the smoke log."""
    count = int(staging_sql(cluster, SMOKE_SQL, dbname))
    path = Path(cluster.restore_test.smoke_log)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as out:
        out.write(f"{_now()} cluster={cluster.name} db={dbname or MARKER_DATABASE} port="
                  f"{cluster.restore_test.staging_port} query={SMOKE_SQL!r} result={count}\n")
    return {"query": SMOKE_SQL, "pg_tables": count, "smoke_log": str(path)}


AMCHECK_SQL = (
    "CREATE EXTENSION IF NOT EXISTS amcheck; "
    "SELECT count(*) FROM (SELECT bt_index_check(c.oid, true) FROM pg_index i "
    "JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_am a ON a.oid = c.relam "
    "WHERE a.amname = 'btree' AND i.indisvalid AND i.indisready AND c.relpersistence <> 't') s;")


def data_checks(cluster, record: dict, dbname: str | None = None) -> list[dict]:
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

    def marker():
        if not run_id:
            return False, f"backup {record.get('label')} carries no run id, so no marker can prove it"
        found = staging_sql(cluster, f"SELECT count(*) FROM {MARKER_TABLE} WHERE run_id = "
                                     f"'{run_id.replace(chr(39), chr(39) * 2)}'", MARKER_DATABASE)
        return int(found) > 0, f"marker of run {run_id} found {found} time(s)"

    check("backup_marker", marker)
    for table in cluster.restore_test.check_tables:
        def rows(table=table):
            ident = ".".join('"' + p.replace('"', '""') + '"' for p in table.split("."))
            n = int(staging_sql(cluster, f"SELECT count(*) FROM {ident}", dbname))
            return n > 0, f"{n} rows"
        check(f"rows:{table}", rows)
    for db in dict.fromkeys([dbname or MARKER_DATABASE, MARKER_DATABASE]):
        check(f"amcheck:{db}", lambda db=db: (True, f"{staging_sql(cluster, AMCHECK_SQL, db)} btree indexes "
                                                    "checked (heapallindexed)"))
    failed = [c["check"] for c in checks if c["result"] != "ok"]
    if failed:
        raise CheckFailed(f"restored cluster failed checks: {', '.join(failed)}", checks)
    return checks


# --------------------------------------------------------------------------------------------
# Audit


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def backup_age_seconds(record: dict | None, now: datetime | None = None) -> float | None:
    if not record or not record.get("stop_time"):
        return None
    stop = datetime.fromisoformat(record["stop_time"].replace("Z", "+00:00"))
    return round(((now or datetime.now(timezone.utc)) - stop).total_seconds(), 1)


def audit_record(cluster, *, run_id: str, tool: str, record: dict | None, restore_seconds: float | None,
                 smoke_result: dict | None, checks: list[dict] | None, signoff: dict | None,
                 errors: list[str] | None = None, target_time: str | None = None) -> dict:
    """One audit line. Outcome ``success`` only when the restore happened, the smoke query and every
    check passed, and QA approved (cron: the sign-off is ``pending``, which does not fail)."""
    checks = list(checks or [])
    if smoke_result is not None:
        checks.insert(0, {"check": "smoke_query", "result": "ok", "detail": f"{smoke_result['pg_tables']} pg_tables"})
    signoff = signoff or {"status": "missing"}
    restored = record is not None and restore_seconds is not None
    ok = (restored and smoke_result is not None and bool(checks) and all(c["result"] == "ok" for c in checks)
          and signoff.get("status") in ("approved", "pending") and not errors)
    line = {
        "time": _now(),
        "cluster": cluster.name,
        "run_id": run_id,
        "tool": tool,
        "backup_label": record.get("label") if record else None,
        "backup_time": record.get("stop_time") if record else None,
        "backup_run_id": record.get("airflow_run_id") if record else None,
        "backup_age_seconds": backup_age_seconds(record),
        "target_time": target_time,
        "restore_duration_seconds": round(restore_seconds, 1) if restore_seconds is not None else None,
        "checks": checks,
        "signoff": signoff,
        "errors": errors or [],
        "outcome": "success" if ok else "failed",
    }
    return scrub(line)


def scrub(value):
    """Drop any secret of the environment from the audit line, whatever put it there."""
    secrets = runner.secrets_of(dict(os.environ))
    return json.loads(runner.redact(json.dumps(value, default=str), secrets))


def append_audit(cluster, line: dict) -> str:
    path = Path(cluster.restore_test.audit_log)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as out:
        out.write(json.dumps(line, sort_keys=True, default=str) + "\n")
    return str(path)


def archive_key(cluster, run_id: str, filename: str, day: datetime | None = None) -> str:
    day = day or datetime.now(timezone.utc)
    safe = "".join(ch if ch.isalnum() or ch in "-_.+" else "_" for ch in run_id)
    return f"{cluster.restore_test.audit_prefix.strip('/')}/{cluster.name}/{day:%Y}/{safe}/{filename}"


def archive_logs(cluster, client, run_id: str) -> list[str]:
    """Upload the smoke log and the audit log (kept outside the worker); returns s3:// URIs."""
    uris = []
    for path in (cluster.restore_test.smoke_log, cluster.restore_test.audit_log):
        if not os.path.exists(path):
            continue
        key = archive_key(cluster, run_id, os.path.basename(path))
        client.upload_file(path, cluster.s3.bucket, key)
        uris.append(f"s3://{cluster.s3.bucket}/{key}")
    return uris


def summary_text(cluster, line: dict) -> str:
    checks = ", ".join(f"{c['check']} {c['result']}" for c in line["checks"])
    age = line.get("backup_age_seconds")
    return (f":white_check_mark: *Restore test passed* - cluster `{cluster.name}` ({line['tool']})\n"
            f"*Backup:* `{line['backup_label']}` ({line['backup_time']}, age "
            f"{'%.1f h' % (age / 3600) if age is not None else '?'})\n"
            f"*RTO:* {line['restore_duration_seconds']} s restore\n*Checks:* {checks}\n"
            f"*Sign-off:* {line['signoff'].get('status')} by {line['signoff'].get('by') or '-'}")
