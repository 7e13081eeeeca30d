"""Braze REST client: ``POST /users/track`` (user attributes objects), the one endpoint a segment sync needs.

Facts it relies on (each with its source page; the test fake enforces the same, see
``segment_pipeline_tests/fakes/specs/braze/FACTS.md``):

* Auth: ``Authorization: Bearer <REST API key>``, key with the ``users.track`` permission; the REST
  endpoint depends on the workspace's instance (``https://rest.iad-01.braze.com``, ...)
  (https://www.braze.com/docs/api/endpoints/user_data/post_user_track/,
  https://www.braze.com/docs/api/basics/#endpoints).
* Body ``{"attributes": [<user attributes object>, ...]}``, at most 75 attributes objects per
  request (https://www.braze.com/docs/api/api_limits/#batch-user-track); every endpoint takes at
  most 4 MB of payload, more is refused with 413
  (https://www.braze.com/docs/api/endpoints/user_data/).
* Answers: ``201`` ``{"message": "success", "attributes_processed": n}``; with non-fatal errors
  ``{"message": "success", "errors": [...]}`` where "any data not affected by an error in the
  errors array will still be processed"; a fatal error answers ``{"message": <fatal error>,
  "errors": [...]}`` (400 and others) (post_user_track, "Responses"). An entry of ``errors`` names
  the refused object as ``{"type": <reason>, "input_array": "attributes", "index": <0-based
  position in that array>}``: the shape Braze answers with, though its page does not spell it out
  (seen in public client code and reports: the FACTS file cites them). An entry without an index
  cannot be tied to a row (the engine then leaves the batch unconfirmed).
* Rate limit: 3,000 requests per three seconds (default, can be raised on request; Monthly Active
  Users CY 24-25 contracts have other limits and at most 50 objects per request)
  (https://www.braze.com/docs/api/api_limits/); every answer carries ``X-RateLimit-Limit``,
  ``X-RateLimit-Remaining`` and ``X-RateLimit-Reset`` (UTC epoch seconds), and a 429 means over
  the limit (same page, "Monitoring your rate limits"). :class:`~segment_pipeline.core.esp.http.HttpSession`
  paces to the limit, pauses the family until ``X-RateLimit-Reset`` when ``Remaining`` reaches 0,
  and after a 429 waits until then too.

No consent or subscription data (``email_subscribe``, ``push_subscribe``, ``subscription_groups``)
is ever built here: the records carry the email identifier and the one array attribute only.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from segment_pipeline.core.esp.http import EspClient, EspError, HttpSession, RetryPolicy
from segment_pipeline.core.warehouse import sql_string as _sql_literal

#: At most this many attributes objects per ``/users/track`` request (source: module docstring).
MAX_OBJECTS_PER_REQUEST = 75
#: Every Braze endpoint refuses payloads over 4 MB; we stay under 4,000,000 bytes so either reading holds.
MAX_BODY_BYTES = 4_000_000
#: Default ``/users/track`` rate limit: 3,000 requests per 3 seconds.
DEFAULT_REQUESTS_PER_WINDOW = 3_000
WINDOW_SECONDS = 3.0
FAMILY = "users_track"
DEFAULT_LIMITS: dict[str, list[tuple[int, float]]] = {FAMILY: [(DEFAULT_REQUESTS_PER_WINDOW, WINDOW_SECONDS)]}
#: ``/users/delete``: at most 50 identifiers of one kind per request, 20,000 requests per minute
#: shared with ``/users/alias/new``, ``/users/identify``, ``/users/merge``
#: (https://www.braze.com/docs/api/endpoints/user_data/post_user_delete/).
DELETE_FAMILY = "users_delete"
MAX_DELETE_IDS = 50
#: ``/users/export/ids``: one ``email_address`` per request; 250 requests per minute for
#: workspaces onboarded since 2024-08-22 (older ones have higher limits)
#: (https://www.braze.com/docs/api/endpoints/export/user_data/post_users_identifier/).
EXPORT_FAMILY = "users_export_ids"
ERASURE_LIMITS: dict[str, list[tuple[int, float]]] = {DELETE_FAMILY: [(20_000, 60.0)], EXPORT_FAMILY: [(250, 60.0)]}
#: Array custom attributes hold 25 elements unless raised per attribute in the dashboard (to 100,
#: more through Braze); longer arrays are truncated by Braze
#: (https://www.braze.com/docs/api/objects_filters/user_attributes_object/, "Custom attribute data types").
DEFAULT_MAX_ARRAY_LENGTH = 25

_HEAD = b'{"attributes":['
_TAIL = b"]}"
#: Bytes of a request besides its records.
REQUEST_OVERHEAD_BYTES = len(_HEAD) + len(_TAIL)


@dataclass(frozen=True)
class ObjectError:
    """One entry of a ``/users/track`` answer's ``errors``: the attributes object's index (None:
    the entry names none) and Braze's reason."""

    index: int | None
    reason: str


@dataclass(frozen=True)
class TrackResult:
    status: int
    message: str
    processed: int | None = None
    errors: tuple[ObjectError, ...] = field(default_factory=tuple)


def track_body(joined_objects: bytes) -> bytes:
    """The ``/users/track`` body for attributes objects already joined with commas."""
    return _HEAD + joined_objects + _TAIL


def attributes_object_sql(attribute: str, clear: bool) -> str:
    """A DuckDB expression rendering one plan row as a user attributes object plus a trailing comma.

    ``{"email": <email>, <attribute>: <value>}`` where the value is, for a clear, ``null`` (Braze
    removes an attribute set to null); for an upsert whose previous value is unknown (``held`` NULL),
    the whole array; else ``{"add": [...], "remove": [...]}`` with only the names that changed
    (either key left out when empty). Only the plan columns ``email``, ``segments`` (JSON list) and
    ``held`` (JSON list or NULL) are used, and no per-row Python work.
    """
    key = _sql_literal("," + json.dumps(attribute, ensure_ascii=False) + ":")
    head = f"'{{\"email\":' || to_json(email)::VARCHAR || {key}"
    if clear:
        return f"({head} || 'null}},')"
    return f"({head} || {segments_value_sql()} || '}},')"


def segments_value_sql() -> str:
    """DuckDB expression: the attribute's value for an upsert plan row: the whole array when the
    previous value is unknown (``held`` NULL), else ``{"add": [...], "remove": [...]}``."""
    want = "from_json(segments, '[\"VARCHAR\"]')"
    have = "from_json(held, '[\"VARCHAR\"]')"
    add = f"list_filter({want}, lambda x: NOT list_contains({have}, x))"
    remove = f"list_filter({have}, lambda x: NOT list_contains({want}, x))"
    delta = (f"'{{' || concat_ws(',', CASE WHEN len({add}) > 0 THEN '\"add\":' || to_json({add})::VARCHAR END, "
             f"CASE WHEN len({remove}) > 0 THEN '\"remove\":' || to_json({remove})::VARCHAR END) || '}}'")
    return f"(CASE WHEN held IS NULL THEN segments ELSE {delta} END)"


class BrazeClient(EspClient):
    """``POST /users/track`` on a workspace's REST endpoint, paced by its documented rate limit."""

    def __init__(
        self,
        api_key: str,
        rest_endpoint: str,
        *,
        policy: RetryPolicy | None = None,
        limits: Mapping[str, list[tuple[int, float]]] | None = None,
        pool_size: int = 32,
    ):
        if not api_key:
            raise ValueError("a Braze REST API key is required")
        parts = urlsplit(rest_endpoint or "")
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError("BRAZE_REST_ENDPOINT must be the workspace's REST endpoint URL, "
                             "e.g. https://rest.iad-01.braze.com")
        self.http = HttpSession(
            rest_endpoint, service="braze",
            headers={"Authorization": f"Bearer {api_key}", "Accept": "application/json"},
            families={**DEFAULT_LIMITS, **ERASURE_LIMITS, **(limits or {})}, policy=policy, pool_size=pool_size,
            epoch_reset_headers=True,
        )
        self.base_url = rest_endpoint.rstrip("/")

    def track(self, body: bytes) -> TrackResult:
        """Send one ``/users/track`` body; the answer with its per-object errors.

        A 400 whose errors name objects (Braze refused every object of the request) is returned
        like a 201 with errors, so those rows are rejected one by one; any other 400 raises
        :class:`EspError` with Braze's message (a request we built wrongly, never a row's fault).
        """
        if len(body) > MAX_BODY_BYTES:
            raise ValueError(f"/users/track body of {len(body)} bytes exceeds {MAX_BODY_BYTES}")
        resp = self.http.request("POST", "/users/track", family=FAMILY, data=body,
                                 content_type="application/json", expect=(200, 201, 202, 400))
        try:
            doc: Any = resp.json()
        except ValueError:
            doc = {}
        doc = doc if isinstance(doc, dict) else {}
        message = str(doc.get("message") or "")
        errors = tuple(_object_error(e) for e in (doc.get("errors") or []) if _is_attributes_error(e))
        if resp.status_code == 400 and not any(e.index is not None for e in errors):
            raise EspError(f"braze POST /users/track: HTTP 400: {message[:200] or 'bad request'}", 400)
        processed = doc.get("attributes_processed")
        return TrackResult(resp.status_code, message, processed if isinstance(processed, int) else None, errors)


    # -- erasure (issue 15) ----------------------------------------------------------------
    def user_ids(self, email: str) -> list[str]:
        """The ``braze_id`` of every user profile with this email (several profiles may share
        one): ``POST /users/export/ids`` with ``{"email_address": ..., "fields_to_export":
        ["braze_id"]}`` (key permission ``users.export.ids``; answer ``{"users": [...],
        "message": "success"}``). An empty list is Braze's word that no profile has the address."""
        resp = self.http.request("POST", "/users/export/ids", family=EXPORT_FAMILY, content_type="application/json",
                                 json_body={"email_address": email, "fields_to_export": ["braze_id"]}, expect=(200, 201))
        users = (resp.json() or {}).get("users") or []
        return [str(u["braze_id"]) for u in users if isinstance(u, dict) and u.get("braze_id")]

    def delete_users(self, braze_ids: Sequence[str]) -> int:
        """Delete these user profiles: ``POST /users/delete`` with ``{"braze_ids": [...]}``, at most
        50 per request (key permission ``users.delete``); returns Braze's ``deleted`` count (profiles
        queued for deletion). Deleting by ``braze_ids`` rather than ``email_addresses`` removes every
        profile that has the address: by email Braze deletes one profile per address, chosen by a
        ``prioritization``, and none when several match it (post_user_delete, "Deleting users by
        email"). Deleting twice is harmless, so the call is retried on faults."""
        deleted = 0
        for i in range(0, len(braze_ids), MAX_DELETE_IDS):
            chunk = list(braze_ids[i:i + MAX_DELETE_IDS])
            resp = self.http.request("POST", "/users/delete", family=DELETE_FAMILY, content_type="application/json",
                                     json_body={"braze_ids": chunk}, expect=(200, 201, 202))
            n = (resp.json() or {}).get("deleted")
            deleted += n if isinstance(n, int) else 0
        return deleted


def _is_attributes_error(entry: Any) -> bool:
    """An ``errors`` entry about the attributes array (or naming no array: then it may be ours)."""
    return not isinstance(entry, dict) or entry.get("input_array") in (None, "attributes")


def _object_error(entry: Any) -> ObjectError:
    if not isinstance(entry, dict):
        return ObjectError(None, str(entry)[:300])
    index = entry.get("index")
    reason = str(entry.get("type") or entry.get("message") or "refused")[:300]
    return ObjectError(index if isinstance(index, int) and not isinstance(index, bool) else None, reason)


def emails_of(body: bytes) -> Sequence[str | None]:
    """The ``email`` of each attributes object of a ``/users/track`` body, in order."""
    return [o.get("email") if isinstance(o, dict) else None for o in json.loads(body).get("attributes") or []]
