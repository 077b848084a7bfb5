"""One error family: what went wrong, the fix, and whether a retry can help. A non-retryable error
fails the task on its first try (one place in the Airflow wing), and the cron command maps every
error to its documented exit code (one place in cli.main)."""

from __future__ import annotations

import pytest

from pg_backups import cli, pgbackrest
from pg_backups.errors import (
    EXIT_FAILED,
    EXIT_REFUSED,
    BucketSettingsError,
    CheckFailed,
    ConfigError,
    PgBackupsError,
    RestoreRefused,
    StaleBackup,
    ToolError,
    Unreachable,
    WalArchivingProblem,
)


@pytest.mark.parametrize("error,retryable,exit_code", [
    (ConfigError("f.yaml", "k", "bad", "fix it"), False, EXIT_REFUSED),
    (RestoreRefused("restore_test.staging_data_directory", "is production", "point it elsewhere"), False, EXIT_REFUSED),
    (BucketSettingsError("region", "bucket exists in us-west-2", "set s3.region"), False, EXIT_REFUSED),
    (CheckFailed("restored cluster failed checks: backup_marker", []), False, EXIT_FAILED),
    (ToolError("pgbackrest backup failed with exit code 49", 49), True, EXIT_FAILED),
    (Unreachable("S3 endpoint is unreachable", "check the network"), True, EXIT_FAILED),
    (StaleBackup("cluster asso: pgbackrest: no good backup"), True, EXIT_FAILED),
    (WalArchivingProblem("cluster asso: archive_command is failing"), True, EXIT_FAILED),
])
def test_every_error_says_whether_a_retry_helps_and_its_exit_code(error, retryable, exit_code):
    assert isinstance(error, PgBackupsError)
    assert (error.retryable, error.exit_code) == (retryable, exit_code)


@pytest.mark.parametrize("error,setting", [
    (ConfigError("clusters.yaml", "s3.region", "bad", "fix it"), "s3.region"),
    (RestoreRefused("restore_test.staging_data_directory", "is production", "point it elsewhere"),
     "restore_test.staging_data_directory"),
    (BucketSettingsError("region", "bucket exists in us-west-2", "set s3.region"), "region"),
])
def test_an_error_that_names_a_setting_calls_it_setting(error, setting):
    """One attribute for the setting an error names, whatever the error (cli.py reads it to name the
    runbook variable that set it)."""
    assert error.setting == setting and setting in str(error)
    if error.fix:
        assert str(error).endswith(f"Fix: {error.fix}")


def test_a_fix_added_on_the_way_up_is_part_of_the_message():
    error = ToolError("pgbackrest check failed", 37)
    error.fix = "set pg1-path"
    assert str(error) == "pgbackrest check failed. Fix: set pg1-path"


def test_task_body_fails_without_retry_only_what_a_retry_cannot_fix():
    from airflow.sdk.exceptions import AirflowFailException

    from pg_backups.airflow.common import task_body

    @task_body
    def refused():
        raise RestoreRefused("restore_test.staging_data_directory", "is production", "point it elsewhere")

    @task_body
    def transient():
        raise Unreachable("S3 endpoint is unreachable", "check the network")

    with pytest.raises(AirflowFailException) as failed:
        refused()
    assert isinstance(failed.value.__cause__, RestoreRefused) and "Fix: point it elsewhere" in str(failed.value)
    with pytest.raises(Unreachable):  # Airflow retries it
        transient()


def test_alert_names_the_cause_not_the_airflow_wrapper():
    from airflow.sdk.exceptions import AirflowFailException

    from pg_backups.airflow.notifiers import error_summary

    try:
        try:
            raise ConfigError("clusters.yaml", "s3.region", "bucket exists in us-west-2", "set s3.region")
        except ConfigError as exc:
            raise AirflowFailException(str(exc)) from exc
    except AirflowFailException as wrapped:
        assert error_summary(wrapped).startswith("ConfigError: clusters.yaml: s3.region: bucket exists in us-west-2")


def test_an_option_pgbackrest_refuses_is_not_retryable(tmp_path, make_cluster):
    """The real pgBackRest: an option it rejects (exit 031/032) does not get better by retrying."""
    conf = tmp_path / "pgbackrest.conf"
    conf.write_text("[global]\nrepo1-path=/nonexistent\n")
    cluster = make_cluster({"pgbackrest": {"config_path": str(conf), "manage_config": False}})
    with pytest.raises(ToolError) as bad_value:
        pgbackrest.run(cluster, "expire", "--repo1-retention-archive-type=time")
    assert bad_value.value.returncode == 32 and bad_value.value.retryable is False
    assert str(conf) in str(bad_value.value) and "retrying cannot help" in str(bad_value.value)
    with pytest.raises(ToolError) as missing:  # a repository that cannot be read now may be readable later
        pgbackrest.run(cluster, "expire", "--lock-path", str(tmp_path), "--log-path", str(tmp_path))
    assert missing.value.returncode not in pgbackrest.OPTION_ERRORS
    assert missing.value.retryable is True


@pytest.mark.parametrize("error,code", [
    (ConfigError("environment", "PGPORT", "'x' is not a number", "set PGPORT to a port number"), EXIT_REFUSED),
    (RestoreRefused("STAGING_PGDATA", "is production", "point it at staging"), EXIT_REFUSED),
    (ToolError("pgbackrest backup failed with exit code 49", 49), EXIT_FAILED),
    (RuntimeError("anything else"), EXIT_FAILED),
])
def test_cron_command_exits_with_the_documented_code(monkeypatch, capsys, error, code):
    def fail(*args, **kwargs):
        raise error

    monkeypatch.setattr(cli, "resolve_cluster", fail)
    assert cli.main(["pgbackrest-backup"]) == code


def test_a_lock_pgbackrest_cannot_write_is_a_permission_problem_not_a_wait(make_cluster):
    """[050] with "Permission denied" (the sandbox under umask 077 made the lock directory root's):
    refused at once, naming the directory, instead of 180 s of waiting for "archive-push"."""
    import shutil
    import tempfile
    import time
    from pathlib import Path

    tmp_path = Path(tempfile.mkdtemp(prefix="pg-backups-lock-test-", dir="/var/tmp"))  # postgres reaches it
    lock = tmp_path / "lock"
    lock.mkdir(mode=0o700)
    conf = tmp_path / "pgbackrest.conf"
    conf.write_text(f"[global]\nrepo1-path={tmp_path / 'repo'}\nlock-path={lock}\nlog-path={tmp_path}\n"
                    f"[asso]\npg1-path={tmp_path / 'data'}\n")
    for path in (tmp_path, conf):
        path.chmod(0o755 if path.is_dir() else 0o644)
    cluster = make_cluster({"os_user": "postgres", "pgbackrest": {
        "config_path": str(conf), "manage_config": False, "lock_path": str(lock)}})
    started = time.monotonic()
    try:
        with pytest.raises(ToolError) as refused:
            pgbackrest._stanza_create(cluster)  # the real pgBackRest, as postgres, on a root-only lock directory
    finally:
        shutil.rmtree(tmp_path)
    assert time.monotonic() - started < 30
    assert refused.value.returncode == 50 and refused.value.retryable is False
    assert "Permission denied" in str(refused.value) and f"write access to {lock}" in str(refused.value)


def test_wal_not_archived_in_time_points_at_archiving_not_the_network_recorded_sample():
    """pgBackRest 2.45's output in CI (recorded: the real tool gives it only when archiving stalls).
    Its "timeout" made the fix say the S3 endpoint was unreachable; the endpoint was fine."""
    from pg_backups import runner

    output = ("P00   INFO: check archive for segment(s) 000000010000000000000013:000000010000000000000013\n"
              "P00   INFO: backup command end: aborted with exception [082]\n"
              "ERROR: [082]: WAL segment 000000010000000000000013 was not archived before the 120000ms timeout\n"
              "       HINT: check the archive_command to ensure that all options are correct (especially --stanza).\n"
              "       HINT: check the PostgreSQL server log for errors.\n")
    message, fix = runner.failure_summary(["runuser", "-u", "postgres", "--", "pgbackrest", "--stanza=asso",
                                           "--type=diff", "backup"], 82, output)
    assert message == ("pgbackrest backup failed (exit 82): [082] WAL segment 000000010000000000000013 was not "
                       "archived before the 120000ms timeout")
    assert "unreachable" not in fix and "pg_stat_archiver" in fix and "archive_command" in fix
