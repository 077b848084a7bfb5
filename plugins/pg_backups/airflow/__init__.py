"""The Airflow side of pg_backups: task bodies, the QA sign-off operator, Slack notifiers.

Everything that imports Airflow lives here; the modules of :mod:`pg_backups` outside this package
import none of it, so the cron scripts run the same operations without Airflow.
"""
