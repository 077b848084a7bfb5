"""bin/demo: the sandbox up, every DAG of the sandbox's cluster run once for real, a summary.

Each DAG runs with ``airflow dags test`` (a real Airflow, its own SQLite database); its full log
goes to ``<sandbox>/logs/<dag_id>.log``.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import sandbox  # noqa: E402
import signoff  # noqa: E402

# In the order Ops would run them on a new cluster: the bucket, the backups, the proof.
DAG_ORDER = ("s3_bucket_config_{c}", "pgbackrest_backup_{c}", "walg_backup_{c}", "restore_test_{c}",
             "backup_freshness_{c}")


def dag_ids(env: dict) -> set[str]:
    # --local: parse the DAG folder now; a new sandbox's database has no DAG in it yet.
    proc = subprocess.run([Path(sys.executable).parent / "airflow", "dags", "list", "--local", "-o", "json"],
                          env={**os.environ, **env}, text=True, capture_output=True)
    if proc.returncode != 0:
        raise SystemExit(f"[demo] airflow dags list failed:\n{proc.stderr[-2000:]}")
    listing = [line for line in proc.stdout.splitlines() if line.startswith("[{")]  # skip log lines
    return {d["dag_id"] for d in json.loads(listing[-1])} if listing else set()


def run_dag(dag_id: str, env: dict, L: sandbox.Layout) -> tuple[str, float]:
    log_path = L.logs / f"{dag_id}.log"
    started = time.monotonic()
    if dag_id.startswith("restore_test_"):
        # The restore test waits for QA: the demo answers for QA through Airflow's API, as QA would
        # in the UI (Browse > Required Actions), and says so in the comment.
        with signoff.api_server(L, env, L.logs / "api-server.log") as api:
            _, output = signoff.run_with_signoff(L, env, api, dag_id, "Approve",
                                                 "approved by bin/demo on behalf of QA (sandbox)")
        log_path.write_text(output)
    else:
        with open(log_path, "w") as out:
            subprocess.run([Path(sys.executable).parent / "airflow", "dags", "test", dag_id],
                           env={**os.environ, **env}, stdout=out, stderr=subprocess.STDOUT)
    with sqlite3.connect(L.airflow_home / "airflow.db") as db:
        row = db.execute("SELECT state FROM dag_run WHERE dag_id = ? ORDER BY id DESC LIMIT 1", (dag_id,)).fetchone()
    return (row[0] if row else "not created"), time.monotonic() - started


def main() -> int:
    L = sandbox.Layout.from_env()
    sandbox.main(["up"])
    env = sandbox.read_env_file(L.env_file)
    cluster = sandbox.load_config(L.clusters_file).cluster(sandbox.STANZA)
    available = dag_ids(env)
    results = []
    for pattern in DAG_ORDER:
        dag_id = pattern.format(c=cluster.name)
        if dag_id not in available:
            continue
        print(f"[demo] running {dag_id} ...", flush=True)
        state, seconds = run_dag(dag_id, env, L)
        print(f"[demo]   {state} in {seconds:.0f} s (log: {L.logs / (dag_id + '.log')})", flush=True)
        results.append((dag_id, state, seconds))

    print("\n=== Summary ===")
    for dag_id, state, seconds in results:
        print(f"  {dag_id:32} {state:8} {seconds:5.0f} s")
    from pg_backups import pgbackrest

    info = sandbox.sh(*pgbackrest.command(cluster, "info"), user=cluster.os_user, check=False)
    print("\n--- pgbackrest info ---\n" + (info.stdout or info.stderr).strip())
    audit = Path(cluster.restore_test.audit_log)
    if audit.exists() and audit.read_text().strip():
        last = json.loads(audit.read_text().strip().splitlines()[-1])
        print(f"\n--- restore test audit ({audit}) ---\n  outcome {last.get('outcome')}, backup "
              f"{last.get('backup_label')}, RTO {last.get('restore_duration_seconds')} s, checks: "
              + ", ".join(f"{c.get('check')}={c.get('result')}" for c in last.get("checks", [])))
    slack = [json.loads(line) for line in L.slack_messages.read_text().splitlines() if line.strip()]
    print(f"\n--- Slack receiver: {len(slack)} message(s) in {L.slack_messages} ---")
    for message in slack[-3:]:
        print("  " + message["body"].get("text", "")[:160].replace("\n", " | "))
    print(f"""
Where to look:
  DAG logs:          {L.logs}/<dag_id>.log
  pgBackRest logs:   {cluster.pgbackrest.log_path}
  cluster config:    {L.clusters_file}
  environment:       source {L.env_file}   (Airflow, connections, AWS variables for the scripts)
  Airflow UI:        source {L.env_file} && .venv/bin/airflow standalone
                     then http://localhost:{L.api_port} (users ops, qa; passwords in
                     {L.airflow_home}/simple_auth_manager_passwords.json.generated)
  stop everything:   .venv/bin/python sandbox/sandbox.py down
""")
    failed = [d for d, s, _ in results if s != "success"]
    if not results:
        print("[demo] FAILED: no DAG of the sandbox's cluster was found to run", file=sys.stderr)
        return 1
    if failed:
        print(f"[demo] FAILED: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
