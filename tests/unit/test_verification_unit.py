"""The verification drill's logic that needs no server: the load-time guard of verify.root, the
target (the restore test's staging settings pointed elsewhere), the disk guard, the verification
line, its metrics. Sandbox and scheduler cases are in tests/scheduler/test_verification_sandbox.py."""

from __future__ import annotations

import contextlib
import shutil
from pathlib import Path

import pytest

from pg_backups import metrics, pgbackrest, staging, verification
from pg_backups.config import build_cluster
from pg_backups.errors import ConfigError, RestoreRefused

RECORD = {"cluster": "asso", "tool": "pgbackrest", "label": "20261125-021502F", "type": "full",
          "stop_time": "2026-11-25T02:15:40+00:00", "database_size_bytes": 30 * 2**20,
          "backup_size_bytes": 30 * 2**20, "airflow_run_id": "scheduled__2026-11-25T02:15:00+00:00"}


def drill_cluster(tmp_path, **verify_over):
    for d in ("prod", "staging/data", "verify"):
        (tmp_path / d).mkdir(parents=True, exist_ok=True)
    return build_cluster({
        "name": "asso", "host": "127.0.0.1", "port": 5432, "data_directory": str(tmp_path / "prod"),
        "pgbackrest": {"lock_path": str(tmp_path / "lock")},
        "metrics": {"textfile_directory": str(tmp_path / "metrics")},
        "restore_test": {"staging_root": str(tmp_path / "staging"), "staging_data_directory": str(tmp_path / "staging/data"),
                         "staging_port": 6543},
        "verify": {"root": str(tmp_path / "verify"), "port": 6544, "log": str(tmp_path / "verify.log"),
                   "smoke_log": str(tmp_path / "verify_smoke.log"), **verify_over}})


@pytest.mark.parametrize("where", ["prod", "prod/sub", "staging", "staging/data", "staging/data/x", "."])
def test_a_verify_root_on_production_or_staging_is_refused_at_load_time(tmp_path, where):
    with pytest.raises(ConfigError) as refused:
        drill_cluster(tmp_path, root=str((tmp_path / where).resolve()))
    assert "verify.root" in str(refused.value) and "give the drill a root of its own" in str(refused.value)


def test_the_drill_port_may_not_be_production_or_staging(tmp_path):
    with pytest.raises(ConfigError, match="verify.port.*production's port"):
        drill_cluster(tmp_path, port=5432)
    with pytest.raises(ConfigError, match="verify.port.*staging's port"):
        drill_cluster(tmp_path, port=6543)


def test_the_target_is_the_restore_tests_staging_pointed_at_verify_root(tmp_path):
    cluster = drill_cluster(tmp_path)
    target = verification.target(cluster)
    assert staging.staging_dir(target) == str(tmp_path / "verify" / "asso")
    assert target.restore_test.staging_port == 6544 and target.restore_test.audit_log == str(tmp_path / "verify.log")
    assert staging.staging_dir(cluster) == str(tmp_path / "staging" / "data")  # QA's staging unchanged
    assert staging.guard(target)["staging_root"] == str(tmp_path / "verify")
    # A lock path of its own: staging's recovery and a drill's never share the archive lock.
    assert pgbackrest.restore_lock_path(cluster, verification.LOCK_COPY) != pgbackrest.restore_lock_path(cluster)


def test_the_drills_restore_uses_its_own_lock_path(tmp_path, monkeypatch):
    """The restore command pgBackRest gets: --lock-path of the drill's copy, which goes into the
    target's restore_command. It was staging's (restored-copy) until operations.restore_latest_backup
    passed ``copy`` on: a drill beside a restore test shared staging's archive lock."""
    from pg_backups import operations

    cluster = drill_cluster(tmp_path)
    ran = []
    monkeypatch.setattr(pgbackrest, "run", lambda c, command, *options, **kw: ran.append((command, options)))
    monkeypatch.setattr(operations, "restore_lock", lambda c, timeout=0: contextlib.nullcontext())
    operations.restore_latest_backup(verification.target(cluster), "pgbackrest", None, record=RECORD,
                                     copy=verification.LOCK_COPY)
    (command, options), = ran
    assert command == "restore" and f"--set={RECORD['label']}" in options
    assert f"--lock-path={pgbackrest.restore_lock_path(cluster, verification.LOCK_COPY)}" in options, options


def test_the_disk_guard_refuses_naming_the_setting_and_the_sizes(tmp_path, monkeypatch):
    cluster = drill_cluster(tmp_path)
    free = shutil.disk_usage(tmp_path).free
    too_big = {**RECORD, "database_size_bytes": free * 2}
    with pytest.raises(RestoreRefused) as refused:
        verification.check_free_space(cluster, too_big)
    text = str(refused.value)
    assert "verify.root" in text and "MiB free" in text and "needs" in text and "nothing was restored" in text
    assert not (tmp_path / "verify" / "asso").exists()
    assert verification.check_free_space(cluster, RECORD)["required_bytes"] == 33 * 2**20


def test_teardown_removes_only_the_target(tmp_path):
    cluster = drill_cluster(tmp_path)
    target_dir = tmp_path / "verify" / "asso"
    (target_dir / "base").mkdir(parents=True)
    (target_dir / "PG_VERSION").write_text("15")
    done = verification.teardown(cluster)
    assert done["removed"] and not target_dir.exists()
    assert (tmp_path / "staging" / "data").is_dir() and (tmp_path / "prod").is_dir()
    assert verification.teardown(cluster)["removed"] is False  # again: nothing to do, no error


def test_the_verification_line_names_backup_step_and_cause(tmp_path):
    cluster = drill_cluster(tmp_path)
    restore = {"restore_seconds": 4.0}
    ok = verification.verification_line(cluster, run_id="asset_triggered__x", tool="pgbackrest", record=RECORD,
                                        steps={"restore": restore, "start": {"startup_seconds": 2.5},
                                               "checks": {"smoke": {"pg_tables": 70},
                                                          "checks": [{"check": "backup_marker", "result": "ok"}]}},
                                        errors=[])
    assert ok["outcome"] == "success" and ok["rto_seconds"] == 6.5 and ok["failed_step"] is None
    assert ok["backup_label"] == RECORD["label"] and ok["target"]["port"] == 6544 and ok["kind"] == "verification"
    failed = verification.verification_line(cluster, run_id="r2", tool="pgbackrest", record=RECORD,
                                            steps={"restore": restore}, errors=["drill: failed: FATAL: bad"])
    assert failed["outcome"] == "failed" and failed["failed_step"] == "start" and failed["rto_seconds"] is None
    text = verification.failure_text(failed)
    assert RECORD["label"] in text and "step start" in text and "FATAL: bad" in text


def test_verify_metrics_keep_the_last_success_after_a_failed_drill(tmp_path):
    cluster = drill_cluster(tmp_path)
    good = {"tool": "pgbackrest", "outcome": "success", "time": "2026-11-25T02:20:00+00:00",
            "backup_time": RECORD["stop_time"], "backup_label": RECORD["label"], "rto_seconds": 6.5}
    metrics.record_verify(cluster, good)
    metrics.record_verify(cluster, {**good, "outcome": "failed", "time": "2026-11-26T02:20:00+00:00",
                                    "backup_label": "20261126-021502D", "failed_step": "checks", "rto_seconds": None})
    text = Path(tmp_path / "metrics" / "pg_backups_asso_verify_pgbackrest.prom").read_text()
    samples = {n: v for (n, _), v in metrics.parse(text).items()}
    assert samples["pg_backups_verify_last_result"] == 0
    assert samples["pg_backups_verify_last_success_timestamp_seconds"] == 1795573200  # 2026-11-25T02:20Z
    assert samples["pg_backups_verify_last_verified_backup_timestamp_seconds"] == 1795572940
    assert 'failed_step="checks"' in text and 'backup_label="20261126-021502D"' in text
