"""The backup tools behind one table, so that callers ask the tool instead of branching on its name.

Each tool's knowledge lives in its own module (:mod:`pg_backups.pgbackrest`,
:mod:`pg_backups.walg`); :func:`of` picks it. What every tool module answers the same way:

* ``write_config(cluster, access)``: its configuration on this host (the S3 keys owner-only);
* ``repository_path(cluster)``: where its backups live in the bucket (the backup asset's URI);
* ``retention_days(cluster)``: how long its retention keeps backups.

Listing, choosing and restoring a backup still differ by tool in ``operations``, ``staging`` and
``pitr`` (their WAL-G paths cannot be run on the machines this project is built on: no binary);
they are the next to move behind this table (docs/architecture.md).
"""

from __future__ import annotations

from types import ModuleType

from pg_backups import pgbackrest, walg

MODULES: dict[str, ModuleType] = {"pgbackrest": pgbackrest, "walg": walg}


def of(tool: str) -> ModuleType:
    """The tool's module; a name that is not a tool is a programming error (the configuration
    refuses unknown tools when it is loaded)."""
    return MODULES[tool]
