"""File modes that do not depend on the caller's umask, and the sandbox's Slack receiver keeping the
webhook's token out of what it stores."""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from pg_backups import files, pgbackrest
from pg_backups.s3_access import S3Access

REPO = Path(__file__).resolve().parents[2]


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture
def umask_077():
    old = os.umask(0o077)
    try:
        yield
    finally:
        os.umask(old)


def test_tool_directories_are_reachable_whatever_the_umask(tmp_path, umask_077):
    """Under umask 077 the parents came out 0700 root, and pgBackRest (as postgres) failed."""
    files.ensure_dir(tmp_path / "pgbackrest" / "spool", None)
    assert mode(tmp_path / "pgbackrest") == 0o755 and mode(tmp_path / "pgbackrest" / "spool") == 0o750


def test_generated_configuration_modes_whatever_the_umask(tmp_path, umask_077, make_cluster):
    cluster = make_cluster({"pgbackrest": {
        "config_path": str(tmp_path / "etc" / "pgbackrest" / "asso" / "pgbackrest.conf"),
        "spool_path": str(tmp_path / "spool"), "log_path": str(tmp_path / "log"), "lock_path": str(tmp_path / "lock")}})
    written = pgbackrest.write_config(cluster, S3Access(region="eu-west-3", access_key="AKIAEXAMPLE",
                                                        secret_key="not-a-real-secret-value"))
    config, credentials = (Path(p) for p in written)
    assert mode(config) == 0o640 and mode(credentials) == 0o600  # the keys: owner only
    assert mode(tmp_path / "etc") == 0o755 and mode(tmp_path / "etc" / "pgbackrest") == 0o755
    for directory in ("spool", "log", "lock"):
        assert mode(tmp_path / directory) == 0o750


def test_sandbox_tls_directory_is_readable_by_the_tools_whatever_the_umask(tmp_path, umask_077):
    sys.path.insert(0, str(REPO / "sandbox"))
    import sandbox

    layout = sandbox.Layout(tmp_path / "sandbox", 26990)
    layout.root.mkdir()
    sandbox.ensure_tls(layout)
    assert mode(layout.tls) == 0o755 and mode(layout.ca_file) == 0o644 and mode(layout.tls / "key.pem") == 0o600


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_slack_receiver_stores_no_token_and_only_for_its_owner(tmp_path, umask_077):
    os.umask(0o022)  # a permissive umask: the file must still come out 0600
    port, out = free_port(), tmp_path / "messages.jsonl"
    receiver = subprocess.Popen([sys.executable, str(REPO / "sandbox" / "slack_receiver.py"), "--port", str(port),
                                 "--out", str(out)])
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "receiver did not start"
                time.sleep(0.2)
        request = urllib.request.Request(f"http://127.0.0.1:{port}/services/T0AAA/B0BBB/secretTOKENvalue42",
                                         data=json.dumps({"text": "hello"}).encode(),
                                         headers={"Content-Type": "application/json"})
        assert urllib.request.urlopen(request, timeout=10).read() == b"ok"
    finally:
        receiver.terminate()
        receiver.wait(timeout=10)
    stored = out.read_text()
    assert "secretTOKENvalue42" not in stored and "T0AAA" not in stored
    assert json.loads(stored)["path"] == "/services/***" and json.loads(stored)["body"] == {"text": "hello"}
    assert mode(out) == 0o600
