"""Running the backup tools: one place that builds the process, its environment and its log lines.

Secrets reach the tools through the environment only (never argv, which ``ps`` shows to every
user), and every line logged or raised passes through :func:`redact` first. A tool gets only what
it needs: the few variables of :data:`BASE_ENV` (no secret among them) plus what its caller hands
it (WAL-G its own S3 keys; a database password only to what connects over TCP). The worker's
other secrets (Airflow connections, the Slack webhook, AWS keys) never reach a tool's process,
where any process of the tool's OS user could read them in ``/proc/<pid>/environ``.
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import shlex
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from pg_backups.errors import PgBackupsError, ToolError

if TYPE_CHECKING:
    from pg_backups.config import Cluster

log = logging.getLogger(__name__)

# Environment variables whose values are secrets, wherever they come from.
SECRET_ENV = ("PGPASSWORD", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ACCESS_KEY_ID",
              "PGBACKREST_REPO1_S3_KEY", "PGBACKREST_REPO1_S3_KEY_SECRET", "PGBACKREST_REPO1_S3_TOKEN",
              "PGBACKREST_REPO1_CIPHER_PASS", "WALG_PGP_KEY_PASSPHRASE", "WALG_LIBSODIUM_KEY")


def redact(text: str, secrets) -> str:
    """``text`` with every value of ``secrets`` replaced by ``***`` (longest first)."""
    for value in sorted(secrets or (), key=len, reverse=True):
        text = text.replace(value, "***")
    return text


def secrets_of(env: dict) -> set[str]:
    return {env[k] for k in SECRET_ENV if env.get(k) and len(env[k]) >= 4}


# What every tool inherits from the worker: the search path, the locale, libpq's non-secret settings.
BASE_ENV = ("PATH", "HOME", "LANG", "LANGUAGE", "LC_ALL", "LC_CTYPE", "LC_MESSAGES", "TZ", "TMPDIR", "PGHOST",
            "PGPORT", "PGUSER", "PGDATABASE", "PGSSLMODE", "PGSSLROOTCERT", "PGCONNECT_TIMEOUT", "PGPASSFILE")


def tool_env(extra: dict | None = None) -> dict:
    env = {key: os.environ[key] for key in BASE_ENV if key in os.environ}
    env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
    return {**env, **(extra or {})}


def pg_password_env(cluster: Cluster) -> dict:
    """PGPASSWORD for a tool that connects to the cluster over TCP (a socket uses peer
    authentication and needs none): only there, and only when it is set."""
    if cluster.socket_directory or not os.environ.get("PGPASSWORD"):
        return {}
    return {"PGPASSWORD": os.environ["PGPASSWORD"]}


def as_user(argv: list[str], os_user: str | None) -> list[str]:
    """Run as the cluster's OS user when we are root (the tools must own what they write)."""
    if os_user and os.geteuid() == 0:
        # runuser keeps the environment we pass (secrets included) and never asks for a password.
        return ["runuser", "-u", os_user, "--", *argv]
    return argv


def run(argv: list[str], *, env: dict | None = None, os_user: str | None = None, timeout: float | None = None,
        check: bool = True, cwd: str | None = None, input_text: str | None = None, watch=None,
        watch_interval: float = 10.0, quiet: bool = False) -> subprocess.CompletedProcess:
    """Run a tool with :func:`tool_env` plus ``env``; log its command and output (redacted); raise
    :class:`ToolError` on failure, saying what failed and why, not how it was called.

    ``watch``: called every ``watch_interval`` seconds while the tool runs; when it raises (a
    :class:`PgBackupsError` saying why the tool cannot finish, e.g. it waits on a broken WAL
    archiving), the tool is stopped and that error is raised. ``quiet``: log at debug level (the
    watchdog's own queries)."""
    level = logging.DEBUG if quiet else logging.INFO
    full_env = tool_env(env)
    secrets = secrets_of({**os.environ, **full_env})
    argv = as_user([str(a) for a in argv], os_user)
    shown = redact(shlex.join(argv), secrets)
    log.log(level, "running: %s", shown)
    started = time.monotonic()
    try:
        # The tool stays in our process group (no start_new_session): Airflow puts each task in a group
        # of its own and signals the whole group when the run is marked failed (SIGTERM, SIGKILL 5 s
        # later), so a cancelled backup or restore stops with its task, never left running.
        proc = subprocess.Popen(argv, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=cwd,
                                stdin=subprocess.PIPE if input_text is not None else subprocess.DEVNULL)
    except FileNotFoundError:
        raise ToolError(f"{argv[0]} is not installed or not on PATH (running: {shown})") from None
    deadline = None if timeout is None else started + timeout
    while True:
        wait = watch_interval if watch else None
        if deadline is not None:
            wait = max(0.0, deadline - time.monotonic()) if wait is None else min(wait, max(0.0, deadline - time.monotonic()))
        try:
            stdout, stderr = proc.communicate(input_text, timeout=wait)
            break
        except subprocess.TimeoutExpired:
            if deadline is not None and time.monotonic() >= deadline:
                output = redact("".join(_stop(proc)), secrets)
                raise ToolError(f"{describe(argv)} did not finish within {timeout:.0f} s", None, output) from None
            try:
                watch()
            except PgBackupsError as exc:
                output = redact("".join(_stop(proc)), secrets)
                for line in output.splitlines():
                    log.info("  %s", line)
                log.error("stopped %s after %.0f s: %s", shown, time.monotonic() - started, exc)
                # The reason first: an alert shows the first 400 characters, and the command line is logged above.
                tool = Path(argv[argv.index("--") + 1] if "--" in argv else argv[0]).name
                exc.problem = exc.head = f"{exc.head} ({tool} stopped after {time.monotonic() - started:.0f} s)"
                raise
    output = redact((stdout or "") + (stderr or ""), secrets)
    for line in output.splitlines():
        log.log(level, "  %s", line)
    log.log(level, "exit %s after %.1f s", proc.returncode, time.monotonic() - started)
    proc = subprocess.CompletedProcess(argv, proc.returncode, redact(stdout or "", secrets), redact(stderr or "", secrets))
    if check and proc.returncode != 0:
        message, fix = failure_summary(argv, proc.returncode, output)
        raise ToolError(message, proc.returncode, output, fix=fix)
    return proc


def _stop(proc: subprocess.Popen, grace: float = 15.0) -> tuple[str, str]:
    """Stop a tool (SIGTERM, then SIGKILL): runuser passes SIGTERM on to the tool it runs."""
    proc.terminate()
    try:
        return proc.communicate(timeout=grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.communicate()


_ERROR_LINE = re.compile(r"\b(?:ERROR|FATAL):\s*(?:\[(\d{3})\]:\s*)?(.*)")
_CAUSE_LINE = re.compile(r"^\s+\[?(\w+Error)\]?:?\s+(.*)")
_CAUSED_BY = re.compile(r"^caused by:\s*(.*)")  # the AWS SDK's line under WAL-G's error
_GO_LOG_TIME = re.compile(r"^\d{4}/\d\d/\d\d \d\d:\d\d:\d\d(?:\.\d+)? ")  # WAL-G's "ERROR: 2026/11/30 14:53:55.82 ..."
# pgBackRest: "unable to connect to 'host:443 (127.0.0.1)'"; Go (WAL-G): "dial tcp 127.0.0.1:443: connect: ..."
_ENDPOINT = re.compile(r"unable to connect to '([^'\s]+?)(?: \([^)]*\))?'|dial tcp (\S+?): ")
# pgBackRest's backup and check wait for WAL archiving ([082]): its "timeout" is not the network's.
_ARCHIVE_TIMEOUT = re.compile(r"WAL segment \S+ was not archived before the \S+ timeout")
_UNREACHABLE = ("Connection refused", "HostConnectError", "No route to host", "timed out", "timeout",
                "could not resolve", "Name or service not known", "connection reset")


def describe(argv: list[str]) -> str:
    """``pgbackrest backup``, ``wal-g backup-push``, ``psql``: the tool and its command, no options."""
    if argv[:1] == ["runuser"] and "--" in argv:
        argv = argv[argv.index("--") + 1:]
    name = os.path.basename(argv[0])
    words = [a for a in argv[1:] if not a.startswith(("-", "/", "%")) and "=" not in a]
    if name == "pgbackrest" and words:
        return f"pgbackrest {words[-1]}"  # its command comes after its options
    return f"{name} {words[0]}" if words and name != "psql" else name


def failure_summary(argv: list[str], returncode: int, output: str) -> tuple[str, str | None]:
    """What failed, the tool's own error (its code first) and the cause it gave on the lines after,
    and a fix when the cause says one: e.g. for pgBackRest with S3 down,
    ``pgbackrest backup failed: [049] unable to load info file ...; cause: HostConnectError: unable to
    connect to 'host:443': [111] Connection refused``. The command line is in the log, not here."""
    lines = output.splitlines()
    code = text = cause = None
    for index, line in enumerate(lines):
        match = _ERROR_LINE.search(line)
        if not match:
            continue
        code, text = match.group(1), _GO_LOG_TIME.sub("", match.group(2).strip())
        for following in lines[index + 1:]:
            caused_by = _CAUSED_BY.match(following)
            if caused_by:
                cause = caused_by.group(1).strip()
                break
            if not following.startswith((" ", "\t")):
                break
            found = _CAUSE_LINE.match(following)
            if found:
                cause = f"{found.group(1)}: {found.group(2).strip()}"
                break
        break  # the first error is the cause; later ones summarise it ("encountered 1 error(s)")
    if text is None:
        text = last_error_line(output)
    message = f"{describe(argv)} failed (exit {returncode}): " + (f"[{code}] " if code else "") + text[:300].rstrip(":")
    if cause:
        message += f"; cause: {cause[:300]}"
    fix = None
    if _ARCHIVE_TIMEOUT.search(text):
        fix = ("PostgreSQL did not archive the backup's last WAL segment in time: check pg_stat_archiver "
               "(failed_count, last_failed_wal), the archive_command's errors in the PostgreSQL log and the "
               "tool's archive-push log; the freshness DAG's check_wal_archiving says what fails")
    elif any(word.lower() in (cause or text).lower() for word in _UNREACHABLE):
        endpoint = _ENDPOINT.search(cause or text)
        fix = (f"{endpoint.group(1) or endpoint.group(2) if endpoint else 'the endpoint'} is unreachable from this host: check that "
               "the S3 endpoint (or database) is up and that the network lets this host reach it")
    return message, fix


def psql_command(cluster: Cluster, host: str | None, port: int, dbname: str, sql: str) -> list[str]:
    """The one psql command line: unaligned, quiet, stops at the first error."""
    from pg_backups.versions import bin_directory  # versions runs its commands through this module

    return [str(Path(bin_directory(cluster)) / "psql"), "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1",
            *(["-h", host] if host else []), "-p", str(port), "-U", cluster.user, "-d", dbname, "-c", sql]


# Database ``postgres``: always there, in every cluster.
PRODUCTION_DATABASE = "postgres"


def production_psql(cluster: Cluster, sql: str, *, timeout: float = 60, check: bool = True, quiet: bool = False,
                    connect_timeout: int | None = None) -> subprocess.CompletedProcess:
    """The one path to production SQL (the login check, the archiving pre-check and watchdog, the
    marker row): psql as the cluster's OS user, to its socket directory or, over TCP, to its host
    with PGPASSWORD when one is given (:func:`pg_password_env`; it reaches this process only, and
    :func:`run` redacts it). Each caller used to build its own call, and one forgot the password:
    over TCP with a password-only pg_hba it failed with ``fe_sendauth: no password supplied``."""
    env = pg_password_env(cluster)
    if connect_timeout is not None:
        env["PGCONNECT_TIMEOUT"] = str(connect_timeout)
    argv = psql_command(cluster, cluster.socket_directory or cluster.host, cluster.port, PRODUCTION_DATABASE, sql)
    return run(argv, env=env, os_user=cluster.os_user, timeout=timeout, check=check, quiet=quiet)


def production_sql(cluster: Cluster, sql: str, *, timeout: float = 60, quiet: bool = False) -> str:
    """What :func:`production_psql` prints, stripped; a :class:`ToolError` when psql fails."""
    return production_psql(cluster, sql, timeout=timeout, quiet=quiet).stdout.strip()


def last_error_line(output: str) -> str:
    """The line that says why: pgBackRest prints 'ERROR: [code]: ...', WAL-G 'ERROR: ...'."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    # The tool's own "ERROR: [064]: unable to write ..." first: pgBackRest follows it with lines
    # such as "[FileWriteError] on retry after 15000ms" that name no cause.
    for line in reversed(lines):
        if "ERROR:" in line or "FATAL:" in line:
            return line[:500]
    for line in reversed(lines):
        if "ERROR" in line or "FATAL" in line or "error" in line.lower():
            return line[:500]
    return lines[-1][:500] if lines else "(no output)"


@contextmanager
def cluster_lock(lock_dir: str | os.PathLike, cluster: str, timeout: float = 6 * 3600, poll: float = 5.0,
                 kind: str = "backup"):
    """One backup at a time per cluster, across DAGs and cron: a second caller waits, it does not fail.

    The Airflow pool keeps the slot in the scheduler; this lock also covers cron scripts and
    runs that bypass the scheduler (``airflow dags test``). ``kind`` ``restore``: held while a
    restore writes staging, so that the restore test's teardown waits until no restore process is
    left before it releases staging. An flock: the kernel drops it with the process that holds
    it, however it ends (a task killed by Airflow included).
    """
    path = Path(lock_dir) / f"{cluster}.{kind}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        deadline = time.monotonic() + timeout
        waited = False
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise ToolError(f"another {kind} of cluster {cluster} still holds {path} after {timeout:.0f} s") from None
                if not waited:
                    log.info("another %s of cluster %s is running; waiting for %s", kind, cluster, path)
                    waited = True
                time.sleep(poll)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
