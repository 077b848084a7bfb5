"""One Slack alert per bad version of the cluster configuration (docs/configuration-safety.md).

The DAG files parse the configuration and show its problems as one import error
(configuration_errors.py), but a parse must not open a connection; this DAG's task does the
talking, every 10 minutes, and remembers which bad version it already alerted on.
"""

from airflow.sdk import DAG, task

from pg_backups.airflow import config_tasks
from pg_backups.airflow.common import dag_args
from pg_backups.config import load_config

DOC = """
### Alerts on the cluster configuration `{source}`
**alert_bad_configuration** (every 10 minutes): when the file has problems (not valid YAML,
unreadable, an entry refused), one Slack message per bad version of the file, naming every
problem and the clusters that run on the last good configuration; when it is valid again, one
message saying so. The version alerted on is kept in the Airflow Variable `{variable}`.
Not paused at creation: it only reads the file and posts to Slack.
Its owner, retries and failure alert are those of cluster `{first}`.
"""

config = load_config(strict=False)
if config.clusters:  # with no cluster at all (a file never valid), only the import error shows
    first = config.clusters[0]
    args = dag_args(first, "configuration")
    with DAG(
        dag_id="configuration_alerts",
        schedule="*/10 * * * *",
        is_paused_upon_creation=False,
        **{**args, "tags": ["backups", "configuration"]},
        doc_md=DOC.format(source=config.source, variable=config_tasks.ALERTED_VARIABLE, first=first.name),
    ):
        task(task_id="alert_bad_configuration")(config_tasks.alert_bad_configuration)()
