"""The last good configuration under the real scheduler (issue 25, item 2): with a YAML syntax
error in clusters.yaml, the dag-processor keeps every cluster's DAGs (the alert DAG's case is in
tests/sandbox/test_config_safety_sandbox.py)."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from support import wait_for

BROKEN = "  - name: [unclosed\n"  # an unclosed '[': the typo


def _parsed(stack, dag_id: str) -> dict:
    return stack.request("GET", f"/api/v2/dags/{dag_id}")


def _when(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


@pytest.mark.sandbox
@pytest.mark.scheduler
@pytest.mark.slow
def test_a_yaml_syntax_error_keeps_every_clusters_dags_on_the_scheduler(stack, sandbox):
    """The issue's measure was 8 DAGs, then 0, within two minutes. Here every DAG file is parsed
    again with the broken file (its last_parsed_time passes the moment of the typo; the sandbox's
    dag-processor parses every 10 s) and every cluster's DAGs are still there, not stale; the one
    import error says the last good configuration runs; restoring the file clears it."""
    clusters_file = sandbox.layout.clusters_file
    original = clusters_file.read_text()
    clusters = {"asso", "billing"}
    stack.wait_parsed(*(f"{dag}_{name}" for dag in ("pgbackrest_backup", "restore_test", "backup_freshness",
                                                     "s3_bucket_config") for name in clusters))
    dags = {d["dag_id"] for d in stack.request("GET", "/api/v2/dags?limit=200")["dags"]
            if not d["is_stale"] and any(d["dag_id"].endswith(f"_{name}") for name in clusters)}
    try:
        broken_at = datetime.now(timezone.utc)
        clusters_file.write_text(original + BROKEN)

        def import_error():
            errors = stack.request("GET", "/api/v2/importErrors")["import_errors"]
            return errors if any("last good configuration" in e["stack_trace"] for e in errors) else None
        errors = wait_for(import_error, 180, every=5, what="the import error")
        assert len(errors) == 1 and errors[0]["filename"].endswith("configuration_errors.py"), errors
        trace = errors[0]["stack_trace"]
        assert "running on the last good configuration of " in trace and "not valid YAML" in trace

        def all_parsed_again():
            seen = {dag_id: _parsed(stack, dag_id) for dag_id in dags}
            stale = [dag_id for dag_id, d in seen.items() if d["is_stale"]]
            assert not stale, f"dropped while the file is broken: {stale}"
            return all(d["last_parsed_time"] and _when(d["last_parsed_time"]) > broken_at for d in seen.values())
        wait_for(all_parsed_again, 240, every=5, what="every DAG file parsed again with the broken file")
        listed = {d["dag_id"] for d in stack.request("GET", "/api/v2/dags?limit=200")["dags"] if not d["is_stale"]}
        assert dags <= listed, dags - listed
    finally:
        clusters_file.write_text(original)
    wait_for(lambda: not stack.request("GET", "/api/v2/importErrors")["import_errors"], 180, every=5,
             what="the import error cleared once the file is restored")
