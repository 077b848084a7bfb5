"""The sandbox's own lifecycle: up and down are idempotent, a restart keeps the data, and down
leaves no stray process. Uses a second sandbox on ports of its own (session base + 20)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import sandbox as sb
from conftest import PORT_BASE, REPO

pytestmark = [pytest.mark.sandbox, pytest.mark.slow]


@pytest.fixture()
def layout():
    # Not under pytest's tmp_path: that is root-only (0700) and PostgreSQL runs as postgres.
    layout = sb.Layout(Path(f"/var/tmp/pg-backups-lifecycle-{PORT_BASE}"), PORT_BASE + 20)
    yield layout
    run(layout, "destroy")


def run(layout, action):
    env = {**os.environ, "SANDBOX_DIR": str(layout.root), "SANDBOX_PORT_BASE": str(layout.port_base)}
    return subprocess.run([sys.executable, REPO / "sandbox" / "sandbox.py", action], env=env, text=True,
                          capture_output=True, timeout=300)


def pids(layout):
    return {name: sb.pid_alive(layout.run_dir / f"{name}.pid") for name in ("moto", "stunnel", "slack_receiver")}


def test_up_down_restart_are_idempotent_and_leave_nothing_behind(layout):
    first = run(layout, "up")
    assert first.returncode == 0, first.stdout + first.stderr
    started = pids(layout)
    assert all(started.values()), started
    assert run(layout, "status").returncode == 0
    assert (layout.env_file.stat().st_mode & 0o777) == 0o600  # it holds the sandbox's secrets

    again = run(layout, "up")
    assert again.returncode == 0, again.stderr
    assert pids(layout) == started  # nothing started twice
    assert sb.psql(layout, "SELECT count(*) FROM members") == "3000"

    assert run(layout, "down").returncode == 0
    assert run(layout, "down").returncode == 0
    for pid in started.values():
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    for port in (layout.pg_port, layout.moto_port, layout.s3_tls_port, layout.slack_port):
        assert not sb.port_open(port), port
    assert run(layout, "status").returncode == 1

    restarted = run(layout, "up")
    assert restarted.returncode == 0, restarted.stderr
    assert sb.psql(layout, "SELECT count(*) FROM members") == "3000"  # the data survived the restart
    assert "seeded" not in restarted.stdout


def test_a_taken_port_is_a_clear_error(layout):
    import socket

    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", layout.moto_port))
        blocker.listen()
        result = run(layout, "up")
    assert result.returncode != 0
    assert f"port {layout.moto_port}" in result.stdout + result.stderr and "SANDBOX_PORT_BASE" in result.stdout + result.stderr
