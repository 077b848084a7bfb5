"""The local sandbox: everything the DAGs talk to, on loopback ports of its own.

    python sandbox/sandbox.py up        # start (idempotent); prints where things are
    python sandbox/sandbox.py down      # stop everything it started (idempotent)
    python sandbox/sandbox.py status
    python sandbox/sandbox.py destroy   # down, then delete the sandbox directory

It runs (a) a PostgreSQL 15 "production" cluster with WAL archiving to the configured tools,
seeded with an association-management schema; (b) moto's S3 server behind stunnel TLS with a
self-signed certificate; (c) a staging root directory; (d) an HTTP receiver standing in for
Slack's incoming webhook; and (e) Airflow (SQLite) with connections pointing at all of them,
written to ``<dir>/sandbox.env`` (owner-only) for ``source``.

Settings: SANDBOX_DIR (default /var/tmp/pg-backups-sandbox) and SANDBOX_PORT_BASE (default
25400; the sandbox uses the ports from there to +14: its services +0 to +7, Airflow's log servers
+10 and +11, the scheduler's health check +12, the verification drills' targets +13 and +14; see
Layout). SANDBOX_CLUSTERS=asso,billing adds a second
cluster, `billing` (its own PostgreSQL, staging, stanza and pool; pgBackRest only), to try
several clusters side by side. Keep them below 32768: ports in the kernel's
ephemeral range (32768-60999) can be held by any outgoing connection, and binding then fails.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "plugins"))
# The project (which needs the virtualenv) is imported in the functions that use it: sandbox/compose.py
# uses this module's log, sh and read_env_file with only the standard library.
if TYPE_CHECKING:
    from pg_backups.s3_access import S3Access

PG_BIN = Path("/usr/lib/postgresql/15/bin")
# Where a WAL-G binary is looked for, in this order (the Go module proxy here refuses WAL-G, so
# nothing in the project builds it): WALG_BIN, then <repo>/.tools/bin/wal-g, then `wal-g` on PATH.
WALG_LOCAL = REPO / ".tools" / "bin" / "wal-g"
WALG_VERSION = "v3.0.9"
WALG_MISSING = (f"no WAL-G binary: set WALG_BIN=/path/to/wal-g, or put one at {WALG_LOCAL} or on PATH "
                f"(WAL-G {WALG_VERSION}: a release binary from github.com/wal-g/wal-g/releases on a real host)")
STANZA = "asso"
SECOND = "billing"  # the optional second cluster (SANDBOX_CLUSTERS=asso,billing)
REGION = "eu-west-3"
BUCKET = "asso-prod-backups"
APP_DB = "app"
# The kernel's ephemeral ports start here (32768-60999): any outgoing connection may hold one.
EPHEMERAL_PORTS = 32768


@dataclass(frozen=True)
class Layout:
    root: Path
    port_base: int
    clusters: tuple = (STANZA,)

    @classmethod
    def from_env(cls, env=os.environ) -> "Layout":
        names = tuple(n.strip() for n in env.get("SANDBOX_CLUSTERS", STANZA).split(",") if n.strip())
        if names not in ((STANZA,), (STANZA, SECOND)):
            raise SystemExit(f"[sandbox] SANDBOX_CLUSTERS={','.join(names)} is not supported: use '{STANZA}' "
                             f"or '{STANZA},{SECOND}'")
        layout = cls(Path(env.get("SANDBOX_DIR", "/var/tmp/pg-backups-sandbox")).resolve(),
                     int(env.get("SANDBOX_PORT_BASE", "25400")), names)
        if not 1024 <= layout.port_base or max(layout.ports.values()) >= EPHEMERAL_PORTS:
            raise SystemExit(f"[sandbox] SANDBOX_PORT_BASE={layout.port_base} puts the sandbox's ports at "
                             f"{layout.port_base}-{max(layout.ports.values())}: choose a base from 1024 to "
                             f"{EPHEMERAL_PORTS - 1 - max(layout.ports.values()) + layout.port_base}")
        return layout

    # The second cluster's PostgreSQL and staging (ports +6 and +7).
    billing_pg_port = property(lambda s: s.port_base + 6)
    billing_staging_port = property(lambda s: s.port_base + 7)
    billing_pgdata = property(lambda s: s.root / "pg" / SECOND)
    billing_staging = property(lambda s: s.root / "staging" / SECOND)
    # The verification drills' targets (docs/verification.md): a root and a port per cluster of their own.
    verify_root = property(lambda s: s.root / "verify")
    verify_port = property(lambda s: s.port_base + 13)
    billing_verify_port = property(lambda s: s.port_base + 14)

    # Ports
    pg_port = property(lambda s: s.port_base)
    staging_port = property(lambda s: s.port_base + 1)
    moto_port = property(lambda s: s.port_base + 2)
    s3_tls_port = property(lambda s: s.port_base + 3)
    slack_port = property(lambda s: s.port_base + 4)
    api_port = property(lambda s: s.port_base + 5)
    # Airflow's own servers, which default to fixed ports (8793, 8794, 8974): two sandboxes' Airflows
    # on one machine collided there ("[Errno 98] ... address already in use"). +8 and +9 stay free
    # (tests use them for a scratch server and a closed port).
    worker_log_server_port = property(lambda s: s.port_base + 10)  # the scheduler's (LocalExecutor) task logs
    trigger_log_server_port = property(lambda s: s.port_base + 11)  # the triggerer's
    scheduler_health_check_port = property(lambda s: s.port_base + 12)  # only when enable_health_check is on

    @property
    def ports(self) -> dict[str, int]:
        """Every port the sandbox listens on (the second cluster's only when it is configured)."""
        names = ["pg_port", "staging_port", "moto_port", "s3_tls_port", "slack_port", "api_port",
                 *(["billing_pg_port", "billing_staging_port"] if SECOND in self.clusters else []),
                 "worker_log_server_port", "trigger_log_server_port", "scheduler_health_check_port",
                 "verify_port", *(["billing_verify_port"] if SECOND in self.clusters else [])]
        return {name: getattr(self, name) for name in names}

    # Places
    pgdata = property(lambda s: s.root / "pg" / "production")
    run_dir = property(lambda s: s.root / "run")
    staging_root = property(lambda s: s.root / "staging")
    tls = property(lambda s: s.root / "tls")
    logs = property(lambda s: s.root / "logs")
    etc = property(lambda s: s.root / "etc")
    airflow_home = property(lambda s: s.root / "airflow")
    slack_messages = property(lambda s: s.root / "slack" / "messages.jsonl")
    env_file = property(lambda s: s.root / "sandbox.env")
    clusters_file = property(lambda s: s.root / "clusters.yaml")
    credentials_file = property(lambda s: s.root / "credentials.json")
    # By name: pgBackRest 2.45 matches only DNS names in the certificate, not IP addresses.
    endpoint = property(lambda s: f"https://localhost:{s.s3_tls_port}")
    ca_file = property(lambda s: s.tls / "cert.pem")


def log(message: str, name: str = "sandbox") -> None:
    print(f"[{name}] {message}", flush=True)


def sh(*argv, user: str | None = None, check: bool = True, env: dict | None = None, name: str = "sandbox", **kw):
    argv = [str(a) for a in argv]
    if user:
        argv = ["runuser", "-u", user, "--", *argv]
    proc = subprocess.run(argv, env={**os.environ, **(env or {})}, text=True, capture_output=True, **kw)
    if check and proc.returncode != 0:
        # The end says why; a docker build's output (compose.py) runs to megabytes.
        raise SystemExit(f"[{name}] failed ({proc.returncode}): {' '.join(argv)}\n{(proc.stdout + proc.stderr)[-4000:]}")
    return proc


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def wait_port(port: int, what: str, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while not port_open(port):
        if time.monotonic() > deadline:
            raise SystemExit(f"[sandbox] {what} did not start listening on 127.0.0.1:{port} within {seconds:.0f} s")
        time.sleep(0.2)


def pid_alive(pid_file: Path) -> int | None:
    try:
        pid = int(pid_file.read_text().split()[0])
        os.kill(pid, 0)
        return pid
    except (OSError, ValueError, IndexError):
        return None


def start_daemon(name: str, argv: list, L: Layout, port: int) -> None:
    pid_file = L.run_dir / f"{name}.pid"
    if pid_alive(pid_file) and port_open(port):
        return
    if port_open(port):
        raise SystemExit(f"[sandbox] port {port} for {name} is taken by another program; "
                         "set SANDBOX_PORT_BASE to a free range")
    with open(L.logs / f"{name}.log", "a") as out:
        proc = subprocess.Popen([str(a) for a in argv], stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    pid_file.write_text(str(proc.pid))
    try:
        wait_port(port, name, seconds=90)  # moto takes seconds to import on a busy 2-core machine
    except SystemExit:
        stop_daemon(name, L)  # leave nothing half-started behind
        tail = (L.logs / f"{name}.log").read_text()[-1500:]
        raise SystemExit(f"[sandbox] {name} did not start on 127.0.0.1:{port}; its log ends:\n{tail}") from None
    log(f"{name} listening on 127.0.0.1:{port}")


def stop_daemon(name: str, L: Layout) -> None:
    pid_file = L.run_dir / f"{name}.pid"
    pid = pid_alive(pid_file)
    if pid:
        try:
            os.killpg(pid, signal.SIGTERM)
        except OSError:
            os.kill(pid, signal.SIGTERM)
        for _ in range(300):  # Airflow's components take a few seconds to shut down
            if not pid_alive(pid_file):
                break
            time.sleep(0.1)
        else:
            try:
                os.killpg(pid, signal.SIGKILL)
            except OSError:
                os.kill(pid, signal.SIGKILL)
        log(f"{name} stopped")
    pid_file.unlink(missing_ok=True)


# --------------------------------------------------------------------------------------------


def credentials(L: Layout) -> dict:
    """Random keys per sandbox (moto accepts any): tests then prove they never reach the logs."""
    if not L.credentials_file.exists():
        data = {"aws_access_key_id": "AKIA" + secrets.token_hex(8).upper(),
                "aws_secret_access_key": secrets.token_urlsafe(30),
                "pg_password": secrets.token_urlsafe(18),
                "slack_token": "T0SANDBOX/B0SANDBOX/" + secrets.token_hex(12)}
        fd = os.open(L.credentials_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            json.dump(data, out)
    return json.loads(L.credentials_file.read_text())


def access(L: Layout, creds: dict) -> S3Access:
    from pg_backups.s3_access import S3Access

    return S3Access(region=REGION, access_key=creds["aws_access_key_id"], secret_key=creds["aws_secret_access_key"],
                    endpoint_url=L.endpoint, ca_file=str(L.ca_file))


def find_walg(env=os.environ) -> Path | None:
    """The WAL-G binary to use: WALG_BIN, then .tools/bin/wal-g, then PATH; None when there is none.
    A WALG_BIN that is not an executable file is an error, not a fallback."""
    given = env.get("WALG_BIN")
    if given:
        path = Path(given).resolve()
        if not (path.is_file() and os.access(path, os.X_OK)):
            raise SystemExit(f"[sandbox] WALG_BIN={given} is not an executable file; fix or unset it")
        return path
    if WALG_LOCAL.is_file() and os.access(WALG_LOCAL, os.X_OK):
        return WALG_LOCAL
    on_path = shutil.which("wal-g", path=env.get("PATH"))
    return Path(on_path).resolve() if on_path else None


# The line under which clusters added by hand go: `sandbox.py up` rewrites what is above it and
# keeps what is below it as it is (README, "The local sandbox").
HAND_ADDED_MARK = "  # ---- Clusters added by hand go below this line: `sandbox.py up` keeps them as they are ----"


def hand_added_clusters(L: Layout) -> str:
    """What `up` keeps of the clusters file it rewrites: the text below :data:`HAND_ADDED_MARK`, and
    every other entry it did not write (added above the line, or in a file from before the line
    existed), carried over below it. A file that is not YAML is left untouched: nothing is lost."""
    import yaml

    if not L.clusters_file.exists():
        return ""
    old = L.clusters_file.read_text()
    below = old.partition(HAND_ADDED_MARK + "\n")[2]
    try:
        entries = (yaml.safe_load(old) or {}).get("clusters") or []
        kept = {e.get("name") for e in (yaml.safe_load("clusters:\n" + below) or {}).get("clusters") or []
                if isinstance(e, dict)}
    except (yaml.YAMLError, AttributeError) as exc:
        raise SystemExit(f"[sandbox] {L.clusters_file} is not a valid clusters file, so `up` would lose what was "
                         f"added to it by hand: fix it (or move it away to start from the sandbox's own), then run "
                         f"up again ({exc})") from None
    others = [e for e in entries if isinstance(e, dict) and e.get("name") not in (STANZA, SECOND, *kept)]
    if others:
        dumped = yaml.safe_dump(others, sort_keys=False, default_flow_style=False)
        below += "".join(f"  {line}\n" for line in dumped.splitlines())
    return below


def write_clusters_file(L: Layout) -> None:
    walg_binary = find_walg()
    tools = ["pgbackrest", "walg"] if walg_binary else ["pgbackrest"]
    hand_added = hand_added_clusters(L)
    text = f"""# Written by sandbox/sandbox.py: the sandbox's clusters, everything on loopback.
# What they share is under `defaults:` (merged into each cluster). `sandbox.py up` rewrites this
# file: add your own clusters at the end, below the line that says so, where it keeps them.
defaults:
  host: 127.0.0.1
  socket_directory: {L.run_dir}
  os_user: postgres
  retries: 1
  retry_delay_seconds: 5
  lock_directory: {L.run_dir / "locks"}
  metrics:
    textfile_directory: {L.root / "metrics"}
  s3:
    bucket: {BUCKET}
    region: {REGION}
    aws_conn_id: aws_backups
    # moto sits behind stunnel, so it sees every request as plain HTTP, and it enforces bucket
    # policies: a TLS-only policy would deny everything here. Real S3 sees the TLS; keep it on.
    deny_insecure_transport: false
  pgbackrest:
    spool_path: {L.root / "pgbackrest" / "spool"}
    log_path: {L.root / "pgbackrest" / "log"}
    lock_path: {L.root / "pgbackrest" / "lock"}
    process_max: 2
    io_timeout_seconds: 10
  restore_test:
    staging_root: {L.staging_root}
    staging_socket_directory: {L.run_dir}
  verify:
    root: {L.verify_root}
    socket_directory: {L.run_dir}
    log: {L.logs / "{cluster}_verify.log"}
    smoke_log: {L.logs / "{cluster}_verify_smoke.log"}
clusters:
  - name: {STANZA}
    port: {L.pg_port}
    data_directory: {L.pgdata}
    tools: {json.dumps(tools)}
    alerts:
      slack_conn_id: slack_ops
    pgbackrest:
      config_path: {L.etc / "pgbackrest" / "pgbackrest.conf"}
    walg:
      binary: {walg_binary or "wal-g"}
      config_path: {L.etc / "wal-g" / "walg.json"}
    restore_test:
      staging_data_directory: {L.staging_root / "data"}
      staging_port: {L.staging_port}
      smoke_log: {L.logs / "restore_smoke.log"}
      audit_log: {L.logs / "asso_restore_audit.log"}
      check_tables: [members, memberships, payments, events]
    verify:
      port: {L.verify_port}
"""
    if SECOND in L.clusters:
        text += f"""  - name: {SECOND}
    port: {L.billing_pg_port}
    data_directory: {L.billing_pgdata}
    tools: [pgbackrest]
    pgbackrest:
      config_path: {L.etc / "pgbackrest" / "{cluster}" / "pgbackrest.conf"}
    walg:
      prefix: {SECOND}
    restore_test:
      # Every 2 minutes, so that a backfill has slots after the sandbox's first backup (paused
      # until someone unpauses it: each run waits for QA's sign-off).
      schedule: "*/2 * * * *"
      staging_data_directory: {L.billing_staging}
      staging_port: {L.billing_staging_port}
      smoke_log: {L.logs / "{cluster}_restore_smoke.log"}
      audit_log: {L.logs / "{cluster}_restore_audit.log"}
      check_tables: [invoices]
    verify:
      port: {L.billing_verify_port}
"""
    L.clusters_file.write_text(f"{text}{HAND_ADDED_MARK}\n{hand_added}")


def ensure_tls(L: Layout) -> None:
    if L.ca_file.exists():
        return
    L.tls.mkdir(parents=True, exist_ok=True)
    os.chmod(L.tls, 0o755)  # the tools (as postgres) read the CA file below, whatever the umask
    # Go (WAL-G) ignores the CN: the certificate names its host in subjectAltName.
    sh("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "3650", "-subj", "/CN=localhost",
       "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1", "-keyout", L.tls / "key.pem", "-out", L.ca_file)
    os.chmod(L.tls / "key.pem", 0o600)
    os.chmod(L.ca_file, 0o644)


def start_s3(L: Layout) -> None:
    start_daemon("moto", [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", L.moto_port], L, L.moto_port)
    conf = L.run_dir / "stunnel.conf"
    conf.write_text(f"""pid = {L.run_dir / 'stunnel.pid'}
foreground = yes
output = {L.logs / 'stunnel.log'}
[s3]
accept = 127.0.0.1:{L.s3_tls_port}
connect = 127.0.0.1:{L.moto_port}
cert = {L.ca_file}
key = {L.tls / 'key.pem'}
""")
    start_daemon("stunnel", ["stunnel4", conf], L, L.s3_tls_port)


def start_slack(L: Layout) -> None:
    L.slack_messages.parent.mkdir(parents=True, exist_ok=True)
    L.slack_messages.touch(mode=0o600)
    start_daemon("slack_receiver", [sys.executable, REPO / "sandbox" / "slack_receiver.py", "--port", L.slack_port,
                                    "--out", L.slack_messages], L, L.slack_port)


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


def airflow_env(L: Layout, creds: dict) -> dict:
    aws = {"conn_type": "aws", "login": creds["aws_access_key_id"], "password": creds["aws_secret_access_key"],
           "extra": {"region_name": REGION, "endpoint_url": L.endpoint, "verify": str(L.ca_file),
                     "config_kwargs": {"s3": {"addressing_style": "path"}}}}
    pg = {"conn_type": "postgres", "host": "127.0.0.1", "port": L.pg_port, "login": "postgres",
          "password": creds["pg_password"], "schema": APP_DB}
    staging = {**pg, "port": L.staging_port}
    second = {}
    if SECOND in L.clusters:
        billing = {**pg, "port": L.billing_pg_port}
        second = {"AIRFLOW_CONN_PG_BILLING": json.dumps(billing),
                  "AIRFLOW_CONN_PG_BILLING_STAGING": json.dumps({**billing, "port": L.billing_staging_port})}
    slack = {"conn_type": "slackwebhook", "host": f"http://127.0.0.1:{L.slack_port}/services",
             "password": creds["slack_token"]}
    return {
        "AIRFLOW_HOME": str(L.airflow_home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://localhost:{L.api_port}/execution/",
        "AIRFLOW__API__PORT": str(L.api_port),
        # Every port Airflow opens comes from the port base, and wins over one exported by the caller.
        "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(L.worker_log_server_port),
        "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(L.trigger_log_server_port),
        "AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_SERVER_PORT": str(L.scheduler_health_check_port),
        "AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_SERVER_HOST": "127.0.0.1",
        # Slack alerts link to the task's log on this sandbox's UI, not to localhost:8080.
        "AIRFLOW__API__BASE_URL": f"http://localhost:{L.api_port}",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "ops:admin,qa:user",
        "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
        "PYTHONPATH": str(REPO / "plugins"),
        "PG_BACKUPS_CONFIG": str(L.clusters_file),
        # The copy of the last good clusters.yaml (docs/configuration-safety.md), inside the sandbox.
        "PG_BACKUPS_STATE_DIR": str(L.root / "state"),
        "AIRFLOW_CONN_AWS_BACKUPS": json.dumps(aws),
        "AIRFLOW_CONN_PG_ASSO": json.dumps(pg),
        "AIRFLOW_CONN_PG_ASSO_STAGING": json.dumps(staging),
        "AIRFLOW_CONN_SLACK_OPS": json.dumps(slack),
        **second,
        # The same settings for the cron scripts, which read the standard AWS variables.
        "AWS_ACCESS_KEY_ID": creds["aws_access_key_id"],
        "AWS_SECRET_ACCESS_KEY": creds["aws_secret_access_key"],
        "AWS_ENDPOINT_URL": L.endpoint,
        "AWS_CA_BUNDLE": str(L.ca_file),
        "SLACK_WEBHOOK_URL": f"http://127.0.0.1:{L.slack_port}/services/{creds['slack_token']}",
        # The runbook's variable: the cron scripts act on asso unless told otherwise (several clusters).
        "PG_BACKREST_STANZA": STANZA,
        "SANDBOX_DIR": str(L.root),
        "SANDBOX_PORT_BASE": str(L.port_base),
        "SANDBOX_CLUSTERS": ",".join(L.clusters),
    }


def read_env_file(path: Path) -> dict:
    """The variables of a sandbox.env (``export KEY=<shell-quoted>``), for callers that run Airflow or
    the scripts against it, or of compose.py's .env (``KEY='value'``: compose reads quotes literally)."""
    import shlex

    env = {}
    for line in Path(path).read_text().splitlines():
        key, equals, value = line.removeprefix("export ").partition("=")
        if equals and not key.lstrip().startswith("#"):
            env[key.strip()] = shlex.split(value)[0] if value else ""
    return env


def write_env_file(L: Layout, env: dict) -> None:
    import shlex

    fd = os.open(L.env_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write("# Written by sandbox/sandbox.py; holds the sandbox's secrets (mode 0600).\n")
        for key, value in env.items():
            out.write(f"export {key}={shlex.quote(value)}\n")


def setup_airflow(L: Layout, env: dict) -> None:
    from pg_backups.config import load_config

    L.airflow_home.mkdir(parents=True, exist_ok=True)
    airflow = Path(sys.executable).parent / "airflow"
    full_env = {**os.environ, **env}
    if not (L.airflow_home / "airflow.db").exists():
        log("airflow db migrate (first start only)")
        subprocess.run([airflow, "db", "migrate"], env=full_env, check=True, capture_output=True, text=True)
    for pool in {pool for cluster in load_config(L.clusters_file).clusters for pool in cluster.pools}:
        subprocess.run([airflow, "pools", "set", pool.name, str(pool.slots), pool.description],
                       env=full_env, check=True, capture_output=True, text=True)


# --------------------------------------------------------------------------------------------
# A real Airflow over the sandbox, as Ops run it: scheduler, dag-processor, triggerer, API server
# (LocalExecutor on the sandbox's SQLite database). `airflow dags test` needs none of it.

AIRFLOW_COMPONENTS = ("api-server", "scheduler", "dag-processor", "triggerer")


def stack_env(L: Layout) -> dict:
    env = {**os.environ, **read_env_file(L.env_file)}
    return {**env,
            # Its components start `airflow ...` children: the venv's bin must be on PATH.
            "PATH": f"{Path(sys.executable).parent}:{env.get('PATH', '')}",
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            "AIRFLOW__CORE__PARALLELISM": "4",  # two cores
            # New and changed DAG files within seconds (the defaults are minutes).
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "10",
            "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "10",
            "AIRFLOW__SCHEDULER__TASK_QUEUED_TIMEOUT": "600"}


def airflow_health(L: Layout) -> dict | None:
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{L.api_port}/api/v2/monitor/health", timeout=5) as resp:
            return json.loads(resp.read())
    except (OSError, ValueError):
        return None


def airflow_healthy(L: Layout) -> bool:
    health = airflow_health(L) or {}
    return all((health.get(part) or {}).get("status") == "healthy"
               for part in ("metadatabase", "scheduler", "triggerer", "dag_processor"))


def start_airflow(L: Layout, seconds: float = 300) -> None:
    """Start the components not running yet; wait until the API reports each healthy."""
    env = stack_env(L)
    airflow = Path(sys.executable).parent / "airflow"
    for name in AIRFLOW_COMPONENTS:
        pid_file = L.run_dir / f"airflow-{name}.pid"
        if pid_alive(pid_file):
            continue
        port = {"api-server": L.api_port, "scheduler": L.worker_log_server_port,
                "triggerer": L.trigger_log_server_port}.get(name)
        if port and port_open(port):
            # Else the component starts, logs "[Errno 98]" and runs without it (tasks' logs unreadable).
            raise SystemExit(f"[sandbox] port {port} for Airflow's {name} is taken by another program; "
                             "set SANDBOX_PORT_BASE to a free range")
        argv = [airflow, name] + (["--port", str(L.api_port), "--workers", "1"] if name == "api-server" else [])
        with open(L.logs / f"airflow-{name}.log", "a") as out:
            proc = subprocess.Popen([str(a) for a in argv], env=env, stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True, cwd=L.root)
        pid_file.write_text(str(proc.pid))
    deadline = time.monotonic() + seconds
    while not airflow_healthy(L):
        dead = [n for n in AIRFLOW_COMPONENTS if not pid_alive(L.run_dir / f"airflow-{n}.pid")]
        if dead or time.monotonic() > deadline:
            stop_airflow(L)
            why = f"{', '.join(dead)} exited" if dead else f"not healthy after {seconds:.0f} s"
            raise SystemExit(f"[sandbox] Airflow did not start ({why}); see {L.logs}/airflow-*.log")
        time.sleep(2)
    log(f"Airflow up: scheduler, dag-processor, triggerer, UI and API http://localhost:{L.api_port} "
        f"(users ops and qa: {L.airflow_home / 'simple_auth_manager_passwords.json.generated'})")


def stop_airflow(L: Layout) -> None:
    for name in AIRFLOW_COMPONENTS:
        stop_daemon(f"airflow-{name}", L)


def up(L: Layout) -> None:
    from pg_backups import operations
    from pg_backups.config import load_config

    for d in (L.root, L.run_dir, L.logs, L.etc, L.staging_root, L.verify_root, L.root / "metrics"):
        d.mkdir(parents=True, exist_ok=True)
        os.chmod(d, 0o755)  # the postgres user must reach its files below
    shutil.chown(L.run_dir, "postgres", "postgres")
    shutil.chown(L.staging_root, "postgres", "postgres")
    shutil.chown(L.verify_root, "postgres", "postgres")
    creds = credentials(L)
    write_clusters_file(L)
    ensure_tls(L)
    start_s3(L)
    start_slack(L)
    config = load_config(L.clusters_file)
    for cluster in config.clusters:
        if cluster.name not in L.clusters:
            continue  # added by hand: its PostgreSQL and tool files are its owner's, not the sandbox's
        operations.write_tool_configs(cluster, access(L, creds))
        start_production(L, creds, cluster.name)
    cluster = config.cluster(STANZA)
    env = airflow_env(L, creds)
    write_env_file(L, env)
    setup_airflow(L, env)
    log(f"up: S3 {L.endpoint} (bucket {BUCKET}), Slack receiver http://127.0.0.1:{L.slack_port} "
        f"-> {L.slack_messages}, staging root {L.staging_root}")
    log(f"tools: {', '.join(cluster.tools)}" + (f" (WAL-G: {cluster.walg.binary})" if "walg" in cluster.tools
                                                 else f" ({WALG_MISSING})"))
    log(f"environment for Airflow and the scripts: source {L.env_file}")


def down(L: Layout) -> None:
    stop_airflow(L)
    drills = [L.verify_root / name for name in L.clusters]
    for pgdata in (L.staging_root / "data", L.billing_staging, *drills, L.pgdata, L.billing_pgdata):
        if pg_running(pgdata):
            pg_ctl(pgdata, "-m", "fast", "-w", "stop")
            log(f"PostgreSQL {pgdata} stopped")
    for name in ("slack_receiver", "stunnel", "moto"):
        stop_daemon(name, L)


def status(L: Layout) -> int:
    rows = {
        "production PostgreSQL": pg_running(L.pgdata),
        "staging PostgreSQL": pg_running(L.staging_root / "data"),
        "moto S3": port_open(L.moto_port),
        "stunnel TLS": port_open(L.s3_tls_port),
        "Slack receiver": port_open(L.slack_port),
        "Airflow (airflow-up)": airflow_healthy(L),
    }
    for name, ok in rows.items():
        print(f"{name:24} {'up' if ok else 'down'}")
    return 0 if all(v for k, v in rows.items() if k not in ("staging PostgreSQL", "Airflow (airflow-up)")) else 1


def walg_report() -> int:
    """One line: the WAL-G binary found and its version (exit 0), or how to provide one (exit 1)."""
    try:
        binary = find_walg()
    except SystemExit as exc:
        print(str(exc).removeprefix("[sandbox] "))
        return 1
    if binary is None:
        print(WALG_MISSING)
        return 1
    proc = subprocess.run([str(binary), "--version"], text=True, capture_output=True)
    version = (proc.stdout or proc.stderr).split()
    shown = version[2] if len(version) > 2 and version[:2] == ["wal-g", "version"] else "unknown version"
    warning = "" if shown == WALG_VERSION else f" (the project is tested with {WALG_VERSION})"
    print(f"WAL-G {shown}: {binary}{warning}")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=["up", "down", "status", "destroy", "airflow-up", "airflow-down", "walg"],
                        help="airflow-up/-down: a real Airflow (scheduler, dag-processor, triggerer, API server) "
                             "over a sandbox that is up; walg: which WAL-G binary the sandbox would use")
    args = parser.parse_args(argv)
    if args.action == "walg":
        return walg_report()
    if os.geteuid() != 0:
        raise SystemExit("[sandbox] run as root: PostgreSQL runs as the postgres user through runuser")
    L = Layout.from_env()
    if args.action == "up":
        up(L)
    elif args.action == "down":
        if L.root.exists():
            down(L)
    elif args.action == "airflow-up":
        if not L.env_file.exists():
            raise SystemExit("[sandbox] the sandbox is not up: run `sandbox.py up` first")
        start_airflow(L)
    elif args.action == "airflow-down":
        stop_airflow(L)
    elif args.action == "destroy":
        if L.root.exists():
            down(L)
            shutil.rmtree(L.root)
            log(f"removed {L.root}")
    else:
        return status(L)
    return 0


if __name__ == "__main__":
    sys.exit(main())
