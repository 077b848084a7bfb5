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


# --------------------------------------------------------------------------------------------
# A fleet's night: schedule_spread and the database host's pool


def fleet(n: int, **common) -> dict:
    """``n`` clusters that share nothing (each its own host, port, WAL-G prefix and staging port)."""
    return {"defaults": common, "clusters": [
        {"name": f"cluster{i:04d}", "host": f"db{i:04d}.internal", "walg": {"prefix": f"postgres/cluster{i:04d}"},
         "restore_test": {"staging_port": 10000 + i}} for i in range(n)]}


def test_up_to_a_fleet_size_of_clusters_keep_the_runbooks_exact_times():
    from pg_backups.config import FLEET_SIZE

    config = parse_config(fleet(FLEET_SIZE))
    assert {(c.pgbackrest.schedule, c.walg.schedule, c.restore_test.schedule) for c in config.clusters} == {
        ("15 2 * * *", "45 2 * * *", "0 2 * 1,4,7,10 0#1")}
    assert not any(c.schedule_spread.enabled for c in config.clusters)
    assert {(c.hourly_schedule, c.daily_schedule) for c in config.clusters} == {("@hourly", "@daily")}
    assert {c.heartbeat_schedule for c in config.clusters} == {"0-59/15 * * * *"}


def test_a_fleet_is_spread_over_the_window_deterministically_from_the_names():
    from pg_backups.config import FLEET_SIZE
    from pg_backups.times import fixed_time

    first, again = parse_config(fleet(FLEET_SIZE + 1)), parse_config(fleet(FLEET_SIZE + 1))
    assert [c.pgbackrest.schedule for c in first.clusters] == [c.pgbackrest.schedule for c in again.clusters]
    assert len({c.pgbackrest.schedule for c in first.clusters}) > 5, "the slots must differ between clusters"
    for c in first.clusters:
        assert c.schedule_spread.enabled and 0 <= c.spread_minutes < 180
        (h1, m1), (h2, m2) = fixed_time(c.pgbackrest.schedule), fixed_time(c.walg.schedule)
        assert (h2 * 60 + m2) - (h1 * 60 + m1) == 30, "a cluster's WAL-G backup stays 30 min after its pgBackRest one"
        assert h1 * 60 + m1 == 2 * 60 + 15 + c.spread_minutes
        assert c.restore_test.schedule.split()[2:] == ["*", "1,4,7,10", "0#1"]  # the first Sunday stays
        assert c.hourly_schedule == f"{c.spread_minutes % 60} * * * *"  # the hourly check at its own minute
        assert c.heartbeat_schedule == f"{c.spread_minutes % 15}-59/15 * * * *"  # heartbeats too
        (hp, mp) = fixed_time(c.verify.pitr_schedule)
        assert hp * 60 + mp == 5 * 60 + 40 + c.spread_minutes  # the PITR drill moves with the night
    # Pinned: the offset comes from the name alone (sha256), the same at every parse on every
    # machine; a change here would move every fleet's night.
    assert {c.name: c.spread_minutes for c in first.clusters[:3]} == {"cluster0000": 100, "cluster0001": 110,
                                                                       "cluster0002": 75}


def test_spreading_is_chosen_per_cluster_both_ways():
    config = parse_config({"clusters": [{"name": "asso", "schedule_spread": {"enabled": True, "window_minutes": 60}}]})
    (asso,) = config.clusters
    assert asso.pgbackrest.schedule != "15 2 * * *" and 0 <= asso.spread_minutes < 60
    data = fleet(20)
    data["clusters"][3]["schedule_spread"] = {"enabled": False}
    pinned = parse_config(data).clusters[3]
    assert (pinned.pgbackrest.schedule, pinned.walg.schedule) == ("15 2 * * *", "45 2 * * *")


def test_only_a_fixed_time_moves_and_a_daily_one_may_wrap_past_midnight():
    from pg_backups.times import shifted

    assert shifted("*/5 * * * *", 77) == "*/5 * * * *"
    assert shifted("15 2 * * *", 0) == "15 2 * * *"
    assert shifted("15 2 * * *", 100) == "55 3 * * *"
    assert shifted("50 23 * * *", 20) == "10 0 * * *"
    c = parse_config(fleet(11, pgbackrest={"schedule": "0 */6 * * *"})).clusters[0]
    assert c.pgbackrest.schedule == "0 */6 * * *" and c.walg.schedule != "45 2 * * *"


def test_a_window_that_would_move_a_restore_test_to_another_day_is_refused():
    with pytest.raises(ConfigError) as err:
        parse_config(cfg(schedule_spread={"enabled": True, "window_minutes": 1400}))
    assert err.value.setting == "clusters[0].schedule_spread.window_minutes"
    assert "restore_test.schedule" in str(err.value) and "past midnight" in str(err.value)
    assert "1320 minutes or less" in str(err.value)


def test_clusters_on_one_database_host_share_its_pool_with_one_limit():
    config = parse_config({"defaults": {"database_host_slots": 2}, "clusters": [
        {"name": "a", "host": "db1.internal", "walg": {"prefix": "a"}},
        {"name": "b", "host": "db1.internal", "port": 5433, "walg": {"prefix": "b"}, "restore_test": {"staging_port": 5434}}]})
    a, b = config.clusters
    assert a.pool == b.pool == "backups_host_db1_internal"
    assert a.pools[0].slots == 2
    assert parse_config(cfg()).clusters[0].pool == "backups_asso"  # unset: the cluster's own pool, as before
    with pytest.raises(ConfigError) as err:
        parse_config({"clusters": [
            {"name": "a", "host": "db1.internal", "walg": {"prefix": "a"}, "database_host_slots": 2},
            {"name": "b", "host": "db1.internal", "port": 5433, "walg": {"prefix": "b"},
             "restore_test": {"staging_port": 5434}, "database_host_slots": 3}]})
    assert err.value.setting == "clusters[1].database_host_slots" and "same database_host_slots" in str(err.value)


def test_loading_compares_each_cluster_once_not_with_every_other(monkeypatch):
    """A cluster's resources are read a bounded number of times, not once per other cluster: compared
    pairwise, 1,000 clusters took ~25 s of CPU per DAG file (each past the 30 s import timeout on a
    busy machine)."""
    from pg_backups.config import parsing  # where parse_config's checks look _resources up

    calls = []
    real = parsing._resources
    monkeypatch.setattr(parsing, "_resources", lambda c: calls.append(c.name) or real(c))
    assert len(parse_config(fleet(60)).clusters) == 60
    assert len(calls) <= 2 * 60, f"{len(calls)} reads of the clusters' resources for 60 clusters"
