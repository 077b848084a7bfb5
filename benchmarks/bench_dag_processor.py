"""The dag-processor's CPU with a fleet configured, before and after the deployment's parse settings,
and how long a change of the cluster file takes to reach the metadata database.

A real ``airflow dag-processor`` (Airflow 3.3, SQLite metadata database of its own, the project's
DAG folder) runs for ``--minutes`` with ``--clusters`` clusters:

- ``before``: Airflow's defaults (``min_file_process_interval`` 30 s, ...), as docker-compose.yaml had;
- ``after``: the ``AIRFLOW__DAG_PROCESSOR__*`` settings (and the import timeout) of docker-compose.yaml's Airflow services (read
  from that file: one source), plus the cluster-file watcher the compose dag-processor runs
  (``python -m pg_backups.airflow.reparse``).

CPU is read from /proc: user + system seconds of the dag-processor and every process below it
(the parsing children, live and reaped), not wall time. Reported: the first full parse, then the
steady state (from the end of the first parse to the end of the window) as a share of one core
(goal: <= 5 % of a core). Then a cluster is added to the file and the time until its DAGs are in the
metadata database is measured (goal: <= 2 minutes).

    .venv/bin/python benchmarks/bench_dag_processor.py --mode before --minutes 10 [--clusters 1000]
"""

from __future__ import annotations

import argparse
import atexit
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
from bench_dag_parse import config_for  # noqa: E402 - the same fleet as the parse benchmark
from metadata_db import KINDS, Metadata  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")
sys.path.insert(0, str(REPO / "plugins"))
from pg_backups.config import parse_config  # noqa: E402

# A fleet cluster's DAGs, as the project configures them (one per kind it has): counted, not assumed.
DAGS_PER_CLUSTER = len(parse_config(yaml.safe_load(config_for(1))).clusters[0].dag_kinds)


def compose_settings() -> dict:
    env = yaml.safe_load((REPO / "docker-compose.yaml").read_text())["x-airflow-common"]["environment"]
    return {k: str(v) for k, v in env.items() if k.startswith("AIRFLOW__DAG_PROCESSOR__") or k == "AIRFLOW__CORE__DAGBAG_IMPORT_TIMEOUT"}


def tree_cpu(root: int) -> float:
    """CPU seconds (user + system) of ``root`` and its reaped children, plus its live descendants."""
    parents, times = {}, {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        pid = int(entry)
        parents[pid] = int(fields[1])
        utime, stime, cutime, cstime = (int(x) for x in fields[11:15])
        times[pid] = (utime + stime, cutime + cstime)
    total, todo = 0.0, [root]
    while todo:
        pid = todo.pop()
        own, reaped = times.get(pid, (0, 0))
        total += own + reaped  # a reaped child's time is in its parent's cutime; a live one below
        todo += [child for child, parent in parents.items() if parent == pid]
    return total / TICK


def dag_count(db: Metadata, like: str = "%") -> int:
    try:
        return db.rows("select count(*) from dag where not is_stale and dag_id like ?", (like,))[0][0]
    except db.errors():
        return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", choices=("before", "after"), required=True)
    parser.add_argument("--clusters", type=int, default=1000)
    parser.add_argument("--minutes", type=float, default=30)
    parser.add_argument("--home", default=f"/var/tmp/bench-dag-processor-{os.getuid()}")
    parser.add_argument("--metadata", choices=KINDS, default="sqlite",
                        help="Airflow's metadata database: sqlite (the default, as the sandbox) or postgres "
                             "(as docker-compose.yaml; a cluster of the benchmark's own on 127.0.0.1:--port)")
    parser.add_argument("--port", type=int, default=28180, help="the PostgreSQL metadata database's port")
    args = parser.parse_args()
    # A kill runs the cleanup below too (its servers run in sessions of their own: they would outlive it).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    home = Path(args.home) / args.mode
    shutil.rmtree(home, ignore_errors=True)
    home.mkdir(parents=True)
    config = home / "clusters.yaml"
    config.write_text(config_for(args.clusters))
    db = Metadata(args.metadata, home, args.port)
    venv_bin = Path(sys.executable).parent
    env = {**os.environ, "AIRFLOW_HOME": str(home), "PG_BACKUPS_CONFIG": str(config),
           "PYTHONPATH": str(REPO / "plugins"), "PATH": f"{venv_bin}:{os.environ['PATH']}",
           "AIRFLOW__CORE__LOAD_EXAMPLES": "False", "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
           "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": db.url}
    settings = compose_settings() if args.mode == "after" else {}
    env.update(settings)
    db.start()
    atexit.register(db.stop)
    subprocess.run([venv_bin / "airflow", "db", "migrate"], env=env, check=True, capture_output=True)

    print(f"mode {args.mode}: {args.clusters} clusters, {args.minutes:g} min, metadata database {db.kind}, settings "
          f"{settings or 'Airflow defaults'}")
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())} (2 cores, shared)")
    log = open(home / "dag-processor.log", "w")
    proc = subprocess.Popen([venv_bin / "airflow", "dag-processor"], env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    watcher = None
    if args.mode == "after":
        watcher = subprocess.Popen([sys.executable, "-m", "pg_backups.airflow.reparse"], env=env,
                                   stdout=open(home / "watcher.log", "w"), stderr=subprocess.STDOUT,
                                   start_new_session=True)
    started = time.monotonic()
    expected = args.clusters * DAGS_PER_CLUSTER
    first_parse = None
    try:
        while time.monotonic() - started < args.minutes * 60:
            time.sleep(5)
            if first_parse is None and dag_count(db) >= expected:
                first_parse = (time.monotonic() - started, tree_cpu(proc.pid))
                print(f"first full parse: {expected} DAGs in the database after {first_parse[0]:.0f} s wall, "
                      f"{first_parse[1]:.1f} CPU s", flush=True)
            if proc.poll() is not None:
                raise SystemExit(f"the dag-processor exited ({proc.returncode}); see {home / 'dag-processor.log'}")
        elapsed, cpu = time.monotonic() - started, tree_cpu(proc.pid)
        watcher_cpu = tree_cpu(watcher.pid) if watcher else 0.0
        load = os.getloadavg()
        if first_parse is None:
            print(f"first full parse NOT finished in the window: {dag_count(db)} of {expected} DAGs")
            first_parse = (0.0, 0.0)
        steady_wall = elapsed - first_parse[0]
        steady_cpu = cpu - first_parse[1]
        print(f"whole window: {cpu:.1f} CPU s in {elapsed:.0f} s = {100 * cpu / elapsed:.1f} % of a core")
        print(f"steady state (after the first parse): {steady_cpu:.1f} CPU s in {steady_wall:.0f} s = "
              f"{100 * steady_cpu / max(steady_wall, 1):.1f} % of a core (goal <= 5 %)"
              + (f"; watcher {watcher_cpu:.1f} CPU s" if watcher else ""))
        print(f"load average at end of window: {' '.join(f'{x:.2f}' for x in load)}")

        # A change of the cluster file: one more cluster; when are its DAGs in the database?
        name = f"cluster{args.clusters:04d}"
        config.write_text(config_for(args.clusters + 1))
        changed = time.monotonic()
        while dag_count(db, f"%_{name}") < DAGS_PER_CLUSTER:
            if time.monotonic() - changed > 900:
                print("cluster-file change: NOT picked up within 15 minutes")
                break
            time.sleep(2)
        else:
            print(f"cluster-file change (cluster {name} added): its {DAGS_PER_CLUSTER} DAGs in the database "
                  f"{time.monotonic() - changed:.0f} s later (goal <= 120 s)")
    finally:
        for child in (watcher, proc):
            if child and child.poll() is None:
                os.killpg(child.pid, signal.SIGTERM)
                try:
                    child.wait(60)
                except subprocess.TimeoutExpired:
                    os.killpg(child.pid, signal.SIGKILL)
    print(f"load average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
