"""docker-compose.yaml, its sandbox overlay and the Dockerfile as files (tests/test_compose.py runs
them for real), and the shell scripts' hygiene."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = sorted([*(REPO / "include" / "scripts").glob("*.sh"), *(REPO / "bin").iterdir(), REPO / ".ci" / "run",
                  REPO / "deploy" / "entrypoint.sh"])


class ComposeLoader(yaml.SafeLoader):
    """YAML with compose's merge tags (!override, !reset) read as plain values."""


ComposeLoader.add_constructor("!override", lambda loader, node: loader.construct_sequence(node)
                              if isinstance(node, yaml.SequenceNode) else loader.construct_mapping(node))
ComposeLoader.add_constructor("!reset", lambda loader, node: None)


@pytest.fixture(scope="module")
def compose():
    return yaml.safe_load((REPO / "docker-compose.yaml").read_text())


def test_compose_has_every_airflow_3_service_with_celery(compose):
    services = compose["services"]
    assert {"metadata-db", "redis", "airflow-init", "airflow-apiserver", "airflow-scheduler",
            "airflow-dag-processor", "airflow-triggerer", "airflow-worker"} <= set(services)
    commands = {name: s.get("command") for name, s in services.items()}
    assert commands["airflow-apiserver"] == ["airflow", "api-server"] and commands["airflow-worker"] == ["worker", "default"]
    assert commands["airflow-dag-processor"] == ["airflow", "dag-processor"]
    assert commands["airflow-triggerer"] == ["airflow", "triggerer"]
    for name in ("airflow-apiserver", "airflow-scheduler", "airflow-worker", "airflow-init"):
        env = services[name]["environment"]
        assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor", name
        mounts = {v.split(":")[1] for v in services[name]["volumes"]}
        assert {"/opt/airflow/dags", "/opt/airflow/plugins", "/opt/airflow/include"} <= mounts, name
    for name, service in services.items():
        assert "healthcheck" in service or name == "airflow-init", f"{name} has no healthcheck"


def test_core_never_mounts_a_data_directory_and_only_the_database_host_does_in_the_sandbox(compose):
    for name, service in compose["services"].items():
        if name == "metadata-db":
            continue
        for volume in service.get("volumes", []):
            assert "postgresql" not in volume and "pgdata" not in volume.lower(), (name, volume)
    overlay = yaml.load((REPO / "docker-compose.sandbox.yaml").read_text(), Loader=ComposeLoader)
    holders = [name for name, s in overlay["services"].items()
               if any("production-data" in str(v) for v in (s or {}).get("volumes", []))]
    assert holders == ["db-asso"]
    assert overlay["services"]["db-asso"]["command"] == ["database-host", "db-asso"]
    assert overlay["services"]["staging-asso"]["command"] == ["worker", "staging-asso"]


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
    assert listed.stdout.split() == ["backups_asso", "pg_backups_verify"]  # the cluster's, the drills' host's


def test_image_builds_from_debian_with_airflow_under_the_constraints():
    dockerfile = (REPO / "Dockerfile").read_text()
    assert "ARG BASE_IMAGE=debian:bookworm-slim" in dockerfile and "FROM ${BASE_IMAGE}" in dockerfile
    assert "COPY deploy/ca-certificates/ /usr/local/share/ca-certificates/" in dockerfile
    assert "update-ca-certificates" in dockerfile
    assert "pgbackrest" in dockerfile and "postgresql-15" in dockerfile
    assert "-r /opt/pg_backups/requirements.txt -c /opt/pg_backups/constraints-debian12.txt" in dockerfile
    assert "-r /opt/pg_backups/requirements-celery.txt -c /opt/pg_backups/constraints-debian12.txt" in dockerfile
    assert "apache-airflow==3.3.2" in (REPO / "requirements.txt").read_text()


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
