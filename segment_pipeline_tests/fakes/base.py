"""Shared machinery for the in-process fake email platforms.

A fake is a real HTTP server on loopback (``ThreadingHTTPServer`` in a daemon thread, HTTP/1.1
keep-alive) that routes requests to handler methods, and around every request:

* enforces per-family rate limits (sliding windows) with ``429`` + ``Retry-After``, counting a
  request when its headers arrive and deciding before its body is read, as an API gateway does,
* applies injected faults (``500``/``503`` answers, a response delayed past the client's timeout,
  a dropped connection) to the next N matching requests,
* logs every request (method, path, family, status) so tests can count and wait on them,
* validates request bodies against the vendor's shipped OpenAPI spec (:class:`SpecValidator`).

Unknown routes answer ``404``. Faults and limits are plain attributes, changeable mid-test.
"""

from __future__ import annotations

import collections
import contextlib
import gc
import json
import math
import re
import socket
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from openapi_schema_validator import OAS30Validator

#: The vendor API descriptions the fakes validate against, kept in the repository beside this
#: module (source, revision and licence of each: ``specs/README.md``).
SPECS_DIR = Path(__file__).resolve().parent / "specs"


class SpecValidator:
    """Validate JSON bodies against ``#/components/schemas/<name>`` of one OpenAPI document.

    Large arrays of same-shaped items (10,000 profiles in one import) are validated per distinct
    *shape*: an item's shape is its nested keys, JSON types and the literal values of short
    strings under ``type`` keys (the only enum-constrained values in these payloads), so two items
    of one shape get the same verdict and only the first is checked in full.
    """

    def __init__(self, spec_path: str | Path):
        self.spec = json.loads(Path(spec_path).read_text())
        self._validators: dict[str, OAS30Validator] = {}
        self._lock = threading.Lock()

    def validator(self, schema_name: str) -> OAS30Validator:
        with self._lock:
            v = self._validators.get(schema_name)
            if v is None:
                schema = {"components": self.spec["components"], "$ref": f"#/components/schemas/{schema_name}"}
                v = self._validators[schema_name] = OAS30Validator(schema)
            return v

    def errors(self, schema_name: str, body: Any, *, items_at: tuple[str, ...] = (), item_schema: str = "",
               sample: int | None = None) -> list[str]:
        """Error messages (empty when valid). ``items_at``/``item_schema`` name a big array checked by shape.

        ``sample=None`` (the default) computes the shape of every item; ``sample=k`` only of a
        deterministic sample (the first ``k`` items, the last one and ``k`` evenly spaced ones),
        for benchmarks where the fake's CPU would otherwise be what is measured. Every item is
        still counted and processed by the caller either way.
        """
        if not items_at:
            return [_fmt(e) for e in self.validator(schema_name).iter_errors(body)]
        items = _dig(body, items_at)
        if not isinstance(items, list):
            return [_fmt(e) for e in self.validator(schema_name).iter_errors(body)]
        shell = _copy_path(body, items_at)
        errs = [_fmt(e) for e in self.validator(schema_name).iter_errors(shell)]
        seen: set[str] = set()
        item_validator = self.validator(item_schema)
        for i in _sample_indexes(len(items), sample):
            item = items[i]
            sig = _shape(item)
            if sig in seen:
                continue
            seen.add(sig)
            errs.extend(f"{'/'.join(items_at)}/{i}: {_fmt(e)}" for e in item_validator.iter_errors(item))
        return errs


def _sample_indexes(n: int, sample: int | None) -> Iterable[int]:
    if sample is None or n <= 2 * sample + 1:
        return range(n)
    step = max(1, n // sample)
    return sorted({*range(sample), *range(sample, n, step), n - 1})


def _dig(obj: Any, path: tuple[str, ...]) -> Any:
    for key in path:
        if not isinstance(obj, dict):
            return None
        obj = obj.get(key)
    return obj


def _copy_path(obj: Any, path: tuple[str, ...]) -> Any:
    """``obj`` with the value at ``path`` replaced by ``[]``, copying only the dicts on the way."""
    if not path:
        return []
    out = dict(obj)
    out[path[0]] = _copy_path(obj[path[0]], path[1:])
    return out


def _shape(value: Any, key: str = "") -> str:
    """Nested keys, JSON types and the values of ``type`` strings (exact types: bool is not int)."""
    t = type(value)
    if t is str:
        return f"s={value}" if key == "type" else "s"
    if t is dict:
        return "{" + ",".join([f"{k}:{_shape(v, k)}" for k, v in sorted(value.items())]) + "}"
    if t is list:
        if not value:
            return "[]"
        if all(type(v) is str for v in value):  # the common case: a list of names
            return "[s]"
        return "[" + "|".join(sorted({_shape(v) for v in value})) + "]"
    return t.__name__


def _fmt(err: Any) -> str:
    where = "/".join(str(p) for p in err.absolute_path)
    return f"{where or '<root>'}: {err.message}"


class SlidingWindow:
    """Server-side limiter: at most ``n`` requests in any ``window`` seconds."""

    def __init__(self, n: int, window: float):
        self.n, self.window = n, window
        self.log: collections.deque[float] = collections.deque()

    def check(self, now: float) -> float:
        """0 if admitted (and recorded), else seconds until a slot frees up."""
        while self.log and self.log[0] <= now - self.window:
            self.log.popleft()
        if len(self.log) >= self.n:
            return self.log[0] + self.window - now
        self.log.append(now)
        return 0.0


@dataclass
class Fault:
    kind: str  # "500" | "503" | "delay" | "drop" | "drop_after" (drop after acting on the request)
    times: int = 1
    match: str = ""  # substring of "METHOD /path"; empty matches everything
    delay: float = 0.0


@dataclass
class LoggedRequest:
    method: str
    path: str
    family: str
    status: int
    at: float  # when the answer was ready (time.monotonic(): comparable across processes)
    body_bytes: int
    received_at: float = 0.0  # when its request line and headers arrived: what the rate limits count


@dataclass
class Response:
    status: int
    body: Any = None  # dict/list -> JSON; bytes -> raw
    headers: dict[str, str] = field(default_factory=dict)
    content_type: str = "application/json"


class HttpError(Exception):
    def __init__(self, status: int, message: str, code: str = "error", headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.headers = status, message, code, headers or {}


Route = tuple[str, re.Pattern[str], str, Callable[..., Response]]


@dataclass
class _Admission:
    method: str
    path: str
    query: dict[str, str]
    family: str
    fn: Callable[..., Response] | None  # None: no such route
    match: re.Match[str] | None
    fault: Fault | None
    received_at: float
    error: HttpError | None  # decided before the body arrived (404, 401, 400, 429)


class FakeService:
    """Base class: subclasses register routes, check auth and render errors in their own style."""

    name = "fake"

    def __init__(self, limits: dict[str, list[tuple[int, float]]] | None = None, max_body_bytes: int = 50 * 1024 * 1024):
        #: Guards the service's state (handlers and background work hold it while they change it).
        self.lock = threading.RLock()
        #: Guards only the rate windows and faults, so that a request is counted when it arrives,
        #: not when background work (a job being applied) lets go of :attr:`lock`.
        self._gate = threading.Lock()
        self.routes: list[Route] = []
        self.limits: dict[str, list[tuple[int, float]]] = dict(limits or {})
        self._windows: dict[str, list[SlidingWindow]] = {}
        self.faults: list[Fault] = []
        self.log: list[LoggedRequest] = []
        self.max_body_bytes = max_body_bytes
        self.spec_violations: list[str] = []
        #: With :attr:`keep_bodies`, every request's ``(method, path with query, body)`` as received
        #: (tests that scan all payloads for an address; off by default: bodies can be large).
        self.keep_bodies = False
        self.bodies: list[tuple[str, str, bytes]] = []
        self._cond = threading.Condition(self.lock)
        #: Freeze the garbage collector's view of the heap after every request (``gc.freeze()``).
        #: A fake holding a million profiles otherwise spends most of its CPU in full collections
        #: re-scanning them while it parses the next job; only for a process that runs nothing but
        #: the fake (benchmarks, the subprocess runner), since it affects the whole interpreter.
        self.freeze_heap = False
        self.tick_interval = 0.02
        self._stopping = threading.Event()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle -----------------------------------------------------------------------
    def start(self, host: str = "127.0.0.1", port: int = 0) -> FakeService:
        service = self

        class Handler(_Handler):
            fake = service

        self._server = _Server((host, port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name=f"{self.name}-fake", daemon=True)
        self._thread.start()
        self._stopping.clear()
        threading.Thread(target=self._tick_loop, name=f"{self.name}-fake-ticker", daemon=True).start()
        return self

    def _tick_loop(self) -> None:
        while not self._stopping.wait(self.tick_interval):
            self.tick()

    def tick(self) -> None:
        """Called every ``tick_interval`` seconds while started: finish time-based background work
        (asynchronous jobs/imports whose processing time is up), as the real service would without
        being polled."""
        return None

    def stop(self) -> None:
        self._stopping.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> FakeService:
        return self.start() if self._server is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        assert self._server is not None, "fake not started"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    # -- configuration -------------------------------------------------------------------
    def route(self, method: str, pattern: str, family: str, fn: Callable[..., Response]) -> None:
        self.routes.append((method, re.compile("^" + pattern + "$"), family, fn))

    def inject(self, kind: str, times: int = 1, match: str = "", delay: float = 0.0) -> None:
        with self._gate:
            self.faults.append(Fault(kind, times, match, delay))

    def set_limits(self, family: str, limits: list[tuple[int, float]]) -> None:
        with self._gate:
            self.limits[family] = limits
            self._windows.pop(family, None)

    # -- observation ---------------------------------------------------------------------
    def count(self, family: str | None = None, status: int | None = None, method: str | None = None) -> int:
        with self.lock:
            return sum(
                1 for r in self.log
                if (family is None or r.family == family)
                and (status is None or r.status == status)
                and (method is None or r.method == method)
            )

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 30.0) -> bool:
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.05))
            return True

    # -- hooks for subclasses ------------------------------------------------------------
    def authenticate(self, headers: Any) -> None:  # raise HttpError(401)
        return None

    def check_headers(self, headers: Any, family: str) -> None:  # e.g. Klaviyo's revision
        return None

    def error_response(self, err: HttpError) -> Response:
        return Response(err.status, {"message": err.message}, err.headers)

    # -- dispatch (called from handler threads) ------------------------------------------
    def _take_fault(self, key: str) -> Fault | None:
        with self._gate:
            for f in self.faults:
                if f.times > 0 and (not f.match or f.match in key):
                    f.times -= 1
                    if f.times == 0:
                        self.faults.remove(f)
                    return f
        return None

    def _rate_check(self, family: str) -> tuple[float, float]:
        """Count a request arriving now against its family's windows: ``(wait, now)``, wait 0 if admitted.

        The clock is read under the lock, so requests are counted in the order they are stamped.
        """
        with self._gate:
            now = time.monotonic()
            limits = self.limits.get(family)
            if not limits:
                return 0.0, now
            windows = self._windows.get(family)
            if windows is None:
                windows = self._windows[family] = [SlidingWindow(n, w) for n, w in limits]
            # check all windows before recording in any of them
            waits = []
            for w in windows:
                while w.log and w.log[0] <= now - w.window:
                    w.log.popleft()
                waits.append(w.log[0] + w.window - now if len(w.log) >= w.n else 0.0)
            wait = max(waits)
            if wait <= 0:
                for w in windows:
                    w.log.append(now)
            return wait, now

    def _record(self, method: str, path: str, family: str, status: int, nbytes: int, received_at: float = 0.0) -> None:
        with self._cond:
            self.log.append(LoggedRequest(method, path, family, status, time.monotonic(), nbytes, received_at))
            self._cond.notify_all()
        if self.freeze_heap:
            gc.freeze()

    def admit(self, method: str, raw_path: str, headers: Any) -> _Admission:
        """What an API gateway decides from the request line and headers alone, before the body is
        read: the route, an injected fault, authentication, required headers and the rate limits
        (a request is counted when its headers arrive)."""
        parts = urlsplit(raw_path)
        path = parts.path
        query = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
        found = next(((r, r[1].match(path)) for r in self.routes if r[0] == method and r[1].match(path)), None)
        if found is None:
            return _Admission(method, path, query, "unknown", None, None, None, time.monotonic(),
                              HttpError(404, f"no such endpoint: {method} {path}", "not_found"))
        (_m, _p, family, fn), match = found
        fault = self._take_fault(f"{method} {path}")
        received_at = time.monotonic()
        try:
            self.authenticate(headers)
            self.check_headers(headers, family)
            wait, received_at = self._rate_check(family)
            if wait > 0:
                raise HttpError(429, "rate limit exceeded", "throttled", {"Retry-After": str(max(1, math.ceil(wait)))})
        except HttpError as err:
            return _Admission(method, path, query, family, fn, match, fault, received_at, err)
        return _Admission(method, path, query, family, fn, match, fault, received_at, None)

    def complete(self, a: _Admission, headers: Any, body: bytes) -> tuple[Response, Fault | None]:
        """Handle an admitted request once its body has arrived."""
        method, path, family, fault = a.method, a.path, a.family, a.fault
        if self.keep_bodies:
            with self.lock:
                self.bodies.append((method, path + "?" + "&".join(f"{k}={v}" for k, v in a.query.items()), body))
        if a.fn is None:
            self.on_unknown(method, path, body)
            resp = self.error_response(a.error or HttpError(404, "not found", "not_found"))
            self._record(method, path, family, resp.status, len(body), a.received_at)
            return resp, None
        try:
            if a.error is not None:
                raise a.error
            if fault is not None and fault.kind in ("500", "503"):
                raise HttpError(int(fault.kind), "injected fault", "server_error")
            if fault is not None and fault.kind == "drop":
                self._record(method, path, family, 0, len(body), a.received_at)
                return Response(0), fault
            if len(body) > self.max_body_bytes:
                raise HttpError(413, f"payload too large ({len(body)} bytes > {self.max_body_bytes})", "too_large")
            resp = a.fn(match=a.match, query=a.query, body=body, headers=headers)
        except HttpError as err:
            resp = self.error_response(err)
        self._record(method, path, family, resp.status, len(body), a.received_at)
        return resp, fault

    def dispatch(self, method: str, raw_path: str, headers: Any, body: bytes) -> tuple[Response, Fault | None]:
        """:meth:`admit` then :meth:`complete` (for a request whose body is already at hand)."""
        return self.complete(self.admit(method, raw_path, headers), headers, body)

    def on_unknown(self, method: str, path: str, body: bytes) -> None:
        return None


class _Server(ThreadingHTTPServer):
    # socketserver's default listen backlog is 5: a client opening a dozen connections at once
    # would see SYNs dropped and retransmitted a second later
    request_queue_size = 128


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    fake: FakeService

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        return None

    def _handle(self) -> None:
        admission = self.fake.admit(self.command, self.path, self.headers)  # before the body, like a gateway
        length = int(self.headers.get("Content-Length") or 0)
        body = self._read_body(length) if length else b""
        resp, fault = self.fake.complete(admission, self.headers, body)
        if fault is not None and fault.kind in ("drop", "drop_after"):
            # "drop": the request was acted on only for drop_after; either way no answer arrives
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)
            return
        if fault is not None and fault.kind == "delay":
            time.sleep(fault.delay)
        if isinstance(resp.body, bytes | bytearray):
            payload = bytes(resp.body)
        elif resp.body is None:
            payload = b""
        else:
            payload = json.dumps(resp.body).encode("utf-8")
        try:
            self.send_response(resp.status)
            if payload or resp.status not in (204,):
                self.send_header("Content-Type", resp.content_type)
            self.send_header("Content-Length", str(len(payload)))
            for k, v in resp.headers.items():
                self.send_header(k, v)
            self.end_headers()
            if payload:
                self.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def _read_body(self, length: int) -> bytes:
        """Read the body in as few system calls as possible: what the header reader already
        buffered, then the rest in one ``MSG_WAITALL`` receive. (Reading a MB through the buffered
        reader takes one GIL hand-off per chunk, which under load costs far more than the copy.)"""
        first = self.rfile.read1(length)
        if len(first) >= length:
            return first
        buf = bytearray(length)
        view = memoryview(buf)
        view[:len(first)] = first
        got = len(first)
        while got < length:
            n = self.connection.recv_into(view[got:], length - got, socket.MSG_WAITALL)
            if n == 0:
                raise ConnectionResetError("client closed the connection mid-body")
            got += n
        return bytes(buf)

    do_GET = do_POST = do_DELETE = do_PATCH = do_PUT = _handle
