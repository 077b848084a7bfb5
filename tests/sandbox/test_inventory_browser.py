"""The backup inventory in a real browser (Debian's Chromium, driven by Playwright) against a real
`airflow api-server` over the sandbox, after real runs: a diff backup, a restore test signed off by
QA, a failed backup, the hourly freshness check. Logs in as ``ops`` through Airflow's login form,
opens the page from the UI's navigation and directly, and checks what those runs produced; an
anonymous visitor is refused. Screenshots go to ``test-artefacts/`` (gitignored).
"""

from __future__ import annotations

import json
import os
import shutil
import urllib.parse
from pathlib import Path

import pytest
import yaml

import airflow_api as signoff  # sandbox/airflow_api.py
from pg_backups import audit as pg_audit
from pg_backups import costs
from pg_backups.inventory import size_text
from pg_backups.times import utc

pytestmark = [pytest.mark.sandbox, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
ARTEFACTS = Path(os.environ.get("TEST_ARTEFACTS_DIR", REPO / "test-artefacts"))
CHROMIUM = os.environ.get("CHROMIUM", shutil.which("chromium") or "/usr/bin/chromium")


def bad_config(sandbox) -> str:
    """The sandbox's clusters.yaml with a pgbackrest.conf path that cannot be written: preflight fails."""
    data = yaml.safe_load(sandbox.layout.clusters_file.read_text())
    data["clusters"][0]["pgbackrest"]["config_path"] = "/proc/pg-backups-no-such-dir/pgbackrest.conf"
    directory = sandbox.layout.root / "test-configs"
    directory.mkdir(exist_ok=True)
    directory.chmod(0o755)
    path = directory / "inventory-bad-pgbackrest.yaml"
    path.write_text(yaml.safe_dump(data))
    path.chmod(0o644)
    return str(path)


@pytest.fixture(scope="module")
def runs(first_backup, sandbox):
    """Real runs, in this order, then a real api-server (it loads plugins/backup_inventory_plugin.py)."""
    log = sandbox.layout.logs / "inventory-api-server.log"
    with signoff.api_server(sandbox.layout, sandbox.env, log) as api:
        diff = sandbox.dags_test("pgbackrest_backup_asso", conf={"backup_type": "diff"})
        assert diff.state == "success", diff.output[-4000:]
        restore_run, output = signoff.run_with_signoff(sandbox.layout, sandbox.env, api, "restore_test_asso",
                                                       "Approve", "inventory browser test: staging looks right")
        audit_path = Path(sandbox.cluster().restore_test.audit_log)
        audit = [json.loads(line) for line in audit_path.read_text().splitlines()][-1]
        assert audit["run_id"] == restore_run and audit["outcome"] == "success", output[-4000:]
        failed = sandbox.dags_test("pgbackrest_backup_asso", env={"PG_BACKUPS_CONFIG": bad_config(sandbox)})
        assert failed.state == "failed" and failed.task_states["preflight"] == "failed"
        fresh = sandbox.dags_test("backup_freshness_asso")
        (stats,), = sandbox._db("SELECT value FROM xcom WHERE dag_id = 'backup_freshness_asso' AND run_id = ? "
                                "AND task_id = 'check_wal_archiving' AND key = 'archiver_stats'", fresh.run_id)
        yield {"api": api, "diff": diff, "record": diff.xcoms["publish_backup"], "audit": audit,
               "failed": failed, "fresh": fresh, "wal": json.loads(stats)}


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    ARTEFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        # The system's Chromium: `playwright install` downloads cannot work here, nor are they needed.
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield chromium
        chromium.close()


def base(sandbox) -> str:
    return f"http://127.0.0.1:{sandbox.layout.api_port}"


def log_in(page, sandbox, user: str) -> None:
    passwords = json.loads((sandbox.layout.airflow_home / "simple_auth_manager_passwords.json.generated").read_text())
    page.goto(base(sandbox) + "/")
    page.get_by_label("Username").fill(user)
    page.get_by_label("Password").fill(passwords[user])
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(lambda url: "/auth/login" not in url, timeout=30_000)


def test_anonymous_visitor_is_refused(runs, sandbox, browser):
    context = browser.new_context(viewport={"width": 1400, "height": 700})
    page = context.new_page()
    response = page.goto(base(sandbox) + "/backup-inventory/")
    assert response.status == 401
    assert "Not allowed" in page.inner_text("body") and page.locator("tr.cluster").count() == 0
    page.screenshot(path=str(ARTEFACTS / "inventory-anonymous.png"))
    for path in ("/backup-inventory/api/inventory", "/backup-inventory/api/clusters/asso/history"):
        assert page.request.get(base(sandbox) + path).status == 401, path
    forged = page.request.get(base(sandbox) + "/backup-inventory/api/inventory",
                              headers={"Authorization": "Bearer not-a-token"})
    assert forged.status in (401, 403)
    context.close()


def test_ops_sees_the_runs_in_the_inventory_from_the_ui_navigation(runs, sandbox, browser):
    context = browser.new_context(viewport={"width": 1600, "height": 1000})
    page = context.new_page()
    log_in(page, sandbox, "ops")
    page.get_by_role("button", name="Browse").click()
    page.get_by_role("menuitem", name="Backup inventory").click()
    page.wait_for_url("**/plugin/backup-inventory**")
    frame = page.frame_locator("iframe[title='Backup inventory']")
    row = frame.locator("tr.cluster[data-cluster='asso']")
    row.wait_for(timeout=30_000)
    page.screenshot(path=str(ARTEFACTS / "inventory-in-airflow-ui.png"))

    record, audit, failed = runs["record"], runs["audit"], runs["failed"]
    # Status: amber, and why, in words: the failed run came after the good backup.
    assert row.get_attribute("data-status") == "amber"
    assert f"last pgbackrest backup run failed ({failed.run_id})" in row.locator(".reason").inner_text()
    # The newest good backup: the diff this module took, with its size and the run that made it.
    tool = row.locator(".backups [data-tool='pgbackrest']")
    assert tool.locator(".label").inner_text() == record["label"]
    assert tool.locator(".type").inner_text() == "diff"
    assert tool.locator(".size").inner_text() == size_text(record["database_size_bytes"])
    assert tool.locator(".stored").inner_text() == f"{size_text(record['repo_size_bytes'])} stored"
    made_by = tool.locator("small a.run")
    assert made_by.inner_text() == runs["diff"].run_id
    # The failed backup, shown as such, linked to its run.
    failed_box = tool.locator(".last-run.failed")
    assert failed_box.get_attribute("data-run-id") == failed.run_id and "FAILED" in failed_box.inner_text()
    # WAL archiving, as the freshness check measured it.
    wal = runs["wal"]
    assert row.locator(".wal-ready").inner_text() == str(wal["ready_count"])
    assert row.locator(".wal-failed").inner_text() == str(wal["failed_count"])
    assert row.locator(".wal-state").inner_text() in ("ok", "failing", "lagging")
    # Bucket by storage class, as bucket_usage measured it.
    usage = runs["fresh"].xcoms["bucket_usage"]
    total = sum(r["bytes"] for r in usage["by_class"])
    assert row.locator(".bucket-total").inner_text() == size_text(total)
    assert row.locator(".bucket [data-class='STANDARD']").count() == 1
    # Its monthly cost estimate, from the same bytes and the configuration's price table (eu-west-3).
    estimate = costs.estimate(sandbox.cluster(), usage)
    assert row.locator(".cost-total").inner_text() == costs.money(estimate["total_monthly"], estimate["currency"])
    assert row.locator(".cost [data-class='STANDARD']").count() == 1
    # The restore test QA signed off, with its proofs and the audit object in S3.
    assert row.locator(".restore-outcome").inner_text() == "success"
    assert row.locator(".restore-backup").inner_text() == audit["backup_label"] == record["label"]
    assert row.locator(".restore-rto").inner_text() == f"{audit['restore_duration_seconds']} s"
    n = len(audit["checks"])
    assert row.locator(".restore-checks").inner_text() == f"{n}/{n} ok"
    assert row.locator(".restore-signoff").inner_text() == "approved by qa"
    audit_href = row.locator("a.audit").get_attribute("href")
    key = pg_audit.archive_key(sandbox.cluster(), audit["run_id"], "asso_restore_audit.log", utc(audit["time"]))
    assert audit_href == f"{sandbox.layout.endpoint}/asso-prod-backups/{urllib.parse.quote(key)}"
    sandbox.s3_client().head_object(Bucket="asso-prod-backups", Key=key)  # the link names a real object
    # The 30-day timeline: the diff backup, the restore test, the failure.
    timeline = row.locator("svg.timeline")
    assert timeline.locator(".ev.backup.diff").count() >= 1
    assert timeline.locator(".ev.restore").count() >= 1
    assert timeline.locator(".ev.failure").count() >= 1
    # The trend chart of the cluster: the page charts the worst cluster first (billing, the sandbox's
    # second cluster, has no backup: red); the cluster's name opens its own.
    row.locator("td.name a").click()
    # Until asso's page has loaded in the frame (the first page's charts are there until then).
    frame.locator("svg.chart[data-chart='Backup duration'] circle").first.wait_for(timeout=30_000)
    for title in ("Backup duration", "Database size per backup", "Restore test RTO"):
        assert frame.locator(f"svg.chart[data-chart='{title}'] circle").count() >= 1, title
    row = frame.locator("tr.cluster[data-cluster='asso']")
    made_by = row.locator(".backups [data-tool='pgbackrest'] small a.run")
    # The run link leads to Airflow's page of that run (inside the UI's frame).
    run_path = f"/dags/pgbackrest_backup_asso/runs/{urllib.parse.quote(runs['diff'].run_id, safe='')}"
    with page.expect_event("framenavigated", predicate=lambda f: run_path in f.url, timeout=30_000):
        made_by.click()
    context.close()


def test_page_directly_and_its_json_say_the_same(runs, sandbox, browser):
    context = browser.new_context(viewport={"width": 1600, "height": 1100})
    page = context.new_page()
    log_in(page, sandbox, "ops")
    response = page.goto(base(sandbox) + "/backup-inventory/")
    assert response.status == 200 and "inventory;dur=" in response.headers.get("server-timing", "")
    row = page.locator("tr.cluster[data-cluster='asso']")
    assert row.locator(".backups [data-tool='pgbackrest'] .label").inner_text() == runs["record"]["label"]
    page.screenshot(path=str(ARTEFACTS / "inventory.png"), full_page=True)
    # The run link, followed: Airflow's page of the run that made the backup.
    href = row.locator(".backups [data-tool='pgbackrest'] small a.run").get_attribute("href")
    assert page.evaluate("(h) => new URL(h, document.baseURI).pathname", href) == \
        f"/dags/pgbackrest_backup_asso/runs/{urllib.parse.quote(runs['diff'].run_id, safe='')}"
    # The same data as JSON, with the UI's cookie and with a bearer token.
    data = page.request.get(base(sandbox) + "/backup-inventory/api/inventory").json()
    token = runs["api"].token("qa")
    by_token = page.request.get(base(sandbox) + "/backup-inventory/api/clusters/asso",
                                headers={"Authorization": f"Bearer {token}"}).json()
    (cluster,) = [c for c in data["clusters"] if c["name"] == "asso"]
    for row_data in (cluster, by_token):
        assert row_data["backups"]["pgbackrest"]["label"] == runs["record"]["label"]
        assert row_data["last_backup_runs"]["pgbackrest"] == {**row_data["last_backup_runs"]["pgbackrest"],
                                                              "run_id": runs["failed"].run_id, "state": "failed"}
        assert row_data["restore_test"]["run_id"] == runs["audit"]["run_id"]
        assert row_data["status"]["colour"] == "amber"
    history = page.request.get(base(sandbox) + "/backup-inventory/api/clusters/asso/history").json()
    assert runs["record"]["label"] in [b["label"] for b in history["backups"]]
    assert runs["audit"]["restore_duration_seconds"] in [r["rto_seconds"] for r in history["restore_tests"]]
    context.close()
