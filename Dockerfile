# One image for every service of the deployment (docker-compose.yaml) and of the sandbox overlay:
# Airflow 3.3 pip-installed under the project's constraints, pgBackRest and PostgreSQL from
# Debian (a database host runs its cluster and its Celery worker from it; the metadata database and
# Redis run from it too, so nothing comes from a registry but Debian's and PyPI's packages).
# Build arguments: DEBIAN_RELEASE (trixie: PostgreSQL 17 + pgBackRest 2.55.1, the tested pair;
# bookworm: PostgreSQL 15 + pgBackRest 2.45) and PG_MAJOR (a postgresql-N package of that release).
# Base: debian:<release>-slim; where no registry is reachable, sandbox/compose.py makes it locally
# (debootstrap + docker import) under that same name.
ARG DEBIAN_RELEASE=trixie
ARG BASE_IMAGE=debian:${DEBIAN_RELEASE}-slim
FROM ${BASE_IMAGE}
ARG PG_MAJOR=17

# Extra CA certificates of the build host (a TLS-inspecting proxy's), copied in by bin/compose-env;
# the folder holds only a README when there are none.
COPY deploy/ca-certificates/ /usr/local/share/ca-certificates/
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      ca-certificates python3 python3-venv postgresql-${PG_MAJOR} postgresql-client-${PG_MAJOR} pgbackrest \
      redis-server stunnel4 openssl curl tini procps util-linux \
 && update-ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && pgbackrest version \
 && /usr/lib/postgresql/${PG_MAJOR}/bin/postgres --version
ENV PG_MAJOR=${PG_MAJOR} \
    PIP_CERT=/etc/ssl/certs/ca-certificates.crt \
    REQUESTS_CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/airflow-venv/bin:/usr/lib/postgresql/${PG_MAJOR}/bin:$PATH

# The project's requirements and the CeleryExecutor's (deploy/requirements-celery.txt, pinned),
# under constraints.txt, less one pin on Debian 12: soupsieve 4.1.3 needs Python >= 3.11.5 and
# Debian 12 ships 3.11.2 (the constraints come from a 3.11.7 interpreter); pip then takes soupsieve
# 2.10. Debian 13's Python 3.13 takes every pin.
COPY requirements.txt constraints.txt /opt/pg_backups/
RUN python3 -m venv /opt/airflow-venv \
 && pip install --no-cache-dir -q --upgrade pip \
 && if python3 -c 'import sys; sys.exit(sys.version_info >= (3, 11, 5))'; then \
      grep -v '^soupsieve==' /opt/pg_backups/constraints.txt > /opt/pg_backups/constraints-image.txt; \
    else cp /opt/pg_backups/constraints.txt /opt/pg_backups/constraints-image.txt; fi \
 && pip install --no-cache-dir -q -r /opt/pg_backups/requirements.txt -c /opt/pg_backups/constraints-image.txt
COPY deploy/requirements-celery.txt /opt/pg_backups/
RUN pip install --no-cache-dir -q -r /opt/pg_backups/requirements-celery.txt -c /opt/pg_backups/constraints-image.txt \
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
