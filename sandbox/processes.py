"""The sandbox's processes: its log lines, commands run to completion (as root or as another user), and
daemons kept by pid file (each in a session of its own, stopped with its children). Standard library
only: sandbox/compose.py uses log and sh before any virtualenv exists."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from layout import Layout


def log(message: str, name: str = "sandbox") -> None:
    print(f"[{name}] {message}", flush=True)


def sh(*argv, user: str | None = None, check: bool = True, env: dict | None = None, name: str = "sandbox", **kw):
    argv = [str(a) for a in argv]
    if user:
        argv = ["runuser", "-u", user, "--", *argv]
    proc = subprocess.run(argv, env={**os.environ, **(env or {})}, text=True, capture_output=True, **kw)
    if check and proc.returncode != 0:
        # The end says why; a docker build's output (compose.py) runs to megabytes.
        raise SystemExit(f"[{name}] failed ({proc.returncode}): {' '.join(argv)}\n{(proc.stdout + proc.stderr)[-4000:]}")
    return proc


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def wait_port(port: int, what: str, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while not port_open(port):
        if time.monotonic() > deadline:
            raise SystemExit(f"[sandbox] {what} did not start listening on 127.0.0.1:{port} within {seconds:.0f} s")
        time.sleep(0.2)


def pid_alive(pid_file: Path) -> int | None:
    try:
        pid = int(pid_file.read_text().split()[0])
        os.kill(pid, 0)
        return pid
    except (OSError, ValueError, IndexError):
        return None


def start_daemon(name: str, argv: list, L: Layout, port: int) -> None:
    pid_file = L.run_dir / f"{name}.pid"
    if pid_alive(pid_file) and port_open(port):
        return
    if port_open(port):
        raise SystemExit(f"[sandbox] port {port} for {name} is taken by another program; "
                         "set SANDBOX_PORT_BASE to a free range")
    with open(L.logs / f"{name}.log", "a") as out:
        proc = subprocess.Popen([str(a) for a in argv], stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    pid_file.write_text(str(proc.pid))
    try:
        wait_port(port, name, seconds=90)  # moto takes seconds to import on a busy 2-core machine
    except SystemExit:
        stop_daemon(name, L)  # leave nothing half-started behind
        tail = (L.logs / f"{name}.log").read_text()[-1500:]
        raise SystemExit(f"[sandbox] {name} did not start on 127.0.0.1:{port}; its log ends:\n{tail}") from None
    log(f"{name} listening on 127.0.0.1:{port}")


def stop_daemon(name: str, L: Layout) -> None:
    pid_file = L.run_dir / f"{name}.pid"
    pid = pid_alive(pid_file)
    if pid:
        try:
            os.killpg(pid, signal.SIGTERM)
        except OSError:
            os.kill(pid, signal.SIGTERM)
        for _ in range(300):  # Airflow's components take a few seconds to shut down
            if not pid_alive(pid_file):
                break
            time.sleep(0.1)
        else:
            try:
                os.killpg(pid, signal.SIGKILL)
            except OSError:
                os.kill(pid, signal.SIGKILL)
        log(f"{name} stopped")
    pid_file.unlink(missing_ok=True)
