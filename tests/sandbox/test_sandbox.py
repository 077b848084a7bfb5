"""The sandbox's own lifecycle: up and down are idempotent, a restart keeps the data, and down
leaves no stray process. Uses a second sandbox on ports of its own (session base + 20)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import sandbox as sb
from support import PORT_BASE, REPO

sandbox_test = [pytest.mark.sandbox, pytest.mark.slow]


def hand_added(layout, name="reporting", port=5433) -> str:
    """A cluster entry as a user adds it to the sandbox's clusters.yaml (README, the local sandbox)."""
    return (f"  - name: {name}   # added by hand\n    port: {port}\n    data_directory: /srv/{name}\n    tools: [pgbackrest]\n"
            f"    restore_test:\n      staging_data_directory: {layout.staging_root / name}\n"
            f"      staging_port: {port + 1000}\n")


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


@pytest.mark.sandbox
@pytest.mark.slow
def test_up_down_restart_are_idempotent_and_leave_nothing_behind(layout):
    first = run(layout, "up")
    assert first.returncode == 0, first.stdout + first.stderr
    started = pids(layout)
    assert all(started.values()), started
    assert run(layout, "status").returncode == 0
    assert (layout.env_file.stat().st_mode & 0o777) == 0o600  # it holds the sandbox's secrets

    with open(layout.clusters_file, "a") as out:
        out.write(hand_added(layout))
    again = run(layout, "up")
    assert again.returncode == 0, again.stderr
    assert pids(layout) == started  # nothing started twice
    assert hand_added(layout) in layout.clusters_file.read_text()  # kept, and its pool made
    assert "backups_reporting" in sb.sh(Path(sys.executable).parent / "airflow", "pools", "list",
                                        env=sb.read_env_file(layout.env_file)).stdout
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
    assert hand_added(layout) in layout.clusters_file.read_text()


@pytest.mark.sandbox
@pytest.mark.slow
def test_a_taken_port_is_a_clear_error(layout):
    import socket

    with socket.socket() as blocker:
        # The port may still have connections in TIME_WAIT from the test before (its sandbox used it):
        # without SO_REUSEADDR this bind failed with [Errno 98]. A listener still blocks the sandbox.
        blocker.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        blocker.bind(("127.0.0.1", layout.moto_port))
        blocker.listen()
        result = run(layout, "up")
    assert result.returncode != 0
    assert f"port {layout.moto_port}" in result.stdout + result.stderr and "SANDBOX_PORT_BASE" in result.stdout + result.stderr


def test_up_keeps_the_clusters_added_by_hand(tmp_path):
    """`sandbox.py up` run again used to rewrite clusters.yaml and drop a cluster added by hand."""
    from pg_backups.config import load_config

    layout = sb.Layout(tmp_path, 27900, (sb.STANZA, sb.SECOND))
    sb.write_clusters_file(layout)
    written = layout.clusters_file.read_text()
    assert "add your own clusters at the end, below the line" in written and sb.HAND_ADDED_MARK in written
    layout.clusters_file.write_text(written + hand_added(layout))  # below the line, as the header says
    sb.write_clusters_file(layout)
    assert layout.clusters_file.read_text() == written + hand_added(layout)  # as written, comment included
    assert [c.name for c in load_config(layout.clusters_file).clusters] == ["asso", "billing", "reporting"]

    # Added above the line (or to a file from before it existed): carried over below it, not lost.
    above = written.replace(sb.HAND_ADDED_MARK, hand_added(layout, "ledger", 5434) + sb.HAND_ADDED_MARK)
    layout.clusters_file.write_text(above + hand_added(layout))
    sb.write_clusters_file(layout)
    text = layout.clusters_file.read_text()
    assert text.startswith(written) and hand_added(layout) in text
    assert sorted(c.name for c in load_config(layout.clusters_file).clusters) == [
        "asso", "billing", "ledger", "reporting"]

    # The sandbox's own entries are its own: billing goes when SANDBOX_CLUSTERS drops it.
    sb.write_clusters_file(sb.Layout(tmp_path, 27900, (sb.STANZA,)))
    assert sorted(c.name for c in load_config(layout.clusters_file).clusters) == ["asso", "ledger", "reporting"]

    broken = "clusters: [\n" + hand_added(layout)
    layout.clusters_file.write_text(broken)
    with pytest.raises(SystemExit, match="not a valid clusters file"):
        sb.write_clusters_file(layout)
    assert layout.clusters_file.read_text() == broken  # nothing lost


def test_every_airflow_port_derives_from_the_port_base(tmp_path, monkeypatch):
    """Two sandboxes' Airflows on one machine collided on Airflow's fixed log-server ports
    (8793, 8794: "[Errno 98]"); each port comes from the base now, and wins over an exported one."""
    monkeypatch.setenv("AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT", "27140")  # another session's stopgap
    creds = {"aws_access_key_id": "AKIAX", "aws_secret_access_key": "s", "pg_password": "p", "slack_token": "t"}
    seen = set()
    for base in (26400, 27450):
        layout = sb.Layout(tmp_path / str(base), base, (sb.STANZA, sb.SECOND))
        env = sb.airflow_env(layout, creds)
        ports = {key: int(value) for key, value in env.items() if key.endswith("_PORT")}
        assert ports == {"AIRFLOW__API__PORT": base + 5, "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": base + 10,
                         "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": base + 11,
                         "AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_SERVER_PORT": base + 12}
        assert set(ports.values()) <= set(layout.ports.values())
        assert len(set(layout.ports.values())) == len(layout.ports)  # no port used twice
        assert max(layout.ports.values()) < sb.EPHEMERAL_PORTS
        assert not seen & set(layout.ports.values())  # the two sandboxes share none
        seen |= set(layout.ports.values())
        layout.root.mkdir()
        sb.write_env_file(layout, env)
        assert sb.stack_env(layout)["AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT"] == str(base + 10)
    with pytest.raises(SystemExit, match="SANDBOX_PORT_BASE=32760"):
        sb.Layout.from_env({"SANDBOX_PORT_BASE": "32760"})
