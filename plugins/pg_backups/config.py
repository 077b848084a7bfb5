"""The cluster configuration: one YAML file declares every PostgreSQL cluster to protect.

The runbook's values are the defaults, so the shortest valid file is::

    clusters:
      - name: asso

A ``defaults:`` mapping at the top is merged into every cluster (handy for many clusters).

Every setting is declared once, with :func:`setting`: its default, and what it accepts (allowed
values, a range, an absolute path, a cron line), the way pgBackRest declares its options. The
loader checks those declarations for every field; each settings class's ``validate()`` then
checks what spans several fields. Every problem of every entry is collected (not only the first),
each a :class:`ConfigError` whose message names the file, the key and the fix. Loading reads the file
and touches nothing else (no connection, no subprocess, no network), except the owner-only copy of
the last good configuration that a running load keeps (see :func:`load_config`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import re
import tempfile
import types
import typing
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

from pg_backups.errors import BucketSettingsError, ConfigError, config_problem
from pg_backups.times import WEEKDAYS, fixed_time, shifted

log = logging.getLogger(__name__)

__all__ = ["ConfigError", "Config", "Cluster", "Pool", "TOOLS", "DAG_KINDS", "dag_kind", "load_config", "parse_config",
           "build_cluster", "with_overrides", "config_path", "check_file", "alert_for", "FLEET_SIZE",
           "SPREAD_SCHEDULES"]

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_CONFIG_PATH = REPO_ROOT / "include" / "config" / "clusters.yaml"
CONFIG_ENV = "PG_BACKUPS_CONFIG"
# Where the copy of the last good configuration is kept (docs/configuration-safety.md): a directory
# of the service's own, not the config file's, which is often mounted read-only.
STATE_DIR_ENV = "PG_BACKUPS_STATE_DIR"

TOOLS = ("pgbackrest", "walg")
# A cluster's DAGs: kind -> DAG id. Formatted here only (Cluster.dag_id), so that renaming a DAG is
# this one edit: the DAG files, the inventory, the alerts' fixes and the demo all ask the cluster.
# A backup DAG's kind is its tool's name. In the order Ops would run them on a new cluster: the
# bucket, the backups, the proof, the watch.
DAG_KINDS = {
    "s3_bucket": "s3_bucket_config_{cluster}",
    "pgbackrest": "pgbackrest_backup_{cluster}",
    "walg": "walg_backup_{cluster}",
    "pgbackrest_verify": "pgbackrest_verify_{cluster}",
    "verify_backup": "verify_backup_{cluster}",
    "restore_test": "restore_test_{cluster}",
    "freshness": "backup_freshness_{cluster}",
}
# The DAG kinds a cluster has only with a tool or a setting (Cluster.dag_kinds).
_KIND_NEEDS = {"pgbackrest_verify": lambda c: "pgbackrest" in c.tools, "verify_backup": lambda c: c.verify.enabled}
# The asset a backup DAG updates (its events carry the backup record); the inventory reads it back.
BACKUP_ASSET = "{tool}_backup_{cluster}"
# In a text setting, replaced by the cluster's name: what must differ between clusters does by default.
CLUSTER_PLACEHOLDER = "{cluster}"
NAME_RE = re.compile(r"^[A-Za-z0-9_-]+$")

# Allowed values, named once; the loader checks them and the error lists them.
PGBACKREST_COMPRESS_TYPES = ("zst", "lz4", "gz", "bz2", "none")
PGBACKREST_INCREMENTAL_TYPES = ("diff", "incr", "full")
# brotli needs a cgo build of WAL-G; the pure-Go build has these.
WALG_COMPRESSIONS = ("lz4", "zstd", "lzma")


def setting(default=dataclasses.MISSING, *, factory=None, choices=None, minimum=None, maximum=None,
            absolute_path=False, cron=False, fix: str | None = None, problem: str | None = None):
    """A settings field: its default and what it accepts, checked by the loader for every value.

    ``problem`` and ``fix`` replace the generic words of a refusal; ``problem`` is formatted with
    ``value`` (what was given) and ``bad`` (the items of a list that are not allowed).
    """
    meta = {"choices": choices, "minimum": minimum, "maximum": maximum, "absolute_path": absolute_path,
            "cron": cron, "fix": fix, "problem": problem}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


class Settings:
    """Base of every settings class: ``validate`` checks what spans several fields."""

    def validate(self, fail) -> None:
        """``fail(key, problem, fix)`` records a problem; every one is collected, so go on after it."""
        return None


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


# Where an alert can go (pg_backups.airflow.notifiers): Slack, e-mail (the SMTP provider), PagerDuty.
ALERT_CHANNELS = ("slack", "email", "pagerduty")


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
    # A backup not verified within this many minutes of its completion is late.
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
SPREAD_SCHEDULES = ("pgbackrest.schedule", "walg.schedule", "restore_test.schedule", "pgbackrest.verify_schedule")


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


@dataclass(frozen=True)
class Cluster(Settings):
    name: str = setting(fix="name the cluster; the name is also its pgBackRest stanza, e.g. 'name: asso'")
    host: str = "db.internal"
    port: int = setting(5432, minimum=1, maximum=65535, problem="{value} is not a TCP port",
                       fix="use a port between 1 and 65535")
    user: str = "postgres"
    # Unix socket directory of a local cluster (pgBackRest pg1-socket-path, WAL-G PGHOST).
    socket_directory: str | None = None
    data_directory: str = setting("/var/lib/postgresql/data", absolute_path=True)
    # PostgreSQL's binaries; unset: Debian's /usr/lib/postgresql/<major>/bin of the major the server
    # (or the restored data directory) runs, read by pg_backups.versions.
    bin_directory: str | None = setting(None, absolute_path=True)
    # When the worker runs as root, tools run as this user (they must own what they write).
    os_user: str | None = None
    postgres_conn_id: str | None = None  # default: pg_<name>
    # The Airflow queue of the database host's Celery worker: backups run where the data
    # directory is. None: Airflow's default queue (one host for everything).
    database_queue: str | None = None
    # Where the per-cluster backup lock lives (see runner.cluster_lock).
    lock_directory: str = setting("/tmp/pg_backups", absolute_path=True)
    tools: list[str] = setting(factory=lambda: list(TOOLS), choices=TOOLS,
                               problem="{value!r} is not a non-empty subset of ['pgbackrest', 'walg']",
                               fix="list pgbackrest, walg or both")
    s3: S3Settings = setting(factory=S3Settings)
    pgbackrest: PgBackRestSettings = setting(factory=PgBackRestSettings)
    walg: WalgSettings = setting(factory=WalgSettings)
    restore_test: RestoreTestSettings = setting(factory=RestoreTestSettings)
    verify: VerifySettings = setting(factory=VerifySettings)
    alerts: AlertSettings = setting(factory=AlertSettings)
    metrics: MetricsSettings = setting(factory=MetricsSettings)
    owner: str = "ops"
    # How long a backup waits on WAL archiving before it fails with the reason: before it starts,
    # for a failing archive_command to succeed again; while it runs, in pg_backup_stop() (WAL-G
    # waits there for as long as archiving fails: hours, silently).
    archive_wait_seconds: int = setting(180, minimum=10, fix="use 10 s or more (PostgreSQL retries a failed "
                                                                  "segment every 60 s)")
    # Task retries (the failure alert goes out after the last one).
    retries: int = setting(2, minimum=0)
    retry_delay_seconds: int = setting(300, minimum=0)
    schedule_spread: ScheduleSpread = setting(factory=ScheduleSpread)
    # null: the backups take the cluster's own pool (1 slot: its two tools never at once). A number:
    # they take the pool of the database host (`host`) instead, with that many slots, shared by every
    # cluster on the host (each must give the same number): the host's limit, whatever the cluster count.
    database_host_slots: int | None = setting(None, minimum=1, fix="give the host 1 or more backup slots")

    def validate(self, fail) -> None:
        if not self.tools or len(set(self.tools)) != len(self.tools):
            fail("tools", f"{self.tools!r} is not a non-empty subset of {list(TOOLS)} (each tool once)",
                 "list pgbackrest, walg or both")
        rt = self.restore_test
        if rt.tool not in self.tools:
            fail("restore_test.tool", f"{rt.tool!r} is not one of this cluster's tools {self.tools}",
                 "restore with a tool that backs the cluster up")
        # The restore test purges staging: it must never be, hold or sit in production.
        prod, staging, root = _norm(self.data_directory), _norm(rt.staging_data_directory), _norm(rt.staging_root)
        if staging == prod or prod in staging.parents:
            fail("restore_test.staging_data_directory",
                 f"{staging} is the production data directory or inside it ({prod}); the restore test purges it",
                 "point staging at its own directory, outside the production data directory")
        if staging in prod.parents or root == prod or root in prod.parents or prod in root.parents:
            fail("restore_test.staging_root",
                 f"staging ({root}, {staging}) and production ({prod}) overlap; the restore test purges staging",
                 "give staging a root that neither contains nor sits inside the production data directory")
        if rt.staging_port == self.port and self.host in ("localhost", "127.0.0.1") and not rt.staging_socket_directory:
            fail("restore_test.staging_port", f"staging would listen on production's port {self.port}",
                 "give staging a port of its own")
        if self.schedule_spread.enabled is not False:  # on, or on once the file is a fleet
            window = self.schedule_spread.window_minutes
            for key in SPREAD_SCHEDULES:
                schedule = self.value_of(key)
                at = fixed_time(schedule)
                # A line for some days only (the quarterly restore test) must stay on its day.
                if at and schedule.split()[2:] != ["*", "*", "*"] and at[0] * 60 + at[1] + window > 1440:
                    fail("schedule_spread.window_minutes",
                         f"{key} {schedule!r} spread over {window} minutes could move past midnight, to another day",
                         f"shorten the window to {1440 - at[0] * 60 - at[1]} minutes or less, or start {key} earlier")
        # The drill removes its target: verify.root must be neither production nor QA's staging.
        v = self.verify
        verify_root = _norm(v.root)
        for what, path in (("the production data directory", prod), ("restore_test.staging_root", root),
                           ("restore_test.staging_data_directory", staging)):
            if verify_root == path or path in verify_root.parents or verify_root in path.parents:
                fail("verify.root", f"{verify_root} is, holds or sits inside {what} ({path}); each drill removes "
                     "its target there", "give the drill a root of its own, e.g. /var/lib/postgresql/verify")
        if v.port == self.port and self.host in ("localhost", "127.0.0.1") and not v.socket_directory:
            fail("verify.port", f"the drill would listen on production's port {self.port}",
                 "give the drill a port of its own")
        if v.port == rt.staging_port and v.queue == rt.staging_queue:
            fail("verify.port", f"the drill would listen on staging's port {rt.staging_port} on the same host",
                 "give the drill a port of its own")

    def value_of(self, key: str):
        """A setting by its dotted key (``pgbackrest.schedule``)."""
        value = self
        for part in key.split("."):
            value = getattr(value, part)
        return value

    # Derived names, so that every DAG and script agrees on them.
    @property
    def stanza(self) -> str:
        return self.name

    @property
    def pool(self) -> str:
        """The backups' pool: the cluster's own (1 slot: its pgBackRest and WAL-G backups never run at
        once), or its database host's when ``database_host_slots`` is set (the host's limit)."""
        if self.database_host_slots is None:
            return f"backups_{self.name}"
        return f"backups_host_{re.sub(r'[^A-Za-z0-9_-]', '_', self.host)}"

    @property
    def pools(self) -> list[Pool]:
        """The pools this cluster's DAGs use: its backups' and its verification host's."""
        if self.database_host_slots is None:
            backups = Pool(self.pool, 1, f"one backup at a time on cluster {self.name} (pgBackRest and WAL-G)")
        else:
            backups = Pool(self.pool, self.database_host_slots,
                           f"at most {self.database_host_slots} backups at a time on database host {self.host}")
        # The verification host's: one drill at a time, shared by the clusters drilled there.
        drills = [Pool(self.verify.pool, 1, "one verification drill at a time on its host")] if self.verify.enabled else []
        return [backups, *drills]

    @property
    def hourly_schedule(self) -> str:
        """The freshness check's: ``@hourly`` (minute 0), or at the cluster's own minute when spread
        (1,000 clusters' checks in the same minute of every hour otherwise)."""
        return f"{self.spread_minutes % 60} * * * *" if self.spread_minutes else "@hourly"

    @property
    def daily_schedule(self) -> str:
        """The bucket check's: ``@daily`` (00:00), or moved by the cluster's offset when spread."""
        return shifted("0 0 * * *", self.spread_minutes) if self.spread_minutes else "@daily"

    @property
    def spread_minutes(self) -> int:
        """How much later than configured this cluster's nightly slots fire (0 when not spread)."""
        if not self.schedule_spread.enabled:
            return 0
        digest = hashlib.sha256(self.name.encode()).digest()  # not hash(): Python salts it per process
        return int.from_bytes(digest[:8], "big") % self.schedule_spread.window_minutes

    def dag_id(self, kind: str) -> str:
        """The id of this cluster's DAG of ``kind`` (a key of DAG_KINDS; a backup DAG's is its tool)."""
        return DAG_KINDS[kind].format(cluster=self.name)

    @property
    def dag_kinds(self) -> list[str]:
        """The kinds of the DAGs this cluster has: a backup DAG only for each of its tools, the
        repository's verify only with pgBackRest, the drill unless switched off."""
        return [k for k in DAG_KINDS if (k not in TOOLS or k in self.tools) and _KIND_NEEDS.get(k, bool)(self)]

    def asset_name(self, tool: str) -> str:
        return BACKUP_ASSET.format(tool=tool, cluster=self.name)

    @property
    def pg_conn_id(self) -> str:
        return self.postgres_conn_id or f"pg_{self.name}"

    @property
    def staging_conn_id(self) -> str:
        return self.restore_test.staging_conn_id or f"pg_{self.name}_staging"

    @property
    def walg_s3_prefix(self) -> str:
        return f"s3://{self.s3.bucket}/{self.walg.prefix.strip('/')}"


def dag_kind(dag_id: str) -> str | None:
    """The kind of a DAG id (a key of DAG_KINDS), None for none of ours."""
    for kind, pattern in DAG_KINDS.items():
        prefix, _, suffix = pattern.partition("{cluster}")
        if dag_id.startswith(prefix) and dag_id.endswith(suffix) and len(dag_id) > len(prefix) + len(suffix):
            return kind
    return None


def _norm(path: str) -> PurePosixPath:
    return PurePosixPath(os.path.normpath(path))


@dataclass(frozen=True)
class Config:
    """The valid clusters, and the problems of the others.

    A cluster entry with a problem is left out and its errors kept (``errors``: every problem of
    every entry), so that one cluster's mistake never stops another cluster's backups; a file that
    cannot be read at all has no clusters (``file_problem``). A running load (:func:`load_config`
    with ``strict=False``) then runs the last good version of what is broken (``last_good``: those
    clusters' names, ``last_good_time``: that version's time). ``dags/configuration_errors.py``
    shows the errors as one import error in the UI; :meth:`cluster` raises a left-out cluster's error.
    """

    source: str
    clusters: list[Cluster]
    errors: list[ConfigError] = field(default_factory=list)
    # Left-out entries by name (when they had one), for :meth:`cluster`.
    refused: dict[str, ConfigError] = field(default_factory=dict)
    file_problem: bool = False
    # The version of the file: sha256 of its bytes (of the read error when it cannot be read).
    version: str | None = None
    # Each entry's name as written (None when it had none), and the left-out ones: (index, name, error).
    entry_names: tuple = ()
    refused_entries: tuple = ()
    last_good: tuple = ()
    last_good_time: str | None = None

    def cluster(self, name: str) -> Cluster:
        for cluster in self.clusters:
            if cluster.name == name:
                return cluster
        if name in self.refused:
            raise self.refused[name]
        if self.errors and not self.clusters:
            raise config_problem(self.errors)
        known = ", ".join(c.name for c in self.clusters) or "none"
        raise ConfigError(self.source, "clusters", f"no cluster named {name!r} (configured: {known})",
                          "use one of the configured names, or add the cluster to the file")

    def summary(self) -> str:
        """Which clusters run, and which of them on the last good configuration."""
        kept = ", ".join(c.name for c in self.clusters) or "none"
        if self.last_good:
            kept += f"; on the last good configuration of {self.last_good_time}: {', '.join(self.last_good)}"
        return kept

    def raise_errors(self) -> None:
        """Every problem at once (the first one alone when there is one)."""
        if len(self.errors) == 1:
            raise self.errors[0]
        if self.errors:
            raise ConfigError(self.source, "clusters", f"{len(self.errors)} problems (clusters still running: "
                              f"{self.summary()}):\n" + "\n".join(f"- {e}" for e in self.errors),
                              "correct each entry as its line says")


# What two clusters must never share: (what it is, the setting to change, how to read it off a cluster).
# Shared, these break each other: one rewrites the other's file, restores over its staging, listens on
# its port, or mixes backups under one prefix.
def _resources(c: Cluster) -> list[tuple[str, str, object]]:
    rt = c.restore_test
    staging_host = rt.staging_queue or "(default queue)"
    found = [
        ("production database", "port", (c.host, c.port)),
        ("restore-test staging data directory", "restore_test.staging_data_directory",
         (staging_host, str(_norm(rt.staging_data_directory)))),
        ("restore-test staging port", "restore_test.staging_port", (staging_host, rt.staging_port)),
        ("restore-test smoke log", "restore_test.smoke_log", (staging_host, rt.smoke_log)),
        ("restore-test audit log", "restore_test.audit_log", (staging_host, rt.audit_log)),
        ("verification log", "verify.log", (c.verify.queue or "(default queue)", c.verify.log)),
    ]
    if "pgbackrest" in c.tools and c.pgbackrest.manage_config:
        found.append(("generated pgBackRest configuration", "pgbackrest.config_path",
                      (c.database_queue, str(_norm(c.pgbackrest.config_path)))))
        found.append(("pgBackRest credentials directory", "pgbackrest.config_path",
                      (c.database_queue, str(_norm(c.pgbackrest.config_path).parent))))
    if "walg" in c.tools:
        found.append(("WAL-G configuration", "walg.config_path", (c.database_queue, str(_norm(c.walg.config_path)))))
        found.append(("WAL-G S3 prefix", "walg.prefix", c.walg_s3_prefix.rstrip("/")))
    return found


def _shared_with(cluster: Cluster, taken: dict, source: str, where: str) -> ConfigError | None:
    """The first resource ``cluster`` would share with an already accepted cluster, as an error naming
    both. ``taken``: (what, value) -> the accepted cluster's name (a dict: 1,000 clusters compared
    pairwise took minutes, past the dag-processor's import timeout)."""
    for what, key, value in _resources(cluster):
        other = taken.get((what, value))
        if other is not None:
            shown = value[1] if isinstance(value, tuple) else value
            return ConfigError(source, f"{where}.{key}",
                               f"cluster {cluster.name!r} would share its {what} ({shown}) with cluster "
                               f"{other!r}; the two would break each other",
                               f"give cluster {cluster.name!r} a {key} of its own")
    return None


def _pool_conflict(cluster: Cluster, pools: dict, source: str, where: str) -> ConfigError | None:
    """A pool that an accepted cluster declares with another number of slots (one host, one limit);
    ``pools``: name -> (slots, the accepted cluster's name)."""
    for pool in cluster.pools:
        slots, other = pools.get(pool.name, (pool.slots, None))
        if slots != pool.slots:
            return ConfigError(source, f"{where}.database_host_slots",
                               f"cluster {cluster.name!r} gives pool {pool.name} {pool.slots} slots, cluster "
                               f"{other!r} {slots}; a host has one limit",
                               f"give every cluster on host {cluster.host} the same database_host_slots")
    return None


def _spread(cluster: Cluster, fleet: bool) -> Cluster:
    """``cluster`` with schedule_spread.enabled decided (unset: ``fleet``) and its nightly slots moved."""
    spread = cluster.schedule_spread
    if spread.enabled is None:
        cluster = dataclasses.replace(cluster, schedule_spread=dataclasses.replace(spread, enabled=fleet))
    minutes = cluster.spread_minutes
    if not minutes:
        return cluster
    for key in SPREAD_SCHEDULES:
        section, name = key.split(".")
        settings = getattr(cluster, section)
        cluster = dataclasses.replace(cluster, **{section: dataclasses.replace(
            settings, **{name: shifted(getattr(settings, name), minutes)})})
    return cluster


# --------------------------------------------------------------------------------------------
# Loading


def config_path() -> Path:
    return Path(os.environ.get(CONFIG_ENV) or DEFAULT_CONFIG_PATH)


def load_config(path: str | os.PathLike | None = None, *, strict: bool = True) -> Config:
    """Read and validate the configuration file (``$PG_BACKUPS_CONFIG`` or the default).

    ``strict`` (checks, the sandbox, tests): raise every problem at once. Otherwise (the DAG files,
    task bodies and cron command: a running load) return the valid clusters with the problems of
    the others in ``errors``, and keep running what the last good configuration had:

    * a file with no problem is copied to the state directory (:func:`last_good_path`, owner-only);
    * a file that cannot be read or is not a configuration at all (not YAML, no ``clusters``):
      the copy's clusters run;
    * an entry that became invalid: its version in the copy runs (matched by name; by position
      when its name is what broke); a new entry that was never valid gets nothing.

    The errors of what runs on the copy say "running on the last good configuration of <time>".
    Every DAG file loads it at parse time: the parse is kept while the file is unchanged (same
    path, size and modification time), so a folder of DAG files parses it once.
    """
    path = Path(path) if path else config_path()
    config = _load(path)
    if strict:
        if config.errors:
            raise config_problem(config.errors)
        return config
    return _with_last_good(config, path)


def check_file(path: str | os.PathLike | None = None) -> Config:
    """Every problem of the file, for ``cli check-config``: nothing is written, no copy is used."""
    return _load(Path(path) if path else config_path())


def _load(path: Path) -> Config:
    source = str(path)
    try:
        stat = path.stat()
        key = (source, stat.st_mtime_ns, stat.st_size)
        if key in _CACHE:
            return _CACHE[key]
        raw = path.read_bytes()
        text = raw.decode()
    except (OSError, UnicodeDecodeError) as exc:
        why = getattr(exc, "strerror", None) or str(exc)
        return Config(source, [], [ConfigError(source, "(file)", f"cannot be read ({why})",
                                               f"create it, or point {CONFIG_ENV} at the cluster configuration")],
                      file_problem=True, version=_digest(f"unreadable: {why}".encode()))
    try:
        data = yaml.load(text, Loader=_YAML_LOADER)
    except yaml.YAMLError as exc:
        config = Config(source, [], [ConfigError(source, "(file)", f"is not valid YAML ({exc})",
                                                 "correct the YAML syntax")], file_problem=True)
    else:
        config = parse_config(data, source, strict=False)
    config = dataclasses.replace(config, version=_digest(raw))
    if len(_CACHE) > 8:  # the file and its last good copy, a few versions of each
        _CACHE.clear()
    _CACHE[key] = config
    return config


_CACHE: dict = {}
# libyaml's loader when PyYAML was built with it: parsing 100 clusters drops from 0.2 s to 0.02 s.
_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --------------------------------------------------------------------------------------------
# The last good configuration


def state_dir(env=os.environ) -> Path:
    """``$PG_BACKUPS_STATE_DIR``, else the user's XDG state directory (``~/.local/state/pg_backups``)."""
    if env.get(STATE_DIR_ENV):
        return Path(env[STATE_DIR_ENV])
    return Path(env.get("XDG_STATE_HOME") or Path.home() / ".local" / "state") / "pg_backups"


def last_good_path(path: Path) -> Path:
    """The copy of ``path``'s last good version: named after the file and its absolute path (not the
    resolved one: a Kubernetes ConfigMap's symlink target changes with every update)."""
    where = _digest(os.path.abspath(path).encode())[:12]
    return state_dir() / f"{path.name}.{where}.last-good"


def _keep(config: Config, path: Path) -> None:
    """Copy a file that loaded with no problem, owner-only, with the file's modification time
    (the time its problems will name); nothing when the copy already holds this version."""
    copy = last_good_path(path)
    try:
        raw = path.read_bytes()
        if _digest(raw) != config.version:  # changed since it was validated: the next load keeps it
            return
        if copy.exists() and copy.read_bytes() == raw:
            return
        copy.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        # A temporary name of its own (mode 0600), not files.write_private's fixed one: the
        # dag-processor parses DAG files in parallel, and each parse may write the copy at once.
        fd, tmp = tempfile.mkstemp(dir=copy.parent, prefix=".tmp-")
        with os.fdopen(fd, "wb") as out:
            out.write(raw)
        stat = path.stat()
        os.utime(tmp, ns=(stat.st_atime_ns, stat.st_mtime_ns))
        os.replace(tmp, copy)  # atomic: parallel DAG-file parses never read half a copy
    except OSError as exc:
        log.warning("cannot keep the last good configuration at %s (%s): a broken %s would stop its clusters; "
                    "set %s to a writable directory", copy, exc.strerror, path.name, STATE_DIR_ENV)


def _with_last_good(config: Config, path: Path) -> Config:
    """A running load: keep a good file's copy, or run the copy's version of what is broken."""
    if not config.errors:
        _keep(config, path)
        return config
    copy = last_good_path(path)
    good = _load(copy) if copy.exists() else None
    if good is None or not good.clusters:
        return config
    when = datetime.fromtimestamp(copy.stat().st_mtime, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    prefix = f"running on the last good configuration of {when}"

    def reword(e: ConfigError) -> ConfigError:
        return ConfigError(e.source, e.setting, f"{prefix}: {e.problem}", e.fix)

    if config.file_problem:
        return dataclasses.replace(config, clusters=list(good.clusters), errors=[reword(e) for e in config.errors],
                                   last_good=tuple(c.name for c in good.clusters), last_good_time=when)
    clusters = list(config.clusters)
    by_name = {c.name: c for c in good.clusters}
    in_use = {n for n in config.entry_names if n}
    fallen: dict[str, str] = {}  # "clusters[i]" -> the cluster running its last good version
    for index, name, _ in config.refused_entries:
        if name and NAME_RE.match(name):
            old = by_name.get(name)
        else:  # its name is what broke: the same position, if that cluster is not elsewhere in the file
            whole = len(good.clusters) == len(good.entry_names)  # positions match only if every entry loaded
            old = good.clusters[index] if whole and index < len(good.entry_names) \
                and good.entry_names[index] not in in_use else None
        taken = {(what, value): c.name for c in clusters for what, _, value in _resources(c)}
        if old is None or any(c.name == old.name for c in clusters) or _shared_with(old, taken, str(path), ""):
            continue
        clusters.append(old)
        fallen[f"clusters[{index}]"] = old.name
    if not fallen:
        return config

    def entry_of(e: ConfigError) -> str:
        return next((w for w in fallen if e.setting == w or e.setting.startswith(w + ".")), "")

    errors = [reword(e) if entry_of(e) else e for e in config.errors]
    return dataclasses.replace(config, clusters=clusters, errors=errors, last_good=tuple(fallen.values()),
                               last_good_time=when)


def alert_for(config: Config, alerted: str | None) -> tuple[str | None, str | None]:
    """The Slack text to send about the file's problems, and the version to record as alerted.

    One alert per bad version of the file (``config.version``), however often it is parsed;
    ``alerted`` is the version last alerted on (None: none). A file good again says so once.
    """
    if not config.errors:
        if alerted:
            return f":white_check_mark: The cluster configuration `{config.source}` is valid again.", None
        return None, None
    if alerted == config.version:
        return None, alerted
    shown = config.errors[:10]
    more = f"\n… and {len(config.errors) - len(shown)} more (see the import error in the UI)" \
        if len(config.errors) > len(shown) else ""
    text = (f":warning: *Cluster configuration has {len(config.errors)} problem(s)* - `{config.source}`\n"
            f"*Clusters running:* {config.summary()}\n" + "\n".join(f"- {e}" for e in shown) + more)
    return text, config.version


def parse_config(data: Any, source: str = "<config>", *, strict: bool = True) -> Config:
    """The clusters of a parsed file. ``strict``: raise every problem at once; otherwise keep the
    valid clusters and collect the problems (a file-level problem leaves no cluster)."""
    problems: list[ConfigError] = []
    entries, defaults = _entries(data, source, problems)
    if entries is None:
        config = Config(source, [], problems, file_problem=True)
    else:
        config = _parse_entries(entries, defaults, source)
    if strict and config.errors:
        raise config_problem(config.errors)
    return config


def _parse_entries(entries: list, defaults: dict, source: str) -> Config:
    clusters: list[Cluster] = []
    errors: list[ConfigError] = []
    refused: dict[str, ConfigError] = {}
    refused_entries = []
    names = []
    accepted: set[str] = set()
    taken: dict = {}  # what the accepted clusters hold, for _shared_with
    pools: dict = {}
    for index, entry in enumerate(entries):
        where = f"clusters[{index}]"
        name = entry.get("name") if isinstance(entry, dict) else None
        names.append(name if isinstance(name, str) else None)
        problems: list[ConfigError] = []
        cluster = None
        if not isinstance(entry, dict):
            problems.append(ConfigError(source, where, "must be a mapping", "write each cluster as '- name: <stanza>'"))
        else:
            cluster = _build_cluster(_merge(defaults, entry), source, where, problems)
        if cluster is not None:
            if cluster.name in accepted or cluster.name in refused:
                problems.append(ConfigError(source, f"{where}.name", f"duplicate cluster name {cluster.name!r}",
                                            "give each cluster its own name (it is also the pgBackRest stanza)"))
            else:
                conflict = _shared_with(cluster, taken, source, where) or _pool_conflict(cluster, pools, source, where)
                if conflict:
                    problems.append(conflict)
        if problems:
            errors.extend(problems)
            problem = config_problem(problems)
            refused_entries.append((index, names[-1], problem))
            if isinstance(name, str) and name not in refused and name not in accepted:
                refused[name] = problem
            continue
        cluster = _spread(cluster, fleet=len(entries) > FLEET_SIZE)
        clusters.append(cluster)
        accepted.add(cluster.name)
        taken.update({(what, value): cluster.name for what, _, value in _resources(cluster)})
        pools.update({pool.name: (pool.slots, cluster.name) for pool in cluster.pools})
    return Config(source, clusters, errors, refused, entry_names=tuple(names), refused_entries=tuple(refused_entries))


def _entries(data: Any, source: str, problems: list) -> tuple[list | None, dict]:
    """The entries and defaults of a file, or None with every file-level problem in ``problems``."""
    if not isinstance(data, dict):
        problems.append(ConfigError(source, "(file)", "must be a mapping with a 'clusters' list",
                                    "start the file with 'clusters:' and one '- name: <stanza>' entry per cluster"))
        return None, {}
    for key in sorted(set(data) - {"clusters", "defaults"}, key=str):
        problems.append(ConfigError(source, str(key), "unknown key", "the top level takes only 'clusters' and 'defaults'"))
    defaults = data.get("defaults") or {}
    if not isinstance(defaults, dict):
        problems.append(ConfigError(source, "defaults", "must be a mapping", "give cluster settings under 'defaults:'"))
    entries = data.get("clusters")
    if not isinstance(entries, list) or not entries:
        problems.append(ConfigError(source, "clusters", "missing or empty",
                                    "list at least one cluster: 'clusters: [{name: asso}]'"))
    return (None, {}) if problems else (entries, defaults)


def build_cluster(data: dict, source: str = "<config>", where: str = "cluster") -> Cluster:
    """Build one validated cluster from a mapping (used for files and for env overrides); raises
    every problem of the entry at once."""
    problems: list[ConfigError] = []
    cluster = _build_cluster(data, source, where, problems)
    if problems:
        raise config_problem(problems)
    return cluster


def _build_cluster(data: Any, source: str, where: str, problems: list) -> Cluster | None:
    """The cluster, or None with every problem of the entry added to ``problems``."""
    name = data.get("name") if isinstance(data, dict) else None
    bad_name = isinstance(name, str) and name != "" and not NAME_RE.match(name)
    if bad_name:  # checked before the name goes into paths
        problems.append(ConfigError(source, f"{where}.name", f"{name!r} has characters outside [A-Za-z0-9_-]",
                                    "use letters, digits, '_' and '-' only (it is the pgBackRest stanza and part "
                                    "of DAG ids)"))
    cluster = _build(Cluster, data, source, where, problems)
    if cluster is None or bad_name:
        return None
    cluster = _expand(cluster, cluster.name)
    before = len(problems)
    _validate(cluster, source, where, problems)
    return cluster if len(problems) == before else None


def with_overrides(cluster: Cluster, overrides: dict, source: str) -> Cluster:
    """A copy of ``cluster`` with nested overrides applied, validated again."""
    merged = _merge(dataclasses.asdict(cluster), overrides)
    return build_cluster(merged, source, "cluster")


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


# A value that had a problem (already recorded): the object that holds it is not built.
_FAILED = object()


def _build(cls, data: Any, source: str, where: str, problems: list):
    """One settings object: known keys, typed values, each field's declaration; or None, with every
    problem recorded (its cross-field ``validate`` runs later, on objects built whole)."""
    if not isinstance(data, dict):
        problems.append(ConfigError(source, where, f"must be a mapping, got {type(data).__name__}",
                                    f"write {where} as 'key: value' lines"))
        return None
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    before = len(problems)
    for key in sorted(set(data) - set(fields), key=str):
        problems.append(ConfigError(source, f"{where}.{key}", "unknown key",
                                    f"remove it or correct its spelling; {where} takes: {', '.join(fields)}"))
    for f in fields.values():
        if _required(f) and data.get(f.name) in (None, ""):
            problems.append(ConfigError(source, f"{where}.{f.name}", "missing required value",
                                        f.metadata.get("fix") or f"give {where} a '{f.name}'"))
    kwargs = {}
    for key, value in data.items():
        if key not in fields or (_required(fields[key]) and value in (None, "")):  # named above
            continue
        try:
            value = _coerce(hints[key], value, source, f"{where}.{key}", problems)
            if value is not _FAILED:
                _check_declaration(fields[key], value, source, f"{where}.{key}")
                kwargs[key] = value
        except ConfigError as exc:
            problems.append(exc)
    return cls(**kwargs) if len(problems) == before else None


def _required(f: dataclasses.Field) -> bool:
    return f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING


def _expand(obj, name: str):
    """Every ``{cluster}`` in the text settings of ``obj`` (and below) replaced by the cluster's name."""
    changes = {}
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if isinstance(value, str) and CLUSTER_PLACEHOLDER in value:
            changes[f.name] = value.replace(CLUSTER_PLACEHOLDER, name)
        elif isinstance(value, Settings):
            expanded = _expand(value, name)
            if expanded is not value:
                changes[f.name] = expanded
    return dataclasses.replace(obj, **changes) if changes else obj


def _validate(obj: Settings, source: str, where: str, problems: list) -> None:
    """Each settings object's ``validate``, the nested ones first; every problem is recorded."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if isinstance(value, Settings):
            _validate(value, source, f"{where}.{f.name}", problems)
        elif isinstance(value, list):
            for i, item in enumerate(value):
                if isinstance(item, Settings):
                    _validate(item, source, f"{where}.{f.name}[{i}]", problems)

    def fail(key: str, problem: str, fix: str):
        problems.append(ConfigError(source, f"{where}.{key}", problem, fix))

    obj.validate(fail)


def _check_declaration(f: dataclasses.Field, value, source: str, where: str) -> None:
    """What :func:`setting` declared for the field: allowed values, range, absolute path, cron."""
    meta = f.metadata
    if not meta or value is None:
        return

    def fail(problem: str, default_fix: str, bad=None):
        if meta.get("problem"):
            problem = meta["problem"].format(value=value, bad=bad)
        raise ConfigError(source, where, problem, meta.get("fix") or default_fix)

    choices = meta.get("choices")
    if choices:
        if isinstance(value, list):
            bad = [v for v in value if v not in choices]
            if bad:
                fail(f"{bad!r} are not among {list(choices)}", f"use some of {list(choices)}", bad)
        elif value not in choices:
            fail(f"{value!r} is unknown (allowed: {', '.join(choices)})", f"use one of {', '.join(choices)}")
    low, high = meta.get("minimum"), meta.get("maximum")
    if (low is not None and value < low) or (high is not None and value > high):
        span = f"{low} to {high}" if high is not None else f"at least {low}"
        fail(f"{value} is out of range ({span})", f"use a value of {span}")
    if meta.get("absolute_path") and not PurePosixPath(value).is_absolute():
        fail(f"{value!r} is not an absolute path", "write the full path, starting with '/'")
    if meta.get("cron"):
        from croniter import croniter  # Airflow's own cron parser: what it accepts, the scheduler runs

        if not croniter.is_valid(value):
            fail(f"{value!r} is not a valid cron expression",
                 "write five cron fields, e.g. '15 2 * * *' for 02:15 UTC daily")


def _coerce(hint, value, source: str, where: str, problems: list):
    """The value as ``hint`` says; raises its problem, or returns ``_FAILED`` when the problems of
    what is inside it (a nested block, list items) are already recorded in ``problems``."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _coerce(inner, value, source, where, problems)
    if dataclasses.is_dataclass(hint):
        built = _build(hint, value, source, where, problems)
        return _FAILED if built is None else built
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(source, where, f"must be a list, got {value!r}", "write it as [a, b]")
        items, failed = [], False
        for i, item in enumerate(value):
            try:
                coerced = _coerce(args[0], item, source, f"{where}[{i}]", problems)
            except ConfigError as exc:
                problems.append(exc)
                coerced = _FAILED
            failed = failed or coerced is _FAILED
            items.append(coerced)
        return _FAILED if failed else items
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(source, where, f"must be true or false, got {value!r}", "write true or false")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(source, where, f"must be a whole number, got {value!r}", "write a number without quotes")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(source, where, f"must be a number, got {value!r}", "write a number without quotes, e.g. 0.024")
        return float(value)
    if hint is str:
        if not isinstance(value, (str, int)) or isinstance(value, bool) or value == "":
            raise ConfigError(source, where, f"must be a non-empty text, got {value!r}", "write a value in quotes")
        return str(value)
    return value
