"""Meta Marketing API client for customer-file Custom Audiences (only what the sync needs).

Endpoints (Graph API, ``https://graph.facebook.com/<version>``; facts and pages in
``segment_pipeline_tests/fakes/specs/meta/FACTS.md``):

* ``GET /act_<ad_account_id>/customaudiences?fields=id,name,subtype`` (paged): find an audience by
  name (https://developers.facebook.com/docs/marketing-api/reference/ad-account/customaudiences);
* ``POST /act_<ad_account_id>/customaudiences`` with ``name``, ``subtype=CUSTOM``,
  ``customer_file_source`` and ``description``: create one;
* ``POST /<audience_id>/users`` (add) and ``DELETE /<audience_id>/users`` (remove) with
  ``payload={"schema": "EMAIL_SHA256", "data": [<hash>, ...]}``, at most 10,000 records per call
  ("You can add an unlimited number of records for an audience, but only a maximum of 10000 at a
  time", https://developers.facebook.com/docs/marketing-api/reference/custom-audience/users). The
  answer counts ``num_received`` and ``num_invalid_entries``; matching happens later at Meta.

Authentication: the ``access_token`` parameter, sent in the JSON body (POST/DELETE) or the query
(GET), never in a header we log; error messages carry method and path only.

Rate limits: custom-audience calls count against the ad account's Business Use Case limit
``custom_audience``, per hour: at least 190,000 (standard tier) or 5,000 (development tier)
+ 40 x active custom audiences, at most 700,000
(https://developers.facebook.com/docs/marketing-apis/rate-limiting). The client paces by
``calls_per_hour`` (default the development-tier floor, 5,000: safe for any app). A throttled call
(HTTP 400/403 with error code 17, 4, 613 or 80003) is paused and retried like a 429; the wait is
the ``estimated_time_to_regain_access`` (minutes) of the ``X-Business-Use-Case-Usage`` header when
given, else capped exponential backoff.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import requests

from segment_pipeline.core.esp.http import EspClient, EspError, HttpSession, RetryPolicy, find_or_create

DEFAULT_BASE_URL = "https://graph.facebook.com"
DEFAULT_API_VERSION = "v25.0"
MAX_USERS_PER_CALL = 10_000
#: Development-tier floor of the ``custom_audience`` Business Use Case limit (calls per hour).
DEFAULT_CALLS_PER_HOUR = 5_000
#: Graph API error codes that mean "throttled" (rate-limiting page; 80003 is the custom-audience
#: Business Use Case code).
THROTTLE_CODES = frozenset({4, 17, 613, 80003})
CUSTOMER_FILE_SOURCE = "USER_PROVIDED_ONLY"
#: The JSON text before and after the records of a users call (``schema`` in the single-key form).
USERS_HEAD = b'{"payload":{"schema":"EMAIL_SHA256","data":['
USERS_TAIL = b"]}}"
#: Bytes of a hash record: 64 hex characters, two quotes and the separating comma.
RECORD_BYTES = 67


@dataclass(frozen=True)
class UsersResult:
    """Meta's answer to one users call: ``num_received``, ``num_invalid_entries`` and the session id."""

    audience_id: str
    received: int
    invalid: int
    session_id: str = ""
    invalid_samples: tuple[str, ...] = ()


def throttle_wait(resp: requests.Response) -> float | None:
    """Seconds to wait when ``resp`` is a Graph API throttling error, else None (see module doc)."""
    if resp.status_code not in (400, 403):
        return None
    try:
        code = (resp.json().get("error") or {}).get("code")
    except (ValueError, AttributeError):
        return None
    if code not in THROTTLE_CODES:
        return None
    minutes = 0.0
    try:
        usage = json.loads(resp.headers.get("X-Business-Use-Case-Usage") or "{}")
        for entries in usage.values():
            for e in entries:
                minutes = max(minutes, float(e.get("estimated_time_to_regain_access") or 0))
    except (ValueError, TypeError, AttributeError):
        pass
    return minutes * 60.0


class MetaClient(EspClient):
    def __init__(
        self,
        access_token: str,
        ad_account_id: str,
        *,
        base_url: str = DEFAULT_BASE_URL,
        api_version: str = DEFAULT_API_VERSION,
        calls_per_hour: int = DEFAULT_CALLS_PER_HOUR,
        window_seconds: float = 3600.0,
        policy: RetryPolicy | None = None,
        pool_size: int = 8,
    ):
        if not access_token:
            raise ValueError("a Meta access token is required")
        account = str(ad_account_id).removeprefix("act_")
        if not account.isdigit():
            raise ValueError(f"META_AD_ACCOUNT_ID must be the numeric ad account id (act_ prefix optional), "
                             f"got {str(ad_account_id)[:40]!r}")
        self.ad_account_id = account
        self.api_version = api_version.strip("/")
        self._token = access_token
        #: ``custom_audience`` calls per ``window_seconds`` (one family: every call here counts)
        self.limits = {"custom_audience": [(int(calls_per_hour), float(window_seconds))]}
        self.http = HttpSession(f"{base_url.rstrip('/')}/{self.api_version}", service="meta",
                                families=self.limits, policy=policy, pool_size=pool_size, throttle=throttle_wait)
        self.base_url = base_url.rstrip("/")

    @property
    def account_url(self) -> str:
        """Service identity for the mirror: base URL and ad account (no secret)."""
        return f"{self.base_url}/act_{self.ad_account_id}"

    def _get_pages(self, path: str, params: dict[str, Any]) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        params = {**params, "access_token": self._token}
        while path:
            body = self.http.request("GET", path, family="custom_audience", params=params).json()
            out.extend(body.get("data") or [])
            nxt = (body.get("paging") or {}).get("next")
            if not nxt:
                break
            parts = urlsplit(nxt)
            # the next link carries our token in its query: rebuild it from the cursor instead
            after = (body.get("paging") or {}).get("cursors", {}).get("after")
            if not after:
                break
            path = parts.path.removeprefix(f"/{self.api_version}")
            params = {k: v for k, v in params.items() if k != "after"} | {"after": after}
        return out

    # -- audiences -------------------------------------------------------------------------
    def find_audience(self, name: str) -> str | None:
        """The id of the customer-file custom audience called ``name`` (the lowest id if several)."""
        rows = self._get_pages(f"/act_{self.ad_account_id}/customaudiences",
                               {"fields": "id,name,subtype", "limit": 500})
        found = [r["id"] for r in rows if r.get("name") == name and r.get("subtype", "CUSTOM") == "CUSTOM"]
        return min(found, key=lambda i: (len(i), i)) if found else None

    def create_audience(self, name: str, description: str = "") -> str:
        body = {"name": name, "subtype": "CUSTOM", "customer_file_source": CUSTOMER_FILE_SOURCE,
                "description": description, "access_token": self._token}
        resp = self.http.request("POST", f"/act_{self.ad_account_id}/customaudiences", family="custom_audience",
                                 json_body=body, content_type="application/json", expect=(200,), idempotent=False)
        return str(resp.json()["id"])

    def ensure_audience(self, name: str, description: str = "", attempts: int = 5) -> str:
        """Find the audience by name, creating it once if missing (a failed create is re-checked first)."""
        return find_or_create(lambda: self.find_audience(name), lambda: self.create_audience(name, description),
                              f"meta: could not ensure custom audience {name!r}", attempts)

    # -- members ----------------------------------------------------------------------------
    def _authed(self, body: bytes) -> bytes:
        """``body`` (a JSON object) with ``access_token`` added as its first member."""
        return b'{"access_token":' + json.dumps(self._token).encode() + b"," + body[1:]

    def users(self, method: str, audience_id: str, body: bytes) -> UsersResult:
        """Send one users call (``POST``: add, ``DELETE``: remove) whose JSON ``body`` is built by
        :func:`users_body`; return Meta's counts. Adding or removing the same hash twice is
        harmless, so the call is retried on faults."""
        if method not in ("POST", "DELETE"):
            raise ValueError(method)
        resp = self.http.request(method, f"/{audience_id}/users", family="custom_audience", data=self._authed(body),
                                 content_type="application/json", expect=(200,))
        a = resp.json()
        if "num_received" not in a:
            raise EspError(f"meta {method} /{audience_id}/users: answer without num_received")
        samples = a.get("invalid_entry_samples") or {}
        return UsersResult(str(a.get("audience_id", audience_id)), int(a["num_received"]),
                           int(a.get("num_invalid_entries") or 0), str(a.get("session_id", "")),
                           tuple(samples) if isinstance(samples, Mapping | list) else ())


def users_body(records: bytes) -> bytes:
    """A users call body from hash records joined by commas (no trailing comma)."""
    return USERS_HEAD + records + USERS_TAIL
