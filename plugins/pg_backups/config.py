"""The cluster configuration: one YAML file declares every PostgreSQL cluster to protect.

The runbook's values are the defaults, so the shortest valid file is::

    clusters:
      - name: asso

A ``defaults:`` mapping at the top is merged into every cluster (handy for many clusters).
Everything is validated when loaded; a problem raises :class:`ConfigError`, whose message names
the file, the key and the fix. DAG files call :func:`load_config` at parse time, so a bad file
shows as one DAG import error in the UI instead of a half-built DAG. Loading reads one file and
touches nothing else: no connection, no subprocess, no network.
"""

from __future__ import annotations

import dataclasses
import os
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_CONFIG_PATH = REPO_ROOT / "include" / "config" / "clusters.yaml"
CONFIG_ENV = "PG_BACKUPS_CONFIG"

TOOLS = ("pgbackrest", "walg")
NAME_RE = re.compile(r"^[A-Za-z0-9_-]+$")
WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


class ConfigError(ValueError):
    """A configuration problem: where it is, what is wrong, and how to fix it."""

    def __init__(self, source: str, key: str, problem: str, fix: str):
        self.source, self.key, self.problem, self.fix = source, key, problem, fix
        super().__init__(f"{source}: {key}: {problem}. Fix: {fix}")


@dataclass(frozen=True)
class Transition:
    days: int
    storage_class: str


@dataclass(frozen=True)
class Lifecycle:
    """S3 lifecycle of the backup bucket (runbook 2.3, plus the caps Ops expects)."""

    transitions: list[Transition] = field(default_factory=lambda: [
        Transition(90, "STANDARD_IA"), Transition(365, "DEEP_ARCHIVE")])
    noncurrent_transitions: list[Transition] = field(default_factory=lambda: [
        Transition(90, "DEEP_ARCHIVE")])
    # With versioning on, every backup that retention deletes becomes a noncurrent version, which
    # the runbook's rules alone would keep forever (in DEEP_ARCHIVE). This caps it; null = forever.
    noncurrent_expire_days: int | None = 730
    abort_incomplete_multipart_days: int | None = 7


@dataclass(frozen=True)
class S3Settings:
    bucket: str = "asso-prod-backups"
    region: str = "eu-west-3"
    aws_conn_id: str = "aws_backups"
    # For S3-compatible stores; overrides the connection's endpoint_url when set.
    endpoint_url: str | None = None
    # CA bundle of an endpoint with its own certificate (the sandbox's stunnel).
    ca_file: str | None = None
    lifecycle: Lifecycle = field(default_factory=Lifecycle)
    block_public_access: bool = True
    encryption: str = "AES256"  # AES256 or aws:kms
    kms_key_id: str | None = None
    deny_insecure_transport: bool = True


@dataclass(frozen=True)
class PgBackRestSettings:
    schedule: str = "15 2 * * *"
    config_path: str = "/etc/pgbackrest/pgbackrest.conf"
    # true: the project writes config_path from this file; false: it reads a hand-written one.
    manage_config: bool = True
    repo_path: str = "/pgbackrest"
    retention_full_days: int = 30
    # Full backups on these days (UTC, of the run's logical date), `incremental_type` otherwise.
    # All seven days means a daily full backup, as the runbook allows.
    full_backup_days: list[str] = field(default_factory=lambda: ["sun"])
    incremental_type: str = "diff"
    process_max: int = 4
    # zst: 3.0 s of CPU where gz took 11.3 s on a 776 MB database (measured on these machines).
    compress_type: str = "zst"
    archive_async: bool = True
    spool_path: str = "/var/spool/pgbackrest"
    log_path: str = "/var/log/pgbackrest"
    lock_path: str = "/tmp/pgbackrest"
    start_fast: bool = True
    archive_timeout_seconds: int = 120
    # How long one S3 or database request may stall. With S3 down, every file of a backup waits
    # this long: 60 s (pgBackRest's default) turned an outage into an 8-minute failure here.
    io_timeout_seconds: int = 60


@dataclass(frozen=True)
class WalgSettings:
    schedule: str = "45 2 * * *"
    binary: str = "wal-g"
    prefix: str = "postgres"  # WALG_S3_PREFIX = s3://<bucket>/<prefix>
    retention_days: int = 30
    compression: str = "lz4"
    # OpenPGP public/private key file for client-side encryption (WALG_PGP_KEY_PATH).
    pgp_key_path: str | None = None
    # Non-secret settings for archive_command, written by the project (owner-only permissions).
    config_path: str = "/etc/wal-g/walg.json"


@dataclass(frozen=True)
class RestoreTestSettings:
    # Runbook text: first Sunday of January, April, July, October at 02:00 UTC. Its cron line
    # (`0 2 1 JAN,APR,JUL,OCT *`) says the 1st of the month instead; the text wins.
    schedule: str = "0 2 * 1,4,7,10 0#1"
    tool: str = "pgbackrest"
    staging_root: str = "/var/lib/postgresql/staging"
    staging_data_directory: str = "/var/lib/postgresql/staging"
    staging_port: int = 5433
    staging_socket_directory: str | None = None
    staging_conn_id: str | None = None  # default: pg_<name>_staging
    smoke_log: str = "/tmp/restore_smoke.log"
    audit_log: str = "/var/log/asso_restore_audit.log"
    audit_prefix: str = "audit"
    signoff_timeout_days: int = 7
    qa_users: list[str] = field(default_factory=lambda: ["qa"])
    check_tables: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class AlertSettings:
    slack_conn_id: str = "slack_ops"
    channel: str | None = None
    notify_on_retry: bool = False
    max_backup_age_hours: int = 26


@dataclass(frozen=True)
class MetricsSettings:
    textfile_directory: str | None = None  # node_exporter textfile collector directory
    pushgateway_url: str | None = None


@dataclass(frozen=True)
class Cluster:
    name: str
    host: str = "db.internal"
    port: int = 5432
    user: str = "postgres"
    # Unix socket directory of a local cluster (pgBackRest pg1-socket-path, WAL-G PGHOST).
    socket_directory: str | None = None
    data_directory: str = "/var/lib/postgresql/data"
    bin_directory: str = "/usr/lib/postgresql/15/bin"
    # When the worker runs as root, tools run as this user (they must own what they write).
    os_user: str | None = None
    postgres_conn_id: str | None = None  # default: pg_<name>
    # Where the per-cluster backup lock lives (see runner.cluster_lock).
    lock_directory: str = "/tmp/pg_backups"
    tools: list[str] = field(default_factory=lambda: list(TOOLS))
    s3: S3Settings = field(default_factory=S3Settings)
    pgbackrest: PgBackRestSettings = field(default_factory=PgBackRestSettings)
    walg: WalgSettings = field(default_factory=WalgSettings)
    restore_test: RestoreTestSettings = field(default_factory=RestoreTestSettings)
    alerts: AlertSettings = field(default_factory=AlertSettings)
    metrics: MetricsSettings = field(default_factory=MetricsSettings)
    owner: str = "ops"
    # Task retries (the failure alert goes out after the last one).
    retries: int = 2
    retry_delay_seconds: int = 300

    # Derived names, so that every DAG and script agrees on them.
    @property
    def stanza(self) -> str:
        return self.name

    @property
    def pool(self) -> str:
        """One slot per cluster: its pgBackRest and WAL-G backups never run at once."""
        return f"backups_{self.name}"

    @property
    def pg_conn_id(self) -> str:
        return self.postgres_conn_id or f"pg_{self.name}"

    @property
    def staging_conn_id(self) -> str:
        return self.restore_test.staging_conn_id or f"pg_{self.name}_staging"

    @property
    def walg_s3_prefix(self) -> str:
        return f"s3://{self.s3.bucket}/{self.walg.prefix.strip('/')}"


@dataclass(frozen=True)
class Config:
    source: str
    clusters: list[Cluster]

    def cluster(self, name: str) -> Cluster:
        for cluster in self.clusters:
            if cluster.name == name:
                return cluster
        known = ", ".join(c.name for c in self.clusters) or "none"
        raise ConfigError(self.source, "clusters", f"no cluster named {name!r} (configured: {known})",
                          "use one of the configured names, or add the cluster to the file")


# --------------------------------------------------------------------------------------------
# Loading


def config_path() -> Path:
    return Path(os.environ.get(CONFIG_ENV) or DEFAULT_CONFIG_PATH)


def load_config(path: str | os.PathLike | None = None) -> Config:
    """Read and validate the configuration file (``$PG_BACKUPS_CONFIG`` or the default).

    Every DAG file loads it at parse time: the result is kept while the file is unchanged
    (same path, size and modification time), so a folder of DAG files parses it once.
    """
    path = Path(path) if path else config_path()
    source = str(path)
    try:
        stat = path.stat()
        key = (source, stat.st_mtime_ns, stat.st_size)
        if key in _CACHE:
            return _CACHE[key]
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(source, "(file)", f"cannot be read ({exc.strerror})",
                          f"create it, or point {CONFIG_ENV} at the cluster configuration") from None
    try:
        data = yaml.load(text, Loader=_YAML_LOADER)
    except yaml.YAMLError as exc:
        raise ConfigError(source, "(file)", f"is not valid YAML ({exc})", "correct the YAML syntax") from None
    config = parse_config(data, source)
    _CACHE.clear()
    _CACHE[key] = config
    return config


_CACHE: dict = {}
# libyaml's loader when PyYAML was built with it: parsing 100 clusters drops from 0.2 s to 0.02 s.
_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def parse_config(data: Any, source: str = "<config>") -> Config:
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
    clusters: list[Cluster] = []
    for index, entry in enumerate(entries):
        where = f"clusters[{index}]"
        if not isinstance(entry, dict):
            raise ConfigError(source, where, "must be a mapping", "write each cluster as '- name: <stanza>'")
        cluster = build_cluster(_merge(defaults, entry), source, where)
        if any(c.name == cluster.name for c in clusters):
            raise ConfigError(source, f"{where}.name", f"duplicate cluster name {cluster.name!r}",
                              "give each cluster its own name (it is also the pgBackRest stanza)")
        clusters.append(cluster)
    return Config(source=source, clusters=clusters)


def build_cluster(data: dict, source: str = "<config>", where: str = "cluster") -> Cluster:
    """Build one validated cluster from a mapping (used for files and for env overrides)."""
    if "name" not in data or data["name"] in (None, ""):
        raise ConfigError(source, f"{where}.name", "missing required value",
                          "name the cluster; the name is also its pgBackRest stanza, e.g. 'name: asso'")
    cluster = _build(Cluster, data, source, where)
    validate_cluster(cluster, source, where)
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
    if not isinstance(data, dict):
        raise ConfigError(source, where, f"must be a mapping, got {type(data).__name__}",
                          f"write {where} as 'key: value' lines")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise ConfigError(source, f"{where}.{unknown[0]}", "unknown key",
                          f"remove it or correct its spelling; {where} takes: {', '.join(names)}")
    for f in dataclasses.fields(cls):
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        if required and data.get(f.name) in (None, ""):
            raise ConfigError(source, f"{where}.{f.name}", "missing required value",
                              f"give {where} a '{f.name}'")
    kwargs = {key: _coerce(hints[key], value, source, f"{where}.{key}") for key, value in data.items()}
    return cls(**kwargs)


def _coerce(hint, value, source: str, where: str):
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
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


# --------------------------------------------------------------------------------------------
# Validation: everything that can be known wrong before any tool runs.


def validate_cluster(c: Cluster, source: str, where: str) -> None:
    def fail(key: str, problem: str, fix: str) -> None:
        raise ConfigError(source, f"{where}.{key}", problem, fix)

    if not NAME_RE.match(c.name):
        fail("name", f"{c.name!r} has characters outside [A-Za-z0-9_-]",
             "use letters, digits, '_' and '-' only (it is the pgBackRest stanza and part of DAG ids)")
    if not c.tools or set(c.tools) - set(TOOLS):
        fail("tools", f"{c.tools!r} is not a non-empty subset of {list(TOOLS)}", "list pgbackrest, walg or both")
    if len(set(c.tools)) != len(c.tools):
        fail("tools", f"{c.tools!r} lists a tool twice", "list each tool once")
    if not (0 < c.port < 65536):
        fail("port", f"{c.port} is not a TCP port", "use a port between 1 and 65535")
    for key in ("data_directory", "bin_directory"):
        if not PurePosixPath(getattr(c, key)).is_absolute():
            fail(key, f"{getattr(c, key)!r} is not an absolute path", "write the full path, starting with '/'")

    from croniter import croniter  # Airflow's own cron parser: what it accepts, the scheduler runs

    for section in ("pgbackrest", "walg", "restore_test"):
        schedule = getattr(c, section).schedule
        if not croniter.is_valid(schedule):
            fail(f"{section}.schedule", f"{schedule!r} is not a valid cron expression",
                 "write five cron fields, e.g. '15 2 * * *' for 02:15 UTC daily")

    pb = c.pgbackrest
    if pb.retention_full_days < 1:
        fail("pgbackrest.retention_full_days", f"{pb.retention_full_days} keeps nothing", "keep at least 1 day (runbook: 30)")
    if pb.process_max < 1:
        fail("pgbackrest.process_max", f"{pb.process_max} is below 1", "use 1 or more processes")
    if pb.compress_type not in ("none", "gz", "lz4", "zst", "bz2"):
        fail("pgbackrest.compress_type", f"{pb.compress_type!r} is unknown", "use zst, lz4, gz, bz2 or none")
    if pb.incremental_type not in ("diff", "incr", "full"):
        fail("pgbackrest.incremental_type", f"{pb.incremental_type!r} is unknown", "use diff, incr or full")
    bad_days = [d for d in pb.full_backup_days if d not in WEEKDAYS]
    if bad_days:
        fail("pgbackrest.full_backup_days", f"{bad_days!r} are not weekdays", f"use some of {list(WEEKDAYS)}")

    w = c.walg
    if w.retention_days < 1:
        fail("walg.retention_days", f"{w.retention_days} keeps nothing", "keep at least 1 day (runbook: 30)")
    if w.compression not in ("lz4", "lzma", "zstd"):
        fail("walg.compression", f"{w.compression!r} is not available in a pure-Go WAL-G build",
             "use lz4, zstd or lzma (brotli needs a cgo build)")

    r = c.restore_test
    if r.tool not in c.tools:
        fail("restore_test.tool", f"{r.tool!r} is not one of this cluster's tools {c.tools}",
             "restore with a tool that backs the cluster up")
    prod = PurePosixPath(os.path.normpath(c.data_directory))
    staging = PurePosixPath(os.path.normpath(r.staging_data_directory))
    root = PurePosixPath(os.path.normpath(r.staging_root))
    if not staging.is_absolute() or not root.is_absolute():
        fail("restore_test.staging_data_directory", "staging paths must be absolute", "write full paths")
    if staging == prod or prod in staging.parents:
        fail("restore_test.staging_data_directory",
             f"{staging} is the production data directory or inside it ({prod}); the restore test purges it",
             "point staging at its own directory, outside the production data directory")
    if staging in prod.parents or root == prod or root in prod.parents or prod in root.parents:
        fail("restore_test.staging_root",
             f"staging ({root}, {staging}) and production ({prod}) overlap; the restore test purges staging",
             "give staging a root that neither contains nor sits inside the production data directory")
    if staging != root and root not in staging.parents:
        fail("restore_test.staging_data_directory", f"{staging} is outside the staging root {root}",
             "put the staging data directory inside restore_test.staging_root")
    if r.staging_port == c.port and c.host in ("localhost", "127.0.0.1") and not r.staging_socket_directory:
        fail("restore_test.staging_port", f"staging would listen on production's port {c.port}",
             "give staging a port of its own")
    if r.signoff_timeout_days < 1:
        fail("restore_test.signoff_timeout_days", f"{r.signoff_timeout_days} is below 1 day", "give QA at least 1 day")
    if not r.qa_users:
        fail("restore_test.qa_users", "nobody can sign off", "list the Airflow user names of QA")
    if c.alerts.max_backup_age_hours < 1:
        fail("alerts.max_backup_age_hours", "below 1 hour", "use the backup interval plus a margin (default 26)")

    from pg_backups import s3_bucket  # bucket rules live with the code that applies them

    try:
        s3_bucket.validate(c.s3)
    except s3_bucket.BucketSettingsError as exc:
        fail(f"s3.{exc.key}", exc.problem, exc.fix)
