"""Log injection (issue 10, point 15): nothing a client sends can write a forged line into the API's
logs. A request path with %0a, a forwarded client address or user agent with control characters,
an email or segment id with them: every value is escaped, in our log and in uvicorn's access log."""

from __future__ import annotations

import io
import logging
import re
import socket
import subprocess
import sys
import threading
import time

import httpx
import uvicorn

from segment_pipeline.api.app import create_app
from segment_pipeline.api.config import ApiSettings
from segment_pipeline_tests.waiting import child_env, free_port, wait_for

RECORD = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING|ERROR|CRITICAL) [\w.]+: ")
FORGED = "2026-11-29 12:00:00,000 INFO segment_pipeline.api: GET /admin 200 0B 1.0ms cred=admin"
#: X-Forwarded-For is a comma-separated list (the server takes the last entry): a forged value without commas
FORWARDED = b"10.0.0.1\x85\tFORGED INFO segment_pipeline.api: GET /admin 200 0B 1.0ms cred=admin"


def raw_request(port: int, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(request)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def test_forged_lines_never_reach_the_log_of_segment_pipeline_serve(env):
    """`segment-pipeline serve` in its own process, its log read as an operator would."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "segment_pipeline.cli", "serve", "--host", "127.0.0.1", "--port", str(port),
         "--log-level", "info"],
        env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        assert proc.poll() is None, "segment-pipeline serve exited"
        try:
            return httpx.get(url + "/healthz", timeout=5).status_code == 200
        except httpx.TransportError:
            return False

    try:
        wait_for(f"segment-pipeline serve on {url}", up)
        forged = FORGED.replace(" ", "%20")
        sent = [
            # the example: a path with %0a, no credentials
            ("GET", f"/segments/export%0a{forged}", {}),
            ("GET", f"/nope%0d%0a{forged}%1b[2K%e2%80%a8", {}),
            # an email with a newline in an identity lookup (400), a unicode line separator
            ("GET", f"/identities/jane%0a{forged}@example.com", {"Authorization": f"Bearer {env.api_key}"}),
            ("GET", "/identities/jane%e2%80%a8@example.com", {"Authorization": f"Bearer {env.api_key}"}),
            # double-encoded: %250a is the text "%0a", it must not be decoded a second time into a newline
            ("GET", f"/double%250a{forged}", {}),
        ]
        for method, path, headers in sent:
            raw_request(port, f"{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n".encode()
                        + "".join(f"{k}: {v}\r\n" for k, v in headers.items()).encode() + b"\r\n")
        # a forwarded client address (trusted from 127.0.0.1) and a user agent with control characters, and
        # bad credentials so the client address is logged
        raw_request(port, b"GET /segments/export HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                          b"Authorization: Basic bm9zdG86d3Jvbmc=\r\nUser-Agent: curl\x85" + FORGED.encode() + b"\r\n"
                          b"X-Forwarded-For: " + FORWARDED + b"\r\n\r\n")
        # a segment export request whose segment id carries a newline (404: unknown segment)
        httpx.post(url + "/users/export/segment", headers={"Authorization": f"Bearer {env.api_key}"},
                   json={"segment_id": f"vip\n{FORGED}", "fields_to_export": ["email"]}, timeout=30)
        assert httpx.get(url + "/healthz", timeout=30).status_code == 200
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=60)
    text = out.decode("utf-8", errors="replace")
    lines = text.split("\n")
    for line in lines:
        assert not line.startswith(FORGED[:23]), repr(line)  # no line is the forged record
        assert not any(ch in line for ch in "\r\x1b\x85\u2028"), repr(line)
    access = [line for line in lines if " segment_pipeline.api: " in line and " cred=" in line]
    assert sum("GET /segments/export\\n2026-11-29 12:00:00,000 INFO" in line for line in access) == 1, text
    assert any("GET /nope\\r\\n2026-11-29" in line and "\\x1b[2K\\u2028" in line for line in access), text
    assert any("/identities/j***@example.com" in line or "/identities/jane\\n" in line for line in access), text
    assert any("/identities/jane\\u2028@example.com" in line or "j***@example.com" in line for line in access)
    assert any("GET /double%0a2026-11-29" in line for line in access), text
    assert any("authentication failed from 10.0.0.1\\x85\\tFORGED INFO" in line for line in lines), text
    # every line the server wrote is a record of its own, or part of a traceback (indented)
    for line in lines:
        assert line == "" or RECORD.match(line) or line.startswith((" ", "INFO:", "WARNING:", "ERROR:")), repr(line)


def test_uvicorn_access_log_and_tracebacks_are_escaped(env):
    """uvicorn's own access log (when someone turns it on) and an exception message with a newline."""
    buffer = io.StringIO()
    handler = logging.StreamHandler(buffer)
    handler.setFormatter(uvicorn.logging.AccessFormatter('%(client_addr)s - "%(request_line)s" %(status_code)s',
                                                        use_colors=False))
    app = create_app(ApiSettings.from_env())
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="info", access_log=True, lifespan="off",
                                           proxy_headers=True, forwarded_allow_ips="127.0.0.1"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    access = logging.getLogger("uvicorn.access")
    access.addHandler(handler)
    try:
        raw_request(port, b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                          b"X-Forwarded-For: " + FORWARDED + b"\r\n\r\n")
    finally:
        access.removeHandler(handler)
        server.should_exit = True
        thread.join(10)
        sock.close()
    line = buffer.getvalue()
    assert line.count("\n") == 1 and "\x85" not in line and "\t" not in line, repr(line)
    assert line.startswith("10.0.0.1\\x85\\tFORGED INFO") and '"GET /healthz HTTP/1.1" 200' in line

    # a traceback keeps its lines, each indented, so a message cannot start a record-looking line
    buffer = io.StringIO()
    handler = logging.StreamHandler(buffer)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    log = logging.getLogger("segment_pipeline.api")
    log.addHandler(handler)
    try:
        try:
            raise ValueError(f"bad value\n{FORGED}\x1b[2K")
        except ValueError:
            log.error("failed on %s", "/path\nwith newline", exc_info=True)
    finally:
        log.removeHandler(handler)
    first, *rest = buffer.getvalue().rstrip("\n").split("\n")
    assert first == "ERROR segment_pipeline.api: failed on /path\\nwith newline"
    assert rest and all(line.startswith("    ") for line in rest), rest
    assert any(line == "    " + FORGED + "\\x1b[2K" for line in rest), rest
