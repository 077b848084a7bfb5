"""The last good configuration through the real Airflow (issue 25, item 2): the alert DAG posts once
per bad version to the sandbox's Slack receiver (the dag-processor keeping every cluster's DAGs
through a YAML syntax error is in tests/scheduler/test_config_safety_scheduler.py)."""

from __future__ import annotations

import pytest

from pg_backups.config import load_config

BROKEN = "  - name: [unclosed\n"  # an unclosed '[': the typo


@pytest.mark.sandbox
@pytest.mark.slow
def test_one_slack_alert_per_bad_version_from_the_alert_dag(sandbox, tmp_path):
    """`airflow dags test` of configuration_alerts over a copy of the sandbox's file: a bad version
    alerts once however often the task runs, and the file good again says so once."""
    path = tmp_path / "clusters.yaml"
    good = sandbox.layout.clusters_file.read_text()
    path.write_text(good)
    assert load_config(path, strict=False).clusters  # a running load keeps the copy (PG_BACKUPS_STATE_DIR)
    env = {"PG_BACKUPS_CONFIG": str(path)}
    path.write_text(good + BROKEN)
    before = len(sandbox.slack_messages())
    first = sandbox.dags_test("configuration_alerts", env=env)
    assert first.state == "success", first.output[-3000:]
    texts = sandbox.slack_texts_since(before)
    assert len(texts) == 1 and "running on the last good configuration of" in texts[0], texts
    assert "not valid YAML" in texts[0] and "asso" in texts[0]
    again = sandbox.dags_test("configuration_alerts", env=env)
    assert again.state == "success" and again.xcoms["alert_bad_configuration"]["alerted"] is False
    assert len(sandbox.slack_texts_since(before)) == 1  # the same bad version: no second alert
    path.write_text(good)
    fixed = sandbox.dags_test("configuration_alerts", env=env)
    assert fixed.state == "success", fixed.output[-3000:]
    texts = sandbox.slack_texts_since(before)
    assert len(texts) == 2 and "valid again" in texts[1], texts
