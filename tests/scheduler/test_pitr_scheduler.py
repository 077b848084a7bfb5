"""The daily random-point PITR drill through a real scheduler (REST API, as Ops trigger it with a
``target_time``): heartbeats written into the sandbox's production, WAL switched and archived, one
archived segment removed from the bucket. A target after the hole fails at ``start``, naming the
missing segment, with one Slack alert; a target before it recovers, and the copy has production's
newest heartbeat before the target and none after it. The segment is put back at the end (the
bucket is versioned) and the DAG paused again."""

from __future__ import annotations

import json
import time
from datetime import timedelta

import pytest

import sandbox as sandbox_module  # sandbox/sandbox.py

pytestmark = [pytest.mark.sandbox, pytest.mark.scheduler, pytest.mark.slow]

PITR_DAG = "verify_pitr_asso"


def _walfile(sandbox, lsn: str) -> str:
    return sandbox.psql(f"SELECT pg_walfile_name('{lsn}')", db="postgres")


def _beat_and_archive(sandbox, cluster) -> dict:
    """One heartbeat (the heartbeat DAG's function), then its segment switched out and archived,
    and the next one too (a heartbeat counts as archived once the segment after its own is)."""
    from pg_backups import pitr

    beat = pitr.write_heartbeat(cluster)
    beat["walfile"] = _walfile(sandbox, beat["lsn"])
    sandbox_module.archive_past(sandbox.layout, beat["walfile"])
    return beat


def _line(sandbox, run_id: str) -> dict:
    path = sandbox.cluster().verify.log
    lines = [json.loads(raw) for raw in open(path).read().splitlines() if raw.strip()]
    return next(line for line in reversed(lines) if line["run_id"] == run_id)


def test_a_point_before_a_wal_hole_recovers_and_one_after_it_fails_naming_the_segment(first_backup, stack, sandbox):
    from pg_backups import times

    cluster = sandbox.cluster()
    client = sandbox.s3_client()
    stack.wait_parsed(PITR_DAG)
    time.sleep(1.5)  # the heartbeats come after the newest backup's stop
    earlier = _beat_and_archive(sandbox, cluster)  # production's newest heartbeat before the first target
    time.sleep(3)
    before_hole = _beat_and_archive(sandbox, cluster)
    time.sleep(3)
    in_hole = _beat_and_archive(sandbox, cluster)
    time.sleep(3)
    _beat_and_archive(sandbox, cluster)  # the window's end: a heartbeat after both targets
    assert in_hole["walfile"] != before_hole["walfile"]
    prefix = f"{cluster.pgbackrest.repo_path.strip('/')}/archive/{cluster.stanza}/"
    keys = [o["Key"] for page in client.get_paginator("list_objects_v2").paginate(Bucket=cluster.s3.bucket, Prefix=prefix)
            for o in page.get("Contents", [])]
    (hole,) = [k for k in keys if k.rsplit("/", 1)[-1].startswith(in_hole["walfile"])]
    marker = client.delete_object(Bucket=cluster.s3.bucket, Key=hole)["VersionId"]  # a delete marker: the object stays
    after = times.iso(times.utc(in_hole["beat_at"]) + timedelta(seconds=3))
    before = times.iso(times.utc(before_hole["beat_at"]) - timedelta(seconds=1))
    seen = len(sandbox.slack_messages())
    try:
        stack.unpause(PITR_DAG)  # unpausing also starts a run for the schedule's latest slot: its own draw
        after_run = stack.trigger(PITR_DAG, conf={"tool": "pgbackrest", "target_time": after})
        after_state = stack.wait_run(PITR_DAG, after_run, seconds=900)["state"]
        before_run = stack.trigger(PITR_DAG, conf={"tool": "pgbackrest", "target_time": before})
        before_state = stack.wait_run(PITR_DAG, before_run, seconds=900)["state"]
    finally:
        stack.unpause(PITR_DAG, paused=True)
        for run in stack.runs(PITR_DAG):
            stack.wait_run(PITR_DAG, run["dag_run_id"], seconds=900)
        client.delete_object(Bucket=cluster.s3.bucket, Key=hole, VersionId=marker)

    # After the hole: recovery ran out of archive before the target.
    tasks = {t: v["state"] for t, v in stack.tasks(PITR_DAG, after_run).items()}
    assert after_state == "failed" and tasks["drill"] == "failed" and tasks["remove_target"] == "success", tasks
    line = _line(sandbox, after_run)
    assert line["outcome"] == "failed" and line["failed_step"] == "start" and line["target_time"] == after, line
    assert in_hole["walfile"] in " ".join(line["errors"]), line["errors"]
    alerts = [t for t in sandbox.slack_texts_since(seen) if after_run in t or after in t]
    assert len(alerts) == 1 and in_hole["walfile"] in alerts[0], alerts

    # Before the hole: recovered to the target, checked against production's heartbeats.
    assert before_state == "success", {t: v["state"] for t, v in stack.tasks(PITR_DAG, before_run).items()}
    line = _line(sandbox, before_run)
    assert line["outcome"] == "success" and line["target_time"] == before and not line["drawn"], line
    checks = {c["check"]: c for c in line["checks"]}
    assert checks["heartbeat_before_target"]["result"] == "ok" and checks["no_heartbeat_after_target"]["result"] == "ok"
    assert line["expected"] == {"last_before": times.iso(times.utc(earlier["beat_at"])),
                                "first_after": times.iso(times.utc(before_hole["beat_at"]))}
    # The newest commit recovered: after the earlier heartbeat (its archiving's commits), not after the target.
    assert checks["recovery_point"]["source"] == "last replayed commit"
    assert times.utc(earlier["beat_at"]) <= times.utc(line["recovered_to"]) <= times.utc(before)
    assert line["rpo_gap_seconds"] >= 0 and line["target"]["data_directory"].endswith("/asso-pitr")
    assert not (sandbox.layout.verify_root / "asso-pitr").exists()  # torn down
    prom = (sandbox.layout.root / "metrics" / "pg_backups_asso_verify_pgbackrest_pitr.prom").read_text()
    assert "pg_backups_verify_pitr_last_result{" in prom and "pg_backups_verify_pitr_last_rpo_gap_seconds{" in prom
    # The inventory shows the tool's last PITR drill (the scheduled run's own draw may be the last one).
    assert stack.request("GET", "/backup-inventory/api/clusters/asso")["pitr"]["pgbackrest"]["last_drill"]
