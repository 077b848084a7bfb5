"""Prometheus metrics: text format, atomic textfiles, Pushgateway, S3 usage; and after a real backup."""

from __future__ import annotations

import http.server
import os
import threading
from datetime import datetime, timezone

from pg_backups import metrics
from pg_backups.config import build_cluster
from support import PGBACKREST_INFO_RECORDED_SAMPLE, WALG_BACKUP_LIST_RECORDED_SAMPLE, FakeS3
from support import metric_value as value

RECORD = {"cluster": "asso", "tool": "pgbackrest", "label": "20261124-021502F", "type": "full",
          "start_time": "2026-11-24T02:15:02+00:00", "stop_time": "2026-11-24T02:15:30+00:00",
          "duration_seconds": 28, "database_size_bytes": 31541943, "backup_size_bytes": 31541943,
          "repo_size_bytes": 4096000, "wal_start": "000000010000000000000005", "wal_stop": "000000010000000000000005",
          "airflow_run_id": "manual__x", "backup_count": 3}


def cluster(tmp_path=None, pushgateway_url=None):
    return build_cluster({"name": "asso", "metrics": {"textfile_directory": str(tmp_path) if tmp_path else None,
                                                      "pushgateway_url": pushgateway_url}})


def test_record_backup_writes_one_textfile_per_cluster_and_tool(tmp_path):
    done = metrics.record_backup(cluster(tmp_path), RECORD)
    path = tmp_path / "pg_backups_asso_pgbackrest.prom"
    assert done["textfile"] == str(path)
    text = path.read_text()
    stop = datetime(2026, 11, 24, 2, 15, 30, tzinfo=timezone.utc).timestamp()
    assert value(text, "pg_backups_backup_last_completion_timestamp_seconds", cluster="asso", tool="pgbackrest",
                 stanza="asso", backup_type="full") == stop
    assert value(text, "pg_backups_backup_last_duration_seconds", backup_type="full") == 28
    assert value(text, "pg_backups_backup_last_size_bytes") == 31541943
    assert value(text, "pg_backups_backup_last_repo_size_bytes") == 4096000
    assert value(text, "pg_backups_backup_count") == 3
    assert value(text, "pg_backups_backup_last_info", label="20261124-021502F") == 1
    assert "# TYPE pg_backups_backup_last_duration_seconds gauge" in text
    assert oct(os.stat(path).st_mode & 0o777) == "0o644"
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary file left behind
    metrics.record_backup(cluster(tmp_path), {**RECORD, "tool": "walg", "type": "delta"})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pg_backups_asso_pgbackrest.prom", "pg_backups_asso_walg.prom"]


def test_textfile_is_replaced_atomically(tmp_path, monkeypatch):
    path = tmp_path / "pg_backups_asso_pgbackrest.prom"
    metrics.record_backup(cluster(tmp_path), RECORD)
    before = path.read_text()
    replaced = []
    real_replace = os.replace
    monkeypatch.setattr(metrics.os, "replace", lambda a, b: (replaced.append((a, b)), real_replace(a, b)))
    metrics.record_backup(cluster(tmp_path), {**RECORD, "duration_seconds": 99})
    (src, dst), = replaced
    assert str(dst) == str(path) and os.path.dirname(src) == str(tmp_path) and not str(src).endswith(".prom")
    assert before != path.read_text() and value(path.read_text(), "pg_backups_backup_last_duration_seconds") == 99


def test_metrics_never_fail_the_job(tmp_path):
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    done = metrics.record_backup(cluster(blocker / "sub", pushgateway_url="http://127.0.0.1:9"), RECORD)
    assert done["textfile"] is None and done["pushed"] is False


def test_label_values_are_escaped():
    text = metrics.render([("backup_count", {"cluster": 'a"b\\c\nd'}, 1)])
    assert 'cluster="a\\"b\\\\c\\nd"' in text


def test_record_restore_keeps_the_last_success_when_a_test_fails(tmp_path):
    c = cluster(tmp_path)
    metrics.record_restore(c, {"tool": "pgbackrest", "backup_label": "L1", "restore_duration_seconds": 312.5,
                               "outcome": "success", "finished_at": "2026-10-04T03:10:00+00:00"})
    ok_time = datetime(2026, 10, 4, 3, 10, tzinfo=timezone.utc).timestamp()
    text = (tmp_path / "pg_backups_asso_restore_test.prom").read_text()
    assert value(text, "pg_backups_restore_test_last_result", tool="pgbackrest") == 1
    assert value(text, "pg_backups_restore_test_last_duration_seconds") == 312.5
    assert value(text, "pg_backups_restore_test_last_success_timestamp_seconds") == ok_time
    metrics.record_restore(c, {"tool": "pgbackrest", "backup_label": "L2", "restore_duration_seconds": 40,
                               "outcome": "failed", "finished_at": "2027-01-03T03:00:00+00:00"})
    text = (tmp_path / "pg_backups_asso_restore_test.prom").read_text()
    assert value(text, "pg_backups_restore_test_last_result") == 0
    assert value(text, "pg_backups_restore_test_last_success_timestamp_seconds") == ok_time
    assert value(text, "pg_backups_restore_test_last_run_timestamp_seconds") == datetime(
        2027, 1, 3, 3, tzinfo=timezone.utc).timestamp()
    assert value(text, "pg_backups_restore_test_last_info", backup_label="L2") == 1


def test_archiver_metrics(tmp_path):
    stats = {"archived_count": 10, "failed_count": 2, "last_archived_time": "2026-11-25T10:00:00+00:00",
             "last_failed_time": "2026-11-25T10:05:00+00:00", "ready_count": 3}
    metrics.record_archiver(cluster(tmp_path), stats)
    text = (tmp_path / "pg_backups_asso_wal_archive.prom").read_text()
    assert value(text, "pg_backups_wal_archive_status", cluster="asso") == 0
    assert value(text, "pg_backups_wal_archive_failed_total") == 2
    assert "# TYPE pg_backups_wal_archive_failed_total counter" in text
    assert value(text, "pg_backups_wal_archive_ready_files") == 3
    assert value(text, "pg_backups_wal_last_archived_timestamp_seconds") == datetime(
        2026, 11, 25, 10, tzinfo=timezone.utc).timestamp()


def test_bucket_usage_counts_noncurrent_versions_by_storage_class(tmp_path):
    usage = metrics.record_bucket(cluster(tmp_path), FakeS3())
    assert usage["delete_markers"] == 1
    text = (tmp_path / "pg_backups_asso_s3.prom").read_text()
    size = "pg_backups_s3_bucket_size_bytes"
    assert value(text, size, storage_class="STANDARD", version="current", bucket="asso-prod-backups") == 107
    assert value(text, size, storage_class="STANDARD", version="noncurrent") == 90
    assert value(text, size, storage_class="DEEP_ARCHIVE", version="noncurrent") == 5000
    assert value(text, "pg_backups_s3_bucket_objects", storage_class="STANDARD", version="current") == 2
    assert value(text, "pg_backups_s3_bucket_delete_markers") == 1


def test_pushgateway_receives_the_same_text_under_its_group():
    received = {}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_PUT(self):  # noqa: N802
            received["path"] = self.path
            received["body"] = self.rfile.read(int(self.headers["Content-Length"])).decode()
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.handle_request, daemon=True)
    thread.start()
    try:
        done = metrics.record_backup(cluster(pushgateway_url=f"http://127.0.0.1:{server.server_port}"), RECORD)
    finally:
        thread.join(10)
        server.server_close()
    assert done["pushed"] is True and done["textfile"] is None
    assert received["path"] == "/metrics/job/pg_backups/cluster/asso/source/pgbackrest"
    assert value(received["body"], "pg_backups_backup_last_duration_seconds") == 28


def test_cron_walg_daily_publishes_metrics_recorded_sample(tmp_path, monkeypatch):
    """The cron path (operations.walg_daily) publishes like the DAG's publish_backup task."""
    from pg_backups import operations, walg

    backups = walg.parse_backup_list(WALG_BACKUP_LIST_RECORDED_SAMPLE)
    monkeypatch.setattr(operations, "walg_backup", lambda c, a, r: walg.backup_record(c, backups[-1], backups))
    monkeypatch.setattr(operations, "walg_delete_old", lambda c, a: {"deleted_before": None})
    monkeypatch.setattr(operations.walg, "backup_list", lambda c, a: backups)
    record = operations.walg_daily(cluster(tmp_path), object(), "cron__2026-11-25T02:45:00Z")
    text = (tmp_path / "pg_backups_asso_walg.prom").read_text()
    assert value(text, "pg_backups_backup_last_repo_size_bytes", tool="walg", backup_type="delta") == 254321
    assert value(text, "pg_backups_backup_last_info", label=record["label"]) == 1


def test_cron_pgbackrest_daily_publishes_metrics_recorded_sample(tmp_path, monkeypatch):
    from pg_backups import operations, pgbackrest

    info = pgbackrest.parse_info(PGBACKREST_INFO_RECORDED_SAMPLE, "asso")
    for name in ("pgbackrest_preflight", "pgbackrest_expire", "pgbackrest_verify"):
        monkeypatch.setattr(operations, name, lambda *a, **k: None)
    monkeypatch.setattr(operations.pgbackrest, "info", lambda c: info)
    monkeypatch.setattr(operations, "pgbackrest_backup",  # the backup task returns the new backup's record
                        lambda c, t, r: operations.pgbackrest_latest_record(c, "20261124-021502F_20261125-021503D"))
    operations.pgbackrest_daily(cluster(tmp_path), object(), "cron__x")
    text = (tmp_path / "pg_backups_asso_pgbackrest.prom").read_text()
    assert value(text, "pg_backups_backup_last_completion_timestamp_seconds", backup_type="diff") == 1795572915
    assert value(text, "pg_backups_backup_last_duration_seconds", backup_type="diff") == 12
    assert value(text, "pg_backups_backup_count") == 3
