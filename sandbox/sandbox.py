"""The local sandbox: everything the DAGs talk to, on loopback ports of its own.

    python sandbox/sandbox.py up        # start (idempotent); prints where things are
    python sandbox/sandbox.py down      # stop everything it started (idempotent)
    python sandbox/sandbox.py status
    python sandbox/sandbox.py destroy   # down, then delete the sandbox directory

It runs (a) a PostgreSQL 15 "production" cluster with WAL archiving to the configured tools,
seeded with an association-management schema; (b) moto's S3 server behind stunnel TLS with a
self-signed certificate; (c) a staging root directory; (d) an HTTP receiver standing in for
Slack's incoming webhook; and (e) Airflow (SQLite) with connections pointing at all of them,
written to ``<dir>/sandbox.env`` (owner-only) for ``source``.

Settings: SANDBOX_DIR (default /var/tmp/pg-backups-sandbox) and SANDBOX_PORT_BASE (default
25400; the sandbox uses the ports from there to +14: its services +0 to +7, Airflow's log servers
+10 and +11, the scheduler's health check +12, the verification drills' targets +13 and +14; see
Layout). SANDBOX_CLUSTERS=asso,billing adds a second
cluster, `billing` (its own PostgreSQL, staging, stanza and pool; pgBackRest only), to try
several clusters side by side. Keep them below 32768: ports in the kernel's
ephemeral range (32768-60999) can be held by any outgoing connection, and binding then fails.
"""

# This module is the command line (its docstring is the --help) and the one import for the rest:
# tests, benchmarks and demo.py reach every name of the modules below as sandbox.<name>. What runs
# what: layout.py (names, ports, files, secrets), processes.py (log, sh, daemons by pid file),
# postgres.py (the clusters, initdb, psql), s3.py (moto, stunnel, certificates, the bucket client),
# airflow_home.py (Airflow's home, connections, airflow-up/-down), clusters_file.py (clusters.yaml).

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

import clusters_file
from airflow_home import (
    AIRFLOW_COMPONENTS,
    airflow_env,
    airflow_health,
    airflow_healthy,
    read_env_file,
    setup_airflow,
    stack_env,
    start_airflow,
    stop_airflow,
    write_env_file,
)
from clusters_file import HAND_ADDED_MARK, hand_added_clusters
from layout import APP_DB, BUCKET, EPHEMERAL_PORTS, REGION, REPO, SECOND, STANZA, Layout, credentials
from postgres import (
    PG_BIN,
    SECOND_SEED_SQL,
    SEED_SQL,
    archive_past,
    ensure_pgbench,
    pg_ctl,
    pg_running,
    psql,
    seed,
    start_production,
)
from processes import log, pid_alive, port_open, sh, start_daemon, stop_daemon, wait_port
from s3 import access, ensure_tls, start_s3

# Run as a script (`python sandbox/sandbox.py up`), only sandbox/ is on sys.path: the project's package
# pg_backups lives in plugins/. The functions here and in the modules above import it when they run, so
# this comes after them (demo.py, a script too, relies on it for its own imports of pg_backups).
sys.path.insert(0, str(REPO / "plugins"))

# The names other code uses as sandbox.<name> (tests, benchmarks, demo.py, compose.py).
__all__ = [
    "AIRFLOW_COMPONENTS", "APP_DB", "BUCKET", "EPHEMERAL_PORTS", "HAND_ADDED_MARK", "PG_BIN", "REGION", "REPO",
    "SECOND", "SECOND_SEED_SQL", "SEED_SQL", "STANZA", "WALG_LOCAL", "WALG_MISSING", "WALG_VERSION", "Layout",
    "access", "airflow_env", "airflow_health", "airflow_healthy", "archive_past", "credentials", "down",
    "ensure_pgbench", "ensure_tls", "find_walg", "hand_added_clusters", "log", "main", "pg_ctl", "pg_running",
    "pid_alive", "port_open", "psql", "read_env_file", "seed", "setup_airflow", "sh", "stack_env", "start_airflow",
    "start_daemon", "start_production", "start_s3", "start_slack", "status", "stop_airflow", "stop_daemon", "up",
    "up_for_scripts", "wait_port", "walg_report", "write_clusters_file", "write_env_file",
]

# Where a WAL-G binary is looked for, in this order (the Go module proxy here refuses WAL-G, so
# nothing in the project builds it): WALG_BIN, then <repo>/.tools/bin/wal-g, then `wal-g` on PATH.
WALG_LOCAL = REPO / ".tools" / "bin" / "wal-g"
WALG_VERSION = "v3.0.9"
WALG_MISSING = (f"no WAL-G binary: set WALG_BIN=/path/to/wal-g, or put one at {WALG_LOCAL} or on PATH "
                f"(WAL-G {WALG_VERSION}: a release binary from github.com/wal-g/wal-g/releases on a real host)")


def find_walg(env=os.environ) -> Path | None:
    """The WAL-G binary to use: WALG_BIN, then .tools/bin/wal-g, then PATH; None when there is none.
    A WALG_BIN that is not an executable file is an error, not a fallback."""
    given = env.get("WALG_BIN")
    if given:
        path = Path(given).resolve()
        if not (path.is_file() and os.access(path, os.X_OK)):
            raise SystemExit(f"[sandbox] WALG_BIN={given} is not an executable file; fix or unset it")
        return path
    if WALG_LOCAL.is_file() and os.access(WALG_LOCAL, os.X_OK):
        return WALG_LOCAL
    on_path = shutil.which("wal-g", path=env.get("PATH"))
    return Path(on_path).resolve() if on_path else None


def write_clusters_file(L: Layout) -> None:
    # find_walg is looked up here, where tests/test_walg_unit.py patches WALG_LOCAL.
    clusters_file.write(L, find_walg())


def start_slack(L: Layout) -> None:
    L.slack_messages.parent.mkdir(parents=True, exist_ok=True)
    L.slack_messages.touch(mode=0o600)
    start_daemon("slack_receiver", [sys.executable, REPO / "sandbox" / "slack_receiver.py", "--port", L.slack_port,
                                    "--out", L.slack_messages], L, L.slack_port)


def up(L: Layout) -> None:
    from pg_backups import operations
    from pg_backups.config import load_config

    for d in (L.root, L.run_dir, L.logs, L.etc, L.staging_root, L.verify_root, L.root / "metrics"):
        d.mkdir(parents=True, exist_ok=True)
        os.chmod(d, 0o755)  # the postgres user must reach its files below
    shutil.chown(L.run_dir, "postgres", "postgres")
    shutil.chown(L.staging_root, "postgres", "postgres")
    shutil.chown(L.verify_root, "postgres", "postgres")
    creds = credentials(L)
    write_clusters_file(L)
    ensure_tls(L)
    start_s3(L)
    start_slack(L)
    config = load_config(L.clusters_file)
    for cluster in config.clusters:
        if cluster.name not in L.clusters:
            continue  # added by hand: its PostgreSQL and tool files are its owner's, not the sandbox's
        operations.write_tool_configs(cluster, access(L, creds))
        start_production(L, creds, cluster.name)
    cluster = config.cluster(STANZA)
    env = airflow_env(L, creds)
    write_env_file(L, env)
    setup_airflow(L, env)
    log(f"up: S3 {L.endpoint} (bucket {BUCKET}), Slack receiver http://127.0.0.1:{L.slack_port} "
        f"-> {L.slack_messages}, staging root {L.staging_root}")
    log(f"tools: {', '.join(cluster.tools)}" + (f" (WAL-G: {cluster.walg.binary})" if "walg" in cluster.tools
                                                 else f" ({WALG_MISSING})"))
    log(f"environment for Airflow and the scripts: source {L.env_file}")


def require_root() -> None:
    if os.geteuid() != 0:
        raise SystemExit("[sandbox] run as root: PostgreSQL runs as the postgres user through runuser")


def up_for_scripts() -> tuple[Layout, dict[str, str]]:
    """The sandbox (of SANDBOX_DIR, SANDBOX_PORT_BASE) up, and its environment put into this
    process's: Airflow, the connections, the AWS variables, as the benchmarks' tools and their
    `airflow dags test` runs need them. Returns the layout and that environment."""
    require_root()
    L = Layout.from_env()
    up(L)
    env = read_env_file(L.env_file)
    os.environ.update(env)
    return L, env


def down(L: Layout) -> None:
    stop_airflow(L)
    drills = [L.verify_root / name for name in L.clusters]
    for pgdata in (L.staging_root / "data", L.billing_staging, *drills, L.pgdata, L.billing_pgdata):
        if pg_running(pgdata):
            pg_ctl(pgdata, "-m", "fast", "-w", "stop")
            log(f"PostgreSQL {pgdata} stopped")
    for name in ("slack_receiver", "stunnel", "moto"):
        stop_daemon(name, L)


def status(L: Layout) -> int:
    rows = {
        "production PostgreSQL": pg_running(L.pgdata),
        "staging PostgreSQL": pg_running(L.staging_root / "data"),
        "moto S3": port_open(L.moto_port),
        "stunnel TLS": port_open(L.s3_tls_port),
        "Slack receiver": port_open(L.slack_port),
        "Airflow (airflow-up)": airflow_healthy(L),
    }
    for name, ok in rows.items():
        print(f"{name:24} {'up' if ok else 'down'}")
    return 0 if all(v for k, v in rows.items() if k not in ("staging PostgreSQL", "Airflow (airflow-up)")) else 1


def walg_report() -> int:
    """One line: the WAL-G binary found and its version (exit 0), or how to provide one (exit 1)."""
    try:
        binary = find_walg()
    except SystemExit as exc:
        print(str(exc).removeprefix("[sandbox] "))
        return 1
    if binary is None:
        print(WALG_MISSING)
        return 1
    proc = subprocess.run([str(binary), "--version"], text=True, capture_output=True)
    version = (proc.stdout or proc.stderr).split()
    shown = version[2] if len(version) > 2 and version[:2] == ["wal-g", "version"] else "unknown version"
    warning = "" if shown == WALG_VERSION else f" (the project is tested with {WALG_VERSION})"
    print(f"WAL-G {shown}: {binary}{warning}")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=["up", "down", "status", "destroy", "airflow-up", "airflow-down", "walg"],
                        help="airflow-up/-down: a real Airflow (scheduler, dag-processor, triggerer, API server) "
                             "over a sandbox that is up; walg: which WAL-G binary the sandbox would use")
    args = parser.parse_args(argv)
    if args.action == "walg":
        return walg_report()
    require_root()
    L = Layout.from_env()
    if args.action == "up":
        up(L)
    elif args.action == "down":
        if L.root.exists():
            down(L)
    elif args.action == "airflow-up":
        if not L.env_file.exists():
            raise SystemExit("[sandbox] the sandbox is not up: run `sandbox.py up` first")
        start_airflow(L)
    elif args.action == "airflow-down":
        stop_airflow(L)
    elif args.action == "destroy":
        if L.root.exists():
            down(L)
            shutil.rmtree(L.root)
            log(f"removed {L.root}")
    else:
        return status(L)
    return 0


if __name__ == "__main__":
    sys.exit(main())
