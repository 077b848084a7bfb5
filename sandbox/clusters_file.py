"""The sandbox's clusters file (clusters.yaml): rewritten from the layout by every `up`, keeping the
clusters added to it by hand."""

from __future__ import annotations

import json
from pathlib import Path

from layout import BUCKET, REGION, SECOND, STANZA, Layout

# The line under which clusters added by hand go: `sandbox.py up` rewrites what is above it and
# keeps what is below it as it is (README, "The local sandbox").
HAND_ADDED_MARK = "  # ---- Clusters added by hand go below this line: `sandbox.py up` keeps them as they are ----"


def hand_added_clusters(L: Layout) -> str:
    """What `up` keeps of the clusters file it rewrites: the text below :data:`HAND_ADDED_MARK`, and
    every other entry it did not write (added above the line, or in a file from before the line
    existed), carried over below it. A file that is not YAML is left untouched: nothing is lost."""
    import yaml

    if not L.clusters_file.exists():
        return ""
    old = L.clusters_file.read_text()
    below = old.partition(HAND_ADDED_MARK + "\n")[2]
    try:
        entries = (yaml.safe_load(old) or {}).get("clusters") or []
        kept = {e.get("name") for e in (yaml.safe_load("clusters:\n" + below) or {}).get("clusters") or []
                if isinstance(e, dict)}
    except (yaml.YAMLError, AttributeError) as exc:
        raise SystemExit(f"[sandbox] {L.clusters_file} is not a valid clusters file, so `up` would lose what was "
                         f"added to it by hand: fix it (or move it away to start from the sandbox's own), then run "
                         f"up again ({exc})") from None
    others = [e for e in entries if isinstance(e, dict) and e.get("name") not in (STANZA, SECOND, *kept)]
    if others:
        dumped = yaml.safe_dump(others, sort_keys=False, default_flow_style=False)
        below += "".join(f"  {line}\n" for line in dumped.splitlines())
    return below


def write(L: Layout, walg_binary: Path | None) -> None:
    """The clusters file for the layout; its tools are pgBackRest, and WAL-G when ``walg_binary`` is one
    (sandbox.py's find_walg: it stays there, where the WAL-G lookup is tested)."""
    tools = ["pgbackrest", "walg"] if walg_binary else ["pgbackrest"]
    hand_added = hand_added_clusters(L)
    text = f"""# Written by sandbox/sandbox.py: the sandbox's clusters, everything on loopback.
# What they share is under `defaults:` (merged into each cluster). `sandbox.py up` rewrites this
# file: add your own clusters at the end, below the line that says so, where it keeps them.
defaults:
  host: 127.0.0.1
  socket_directory: {L.run_dir}
  os_user: postgres
  retries: 1
  retry_delay_seconds: 5
  lock_directory: {L.run_dir / "locks"}
  metrics:
    textfile_directory: {L.root / "metrics"}
  s3:
    bucket: {BUCKET}
    region: {REGION}
    aws_conn_id: aws_backups
    # moto sits behind stunnel, so it sees every request as plain HTTP, and it enforces bucket
    # policies: a TLS-only policy would deny everything here. Real S3 sees the TLS; keep it on.
    deny_insecure_transport: false
  pgbackrest:
    spool_path: {L.root / "pgbackrest" / "spool"}
    log_path: {L.root / "pgbackrest" / "log"}
    lock_path: {L.root / "pgbackrest" / "lock"}
    process_max: 2
    io_timeout_seconds: 10
  restore_test:
    staging_root: {L.staging_root}
    staging_socket_directory: {L.run_dir}
  verify:
    root: {L.verify_root}
    socket_directory: {L.run_dir}
    log: {L.logs / "{cluster}_verify.log"}
    smoke_log: {L.logs / "{cluster}_verify_smoke.log"}
clusters:
  - name: {STANZA}
    port: {L.pg_port}
    data_directory: {L.pgdata}
    tools: {json.dumps(tools)}
    alerts:
      slack_conn_id: slack_ops
    pgbackrest:
      config_path: {L.etc / "pgbackrest" / "pgbackrest.conf"}
    walg:
      binary: {walg_binary or "wal-g"}
      config_path: {L.etc / "wal-g" / "walg.json"}
    restore_test:
      staging_data_directory: {L.staging_root / "data"}
      staging_port: {L.staging_port}
      smoke_log: {L.logs / "restore_smoke.log"}
      audit_log: {L.logs / "asso_restore_audit.log"}
      check_tables: [members, memberships, payments, events]
    verify:
      port: {L.verify_port}
"""
    if SECOND in L.clusters:
        text += f"""  - name: {SECOND}
    port: {L.billing_pg_port}
    data_directory: {L.billing_pgdata}
    tools: [pgbackrest]
    pgbackrest:
      config_path: {L.etc / "pgbackrest" / "{cluster}" / "pgbackrest.conf"}
    walg:
      prefix: {SECOND}
    restore_test:
      # Every 2 minutes, so that a backfill has slots after the sandbox's first backup (paused
      # until someone unpauses it: each run waits for QA's sign-off).
      schedule: "*/2 * * * *"
      staging_data_directory: {L.billing_staging}
      staging_port: {L.billing_staging_port}
      smoke_log: {L.logs / "{cluster}_restore_smoke.log"}
      audit_log: {L.logs / "{cluster}_restore_audit.log"}
      check_tables: [invoices]
    verify:
      port: {L.billing_verify_port}
"""
    L.clusters_file.write_text(f"{text}{HAND_ADDED_MARK}\n{hand_added}")
