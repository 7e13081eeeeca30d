"""How tests wait: for the state they assert on, never for a fixed time, and never as a speed claim.

A test that needs a run finished, a file written or a server up polls for exactly that state with
:func:`wait_for`. Its ``timeout`` only turns a hang into a clear failure (with ``on_timeout``'s
diagnostics): it is never the property under test, so it is generous (:data:`HANG_TIMEOUT`) and
the suite passes on a busy two-core machine. Timings belong in ``benchmarks/``.
"""

from __future__ import annotations

import os
import random
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")

#: Seconds before a wait is reported as a hang: far beyond anything a loaded machine needs.
HANG_TIMEOUT = 600.0

#: The checkout under test (children started by tests import this same code).
REPO_ROOT = Path(__file__).resolve().parent.parent


def wait_for(what: str, check: Callable[[], T], timeout: float = HANG_TIMEOUT,
             on_timeout: Callable[[], str] = lambda: "", interval: float = 0.05) -> T:
    """Poll ``check()`` until it returns something truthy and return that; ``TimeoutError``
    naming ``what`` (plus ``on_timeout()``) after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"gave up waiting for {what} after {timeout:.0f}s\n{on_timeout()}")
        time.sleep(interval)


def _ephemeral_ports() -> tuple[int, int]:
    try:
        lo, hi = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(lo), int(hi)
    except (OSError, ValueError):
        return 32768, 60999  # Linux's default


def free_port() -> int:
    """A loopback TCP port nobody listens on now, for a server that a child process will bind.

    A port is only free until someone binds it, and the child binds it seconds later. Asking the
    kernel for one (``bind(0)``) returns a port from the ephemeral range, which the kernel goes
    on handing out to every other process's outgoing connections and ``bind(0)`` calls meanwhile;
    so the port is picked at random *below* that range, where only another test picking the same
    way can collide. Callers still retry when their child reports "address already in use".
    """
    lo, _hi = _ephemeral_ports()
    for _ in range(200):
        port = random.randint(max(1024, lo - 12_000), lo - 1)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket() as s:  # a crowded machine: any port the kernel offers
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def on_a_free_port(start: Callable[[int], T], attempts: int = 5) -> T:
    """``start(port)`` on a port from :func:`free_port`. A server that could not bind its port
    (taken between the pick and the bind) makes ``start`` raise ``RuntimeError`` with its output,
    which says "address already in use": then it is started again on another port."""
    for attempt in range(1, attempts + 1):
        try:
            return start(free_port())
        except RuntimeError as exc:
            if attempt == attempts or "address already in use" not in str(exc).lower():
                raise
    raise AssertionError("unreachable")


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for a child Python process that runs this checkout's code, wherever
    pytest was started from: the repository first on ``PYTHONPATH``."""
    path = [str(REPO_ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(path), **(extra or {})}


def stop_process(proc: subprocess.Popen, grace: float = 30.0) -> None:
    """Terminate a child we started and reap it (kill if it ignores SIGTERM for ``grace`` s)."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
