"""Configuration safety (issue 25, items 2 and 3): every problem of an entry at once, the last good
configuration keeps running when the file breaks, one Slack alert per bad version of the file, and
``check-config`` for a pre-commit hook or CI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from pg_backups import config as config_module
from pg_backups.config import ConfigError, load_config, parse_config

REPO = Path(__file__).resolve().parents[2]

GOOD = """\
clusters:
  - name: asso
    pgbackrest: {retention_full_days: 30}
  - name: billing
    host: db-billing.internal
    tools: [pgbackrest]
    walg: {prefix: billing}
    restore_test: {staging_root: /srv/st, staging_data_directory: /srv/st/data, staging_port: 5434}
"""
# The entry with three mistakes at once.
THREE_MISTAKES = {"name": "asso", "pgbackrest": {"retention_full_days": -3},
                  "restore_test": {"schedule": "every day", "staging_prot": 5434}}


@pytest.fixture(autouse=True)
def state_dir(tmp_path, monkeypatch):
    state = tmp_path / "state"
    monkeypatch.setenv("PG_BACKUPS_STATE_DIR", str(state))
    config_module._CACHE.clear()
    return state


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    # A new version must look new to the loader's cache, even within the same clock tick.
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000 + len(text)))
    return path


# --- every problem of an entry at once ---------------------------------------------------------


def test_an_entrys_three_mistakes_are_reported_at_once():
    config = parse_config({"clusters": [THREE_MISTAKES, {"name": "other", "host": "db-other",
                                                        "walg": {"prefix": "other"},
                                                        "restore_test": {"staging_port": 5434}}]},
                          "clusters.yaml", strict=False)
    keys = {e.setting for e in config.errors}
    assert {"clusters[0].pgbackrest.retention_full_days", "clusters[0].restore_test.schedule",
            "clusters[0].restore_test.staging_prot"} <= keys, [str(e) for e in config.errors]
    assert [c.name for c in config.clusters] == ["other"]  # one bad entry does not stop the others
    with pytest.raises(ConfigError) as err:
        config.cluster("asso")
    message = str(err.value)
    assert "-3 is out of range" in message and "not a valid cron" in message and "staging_prot" in message


def test_strict_parse_raises_every_problem_in_one_error():
    with pytest.raises(ConfigError) as err:
        parse_config({"clusters": [THREE_MISTAKES]}, "clusters.yaml")
    message = str(err.value)
    for key in ("clusters[0].pgbackrest.retention_full_days", "clusters[0].restore_test.schedule",
                "clusters[0].restore_test.staging_prot"):
        assert f"clusters.yaml: {key}: " in message, message
    assert message.count("Fix: ") == 3


def test_every_unknown_key_and_every_bad_value_of_a_block_is_named():
    with pytest.raises(ConfigError) as err:
        parse_config({"clusters": [{"name": "asso", "colour": 1, "size": 2, "port": "x", "retries": -1}]}, "f")
    message = str(err.value)
    for key in ("clusters[0].colour", "clusters[0].size", "clusters[0].port", "clusters[0].retries"):
        assert f"f: {key}: " in message, message


def test_the_import_error_names_all_three(tmp_path):
    path = write(tmp_path / "clusters.yaml", "clusters:\n  - name: asso\n    pgbackrest: {retention_full_days: -3}\n"
                 "    restore_test: {schedule: 'every day', staging_prot: 5434}\n")
    with pytest.raises(ConfigError) as err:
        load_config(path, strict=False).raise_errors()
    message = str(err.value)
    assert "retention_full_days" in message and "restore_test.schedule" in message and "staging_prot" in message


# --- the last good configuration ---------------------------------------------------------------


def test_a_yaml_syntax_error_runs_on_the_last_good_configuration(tmp_path, state_dir):
    path = write(tmp_path / "clusters.yaml", GOOD)
    assert [c.name for c in load_config(path, strict=False).clusters] == ["asso", "billing"]
    (copy,) = state_dir.iterdir()
    assert copy.read_text() == GOOD and (copy.stat().st_mode & 0o077) == 0  # owner-only
    write(path, GOOD + "  - name: [unclosed\n")
    config = load_config(path, strict=False)
    assert [c.name for c in config.clusters] == ["asso", "billing"]
    with pytest.raises(ConfigError) as err:
        config.raise_errors()
    message = str(err.value)
    assert "running on the last good configuration of " in message and "not valid YAML" in message
    assert str(path) in message
    assert config.last_good_time and config.last_good_time in message
    with pytest.raises(ConfigError, match="not valid YAML"):  # a strict load still refuses the file
        load_config(path)


def test_an_unreadable_file_runs_on_the_last_good_configuration(tmp_path):
    path = write(tmp_path / "clusters.yaml", GOOD)
    load_config(path, strict=False)
    path.unlink()
    config = load_config(path, strict=False)
    assert [c.name for c in config.clusters] == ["asso", "billing"]
    assert "running on the last good configuration" in str(config.errors[0])
    assert "cannot be read" in str(config.errors[0])


def test_an_entry_that_becomes_invalid_keeps_its_last_good_version(tmp_path):
    path = write(tmp_path / "clusters.yaml", GOOD)
    load_config(path, strict=False)
    write(path, GOOD.replace("retention_full_days: 30", "retention_full_days: -3") +
          "  - name: newcomer\n    schedule_typo: 1\n")
    config = load_config(path, strict=False)
    names = {c.name: c for c in config.clusters}
    assert set(names) == {"asso", "billing"}  # a new entry that was never valid gets nothing
    assert names["asso"].pgbackrest.retention_full_days == 30  # the last good version of asso
    texts = [str(e) for e in config.errors]
    assert any("clusters[0].pgbackrest.retention_full_days" in t and "last good configuration" in t for t in texts)
    assert any("clusters[2]" in t and "last good configuration" not in t for t in texts)


def test_the_copy_is_not_written_by_a_strict_load_nor_for_a_bad_file(tmp_path, state_dir):
    path = write(tmp_path / "clusters.yaml", GOOD)
    load_config(path)
    assert not state_dir.exists() or not list(state_dir.iterdir())
    write(path, GOOD.replace("30", "-3"))
    load_config(path, strict=False)
    assert not state_dir.exists() or not list(state_dir.iterdir())


def test_a_broken_file_with_no_copy_has_no_cluster(tmp_path):
    path = write(tmp_path / "clusters.yaml", "clusters: [name: {\n")
    config = load_config(path, strict=False)
    assert config.clusters == [] and "not valid YAML" in str(config.errors[0])
    assert "last good" not in str(config.errors[0])


# --- one alert per bad version -----------------------------------------------------------------


def test_one_alert_per_bad_version_of_the_file(tmp_path):
    path = write(tmp_path / "clusters.yaml", GOOD)
    config = load_config(path, strict=False)
    text, record = config_module.alert_for(config, None)
    assert text is None and record is None  # a good file: nothing to say
    write(path, GOOD + "  - name: [unclosed\n")
    config = load_config(path, strict=False)
    text, record = config_module.alert_for(config, None)
    assert "last good configuration" in text and "not valid YAML" in text and record
    assert config_module.alert_for(config, record) == (None, record)  # the same bad version: once
    write(path, GOOD + "  - name: [still unclosed\n")
    text2, record2 = config_module.alert_for(load_config(path, strict=False), record)
    assert text2 and record2 != record  # a new bad version: a new alert
    write(path, GOOD)
    text3, record3 = config_module.alert_for(load_config(path, strict=False), record2)
    assert "valid again" in text3 and record3 is None


# --- check-config ------------------------------------------------------------------------------


def cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "pg_backups.cli", *args], capture_output=True, text=True,
                          cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO / "plugins"), **(env or {})},
                          timeout=120)


def test_check_config_reports_every_problem_and_exits_2_touching_nothing(tmp_path, state_dir):
    path = write(tmp_path / "clusters.yaml", "clusters:\n  - name: asso\n    pgbackrest: {retention_full_days: -3}\n"
                 "    restore_test: {schedule: 'every day', staging_prot: 5434}\n  - name: ok\n")
    proc = cli("check-config", str(path))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    out = proc.stdout + proc.stderr
    for key in ("clusters[0].pgbackrest.retention_full_days", "clusters[0].restore_test.schedule",
                "clusters[0].restore_test.staging_prot"):
        assert f"{path}: {key}: " in out, out
    assert out.count("Fix: ") >= 3
    assert not state_dir.exists()


def test_check_config_of_a_good_file_exits_0_and_writes_no_copy(tmp_path, state_dir):
    path = write(tmp_path / "clusters.yaml", GOOD)
    proc = cli("check-config", str(path))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "asso" in proc.stdout and "billing" in proc.stdout
    assert not state_dir.exists()


def test_check_config_defaults_to_the_configured_file(tmp_path):
    path = write(tmp_path / "clusters.yaml", "clusters: [name: {\n")
    proc = cli("check-config", env={"PG_BACKUPS_CONFIG": str(path)})
    assert proc.returncode == 2 and "not valid YAML" in proc.stderr


def test_the_cron_command_runs_on_the_last_good_copy_and_says_so(tmp_path):
    path = write(tmp_path / "clusters.yaml", GOOD)
    env = {"PG_BACKUPS_CONFIG": str(path), "PG_BACKREST_STANZA": "asso"}
    assert cli("archive-command", env=env).returncode == 0
    write(path, "clusters: [name: {\n")
    proc = cli("archive-command", env=env)
    assert proc.returncode == 0, proc.stderr
    assert "pgbackrest" in proc.stdout
    assert "running on the last good configuration of" in proc.stderr and "not valid YAML" in proc.stderr


@pytest.mark.slow
def test_the_dag_folder_keeps_every_dag_on_the_last_good_configuration(tmp_path):
    """Airflow's own DagBag, as the dag-processor parses: a good file, then the issue's unclosed '['."""
    from support import load_dagbag

    path = write(tmp_path / "clusters.yaml", GOOD)
    good = load_dagbag(path)
    assert good["errors"] == {} and "restore_test_billing" in good["dags"]
    write(path, GOOD + "  - name: [unclosed\n")
    bag = load_dagbag(path)
    assert set(bag["dags"]) == set(good["dags"])
    assert "configuration_alerts" in bag["dags"]  # the alert still has a DAG to come from
    (where, message), = bag["errors"].items()
    assert where.endswith("configuration_errors.py")
    assert "running on the last good configuration of " in message and "not valid YAML" in message
