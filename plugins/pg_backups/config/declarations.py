"""How a setting is declared and read: :func:`setting`, :class:`Settings`, the names and allowed values.

Every setting is declared once, with :func:`setting`: its default, and what it accepts (allowed
values, a range, an absolute path, a cron line), the way pgBackRest declares its options. The
loader checks those declarations for every field (:func:`_build`, :func:`_coerce`,
:func:`_check_declaration`); each settings class's ``validate()`` then checks what spans several
fields (:func:`_validate`). Every problem of every entry is collected (not only the first), each a
:class:`ConfigError` whose message names the file, the key and the fix.
"""

from __future__ import annotations

import dataclasses
import os
import re
import types
import typing
from dataclasses import field
from pathlib import PurePosixPath
from typing import Any

from pg_backups.errors import ConfigError

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
    "heartbeat": "heartbeat_{cluster}",
    "verify_pitr": "verify_pitr_{cluster}",
    "restore_test": "restore_test_{cluster}",
    "freshness": "backup_freshness_{cluster}",
}
# The DAG kinds a cluster has only with a tool or a setting (Cluster.dag_kinds).
_KIND_NEEDS = {"pgbackrest_verify": lambda c: "pgbackrest" in c.tools, "verify_backup": lambda c: c.verify.enabled,
               "heartbeat": lambda c: c.verify.enabled and c.verify.pitr_enabled,
               "verify_pitr": lambda c: c.verify.enabled and c.verify.pitr_enabled}
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

# Where an alert can go (pg_backups.airflow.notifiers): Slack, e-mail (the SMTP provider), PagerDuty.
ALERT_CHANNELS = ("slack", "email", "pagerduty")


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


def dag_kind(dag_id: str) -> str | None:
    """The kind of a DAG id (a key of DAG_KINDS), None for none of ours."""
    for kind, pattern in DAG_KINDS.items():
        prefix, _, suffix = pattern.partition("{cluster}")
        if dag_id.startswith(prefix) and dag_id.endswith(suffix) and len(dag_id) > len(prefix) + len(suffix):
            return kind
    return None


def _norm(path: str) -> PurePosixPath:
    return PurePosixPath(os.path.normpath(path))


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
