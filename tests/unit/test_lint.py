"""ruff over the whole tree, Airflow's own AIR rules included (ruff.toml): the code stays clean."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_ruff_with_airflow_rules_is_clean():
    ruff = Path(sys.executable).parent / "ruff"
    proc = subprocess.run([str(ruff), "check", "--no-cache", "--output-format=concise", "."], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]


def test_ruff_checks_the_air_rules():
    """The AIR rules are really on: a DAG without a schedule argument is reported (AIR002)."""
    ruff = Path(sys.executable).parent / "ruff"
    bad = "from airflow.sdk import DAG\n\nwith DAG(dag_id='x'):\n    pass\n"
    proc = subprocess.run([str(ruff), "check", "--no-cache", "--output-format=concise", "--stdin-filename",
                           "dags/x.py", "-"], cwd=REPO,
                          input=bad, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "airflow-dag-no-schedule-argument" in proc.stdout, proc.stdout
