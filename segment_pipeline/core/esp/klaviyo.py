"""Klaviyo client (current JSON:API, revision header, ``Klaviyo-API-Key`` auth).

Only the endpoints the sync needs, shaped exactly as the shipped OpenAPI specs describe them:
lists (find by name, create), profile bulk import jobs (create, poll, import errors), profile
lookup by email (to get ids for list removal) and list membership add/remove. No consent or
subscription data is ever built here and no subscribe/unsubscribe endpoint exists in this module.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from segment_pipeline.core.esp.http import EspClient, EspError, HttpSession, RetryPolicy, find_or_create
from segment_pipeline.core.esp.polling import PollTimer, poll_until
from segment_pipeline.core.warehouse import sql_string as _sql_literal

DEFAULT_BASE_URL = "https://a.klaviyo.com"
#: The API revision of the Klaviyo specs the tests validate against
#: (``segment_pipeline_tests/fakes/specs/klaviyo/*.json``, ``info.version``).
DEFAULT_REVISION = "2026-07-15"
JSONAPI = "application/vnd.api+json"

MAX_IMPORT_PROFILES = 10_000
#: "5MB" per job; we stay under 5,000,000 bytes so either reading of "MB" holds.
MAX_IMPORT_BYTES = 5_000_000
MAX_LIST_MEMBERS_PER_CALL = 1_000
MAX_FILTER_VALUES = 100  # get_profiles page[size] max
_STEADY = [(10, 1.0), (150, 60.0)]
#: Documented per-endpoint limits (burst per second, steady per minute), ``x-klaviyo-ratelimit``.
DEFAULT_LIMITS: dict[str, list[tuple[int, float]]] = {
    "bulk_import_profiles": _STEADY,
    "get_bulk_import_profiles_job": _STEADY,
    "get_errors_for_bulk_import_profiles_job": _STEADY,
    "add_profiles_to_list": _STEADY,
    "remove_profiles_from_list": _STEADY,
    "create_list": [(10, 1.0), (150, 60.0), (150, 86400.0)],
    "get_lists": [(75, 1.0), (750, 60.0)],
    "get_profiles": [(75, 1.0), (750, 60.0)],
    #: data-privacy deletion jobs: burst 3/s, steady 60/m (``x-klaviyo-ratelimit`` of
    #: ``request_profile_deletion.json``)
    "request_profile_deletion": [(3, 1.0), (60, 60.0)],
}


@dataclass(frozen=True)
class ImportJob:
    id: str
    status: str
    total: int
    completed: int
    failed: int


@dataclass(frozen=True)
class ImportError_:
    email: str | None
    reason: str


def profile_item(email: str, property_name: str, segments: Sequence[str]) -> bytes:
    """One ``ProfileUpsertQueryResourceObject``, pre-encoded (so batches can be sized in bytes)."""
    item = {"type": "profile", "attributes": {"email": email, "properties": {property_name: list(segments)}}}
    return json.dumps(item, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


_ENVELOPE_HEAD = b'{"data":{"type":"profile-bulk-import-job","attributes":{"profiles":{"data":['


def import_body(items: Sequence[bytes], list_id: str | None) -> bytes:
    """A ``ProfileImportJobCreateQuery`` from pre-encoded profile items (optionally adding them to a list)."""
    return import_body_joined(b",".join(items), list_id)


def import_body_joined(joined_items: bytes, list_id: str | None) -> bytes:
    """:func:`import_body` from items already joined with commas (one contiguous buffer)."""
    tail = b"]}}"
    if list_id is not None:
        rel = {"lists": {"data": [{"type": "list", "id": list_id}]}}
        tail += b',"relationships":' + json.dumps(rel, separators=(",", ":")).encode()
    return b"".join((_ENVELOPE_HEAD, joined_items, tail, b"}}"))


def profile_item_sql(property_name: str, email: str = "email", segments: str = "segments") -> str:
    """A DuckDB expression giving :func:`profile_item`'s JSON text for each row, plus a trailing comma.

    ``segments`` is the canonical JSON list text from the plan (DuckDB ``to_json``), embedded as is;
    the email goes through ``to_json`` (escaping). Items of a batch are then one contiguous buffer:
    the concatenation of the rows' texts minus the last comma, with no per-row Python work.
    """
    prefix = '{"type":"profile","attributes":{"email":'
    middle = ',"properties":{' + json.dumps(property_name, ensure_ascii=False) + ":"
    return (f"({_sql_literal(prefix)} || to_json({email})::VARCHAR || {_sql_literal(middle)} || {segments} "
            "|| '}}},')")


#: Bytes of an import body besides the items themselves (commas included), for batch sizing.
IMPORT_OVERHEAD_BYTES = len(import_body([], "x" * 64)) + 64


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


class KlaviyoClient(EspClient):
    def __init__(
        self,
        api_key: str,
        *,
        base_url: str = DEFAULT_BASE_URL,
        revision: str = DEFAULT_REVISION,
        policy: RetryPolicy | None = None,
        limits: Mapping[str, list[tuple[int, float]]] | None = None,
        pool_size: int = 16,
        poll_initial: float = 1.0,
        poll_max: float = 10.0,
        job_timeout: float = 3600.0,
    ):
        if not api_key:
            raise ValueError("a Klaviyo private API key is required")
        self.http = HttpSession(
            base_url, service="klaviyo",
            headers={"Authorization": f"Klaviyo-API-Key {api_key}", "revision": revision, "Accept": JSONAPI},
            families={**DEFAULT_LIMITS, **(limits or {})}, policy=policy, pool_size=pool_size,
        )
        self.base_url = base_url.rstrip("/")
        self.poll_initial, self.poll_max, self.job_timeout = poll_initial, poll_max, job_timeout
        #: Learns how long import jobs take, to poll each about once (see :meth:`wait_import`).
        self.poll_timer = PollTimer(poll_initial, poll_max)

    def _get_pages(self, path: str, params: dict[str, Any] | None, family: str) -> Iterable[dict[str, Any]]:
        while path:
            body = self.http.request("GET", path, family=family, params=params).json()
            yield from body.get("data") or []
            nxt = (body.get("links") or {}).get("next")
            if not nxt:
                return
            parts = urlsplit(nxt)
            path, params = parts.path + (f"?{parts.query}" if parts.query else ""), None

    # -- lists ---------------------------------------------------------------------------
    def find_list(self, name: str) -> str | None:
        """The id of the list called ``name`` (the oldest one if several exist), else None."""
        found = [
            (d["attributes"].get("created") or "", d["id"])
            for d in self._get_pages("/api/lists", {"filter": f"equals(name,{_quote(name)})"}, "get_lists")
            if d.get("attributes", {}).get("name") == name
        ]
        return min(found)[1] if found else None

    def create_list(self, name: str) -> str:
        body = {"data": {"type": "list", "attributes": {"name": name}}}
        resp = self.http.request("POST", "/api/lists", family="create_list", json_body=body,
                                 content_type=JSONAPI, expect=(201,), idempotent=False)
        return resp.json()["data"]["id"]

    def ensure_list(self, name: str, attempts: int = 5) -> str:
        """Find the list by name, creating it once if missing; a failed create is re-checked first."""
        return find_or_create(lambda: self.find_list(name), lambda: self.create_list(name),
                              f"klaviyo: could not ensure list {name!r}", attempts)

    # -- bulk import ---------------------------------------------------------------------
    def submit_import(self, body: bytes) -> str:
        if len(body) > MAX_IMPORT_BYTES:
            raise ValueError(f"import body of {len(body)} bytes exceeds {MAX_IMPORT_BYTES}")
        resp = self.http.request("POST", "/api/profile-bulk-import-jobs", family="bulk_import_profiles",
                                 data=body, content_type=JSONAPI, expect=(202,))
        return resp.json()["data"]["id"]

    def get_import(self, job_id: str) -> ImportJob:
        data = self.http.request("GET", f"/api/profile-bulk-import-jobs/{job_id}",
                                 family="get_bulk_import_profiles_job").json()["data"]
        a = data["attributes"]
        return ImportJob(job_id, a["status"], a.get("total_count") or 0, a.get("completed_count") or 0,
                         a.get("failed_count") or 0)

    def wait_import(self, job_id: str, submitted_at: float | None = None) -> ImportJob:
        """Poll until the job is complete (or cancelled); ``submitted_at`` defaults to now.

        Job polls have the same budget as imports (10/s, 150/min), so at full speed there is about
        one poll per job to spend: :class:`PollTimer` learns how long jobs take and times each
        job's first poll to find it done; after a miss the next polls come soon, then back off.
        """
        job = poll_until(self.poll_timer, lambda: self.get_import(job_id),
                         lambda j: j.status in ("complete", "cancelled"), timeout=self.job_timeout,
                         what=f"klaviyo import job {job_id}", submitted_at=submitted_at)
        if job.status == "cancelled":
            raise EspError(f"klaviyo import job {job_id} was cancelled")
        return job

    def import_errors(self, job_id: str) -> list[ImportError_]:
        out = []
        for err in self._get_pages(f"/api/profile-bulk-import-jobs/{job_id}/import-errors", {"page[size]": 100},
                                   "get_errors_for_bulk_import_profiles_job"):
            a = err.get("attributes") or {}
            payload = a.get("original_payload") or {}
            email = payload.get("email") or (payload.get("attributes") or {}).get("email")
            out.append(ImportError_(email, f"{a.get('code', 'error')}: {a.get('detail') or a.get('title')}"[:500]))
        return out

    # -- profiles and list membership ----------------------------------------------------
    def profile_ids(self, emails: Sequence[str]) -> dict[str, str]:
        """``email -> profile id`` for the emails that exist (100 per lookup)."""
        out: dict[str, str] = {}
        for i in range(0, len(emails), MAX_FILTER_VALUES):
            chunk = emails[i:i + MAX_FILTER_VALUES]
            params = {"filter": f"any(email,[{','.join(_quote(e) for e in chunk)}])",
                      "fields[profile]": "email", "page[size]": MAX_FILTER_VALUES}
            for d in self._get_pages("/api/profiles", params, "get_profiles"):
                email = (d.get("attributes") or {}).get("email")
                if email:
                    out[email] = d["id"]
        return out

    def _members(self, method: str, family: str, list_id: str, profile_ids: Sequence[str]) -> int:
        calls = 0
        for i in range(0, len(profile_ids), MAX_LIST_MEMBERS_PER_CALL):
            chunk = profile_ids[i:i + MAX_LIST_MEMBERS_PER_CALL]
            body = {"data": [{"type": "profile", "id": pid} for pid in chunk]}
            self.http.request(method, f"/api/lists/{list_id}/relationships/profiles", family=family,
                              json_body=body, content_type=JSONAPI, expect=(204,))
            calls += 1
        return calls

    def add_to_list(self, list_id: str, profile_ids: Sequence[str]) -> int:
        return self._members("POST", "add_profiles_to_list", list_id, profile_ids)

    def remove_from_list(self, list_id: str, profile_ids: Sequence[str]) -> int:
        return self._members("DELETE", "remove_profiles_from_list", list_id, profile_ids)

    # -- data privacy (issue 15) -----------------------------------------------------------
    def request_deletion(self, email: str) -> None:
        """Ask Klaviyo to delete every profile with this email: ``POST /api/data-privacy-deletion-jobs``
        (``DataPrivacyCreateDeletionJobQuery``, one identifier per request, answered ``202`` without a
        body; the deletion itself happens later, asynchronously), key scope ``data-privacy:write``,
        rate limit burst 3/s, steady 60/m
        (https://developers.klaviyo.com/en/reference/request_profile_deletion and its OpenAPI spec,
        ``segment_pipeline_tests/fakes/specs/klaviyo/request_profile_deletion.json``). Asking twice
        is harmless, so the call is retried on faults. Errors name the path only, never the address.
        Confirm with :meth:`profile_ids` (the profile is no longer found)."""
        body = {"data": {"type": "data-privacy-deletion-job",
                         "attributes": {"profile": {"data": {"type": "profile", "attributes": {"email": email}}}}}}
        self.http.request("POST", "/api/data-privacy-deletion-jobs", family="request_profile_deletion",
                          json_body=body, content_type=JSONAPI, expect=(202,))
