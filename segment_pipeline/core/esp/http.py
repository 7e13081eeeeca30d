"""A retrying, rate-limited HTTP session shared by the ESP clients.

* Client-side pacing: each endpoint *family* has its documented limits (e.g. Klaviyo bulk import:
  10 per second and 150 per minute); :class:`RateLimiter` keeps a sliding log per window and makes
  a caller wait until a request fits every window, so a well-behaved run rarely sees a 429.
* Server push-back: a 429 pauses the whole family for ``Retry-After`` seconds (plus jitter).
* Faults: 5xx, timeouts and dropped connections are retried with capped exponential backoff and
  full jitter, for at most ``max_elapsed`` seconds per call; then :class:`EspGiveUp` is raised.
* Non-idempotent calls (``idempotent=False``, e.g. "create list") are only retried when the server
  certainly did not act on them (429, connection refused); any other failure raises
  :class:`EspAmbiguous` so the caller can look before it tries again (no duplicate lists).

Nothing here ever logs or formats request headers: credentials travel only in headers, so error
messages (method, path, status, a short server error title) cannot carry them.
"""

from __future__ import annotations

import collections
import email.utils
import random
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import requests
from requests.adapters import HTTPAdapter

RETRYABLE_STATUS = frozenset({429, 500, 502, 503, 504})


class EspError(RuntimeError):
    """A request to an email platform failed for good (never contains credentials)."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


class EspAuthError(EspError):
    """401/403: the credentials are wrong or lack a scope. Not retried."""


class EspGiveUp(EspError):
    """Retries exhausted: the bounded time for one call ran out."""


class EspAmbiguous(EspError):
    """A non-idempotent call failed in a way where the server may or may not have acted."""


class RateLimiter:
    """Sliding-window pacing over several windows at once, e.g. ``[(10, 1.0), (150, 60.0)]``.

    A request occupies a slot in every window from the moment it is admitted (:meth:`acquire`).
    The server counts a request when it *receives* it, which is some time after we send it (body
    upload, queueing on a busy server), so with send-time stamps alone two requests n apart can
    arrive less than a window apart and draw a 429. :meth:`settle` therefore moves the slot's
    timestamp to when the answer came back: the server certainly received the request before
    that, so request ``k`` is only sent a full window after request ``k - n`` was answered. That
    guarantee makes a large safety margin unnecessary; ``margin`` (default 1%) only absorbs clock
    granularity.
    """

    def __init__(self, limits: Iterable[tuple[int, float]], margin: float = 0.01, min_interval: float = 0.0,
                 clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep):
        self.limits = [(int(n), float(w) * (1.0 + margin)) for n, w in limits]
        #: Least time between two admissions. A burst of n large requests sent at once is served
        #: concurrently, so all n answers (and the window's next slots) come back late; spacing
        #: them a little lets each be answered before the next arrives.
        self.min_interval = min_interval
        self._last = float("-inf")
        self._logs: list[list[list[float]]] = [[] for _ in self.limits]
        self._lock = threading.Lock()
        self._paused_until = 0.0
        self._clock = clock
        self._sleep = sleep
        self.waited_seconds = 0.0

    def pause_until(self, t: float) -> None:
        with self._lock:
            self._paused_until = max(self._paused_until, t)

    def _wait_locked(self, now: float) -> float:
        wait = max(self._paused_until - now, self._last + self.min_interval - now)
        if wait > 0:
            return wait
        for i, (n, w) in enumerate(self.limits):
            # a request still waiting for its answer stays in every window: the server may count
            # it at any moment until then (its cell's time is only final once settled)
            log = self._logs[i] = [cell for cell in self._logs[i] if not cell[1] or cell[0] > now - w]
            if len(log) >= n:
                times = sorted(cell[0] if cell[1] else max(cell[0], now) for cell in log)
                wait = max(wait, times[len(times) - n] + w - now)
        return wait

    def acquire(self, settle_later: bool = False) -> list[float]:
        """Block until a request fits every window and take its slot.

        With ``settle_later`` the slot counts as "sent, not yet answered" until :meth:`settle` is
        called with it (which must then happen, also on failure); otherwise it is stamped now.
        """
        while True:
            with self._lock:
                now = self._clock()
                wait = self._wait_locked(now)
                if wait <= 0:
                    self._last = now
                    cell = [now, 0.0 if settle_later else 1.0]  # [time, settled]
                    for log in self._logs:
                        log.append(cell)
                    return cell
            self.waited_seconds += wait
            self._sleep(wait)

    def settle(self, cell: list[float], at: float | None = None) -> None:
        """Move an admitted request's time to ``at`` (default now: when its answer arrived)."""
        with self._lock:
            cell[0] = max(cell[0], self._clock() if at is None else at)
            cell[1] = 1.0


@dataclass
class HttpStats:
    requests: int = 0
    retries: int = 0
    throttled: int = 0  # 429 answers
    faults: int = 0  # 5xx, timeouts, dropped connections
    bytes_sent: int = 0
    by_family: dict[str, int] = field(default_factory=lambda: collections.defaultdict(int))
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, **kw: int) -> None:
        with self._lock:
            for k, v in kw.items():
                setattr(self, k, getattr(self, k) + v)

    def count_family(self, family: str) -> None:
        with self._lock:
            self.by_family[family] += 1


@dataclass(frozen=True)
class RetryPolicy:
    max_elapsed: float = 300.0  # seconds one logical call may take, retries included
    base_delay: float = 0.5
    max_delay: float = 30.0
    connect_timeout: float = 5.0
    read_timeout: float = 60.0


def retry_after_seconds(value: str | None, default: float) -> float:
    """Parse ``Retry-After`` (delta seconds or an HTTP date)."""
    if not value:
        return default
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
        return max(0.0, when.timestamp() - time.time())
    except (TypeError, ValueError):
        return default


class HttpSession:
    """``requests.Session`` plus pacing, retries, a time bound and counters.

    ``families`` maps a family name to its limits; unknown families are not paced client-side
    (the server's 429 still is honoured). ``spacing`` keeps consecutive requests of a family at
    least ``spacing * window / n`` apart for its per-second (burst) limit, if it has one (0.5: a
    10/s burst limit spaces requests 50 ms apart, so ten of them still fit in half a second).
    """

    def __init__(
        self,
        base_url: str,
        *,
        service: str,
        headers: Mapping[str, str] | None = None,
        auth: tuple[str, str] | None = None,
        families: Mapping[str, Iterable[tuple[int, float]]] | None = None,
        policy: RetryPolicy | None = None,
        pool_size: int = 16,
        rng: random.Random | None = None,
        spacing: float = 0.5,
    ):
        self.base_url = base_url.rstrip("/")
        self.service = service
        self.policy = policy or RetryPolicy()
        self.stats = HttpStats()
        self._rng = rng or random.Random()
        self._limiters = {name: RateLimiter(limits, min_interval=spacing * _burst_interval(limits))
                          for name, limits in (families or {}).items()}
        self._session = requests.Session()
        adapter = HTTPAdapter(pool_connections=4, pool_maxsize=pool_size, max_retries=0)
        self._session.mount("http://", adapter)
        self._session.mount("https://", adapter)
        self._session.headers.update(headers or {})
        # no proxies / netrc from the environment: credentials go only where we send them
        self._session.trust_env = False
        if auth:
            self._session.auth = auth

    def close(self) -> None:
        self._session.close()

    def limiter(self, family: str) -> RateLimiter | None:
        return self._limiters.get(family)

    def _backoff(self, attempt: int) -> float:
        cap = min(self.policy.max_delay, self.policy.base_delay * (2**attempt))
        return self._rng.uniform(0, cap)

    def request(
        self,
        method: str,
        path: str,
        *,
        family: str,
        params: Mapping[str, Any] | None = None,
        json_body: Any = None,
        data: bytes | None = None,
        content_type: str | None = None,
        expect: Iterable[int] = (200,),
        idempotent: bool = True,
    ) -> requests.Response:
        """Send one logical request; return the response once its status is in ``expect``."""
        expect = frozenset(expect)
        url = self.base_url + path
        what = f"{self.service} {method} {path.split('?')[0]}"
        headers = {"Content-Type": content_type} if content_type else {}
        if json_body is not None:
            import json as _json

            data = _json.dumps(json_body, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
        start = time.monotonic()
        deadline = start + self.policy.max_elapsed
        limiter = self._limiters.get(family)
        attempt = 0
        last = "no attempt"
        while True:
            slot = limiter.acquire(settle_later=True) if limiter is not None else None
            self.stats.add(requests=1, bytes_sent=len(data or b""))
            self.stats.count_family(family)
            wait: float | None = None
            try:
                resp = self._session.request(
                    method, url, params=params, data=data, headers=headers,
                    timeout=(self.policy.connect_timeout, self.policy.read_timeout),
                )
            except requests.ConnectionError as exc:
                self.stats.add(faults=1)
                refused = _is_refused(exc)
                last = "connection refused" if refused else "connection dropped"
                if not idempotent and not refused:
                    raise EspAmbiguous(f"{what}: {last}; the server may have acted on it") from None
            except requests.Timeout:
                self.stats.add(faults=1)
                last = "timed out"
                if not idempotent:
                    raise EspAmbiguous(f"{what}: timed out; the server may have acted on it") from None
            else:
                if resp.status_code in expect:
                    return resp
                status = resp.status_code
                last = f"HTTP {status}{_error_title(resp)}"
                if status in (401, 403):
                    raise EspAuthError(f"{what}: {last} (check the API credentials and scopes)", status)
                if status == 429:
                    self.stats.add(throttled=1)
                    wait = retry_after_seconds(resp.headers.get("Retry-After"), self._backoff(attempt))
                    wait += self._rng.uniform(0, min(1.0, 0.1 + wait * 0.1))
                    if limiter is not None:
                        limiter.pause_until(time.monotonic() + wait)
                elif status in RETRYABLE_STATUS:
                    self.stats.add(faults=1)
                    if not idempotent:
                        raise EspAmbiguous(f"{what}: {last}; the server may have acted on it", status)
                else:
                    raise EspError(f"{what}: {last}", status)
            finally:
                if slot is not None:  # answered (or failed): the server has certainly counted it by now
                    limiter.settle(slot)
            if wait is None:
                wait = self._backoff(attempt)
            attempt += 1
            if time.monotonic() + wait > deadline:
                raise EspGiveUp(
                    f"{what}: gave up after {attempt} attempts in {time.monotonic() - start:.1f}s "
                    f"(limit {self.policy.max_elapsed:.0f}s); last error: {last}"
                )
            self.stats.add(retries=1)
            time.sleep(wait)


def _burst_interval(limits: Iterable[tuple[int, float]]) -> float:
    """``window / n`` of the tightest per-second (burst) limit; per-minute windows are not smoothed."""
    bursts = [w / n for n, w in limits if w <= 1.0]
    return min(bursts) if bursts else 0.0


def _is_refused(exc: BaseException) -> bool:
    seen = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, ConnectionRefusedError):
            return True
        if "Connection refused" in str(cur) or "NewConnectionError" in type(cur).__name__:
            return True
        cur = cur.__cause__ or cur.__context__ or (cur.args[0] if cur.args and isinstance(cur.args[0], BaseException) else None)
    return False


def _error_title(resp: requests.Response) -> str:
    """A short, credential-free hint from the error body (JSON:API ``errors[0].title`` or ``message``)."""
    try:
        body = resp.json()
    except ValueError:
        return ""
    title = None
    if isinstance(body, dict):
        errs = body.get("errors")
        if isinstance(errs, list) and errs and isinstance(errs[0], dict):
            title = errs[0].get("detail") or errs[0].get("title")
        title = title or body.get("message")
    return f": {str(title)[:200]}" if title else ""
