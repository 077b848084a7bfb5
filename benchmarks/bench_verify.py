"""What proving a backup costs as the repository grows, in one run, on the local sandbox:

after each of N full backups of a pgbench database (rows changed between them), the two ways of
proving it side by side, alternated so that drift on a shared machine hits both alike:

1. the whole-repository `pgbackrest verify` (what the backup DAG used to run after every backup;
   now on its own weekly schedule): reads every backup and segment the retention keeps;
2. the verification drill of that one backup (`python -m pg_backups.cli verify-backup`, the code
   the cluster's verification DAG runs): restore onto the disposable target, start, recover,
   the checks, teardown; its RTO is read from the verification line.

The claim measured: the drill's time does not grow with the number of backups kept, the whole
verify's does (ratio of the last round to the first, for each).

    .venv/bin/python benchmarks/bench_verify.py [--scale 20] [--backups 6]

It uses the demo sandbox (SANDBOX_DIR, SANDBOX_PORT_BASE as for bin/demo; a quiet one of its own is
better: SANDBOX_DIR=/var/tmp/pg-backups-bench-verify SANDBOX_PORT_BASE=30400), adds a `bench`
database to it, and leaves the repository at its configured retention.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import machine  # benchmarks/machine.py: the script's folder is first on sys.path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "sandbox"))

import sandbox as sb  # noqa: E402
from pg_backups import pgbackrest  # noqa: E402
from pg_backups.config import load_config  # noqa: E402

SECTION = "whole-repository-verify-against-the-per-backup-drill"


def timed(argv, env=None) -> tuple[float, subprocess.CompletedProcess]:
    started = time.monotonic()
    proc = subprocess.run(argv, env={**os.environ, **(env or {})}, text=True, capture_output=True)
    wall = time.monotonic() - started
    if proc.returncode != 0:
        raise SystemExit(f"{argv} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return wall, proc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", type=int, default=20, help="pgbench scale (20 is about 300 MB)")
    parser.add_argument("--backups", type=int, default=6, help="full backups taken, each proven both ways")
    args = parser.parse_args()
    machine.print_context(SECTION)
    L = sb.Layout.from_env()
    sb.main(["up"])
    env = sb.read_env_file(L.env_file)
    os.environ.update(env)
    cluster = load_config(L.clusters_file).cluster(sb.STANZA)
    airflow = Path(sys.executable).parent / "airflow"
    for dag in (cluster.dag_id("s3_bucket"), cluster.dag_id("pgbackrest")):  # the bucket and the stanza
        timed([airflow, "dags", "test", dag], env)
    if not sb.psql(L, "SELECT 1 FROM pg_database WHERE datname = 'bench'", db="postgres"):
        print(f"creating pgbench data, scale {args.scale} ...", flush=True)
        sb.psql(L, "CREATE DATABASE bench", db="postgres")
        sb.sh(sb.PG_BIN / "pgbench", "-i", "-q", "-s", args.scale, "-h", L.run_dir, "-p", L.pg_port, "bench",
              user="postgres")
    size = sb.psql(L, "SELECT pg_size_pretty(sum(pg_database_size(datname))) FROM pg_database", db="postgres")
    print(f"databases: {size}", flush=True)

    runuser = ["runuser", "-u", cluster.os_user, "--"]
    # Start from one backup, and keep every one this run takes (the expire after each backup would
    # otherwise hold the repository at the configured retention).
    keep = f"--repo1-retention-full={args.backups + 1}"
    pgbackrest.run(cluster, "expire", "--repo1-retention-full-type=count", "--repo1-retention-full=1")
    cli = [sys.executable, "-m", "pg_backups.cli"]
    rounds = []
    print(f"\n{'backups':>7} {'backup s':>9} {'verify s':>9} {'drill s':>8} {'RTO s':>6}", flush=True)
    for n in range(args.backups):
        sb.sh(sb.PG_BIN / "pgbench", "-n", "-t", "2000", "-h", L.run_dir, "-p", L.pg_port, "bench", user="postgres")
        backup, _ = timed([*runuser, *pgbackrest.command(cluster, "backup", "--type=full", keep)])
        label = pgbackrest.info(cluster)["backup"][-1]["label"]
        kept = len(pgbackrest.info(cluster)["backup"])
        # Alternate which goes first, so that a page cache warmed by one does not favour the other.
        order = ("verify", "drill") if n % 2 == 0 else ("drill", "verify")
        took = {}
        for what in order:
            if what == "verify":
                took["verify"], _ = timed([*runuser, *pgbackrest.command(cluster, "verify")])
            else:
                took["drill"], proc = timed([*cli, "verify-backup", "--cluster", cluster.name],
                                            {"VERIFY_TOOL": "pgbackrest", "VERIFY_LABEL": label})
                line = json.loads(proc.stdout)["line"]
                took["rto"] = line["rto_seconds"]
        rounds.append({"backups_kept": kept, "label": label, "backup_seconds": round(backup, 1),
                       "verify_seconds": round(took["verify"], 1), "drill_seconds": round(took["drill"], 1),
                       "rto_seconds": took["rto"]})
        print(f"{kept:7} {backup:9.1f} {took['verify']:9.1f} {took['drill']:8.1f} {took['rto']:6.1f}", flush=True)
    first, last = rounds[0], rounds[-1]
    verify_growth = last["verify_seconds"] / first["verify_seconds"]
    drill_growth = last["drill_seconds"] / first["drill_seconds"]
    print(f"\nfrom {first['backups_kept']} to {last['backups_kept']} backups kept: whole verify {verify_growth:.2f}x, "
          f"per-backup drill {drill_growth:.2f}x (claim: the drill stays near 1x)")
    pgbackrest.run(cluster, "expire")  # back to the configured retention
    print(json.dumps({"rounds": rounds, "verify_growth": verify_growth, "drill_growth": drill_growth}))
    machine.print_context(SECTION)


if __name__ == "__main__":
    main()
