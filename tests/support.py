"""What the test files share, as a plain module (pytest.ini puts tests/ on the path): the repository
and the session's ports, the environment the session runs in, the sandbox's handle, and helpers and
recorded samples more than one test file uses. Fixtures live in the conftests, not here."""

from __future__ import annotations

import json
import os
import re
import sqlite3
import stat
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

import sandbox as sandbox_module  # sandbox/sandbox.py
from airflow_api import wait_for  # noqa: F401  (sandbox/airflow_api.py; the tests import it from here)

REPO = Path(__file__).resolve().parents[1]
PORT_BASE = int(os.environ.get("TEST_SANDBOX_PORT_BASE", "26400"))
SANDBOX_DIR = Path(os.environ.get("TEST_SANDBOX_DIR", f"/var/tmp/pg-backups-test-{PORT_BASE}"))
# The alert-channel receivers (alert_receivers.py) and a port nobody listens on.
SMTP_PORT, PAGERDUTY_PORT, CLOSED_PORT = PORT_BASE + 20, PORT_BASE + 21, PORT_BASE + 22
ROUTING_KEY = "R0UT1NGKEY-0123456789abcdef"
# The DAG kinds whose failed run alerts once, and the tasks that send that alert (from the run's
# evidence, which names the failed step and its cause, and from its teardown); every other task of
# every DAG alerts itself. A contract asserted from outside, so declared here and not read from the DAGs.
ALERT_ONCE_TASKS = {"restore_test": ("audit_and_archive", "stop_staging_after"),
                    "verify_backup": ("record_evidence", "remove_target"),
                    "verify_pitr": ("record_evidence", "remove_target")}


def alerts_itself(dag_kind: str, task_id: str) -> bool:
    """Whether a task of a DAG of that kind carries the failure notifier (ALERT_ONCE_TASKS)."""
    return task_id in ALERT_ONCE_TASKS.get(dag_kind, (task_id,))


def session_environment() -> dict[str, str]:
    """The variables the session runs with (set by the root conftest before any test module is
    imported: Airflow reads its configuration when first imported)."""
    return {
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
    }


# --------------------------------------------------------------------------------------------
# The session's sandbox (the ``sandbox`` fixture in tests/conftest.py returns one)


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


# --------------------------------------------------------------------------------------------
# Sandbox runs: a changed configuration, the alerts they sent


def config_copy(sandbox, name: str, changes: dict) -> str:
    """A copy of the sandbox's clusters.yaml with ``changes`` merged into its cluster, somewhere the
    postgres user can read (the tools run as postgres)."""
    data = yaml.safe_load(sandbox.layout.clusters_file.read_text())

    def merge(base, over):
        for key, value in over.items():
            if isinstance(value, dict) and isinstance(base.get(key), dict):
                merge(base[key], value)
            else:
                base[key] = value

    merge(data["clusters"][0], changes)
    directory = sandbox.layout.root / "test-configs"
    directory.mkdir(exist_ok=True)
    directory.chmod(0o755)
    path = directory / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    path.chmod(0o644)
    return str(path)


TITLES = {"s3_bucket_config": "Bucket configuration failed", "pgbackrest_backup": "Backup failed",
          "restore_test": "Restore test failed", "backup_freshness": "Backup freshness check failed"}


def assert_alert(text: str, dag_id: str, task_id: str, try_number: int, error: str, sandbox) -> None:
    """Every field, in the one format of notifiers.FAILURE_TEXT, titled with what failed, and no secret."""
    lines = text.splitlines()
    assert lines[0] == f":red_circle: *{TITLES[dag_id.removesuffix('_asso')]}* - cluster `asso`", text
    assert lines[1] == f"*DAG:* `{dag_id}`  *Task:* `{task_id}`  *Try:* {try_number}", text
    assert re.fullmatch(r"\*Run:\* `manual__\S+`", lines[2]), text
    assert lines[3].startswith("*Error:* ") and error in lines[3], text
    assert "{{" not in text and "}}" not in text, text  # every template field rendered
    assert re.fullmatch(rf"\*Log:\* https?://\S+/dags/{dag_id}/runs/\S+/tasks/{task_id}\?try_number={try_number}",
                        lines[4]), text
    for secret in sandbox.secrets():
        assert secret not in text


def alerts_for(texts: list[str], dag_id: str, task_id: str) -> list[str]:
    return [t for t in texts if t.startswith(":red_circle:") and f"*DAG:* `{dag_id}`  *Task:* `{task_id}`" in t]


# --------------------------------------------------------------------------------------------
# DAG parsing, metrics


def load_dagbag(config_path: str | Path, env: dict | None = None):
    """Parse the DAG folder in a child process, as Airflow's dag-processor does (``env``: more of
    that process's environment)."""
    code = (
        "import json, sys\n"
        "from airflow.dag_processing.dagbag import DagBag\n"
        "bag = DagBag(dag_folder=sys.argv[1])\n"
        "out = {'errors': {k: str(v) for k, v in bag.import_errors.items()}, 'dags': {}}\n"
        "for dag_id, dag in bag.dags.items():\n"
        "    tasks = [{'task_id': t.task_id, 'owner': t.owner, 'retries': t.retries,\n"
        "              'retry_delay': t.retry_delay.total_seconds(), 'pool': t.pool,\n"
        "              'on_failure_callback': bool(t.on_failure_callback), 'is_teardown': t.is_teardown,\n"
        "              'on_failure_fail_dagrun': t.on_failure_fail_dagrun} for t in dag.tasks]\n"
        "    out['dags'][dag_id] = {'tags': sorted(dag.tags), 'catchup': dag.catchup,\n"
        "        'max_active_runs': dag.max_active_runs, 'doc_md': dag.doc_md or '',\n"
        "        'schedule': str(dag.schedule), 'tasks': tasks}\n"
        "print(json.dumps(out))\n"
    )
    env = {**os.environ, "PG_BACKUPS_CONFIG": str(config_path), "PYTHONPATH": str(REPO / "plugins"), **(env or {})}
    proc = subprocess.run([sys.executable, "-c", code, str(REPO / "dags")], env=env, text=True, capture_output=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    import json

    return json.loads(proc.stdout.strip().splitlines()[-1])


def metric_value(text, name, **labels):
    """The one sample of metric ``name`` whose labels include ``labels``."""
    from pg_backups import metrics

    found = [v for (n, ls), v in metrics.parse(text).items() if n == name and all((k, str(x)) in ls
                                                                                 for k, x in labels.items())]
    assert len(found) == 1, (name, labels, text)
    return found[0]


class FakeS3:
    def get_paginator(self, name):
        assert name == "list_object_versions"
        return self

    def paginate(self, Bucket):  # noqa: N803 (boto3's naming)
        yield {"Versions": [{"Key": "a", "Size": 100, "StorageClass": "STANDARD", "IsLatest": True},
                            {"Key": "a", "Size": 90, "StorageClass": "STANDARD", "IsLatest": False}],
               "DeleteMarkers": [{"Key": "b", "IsLatest": True}]}
        yield {"Versions": [{"Key": "c", "Size": 5000, "StorageClass": "DEEP_ARCHIVE", "IsLatest": False},
                            {"Key": "d", "Size": 7, "IsLatest": True}]}


# --------------------------------------------------------------------------------------------
# S3 and files


WRITES = ("put_", "delete_", "create_")  # the S3 operations that change a bucket


# A statement of SecOps' own in the bucket policy: the policy merge must keep it.
SECOPS = {"Sid": "SecOpsDenyDeleteBucket", "Effect": "Deny", "Principal": "*", "Action": "s3:DeleteBucket",
          "Resource": "arn:aws:s3:::asso-prod-backups"}


class RecordingClient:
    """Wraps a boto3 S3 client and records every operation; without a client, any use fails."""

    def __init__(self, client=None):
        self._client, self.calls = client, []

    def __getattr__(self, name):
        if self._client is None:
            self.calls.append(name)
            raise AssertionError(f"S3 was called ({name}) although the settings are invalid")
        attr = getattr(self._client, name)
        if not callable(attr):
            return attr

        def call(*args, **kwargs):
            self.calls.append(name)
            return attr(*args, **kwargs)
        return call

    @property
    def writes(self) -> list[str]:
        return [c for c in self.calls if c.startswith(WRITES)]


def s3_settings(**s3):
    """S3 settings as the project reads them (validated by parse_config)."""
    from pg_backups.config import parse_config

    return parse_config({"clusters": [{"name": "asso", "s3": s3}]}).clusters[0].s3


def file_mode(path) -> int:
    """The permission bits of ``path`` itself (a symlink's own, not its target's)."""
    return stat.S_IMODE(os.lstat(path).st_mode)


# --------------------------------------------------------------------------------------------
# Tool outputs recorded from real runs

# `pgbackrest info --output=json` (2.45), one stanza: a full, a diff, and a failed diff (error=true).
PGBACKREST_INFO_RECORDED_SAMPLE = json.dumps([{
    "name": "asso", "status": {"code": 0, "message": "ok", "lock": {"backup": {"held": False}}},
    "cipher": "none", "db": [{"id": 1, "repo-key": 1, "system-id": 7441234567890123456, "version": "15"}],
    "archive": [{"database": {"id": 1, "repo-key": 1}, "id": "15-1", "max": "000000010000000000000012",
                 "min": "000000010000000000000003"}],
    "backup": [
        {"archive": {"start": "000000010000000000000005", "stop": "000000010000000000000005"},
         "backrest": {"format": 5, "version": "2.45"}, "database": {"id": 1, "repo-key": 1}, "error": False,
         "info": {"delta": 31541943, "repository": {"delta": 4096000, "size": 4096000}, "size": 31541943},
         "label": "20261124-021502F", "lsn": {"start": "0/5000028", "stop": "0/5000100"}, "prior": None,
         "reference": None, "timestamp": {"start": 1795486502, "stop": 1795486530}, "type": "full",
         "annotation": {"airflow_run_id": "scheduled__2026-11-24T02:15:00+00:00"}},
        {"archive": {"start": "000000010000000000000009", "stop": "000000010000000000000009"},
         "backrest": {"format": 5, "version": "2.45"}, "database": {"id": 1, "repo-key": 1}, "error": False,
         "info": {"delta": 2277376, "repository": {"delta": 301234, "size": 4397234}, "size": 31541943},
         "label": "20261124-021502F_20261125-021503D", "lsn": {"start": "0/9000028", "stop": "0/9000100"},
         "prior": "20261124-021502F", "reference": ["20261124-021502F"],
         "timestamp": {"start": 1795572903, "stop": 1795572915}, "type": "diff"},
        {"archive": {"start": "00000001000000000000000B", "stop": "00000001000000000000000B"},
         "backrest": {"format": 5, "version": "2.45"}, "database": {"id": 1, "repo-key": 1}, "error": True,
         "info": {"delta": 2277376, "repository": {"delta": 301234, "size": 4397234}, "size": 31541943},
         "label": "20261124-021502F_20261125-101503D", "lsn": {"start": "0/B000028", "stop": "0/B000100"},
         "prior": "20261124-021502F", "reference": ["20261124-021502F"],
         "timestamp": {"start": 1795601703, "stop": 1795601715}, "type": "diff"},
    ],
}])

# `wal-g backup-list --json --detail` (WAL-G 3.0.x): a full and a delta on top of it.
WALG_BACKUP_LIST_RECORDED_SAMPLE = json.dumps([
    {"backup_name": "base_000000010000000000000004", "time": "2026-11-24T02:45:09.412345Z",
     "wal_file_name": "000000010000000000000004", "storage_name": "default",
     "start_time": "2026-11-24T02:45:03.100200Z", "finish_time": "2026-11-24T02:45:09.412345Z",
     "date_fmt": "%Y-%m-%dT%H:%M:%S.%fZ", "hostname": "db1", "data_dir": "/var/lib/postgresql/data",
     "pg_version": 150010, "start_lsn": 67108904, "finish_lsn": 67109160, "is_permanent": False,
     "system_identifier": 7441234567890123456, "uncompressed_size": 31541943, "compressed_size": 3976543,
     "user_data": {"airflow_run_id": "scheduled__2026-11-24T02:45:00+00:00"}},
    {"backup_name": "base_000000010000000000000010_D_000000010000000000000004",
     "time": "2026-11-25T02:45:07.000001Z", "wal_file_name": "000000010000000000000010",
     "storage_name": "default", "start_time": "2026-11-25T02:45:02.5Z", "finish_time": "2026-11-25T02:45:07.000001Z",
     "date_fmt": "%Y-%m-%dT%H:%M:%S.%fZ", "hostname": "db1", "data_dir": "/var/lib/postgresql/data",
     "pg_version": 150010, "start_lsn": 268435496, "finish_lsn": 268435752, "is_permanent": False,
     "system_identifier": 7441234567890123456, "uncompressed_size": 31541943, "compressed_size": 254321,
     "user_data": "{\"airflow_run_id\":\"scheduled__2026-11-25T02:45:00+00:00\"}"},
])
