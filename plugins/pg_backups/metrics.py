"""Prometheus metrics of the backups, the restore tests, WAL archiving and the bucket (runbook 4).

Each *source* (a backup tool, the restore test, WAL archiving, the S3 bucket) of each cluster
writes one node_exporter textfile, ``<textfile_directory>/pg_backups_<cluster>_<source>.prom``,
atomically (written aside, then renamed: node_exporter never reads half a file), and/or pushes the
same text to a Pushgateway (``MetricsSettings``), grouped by job ``pg_backups``, cluster and source.

Names follow pgbackrest_exporter's where they apply (``..._last_duration_seconds``,
``..._last_size_bytes``, ``..._wal_archive_status``), in a ``pg_backups_`` namespace shared by
pgBackRest and WAL-G (label ``tool``). Times are ``..._timestamp_seconds`` (Unix time) rather
than pgbackrest_exporter's ``since_last_completion_seconds``: a textfile is only rewritten when
a job runs, so an age written into it would freeze; Prometheus computes ``time() - timestamp``.

Publishing metrics never fails the job that calls it: a backup that succeeded stays a success,
the problem is logged, and the "backup too old" alert fires if metrics stop arriving.
Nothing here imports Airflow (the cron scripts call it too). No secret is ever a label value.
"""

from __future__ import annotations

import logging
import os
import re
import time
from pathlib import Path
from typing import TYPE_CHECKING

from pg_backups import costs, freshness
from pg_backups.times import epoch

if TYPE_CHECKING:
    from pg_backups.config import Cluster

log = logging.getLogger(__name__)

PREFIX = "pg_backups"
JOB = "pg_backups"
PUSH_TIMEOUT_SECONDS = 10

HELP = {
    "backup_last_completion_timestamp_seconds": "Unix time the newest good backup finished",
    "backup_last_start_timestamp_seconds": "Unix time the newest good backup started",
    "backup_last_duration_seconds": "Duration of the newest good backup",
    "backup_last_size_bytes": "Database size of the newest good backup",
    "backup_last_delta_bytes": "Data copied by the newest good backup (its delta)",
    "backup_last_repo_size_bytes": "Compressed size the newest good backup added to the repository",
    "backup_count": "Backups the repository lists (pgBackRest: failed ones included)",
    "backup_last_info": "The newest good backup: its label and type (value 1)",
    "restore_test_last_run_timestamp_seconds": "Unix time the last restore test finished",
    "restore_test_last_success_timestamp_seconds": "Unix time of the last successful restore test",
    "restore_test_last_duration_seconds": "Restore duration of the last restore test (RTO)",
    "restore_test_last_result": "Result of the last restore test: 1 success, 0 failed",
    "restore_test_last_info": "The backup the last restore test restored (value 1)",
    "verify_last_run_timestamp_seconds": "Unix time the last verification drill finished",
    "verify_last_success_timestamp_seconds": "Unix time of the last successful verification drill",
    "verify_last_verified_backup_timestamp_seconds": "Completion time of the newest backup a drill proved restorable",
    "verify_last_rto_seconds": "RTO of the last drill: restore + start + recovery",
    "verify_last_result": "Result of the last verification drill: 1 success, 0 failed",
    "verify_last_info": "The backup the last verification drill restored (value 1)",
    "verify_pitr_last_run_timestamp_seconds": "When the last PITR drill finished",
    "verify_pitr_last_success_timestamp_seconds": "When the last successful PITR drill finished",
    "verify_pitr_last_target_timestamp_seconds": "The point the last PITR drill recovered to",
    "verify_pitr_last_recovered_timestamp_seconds": "The newest commit the last PITR drill recovered",
    "verify_pitr_last_rpo_gap_seconds": "Target minus the newest commit recovered, last PITR drill",
    "verify_pitr_last_rto_seconds": "Restore + start + recovery of the last PITR drill",
    "verify_pitr_last_result": "Result of the last PITR drill: 1 success, 0 failed",
    "recovery_window_start_timestamp_seconds": "First recoverable point (oldest good backup's stop)",
    "recovery_window_end_timestamp_seconds": "Last recoverable point (newest archived heartbeat, else last archive)",
    "wal_archive_status": "WAL archiving works: 1 ok, 0 failing (last failure after last success)",
    "wal_archived_total": "WAL files archived since statistics reset (pg_stat_archiver.archived_count)",
    "wal_archive_failed_total": "Failed archive attempts since statistics reset (pg_stat_archiver.failed_count)",
    "wal_archive_ready_files": "WAL segments waiting to be archived (.ready files in pg_wal/archive_status)",
    "wal_last_archived_timestamp_seconds": "Unix time the last WAL file was archived",
    "wal_last_failed_timestamp_seconds": "Unix time of the last failed archive attempt",
    "s3_bucket_size_bytes": "Bytes stored in the backup bucket, by storage class and version state",
    "s3_bucket_objects": "Objects in the backup bucket, by storage class and version state",
    "s3_bucket_delete_markers": "Delete markers in the backup bucket",
    "s3_bucket_monthly_cost_estimate": "Estimated monthly cost of the backup bucket by storage class, version state "
                                       "and charge (storage, archive_overhead, early_deletion); see pg_backups.costs",
    "metrics_last_write_timestamp_seconds": "Unix time this metrics file was written",
}
COUNTERS = {"wal_archived_total", "wal_archive_failed_total"}


# --------------------------------------------------------------------------------------------
# The text format


def _escape(value) -> str:
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    value = float(value)
    return str(int(value)) if value.is_integer() and abs(value) < 2 ** 53 else repr(value)


def render(samples: list[tuple[str, dict, float]]) -> str:
    """Prometheus text exposition format; samples of one metric are grouped under one HELP/TYPE."""
    by_name: dict[str, list[tuple[dict, float]]] = {}
    for name, labels, value in samples:
        if value is None:
            continue
        by_name.setdefault(name, []).append((labels, value))
    lines = []
    for name, rows in by_name.items():
        full = f"{PREFIX}_{name}"
        lines.append(f"# HELP {full} {HELP.get(name, name)}")
        lines.append(f"# TYPE {full} {'counter' if name in COUNTERS else 'gauge'}")
        for labels, value in rows:
            text = ",".join(f'{k}="{_escape(v)}"' for k, v in sorted(labels.items()) if v is not None)
            lines.append(f"{full}{{{text}}} {_number(value)}")
    return "\n".join(lines) + "\n"


def parse(text: str) -> dict[tuple[str, tuple], float]:
    """The samples of a textfile, keyed by (metric name, sorted label pairs): the last success is read back."""
    out = {}
    pattern = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)$')
    label_re = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        match = pattern.match(line)
        if match:
            labels = tuple(sorted(label_re.findall(match.group(2) or "")))
            out[(match.group(1), labels)] = float(match.group(3))
    return out


def textfile_path(cluster: Cluster, source: str) -> Path | None:
    directory = cluster.metrics.textfile_directory
    return Path(directory) / f"{PREFIX}_{cluster.name}_{source}.prom" if directory else None


def write_textfile(path: Path, text: str) -> None:
    """Atomic: node_exporter reads either the old file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # not *.prom: node_exporter skips it
    with open(tmp, "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def push(url: str, cluster_name: str, source: str, text: str) -> None:
    """PUT replaces this group's metrics on the Pushgateway (job, cluster, source)."""
    import urllib.parse
    import urllib.request

    group = "/".join(urllib.parse.quote(part, safe="") for part in ("cluster", cluster_name, "source", source))
    request = urllib.request.Request(f"{url.rstrip('/')}/metrics/job/{JOB}/{group}", data=text.encode(),
                                     method="PUT", headers={"Content-Type": "text/plain; version=0.0.4"})
    with urllib.request.urlopen(request, timeout=PUSH_TIMEOUT_SECONDS) as response:
        response.read()


def publish(cluster: Cluster, source: str, samples: list[tuple[str, dict, float]]) -> dict:
    """Write the textfile and/or push; never raises. Returns where the metrics went."""
    samples = [*samples, ("metrics_last_write_timestamp_seconds", {"cluster": cluster.name, "source": source},
                          time.time())]
    text = render(samples)
    done: dict = {"source": source, "textfile": None, "pushed": False}
    path = textfile_path(cluster, source)
    if path:
        try:
            write_textfile(path, text)
            done["textfile"] = str(path)
        except OSError as exc:
            log.warning("metrics: could not write %s (%s); the job itself is not affected", path, exc)
    if cluster.metrics.pushgateway_url:
        try:
            push(cluster.metrics.pushgateway_url, cluster.name, source, text)
            done["pushed"] = True
        except Exception as exc:  # noqa: BLE001 - metrics must never fail a backup
            log.warning("metrics: could not push to the Pushgateway (%s); the job itself is not affected",
                        type(exc).__name__)
    if not path and not cluster.metrics.pushgateway_url:
        log.info("metrics: neither metrics.textfile_directory nor metrics.pushgateway_url is set; nothing published")
    return done


# --------------------------------------------------------------------------------------------
# What the jobs publish


def backup_samples(cluster: Cluster, record: dict) -> list[tuple[str, dict, float]]:
    tool = record.get("tool") or "unknown"
    base = {"cluster": cluster.name, "stanza": cluster.stanza, "tool": tool}
    typed = {**base, "backup_type": record.get("type") or "unknown"}
    return [
        ("backup_last_completion_timestamp_seconds", typed, epoch(record.get("stop_time"))),
        ("backup_last_start_timestamp_seconds", typed, epoch(record.get("start_time"))),
        ("backup_last_duration_seconds", typed, record.get("duration_seconds")),
        ("backup_last_size_bytes", typed, record.get("database_size_bytes")),
        ("backup_last_delta_bytes", typed, record.get("backup_size_bytes")),
        ("backup_last_repo_size_bytes", typed, record.get("repo_size_bytes")),
        ("backup_count", base, record.get("backup_count")),
        ("backup_last_info", {**typed, "label": record.get("label")}, 1),
    ]


def record_backup(cluster: Cluster, record: dict) -> dict:
    """After each backup (DAG ``publish_backup`` task and cron): the record of
    ``operations.pgbackrest_latest_record`` / ``walg_latest_record``, one file per cluster and tool."""
    tool = record.get("tool") or "unknown"
    return publish(cluster, tool, backup_samples(cluster, record))


def restore_samples(cluster: Cluster, audit: dict, previous_success: float | None = None) -> list[tuple[str, dict, float]]:
    tool = audit.get("tool") or "unknown"
    base = {"cluster": cluster.name, "stanza": cluster.stanza, "tool": tool}
    ok = str(audit.get("outcome", "")).lower() == "success"
    finished = epoch(audit.get("finished_at") or audit.get("time")) or time.time()  # the audit line's "time"
    return [
        ("restore_test_last_run_timestamp_seconds", base, finished),
        ("restore_test_last_success_timestamp_seconds", base, finished if ok else previous_success),
        ("restore_test_last_duration_seconds", base, audit.get("restore_duration_seconds")),
        ("restore_test_last_result", base, 1 if ok else 0),
        ("restore_test_last_info", {**base, "backup_label": audit.get("backup_label") or "unknown"}, 1),
    ]


def record_restore(cluster: Cluster, audit: dict) -> dict:
    """After each restore test. ``audit``: tool, backup_label, restore_duration_seconds, outcome
    ('success'/'failed'), finished_at. A failed test keeps the time of the last successful one."""
    previous = None
    path = textfile_path(cluster, "restore_test")
    if path and path.exists():
        try:
            for (name, _labels), value in parse(path.read_text()).items():
                if name == f"{PREFIX}_restore_test_last_success_timestamp_seconds":
                    previous = value
        except OSError:
            previous = None
    return publish(cluster, "restore_test", restore_samples(cluster, audit, previous))


def verify_samples(cluster: Cluster, line: dict, previous: dict | None = None) -> list[tuple[str, dict, float]]:
    """``line``: a verification line (pg_backups.verification). A failed drill keeps the last
    success's time and the last verified backup's (``previous``), so freshness rules still see them."""
    previous = previous or {}
    tool = line.get("tool") or "unknown"
    base = {"cluster": cluster.name, "stanza": cluster.stanza, "tool": tool}
    ok = line.get("outcome") == "success"
    finished = epoch(line.get("time")) or time.time()
    return [
        ("verify_last_run_timestamp_seconds", base, finished),
        ("verify_last_success_timestamp_seconds", base, finished if ok else previous.get("success")),
        ("verify_last_verified_backup_timestamp_seconds", base,
         epoch(line.get("backup_time")) if ok else previous.get("backup")),
        ("verify_last_rto_seconds", base, line.get("rto_seconds")),
        ("verify_last_result", base, 1 if ok else 0),
        ("verify_last_info", {**base, "backup_label": line.get("backup_label") or "unknown",
                              "failed_step": line.get("failed_step") or ""}, 1),
    ]


def kept_values(cluster: Cluster, source: str, names: dict[str, str]) -> dict:
    """What the source's textfile holds for the metrics a failed run keeps (``names``: key -> metric
    name without the prefix): a failure must not erase the last success."""
    previous: dict = {}
    path = textfile_path(cluster, source)
    if path and path.exists():
        try:
            wanted = {f"{PREFIX}_{metric}": key for key, metric in names.items()}
            for (name, _labels), value in parse(path.read_text()).items():
                if name in wanted:
                    previous[wanted[name]] = value
        except OSError:
            previous = {}
    return previous


def record_verify(cluster: Cluster, line: dict) -> dict:
    """After each verification drill: one file per cluster and tool (``verify_<tool>``)."""
    source = f"verify_{line.get('tool') or 'unknown'}"
    previous = kept_values(cluster, source, {"success": "verify_last_success_timestamp_seconds",
                                             "backup": "verify_last_verified_backup_timestamp_seconds"})
    return publish(cluster, source, verify_samples(cluster, line, previous))


def verify_pitr_samples(cluster: Cluster, line: dict, previous: dict | None = None) -> list[tuple[str, dict, float]]:
    """``line``: a PITR drill's line (pg_backups.pitr): the target drawn, the recovery point it
    reached and the gap between them (the achieved RPO of that point), the RTO, the outcome; a
    failed drill keeps the last success's time."""
    previous = previous or {}
    base = {"cluster": cluster.name, "stanza": cluster.stanza, "tool": line.get("tool") or "unknown"}
    ok = line.get("outcome") == "success"
    finished = epoch(line.get("time")) or time.time()
    return [
        ("verify_pitr_last_run_timestamp_seconds", base, finished),
        ("verify_pitr_last_success_timestamp_seconds", base, finished if ok else previous.get("success")),
        ("verify_pitr_last_target_timestamp_seconds", base, epoch(line.get("target_time"))),
        ("verify_pitr_last_recovered_timestamp_seconds", base, epoch(line.get("recovered_to"))),
        ("verify_pitr_last_rpo_gap_seconds", base, line.get("rpo_gap_seconds")),
        ("verify_pitr_last_rto_seconds", base, line.get("rto_seconds")),
        ("verify_pitr_last_result", base, 1 if ok else 0),
    ]


def record_verify_pitr(cluster: Cluster, line: dict) -> dict:
    """After each PITR drill: one file per cluster and tool (``verify_<tool>_pitr``)."""
    source = f"verify_{line.get('tool') or 'unknown'}_pitr"
    previous = kept_values(cluster, source, {"success": "verify_pitr_last_success_timestamp_seconds"})
    return publish(cluster, source, verify_pitr_samples(cluster, line, previous))


def recovery_window_samples(cluster: Cluster, windows: list[dict]) -> list[tuple[str, dict, float]]:
    """``windows``: pg_backups.pitr.recovery_window of each tool: its first and last recoverable point."""
    samples = []
    for w in windows:
        base = {"cluster": cluster.name, "stanza": cluster.stanza, "tool": w["tool"]}
        samples += [("recovery_window_start_timestamp_seconds", base, epoch(w.get("start"))),
                    ("recovery_window_end_timestamp_seconds", base, epoch(w.get("end")))]
    return samples


def record_recovery_window(cluster: Cluster, windows: list[dict]) -> dict:
    return publish(cluster, "recovery_window", recovery_window_samples(cluster, windows))


def archiver_samples(cluster: Cluster, stats: dict) -> list[tuple[str, dict, float]]:
    """``stats``: a pg_stat_archiver row (archived_count, failed_count, last_archived_time, ...)."""
    base = {"cluster": cluster.name}
    return [
        ("wal_archive_status", base, 0 if freshness.archiver_failing(stats) else 1),
        ("wal_archived_total", base, stats.get("archived_count")),
        ("wal_archive_failed_total", base, stats.get("failed_count")),
        ("wal_archive_ready_files", base, stats.get("ready_count")),
        ("wal_last_archived_timestamp_seconds", base, epoch(stats.get("last_archived_time"))),
        ("wal_last_failed_timestamp_seconds", base, epoch(stats.get("last_failed_time"))),
    ]


def record_archiver(cluster: Cluster, stats: dict) -> dict:
    return publish(cluster, "wal_archive", archiver_samples(cluster, stats))


# --------------------------------------------------------------------------------------------
# S3 usage and its cost (pg_backups.costs)


def bucket_usage(client, bucket: str) -> dict:
    """Bytes and objects by storage class, current and noncurrent versions (what the bill counts).

    ``list_object_versions`` lists every version, so the bytes that versioning keeps after
    retention deleted a backup are visible too. 1,000 keys per request.
    """
    usage: dict[tuple[str, str], dict] = {}
    delete_markers = 0
    paginator = client.get_paginator("list_object_versions")
    for page in paginator.paginate(Bucket=bucket):
        for version in page.get("Versions", []):
            key = (version.get("StorageClass") or "STANDARD", "current" if version.get("IsLatest") else "noncurrent")
            entry = usage.setdefault(key, {"bytes": 0, "objects": 0})
            entry["bytes"] += int(version.get("Size") or 0)
            entry["objects"] += 1
        delete_markers += len(page.get("DeleteMarkers", []))
    return {"bucket": bucket, "delete_markers": delete_markers,
            "by_class": [{"storage_class": c, "version": v, **n} for (c, v), n in sorted(usage.items())]}


def bucket_samples(cluster: Cluster, usage: dict) -> list[tuple[str, dict, float]]:
    base = {"cluster": cluster.name, "bucket": usage["bucket"]}
    samples = [("s3_bucket_delete_markers", base, usage["delete_markers"])]
    if not usage["by_class"]:
        samples += [("s3_bucket_size_bytes", {**base, "storage_class": "STANDARD", "version": "current"}, 0),
                    ("s3_bucket_objects", {**base, "storage_class": "STANDARD", "version": "current"}, 0)]
    for row in usage["by_class"]:
        labels = {**base, "storage_class": row["storage_class"], "version": row["version"]}
        samples += [("s3_bucket_size_bytes", labels, row["bytes"]), ("s3_bucket_objects", labels, row["objects"])]
    return samples + costs.samples(cluster, usage)


def record_bucket(cluster: Cluster, client) -> dict:
    usage = bucket_usage(client, cluster.s3.bucket)
    publish(cluster, "s3", bucket_samples(cluster, usage))
    return usage
