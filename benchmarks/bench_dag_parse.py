"""DAG parse time with 1, 100 and 1,000 configured clusters, per DAG file and for the whole folder,
as the dag-processor sees it (a child process that has imported Airflow, then parses).

Targets (issue 14): the folder with 100 clusters under 1 s on a quiet 2-core machine; no DAG file
over 2 s with 100 clusters; with 1,000 clusters every file inside the dag-processor's timeout
(`dag_file_processor_timeout`, 50 s). Each figure is the median of ``--rounds`` parses. Each file
is also parsed once as Airflow's task runner does it for its first cluster's DAG (the parsing
context names that DAG): the cost a task instance pays.

    .venv/bin/python benchmarks/bench_dag_parse.py [--rounds 3] [--clusters 1,100,1000]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import machine  # benchmarks/machine.py: the script's folder is first on sys.path

REPO = Path(__file__).resolve().parents[1]
DAG_FILES = sorted(p.name for p in (REPO / "dags").glob("*.py"))
# Airflow's defaults: a file's import is stopped after dagbag_import_timeout (30 s), and the
# dag-processor kills its process after dag_file_processor_timeout (50 s).
IMPORT_TIMEOUT_SECONDS = 30
TIMEOUT_SECONDS = 50
PARSE = """
import json, os, statistics, sys, time
from airflow.dag_processing.dagbag import DagBag
folder, files, rounds = sys.argv[1], sys.argv[2].split(","), int(sys.argv[3])
# A DAG id of each file: parsed again as the task runner does for that DAG's task (its parsing context).
running = json.loads(sys.argv[4]) if len(sys.argv) > 4 else {}
DagBag(dag_folder=folder)  # warm: the modules the files import are loaded once, as in the dag-processor
out = {}
for name in ["(folder)"] + files:
    times, cpu = [], []
    for _ in range(rounds):
        started, started_cpu = time.perf_counter(), time.process_time()
        bag = DagBag(dag_folder=folder if name == "(folder)" else f"{folder}/{name}")
        times.append(time.perf_counter() - started)
        cpu.append(time.process_time() - started_cpu)
        assert not bag.import_errors, bag.import_errors
    out[name] = {"seconds": statistics.median(times), "cpu_seconds": statistics.median(cpu), "dags": len(bag.dags),
                 "tasks": sum(len(d.tasks) for d in bag.dags.values())}
    if name in running:
        os.environ["_AIRFLOW_PARSING_CONTEXT_DAG_ID"] = running[name]
        started_cpu = time.process_time()
        bag = DagBag(dag_folder=f"{folder}/{name}")
        out[name]["task_cpu_seconds"], out[name]["task_dags"] = time.process_time() - started_cpu, len(bag.dags)
        del os.environ["_AIRFLOW_PARSING_CONTEXT_DAG_ID"]
print(json.dumps(out))
"""


def config_for(n: int) -> str:
    lines = ["clusters:"]
    for i in range(n):
        lines += [f"  - name: cluster{i:04d}",
                  f"    host: db{i:04d}.internal",
                  f"    walg: {{prefix: postgres/cluster{i:04d}}}",
                  f"    restore_test: {{staging_port: {10000 + i}}}"]
    return "\n".join(lines) + "\n"


def first_dag_of_each_file() -> dict:
    """{DAG file: the DAG id of its first cluster, cluster0000}, from the project's own naming."""
    sys.path.insert(0, str(REPO / "plugins"))
    import yaml

    from pg_backups.config import parse_config

    cluster = parse_config(yaml.safe_load(config_for(1))).clusters[0]
    return {name: cluster.dag_id(kind) for name in DAG_FILES
            for kind in cluster.dag_kinds if f'dag_id=cluster.dag_id("{kind}")' in (REPO / "dags" / name).read_text()}


def measure(n: int, rounds: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "clusters.yaml"
        config.write_text(config_for(n))
        env = {**os.environ, "PG_BACKUPS_CONFIG": str(config), "PYTHONPATH": str(REPO / "plugins"),
               "AIRFLOW_HOME": tmp, "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
               "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
               # Measure past the timeouts, and compare with them in the report.
               "AIRFLOW__CORE__DAGBAG_IMPORT_TIMEOUT": "3600"}
        proc = subprocess.run([sys.executable, "-c", PARSE, str(REPO / "dags"), ",".join(DAG_FILES), str(rounds),
                               json.dumps(first_dag_of_each_file())], env=env, text=True, capture_output=True)
        if proc.returncode != 0:
            raise SystemExit(proc.stderr[-3000:])
        return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--clusters", default="1,100,1000")
    args = parser.parse_args()
    machine.print_context("dag-parse-time")
    print(f"load average at start: {os.getloadavg()[0]:.2f} (2 cores; above ~0.5 the machine is not quiet)")
    results = {}
    for n in (int(x) for x in args.clusters.split(",")):
        results[n] = measure(n, 1 if n >= 1000 else args.rounds)
        row = results[n]
        folder = row["(folder)"]
        print(f"\n{n} cluster(s): folder {folder['seconds']:.3f} s wall, {folder['cpu_seconds']:.3f} s CPU "
              f"({folder['dags']} DAGs, {folder['tasks']} tasks), {1000 * folder['cpu_seconds'] / n:.1f} ms CPU per cluster, "
              f"{1000 * folder['cpu_seconds'] / max(folder['tasks'], 1):.2f} ms CPU per task")
        for name in DAG_FILES:
            r = row[name]
            print(f"  {name:26} {r['seconds']:7.3f} s wall {r['cpu_seconds']:7.3f} s CPU  {r['dags']:5} DAGs {r['tasks']:6} tasks"
                  + (f"  {1000 * r['seconds'] / max(r['tasks'], 1):.2f} ms/task" if r["tasks"] else "")
                  + (f"; as a task's runner parses it: {r['task_cpu_seconds']:.3f} s CPU, {r['task_dags']} DAG"
                     if "task_cpu_seconds" in r else ""))
    if 100 in results:
        folder, slowest = results[100]["(folder)"]["seconds"], max(results[100][f]["seconds"] for f in DAG_FILES)
        cpu = results[100]["(folder)"]["cpu_seconds"]
        print(f"\n100 clusters: folder {folder:.3f} s wall, {cpu:.3f} s CPU (target < 1 s on a quiet machine, where "
              f"wall ~ CPU: {'met' if cpu < 1 else 'NOT met'}); "
              f"slowest file {slowest:.3f} s (target <= 2 s: {'met' if slowest <= 2 else 'NOT met'})")
    if 1000 in results:
        slowest = max(results[1000][f]["seconds"] for f in DAG_FILES)
        print(f"1000 clusters: slowest file {slowest:.2f} s (import timeout {IMPORT_TIMEOUT_SECONDS} s: "
              f"{'inside' if slowest < IMPORT_TIMEOUT_SECONDS else 'OUTSIDE'}; dag-processor timeout "
              f"{TIMEOUT_SECONDS} s: {'inside' if slowest < TIMEOUT_SECONDS else 'OUTSIDE'})")
    print(f"load average at end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
    machine.print_context("dag-parse-time")
