"""The monthly S3 cost estimate: bytes by storage class and version times the price table of the
configuration, the archive classes' per-object overhead, and what early deletion bills when the
retention and the lifecycle move objects out of STANDARD_IA (30 d) or DEEP_ARCHIVE (180 d) sooner."""

from __future__ import annotations

import pytest

from pg_backups import costs, metrics
from pg_backups.config import ConfigError, build_cluster

GIB = 2 ** 30
USAGE = {"bucket": "asso-prod-backups", "delete_markers": 0, "by_class": [
    {"storage_class": "STANDARD", "version": "current", "bytes": 10 * GIB, "objects": 100},
    {"storage_class": "STANDARD", "version": "noncurrent", "bytes": 5 * GIB, "objects": 50},
    {"storage_class": "DEEP_ARCHIVE", "version": "noncurrent", "bytes": 100 * GIB, "objects": 1000}]}


def cluster(**s3):
    return build_cluster({"name": "asso", "tools": ["pgbackrest"], "s3": s3})


def rows(estimate, charge=None):
    return {(r["storage_class"], r["version"]): r["monthly"] for r in estimate["rows"]
            if charge is None or r["charge"] == charge}


def test_storage_by_class_and_version_at_the_regions_default_prices():
    estimate = costs.estimate(cluster(), USAGE)
    assert estimate["currency"] == "USD" and estimate["prices"] == "default for eu-west-3"
    storage = rows(estimate, "storage")
    assert storage[("STANDARD", "current")] == pytest.approx(10 * 0.024)
    assert storage[("STANDARD", "noncurrent")] == pytest.approx(5 * 0.024)
    assert storage[("DEEP_ARCHIVE", "noncurrent")] == pytest.approx(100 * 0.002)
    # 32 KiB per archived object at the archive's price, 8 KiB at STANDARD's (S3's index and metadata).
    overhead = rows(estimate, "archive_overhead")[("DEEP_ARCHIVE", "noncurrent")]
    assert overhead == pytest.approx(1000 * (32 * 1024 * 0.002 + 8 * 1024 * 0.024) / GIB)
    # The runbook's lifecycle keeps noncurrent versions 640 days in DEEP_ARCHIVE: no early deletion.
    assert rows(estimate, "early_deletion") == {}
    assert estimate["noncurrent_monthly"] == pytest.approx(5 * 0.024 + 100 * 0.002 + overhead)
    assert estimate["total_monthly"] == pytest.approx(10 * 0.024 + 5 * 0.024 + 100 * 0.002 + overhead)


def test_deep_archive_left_before_180_days_bills_the_rest():
    """Noncurrent versions to DEEP_ARCHIVE after 90 days, expired after 120: 30 days there, 150 billed more.
    In a steady state the bytes there are 30 days of arrivals; each month as many leave, billed 150/30 months."""
    c = cluster(lifecycle={"noncurrent_expire_days": 120})
    estimate = costs.estimate(c, USAGE)
    early = rows(estimate, "early_deletion")
    assert early == {("DEEP_ARCHIVE", "noncurrent"): pytest.approx(100 * 0.002 * (180 - 30) / 30)}
    (stay,) = [s for s in estimate["stays"] if s["storage_class"] == "DEEP_ARCHIVE"]
    assert (stay["days"], stay["minimum_days"]) == (30, 180)


def test_standard_ia_left_before_30_days_bills_the_rest(make_cluster):
    """Full backups every day kept 40 days (pgBackRest keeps the newest full older than that: 41 days
    current), STANDARD_IA at 30 days, noncurrent versions expired 10 days later: 21 days in STANDARD_IA."""
    c = make_cluster({"tools": ["pgbackrest"],
                       "pgbackrest": {"retention_full_days": 40,
                                      "full_backup_days": ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]},
                       "s3": {"lifecycle": {"transitions": [{"days": 30, "storage_class": "STANDARD_IA"}],
                                            "noncurrent_transitions": [], "noncurrent_expire_days": 10}}})
    usage = {"bucket": "b", "delete_markers": 0, "by_class": [
        {"storage_class": "STANDARD_IA", "version": "current", "bytes": 3 * GIB, "objects": 3},
        {"storage_class": "STANDARD_IA", "version": "noncurrent", "bytes": 4 * GIB, "objects": 4}]}
    estimate = costs.estimate(c, usage)
    assert rows(estimate, "early_deletion") == {("STANDARD_IA", "noncurrent"): pytest.approx(7 * 0.0131 * 9 / 21)}


def test_prices_given_in_the_configuration_win_class_by_class():
    estimate = costs.estimate(cluster(prices={"standard": 0.03}), USAGE)
    assert estimate["prices"] == "s3.prices, default for eu-west-3"
    assert rows(estimate, "storage")[("STANDARD", "current")] == pytest.approx(10 * 0.03)
    assert rows(estimate, "storage")[("DEEP_ARCHIVE", "noncurrent")] == pytest.approx(100 * 0.002)


def test_a_region_without_a_price_table_says_what_to_set():
    c = cluster(region="ap-south-1")
    estimate = costs.estimate(c, USAGE)
    assert estimate["rows"] == [] and estimate["total_monthly"] is None
    assert estimate["missing"] == ["s3.prices.deep_archive", "s3.prices.standard"]
    assert "no price for ap-south-1" in estimate["text"]


@pytest.mark.parametrize("value,problem", [(-0.01, "out of range"), ("cheap", "must be a number")])
def test_a_bad_price_is_refused(value, problem):
    with pytest.raises(ConfigError) as refused:
        cluster(prices={"standard": value})
    assert refused.value.setting.endswith("s3.prices.standard") and problem in str(refused.value)


def test_the_estimate_is_published_with_the_bucket_usage(tmp_path, make_cluster):
    from support import FakeS3
    from support import metric_value as value

    c = make_cluster({"metrics": {"textfile_directory": str(tmp_path)}})
    metrics.record_bucket(c, FakeS3())
    text = (tmp_path / "pg_backups_asso_s3.prom").read_text()
    name = "pg_backups_s3_bucket_monthly_cost_estimate"
    assert value(text, name, storage_class="STANDARD", version="current", charge="storage",
                 bucket="asso-prod-backups", currency="USD") == pytest.approx(107 * 0.024 / GIB)
    assert value(text, name, storage_class="DEEP_ARCHIVE", version="noncurrent", charge="storage") == pytest.approx(
        5000 * 0.002 / GIB)
    assert f"# HELP {name} " in text
