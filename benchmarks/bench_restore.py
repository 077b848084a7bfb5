"""Restore drill wall time against a raw `pgbackrest restore` of the same backup, in one run.

    SANDBOX_DIR=... SANDBOX_PORT_BASE=... .venv/bin/python benchmarks/bench_restore.py [--repeat N]

Needs a sandbox that is up and holds at least one pgBackRest backup (run the backup DAG or
`bin/demo` first). Measures, for the newest backup:

* raw: `pgbackrest restore --set=<label> --pg1-path=<empty dir> --archive-mode=off` as the
  postgres user, nothing else;
* drill: what the restore test's tasks do before PostgreSQL starts (guard, stop staging, purge,
  look the backup up in `pgbackrest info`, restore), through the same code as the DAG;
* start: the drill's start of staging until `pg_is_in_recovery()` is false (reported apart).

Prints the ratio drill/raw (target <= 1.2x; the start comes on top). Not a timed test.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import machine  # benchmarks/machine.py: the script's folder is first on sys.path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "plugins"), str(REPO / "sandbox")]

from pg_backups import operations, pgbackrest  # noqa: E402
from pg_backups.config import load_config  # noqa: E402
from sandbox import Layout  # noqa: E402


def raw_restore(cluster, label: str, target: Path) -> float:
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(mode=0o700)
    shutil.chown(target, "postgres", "postgres")
    argv = ["runuser", "-u", "postgres", "--",
            *pgbackrest.command(cluster, "restore", f"--pg1-path={target}", "--archive-mode=off", f"--set={label}")]
    started = time.monotonic()
    subprocess.run(argv, check=True, capture_output=True)
    elapsed = time.monotonic() - started
    shutil.rmtree(target)
    return elapsed


def drill(cluster, label: str) -> tuple[float, float]:
    started = time.monotonic()
    operations.restore_guard(cluster)
    operations.restore_stop_staging(cluster)
    operations.restore_purge_staging(cluster)
    operations.restore_latest_backup(cluster, "pgbackrest", None, label)
    restored = time.monotonic() - started
    startup = operations.restore_start_staging(cluster)["startup_seconds"]
    operations.restore_stop_staging(cluster)
    return restored, startup


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=1, help="alternate raw and drill N times, keep the best")
    args = parser.parse_args()
    machine.print_context("restore-drill")
    layout = Layout.from_env()
    cluster = load_config(layout.clusters_file).cluster("asso")
    latest = pgbackrest.latest_backup(cluster)
    if latest is None:
        raise SystemExit("no pgBackRest backup in the sandbox: run the pgbackrest_backup DAG first")
    label = latest["label"]
    size = (latest.get("info") or {}).get("size") or 0
    raws, drills, starts = [], [], []
    for _ in range(args.repeat):
        raws.append(raw_restore(cluster, label, layout.staging_root / "bench_raw"))
        restored, startup = drill(cluster, label)
        drills.append(restored)
        starts.append(startup)
    raw, restored, startup = min(raws), min(drills), min(starts)
    print(f"backup {label} ({size / 1e6:.0f} MB), best of {args.repeat}")
    print(f"raw pgbackrest restore : {raw:7.2f} s")
    print(f"drill before start     : {restored:7.2f} s  ratio {restored / raw:.2f}x (target <= 1.20x)")
    print(f"drill start + recovery : {startup:7.2f} s  (on top of the target)")
    return 0 if restored / raw <= 1.2 else 1


if __name__ == "__main__":
    if os.geteuid() != 0:
        raise SystemExit("run as root (the restores run as the postgres user through runuser)")
    code = main()
    machine.print_context("restore-drill")
    sys.exit(code)
