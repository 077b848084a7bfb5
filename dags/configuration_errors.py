"""The cluster configuration's problems, as one import error in the Airflow UI (this file has no DAG).

A cluster entry with a problem gets no DAG (never a half-built one), and the other clusters keep
theirs: every other DAG file builds the valid clusters only. This file raises one ConfigError that
names every problem (file, key, fix) and the clusters still running, so one mistake shows once.
"""

from pg_backups.config import load_config

load_config(strict=False).raise_errors()
