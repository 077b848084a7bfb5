"""One error family for the whole package.

Every error the project raises on purpose is a :class:`PgBackupsError`: it says what went wrong,
what to do about it, and whether trying again can help. Two places read that and nothing else:

* the Airflow wing (:func:`pg_backups.airflow.common.task_body`) fails a task without retry when
  ``retryable`` is false (a refused staging path does not get better in five minutes);
* the cron command (:func:`pg_backups.cli.main`) exits with ``exit_code``: 2 when the input was
  refused before anything ran, 1 for a failure while running.

Nothing here imports Airflow.
"""

from __future__ import annotations

# Exit codes of the cron scripts (documented in docs/operations.md).
EXIT_FAILED = 1
EXIT_REFUSED = 2


class PgBackupsError(RuntimeError):
    """What went wrong (``problem``), the fix (``fix``), and whether a retry can help."""

    retryable = True
    exit_code = EXIT_FAILED

    def __init__(self, problem: str, fix: str | None = None, *, retryable: bool | None = None, head: str | None = None):
        self.problem, self.fix, self.head = problem, fix, head or problem
        if retryable is not None:
            self.retryable = retryable
        super().__init__(problem)

    def __str__(self) -> str:  # read when shown, so a fix added on the way up is part of the message
        return f"{self.head}. Fix: {self.fix}" if self.fix else self.head


class Refused(PgBackupsError):
    """Refused before anything ran or changed: the input is wrong, and asking again cannot help."""

    retryable = False
    exit_code = EXIT_REFUSED


class ConfigError(Refused):
    """A setting is wrong: where it is (``source``, ``setting``), what is wrong, and the fix."""

    def __init__(self, source: str, setting: str, problem: str, fix: str):
        self.source, self.setting = source, setting
        super().__init__(problem, fix, head=f"{source}: {setting}: {problem}")


class BucketSettingsError(Refused):
    """A bucket setting S3 would refuse, or a bucket that is not ours to configure; nothing was changed."""

    def __init__(self, setting: str, problem: str, fix: str):
        self.setting = setting
        super().__init__(problem, fix, head=f"s3.{setting}: {problem}")


class ConfigProblems(ConfigError):
    """Several configuration problems at once (every problem of a file or an entry): one line each.

    ``problems`` holds each :class:`ConfigError`; ``setting`` and ``fix`` are the first one's.
    """

    def __init__(self, problems: list[ConfigError]):
        self.problems = list(problems)
        first = self.problems[0]
        super().__init__(first.source, first.setting, first.problem, first.fix)

    def __str__(self) -> str:
        return "\n".join(str(p) for p in self.problems)


def config_problem(problems: list[ConfigError]) -> ConfigError:
    """One error for a list of problems: the problem itself when there is one."""
    return problems[0] if len(problems) == 1 else ConfigProblems(problems)


class VersionMismatch(Refused):
    """The server, its data directory or its binaries are of different PostgreSQL majors
    (pg_backups.versions): refused before any tool runs."""


class RestoreRefused(Refused):
    """The restore test's guard refused: nothing was stopped or deleted."""

    refusal = "restore test refused, nothing was deleted"

    def __init__(self, setting: str, problem: str, fix: str):
        self.setting = setting
        super().__init__(problem, fix, head=f"{self.refusal}: {setting}: {problem}")


class DrillRefused(RestoreRefused):
    """A verification drill (of a backup, or of a point in time) refused before its disposable
    target was touched."""

    refusal = "verification drill refused, nothing was restored"


class NothingToDo(PgBackupsError):
    """The run has nothing to do and says why (a backfill run whose backup slot is covered):
    the task is skipped, not failed."""

    retryable = False


class ToolError(PgBackupsError):
    """A backup tool (or psql, pg_ctl) exited non-zero or said it failed. Already redacted."""

    def __init__(self, message: str, returncode: int | None = None, output: str = "", *,
                 fix: str | None = None, retryable: bool | None = None):
        super().__init__(message, fix, retryable=retryable)
        self.returncode, self.output = returncode, output


class ArchivingBroken(ToolError):
    """WAL archiving fails: a backup cannot complete (its last WAL segment is never archived)."""


class Unreachable(PgBackupsError):
    """A service the job needs (S3, PostgreSQL) did not answer; nothing was changed. Worth a retry."""


class CheckFailed(PgBackupsError):
    """A check of the restored cluster failed; ``checks`` holds every result for the audit."""

    retryable = False  # the restored data will not change by asking again

    def __init__(self, message: str, checks: list[dict]):
        super().__init__(message)
        self.checks = checks


class StaleBackup(PgBackupsError):
    """The newest good backup of a tool is older than alerts.max_backup_age_hours (or missing).

    Retried like any failure: a backup that is finishing right now makes the next try pass."""


class NotVerified(PgBackupsError):
    """The newest backup of a tool was not proven restorable by a drill within
    verify.max_delay_minutes of its completion, or its drill failed."""


class WalArchivingProblem(PgBackupsError):
    """pg_stat_archiver shows failures, or WAL waits too long to be archived."""
