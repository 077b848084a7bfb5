"""docker-compose.yaml and the Dockerfile (no Docker engine runs on these machines: what can be
checked without one is checked here), and the shell scripts' hygiene."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = sorted([*(REPO / "include" / "scripts").glob("*.sh"), *(REPO / "bin").iterdir(), REPO / ".ci" / "run"])


@pytest.fixture(scope="module")
def compose():
    return yaml.safe_load((REPO / "docker-compose.yaml").read_text())


def test_compose_has_every_airflow_3_service_with_celery(compose):
    services = compose["services"]
    assert {"metadata-db", "redis", "airflow-init", "airflow-apiserver", "airflow-scheduler",
            "airflow-dag-processor", "airflow-triggerer", "airflow-worker"} <= set(services)
    commands = {name: s.get("command") for name, s in services.items()}
    assert commands["airflow-apiserver"] == "api-server" and commands["airflow-worker"] == "celery worker"
    assert commands["airflow-dag-processor"] == "dag-processor" and commands["airflow-triggerer"] == "triggerer"
    for name in ("airflow-apiserver", "airflow-scheduler", "airflow-worker", "airflow-init"):
        env = services[name]["environment"]
        assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor", name
        mounts = {v.split(":")[1] for v in services[name]["volumes"]}
        assert {"/opt/airflow/dags", "/opt/airflow/plugins", "/opt/airflow/include"} <= mounts, name


def test_compose_takes_every_secret_from_the_environment(compose):
    env = compose["services"]["airflow-worker"]["environment"]
    for key, value in env.items():
        if key.startswith("AIRFLOW_CONN_") or any(w in key for w in ("PASSWORD", "KEY", "SQL_ALCHEMY", "BACKEND")):
            assert "${" in str(value), f"{key} must come from the environment"
    assert "${AIRFLOW_METADATA_PASSWORD" in compose["services"]["metadata-db"]["environment"]["POSTGRES_PASSWORD"]


def test_compose_init_creates_the_pools_the_dags_use(compose):
    init = "\n".join(compose["services"]["airflow-init"]["command"])
    assert "airflow db migrate" in init and "pg_backups.cli list-pools" in init and "airflow pools set" in init
    listed = subprocess.run([str(REPO / ".venv/bin/python"), "-m", "pg_backups.cli", "list-pools"], text=True,
                            capture_output=True, env={"PYTHONPATH": str(REPO / "plugins")}, check=True)
    assert listed.stdout.split() == ["backups_asso"]


def test_image_carries_pgbackrest_and_a_pinned_walg():
    dockerfile = (REPO / "Dockerfile").read_text()
    assert re.search(r"AIRFLOW_IMAGE=apache/airflow:3\.3\.\d", dockerfile) and "FROM ${AIRFLOW_IMAGE}" in dockerfile
    assert "WALG_VERSION=v3.0.9" in dockerfile and "CGO_ENABLED=0" in dockerfile
    assert "github.com/wal-g/wal-g/main/pg@${WALG_VERSION}" in dockerfile
    assert "COPY --from=walg /out/pg /usr/local/bin/wal-g" in dockerfile
    assert "pgbackrest" in dockerfile and "-c /opt/pg_backups/constraints.txt" in dockerfile


@pytest.mark.parametrize("script", SCRIPTS, ids=[s.name for s in SCRIPTS])
def test_scripts_are_strict_and_shellcheck_clean(script):
    text = script.read_text()
    assert "set -euo pipefail" in text
    proc = subprocess.run(["shellcheck", "-x", str(script)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout


@pytest.mark.parametrize("script", sorted((REPO / "include" / "scripts").glob("*.sh")), ids=lambda p: p.name)
def test_cron_scripts_have_usage_and_refuse_stray_arguments(script):
    help_ = subprocess.run([str(script), "--help"], capture_output=True, text=True)
    assert help_.returncode == 0 and len(help_.stdout) > 40
    if script.name != "pg_backups_cli.sh":
        bad = subprocess.run([str(script), "--bogus"], capture_output=True, text=True)
        assert bad.returncode == 2 and "usage" in bad.stderr
