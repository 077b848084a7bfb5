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
import logging
import os
import shutil
import time

from pg_backups import audit, checks, metrics, operations, pgbackrest, staging, times, walg
from pg_backups.errors import CheckFailed, RestoreRefused

log = logging.getLogger(__name__)

# A restored copy's pgBackRest lock path of its own (pgbackrest.restore_lock_path): never staging's.
LOCK_COPY = "verify-copy"
KIND = "verification"
STEPS = ("plan", "restore", "start", "checks")


def target(cluster):
    """The cluster as the restore test's code sees it, with the drill's target as its staging."""
    v = cluster.verify
    rt = dataclasses.replace(cluster.restore_test, staging_root=v.root, staging_data_directory=data_directory(cluster),
                             staging_port=v.port, staging_socket_directory=v.socket_directory,
                             staging_queue=v.queue, smoke_log=v.smoke_log, audit_log=v.log)
    return dataclasses.replace(cluster, restore_test=rt)


def data_directory(cluster) -> str:
    return os.path.join(cluster.verify.root, cluster.name)


def required_bytes(cluster, record: dict) -> int:
    """What the restored copy needs: the database size the backup restores (pgBackRest ``info.size``,
    WAL-G's uncompressed size), plus ``verify.free_space_margin_percent`` for the WAL replayed."""
    size = record.get("database_size_bytes") or record.get("backup_size_bytes") or 0
    return int(size * (100 + cluster.verify.free_space_margin_percent) / 100)


def free_bytes(path: str) -> int:
    """Free space where the target will be (its nearest existing parent)."""
    while not os.path.exists(path):
        path = os.path.dirname(path)
    return shutil.disk_usage(path).free


def check_free_space(cluster, record: dict) -> dict:
    """Refuse before anything is restored when ``verify.root`` cannot hold the backup."""
    need, free = required_bytes(cluster, record), free_bytes(cluster.verify.root)
    if need > free:
        raise RestoreRefused("verify.root", f"{cluster.verify.root} has {_size(free)} free, and backup "
                             f"{record.get('label')} needs {_size(need)} (database {_size(record.get('database_size_bytes') or 0)}"
                             f" + verify.free_space_margin_percent {cluster.verify.free_space_margin_percent} %); "
                             "nothing was restored", "free space there, or point verify.root at a larger filesystem")
    return {"free_bytes": free, "required_bytes": need}


def _size(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


def plan(cluster, tool: str, access, label: str | None = None, record: dict | None = None) -> dict:
    """Which backup (the published record, else read from the repository), the target's guard and
    the disk guard: every refusal comes before the target is touched."""
    if tool not in cluster.tools:
        raise RestoreRefused("tool", f"{tool!r} does not back up cluster {cluster.name} ({cluster.tools})",
                             "choose one of the cluster's tools")
    if record is None:
        record = operations.restore_backup_record(cluster, tool, access, label)  # writes the tool's config
    elif access is not None:  # the published record: the verification host still needs the tool's config
        (walg if tool == "walg" else pgbackrest).write_config(cluster, access)
    guarded = staging.guard(target(cluster))
    return {"tool": tool, "record": record, "target": target_description(cluster), "guard": guarded,
            "space": check_free_space(cluster, record)}


def target_description(cluster) -> dict:
    v = cluster.verify
    return {"data_directory": data_directory(cluster), "port": v.port, "host": v.queue or "(default queue)"}


def drill(cluster, tool: str, access, record: dict, progress=None, dbname: str | None = None) -> dict:
    """Restore ``record``'s backup onto the target, start it, wait for recovery's end, run the
    restore test's checks; the target's server is stopped at the end whatever happened (the next
    drill on the host may use the port), and the directory is left to :func:`teardown`.

    ``progress(step, result)`` is called after each step (the DAG keeps them as XComs, so that the
    evidence names what was done when a step fails). RTO = restore + start + recovery. ``dbname``:
    the database of ``restore_test.check_tables``, as the restore test has it (its staging
    connection's database)."""
    t = target(cluster)
    report = progress or (lambda step, result: None)
    try:
        staging.stop_staging(t)  # a server left by an interrupted drill
        staging.purge_staging(t)  # the target's directory, empty, 0700, the OS user's
        done = operations.restore_latest_backup(t, tool, access, record=record, copy=LOCK_COPY)
        report("restore", done)
        started = operations.restore_start_staging(t)
        report("start", started)
        smoke = checks.smoke(t, dbname)
        results = checks.data_checks(t, record, dbname)
        report("checks", {"smoke": smoke, "checks": results})
    finally:
        try:
            staging.stop_staging(t)
        except Exception as exc:  # noqa: BLE001 - the drill's own error stands; teardown stops it again
            log.warning("could not stop the drill's target: %s", exc)
    return {"restore": done, "start": started, "smoke": smoke, "checks": results,
            "rto_seconds": round(done["restore_seconds"] + started["startup_seconds"], 2)}


def teardown(cluster) -> dict:
    """Stop the target's server if it runs, and remove its directory (guarded: only under verify.root)."""
    t = target(cluster)
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


def verification_line(cluster, *, run_id: str, tool: str, record: dict | None, steps: dict,
                      errors: list[str], started_at: str | None = None) -> dict:
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
        "target": target_description(cluster),
        "restore_seconds": restore and restore["restore_seconds"],
        "startup_seconds": start and start["startup_seconds"],
        "rto_seconds": rto,
        "smoke": checked.get("smoke"),
        "checks": results,
        "outcome": "success" if ok else "failed",
        "failed_step": None if ok else failed_step(steps),
        "errors": errors,
    }


def record_evidence(cluster, client, line: dict) -> dict:
    """Append the line to ``verify.log``, archive it (and the drill's smoke log) to S3 beside the
    restore test's audit, publish the metrics; the line is the evidence, a metrics outage changes
    nothing."""
    t = target(cluster)
    path = audit.append_audit(t, line)
    uris = audit.archive_logs(t, client, line["run_id"]) if client is not None else []
    try:
        metrics.record_verify(cluster, line)
    except Exception as exc:  # noqa: BLE001
        log.warning("verification metrics not published: %s: %s", type(exc).__name__, exc)
    return {"verify_log": path, "archived": uris, "outcome": line["outcome"]}


def failure_text(line: dict) -> str:
    return (f"verification drill of cluster {line['cluster']} failed: {line['tool']} backup "
            f"{line.get('backup_label') or '(none chosen)'} at step {line.get('failed_step')}: "
            f"{'; '.join(line.get('errors') or []) or 'a check failed'}")


def run_drill(cluster, tool: str, access, client, run_id: str, label: str | None = None,
              dbname: str | None = None) -> dict:
    """The whole drill for cron: plan, drill, evidence, teardown; raises when it did not pass."""
    started_at = times.iso(times.now())
    planned = plan(cluster, tool, access, label)  # a refusal writes no line: nothing happened
    steps: dict = {}
    errors: list[str] = []
    clock = time.monotonic()
    try:
        drill(cluster, tool, access, planned["record"], lambda step, result: steps.__setitem__(step, result), dbname)
    except CheckFailed as exc:
        steps["checks_failed"] = exc.checks
        errors.append(str(exc))
    except Exception as exc:  # noqa: BLE001 - every failure is evidence
        errors.append(f"{type(exc).__name__}: {exc}")
    finally:
        try:
            teardown(cluster)
        except Exception as exc:  # noqa: BLE001
            errors.append(f"teardown: {type(exc).__name__}: {exc}")
    line = verification_line(cluster, run_id=run_id, tool=tool, record=planned["record"], steps=steps,
                             errors=errors, started_at=started_at)
    log.info("drill of %s took %.1f s", planned["record"]["label"], time.monotonic() - clock)
    result = record_evidence(cluster, client, line)
    if line["outcome"] != "success":
        from pg_backups.errors import ToolError

        raise ToolError(failure_text(line), retryable=False)
    return {**result, "line": line}
