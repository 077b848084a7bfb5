"""The random-point PITR drill for real (the cron path, ``pitr.run_drill``: the DAG's tasks call
the same functions): heartbeats written into the sandbox's production, WAL switched and archived,
one archived segment removed from the bucket. A target before the hole recovers, and the copy has
production's newest heartbeat before the target and none after it; a target after the hole fails,
naming the missing segment. The segment is put back at the end (the bucket is versioned)."""

from __future__ import annotations

import json
import time
from datetime import timedelta

import pytest

import sandbox as sandbox_module
from support import wait_for

pytestmark = [pytest.mark.sandbox, pytest.mark.slow]


def _walfile(sandbox, lsn: str) -> str:
    return sandbox.psql(f"SELECT pg_walfile_name('{lsn}')", db="postgres")


def _beat_and_archive(sandbox, cluster) -> dict:
    """One heartbeat, then its segment switched out and archived, and the next one too (a
    heartbeat counts as archived once the segment after its own is)."""
    from pg_backups import pitr

    beat = pitr.write_heartbeat(cluster)
    beat["walfile"] = _walfile(sandbox, beat["lsn"])
    for _ in range(2):
        sandbox.psql("SELECT txid_current()", db="postgres")  # the segment is not empty
        sandbox.psql("SELECT pg_switch_wal()", db="postgres")
    wait_for(lambda: (pitr.last_archived(cluster)[0] or "") > beat["walfile"], 120, every=1,
             what=f"WAL after {beat['walfile']} to be archived")
    return beat


def test_a_point_before_a_wal_hole_recovers_and_one_after_it_fails_naming_the_segment(first_backup, sandbox):
    from pg_backups import pitr, times
    from pg_backups.errors import ToolError

    cluster = sandbox.cluster()
    access = sandbox_module.access(sandbox.layout, sandbox_module.credentials(sandbox.layout))
    client = sandbox.s3_client()
    time.sleep(1.5)  # the heartbeats after the newest backup's stop
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
    try:
        # After the hole: recovery needs the missing segment to reach the target.
        after = times.iso(times.utc(in_hole["beat_at"]) + timedelta(seconds=pitr.AMBIGUOUS_SECONDS + 0.5))
        with pytest.raises(ToolError) as failed:
            pitr.run_drill(cluster, "pgbackrest", access, client, "manual__pitr-after-the-hole", after, dbname="app")
        assert "at step start" in str(failed.value) and in_hole["walfile"] in str(failed.value), str(failed.value)
        line = _line(sandbox, "manual__pitr-after-the-hole")
        assert line["outcome"] == "failed" and line["failed_step"] == "start" and line["target_time"] == after
        assert in_hole["walfile"] in " ".join(line["errors"])

        # Before the hole: one second before the first heartbeat, whose commit (archived) ends the recovery.
        before = times.iso(times.utc(before_hole["beat_at"]) - timedelta(seconds=1))
        done = pitr.run_drill(cluster, "pgbackrest", access, client, "manual__pitr-before-the-hole", before,
                              dbname="app")  # the check tables' database, as the staging connection has it
        line = done["line"]
        assert line["outcome"] == "success" and line["target_time"] == before and not line["drawn"], line
        checks = {c["check"]: c for c in line["checks"]}
        assert checks["heartbeat_before_target"]["result"] == "ok" and checks["no_heartbeat_after_target"]["result"] == "ok"
        assert line["expected"] == {"last_before": times.iso(times.utc(earlier["beat_at"])),
                                    "first_after": times.iso(times.utc(before_hole["beat_at"]))}
        # The newest commit recovered: after the earlier heartbeat (its archiving's commits), not after the target.
        assert checks["recovery_point"]["source"] == "last replayed commit"
        assert times.utc(earlier["beat_at"]) <= times.utc(line["recovered_to"]) <= times.utc(before)
        assert line["rpo_gap_seconds"] >= 0
        assert line["target"]["data_directory"].endswith("/asso-pitr")
        assert not (sandbox.layout.verify_root / "asso-pitr").exists()  # torn down
        prom = (sandbox.layout.root / "metrics" / "pg_backups_asso_verify_pgbackrest_pitr.prom").read_text()
        assert "pg_backups_verify_pitr_last_result{" in prom and "pg_backups_verify_pitr_last_rpo_gap_seconds{" in prom
    finally:
        client.delete_object(Bucket=cluster.s3.bucket, Key=hole, VersionId=marker)


def _line(sandbox, run_id: str) -> dict:
    path = sandbox.cluster().verify.log
    lines = [json.loads(raw) for raw in open(path).read().splitlines() if raw.strip()]
    return next(line for line in reversed(lines) if line["run_id"] == run_id)
