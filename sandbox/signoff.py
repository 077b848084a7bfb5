"""QA's sign-off of a restore test, given through Airflow itself, for the demo and the tests.

`airflow dags test` parks `qa_signoff` in `awaiting_input` and waits for a response recorded by an
api-server sharing its metadata database, so this runs a real `airflow api-server` on the
sandbox's API port and answers the task's hitlDetails as a QA user, as QA does in the UI.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from contextlib import contextmanager
from pathlib import Path

AIRFLOW = Path(sys.executable).parent / "airflow"


def wait_for(predicate, seconds: float = 60, every: float = 1.0, what: str = "condition"):
    """The predicate's first true value, polled every `every` seconds for at most `seconds`."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise TimeoutError(f"timed out after {seconds:.0f} s waiting for {what}")


class Api:
    def __init__(self, base: str, airflow_home: Path):
        self.base, self.home = base, airflow_home

    def token(self, user: str) -> str:
        passwords = json.loads((self.home / "simple_auth_manager_passwords.json.generated").read_text())
        body = self.request("POST", "/auth/token", {"username": user, "password": passwords[user]})
        return body["access_token"]

    def request(self, method: str, path: str, body=None, token: str | None = None):
        headers = {"Content-Type": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        req = urllib.request.Request(self.base + path, data=json.dumps(body).encode() if body is not None else None,
                                     headers=headers, method=method)
        with urllib.request.urlopen(req, timeout=30) as resp:
            return json.loads(resp.read() or b"null")

    def answer(self, dag_id: str, run_id: str, user: str, option: str, comment: str):
        path = (f"/api/v2/dags/{dag_id}/dagRuns/{urllib.parse.quote(run_id, safe='')}/taskInstances/"
                "qa_signoff/-1/hitlDetails")
        return self.request("PATCH", path, {"chosen_options": [option], "params_input": {"comment": comment}},
                            self.token(user))


@contextmanager
def api_server(layout, env: dict, log_path: Path):
    """A real `airflow api-server` on the sandbox's API port (users ops and qa), stopped on exit."""
    base = f"http://127.0.0.1:{layout.api_port}"
    with open(log_path, "a") as log:
        proc = subprocess.Popen([AIRFLOW, "api-server", "--port", str(layout.api_port), "--workers", "1"],
                                env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)

        def up():
            try:
                return urllib.request.urlopen(f"{base}/api/v2/version", timeout=3).status in (200, 401)
            except urllib.error.HTTPError as exc:
                return exc.code == 401
            except OSError:
                if proc.poll() is not None:
                    raise RuntimeError(f"airflow api-server exited; see {log_path}") from None
                return False

        try:
            wait_for(up, 180, every=2, what="airflow api-server")
            yield Api(base, layout.airflow_home)
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)


def run_with_signoff(layout, env: dict, api: Api, dag_id: str, option: str, comment: str, while_waiting=None,
                     conf=None, user: str = "qa") -> tuple[str, str]:
    """`airflow dags test` in the background; answer the sign-off when it asks. Returns (run_id, output)."""
    def runs_awaiting():
        with sqlite3.connect(layout.airflow_home / "airflow.db") as db:
            return [r for r, in db.execute(
                "SELECT run_id FROM task_instance WHERE dag_id = ? AND task_id = 'qa_signoff' "
                "AND state = 'awaiting_input'", (dag_id,)).fetchall()]

    before = set(runs_awaiting())
    args = [AIRFLOW, "dags", "test", dag_id] + (["--conf", json.dumps(conf)] if conf else [])
    proc = subprocess.Popen(args, env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True, cwd=layout.root)
    try:
        def awaiting():
            if proc.poll() is not None:
                raise RuntimeError(f"dags test ended before the sign-off:\n{proc.stdout.read()[-5000:]}")
            return [r for r in runs_awaiting() if r not in before]

        run_id = wait_for(awaiting, 600, every=2, what="qa_signoff awaiting input")[0]
        if while_waiting:
            while_waiting(run_id)
        api.answer(dag_id, run_id, user, option, comment)
        output, _ = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
    return run_id, output
