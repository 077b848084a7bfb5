#!/usr/bin/env bash
# Runs one pg_backups operation with the project's Python; the cron scripts beside it call this,
# so cron and the DAGs run the same code. Usage: pg_backups_cli.sh COMMAND [--cluster NAME]
# (a cron script calls it as: pg_backups_cli.sh --for SCRIPT COMMAND "$@")
#   PG_BACKUPS_PYTHON  the Python that has the project's requirements (default: <repo>/.venv/bin/python)
#   PG_BACKUPS_CONFIG  the cluster configuration (default: <repo>/include/config/clusters.yaml)
#   PG_BACKUPS_STATE_DIR  where the copy of its last good version is kept, and run on while the file
#                      is broken (default: ~/.local/state/pg_backups; docs/configuration-safety.md)
set -euo pipefail

# The header comment of a script, from its second line to `set -euo pipefail`: its help text.
help_of() { sed -n '2,/^set -euo pipefail/p' "$1" | sed '$d' | sed 's/^# \{0,1\}//'; }

if [[ ${1:-} == --for ]]; then  # called by a cron script: --for SCRIPT COMMAND [its arguments]
  [[ $# -ge 3 ]] || { echo "usage: pg_backups_cli.sh --for SCRIPT COMMAND [--help]" >&2; exit 2; }
  script=$2 command=$3
  shift 3
  case "${1:-}" in
    -h|--help) help_of "$script"; exit 0;;
    "") ;;
    *) echo "usage: $(basename "$script")   (settings come from the environment; see --help)" >&2; exit 2;;
  esac
  set -- "$command"
elif [[ $# -lt 1 || ${1:-} == -h || ${1:-} == --help ]]; then
  help_of "${BASH_SOURCE[0]}"
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
