"""The restore test's evidence: one JSON line per run, both logs archived to S3, a Slack summary.

Nothing here imports Airflow.
"""

from __future__ import annotations

import json
import os
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from pg_backups import runner
from pg_backups.times import now, utc

if TYPE_CHECKING:
    from pg_backups.config import Cluster


def _now() -> str:
    return now().isoformat(timespec="seconds")


def backup_age_seconds(record: dict | None, at: datetime | None = None) -> float | None:
    if not record or not record.get("stop_time"):
        return None
    return round(((at or now()) - utc(record["stop_time"])).total_seconds(), 1)


def audit_record(cluster: Cluster, *, run_id: str, tool: str, record: dict | None, restore_seconds: float | None,
                 smoke_result: dict | None, checks: list[dict] | None, signoff: dict | None,
                 errors: list[str] | None = None, target_time: str | None = None,
                 cancelled: dict | None = None) -> dict:
    """One audit line. Outcome ``success`` only when the restore happened, the smoke query and every
    check passed, and QA approved (cron: the sign-off is ``pending``, which does not fail);
    ``cancelled`` (when, by whom if known, each step's state): the run was stopped by hand (Mark run
    as failed), outcome ``cancelled``, whatever had passed."""
    checks = list(checks or [])
    if smoke_result is not None:
        checks.insert(0, {"check": "smoke_query", "result": "ok", "detail": f"{smoke_result['pg_tables']} pg_tables"})
    signoff = signoff or {"status": "missing"}
    restored = record is not None and restore_seconds is not None
    ok = (restored and smoke_result is not None and bool(checks) and all(c["result"] == "ok" for c in checks)
          and signoff.get("status") in ("approved", "pending") and not errors)
    line = {
        "time": _now(),
        "cluster": cluster.name,
        "run_id": run_id,
        "tool": tool,
        "backup_label": record.get("label") if record else None,
        "backup_time": record.get("stop_time") if record else None,
        "backup_run_id": record.get("airflow_run_id") if record else None,
        "backup_age_seconds": backup_age_seconds(record),
        "target_time": target_time,
        "restore_duration_seconds": round(restore_seconds, 1) if restore_seconds is not None else None,
        "checks": checks,
        "signoff": signoff,
        "errors": errors or [],
        "outcome": "cancelled" if cancelled else "success" if ok else "failed",
    }
    if cancelled:
        line["cancelled"] = cancelled
    return scrub(line)


def scrub(value):
    """Drop any secret of the environment from the audit line, whatever put it there."""
    secrets = runner.secrets_of(dict(os.environ))
    return json.loads(runner.redact(json.dumps(value, default=str), secrets))


def append_audit(cluster: Cluster, line: dict) -> str:
    path = Path(cluster.restore_test.audit_log)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as out:
        out.write(json.dumps(line, sort_keys=True, default=str) + "\n")
    return str(path)


def archive_key(cluster: Cluster, run_id: str, filename: str, day: datetime | None = None) -> str:
    day = day or now()
    safe = "".join(ch if ch.isalnum() or ch in "-_.+" else "_" for ch in run_id)
    return f"{cluster.restore_test.audit_prefix.strip('/')}/{cluster.name}/{day:%Y}/{safe}/{filename}"


def archive_logs(cluster: Cluster, client, run_id: str) -> list[str]:
    """Upload the smoke log and the audit log (kept outside the worker); returns s3:// URIs."""
    uris = []
    for path in (cluster.restore_test.smoke_log, cluster.restore_test.audit_log):
        if not os.path.exists(path):
            continue
        key = archive_key(cluster, run_id, os.path.basename(path))
        client.upload_file(path, cluster.s3.bucket, key)
        uris.append(f"s3://{cluster.s3.bucket}/{key}")
    return uris


def recovery_text(line: dict) -> str:
    """What state the drill brought back: the PITR target (a backfill run's logical date, or the
    run's ``target_time``), or the latest archived state. The recovery point the restore actually
    reached belongs on this line too, beside the target, once it is measured."""
    target = line.get("target_time")
    return f"*Target:* {target} (point in time)" if target else "*Target:* latest (the end of the archived WAL)"


def summary_text(cluster: Cluster, line: dict) -> str:
    checks = ", ".join(f"{c['check']} {c['result']}" for c in line["checks"])
    age = line.get("backup_age_seconds")
    return (f":white_check_mark: *Restore test passed* - cluster `{cluster.name}` ({line['tool']})\n"
            f"*Backup:* `{line['backup_label']}` ({line['backup_time']}, age "
            f"{'%.1f h' % (age / 3600) if age is not None else '?'})\n"
            f"{recovery_text(line)}\n"
            f"*RTO:* {line['restore_duration_seconds']} s restore\n*Checks:* {checks}\n"
            f"*Sign-off:* {line['signoff'].get('status')} by {line['signoff'].get('by') or '-'}")


def cancelled_text(cluster: Cluster, line: dict) -> str:
    """The one Slack message of a cancelled drill: which run, which step it stopped in, what ran."""
    steps = line["cancelled"]["steps"]
    stopped = [task for task, state in steps.items() if state == "failed"]
    ran = [task for task, state in steps.items() if state == "success"]
    return (f":no_entry: *Restore test cancelled* - cluster `{cluster.name}` ({line['tool']})\n"
            f"*Run:* `{line['run_id']}` marked failed by hand, seen {line['cancelled']['at']} (who: "
            f"{line['cancelled'].get('by') or 'Airflow audit log, event patch_dag_run'})\n"
            f"*Stopped in:* {', '.join(stopped) or '-'}  *Done before:* {', '.join(ran) or 'nothing'}\n"
            f"*Backup:* `{line['backup_label'] or '-'}`; staging stopped and released; not a passed drill")
