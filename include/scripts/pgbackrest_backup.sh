#!/usr/bin/env bash
# Daily pgBackRest backup for cron (runbook 2.1): preflight (stanza, check), backup, expire,
# verify; prints the backup's record as JSON. Exits non-zero on any failure (and alerts Slack
# when SLACK_WEBHOOK_URL is set).
#   PG_BACKREST_STANZA  cluster/stanza (default: the only configured cluster)
#   PG_BACKREST_CONFIG  a hand-written pgbackrest.conf to use as is (default: the generated one)
#   PGHOST PGPORT PGUSER PGPASSWORD   the database (override the cluster configuration)
#   AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY   S3 keys (or an instance role)
# cron: 15 2 * * * /opt/asso/include/scripts/pgbackrest_backup.sh >> /var/log/pgbackrest_cron.log 2>&1
set -euo pipefail

# --help, and refusing stray arguments, are handled there, for every script alike.
exec "$(dirname "${BASH_SOURCE[0]}")/pg_backups_cli.sh" --for "${BASH_SOURCE[0]}" pgbackrest-backup "$@"
