"""Per-key token buckets for the segment API (plain logic, thread-safe, no HTTP).

Each key (an authenticated credential id, or a client address for failed authentications) has a
bucket of ``burst`` requests refilled at ``rate`` per second. :meth:`RateLimiter.hit` takes one
token and returns 0, or the seconds to wait before the next request would be allowed (the value
for ``Retry-After``). Buckets idle long enough to be full again are forgotten, so the table stays
bounded by the number of recently active keys.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable


class RateLimiter:
    def __init__(self, rate: float, burst: int, *, clock: Callable[[], float] = time.monotonic, max_keys: int = 100_000):
        if rate <= 0 or burst < 1:
            raise ValueError(f"rate limit needs rate > 0 and burst >= 1 (got rate={rate}, burst={burst})")
        self.rate = float(rate)
        self.burst = int(burst)
        self.clock = clock
        self.max_keys = max_keys
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, last refill time)
        self._lock = threading.Lock()

    def hit(self, key: str, cost: float = 1.0) -> float:
        """Spend ``cost`` for ``key``: 0.0 when allowed, else seconds until it would be."""
        now = self.clock()
        with self._lock:
            tokens, last = self._buckets.get(key, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - last) * self.rate)
            if tokens >= cost:
                self._buckets[key] = (tokens - cost, now)
                allowed = 0.0
            else:
                self._buckets[key] = (tokens, now)
                allowed = (cost - tokens) / self.rate
            if len(self._buckets) > self.max_keys:
                self._prune(now)
        return allowed

    def peek(self, key: str, cost: float = 1.0) -> float:
        """Like :meth:`hit` but spends nothing: 0.0 if ``cost`` is available now."""
        now = self.clock()
        with self._lock:
            tokens, last = self._buckets.get(key, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - last) * self.rate)
        return 0.0 if tokens >= cost else (cost - tokens) / self.rate

    @staticmethod
    def retry_after_header(wait: float) -> str:
        """``Retry-After`` is whole seconds: round up, never 0."""
        return str(max(1, math.ceil(wait)))

    def _prune(self, now: float) -> None:
        full_after = self.burst / self.rate
        for key, (_tokens, last) in list(self._buckets.items()):
            if now - last >= full_after:
                del self._buckets[key]
