"""The backup inventory without servers: what each cluster's row says (backups, WAL, bucket, restore
test, status in words), the timeline and history, the HTML page, the plugin's wiring and its refusal
of anonymous callers."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest

from pg_backups import audit, inventory, inventory_page, inventory_sources, metrics
from pg_backups.config import build_cluster

AT = datetime(2026, 11, 25, 9, 0, tzinfo=timezone.utc)


def record(label, kind, stop, tool="pgbackrest", cluster="asso", run_id=None, duration=20, size=33_000_000):
    return {"cluster": cluster, "tool": tool, "label": label, "type": kind,
            "start_time": (stop - timedelta(seconds=duration)).isoformat(), "stop_time": stop.isoformat(),
            "duration_seconds": duration, "database_size_bytes": size, "backup_size_bytes": size // 2,
            "repo_size_bytes": size // 8, "airflow_run_id": run_id or f"scheduled__{stop.isoformat()}",
            "backup_count": 3}


class FakeStore:
    """inventory.Store over lists, as the metadata database would answer."""

    def __init__(self, events=(), runs=(), xcoms=None):
        self.events = sorted(events, key=lambda e: e["timestamp"])
        self.runs = list(runs)
        self.xcoms = xcoms or {}

    def newest_backup_events(self, asset_names):
        out = {}
        for event in self.events:
            if event["asset"] in asset_names:
                out[event["asset"]] = event
        return out

    def backup_events(self, asset_names, since):
        return [e for e in self.events if e["asset"] in asset_names and e["timestamp"] >= since]

    def failed_runs(self, dag_ids, since):
        return [r for r in self.runs if r["dag_id"] in dag_ids and r["state"] == "failed" and r["run_after"] >= since]

    def last_runs(self, dag_ids, since=None):
        out = {}
        for run in self.runs:  # in creation order
            if run["dag_id"] in dag_ids and (since is None or run["run_after"] >= since):
                out[run["dag_id"]] = run
        return out

    def all_xcoms(self, dag_ids, task_id, key):
        return [{"dag_id": d, **v} for (d, t, k), values in self.xcoms.items() if d in dag_ids and t == task_id
                and k == key and isinstance(values, list) for v in values]

    def xcoms_since(self, dag_ids, task_id, key, since):
        return [{"dag_id": d, **v} for (d, t, k), values in self.xcoms.items() if d in dag_ids and t == task_id
                and k == key and isinstance(values, list) for v in values if v["timestamp"] >= since]

    def latest_xcoms(self, dag_ids, task_id, key, since):
        return {d: v for (d, t, k), v in self.xcoms.items() if d in dag_ids and t == task_id and k == key
                and not isinstance(v, list) and v["timestamp"] >= since}


def event(rec, dag_id=None):
    stop = datetime.fromisoformat(rec["stop_time"])
    cluster = build_cluster({"name": rec["cluster"]})
    return {"asset": cluster.asset_name(rec["tool"]), "timestamp": stop + timedelta(seconds=30),
            "extra": rec, "dag_id": dag_id or cluster.dag_id(rec["tool"]), "run_id": rec["airflow_run_id"]}


def run(dag_id, run_id, state, when):
    return {"dag_id": dag_id, "run_id": run_id, "state": state, "start_date": when, "end_date": when + timedelta(
        minutes=1), "run_after": when}


def inventory_cluster(tmp_path, name="asso", tools=("pgbackrest",), endpoint=None, drills=False):
    """``drills``: the verification drills' columns, tested on their own at the end of this file."""
    return build_cluster({"name": name, "tools": list(tools), "metrics": {"textfile_directory": str(tmp_path / "m")},
                          "s3": {"endpoint_url": endpoint} if endpoint else {},
                          "restore_test": {"audit_log": str(tmp_path / f"{name}_restore_audit.log")},
                          "verify": {"enabled": drills, "log": str(tmp_path / f"{name}_verify.log")}})


def audit_line(cluster, when, outcome="success", label="20261124-021502F", rto=42.5, run_id=None):
    line = {"time": when.isoformat(timespec="seconds"), "cluster": cluster.name,
            "run_id": run_id or f"manual__{when.isoformat()}", "tool": "pgbackrest", "backup_label": label,
            "backup_time": (when - timedelta(hours=5)).isoformat(), "target_time": None,
            "restore_duration_seconds": rto,
            "checks": [{"check": "smoke_query", "result": "ok"}, {"check": "marker", "result": "ok"},
                       {"check": "amcheck", "result": "ok" if outcome == "success" else "failed"}],
            "signoff": {"status": "approved", "by": "qa", "at": when.isoformat()}, "errors": [], "outcome": outcome}
    with open(cluster.restore_test.audit_log, "a") as out:
        out.write(json.dumps(line) + "\n")
    return line


def healthy(tmp_path, cluster, restore=True):
    """WAL archiving fine, restore test passed last month."""
    metrics.write_textfile(metrics.textfile_path(cluster, "wal_archive"), metrics.render(
        metrics.archiver_samples(cluster, {"archived_count": 120, "failed_count": 0, "ready_count": 1,
                                           "last_archived_time": AT - timedelta(minutes=3)})
        + [("metrics_last_write_timestamp_seconds", {"cluster": cluster.name, "source": "wal_archive"},
            (AT - timedelta(minutes=2)).timestamp())]))
    if restore:
        audit_line(cluster, AT - timedelta(days=30))


def row_of(data, name="asso"):
    return next(r for r in data["clusters"] if r["name"] == name)


def test_newest_good_backup_per_tool_with_its_run(tmp_path):
    cluster = inventory_cluster(tmp_path, tools=("pgbackrest", "walg"))
    healthy(tmp_path, cluster)
    old = record("20261123-021502F", "full", AT - timedelta(days=2))
    new = record("20261125-021502D", "diff", AT - timedelta(hours=6), run_id="scheduled__2026-11-25T02:15:00+00:00")
    walg = record("base_000000010000000000000009", "full", AT - timedelta(hours=5), tool="walg")
    data = inventory.build([cluster], FakeStore([event(old), event(new), event(walg)]), AT)
    row = row_of(data)
    b = row["backups"]["pgbackrest"]
    assert (b["label"], b["type"], b["age"], b["size"]) == ("20261125-021502D", "diff", "6.0 h", "31.5 MiB")
    assert b["run_link"] == "/dags/pgbackrest_backup_asso/runs/scheduled__2026-11-25T02%3A15%3A00%2B00%3A00"
    assert row["backups"]["walg"]["label"] == "base_000000010000000000000009"
    assert row["status"]["colour"] == "green", row["status"]
    assert row["status"]["text"].startswith("backups fresh, WAL archiving, restore proven 30 d ago")
    kinds = [(i["kind"], i.get("tool"), i.get("type")) for i in row["timeline"]]
    assert kinds == [("restore_test", "pgbackrest", None), ("backup", "pgbackrest", "full"),
                     ("backup", "pgbackrest", "diff"), ("backup", "walg", "full")]


def test_a_failed_run_after_the_good_backup_is_amber_and_on_the_timeline(tmp_path):
    cluster = inventory_cluster(tmp_path)
    healthy(tmp_path, cluster)
    good = record("20261125-021502F", "full", AT - timedelta(hours=6), run_id="scheduled__good")
    runs = [run("pgbackrest_backup_asso", "scheduled__good", "success", AT - timedelta(hours=7)),
            run("pgbackrest_backup_asso", "manual__bad", "failed", AT - timedelta(hours=1))]
    row = row_of(inventory.build([cluster], FakeStore([event(good)], runs), AT))
    assert row["backups"]["pgbackrest"]["label"] == "20261125-021502F"  # the good one is still shown
    assert row["last_backup_runs"]["pgbackrest"]["state"] == "failed"
    assert row["status"] == {"colour": "amber", "reasons": ["last pgbackrest backup run failed (manual__bad)"],
                             "text": "last pgbackrest backup run failed (manual__bad)"}
    failures = [i for i in row["timeline"] if i["kind"] == "failure"]
    assert failures and failures[0]["run_link"] == "/dags/pgbackrest_backup_asso/runs/manual__bad"


def test_no_backup_or_a_stale_one_is_red_with_the_reason(tmp_path):
    one, two = inventory_cluster(tmp_path, "one"), inventory_cluster(tmp_path, "two")
    healthy(tmp_path, one)
    healthy(tmp_path, two)
    stale = record("20261120-021502F", "full", AT - timedelta(days=5), cluster="two")
    data = inventory.build([one, two], FakeStore([event(stale)]), AT)
    assert row_of(data, "one")["status"]["text"] == "no good pgbackrest backup"
    assert row_of(data, "two")["status"]["text"] == "newest pgbackrest backup is 5 d old (limit 26 h)"
    assert data["counts"] == {"green": 0, "amber": 0, "red": 2}


def test_wal_failing_from_the_textfile_and_the_newest_reading_wins(tmp_path):
    cluster = inventory_cluster(tmp_path)
    healthy(tmp_path, cluster)
    good = record("20261125-021502F", "full", AT - timedelta(hours=6))
    stats = {"archived_count": 5, "failed_count": 7, "ready_count": 3, "last_archived_time": (AT - timedelta(
        hours=2)).isoformat(), "last_failed_time": (AT - timedelta(minutes=5)).isoformat(), "last_archived_wal": "0001"}
    # An older XCom says "ok"; the newer textfile says failing.
    xcoms = {("backup_freshness_asso", "check_wal_archiving", "archiver_stats"): {
        "value": {**stats, "last_failed_time": None}, "timestamp": AT - timedelta(hours=1), "run_id": "r"}}
    metrics.write_textfile(metrics.textfile_path(cluster, "wal_archive"), metrics.render(
        metrics.archiver_samples(cluster, stats) + [("metrics_last_write_timestamp_seconds", {"cluster": "asso"},
                                                     (AT - timedelta(minutes=4)).timestamp())]))
    row = row_of(inventory.build([cluster], FakeStore([event(good)], xcoms=xcoms), AT))
    assert row["wal"]["state"] == "failing" and row["wal"]["source"] == "metrics"
    assert (row["wal"]["ready_count"], row["wal"]["failed_count"]) == (3, 7)
    assert row["status"]["colour"] == "red" and row["status"]["reasons"][0].startswith("WAL archiving failing since")
    # The same check's XCom (a moment older than its textfile) is preferred: it has the WAL file name.
    xcoms[("backup_freshness_asso", "check_wal_archiving", "archiver_stats")].update(
        value=stats, timestamp=AT - timedelta(minutes=5))
    row = row_of(inventory.build([cluster], FakeStore([event(good)], xcoms=xcoms), AT))
    assert row["wal"]["source"] == "xcom" and row["wal"]["last_archived_wal"] == "0001"


def test_bucket_by_storage_class_from_the_freshness_xcom(tmp_path):
    cluster = inventory_cluster(tmp_path)
    usage = {"bucket": "asso-prod-backups", "delete_markers": 0, "by_class": [
        {"storage_class": "STANDARD", "version": "current", "bytes": 3 * 2**20, "objects": 10},
        {"storage_class": "STANDARD", "version": "noncurrent", "bytes": 2**20, "objects": 2},
        {"storage_class": "DEEP_ARCHIVE", "version": "noncurrent", "bytes": 5 * 2**30, "objects": 7}]}
    xcoms = {("backup_freshness_asso", "bucket_usage", "return_value"): {
        "value": usage, "timestamp": AT - timedelta(minutes=30), "run_id": "r"}}
    row = row_of(inventory.build([cluster], FakeStore(xcoms=xcoms), AT))
    assert row["bucket"]["classes"] == {"STANDARD": 4 * 2**20, "DEEP_ARCHIVE": 5 * 2**30}
    assert row["bucket"]["total_bytes"] == 4 * 2**20 + 5 * 2**30
    html = inventory_page.render(inventory.build([cluster], FakeStore(xcoms=xcoms), AT), None, AT)
    assert "DEEP_ARCHIVE: 5.0 GiB" in html and "STANDARD: 4.0 MiB" in html


def test_monthly_cost_estimate_column_from_the_freshness_xcom_and_the_textfile(tmp_path):
    """The bucket's estimate (pg_backups.costs) from whichever reading is newer: the XCom or the textfile."""
    from pg_backups import costs

    cluster = inventory_cluster(tmp_path)
    usage = {"bucket": "asso-prod-backups", "delete_markers": 0, "by_class": [
        {"storage_class": "STANDARD", "version": "current", "bytes": 300 * 2**30, "objects": 10},
        {"storage_class": "STANDARD", "version": "noncurrent", "bytes": 100 * 2**30, "objects": 2},
        {"storage_class": "DEEP_ARCHIVE", "version": "noncurrent", "bytes": 2000 * 2**30, "objects": 7}]}
    expected = costs.estimate(cluster, usage)
    xcoms = {("backup_freshness_asso", "bucket_usage", "return_value"): {
        "value": usage, "timestamp": AT - timedelta(minutes=30), "run_id": "r"}}
    row = row_of(inventory.build([cluster], FakeStore(xcoms=xcoms), AT))
    assert row["bucket"]["cost"]["total_monthly"] == pytest.approx(expected["total_monthly"])
    assert row["bucket"]["cost"]["total_monthly"] == pytest.approx(300 * 0.024 + 100 * 0.024 + 2000 * 0.002, rel=1e-3)
    html = inventory_page.render(inventory.build([cluster], FakeStore(xcoms=xcoms), AT), None, AT)
    assert "<th>Monthly S3 cost (est.)</th>" in html
    assert '<span class="cost-total">USD 13.60</span>' in html and "noncurrent USD 6.40" in html
    # From the textfile alone (the cron scripts' and a freshness DAG older than the XCom window).
    metrics.publish(cluster, "s3", metrics.bucket_samples(cluster, usage))
    row = row_of(inventory.build([cluster], FakeStore(), AT))
    assert row["bucket"]["source"] == "metrics"
    assert row["bucket"]["cost"]["total_monthly"] == pytest.approx(expected["total_monthly"])


def test_last_restore_test_with_its_proofs_and_the_audit_object(tmp_path):
    cluster = inventory_cluster(tmp_path, endpoint="https://localhost:9000")
    healthy(tmp_path, cluster)
    line = audit_line(cluster, AT - timedelta(days=2), outcome="failed", rto=61.2, run_id="manual__r2")
    row = row_of(inventory.build([cluster], FakeStore([event(record("x", "full", AT - timedelta(hours=1)))]), AT))
    r = row["restore_test"]
    assert (r["outcome"], r["backup_label"], r["rto_seconds"], r["checks_text"]) == ("failed", line["backup_label"],
                                                                                     61.2, "2/3 ok")
    assert r["signoff"]["by"] == "qa" and r["run_link"] == "/dags/restore_test_asso/runs/manual__r2"
    key = audit.archive_key(cluster, "manual__r2", "asso_restore_audit.log", AT - timedelta(days=2))
    assert r["audit"] == {"uri": f"s3://asso-prod-backups/{key}",
                          "url": f"https://localhost:9000/asso-prod-backups/{key}"}
    assert row["last_successful_restore_test"] == (AT - timedelta(days=30)).isoformat()
    assert row["status"]["colour"] == "red" and "last restore test failed" in row["status"]["text"]


def test_restore_test_too_old_and_none_are_amber(tmp_path):
    old, none = inventory_cluster(tmp_path, "old"), inventory_cluster(tmp_path, "none")
    for c in (old, none):
        healthy(tmp_path, c, restore=False)
    audit_line(old, AT - timedelta(days=120))
    events = [event(record("x", "full", AT - timedelta(hours=1), cluster=n)) for n in ("old", "none")]
    data = inventory.build([old, none], FakeStore(events), AT)
    assert row_of(data, "old")["status"]["text"] == "last successful restore test is 120 d old"
    assert row_of(data, "none")["status"]["text"] == "no restore test recorded"


def test_cron_audit_lines_have_no_run_link_and_broken_lines_are_skipped(tmp_path):
    cluster = inventory_cluster(tmp_path)
    with open(cluster.restore_test.audit_log, "w") as out:
        out.write("{not json\n")
    audit_line(cluster, AT - timedelta(days=1), run_id="cron__2026-11-24T09:00:00Z")
    row = row_of(inventory.build([cluster], FakeStore(), AT))
    assert row["restore_test"]["run_id"] == "cron__2026-11-24T09:00:00Z" and row["restore_test"]["run_link"] is None


def test_timeline_keeps_30_days_and_history_a_year(tmp_path):
    cluster = inventory_cluster(tmp_path)
    events = [event(record(f"b{d}", "full" if d % 7 == 0 else "diff", AT - timedelta(days=d, hours=6),
                           duration=100 + d)) for d in range(0, 400)]
    audit_line(cluster, AT - timedelta(days=200), rto=50)
    audit_line(cluster, AT - timedelta(days=10), rto=55)
    store = FakeStore(events)
    row = row_of(inventory.build([cluster], store, AT))
    backups = [i for i in row["timeline"] if i["kind"] == "backup"]
    assert len(backups) == 30 and [i for i in row["timeline"] if i["kind"] == "restore_test"][0]["label"]
    hist = inventory.history(cluster, store, AT)
    assert len(hist["backups"]) == 365 and [r["rto_seconds"] for r in hist["restore_tests"]] == [50, 55]
    html = inventory_page.render(inventory.build([cluster], store, AT), hist, AT)
    for title in ("Backup duration", "Database size per backup", "Restore test RTO"):
        assert f'data-chart="{title}"' in html
    assert html.count('class="ev backup full"') == 5 and html.count('class="ev restore"') == 1


def test_page_escapes_what_it_shows_and_marks_each_row(tmp_path):
    cluster = inventory_cluster(tmp_path)
    bad = record("<script>alert(1)</script>", "full", AT - timedelta(hours=1))
    data = inventory.build([cluster], FakeStore([event(bad)]), AT)
    html = inventory_page.render(data, inventory.history(cluster, FakeStore([event(bad)]), AT), AT)
    assert "<script>" not in html and "&lt;script&gt;" in html
    assert 'data-cluster="asso" data-status="amber"' in html
    assert 'href="../dags/pgbackrest_backup_asso/runs/' in html  # relative to <root>/backup-inventory/


def test_sizes_and_ages_in_words():
    assert [inventory.size_text(v) for v in (None, 512, 2048, 3 * 2**30)] == ["-", "512 B", "2.0 KiB", "3.0 GiB"]
    assert [inventory.age_text(s) for s in (None, 90, 7200, 5 * 86400)] == ["-", "1 min", "2.0 h", "5 d"]


# -- the plugin's wiring (no server: FastAPI's test client on the plugin's own app) ----------------

@pytest.fixture(scope="module")
def plugin():
    import backup_inventory_plugin  # plugins/ is on sys.path (pytest.ini)

    return backup_inventory_plugin


def test_plugin_mounts_its_app_and_a_navigation_entry(plugin):
    p = plugin.BackupInventoryPlugin
    assert p.fastapi_apps == [{"app": plugin.app, "url_prefix": "/backup-inventory", "name": "Backup inventory"}]
    (view,) = p.external_views
    assert view["destination"] == "nav" and view["url_route"] == "backup-inventory"
    assert view["href"] == "backup-inventory/"  # relative to the UI's <base href>
    routes = {r.path for r in plugin.app.routes}
    assert {"/", "/api/inventory", "/api/clusters/{name}", "/api/clusters/{name}/history"} <= routes


def test_anonymous_callers_are_refused_everywhere(plugin):
    from fastapi.testclient import TestClient

    client = TestClient(plugin.app, root_path="/backup-inventory")
    page = client.get("/backup-inventory/")
    assert page.status_code == 401 and "Not allowed" in page.text and "log in" in page.text
    assert "<tr" not in page.text
    for path in ("/api/inventory", "/api/clusters/asso", "/api/clusters/asso/history"):
        response = client.get("/backup-inventory" + path)
        assert response.status_code == 401 and response.json() == {"detail": "Not authenticated"}, path


def test_restore_tests_also_come_from_the_audit_xcom_when_the_file_is_out_of_reach(tmp_path):
    cluster = inventory_cluster(tmp_path)  # no audit log file on this machine (the API server's)
    line = {"time": (AT - timedelta(days=3)).isoformat(), "cluster": "asso", "run_id": "scheduled__q4",
            "tool": "pgbackrest", "backup_label": "20261122-021502F", "restore_duration_seconds": 88.0,
            "checks": [{"check": "smoke_query", "result": "ok"}], "signoff": {"status": "approved", "by": "qa"},
            "outcome": "success"}
    xcoms = {("restore_test_asso", "audit_and_archive", "audit"): [
        {"run_id": "scheduled__q4", "value": line, "timestamp": AT - timedelta(days=3)}]}
    store = FakeStore(xcoms=xcoms)
    row = row_of(inventory.build([cluster], store, AT))
    assert row["restore_test"]["run_id"] == "scheduled__q4" and row["restore_test"]["rto_seconds"] == 88.0
    audit_line(cluster, AT - timedelta(days=3), run_id="scheduled__q4")  # the same run, in the file too: once
    assert len(inventory_sources.audit_lines(cluster, [line])) == 1
    assert [r["rto_seconds"] for r in inventory.history(cluster, store, AT)["restore_tests"]] != []


def test_an_old_wal_measurement_is_not_the_current_state(tmp_path):
    cluster = inventory_cluster(tmp_path)
    metrics.write_textfile(metrics.textfile_path(cluster, "wal_archive"), metrics.render(
        metrics.archiver_samples(cluster, {"archived_count": 1, "failed_count": 0, "ready_count": 0})
        + [("metrics_last_write_timestamp_seconds", {"cluster": "asso"}, (AT - timedelta(days=3)).timestamp())]))
    audit_line(cluster, AT - timedelta(days=1))
    row = row_of(inventory.build([cluster], FakeStore([event(record("x", "full", AT - timedelta(hours=1)))]), AT))
    assert row["wal"]["state"] == "unknown"
    assert row["status"] == {"colour": "amber", "reasons": [row["wal"]["text"]], "text": row["wal"]["text"]}
    assert row["wal"]["text"].startswith("WAL archiving not measured since 2026-11-22")


def test_a_fleet_is_paged_red_first_then_amber_then_green_with_every_count(tmp_path):
    """One page of a fleet: the worst rows first, counts over every cluster, timelines for the page only."""
    names = ["a-green", "b-red", "c-amber", "d-green", "e-red"]
    clusters = [inventory_cluster(tmp_path, name) for name in names]
    events, runs = [], []
    for c in clusters:
        healthy(tmp_path, c)
        if "red" not in c.name:
            rec = record(f"{c.name}-F", "full", AT - timedelta(hours=6), cluster=c.name, run_id=f"scheduled__{c.name}")
            events.append(event(rec))
    runs.append(run("pgbackrest_backup_c-amber", "manual__bad", "failed", AT - timedelta(hours=1)))
    store = FakeStore(events, runs)
    whole = inventory.build(clusters, store, AT)
    assert [r["name"] for r in whole["clusters"]] == names and "total" not in whole  # as before: every row, in order
    first = inventory.build(clusters, store, AT, offset=0, limit=3)
    assert [(r["name"], r["status"]["colour"]) for r in first["clusters"]] == [
        ("b-red", "red"), ("e-red", "red"), ("c-amber", "amber")]
    assert first["counts"] == whole["counts"] == {"green": 2, "amber": 1, "red": 2}
    assert (first["total"], first["offset"], first["limit"]) == (5, 0, 3)
    second = inventory.build(clusters, store, AT, offset=3, limit=3)
    assert [r["name"] for r in second["clusters"]] == ["a-green", "d-green"]
    assert all(isinstance(r["timeline"], list) and r["timeline"] for r in second["clusters"])
    html = inventory_page.render(first, None, AT)
    assert "rows 1-3 of 5" in html and 'href="?page=2"' in html and "5 clusters" in html
    assert html.index('data-cluster="b-red"') < html.index('data-cluster="c-amber"')


# --------------------------------------------------------------------------------------------
# The verification drills: each backup verified, failed, pending or overdue


def drill_result(label, outcome, when, tool="pgbackrest", rto=6.4, step=None, cause=None, run_id=None):
    return {"time": when.isoformat(), "tool": tool, "run_id": run_id or f"asset_triggered__{when.isoformat()}",
            "backup_label": label, "backup_time": None, "rto_seconds": rto if outcome == "success" else None,
            "outcome": outcome, "failed_step": step, "cause": cause}


def drill_xcoms(*results):
    """What record_evidence leaves (verification.RESULT_XCOM) in each verify_backup run."""
    return {("verify_backup_asso", "record_evidence", "verification_result"): [
        {"run_id": r["run_id"], "value": r, "timestamp": datetime.fromisoformat(r["time"])} for r in results]}


def test_each_backup_says_what_its_drill_found_and_a_failed_drill_is_red(tmp_path):
    cluster = inventory_cluster(tmp_path, tools=("pgbackrest", "walg"), drills=True)
    healthy(tmp_path, cluster)
    full = record("20261123-021502F", "full", AT - timedelta(days=2))
    diff = record("20261125-021502D", "diff", AT - timedelta(hours=6))
    walg = record("base_000000010000000000000009", "full", AT - timedelta(minutes=20), tool="walg")
    results = [drill_result(full["label"], "success", AT - timedelta(days=2) + timedelta(minutes=9), rto=6.4),
               drill_result(diff["label"], "failed", AT - timedelta(hours=5, minutes=50), step="restore",
                            cause="drill: failed: [029] zst error: Unknown frame descriptor")]
    data = inventory.build([cluster], FakeStore([event(full), event(diff), event(walg)], xcoms=drill_xcoms(*results)), AT)
    row = row_of(data)
    newest = row["backups"]["pgbackrest"]["verification"]
    assert newest["state"] == "failed" and newest["drill"]["failed_step"] == "restore"
    assert newest["drill"]["run_link"].startswith("/dags/verify_backup_asso/runs/asset_triggered__")
    assert row["backups"]["walg"]["verification"]["state"] == "pending"  # 20 min old, limit 60
    last = row["verification"]["pgbackrest"]["last_verified"]
    assert (last["backup_label"], last["rto_seconds"]) == (full["label"], 6.4)
    assert row["verification"]["pgbackrest"]["last_drill"]["outcome"] == "failed"
    assert row["verification"]["walg"] == {"last_drill": None, "last_verified": None}
    assert row["status"]["colour"] == "red"
    assert ("pgbackrest backup 20261125-021502D: drill failed at restore: drill: failed: [029] zst error: Unknown "
            "frame descriptor") in row["status"]["reasons"]
    states = {(i["tool"], i["label"]): i["verification"] for i in row["timeline"] if i["kind"] == "backup"}
    assert states == {("pgbackrest", full["label"]): "verified", ("pgbackrest", diff["label"]): "failed",
                      ("walg", walg["label"]): "pending"}
    html = inventory_page.render(data, None, AT)
    assert 'data-state="failed"' in html and 'data-state="pending"' in html and 'data-verification="failed"' in html
    assert 'last verified: <span class="label">20261123-021502F</span>, RTO <span class="rto">6.4 s</span>' in html


def test_a_backup_not_drilled_within_max_delay_is_amber_and_cron_drills_count(tmp_path):
    cluster = inventory_cluster(tmp_path, drills=True)
    healthy(tmp_path, cluster)
    older = record("20261124-021502F", "full", AT - timedelta(days=1))
    newest = record("20261125-021502D", "diff", AT - timedelta(minutes=75))
    # A cron drill (pg_backups.cli verify-backup): its line in verify.log, no XCom, no Airflow run.
    line = {"kind": "verification", "cluster": "asso", "tool": "pgbackrest", "run_id": "cron__20261124T0300",
            "time": (AT - timedelta(hours=23)).isoformat(), "backup_label": older["label"], "rto_seconds": 7.5,
            "outcome": "success", "failed_step": None, "errors": [], "checks": [{"check": "amcheck", "result": "ok"}]}
    with open(cluster.verify.log, "w") as out:
        out.write(json.dumps(line) + "\n{half a line\n")
    row = row_of(inventory.build([cluster], FakeStore([event(older), event(newest)]), AT))
    assert row["backups"]["pgbackrest"]["verification"]["state"] == "overdue"
    assert row["status"] == {"colour": "amber", "reasons": [
        "pgbackrest backup 20261125-021502D not verified 75 min after it finished (verify.max_delay_minutes 60)"],
        "text": "pgbackrest backup 20261125-021502D not verified 75 min after it finished (verify.max_delay_minutes 60)"}
    last = row["verification"]["pgbackrest"]["last_verified"]
    assert (last["backup_label"], last["rto_seconds"], last["run_link"]) == (older["label"], 7.5, None)


def test_every_newest_backup_verified_is_green_and_says_so(tmp_path):
    cluster = inventory_cluster(tmp_path, drills=True)
    healthy(tmp_path, cluster)
    newest = record("20261125-021502D", "diff", AT - timedelta(hours=6))
    earlier = drill_result(newest["label"], "failed", AT - timedelta(hours=5, minutes=50), step="checks")
    again = drill_result(newest["label"], "success", AT - timedelta(hours=1), rto=8.1)  # a later drill by hand decides
    row = row_of(inventory.build([cluster], FakeStore([event(newest)], xcoms=drill_xcoms(earlier, again)), AT))
    assert row["backups"]["pgbackrest"]["verification"]["state"] == "verified"
    assert row["status"]["colour"] == "green" and row["status"]["text"].endswith(", newest backups verified")


def test_the_recovery_window_and_the_last_pitr_drill_per_tool_and_a_failed_drill_is_red(tmp_path):
    cluster = inventory_cluster(tmp_path, drills=True)
    healthy(tmp_path, cluster)
    newest = record("20261125-021502D", "diff", AT - timedelta(hours=6))
    verified = drill_result(newest["label"], "success", AT - timedelta(hours=5, minutes=50))
    window = {"tool": "pgbackrest", "start": (AT - timedelta(days=30)).isoformat(),
              "end": (AT - timedelta(minutes=16)).isoformat(), "end_source": "heartbeat"}
    failed = {"time": (AT - timedelta(hours=3)).isoformat(), "tool": "pgbackrest", "run_id": "scheduled__pitr",
              "backup_label": "20261124-021502F", "target_time": (AT - timedelta(days=1, hours=2)).isoformat(),
              "drawn": True, "recovered_to": None, "rpo_gap_seconds": None, "rto_seconds": None, "outcome": "failed",
              "failed_step": "start", "cause": "drill: failed: ... 00000001000000000000002A ... not found"}
    xcoms = {**drill_xcoms(verified),
             ("verify_pitr_asso", "record_evidence", "pitr_result"): [
                 {"run_id": failed["run_id"], "value": failed, "timestamp": AT - timedelta(hours=3)}],
             ("backup_freshness_asso", "check_backups", "return_value"): {
                 "value": {"backups": [], "recovery_windows": [window]}, "timestamp": AT - timedelta(minutes=10),
                 "run_id": "scheduled__f"}}
    data = inventory.build([cluster], FakeStore([event(newest)], xcoms=xcoms), AT)
    row = row_of(data)
    drills = row["pitr"]["pgbackrest"]
    assert (drills["window"]["start"], drills["window"]["end"]) == (window["start"], window["end"])
    assert drills["last_drill"]["run_link"] == "/dags/verify_pitr_asso/runs/scheduled__pitr"
    assert row["status"]["colour"] == "red"
    assert any(r.startswith("last PITR drill of pgbackrest failed (target") and "step start" in r
               for r in row["status"]["reasons"]), row["status"]
    html = inventory_page.render(data, None, AT)
    assert 'class="pitr-drill" data-outcome="failed"' in html and 'class="window-start"' in html
