"""The backup inventory: every cluster's newest good backups, WAL archiving, bucket, last restore
test, the bucket's monthly cost estimate, a status in words, a 30-day timeline and the history behind the trend chart.

It only reads what the DAGs already publish, and runs no tool and opens no connection to a
cluster's database:

- the backup records, events of each backup DAG's asset (``Cluster.asset_name``, ``publish_backup``);
- the runs of the cluster's DAGs (failures, the newest run of each backup DAG);
- the freshness DAG's XComs (``archiver_stats`` of ``check_wal_archiving``, the return value of
  ``bucket_usage``) and, when newer, the Prometheus textfiles of ``metrics.textfile_directory``;
- the restore-test audit log (``restore_test.audit_log``, one JSON line per run);
- the verification drills' results (``verification.RESULT_XCOM`` of each ``verify_backup`` run,
  and the lines of ``verify.log`` where this machine can read it: the cron drills): each backup
  verified, failed or pending, and each tool's last verified backup with its RTO;
- the daily PITR drills' results (``pitr.RESULT_XCOM``, and ``verify.log``'s PITR lines) and each
  tool's recovery window, as the freshness check measured it (``check_backups``'s return value).

The files and the drills' XComs are read by :mod:`pg_backups.inventory_sources`. Airflow's
metadata is reached through a *store* (:class:`Store`): the API server's is
``pg_backups.airflow.inventory_store.MetadataStore``; the unit tests and the benchmark use others.
Nothing here imports Airflow.
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Protocol, TypedDict
from urllib.parse import quote

from pg_backups import audit, costs, freshness, pitr, verification
from pg_backups import inventory_sources as sources
from pg_backups.times import iso, now, utc

if TYPE_CHECKING:
    from pg_backups.config import Cluster

TIMELINE_DAYS = 30
HISTORY_DAYS = 365
XCOM_WINDOW_DAYS = 2  # the hourly freshness DAG's results older than this are not "the current state"
RESTORE_TEST_MAX_AGE_DAYS = 100  # as the PgRestoreTestTooOld alert
GREEN, AMBER, RED = "green", "amber", "red"
EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
SAME_CHECK = timedelta(minutes=2)


class Status(TypedDict):
    """A cluster's colour and why: every red reason first, then the amber ones."""
    colour: str  # GREEN, AMBER or RED
    reasons: list[str]
    text: str


class InventoryRow(TypedDict):
    """One cluster of the inventory: an item of the JSON API's ``clusters``, a row of the page."""
    name: str
    stanza: str
    tools: list[str]
    status: Status
    backups: dict[str, dict | None]  # by tool: the newest good backup, with its drill's state
    last_backup_runs: dict[str, dict | None]  # by tool
    last_freshness_run: dict | None
    wal: dict  # state (ok, lagging, failing, unknown) and pg_stat_archiver's figures
    bucket: dict
    restore_test: dict | None  # the newest audit line, as shown
    last_successful_restore_test: str | None  # ISO time
    verification: dict | None  # None where drills are off: the last verified backup, its RTO
    pitr: dict  # by tool: the recovery window and the last PITR drill
    timeline: list[dict]  # oldest first; made for the rows shown only (after paging)


class Store(Protocol):
    """What the inventory reads from Airflow's metadata; every method takes all clusters at once."""

    def newest_backup_events(self, asset_names: list[str]) -> dict[str, dict]:
        """asset name -> its newest event: {asset, timestamp, extra, dag_id, run_id}."""

    def backup_events(self, asset_names: list[str], since: datetime) -> list[dict]:
        """Every event of these assets since ``since``, oldest first."""

    def failed_runs(self, dag_ids: list[str], since: datetime) -> list[dict]:
        """Failed runs of these DAGs since ``since``: {dag_id, run_id, state, start_date, end_date, run_after}."""

    def last_runs(self, dag_ids: list[str], since: datetime | None = None) -> dict[str, dict]:
        """dag_id -> its newest run (``since``: among the runs since then; for hourly DAGs)."""

    def latest_xcoms(self, dag_ids: list[str], task_id: str, key: str, since: datetime) -> dict[str, dict]:
        """dag_id -> {value, timestamp, run_id} of the newest XCom ``task_id``/``key`` since ``since``."""

    def all_xcoms(self, dag_ids: list[str], task_id: str, key: str) -> list[dict]:
        """Every XCom ``task_id``/``key`` of these DAGs (for DAGs that run a few times a year):
        {dag_id, run_id, value, timestamp}."""

    def xcoms_since(self, dag_ids: list[str], task_id: str, key: str, since: datetime) -> list[dict]:
        """Every XCom ``task_id``/``key`` of these DAGs' runs since ``since`` (for DAGs that run
        daily): {dag_id, run_id, value, timestamp}."""


def run_link(dag_id: str | None, run_id: str | None) -> str | None:
    """Path of a run's page in the Airflow UI, from the API server's root."""
    if not dag_id or not run_id or run_id.startswith("cron__"):  # the cron scripts' runs are not Airflow's
        return None
    return f"/dags/{quote(dag_id, safe='')}/runs/{quote(run_id, safe='')}"


def age_text(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 0:
        seconds = 0
    if seconds < 3600:
        return f"{int(seconds // 60)} min"
    if seconds < 48 * 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.0f} d"


def size_text(value: float | None) -> str:
    if value is None:
        return "-"
    value = float(value)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} PiB"  # pragma: no cover


# --------------------------------------------------------------------------------------------
# The drills' columns (their results: inventory_sources)

def _pitr(cluster: Cluster, results: list[dict], windows: dict | None) -> dict:
    """Per tool: the recovery window (first and last recoverable point) and the last PITR drill."""
    out = {}
    for tool in cluster.tools:
        mine = [r for r in results if r.get("tool") == tool]
        last = dict(mine[-1]) if mine else None
        if last:
            last["run_link"] = run_link(cluster.dag_id("verify_pitr"), last.get("run_id"))
        out[tool] = {"window": (windows or {}).get(tool), "last_drill": last}
    return out


def _windows(xcom: dict | None) -> dict | None:
    value = (xcom or {}).get("value")
    if not isinstance(value, dict) or not isinstance(value.get("recovery_windows"), list):
        return None
    return {w["tool"]: {"start": w.get("start"), "end": w.get("end"), "end_source": w.get("end_source"),
                        "measured_at": iso((xcom or {}).get("timestamp"))} for w in value["recovery_windows"]
            if isinstance(w, dict) and w.get("tool")}


def _drill(cluster: Cluster, r: dict | None) -> dict | None:
    if not r:
        return None
    return {"backup_label": r.get("backup_label"), "backup_time": r.get("backup_time"), "time": r.get("time"),
            "rto_seconds": r.get("rto_seconds"), "outcome": r.get("outcome"), "failed_step": r.get("failed_step"),
            "cause": r.get("cause"), "run_id": r.get("run_id"),
            "run_link": run_link(cluster.dag_id("verify_backup"), r.get("run_id"))}


def _backup_verification(cluster: Cluster, tool: str, backup: dict | None, drilled: dict, at: datetime) -> dict | None:
    """The newest backup's state: verified, failed, pending or overdue (verification.backup_state)."""
    if backup is None:
        return None
    state = verification.backup_state(cluster, tool, backup["label"], backup["stop_time"], drilled, at)
    return {"state": state["state"], "text": state["text"], **({"drill": _drill(cluster, state["result"])}
                                                                 if state["result"] else {})}


def _verification(cluster: Cluster, results: list[dict]) -> dict:
    """Per tool: the last drill, and the last verified backup with its RTO."""
    out = {}
    for tool in cluster.tools:
        mine = [r for r in results if r.get("tool") == tool]
        verified = [r for r in mine if r.get("outcome") == "success"]
        out[tool] = {"last_drill": _drill(cluster, mine[-1] if mine else None),
                     "last_verified": _drill(cluster, verified[-1] if verified else None)}
    return out


def _backup(event: dict | None, at: datetime) -> dict | None:
    if not event:
        return None
    record = dict(event.get("extra") or {})
    stop = utc(record.get("stop_time")) or utc(event.get("timestamp"))
    age = (at - stop).total_seconds() if stop else None
    run_id = record.get("airflow_run_id") or event.get("run_id")
    dag_id = event.get("dag_id")
    return {
        "label": record.get("label"),
        "type": record.get("type"),
        "start_time": record.get("start_time"),
        "stop_time": iso(stop),
        "age_seconds": round(age, 1) if age is not None else None,
        "age": age_text(age),
        "duration_seconds": record.get("duration_seconds"),
        "database_size_bytes": record.get("database_size_bytes"),
        "backup_size_bytes": record.get("backup_size_bytes"),
        "repo_size_bytes": record.get("repo_size_bytes"),
        "size": size_text(record.get("database_size_bytes")),
        "stored": size_text(record.get("repo_size_bytes")),
        "backup_count": record.get("backup_count"),
        "dag_id": dag_id,
        "run_id": run_id,
        "run_link": run_link(dag_id, run_id),
    }


def _run(run: dict | None) -> dict | None:
    if not run:
        return None
    return {"dag_id": run["dag_id"], "run_id": run["run_id"], "state": run.get("state"),
            "start_date": iso(run.get("start_date")), "end_date": iso(run.get("end_date")),
            "run_link": run_link(run["dag_id"], run["run_id"])}


def _newest(candidates: list[tuple]) -> tuple:
    """The newest reading; the XCom when both come from the same check (the textfile is written a
    moment after the XCom, by the same task)."""
    candidates = sorted(candidates, key=lambda c: (c[1] or EPOCH) + (SAME_CHECK if c[0] == "xcom" else timedelta(0)))
    return candidates[-1]


def _wal(cluster: Cluster, xcom: dict | None, at: datetime | None = None) -> dict:
    """Newest of the freshness DAG's XCom and the textfile."""
    candidates = []
    if xcom and isinstance(xcom.get("value"), dict):
        candidates.append(("xcom", utc(xcom.get("timestamp")), xcom["value"]))
    parsed = sources.textfile(cluster, "wal_archive")
    if parsed:
        candidates.append(("metrics", sources.textfile_written_at(parsed), sources.wal_from_textfile(parsed)))
    if not candidates:
        return {"state": "unknown", "source": None, "measured_at": None, "text": "no WAL archiving data yet"}
    source, measured, stats = _newest(candidates)
    if at is not None and measured is not None and at - measured > timedelta(days=XCOM_WINDOW_DAYS):
        return {"state": "unknown", "source": source, "measured_at": iso(measured),
                "text": f"WAL archiving not measured since {iso(measured)}"}
    failing = freshness.archiver_failing(stats)
    ready = stats.get("ready_count")
    lagging = ready is not None and ready >= freshness.WAL_READY_LAG_SEGMENTS  # as PgWalArchivingLagging
    state = "failing" if failing else ("lagging" if lagging else "ok")
    return {
        "state": state,
        "source": source,
        "measured_at": iso(measured),
        "last_archived_time": iso(stats.get("last_archived_time")),
        "last_archived_wal": stats.get("last_archived_wal"),
        "last_failed_time": iso(stats.get("last_failed_time")),
        "ready_count": int(ready) if ready is not None else None,
        "failed_count": int(stats["failed_count"]) if stats.get("failed_count") is not None else None,
        "archived_count": int(stats["archived_count"]) if stats.get("archived_count") is not None else None,
    }


def _bucket(cluster: Cluster, xcom: dict | None) -> dict:
    candidates = []
    if xcom and isinstance(xcom.get("value"), dict) and "by_class" in xcom["value"]:
        candidates.append(("xcom", utc(xcom.get("timestamp")), xcom["value"]))
    parsed = sources.textfile(cluster, "s3")
    if parsed and sources.metric_samples(parsed, "s3_bucket_size_bytes"):
        candidates.append(("metrics", sources.textfile_written_at(parsed), sources.bucket_from_textfile(parsed)))
    if not candidates:
        return {"bucket": cluster.s3.bucket, "source": None, "measured_at": None, "by_class": [], "total_bytes": None,
                "classes": {}, "cost": None}
    source, measured, usage = _newest(candidates)
    by_class = usage.get("by_class") or []
    classes: dict[str, float] = {}
    for row in by_class:
        classes[row["storage_class"]] = classes.get(row["storage_class"], 0) + (row.get("bytes") or 0)
    return {"bucket": usage.get("bucket") or cluster.s3.bucket, "source": source, "measured_at": iso(measured),
            "by_class": by_class, "total_bytes": sum(classes.values()), "classes": classes,
            "cost": costs.estimate(cluster, usage)}


def audit_object(cluster: Cluster, line: dict, endpoint: str | None = None) -> dict:
    """Where audit_and_archive put the audit log of this run (``audit.archive_key``); ``endpoint``:
    the AWS connection's endpoint, when ``s3.endpoint_url`` does not override it."""
    day = utc(line.get("time")) or now()
    key = audit.archive_key(cluster, line.get("run_id") or "unknown", os.path.basename(cluster.restore_test.audit_log),
                            day)
    bucket = cluster.s3.bucket
    endpoint = cluster.s3.endpoint_url or endpoint
    if endpoint:  # an S3-compatible store: its own path-style URL
        url = f"{endpoint.rstrip('/')}/{bucket}/{quote(key)}"
    else:
        url = (f"https://{cluster.s3.region}.console.aws.amazon.com/s3/object/{bucket}"
               f"?region={cluster.s3.region}&prefix={quote(key, safe='')}")
    return {"uri": f"s3://{bucket}/{key}", "url": url}


def _restore(cluster: Cluster, line: dict | None, at: datetime, endpoint: str | None = None) -> dict | None:
    if not line:
        return None
    checks = line.get("checks") or []
    ok = sum(1 for c in checks if c.get("result") == "ok")
    signoff = line.get("signoff") or {}
    when = utc(line.get("time"))
    return {
        "time": iso(when),
        "age": age_text((at - when).total_seconds() if when else None),
        "run_id": line.get("run_id"),
        "run_link": run_link(cluster.dag_id("restore_test"), line.get("run_id")),
        "tool": line.get("tool"),
        "backup_label": line.get("backup_label"),
        "backup_time": line.get("backup_time"),
        "target_time": line.get("target_time"),
        "rto_seconds": line.get("restore_duration_seconds"),
        "checks": checks,
        "checks_text": f"{ok}/{len(checks)} ok" if checks else "none",
        "signoff": {"status": signoff.get("status"), "by": signoff.get("by"), "at": signoff.get("at"),
                    "comment": signoff.get("comment")},
        "errors": line.get("errors") or [],
        "outcome": line.get("outcome"),
        "audit": audit_object(cluster, line, endpoint),
    }


def _status(cluster: Cluster, backups: dict, last_runs: dict, wal: dict, restore: dict | None, last_success: dict | None,
            at: datetime, pitr_drills: dict | None = None) -> Status:
    red, amber = [], []
    limit = cluster.alerts.max_backup_age_hours
    for tool in cluster.tools:
        backup = backups.get(tool)
        if backup is None:
            red.append(f"no good {tool} backup")
        elif backup["age_seconds"] is not None and backup["age_seconds"] > limit * 3600:
            red.append(f"newest {tool} backup is {backup['age']} old (limit {limit} h)")
        run = last_runs.get(tool)
        if run and run["state"] == "failed":
            amber.append(f"last {tool} backup run failed ({run['run_id']})")
    states = []
    for tool in cluster.tools:
        backup = backups.get(tool)
        verified = backup and backup.get("verification")
        if verified:
            states.append(verified["state"])
            text = verification.problem(cluster, tool, backup["label"], verified)
            if verified["state"] == verification.FAILED:
                red.append(text)
            elif verified["state"] == verification.OVERDUE:
                amber.append(text)
    for tool, drilled in (pitr_drills or {}).items():
        last = drilled.get("last_drill")
        if last and last.get("outcome") != "success":
            red.append(f"last PITR drill of {tool} failed (target {last.get('target_time')}, step "
                       f"{last.get('failed_step')}): {last.get('cause') or 'a check failed'}")
    if wal["state"] == "failing":
        red.append(f"WAL archiving failing since {wal['last_failed_time']}")
    elif wal["state"] == "lagging":
        amber.append(f"{wal['ready_count']} WAL segments waiting to be archived")
    elif wal["state"] == "unknown":
        amber.append(wal["text"] if wal.get("measured_at") else "WAL archiving not measured yet (freshness DAG)")
    if restore is None:
        amber.append("no restore test recorded")
    elif restore["outcome"] != "success":
        red.append(f"last restore test failed ({restore['time']})")
    else:
        when = utc(last_success["time"]) if last_success else None
        if when and (at - when) > timedelta(days=RESTORE_TEST_MAX_AGE_DAYS):
            amber.append(f"last successful restore test is {age_text((at - when).total_seconds())} old")
    freshness_run = last_runs.get("freshness")
    if freshness_run and freshness_run["state"] == "failed":
        amber.append(f"last freshness check failed ({freshness_run['run_id']})")
    if red:
        return {"colour": RED, "reasons": red + amber, "text": "; ".join(red + amber)}
    if amber:
        return {"colour": AMBER, "reasons": amber, "text": "; ".join(amber)}
    restored = f", restore proven {restore['age']} ago" if restore else ""
    drills = ""
    if states:
        drills = ", newest backups verified" if set(states) == {verification.VERIFIED} else ", drill pending"
    return {"colour": GREEN, "reasons": [], "text": f"backups fresh, WAL archiving{restored}{drills}"}


def _item(when: datetime | None, kind: str, **fields) -> dict:
    return {"time": iso(when), "epoch": when.timestamp() if when else None, "kind": kind, **fields}


def _timeline(cluster: Cluster, events: list[dict], failed: list[dict], audit: list[dict], since: datetime,
              drilled: dict | None = None, at: datetime | None = None) -> list[dict]:
    """Oldest first. Each item: time (ISO) and epoch (Unix seconds), kind (backup, restore_test,
    failure), and what it is; backups name their run (dag_id, run_id) and, where drills run, what
    their drill says (``verification``: verified, failed, pending, overdue); the others link to their run."""
    items = []
    tool_of_asset = {cluster.asset_name(tool): tool for tool in cluster.tools}
    for event in events:
        record = event.get("extra") or {}
        tool = record.get("tool") or tool_of_asset.get(event["asset"])
        stop = utc(record.get("stop_time")) or utc(event["timestamp"])
        text = f"{tool} {record.get('type')} backup {record.get('label')}"
        state = None
        if drilled is not None:
            judged = verification.backup_state(cluster, tool, record.get("label"), stop, drilled, at or now())
            state, text = judged["state"], f"{text}: {judged['text']}"
        items.append(_item(stop, "backup", tool=tool, type=record.get("type"), label=record.get("label"),
                           text=text, verification=state, dag_id=event.get("dag_id"),
                           run_id=record.get("airflow_run_id") or event.get("run_id")))
    for line in audit:
        when = utc(line.get("time"))
        if when and when >= since:
            items.append(_item(when, "restore_test", tool=line.get("tool"), type=None, label=line.get("backup_label"),
                               outcome=line.get("outcome"),
                               text=f"restore test {line.get('outcome')} ({line.get('backup_label')}, "
                                    f"RTO {line.get('restore_duration_seconds')} s)",
                               run_link=run_link(cluster.dag_id("restore_test"), line.get("run_id"))))
    for run in failed:
        when = utc(run.get("end_date")) or utc(run.get("start_date")) or utc(run.get("run_after"))
        items.append(_item(when, "failure", tool=None, type=None, label=None, dag_id=run["dag_id"],
                           run_id=run["run_id"], text=f"{run['dag_id']} failed ({run['run_id']})",
                           run_link=run_link(run["dag_id"], run["run_id"])))
    items.sort(key=lambda item: item["epoch"] or 0)
    return items


# --------------------------------------------------------------------------------------------
# The whole installation


def cluster_dag_ids(cluster: Cluster) -> dict[str, str]:
    """The DAGs whose last run a row shows: each backup DAG (by tool) and the freshness check."""
    return {kind: cluster.dag_id(kind) for kind in (*cluster.tools, "freshness")}


WORST_FIRST = {RED: 0, AMBER: 1, GREEN: 2}


def build(clusters: list[Cluster], store: Store, at: datetime | None = None, timeline_days: int = TIMELINE_DAYS,
          s3_endpoints: dict[str, str | None] | None = None, offset: int = 0, limit: int | None = None) -> dict:
    """The inventory of every cluster: what the page and ``/api/inventory`` show. ``s3_endpoints``:
    the endpoint of each AWS connection id (for the audit objects' links; none: AWS itself).

    ``limit``: one page of a fleet, the red rows first, then amber, then green (by name within a
    colour), from ``offset``; ``counts`` still count every cluster and ``total`` says how many there
    are. Only the page's rows get their timeline (the costliest part of a row). Without ``limit``,
    every row in the configuration's order."""
    s3_endpoints = s3_endpoints or {}
    at = at or now()
    since = at - timedelta(days=timeline_days)
    assets = {c.asset_name(tool): (c.name, tool) for c in clusters for tool in c.tools}
    newest = store.newest_backup_events(list(assets))
    recent = store.backup_events(list(assets), since)
    dag_owner = {c.dag_id(kind): c.name for c in clusters for kind in c.dag_kinds}
    failed = store.failed_runs(list(dag_owner), since)
    freshness_dags = [c.dag_id("freshness") for c in clusters]
    xcom_since = at - timedelta(days=XCOM_WINDOW_DAYS)
    last = store.last_runs([c.dag_id(tool) for c in clusters for tool in c.tools])
    last.update(store.last_runs(freshness_dags, since=xcom_since))
    audit_xcoms = sources.audit_xcoms(clusters, store)
    verify_xcoms = sources.verification_xcoms(clusters, store, since)
    pitr_dags = {c.dag_id("verify_pitr"): c.name for c in clusters if "verify_pitr" in c.dag_kinds}
    pitr_xcoms: dict[str, list[dict]] = {}
    for row in store.xcoms_since(list(pitr_dags), *pitr.RESULT_XCOM, since) if pitr_dags else []:
        if isinstance(row.get("value"), dict):
            pitr_xcoms.setdefault(pitr_dags[row["dag_id"]], []).append(row["value"])
    window_xcoms = store.latest_xcoms(freshness_dags, "check_backups", "return_value", xcom_since)
    wal_xcoms = store.latest_xcoms(freshness_dags, "check_wal_archiving", "archiver_stats", xcom_since)
    bucket_xcoms = store.latest_xcoms(freshness_dags, "bucket_usage", "return_value", xcom_since)

    events_by_cluster: dict[str, list] = {}
    for event in recent:
        name, _tool = assets.get(event["asset"], (None, None))
        if name:
            events_by_cluster.setdefault(name, []).append(event)
    failed_by_cluster: dict[str, list] = {}
    for run in failed:
        if run["dag_id"] in dag_owner:
            failed_by_cluster.setdefault(dag_owner[run["dag_id"]], []).append(run)

    rows: list[InventoryRow] = []
    for c in clusters:
        backups = {tool: _backup(newest.get(c.asset_name(tool)), at) for tool in c.tools}
        last_runs = {key: _run(last.get(dag_id)) for key, dag_id in cluster_dag_ids(c).items()}
        # A failed run older than the newest good backup is history, not the current state.
        for tool in c.tools:
            run, backup = last_runs.get(tool), backups.get(tool)
            if run and backup and run["state"] == "failed" and run["run_id"] == backup["run_id"]:
                run["state"] = "success"
        drilled = None
        if c.verify.enabled:
            results = sources.verification_results(c, verify_xcoms.get(c.name, []))
            drilled = verification.by_backup(results)
            for tool, backup in backups.items():
                if backup:
                    backup["verification"] = _backup_verification(c, tool, backup, drilled, at)
        lines = sources.audit_lines(c, audit_xcoms.get(c.name, []))
        restore = _restore(c, lines[-1] if lines else None, at, s3_endpoints.get(c.s3.aws_conn_id))
        last_success = next((line for line in reversed(lines) if line.get("outcome") == "success"), None)
        drills = sources.pitr_results(c, pitr_xcoms.get(c.name, [])) if "verify_pitr" in c.dag_kinds else []
        pitr_drills = _pitr(c, drills, _windows(window_xcoms.get(c.dag_id("freshness"))))
        wal = _wal(c, wal_xcoms.get(c.dag_id("freshness")), at)
        bucket = _bucket(c, bucket_xcoms.get(c.dag_id("freshness")))
        rows.append({
            "name": c.name,
            "stanza": c.stanza,
            "tools": list(c.tools),
            "status": _status(c, backups, last_runs, wal, restore, last_success, at, pitr_drills),
            "backups": backups,
            "last_backup_runs": {tool: last_runs.get(tool) for tool in c.tools},
            "last_freshness_run": last_runs.get("freshness"),
            "wal": wal,
            "bucket": bucket,
            "restore_test": restore,
            "last_successful_restore_test": iso(last_success.get("time")) if last_success else None,
            "verification": _verification(c, results) if drilled is not None else None,
            "pitr": pitr_drills,
            "timeline": (c, lines, drilled),  # made below, for the rows shown only
        })
    counts = {colour: sum(1 for r in rows if r["status"]["colour"] == colour) for colour in (GREEN, AMBER, RED)}
    total = len(rows)
    if limit is not None:
        rows = sorted(rows, key=lambda r: (WORST_FIRST[r["status"]["colour"]], r["name"]))[offset:offset + limit]
    for row in rows:
        c, lines, drilled = row["timeline"]
        row["timeline"] = _timeline(c, events_by_cluster.get(c.name, []), failed_by_cluster.get(c.name, []), lines,
                                    since, drilled, at)
    out = {"generated_at": iso(at), "timeline_days": timeline_days, "counts": counts, "clusters": rows}
    if limit is not None:
        out.update(total=total, offset=offset, limit=limit)
    return out


def history(cluster: Cluster, store: Store, at: datetime | None = None, days: int = HISTORY_DAYS) -> dict:
    """Backup duration and sizes per tool and type, and restore RTO, over ``days``: the trend chart."""
    at = at or now()
    since = at - timedelta(days=days)
    backups = []
    for event in store.backup_events([cluster.asset_name(tool) for tool in cluster.tools], since):
        record = event.get("extra") or {}
        backups.append({"time": iso(utc(record.get("stop_time")) or utc(event["timestamp"])),
                        "tool": record.get("tool"), "type": record.get("type"), "label": record.get("label"),
                        "duration_seconds": record.get("duration_seconds"),
                        "database_size_bytes": record.get("database_size_bytes"),
                        "repo_size_bytes": record.get("repo_size_bytes")})
    restores = []
    for line in sources.audit_lines(cluster, sources.audit_xcoms([cluster], store).get(cluster.name, [])):
        when = utc(line.get("time"))
        if when and when >= since:
            restores.append({"time": iso(when), "tool": line.get("tool"), "backup_label": line.get("backup_label"),
                             "rto_seconds": line.get("restore_duration_seconds"), "outcome": line.get("outcome")})
    return {"cluster": cluster.name, "days": days, "generated_at": iso(at), "backups": backups,
            "restore_tests": restores}
