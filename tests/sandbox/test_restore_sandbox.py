"""The quarterly restore test for real: PostgreSQL, pgBackRest, the sandbox's S3, Airflow.

QA signs off through Airflow itself: `airflow dags test` parks `qa_signoff` in `awaiting_input`
and waits for a response recorded by an api-server sharing its metadata DB (see
``airflow/sdk/definitions/dag.py``, "Human-in-the-loop tasks stay parked"), so these tests run
`airflow api-server` on the sandbox's API port and PATCH the task's hitlDetails as user ``qa``.
The tests build on each other, in file order; the corrupted-backup test comes last.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

import airflow_api as signoff  # sandbox/airflow_api.py
from pg_backups import operations
from support import DagRunResult

pytestmark = [pytest.mark.sandbox, pytest.mark.slow]

DAG_ID = "restore_test_asso"
AIRFLOW = Path(sys.executable).parent / "airflow"


@pytest.fixture(scope="module")
def api(sandbox):
    """A real `airflow api-server` on the sandbox's API port; users ops (admin) and qa."""
    with signoff.api_server(sandbox.layout, sandbox.env, sandbox.layout.logs / "restore-api-server.log") as server:
        yield server


def run_with_signoff(sandbox, api, option: str, comment: str, while_waiting=None, conf=None) -> DagRunResult:
    """`airflow dags test` in the background; QA answers the sign-off through the API when asked."""
    run_id, output = signoff.run_with_signoff(sandbox.layout, sandbox.env, api, DAG_ID, option, comment,
                                              while_waiting, conf)
    return result_of(sandbox, run_id, output)


def result_of(sandbox, run_id: str, output: str) -> DagRunResult:
    (state,), = sandbox._db("SELECT state FROM dag_run WHERE dag_id = ? AND run_id = ?", DAG_ID, run_id)
    tasks = dict(sandbox._db("SELECT task_id, state FROM task_instance WHERE dag_id = ? AND run_id = ?", DAG_ID, run_id))
    xcoms = {t: json.loads(v) for t, v in sandbox._db(
        "SELECT task_id, value FROM xcom WHERE dag_id = ? AND run_id = ? AND key = 'return_value'", DAG_ID, run_id)}
    return DagRunResult(DAG_ID, run_id, state, tasks, {}, xcoms, output)


def audit_lines(sandbox) -> list[dict]:
    path = Path(sandbox.cluster().restore_test.audit_log)
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def archived_keys(sandbox, run_id: str) -> list[str]:
    from pg_backups import audit

    cluster = sandbox.cluster()
    prefix = audit.archive_key(cluster, run_id, "")
    listing = sandbox.s3_client().list_objects_v2(Bucket=cluster.s3.bucket, Prefix=prefix)
    return [o["Key"] for o in listing.get("Contents", [])]


def assert_no_secret(sandbox, *texts: str):
    for secret in sandbox.secrets():
        for text in texts:
            assert secret not in text


def test_approved_restore_brings_back_production_rows(sandbox, first_backup, api):
    slack_before = len(sandbox.slack_messages())
    prod_counts = sandbox.psql("SELECT (SELECT count(*) FROM members) || ',' || (SELECT count(*) FROM payments)")
    seen = {}

    def while_waiting(run_id):  # staging is up with production's rows while QA looks at it
        seen["staging"] = sandbox.psql("SELECT (SELECT count(*) FROM members) || ',' || "
                                       "(SELECT count(*) FROM payments)", port=sandbox.layout.staging_port)
        seen["recovery"] = sandbox.psql("SELECT pg_is_in_recovery()", port=sandbox.layout.staging_port)
        seen["archive_mode"] = sandbox.psql("SHOW archive_mode", port=sandbox.layout.staging_port)

    result = run_with_signoff(sandbox, api, "Approve", "members and payments pages OK", while_waiting)
    assert result.state == "success", result.output[-6000:]
    assert seen == {"staging": prod_counts, "recovery": "f", "archive_mode": "off"}
    assert result.task_states["qa_signoff"] == "success" and result.task_states["stop_staging_after"] == "success"
    line = audit_lines(sandbox)[-1]
    assert line["run_id"] == result.run_id and line["outcome"] == "success"
    # The newest good backup at the time (other tests of the session take backups too).
    assert line["backup_label"] == operations.pgbackrest_latest_record(sandbox.cluster())["label"]
    assert line["signoff"]["status"] == "approved" and line["signoff"]["by"] == "qa"
    assert line["signoff"]["comment"] == "members and payments pages OK"
    checks = {c["check"]: c for c in line["checks"]}
    assert checks["backup_marker"]["result"] == "ok" and checks["rows:members"]["detail"] == f"{prod_counts.split(',')[0]} rows"
    assert {"smoke_query", "not_in_recovery", "amcheck:app"} <= set(checks)
    assert line["restore_duration_seconds"] > 0
    keys = archived_keys(sandbox, result.run_id)
    assert any(k.endswith("asso_restore_audit.log") for k in keys) and any(k.endswith("restore_smoke.log") for k in keys)
    texts = sandbox.slack_texts_since(slack_before)
    assert any("Restore test passed" in t and "RTO" in t for t in texts), texts
    assert "pg_tables" in Path(sandbox.cluster().restore_test.smoke_log).read_text()
    assert sandbox.psql("SELECT count(*) FROM members") == prod_counts.split(",")[0]  # production untouched
    assert_no_secret(sandbox, Path(sandbox.cluster().restore_test.audit_log).read_text(), result.output)


def test_rejection_fails_the_run_keeps_the_comment_and_alerts(sandbox, first_backup, api):
    slack_before = len(sandbox.slack_messages())
    result = run_with_signoff(sandbox, api, "Reject", "login page shows an error")
    assert result.state == "failed", result.output[-5000:]
    assert result.task_states["qa_signoff"] == "failed"
    assert result.task_states["audit_and_archive"] == "failed"  # written, then failed: never success
    line = audit_lines(sandbox)[-1]
    assert line["run_id"] == result.run_id and line["outcome"] == "failed"
    assert line["signoff"] == {**line["signoff"], "status": "rejected", "by": "qa",
                               "comment": "login page shows an error"}
    assert archived_keys(sandbox, result.run_id)
    texts = sandbox.slack_texts_since(slack_before)
    alerts = [t for t in texts if t.startswith(":red_circle:")]
    assert len(alerts) == 1, texts  # one alert per failed run, titled with what failed
    assert alerts[0].startswith(":red_circle: *Restore test rejected by QA*") and "qa_signoff" in alerts[0]
    assert "login page shows an error" in alerts[0]
    assert not any("Restore test passed" in t for t in texts)


def test_cron_script_restores_with_pending_signoff(sandbox, first_backup):
    L = sandbox.layout
    env = {"RESTORE_TOOL": "pgbackrest", "STAGING_PGDATA": str(L.staging_root / "data"),
           "STAGING_CONNECTION_URI": f"postgresql://postgres:x@127.0.0.1:{L.staging_port}/app",
           "PG_BACKREST_STANZA": "asso"}
    proc = sandbox.run(Path("include/scripts/quarterly_restore_test.sh"), env=env, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    line = audit_lines(sandbox)[-1]
    assert line["run_id"].startswith("cron__") and line["outcome"] == "success"
    assert line["signoff"]["status"] == "pending"
    assert json.loads(proc.stdout)["outcome"] == "success"
    assert archived_keys(sandbox, line["run_id"])
    assert_no_secret(sandbox, proc.stdout, proc.stderr)


def test_guard_refusal_in_a_real_run_deletes_nothing(sandbox, first_backup):
    staging = sandbox.layout.staging_root / "data"
    before = sorted(str(p) for p in staging.rglob("*"))
    assert any(p.endswith("PG_VERSION") for p in before)  # the last drill's restored cluster
    # The staging connection pointed at production: refused before anything is stopped or purged.
    prod_conn = sandbox.env["AIRFLOW_CONN_PG_ASSO"]
    result = sandbox.dags_test(DAG_ID, env={"AIRFLOW_CONN_PG_ASSO_STAGING": prod_conn})
    assert result.state == "failed"
    assert result.task_states["guard"] == "failed" and result.task_states["purge_staging"] == "upstream_failed"
    assert result.try_numbers["guard"] == 1  # refused: not retried (the sandbox retries failures once)
    assert "points at the production database" in result.output and "Fix:" in result.output
    assert sorted(str(p) for p in staging.rglob("*")) == before
    line = audit_lines(sandbox)[-1]
    assert line["run_id"] == result.run_id and line["outcome"] == "failed" and line["backup_label"] is None


def test_corrupted_backup_fails_and_alerts_never_success(sandbox, first_backup):
    backup = sandbox.dags_test("pgbackrest_backup_asso")
    assert backup.state == "success", backup.output[-3000:]
    label = backup.xcoms["publish_backup"]["label"]
    cluster = sandbox.cluster()
    s3 = sandbox.s3_client()
    # The backup's files: one object per file, or (repo1-bundle) packed into bundle/<n> objects.
    prefix = f"{cluster.pgbackrest.repo_path.strip('/')}/backup/{cluster.stanza}/{label}/"
    objects = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=cluster.s3.bucket, Prefix=prefix):
        objects += page.get("Contents", [])
    victim = max((o for o in objects if "/bundle/" in o["Key"] or "/pg_data/" in o["Key"]), key=lambda o: o["Size"])
    original = s3.get_object(Bucket=cluster.s3.bucket, Key=victim["Key"])["Body"].read()
    body = bytearray(original)
    for i in range(len(body) // 3, len(body) // 3 + 64):
        body[i] ^= 0xFF
    s3.put_object(Bucket=cluster.s3.bucket, Key=victim["Key"], Body=bytes(body))
    slack_before = len(sandbox.slack_messages())
    try:
        result = sandbox.dags_test(DAG_ID, conf={"backup_label": label})
    finally:  # later tests' `pgbackrest verify` must find a sound repository
        s3.put_object(Bucket=cluster.s3.bucket, Key=victim["Key"], Body=original)
    assert result.state == "failed", result.output[-4000:]
    assert result.task_states["restore_latest_backup"] == "failed"
    assert result.task_states["qa_signoff"] == "upstream_failed"
    assert result.task_states["audit_and_archive"] == "failed"
    assert "audit_and_archive" not in result.xcoms
    line = audit_lines(sandbox)[-1]
    assert line["run_id"] == result.run_id and line["outcome"] == "failed"
    assert line["restore_duration_seconds"] is None
    # The audit line names the backup and the cause, not only "restore_latest_backup: failed".
    assert line["backup_label"] == label
    assert line["errors"][0].startswith("restore_latest_backup: failed: ToolError: pgbackrest restore failed"), line
    texts = sandbox.slack_texts_since(slack_before)
    alerts = [t for t in texts if t.startswith(":red_circle:")]
    assert len(alerts) == 1, texts  # one alert per failed run: the audit's, with the cause
    assert alerts[0].startswith(":red_circle: *Restore test failed*") and "restore_latest_backup" in alerts[0]
    assert "*Task:* `audit_and_archive`" in alerts[0]
    assert not any("Restore test passed" in t for t in texts)
    from pg_backups import operations

    assert operations.pgbackrest_verify(cluster) == "ok"  # the repository is sound again for later tests
