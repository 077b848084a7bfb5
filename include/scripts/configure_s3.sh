#!/usr/bin/env bash
# Configures the backup bucket (runbook 2.3) as desired state: creates it if missing, then sets
# versioning, lifecycle, public access block, encryption and TLS-only policy where they differ;
# prints the drift it repaired as JSON. A second run changes nothing.
#   BUCKET_NAME  bucket (default: from the cluster configuration)
#   REGION       region (default: from the cluster configuration)
#   AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY   S3 keys (or an instance role); AWS_ENDPOINT_URL, AWS_CA_BUNDLE
set -euo pipefail

# --help, and refusing stray arguments, are handled there, for every script alike.
exec "$(dirname "${BASH_SOURCE[0]}")/pg_backups_cli.sh" --for "${BASH_SOURCE[0]}" configure-s3 "$@"
