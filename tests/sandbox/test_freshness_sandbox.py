"""The hourly freshness DAG for real: silent after a fresh backup, failing and alerting when the
repository holds no good backup; its metrics land in the textfile directory."""

from __future__ import annotations

import pytest

from support import alerts_for, assert_alert, config_copy

pytestmark = pytest.mark.sandbox


def test_fresh_backup_is_silent(first_backup, sandbox):
    count = len(sandbox.slack_messages())
    result = sandbox.dags_test("backup_freshness_asso")
    assert result.state == "success", result.output[-4000:]
    assert sandbox.slack_texts_since(count) == []
    verdicts = {v["tool"]: v for v in result.xcoms["check_backups"]["backups"]}
    assert set(verdicts) == set(sandbox.cluster().tools)  # WAL-G's too when a binary was found
    assert not [v for v in verdicts.values() if v["stale"]], verdicts
    verdict = verdicts["pgbackrest"]
    assert verdict["label"] == first_backup.xcoms["publish_backup"]["label"] or verdict["age_hours"] < 1
    assert result.xcoms["check_wal_archiving"]["archive_mode"] == "on"
    usage = result.xcoms["bucket_usage"]
    assert usage["bucket"] == "asso-prod-backups" and sum(r["bytes"] for r in usage["by_class"]) > 0
    metrics_dir = sandbox.layout.root / "metrics"
    for source in ("pgbackrest", "wal_archive", "s3"):
        text = (metrics_dir / f"pg_backups_asso_{source}.prom").read_text()
        assert f'source="{source}"' in text
    s3 = (metrics_dir / "pg_backups_asso_s3.prom").read_text()
    assert 'pg_backups_s3_bucket_size_bytes{bucket="asso-prod-backups",cluster="asso",storage_class="STANDARD",' \
           'version="current"}' in s3
    assert 'pg_backups_wal_archive_status{cluster="asso"} 1' in (metrics_dir / "pg_backups_asso_wal_archive.prom").read_text()


def test_no_good_backup_fails_and_alerts(first_backup, sandbox):
    import sandbox as sandbox_module
    from pg_backups import pgbackrest
    from pg_backups.config import load_config

    root = sandbox.layout.root / "test-configs" / "empty-repo"
    config = config_copy(sandbox, "empty-repo", {"pgbackrest": {
        "repo_path": "/pgbackrest-empty-for-freshness-test", "config_path": str(root / "pgbackrest.conf")}})
    cluster = load_config(config).cluster("asso")
    creds = sandbox_module.credentials(sandbox.layout)
    pgbackrest.write_config(cluster, sandbox_module.access(sandbox.layout, creds))  # what preflight would write
    count = len(sandbox.slack_messages())
    result = sandbox.dags_test("backup_freshness_asso", env={"PG_BACKUPS_CONFIG": config})
    assert result.state == "failed"
    assert result.task_states == {"check_backups": "failed", "check_wal_archiving": "success",
                                  "bucket_usage": "success"}
    texts = sandbox.slack_texts_since(count)
    failures = alerts_for(texts, "backup_freshness_asso", "check_backups")
    assert len(failures) == 1, texts
    assert_alert(failures[0], "backup_freshness_asso", "check_backups", 2,
                 "StaleBackup: cluster asso: pgbackrest: no good backup in the repository", sandbox)
    assert len(texts) == 1, texts  # the other checks are silent


def test_the_newest_backups_failed_drill_fails_the_check_with_one_alert(first_backup, sandbox):
    """The drills' results object in the real bucket (verification.publish_result, as record_evidence
    writes it), read by the freshness check of the database host: a failed drill of the newest
    backup fails check_backups with one alert naming the backup, the step and the cause; a later
    drill that verifies it is the one read. A prefix of its own: the other tests' drills
    never see these results."""
    from pg_backups import freshness, pgbackrest, times, verification
    from pg_backups.config import load_config

    config = config_copy(sandbox, "drill-results", {"restore_test": {"audit_prefix": "restore-audit-freshness-test"}})
    cluster = load_config(config).cluster("asso")
    label = freshness.newest_pgbackrest(pgbackrest.info(cluster))["label"]
    client = sandbox.s3_client()
    failed = {"kind": "verification", "time": times.iso(times.now()), "cluster": "asso", "tool": "pgbackrest",
              "run_id": "manual__freshness-test-drill", "backup_label": label, "rto_seconds": None,
              "outcome": "failed", "failed_step": "restore", "errors": ["drill: failed: bundle altered"]}
    try:
        assert verification.publish_result(cluster, client, failed)[0]["backup_label"] == label
        assert verification.read_results(cluster, client, "pgbackrest")[0]["cause"] == "drill: failed: bundle altered"
        count = len(sandbox.slack_messages())
        result = sandbox.dags_test("backup_freshness_asso", env={"PG_BACKUPS_CONFIG": config})
        assert result.state == "failed" and result.task_states["check_backups"] == "failed", result.output[-3000:]
        texts = sandbox.slack_texts_since(count)
        failures = alerts_for(texts, "backup_freshness_asso", "check_backups")
        assert len(failures) == 1 and len(texts) == 1, texts
        assert_alert(failures[0], "backup_freshness_asso", "check_backups", 2,
                     f"NotVerified: cluster asso: pgbackrest backup {label}: drill failed at restore: "
                     "drill: failed: bundle altered", sandbox)
        # A later drill that verifies it comes first in the object: the check reads it as verified
        # (test_freshness.py runs check_backups on that; one more DAG run here would cost 20 s).
        verified = {**failed, "run_id": "manual__freshness-test-drill-2", "time": times.iso(times.now()),
                    "outcome": "success", "failed_step": None, "errors": [], "rto_seconds": 5.2}
        verification.publish_result(cluster, client, verified)
        drilled = verification.by_backup(verification.read_results(cluster, client, "pgbackrest"))
        assert drilled[("pgbackrest", label)]["outcome"] == "success"
    finally:
        client.delete_object(Bucket=cluster.s3.bucket, Key=verification.results_key(cluster, "pgbackrest"))


def test_failing_wal_archiving_alerts(first_backup, sandbox):
    """archive_command made to fail for real: the WAL check fails and alerts; the backup check does not.
    Last in this file: it leaves failed attempts in pg_stat_archiver (restored and waited for below)."""
    from support import wait_for

    def archiver():
        row = sandbox.psql("SELECT coalesce(last_failed_time > coalesce(last_archived_time, '-infinity'), false), "
                           "failed_count FROM pg_stat_archiver", db="postgres")
        failing, failed = row.split("|")
        return failing == "t", int(failed)

    sandbox.psql("ALTER SYSTEM SET archive_command = 'false'", db="postgres")
    try:
        sandbox.psql("SELECT pg_reload_conf()", db="postgres")
        before = archiver()[1]
        sandbox.psql("SELECT txid_current()", db="postgres")  # a commit record: the segment is not empty
        sandbox.psql("SELECT pg_switch_wal()", db="postgres")
        wait_for(lambda: archiver()[0] and archiver()[1] > before, 90, what="archive_command to fail")
        count = len(sandbox.slack_messages())
        result = sandbox.dags_test("backup_freshness_asso")
        assert result.state == "failed"
        assert result.task_states == {"check_backups": "success", "check_wal_archiving": "failed",
                                      "bucket_usage": "success"}
        texts = sandbox.slack_texts_since(count)
        failures = alerts_for(texts, "backup_freshness_asso", "check_wal_archiving")
        assert len(failures) == 1 and len(texts) == 1, texts
        assert_alert(failures[0], "backup_freshness_asso", "check_wal_archiving", 2,
                     "WalArchivingProblem: cluster asso: archive_command is failing", sandbox)
        status = (sandbox.layout.root / "metrics" / "pg_backups_asso_wal_archive.prom").read_text()
        assert 'pg_backups_wal_archive_status{cluster="asso"} 0' in status
    finally:
        sandbox.psql("ALTER SYSTEM RESET archive_command", db="postgres")
        sandbox.psql("SELECT pg_reload_conf()", db="postgres")
        # PostgreSQL retries the failed segment (after up to a minute's pause): wait until it went through.
        wait_for(lambda: not archiver()[0], 180, every=3, what="WAL archiving to recover")
