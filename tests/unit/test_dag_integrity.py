"""Every DAG imports cleanly and follows the house rules; a bad configuration is an import error."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from pg_backups.config import dag_kind
from support import alerts_itself, load_dagbag

REPO = Path(__file__).resolve().parents[2]
RUNBOOK_SCHEDULES = {
    "pgbackrest_backup_asso": "15 2 * * *",  # runbook 2.1: 02:15 UTC
    "walg_backup_asso": "45 2 * * *",  # runbook 2.2: 02:45 UTC
    "restore_test_asso": "0 2 * 1,4,7,10 0#1",  # runbook 3: first Sunday of each quarter, 02:00 UTC
}


@pytest.fixture(scope="module")
def dagbag():
    return load_dagbag(REPO / "include" / "config" / "clusters.yaml")


def test_no_import_errors(dagbag):
    assert dagbag["errors"] == {}
    assert set(dagbag["dags"]) >= {"pgbackrest_backup_asso", "walg_backup_asso", "s3_bucket_config_asso"}


def test_every_dag_follows_the_house_rules(dagbag):
    for dag_id, dag in dagbag["dags"].items():
        assert dag["tags"], dag_id
        assert dag["catchup"] is False, dag_id
        assert dag["max_active_runs"] == 1, dag_id
        assert len(dag["doc_md"]) > 50, dag_id
        for t in dag["tasks"]:
            where = f"{dag_id}.{t['task_id']}"
            assert t["owner"] and t["owner"] != "airflow", where
            assert t["retries"] >= 1 and t["retry_delay"] > 0, where
            if alerts_itself(dag_kind(dag_id), t["task_id"]):  # the drills and the restore test: once a run
                assert t["on_failure_callback"], where
            # A teardown decides its run's state: Airflow ignores a teardown's state otherwise, and a run
            # marked failed by hand (its audit skipped, its teardown run) ended success.
            # (The drill's remove_target follows record_evidence, the teardown that decides.)
            if t["is_teardown"] and where != f"{dag_id}.remove_target":
                assert t["on_failure_fail_dagrun"], where


def test_schedules_are_the_runbooks(dagbag):
    for dag_id, schedule in RUNBOOK_SCHEDULES.items():
        if dag_id in dagbag["dags"]:
            assert dagbag["dags"][dag_id]["schedule"] == schedule, dag_id
    assert dagbag["dags"]["pgbackrest_backup_asso"]["schedule"] == "15 2 * * *"
    assert dagbag["dags"]["walg_backup_asso"]["schedule"] == "45 2 * * *"


def test_both_backup_dags_share_the_clusters_pool(dagbag):
    pools = {dag_id: {t["pool"] for t in dag["tasks"] if t["task_id"] in ("backup", "backup_push")}
             for dag_id, dag in dagbag["dags"].items() if dag_id.endswith("_backup_asso")
             and not dag_id.startswith("verify_")}
    assert pools == {"pgbackrest_backup_asso": {"backups_asso"}, "walg_backup_asso": {"backups_asso"}}


def test_the_repository_verify_is_off_the_backups_path(dagbag):
    """`pgbackrest verify` reads every backup kept (34.7 s with 5, 79.4 s with 8 on the sandbox): a
    DAG of its own, weekly, in the cluster's pool; the backup DAG publishes right after the backup."""
    backup = {t["task_id"] for t in dagbag["dags"]["pgbackrest_backup_asso"]["tasks"]}
    assert backup == {"preflight", "backup", "publish_backup", "expire", "verify"}  # verify: --set of that backup
    verify = dagbag["dags"]["pgbackrest_verify_asso"]
    assert verify["schedule"] == "0 4 * * 0" and [(t["task_id"], t["pool"]) for t in verify["tasks"]] == [
        ("verify", "backups_asso")]


def test_each_backup_asset_starts_the_clusters_drill(dagbag):
    drill = dagbag["dags"]["verify_backup_asso"]
    assert "pgbackrest_backup_asso" in drill["schedule"] and "walg_backup_asso" in drill["schedule"]
    pools = {t["task_id"]: t["pool"] for t in drill["tasks"]}
    assert pools["drill"] == "pg_backups_verify"  # one drill at a time on the verification host


def test_dags_are_generated_per_cluster(tmp_path):
    config = tmp_path / "clusters.yaml"
    config.write_text("clusters:\n  - name: asso\n  - name: billing\n    host: db-billing.internal\n"
                      "    tools: [pgbackrest]\n"
                      "    restore_test: {staging_root: /srv/st, staging_data_directory: /srv/st/data, staging_port: 5434}\n"
                      "    verify: {enabled: false}\n")
    bag = load_dagbag(config)
    assert bag["errors"] == {}
    assert "pgbackrest_backup_billing" in bag["dags"] and "walg_backup_billing" not in bag["dags"]
    assert "verify_backup_asso" in bag["dags"] and "verify_backup_billing" not in bag["dags"]  # drills off
    assert "walg_backup_asso" in bag["dags"]


def test_bad_configuration_is_an_import_error_not_a_half_built_dag(tmp_path):
    config = tmp_path / "clusters.yaml"
    config.write_text("clusters:\n  - name: asso\n    pgbackrest: {schedule: 'at night'}\n")
    bag = load_dagbag(config)
    assert bag["dags"] == {}
    assert bag["errors"], "a bad configuration must show as an import error"
    for message in bag["errors"].values():
        assert str(config) in message and "pgbackrest.schedule" in message and "Fix:" in message


def test_one_bad_cluster_is_one_import_error_and_the_others_keep_their_dags(tmp_path):
    config = tmp_path / "clusters.yaml"
    config.write_text("clusters:\n  - name: asso\n  - name: billing\n    host: db-billing.internal\n"
                      "    pgbackrest: {schedule: 'at night'}\n")
    bag = load_dagbag(config)
    assert len(bag["errors"]) == 1, bag["errors"]
    (path, message), = bag["errors"].items()
    assert path.endswith("configuration_errors.py")
    assert "clusters[1].pgbackrest.schedule" in message and "Fix:" in message
    assert {"pgbackrest_backup_asso", "walg_backup_asso", "restore_test_asso", "backup_freshness_asso",
            "s3_bucket_config_asso"} <= set(bag["dags"])
    assert not [dag_id for dag_id in bag["dags"] if dag_id.endswith("_billing")]


def test_a_file_that_is_not_yaml_is_one_import_error(tmp_path):
    config = tmp_path / "clusters.yaml"
    config.write_text("clusters: [name: {\n")
    bag = load_dagbag(config)
    assert bag["dags"] == {}
    assert len(bag["errors"]) == 1 and "not valid YAML" in next(iter(bag["errors"].values()))


def test_clusters_that_would_share_a_resource_are_refused_naming_both(tmp_path):
    """The second cluster would restore over the first one's staging port: it is left out, the first runs."""
    config = tmp_path / "clusters.yaml"
    config.write_text("clusters:\n  - name: asso\n  - name: billing\n    host: db-billing.internal\n"
                      "    walg: {prefix: billing}\n")
    bag = load_dagbag(config)
    (message,) = bag["errors"].values()
    assert "clusters[1].restore_test.staging_port" in message and "'billing'" in message and "'asso'" in message
    assert "restore_test_asso" in bag["dags"] and "restore_test_billing" not in bag["dags"]


def test_tasks_run_on_the_queue_of_the_host_that_owns_the_data(tmp_path):
    config = tmp_path / "clusters.yaml"
    config.write_text("clusters:\n  - name: asso\n    database_queue: db-asso\n"
                      "    restore_test: {staging_queue: staging-asso}\n")
    code = ("import json, sys\nfrom airflow.dag_processing.dagbag import DagBag\nbag = DagBag(dag_folder=sys.argv[1])\n"
            "print(json.dumps({d.dag_id: sorted({t.queue for t in d.tasks}) for d in bag.dags.values()}))\n")
    env = {**os.environ, "PG_BACKUPS_CONFIG": str(config), "PYTHONPATH": str(REPO / "plugins")}
    proc = subprocess.run([sys.executable, "-c", code, str(REPO / "dags")], env=env, text=True, capture_output=True,
                          timeout=300)
    import json

    queues = json.loads(proc.stdout.strip().splitlines()[-1])
    assert queues["pgbackrest_backup_asso"] == ["db-asso"] and queues["walg_backup_asso"] == ["db-asso"]
    assert queues["backup_freshness_asso"] == ["db-asso"]
    assert queues["restore_test_asso"] == ["staging-asso"]
    assert queues["s3_bucket_config_asso"] == ["default"]


def fleet_file(tmp_path: Path) -> Path:
    """12 clusters (a fleet) on 3 database hosts, both tools."""
    config = tmp_path / "clusters.yaml"
    config.write_text("defaults: {database_host_slots: 2}\nclusters:\n" + "".join(
        f"  - {{name: c{i:02d}, host: db{i % 3}.internal, port: {5432 + i}, walg: {{prefix: c{i:02d}}}, "
        f"restore_test: {{staging_port: {6000 + i}}}}}\n" for i in range(12)))
    return config


def test_a_fleets_dags_carry_the_spread_slots_and_their_hosts_pool(tmp_path):
    """A file of 12 clusters on 3 database hosts: each DAG's schedule is the cluster's spread slot
    (as the configuration computes it) and the backup tasks take the host's pool."""
    from pg_backups.config import load_config

    config = fleet_file(tmp_path)
    bag = load_dagbag(config)
    assert bag["errors"] == {}
    clusters = load_config(config).clusters
    assert len({c.pgbackrest.schedule for c in clusters}) > 3
    for c in clusters:
        assert bag["dags"][f"pgbackrest_backup_{c.name}"]["schedule"] == c.pgbackrest.schedule != "15 2 * * *"
        assert bag["dags"][f"walg_backup_{c.name}"]["schedule"] == c.walg.schedule
        assert bag["dags"][f"restore_test_{c.name}"]["schedule"] == c.restore_test.schedule
        assert bag["dags"][f"backup_freshness_{c.name}"]["schedule"] == f"{c.spread_minutes % 60} * * * *"
        assert bag["dags"][f"s3_bucket_config_{c.name}"]["schedule"] == c.daily_schedule != "@daily"
        backup_pools = {t["pool"] for t in bag["dags"][f"pgbackrest_backup_{c.name}"]["tasks"] if t["task_id"] == "backup"}
        assert backup_pools == {f"backups_host_db{int(c.name[1:]) % 3}_internal"}


def test_a_tasks_own_parse_builds_only_the_dag_it_runs(tmp_path):
    """Airflow's task runner re-parses the DAG's file with the DAG it runs in its parsing context
    (``_AIRFLOW_PARSING_CONTEXT_DAG_ID``): of a fleet only that DAG is built, and the same DAG as
    the dag-processor's."""
    config = fleet_file(tmp_path)
    whole = load_dagbag(config)
    running = load_dagbag(config, {"_AIRFLOW_PARSING_CONTEXT_DAG_ID": "pgbackrest_backup_c03"})
    assert len(whole["dags"]) > 100
    assert running["errors"] == {}
    assert set(running["dags"]) == {"pgbackrest_backup_c03", "configuration_alerts"}
    assert running["dags"]["pgbackrest_backup_c03"] == whole["dags"]["pgbackrest_backup_c03"]
