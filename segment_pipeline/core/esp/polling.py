"""When to look at an asynchronous job (a Klaviyo import job, a dotdigital import) again.

Status checks draw on a rate limit as tight as the submissions' (Klaviyo: 10/s for both), so a
check that finds the job still running costs a slot the next job needs, while a check that comes
late costs only that job's latency. :class:`PollTimer` therefore learns how long jobs take as a
bracket: ``hi``, a delay after which a job was seen done, and ``lo``, one after which a job was
seen still running. Jobs are checked at ``hi``; while the bracket is wide, one job at a time (never
several in flight at once, which would all miss together) is checked at its midpoint instead,
so the bracket halves with each such probe and ends a few percent wide. A job that is still
running at ``hi`` means jobs got slower: ``hi`` moves up past it. ``lo`` slowly forgets, so a
server that got faster is noticed too.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TypeVar

from segment_pipeline.core.esp.http import EspError, last_sent_at

T = TypeVar("T")


class PollTimer:
    def __init__(self, initial: float, maximum: float, minimum: float = 0.02, tolerance: float = 0.04,
                 forget: float = 0.999):
        self.hi = max(minimum, min(initial, maximum))
        self.lo = 0.0
        self.minimum, self.maximum, self.tolerance, self.forget = minimum, maximum, tolerance, forget
        self._probing = False
        self._lock = threading.Lock()

    def first_delay(self) -> tuple[float, bool]:
        """Seconds from submission to a job's first check, and whether that check is a probe."""
        with self._lock:
            if not self._probing and self.hi - self.lo > max(self.minimum, self.tolerance * self.hi):
                self._probing = True
                return (self.lo + self.hi) / 2, True
            return self.hi, False

    def retry_delay(self, checks: int) -> float:
        """Seconds before the next check of a job found running ``checks`` times: soon, then backing off."""
        with self._lock:
            return min(self.maximum, max(self.minimum, 0.1 * self.hi * 1.5 ** (checks - 1)))

    def observe(self, done: bool, elapsed: float, probe: bool = False) -> None:
        """A check ``elapsed`` seconds after submission found the job ``done`` (or still running).

        Pass the time the check's *answer* arrived for ``done`` (the job was done by then) and the
        time the check was *sent* otherwise (it was still running when the server looked).
        """
        with self._lock:
            if probe:
                self._probing = False
            if done:
                self.hi = max(self.minimum, min(self.hi, elapsed))
                self.lo *= self.forget
            else:
                self.lo = max(self.lo, elapsed)
                if self.lo >= self.hi:
                    self.hi = min(self.maximum, max(self.lo * 1.25, self.lo + self.minimum))
                    self.lo = min(self.lo, self.hi)


def poll_until(timer: PollTimer, check: Callable[[], T], finished: Callable[[T], bool], *, timeout: float,
               what: str, submitted_at: float | None = None) -> T:
    """Call ``check`` (one status request) until ``finished(result)``; the first call is timed by
    ``timer``, later ones come soon after, then back off. Raises :class:`EspError` naming ``what``
    once ``timeout`` seconds have passed since ``submitted_at`` (default now)."""
    t0 = time.monotonic() if submitted_at is None else submitted_at
    delay, probe = timer.first_delay()
    checks = 0
    try:
        while True:
            time.sleep(max(0.0, t0 + delay - time.monotonic()) if checks == 0 else delay)
            result = check()
            checks += 1
            done = finished(result)
            answered = time.monotonic()
            # done: it was done by the time we were answered; not done: still running when we asked
            timer.observe(done, (answered if done else (last_sent_at() or answered)) - t0, probe)
            probe = False
            if done:
                return result
            if answered - t0 > timeout:
                raise EspError(f"{what} not finished after {timeout:.0f}s")
            delay = timer.retry_delay(checks)
    finally:
        if probe:  # the probe never got an answer: let another job probe
            timer.observe(False, 0.0, probe=True)
