"""The verification drill: each new backup restored onto a disposable target, checked, torn down.

The target is the restore test's machinery pointed elsewhere: :func:`target` is the cluster with its
``restore_test`` staging settings replaced by the ``verify`` ones (a directory under ``verify.root``,
``verify.port``, ``verify.socket_directory``, ``verify.log``), so the guard, the purge, the restore
(pgBackRest or WAL-G, ``archive_mode=off``), the start, the wait for recovery's end and the checks
are the restore test's own functions (:mod:`pg_backups.staging`, :mod:`pg_backups.checks`,
:mod:`pg_backups.operations`), never a copy. QA's staging is never touched; no QA step.

Nothing here imports Airflow: the DAG (``dags/verify_backup.py``) and ``pg_backups.cli verify-backup``
run the same functions.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import time
from datetime import datetime
from typing import TYPE_CHECKING

from pg_backups import audit, checks, metrics, operations, staging, times, tools
from pg_backups.errors import CheckFailed, DrillRefused, ToolError

if TYPE_CHECKING:
    from pg_backups.config import Cluster

log = logging.getLogger(__name__)

# A restored copy's pgBackRest lock path of its own (pgbackrest.restore_lock_path): never staging's.
LOCK_COPY = "verify-copy"
KIND = "verification"
# The drills of a cluster: each new backup's, and the daily random-point PITR drill's
# (pg_backups.pitr). Each has a target directory of its own: the drill pool serialises the
# drills, not their teardowns, so one drill's teardown must never remove the other's target.
BACKUP, PITR = "backup", "pitr"
STEPS = ("plan", "restore", "start", "checks")
# What a backup's drill says of it, for the inventory and the freshness check: proven restorable,
# drilled and failed, not drilled yet, not drilled within verify.max_delay_minutes of its completion.
VERIFIED, FAILED, PENDING, OVERDUE = "verified", "failed", "pending", "overdue"
# A drill's result: the verification line without its checks (the line itself is the evidence).
RESULT_FIELDS = ("time", "tool", "run_id", "backup_label", "backup_time", "rto_seconds", "outcome", "failed_step")
# The task and XCom key under which the verification DAG leaves each drill's result (the inventory reads it).
RESULT_XCOM = ("record_evidence", "verification_result")
RESULTS_KEPT = 100  # per cluster and tool in the bucket's results object: months of daily backups


def target(cluster: Cluster, kind: str = BACKUP):
    """The cluster as the restore test's code sees it, with the drill's target as its staging."""
    v = cluster.verify
    rt = dataclasses.replace(cluster.restore_test, staging_root=v.root,
                             staging_data_directory=data_directory(cluster, kind),
                             staging_port=v.port, staging_socket_directory=v.socket_directory,
                             staging_queue=v.queue, smoke_log=v.smoke_log, audit_log=v.log)
    return dataclasses.replace(cluster, restore_test=rt)


def data_directory(cluster: Cluster, kind: str = BACKUP) -> str:
    """``<verify.root>/<cluster>`` for a backup's drill, ``<verify.root>/<cluster>-pitr`` for the PITR drill."""
    return os.path.join(cluster.verify.root, cluster.name if kind == BACKUP else f"{cluster.name}-{kind}")


def required_bytes(cluster: Cluster, record: dict) -> int:
    """What the restored copy needs: the database size the backup restores (pgBackRest ``info.size``,
    WAL-G's uncompressed size), plus ``verify.free_space_margin_percent`` for the WAL replayed."""
    size = record.get("database_size_bytes") or record.get("backup_size_bytes") or 0
    return int(size * (100 + cluster.verify.free_space_margin_percent) / 100)


def free_bytes(path: str) -> int:
    """Free space where the target will be (its nearest existing parent)."""
    while not os.path.exists(path):
        path = os.path.dirname(path)
    return shutil.disk_usage(path).free


def check_free_space(cluster: Cluster, record: dict) -> dict:
    """Refuse before anything is restored when ``verify.root`` cannot hold the backup."""
    need, free = required_bytes(cluster, record), free_bytes(cluster.verify.root)
    if need > free:
        raise DrillRefused("verify.root", f"{cluster.verify.root} has {_size(free)} free, and backup "
                           f"{record.get('label')} needs {_size(need)} (database {_size(record.get('database_size_bytes') or 0)}"
                           f" + verify.free_space_margin_percent {cluster.verify.free_space_margin_percent} %); "
                           "nothing was restored", "free space there, or point verify.root at a larger filesystem")
    return {"free_bytes": free, "required_bytes": need}


def _size(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


def plan(cluster: Cluster, tool: str, access, label: str | None = None, record: dict | None = None, *,
         kind: str = BACKUP, target_time: str | None = None) -> dict:
    """Which backup (the published record, else read from the repository: the given label, the
    newest, or with ``target_time`` the newest that finished before it), the target's guard and
    the disk guard: every refusal comes before the target is touched."""
    if tool not in cluster.tools:
        raise DrillRefused("tool", f"{tool!r} does not back up cluster {cluster.name} ({cluster.tools})",
                           "choose one of the cluster's tools")
    if record is None:
        record = operations.restore_backup_record(cluster, tool, access, label, target_time)  # writes the tool's config
    elif access is not None:  # the published record: the verification host still needs the tool's config
        tools.of(tool).write_config(cluster, access)
    guarded = staging.guard(target(cluster, kind))
    return {"tool": tool, "record": record, "target": target_description(cluster, kind), "guard": guarded,
            "space": check_free_space(cluster, record)}


def target_description(cluster: Cluster, kind: str = BACKUP) -> dict:
    v = cluster.verify
    return {"data_directory": data_directory(cluster, kind), "port": v.port, "host": v.queue or "(default queue)"}


def drill(cluster: Cluster, tool: str, access, record: dict, progress=None, dbname: str | None = None, *,
          kind: str = BACKUP, target_time: str | None = None, extra_checks=None) -> dict:
    """Restore ``record``'s backup onto the target, start it, wait for recovery's end, run the
    restore test's checks; the target's server is stopped at the end whatever happened (the next
    drill on the host may use the port), and the directory is left to :func:`teardown`.

    ``progress(step, result)`` is called after each step (the DAG keeps them as XComs, so that the
    evidence names what was done when a step fails). RTO = restore + start + recovery. ``dbname``:
    the database of ``restore_test.check_tables``, as the restore test has it (its staging
    connection's database). ``target_time``: recover to that point (PITR) instead of the end of
    the archived WAL. ``extra_checks(target)``: more check results (the PITR drill's heartbeats),
    judged with the others."""
    t = target(cluster, kind)
    report = progress or (lambda step, result: None)
    try:
        staging.stop_staging(t)  # a server left by an interrupted drill
        staging.purge_staging(t)  # the target's directory, empty, 0700, the OS user's
        done = operations.restore_latest_backup(t, tool, access, target_time=target_time, record=record,
                                                copy=LOCK_COPY)
        report("restore", done)
        started = operations.restore_start_staging(t)
        report("start", started)
        smoke = checks.smoke(t, dbname)
        extra = extra_checks(t) if extra_checks else []
        try:
            results = checks.data_checks(t, record, dbname)
        except CheckFailed as exc:
            raise CheckFailed(str(exc), exc.checks + extra) from None
        results += extra
        failed = [c["check"] for c in extra if c["result"] != "ok"]
        if failed:
            raise CheckFailed(f"restored cluster failed checks: {', '.join(failed)}", results)
        report("checks", {"smoke": smoke, "checks": results})
    finally:
        try:
            staging.stop_staging(t)
        except Exception as exc:  # noqa: BLE001 - the drill's own error stands; teardown stops it again
            log.warning("could not stop the drill's target: %s", exc)
    return {"restore": done, "start": started, "smoke": smoke, "checks": results,
            "rto_seconds": round(done["restore_seconds"] + started["startup_seconds"], 2)}


def teardown(cluster: Cluster, kind: str = BACKUP) -> dict:
    """Stop the target's server if it runs, and remove its directory (guarded: only under verify.root)."""
    t = target(cluster, kind)
    stopped = staging.stop_staging(t)
    path = staging.staging_dir(t)
    removed = False
    if os.path.isdir(path):
        staging.guard(t)  # never delete what is not the drill's target
        shutil.rmtree(path)
        removed = True
    return {"stopped": stopped, "removed": removed, "data_directory": path}


def failed_step(steps_done: dict) -> str:
    """The first step without a result."""
    for step in STEPS[1:]:
        if step not in steps_done:
            return step
    return "checks"


def verification_line(cluster: Cluster, *, run_id: str, tool: str, record: dict | None, steps: dict,
                      errors: list[str], started_at: str | None = None, kind: str = BACKUP) -> dict:
    """One JSON line per drill, in the verification log beside the audit: which backup, tool and
    target, the RTO, every check, the outcome, and when it failed the step and the cause."""
    restore, start, checked = steps.get("restore"), steps.get("start"), steps.get("checks") or {}
    results = checked.get("checks") or steps.get("checks_failed")
    ok = bool(restore and start and checked.get("checks")) and not errors and \
        all(c.get("result") == "ok" for c in checked.get("checks") or [{}])
    rto = round(restore["restore_seconds"] + start["startup_seconds"], 2) if restore and start else None
    record = record or {}
    return {
        "kind": KIND,
        "time": times.iso(times.now()),
        "started_at": started_at,
        "cluster": cluster.name,
        "tool": tool,
        "run_id": run_id,
        "backup_label": record.get("label"),
        "backup_type": record.get("type"),
        "backup_time": record.get("stop_time"),
        "backup_run_id": record.get("airflow_run_id"),
        "target": target_description(cluster, kind),
        "restore_seconds": restore and restore["restore_seconds"],
        "startup_seconds": start and start["startup_seconds"],
        "rto_seconds": rto,
        "smoke": checked.get("smoke"),
        "checks": results,
        "outcome": "success" if ok else "failed",
        "failed_step": None if ok else failed_step(steps),
        "errors": errors,
    }


def record_evidence(cluster: Cluster, client, line: dict) -> dict:
    """Append the line to ``verify.log``, archive it (and the drill's smoke log) to S3 beside the
    restore test's audit, publish the metrics; the line is the evidence, a metrics outage changes
    nothing."""
    t = target(cluster)
    path = audit.append_audit(t, line)
    uris = audit.archive_logs(t, client, line["run_id"]) if client is not None else []
    published = None
    if client is not None and line.get("kind") == KIND:  # the backups' results; not the PITR drill's
        try:  # without it the freshness check calls the backup unverified: an alert, nothing hidden
            publish_result(cluster, client, line)
            published = f"s3://{cluster.s3.bucket}/{results_key(cluster, line.get('tool') or 'unknown')}"
        except Exception as exc:  # noqa: BLE001
            log.warning("drill result not published to the bucket: %s: %s", type(exc).__name__, exc)
    try:
        (metrics.record_verify if line.get("kind") == KIND else metrics.record_verify_pitr)(cluster, line)
    except Exception as exc:  # noqa: BLE001
        log.warning("verification metrics not published: %s: %s", type(exc).__name__, exc)
    return {"verify_log": path, "archived": uris, "results": published, "outcome": line["outcome"]}


def result(line: dict, fields: tuple[str, ...] = RESULT_FIELDS) -> dict:
    """A drill's result, small enough to keep a hundred of (the bucket's results object, an XCom
    the inventory reads): which backup, the outcome, the RTO, the failed step and the first cause."""
    out = {field: line.get(field) for field in fields}
    errors = line.get("errors") or []
    out["cause"] = str(errors[0])[:300] if errors else None
    return out


def results_key(cluster: Cluster, tool: str) -> str:
    """Beside the drills' archived lines: ``<restore_test.audit_prefix>/<cluster>/verification-<tool>.json``."""
    return f"{cluster.restore_test.audit_prefix.strip('/')}/{cluster.name}/verification-{tool}.json"


def read_results(cluster: Cluster, client, tool: str) -> list[dict]:
    """The newest drill results of the tool, newest first ([] before the first drill)."""
    try:
        body = client.get_object(Bucket=cluster.s3.bucket, Key=results_key(cluster, tool))["Body"].read()
    except Exception as exc:  # noqa: BLE001 - botocore's NoSuchKey is a ClientError by code
        if getattr(exc, "response", {}).get("Error", {}).get("Code") in ("NoSuchKey", "404"):
            return []
        raise
    results = json.loads(body)
    return results if isinstance(results, list) else []


def publish_result(cluster: Cluster, client, line: dict) -> list[dict]:
    """Put the drill's result first in the tool's results object (the newest RESULTS_KEPT), where the
    freshness check of the database host reads it: that host cannot read the verification host's log.
    Drills of a cluster run one at a time, so nothing else writes the object meanwhile."""
    tool = line.get("tool") or "unknown"
    results = [result(line), *read_results(cluster, client, tool)][:RESULTS_KEPT]
    client.put_object(Bucket=cluster.s3.bucket, Key=results_key(cluster, tool), ContentType="application/json",
                      Body=json.dumps(results, sort_keys=True, default=str).encode())
    return results


def by_backup(results) -> dict[tuple[str, str], dict]:
    """(tool, label) -> the newest result of that backup's drills (a later drill by hand decides)."""
    out: dict[tuple[str, str], dict] = {}
    for r in sorted(results, key=lambda r: str(r.get("time") or "")):
        if r.get("backup_label"):
            out[(r.get("tool"), r["backup_label"])] = r
    return out


def backup_state(cluster: Cluster, tool: str, label: str | None, finished_at, drilled: dict, at: datetime) -> dict:
    """What the drills say of one backup: ``state`` (VERIFIED, FAILED, PENDING, OVERDUE), the result
    that decided it, and a sentence; OVERDUE once ``verify.max_delay_minutes`` have passed since the
    backup finished without a drill of it. ``drilled``: :func:`by_backup` of the results."""
    r = drilled.get((tool, label)) if label else None
    if r is not None:
        ok = r.get("outcome") == "success"
        text = (f"verified {r.get('time')} (RTO {r.get('rto_seconds')} s)" if ok else
                f"drill failed at {r.get('failed_step')}: {r.get('cause') or 'a check failed'}")
        return {"state": VERIFIED if ok else FAILED, "result": r, "text": text}
    limit = cluster.verify.max_delay_minutes
    finished = times.utc(finished_at)
    waited = (at - finished).total_seconds() / 60 if finished else None
    if waited is not None and waited > limit:
        waited_text = f"{waited:.0f} min" if waited < 120 else f"{waited / 60:.1f} h"
        return {"state": OVERDUE, "result": None,
                "text": f"not verified {waited_text} after it finished (verify.max_delay_minutes {limit})"}
    return {"state": PENDING, "result": None, "text": "drill pending"}


def problem(cluster: Cluster, tool: str, label: str | None, state: dict) -> str | None:
    """The freshness check's and the inventory's words for a backup that is not proven in time."""
    if state["state"] == FAILED:
        return f"{tool} backup {label}: {state['text']}"
    if state["state"] == OVERDUE:
        return f"{tool} backup {label} {state['text']}"
    return None


def unverified(cluster: Cluster, client, verdicts: list[dict], at: datetime) -> list[str]:
    """The freshness check's judgement: each tool's newest backup (``verdicts``: freshness.judge_backup's)
    proven by its drill within verify.max_delay_minutes, read from the bucket's results objects (the
    verification host's log is out of the database host's reach). Sets each verdict's ``verification``."""
    problems = []
    for verdict in verdicts:
        if not verdict.get("label"):
            continue
        tool, label = verdict["tool"], verdict["label"]
        state = backup_state(cluster, tool, label, verdict["finished_at"], by_backup(read_results(cluster, client, tool)), at)
        verdict["verification"] = state["state"]
        log.info("%s backup %s: %s", tool, label, state["text"])
        if found := problem(cluster, tool, label, state):
            problems.append(found)
    return problems


def failure_text(line: dict) -> str:
    return (f"verification drill of cluster {line['cluster']} failed: {line['tool']} backup "
            f"{line.get('backup_label') or '(none chosen)'} at step {line.get('failed_step')}: "
            f"{'; '.join(line.get('errors') or []) or 'a check failed'}")


def attempt(cluster: Cluster, kind: str, run) -> tuple[dict, list[str]]:
    """Run a drill, ``run(progress)``, for the cron path: the steps it reported and every error,
    the target torn down whatever happened."""
    steps: dict = {}
    errors: list[str] = []
    try:
        run(lambda step, done: steps.__setitem__(step, done))
    except CheckFailed as exc:
        steps["checks_failed"] = exc.checks
        errors.append(str(exc))
    except Exception as exc:  # noqa: BLE001 - every failure is evidence
        errors.append(f"{type(exc).__name__}: {exc}")
    finally:
        try:
            teardown(cluster, kind)
        except Exception as exc:  # noqa: BLE001
            errors.append(f"teardown: {type(exc).__name__}: {exc}")
    return steps, errors


def run_drill(cluster: Cluster, tool: str, access, client, run_id: str, label: str | None = None,
              dbname: str | None = None) -> dict:
    """The whole drill for cron: plan, drill, evidence, teardown; raises when it did not pass."""
    started_at = times.iso(times.now())
    planned = plan(cluster, tool, access, label)  # a refusal writes no line: nothing happened
    clock = time.monotonic()
    steps, errors = attempt(cluster, BACKUP, lambda progress: drill(cluster, tool, access, planned["record"], progress,
                                                                    dbname))
    line = verification_line(cluster, run_id=run_id, tool=tool, record=planned["record"], steps=steps,
                             errors=errors, started_at=started_at)
    log.info("drill of %s took %.1f s", planned["record"]["label"], time.monotonic() - clock)
    result = record_evidence(cluster, client, line)
    if line["outcome"] != "success":
        raise ToolError(failure_text(line), retryable=False)
    return {**result, "line": line}
