#!/usr/bin/env bash
# Configures the backup bucket (runbook 2.3) as desired state: creates it if missing, then sets
# versioning, lifecycle, public access block, encryption and TLS-only policy where they differ;
# prints the drift it repaired as JSON. A second run changes nothing.
#   BUCKET_NAME  bucket (default: from the cluster configuration)
#   REGION       region (default: from the cluster configuration)
#   AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY   S3 keys (or an instance role); AWS_ENDPOINT_URL, AWS_CA_BUNDLE
set -euo pipefail

case "${1:-}" in
  -h|--help) sed -n '2,8p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0;;
  "") ;;
  *) echo "usage: configure_s3.sh   (settings come from the environment; see --help)" >&2; exit 2;;
esac
exec "$(dirname "${BASH_SOURCE[0]}")/pg_backups_cli.sh" configure-s3
