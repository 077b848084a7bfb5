"""What the inventory reads besides Airflow's metadata, and the XComs it reads through the store:
the restore-test audit log and the verification log (each read once per change of the file), the
audit lines and drill results the DAG runs left as XComs, and the Prometheus textfiles of
``metrics.textfile_directory``. Nothing here imports Airflow; :mod:`pg_backups.inventory` builds
the rows from it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pg_backups import metrics, pitr, verification
from pg_backups.times import iso, utc

if TYPE_CHECKING:
    from pg_backups.config import Cluster
    from pg_backups.inventory import Store

AUDIT_XCOM = ("audit_and_archive", "audit")  # pg_backups.airflow.restore_tasks.AUDIT_XCOM_KEY
# A cancelled drill's line is left by its teardown (audit_and_archive never ran).
CANCELLED_AUDIT_XCOM = ("stop_staging_after", "audit")


@dataclass
class _Cached:
    key: tuple
    value: Any


_file_cache: dict[str, _Cached] = {}


def _cached_read(path: str, parse):
    try:
        stat = os.stat(path)
    except OSError:
        return None
    key = (stat.st_mtime_ns, stat.st_size)
    hit = _file_cache.get(path)
    if hit and hit.key == key:
        return hit.value
    try:
        value = parse(Path(path).read_text(errors="replace"))
    except OSError:
        return None
    _file_cache[path] = _Cached(key, value)
    return value


def _parse_audit(text: str) -> list[dict]:
    lines = []
    for raw in text.splitlines():
        raw = raw.strip()
        if not raw:
            continue
        try:
            line = json.loads(raw)
        except ValueError:
            continue  # a half-written or hand-edited line does not hide the others
        if isinstance(line, dict):
            lines.append(line)
    return lines


def audit_lines(cluster: Cluster, xcom_lines: list[dict] = ()) -> list[dict]:
    """The cluster's restore-test audit lines, oldest first: the audit log file (which may be shared
    by clusters, or out of this machine's reach) and the lines ``audit_and_archive`` (or, for a
    cancelled drill, its teardown) also left as XComs, once per run."""
    lines = _cached_read(cluster.restore_test.audit_log, _parse_audit) or []
    merged = {}
    for line in [*xcom_lines, *lines]:
        if isinstance(line, dict) and line.get("cluster") in (None, cluster.name):
            merged[line.get("run_id") or line.get("time")] = line
    return sorted(merged.values(), key=lambda line: str(line.get("time") or ""))


def audit_xcoms(clusters: list[Cluster], store: Store) -> dict[str, list[dict]]:
    dags = {c.dag_id("restore_test"): c.name for c in clusters}
    out: dict[str, list[dict]] = {}
    for task_key in (AUDIT_XCOM, CANCELLED_AUDIT_XCOM):
        for row in store.all_xcoms(list(dags), *task_key):
            if isinstance(row.get("value"), dict):
                out.setdefault(dags[row["dag_id"]], []).append(row["value"])
    return out


def verification_results(cluster: Cluster, xcom_results: list[dict] = ()) -> list[dict]:
    """The cluster's drill results (``verification.result``), oldest first: those the DAG runs left
    as XComs and the lines of ``verify.log`` this machine can read (the cron drills), once per run."""
    lines = _cached_read(cluster.verify.log, _parse_audit) or []
    merged = {}
    from_log = [verification.result(line) for line in lines
                if line.get("kind") == verification.KIND and line.get("cluster") in (None, cluster.name)]
    for r in [*from_log, *xcom_results]:
        if isinstance(r, dict):
            merged[r.get("run_id") or r.get("time")] = r
    return sorted(merged.values(), key=lambda r: str(r.get("time") or ""))


def verification_xcoms(clusters: list[Cluster], store: Store, since: datetime) -> dict[str, list[dict]]:
    dags = {c.dag_id("verify_backup"): c.name for c in clusters if c.verify.enabled}
    out: dict[str, list[dict]] = {}
    if dags:
        for row in store.xcoms_since(list(dags), *verification.RESULT_XCOM, since):
            if isinstance(row.get("value"), dict):
                out.setdefault(dags[row["dag_id"]], []).append(row["value"])
    return out


def pitr_results(cluster: Cluster, xcom_results: list[dict] = ()) -> list[dict]:
    """The cluster's PITR drill results, oldest first: the DAG runs' XComs and verify.log's PITR lines."""
    lines = _cached_read(cluster.verify.log, _parse_audit) or []
    merged = {}
    from_log = [pitr.result(line) for line in lines if line.get("kind") == pitr.KIND
                and line.get("cluster") in (None, cluster.name)]
    for r in [*from_log, *xcom_results]:
        if isinstance(r, dict):
            merged[r.get("run_id") or r.get("time")] = r
    return sorted(merged.values(), key=lambda r: str(r.get("time") or ""))


def textfile(cluster: Cluster, source: str) -> dict | None:
    path = metrics.textfile_path(cluster, source)
    return _cached_read(str(path), metrics.parse) if path else None


def metric_samples(parsed: dict, name: str) -> list[tuple[dict, float]]:
    full = f"{metrics.PREFIX}_{name}"
    return [(dict(labels), value) for (metric, labels), value in parsed.items() if metric == full]


def metric_value(parsed: dict, name: str) -> float | None:
    rows = metric_samples(parsed, name)
    return rows[0][1] if rows else None


def textfile_written_at(parsed: dict) -> datetime | None:
    return utc(metric_value(parsed, "metrics_last_write_timestamp_seconds"))


def wal_from_textfile(parsed: dict) -> dict:
    return {
        "archived_count": metric_value(parsed, "wal_archived_total"),
        "failed_count": metric_value(parsed, "wal_archive_failed_total"),
        "ready_count": metric_value(parsed, "wal_archive_ready_files"),
        "last_archived_time": iso(metric_value(parsed, "wal_last_archived_timestamp_seconds")),
        "last_failed_time": iso(metric_value(parsed, "wal_last_failed_timestamp_seconds")),
    }


def bucket_from_textfile(parsed: dict) -> dict:
    rows: dict[tuple, dict] = {}
    bucket = None
    for labels, value in metric_samples(parsed, "s3_bucket_size_bytes"):
        bucket = labels.get("bucket", bucket)
        rows.setdefault((labels.get("storage_class"), labels.get("version")), {})["bytes"] = value
    for labels, value in metric_samples(parsed, "s3_bucket_objects"):
        rows.setdefault((labels.get("storage_class"), labels.get("version")), {})["objects"] = value
    return {"bucket": bucket, "by_class": [{"storage_class": c, "version": v, "bytes": n.get("bytes", 0),
                                            "objects": n.get("objects", 0)} for (c, v), n in sorted(rows.items())]}


# --------------------------------------------------------------------------------------------
# One cluster
