#!/usr/bin/env bash
# Daily WAL-G backup for cron (runbook 2.2): backup-push, then retention (backups older than the
# configured days deleted, never the newest full one); prints the backup's record as JSON.
# Exits non-zero on any failure (and alerts Slack when SLACK_WEBHOOK_URL is set).
#   PGHOST PGPORT PGUSER PGPASSWORD PGDATA   the database (override the cluster configuration)
#   WALG_S3_PREFIX      s3://<bucket>/<path> (default: from the cluster configuration)
#   PG_BACKREST_STANZA  cluster name (default: the only configured cluster)
#   AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY   S3 keys (or an instance role)
# cron: 45 2 * * * /opt/asso/include/scripts/wal_g_backup.sh >> /var/log/wal_g_cron.log 2>&1
set -euo pipefail

# --help, and refusing stray arguments, are handled there, for every script alike.
exec "$(dirname "${BASH_SOURCE[0]}")/pg_backups_cli.sh" --for "${BASH_SOURCE[0]}" walg-backup "$@"
