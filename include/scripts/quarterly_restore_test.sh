#!/usr/bin/env bash
# Quarterly restore test for cron (runbook 3): guard, stop + purge staging, restore the latest
# backup, start staging on its own port, smoke query, data checks, one audit line (sign-off
# "pending": QA signs off in the quality register), smoke + audit logs archived to S3.
# Exits non-zero when the drill did not pass (and alerts Slack when SLACK_WEBHOOK_URL is set).
#   RESTORE_TOOL            pgbackrest or walg (default: restore_test.tool of the cluster)
#   STAGING_PGDATA          staging data directory, inside restore_test.staging_root
#   STAGING_CONNECTION_URI  postgresql://user:***@host:port/db of staging (refused if production)
#   PG_BACKREST_STANZA      cluster/stanza (default: the only configured cluster)
#   PG_BACKREST_CONFIG      a hand-written pgbackrest.conf to use as is (default: the generated one)
#   RESTORE_BACKUP_LABEL RESTORE_TARGET_TIME   a given backup / point in time (default: latest)
#   AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY   S3 keys (or an instance role)
# cron (first Sunday of each quarter, 02:00 UTC; `0#1`-less cron needs the date test):
# 0 2 1-7 1,4,7,10 * [ "$(date -u +\%u)" = 7 ] && /opt/asso/include/scripts/quarterly_restore_test.sh >> /var/log/asso_restore.log 2>&1
set -euo pipefail

# --help, and refusing stray arguments, are handled there, for every script alike.
exec "$(dirname "${BASH_SOURCE[0]}")/pg_backups_cli.sh" --for "${BASH_SOURCE[0]}" restore-test "$@"
