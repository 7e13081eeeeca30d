"""A real HTTP callback receiver on loopback that can fail its first requests.

``callback_server(fail_first=2)`` yields a :class:`CallbackServer`; its first ``fail_first``
POSTs get ``fail_status`` (503 by default) or, with ``drop=True``, a closed connection without
any response. Every request body received is recorded (JSON-decoded) in ``received``.
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class CallbackServer:
    def __init__(self, fail_first: int = 0, fail_status: int = 503, drop: bool = False):
        self.fail_first = fail_first
        self.fail_status = fail_status
        self.drop = drop
        self.attempts = 0
        self.received: list[dict] = []
        self.headers: list[dict] = []
        self.lock = threading.Lock()
        self.url = ""

    @property
    def delivered(self) -> list[dict]:
        return self.received


@contextlib.contextmanager
def callback_server(fail_first: int = 0, fail_status: int = 503, drop: bool = False) -> Iterator[CallbackServer]:
    state = CallbackServer(fail_first, fail_status, drop)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 - http.server API
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            with state.lock:
                state.attempts += 1
                failing = state.attempts <= state.fail_first
            if failing and state.drop:
                self.close_connection = True
                self.connection.close()
                return
            if failing:
                self.send_response(state.fail_status)
                self.end_headers()
                return
            with state.lock:
                state.received.append(json.loads(body))
                state.headers.append(dict(self.headers))
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(b'{"ok": true}')

        def log_message(self, *args):  # keep test output quiet
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.url = f"http://127.0.0.1:{server.server_address[1]}/hooks/export?token=secret"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
