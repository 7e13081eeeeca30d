"""How tests wait: for the state they assert on, never for a fixed time, and never as a speed claim.

A test that needs a run finished, a file written or a server up polls for exactly that state with
:func:`wait_for`. Its ``timeout`` only turns a hang into a clear failure (with ``on_timeout``'s
diagnostics): it is never the property under test, so it is generous (:data:`HANG_TIMEOUT`) and
the suite passes on a busy two-core machine. Timings belong in ``benchmarks/``.
"""

from __future__ import annotations

import os
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
