"""Driving a real Airflow through its REST API, as Ops and QA do, for the demo and the tests.

:class:`Client` triggers runs (with or without a logical date and conf), waits for them, reads task
states, XComs and logs, and answers QA's sign-off of a restore test (``hitlDetails``, as user
``qa``). For `airflow dags test` runs, which wait for a response recorded by an API server sharing
their metadata database, :func:`api_server` runs a real `airflow api-server` on the sandbox's port.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from contextlib import contextmanager
from pathlib import Path

AIRFLOW = Path(sys.executable).parent / "airflow"
LOCKED_ATTEMPTS = 6
# How long a sign-off waits before the suite or the demo answers it as QA (Client.approve_waiting).
SIGNOFF_SETTLE_SECONDS = 10


def wait_for(predicate, seconds: float = 60, every: float = 1.0, what: str = "condition"):
    """The predicate's first true value, polled every `every` seconds for at most `seconds`."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise TimeoutError(f"timed out after {seconds:.0f} s waiting for {what}")


def failure_report(dag_id: str, run_id: str, tasks: dict, log, tail: int = 25) -> str:
    """A run's task states, then the end of each failed task's log (``log(task_id, try_number)``):
    what a failed test shows in CI's output."""
    lines = [f"{dag_id} {run_id}: { {task_id: ti['state'] for task_id, ti in tasks.items()} }"]
    for task_id, ti in tasks.items():
        if ti["state"] == "failed":
            try_number = max(ti.get("try_number") or 1, 1)
            lines += [f"--- {task_id} on {ti.get('hostname')} (try {try_number}), last lines:"]
            lines += log(task_id, try_number).splitlines()[-tail:]
    return "\n".join(lines)


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
        # The sandbox's Airflow keeps its metadata in SQLite: a backfill created while the scheduler
        # writes gets 503 "Database is locked" (the creation is rolled back), which the API means as
        # "try again". A deployment's PostgreSQL metadata database never answers it.
        for attempt in range(LOCKED_ATTEMPTS):
            try:
                with urllib.request.urlopen(req, timeout=30) as resp:
                    return json.loads(resp.read() or b"null")
            except urllib.error.HTTPError as exc:
                if exc.code != 503 or attempt == LOCKED_ATTEMPTS - 1:
                    raise
                time.sleep(2 * (attempt + 1))

    def answer(self, dag_id: str, run_id: str, user: str, option: str, comment: str):
        path = (f"/api/v2/dags/{dag_id}/dagRuns/{urllib.parse.quote(run_id, safe='')}/taskInstances/"
                "qa_signoff/-1/hitlDetails")
        return self.request("PATCH", path, {"chosen_options": [option], "params_input": {"comment": comment}},
                            self.token(user))


class Client:
    """A real Airflow over the sandbox (scheduler, dag-processor, triggerer, API server), driven
    through its REST API as Ops drive it: as user ``ops``, or ``qa`` for the sign-off."""

    def __init__(self, layout):
        self.layout = layout
        self.api = Api(f"http://127.0.0.1:{layout.api_port}", layout.airflow_home)
        self._token = None
        self._waiting_since: dict[tuple[str, str], float] = {}  # (dag, run) -> first seen waiting for QA

    def request(self, method: str, path: str, body=None, user: str = "ops"):
        token = self._token if user == "ops" and self._token else self.api.token(user)
        if user == "ops":
            self._token = token
        return self.api.request(method, path, body, token)

    @staticmethod
    def run_path(dag_id: str, run_id: str) -> str:
        import urllib.parse

        return f"/api/v2/dags/{dag_id}/dagRuns/{urllib.parse.quote(run_id, safe='')}"

    def wait_parsed(self, *dag_ids: str, seconds: float = 180) -> None:
        def parsed():
            known = {d["dag_id"] for d in self.request("GET", "/api/v2/dags?limit=200")["dags"]}
            return set(dag_ids) <= known
        wait_for(parsed, seconds, every=3, what=f"DAGs {dag_ids} parsed by the dag-processor")

    def unpause(self, dag_id: str, paused: bool = False) -> None:
        self.request("PATCH", f"/api/v2/dags/{dag_id}", {"is_paused": paused})

    def trigger(self, dag_id: str, logical_date: str | None = None, conf: dict | None = None) -> str:
        body = {"logical_date": logical_date}
        if conf is not None:
            body["conf"] = conf
        return self.request("POST", f"/api/v2/dags/{dag_id}/dagRuns", body)["dag_run_id"]

    def run(self, dag_id: str, run_id: str) -> dict:
        return self.request("GET", self.run_path(dag_id, run_id))

    def runs(self, dag_id: str, run_type: str | None = None) -> list[dict]:
        query = "?limit=100&order_by=id" + (f"&run_type={run_type}" if run_type else "")
        return self.request("GET", f"/api/v2/dags/{dag_id}/dagRuns{query}")["dag_runs"]

    def tasks(self, dag_id: str, run_id: str) -> dict[str, dict]:
        return {t["task_id"]: t for t in self.request("GET", self.run_path(dag_id, run_id) + "/taskInstances")[
            "task_instances"]}

    def xcom(self, dag_id: str, run_id: str, task_id: str, key: str = "return_value"):
        path = self.run_path(dag_id, run_id) + f"/taskInstances/{task_id}/xcomEntries/{key}?deserialize=true"
        return self.request("GET", path)["value"]

    def log(self, dag_id: str, run_id: str, task_id: str, try_number: int = 1) -> str:
        import urllib.request

        request = urllib.request.Request(
            self.api.base + self.run_path(dag_id, run_id) + f"/taskInstances/{task_id}/logs/{try_number}"
            "?full_content=true", headers={"Authorization": f"Bearer {self.api.token('ops')}",
                                           "Accept": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as response:
            content = json.loads(response.read())["content"]
        return "\n".join(json.dumps(e) if isinstance(e, dict) else str(e) for e in content)

    def log_with(self, dag_id: str, run_id: str, task_id: str, *texts: str, seconds: float = 60) -> str:
        """The task's log once it holds every text: a task's state is recorded before the worker's
        supervisor has written the task's last lines to the log file, so a log read at once can stop
        at its header. After ``seconds``, the log as it is (the caller's assertion shows it)."""
        found = {}

        def complete():
            found["log"] = self.log(dag_id, run_id, task_id)
            return all(text in found["log"] for text in texts)
        try:
            wait_for(complete, seconds, every=2, what=f"{texts} in the log of {dag_id} {run_id} {task_id}")
        except TimeoutError:
            pass
        return found["log"]

    def wait_run(self, dag_id: str, run_id: str, seconds: float = 600, **qa) -> dict:
        """The run once it has ended (QA approving meanwhile: see :meth:`_wait_ended`)."""
        return self._wait_ended(dag_id, lambda: [self.run(dag_id, run_id)], seconds, f"{dag_id} {run_id} to end",
                                **qa)[0]

    def wait_backfill(self, dag_id: str, count: int | None = None, seconds: float = 600) -> list[dict]:
        """The DAG's backfill runs once they have all ended (``count`` of them when given)."""
        def backfill_runs():
            runs = self.runs(dag_id, "backfill")
            return runs if runs and (count is None or len(runs) == count) else None
        return self._wait_ended(dag_id, backfill_runs, seconds, f"the backfill runs of {dag_id} to end")

    def _wait_ended(self, dag_id: str, runs, seconds: float, what: str, **qa) -> list[dict]:
        """``runs()`` once every run it gives has ended. Meanwhile QA approves every restore test of
        the DAG that waits for it: a run waiting at its sign-off holds staging, and the awaited run
        would wait behind it (unpausing a restore test DAG starts a run for its latest slot too)."""
        def ended():
            self.approve_waiting(dag_id, **qa)
            current = runs()
            return current if current and all(r["state"] in ("success", "failed") for r in current) else None
        return wait_for(ended, seconds, every=3, what=what)

    def waiting_signoffs(self, dag_id: str) -> list[str]:
        runs = [r["dag_run_id"] for r in self.runs(dag_id) if r["state"] == "running"]
        return [r for r in runs if (self.tasks(dag_id, r).get("qa_signoff") or {}).get("state") == "awaiting_input"]

    def approve_waiting(self, dag_id: str, comment: str = "approved by the test suite as QA", say=None) -> list[str]:
        """Approve, as ``qa``, each run of a restore test DAG that has waited for QA at least
        SIGNOFF_SETTLE_SECONDS; ``say(run_id)`` first. Airflow 3.3 shows ``awaiting_input`` while the
        task's process is still exiting: an answer in those seconds put the task back to run, then the
        process's late "success" report failed it (404 Task Instance not found, try 2 asked again).
        A person never answers that fast; the suite and the demo wait as long."""
        from pg_backups.config import dag_kind  # the callers (tests, demo) have plugins/ on the path

        if dag_kind(dag_id) != "restore_test":
            return []
        now = time.monotonic()
        waiting = self.waiting_signoffs(dag_id)
        settled = [r for r in waiting if now - self._waiting_since.setdefault((dag_id, r), now) >= SIGNOFF_SETTLE_SECONDS]
        for run_id in settled:
            if say:
                say(run_id)
            self.api.answer(dag_id, run_id, "qa", "Approve", comment)
            self._waiting_since.pop((dag_id, run_id), None)
        return settled


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
    # Its output goes to a file, read at the end: a pipe nobody reads while we wait fills up (64 KB of
    # task logs) and blocks `dags test` in the middle of a task, run and staging claim held.
    with tempfile.TemporaryFile("w+") as out:
        proc = subprocess.Popen(args, env={**os.environ, **env}, stdout=out, stderr=subprocess.STDOUT, text=True,
                                start_new_session=True, cwd=layout.root)

        def output() -> str:
            out.seek(0)
            return out.read()

        try:
            def awaiting():
                if proc.poll() is not None:
                    raise RuntimeError(f"dags test ended before the sign-off:\n{output()[-5000:]}")
                return [r for r in runs_awaiting() if r not in before]

            run_id = wait_for(awaiting, 600, every=2, what="qa_signoff awaiting input")[0]
            if while_waiting:
                while_waiting(run_id)
            api.answer(dag_id, run_id, user, option, comment)
            proc.wait(timeout=600)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
        text = output()
    return run_id, text
