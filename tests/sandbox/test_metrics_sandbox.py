"""The metrics textfile after a real backup of the sandbox (the unit cases are in
tests/unit/test_metrics.py)."""

from __future__ import annotations

from datetime import datetime

import pytest

from support import metric_value as value


@pytest.mark.sandbox
def test_metrics_after_a_real_backup(first_backup, sandbox):
    # A run of its own: other tests of the session take backups too, and the metrics follow the newest.
    run = sandbox.dags_test("pgbackrest_backup_asso")
    assert run.state == "success", run.output[-3000:]
    record = run.xcoms["publish_backup"]
    path = sandbox.layout.root / "metrics" / "pg_backups_asso_pgbackrest.prom"
    text = path.read_text()
    labels = {"cluster": "asso", "tool": "pgbackrest", "stanza": "asso", "backup_type": record["type"]}
    assert value(text, "pg_backups_backup_last_completion_timestamp_seconds", **labels) == datetime.fromisoformat(
        record["stop_time"]).timestamp()
    assert value(text, "pg_backups_backup_last_duration_seconds", **labels) == record["duration_seconds"]
    assert value(text, "pg_backups_backup_last_size_bytes", **labels) == record["database_size_bytes"] > 0
    assert value(text, "pg_backups_backup_last_repo_size_bytes", **labels) == record["repo_size_bytes"]
    assert value(text, "pg_backups_backup_last_info", label=record["label"]) == 1
    for secret in sandbox.secrets():
        assert secret not in text
