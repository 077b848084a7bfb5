"""The cluster configuration: runbook defaults, and a clear error for every bad value."""

from __future__ import annotations

import pytest

from pg_backups.config import ConfigError, load_config, parse_config


def cfg(**cluster):
    return {"clusters": [{"name": "asso", **cluster}]}


def test_runbook_values_are_the_defaults():
    c = parse_config({"clusters": [{"name": "asso"}]}).clusters[0]
    assert c.stanza == "asso"
    assert (c.s3.bucket, c.s3.region) == ("asso-prod-backups", "eu-west-3")
    assert c.pgbackrest.schedule == "15 2 * * *" and c.walg.schedule == "45 2 * * *"
    assert c.pgbackrest.retention_full_days == 30 and c.walg.retention_days == 30
    assert c.data_directory == "/var/lib/postgresql/data"
    assert c.walg_s3_prefix == "s3://asso-prod-backups/postgres"
    assert [(t.days, t.storage_class) for t in c.s3.lifecycle.transitions] == [(90, "STANDARD_IA"), (365, "DEEP_ARCHIVE")]
    assert [(t.days, t.storage_class) for t in c.s3.lifecycle.noncurrent_transitions] == [(90, "DEEP_ARCHIVE")]
    assert c.restore_test.smoke_log == "/tmp/asso_restore_smoke.log"  # one per cluster
    assert c.restore_test.audit_log == "/var/log/asso_restore_audit.log"


def test_shipped_file_loads():
    from pg_backups.config import DEFAULT_CONFIG_PATH

    config = load_config(DEFAULT_CONFIG_PATH)  # not $PG_BACKUPS_CONFIG: the sandbox sets it to its own file
    assert [c.name for c in config.clusters] == ["asso"]


def test_defaults_are_merged_into_every_cluster():
    config = parse_config({"defaults": {"s3": {"region": "eu-west-1"}, "pgbackrest": {"process_max": 2}},
                           "clusters": [{"name": "a", "host": "db-a"},
                                        {"name": "b", "host": "db-b", "pgbackrest": {"process_max": 8}, "walg": {"prefix": "b"},
                                         "restore_test": {"staging_port": 5434}}]})
    a, b = config.clusters
    assert a.s3.region == b.s3.region == "eu-west-1"
    assert (a.pgbackrest.process_max, b.pgbackrest.process_max) == (2, 8)


BAD = [
    (cfg(colour="blue"), "clusters[0].colour", "unknown key"),
    (cfg(pgbackrest={"retention_ful_days": 3}), "clusters[0].pgbackrest.retention_ful_days", "unknown key"),
    ({"clusters": [{"host": "x"}]}, "clusters[0].name", "missing required value"),
    ({"clusters": []}, "clusters", "missing or empty"),
    ({"cluster": [{"name": "a"}]}, "cluster", "unknown key"),
    (cfg(name="asso prod"), "clusters[0].name", "outside [A-Za-z0-9_-]"),
    (cfg(name="asso;rm"), "clusters[0].name", "outside [A-Za-z0-9_-]"),
    (cfg(pgbackrest={"schedule": "every night"}), "clusters[0].pgbackrest.schedule", "not a valid cron"),
    (cfg(walg={"schedule": "61 2 * * *"}), "clusters[0].walg.schedule", "not a valid cron"),
    (cfg(restore_test={"staging_root": "/var/lib/postgresql/data", "staging_data_directory": "/var/lib/postgresql/data"}),
     "clusters[0].restore_test.staging_data_directory", "production data directory"),
    (cfg(restore_test={"staging_root": "/var/lib/postgresql/data/st", "staging_data_directory": "/var/lib/postgresql/data/st/x"}),
     "clusters[0].restore_test.staging_data_directory", "production data directory"),
    (cfg(restore_test={"staging_root": "/var/lib/postgresql", "staging_data_directory": "/var/lib/postgresql/staging"}),
     "clusters[0].restore_test.staging_root", "overlap"),
    (cfg(restore_test={"staging_root": "/srv/staging", "staging_data_directory": "/srv/elsewhere"}),
     "clusters[0].restore_test.staging_data_directory", "outside the staging root"),
    (cfg(port="5432"), "clusters[0].port", "whole number"),
    (cfg(port=70000), "clusters[0].port", "not a TCP port"),
    (cfg(tools=["barman"]), "clusters[0].tools", "subset"),
    (cfg(tools=["pgbackrest"], restore_test={"tool": "walg"}), "clusters[0].restore_test.tool", "not one of"),
    (cfg(pgbackrest={"compress_type": "zip"}), "clusters[0].pgbackrest.compress_type", "unknown"),
    (cfg(pgbackrest={"full_backup_days": ["sunday"]}), "clusters[0].pgbackrest.full_backup_days", "not weekdays"),
    (cfg(walg={"compression": "brotli"}), "clusters[0].walg.compression", "pure-Go"),
    (cfg(s3={"bucket": "Asso_Backups"}), "clusters[0].s3.bucket", "not a valid S3 bucket name"),
    (cfg(s3={"region": "eu-paris-1"}), "clusters[0].s3.region", "not a known AWS region"),
    (cfg(s3={"lifecycle": {"transitions": [{"days": 90, "storage_class": "COLD"}]}}),
     "clusters[0].s3.lifecycle.transitions[0].storage_class", "not an S3 storage class"),
    (cfg(s3={"lifecycle": {"transitions": [{"days": 365, "storage_class": "DEEP_ARCHIVE"},
                                           {"days": 90, "storage_class": "STANDARD_IA"}]}}),
     "clusters[0].s3.lifecycle.transitions[1]", "out of order"),
    (cfg(s3={"lifecycle": {"transitions": [{"days": 10, "storage_class": "STANDARD_IA"}]}}),
     "clusters[0].s3.lifecycle.transitions[0].days", "below what S3 accepts"),
    (cfg(s3={"lifecycle": {"noncurrent_expire_days": 30}}), "clusters[0].s3.lifecycle.noncurrent_expire_days",
     "before the last noncurrent transition"),
]


@pytest.mark.parametrize("data,key,problem", BAD, ids=[b[1] + ":" + b[2] for b in BAD])
def test_bad_configuration_names_file_key_and_fix(data, key, problem):
    with pytest.raises(ConfigError) as err:
        parse_config(data, "clusters.yaml")
    message = str(err.value)
    assert message.startswith(f"clusters.yaml: {key}: "), message
    assert problem in message
    assert "Fix: " in message and len(err.value.fix) > 10


def test_duplicate_names_are_refused():
    with pytest.raises(ConfigError, match="duplicate cluster name"):
        parse_config({"clusters": [{"name": "a"}, {"name": "a"}]})


def test_missing_and_unreadable_files_name_the_setting(tmp_path):
    with pytest.raises(ConfigError, match="PG_BACKUPS_CONFIG"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("clusters: [name: {")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
