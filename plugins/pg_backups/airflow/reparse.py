"""Re-parse the DAG files when the cluster file changes: the dag-processor then parses rarely.

The DAGs change only when the code or the cluster file changes. Airflow 3.3's dag-processor
re-parses a DAG file whose modification time is newer than its last parse at once (its
``file_parsing_sort_mode`` ``modified_time``, the default), and otherwise waits
``[dag_processor] min_file_process_interval``: a new code file is noticed without help, but the
cluster file is not a DAG file, and its change would wait for that interval. This watcher closes
the gap: it looks at the cluster file's identity (modification time, size, inode) every
``--interval`` seconds and, when it changed, asks Airflow to re-parse every DAG file of the local
bundles the way the UI's "Reparse" button does (a ``DagPriorityParsingRequest`` row each, which the
dag-processor serves before its queue). It works with a read-only DAG folder (the compose mount),
where touching the files would not.

    python -m pg_backups.airflow.reparse [--interval 5]

Run it beside the dag-processor, with the same Airflow configuration and ``PG_BACKUPS_CONFIG``
(docker-compose.yaml's ``airflow-dag-processor`` does). Polling a stat costs nothing measurable;
a change costs one parse of the folder.
"""

from __future__ import annotations

import argparse
import logging
import os
import time
from pathlib import Path

from pg_backups.config import config_path

log = logging.getLogger("pg_backups.reparse")


def identity(path: Path) -> tuple | None:
    """What changes when the file is edited or replaced (an editor's rename, a ConfigMap's symlink swap)."""
    try:
        stat = path.stat()
    except OSError:
        return None
    return stat.st_mtime_ns, stat.st_size, stat.st_ino


def dag_files() -> list[tuple[str, str]]:
    """(bundle name, relative path) of every Python file in the local DAG bundles."""
    from airflow.dag_processing.bundles.local import LocalDagBundle
    from airflow.dag_processing.bundles.manager import DagBundlesManager

    files = []
    for bundle in DagBundlesManager().get_all_dag_bundles():
        if isinstance(bundle, LocalDagBundle):
            files += [(bundle.name, str(p.relative_to(bundle.path))) for p in sorted(Path(bundle.path).rglob("*.py"))]
    return files


def request_reparse() -> int:
    """One priority parsing request per DAG file; returns how many."""
    from airflow.models.dagbag import DagPriorityParsingRequest
    from airflow.utils.session import create_session

    files = dag_files()
    with create_session() as session:
        for bundle_name, relative in files:
            session.add(DagPriorityParsingRequest(bundle_name=bundle_name, relative_fileloc=relative))
    return len(files)


def watch(path: Path, interval: float) -> None:
    seen = identity(path)
    log.info("watching %s every %s s", path, interval)
    while True:
        time.sleep(interval)
        now = identity(path)
        if now != seen:
            seen = now
            try:
                log.info("%s changed: %d DAG files asked to re-parse", path, request_reparse())
            except Exception:  # noqa: BLE001 - a database blip must not end the watch; the next change retries
                log.exception("could not ask for a re-parse (the periodic parse will pick the change up)")
                seen = None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pg_backups.airflow.reparse", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--interval", type=float, default=float(os.environ.get("PG_BACKUPS_WATCH_SECONDS", 5)),
                        help="seconds between two looks at the cluster file (default 5, or PG_BACKUPS_WATCH_SECONDS)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    watch(config_path(), args.interval)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
