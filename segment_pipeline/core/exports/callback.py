"""Tell a partner an export is ready: POST JSON to their ``callback_endpoint``, with retries.

The export is published *before* the callback is attempted, so a callback that keeps failing
never loses the export; the outcome is returned (and recorded by the caller), never raised.
Retried: connection errors, timeouts, HTTP 408/425/429 and 5xx, with exponential backoff.
Not retried: other 4xx (the endpoint rejects the request; retrying would not help).
"""

from __future__ import annotations

import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field

import requests

RETRYABLE_STATUS = frozenset({408, 425, 429})


@dataclass
class CallbackResult:
    delivered: bool
    attempts: int
    status_code: int | None = None
    error: str | None = None
    history: list[str] = field(default_factory=list)


def validate_endpoint(url: str) -> str:
    parsed = urllib.parse.urlsplit(url or "")
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise ValueError(f"callback_endpoint must be an http(s) URL, got {redact(url)!r}")
    return url


def redact(url: str) -> str:
    """The endpoint without credentials, path or query (which may hold tokens): safe to log."""
    try:
        parsed = urllib.parse.urlsplit(url or "")
    except ValueError:
        return "<unparseable url>"
    if not parsed.scheme or not parsed.hostname:
        return "<invalid url>"
    port = f":{parsed.port}" if parsed.port else ""
    return f"{parsed.scheme}://{parsed.hostname}{port}/…"


def post_callback(
    url: str,
    payload: dict,
    *,
    attempts: int = 5,
    backoff_seconds: float = 1.0,
    max_backoff_seconds: float = 60.0,
    timeout_seconds: float = 10.0,
    bearer_token: str | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> CallbackResult:
    validate_endpoint(url)
    headers = {"Content-Type": "application/json"}
    if bearer_token:
        headers["Authorization"] = f"Bearer {bearer_token}"
    history: list[str] = []
    status: int | None = None
    error: str | None = None
    for attempt in range(1, max(1, attempts) + 1):
        try:
            response = requests.post(url, json=payload, headers=headers, timeout=timeout_seconds)
            status = response.status_code
            if 200 <= status < 300:
                history.append(f"attempt {attempt}: HTTP {status}")
                return CallbackResult(True, attempt, status, None, history)
            error = f"HTTP {status}"
            retryable = status >= 500 or status in RETRYABLE_STATUS
        except requests.RequestException as exc:
            status, error, retryable = None, f"{type(exc).__name__}", True
        history.append(f"attempt {attempt}: {error}")
        if not retryable or attempt >= attempts:
            break
        sleep(min(max_backoff_seconds, backoff_seconds * 2 ** (attempt - 1)))
    return CallbackResult(False, len(history), status, error, history)
