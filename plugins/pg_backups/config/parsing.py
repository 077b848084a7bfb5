"""From parsed YAML to validated clusters: each entry built and checked, then checked against the others.

A ``defaults:`` mapping at the top is merged into every entry. An entry with a problem is left out
with its errors kept (:class:`Config`), so that one cluster's mistake never stops another's
backups; an entry that would share a file, a port, a staging directory or a pool's limit with an
accepted one is refused, naming both (the fleet checks: :func:`_resources`, :func:`_shared_with`,
:func:`_pool_conflict`); a fleet's nightly slots are spread (:func:`_spread`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from pg_backups.config.cluster import Cluster
from pg_backups.config.declarations import NAME_RE, _build, _expand, _norm, _validate
from pg_backups.config.schema import FLEET_SIZE, SPREAD_SCHEDULES
from pg_backups.errors import ConfigError, config_problem
from pg_backups.times import shifted


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
