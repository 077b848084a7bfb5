"""DAG-folder parse time with 1 configured cluster and with 100 (target: under 1 s for 100 on
these 2-core machines). Each figure is the median of 5 parses of the whole folder, measured in
a child process after Airflow is imported, as the dag-processor sees it.

    .venv/bin/python benchmarks/bench_dag_parse.py
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PARSE = """
import json, statistics, sys, time
from airflow.dag_processing.dagbag import DagBag
times = []
for _ in range(5):
    started = time.perf_counter()
    bag = DagBag(dag_folder=sys.argv[1])
    times.append(time.perf_counter() - started)
assert not bag.import_errors, bag.import_errors
print(json.dumps({"seconds": statistics.median(times), "dags": len(bag.dags),
                  "tasks": sum(len(d.tasks) for d in bag.dags.values())}))
"""


def config_for(n: int) -> str:
    lines = ["clusters:"]
    for i in range(n):
        lines += [f"  - name: cluster{i:03d}",
                  f"    host: db{i:03d}.internal",
                  f"    data_directory: /srv/pg/cluster{i:03d}/data",
                  f"    walg: {{prefix: postgres/cluster{i:03d}}}",
                  f"    restore_test: {{staging_root: /srv/staging/cluster{i:03d}, "
                  f"staging_data_directory: /srv/staging/cluster{i:03d}/data, staging_port: {6000 + i}}}"]
    return "\n".join(lines) + "\n"


def measure(n: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "clusters.yaml"
        config.write_text(config_for(n))
        env = {**os.environ, "PG_BACKUPS_CONFIG": str(config), "PYTHONPATH": str(REPO / "plugins"),
               "AIRFLOW_HOME": tmp, "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
               "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags")}
        proc = subprocess.run([sys.executable, "-c", PARSE, str(REPO / "dags")], env=env, text=True,
                              capture_output=True, check=True)
        return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    one, hundred = measure(1), measure(100)
    print(f"1 cluster:    {one['seconds']:.3f} s  ({one['dags']} DAGs, {one['tasks']} tasks)")
    print(f"100 clusters: {hundred['seconds']:.3f} s  ({hundred['dags']} DAGs, {hundred['tasks']} tasks)")
    print(f"ratio 100/1:  {hundred['seconds'] / one['seconds']:.1f}x; target under 1 s for 100 clusters: "
          f"{'met' if hundred['seconds'] < 1.0 else 'NOT met'}")


if __name__ == "__main__":
    main()
