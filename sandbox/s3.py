"""The sandbox's S3: moto's server behind stunnel's TLS with a self-signed certificate, and the bucket
client (S3Access) the project's code uses against it."""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING

from layout import REGION, Layout
from processes import sh, start_daemon

# The project (which needs the virtualenv) is imported in the function that uses it, as in the other
# modules here: sandbox/compose.py imports some of them with only the standard library.
if TYPE_CHECKING:
    from pg_backups.s3_access import S3Access


def access(L: Layout, creds: dict) -> S3Access:
    from pg_backups.s3_access import S3Access

    return S3Access(region=REGION, access_key=creds["aws_access_key_id"], secret_key=creds["aws_secret_access_key"],
                    endpoint_url=L.endpoint, ca_file=str(L.ca_file))


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
