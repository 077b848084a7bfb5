"""The settings blocks of a cluster entry (``s3:``, ``pgbackrest:``, ``walg:``, ``restore_test:``, ...).

Each block is a frozen dataclass whose fields are declared with :func:`setting`; the runbook's
values are the defaults, and each block's ``validate()`` checks what spans its fields. The cluster
that holds them is :mod:`pg_backups.config.cluster`.
"""

from __future__ import annotations

import typing
from dataclasses import dataclass

from pg_backups.config.declarations import (
    ALERT_CHANNELS,
    PGBACKREST_COMPRESS_TYPES,
    PGBACKREST_INCREMENTAL_TYPES,
    TOOLS,
    WALG_COMPRESSIONS,
    Settings,
    _norm,
    setting,
)
from pg_backups.errors import BucketSettingsError
from pg_backups.times import WEEKDAYS


@dataclass(frozen=True)
class Transition(Settings):
    days: int
    storage_class: str


@dataclass(frozen=True)
class Lifecycle(Settings):
    """S3 lifecycle of the backup bucket (runbook 2.3, plus the caps Ops expects)."""

    transitions: list[Transition] = setting(factory=lambda: [
        Transition(90, "STANDARD_IA"), Transition(365, "DEEP_ARCHIVE")])
    noncurrent_transitions: list[Transition] = setting(factory=lambda: [Transition(90, "DEEP_ARCHIVE")])
    # With versioning on, every backup that retention deletes becomes a noncurrent version, which
    # the runbook's rules alone would keep forever (in DEEP_ARCHIVE). This caps it; null = forever.
    noncurrent_expire_days: int | None = 730
    abort_incomplete_multipart_days: int | None = 7


@dataclass(frozen=True)
class StoragePrices(Settings):
    """Storage price of each S3 storage class, per GB-month (GB = 2^30 bytes, as AWS bills), for the
    monthly cost estimate (pg_backups.costs). A price not given (null) takes the default table of the
    bucket's region (REGION_PRICES); a class with no price at all is left out of the estimate, by name.
    Give the prices of your own bill (currency, tier, discounts): these are list prices."""

    currency: str = "USD"
    standard: float | None = setting(None, minimum=0)
    intelligent_tiering: float | None = setting(None, minimum=0)
    standard_ia: float | None = setting(None, minimum=0)
    onezone_ia: float | None = setting(None, minimum=0)
    glacier_ir: float | None = setting(None, minimum=0)
    glacier: float | None = setting(None, minimum=0)
    deep_archive: float | None = setting(None, minimum=0)


# The default price table per bucket region (USD per GB-month, first 50 TB tier).
# eu-west-3 (Europe, Paris), the runbook's region. Source: https://aws.amazon.com/s3/pricing/,
# "Storage pricing", region "Europe (Paris)", first 50 TB / month. Written down 2026-12-02 from what
# that page is known to list, NOT read from it that day: neither the page nor a copy of its Paris
# table could be reached from the machine (searched 2026-12-02). Check them against the page or your
# bill, and override them in s3.prices.
REGION_PRICES: dict[str, dict[str, float]] = {
    "eu-west-3": {
        "standard": 0.024,       # S3 Standard, first 50 TB / month
        "standard_ia": 0.0131,   # S3 Standard - Infrequent Access
        "deep_archive": 0.002,   # S3 Glacier Deep Archive
    },
}


@dataclass(frozen=True)
class S3Settings(Settings):
    bucket: str = "asso-prod-backups"
    region: str = "eu-west-3"
    aws_conn_id: str = "aws_backups"
    # For S3-compatible stores; overrides the connection's endpoint_url when set.
    endpoint_url: str | None = None
    # CA bundle of an endpoint with its own certificate (the sandbox's stunnel).
    ca_file: str | None = None
    lifecycle: Lifecycle = setting(factory=Lifecycle)
    block_public_access: bool = True
    encryption: str = "AES256"  # AES256 or aws:kms
    kms_key_id: str | None = None
    deny_insecure_transport: bool = True
    # The monthly cost estimate's price table; null: the default for the bucket's region.
    prices: StoragePrices = setting(factory=StoragePrices)

    def validate(self, fail) -> None:
        from pg_backups import s3_bucket  # the bucket rules live with the code that applies them

        try:
            s3_bucket.validate(self)
        except BucketSettingsError as exc:
            fail(exc.setting, exc.problem, exc.fix)


@dataclass(frozen=True)
class PgBackRestSettings(Settings):
    schedule: str = setting("15 2 * * *", cron=True)
    # One file per cluster (with its own conf.d for the S3 keys): a cluster's task never rewrites
    # another's stanza, and clusters may use different buckets and keys.
    config_path: str = setting("/etc/pgbackrest/{cluster}/pgbackrest.conf", absolute_path=True)
    # true: the project writes config_path from this file; false: it reads a hand-written one.
    manage_config: bool = True
    repo_path: str = "/pgbackrest"
    retention_full_days: int = setting(30, minimum=1, fix="keep at least 1 day (runbook: 30)")
    # Full backups on these days (UTC, of the run's logical date), `incremental_type` otherwise.
    # All seven days means a daily full backup, as the runbook allows.
    full_backup_days: list[str] = setting(factory=lambda: ["sun"], choices=WEEKDAYS,
                                          problem="{bad!r} are not weekdays")
    incremental_type: str = setting("diff", choices=PGBACKREST_INCREMENTAL_TYPES)
    process_max: int = setting(4, minimum=1, fix="use 1 or more processes")
    # zst: 3.0 s of CPU where gz took 11.3 s on a 776 MB database (measured on these machines).
    compress_type: str = setting("zst", choices=PGBACKREST_COMPRESS_TYPES)
    # compress-level: 1 rather than pgBackRest's default for zst (3): on a 590 MB pgbench database to
    # S3, backup 5.5 s instead of 9.6 s and restore 4.4 s instead of 6.2 s, for the same size (29 vs
    # 31 MB) (benchmarks/bench_walg_vs_pgbackrest.py). None: pgBackRest's default for the type.
    compress_level: int | None = setting(1, minimum=-7, maximum=22, fix="use a level the compress_type accepts "
                                                                        "(zst -7..22, lz4 -5..12, gz 0..9, bz2 1..9)")
    archive_async: bool = True
    # repo1-bundle (pgBackRest 2.39+): small files packed into bundles. To S3, pgBackRest pays per
    # object: a 530 MB pgbench database went from ~1,300 objects to ~20 (benchmarks/bench_walg_vs_pgbackrest.py).
    bundle: bool = True
    # repo1-block (pgBackRest 2.46+, needs bundle): diff and incr backups store the changed blocks of
    # a file, not the whole file: 838 KB instead of 37 MB after 1% of a 920 MB database's rows changed
    # (docs/versions.md). On where the host's pgBackRest has it; left out on 2.45. Every host that
    # restores the repository then needs 2.46+ too.
    block_incremental: bool = True
    # repo1-bundle-limit in KiB (8 minimum): larger files are stored as objects of their own.
    # None: pgBackRest's default (2 MiB).
    bundle_limit_kib: int | None = setting(None, minimum=8, fix="use 8 KiB or more (pgBackRest's minimum)")
    spool_path: str = setting("/var/spool/pgbackrest", absolute_path=True)
    log_path: str = setting("/var/log/pgbackrest", absolute_path=True)
    lock_path: str = setting("/tmp/pgbackrest", absolute_path=True)
    start_fast: bool = True
    archive_timeout_seconds: int = setting(120, minimum=1)
    # How long one S3 or database request may stall. With S3 down, every file of a backup waits
    # this long: 60 s (pgBackRest's default) turned an outage into an 8-minute failure here.
    io_timeout_seconds: int = setting(60, minimum=1)
    # Whole-repository `pgbackrest verify` (its own weekly DAG), off the backup's path:
    # it reads every backup kept (measured 34.7 s with 5 backups, 79.4 s with 8, growing with
    # retention), so it runs weekly (Sunday 04:00 UTC) rather than after each backup.
    verify_schedule: str = setting("0 4 * * 0", cron=True)


@dataclass(frozen=True)
class WalgSettings(Settings):
    schedule: str = setting("45 2 * * *", cron=True)
    binary: str = "wal-g"
    prefix: str = "postgres"  # WALG_S3_PREFIX = s3://<bucket>/<prefix>
    retention_days: int = setting(30, minimum=1, fix="keep at least 1 day (runbook: 30)")
    compression: str = setting("lz4", choices=WALG_COMPRESSIONS,
                               problem="{value!r} is not available in a pure-Go WAL-G build", fix="use lz4, zstd or lzma (brotli needs a cgo build)")
    # OpenPGP public/private key file for client-side encryption (WALG_PGP_KEY_PATH).
    pgp_key_path: str | None = None
    # Non-secret settings for archive_command, written by the project (owner-only permissions).
    config_path: str = setting("/etc/wal-g/{cluster}.json", absolute_path=True)


@dataclass(frozen=True)
class RestoreTestSettings(Settings):
    # Runbook text: first Sunday of January, April, July, October at 02:00 UTC. Its cron line
    # (`0 2 1 JAN,APR,JUL,OCT *`) says the 1st of the month instead; the text wins.
    schedule: str = setting("0 2 * 1,4,7,10 0#1", cron=True)
    tool: str = setting("pgbackrest", choices=TOOLS)
    staging_root: str = setting("/var/lib/postgresql/staging", absolute_path=True)
    staging_data_directory: str = setting("/var/lib/postgresql/staging/{cluster}", absolute_path=True)
    staging_port: int = setting(5433, minimum=1, maximum=65535, problem="{value} is not a TCP port")
    staging_socket_directory: str | None = None
    staging_conn_id: str | None = None  # default: pg_<name>_staging
    # The Airflow queue of the staging host's Celery worker (its tasks run where staging lives);
    # none: Airflow's default queue (one host for everything).
    staging_queue: str | None = None
    smoke_log: str = "/tmp/{cluster}_restore_smoke.log"
    audit_log: str = "/var/log/{cluster}_restore_audit.log"  # runbook: /var/log/asso_restore_audit.log
    audit_prefix: str = "audit"
    signoff_timeout_days: int = setting(7, minimum=1, fix="give QA at least 1 day")
    qa_users: list[str] = setting(factory=lambda: ["qa"])
    check_tables: list[str] = setting(factory=list)

    def validate(self, fail) -> None:
        root, staging = _norm(self.staging_root), _norm(self.staging_data_directory)
        if staging != root and root not in staging.parents:
            fail("staging_data_directory", f"{staging} is outside the staging root {root}",
                 "put the staging data directory inside restore_test.staging_root")
        if not self.qa_users:
            fail("qa_users", "nobody can sign off", "list the Airflow user names of QA")


@dataclass(frozen=True)
class VerifySettings(Settings):
    """The verification drill (dags/verify_backup.py): each published backup restored onto a
    disposable target of its own, never QA's staging."""

    # false: no drill for this cluster (no verification DAG).
    enabled: bool = True
    # The drill's targets live in <root>/<cluster>; removed after each drill.
    root: str = setting("/var/lib/postgresql/verify", absolute_path=True)
    # Clusters drilled on one host may share the port: their drills run one at a time (the pool),
    # and each drill stops its server before it gives the slot back.
    port: int = setting(5435, minimum=1, maximum=65535, problem="{value} is not a TCP port")
    socket_directory: str | None = None
    # The Airflow queue of the verification host's worker; none: Airflow's default queue.
    queue: str | None = None
    # One drill at a time per verification host: the pool (1 slot) of the drill task. Clusters
    # drilled on the same host share it; a host of its own gets a pool of its own.
    pool: str = "pg_backups_verify"
    timeout_minutes: int = setting(360, minimum=1)
    # The free space verify.root must have beyond the backup's database size (WAL replayed, logs).
    free_space_margin_percent: int = setting(10, minimum=0, maximum=1000)
    # One JSON line per drill, archived to S3 beside the restore test's audit.
    log: str = "/var/log/{cluster}_verify.log"
    smoke_log: str = "/tmp/{cluster}_verify_smoke.log"
    # The daily random-point PITR drill (dags/verify_pitr.py) and the heartbeat rows of production
    # it checks the recovered copy against (dags/heartbeat.py): false switches both off.
    pitr_enabled: bool = True
    pitr_schedule: str = setting("40 5 * * *", cron=True)
    # A heartbeat row into production every this many minutes: the finest point the PITR drill can
    # check (16 bytes a row, kept as long as the longest retention and a week).
    heartbeat_minutes: int = setting(15, minimum=1, maximum=60)
    # A backup not verified within this many minutes of its completion is late: the freshness check
    # fails (NotVerified), the inventory turns amber, Prometheus fires PgBackupNotVerified.
    max_delay_minutes: int = setting(60, minimum=1)


@dataclass(frozen=True)
class AlertSettings(Settings):
    slack_conn_id: str = "slack_ops"
    channel: str | None = None
    notify_on_retry: bool = False
    # Channels by severity. Critical: a task failed after its retries (backup, restore test, freshness
    # check). Warning: a retry (alerts.notify_on_retry), a bucket drift repaired, the bucket DAG failing.
    critical_channels: list[str] = setting(factory=lambda: ["slack"], choices=ALERT_CHANNELS,
                                           problem="{bad!r} are not alert channels")
    warning_channels: list[str] = setting(factory=lambda: ["slack"], choices=ALERT_CHANNELS,
                                          problem="{bad!r} are not alert channels")
    # E-mail: an Airflow connection of type smtp (host, port, login/password, extra from_email).
    email_conn_id: str = "smtp_ops"
    email_to: list[str] = setting(factory=list)
    # PagerDuty Events API v2: a connection of type pagerduty_events, password = the integration key.
    pagerduty_conn_id: str = "pagerduty_ops"
    # The Events API's address; an EU service region's account uses https://events.eu.pagerduty.com.
    pagerduty_events_url: str = "https://events.pagerduty.com"
    # A WAL segment waiting longer than this to be archived: WAL is not reaching the repository.
    max_wal_wait_minutes: int = setting(15, minimum=1)
    max_backup_age_hours: int = setting(26, minimum=1,
                                        fix="use the backup interval plus a margin (default 26)")

    def validate(self, fail) -> None:
        used = {*self.critical_channels, *self.warning_channels}
        if "email" in used and not self.email_to:
            fail("email_to", "e-mail is an alert channel but nobody receives it",
                 "list the addresses, e.g. email_to: [ops@example.org], or remove email from the channels")
        if "pagerduty" in used and not self.pagerduty_events_url.startswith("https://"):
            fail("pagerduty_events_url", f"{self.pagerduty_events_url!r} is not an https:// URL "
                 "(PagerDuty's client refuses any other)", "use https://events.pagerduty.com or your region's")


@dataclass(frozen=True)
class MetricsSettings(Settings):
    textfile_directory: str | None = None  # node_exporter textfile collector directory
    pushgateway_url: str | None = None


# A fleet: a cluster file with more than this many entries. Its nightly slots are spread by default
# (schedule_spread.enabled unset): 1,000 clusters at 02:15 are 1,000 DAG runs in one minute on one
# scheduler, all reading S3 at once. Up to this many, the configured times stay exact (the
# runbook's 02:15 and 02:45 for `asso`): a small install's Ops know their times, and ten runs in
# one minute cost a scheduler nothing.
FLEET_SIZE = 10
# The schedules schedule_spread moves (section.field of Cluster): every nightly slot of a cluster,
# moved by the same offset, so that their order and gaps stay (pgBackRest 30 min before WAL-G).
# A new nightly DAG (a daily verification drill) adds its schedule here.
SPREAD_SCHEDULES = ("pgbackrest.schedule", "walg.schedule", "restore_test.schedule", "pgbackrest.verify_schedule",
                    "verify.pitr_schedule")


@dataclass(frozen=True)
class ScheduleSpread(Settings):
    """Each cluster's nightly slots moved later by an offset drawn from its name (a hash: the same
    at every parse, on every machine), between 0 and ``window_minutes`` - 1. Only a schedule at one
    fixed time of day moves (``15 2 * * *``); one with a step or a list (``*/5 * * * *``) stays."""

    # null: on when the file declares more than FLEET_SIZE clusters, off otherwise; true/false: as said.
    enabled: bool | None = None
    window_minutes: int = setting(180, minimum=1, maximum=1440, fix="use 1 to 1440 minutes (default 180: "
                                                                       "02:15 to 05:14 for pgBackRest)")


class Pool(typing.NamedTuple):
    """An Airflow pool the DAGs use (``python -m pg_backups.cli list-pools`` prints them for deployment)."""

    name: str
    slots: int
    description: str
