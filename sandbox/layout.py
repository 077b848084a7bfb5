"""Where a sandbox's things are: its fixed names, its ports and files (:class:`Layout`, from
SANDBOX_DIR, SANDBOX_PORT_BASE and SANDBOX_CLUSTERS), and its per-sandbox secrets. Standard library
only: sandbox/compose.py, which runs before any virtualenv exists, imports it (through postgres.py and
airflow_home.py)."""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
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
