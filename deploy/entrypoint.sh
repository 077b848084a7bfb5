#!/usr/bin/env bash
# The image's entrypoint: one image, one role per service (docker-compose.yaml and its sandbox overlay).
#   airflow ARGS...        Airflow itself (api-server, scheduler, triggerer, celery worker, ...)
#   dag-processor          Airflow's dag-processor, with the cluster-file watcher (pg_backups.airflow.reparse)
#   worker QUEUE           a Celery worker serving QUEUE, restarted when it dies (as systemd's Restart=always would)
#   database-host QUEUE    a database host: its PostgreSQL cluster ($PG_MAJOR) (WAL archived by the project's tools)
#                          and a Celery worker on QUEUE, the host's queue (db-<cluster>)
#   metadata-db            Airflow's metadata PostgreSQL (POSTGRES_USER, POSTGRES_PASSWORD, POSTGRES_DB)
#   redis                  the Celery broker
#   moto | s3-tls | slack  sandbox stand-ins: S3 (moto), its TLS endpoint (stunnel), Slack's webhook
# Anything else runs as a command.
set -euo pipefail

# The image's PostgreSQL major (Dockerfile build argument PG_MAJOR).
PG_BIN=/usr/lib/postgresql/${PG_MAJOR:?set PG_MAJOR}/bin

log() { echo "[entrypoint] $*" >&2; }

# Users of Airflow's simple auth manager and their passwords, from the environment (JSON
# {"ops": "...", "qa": "..."}): written where the api-server reads them, never into the image.
write_passwords() {
  if [[ -n ${AIRFLOW_USER_PASSWORDS:-} ]]; then
    local file=${AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE:-$AIRFLOW_HOME/simple_auth_manager_passwords.json.generated}
    (umask 077; printf '%s' "$AIRFLOW_USER_PASSWORDS" > "$file")
  fi
}

# A Celery worker on the given queue in its own process group, restarted 5 s after it dies. Its
# pid is in /run/pg-backups-worker.pid: `kill -9 -- -<pid>` kills it with its tasks, as a crash would.
worker_loop() {
  local queue=$1
  trap 'kill -TERM -- -"$(cat /run/pg-backups-worker.pid)" 2>/dev/null; exit 0' TERM INT
  while true; do
    setsid airflow celery worker --queues "$queue" --concurrency "${WORKER_CONCURRENCY:-4}" &
    echo $! > /run/pg-backups-worker.pid
    log "Celery worker for queue $queue started (pid $!)"
    wait $! || log "Celery worker for queue $queue exited ($?); restarting in 5 s"
    sleep 5
  done
}

# The database host's cluster: created on first start (data directory $PGDATA, mounted here and
# nowhere else), its archive_command from the cluster configuration, started in the background.
start_database() {
  local cluster=${PG_BACKUPS_CLUSTER:?set PG_BACKUPS_CLUSTER}
  mkdir -p "$PGDATA" /var/run/postgresql
  chown postgres:postgres "$PGDATA" /var/run/postgresql
  # UTF-8: from a SQL_ASCII database (the C locale's default) psycopg 3 returns text as bytes.
  if [[ ! -s $PGDATA/PG_VERSION ]]; then
    log "initdb $PGDATA"
    local pwfile
    pwfile=$(mktemp) && printf '%s\n' "${POSTGRES_PASSWORD:?set POSTGRES_PASSWORD}" > "$pwfile" && chown postgres "$pwfile"
    runuser -u postgres -- "$PG_BIN/initdb" -D "$PGDATA" --auth-local=peer --auth-host=scram-sha-256 \
      -U postgres --pwfile="$pwfile" --data-checksums --encoding=UTF8 --locale=C.UTF-8 >/dev/null
    rm -f "$pwfile"
    echo "host all all samenet scram-sha-256" >> "$PGDATA/pg_hba.conf"
    echo "include_dir = 'conf.d'" >> "$PGDATA/postgresql.conf"
    mkdir -p "$PGDATA/conf.d"
  fi
  # The tools' configuration files on this host (S3 keys from the environment, owner-only).
  python -m pg_backups.cli write-configs --cluster "$cluster"
  local archive
  archive=$(python -m pg_backups.cli archive-command --cluster "$cluster")
  cat > "$PGDATA/conf.d/pg_backups.conf" <<CONF
listen_addresses = '*'
wal_level = replica
archive_mode = on
archive_timeout = 60
archive_command = '${archive//\'/\'\'}'
max_wal_size = '256MB'
CONF
  chown -R postgres:postgres "$PGDATA"
  runuser -u postgres -- "$PG_BIN/pg_ctl" -D "$PGDATA" -l /var/log/postgresql/production.log -w -t 120 start
  if [[ -n ${PG_BACKUPS_SEED_SQL:-} && -f $PG_BACKUPS_SEED_SQL ]] &&
     ! runuser -u postgres -- psql -XAtq -c "SELECT 1 FROM pg_database WHERE datname = 'app'" | grep -q 1; then
    log "seeding database app from $PG_BACKUPS_SEED_SQL"
    runuser -u postgres -- psql -Xq -v ON_ERROR_STOP=1 -c "CREATE DATABASE app"
    runuser -u postgres -- psql -Xq -v ON_ERROR_STOP=1 -d app -f "$PG_BACKUPS_SEED_SQL"
  fi
}

role=${1:-airflow}
[[ $# -gt 0 ]] && shift
case $role in
  airflow)
    write_passwords
    exec airflow "$@";;
  dag-processor)
    # The dag-processor re-parses an unchanged DAG file only every 6 h (min_file_process_interval in
    # docker-compose.yaml); this watcher asks for a re-parse as soon as the cluster file changes.
    python -m pg_backups.airflow.reparse &
    exec airflow dag-processor "$@";;
  worker)
    worker_loop "${1:?worker QUEUE}";;
  database-host)
    queue=${1:?database-host QUEUE}
    start_database
    trap 'runuser -u postgres -- "$PG_BIN/pg_ctl" -D "$PGDATA" -m fast -w stop' EXIT
    worker_loop "$queue";;
  metadata-db)
    data=/var/lib/postgresql/data
    mkdir -p "$data" /var/run/postgresql && chown postgres:postgres "$data" /var/run/postgresql
    if [[ ! -s $data/PG_VERSION ]]; then
      pwfile=$(mktemp) && printf '%s\n' "${POSTGRES_PASSWORD:?set POSTGRES_PASSWORD}" > "$pwfile" && chown postgres "$pwfile"
      runuser -u postgres -- "$PG_BIN/initdb" -D "$data" -U "${POSTGRES_USER:-airflow}" --pwfile="$pwfile" \
        --auth-local=peer --auth-host=scram-sha-256 --encoding=UTF8 --locale=C.UTF-8 >/dev/null
      rm -f "$pwfile"
      echo "host all all all scram-sha-256" >> "$data/pg_hba.conf"
      runuser -u postgres -- "$PG_BIN/postgres" --single -D "$data" postgres \
        <<< "CREATE DATABASE ${POSTGRES_DB:-airflow} OWNER ${POSTGRES_USER:-airflow};" >/dev/null
    fi
    exec runuser -u postgres -- "$PG_BIN/postgres" -D "$data" -c listen_addresses='*' \
      -c unix_socket_directories=/var/run/postgresql;;
  redis)
    exec redis-server --bind 0.0.0.0 --protected-mode no --save "" --appendonly no;;
  moto)
    exec python -m moto.server -H 0.0.0.0 -p 5000;;
  s3-tls)
    cat > /tmp/stunnel.conf <<CONF
foreground = yes
[s3]
accept = 443
connect = ${MOTO_ADDRESS:-moto:5000}
cert = /opt/sandbox/tls/cert.pem
key = /opt/sandbox/tls/key.pem
CONF
    exec stunnel4 /tmp/stunnel.conf;;
  slack)
    exec python /opt/pg_backups/sandbox/slack_receiver.py --host 0.0.0.0 --port 8000 --out /opt/sandbox/slack/messages.jsonl;;
  *)
    exec "$role" "$@";;
esac
