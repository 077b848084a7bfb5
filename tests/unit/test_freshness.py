"""Backup freshness and WAL archiving judgements, on recorded tool output (no server needed).

WAL-G cannot be built on this machine (Go module proxy), so its part is tested on a
``backup-list --json --detail`` sample in the documented shape of WAL-G 3.0.x output.
"""

from __future__ import annotations

import io
import json
from datetime import datetime, timedelta, timezone

import pytest

from pg_backups import freshness, walg
from pg_backups.errors import StaleBackup
from support import PGBACKREST_INFO_RECORDED_SAMPLE, WALG_BACKUP_LIST_RECORDED_SAMPLE

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=timezone.utc)


def stanza():
    from pg_backups import pgbackrest

    return pgbackrest.parse_info(PGBACKREST_INFO_RECORDED_SAMPLE, "asso")


def test_pgbackrest_recorded_sample_newest_good_backup_skips_the_failed_one():
    newest = freshness.newest_pgbackrest(stanza())
    assert newest["label"] == "20261124-021502F_20261125-021503D"
    assert newest["type"] == "diff"
    assert newest["finished_at"] == datetime.fromtimestamp(1795572915, timezone.utc).isoformat()


def test_pgbackrest_recorded_sample_fresh_and_stale():
    newest = freshness.newest_pgbackrest(stanza())
    finished = datetime.fromtimestamp(1795572915, timezone.utc)
    fresh = freshness.judge_backup("pgbackrest", newest, finished + timedelta(hours=25, minutes=59), 26)
    assert fresh["stale"] is False and fresh["problem"] is None and 25.9 < fresh["age_hours"] < 26
    stale = freshness.judge_backup("pgbackrest", newest, finished + timedelta(hours=26, minutes=6), 26)
    assert stale["stale"] is True and "limit 26 h" in stale["problem"] and stale["label"] in stale["problem"]
    assert "cluster asso: pgbackrest: newest good backup" in freshness.stale_message("asso", [fresh, stale])
    assert freshness.stale_message("asso", [fresh]) is None


def test_pgbackrest_no_backup_or_only_failed_ones_is_stale():
    assert freshness.newest_pgbackrest({}) is None
    only_failed = {"backup": [b for b in stanza()["backup"] if b["error"]]}
    assert freshness.newest_pgbackrest(only_failed) is None
    verdict = freshness.judge_backup("pgbackrest", None, NOW, 26)
    assert verdict["stale"] and "no good backup" in verdict["problem"]


def test_walg_recorded_sample_newest_backup_and_age():
    backups = walg.parse_backup_list(WALG_BACKUP_LIST_RECORDED_SAMPLE)
    newest = freshness.newest_walg(backups)
    assert newest == {"tool": "walg", "label": "base_000000010000000000000010_D_000000010000000000000004",
                      "type": "delta", "finished_at": "2026-11-25T02:45:07.000001+00:00"}
    assert not freshness.judge_backup("walg", newest, NOW, 26)["stale"]  # 9.25 h old
    assert freshness.judge_backup("walg", newest, NOW + timedelta(days=1), 26)["stale"]  # 33.25 h old


def test_walg_recorded_sample_empty_store_is_stale():
    assert walg.parse_backup_list("") == [] and walg.parse_backup_list("null") == []
    assert freshness.newest_walg([]) is None
    assert freshness.judge_backup("walg", None, NOW, 26)["stale"]


def test_walg_recorded_sample_record_feeds_the_metrics(make_cluster):
    from pg_backups import metrics

    cluster = make_cluster()
    backups = walg.parse_backup_list(WALG_BACKUP_LIST_RECORDED_SAMPLE)
    record = walg.backup_record(cluster, backups[-1], backups)
    samples = {(name, labels.get("backup_type")): value for name, labels, value in metrics.backup_samples(cluster, record)}
    assert samples[("backup_last_completion_timestamp_seconds", "delta")] == pytest.approx(
        datetime(2026, 11, 25, 2, 45, 7, 1, tzinfo=timezone.utc).timestamp())
    assert samples[("backup_last_duration_seconds", "delta")] == pytest.approx(4.500001)
    assert samples[("backup_last_repo_size_bytes", "delta")] == 254321
    assert samples[("backup_count", None)] == 2


# --------------------------------------------------------------------------------------------
# pg_stat_archiver

OK_ARCHIVER = {"archived_count": 120, "last_archived_wal": "000000010000000000000078",
               "last_archived_time": NOW - timedelta(minutes=3), "failed_count": 2,
               "last_failed_wal": "000000010000000000000010", "last_failed_time": NOW - timedelta(days=3),
               "stats_reset": "2026-11-01T00:00:00+00:00", "ready_count": 0, "archive_mode": "on"}


def test_archiving_that_works_is_silent():
    assert not freshness.archiver_failing(OK_ARCHIVER)
    assert freshness.archiver_problems(OK_ARCHIVER, dict(OK_ARCHIVER), NOW) == []
    assert freshness.archiver_problems(OK_ARCHIVER, None, NOW) == []
    idle = {**OK_ARCHIVER, "last_archived_time": NOW - timedelta(hours=20)}  # idle database, nothing waiting
    assert freshness.archiver_problems(idle, None, NOW) == []


def test_last_failure_after_last_success_is_failing():
    failing = {**OK_ARCHIVER, "last_failed_time": NOW - timedelta(minutes=1), "failed_count": 3}
    assert freshness.archiver_failing(failing)
    problems = freshness.archiver_problems(failing, OK_ARCHIVER, NOW)
    assert any("archive_command is failing" in p for p in problems)
    assert any("1 failed archive attempts since the previous check" in p for p in problems)
    never = {**OK_ARCHIVER, "last_archived_time": None, "archived_count": 0}
    assert freshness.archiver_failing(never)


def test_failed_count_increase_alone_is_reported_but_not_across_a_stats_reset():
    recovered = {**OK_ARCHIVER, "failed_count": 7, "last_failed_time": NOW - timedelta(minutes=30)}
    assert not freshness.archiver_failing(recovered)  # a success came after the failures
    assert freshness.archiver_problems(recovered, OK_ARCHIVER, NOW) == ["5 failed archive attempts since the previous check"]
    reset = {**OK_ARCHIVER, "stats_reset": "2026-11-20T00:00:00+00:00"}
    assert freshness.archiver_problems({**recovered, "stats_reset": reset["stats_reset"]}, OK_ARCHIVER, NOW) == []


def test_wal_waiting_is_lag():
    backlog = {**OK_ARCHIVER, "ready_count": freshness.WAL_READY_LAG_SEGMENTS}
    assert any("wait to be archived" in p for p in freshness.archiver_problems(backlog, None, NOW))
    stalled = {**OK_ARCHIVER, "ready_count": 1, "last_archived_time": NOW - timedelta(hours=2)}
    assert any("nothing was archived for 120 min" in p for p in freshness.archiver_problems(stalled, None, NOW))
    assert freshness.archiver_problems({**OK_ARCHIVER, "ready_count": 1}, None, NOW) == []


def test_archive_mode_off_is_a_problem():
    assert "archive_mode is off" in freshness.archiver_problems({**OK_ARCHIVER, "archive_mode": "off"}, None, NOW)[0]


# --------------------------------------------------------------------------------------------
# The DAG's task body, with the tools' outputs replaced by the recorded samples


class ResultsBucket:
    """The drills' results objects (verification.results_key) as S3 answers get_object: the body,
    or botocore's own NoSuchKey error. The real bucket round trip is in tests/sandbox/test_freshness_sandbox.py."""

    def __init__(self, results=None):
        self.objects = {key: json.dumps(value).encode() for key, value in (results or {}).items()}

    def get_object(self, Bucket, Key):  # noqa: N803 - boto3's names
        from botocore.exceptions import ClientError

        if Key not in self.objects:
            raise ClientError({"Error": {"Code": "NoSuchKey", "Message": "The specified key does not exist."}},
                              "GetObject")
        return {"Body": io.BytesIO(self.objects[Key])}


def _patched_tasks(monkeypatch, tmp_path, tools, now, results=None, verify=None):
    from pg_backups import pgbackrest
    from pg_backups.airflow import freshness_tasks
    from pg_backups.config import build_cluster

    cluster = build_cluster({"name": "asso", "tools": tools, "metrics": {"textfile_directory": str(tmp_path)},
                             "restore_test": {"tool": tools[0]}, "verify": verify or {"max_delay_minutes": 10**6}})
    monkeypatch.setattr(freshness_tasks, "cluster_named", lambda name: cluster)
    monkeypatch.setattr(freshness_tasks, "s3_access", lambda c: object())
    bucket = ResultsBucket(results)
    monkeypatch.setattr(freshness_tasks, "s3_client", lambda c: bucket)
    # The window's end is production's (heartbeats, pg_stat_archiver): the sandbox test reads it for real.
    monkeypatch.setattr(freshness_tasks.pitr, "windows", lambda c, access, info, backups: [
        {"tool": tool, "start": "2026-11-20T02:15:40+00:00", "end": "2026-11-25T11:45:00+00:00",
         "end_source": "heartbeat", "last_archived_segment": None, "empty": False} for tool in tools])
    monkeypatch.setattr(freshness_tasks.walg, "write_config", lambda c, a: [])
    monkeypatch.setattr(freshness_tasks.walg, "backup_list",
                        lambda c, a: walg.parse_backup_list(WALG_BACKUP_LIST_RECORDED_SAMPLE))
    monkeypatch.setattr(freshness_tasks.pgbackrest, "info",
                        lambda c: pgbackrest.parse_info(PGBACKREST_INFO_RECORDED_SAMPLE, "asso"))

    monkeypatch.setattr(freshness_tasks, "now", lambda: now)
    return freshness_tasks


def test_check_backups_walg_recorded_sample_fresh_publishes_metrics(monkeypatch, tmp_path):
    tasks = _patched_tasks(monkeypatch, tmp_path, ["walg"], datetime(2026, 11, 25, 12, tzinfo=timezone.utc))
    report = tasks.check_backups("asso")
    assert [v["tool"] for v in report["backups"]] == ["walg"] and not report["backups"][0]["stale"]
    text = (tmp_path / "pg_backups_asso_walg.prom").read_text()
    assert 'label="base_000000010000000000000010_D_000000010000000000000004"' in text
    # The recovery window, published with the verdicts (the inventory reads the return value).
    assert report["recovery_windows"][0]["end"] == "2026-11-25T11:45:00+00:00"
    window = (tmp_path / "pg_backups_asso_recovery_window.prom").read_text()
    assert 'pg_backups_recovery_window_end_timestamp_seconds{cluster="asso",stanza="asso",tool="walg"} 1795' in window


def test_check_backups_walg_recorded_sample_stale_raises(monkeypatch, tmp_path):
    tasks = _patched_tasks(monkeypatch, tmp_path, ["walg"], datetime(2026, 11, 26, 6, tzinfo=timezone.utc))
    with pytest.raises(StaleBackup, match=r"cluster asso: walg: newest good backup base_0{7}10{14}10_D_\w+ "
                                                    r"finished 27\.2 h ago \(limit 26 h\)"):
        tasks.check_backups("asso")


def test_check_backups_both_tools_recorded_sample_names_only_the_stale_one(monkeypatch, tmp_path):
    # pgBackRest's newest good backup stopped at 1795572915; WAL-G's at 2026-11-25T02:45:07Z.
    pg_stop = datetime.fromtimestamp(1795572915, timezone.utc)
    walg_stop = datetime(2026, 11, 25, 2, 45, 7, tzinfo=timezone.utc)
    now = max(pg_stop, walg_stop) + timedelta(hours=1)
    tasks = _patched_tasks(monkeypatch, tmp_path, ["pgbackrest", "walg"], now)
    assert [v["stale"] for v in tasks.check_backups("asso")["backups"]] == [False, False]
    later = min(pg_stop, walg_stop) + timedelta(hours=26) + abs(walg_stop - pg_stop) / 2  # between the two limits
    tasks = _patched_tasks(monkeypatch, tmp_path, ["pgbackrest", "walg"], later)
    older = "pgbackrest" if pg_stop < walg_stop else "walg"
    with pytest.raises(StaleBackup) as caught:
        tasks.check_backups("asso")
    assert f"{older}: newest good backup" in str(caught.value)
    assert ("walg" if older == "pgbackrest" else "pgbackrest") + ":" not in str(caught.value)


# --------------------------------------------------------------------------------------------
# Each newest backup proven by its drill within verify.max_delay_minutes


WALG_NEWEST = "base_000000010000000000000010_D_000000010000000000000004"


def _drill_result(label, outcome, when, tool="walg", step=None, cause=None):
    return {"time": when.isoformat(), "tool": tool, "run_id": f"asset_triggered__{when.isoformat()}",
            "backup_label": label, "backup_time": None, "rto_seconds": 6.4 if outcome == "success" else None,
            "outcome": outcome, "failed_step": step, "cause": cause}


def test_check_backups_fails_when_the_newest_backups_drill_failed(monkeypatch, tmp_path, make_cluster):
    from pg_backups import verification
    from pg_backups.errors import NotVerified

    now = datetime(2026, 11, 25, 12, tzinfo=timezone.utc)
    key = verification.results_key(make_cluster(), "walg")
    failed = _drill_result(WALG_NEWEST, "failed", now - timedelta(hours=2), step="restore",
                           cause="drill: failed: ERROR: archive-get failed")
    older_ok = _drill_result("base_000000010000000000000008", "success", now - timedelta(days=1))
    tasks = _patched_tasks(monkeypatch, tmp_path, ["walg"], now, {key: [failed, older_ok]})
    with pytest.raises(NotVerified, match=rf"cluster asso: walg backup {WALG_NEWEST}: drill failed at restore: "
                                          r"drill: failed: ERROR: archive-get failed"):
        tasks.check_backups("asso")


def test_check_backups_fails_when_the_newest_backup_waited_past_max_delay(monkeypatch, tmp_path):
    from pg_backups.errors import NotVerified

    now = datetime(2026, 11, 25, 12, tzinfo=timezone.utc)  # the sample's newest WAL-G backup: 02:45 UTC
    tasks = _patched_tasks(monkeypatch, tmp_path, ["walg"], now, verify={"max_delay_minutes": 60})
    with pytest.raises(NotVerified, match=rf"walg backup {WALG_NEWEST} not verified 9.2 h after it finished "
                                          r"\(verify.max_delay_minutes 60\)"):
        tasks.check_backups("asso")


def test_check_backups_passes_a_verified_backup_and_says_so(monkeypatch, tmp_path, make_cluster):
    from pg_backups import verification

    now = datetime(2026, 11, 25, 12, tzinfo=timezone.utc)
    key = verification.results_key(make_cluster(), "walg")
    ok = _drill_result(WALG_NEWEST, "success", now - timedelta(hours=9))
    tasks = _patched_tasks(monkeypatch, tmp_path, ["walg"], now, {key: [ok]}, verify={"max_delay_minutes": 60})
    assert tasks.check_backups("asso")["backups"][0]["verification"] == "verified"
    # switched off: no judgement at all, whatever the bucket holds
    tasks = _patched_tasks(monkeypatch, tmp_path, ["walg"], now, verify={"enabled": False})
    assert "verification" not in tasks.check_backups("asso")["backups"][0]
