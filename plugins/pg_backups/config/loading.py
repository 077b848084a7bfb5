"""Reading the cluster file: where it is, its parse cached, the last good copy a running load keeps.

Loading reads the file and touches nothing else (no connection, no subprocess, no network), except
the owner-only copy of the last good configuration that a running load keeps (see
:func:`load_config`); :func:`alert_for` says when the file's problems are worth a message.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import yaml

from pg_backups.config.declarations import NAME_RE
from pg_backups.config.parsing import Config, _resources, _shared_with, parse_config
from pg_backups.errors import ConfigError, config_problem

# The package's name, as when this was one module (pg_backups/config.py): logging set up for it still applies.
log = logging.getLogger("pg_backups.config")

REPO_ROOT = Path(__file__).resolve().parents[3]
DEFAULT_CONFIG_PATH = REPO_ROOT / "include" / "config" / "clusters.yaml"
CONFIG_ENV = "PG_BACKUPS_CONFIG"
# Where the copy of the last good configuration is kept (docs/configuration-safety.md): a directory
# of the service's own, not the config file's, which is often mounted read-only.
STATE_DIR_ENV = "PG_BACKUPS_STATE_DIR"


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
