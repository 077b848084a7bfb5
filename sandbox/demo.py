"""bin/demo: the sandbox up, a real Airflow over it, every DAG of the sandbox's cluster run once
through the scheduler as Ops would (unpaused, triggered through the REST API with no logical
date), QA's sign-off given through the API, a summary. Airflow stays up for the UI afterwards.

Each run's task logs are in Airflow (UI, or ``<sandbox>/airflow/logs``); the components' own logs
in ``<sandbox>/logs/airflow-*.log``.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
# Run as a script (bin/demo: `python sandbox/demo.py`), sandbox/ is first on sys.path already; this keeps
# the sibling imports working when the file is loaded another way (runpy, an import from elsewhere).
sys.path.insert(0, str(HERE))

import airflow_api  # noqa: E402
import sandbox  # noqa: E402
from pg_backups.config import DAG_KINDS, TOOLS, load_config  # noqa: E402  (sandbox put plugins/ on the path)

QA_COMMENT = "approved by bin/demo on behalf of QA (sandbox)"


def why_absent(kind: str, cluster) -> str:
    tool = kind if kind in TOOLS else None
    if tool and tool not in cluster.tools:
        extra = f" ({sandbox.WALG_MISSING})" if tool == "walg" else ""
        return f"not generated: {tool} is not among the cluster's tools{extra}"
    return "not generated: see the import errors in the UI"


def run_dag(client: airflow_api.Client, dag_id: str) -> tuple[str, str, float]:
    """Unpause, trigger with no logical date, wait; QA approves what waits for QA meanwhile."""
    client.unpause(dag_id)
    started = time.monotonic()
    run_id = client.trigger(dag_id)
    run = client.wait_run(dag_id, run_id, 1200, comment=QA_COMMENT,
                          say=lambda waiting: print(f"[demo]   QA approves {waiting} through the API (user qa)",
                                                    flush=True))
    return run_id, run["state"], time.monotonic() - started


def main() -> int:
    L = sandbox.Layout.from_env()
    sandbox.main(["up"])
    sandbox.main(["airflow-up"])
    cluster = load_config(L.clusters_file).cluster(sandbox.STANZA)
    client = airflow_api.Client(L)
    # Every kind of DAG, in the order Ops would run them on a new cluster (config.DAG_KINDS's).
    wanted = {cluster.dag_id(kind): kind for kind in DAG_KINDS}
    expected = {cluster.dag_id(kind) for kind in cluster.dag_kinds}
    airflow_api.wait_for(lambda: {d["dag_id"] for d in client.request("GET", "/api/v2/dags?limit=200")["dags"]}
                         >= expected, 180, every=3, what="the DAGs parsed by the dag-processor")
    available = {d["dag_id"] for d in client.request("GET", "/api/v2/dags?limit=200")["dags"]}
    results = []
    for dag_id in wanted:
        # Not expected: a DAG of a tool the cluster no longer has can still be listed from an earlier
        # demo's metadata until the dag-processor marks it stale; a run of it would never start.
        if dag_id not in available or dag_id not in expected:
            why = why_absent(wanted[dag_id], cluster)
            print(f"[demo] {dag_id}: skipped, {why}", flush=True)
            results.append((dag_id, "-", "skipped", 0.0, why))
            continue
        print(f"[demo] running {dag_id} through the scheduler ...", flush=True)
        run_id, state, seconds = run_dag(client, dag_id)
        tasks = client.tasks(dag_id, run_id)
        print(f"[demo]   {state} in {seconds:.0f} s: " + ", ".join(f"{t} {v['state']}" for t, v in tasks.items()),
              flush=True)
        results.append((dag_id, run_id, state, seconds, ""))
        if wanted[dag_id] == "heartbeat" and state == "success":
            # A day of traffic in a minute: the PITR drill that follows needs the heartbeat archived,
            # and a WAL record after it archived too (archive_timeout would take hours to get there).
            print(f"[demo]   production's WAL switched and archived up to {sandbox.archive_past(L)}", flush=True)
    for dag_id, *_ in results:  # the demo's runs are done: the sandbox does nothing on its own
        if dag_id in available:
            client.unpause(dag_id, paused=True)

    print("\n=== Summary (as the UI shows it) ===")
    for dag_id, run_id, state, seconds, why in results:
        print(f"  {dag_id:28} {state:8} {seconds:5.0f} s  {run_id if run_id != '-' else why}")
    from pg_backups import pgbackrest

    info = sandbox.sh(*pgbackrest.command(cluster, "info"), user=cluster.os_user, check=False)
    print("\n--- pgbackrest info ---\n" + (info.stdout or info.stderr).strip())
    audit = Path(cluster.restore_test.audit_log)
    if audit.exists() and audit.read_text().strip():
        last = json.loads(audit.read_text().strip().splitlines()[-1])
        print(f"\n--- restore test audit ({audit}) ---\n  outcome {last.get('outcome')}, backup "
              f"{last.get('backup_label')}, RTO {last.get('restore_duration_seconds')} s, signed off by "
              f"{(last.get('signoff') or {}).get('by')}, checks: "
              + ", ".join(f"{c.get('check')}={c.get('result')}" for c in last.get("checks", [])))
    slack = [json.loads(line) for line in L.slack_messages.read_text().splitlines() if line.strip()]
    print(f"\n--- Slack receiver: {len(slack)} message(s) in {L.slack_messages} ---")
    for message in slack[-3:]:
        print("  " + message["body"].get("text", "")[:160].replace("\n", " | "))
    print(f"""
Where to look:
  Airflow UI:        http://localhost:{L.api_port} (still running; users ops, qa; passwords in
                     {L.airflow_home}/simple_auth_manager_passwords.json.generated)
  task logs:         the UI, or {L.airflow_home}/logs
  pgBackRest logs:   {cluster.pgbackrest.log_path}
  cluster config:    {L.clusters_file}
  environment:       source {L.env_file}   (Airflow, connections, AWS variables for the scripts)
  stop Airflow:      .venv/bin/python sandbox/sandbox.py airflow-down
  stop everything:   .venv/bin/python sandbox/sandbox.py down
""")
    ran = [r for r in results if r[2] != "skipped"]
    failed = [r[0] for r in ran if r[2] != "success"]
    if not ran:
        print("[demo] FAILED: no DAG of the sandbox's cluster was found to run", file=sys.stderr)
        return 1
    if failed:
        print(f"[demo] FAILED: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
