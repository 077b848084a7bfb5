"""The Prometheus alert rules pass promtool's checks and unit tests; rules and dashboard use only
metrics that plugins/pg_backups/metrics.py publishes."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

from pg_backups import metrics

REPO = Path(__file__).resolve().parents[2]
RULES = REPO / "monitoring" / "prometheus" / "backup_rules.yml"
RULE_TESTS = REPO / "monitoring" / "prometheus" / "backup_rules_test.yml"
DASHBOARD = REPO / "monitoring" / "grafana" / "backups_dashboard.json"
PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"
PUBLISHED = {f"{metrics.PREFIX}_{name}" for name in metrics.HELP}


def promtool(*args) -> subprocess.CompletedProcess:
    return subprocess.run([PROMTOOL, *args], cwd=RULES.parent, text=True, capture_output=True, timeout=300)


def test_promtool_check_rules():
    proc = promtool("check", "rules", RULES.name)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout


def test_promtool_rule_unit_tests_pass():
    proc = promtool("test", "rules", RULE_TESTS.name)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout


def test_every_alert_has_a_firing_and_a_silent_case():
    import yaml

    alerts = {r["alert"] for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]}
    cases = [c for t in yaml.safe_load(RULE_TESTS.read_text())["tests"] for c in t.get("alert_rule_test", [])]
    for alert in alerts:
        mine = [c for c in cases if c["alertname"] == alert]
        assert any(c["exp_alerts"] for c in mine), f"{alert}: no case where it fires"
        assert any(not c["exp_alerts"] for c in mine) or alert in ("PgRestoreTestFailed", "PgWalArchiveFailures"), \
            f"{alert}: no case where it must stay silent"


def _names(text: str) -> set[str]:
    return set(re.findall(r"\bpg_backups_[a-z0-9_]+\b", text))


def test_rules_and_dashboard_use_published_metrics():
    assert _names(RULES.read_text()) <= PUBLISHED, _names(RULES.read_text()) - PUBLISHED
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = " ".join(t["expr"] for p in dashboard["panels"] for t in p.get("targets", []))
    assert _names(exprs) <= PUBLISHED, _names(exprs) - PUBLISHED
    used = _names(exprs)
    for needed in ("pg_backups_backup_last_completion_timestamp_seconds", "pg_backups_restore_test_last_duration_seconds",
                   "pg_backups_wal_archive_status", "pg_backups_s3_bucket_size_bytes",
                   "pg_backups_s3_bucket_monthly_cost_estimate"):
        assert needed in used


def test_dashboard_panels_are_listed_in_the_docs():
    readme = (REPO / "docs" / "alerts-and-metrics.md").read_text()
    dashboard = json.loads(DASHBOARD.read_text())
    for panel in dashboard["panels"]:
        if panel["type"] != "row":
            assert panel["title"] in readme, panel["title"]
