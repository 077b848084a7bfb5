"""Task body of the ``configuration_alerts`` DAG: one Slack alert per bad version of the cluster
configuration, sent from a task, never at parse time (a DAG file opens no connection).

The version alerted on is kept in an Airflow Variable, so every worker of a Celery deployment
agrees on it: a file parsed a thousand times with the same mistake alerts once, a new mistake
alerts again, and a file good again says so once.
"""

from __future__ import annotations

import logging

from airflow.sdk import Variable

from pg_backups import alerts
from pg_backups.airflow import notifiers
from pg_backups.airflow.common import task_body
from pg_backups.config import alert_for, load_config

log = logging.getLogger(__name__)

# The sha256 of the last bad version alerted on ("" or missing: none).
ALERTED_VARIABLE = "pg_backups_config_alerted"


@task_body
def alert_bad_configuration() -> dict:
    config = load_config(strict=False)
    alerted = Variable.get(ALERTED_VARIABLE, default=None) or None
    text, record = alert_for(config, alerted)
    if text:
        sent = set()
        for cluster in config.clusters:  # each Slack connection of the running clusters, once
            if cluster.alerts.slack_conn_id not in sent:
                notifiers.post(cluster, alerts.redact_text(text))
                sent.add(cluster.alerts.slack_conn_id)
        log.info("alerted %s: %s", ", ".join(sorted(sent)), text.splitlines()[0])
    else:
        log.info("nothing new to alert: %d problem(s), version %s", len(config.errors), (config.version or "")[:12])
    if record != alerted:  # after the alert went out: a failed post is retried, not forgotten
        Variable.set(ALERTED_VARIABLE, record or "")
    return {"problems": [str(e) for e in config.errors], "alerted": bool(text), "version": config.version,
            "last_good": list(config.last_good)}
