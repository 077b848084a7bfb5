"""sandbox/airflow_api.py against a real HTTP server on loopback standing in for Airflow's API: a 503
(SQLite's "Database is locked" on backfill creation, which the API means as "try again") is retried;
any other error is not. A task's log read before the worker has written its last lines is read again."""

from __future__ import annotations

import http.server
import json
import threading
import urllib.error
from pathlib import Path

import pytest

import airflow_api  # sandbox/airflow_api.py (pytest.ini puts sandbox/ on the path)


class Answers(http.server.BaseHTTPRequestHandler):
    script: list[int] = []
    seen: list[str] = []
    logs: list[list] = []  # what each GET of a log answers, in turn; the last one stays

    def do_GET(self):  # noqa: N802
        self.seen.append(f"{self.command} {self.path}")
        body = json.dumps({"content": self.logs.pop(0) if len(self.logs) > 1 else self.logs[0]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):  # noqa: N802 (http.server's name)
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        code = self.script.pop(0) if self.script else 200
        self.seen.append(f"{self.command} {self.path} -> {code}")
        body = json.dumps({"detail": "Database is locked."} if code == 503 else {"id": 7}).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def server(monkeypatch):
    monkeypatch.setattr(airflow_api.time, "sleep", lambda seconds: None)  # the waits, not the requests
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Answers)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    Answers.seen = []
    yield airflow_api.Api(f"http://127.0.0.1:{httpd.server_address[1]}", Path("/nonexistent"))
    httpd.shutdown()


def test_a_locked_database_answer_is_retried_until_the_backfill_is_created(server):
    Answers.script = [503, 503]
    assert server.request("POST", "/api/v2/backfills", {"dag_id": "d"}) == {"id": 7}
    assert Answers.seen == ["POST /api/v2/backfills -> 503"] * 2 + ["POST /api/v2/backfills -> 200"]


def test_other_errors_and_a_lock_that_never_clears_are_raised(server):
    Answers.script = [409]
    with pytest.raises(urllib.error.HTTPError) as conflict:
        server.request("POST", "/api/v2/backfills", {"dag_id": "d"})
    assert conflict.value.code == 409 and len(Answers.seen) == 1
    Answers.script = [503] * airflow_api.LOCKED_ATTEMPTS
    with pytest.raises(urllib.error.HTTPError) as locked:
        server.request("POST", "/api/v2/backfills", {"dag_id": "d"})
    assert locked.value.code == 503 and len(Answers.seen) == 1 + airflow_api.LOCKED_ATTEMPTS


def test_a_log_read_before_its_last_lines_are_written_is_read_again(server, monkeypatch):
    """As CI saw: the task was already skipped, and its log held only the supervisor's header."""
    header = [{"event": "::group::Log message source details"}, {"event": "/logs/dag_id=d/attempt=1.log"}]
    Answers.logs = [header, header, header + [{"event": "backfill run: no backup taken. A backup cannot be "
                                                        "taken of the past"}]]
    client = airflow_api.Client.__new__(airflow_api.Client)
    client.api = server
    monkeypatch.setattr(server, "token", lambda user: "token-of-" + user)
    log = client.log_with("d", "backfill__2026-11-27T02:15:00+00:00", "backup", "cannot be taken of the past")
    assert "A backup cannot be taken of the past" in log and len(Answers.seen) == 3
    Answers.logs, Answers.seen = [header], []  # never written: the log as it is, for the caller's assertion
    assert client.log_with("d", "r", "backup", "never there", seconds=0.01) == "\n".join(json.dumps(e) for e in header)


def test_qa_answers_a_signoff_only_once_it_has_waited_a_while(monkeypatch):
    """Airflow 3.3 shows qa_signoff ``awaiting_input`` while the task's process is still exiting; an
    answer in those seconds failed the approved task (seen with two sandboxes on a loaded machine).
    The client answers a sign-off only once it has been seen waiting for SIGNOFF_SETTLE_SECONDS."""
    client = airflow_api.Client.__new__(airflow_api.Client)
    client._waiting_since = {}
    answered, clock = [], [1000.0]
    monkeypatch.setattr(airflow_api.time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(client, "waiting_signoffs", lambda dag_id: ["manual__1"], raising=False)
    client.api = type("FakeApi", (), {"answer": lambda self, *args: answered.append(args)})()

    assert client.approve_waiting("restore_test_asso") == [] and answered == []  # first seen now
    clock[0] += airflow_api.SIGNOFF_SETTLE_SECONDS - 1
    assert client.approve_waiting("restore_test_asso") == [] and answered == []
    clock[0] += 1
    assert client.approve_waiting("restore_test_asso") == ["manual__1"]
    assert [a[:4] for a in answered] == [("restore_test_asso", "manual__1", "qa", "Approve")]
