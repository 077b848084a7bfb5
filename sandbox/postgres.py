"""The sandbox's PostgreSQL clusters: initdb and pg_ctl as the postgres user, the settings that archive
WAL to the configured tools, psql, and the seed data a restore must bring back. The project (the
virtualenv) is imported only in the functions that use it: sandbox/compose.py takes SEED_SQL from
here with the standard library alone."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from layout import APP_DB, STANZA, Layout
from processes import log, port_open, sh

from airflow_api import wait_for

PG_BIN = Path("/usr/lib/postgresql/15/bin")


def pg_ctl(pgdata: Path, *args, check=True):
    return sh(PG_BIN / "pg_ctl", "-D", pgdata, *args, user="postgres", check=check)


def pg_running(pgdata: Path) -> bool:
    return pgdata.exists() and pg_ctl(pgdata, "status", check=False).returncode == 0


def start_production(L: Layout, creds: dict, name: str = STANZA) -> None:
    """The production cluster ``name`` (asso, or the optional second one), archiving to its tools."""
    from pg_backups import operations
    from pg_backups.config import load_config

    cluster = load_config(L.clusters_file).cluster(name)
    pgdata, port = Path(cluster.data_directory), cluster.port
    first = not (pgdata / "PG_VERSION").exists()
    if first:
        pgdata.parent.mkdir(parents=True, exist_ok=True)
        shutil.chown(pgdata.parent, "postgres", "postgres")
        pwfile = L.run_dir / "pwfile"
        pwfile.write_text(creds["pg_password"] + "\n")
        shutil.chown(pwfile, "postgres", "postgres")
        os.chmod(pwfile, 0o600)
        sh(PG_BIN / "initdb", "-D", pgdata, "--auth-local=peer", "--auth-host=scram-sha-256", "-U", "postgres",
           f"--pwfile={pwfile}", "--data-checksums", user="postgres")
        pwfile.unlink()
    # Written every time: the archive_command follows the configured tools and paths.
    (pgdata / "postgresql.auto.conf").write_text("")
    settings = {
        "port": port, "listen_addresses": "'127.0.0.1'", "unix_socket_directories": f"'{L.run_dir}'",
        "wal_level": "replica", "archive_mode": "on", "archive_timeout": "60",
        "archive_command": "'" + operations.archive_command(cluster).replace("'", "''") + "'",
        "max_wal_size": "'256MB'", "shared_buffers": "'64MB'", "log_min_messages": "warning",
    }
    (pgdata / "conf.d").mkdir(exist_ok=True)
    conf = pgdata / "postgresql.conf"
    if "include_dir = 'conf.d'" not in conf.read_text():
        conf.write_text(conf.read_text() + "\ninclude_dir = 'conf.d'\n")
    (pgdata / "conf.d" / "sandbox.conf").write_text("".join(f"{k} = {v}\n" for k, v in settings.items()))
    sh("chown", "-R", "postgres:postgres", pgdata)
    if pg_running(pgdata):
        pg_ctl(pgdata, "reload")
    else:
        if port_open(port):
            raise SystemExit(f"[sandbox] port {port} is taken; set SANDBOX_PORT_BASE to a free range")
        log_name = "production.log" if name == STANZA else f"{name}.log"
        pg_ctl(pgdata, "-l", pgdata.parent / log_name, "-w", "-t", "60", "start")
    log(f"production PostgreSQL {name} on 127.0.0.1:{port} (socket {L.run_dir}), data {pgdata}")
    if not psql(L, f"SELECT 1 FROM pg_database WHERE datname = '{APP_DB}'", db="postgres", port=port):
        seed(L, name, port)


SEED_SQL = """
CREATE TABLE members (id bigserial PRIMARY KEY, email text NOT NULL UNIQUE, full_name text NOT NULL,
                      joined_on date NOT NULL);
CREATE TABLE memberships (id bigserial PRIMARY KEY, member_id bigint NOT NULL REFERENCES members(id),
                          year int NOT NULL, tier text NOT NULL, UNIQUE (member_id, year));
CREATE TABLE payments (id bigserial PRIMARY KEY, membership_id bigint NOT NULL REFERENCES memberships(id),
                       amount_cents int NOT NULL CHECK (amount_cents > 0), paid_at timestamptz NOT NULL);
CREATE TABLE events (id bigserial PRIMARY KEY, title text NOT NULL, starts_at timestamptz NOT NULL,
                     attendees int NOT NULL DEFAULT 0);
CREATE INDEX payments_paid_at ON payments (paid_at);
INSERT INTO members (email, full_name, joined_on)
  SELECT 'member' || g || '@example.org', 'Member ' || g, date '2015-01-01' + (g % 3000)
  FROM generate_series(1, 3000) g;
INSERT INTO memberships (member_id, year, tier)
  SELECT m.id, y, (ARRAY['basic','supporter','honorary'])[1 + (m.id + y) % 3]
  FROM members m CROSS JOIN generate_series(2024, 2026) y;
INSERT INTO payments (membership_id, amount_cents, paid_at)
  SELECT id, 1500 + (id % 7) * 500, timestamptz '2024-01-15' + (id % 900) * interval '1 day'
  FROM memberships;
INSERT INTO events (title, starts_at, attendees)
  SELECT 'Event ' || g, timestamptz '2024-02-01' + g * interval '3 days', g % 120
  FROM generate_series(1, 500) g;
"""


def psql(L: Layout, sql: str, db: str = APP_DB, port: int | None = None) -> str:
    return sh(PG_BIN / "psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", L.run_dir, "-p", port or L.pg_port,
              "-d", db, "-At", "-c", sql, user="postgres").stdout.strip()


def archive_past(L: Layout, segment: str | None = None, timeout: float = 120) -> str:
    """Production's WAL moved on as hours of traffic would move it (two segments switched out, a
    commit in each), then waited for until a segment after ``segment`` (default: the current one)
    is archived; returns the newest archived. A heartbeat counts as archived, and so as a point a
    PITR drill can prove, only once a WAL record after it is: the demo and the PITR test, which
    compress a day into minutes, make it so."""
    segment = segment or psql(L, "SELECT pg_walfile_name(pg_current_wal_insert_lsn())", db="postgres")
    for _ in range(2):
        psql(L, "SELECT txid_current()", db="postgres")  # a commit: the segment is not empty
        psql(L, "SELECT pg_switch_wal()", db="postgres")

    def archived_after() -> str | None:
        last = psql(L, "SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver", db="postgres")
        return last if last > segment else None

    return wait_for(archived_after, timeout, what=f"WAL after {segment} to be archived (is archive_command working?)")


def ensure_pgbench(L: Layout, scale: int, db: str = "bench") -> None:
    """The benchmarks' pgbench database in production, made once (a later run keeps its scale)."""
    if psql(L, f"SELECT 1 FROM pg_database WHERE datname = '{db}'", db="postgres"):
        return
    print(f"creating pgbench data, scale {scale} ...", flush=True)
    psql(L, f"CREATE DATABASE {db}", db="postgres")
    sh(PG_BIN / "pgbench", "-i", "-q", "-s", scale, "-h", L.run_dir, "-p", L.pg_port, db, user="postgres")


# The second cluster's application: small, but real rows that a restore must bring back.
SECOND_SEED_SQL = """
CREATE TABLE invoices (id bigserial PRIMARY KEY, number text NOT NULL UNIQUE, amount_cents int NOT NULL,
                       issued_at timestamptz NOT NULL DEFAULT now());
INSERT INTO invoices (number, amount_cents) SELECT 'INV-' || g, 1000 + g FROM generate_series(1, 200) g;
"""


def seed(L: Layout, name: str = STANZA, port: int | None = None) -> None:
    psql(L, f"CREATE DATABASE {APP_DB}", db="postgres", port=port)
    psql(L, SEED_SQL if name == STANZA else SECOND_SEED_SQL, port=port)
    log(f"seeded database {APP_DB} of cluster {name}")
