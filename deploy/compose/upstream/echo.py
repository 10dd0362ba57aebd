"""A sample upstream for the local compose stack: answers every request with a JSON echo of
what it received (method, path, headers, body size), so the identity headers the gateway adds
are easy to see. Standard library only.

    python echo.py            # listens on 0.0.0.0:8000 ($ECHO_HOST, $ECHO_PORT)
"""

from __future__ import annotations

import json
import os
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Echo(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        data = json.dumps(
            {
                "method": self.command,
                "path": self.path,
                "headers": dict(self.headers.items()),
                "body_bytes": len(body),
            },
            indent=2,
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = _answer

    def log_message(self, format: str, *args: object) -> None:
        print(f"{self.address_string()} {format % args}", flush=True)


def main() -> None:
    address = (os.environ.get("ECHO_HOST", "0.0.0.0"), int(os.environ.get("ECHO_PORT", "8000")))
    server = ThreadingHTTPServer(address, Echo)
    server.daemon_threads = True
    print(f"echo upstream on {address[0]}:{server.server_port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
