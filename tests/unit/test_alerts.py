"""Slack failure alerts: one format, rendered by Airflow's own templating, never carrying a secret,
never failing because Slack is down (unit tests; the sandbox ones are in tests/sandbox/test_alerts_sandbox.py)."""

from __future__ import annotations

import os
from types import SimpleNamespace

import pytest

from pg_backups import alerts
from pg_backups.airflow import notifiers
from pg_backups.config import build_cluster, dag_kind
from pg_backups.errors import ToolError
from support import alerts_itself


def cluster(**alert_settings):
    return build_cluster({"name": "asso", "alerts": {"slack_conn_id": "slack_ops_test", **alert_settings}})


def context(exception, try_number=2):
    dag = SimpleNamespace(dag_id="pgbackrest_backup_asso", template_searchpath=None, template_undefined=None,
                          user_defined_macros=None, user_defined_filters=None, render_template_as_native_obj=False,
                          jinja_environment_kwargs=None, get_template_env=None)
    ti = SimpleNamespace(task_id="backup", try_number=try_number,
                         log_url="http://airflow.example/dags/pgbackrest_backup_asso/runs/r1/tasks/backup?try_number=2")
    return {"dag": dag, "ti": ti, "run_id": "scheduled__2026-11-25T02:15:00+00:00", "exception": exception}


class Sent(Exception):
    pass


def render(notifier, ctx):
    """Run the notifier as Airflow does (``__call__``: context, templates, notify), capturing the text."""
    import jinja2

    sent = []
    notifier.__dict__["hook"] = SimpleNamespace(send=lambda **kw: sent.append(kw) or SimpleNamespace(
        status_code=200, api_url="x"))
    notifier.get_template_env = lambda dag=None: jinja2.Environment()
    notifier(ctx)
    (message,), = [sent]
    return message["text"]


def test_failure_text_has_every_field():
    text = render(notifiers.failure_notifier(cluster(), "pgbackrest"),
                  context(ToolError("pgbackrest backup failed with exit code 82: ERROR: [082]: WAL segment was not archived")))
    assert text.splitlines() == [
        ":red_circle: *Backup failed* - cluster `asso`",
        "*DAG:* `pgbackrest_backup_asso`  *Task:* `backup`  *Try:* 2",
        "*Run:* `scheduled__2026-11-25T02:15:00+00:00`",
        "*Error:* ToolError: pgbackrest backup failed with exit code 82: ERROR: [082]: WAL segment was not archived",
        "*Log:* http://airflow.example/dags/pgbackrest_backup_asso/runs/r1/tasks/backup?try_number=2",
    ]


def test_one_shared_notifier_renders_each_failure_afresh():
    notifier = notifiers.failure_notifier(cluster())  # default_args: one instance for every task
    first = render(notifier, context(RuntimeError("first problem")))
    ctx = context(RuntimeError("second problem"), try_number=3)
    ctx["ti"].task_id = "verify"
    second = render(notifier, ctx)
    assert "first problem" in first and "second problem" in second and "`verify`" in second and "*Try:* 3" in second


def test_error_summary_is_one_line_short_and_typed():
    assert alerts.error_summary(ValueError("line one\nline two")) == "ValueError: line one"
    long = alerts.error_summary(RuntimeError("x" * 2000))
    assert len(long) == alerts.ERROR_SUMMARY_CHARS and long.endswith("...")
    assert "see the log" in alerts.error_summary(None)
    assert alerts.error_summary(KeyError()) == "KeyError"


def test_error_summary_never_carries_a_secret(monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY")
    monkeypatch.setenv("PGPASSWORD", "s3cr3t-pg-pass")
    error = RuntimeError("connect to postgresql://ops:hunter22@db.internal/app failed; "
                         "key wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY rejected; password=s3cr3t-pg-pass "
                         "webhook https://hooks.slack.com/services/T000/B000/XXXXXXXX token: abcdef123456")
    summary = alerts.error_summary(error)
    for secret in ("hunter22", "wJalrXUtnFEMI", "s3cr3t-pg-pass", "T000/B000/XXXXXXXX", "abcdef123456"):
        assert secret not in summary, summary
    assert "postgresql://***@db.internal/app" in summary


def test_error_summary_uses_airflows_secret_masker():
    from airflow.sdk.log import mask_secret

    mask_secret("a-connection-password-42")
    assert "a-connection-password-42" not in notifiers.error_summary(RuntimeError("login a-connection-password-42 refused"))


def test_slack_down_is_a_warning_not_an_exception(caplog):
    notifier = notifiers.failure_notifier(cluster())

    def down(**kwargs):
        raise ConnectionRefusedError("[Errno 111] Connection refused")

    import jinja2

    notifier.__dict__["hook"] = SimpleNamespace(send=down)
    notifier.get_template_env = lambda dag=None: jinja2.Environment()
    notifier(context(RuntimeError("the real failure")))  # does not raise
    assert "Slack alert not sent (ConnectionRefusedError" in caplog.text


def test_retry_alerts_only_when_asked():
    from pg_backups.airflow.common import default_args

    quiet, loud = default_args(cluster(), purpose="pgbackrest"), default_args(cluster(notify_on_retry=True),
                                                                               purpose="pgbackrest")
    assert "on_retry_callback" not in quiet and len(quiet["on_failure_callback"]) == 1
    assert loud["on_retry_callback"][0].slack_webhook_conn_id == "slack_ops_test"
    assert quiet["on_failure_callback"][0].slack_webhook_conn_id == "slack_ops_test"
    assert quiet["retries"] >= 1
    text = render(loud["on_retry_callback"][0], context(RuntimeError("transient"), try_number=1))
    assert text.startswith(":warning: *Backup failed, retrying* - cluster `asso`") and "try 1: RuntimeError: transient" in text


@pytest.mark.parametrize("purpose,error,title", [
    ("pgbackrest", RuntimeError("x"), "Backup failed"), ("walg", RuntimeError("x"), "Backup failed"),
    ("restore-test", RuntimeError("restore test of cluster asso failed: guard: failed"), "Restore test failed"),
    ("restore-test", RuntimeError("QA rejected the restore test of cluster asso (qa_signoff, by qa): no"),
     "Restore test rejected by QA"),
    ("s3", RuntimeError("x"), "Bucket configuration failed"),
    ("monitoring", RuntimeError("x"), "Backup freshness check failed"),
])
def test_the_title_says_what_failed(purpose, error, title):
    text = render(notifiers.failure_notifier(cluster(), purpose), context(error))
    assert text.startswith(f":red_circle: *{title}* - cluster `asso`"), text


def test_a_link_to_localhost_8080_says_to_set_the_base_url(caplog):
    ctx = context(RuntimeError("x"))
    ctx["ti"].log_url = "http://localhost:8080/dags/x/runs/r/tasks/t?try_number=1"
    text = render(notifiers.failure_notifier(cluster(), "pgbackrest"), ctx)
    assert text.endswith("(this link points at localhost: set AIRFLOW__API__BASE_URL)")
    assert "set [api] base_url" in caplog.text


def test_notifier_is_the_slack_providers():
    from airflow.providers.slack.notifications.slack_webhook import SlackWebhookNotifier

    notifier = notifiers.failure_notifier(cluster())
    assert isinstance(notifier, SlackWebhookNotifier)
    import pickle

    assert type(pickle.loads(pickle.dumps(notifier))) is type(notifier)


@pytest.mark.parametrize("name", ["AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"])
def test_environment_secrets_are_redacted(monkeypatch, name):
    monkeypatch.setenv(name, "Zz9-very-secret-value")
    assert "Zz9-very-secret-value" not in alerts.redact_text(f"boom Zz9-very-secret-value {os.getpid()}")


def test_every_task_of_every_dag_alerts_through_the_configured_connection(tmp_path):
    """WAL-G's DAG included (it cannot run here): the same notifier on every task, the configured id."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    config = tmp_path / "clusters.yaml"
    config.write_text("clusters:\n  - name: asso\n    alerts: {slack_conn_id: slack_elsewhere, notify_on_retry: true}\n")
    code = (
        "import json, sys\n"
        "from airflow.dag_processing.dagbag import DagBag\n"
        "bag = DagBag(dag_folder=sys.argv[1])\n"
        "out = {'errors': list(bag.import_errors), 'tasks': []}\n"
        "for dag in bag.dags.values():\n"
        "    for t in dag.tasks:\n"
        "        out['tasks'].append([dag.dag_id, t.task_id,\n"
        "            [(type(c).__name__, getattr(c, 'slack_webhook_conn_id', None)) for c in t.on_failure_callback],\n"
        "            [(type(c).__name__, getattr(c, 'slack_webhook_conn_id', None)) for c in t.on_retry_callback or []]])\n"
        "print(json.dumps(out))\n")
    env = {**os.environ, "PG_BACKUPS_CONFIG": str(config), "PYTHONPATH": str(repo / "plugins")}
    proc = subprocess.run([sys.executable, "-c", code, str(repo / "dags")], env=env, text=True, capture_output=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["errors"] == []
    dags = {dag_id for dag_id, *_ in out["tasks"]}
    assert {"pgbackrest_backup_asso", "walg_backup_asso", "s3_bucket_config_asso", "backup_freshness_asso"} <= dags
    for dag_id, task_id, on_failure, on_retry in out["tasks"]:
        expected = [["OpsSlackNotifier", "slack_elsewhere"]] if alerts_itself(dag_kind(dag_id), task_id) else []
        assert on_failure == expected, (dag_id, task_id)
        assert on_retry == expected, (dag_id, task_id)


def test_a_failure_already_reported_sends_no_second_alert():
    """The restore test's teardown fails a cancelled or failed drill after its own alert (or the
    audit's) went out: the notifier every task carries stays silent for it."""
    import jinja2

    from pg_backups.airflow.common import AlreadyReported

    notifier = notifiers.failure_notifier(cluster(), "restore-test")
    sent = []
    notifier.__dict__["hook"] = SimpleNamespace(send=lambda **kw: sent.append(kw))
    notifier.get_template_env = lambda dag=None: jinja2.Environment()
    notifier(context(AlreadyReported("restore test of cluster asso cancelled")))
    assert sent == []
    assert render(notifier, context(RuntimeError("stopping staging failed"))).startswith(
        ":red_circle: *Restore test failed*")
