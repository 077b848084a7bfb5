# The Airflow image for a real deployment: Airflow 3.3 with the project's requirements, pgBackRest
# from Debian and WAL-G v3.0.9 built from its Go module (pure Go: no brotli, lzo or libsodium).
ARG AIRFLOW_IMAGE=apache/airflow:3.3.2-python3.11

FROM golang:1.26-bookworm AS walg
ARG WALG_VERSION=v3.0.9
# The module path main/pg builds a binary named `pg`; it is installed as wal-g below.
RUN CGO_ENABLED=0 GOBIN=/out go install "github.com/wal-g/wal-g/main/pg@${WALG_VERSION}" \
 && /out/pg --version

FROM ${AIRFLOW_IMAGE}
USER root
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends pgbackrest postgresql-client \
 && rm -rf /var/lib/apt/lists/* \
 && pgbackrest version
COPY --from=walg /out/pg /usr/local/bin/wal-g
USER airflow
COPY requirements.txt constraints.txt /opt/pg_backups/
RUN pip install --no-cache-dir -r /opt/pg_backups/requirements.txt -c /opt/pg_backups/constraints.txt
ENV PYTHONPATH=/opt/airflow/plugins
