"""What proving each backup costs, in one run, on the local sandbox (pgBackRest, a pgbench database):

(a) the verification drill of a backup (`python -m pg_backups.cli verify-backup`, the code the
    cluster's verification DAG runs: plan, restore onto the disposable target, start, recover,
    the checks, evidence, teardown) against a raw `pgbackrest restore --set` of the same backup
    into a scratch directory plus `pg_ctl start` until it accepts writes. Goal: <= 1.2x.
(b) the backup DAG's duration (`airflow dags test`, the run's start to end) with 2, 8 and 16
    backups kept: after this change (the DAG as it is: no whole-repository verify; `verify --set`
    of that backup only on pgBackRest 2.55+) and before it (the same run plus the whole-repository
    `pgbackrest verify` it used to run, timed right after at the same count). Goal: flat after.
(c) on the sandbox's scheduler, the time from the end of a backup run's `publish_backup` to the
    start of the drill run its asset event creates. Goal: < 5 min.

    .venv/bin/python benchmarks/bench_verify.py [--scale 68] [--kept 2,8,16] [--rounds 2]

Use a sandbox of its own: SANDBOX_DIR=/var/tmp/pg-backups-bench-verify SANDBOX_PORT_BASE=30400.
It adds a `bench` database, takes full backups up to the largest count, and expires the
repository back to 2 full backups at the end (moto keeps every object in memory).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import machine  # benchmarks/machine.py: the script's folder is first on sys.path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "sandbox"))

import airflow_api  # noqa: E402
import sandbox as sb  # noqa: E402
from pg_backups import pgbackrest  # noqa: E402
from pg_backups.config import load_config  # noqa: E402

SECTION = "verification-drills"
RAW_PORT_OFFSET = 25  # the raw restore's server: a port of the sandbox's range that nothing else uses


def timed(argv, env=None) -> tuple[float, subprocess.CompletedProcess]:
    started = time.monotonic()
    proc = subprocess.run(argv, env={**os.environ, **(env or {})}, text=True, capture_output=True)
    wall = time.monotonic() - started
    if proc.returncode != 0:
        raise SystemExit(f"{argv} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return wall, proc


def raw_restore_and_start(L, cluster, label: str) -> float:
    """pgbackrest restore --set + pg_ctl start, until the copy is out of recovery: the floor."""
    scratch = L.root / "bench-raw-restore"
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(mode=0o700)
    shutil.chown(scratch, cluster.os_user, cluster.os_user)
    port = L.port_base + RAW_PORT_OFFSET
    started = time.monotonic()
    pgbackrest.restore(cluster, str(scratch), set_label=label, copy="bench-raw")
    sb.sh(sb.PG_BIN / "pg_ctl", "-D", scratch, "-l", scratch / "startup.log", "-w", "-t", "600",
          "-o", f"-p {port} -k {L.run_dir} -c archive_mode=off", "start", user=cluster.os_user)
    while sb.psql(L, "SELECT pg_is_in_recovery()", db="postgres", port=port) != "f":
        time.sleep(0.2)
    wall = time.monotonic() - started
    sb.sh(sb.PG_BIN / "pg_ctl", "-D", scratch, "-m", "immediate", "-w", "stop", user=cluster.os_user)
    shutil.rmtree(scratch, ignore_errors=True)
    return wall


def dag_run_seconds(L, dag_id: str) -> float:
    with sqlite3.connect(L.airflow_home / "airflow.db") as db:
        start, end = db.execute("SELECT start_date, end_date FROM dag_run WHERE dag_id = ? ORDER BY id DESC LIMIT 1",
                                (dag_id,)).fetchone()
    return (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()


def kept(cluster) -> list[dict]:
    return [b for b in pgbackrest.info(cluster).get("backup", []) if not b.get("error")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", type=int, default=68, help="pgbench scale (68 is about 1 GB)")
    parser.add_argument("--kept", default="2,8,16", help="the backup counts at which (b) is measured")
    parser.add_argument("--rounds", type=int, default=2, help="(a): drill/raw pairs, alternated")
    args = parser.parse_args()
    counts = sorted(int(n) for n in args.kept.split(","))
    machine.print_context(SECTION)
    L = sb.Layout.from_env()
    sb.main(["up"])
    env = sb.read_env_file(L.env_file)
    os.environ.update(env)
    cluster = load_config(L.clusters_file).cluster(sb.STANZA)
    airflow = Path(sys.executable).parent / "airflow"
    backup_dag = cluster.dag_id("pgbackrest")
    timed([airflow, "dags", "test", cluster.dag_id("s3_bucket")], env)  # the bucket
    timed([airflow, "dags", "test", backup_dag, "--conf", '{"backup_type": "full"}'], env)  # the stanza
    if not sb.psql(L, "SELECT 1 FROM pg_database WHERE datname = 'bench'", db="postgres"):
        print(f"creating pgbench data, scale {args.scale} ...", flush=True)
        sb.psql(L, "CREATE DATABASE bench", db="postgres")
        sb.sh(sb.PG_BIN / "pgbench", "-i", "-q", "-s", args.scale, "-h", L.run_dir, "-p", L.pg_port, "bench",
              user="postgres")
    size = sb.psql(L, "SELECT pg_size_pretty(sum(pg_database_size(datname))) FROM pg_database", db="postgres")
    print(f"databases: {size}", flush=True)
    runuser = ["runuser", "-u", cluster.os_user, "--"]
    # Every backup this run takes is kept until the end (the configured retention is by time).
    keep = f"--repo1-retention-full={counts[-1] + 2}"
    # One full backup to start from (the one just taken: nothing depends on an older one).
    pgbackrest.run(cluster, "expire", "--repo1-retention-full-type=count", "--repo1-retention-full=1")

    print("\n== (b) the backup DAG with N backups kept ==", flush=True)
    print(f"{'kept':>4} {'DAG s (after)':>14} {'whole verify s':>15} {'before s':>9}", flush=True)
    growth = []
    for count in counts:
        while len(kept(cluster)) < count - 1:
            sb.sh(sb.PG_BIN / "pgbench", "-n", "-t", "2000", "-h", L.run_dir, "-p", L.pg_port, "bench",
                  user="postgres")
            timed([*runuser, *pgbackrest.command(cluster, "backup", "--type=full", keep)])
        timed([airflow, "dags", "test", backup_dag, "--conf", '{"backup_type": "full"}'], env)
        after = dag_run_seconds(L, backup_dag)
        whole, _ = timed([*runuser, *pgbackrest.command(cluster, "verify")])
        growth.append({"kept": len(kept(cluster)), "dag_after_seconds": round(after, 1),
                       "whole_verify_seconds": round(whole, 1), "dag_before_seconds": round(after + whole, 1)})
        row = growth[-1]
        print(f"{row['kept']:4} {after:14.1f} {whole:15.1f} {after + whole:9.1f}", flush=True)

    print("\n== (a) the drill against a raw restore + start of the same backup ==", flush=True)
    label = kept(cluster)[-1]["label"]
    cli = [sys.executable, "-m", "pg_backups.cli", "verify-backup", "--cluster", cluster.name]
    pairs = []
    for n in range(args.rounds):
        took = {}
        for what in (("raw", "drill") if n % 2 == 0 else ("drill", "raw")):  # alternated: drift hits both
            if what == "raw":
                took["raw"] = raw_restore_and_start(L, cluster, label)
            else:
                took["drill"], proc = timed(cli, {"VERIFY_TOOL": "pgbackrest", "VERIFY_LABEL": label,
                                                  # the checks' database, as the DAG's staging connection has it
                                                  "STAGING_CONNECTION_URI": f"postgresql://postgres@127.0.0.1:"
                                                                            f"{L.staging_port}/{sb.APP_DB}"})
                took["rto"] = json.loads(proc.stdout)["line"]["rto_seconds"]
        pairs.append(took)
        print(f"backup {label}: raw restore + start {took['raw']:.1f} s, drill {took['drill']:.1f} s "
              f"(its RTO {took['rto']:.1f} s)", flush=True)
    raw = min(p["raw"] for p in pairs)
    drill = min(p["drill"] for p in pairs)

    print("\n== (c) on the scheduler: publish_backup's end to the drill run's start ==", flush=True)
    sb.main(["airflow-up"])
    client = airflow_api.Client(L)
    drill_dag = cluster.dag_id("verify_backup")
    client.wait_parsed(backup_dag, drill_dag)

    def idle() -> bool:
        return all(r["state"] not in ("queued", "running") for r in client.runs(drill_dag))

    before = {r["dag_run_id"] for r in client.runs(backup_dag)}
    try:
        # First the drills of the backups (b) published while the drill DAG was paused, so that the
        # one measured does not queue behind them (one drill run at a time).
        client.unpause(drill_dag)
        time.sleep(15)
        airflow_api.wait_for(idle, 1800, every=3, what="the earlier backups' drills to end")
        client.unpause(backup_dag)  # starts a run for the schedule's latest slot: the backup measured
        run_id = airflow_api.wait_for(lambda: next((r["dag_run_id"] for r in client.runs(backup_dag)
                                                    if r["dag_run_id"] not in before), None), 300, every=2,
                                      what="the backup run of the latest slot")
        client.wait_run(backup_dag, run_id, 1800)
        published = client.tasks(backup_dag, run_id)["publish_backup"]
        label = client.xcom(backup_dag, run_id, "publish_backup")["label"]

        def drill_run():
            for run in client.runs(drill_dag, "asset_triggered"):
                try:
                    chosen = client.xcom(drill_dag, run["dag_run_id"], "choose_backup")
                except Exception:  # noqa: BLE001 - not chosen yet (the API answers 404)
                    continue
                if chosen and chosen["record"]["label"] == label:
                    return run
            return None

        run = airflow_api.wait_for(drill_run, 1800, every=2, what=f"the drill of {label}")
        client.wait_run(drill_dag, run["dag_run_id"], 1800)
        started = client.run(drill_dag, run["dag_run_id"])["start_date"]
        delay = (datetime.fromisoformat(started) - datetime.fromisoformat(published["end_date"])).total_seconds()
    finally:
        client.unpause(backup_dag, paused=True)
        client.unpause(drill_dag, paused=True)
    print(f"backup {label}: publish_backup ended {published['end_date']}, its drill started {started}: "
          f"{delay:.1f} s (goal < 300 s)", flush=True)

    pgbackrest.run(cluster, "expire", "--repo1-retention-full-type=count", "--repo1-retention-full=2")
    first, last = growth[0], growth[-1]
    print(f"\n(a) drill / raw restore + start: {drill / raw:.2f}x (goal <= 1.2x; best of {args.rounds} each)")
    print(f"(b) from {first['kept']} to {last['kept']} backups kept: the DAG after {last['dag_after_seconds'] / first['dag_after_seconds']:.2f}x "
          f"(goal: flat), before {last['dag_before_seconds'] / first['dag_before_seconds']:.2f}x")
    print(f"(c) backup published to drill started: {delay:.1f} s (goal < 300 s)")
    print(json.dumps({"drill_vs_raw": drill / raw, "pairs": pairs, "growth": growth, "publish_to_drill_seconds": delay}))
    machine.print_context(SECTION)


if __name__ == "__main__":
    main()
