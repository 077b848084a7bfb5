"""The sandbox's Airflow: its home and environment (connections to the sandbox's services, written to
sandbox.env), its metadata database and pools, and a real Airflow over it (airflow-up/-down). The
project (the virtualenv) is imported only in the functions that use it: sandbox/compose.py takes
read_env_file from here with the standard library alone."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from layout import APP_DB, REGION, REPO, SECOND, STANZA, Layout
from processes import log, pid_alive, port_open, stop_daemon


def airflow_env(L: Layout, creds: dict) -> dict:
    aws = {"conn_type": "aws", "login": creds["aws_access_key_id"], "password": creds["aws_secret_access_key"],
           "extra": {"region_name": REGION, "endpoint_url": L.endpoint, "verify": str(L.ca_file),
                     "config_kwargs": {"s3": {"addressing_style": "path"}}}}
    pg = {"conn_type": "postgres", "host": "127.0.0.1", "port": L.pg_port, "login": "postgres",
          "password": creds["pg_password"], "schema": APP_DB}
    staging = {**pg, "port": L.staging_port}
    second = {}
    if SECOND in L.clusters:
        billing = {**pg, "port": L.billing_pg_port}
        second = {"AIRFLOW_CONN_PG_BILLING": json.dumps(billing),
                  "AIRFLOW_CONN_PG_BILLING_STAGING": json.dumps({**billing, "port": L.billing_staging_port})}
    slack = {"conn_type": "slackwebhook", "host": f"http://127.0.0.1:{L.slack_port}/services",
             "password": creds["slack_token"]}
    return {
        "AIRFLOW_HOME": str(L.airflow_home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://localhost:{L.api_port}/execution/",
        "AIRFLOW__API__PORT": str(L.api_port),
        # Every port Airflow opens comes from the port base, and wins over one exported by the caller.
        "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(L.worker_log_server_port),
        "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(L.trigger_log_server_port),
        "AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_SERVER_PORT": str(L.scheduler_health_check_port),
        "AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_SERVER_HOST": "127.0.0.1",
        # Slack alerts link to the task's log on this sandbox's UI, not to localhost:8080.
        "AIRFLOW__API__BASE_URL": f"http://localhost:{L.api_port}",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "ops:admin,qa:user",
        "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
        "PYTHONPATH": str(REPO / "plugins"),
        "PG_BACKUPS_CONFIG": str(L.clusters_file),
        # The copy of the last good clusters.yaml (docs/configuration-safety.md), inside the sandbox.
        "PG_BACKUPS_STATE_DIR": str(L.root / "state"),
        "AIRFLOW_CONN_AWS_BACKUPS": json.dumps(aws),
        "AIRFLOW_CONN_PG_ASSO": json.dumps(pg),
        "AIRFLOW_CONN_PG_ASSO_STAGING": json.dumps(staging),
        "AIRFLOW_CONN_SLACK_OPS": json.dumps(slack),
        **second,
        # The same settings for the cron scripts, which read the standard AWS variables.
        "AWS_ACCESS_KEY_ID": creds["aws_access_key_id"],
        "AWS_SECRET_ACCESS_KEY": creds["aws_secret_access_key"],
        "AWS_ENDPOINT_URL": L.endpoint,
        "AWS_CA_BUNDLE": str(L.ca_file),
        "SLACK_WEBHOOK_URL": f"http://127.0.0.1:{L.slack_port}/services/{creds['slack_token']}",
        # The runbook's variable: the cron scripts act on asso unless told otherwise (several clusters).
        "PG_BACKREST_STANZA": STANZA,
        "SANDBOX_DIR": str(L.root),
        "SANDBOX_PORT_BASE": str(L.port_base),
        "SANDBOX_CLUSTERS": ",".join(L.clusters),
    }


def read_env_file(path: Path) -> dict:
    """The variables of a sandbox.env (``export KEY=<shell-quoted>``), for callers that run Airflow or
    the scripts against it, or of compose.py's .env (``KEY='value'``: compose reads quotes literally)."""
    import shlex

    env = {}
    for line in Path(path).read_text().splitlines():
        key, equals, value = line.removeprefix("export ").partition("=")
        if equals and not key.lstrip().startswith("#"):
            env[key.strip()] = shlex.split(value)[0] if value else ""
    return env


def write_env_file(L: Layout, env: dict) -> None:
    import shlex

    fd = os.open(L.env_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write("# Written by sandbox/sandbox.py; holds the sandbox's secrets (mode 0600).\n")
        for key, value in env.items():
            out.write(f"export {key}={shlex.quote(value)}\n")


def setup_airflow(L: Layout, env: dict) -> None:
    from pg_backups.config import load_config

    L.airflow_home.mkdir(parents=True, exist_ok=True)
    airflow = Path(sys.executable).parent / "airflow"
    full_env = {**os.environ, **env}
    if not (L.airflow_home / "airflow.db").exists():
        log("airflow db migrate (first start only)")
        subprocess.run([airflow, "db", "migrate"], env=full_env, check=True, capture_output=True, text=True)
    for pool in {pool for cluster in load_config(L.clusters_file).clusters for pool in cluster.pools}:
        subprocess.run([airflow, "pools", "set", pool.name, str(pool.slots), pool.description],
                       env=full_env, check=True, capture_output=True, text=True)


# --------------------------------------------------------------------------------------------
# A real Airflow over the sandbox, as Ops run it: scheduler, dag-processor, triggerer, API server
# (LocalExecutor on the sandbox's SQLite database). `airflow dags test` needs none of it.

AIRFLOW_COMPONENTS = ("api-server", "scheduler", "dag-processor", "triggerer")


def stack_env(L: Layout) -> dict:
    env = {**os.environ, **read_env_file(L.env_file)}
    return {**env,
            # Its components start `airflow ...` children: the venv's bin must be on PATH.
            "PATH": f"{Path(sys.executable).parent}:{env.get('PATH', '')}",
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            "AIRFLOW__CORE__PARALLELISM": "4",  # two cores
            # New and changed DAG files within seconds (the defaults are minutes).
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "10",
            "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "10",
            "AIRFLOW__SCHEDULER__TASK_QUEUED_TIMEOUT": "600"}


def airflow_health(L: Layout) -> dict | None:
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{L.api_port}/api/v2/monitor/health", timeout=5) as resp:
            return json.loads(resp.read())
    except (OSError, ValueError):
        return None


def airflow_healthy(L: Layout) -> bool:
    health = airflow_health(L) or {}
    return all((health.get(part) or {}).get("status") == "healthy"
               for part in ("metadatabase", "scheduler", "triggerer", "dag_processor"))


def start_airflow(L: Layout, seconds: float = 300, settings: dict | None = None) -> None:
    """Start the components not running yet; wait until the API reports each healthy. ``settings``
    (``AIRFLOW__...`` variables) replace the sandbox's own, e.g. a deployment's parse intervals."""
    env = {**stack_env(L), **(settings or {})}
    airflow = Path(sys.executable).parent / "airflow"
    for name in AIRFLOW_COMPONENTS:
        pid_file = L.run_dir / f"airflow-{name}.pid"
        if pid_alive(pid_file):
            continue
        port = {"api-server": L.api_port, "scheduler": L.worker_log_server_port,
                "triggerer": L.trigger_log_server_port}.get(name)
        if port and port_open(port):
            # Else the component starts, logs "[Errno 98]" and runs without it (tasks' logs unreadable).
            raise SystemExit(f"[sandbox] port {port} for Airflow's {name} is taken by another program; "
                             "set SANDBOX_PORT_BASE to a free range")
        argv = [airflow, name] + (["--port", str(L.api_port), "--workers", "1"] if name == "api-server" else [])
        with open(L.logs / f"airflow-{name}.log", "a") as out:
            proc = subprocess.Popen([str(a) for a in argv], env=env, stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True, cwd=L.root)
        pid_file.write_text(str(proc.pid))
    deadline = time.monotonic() + seconds
    while not airflow_healthy(L):
        dead = [n for n in AIRFLOW_COMPONENTS if not pid_alive(L.run_dir / f"airflow-{n}.pid")]
        if dead or time.monotonic() > deadline:
            stop_airflow(L)
            why = f"{', '.join(dead)} exited" if dead else f"not healthy after {seconds:.0f} s"
            raise SystemExit(f"[sandbox] Airflow did not start ({why}); see {L.logs}/airflow-*.log")
        time.sleep(2)
    log(f"Airflow up: scheduler, dag-processor, triggerer, UI and API http://localhost:{L.api_port} "
        f"(users ops and qa: {L.airflow_home / 'simple_auth_manager_passwords.json.generated'})")


def stop_airflow(L: Layout) -> None:
    for name in AIRFLOW_COMPONENTS:
        stop_daemon(f"airflow-{name}", L)
