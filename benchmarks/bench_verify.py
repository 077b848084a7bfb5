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

    .venv/bin/python benchmarks/bench_verify.py [--scale 68] [--kept 2,8,16] [--rounds 2] [--parts bac]

Use a sandbox of its own: SANDBOX_DIR=/var/tmp/pg-backups-bench-verify SANDBOX_PORT_BASE=30400.
It adds a `bench` database; (b) takes full backups up to the largest count and expires the
repository back to 2 full backups at the end (moto keeps every object in memory). `--parts a`
alone drills the newest backup again, more rounds for steadier medians.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
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


def growth(L, cluster, env, counts: list[int]) -> list[dict]:
    """(b): the backup DAG's run with each count of backups kept, and the whole verify at that count."""
    airflow = Path(sys.executable).parent / "airflow"
    backup_dag = cluster.dag_id("pgbackrest")
    runuser = ["runuser", "-u", cluster.os_user, "--"]
    keep = f"--repo1-retention-full={counts[-1] + 2}"  # every backup taken here stays until the end
    # One full backup to start from (the one just taken: nothing depends on an older one).
    pgbackrest.run(cluster, "expire", "--repo1-retention-full-type=count", "--repo1-retention-full=1")
    print("\n== (b) the backup DAG with N backups kept ==", flush=True)
    print(f"{'kept':>4} {'DAG s (after)':>14} {'whole verify s':>15} {'before s':>9}", flush=True)
    rows = []
    for count in counts:
        while len(kept(cluster)) < count - 1:
            sb.sh(sb.PG_BIN / "pgbench", "-n", "-t", "2000", "-h", L.run_dir, "-p", L.pg_port, "bench",
                  user="postgres")
            timed([*runuser, *pgbackrest.command(cluster, "backup", "--type=full", keep)])
        timed([airflow, "dags", "test", backup_dag, "--conf", '{"backup_type": "full"}'], env)
        after = dag_run_seconds(L, backup_dag)
        whole, _ = timed([*runuser, *pgbackrest.command(cluster, "verify")])
        rows.append({"kept": len(kept(cluster)), "dag_after_seconds": round(after, 1),
                     "whole_verify_seconds": round(whole, 1), "dag_before_seconds": round(after + whole, 1)})
        print(f"{rows[-1]['kept']:4} {after:14.1f} {whole:15.1f} {after + whole:9.1f}", flush=True)
    return rows


def drill_against_raw(L, cluster, rounds: int) -> list[dict]:
    """(a): the newest backup, drilled and raw-restored in turn (alternated: drift hits both)."""
    print("\n== (a) the drill against a raw restore + start of the same backup ==", flush=True)
    label = kept(cluster)[-1]["label"]
    cli = [sys.executable, "-m", "pg_backups.cli", "verify-backup", "--cluster", cluster.name]
    # The checks' database, as the DAG's staging connection has it.
    checks_db = f"postgresql://postgres@127.0.0.1:{L.staging_port}/{sb.APP_DB}"
    pairs = []
    for n in range(rounds):
        took = {}
        for what in (("raw", "drill") if n % 2 == 0 else ("drill", "raw")):
            if what == "raw":
                took["raw"] = raw_restore_and_start(L, cluster, label)
            else:
                took["drill"], proc = timed(cli, {"VERIFY_TOOL": "pgbackrest", "VERIFY_LABEL": label,
                                                  "STAGING_CONNECTION_URI": checks_db})
                took["rto"] = json.loads(proc.stdout)["line"]["rto_seconds"]
        pairs.append(took)
        print(f"backup {label}: raw restore + start {took['raw']:.1f} s, drill {took['drill']:.1f} s "
              f"(its RTO {took['rto']:.1f} s)", flush=True)
    return pairs


def publish_to_drill(L, cluster) -> float:
    """(c): on the scheduler, a scheduled backup's publish_backup end to its drill run's start."""
    print("\n== (c) on the scheduler: publish_backup's end to the drill run's start ==", flush=True)
    sb.main(["airflow-up"])
    client = airflow_api.Client(L)
    backup_dag, drill_dag = cluster.dag_id("pgbackrest"), cluster.dag_id("verify_backup")
    client.wait_parsed(backup_dag, drill_dag)

    def idle() -> bool:
        return all(r["state"] not in ("queued", "running") for r in client.runs(drill_dag))

    def drill_run(label: str):
        for run in client.runs(drill_dag, "asset_triggered"):
            try:
                chosen = client.xcom(drill_dag, run["dag_run_id"], "choose_backup")
            except Exception:  # noqa: BLE001 - not chosen yet (the API answers 404)
                continue
            if chosen and chosen["record"]["label"] == label:
                return run
        return None

    before = {r["dag_run_id"] for r in client.runs(backup_dag)}
    try:
        # First the drills of the backups published while the drill DAG was paused, so that the
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
        run = airflow_api.wait_for(lambda: drill_run(label), 1800, every=2, what=f"the drill of {label}")
        client.wait_run(drill_dag, run["dag_run_id"], 1800)
        started = client.run(drill_dag, run["dag_run_id"])["start_date"]
    finally:
        client.unpause(backup_dag, paused=True)
        client.unpause(drill_dag, paused=True)
    delay = (datetime.fromisoformat(started) - datetime.fromisoformat(published["end_date"])).total_seconds()
    print(f"backup {label}: publish_backup ended {published['end_date']}, its drill started {started}: "
          f"{delay:.1f} s (goal < 300 s)", flush=True)
    return delay


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", type=int, default=68, help="pgbench scale (68 is about 1 GB)")
    parser.add_argument("--kept", default="2,8,16", help="the backup counts at which (b) is measured")
    parser.add_argument("--rounds", type=int, default=2, help="(a): drill/raw pairs, alternated")
    parser.add_argument("--parts", default="bac", help="which measures, in this order (default bac: (b) first, "
                                                        "its backups are the ones (a) restores)")
    args = parser.parse_args()
    machine.print_context(SECTION)
    L, env = sb.up_for_scripts()
    cluster = load_config(L.clusters_file).cluster(sb.STANZA)
    airflow = Path(sys.executable).parent / "airflow"
    if not kept(cluster):
        timed([airflow, "dags", "test", cluster.dag_id("s3_bucket")], env)  # the bucket
        timed([airflow, "dags", "test", cluster.dag_id("pgbackrest"), "--conf", '{"backup_type": "full"}'],
              env)  # the stanza and a first backup
    sb.ensure_pgbench(L, args.scale)
    size = sb.psql(L, "SELECT pg_size_pretty(sum(pg_database_size(datname))) FROM pg_database", db="postgres")
    print(f"databases: {size}", flush=True)
    out: dict = {}
    for part in args.parts:
        if part == "b":
            out["growth"] = growth(L, cluster, env, sorted(int(n) for n in args.kept.split(",")))
        elif part == "a":
            out["pairs"] = drill_against_raw(L, cluster, args.rounds)
        elif part == "c":
            out["publish_to_drill_seconds"] = publish_to_drill(L, cluster)
    print()
    if "pairs" in out:
        pairs = out["pairs"]
        raw, drill = statistics.median(p["raw"] for p in pairs), statistics.median(p["drill"] for p in pairs)
        rto = statistics.median(p["rto"] for p in pairs)
        print(f"(a) medians of {len(pairs)}: drill {drill:.1f} s / raw restore + start {raw:.1f} s = {drill / raw:.2f}x "
              f"(goal <= 1.2x); the drill's RTO (its restore + start + recovery) {rto:.1f} s = {rto / raw:.2f}x raw")
        out.update(drill_vs_raw=drill / raw, rto_vs_raw=rto / raw)
    if "growth" in out:
        first, last = out["growth"][0], out["growth"][-1]
        print(f"(b) from {first['kept']} to {last['kept']} backups kept: the DAG after "
              f"{last['dag_after_seconds'] / first['dag_after_seconds']:.2f}x (goal: flat), before "
              f"{last['dag_before_seconds'] / first['dag_before_seconds']:.2f}x")
    if "publish_to_drill_seconds" in out:
        print(f"(c) backup published to drill started: {out['publish_to_drill_seconds']:.1f} s (goal < 300 s)")
    if "b" in args.parts:  # back to a small repository (moto keeps every object in memory)
        pgbackrest.run(cluster, "expire", "--repo1-retention-full-type=count", "--repo1-retention-full=2")
    print(json.dumps(out))
    machine.print_context(SECTION)


if __name__ == "__main__":
    main()
