"""One sandbox per test session: real PostgreSQL, real pgBackRest, moto S3 behind stunnel TLS, a
Slack receiver and Airflow, on ports of their own (TEST_SANDBOX_PORT_BASE, default 26400).

Tests marked ``sandbox`` use it; ``pytest -m "not sandbox"`` runs the fast unit tests alone.
KEEP_SANDBOX=1 keeps it after the session and reuses it in the next (for debugging); otherwise
each session starts from a new one.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PORT_BASE = int(os.environ.get("TEST_SANDBOX_PORT_BASE", "26400"))
SANDBOX_DIR = Path(os.environ.get("TEST_SANDBOX_DIR", f"/var/tmp/pg-backups-test-{PORT_BASE}"))

sys.path.insert(0, str(REPO / "plugins"))
sys.path.insert(0, str(REPO / "sandbox"))

# Airflow reads its configuration when first imported: point it at the test sandbox first.
os.environ.update({
    "SANDBOX_DIR": str(SANDBOX_DIR),
    "SANDBOX_PORT_BASE": str(PORT_BASE),
    "AIRFLOW_HOME": str(SANDBOX_DIR / "airflow"),
    "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
    "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
    "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
    "PG_BACKUPS_CONFIG": os.environ.get("PG_BACKUPS_CONFIG_FOR_TESTS", str(REPO / "include/config/clusters.yaml")),
    # The last good copies the tests' loads keep go into the session's sandbox, not ~/.local/state.
    "PG_BACKUPS_STATE_DIR": str(SANDBOX_DIR / "state"),
    # Two clusters side by side, as Ops run several: asso (the runbook's) and billing.
    "SANDBOX_CLUSTERS": "asso,billing",
})

import sandbox as sandbox_module  # noqa: E402  (sandbox/sandbox.py)
from airflow_api import Client, wait_for  # noqa: E402,F401  (sandbox/airflow_api.py; tests import it from here)


@dataclass
class Sandbox:
    layout: "sandbox_module.Layout"
    env: dict

    @property
    def python(self) -> str:
        return sys.executable

    def run(self, *argv, check=True, timeout=900, env=None, **kw) -> subprocess.CompletedProcess:
        proc = subprocess.run([str(a) for a in argv], env={**os.environ, **self.env, **(env or {})}, text=True,
                              capture_output=True, timeout=timeout, cwd=REPO, **kw)
        if check and proc.returncode != 0:
            raise AssertionError(f"{argv} exited {proc.returncode}\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
        return proc

    def psql(self, sql: str, db: str = "app", port: int | None = None) -> str:
        return sandbox_module.psql(self.layout, sql, db=db, port=port)

    # Airflow ------------------------------------------------------------------------------
    def airflow(self, *args, check=True, timeout=900, env=None) -> subprocess.CompletedProcess:
        return self.run(Path(sys.executable).parent / "airflow", *args, check=check, timeout=timeout, env=env)

    def dags_test(self, dag_id: str, conf: dict | None = None, timeout=900, env=None) -> "DagRunResult":
        """Run a DAG for real with `airflow dags test`, then read its run from Airflow's database."""
        before = {r for r, in self._db("SELECT run_id FROM dag_run WHERE dag_id = ?", dag_id)}
        args = ["dags", "test", dag_id]
        if conf:
            args += ["--conf", json.dumps(conf)]
        proc = self.airflow(*args, check=False, timeout=timeout, env=env)
        runs = [r for r, in self._db("SELECT run_id FROM dag_run WHERE dag_id = ? ORDER BY id", dag_id) if r not in before]
        assert runs, f"no run of {dag_id} was created:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        run_id = runs[-1]
        (state,), = self._db("SELECT state FROM dag_run WHERE dag_id = ? AND run_id = ?", dag_id, run_id)
        tasks = {t: (s, n) for t, s, n in self._db(
            "SELECT task_id, state, try_number FROM task_instance WHERE dag_id = ? AND run_id = ?", dag_id, run_id)}
        xcoms = {}
        for task_id, value in self._db("SELECT task_id, value FROM xcom WHERE dag_id = ? AND run_id = ? "
                                       "AND key = 'return_value'", dag_id, run_id):
            xcoms[task_id] = json.loads(value) if isinstance(value, (str, bytes)) else value
        return DagRunResult(dag_id, run_id, state, {t: s for t, (s, _) in tasks.items()},
                            {t: n for t, (_, n) in tasks.items()}, xcoms, proc.stdout + proc.stderr)

    def _db(self, sql: str, *params):
        with sqlite3.connect(self.layout.airflow_home / "airflow.db") as db:
            return db.execute(sql, params).fetchall()

    # Slack --------------------------------------------------------------------------------
    def slack_messages(self) -> list[dict]:
        path = self.layout.slack_messages
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []

    def slack_texts_since(self, count: int) -> list[str]:
        return [m["body"].get("text", "") for m in self.slack_messages()[count:]]

    # S3 -----------------------------------------------------------------------------------
    def stop_s3(self) -> None:
        sandbox_module.stop_daemon("stunnel", self.layout)

    def start_s3(self) -> None:
        sandbox_module.start_s3(self.layout)

    def s3_client(self):
        from pg_backups.s3_access import S3Access

        return S3Access(region="eu-west-3", access_key=self.env["AWS_ACCESS_KEY_ID"],
                        secret_key=self.env["AWS_SECRET_ACCESS_KEY"], endpoint_url=self.env["AWS_ENDPOINT_URL"],
                        ca_file=self.env["AWS_CA_BUNDLE"]).boto3_client()

    def cluster(self):
        from pg_backups.config import load_config

        return load_config(self.layout.clusters_file).cluster("asso")

    def secrets(self) -> list[str]:
        creds = json.loads(self.layout.credentials_file.read_text())
        return [creds["aws_secret_access_key"], creds["aws_access_key_id"], creds["pg_password"], creds["slack_token"]]


@dataclass
class DagRunResult:
    dag_id: str
    run_id: str
    state: str
    task_states: dict
    try_numbers: dict
    xcoms: dict
    output: str


@pytest.fixture(scope="session")
def sandbox() -> Sandbox:
    # A fresh sandbox per session: whatever an earlier session left in SANDBOX_DIR goes first.
    if os.environ.get("KEEP_SANDBOX") != "1":
        subprocess.run([sys.executable, REPO / "sandbox" / "sandbox.py", "destroy"], text=True, capture_output=True)
    up = subprocess.run([sys.executable, REPO / "sandbox" / "sandbox.py", "up"], text=True, capture_output=True,
                        env=os.environ.copy())
    if up.returncode != 0:
        pytest.fail(f"sandbox up failed:\n{up.stdout}\n{up.stderr}")
    env = sandbox_module.read_env_file(SANDBOX_DIR / "sandbox.env")
    os.environ.update(env)  # connections for in-process hooks too
    box = Sandbox(sandbox_module.Layout.from_env(), env)
    yield box
    if os.environ.get("KEEP_SANDBOX") != "1":
        subprocess.run([sys.executable, REPO / "sandbox" / "sandbox.py", "destroy"], text=True, capture_output=True)


def pytest_collection_modifyitems(config, items):
    """The real scheduler's tests last: while it runs, it would also schedule the runs that
    `airflow dags test` creates in the same metadata database."""
    items.sort(key=lambda item: item.get_closest_marker("scheduler") is not None)


@pytest.fixture(scope="session")
def stack(configured_bucket) -> Client:
    """A real Airflow over the session's sandbox, started once; its tests run last."""
    up = subprocess.run([sys.executable, REPO / "sandbox" / "sandbox.py", "airflow-up"], text=True,
                        capture_output=True, env={**os.environ, **configured_bucket.env})
    if up.returncode != 0:
        pytest.fail(f"airflow-up failed:\n{up.stdout}\n{up.stderr}")
    try:
        yield Client(configured_bucket.layout)
    finally:
        subprocess.run([sys.executable, REPO / "sandbox" / "sandbox.py", "airflow-down"], text=True,
                       capture_output=True, env={**os.environ, **configured_bucket.env})


@pytest.fixture(scope="session")
def configured_bucket(sandbox) -> Sandbox:
    """The sandbox with its bucket configured by the real S3 DAG."""
    result = sandbox.dags_test("s3_bucket_config_asso")
    assert result.state == "success", result.output[-3000:]
    return sandbox


@pytest.fixture(scope="session")
def first_backup(configured_bucket):
    """One pgBackRest backup taken by the real DAG (it creates the stanza), and one WAL-G backup
    when a WAL-G binary was found (the freshness checks want each tool's); later tests build on it.
    The pgBackRest run is returned."""
    result = configured_bucket.dags_test("pgbackrest_backup_asso")
    assert result.state == "success", result.output[-5000:]
    if "walg" in configured_bucket.cluster().tools:
        walg = configured_bucket.dags_test("walg_backup_asso")
        assert walg.state == "success", walg.output[-5000:]
    return result
