"""WAL-G's supporting pieces that need no binary: finding one, the runner's watchdog, a dead
staging server's FATAL line, WAL names from LSNs, the archiving verdict."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

import sandbox as sandbox_module
from pg_backups import archiving, runner, staging, walg
from pg_backups.errors import ArchivingBroken, ToolError

REPO = Path(__file__).resolve().parents[2]


def executable(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\necho 'wal-g version v3.0.9\tabc\t2026.11.25\tPostgreSQL'\n")
    path.chmod(0o755)
    return path


def test_walg_is_found_at_walg_bin_then_tools_then_path(tmp_path, monkeypatch):
    given, local, on_path = (executable(tmp_path / d / "wal-g") for d in ("given", "tools", "path"))
    monkeypatch.setattr(sandbox_module, "WALG_LOCAL", local)
    env = {"PATH": str(on_path.parent)}
    assert sandbox_module.find_walg({**env, "WALG_BIN": str(given)}) == given
    assert sandbox_module.find_walg(env) == local
    local.unlink()
    assert sandbox_module.find_walg(env) == on_path
    assert sandbox_module.find_walg({"PATH": str(tmp_path / "nowhere")}) is None
    with pytest.raises(SystemExit, match="WALG_BIN=.* is not an executable file"):
        sandbox_module.find_walg({**env, "WALG_BIN": str(tmp_path / "missing")})


def test_without_a_binary_one_line_says_how_to_provide_one(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    if (REPO / ".tools" / "bin" / "wal-g").exists():
        pytest.fail(".tools/bin/wal-g exists in this checkout: this test needs a checkout without one")
    proc = subprocess.run([sys.executable, REPO / "sandbox" / "sandbox.py", "walg"], env=env, text=True,
                          capture_output=True)
    assert proc.returncode == 1
    assert proc.stdout.splitlines() == [sandbox_module.WALG_MISSING]
    assert "WALG_BIN" in proc.stdout and ".tools/bin/wal-g" in proc.stdout
    setup = (REPO / "bin" / "setup").read_text()
    assert "go install" not in setup and "sandbox.py walg" in setup  # nothing builds WAL-G; one line says why


def test_watch_stops_a_tool_that_cannot_finish_and_raises_its_reason():
    calls = []

    def watch():
        calls.append(time.monotonic())
        if len(calls) >= 2:
            raise ArchivingBroken("WAL archiving is broken", fix="repair it")

    started = time.monotonic()
    with pytest.raises(ArchivingBroken) as caught:
        runner.run(["sleep", "60"], watch=watch, watch_interval=0.3)
    assert time.monotonic() - started < 20
    assert str(caught.value).startswith("WAL archiving is broken (sleep stopped after ")
    assert str(caught.value).endswith("Fix: repair it")


def test_watch_that_finds_nothing_lets_the_tool_finish():
    proc = runner.run(["sh", "-c", "sleep 0.5; echo done"], watch=lambda: None, watch_interval=0.1)
    assert proc.stdout.strip() == "done" and proc.returncode == 0
    with pytest.raises(ToolError, match="did not finish within 0 s"):
        runner.run(["sleep", "5"], timeout=0.3, watch=lambda: None, watch_interval=0.1)


def test_last_fatal_line_of_staging_log(tmp_path, make_cluster):
    cluster = make_cluster({"data_directory": "/srv/prod",
                             "restore_test": {"staging_root": str(tmp_path),
                                              "staging_data_directory": str(tmp_path / "data")}})
    (tmp_path / "data").mkdir()
    assert staging.last_fatal_line(cluster) is None
    (tmp_path / "data" / "staging_startup.log").write_text(
        "LOG:  starting point-in-time recovery to 2026-11-25 09:00:00+00\n"
        "FATAL:  could not connect earlier\n"
        "LOG:  restored log file \"000000010000000000000007\" from archive\n"
        "FATAL:  recovery ended before configured recovery target was reached\n"
        "LOG:  startup process (PID 42) exited with exit code 1\n")
    fatal = staging.last_fatal_line(cluster)
    assert fatal == "FATAL:  recovery ended before configured recovery target was reached"
    assert staging.unreachable_target(fatal)
    with pytest.raises(ToolError, match="stopped during recovery: WAL segment 000000010000000000000008 is missing")\
            as caught:
        staging.wait_recovery_end(cluster, timeout=60)  # no postmaster.pid: not running
    assert "FATAL:  recovery ended before configured recovery target was reached" in str(caught.value)
    assert not caught.value.retryable


def test_wal_file_name_is_pg_walfile_name():
    assert walg.wal_file_name(1, 100663552) == "000000010000000000000006"  # 0/6000100
    assert walg.wal_file_name(1, "0/6000000") == "000000010000000000000005"  # a boundary: the segment before
    assert walg.wal_file_name(2, "1/2000028") == "000000020000000100000002"
    assert walg.wal_file_name(1, None) is None


def test_archiving_problem_verdicts(make_cluster):
    ok = {"archive_mode": "on", "last_archived_time": "2026-11-25 09:00:00+00", "last_failed_time": None}
    assert archiving.problem(ok) is None
    failing = {**ok, "last_failed_time": "2026-11-25 09:01:00+00", "last_failed_wal": "000000010000000000000007",
               "failed_count": "3", "ready_count": "2"}
    assert "archive_command is failing" in archiving.problem(failing)
    assert "segment 000000010000000000000007" in archiving.problem(failing)
    assert "archive_mode is off" in archiving.problem({**ok, "archive_mode": "off"})
    both = make_cluster()
    assert "pgBackRest stanza" in archiving.fix(both)
    assert "pgBackRest stanza" not in archiving.fix(make_cluster({"tools": ["walg"],
                                                                  "restore_test": {"tool": "walg"}}))


# What wal-g v3.0.9 printed for `backup-list` with its S3 endpoint refusing connections (the lines
# kept from a real run; tests/sandbox/test_walg_sandbox.py runs the binary itself when one is found).
WALG_S3_REFUSED = """\
INFO: 2026/11/30 14:53:55.171636 List backups from storages: [default]
INFO: 2026/11/30 14:53:55.821777 Retrying S3 request due to transient network error: RequestError: send request failed
caused by: Get "https://127.0.0.1:9/b?delimiter=%2F&list-type=2&prefix=p%2Fbasebackups_005%2F": dial tcp 127.0.0.1:9: connect: connection refused
ERROR: 2026/11/30 14:53:55.821893 Get backups from folder: list folder in storage "default": failed to list s3 folder: 'p/basebackups_005/': RequestError: send request failed
caused by: Get "https://127.0.0.1:9/b?delimiter=%2F&list-type=2&prefix=p%2Fbasebackups_005%2F": dial tcp 127.0.0.1:9: connect: connection refused
"""


def test_walg_error_summary_keeps_the_aws_cause_and_names_the_endpoint_recorded_sample():
    message, fix = runner.failure_summary(["runuser", "-u", "postgres", "--", "/usr/local/bin/wal-g", "--config",
                                           "/etc/wal-g/walg.json", "backup-list", "--json"], 1, WALG_S3_REFUSED)
    assert message.startswith("wal-g backup-list failed (exit 1): Get backups from folder")  # no log timestamp
    assert message.endswith("dial tcp 127.0.0.1:9: connect: connection refused")  # the cause, after '; cause:'
    assert "; cause: Get " in message
    assert fix.startswith("127.0.0.1:9 is unreachable from this host")
