"""A stand-in for Slack's incoming webhook: answers ``ok`` like Slack and records every message.

Each POST body is appended as one JSON line ``{"path", "body", "received_at"}`` to the output
file, so tests and people can read what Ops would have seen in the channel. The webhook's token
(the path after ``/services/``) is a secret: the stored path keeps only its shape
(``/services/***``), and the file is readable by its owner only.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

_lock = threading.Lock()


def make_handler(out_path: str):
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 (http.server's naming)
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length).decode("utf-8", "replace")
            try:
                body = json.loads(raw)
            except json.JSONDecodeError:
                body = {"raw": raw}
            path = re.sub(r"(/services/).+", r"\1***", self.path)
            with _lock:
                fd = os.open(out_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
                os.fchmod(fd, 0o600)  # whatever the umask, and for a file made before
                with os.fdopen(fd, "a") as out:
                    out.write(json.dumps({"path": path, "body": body, "received_at": time.time()}) + "\n")
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args):  # keep the sandbox's logs quiet
            pass

    return Handler


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (the compose sandbox: 0.0.0.0)")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    ThreadingHTTPServer((args.host, args.port), make_handler(args.out)).serve_forever()


if __name__ == "__main__":
    main()
