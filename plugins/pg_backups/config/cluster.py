"""One cluster entry: its settings blocks, the checks that span them, and every name derived from it.

Every name derived from a cluster (its DAG ids, asset names, pools, connection ids, spread
schedules) is made here, so that every DAG and script agrees on them.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from pg_backups.config.declarations import _KIND_NEEDS, BACKUP_ASSET, DAG_KINDS, TOOLS, Settings, _norm, setting
from pg_backups.config.schema import (
    SPREAD_SCHEDULES,
    AlertSettings,
    MetricsSettings,
    PgBackRestSettings,
    Pool,
    RestoreTestSettings,
    S3Settings,
    ScheduleSpread,
    VerifySettings,
    WalgSettings,
)
from pg_backups.times import fixed_time, shifted


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
    def heartbeat_schedule(self) -> str:
        """Every ``verify.heartbeat_minutes``, from minute 0, or from the cluster's own minute when
        spread (a fleet's heartbeats in the same minute otherwise)."""
        every = self.verify.heartbeat_minutes
        return f"{self.spread_minutes % every}-59/{every} * * * *"

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
