"""The session fixtures every layer uses: one sandbox per test session (real PostgreSQL, real
pgBackRest, moto S3 behind stunnel TLS, a Slack receiver and Airflow, on ports of their own:
TEST_SANDBOX_PORT_BASE, default 26400), and the real Airflow over it (``stack``).

The tests are sorted by layer (docs/testing.md): tests/unit needs no server, tests/sandbox the
sandbox, tests/scheduler the real scheduler, tests/compose the compose stack. The markers say the
same, so ``pytest -m "not sandbox"`` runs the fast unit tests alone. KEEP_SANDBOX=1 keeps the
sandbox after the session and reuses it in the next (for debugging); otherwise each session starts
from a new one.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

import sandbox as sandbox_module  # sandbox/sandbox.py (pytest.ini's pythonpath)
from airflow_api import Client
from support import REPO, SANDBOX_DIR, Sandbox, session_environment

# The e-mail and PagerDuty receivers: module fixtures of the unit and the sandbox alert-channel tests.
pytest_plugins = ["alert_receivers"]


def pytest_configure(config):
    # Airflow reads its configuration when first imported: point it at the test sandbox before
    # any test module (or what it imports) is collected.
    os.environ.update(session_environment())


@pytest.fixture(scope="session")
def sandbox() -> Sandbox:
    # A fresh sandbox per session: whatever an earlier session left in SANDBOX_DIR goes first.
    if os.environ.get("KEEP_SANDBOX") != "1":
        subprocess.run([sys.executable, REPO / "sandbox" / "sandbox.py", "destroy"], text=True, capture_output=True)
    up = subprocess.run([sys.executable, REPO / "sandbox" / "sandbox.py", "up"], text=True, capture_output=True,
                        env=os.environ.copy())
    if up.returncode != 0:
        pytest.fail(f"sandbox up failed:\n{up.stdout}\n{up.stderr}")
    env = sandbox_module.read_env_file(SANDBOX_DIR / "sandbox.env")
    os.environ.update(env)  # connections for in-process hooks too
    box = Sandbox(sandbox_module.Layout.from_env(), env)
    yield box
    if os.environ.get("KEEP_SANDBOX") != "1":
        subprocess.run([sys.executable, REPO / "sandbox" / "sandbox.py", "destroy"], text=True, capture_output=True)


def pytest_collection_modifyitems(config, items):
    """The real scheduler's tests last: while it runs, it would also schedule the runs that
    `airflow dags test` creates in the same metadata database."""
    items.sort(key=lambda item: item.get_closest_marker("scheduler") is not None)


@pytest.fixture(scope="session")
def stack(configured_bucket) -> Client:
    """A real Airflow over the session's sandbox, started once; its tests run last."""
    up = subprocess.run([sys.executable, REPO / "sandbox" / "sandbox.py", "airflow-up"], text=True,
                        capture_output=True, env={**os.environ, **configured_bucket.env})
    if up.returncode != 0:
        pytest.fail(f"airflow-up failed:\n{up.stdout}\n{up.stderr}")
    try:
        yield Client(configured_bucket.layout)
    finally:
        subprocess.run([sys.executable, REPO / "sandbox" / "sandbox.py", "airflow-down"], text=True,
                       capture_output=True, env={**os.environ, **configured_bucket.env})


@pytest.fixture(scope="session")
def configured_bucket(sandbox) -> Sandbox:
    """The sandbox with its bucket configured by the real S3 DAG."""
    result = sandbox.dags_test("s3_bucket_config_asso")
    assert result.state == "success", result.output[-3000:]
    return sandbox


@pytest.fixture(scope="session")
def first_backup(configured_bucket):
    """One pgBackRest backup taken by the real DAG (it creates the stanza), and one WAL-G backup
    when a WAL-G binary was found (the freshness checks want each tool's); later tests build on it.
    The pgBackRest run is returned."""
    result = configured_bucket.dags_test("pgbackrest_backup_asso")
    assert result.state == "success", result.output[-5000:]
    if "walg" in configured_bucket.cluster().tools:
        walg = configured_bucket.dags_test("walg_backup_asso")
        assert walg.state == "success", walg.output[-5000:]
    return result
