"""A retrying, rate-limited HTTP session shared by the ESP clients.

* Client-side pacing: each endpoint *family* has its documented limits (e.g. Klaviyo bulk import:
  10 per second and 150 per minute); :class:`RateLimiter` keeps a sliding log per window and makes
  a caller wait until a request fits every window, so a well-behaved run rarely sees a 429. In
  the per-second windows a request with a large body (an import job) has its slot stamped
  shortly after its last byte was handed to the socket (the server counts it on receipt), not
  when the answer came back: the server's processing of the body after counting would otherwise
  be charged to every window. Small requests and the per-minute windows go by the answer time,
  which is certainly after the server counted the request.
* Server push-back: a 429 pauses the whole family for ``Retry-After`` seconds, or without that
  header (with ``epoch_reset_headers``, Braze) until ``X-RateLimit-Reset`` (UTC epoch seconds),
  plus jitter, and doubles the family's allowance for the server's receipt delay (a slot is never stamped later
  than the answer, which certainly came after the server counted the request).
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
from typing import Any, TypeVar

import requests
import urllib3.connection
import urllib3.connectionpool
from requests.adapters import HTTPAdapter

T = TypeVar("T")

RETRYABLE_STATUS = frozenset({429, 500, 502, 503, 504})
#: Bodies from this size on are stamped by when they were sent, not answered (see HttpSession).
LARGE_BODY_BYTES = 64 * 1024


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

    A request occupies a slot in every window from the moment it is admitted (:meth:`acquire`)
    until it is settled (:meth:`settle`): the server may count it at any moment until it answers.
    Settling gives the slot two times: ``at``, our best estimate of when the server counted it
    (the caller passes when the request was fully sent plus an allowance), and the answer time,
    by which the server certainly had counted it.

    Short windows (under ``long_window`` seconds, the per-second burst limits) use the estimate: a
    misjudged request costs a 429 and a retry a second later. Long windows (per-minute, per-day)
    use the answer time: a 429 there can mean a pause of up to a minute, while waiting for answers
    costs a fraction of a percent of such a window. ``margin`` (default 0.5%) widens every window
    to absorb clock granularity.
    """

    def __init__(self, limits: Iterable[tuple[int, float]], margin: float = 0.005, min_interval: float = 0.0,
                 clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep,
                 long_window: float = 10.0):
        self.limits = [(int(n), float(w) * (1.0 + margin)) for n, w in limits]
        #: per window: index of the slot time it goes by (0: estimated receipt, 2: answer)
        self._stamp = [2 if w >= long_window else 0 for _n, w in limits]
        #: Least time between two admissions. A burst of n large requests sent at once is served
        #: concurrently, so the server reads (and counts) them late and unevenly; spacing them a
        #: little lets each arrive before the next.
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
            k = self._stamp[i]
            # a request still waiting for its answer stays in every window: the server may count
            # it at any moment until then (its cell's times are only final once settled)
            log = self._logs[i] = [cell for cell in self._logs[i] if not cell[1] or cell[k] > now - w]
            if len(log) >= n:
                times = sorted(cell[k] if cell[1] else max(cell[k], now) for cell in log)
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
                    cell = [now, 0.0 if settle_later else 1.0, now]  # [estimated receipt, settled, answer]
                    for log in self._logs:
                        log.append(cell)
                    return cell
            self.waited_seconds += wait
            self._sleep(wait)

    def release(self, cell: list[float]) -> None:
        """Give an admitted request's slot back (the server refused it without counting it)."""
        with self._lock:
            for log in self._logs:
                for i, c in enumerate(log):
                    if c is cell:
                        del log[i]
                        break

    def settle(self, cell: list[float], at: float | None = None) -> None:
        """The request was answered (or failed) now; ``at`` is when the server probably counted it
        (default: now). Neither time moves the slot earlier than its admission."""
        with self._lock:
            now = self._clock()
            cell[0] = max(cell[0], now if at is None else min(at, now))
            cell[2] = max(cell[2], now)
            cell[1] = 1.0


# -- when was a request fully sent? ---------------------------------------------------------
_sent = threading.local()


def _mark_sent() -> None:
    _sent.at = time.monotonic()


def last_sent_at() -> float | None:
    """When this thread's latest request was fully sent (``time.monotonic()``), if known."""
    return getattr(_sent, "at", None)


class _TimedHTTPConnection(urllib3.connection.HTTPConnection):
    """Notes (per thread) when the request, body included, has been written to the socket."""

    def request(self, *args: Any, **kwargs: Any) -> None:  # type: ignore[override]
        super().request(*args, **kwargs)
        _mark_sent()


class _TimedHTTPSConnection(urllib3.connection.HTTPSConnection):
    def request(self, *args: Any, **kwargs: Any) -> None:  # type: ignore[override]
        super().request(*args, **kwargs)
        _mark_sent()


class _TimedHTTPPool(urllib3.connectionpool.HTTPConnectionPool):
    ConnectionCls = _TimedHTTPConnection


class _TimedHTTPSPool(urllib3.connectionpool.HTTPSConnectionPool):
    ConnectionCls = _TimedHTTPSConnection


class _TimedAdapter(HTTPAdapter):
    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {"http": _TimedHTTPPool, "https": _TimedHTTPSPool}


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


def rate_limit_wait(headers: Mapping[str, str], default: float) -> float:
    """Seconds to wait before the next request of a family the server refused (429) or reported
    exhausted: ``Retry-After`` if given, else until ``X-RateLimit-Reset`` (UTC epoch seconds, the
    header Braze documents with ``X-RateLimit-Limit``/``-Remaining``:
    https://www.braze.com/docs/api/api_limits/#monitoring-your-rate-limits), else ``default``."""
    retry_after = headers.get("Retry-After")
    if retry_after:
        return retry_after_seconds(retry_after, default)
    reset = headers.get("X-RateLimit-Reset")
    if reset:
        try:
            return max(0.0, float(reset) - time.time())
        except ValueError:
            pass
    return default


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
    (the server's 429 still is honoured). A paced request with a large body has its slot stamped
    ``receipt_allowance`` seconds after its last byte was sent (the server counts it on receipt:
    network transit and its reading of the headers), or at its answer if that came sooner; each
    429 in a family doubles that family's allowance (plus 20 ms), up to ``max_receipt_allowance``.
    A 429 gives the slot back (the server did not count it). ``spacing`` keeps consecutive
    requests of a family at least ``spacing * window / n`` apart for its per-second (burst) limit,
    if it has one (0.4: a 10/s burst limit spaces requests 40 ms apart, so ten of them still fit
    in 0.4 s, and big uploads do not arrive at the server all at once).
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
        spacing: float = 0.4,
        receipt_allowance: float = 0.05,
        max_receipt_allowance: float = 2.0,
        epoch_reset_headers: bool = False,
        throttle: Callable[[requests.Response], float | None] | None = None,
    ):
        self.base_url = base_url.rstrip("/")
        self.service = service
        self.policy = policy or RetryPolicy()
        self.stats = HttpStats()
        self._rng = rng or random.Random()
        self._limiters = {name: RateLimiter(limits, min_interval=spacing * _burst_interval(limits))
                          for name, limits in (families or {}).items()}
        self.receipt_allowance = receipt_allowance
        self.max_receipt_allowance = max_receipt_allowance
        #: The service sends ``X-RateLimit-Remaining`` / ``X-RateLimit-Reset`` (UTC epoch seconds), as
        #: Braze documents: honour them. Off by default: other services use these names differently.
        self.epoch_reset_headers = epoch_reset_headers
        #: For services that signal throttling other than by 429 (Meta: HTTP 400 with error code
        #: 17/80003): given an answer that is not expected, the seconds to wait if it is a
        #: throttling answer (0: no hint, back off), else None. Handled exactly like a 429.
        self.throttle = throttle
        #: Per family: seconds between our last byte and the server counting the request, as
        #: assumed when stamping its slots (grows with every 429 the family draws).
        self.allowance: dict[str, float] = {}
        self._session = requests.Session()
        adapter = _TimedAdapter(pool_connections=4, pool_maxsize=pool_size, max_retries=0)
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

    def _receipt_estimate(self, family: str, data: bytes | None) -> float | None:
        """When the server probably counted the request just answered on this thread (None: when
        it answered). A small request is answered right after it is counted, so its answer time
        is both safe and tight; a large body is counted on arrival but answered only after the
        server has processed it, so it is stamped when fully sent plus the family's allowance."""
        sent_at = getattr(_sent, "at", None)
        if sent_at is None or len(data or b"") < LARGE_BODY_BYTES:
            return None
        return sent_at + self.allowance.get(family, self.receipt_allowance)

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
            throttled = False
            _sent.at = None
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
                    if self.epoch_reset_headers and limiter is not None \
                            and resp.headers.get("X-RateLimit-Remaining") == "0":
                        # the server says this window is used up: nothing more until it resets
                        limiter.pause_until(time.monotonic() + min(rate_limit_wait(resp.headers, 0.0), 3600.0))
                    return resp
                status = resp.status_code
                last = f"HTTP {status}{_error_title(resp)}"
                hint = self.throttle(resp) if self.throttle is not None and status != 429 else None
                if status in (401, 403) and hint is None:  # (Meta may throttle with a 403)
                    raise EspAuthError(f"{what}: {last} (check the API credentials and scopes)", status)
                if status == 429 or hint is not None:
                    throttled = True
                    self.stats.add(throttled=1)
                    backoff = self._backoff(attempt)
                    wait = min(rate_limit_wait(resp.headers, backoff), 3600.0) if self.epoch_reset_headers \
                        else retry_after_seconds(resp.headers.get("Retry-After"), backoff)
                    if hint:
                        wait = max(wait, hint)
                    wait += self._rng.uniform(0, min(1.0, 0.1 + wait * 0.1))
                    if limiter is not None:
                        limiter.pause_until(time.monotonic() + wait)
                        a = self.allowance.get(family, self.receipt_allowance)
                        self.allowance[family] = min(self.max_receipt_allowance, 2 * a + 0.02)
                elif status in RETRYABLE_STATUS:
                    self.stats.add(faults=1)
                    if not idempotent:
                        raise EspAmbiguous(f"{what}: {last}; the server may have acted on it", status)
                else:
                    raise EspError(f"{what}: {last}", status)
            finally:
                if slot is not None:
                    if throttled:
                        limiter.release(slot)  # refused: the server did not count it against its limit
                    else:
                        limiter.settle(slot, self._receipt_estimate(family, data))
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
        err = body.get("error")  # Graph API style: {"error": {"message", "code", ...}}
        if isinstance(err, dict):
            title = title or (f"{err.get('message')} (code {err.get('code')})" if err.get("message") else None)
        title = title or body.get("message")
    return f": {str(title)[:200]}" if title else ""


class EspClient:
    """What the email platform clients share: a paced session (``http``) and its counters."""

    http: HttpSession

    @property
    def stats(self) -> HttpStats:
        return self.http.stats

    def close(self) -> None:
        self.http.close()


def find_or_create(find: Callable[[], T | None], create: Callable[[], T], what: str, attempts: int = 5) -> T:
    """Find a container (list, address book, data field) by name, else create it once.

    A create that failed in a way where the server may have acted (:class:`EspAmbiguous`) is
    followed by another look, never by a blind second create, so no duplicate is ever made.
    """
    last: Exception | None = None
    for _ in range(attempts):
        found = find()
        if found is not None:
            return found
        try:
            return create()
        except EspAmbiguous as exc:  # may or may not exist now: look again before retrying
            last = exc
            time.sleep(0.2)
    raise EspError(f"{what}: {last}")
