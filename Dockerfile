# One image for every service of the deployment (docker-compose.yaml) and of the sandbox overlay:
# Airflow 3.3 pip-installed under the project's constraints, pgBackRest and PostgreSQL 15 from
# Debian (a database host runs its cluster and its Celery worker from it; the metadata database and
# Redis run from it too, so nothing comes from a registry but Debian's and PyPI's packages).
# Base: debian:bookworm-slim; where no registry is reachable, bin/compose-env makes it locally
# (debootstrap + docker import) under that same name.
ARG BASE_IMAGE=debian:bookworm-slim
FROM ${BASE_IMAGE}

# Extra CA certificates of the build host (a TLS-inspecting proxy's), copied in by bin/compose-env;
# the folder holds only a README when there are none.
COPY deploy/ca-certificates/ /usr/local/share/ca-certificates/
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      ca-certificates python3 python3-venv postgresql-15 postgresql-client-15 pgbackrest \
      redis-server stunnel4 openssl curl tini procps util-linux \
 && update-ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && pgbackrest version
ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt \
    REQUESTS_CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/airflow-venv/bin:/usr/lib/postgresql/15/bin:$PATH

# The project's requirements and the CeleryExecutor's (deploy/requirements-celery.txt, pinned),
# under constraints.txt less one pin: soupsieve 4.1.3 needs Python >= 3.11.5 and Debian 12 ships
# 3.11.2 (the constraints come from a 3.11.7 interpreter); pip then takes soupsieve 2.10.
COPY requirements.txt constraints.txt /opt/pg_backups/
RUN python3 -m venv /opt/airflow-venv \
 && pip install --no-cache-dir -q --upgrade pip \
 && grep -v '^soupsieve==' /opt/pg_backups/constraints.txt > /opt/pg_backups/constraints-debian12.txt \
 && pip install --no-cache-dir -q -r /opt/pg_backups/requirements.txt -c /opt/pg_backups/constraints-debian12.txt
COPY deploy/requirements-celery.txt /opt/pg_backups/
RUN pip install --no-cache-dir -q -r /opt/pg_backups/requirements-celery.txt -c /opt/pg_backups/constraints-debian12.txt \
 && python -c "from airflow.providers.celery.executors.celery_executor import CeleryExecutor" \
 && airflow version

# WAL-G only where a binary is provided at .tools/bin/wal-g (see docs/walg.md):
# the glob copies nothing else when it is absent.
COPY deploy/entrypoint.sh .tools/bin/wal-g* /opt/pg_backups/bin/
RUN if [ -x /opt/pg_backups/bin/wal-g ]; then ln -s /opt/pg_backups/bin/wal-g /usr/local/bin/wal-g; fi

# The project's code (compose may mount a newer copy over it).
COPY dags /opt/airflow/dags
COPY plugins /opt/airflow/plugins
COPY include /opt/airflow/include
COPY sandbox/slack_receiver.py /opt/pg_backups/sandbox/slack_receiver.py
ENV AIRFLOW_HOME=/opt/airflow \
    PYTHONPATH=/opt/airflow/plugins \
    PG_BACKUPS_CONFIG=/opt/airflow/include/config/clusters.yaml
WORKDIR /opt/airflow
ENTRYPOINT ["/usr/bin/tini", "--", "/opt/pg_backups/bin/entrypoint.sh"]
CMD ["airflow", "version"]
