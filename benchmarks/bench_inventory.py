"""Load time of the backup inventory page and its JSON with 1 cluster and with 100, over a year of
published data (target: the page under 1 s for 100 clusters on these 2-core machines).

It migrates a fresh Airflow metadata database (SQLite, as the sandbox's) and fills it with what a
year of scheduled runs of 100 clusters (pgBackRest and WAL-G each) publishes:

- 200 backup assets and 73,000 backup asset events (one backup per tool per day, full on Sundays);
- 994,000 DAG runs: 73,000 backups, 36,500 bucket configurations, 400 restore tests, and 876,000
  hourly freshness checks, about 2 % of the backups and 1 % of the checks failed;
- 1,752,000 freshness XComs (archiver_stats, bucket_usage);
- 73,000 verification drill runs (one per backup, asset-triggered, about 1 % failed) and their
  ``verification_result`` XComs;
- per cluster: a restore-test audit log (4 tests), WAL and bucket metrics textfiles.

Then, in a child process (Airflow configured on that database), the plugin's own FastAPI app is
called in process (its auth dependency replaced: the auth manager is not what is measured), five
times each after one warm-up, and the median is printed for: the page (`/`, the table and the
chart of one cluster), `/api/inventory`, `/api/clusters/<name>/history`. "1 cluster" is an
installation whose configuration names one of the 100 clusters: the same database, so the same
table sizes.

    .venv/bin/python benchmarks/bench_inventory.py            # about 2 minutes, most of it filling the database
    .venv/bin/python benchmarks/bench_inventory.py --keep     # keep benchmarks/results/inventory/ for a rerun
"""

from __future__ import annotations

import json
import os
import random
import shutil
import sqlite3
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import machine  # benchmarks/machine.py: the script's folder is first on sys.path

REPO = Path(__file__).resolve().parents[1]
WORK = REPO / "benchmarks" / "results" / "inventory"
CLUSTERS = 100
DAYS = 365
NOW = datetime.now(timezone.utc).replace(minute=30, second=0, microsecond=0)

MEASURE = r"""
import json, statistics, sys, time
sys.path.insert(0, sys.argv[1])
import backup_inventory_plugin as plugin
from fastapi.testclient import TestClient

for dep in plugin.allowed:
    plugin.app.dependency_overrides[dep.dependency] = lambda: None
client = TestClient(plugin.app)
out = {}
for name, path in (("page", "/"), ("api_inventory", "/api/inventory"),
                   ("api_history", "/api/clusters/cluster000/history")):
    times, cpu = [], []
    for i in range(6):
        started, started_cpu = time.perf_counter(), time.process_time()
        response = client.get(path)
        elapsed, elapsed_cpu = time.perf_counter() - started, time.process_time() - started_cpu
        assert response.status_code == 200, (path, response.status_code, response.text[:500])
        if i:  # the first call warms the imports, the configuration and the files' cache
            times.append(elapsed)
            cpu.append(elapsed_cpu)
    out[name] = {"median_s": statistics.median(times), "cpu_s": statistics.median(cpu), "bytes": len(response.content)}
data = client.get("/api/inventory").json()
out["rows"] = len(data["clusters"])
out["timeline_items"] = sum(len(c["timeline"]) for c in data["clusters"])
out["counts"] = data["counts"]
print(json.dumps(out))
"""


def ts(dt: datetime) -> str:
    return dt.astimezone(timezone.utc).replace(tzinfo=None).isoformat(sep=" ", timespec="microseconds")


def cluster_names() -> list[str]:
    return [f"cluster{i:03d}" for i in range(CLUSTERS)]


def config_text(names: list[str]) -> str:
    lines = ["clusters:"]
    for i, name in enumerate(names):
        lines += [f"  - name: {name}",
                  f"    host: db{i:03d}.internal",
                  f"    data_directory: /srv/pg/{name}/data",
                  "    tools: [pgbackrest, walg]",
                  f"    walg: {{prefix: postgres/{name}}}",
                  f"    metrics: {{textfile_directory: {WORK / 'metrics'}}}",
                  f"    restore_test: {{staging_root: /srv/staging/{name}, staging_data_directory: "
                  f"/srv/staging/{name}/data, staging_port: {6000 + i}, audit_log: {WORK / 'audit' / name}.log}}"]
    return "\n".join(lines) + "\n"


def fill(db_path: Path) -> dict:
    sys.path.insert(0, str(REPO / "plugins"))
    from pg_backups import verification
    from pg_backups.config import build_cluster

    rng = random.Random(18)
    db = sqlite3.connect(db_path)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=OFF")
    counts = {"asset_event": 0, "dag_run": 0, "xcom": 0}

    def runs(rows):
        db.executemany("INSERT INTO dag_run (dag_id, run_id, run_type, run_after, logical_date, start_date, end_date, "
                       "state, clear_number, span_status) VALUES (?, ?, 'scheduled', ?, ?, ?, ?, ?, 0, 'ended')", rows)
        counts["dag_run"] += len(rows)

    start = NOW - timedelta(days=DAYS)
    for index, name in enumerate(cluster_names()):
        cluster = build_cluster({"name": name})  # the DAG ids and asset names, as the DAGs have them
        asset_ids = {}
        for tool, path in (("pgbackrest", f"pgbackrest/backup/{name}"), ("walg", f"postgres/{name}/basebackups_005")):
            cur = db.execute("INSERT INTO asset (name, uri, \"group\", extra, created_at, updated_at) "
                             "VALUES (?, ?, 'backups', '{}', ?, ?)",
                             (cluster.asset_name(tool), f"s3://bucket-{name}/{path}", ts(start), ts(start)))
            asset_ids[tool] = cur.lastrowid
        backup_runs, events, other_runs, drills = [], [], [], []
        size = 50e9 * (1 + index / 10)
        for day in range(DAYS + 1):
            date = (start + timedelta(days=day)).replace(hour=2, minute=15)
            if date > NOW:
                break
            size *= 1.001
            for tool, minute in (("pgbackrest", 15), ("walg", 45)):
                dag_id = cluster.dag_id(tool)
                run_id = f"scheduled__{date.replace(minute=minute).isoformat()}"
                at = date.replace(minute=minute)
                failed = rng.random() < 0.02
                full = date.weekday() == 6
                duration = (3600 if full else 600) * rng.uniform(0.9, 1.2)
                backup_runs.append((dag_id, run_id, ts(at), ts(at), ts(at), ts(at + timedelta(seconds=duration + 60)),
                                    "failed" if failed else "success"))
                if failed:
                    continue
                kind = "full" if full else ("diff" if tool == "pgbackrest" else "delta")
                stop = at + timedelta(seconds=duration)
                record = {"cluster": name, "tool": tool, "label": f"{stop:%Y%m%d-%H%M%S}{kind[0].upper()}",
                          "type": kind, "start_time": at.isoformat(), "stop_time": stop.isoformat(),
                          "duration_seconds": round(duration), "database_size_bytes": int(size),
                          "backup_size_bytes": int(size if full else size * 0.03),
                          "repo_size_bytes": int(size * (0.25 if full else 0.008)), "wal_start": "0000000100000A",
                          "wal_stop": "0000000100000B", "airflow_run_id": run_id, "backup_count": 40}
                events.append((asset_ids[tool], json.dumps(record), "publish_backup", dag_id, run_id,
                               ts(stop + timedelta(seconds=30))))
                drills.append((record, stop + timedelta(minutes=5), rng.random() < 0.01))
            other_runs.append((cluster.dag_id("s3_bucket"), f"scheduled__{date.replace(hour=0, minute=0).isoformat()}",
                               ts(date), ts(date), ts(date), ts(date + timedelta(seconds=20)), "success"))
        for quarter in range(4):
            at = NOW - timedelta(days=20 + 91 * quarter)
            other_runs.append((cluster.dag_id("restore_test"), f"scheduled__{at.isoformat()}", ts(at), ts(at), ts(at),
                               ts(at + timedelta(hours=3)), "success"))
        runs(backup_runs + other_runs)
        db.executemany("INSERT INTO asset_event (asset_id, extra, source_task_id, source_dag_id, source_run_id, "
                       "timestamp) VALUES (?, ?, ?, ?, ?, ?)", events)
        counts["asset_event"] += len(events)
        # Hourly freshness checks and their XComs.
        dag_id = cluster.dag_id("freshness")
        hours = [start + timedelta(hours=h) for h in range(DAYS * 24) if start + timedelta(hours=h) <= NOW]
        freshness = [(dag_id, f"scheduled__{h.isoformat()}", ts(h), ts(h), ts(h), ts(h + timedelta(seconds=40)),
                      "failed" if rng.random() < 0.01 else "success") for h in hours]
        first = db.execute("SELECT COALESCE(MAX(id), 0) FROM dag_run").fetchone()[0] + 1
        runs(freshness)
        xcoms = []
        for offset, h in enumerate(hours):
            run_pk, run_id = first + offset, freshness[offset][1]
            stats = {"archived_count": 1000 + offset * 12, "last_archived_wal": "00000001000000AB000000CD",
                     "last_archived_time": (h - timedelta(minutes=2)).isoformat(), "failed_count": 3,
                     "last_failed_wal": None, "last_failed_time": (start - timedelta(days=1)).isoformat(),
                     "stats_reset": start.isoformat(), "ready_count": rng.randint(0, 3), "archive_mode": "on"}
            usage = {"bucket": f"bucket-{name}", "delete_markers": 12, "by_class": [
                {"storage_class": "STANDARD", "version": "current", "bytes": int(size * 9), "objects": 40000},
                {"storage_class": "STANDARD_IA", "version": "current", "bytes": int(size * 3), "objects": 9000},
                {"storage_class": "DEEP_ARCHIVE", "version": "noncurrent", "bytes": int(size * 20), "objects": 90000}]}
            stamp = ts(h + timedelta(seconds=30))
            xcoms.append((run_pk, "check_wal_archiving", "archiver_stats", dag_id, run_id, json.dumps(stats), stamp))
            xcoms.append((run_pk, "bucket_usage", "return_value", dag_id, run_id, json.dumps(usage), stamp))
        # One verification drill per backup, started by its asset event, and its result XCom.
        dag_id = cluster.dag_id("verify_backup")
        first = db.execute("SELECT COALESCE(MAX(id), 0) FROM dag_run").fetchone()[0] + 1
        runs([(dag_id, f"asset_triggered__{at.isoformat()}", ts(at), None, ts(at), ts(at + timedelta(minutes=40)),
               "failed" if bad else "success") for _record, at, bad in drills])
        for offset, (record, at, bad) in enumerate(drills):
            result = {"time": (at + timedelta(minutes=40)).isoformat(), "tool": record["tool"],
                      "run_id": f"asset_triggered__{at.isoformat()}", "backup_label": record["label"],
                      "backup_time": record["stop_time"], "rto_seconds": None if bad else round(rng.uniform(1800, 2400), 1),
                      "outcome": "failed" if bad else "success", "failed_step": "restore" if bad else None,
                      "cause": "drill: failed: [029] zst error" if bad else None}
            xcoms.append((first + offset, *verification.RESULT_XCOM, dag_id, result["run_id"], json.dumps(result),
                          ts(at + timedelta(minutes=40))))
        db.executemany("INSERT INTO xcom (dag_run_id, task_id, map_index, key, dag_id, run_id, value, timestamp) "
                       "VALUES (?, ?, -1, ?, ?, ?, ?, ?)", xcoms)
        counts["xcom"] += len(xcoms)
        db.commit()
        # The files the jobs write: audit log, metrics textfiles.
        audit_lines = []
        for quarter in reversed(range(4)):
            at = NOW - timedelta(days=20 + 91 * quarter) + timedelta(hours=3)
            audit_lines.append(json.dumps({
                "time": at.isoformat(), "cluster": name, "run_id": f"scheduled__{at.isoformat()}", "tool": "pgbackrest",
                "backup_label": "20260101-021500F", "backup_time": (at - timedelta(hours=20)).isoformat(),
                "target_time": None, "restore_duration_seconds": round(rng.uniform(3000, 5000), 1),
                "checks": [{"check": c, "result": "ok"} for c in ("smoke_query", "backup_marker", "amcheck:app")],
                "signoff": {"status": "approved", "by": "qa"}, "errors": [], "outcome": "success"}))
        (WORK / "audit" / f"{name}.log").write_text("\n".join(audit_lines) + "\n")
    db.execute("ANALYZE")
    db.commit()
    db.close()
    return counts


def write_textfiles() -> None:
    sys.path.insert(0, str(REPO / "plugins"))
    from pg_backups import metrics
    from pg_backups.config import build_cluster

    for name in cluster_names():
        cluster = build_cluster({"name": name, "metrics": {"textfile_directory": str(WORK / "metrics")}})
        metrics.write_textfile(metrics.textfile_path(cluster, "wal_archive"), metrics.render(metrics.archiver_samples(
            cluster, {"archived_count": 5000, "failed_count": 3, "ready_count": 0,
                      "last_archived_time": NOW - timedelta(minutes=40)})))


def prepare() -> dict:
    stamp = WORK / "filled.json"
    if stamp.exists():
        return json.loads(stamp.read_text())
    shutil.rmtree(WORK, ignore_errors=True)
    (WORK / "airflow").mkdir(parents=True)
    (WORK / "audit").mkdir()
    env = {**os.environ, "AIRFLOW_HOME": str(WORK / "airflow"), "AIRFLOW__CORE__LOAD_EXAMPLES": "False"}
    started = time.perf_counter()
    subprocess.run([Path(sys.executable).parent / "airflow", "db", "migrate"], env=env, check=True,
                   capture_output=True, text=True)
    counts = fill(WORK / "airflow" / "airflow.db")
    write_textfiles()
    counts["fill_seconds"] = round(time.perf_counter() - started, 1)
    counts["db_mb"] = round((WORK / "airflow" / "airflow.db").stat().st_size / 2**20)
    stamp.write_text(json.dumps(counts))
    return counts


def measure(n: int) -> dict:
    config = WORK / f"clusters-{n}.yaml"
    config.write_text(config_text(cluster_names()[:n]))
    env = {**os.environ, "AIRFLOW_HOME": str(WORK / "airflow"), "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
           "PG_BACKUPS_CONFIG": str(config), "PYTHONPATH": str(REPO / "plugins"),
           "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins")}
    proc = subprocess.run([sys.executable, "-c", MEASURE, str(REPO / "plugins")], env=env, text=True,
                          capture_output=True)
    if proc.returncode != 0:
        raise SystemExit(proc.stdout[-3000:] + proc.stderr[-5000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    machine.print_context("backup-inventory-load-time")
    counts = prepare()
    print(f"metadata database: {counts['asset_event']:,} asset events, {counts['dag_run']:,} DAG runs, "
          f"{counts['xcom']:,} XComs, {counts['db_mb']} MB (filled in {counts['fill_seconds']} s)")
    for n in (1, CLUSTERS):
        result = measure(n)
        ms = {key: f"{result[key]['median_s'] * 1000:.0f} ms (CPU {result[key]['cpu_s'] * 1000:.0f} ms)"
              for key in ("page", "api_inventory", "api_history")}
        print(f"{n:>3} cluster{'s' if n > 1 else ' '}: page {ms['page']}, {result['page']['bytes'] / 1024:.0f} KiB; "
              f"/api/inventory {ms['api_inventory']}, {result['api_inventory']['bytes'] / 1024:.0f} KiB; "
              f"one cluster's year of history {ms['api_history']}; "
              f"{result['rows']} rows, {result['timeline_items']} timeline items, status {result['counts']}")
    print(f"load average during the run: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores "
          "(wall times grow with other work; CPU times much less)")
    if "--keep" not in sys.argv:
        shutil.rmtree(WORK, ignore_errors=True)


if __name__ == "__main__":
    main()
    machine.print_context("backup-inventory-load-time")
