"""pgBackRest: its configuration, its command lines, and what its output means.

Every pgBackRest command line of the project is built here, for the DAG, the cron script, the
sandbox's ``archive_command`` and the restore test alike.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shlex
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from pg_backups import files, runner, times, versions
from pg_backups.errors import ConfigError, ToolError
from pg_backups.s3_access import S3Access

if TYPE_CHECKING:
    from pg_backups.config import Cluster

log = logging.getLogger(__name__)

BINARY = "pgbackrest"
# pgBackRest's exit codes that the project acts on, named as its build/error.yaml names them
# (option-invalid: 31 is OptionInvalidError in its messages); 2.45's list has no 33 to 36.
OPTION_INVALID_ERROR = 31
OPTION_INVALID_VALUE_ERROR = 32
OPTION_REQUIRED_ERROR = 37
FILE_OPEN_ERROR = 41  # "unable to open file ... for read"
LOCK_ACQUIRE_ERROR = 50  # "unable to acquire lock"
# pgBackRest refused its options: it did nothing, and running it again with the same
# configuration cannot succeed.
OPTION_ERRORS = (OPTION_INVALID_ERROR, OPTION_INVALID_VALUE_ERROR, OPTION_REQUIRED_ERROR)
# pgBackRest 2.45 rejects the runbook's `repo1-retention-archive-type=time` ("'time' is not
# allowed": it takes full, diff or incr). Left unset, archive retention follows the full backups
# that time-based retention keeps, which is what the runbook means: PITR across the 30 days.
RUNBOOK_ARCHIVE_RETENTION_NOTE = (
    "repo1-retention-archive-type=time (runbook) is not valid in pgBackRest 2.45; archive retention "
    "follows the full backups kept by repo1-retention-full-type=time")


def include_path(cluster: Cluster) -> str:
    return str(Path(cluster.pgbackrest.config_path).parent / "conf.d")


def block_incremental(cluster: Cluster, version: tuple[int, ...]) -> tuple[bool, str]:
    """Whether repo1-block goes into the file, and why (written beside it)."""
    pb = cluster.pgbackrest
    if not pb.block_incremental:
        return False, "repo1-block off: pgbackrest.block_incremental is false"
    if not pb.bundle:
        return False, "repo1-block off: it needs repo1-bundle (pgbackrest.bundle is false)"
    if version < versions.BLOCK_INCREMENTAL:
        return False, (f"repo1-block off: pgBackRest {versions.text(version)} has no block incremental "
                       f"(needs {versions.text(versions.BLOCK_INCREMENTAL)}+)")
    return True, "repo1-block: diff and incr backups store changed blocks, not whole files"


def render_config(cluster: Cluster, access: S3Access, version: tuple[int, ...]) -> str:
    """pgbackrest.conf for a cluster, without secrets (they go to :func:`render_credentials`), for
    the pgBackRest ``version`` of the host (the options it has)."""
    pb, s3 = cluster.pgbackrest, cluster.s3
    block, why = block_incremental(cluster, version)
    lines = [
        "# Written by pg_backups from the cluster configuration; edit that file, not this one.",
        f"# {RUNBOOK_ARCHIVE_RETENTION_NOTE}.",
        f"# For pgBackRest {versions.text(version)}; {why}.",
        "[global]",
        "repo1-type=s3",
        f"repo1-s3-bucket={s3.bucket}",
        f"repo1-s3-region={s3.region}",
        f"repo1-s3-endpoint={access.endpoint_host}",
        f"repo1-path={pb.repo_path}",
        "repo1-retention-full-type=time",
        f"repo1-retention-full={pb.retention_full_days}",
        f"process-max={pb.process_max}",
        f"compress-type={pb.compress_type}",
        *([f"compress-level={pb.compress_level}"] if pb.compress_level is not None else []),
        f"start-fast={'y' if pb.start_fast else 'n'}",
        f"archive-async={'y' if pb.archive_async else 'n'}",
        f"repo1-bundle={'y' if pb.bundle else 'n'}",
        *(["repo1-block=y"] if block else []),
        *([f"repo1-bundle-limit={pb.bundle_limit_kib}KiB"] if pb.bundle and pb.bundle_limit_kib else []),
        f"archive-timeout={pb.archive_timeout_seconds}",
        f"io-timeout={pb.io_timeout_seconds}",
        f"spool-path={pb.spool_path}",
        f"log-path={pb.log_path}",
        f"lock-path={pb.lock_path}",
        "log-level-console=info",
        "log-level-file=detail",
    ]
    if access.endpoint_port:
        lines.append(f"repo1-storage-port={access.endpoint_port}")
    if access.path_style:
        lines.append("repo1-s3-uri-style=path")
    if access.ca_file:
        lines.append(f"repo1-storage-ca-file={access.ca_file}")
    if not access.access_key:
        lines.append("repo1-s3-key-type=auto")  # instance role / IRSA: no keys on disk at all
    lines += ["", f"[{cluster.stanza}]", f"pg1-path={cluster.data_directory}", f"pg1-port={cluster.port}",
              f"pg1-user={cluster.user}"]
    if cluster.socket_directory:
        lines.append(f"pg1-socket-path={cluster.socket_directory}")
    return "\n".join(lines) + "\n"


def render_credentials(access: S3Access) -> str | None:
    if not access.access_key:
        return None
    lines = ["[global]", f"repo1-s3-key={access.access_key}", f"repo1-s3-key-secret={access.secret_key}"]
    if access.session_token:
        lines.append(f"repo1-s3-token={access.session_token}")
    return "\n".join(lines) + "\n"


def write_config(cluster: Cluster, access: S3Access) -> list[str]:
    """Write pgbackrest.conf (and its credentials include, 0600) when the project manages it."""
    pb = cluster.pgbackrest
    if not pb.manage_config:
        if not Path(pb.config_path).exists():
            raise ToolError(f"pgbackrest.config_path {pb.config_path} does not exist and manage_config is false",
                            fix="write it by hand or set pgbackrest.manage_config: true", retryable=False)
        return []
    text = render_config(cluster, access, versions.pgbackrest_version(BINARY))
    files.write_private(pb.config_path, text, cluster.os_user, 0o640)
    written = [pb.config_path]
    credentials = render_credentials(access)
    if credentials:
        path = Path(include_path(cluster)) / "s3-credentials.conf"
        files.write_private(path, credentials, cluster.os_user)
        written.append(str(path))
    for directory in (pb.spool_path, pb.log_path, pb.lock_path):
        files.ensure_dir(directory, cluster.os_user)
    return written


# --------------------------------------------------------------------------------------------
# Command lines


def command(cluster: Cluster, name: str, *options: str) -> list[str]:
    pb = cluster.pgbackrest
    argv = [BINARY, f"--config={pb.config_path}"]
    # The credentials include beside the file: always for the generated file, and for a file given
    # by hand (PG_BACKREST_CONFIG) when it has one, e.g. the generated file named by its path.
    if pb.manage_config or Path(include_path(cluster)).is_dir():
        argv.append(f"--config-include-path={include_path(cluster)}")
    return [*argv, f"--stanza={cluster.stanza}", *options, name]


# A probe of the configuration: pgBackRest checks a command's options when it starts, so running
# `backup` and `expire` against a repository that does not exist, with no database to reach, says
# whether the file's options are valid without touching the repository or the database.
PROBE_COMMANDS = ("backup", "expire")


def check_options(cluster: Cluster) -> None:
    """Refuse a hand-written pgbackrest.conf whose options pgBackRest rejects, naming the file, the
    line and the fix, before anything runs (the generated file is checked by the loader)."""
    pb = cluster.pgbackrest
    if pb.manage_config:
        return
    with tempfile.TemporaryDirectory(prefix="pgbackrest-probe-") as probe:
        os.chmod(probe, 0o777)  # the probe runs as the cluster's OS user
        env = {"PGBACKREST_REPO1_TYPE": "posix", "PGBACKREST_REPO1_PATH": f"{probe}/no-repository",
               "PGBACKREST_PG1_PATH": f"{probe}/no-data", "PGBACKREST_PG1_PORT": "1",
               "PGBACKREST_PG1_SOCKET_PATH": probe, "PGBACKREST_LOCK_PATH": probe, "PGBACKREST_LOG_PATH": probe,
               "PGBACKREST_LOG_LEVEL_FILE": "off", "PGBACKREST_LOG_LEVEL_CONSOLE": "error",
               "PGBACKREST_ARCHIVE_ASYNC": "n"}
        for name in PROBE_COMMANDS:
            proc = runner.run(command(cluster, name), env=env, os_user=cluster.os_user, timeout=60, check=False)
            output = proc.stdout + proc.stderr
            if proc.returncode in OPTION_ERRORS:
                raise option_error(pb.config_path, runner.last_error_line(output))
            if proc.returncode == FILE_OPEN_ERROR and pb.config_path in output:
                raise ConfigError(pb.config_path, "(file)", f"pgBackRest cannot read it as user "
                                  f"{cluster.os_user or 'running the task'}: {runner.last_error_line(output)}",
                                  "let that user read the file and reach its directory")


def option_error(config_path: str, line: str) -> ConfigError:
    """pgBackRest's refusal of an option, as a ConfigError naming the file's line and the fix."""
    match = re.search(r"'([a-z0-9-]+)' option|option '([a-z0-9-]+)'", line)
    option = (match.group(1) or match.group(2)) if match else None
    where = "(file)"
    if option:
        try:
            for number, text in enumerate(Path(config_path).read_text().splitlines(), start=1):
                if re.match(rf"\s*{re.escape(option)}\s*=", text):
                    where = f"line {number}: {text.strip()}"
                    break
        except OSError:
            pass
    fix = f"correct or remove {option or 'the option'} (see `pgbackrest help backup {option or ''}`)".strip()
    if option == "repo1-retention-archive-type":
        fix = ("use full, diff or incr, or remove the line: archive retention then follows the full backups kept "
               "(repo1-retention-full-type=time keeps the runbook's 30 days of PITR)")
    return ConfigError(config_path, where, f"pgBackRest refuses it: {line.removeprefix('ERROR: ')}", fix)


def archive_command(cluster: Cluster) -> str:
    """The archive_command fragment that pushes one WAL segment (``%p``) to the repository."""
    return shlex.join(command(cluster, "archive-push")) + " %p"


def run(cluster: Cluster, name: str, *options: str, timeout: float | None = None, check: bool = True, watch=None):
    try:
        return runner.run(command(cluster, name, *options), env=runner.pg_password_env(cluster), os_user=cluster.os_user,
                          timeout=timeout, check=check, watch=watch)
    except ToolError as exc:
        if exc.returncode in OPTION_ERRORS:
            exc.retryable = False
            exc.fix = exc.fix or (f"correct the option in {cluster.pgbackrest.config_path} (or the cluster "
                                  "configuration it is written from); retrying cannot help")
        raise


def backup_type_for(cluster: Cluster, day: datetime) -> str:
    """Full on the configured weekdays (of the run's logical date, UTC), the incremental type otherwise."""
    return "full" if times.weekday(day) in cluster.pgbackrest.full_backup_days else cluster.pgbackrest.incremental_type


# --------------------------------------------------------------------------------------------
# Operations


# `info` status codes that mean the stanza is not there yet: 1 missing stanza path, 3 missing
# stanza data. 2 ("no valid backups") is a stanza whose first backup is not done, maybe running now.
STANZA_MISSING_CODES = (1, 3)


def ensure_stanza(cluster: Cluster) -> str:
    """Create the stanza on the first run (stanza-create is idempotent), then prove archiving works."""
    info = parse_info(run(cluster, "info", "--output=json").stdout, cluster.stanza)
    created = False
    if not info or info.get("status", {}).get("code") in STANZA_MISSING_CODES:
        _stanza_create(cluster)
        created = True
    # `check` forces a WAL switch and waits for it to be archived: it catches the most reported
    # failure ("WAL segment was not archived before the timeout") before the backup does.
    run(cluster, "check")
    return "created" if created else "exists"


def _stanza_create(cluster: Cluster, wait_seconds: float = 180) -> None:
    """stanza-create, waiting out the archive lock: on a cluster that archived before its stanza
    existed, the asynchronous archive-push holds that lock while it retries (error [050])."""
    deadline = time.monotonic() + wait_seconds
    while True:
        proc = run(cluster, "stanza-create", check=False)
        if proc.returncode == 0:
            return
        output = proc.stdout + proc.stderr
        if proc.returncode == LOCK_ACQUIRE_ERROR and "Permission denied" in output:
            # [050] with EACCES is a permission problem, not another process: waiting cannot help.
            raise ToolError(f"pgbackrest stanza-create for stanza {cluster.stanza} cannot write its lock file: "
                            f"{runner.last_error_line(output)}", proc.returncode, output, retryable=False,
                            fix=f"give the user {cluster.os_user or 'running the task'} write access to "
                                f"{cluster.pgbackrest.lock_path}")
        if proc.returncode != LOCK_ACQUIRE_ERROR or time.monotonic() > deadline:
            raise ToolError(f"pgbackrest stanza-create failed for stanza {cluster.stanza}: "
                            f"{runner.last_error_line(output)}", proc.returncode)
        log.info("stanza-create: another pgBackRest process of stanza %s holds its lock (%s); retrying in 5 s",
                 cluster.stanza, runner.last_error_line(output))
        time.sleep(5)


def backup(cluster: Cluster, backup_type: str, run_id: str | None = None, timeout: float | None = None,
           run_type: str | None = None, watch=None) -> dict:
    """Take one backup, annotated with the Airflow run that made it (and its kind: scheduled,
    manual, backfill); a failed or interrupted backup raises, it is never reported as a success.

    pgBackRest resumes an interrupted backup of the same type by itself (``resume=y``).
    """
    options = [f"--type={backup_type}"]
    if run_id:
        options.append(f"--annotation=airflow_run_id={run_id}")
    if run_type:
        options.append(f"--annotation=airflow_run_type={run_type}")
    run(cluster, "backup", *options, timeout=timeout, watch=watch)
    latest = latest_backup(cluster)
    if latest is None or (run_id and latest.get("annotation", {}).get("airflow_run_id") != run_id):
        raise ToolError(f"pgbackrest backup exited 0 but info does not list the backup of run {run_id}")
    return latest


def expire(cluster: Cluster) -> None:
    run(cluster, "expire")


def verify_scope(label: str | None, version: tuple[int, ...]) -> list[str]:
    """``--set=<label>``: one backup (pgBackRest 2.55+); nothing: the whole repository."""
    if label and version >= versions.VERIFY_SET:
        return [f"--set={label}"]
    if label:
        log.info("pgBackRest %s has no verify --set (%s+): verifying the whole repository, backup %s included",
                 versions.text(version), versions.text(versions.VERIFY_SET), label)
    return []


def verify(cluster: Cluster, label: str | None = None) -> str:
    """pgbackrest verify of backup ``label`` (the one just taken) where pgBackRest can verify one
    backup, else of the whole repository (which grows with it: 35 s with 5 backups kept, 79 s with
    8, in the sandbox). Judged by its output: it has exited 0 while printing errors (#2502)."""
    scope = verify_scope(label, versions.pgbackrest_version(BINARY))
    proc = run(cluster, "verify", *scope, "--log-level-console=info", check=False)
    output = proc.stdout + proc.stderr
    problems = verify_problems(output)
    if proc.returncode != 0 or problems:
        what = f"backup {label} of stanza" if scope else "stanza"
        raise ToolError(f"pgbackrest verify found problems in {what} {cluster.stanza}: "
                               + ("; ".join(problems) or runner.last_error_line(output)), proc.returncode, output)
    return "ok"


def verify_problems(output: str) -> list[str]:
    """Lines of ``verify`` output that report a problem, and a missing success line."""
    problems = []
    for line in output.splitlines():
        text = line.strip()
        lowered = text.lower()
        if "command begin" in lowered:
            continue  # echoes the options, paths included
        if " warn: " in lowered or " error: " in lowered or lowered.startswith(("warn:", "error:")) \
                or "status: error" in lowered or "invalid" in lowered or "missing" in lowered:
            problems.append(text[:300])
    if "verify command end: completed successfully" not in output:
        problems.append("no 'verify command end: completed successfully' line")
    return problems


def async_archive_errors(cluster: Cluster) -> list[str]:
    """What asynchronous archive-push says went wrong: its ``<segment>.error`` and ``global.error``
    files in the spool (pgBackRest writes them when a push fails, before PostgreSQL hears of it)."""
    out = Path(cluster.pgbackrest.spool_path) / "archive" / cluster.stanza / "out"
    found = []
    for path in sorted(out.glob("*.error"))[:5]:
        try:
            lines = path.read_text(errors="replace").splitlines()
        except OSError:
            continue
        found.append(f"{path.name}: {' '.join(line.strip() for line in lines[1:3])}"[:300])
    return found


def repository_path(cluster: Cluster) -> str:
    """Where the stanza's backups live in the bucket (pg_backups.tools)."""
    return cluster.pgbackrest.repo_path.strip("/") + f"/backup/{cluster.stanza}"


def retention_days(cluster: Cluster) -> int:
    return cluster.pgbackrest.retention_full_days


def info(cluster: Cluster) -> dict:
    return parse_info(run(cluster, "info", "--output=json").stdout, cluster.stanza)


def parse_info(text: str, stanza: str) -> dict:
    """The stanza's entry of ``info --output=json`` ({} when absent); raises on unreadable output."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ToolError(f"pgbackrest info did not return JSON ({exc}): {text[:200]!r}") from None
    if not isinstance(data, list):
        raise ToolError(f"pgbackrest info returned {type(data).__name__}, expected a list of stanzas")
    for entry in data:
        if isinstance(entry, dict) and entry.get("name") == stanza:
            return entry
    return {}


def newest_good(stanza_info: dict, label: str | None = None, finished_before: datetime | None = None) -> dict | None:
    """The one rule for "the newest good backup": no error, the given label if any, finished
    before ``finished_before`` if given (a PITR target), and the latest stop time among those."""
    good = [b for b in (stanza_info or {}).get("backup", []) if not b.get("error")
            and (label is None or b["label"] == label)
            and (finished_before is None or times.utc(b["timestamp"]["stop"]) <= finished_before)]
    return max(good, key=lambda b: b["timestamp"]["stop"]) if good else None


def oldest_good_stop(stanza_info: dict) -> datetime | None:
    """Where the recovery window begins: the stop time of the oldest good backup kept (the first
    consistent point; WAL from there on is kept with it)."""
    stops = [times.utc(b["timestamp"]["stop"]) for b in (stanza_info or {}).get("backup", []) if not b.get("error")]
    return min(stops) if stops else None


def latest_backup(cluster: Cluster, stanza_info: dict | None = None) -> dict | None:
    return newest_good(info(cluster) if stanza_info is None else stanza_info)


def backup_record(cluster: Cluster, backup_entry: dict, stanza_info: dict) -> dict:
    """What a restore test and a dashboard need, in the form both tools publish."""
    start, stop = backup_entry["timestamp"]["start"], backup_entry["timestamp"]["stop"]
    archive = backup_entry.get("archive") or {}
    return {
        "cluster": cluster.name,
        "tool": "pgbackrest",
        "label": backup_entry["label"],
        "type": backup_entry["type"],
        "start_time": times.iso(start),
        "stop_time": times.iso(stop),
        "duration_seconds": stop - start,
        "database_size_bytes": backup_entry.get("info", {}).get("size"),
        "backup_size_bytes": backup_entry.get("info", {}).get("delta"),
        "repo_size_bytes": backup_entry.get("info", {}).get("repository", {}).get("delta"),
        "wal_start": archive.get("start"),
        "wal_stop": archive.get("stop"),
        "airflow_run_id": (backup_entry.get("annotation") or {}).get("airflow_run_id"),
        "airflow_run_type": (backup_entry.get("annotation") or {}).get("airflow_run_type"),
        "backup_count": len(stanza_info.get("backup", [])),
    }


def restore_lock_path(cluster: Cluster, copy: str = "restored-copy") -> str:
    """The lock path of a restored copy (staging; ``copy`` names another kind, e.g. the
    verification drill's target, so that two copies on one host never share it): apart from production's.

    pgBackRest's asynchronous archive-get (the restored copy's ``restore_command``) and asynchronous
    archive-push (production's ``archive_command``) take the same lock, ``<lock-path>/<stanza>-
    archive.lock``. With one lock path, a restore test on the database host stalled production's
    WAL archiving for as long as staging's recovery fetched WAL: a backup running beside it failed
    with ``[082] WAL segment ... was not archived before the 120000ms timeout``."""
    return str(Path(cluster.pgbackrest.lock_path) / copy)


def restore(cluster: Cluster, target_directory: str, *, set_label: str | None = None, target_time: str | None = None,
            timeout: float | None = None, copy: str = "restored-copy") -> None:
    """Restore into another directory. Archiving stays off there: staging never writes to the repo.
    ``--lock-path`` on the command line goes into the ``restore_command`` that pgBackRest writes
    there, so that the copy's archive-get never takes production's archive lock (nor, with its
    own ``copy`` name, another copy's)."""
    lock_path = restore_lock_path(cluster, copy)
    files.ensure_dir(lock_path, cluster.os_user)
    options = [f"--pg1-path={target_directory}", "--archive-mode=off", f"--lock-path={lock_path}"]
    if set_label:
        options.append(f"--set={set_label}")
    if target_time:
        options += ["--type=time", f"--target={target_time}", "--target-action=promote"]
    run(cluster, "restore", *options, timeout=timeout)
