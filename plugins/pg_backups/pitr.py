"""The daily random-point PITR drill: a point of the recovery window drawn, recovered onto the
drill's target, and checked against what production had at that point.

Production gets something to check against: a heartbeat row (:data:`HEARTBEAT_TABLE` in database
``postgres``, beside the marker rows), written every ``verify.heartbeat_minutes`` by the
heartbeat DAG or cron: its time and the WAL position it was written at, 16 bytes of data.

The drill, in order:

1. :func:`choose_target`, on the database host: the **recovery window** of the tool (its oldest
   good backup's stop time, up to the newest heartbeat whose WAL segment and the one after it are
   archived: PostgreSQL ends recovery with "recovery ended before configured recovery target was
   reached" unless a commit after the target is archived), a target drawn in it (seeded by the run
   id: the same run draws the same point), or the run's ``target_time``; and what production had
   then: the newest heartbeat at or before the target, the first one after it.
2. The verification drill's plan, restore (PITR to the target), start and checks
   (:mod:`pg_backups.verification`, target ``<verify.root>/<cluster>-pitr``), with
   :func:`heartbeat_checks`: the newest heartbeat at or before the target is in the copy and none
   after it; and the **achieved recovery point**: the newest commit recovered
   (``pg_last_xact_replay_timestamp()``) and its gap to the target.
3. The evidence: one line (kind ``pitr_verification``) in ``verify.log``, archived with the
   others, and the ``pg_backups_verify_pitr_*`` metrics (textfile ``verify_<tool>_pitr``).

Nothing here imports Airflow: ``dags/verify_pitr.py`` and ``pg_backups.cli verify-pitr`` run the
same functions.
"""

from __future__ import annotations

import logging
import random
import re
import time
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from pg_backups import marker, pgbackrest, runner, staging, times, verification, walg
from pg_backups.errors import DrillRefused, ToolError

if TYPE_CHECKING:
    from pg_backups.config import Cluster

log = logging.getLogger(__name__)

KIND = "pitr_verification"
HEARTBEAT_TABLE = "pg_backups_heartbeat"
HEARTBEAT_DATABASE = marker.MARKER_DATABASE
# A heartbeat's commit comes a moment after its clock_timestamp(): a target that close after a
# heartbeat would make "is it recovered?" a race, so the draw steps past it.
AMBIGUOUS_SECONDS = 2
# The task and XCom key under which the PITR DAG leaves each drill's result (the inventory reads it).
RESULT_XCOM = ("record_evidence", "pitr_result")
RESULT_FIELDS = ("time", "tool", "run_id", "backup_label", "target_time", "drawn", "recovered_to", "rpo_gap_seconds",
                 "rto_seconds", "outcome", "failed_step")
SEGMENT_RE = re.compile(r"^[0-9A-F]{24}")


# --------------------------------------------------------------------------------------------
# Heartbeats, in production


def heartbeat_sql(keep_days: int) -> str:
    return (f"CREATE TABLE IF NOT EXISTS {HEARTBEAT_TABLE} (beat_at timestamptz NOT NULL DEFAULT clock_timestamp(), "
            f"lsn pg_lsn NOT NULL DEFAULT pg_current_wal_insert_lsn()); "
            f"CREATE INDEX IF NOT EXISTS {HEARTBEAT_TABLE}_beat_at ON {HEARTBEAT_TABLE} (beat_at); "
            f"DELETE FROM {HEARTBEAT_TABLE} WHERE beat_at < now() - interval '{int(keep_days)} days'; "
            f"INSERT INTO {HEARTBEAT_TABLE} DEFAULT VALUES RETURNING extract(epoch FROM beat_at), lsn;")


def keep_days(cluster: Cluster) -> int:
    """Heartbeats are kept as long as the longest retention, and a week more."""
    return max(cluster.pgbackrest.retention_full_days, cluster.walg.retention_days) + 7


def write_heartbeat(cluster: Cluster) -> dict:
    """One heartbeat row in production (psql as the cluster's OS user, as the marker rows)."""
    out = runner.production_sql(cluster, heartbeat_sql(keep_days(cluster)), quiet=True)
    epoch, lsn = out.splitlines()[-1].split("|")
    beat = times.utc(float(epoch))
    log.info("heartbeat %s at WAL %s", times.iso(beat), lsn)
    return {"beat_at": times.iso(beat), "lsn": lsn}


HEARTBEATS_SQL = (f"SELECT extract(epoch FROM beat_at), pg_walfile_name(lsn) FROM {HEARTBEAT_TABLE} "
                  "WHERE beat_at >= to_timestamp({since}) ORDER BY beat_at")


def heartbeats(cluster: Cluster, since: datetime) -> list[tuple[float, str]]:
    """(Unix time, WAL file) of production's heartbeats since ``since``, oldest first."""
    exists = runner.production_sql(cluster, f"SELECT to_regclass('{HEARTBEAT_TABLE}') IS NOT NULL", quiet=True)
    if exists.strip() != "t":
        return []
    out = runner.production_sql(cluster, HEARTBEATS_SQL.format(since=since.timestamp()), quiet=True)
    rows = []
    for line in out.splitlines():
        if "|" in line:
            epoch, walfile = line.split("|")
            rows.append((float(epoch), walfile.strip()))
    return rows


def last_archived(cluster: Cluster) -> tuple[str | None, datetime | None]:
    """The WAL segment pg_stat_archiver last archived (of a ``.backup`` or ``.partial`` name: its
    segment), and when."""
    out = runner.production_sql(cluster, "SELECT coalesce(last_archived_wal, '') || '|' || "
                                "coalesce(extract(epoch FROM last_archived_time)::text, '') FROM pg_stat_archiver",
                                quiet=True)
    name, _, when = out.strip().partition("|")
    match = SEGMENT_RE.match(name)
    return (match.group(0) if match else None), (times.utc(float(when)) if when else None)


def archived(walfile: str, last_segment: str | None) -> bool:
    """A heartbeat is safely archived when the segment after its own is: its commit record may
    cross into the next segment. Segment names compare in order within a timeline."""
    return last_segment is not None and walfile[:8] == last_segment[:8] and walfile < last_segment


# --------------------------------------------------------------------------------------------
# The recovery window and the draw


def oldest_backup_stop(cluster: Cluster, tool: str, access) -> datetime | None:
    """Where the tool's recovery window begins (its oldest good backup kept)."""
    if tool == "walg":
        walg.write_config(cluster, access)
        return walg.oldest_finished(walg.backup_list(cluster, access))
    return pgbackrest.oldest_good_stop(pgbackrest.info(cluster))


def recovery_window(tool: str, start: datetime | None, beats: list[tuple[float, str]], last_segment: str | None,
                    last_archived_time: datetime | None = None) -> dict:
    """First and last recoverable point: from the oldest backup's stop to the newest heartbeat
    that is archived (a target before it has an archived commit after it). Without heartbeats the
    end is only known roughly: when pg_stat_archiver last archived a segment (``end_source``);
    the PITR drill needs the heartbeats (``empty`` is about them)."""
    safe = [epoch for epoch, walfile in beats if archived(walfile, last_segment)]
    end = times.utc(max(safe)) if safe else None
    return {"tool": tool, "start": times.iso(start), "end": times.iso(end or last_archived_time),
            "end_source": "heartbeat" if end else ("pg_stat_archiver" if last_archived_time else None),
            "last_archived_segment": last_segment, "empty": start is None or end is None or end <= start}


def draw(run_id: str, window: dict, beats: list[tuple[float, str]]) -> datetime:
    """A point of the window, the same for the same run id (``random.Random(run_id)``), strictly
    before the window's end and never within AMBIGUOUS_SECONDS after a heartbeat."""
    start, end = times.utc(window["start"]).timestamp(), times.utc(window["end"]).timestamp() - 1
    point = start + random.Random(run_id).random() * max(end - start, 0)
    for epoch, _walfile in beats:
        if epoch <= point < epoch + AMBIGUOUS_SECONDS:
            point = epoch + AMBIGUOUS_SECONDS if epoch + AMBIGUOUS_SECONDS < end else epoch - 1
    return times.utc(round(point, 3))


def expected(beats: list[tuple[float, str]], target: datetime) -> dict:
    """What production had at the target: its newest heartbeat at or before it, the first after it."""
    at = target.timestamp()
    before = [epoch for epoch, _ in beats if epoch <= at]
    after = [epoch for epoch, _ in beats if epoch > at]
    return {"last_before": times.iso(times.utc(max(before))) if before else None,
            "first_after": times.iso(times.utc(min(after))) if after else None}


def choose_target(cluster: Cluster, tool: str, access, run_id: str, target_time: str | None = None) -> dict:
    """On the database host: the tool's recovery window, the target (drawn, or ``target_time``),
    and production's heartbeats around it. Refuses, before anything is restored, a window without
    an archived heartbeat and a target outside the window."""
    start = oldest_backup_stop(cluster, tool, access)
    since = (start or times.now()) - timedelta(minutes=cluster.verify.heartbeat_minutes * 2)
    beats = heartbeats(cluster, since)
    window = recovery_window(tool, start, beats, last_archived(cluster)[0])
    if window["empty"]:
        raise DrillRefused("verify.heartbeat_minutes", f"the {tool} recovery window of cluster {cluster.name} has no "
                           f"archived heartbeat after its oldest backup ({window['start'] or 'no backup'}; "
                           f"{len(beats)} heartbeats, last archived segment {window['last_archived_segment']}): "
                           "no point can be proven yet; nothing was restored",
                           f"let {cluster.dag_id('heartbeat')} run (every verify.heartbeat_minutes) after a backup, "
                           "and WAL archiving work")
    if target_time:
        target = times.utc(target_time)
        if not times.utc(window["start"]) < target < times.utc(window["end"]):
            raise DrillRefused("target_time", f"{times.iso(target)} is outside cluster {cluster.name}'s {tool} "
                               f"recovery window ({window['start']} to {window['end']}, the newest archived "
                               "heartbeat); nothing was restored", "choose a time inside the window")
        drawn = False
    else:
        target, drawn = draw(run_id, window, beats), True
    chosen = {"tool": tool, "target_time": times.iso(target), "drawn": drawn, "seed": run_id if drawn else None,
              "window": window, "expected": expected(beats, target)}
    log.info("PITR drill of %s: target %s (%s), window %s to %s, production had heartbeat %s before it, %s after",
             tool, chosen["target_time"], "drawn" if drawn else "given", window["start"], window["end"],
             chosen["expected"]["last_before"], chosen["expected"]["first_after"])
    return chosen


# --------------------------------------------------------------------------------------------
# The copy against production


def heartbeat_checks(target_cluster, chosen: dict, backup_stop: str | None = None) -> list[dict]:
    """On the recovered copy: the newest heartbeat at or before the target is production's, none
    is after it; and the achieved recovery point with its gap to the target: the newest commit
    recovered, or the backup's stop (``backup_stop``) when recovery replayed no commit after it."""
    target = times.utc(chosen["target_time"])
    exp = chosen["expected"]
    checks = []

    def sql(query: str) -> str:
        return staging.staging_sql(target_cluster, query, HEARTBEAT_DATABASE)

    present = sql(f"SELECT to_regclass('{HEARTBEAT_TABLE}') IS NOT NULL") == "t"
    newest = after = None
    if present:  # absent: the target lies before the table was created
        at = f"to_timestamp({target.timestamp()})"
        newest_before = sql(f"SELECT coalesce(extract(epoch FROM max(beat_at))::text, '') FROM {HEARTBEAT_TABLE} "
                            f"WHERE beat_at <= {at}")
        newest = times.utc(float(newest_before)) if newest_before else None
        after = int(sql(f"SELECT count(*) FROM {HEARTBEAT_TABLE} WHERE beat_at > {at}"))
    wanted = times.utc(exp["last_before"]) if exp.get("last_before") else None
    same = (newest is None and wanted is None) or (newest is not None and wanted is not None
                                                   and abs((newest - wanted).total_seconds()) < 0.001)
    checks.append({"check": "heartbeat_before_target", "result": "ok" if same else "failed",
                   "detail": f"newest heartbeat at or before the target: {times.iso(newest) or 'none'} "
                             f"(production: {exp.get('last_before') or 'none'})"})
    checks.append({"check": "no_heartbeat_after_target", "result": "ok" if not after else "failed",
                   "detail": f"{after or 0} heartbeats after the target (production's next: "
                             f"{exp.get('first_after') or 'none'})"})
    replayed = sql("SELECT coalesce(extract(epoch FROM pg_last_xact_replay_timestamp())::text, '')")
    # NULL when recovery replayed no commit after the backup: the copy is the backup's consistent state.
    recovered = times.utc(float(replayed)) if replayed else times.utc(backup_stop)
    gap = round((target - recovered).total_seconds(), 3) if recovered else None
    ok = recovered is not None and recovered <= target
    what = "newest commit recovered" if replayed else "no commit replayed after the backup, its stop"
    checks.append({"check": "recovery_point", "result": "ok" if ok else "failed",
                   "recovered_to": times.iso(recovered), "gap_seconds": gap,
                   "source": "last replayed commit" if replayed else "backup stop",
                   "detail": f"{what} {times.iso(recovered)}, {gap} s before the target" if recovered
                   else "no commit replayed and no backup stop time"})
    return checks


def pitr_line(cluster: Cluster, *, run_id: str, chosen: dict | None, record: dict | None, steps: dict, errors: list[str],
              started_at: str | None = None) -> dict:
    """The verification line of the drill, with the target, how it was chosen, the window, the
    recovery point reached and its gap to the target."""
    chosen = chosen or {}
    line = verification.verification_line(cluster, run_id=run_id, tool=chosen.get("tool") or cluster.restore_test.tool,
                                          record=record, steps=steps, errors=errors, started_at=started_at,
                                          kind=verification.PITR)
    results = line.get("checks") or []
    point = next((c for c in results if c.get("check") == "recovery_point"), {})
    line.update(kind=KIND, target_time=chosen.get("target_time"), drawn=chosen.get("drawn"), seed=chosen.get("seed"),
                window=chosen.get("window"), expected=chosen.get("expected"), recovered_to=point.get("recovered_to"),
                rpo_gap_seconds=point.get("gap_seconds"))
    if not chosen:
        line.update(outcome="failed", failed_step="plan")
    return line


def result(line: dict) -> dict:
    """A PITR drill's result, small (the inventory reads a month of them): the line without its checks."""
    return verification.result(line, RESULT_FIELDS)


def failure_text(line: dict) -> str:
    return (f"PITR drill of cluster {line['cluster']} failed: {line['tool']} to {line.get('target_time') or '(no target)'}"
            f" from backup {line.get('backup_label') or '(none chosen)'} at step {line.get('failed_step')}: "
            f"{'; '.join(line.get('errors') or []) or 'a check failed'}")


def run_drill(cluster: Cluster, tool: str, access, client, run_id: str, target_time: str | None = None,
              dbname: str | None = None) -> dict:
    """The whole PITR drill for cron (one host: production, the repository and the target's root
    reachable): choose, plan, drill, evidence, teardown; raises when it did not pass."""
    started_at = times.iso(times.now())
    chosen = choose_target(cluster, tool, access, run_id, target_time)  # a refusal writes no line
    planned = verification.plan(cluster, tool, access, kind=verification.PITR, target_time=chosen["target_time"])
    clock = time.monotonic()
    steps, errors = verification.attempt(cluster, verification.PITR, lambda progress: verification.drill(
        cluster, tool, access, planned["record"], progress, dbname, kind=verification.PITR,
        target_time=chosen["target_time"],
        extra_checks=lambda t: heartbeat_checks(t, chosen, planned["record"].get("stop_time"))))
    line = pitr_line(cluster, run_id=run_id, chosen=chosen, record=planned["record"], steps=steps, errors=errors,
                     started_at=started_at)
    log.info("PITR drill to %s took %.1f s", chosen["target_time"], time.monotonic() - clock)
    result = verification.record_evidence(cluster, client, line)
    if line["outcome"] != "success":
        raise ToolError(failure_text(line), retryable=False)
    return {**result, "line": line}


def windows(cluster: Cluster, access, stanza_info: dict | None = None, backups: list | None = None) -> list[dict]:
    """Each tool's recovery window now (the freshness check publishes it: metrics, inventory)."""
    out = []
    last, last_time = last_archived(cluster)
    for tool in cluster.tools:
        if tool == "walg":
            start = walg.oldest_finished(backups if backups is not None else walg.backup_list(cluster, access))
        else:
            start = pgbackrest.oldest_good_stop(stanza_info if stanza_info is not None else pgbackrest.info(cluster))
        since = (start or times.now()) - timedelta(minutes=cluster.verify.heartbeat_minutes * 2)
        # Only the newest heartbeats matter for the end; the start is the backup's.
        beats = heartbeats(cluster, max(since, times.now() - timedelta(days=2)))
        out.append(recovery_window(tool, start, beats, last, last_time))
    return out
