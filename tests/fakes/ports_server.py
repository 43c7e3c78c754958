"""`python tests/fakes/ports_server.py PORT...`: answer 200 "ok" on every port (0.0.0.0), for firewall tests.

Run inside a network namespace (``ip netns exec NS python ...``); one process, one thread per port.
"""

from __future__ import annotations

import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class _Ok(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "3")
        self.end_headers()
        self.wfile.write(b"ok\n")

    def log_message(self, format: str, *args: object) -> None:
        pass


def main(ports: list[str]) -> None:
    for port in ports:
        server = ThreadingHTTPServer(("0.0.0.0", int(port)), _Ok)
        threading.Thread(target=server.serve_forever, daemon=True).start()
    print("ready", flush=True)
    threading.Event().wait()


if __name__ == "__main__":
    main(sys.argv[1:])
