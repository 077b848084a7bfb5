"""The rules a run follows, whatever starts it (unit tests; the real scheduler's runs are in
test_scheduler.py): a backfill takes at most one backup, the backup a PITR target restores, the
recovery window, one restore test at a time on staging."""

from __future__ import annotations

import os
from datetime import datetime, timezone

import pytest

from pg_backups import operations, pgbackrest, staging, times, walg
from pg_backups.config import build_cluster
from pg_backups.errors import NothingToDo, RestoreRefused
from support import PGBACKREST_INFO_RECORDED_SAMPLE, WALG_BACKUP_LIST_RECORDED_SAMPLE

UTC = timezone.utc


def test_last_slot_of_a_schedule():
    at = datetime(2026, 11, 25, 8, 0, tzinfo=UTC)
    assert times.last_slot("15 2 * * *", at) == datetime(2026, 11, 25, 2, 15, tzinfo=UTC)
    assert times.last_slot("15 2 * * *", datetime(2026, 11, 25, 2, 15, 30, tzinfo=UTC)) == \
        datetime(2026, 11, 25, 2, 15, tzinfo=UTC)
    assert times.last_slot("0 2 * 1,4,7,10 0#1", at) == datetime(2026, 10, 4, 2, 0, tzinfo=UTC)


def test_a_backfill_run_backs_up_only_when_the_current_slot_has_no_backup(monkeypatch):
    monkeypatch.setattr(times, "now", lambda: datetime(2026, 11, 25, 8, 0, tzinfo=UTC))
    slot = datetime(2026, 11, 25, 2, 15, tzinfo=UTC)
    operations.refuse_covered_backfill("pgBackRest", "15 2 * * *", None, None)  # no backup at all: take one
    operations.refuse_covered_backfill("pgBackRest", "15 2 * * *", "20261124-021502F",
                                       slot.timestamp() - 86400)  # yesterday's: take today's now
    with pytest.raises(NothingToDo, match="A backup cannot be taken of the past.*20261125-021503F"):
        operations.refuse_covered_backfill("pgBackRest", "15 2 * * *", "20261125-021503F", slot.timestamp() + 3)
    with pytest.raises(NothingToDo):  # WAL-G's start times are ISO texts
        operations.refuse_covered_backfill("WAL-G", "45 2 * * *", "base_0001", "2026-11-25T02:45:02.5Z")


def cluster(tmp_path, **over):
    return build_cluster({"name": "asso", "data_directory": str(tmp_path / "prod"), "lock_directory": str(tmp_path),
                          **over})


@pytest.fixture
def repository(monkeypatch):
    """pgBackRest's and WAL-G's own listings (recorded samples: the real ones are used in the sandbox
    tests): full 2026-11-24 02:15:30, diff 2026-11-25 02:15:15, a diff with an error after it."""
    monkeypatch.setattr(times, "now", lambda: datetime(2026, 11, 25, 12, 0, tzinfo=UTC))
    monkeypatch.setattr(pgbackrest, "info", lambda c: pgbackrest.parse_info(PGBACKREST_INFO_RECORDED_SAMPLE, "asso"))
    monkeypatch.setattr(walg, "backup_list", lambda c, a: walg.parse_backup_list(WALG_BACKUP_LIST_RECORDED_SAMPLE))


@pytest.mark.parametrize("tool,target,label", [
    ("pgbackrest", None, "20261124-021502F_20261125-021503D"),  # the newest good (not the one in error)
    ("pgbackrest", "2026-11-25 02:00:00+00", "20261124-021502F"),  # before the diff finished: the full
    ("pgbackrest", "2026-11-25T09:00:00Z", "20261124-021502F_20261125-021503D"),
    ("walg", "2026-11-25 02:45:05+00", "base_000000010000000000000004"),  # the delta ends at 02:45:07
    ("walg", None, "base_000000010000000000000010_D_000000010000000000000004"),
])
def test_a_pitr_target_restores_the_newest_backup_that_finished_before_it(tmp_path, repository, tool, target, label):
    record = operations.restore_backup_record(cluster(tmp_path), tool, None, None, target)
    assert record["label"] == label


@pytest.mark.parametrize("target,problem", [
    ("2026-07-05T02:00:00+00:00", "is outside the recovery window"),
    ("2026-12-01 00:00:00+00", "is in the future"),
    ("last tuesday", "is not a time"),
])
def test_a_target_outside_the_window_is_refused_before_staging_is_touched(tmp_path, repository, target, problem):
    with pytest.raises(RestoreRefused) as refused:
        operations.restore_latest_backup(cluster(tmp_path), "pgbackrest", None, None, target)
    assert problem in str(refused.value) and refused.value.setting == "target_time" and "Fix:" in str(refused.value)
    if problem.startswith("is outside"):
        assert "the oldest finished 2026-11-24T02:15:30+00:00" in str(refused.value)
    assert not (tmp_path / "staging").exists()


def test_staging_is_held_by_one_restore_test_at_a_time(tmp_path):
    c = cluster(tmp_path)
    active = {"run:restore_test_asso:a"}
    assert staging.claim(c, "run:restore_test_asso:a", active.__contains__) is None
    assert staging.claim(c, "run:restore_test_asso:a", active.__contains__) is None  # ours already
    assert staging.claim(c, "run:restore_test_asso:b", active.__contains__) == "run:restore_test_asso:a"
    assert staging.release(c, "run:restore_test_asso:b") is False  # not b's to give back
    active.clear()  # a's run ended without its teardown: b takes staging over
    assert staging.claim(c, "run:restore_test_asso:b", active.__contains__) is None
    assert staging.claim_holder(c) == "run:restore_test_asso:b"
    assert staging.release(c, "run:restore_test_asso:b") and staging.claim_holder(c) is None


def test_a_cron_claim_is_alive_while_its_process_is(tmp_path):
    assert staging.pid_owner_alive(staging.pid_owner())
    dead = f"pid:{os.uname().nodename}:999999"
    assert not staging.pid_owner_alive(dead)
    assert staging.pid_owner_alive("run:restore_test_asso:x")  # an Airflow run: cron cannot ask, assumes so
