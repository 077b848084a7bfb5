"""The random-point PITR drill's logic that needs no server: which heartbeats are safely archived,
the recovery window, the draw (reproducible, inside the window, never on a heartbeat's commit),
what production had at the target, the refusals, the line and its metrics. The real drill, with
a hole in the WAL archive, is in tests/sandbox/test_pitr_sandbox.py."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from pg_backups import metrics, pitr, times, verification
from pg_backups.config import build_cluster
from pg_backups.errors import RestoreRefused

BACKUP_STOP = datetime(2026, 12, 1, 2, 16, tzinfo=timezone.utc)
# Heartbeats every 15 min after the backup: (Unix time, WAL file), the segment moving every hour.
BEATS = [((BACKUP_STOP + timedelta(minutes=15 * i)).timestamp(), f"0000000100000000000000{10 + i // 4:02X}")
         for i in range(1, 21)]


def test_a_heartbeat_is_archived_once_the_segment_after_its_own_is():
    assert pitr.archived("000000010000000000000011", "000000010000000000000012")
    assert not pitr.archived("000000010000000000000012", "000000010000000000000012")  # its commit may be in 13
    assert not pitr.archived("000000010000000000000011", None)
    assert not pitr.archived("000000020000000000000011", "000000010000000000000012")  # another timeline


def test_the_window_runs_from_the_oldest_backup_to_the_newest_archived_heartbeat():
    window = pitr.recovery_window("pgbackrest", BACKUP_STOP, BEATS, "000000010000000000000013")
    # Segments 11 and 12 are archived and followed by an archived one: the beats written in them.
    newest_safe = max(epoch for epoch, walfile in BEATS if walfile < "000000010000000000000013")
    assert window["start"] == BACKUP_STOP.isoformat() and window["end"] == times.iso(newest_safe)
    assert window["end_source"] == "heartbeat" and not window["empty"]
    no_beats = pitr.recovery_window("pgbackrest", BACKUP_STOP, [], "000000010000000000000013",
                                    BACKUP_STOP + timedelta(hours=5))
    assert no_beats["empty"] and no_beats["end_source"] == "pg_stat_archiver"
    assert no_beats["end"] == (BACKUP_STOP + timedelta(hours=5)).isoformat()
    assert pitr.recovery_window("walg", None, BEATS, "000000010000000000000013")["empty"]  # no backup


def test_the_draw_is_the_same_for_a_run_inside_the_window_and_never_just_after_a_heartbeat():
    window = pitr.recovery_window("pgbackrest", BACKUP_STOP, BEATS, "000000010000000000000013")
    start, end = times.utc(window["start"]), times.utc(window["end"])
    points = {pitr.draw(f"scheduled__2026-12-{day:02d}T05:40:00+00:00", window, BEATS) for day in range(1, 29)}
    assert len(points) > 20  # different runs, different points
    for point in points:
        assert start <= point < end - timedelta(seconds=0.999)
        assert not any(epoch <= point.timestamp() < epoch + pitr.AMBIGUOUS_SECONDS for epoch, _ in BEATS)
    run = "scheduled__2026-12-03T05:40:00+00:00"
    assert pitr.draw(run, window, BEATS) == pitr.draw(run, window, BEATS)  # reproducible from the run id
    # A draw that lands on a heartbeat's commit steps past it.
    on_beat = {"start": times.iso(BEATS[3][0]), "end": times.iso(BEATS[3][0] + 1.5)}
    assert pitr.draw(run, on_beat, BEATS).timestamp() == BEATS[3][0] - 1


def test_what_production_had_at_the_target():
    target = times.utc(BEATS[5][0] + 60)
    assert pitr.expected(BEATS, target) == {"last_before": times.iso(BEATS[5][0]), "first_after": times.iso(BEATS[6][0])}
    assert pitr.expected(BEATS, times.utc(BEATS[0][0] - 1))["last_before"] is None


@pytest.fixture
def production(monkeypatch):
    """The production reads of choose_target (pgbackrest info, the heartbeat table, pg_stat_archiver)."""
    state = {"stop": BACKUP_STOP, "beats": BEATS, "last": ("000000010000000000000013", None)}
    monkeypatch.setattr(pitr, "oldest_backup_stop", lambda cluster, tool, access: state["stop"])
    monkeypatch.setattr(pitr, "heartbeats", lambda cluster, since: [b for b in state["beats"] if b[0] >= since.timestamp()])
    monkeypatch.setattr(pitr, "last_archived", lambda cluster: state["last"])
    return state


def test_choose_target_draws_or_takes_the_given_time_and_refuses_outside_the_window(production):
    cluster = build_cluster({"name": "asso"})
    chosen = pitr.choose_target(cluster, "pgbackrest", None, "scheduled__2026-12-03T05:40:00+00:00")
    assert chosen["drawn"] and chosen["seed"] == "scheduled__2026-12-03T05:40:00+00:00"
    assert chosen["expected"]["first_after"] is not None  # an archived commit after the target
    given = times.iso(BEATS[2][0] + 30)
    chosen = pitr.choose_target(cluster, "pgbackrest", None, "manual__x", given)
    assert not chosen["drawn"] and chosen["target_time"] == given and chosen["seed"] is None
    with pytest.raises(RestoreRefused) as refused:
        pitr.choose_target(cluster, "pgbackrest", None, "manual__x", times.iso(BEATS[-1][0]))  # not archived yet
    assert "target_time" in str(refused.value) and "outside cluster asso's pgbackrest recovery window" in str(refused.value)
    production["beats"] = []
    with pytest.raises(RestoreRefused) as refused:
        pitr.choose_target(cluster, "pgbackrest", None, "manual__x")
    text = str(refused.value)
    assert "verify.heartbeat_minutes" in text and "nothing was restored" in text and "heartbeat_asso" in text
    # A drill's refusal, named so (it read "restore test refused, nothing was deleted" before).
    assert text.startswith("verification drill refused, nothing was restored: verify.heartbeat_minutes: ")


def test_heartbeat_sql_keeps_the_longest_retention_and_a_week():
    cluster = build_cluster({"name": "asso", "walg": {"retention_days": 45}})
    assert pitr.keep_days(cluster) == 52
    sql = pitr.heartbeat_sql(52)
    assert "interval '52 days'" in sql and "pg_current_wal_insert_lsn()" in sql and "RETURNING" in sql


def test_the_pitr_line_and_its_metrics_name_the_target_and_the_recovery_point(tmp_path):
    cluster = build_cluster({"name": "asso", "metrics": {"textfile_directory": str(tmp_path)},
                             "verify": {"root": str(tmp_path / "verify")}})
    chosen = {"tool": "pgbackrest", "target_time": "2026-12-02T10:00:00+00:00", "drawn": True, "seed": "r",
              "window": {"start": "2026-12-01T02:16:00+00:00", "end": "2026-12-03T05:30:00+00:00"},
              "expected": {"last_before": "2026-12-02T09:45:00+00:00", "first_after": "2026-12-02T10:00:05+00:00"}}
    point = {"check": "recovery_point", "result": "ok", "recovered_to": "2026-12-02T09:59:58+00:00", "gap_seconds": 2.0}
    steps = {"restore": {"restore_seconds": 4.0}, "start": {"startup_seconds": 3.0},
             "checks": {"smoke": {"pg_tables": 70}, "checks": [{"check": "backup_marker", "result": "ok"}, point]}}
    line = pitr.pitr_line(cluster, run_id="scheduled__x", chosen=chosen, record={"label": "20261201-021502F"},
                          steps=steps, errors=[])
    assert line["kind"] == pitr.KIND and line["outcome"] == "success" and line["rto_seconds"] == 7.0
    assert (line["target_time"], line["recovered_to"], line["rpo_gap_seconds"]) == (
        "2026-12-02T10:00:00+00:00", "2026-12-02T09:59:58+00:00", 2.0)
    assert line["target"]["data_directory"] == str(tmp_path / "verify" / "asso-pitr")  # not the backups' drill's
    metrics.record_verify_pitr(cluster, line)
    text = (tmp_path / "pg_backups_asso_verify_pgbackrest_pitr.prom").read_text()
    assert 'pg_backups_verify_pitr_last_rpo_gap_seconds{cluster="asso",stanza="asso",tool="pgbackrest"} 2' in text
    assert "pg_backups_verify_pitr_last_result{" in text
    failed = pitr.pitr_line(cluster, run_id="r2", chosen=None, record=None, steps={}, errors=["choose_target: failed"])
    assert failed["outcome"] == "failed" and failed["failed_step"] == "plan"
    assert "PITR drill of cluster asso failed: pgbackrest to (no target)" in pitr.failure_text(failed)
    # The drill's result never counts as a backup's verification (its own results and metrics).
    assert verification.data_directory(cluster) == str(tmp_path / "verify" / "asso")


def test_the_segment_after_the_last_one_restored_is_named_as_missing(tmp_path, monkeypatch):
    from pg_backups import staging

    assert staging.next_segment("000000010000000000000007") == "000000010000000000000008"
    assert staging.next_segment("0000000100000000000000FF") == "000000010000000100000000"  # 16 MiB: 256 a log file
    assert staging.next_segment("00000001000000000000003F", 64 * 2**20) == "000000010000000100000000"
    log = tmp_path / "staging_startup.log"
    # The lines PostgreSQL 15 wrote in the sandbox when the archive had a hole (recorded sample).
    log.write_text('LOG:  restored log file "000000010000000000000005" from archive\n'
                   'LOG:  restored log file "000000010000000000000006" from archive\n'
                   "FATAL:  recovery ended before configured recovery target was reached\n")
    monkeypatch.setattr(staging, "staging_log_paths", lambda cluster: [log])
    monkeypatch.setattr(staging, "segment_bytes", lambda cluster: 16 * 2**20)
    assert staging.missing_segment(None) == ("WAL segment 000000010000000000000007 is missing from the archive or "
                                             "unreadable (the last segment restored was 000000010000000000000006)")
    log.write_text("FATAL:  recovery ended before configured recovery target was reached\n")
    assert staging.missing_segment(None) is None


def test_the_recovery_point_is_the_last_replayed_commit_or_else_the_backup_stop(monkeypatch):
    """On a copy where recovery replayed no commit after the backup (pg_last_xact_replay_timestamp()
    is NULL then: seen in the sandbox), the point reached is the backup's consistent state."""
    from pg_backups import staging

    chosen = {"target_time": "2026-12-02T10:00:00+00:00",
              "expected": {"last_before": None, "first_after": "2026-12-02T10:00:01+00:00"}}
    answers = {"to_regclass": "t", "max(beat_at)": "", "count(*)": "0", "pg_last_xact_replay_timestamp": ""}
    monkeypatch.setattr(staging, "staging_sql", lambda c, sql, db=None: next(v for k, v in answers.items() if k in sql))
    point = {c["check"]: c for c in pitr.heartbeat_checks(None, chosen, "2026-12-02T09:59:30+00:00")}
    assert point["heartbeat_before_target"]["result"] == point["no_heartbeat_after_target"]["result"] == "ok"
    assert (point["recovery_point"]["source"], point["recovery_point"]["gap_seconds"]) == ("backup stop", 30.0)
    answers["pg_last_xact_replay_timestamp"] = str(times.utc("2026-12-02T09:59:58+00:00").timestamp())
    point = {c["check"]: c for c in pitr.heartbeat_checks(None, chosen, "2026-12-02T09:59:30+00:00")}
    assert (point["recovery_point"]["source"], point["recovery_point"]["gap_seconds"]) == ("last replayed commit", 2.0)
    answers["count(*)"] = "1"  # a heartbeat after the target came back: recovery went too far
    assert {c["check"]: c["result"] for c in pitr.heartbeat_checks(None, chosen, None)}["no_heartbeat_after_target"] \
        == "failed"
