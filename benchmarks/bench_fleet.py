"""A fleet rehearsal (issue 24): one night's pgBackRest backup DAG runs of N clusters on a real
Airflow scheduler, with the backup tools replaced by STAND-INS.

What is real: Airflow 3 (scheduler with the LocalExecutor, dag-processor, triggerer, API server,
started by sandbox/airflow_home.py's ``start_airflow``, with docker-compose.yaml's dag-processor
settings), its metadata database (``--metadata postgres``, the default and what docker-compose.yaml
runs: a PostgreSQL 15 cluster of the benchmark's own on 127.0.0.1; or ``sqlite``, as the sandbox),
the project's DAG folder and task code, an S3 endpoint (moto, plain HTTP on 127.0.0.1) for the
preflight's ``head_bucket``. What is NOT: ``pgbackrest``, ``psql`` and ``postgres --version`` (and ``wal-g``,
written but not called: the clusters run pgBackRest only) are small shell scripts this benchmark
writes into ``<dir>/stand-ins``, first on the scheduler's PATH and the clusters' ``bin_directory``.
They answer what the tasks parse (``pgbackrest info --output=json`` with the backup just "taken",
``SHOW server_version_num``, ``pg_stat_archiver``'s row) at once: the figures are Airflow's cost
per task, not a backup's.

The cluster file has N clusters (``--clusters``, default 1,000); each pgBackRest DAG is triggered
through the REST API (as sandbox/airflow_api.py's Client) with the logical date of its current
nightly slot (the one the scheduler would create on unpausing it, so it does not create a second),
then unpaused. Reported: the dag-processor's first parse, the time until every run was started and
until every run ended, task instances per minute, and what saturated.

    .venv/bin/python benchmarks/bench_fleet.py --clusters 50 [--metadata sqlite] [--dir ...] [--port-base 28150]
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import machine  # benchmarks/machine.py: the script's folder is first on sys.path
from metadata_db import KINDS, Metadata

REPO = Path(__file__).resolve().parents[1]
RECORD, SECTION = "docs/benchmarks-fleet.md", "fleet-rehearsal-benchmarksbench_fleetpy"
TASKS_PER_RUN = 5  # preflight, backup, expire, verify, publish_backup

# The stand-ins. pgbackrest keeps each stanza's backups in a JSON file of its own ({state}).
PGBACKREST = r"""#!/usr/bin/env python3
# STAND-IN for pgbackrest written by benchmarks/bench_fleet.py: no database is backed up.
import json, sys, time
from pathlib import Path
args = sys.argv[1:]
if args == ["version"]:
    print("pgBackRest 2.45 (bench_fleet stand-in)"); sys.exit(0)
opts = dict(a[2:].split("=", 1) for a in args if a.startswith("--") and "=" in a)
command = args[-1]
stanza = opts.get("stanza", "none")
state = Path("{state}") / f"{{stanza}}.json"
backups = json.loads(state.read_text()) if state.exists() else []
if command == "info":
    print(json.dumps([{{"name": stanza, "status": {{"code": 0, "message": "ok"}}, "backup": backups}}]))
elif command == "backup":
    now = int(time.time())
    kind = {{"full": "F", "diff": "D", "incr": "I"}}[opts.get("type", "full")]
    notes = dict(a.split("=", 1)[1].split("=", 1) for a in args if a.startswith("--annotation="))
    backups.append({{"label": time.strftime("%Y%m%d-%H%M%S", time.gmtime(now)) + kind, "type": opts.get("type", "full"),
                    "timestamp": {{"start": now, "stop": now + 1}}, "info": {{"size": 1 << 30, "delta": 1 << 20,
                    "repository": {{"delta": 1 << 19}}}}, "archive": {{"start": "000000010000000000000010",
                    "stop": "000000010000000000000011"}}, "annotation": notes}})
    state.write_text(json.dumps(backups))
elif command == "verify":  # the project judges verify by this line too (pgbackrest#2502)
    print("P00   INFO: verify command end: completed successfully")
# check, stanza-create, expire: nothing to do, exit 0 with no error printed.
"""
PSQL = r"""#!/bin/sh
# STAND-IN for psql written by benchmarks/bench_fleet.py: answers the queries the backup tasks read.
for sql; do :; done
case "$sql" in
  "SHOW server_version_num") echo 150010 ;;
  "SELECT 1") echo 1 ;;
  *pg_stat_archiver*) echo "100|000000010000000000000010|$(date -u '+%Y-%m-%d %H:%M:%S+00')|0||||0||on" ;;
  *) : ;;
esac
"""
POSTGRES = """#!/bin/sh
# STAND-IN for postgres written by benchmarks/bench_fleet.py (only --version is asked).
echo "postgres (PostgreSQL) 15.10"
"""
WALG = """#!/bin/sh
# STAND-IN for wal-g written by benchmarks/bench_fleet.py (the rehearsal's clusters run pgBackRest only).
echo "wal-g stand-in: not used by this rehearsal" >&2
exit 1
"""


def cluster_file(n: int, root: Path, stand_ins: Path) -> str:
    lines = [f"""# Written by benchmarks/bench_fleet.py: {n} clusters, the tools are stand-ins ({stand_ins}).
defaults:
  tools: [pgbackrest]
  bin_directory: {stand_ins}
  lock_directory: {root / "locks"}
  retries: 0
  metrics:
    textfile_directory: {root / "metrics"}
  s3:
    deny_insecure_transport: false
  pgbackrest:
    config_path: {root / "etc" / "pgbackrest" / "{cluster}" / "pgbackrest.conf"}
    spool_path: {root / "pgbackrest" / "spool"}
    log_path: {root / "pgbackrest" / "log"}
    lock_path: {root / "pgbackrest" / "lock"}
  walg:
    config_path: {root / "etc" / "wal-g" / "{cluster}.json"}
  restore_test:
    staging_root: {root / "staging"}
clusters:"""]
    for i in range(n):
        name = f"cluster{i:04d}"
        lines += [f"  - name: {name}", f"    host: db{i:04d}.internal",
                  f"    data_directory: {root / 'data' / name}",
                  f"    restore_test: {{staging_port: {10000 + i}, staging_data_directory: {root / 'staging' / name}}}"]
    return "\n".join(lines) + "\n"


def write_stand_ins(root: Path) -> Path:
    stand_ins, state = root / "stand-ins", root / "stand-in-state"
    for d in (stand_ins, state):
        d.mkdir(parents=True, exist_ok=True)
    for name, text in (("pgbackrest", PGBACKREST.format(state=state)), ("psql", PSQL), ("postgres", POSTGRES),
                       ("wal-g", WALG)):
        (stand_ins / name).write_text(text)
        (stand_ins / name).chmod(0o755)
    return stand_ins


def counts(db: Metadata) -> dict:
    """Task instances by state and runs of the pgBackRest DAGs, read from the metadata database."""
    try:
        tis = dict(db.rows("select coalesce(state, 'none'), count(*) from task_instance "
                           "where dag_id like 'pgbackrest%' group by 1"))
        runs = dict(db.rows("select state, count(*) from dag_run where dag_id like 'pgbackrest%' group by 1"))
        backup_dags = db.rows("select count(*) from dag where not is_stale and dag_id like 'pgbackrest%'")[0][0]
        cluster_dags = db.rows("select count(*) from dag where not is_stale and dag_id like '%cluster%'")[0][0]
        started = db.rows("select count(*) from dag_run where dag_id like 'pgbackrest%' "
                          "and start_date is not null")[0][0]
    except db.errors():
        return {"tis": {}, "runs": {}, "backup_dags": 0, "cluster_dags": 0, "started": 0}
    return {"tis": tis, "runs": runs, "backup_dags": backup_dags, "cluster_dags": cluster_dags, "started": started}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clusters", type=int, default=1000)
    parser.add_argument("--dir", default=os.environ.get("SANDBOX_DIR", f"/var/tmp/bench-fleet-{os.getuid()}"))
    parser.add_argument("--port-base", type=int, default=int(os.environ.get("SANDBOX_PORT_BASE", "28150")))
    parser.add_argument("--minutes", type=float, default=60, help="give up after this long (default 60)")
    parser.add_argument("--metadata", choices=KINDS, default="postgres",
                        help="Airflow's metadata database (default postgres, as docker-compose.yaml)")
    args = parser.parse_args()
    # A kill runs the cleanup below too (its servers run in sessions of their own: they would outlive it).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    sys.path.insert(0, str(REPO / "sandbox"))
    sys.path.insert(0, str(REPO / "plugins"))
    from bench_dag_processor import compose_settings, tree_cpu

    import sandbox
    from airflow_api import Client
    from pg_backups import times
    from pg_backups.config import load_config

    machine.print_context(SECTION, RECORD)
    L = sandbox.Layout(Path(args.dir).resolve(), args.port_base)
    shutil.rmtree(L.root, ignore_errors=True)
    for d in (L.root, L.run_dir, L.logs, L.root / "metrics", L.root / "locks"):
        d.mkdir(parents=True, exist_ok=True)
    stand_ins = write_stand_ins(L.root)
    L.clusters_file.write_text(cluster_file(args.clusters, L.root, stand_ins))
    config = load_config(L.clusters_file)
    for cluster in config.clusters:
        Path(cluster.data_directory).mkdir(parents=True)
        (Path(cluster.data_directory) / "PG_VERSION").write_text("15\n")
    print(f"[bench] {args.clusters} clusters, pgBackRest DAGs only; pgbackrest, psql, postgres and wal-g are "
          f"STAND-INS from {stand_ins} (no database is backed up: Airflow's cost per task is measured); "
          f"metadata database: {args.metadata}", flush=True)
    db = Metadata(args.metadata, L.root, L.pg_port)

    # Airflow's environment as the sandbox writes it, with S3 on moto over plain HTTP.
    creds = {"aws_access_key_id": secrets.token_hex(8), "aws_secret_access_key": secrets.token_hex(16),
             "pg_password": secrets.token_hex(8), "slack_token": secrets.token_hex(8)}
    env = sandbox.airflow_env(L, creds)
    endpoint = f"http://127.0.0.1:{L.moto_port}"
    env.update({"PG_BACKUPS_CONFIG": str(L.clusters_file), "AWS_ENDPOINT_URL": endpoint,
                "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": db.url,
                "PATH": f"{stand_ins}:{os.environ['PATH']}",
                "AIRFLOW_CONN_AWS_BACKUPS": json.dumps({
                    "conn_type": "aws", "login": creds["aws_access_key_id"], "password": creds["aws_secret_access_key"],
                    "extra": {"region_name": config.clusters[0].s3.region, "endpoint_url": endpoint}})})
    for key in ("AWS_CA_BUNDLE", "AIRFLOW_CONN_PG_ASSO", "AIRFLOW_CONN_PG_ASSO_STAGING"):
        env.pop(key, None)
    sandbox.write_env_file(L, env)
    full_env = {**os.environ, **env}
    airflow = Path(sys.executable).parent / "airflow"
    started = time.monotonic()
    try:
        db.start()
        sandbox.start_daemon("moto", [Path(sys.executable).parent / "moto_server", "-H", "127.0.0.1",
                                      "-p", str(L.moto_port)], L, L.moto_port)
        import boto3

        boto3.client("s3", endpoint_url=endpoint, region_name=config.clusters[0].s3.region,
                     aws_access_key_id=creds["aws_access_key_id"],
                     aws_secret_access_key=creds["aws_secret_access_key"]).create_bucket(
            Bucket=config.clusters[0].s3.bucket,
            CreateBucketConfiguration={"LocationConstraint": config.clusters[0].s3.region})
        subprocess.run([airflow, "db", "migrate"], env=full_env, check=True, capture_output=True)
        # One import for every pool (sandbox.setup_airflow's one `pools set` per pool is N Airflow starts).
        pools = {p.name: {"slots": p.slots, "description": p.description, "include_deferred": False}
                 for c in config.clusters for p in c.pools}
        (L.root / "pools.json").write_text(json.dumps(pools))
        subprocess.run([airflow, "pools", "import", str(L.root / "pools.json")], env=full_env, check=True,
                       capture_output=True)
        print(f"[bench] metadata database and {len(pools)} pools ready after {time.monotonic() - started:.0f} s",
              flush=True)
        run_bench(args, L, db, config, Client, times, started, compose_settings(), tree_cpu)
    finally:
        sandbox.stop_airflow(L)
        sandbox.stop_daemon("moto", L)
        db.stop()
        machine.print_context(SECTION, RECORD)


def run_bench(args, L, db: Metadata, config, Client, times, t0, parse_settings, tree_cpu) -> None:
    import sandbox

    # A fleet's dag-processor as docker-compose.yaml sets it (the sandbox's own re-parses every 10 s:
    # with 1,000 clusters that would be a parse without end beside the scheduler).
    sandbox.start_airflow(L, seconds=args.minutes * 60, settings=parse_settings)
    up = time.monotonic()
    print(f"[bench] Airflow healthy after {up - t0:.0f} s (dag-processor settings of docker-compose.yaml: "
          f"{parse_settings})", flush=True)
    client = Client(L)
    dag_ids = [c.dag_id("pgbackrest") for c in config.clusters]
    deadline = time.monotonic() + args.minutes * 60
    expected_dags = sum(len(c.dag_kinds) for c in config.clusters)
    backup_dags_at = None
    while True:
        c = counts(db)
        if backup_dags_at is None and c["backup_dags"] >= len(dag_ids):
            backup_dags_at = time.monotonic()
            print(f"[bench] first parse: every pgBackRest DAG in the database {backup_dags_at - up:.0f} s after "
                  "Airflow was healthy", flush=True)
        if c["cluster_dags"] >= expected_dags:
            break
        if time.monotonic() > deadline:
            raise SystemExit(f"[bench] first parse NOT finished in {args.minutes:g} min: {c['cluster_dags']} of "
                             f"{expected_dags} DAGs")
        time.sleep(5)
    parsed = time.monotonic()
    print(f"[bench] first parse: all {expected_dags} DAGs of the clusters in the database {parsed - up:.0f} s after "
          f"Airflow was healthy ({parsed - t0:.0f} s after the start)", flush=True)

    # Triggered after the first parse. While the scheduler or the dag-processor writes, SQLite answers
    # the API's audit-log INSERT "database is locked" (HTTP 500, nothing done): retried and counted.
    # (The scheduler itself may exit on that error: reported below, the run then ends at --minutes.)
    scheduler_pid = int((L.run_dir / "airflow-scheduler.pid").read_text())
    processor_pid = int((L.run_dir / "airflow-dag-processor.pid").read_text())
    cpu_at_trigger = own_cpu(scheduler_pid, tree_cpu), tree_cpu(processor_pid)
    trigger_start = time.monotonic()
    retries = 0
    for cluster in config.clusters:
        slot = times.last_slot(cluster.pgbackrest.schedule).isoformat()
        retries += retried(lambda: client.trigger(cluster.dag_id("pgbackrest"), slot))  # noqa: B023 - called at once
    for dag_id in dag_ids:
        retries += retried(lambda: client.unpause(dag_id))  # noqa: B023 - called at once
    triggered = time.monotonic()
    print(f"[bench] {len(dag_ids)} runs triggered (logical date: each cluster's last nightly slot) and their DAGs "
          f"unpaused through the REST API in {triggered - trigger_start:.0f} s ({retries} requests retried after "
          "HTTP 500/503: the database was locked)", flush=True)

    all_started = None
    samples = []
    total = len(dag_ids) * TASKS_PER_RUN
    while True:
        c = counts(db)
        now = time.monotonic()
        done_tis = sum(v for k, v in c["tis"].items() if k in ("success", "failed", "upstream_failed", "skipped"))
        samples.append((now - trigger_start, done_tis))
        if all_started is None and c["started"] >= len(dag_ids):
            all_started = now
            print(f"[bench] every run started {now - trigger_start:.0f} s after the first trigger", flush=True)
        ended = sum(v for k, v in c["runs"].items() if k in ("success", "failed"))
        if ended >= len(dag_ids):
            break
        if now > deadline:
            print(f"[bench] NOT finished in {args.minutes:g} min: runs {c['runs']}, tasks {c['tis']}")
            break
        dead = [n for n in sandbox.AIRFLOW_COMPONENTS if not sandbox.pid_alive(L.run_dir / f"airflow-{n}.pid")]
        if dead:
            print(f"[bench] Airflow's {', '.join(dead)} EXITED {now - trigger_start:.0f} s after the first trigger; "
                  f"its last error: {last_error(L.logs / f'airflow-{dead[0]}.log')}")
            break
        time.sleep(5)
    finished = time.monotonic()
    scheduler_cpu = [b - a for a, b in zip(cpu_at_trigger[0], own_cpu(scheduler_pid, tree_cpu), strict=True)]
    processor_cpu = tree_cpu(processor_pid) - cpu_at_trigger[1]
    c = counts(db)
    wall = finished - trigger_start
    done_tis = sum(v for k, v in c["tis"].items() if k in ("success", "failed", "upstream_failed", "skipped"))
    print(f"[bench] runs: {c['runs']}; task instances: {c['tis']}")
    if (extra := sum(c["runs"].values()) - len(dag_ids)) > 0:
        # A cluster whose spread slot of today came due during the window gets its own scheduled run.
        print(f"[bench] {extra} runs beyond the triggered ones: the scheduler's own, for the clusters whose "
              "nightly slot came due during the window (their tasks are counted with the others)")
    # Only a night that ended may be called one; a window that ended first says how far it got.
    night = "scheduled and finished" if ended >= len(dag_ids) else f"NOT finished, {done_tis} done"
    print(f"[bench] a night of {len(dag_ids)} clusters ({total} task instances): {night} "
          f"{wall:.0f} s after the first trigger = {60 * done_tis / wall:.1f} task instances per minute "
          f"(parallelism {sandbox.stack_env(L)['AIRFLOW__CORE__PARALLELISM']}, LocalExecutor, {db.kind})")
    # The steady rate: the middle of the night, once the first runs are going and before the tail.
    mid = [s for s in samples if 0.2 * total <= s[1] <= 0.8 * total]
    if len(mid) >= 2 and mid[-1][0] > mid[0][0]:
        rate = 60 * (mid[-1][1] - mid[0][1]) / (mid[-1][0] - mid[0][0])
        print(f"[bench] steady rate (20 % to 80 % of the task instances done): {rate:.1f} task instances per minute")
    else:  # the window ended first: the second half of it
        late = [s for s in samples if s[0] >= samples[-1][0] / 2]
        if len(late) >= 2 and late[-1][0] > late[0][0]:
            rate = 60 * (late[-1][1] - late[0][1]) / (late[-1][0] - late[0][0])
            print(f"[bench] steady rate (second half of the window, {late[0][0]:.0f} s to {late[-1][0]:.0f} s after "
                  f"the first trigger): {rate:.1f} task instances per minute")
    print(f"[bench] CPU from the first trigger to the end ({wall:.0f} s): the scheduler's own loop "
          f"{scheduler_cpu[0]:.0f} s = {100 * scheduler_cpu[0] / wall:.0f} % of a core; the scheduler with its "
          f"LocalExecutor workers and their tasks {scheduler_cpu[1]:.0f} s = {100 * scheduler_cpu[1] / wall:.0f} % "
          f"of a core; the dag-processor {processor_cpu:.0f} s = {100 * processor_cpu / wall:.0f} % of a core "
          f"(2 cores in all)")
    # Where it saturates: with `parallelism` slots each busy for a task's length, the executor can
    # run at most parallelism * 60 / length task instances a minute; the wait in `queued` is the rest.
    length, queued_wait, scheduled_wait = db.rows(
        f"select avg(duration), avg({db.seconds('start_date', 'queued_dttm')}), "
        f"avg({db.seconds('queued_dttm', 'scheduled_dttm')}) from task_instance "
        "where dag_id like 'pgbackrest%' and state = 'success'")[0]
    slots = int(sandbox.stack_env(L)["AIRFLOW__CORE__PARALLELISM"])
    if length:
        print(f"[bench] a task instance lasts {length:.1f} s on average (Airflow's process, the task's code, the "
              f"stand-ins); ceiling of {slots} executor slots: {60 * slots / length:.0f} per minute; average wait "
              f"scheduled -> queued {scheduled_wait:.1f} s, queued -> running {queued_wait:.1f} s")
    if c["runs"].get("failed"):
        failed = [r for r in client.runs(dag_ids[0]) if r["state"] == "failed"]
        print(f"[bench] some runs FAILED (e.g. {dag_ids[0]}: {len(failed)}); see {L.logs}")


def own_cpu(pid: int, tree_cpu) -> tuple[float, float]:
    """CPU seconds of ``pid`` alone (user + system), and of it with every process below it (0 once it exited)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0, 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK"), tree_cpu(pid)


def last_error(log: Path) -> str:
    """The last exception line of an Airflow component's log."""
    lines = [line for line in log.read_text(errors="replace").splitlines() if "Error:" in line]
    return lines[-1].strip()[:300] if lines else f"none found in {log}"


def retried(call) -> int:
    """``call()``, again after an HTTP 500/503 (SQLite was locked: the API's write was rolled back);
    returns how many attempts failed first. 409: an earlier attempt's run was created after all."""
    import urllib.error

    for attempt in range(10):
        try:
            call()
            return attempt
        except urllib.error.HTTPError as exc:
            if exc.code == 409:
                return attempt
            if exc.code not in (500, 503) or attempt == 9:
                raise
            time.sleep(1 + attempt)
    return 10


if __name__ == "__main__":
    main()
