"""The deployment for real: docker-compose.yaml + docker-compose.sandbox.yaml built and started on this
machine (sandbox/compose.py installs the engine when missing), then used through Airflow's REST API
as a person would: trigger, read the task instances (which host ran them, from which queue), answer
QA's sign-off as `qa`; a database host's worker killed mid-backup; the S3 endpoint stopped during a
backup; the repository deleted from the versioned bucket and read back with --repo-target-time;
everything brought down at the end, the daemon too when the session started it. The image is the
newer tested pair (Debian 13: PostgreSQL 17, pgBackRest 2.55.1): block incremental diff backups and
verify --set of each backup are asserted here.

One stack per session (project pg-backups-test, API on 127.0.0.1:26480, files in
/var/tmp/pg-backups-compose-test). The tests run in file order: each builds on the one before.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from airflow_api import failure_report
from support import wait_for

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "sandbox"))

import compose  # noqa: E402  (sandbox/compose.py)

pytestmark = [pytest.mark.compose, pytest.mark.slow]

TEST_ENV = {"COMPOSE_SANDBOX_DIR": os.environ.get("TEST_COMPOSE_DIR", "/var/tmp/pg-backups-compose-test"),
            "COMPOSE_PROJECT": "pg-backups-test", "AIRFLOW_API_PORT": os.environ.get("TEST_COMPOSE_API_PORT", "26480")}
CLUSTER = "asso"
DB_HOST, STAGING_HOST = f"db-{CLUSTER}", f"staging-{CLUSTER}"
TERMINAL = ("success", "failed")


def say(config, line: str) -> None:
    """A line in pytest's output even when output is captured (the build and start times)."""
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    capture = config.pluginmanager.get_plugin("capturemanager")
    if not (reporter and capture):
        print(f"[compose] {line}")
        return
    with capture.global_and_fixture_disabled():  # a fixture's writes are captured (and lost) otherwise
        reporter.ensure_newline()
        reporter.write_line(f"[compose] {line}")


class Api:
    """Airflow's REST API as a user calls it: POST /auth/token, then Bearer tokens."""

    def __init__(self, base: str, passwords: dict):
        self.base, self.passwords, self.tokens = base, passwords, {}

    def token(self, user: str) -> str:
        if user not in self.tokens:
            body = self.request("POST", "/auth/token", {"username": user, "password": self.passwords[user]}, user=None)
            self.tokens[user] = body["access_token"]
        return self.tokens[user]

    def request(self, method: str, path: str, body=None, user: str | None = "ops"):
        headers = {"Content-Type": "application/json"}
        if user:
            headers["Authorization"] = f"Bearer {self.token(user)}"
        req = urllib.request.Request(self.base + path, method=method, headers=headers,
                                     data=json.dumps(body).encode() if body is not None else None)
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                return json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as exc:
            raise AssertionError(f"{method} {path} -> {exc.code}: {exc.read()[:2000]!r}") from None

    def trigger(self, dag_id: str, conf: dict | None = None) -> str:
        self.wait_dag(dag_id)
        self.request("PATCH", f"/api/v2/dags/{dag_id}", {"is_paused": False})
        run = self.request("POST", f"/api/v2/dags/{dag_id}/dagRuns", {"logical_date": None, "conf": conf or {}})
        return run["dag_run_id"]

    def wait_dag(self, dag_id: str, seconds: float = 300) -> None:
        def parsed():
            try:
                return self.request("GET", f"/api/v2/dags/{dag_id}")
            except AssertionError:
                return None
        compose_wait(parsed, seconds, f"DAG {dag_id} parsed")

    def run_state(self, dag_id: str, run_id: str) -> str:
        return self.request("GET", f"/api/v2/dags/{dag_id}/dagRuns/{q(run_id)}")["state"]

    def wait_run(self, dag_id: str, run_id: str, seconds: float = 600) -> str:
        return compose_wait(lambda: (s := self.run_state(dag_id, run_id)) in TERMINAL and s, seconds,
                            f"{dag_id} {run_id} to finish")

    def tasks(self, dag_id: str, run_id: str) -> dict:
        body = self.request("GET", f"/api/v2/dags/{dag_id}/dagRuns/{q(run_id)}/taskInstances")
        return {t["task_id"]: t for t in body["task_instances"]}

    def log(self, dag_id: str, run_id: str, task_id: str, try_number: int) -> str:
        path = f"/api/v2/dags/{dag_id}/dagRuns/{q(run_id)}/taskInstances/{task_id}/logs/{try_number}?full_content=true"
        try:
            content = self.request("GET", path)["content"]
        except AssertionError as exc:  # the log itself may be what is missing: say so, not hide the failure
            return str(exc)
        return "\n".join(e.get("event", json.dumps(e)) if isinstance(e, dict) else str(e) for e in content)

    def failure(self, dag_id: str, run_id: str) -> str:
        return failure_report(dag_id, run_id, self.tasks(dag_id, run_id),
                              lambda task_id, try_number: self.log(dag_id, run_id, task_id, try_number))


def states(tasks: dict) -> dict:
    return {task_id: ti["state"] for task_id, ti in tasks.items()}


def q(run_id: str) -> str:
    return urllib.parse.quote(run_id, safe="")


def compose_wait(predicate, seconds: float, what: str, every: float = 2.0):
    return wait_for(predicate, seconds, every, what)  # sandbox/airflow_api.py's, as the other tests


class Stack:
    def __init__(self, settings: compose.Settings):
        self.S = settings
        secrets = settings.secrets()
        self.api = Api(settings.api, json.loads(secrets["AIRFLOW_USER_PASSWORDS"]))
        self.secrets = secrets

    def compose(self, *args, check=True, timeout=300) -> subprocess.CompletedProcess:
        return compose.sh(*self.S.compose(), *args, check=check, timeout=timeout)

    def container(self, service: str) -> dict:
        cid = self.compose("ps", "-q", service).stdout.strip()
        assert cid, f"no container for {service}"
        return json.loads(compose.sh("docker", "inspect", cid).stdout)[0]

    def slack_texts(self) -> list[str]:
        lines = self.S.slack_messages.read_text().splitlines()
        return [json.loads(line)["body"].get("text", "") for line in lines if line.strip()]

    def pgbackrest(self, service: str, *args: str, check=True) -> subprocess.CompletedProcess:
        """pgbackrest on a host, as its cluster's OS user, with the file the project wrote there."""
        conf = f"/etc/pgbackrest/{CLUSTER}"
        return self.compose("exec", "-T", service, "runuser", "-u", "postgres", "--", "pgbackrest",
                            f"--config={conf}/pgbackrest.conf", f"--config-include-path={conf}/conf.d",
                            f"--stanza={CLUSTER}", *args, check=check, timeout=600)

    def backups(self, service: str = DB_HOST, *args: str) -> list[dict]:
        info = json.loads(self.pgbackrest(service, *args, "info", "--output=json").stdout)
        return info[0].get("backup", []) if info else []

    def worker_pid(self, service: str) -> str:
        return self.compose("exec", "-T", service, "cat", "/run/pg-backups-worker.pid").stdout.strip()

    def worker_ready(self, service: str) -> bool:
        """The service's Celery worker answers a ping (the one started after a crash included)."""
        proc = self.compose("exec", "-T", service, "celery", "--app",
                            "airflow.providers.celery.executors.celery_executor.app", "inspect", "ping",
                            "-d", f"celery@{service}", "--timeout", "10", check=False, timeout=120)
        return proc.returncode == 0 and "pong" in proc.stdout

    def wait_task_running(self, dag_id: str, run_id: str, task_id: str, seconds=300) -> dict:
        def running():
            ti = self.api.tasks(dag_id, run_id).get(task_id)
            if ti and ti["state"] in ("failed", "upstream_failed"):
                raise AssertionError(f"{task_id} ended {ti['state']} before the fault was injected:\n"
                                     + self.api.failure(dag_id, run_id))
            return ti if ti and ti["state"] == "running" else None
        return compose_wait(running, seconds, f"{dag_id}.{task_id} running", every=1)


@pytest.fixture(scope="module")
def stack(request):
    S = compose.Settings({**os.environ, **TEST_ENV})
    if S.env_file.exists():  # whatever an earlier session left: its containers and volumes first
        compose.down(S, stop_daemon=False)
    if S.dir.exists():
        subprocess.run(["rm", "-rf", str(S.dir)], check=True)
    try:
        times = compose.up(S)
    except BaseException:
        compose.down(S, stop_daemon=True)
        raise
    say(request.config, f"engine: {times.get('engine_seconds')} s"
        + (" (dockerd started by this session)" if times.get("started_dockerd") else "")
        + (", installed the engine" if times.get("installed_engine") else "")
        + (", installed compose v2" if times.get("installed_compose") else ""))
    say(request.config, f"base image: {times['base']} in {times['base_seconds']} s; "
        f"image build: {times['image_seconds']} s")
    say(request.config, f"stack start (docker compose up --wait): {times['stack_start_seconds']} s")
    box = Stack(S)
    box.times = times
    yield box
    compose.down(S, stop_daemon=True)  # idempotent: test_down_leaves_nothing normally did it already


# --------------------------------------------------------------------------------------------


def test_stack_is_up_and_only_the_database_host_mounts_the_data_directory(stack):
    ps = stack.compose("ps", "--format", "json").stdout
    services = {json.loads(line)["Service"]: json.loads(line) for line in ps.splitlines() if line.strip()}
    expected = {"metadata-db", "redis", "airflow-apiserver", "airflow-scheduler", "airflow-dag-processor",
                "airflow-triggerer", "airflow-worker", DB_HOST, STAGING_HOST, "moto", "s3", "slack"}
    assert expected <= set(services), services.keys()
    for name in expected:
        assert services[name]["State"] == "running", (name, services[name]["State"])
    data_dir = "/var/lib/postgresql/production"
    for name in expected:
        mounts = {m["Destination"]: m for m in stack.container(name)["Mounts"]}
        if name == DB_HOST:
            assert data_dir in mounts
        else:
            assert data_dir not in mounts and not any("production-data" in (m.get("Name") or "")
                                                      for m in mounts.values()), name
    assert stack.container(DB_HOST)["Config"]["Hostname"] == DB_HOST
    pools = stack.api.request("GET", "/api/v2/pools")["pools"]
    assert any(p["name"] == f"backups_{CLUSTER}" and p["slots"] == 1 for p in pools)


def test_the_sandbox_env_file_wins_over_the_callers_environment(stack, monkeypatch):
    # The full suite runs this module beside the loopback sandbox, which exports the same connection
    # names for 127.0.0.1; docker compose prefers the caller's environment to --env-file, so every task
    # of the stack once failed there (and passed when this file ran alone).
    monkeypatch.setenv("AIRFLOW_CONN_PG_ASSO", '{"conn_type": "postgres", "host": "127.0.0.1", "port": 26401}')
    config = json.loads(stack.compose("config", "--format", "json").stdout)
    for service in (DB_HOST, "airflow-worker", "airflow-scheduler"):
        assert config["services"][service]["environment"]["AIRFLOW_CONN_PG_ASSO"] == \
            stack.secrets["AIRFLOW_CONN_PG_ASSO"], service


def test_bucket_dag_runs_on_the_default_worker(stack):
    dag_id = f"s3_bucket_config_{CLUSTER}"
    run_id = stack.api.trigger(dag_id)
    assert stack.api.wait_run(dag_id, run_id) == "success", stack.api.failure(dag_id, run_id)
    ti = stack.api.tasks(dag_id, run_id)["configure_bucket"]
    assert ti["queue"] == "default"
    assert ti["hostname"] == stack.container("airflow-worker")["Config"]["Hostname"]
    print(f"{dag_id}: configure_bucket on {ti['hostname']} (queue {ti['queue']})")


def assert_ran_on(tasks: dict, host: str, queue: str, skip=()) -> None:
    for task_id, ti in tasks.items():
        if task_id in skip:
            continue
        assert (ti["hostname"], ti["queue"]) == (host, queue), (task_id, ti["hostname"], ti["queue"], ti["state"])


def test_pgbackrest_backup_runs_on_the_database_host(stack):
    dag_id = f"pgbackrest_backup_{CLUSTER}"
    run_id = stack.api.trigger(dag_id, {"backup_type": "full"})
    state = stack.api.wait_run(dag_id, run_id, 900)
    tasks = stack.api.tasks(dag_id, run_id)
    assert state == "success", stack.api.failure(dag_id, run_id)
    assert set(tasks) == {"preflight", "backup", "expire", "verify", "publish_backup"}
    assert_ran_on(tasks, DB_HOST, DB_HOST)
    print(f"{dag_id}: " + ", ".join(f"{t} on {ti['hostname']}" for t, ti in tasks.items()))
    # The trixie pair: PostgreSQL 17 read from the server, pgBackRest 2.55.1 from `pgbackrest version`.
    preflight = stack.api.log(dag_id, run_id, "preflight", tasks["preflight"]["try_number"])
    assert "/usr/lib/postgresql/17/bin/postgres" in preflight, preflight[-3000:]
    assert_verified_only(stack, dag_id, run_id, tasks)


def assert_verified_only(stack, dag_id: str, run_id: str, tasks: dict) -> str:
    """The run's verify checked its own backup (verify --set, pgBackRest 2.55+), not the repository."""
    label = stack.backups()[-1]["label"]
    verify = stack.api.log(dag_id, run_id, "verify", tasks["verify"]["try_number"])
    assert f"--set={label}" in verify and "verify command end: completed successfully" in verify, verify[-3000:]
    return label


def test_diff_backup_stores_changed_blocks_and_verifies_only_itself(stack):
    """Block incremental (repo1-block, pgBackRest 2.46+) is on by default: the diff's repository
    entry in `pgbackrest info` has a block map (size-map / delta-map)."""
    stack.compose("exec", "-T", DB_HOST, "runuser", "-u", "postgres", "--", "psql", "-XAtq", "-d", "app", "-c",
                  "UPDATE members SET full_name = full_name WHERE id % 10 = 0")
    dag_id = f"pgbackrest_backup_{CLUSTER}"
    run_id = stack.api.trigger(dag_id, {"backup_type": "diff"})
    state = stack.api.wait_run(dag_id, run_id, 900)
    tasks = stack.api.tasks(dag_id, run_id)
    assert state == "success", stack.api.failure(dag_id, run_id)
    conf = stack.compose("exec", "-T", DB_HOST, "cat", f"/etc/pgbackrest/{CLUSTER}/pgbackrest.conf").stdout
    assert "repo1-block=y" in conf.splitlines() and "# For pgBackRest 2.55.1;" in conf
    label = assert_verified_only(stack, dag_id, run_id, tasks)
    diff = stack.backups()[-1]
    assert diff["type"] == "diff" and diff["label"] == label
    repository = diff["info"]["repository"]
    print(f"diff {label}: info.repository {repository}")
    assert repository.get("size-map") or repository.get("delta-map"), repository


def test_restore_test_runs_on_the_staging_host_with_qa_signoff(stack):
    dag_id = f"restore_test_{CLUSTER}"
    run_id = stack.api.trigger(dag_id)
    hitl = f"/api/v2/dags/{dag_id}/dagRuns/{q(run_id)}/taskInstances/qa_signoff/-1/hitlDetails"

    def awaiting():
        if stack.api.run_state(dag_id, run_id) in TERMINAL:
            raise AssertionError(f"restore test ended before the sign-off:\n{stack.api.failure(dag_id, run_id)}")
        ti = stack.api.tasks(dag_id, run_id).get("qa_signoff")
        return ti and ti["state"] in ("deferred", "awaiting_input")
    compose_wait(awaiting, 900, "qa_signoff awaiting QA")
    stack.api.request("PATCH", hitl, {"chosen_options": ["Approve"],
                                      "params_input": {"comment": "approved by tests/compose/test_compose.py as QA"}},
                      user="qa")
    state = stack.api.wait_run(dag_id, run_id, 600)
    tasks = stack.api.tasks(dag_id, run_id)
    assert state == "success", stack.api.failure(dag_id, run_id)
    assert_ran_on(tasks, STAGING_HOST, STAGING_HOST)
    answer = stack.api.request("GET", hitl)
    assert answer["responded_by_user"]["name"] == "qa" and answer["chosen_options"] == ["Approve"]
    print(f"{dag_id}: " + ", ".join(f"{t} on {ti['hostname']}" for t, ti in tasks.items()))


def test_freshness_dag_runs_on_the_database_host(stack):
    dag_id = f"backup_freshness_{CLUSTER}"
    run_id = stack.api.trigger(dag_id)
    state = stack.api.wait_run(dag_id, run_id)
    tasks = stack.api.tasks(dag_id, run_id)
    assert state == "success", stack.api.failure(dag_id, run_id)
    assert_ran_on(tasks, DB_HOST, DB_HOST)
    print(f"{dag_id}: " + ", ".join(f"{t} on {ti['hostname']}" for t, ti in tasks.items()))


def test_database_host_worker_killed_mid_backup_fails_loudly_then_recovers(stack):
    dag_id = f"pgbackrest_backup_{CLUSTER}"
    slack_before = len(stack.slack_texts())
    run_id = stack.api.trigger(dag_id, {"backup_type": "full"})
    stack.wait_task_running(dag_id, run_id, "backup")
    time.sleep(3)  # pgbackrest is copying
    pid = stack.worker_pid(DB_HOST)
    # The worker, its task processes and pgbackrest with them, as when the worker's host crashes
    # its worker; PostgreSQL on that host stays up.
    stack.compose("exec", "-T", DB_HOST, "kill", "-9", "--", f"-{pid}")
    started = time.monotonic()
    state = stack.api.wait_run(dag_id, run_id, 600)
    tasks = stack.api.tasks(dag_id, run_id)
    assert state == "failed" and tasks["backup"]["state"] == "failed", states(tasks)
    print(f"worker killed: run failed after {time.monotonic() - started:.0f} s")
    alerts = compose_wait(lambda: [t for t in stack.slack_texts()[slack_before:] if dag_id in t and "backup" in t],
                          180, "the Slack alert of the killed backup")
    assert "failed" in alerts[0].lower(), alerts
    # The worker is back (restarted by the host's service loop) and the next run is clean.
    compose_wait(lambda: stack.worker_pid(DB_HOST) != pid and stack.worker_ready(DB_HOST), 180,
                 "the database host's worker back")
    run_id = stack.api.trigger(dag_id, {"backup_type": "full"})
    state = stack.api.wait_run(dag_id, run_id, 900)
    tasks = stack.api.tasks(dag_id, run_id)
    assert state == "success", stack.api.failure(dag_id, run_id)
    assert_ran_on(tasks, DB_HOST, DB_HOST)


def test_s3_endpoint_stopped_during_a_backup_fails_the_backup_and_alerts(stack):
    dag_id = f"pgbackrest_backup_{CLUSTER}"
    slack_before = len(stack.slack_texts())
    run_id = stack.api.trigger(dag_id, {"backup_type": "full"})
    stack.wait_task_running(dag_id, run_id, "backup")
    stack.compose("stop", "--timeout", "1", "s3")
    try:
        started = time.monotonic()
        state = stack.api.wait_run(dag_id, run_id, 600)
        tasks = stack.api.tasks(dag_id, run_id)
        assert state == "failed" and tasks["backup"]["state"] == "failed", states(tasks)
        print(f"S3 stopped: backup failed after {time.monotonic() - started:.0f} s")
        alerts = compose_wait(lambda: [t for t in stack.slack_texts()[slack_before:] if dag_id in t], 120,
                              "the Slack alert of the S3 outage")
        assert "backup" in alerts[0]
        for secret in (stack.secrets["SANDBOX_AWS_SECRET_ACCESS_KEY"], stack.secrets["SANDBOX_PG_PASSWORD"]):
            assert secret not in "\n".join(alerts)
    finally:
        stack.compose("start", "s3")


def test_the_verification_drill_runs_on_the_newer_pair_on_the_staging_host(stack):
    """The drill of the newest backup (PostgreSQL 17, pgBackRest 2.55.1) on the verification host
    (here the staging host: verify.queue), by hand as Ops would; the DAG is paused again after, and
    every drill it started meanwhile (asset events of the earlier backups) is waited for."""
    dag_id = f"verify_backup_{CLUSTER}"
    label = stack.backups()[-1]["label"]
    run_id = stack.api.trigger(dag_id, {"tool": "pgbackrest", "backup_label": label})
    try:
        state = stack.api.wait_run(dag_id, run_id, 900)
    finally:
        stack.api.request("PATCH", f"/api/v2/dags/{dag_id}", {"is_paused": True})
        for run in stack.api.request("GET", f"/api/v2/dags/{dag_id}/dagRuns?limit=100")["dag_runs"]:
            stack.api.wait_run(dag_id, run["dag_run_id"], 900)
    tasks = stack.api.tasks(dag_id, run_id)
    assert state == "success", stack.api.failure(dag_id, run_id)
    assert_ran_on(tasks, STAGING_HOST, STAGING_HOST)
    log = stack.compose("exec", "-T", STAGING_HOST, "cat", "/var/log/postgresql/asso_verify.log").stdout
    line = next(json.loads(raw) for raw in reversed(log.splitlines()) if json.loads(raw)["run_id"] == run_id)
    assert line["outcome"] == "success" and line["backup_label"] == label, line
    assert line["target"]["data_directory"] == "/var/lib/postgresql/verify/asso" and line["target"]["port"] == 5435
    print(f"{dag_id}: drilled {label} on {STAGING_HOST}, RTO {line['rto_seconds']} s")


DELETE_REPOSITORY = """
import os, boto3
s3 = boto3.client("s3")
bucket, deleted = os.environ["BUCKET"], 0
for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix="pgbackrest/"):
    for obj in page.get("Contents", []):
        s3.delete_object(Bucket=bucket, Key=obj["Key"])  # versioned bucket: a delete marker
        deleted += 1
print(deleted)
"""


def test_repo_target_time_restores_from_the_versioned_bucket_after_the_repository_was_deleted(stack):
    """Every object of the pgBackRest repository deleted (by mistake or malice): the bucket's
    versioning keeps them, and `--repo-target-time` (pgBackRest 2.54+) reads the repository as it
    was before the deletion, enough to list and restore the backups. Last: it empties the repository."""
    label = stack.backups()[-1]["label"]
    before = stack.compose("exec", "-T", DB_HOST, "date", "-u", "+%Y-%m-%d %H:%M:%S+00").stdout.strip()
    time.sleep(2)  # the deletion lands after `before` (S3 times have one-second steps)
    deleted = stack.compose("exec", "-T", "-e", "BUCKET=asso-prod-backups", DB_HOST, "python", "-c",
                            DELETE_REPOSITORY).stdout.strip()
    assert int(deleted) > 10, deleted
    assert label not in [b["label"] for b in stack.backups()]
    # repo-target-time names the repository it reads (pgBackRest refuses it without --repo).
    as_before = stack.backups(DB_HOST, "--repo=1", f"--repo-target-time={before}")
    assert label in [b["label"] for b in as_before], as_before
    target = "/tmp/repo-target-time"  # a scratch directory of the database host, not its data directory
    stack.compose("exec", "-T", DB_HOST, "runuser", "-u", "postgres", "--", "mkdir", "-p", target)
    stack.pgbackrest(DB_HOST, "--repo=1", f"--repo-target-time={before}", f"--set={label}", f"--pg1-path={target}",
                     "--type=immediate", "restore")
    pg_version = stack.compose("exec", "-T", DB_HOST, "cat", f"{target}/PG_VERSION").stdout.strip()
    assert pg_version == "17"
    print(f"repository deleted ({deleted} objects); backup {label} restored with --repo-target-time={before}")


def test_down_leaves_nothing_running(stack):
    started_dockerd = compose.our_dockerd()
    compose.down(stack.S, stop_daemon=True)
    if compose.daemon_answers():  # a daemon this session did not start: our project is gone from it
        left = compose.sh("docker", "ps", "-aq", "--filter", f"label=com.docker.compose.project={stack.S.project}")
        assert left.stdout.strip() == ""
        vols = compose.sh("docker", "volume", "ls", "-q", "--filter",
                          f"label=com.docker.compose.project={stack.S.project}")
        assert vols.stdout.strip() == ""
    if started_dockerd:
        assert compose.our_dockerd() is None
        assert subprocess.run(["kill", "-0", str(started_dockerd)], capture_output=True).returncode != 0
        # containerd, started by that dockerd, is gone with it
        assert subprocess.run(["pgrep", "-f", "/var/run/docker/containerd/containerd.toml"],
                              capture_output=True).returncode != 0
