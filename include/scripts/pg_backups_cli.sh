#!/usr/bin/env bash
# Runs one pg_backups operation with the project's Python; the cron scripts beside it call this,
# so cron and the DAGs run the same code. Usage: pg_backups_cli.sh COMMAND [--cluster NAME]
#   PG_BACKUPS_PYTHON  the Python that has the project's requirements (default: <repo>/.venv/bin/python)
#   PG_BACKUPS_CONFIG  the cluster configuration (default: <repo>/include/config/clusters.yaml)
set -euo pipefail

if [[ $# -lt 1 || ${1:-} == -h || ${1:-} == --help ]]; then
  sed -n '2,5p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
  [[ $# -ge 1 ]] && exit 0 || exit 2
fi
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
python=${PG_BACKUPS_PYTHON:-$root/.venv/bin/python}
if [[ ! -x $python ]]; then
  echo "pg_backups_cli.sh: $python not found: run bin/setup, or set PG_BACKUPS_PYTHON" >&2
  exit 1
fi
export PYTHONPATH="$root/plugins${PYTHONPATH:+:$PYTHONPATH}"
exec "$python" -m pg_backups.cli "$@"
