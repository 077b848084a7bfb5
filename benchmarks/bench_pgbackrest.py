"""pgBackRest on a database of about 1 GB (pgbench data), in one run, on the local sandbox:

1. the full backup through the DAG (its `backup` task, run by `airflow dags test`) against the same
   `pgbackrest backup --type=full` run directly: overhead ratio (target <= 1.10) and seconds;
2. the compression types side by side: wall seconds, CPU seconds, bytes in the repository.

    .venv/bin/python benchmarks/bench_pgbackrest.py [--scale 68]

It uses the demo sandbox (SANDBOX_DIR, SANDBOX_PORT_BASE as for bin/demo) and adds a `bench`
database to it; `sandbox.py destroy` removes everything.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sqlite3
import statistics
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import machine  # benchmarks/machine.py: the script's folder is first on sys.path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "sandbox"))

import sandbox as sb  # noqa: E402
from pg_backups import pgbackrest  # noqa: E402
from pg_backups.config import load_config  # noqa: E402


def timed(argv, env=None) -> tuple[float, float, subprocess.CompletedProcess]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    proc = subprocess.run(argv, env={**os.environ, **(env or {})}, text=True, capture_output=True)
    wall = time.monotonic() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"{argv} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), proc


def newest_backup(cluster) -> dict:
    return pgbackrest.info(cluster)["backup"][-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", type=int, default=68, help="pgbench scale (68 is about 1 GB)")
    parser.add_argument("--rounds", type=int, default=3, help="direct/DAG pairs, alternated")
    args = parser.parse_args()
    machine.print_context("pgbackrest-backup-and-compression")
    L, env = sb.up_for_scripts()
    cluster = load_config(L.clusters_file).cluster(sb.STANZA)
    airflow = Path(sys.executable).parent / "airflow"
    # The bucket and stanza, as the demo makes them.
    for dag in (cluster.dag_id("s3_bucket"), cluster.dag_id("pgbackrest")):
        timed([airflow, "dags", "test", dag], env)
    sb.ensure_pgbench(L, args.scale)
    size = sb.psql(L, "SELECT pg_size_pretty(sum(pg_database_size(datname))) FROM pg_database", db="postgres")
    print(f"databases: {size}", flush=True)

    direct = pgbackrest.command(cluster, "backup", "--type=full")
    runuser = ["runuser", "-u", cluster.os_user, "--"]
    # Alternate direct and DAG runs so that drift on a shared machine hits both alike.
    raw_runs, dag_runs = [], []
    for _ in range(args.rounds):
        raw_runs.append(timed([*runuser, *direct])[0])
        timed([airflow, "dags", "test", cluster.dag_id("pgbackrest"), "--conf", '{"backup_type": "full"}'], env)
        with sqlite3.connect(L.airflow_home / "airflow.db") as db:
            start, end = db.execute("SELECT start_date, end_date FROM task_instance WHERE dag_id = ? "
                                    "AND task_id = 'backup' ORDER BY start_date DESC LIMIT 1",
                                    (cluster.dag_id("pgbackrest"),)).fetchone()
        dag_runs.append((datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds())
    raw, dag_task = statistics.median(raw_runs), statistics.median(dag_runs)
    print("\n== Backup through the DAG vs the same command run directly (full backup) ==")
    print(f"direct pgbackrest backup: {', '.join(f'{w:.1f}' for w in raw_runs)} s (median {raw:.1f} s)")
    print(f"DAG task `backup`:        {', '.join(f'{w:.1f}' for w in dag_runs)} s (median {dag_task:.1f} s)")
    print(f"overhead: {dag_task - raw:+.1f} s, ratio {dag_task / raw:.3f} (target <= 1.10)")

    print("\n== Compression types (full backup, process-max "
          f"{cluster.pgbackrest.process_max}) ==")
    print(f"{'type':6} {'wall s':>8} {'CPU s':>8} {'repo MB':>9}")
    results = {}
    # Not "none": moto keeps every object in memory and fails (HTTP 500) on 1 GB uncompressed sets.
    for kind in ("zst", "lz4", "gz"):
        wall, cpu, _ = timed([*runuser, *pgbackrest.command(cluster, "backup", "--type=full", f"--compress-type={kind}")])
        repo = newest_backup(cluster)["info"]["repository"]["delta"]
        results[kind] = {"wall": wall, "cpu": cpu, "repo_bytes": repo}
        print(f"{kind:6} {wall:8.1f} {cpu:8.1f} {repo / 1e6:9.1f}", flush=True)
    zst = results["zst"]
    for kind, r in results.items():
        print(f"  {kind}: {r['cpu'] / zst['cpu']:.2f}x zst's CPU, {r['repo_bytes'] / zst['repo_bytes']:.2f}x its size")
    # Leave the repository at its configured retention.
    pgbackrest.run(cluster, "expire", "--repo1-retention-full-type=count", "--repo1-retention-full=1")
    print(json.dumps({"dag_ratio": dag_task / raw, "dag_overhead_seconds": dag_task - raw, "compression": results}))


if __name__ == "__main__":
    main()
    machine.print_context("pgbackrest-backup-and-compression")
