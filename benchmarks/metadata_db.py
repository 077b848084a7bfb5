"""Airflow's metadata database for a benchmark: SQLite (as the sandbox) or PostgreSQL (as
docker-compose.yaml), and read-only queries on it. The PostgreSQL cluster is the benchmark's own
(PostgreSQL 15 of the host, initdb and pg_ctl as the postgres user), on 127.0.0.1 at a port of the
benchmark's, trust on loopback: nothing else lives in it, and it is stopped at the end."""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
from pathlib import Path

KINDS = ("postgres", "sqlite")
PG_BIN = Path("/usr/lib/postgresql/15/bin")


class Metadata:
    def __init__(self, kind: str, root: Path, port: int) -> None:
        if kind not in KINDS:
            raise SystemExit(f"metadata database {kind!r}: choose one of {', '.join(KINDS)}")
        self.kind, self.port = kind, port
        self.sqlite_file, self.pgdata, self.run = root / "airflow.db", root / "metadata-pg", root / "metadata-pg-run"
        self.url = (f"sqlite:///{self.sqlite_file}" if kind == "sqlite"
                    else f"postgresql+psycopg2://postgres@127.0.0.1:{port}/airflow")

    def start(self) -> None:
        if self.kind == "sqlite":
            return
        for d in (self.pgdata, self.run):
            d.mkdir(parents=True)
            shutil.chown(d, "postgres", "postgres")
        self._as_postgres(PG_BIN / "initdb", "-D", self.pgdata, "--auth=trust", "-U", "postgres")
        self._as_postgres(PG_BIN / "pg_ctl", "-D", self.pgdata, "-w", "-l", self.run / "postgresql.log", "-o",
                          f"-p {self.port} -k {self.run} -c listen_addresses=127.0.0.1 -c max_connections=300",
                          "start")
        self._as_postgres(PG_BIN / "createdb", "-h", "127.0.0.1", "-p", self.port, "-U", "postgres", "airflow")

    def stop(self) -> None:
        if self.kind == "postgres" and (self.pgdata / "postmaster.pid").exists():
            self._as_postgres(PG_BIN / "pg_ctl", "-D", self.pgdata, "-m", "fast", "stop")

    def rows(self, sql: str, params: tuple = ()) -> list:
        """The rows of a query (``?`` placeholders)."""
        if self.kind == "sqlite":
            with sqlite3.connect(f"file:{self.sqlite_file}?mode=ro", uri=True, timeout=30) as conn:
                return conn.execute(sql, params).fetchall()
        import psycopg2

        with psycopg2.connect(host="127.0.0.1", port=self.port, user="postgres", dbname="airflow") as conn:
            with conn.cursor() as cur:
                cur.execute(sql.replace("?", "%s"), params or None)  # None: a literal % stays
                return cur.fetchall()

    def seconds(self, later: str, earlier: str) -> str:
        """SQL for the seconds between two timestamp columns."""
        if self.kind == "sqlite":
            return f"(julianday({later}) - julianday({earlier})) * 86400"
        return f"extract(epoch from {later} - {earlier})"

    def errors(self) -> tuple:
        """What a query raises while the database is not there yet or locked."""
        import psycopg2

        return (sqlite3.Error, psycopg2.Error)

    @staticmethod
    def _as_postgres(*argv) -> None:
        proc = subprocess.run(["runuser", "-u", "postgres", "--", *map(str, argv)], capture_output=True, text=True)
        if proc.returncode:
            raise SystemExit(f"failed ({proc.returncode}): {' '.join(map(str, argv))}\n{proc.stdout}{proc.stderr}")
