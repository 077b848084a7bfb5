"""The e-mail and PagerDuty receivers the alert-channel tests send to (unit and sandbox): a real
SMTP server (aiosmtpd on 127.0.0.1) and an HTTPS stand-in for PagerDuty's Events API v2, on the port
base + 20/21. A pytest plugin (tests/conftest.py's ``pytest_plugins``): each module that asks for
one gets its own."""

from __future__ import annotations

import email
import json
import ssl
import subprocess
import threading
from email import policy
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace

import pytest

from support import PAGERDUTY_PORT, SMTP_PORT


@pytest.fixture(scope="module")
def smtp_server():
    from aiosmtpd.controller import Controller

    class Handler:
        def __init__(self):
            self.messages = []

        async def handle_DATA(self, server, session, envelope):  # noqa: N802 (aiosmtpd's naming)
            self.messages.append({"from": envelope.mail_from, "to": list(envelope.rcpt_tos),
                                  "message": email.message_from_bytes(envelope.content, policy=policy.default)})
            return "250 OK"

    handler = Handler()
    controller = Controller(handler, hostname="127.0.0.1", port=SMTP_PORT)
    controller.start()
    yield handler
    controller.stop()


@pytest.fixture(scope="module")
def pagerduty_receiver(tmp_path_factory):
    """HTTPS on 127.0.0.1 with a certificate made here; the client trusts it through SSL_CERT_FILE."""
    directory = tmp_path_factory.mktemp("pagerduty")
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    events = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
            events.append({"path": self.path, "body": body})
            reply = json.dumps({"status": "success", "message": "Event processed",
                                "dedup_key": body.get("dedup_key") or "generated"}).encode()
            self.send_response(202)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", PAGERDUTY_PORT), Handler)
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(str(cert), str(key))
    server.socket = tls.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield SimpleNamespace(events=events, cert=str(cert), url=f"https://127.0.0.1:{PAGERDUTY_PORT}")
    server.shutdown()
