"""docker-compose.yaml, its sandbox overlay and the Dockerfile as files (tests/compose/test_compose.py runs
them for real), and the shell scripts' hygiene."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import compose as compose_script  # sandbox/compose.py (the fixture below is named compose)
import pytest
import yaml

import sandbox

REPO = Path(__file__).resolve().parents[2]
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
    assert commands["airflow-dag-processor"] == ["dag-processor"]  # with the cluster-file watcher
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
    assert listed.stdout.splitlines() == ["backups_asso 1 one backup at a time on cluster asso (pgBackRest and WAL-G)",
                                          "pg_backups_verify 1 one verification drill at a time on its host"]


def test_list_pools_gives_a_shared_database_host_one_pool(tmp_path):
    """Clusters on one database host with database_host_slots share one pool, listed once with its slots."""
    config = tmp_path / "clusters.yaml"
    config.write_text("defaults: {database_host_slots: 2}\nclusters:\n"
                      "  - {name: a, host: db1.internal, walg: {prefix: a}}\n"
                      "  - {name: b, host: db1.internal, port: 5433, walg: {prefix: b}, restore_test: {staging_port: 5434}}\n"
                      "  - {name: c, host: db2.internal, walg: {prefix: c}, restore_test: {staging_port: 5436}}\n")
    listed = subprocess.run([str(REPO / ".venv/bin/python"), "-m", "pg_backups.cli", "list-pools"], text=True,
                            capture_output=True, check=True,
                            env={"PYTHONPATH": str(REPO / "plugins"), "PG_BACKUPS_CONFIG": str(config)})
    assert [line.split()[:2] for line in listed.stdout.splitlines()] == [
        ["backups_host_db1_internal", "2"], ["pg_backups_verify", "1"], ["backups_host_db2_internal", "2"]]


def test_image_builds_from_debian_with_airflow_under_the_constraints():
    dockerfile = (REPO / "Dockerfile").read_text()
    assert "ARG DEBIAN_RELEASE=trixie" in dockerfile and "ARG BASE_IMAGE=debian:${DEBIAN_RELEASE}-slim" in dockerfile
    assert "FROM ${BASE_IMAGE}" in dockerfile and "ARG PG_MAJOR=17" in dockerfile
    assert "COPY deploy/ca-certificates/ /usr/local/share/ca-certificates/" in dockerfile
    assert "update-ca-certificates" in dockerfile
    assert "pgbackrest" in dockerfile and "postgresql-${PG_MAJOR}" in dockerfile
    assert "-r /opt/pg_backups/requirements.txt -c /opt/pg_backups/constraints-image.txt" in dockerfile
    assert "-r /opt/pg_backups/requirements-celery.txt -c /opt/pg_backups/constraints-image.txt" in dockerfile


def test_compose_build_arguments_choose_the_release_and_the_postgresql_major(compose):
    args = compose["x-airflow-common"]["build"]["args"]
    assert args == {"DEBIAN_RELEASE": "${PG_BACKUPS_DEBIAN_RELEASE:-trixie}", "PG_MAJOR": "${PG_BACKUPS_PG_MAJOR:-17}"}
    sys.path.insert(0, str(REPO / "sandbox"))
    import compose as compose_sandbox

    trixie = compose_sandbox.Settings({})
    bookworm = compose_sandbox.Settings({"PG_BACKUPS_DEBIAN_RELEASE": "bookworm"})
    assert (trixie.base_image, trixie.pg_major) == ("debian:trixie-slim", "17")
    assert (bookworm.base_image, bookworm.pg_major) == ("debian:bookworm-slim", "15")
    assert "PG_BACKUPS_PG_MAJOR=15" in bookworm.compose()
    with pytest.raises(SystemExit, match="PG_BACKUPS_DEBIAN_RELEASE"):
        compose_sandbox.Settings({"PG_BACKUPS_DEBIAN_RELEASE": "buster"})
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


def test_compose_script_uses_the_sandbox_helpers_on_the_standard_library_only():
    """sandbox/compose.py runs before any virtualenv exists, and uses sandbox/sandbox.py's log, sh and
    read_env_file: importing that module must not import the project (-S: no site-packages)."""
    code = ("import sys; sys.path.insert(0, 'sandbox'); import compose\n"
            "compose.log('hello')\n"
            "try:\n    compose.sh('false')\nexcept SystemExit as exc:\n    print(exc)")
    proc = subprocess.run([sys.executable, "-I", "-S", "-c", code], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.splitlines() == ["[compose] hello", "[compose] failed (1): false", ""], proc.stdout


def test_env_files_read_back_as_written(tmp_path):
    """One reader for the compose sandbox's .env (KEY='value', which compose reads literally) and the
    loopback sandbox's sandbox.env (export KEY=<shell-quoted>)."""
    settings = compose_script.Settings({"COMPOSE_SANDBOX_DIR": str(tmp_path / "compose")})
    settings.dir.mkdir()
    compose_script.write_env(settings)
    written = [line.partition("=") for line in settings.env_file.read_text().splitlines() if not line.startswith("#")]
    assert settings.secrets() == {key: value.removeprefix("'").removesuffix("'") for key, _, value in written}
    assert json.loads(settings.secrets()["AIRFLOW_CONN_PG_ASSO"])["host"] == "db-asso"

    layout = sandbox.Layout(tmp_path, 27800)
    env = {"PLAIN": "value", "QUOTED": "it's \"x\" y", "EMPTY": "", "JSON": '{"a": [1, 2]}'}
    sandbox.write_env_file(layout, env)
    assert sandbox.read_env_file(layout.env_file) == env


def test_the_cluster_file_watcher_asks_for_one_reparse_per_change(tmp_path, monkeypatch):
    """pg_backups.airflow.reparse: nothing while the file stays, one request per change (an edit in
    place or a replacement by rename), and a failed request is tried again at the next look."""
    from pg_backups.airflow import reparse

    config = tmp_path / "clusters.yaml"
    config.write_text("clusters: [{name: asso}]\n")

    def replace():  # as an editor or a ConfigMap does: a new file renamed over the old one
        (tmp_path / "new.yaml").write_text("clusters: [{name: asso}]\n")
        (tmp_path / "new.yaml").rename(config)

    steps = iter([
        lambda: None,                                                      # unchanged
        lambda: config.write_text("clusters: [{name: asso}, {name: b}]\n"),  # edited
        lambda: None,                                                      # unchanged
        replace,
        lambda: None,                                                      # the request failed: again
    ])
    requests, outcomes = [], iter([3, RuntimeError("database is locked"), 3])

    def sleep(_seconds):
        try:
            next(steps)()
        except StopIteration:
            raise KeyboardInterrupt from None

    def request():
        requests.append(1)
        outcome = next(outcomes)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    monkeypatch.setattr(reparse.time, "sleep", sleep)
    monkeypatch.setattr(reparse, "request_reparse", request)
    with pytest.raises(KeyboardInterrupt):
        reparse.watch(config, 15)
    assert len(requests) == 3  # the edit, the replacement, and the retry after its failure
