"""The cluster configuration: one YAML file declares every PostgreSQL cluster to protect.

The runbook's values are the defaults, so the shortest valid file is::

    clusters:
      - name: asso

A ``defaults:`` mapping at the top is merged into every cluster (handy for many clusters).

Every setting is declared once, with :func:`setting`: its default, and what it accepts (allowed
values, a range, an absolute path, a cron line), the way pgBackRest declares its options. The
loader checks those declarations for every field; each settings class's ``validate()`` then
checks what spans several fields. A problem raises :class:`ConfigError`, whose message names the
file, the key and the fix. Loading reads one file and touches nothing else: no connection, no
subprocess, no network.
"""

from __future__ import annotations

import dataclasses
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

from pg_backups.errors import ConfigError
from pg_backups.times import WEEKDAYS

__all__ = ["ConfigError", "Config", "Cluster", "TOOLS", "load_config", "parse_config", "build_cluster",
           "with_overrides", "config_path"]

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_CONFIG_PATH = REPO_ROOT / "include" / "config" / "clusters.yaml"
CONFIG_ENV = "PG_BACKUPS_CONFIG"

TOOLS = ("pgbackrest", "walg")
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

    def validate(self, fail) -> None:  # ``fail(key, problem, fix)`` raises ConfigError
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

    def validate(self, fail) -> None:
        from pg_backups import s3_bucket  # the bucket rules live with the code that applies them

        try:
            s3_bucket.validate(self)
        except s3_bucket.BucketSettingsError as exc:
            fail(exc.key, exc.problem, exc.fix)


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
    spool_path: str = setting("/var/spool/pgbackrest", absolute_path=True)
    log_path: str = setting("/var/log/pgbackrest", absolute_path=True)
    lock_path: str = setting("/tmp/pgbackrest", absolute_path=True)
    start_fast: bool = True
    archive_timeout_seconds: int = setting(120, minimum=1)
    # How long one S3 or database request may stall. With S3 down, every file of a backup waits
    # this long: 60 s (pgBackRest's default) turned an outage into an 8-minute failure here.
    io_timeout_seconds: int = setting(60, minimum=1)
    # Whole-repository `pgbackrest verify` (DAG pgbackrest_verify_<cluster>), off the backup's path:
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

    # false: no drill for this cluster (no verify_backup_<cluster> DAG).
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
    # A WAL segment waiting longer than this to be archived: WAL is not reaching the repository.
    max_wal_wait_minutes: int = setting(15, minimum=1)
    max_backup_age_hours: int = setting(26, minimum=1,
                                        fix="use the backup interval plus a margin (default 26)")


@dataclass(frozen=True)
class MetricsSettings(Settings):
    textfile_directory: str | None = None  # node_exporter textfile collector directory
    pushgateway_url: str | None = None


@dataclass(frozen=True)
class Cluster(Settings):
    name: str
    host: str = "db.internal"
    port: int = setting(5432, minimum=1, maximum=65535, problem="{value} is not a TCP port",
                       fix="use a port between 1 and 65535")
    user: str = "postgres"
    # Unix socket directory of a local cluster (pgBackRest pg1-socket-path, WAL-G PGHOST).
    socket_directory: str | None = None
    data_directory: str = setting("/var/lib/postgresql/data", absolute_path=True)
    bin_directory: str = setting("/usr/lib/postgresql/15/bin", absolute_path=True)
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

    # Derived names, so that every DAG and script agrees on them.
    @property
    def stanza(self) -> str:
        return self.name

    @property
    def pool(self) -> str:
        """One slot per cluster: its pgBackRest and WAL-G backups never run at once."""
        return f"backups_{self.name}"

    @property
    def pools(self) -> list[str]:
        """Every Airflow pool the cluster's DAGs use, each of 1 slot: its backups', and its
        verification host's (shared by the clusters drilled there: one drill at a time)."""
        return [self.pool] + ([self.verify.pool] if self.verify.enabled else [])

    @property
    def pg_conn_id(self) -> str:
        return self.postgres_conn_id or f"pg_{self.name}"

    @property
    def staging_conn_id(self) -> str:
        return self.restore_test.staging_conn_id or f"pg_{self.name}_staging"

    @property
    def walg_s3_prefix(self) -> str:
        return f"s3://{self.s3.bucket}/{self.walg.prefix.strip('/')}"


def _norm(path: str) -> PurePosixPath:
    return PurePosixPath(os.path.normpath(path))


@dataclass(frozen=True)
class Config:
    """The valid clusters, and the problems of the others.

    A cluster entry with a problem is left out and its error kept (``errors``), so that one
    cluster's mistake never stops another cluster's backups; a file that cannot be read at all
    has no clusters and one error. ``dags/configuration_errors.py`` shows the errors as one import
    error in the UI; :meth:`cluster` raises a left-out cluster's own error.
    """

    source: str
    clusters: list[Cluster]
    errors: list[ConfigError] = field(default_factory=list)
    # Left-out entries by name (when they had one), for :meth:`cluster`.
    refused: dict[str, ConfigError] = field(default_factory=dict)

    def cluster(self, name: str) -> Cluster:
        for cluster in self.clusters:
            if cluster.name == name:
                return cluster
        if name in self.refused:
            raise self.refused[name]
        if self.errors and not self.clusters:
            raise self.errors[0]
        known = ", ".join(c.name for c in self.clusters) or "none"
        raise ConfigError(self.source, "clusters", f"no cluster named {name!r} (configured: {known})",
                          "use one of the configured names, or add the cluster to the file")

    def raise_errors(self) -> None:
        """Every problem at once (the first one alone when there is one)."""
        if len(self.errors) == 1:
            raise self.errors[0]
        if self.errors:
            kept = ", ".join(c.name for c in self.clusters) or "none"
            raise ConfigError(self.source, "clusters", f"{len(self.errors)} problems (clusters still running: {kept}):\n"
                              + "\n".join(f"- {e}" for e in self.errors), "correct each entry as its line says")


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


def _shared_with(cluster: Cluster, kept: list[Cluster], source: str, where: str) -> ConfigError | None:
    """The first resource ``cluster`` would share with an already accepted cluster, as an error naming both."""
    for other in kept:
        theirs = {(what, value): key for what, key, value in _resources(other)}
        for what, key, value in _resources(cluster):
            if (what, value) in theirs:
                shown = value[1] if isinstance(value, tuple) else value
                return ConfigError(source, f"{where}.{key}",
                                   f"cluster {cluster.name!r} would share its {what} ({shown}) with cluster "
                                   f"{other.name!r}; the two would break each other",
                                   f"give cluster {cluster.name!r} a {key} of its own")
    return None


# --------------------------------------------------------------------------------------------
# Loading


def config_path() -> Path:
    return Path(os.environ.get(CONFIG_ENV) or DEFAULT_CONFIG_PATH)


def load_config(path: str | os.PathLike | None = None, *, strict: bool = True) -> Config:
    """Read and validate the configuration file (``$PG_BACKUPS_CONFIG`` or the default).

    ``strict``: raise the first problem. Otherwise (DAG files, task bodies, the cron command)
    return the valid clusters with the problems of the others in ``errors``.

    Every DAG file loads it at parse time: the result is kept while the file is unchanged
    (same path, size and modification time), so a folder of DAG files parses it once.
    """
    path = Path(path) if path else config_path()
    config = _load(path)
    if strict and config.errors:
        raise config.errors[0]
    return config


def _load(path: Path) -> Config:
    source = str(path)
    try:
        stat = path.stat()
        key = (source, stat.st_mtime_ns, stat.st_size)
        if key in _CACHE:
            return _CACHE[key]
        text = path.read_text()
    except OSError as exc:
        return Config(source, [], [ConfigError(source, "(file)", f"cannot be read ({exc.strerror})",
                                               f"create it, or point {CONFIG_ENV} at the cluster configuration")])
    try:
        data = yaml.load(text, Loader=_YAML_LOADER)
    except yaml.YAMLError as exc:
        config = Config(source, [], [ConfigError(source, "(file)", f"is not valid YAML ({exc})",
                                                 "correct the YAML syntax")])
    else:
        config = parse_config(data, source, strict=False)
    _CACHE.clear()
    _CACHE[key] = config
    return config


_CACHE: dict = {}
# libyaml's loader when PyYAML was built with it: parsing 100 clusters drops from 0.2 s to 0.02 s.
_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def parse_config(data: Any, source: str = "<config>", *, strict: bool = True) -> Config:
    """The clusters of a parsed file. ``strict``: raise the first problem; otherwise keep the valid
    clusters and collect the problems (a file-level problem leaves no cluster)."""
    try:
        entries, defaults = _entries(data, source)
    except ConfigError as exc:
        if strict:
            raise
        return Config(source, [], [exc])
    clusters: list[Cluster] = []
    errors: list[ConfigError] = []
    refused: dict[str, ConfigError] = {}
    for index, entry in enumerate(entries):
        where = f"clusters[{index}]"
        name = entry.get("name") if isinstance(entry, dict) else None
        try:
            if not isinstance(entry, dict):
                raise ConfigError(source, where, "must be a mapping", "write each cluster as '- name: <stanza>'")
            cluster = build_cluster(_merge(defaults, entry), source, where)
            if any(c.name == cluster.name for c in clusters) or cluster.name in refused:
                raise ConfigError(source, f"{where}.name", f"duplicate cluster name {cluster.name!r}",
                                  "give each cluster its own name (it is also the pgBackRest stanza)")
            conflict = _shared_with(cluster, clusters, source, where)
            if conflict:
                raise conflict
        except ConfigError as exc:
            if strict:
                raise
            errors.append(exc)
            if isinstance(name, str) and name not in refused and not any(c.name == name for c in clusters):
                refused[name] = exc
            continue
        clusters.append(cluster)
    return Config(source, clusters, errors, refused)


def _entries(data: Any, source: str) -> tuple[list, dict]:
    if not isinstance(data, dict):
        raise ConfigError(source, "(file)", "must be a mapping with a 'clusters' list",
                          "start the file with 'clusters:' and one '- name: <stanza>' entry per cluster")
    unknown = sorted(set(data) - {"clusters", "defaults"})
    if unknown:
        raise ConfigError(source, unknown[0], "unknown key", "the top level takes only 'clusters' and 'defaults'")
    defaults = data.get("defaults") or {}
    if not isinstance(defaults, dict):
        raise ConfigError(source, "defaults", "must be a mapping", "give cluster settings under 'defaults:'")
    entries = data.get("clusters")
    if not isinstance(entries, list) or not entries:
        raise ConfigError(source, "clusters", "missing or empty",
                          "list at least one cluster: 'clusters: [{name: asso}]'")
    return entries, defaults


def build_cluster(data: dict, source: str = "<config>", where: str = "cluster") -> Cluster:
    """Build one validated cluster from a mapping (used for files and for env overrides)."""
    if "name" not in data or data["name"] in (None, ""):
        raise ConfigError(source, f"{where}.name", "missing required value",
                          "name the cluster; the name is also its pgBackRest stanza, e.g. 'name: asso'")
    cluster = _build(Cluster, data, source, where)
    if not NAME_RE.match(cluster.name):  # before the name goes into paths
        raise ConfigError(source, f"{where}.name", f"{cluster.name!r} has characters outside [A-Za-z0-9_-]",
                          "use letters, digits, '_' and '-' only (it is the pgBackRest stanza and part of DAG ids)")
    cluster = _expand(cluster, cluster.name)
    _validate(cluster, source, where)
    return cluster


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


def _build(cls, data: Any, source: str, where: str):
    """One settings object: known keys, typed values, each field's declaration, then ``validate``."""
    if not isinstance(data, dict):
        raise ConfigError(source, where, f"must be a mapping, got {type(data).__name__}",
                          f"write {where} as 'key: value' lines")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(source, f"{where}.{unknown[0]}", "unknown key",
                          f"remove it or correct its spelling; {where} takes: {', '.join(fields)}")
    for f in fields.values():
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        if required and data.get(f.name) in (None, ""):
            raise ConfigError(source, f"{where}.{f.name}", "missing required value", f"give {where} a '{f.name}'")
    kwargs = {}
    for key, value in data.items():
        kwargs[key] = _coerce(hints[key], value, source, f"{where}.{key}")
        _check_declaration(fields[key], kwargs[key], source, f"{where}.{key}")
    return cls(**kwargs)


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


def _validate(obj: Settings, source: str, where: str) -> None:
    """Each settings object's ``validate``, the nested ones first."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if isinstance(value, Settings):
            _validate(value, source, f"{where}.{f.name}")
        elif isinstance(value, list):
            for i, item in enumerate(value):
                if isinstance(item, Settings):
                    _validate(item, source, f"{where}.{f.name}[{i}]")

    def fail(key: str, problem: str, fix: str):
        raise ConfigError(source, f"{where}.{key}", problem, fix)

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


def _coerce(hint, value, source: str, where: str):
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _coerce(inner, value, source, where)
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, source, where)
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(source, where, f"must be a list, got {value!r}", "write it as [a, b]")
        return [_coerce(args[0], item, source, f"{where}[{i}]") for i, item in enumerate(value)]
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(source, where, f"must be true or false, got {value!r}", "write true or false")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(source, where, f"must be a whole number, got {value!r}", "write a number without quotes")
        return value
    if hint is str:
        if not isinstance(value, (str, int)) or isinstance(value, bool) or value == "":
            raise ConfigError(source, where, f"must be a non-empty text, got {value!r}", "write a value in quotes")
        return str(value)
    return value
