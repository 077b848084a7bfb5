"""Running the backup tools: one place that builds the process, its environment and its log lines.

Secrets reach the tools through the environment only (never argv, which ``ps`` shows to every
user), and every line logged or raised passes through :func:`redact` first.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shlex
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path

from pg_backups.errors import PgBackupsError, ToolError

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


def as_user(argv: list[str], os_user: str | None) -> list[str]:
    """Run as the cluster's OS user when we are root (the tools must own what they write)."""
    if os_user and os.geteuid() == 0:
        # runuser keeps the environment we pass (secrets included) and never asks for a password.
        return ["runuser", "-u", os_user, "--", *argv]
    return argv


def run(argv: list[str], *, env: dict | None = None, os_user: str | None = None, timeout: float | None = None,
        check: bool = True, cwd: str | None = None, input_text: str | None = None, watch=None,
        watch_interval: float = 10.0, quiet: bool = False) -> subprocess.CompletedProcess:
    """Run a tool, log its command and output (redacted), raise :class:`ToolError` on failure.

    ``watch``: called every ``watch_interval`` seconds while the tool runs; when it raises (a
    :class:`PgBackupsError` saying why the tool cannot finish, e.g. it waits on a broken WAL
    archiving), the tool is stopped and that error is raised. ``quiet``: log at debug level (the
    watchdog's own queries)."""
    level = logging.DEBUG if quiet else logging.INFO
    full_env = {**os.environ, **(env or {})}
    secrets = secrets_of(full_env)
    argv = as_user([str(a) for a in argv], os_user)
    shown = redact(shlex.join(argv), secrets)
    log.log(level, "running: %s", shown)
    started = time.monotonic()
    try:
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
                raise ToolError(f"{shown} did not finish within {timeout:.0f} s", None, output) from None
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
        raise ToolError(f"{shown} failed with exit code {proc.returncode}: {last_error_line(output)}",
                        proc.returncode, output)
    return proc


def _stop(proc: subprocess.Popen, grace: float = 15.0) -> tuple[str, str]:
    """Stop a tool (SIGTERM, then SIGKILL): runuser passes SIGTERM on to the tool it runs."""
    proc.terminate()
    try:
        return proc.communicate(timeout=grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.communicate()


def psql_command(cluster, host: str | None, port: int, dbname: str, sql: str) -> list[str]:
    """The one psql command line: unaligned, quiet, stops at the first error."""
    return [str(Path(cluster.bin_directory) / "psql"), "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1",
            *(["-h", host] if host else []), "-p", str(port), "-U", cluster.user, "-d", dbname, "-c", sql]


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
def cluster_lock(lock_dir: str | os.PathLike, cluster: str, timeout: float = 6 * 3600, poll: float = 5.0):
    """One backup at a time per cluster, across DAGs and cron: a second caller waits, it does not fail.

    The Airflow pool keeps the slot in the scheduler; this lock also covers cron scripts and
    runs that bypass the scheduler (``airflow dags test``).
    """
    path = Path(lock_dir) / f"{cluster}.backup.lock"
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
                    raise ToolError(f"another backup of cluster {cluster} still holds {path} after {timeout:.0f} s") from None
                if not waited:
                    log.info("another backup of cluster %s is running; waiting for %s", cluster, path)
                    waited = True
                time.sleep(poll)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
