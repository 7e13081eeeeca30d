"""A stateful fake of Braze's ``POST /users/track`` (user attributes objects), on :class:`FakeService`.

The vendor facts it enforces, each with its source page, are in ``specs/braze/FACTS.md`` beside
this module; in short:

* auth ``Authorization: Bearer <REST API key>`` (401 ``Unknown or missing REST API Key``),
  ``Content-Type: application/json``, bodies of at most 4 MB (413);
* a body ``{"attributes": [...], "events": [...], "purchases": [...]}`` of at most 75 objects
  (400 ``Max Input Length Exceeded``); any other shape: 400 with Braze's message, recorded in
  :attr:`spec_violations`;
* each attributes object needs an identifier (``external_id``, ``user_alias``, ``braze_id``,
  ``email`` or ``phone``); an object that is refused becomes an entry ``{"type": <reason>,
  "input_array": "attributes", "index": i}`` of the answer's ``errors`` (201 ``"message":
  "success"`` when other objects were processed; 400 with "Valid data must be provided ..." when
  none was), and nothing of it is applied;
* identification by email as Braze documents it: the profile with that email (several: the most
  recently updated one with an ``external_id``, else the most recently updated one); none: a new
  email-only profile. :meth:`users_with_email` lets a test check nobody was duplicated;
* array custom attributes: set whole (duplicates dropped), ``{"add": [...]}`` (a present value
  moves to the end), ``{"remove": [...]}``, both in one object, ``null`` removes the attribute;
  an array over ``max_array_length`` (25 unless raised) is truncated, keeping the newest values,
  as Braze does silently: the fake records each such cut in :attr:`truncations`;
* the rate limit, 3,000 requests per 3 seconds, counted in fixed windows aligned to the epoch
  (its ``X-RateLimit-Reset`` is then a whole epoch second, as documented); every answer carries
  ``X-RateLimit-Limit``, ``X-RateLimit-Remaining`` and ``X-RateLimit-Reset``; a request over the
  limit gets 429 with those headers and no ``Retry-After`` (Braze documents none);
* consent: any ``email_subscribe``, ``push_subscribe``, ``subscription_groups`` (or other
  subscription key) in an object is recorded in :attr:`consent_attempts`.

Erasure (issue 15): ``POST /users/export/ids`` (one ``email_address``; ``fields_to_export``
required: answers the matching profiles' ``braze_id``) and ``POST /users/delete`` (up to 50
identifiers of exactly one kind: ``external_ids``, ``user_aliases``, ``braze_ids``,
``email_addresses`` or ``phone_numbers``; answers ``{"deleted": n, "message": "success"}``), with
their own documented limits (250 exports and 20,000 deletes per minute); every delete is recorded
in :attr:`deletion_calls` and the profiles disappear at once (``deletion_delay`` > 0 keeps them
exported that long, as Braze queues deletions).

Faults (``500``/``503``, delays, dropped connections before or after acting) are injected as in the
other fakes (:meth:`FakeService.inject`); ``reject_emails`` are refused per object, as Braze does
for an address it will not take.
"""

from __future__ import annotations

import itertools
import json
import math
import re
import time
from typing import Any

try:
    from orjson import loads as _loads
except ImportError:  # pragma: no cover - orjson is a dev dependency
    _loads = json.loads

from segment_pipeline.core.esp.braze import BrazeClient
from segment_pipeline.core.sync.destinations.braze import BrazeSettings
from segment_pipeline.core.sync.runner import sync
from segment_pipeline_tests.fakes.base import FakeService, HttpError, Response

BRAZE_KEY = "braze-test-rest-key"
FAMILY = "users_track"
#: 3,000 requests per three seconds (https://www.braze.com/docs/api/api_limits/).
DOCUMENTED_LIMITS: dict[str, list[tuple[int, float]]] = {FAMILY: [(3_000, 3.0)]}
#: /users/delete: 20,000 per minute (shared with alias/identify/merge); /users/export/ids: 250 per
#: minute (workspaces onboarded since 2024-08-22) (sources: specs/braze/FACTS.md, "Erasure").
DELETE_FAMILY, EXPORT_FAMILY = "users_delete", "users_export_ids"
DOCUMENTED_LIMITS.update({DELETE_FAMILY: [(20_000, 60.0)], EXPORT_FAMILY: [(250, 60.0)]})
MAX_DELETE_IDS = 50
DELETE_KINDS = ("external_ids", "user_aliases", "braze_ids", "email_addresses", "phone_numbers")
MAX_OBJECTS = 75
MAX_BODY_BYTES = 4_000_000
IDENTIFIERS = ("external_id", "user_alias", "braze_id", "email", "phone")
CONSENT_KEYS = frozenset({"email_subscribe", "push_subscribe", "sms_subscribe", "subscription_groups",
                          "email_opt_in", "opted_in", "subscription_state"})
_CONSENT_NEEDLES = tuple(json.dumps(k).encode() for k in sorted(CONSENT_KEYS)) + (b"\\u",)
EMAIL_RE = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
NO_VALID_DATA = "Valid data must be provided in the 'attributes', 'events', or 'purchases' fields."
IDENTIFIER_REQUIRED = "'external_id', 'braze_id', 'user_alias', 'email' or 'phone' is required"


class _Refused(Exception):
    """One attributes object refused (becomes an ``errors`` entry with its index)."""


#: Braze "Data types": String "Text; 255 characters or fewer"
#: (https://www.braze.com/docs/user_guide/data/activation/custom_data/data_types/).
MAX_STRING_CHARS = 255


def braze_client(url: str, **kw: Any) -> BrazeClient:
    """Our production client pointed at a fake, with the tests' short retry policy."""
    from segment_pipeline_tests.fakes.helpers import FAST  # here, not at import: helpers imports this module

    kw.setdefault("policy", FAST)
    return BrazeClient(BRAZE_KEY, url, **kw)


def _child_settings(batch: int, in_flight: int) -> BrazeSettings:
    return BrazeSettings(objects_per_request=min(batch, MAX_OBJECTS), max_in_flight=in_flight)


def _child_sync(*args: Any, **kw: Any) -> Any:
    return sync("braze", *args, **kw)


#: This destination's entry in ``helpers.CHILD_RUNS``: client, settings, sync entry point.
CHILD_RUN = (braze_client, _child_settings, _child_sync)


class FakeBraze(FakeService):
    name = "braze"

    def __init__(self, api_key: str = BRAZE_KEY, *, limits: dict[str, list[tuple[int, float]]] | None = None,
                 max_array_length: int = 25, record_objects: bool = True):
        super().__init__(limits={**DOCUMENTED_LIMITS, **(limits or {})}, max_body_bytes=MAX_BODY_BYTES)
        self.api_key = api_key
        self.max_array_length = max_array_length
        self._seq = itertools.count(1)
        #: braze_id -> {"braze_id", "external_id", "email", "attributes", "updated"}
        self.users: dict[str, dict[str, Any]] = {}
        self.by_email: dict[str, list[str]] = {}
        self.consent_attempts: list[str] = []
        #: (email, attribute, values dropped) for every array Braze would have cut to its maximum length.
        self.truncations: list[tuple[str, str, list[str]]] = []
        self.reject_emails: set[str] = set()
        #: attributes objects applied (a test can count what was sent and accepted).
        self.objects_applied = 0
        #: every attributes object received, in order (off in benchmarks: a million dicts)
        self.record_objects = record_objects
        self.objects: list[dict[str, Any]] = []
        #: (family, window index, window start) -> requests counted there (fixed windows)
        self._counts: dict[tuple[str, int, float], int] = {}
        self.route("POST", r"/users/track/?", FAMILY, self._track)
        self.route("POST", r"/users/export/ids/?", EXPORT_FAMILY, self._export_ids)
        self.route("POST", r"/users/delete/?", DELETE_FAMILY, self._delete)
        #: every accepted /users/delete: {"kind", "ids" (as sent), "deleted" (profiles removed)}
        self.deletion_calls: list[dict[str, Any]] = []
        #: seconds a deleted profile is still exported (Braze queues deletions)
        self.deletion_delay = 0.0
        self._deleting: dict[str, float] = {}  # braze_id -> when it disappears

    def start(self, host: str = "127.0.0.1", port: int = 0) -> FakeBraze:
        super().start(host, port)
        # TCP_NODELAY: an answer goes out as headers, then body (two writes); with Nagle's algorithm
        # the body waits for the client's delayed ACK of the headers, ~40 ms per request on loopback,
        # which a real API does not add and which would cap a synchronous endpoint's throughput
        assert self._server is not None
        self._server.RequestHandlerClass.disable_nagle_algorithm = True  # type: ignore[attr-defined]
        return self

    # -- test helpers --------------------------------------------------------------------
    def seed_user(self, email: str | None, external_id: str | None = None,
                  attributes: dict[str, Any] | None = None) -> str:
        with self.lock:
            return self._new_user(email, external_id, dict(attributes or {}))

    def user_for(self, email: str) -> dict[str, Any] | None:
        """The profile an email identifier resolves to (None: it would create one)."""
        with self.lock:
            bid = self._resolve(email)
            return None if bid is None else json.loads(json.dumps(self.users[bid]))

    def attribute_of(self, email: str, name: str) -> Any:
        user = self.user_for(email)
        return None if user is None else user["attributes"].get(name)

    def users_with_email(self, email: str) -> int:
        with self.lock:
            return len(self.by_email.get(email.strip().lower(), []))

    # -- hooks ---------------------------------------------------------------------------
    def authenticate(self, headers: Any) -> None:
        if headers.get("Authorization") != f"Bearer {self.api_key}":
            raise HttpError(401, "Unknown or missing REST API Key.", "unauthorized")

    def error_response(self, err: HttpError) -> Response:
        headers = {k: v for k, v in err.headers.items() if k != "Retry-After"}  # Braze documents none
        errors = getattr(err, "errors", [])
        return Response(err.status, {"message": err.message, "errors": errors}, headers)

    def _rate_check(self, family: str) -> tuple[float, float]:
        """Fixed windows aligned to the epoch (so ``X-RateLimit-Reset`` is exact): ``(wait, now)``."""
        with self._gate:
            now, epoch = time.monotonic(), time.time()
            limits = self.limits.get(family) or []
            starts = [math.floor(epoch / w) * w for _n, w in limits]
            waits = [start + w - epoch for (n, w), start, i in zip(limits, starts, itertools.count(), strict=False)
                     if self._counts.get((family, i, start), 0) >= n]
            if waits:
                return max(waits), now
            for i, start in enumerate(starts):
                key = (family, i, start)
                self._counts[key] = self._counts.get(key, 0) + 1
            if len(self._counts) > 64:  # forget old windows
                for key in [k for k in self._counts if k[2] + limits[k[1]][1] < epoch - 60]:
                    del self._counts[key]
            return 0.0, now

    def _rate_headers(self, family: str) -> dict[str, str]:
        """``X-RateLimit-*`` for the family's tightest window right now (Braze sends them on every answer)."""
        with self._gate:
            limits = self.limits.get(family) or []
            if not limits:
                return {}
            epoch = time.time()
            best: tuple[int, int, float] | None = None
            for i, (n, w) in enumerate(limits):
                start = math.floor(epoch / w) * w
                left = max(0, n - self._counts.get((family, i, start), 0))
                if best is None or left < best[1]:
                    best = (n, left, start + w)
            assert best is not None
            reset = best[2]
            return {"X-RateLimit-Limit": str(best[0]), "X-RateLimit-Remaining": str(best[1]),
                    "X-RateLimit-Reset": str(int(reset)) if reset == int(reset) else repr(reset)}

    def complete(self, a: Any, headers: Any, body: bytes) -> tuple[Response, Any]:
        resp, fault = super().complete(a, headers, body)
        if a.fn is not None:
            resp.headers = {**resp.headers, **self._rate_headers(a.family)}
        return resp, fault

    # -- the endpoint ----------------------------------------------------------------------
    def _fatal(self, status: int, message: str, violation: str | None = None) -> HttpError:
        if violation:
            with self.lock:
                self.spec_violations.append(f"users/track: {violation}")
        return HttpError(status, message, "bad_request")

    def _track(self, body: bytes, headers: Any, **_: Any) -> Response:
        ctype = (headers.get("Content-Type") or "").split(";")[0].strip()
        if ctype != "application/json":
            raise self._fatal(400, "Bad Request", f"content type {ctype!r}, not application/json")
        try:
            doc = _loads(body)
        except ValueError:
            raise self._fatal(400, "Bad Request", "body is not JSON") from None
        if not isinstance(doc, dict) or set(doc) - {"attributes", "events", "purchases"}:
            raise self._fatal(400, NO_VALID_DATA, f"unknown body shape: keys {sorted(doc) if isinstance(doc, dict) else type(doc).__name__}")
        arrays = {k: doc.get(k) for k in ("attributes", "events", "purchases") if doc.get(k) is not None}
        if any(not isinstance(v, list) for v in arrays.values()) or not arrays:
            raise self._fatal(400, NO_VALID_DATA, "attributes/events/purchases must be arrays")
        if sum(len(v) for v in arrays.values()) > MAX_OBJECTS:
            raise self._fatal(400, "Max Input Length Exceeded",
                              f"{sum(len(v) for v in arrays.values())} objects, over {MAX_OBJECTS}")
        if "events" in arrays or "purchases" in arrays:
            with self.lock:
                self.spec_violations.append("users/track: events/purchases sent by a segment sync")
        objects = arrays.get("attributes", [])
        consent = []
        if any(needle in body for needle in _CONSENT_NEEDLES):
            for i, o in enumerate(objects):
                hits = sorted(CONSENT_KEYS & set(o)) if isinstance(o, dict) else []
                if hits:
                    consent.append(f"attributes[{i}] sets {hits}")
        errors: list[dict[str, Any]] = []
        checked: list[tuple[dict[str, Any], str]] = []
        for i, o in enumerate(objects):
            try:
                checked.append((o, self._check(o)))
            except _Refused as exc:
                errors.append({"type": str(exc), "input_array": "attributes", "index": i})
        with self.lock:
            self.consent_attempts.extend(consent)
            if self.record_objects:
                self.objects.extend(objects)
            for o, email in checked:
                self._apply(o, email)
            self.objects_applied += len(checked)
        if objects and not checked:
            err = HttpError(400, NO_VALID_DATA, "bad_request")
            err.errors = errors  # type: ignore[attr-defined]
            raise err
        out: dict[str, Any] = {"message": "success", "attributes_processed": len(checked)}
        if errors:
            out["errors"] = errors
        return Response(201, out)

    def _check(self, o: Any) -> str:
        """The object's email identifier, or :class:`_Refused` with Braze's reason."""
        if not isinstance(o, dict):
            raise _Refused("attributes object must be a JSON object")
        ids = [k for k in IDENTIFIERS if o.get(k) is not None]
        if not ids:
            raise _Refused(IDENTIFIER_REQUIRED)
        if ids != ["email"]:
            with self.lock:
                self.spec_violations.append(f"users/track: identified by {ids}, this fake models email only")
            raise _Refused("only email identification is modelled by this fake")
        email = o["email"]
        if not isinstance(email, str) or not EMAIL_RE.match(email.strip()):
            raise _Refused(f"Invalid email address: {str(email)[:80]!r}")
        if email.strip().lower() in self.reject_emails:
            raise _Refused("Email address is on the workspace's blocklist")
        if "_update_existing_only" in o and not isinstance(o["_update_existing_only"], bool):
            raise _Refused("'_update_existing_only' must be a boolean")
        for key, value in o.items():
            if key in IDENTIFIERS or key in ("_update_existing_only",):
                continue
            self._check_value(key, value)
        return email.strip().lower()

    @staticmethod
    def _check_value(key: str, value: Any) -> None:
        if isinstance(value, str) and len(value) > MAX_STRING_CHARS:
            raise _Refused(f"'{key}': string values hold {MAX_STRING_CHARS} characters")
        if value is None or isinstance(value, str | int | float | bool):
            return
        if isinstance(value, list):
            if not all(isinstance(v, str) for v in value):
                raise _Refused(f"'{key}': array custom attributes hold strings")
            return
        if isinstance(value, dict):
            ops = set(value)
            if ops <= {"add", "remove"} and ops:
                for op in ops:
                    if not isinstance(value[op], list) or not all(isinstance(v, str) for v in value[op]):
                        raise _Refused(f"'{key}': '{op}' takes an array of strings")
                return
            if ops == {"inc"} and isinstance(value["inc"], int):
                return
            raise _Refused(f"'{key}': unsupported operation {sorted(ops)}")
        raise _Refused(f"'{key}': unsupported value type")

    # -- state (caller holds the lock) ---------------------------------------------------
    def _new_user(self, email: str | None, external_id: str | None, attributes: dict[str, Any]) -> str:
        bid = f"{next(self._seq):024x}"
        key = email.strip().lower() if email else None
        self.users[bid] = {"braze_id": bid, "external_id": external_id, "email": key, "attributes": attributes,
                           "updated": next(self._seq)}
        if key:
            self.by_email.setdefault(key, []).append(bid)
        return bid

    def _resolve(self, email: str) -> str | None:
        ids = self.by_email.get(email.strip().lower())
        if not ids:
            return None
        with_external = [b for b in ids if self.users[b]["external_id"]]
        pool = with_external or ids
        return max(pool, key=lambda b: self.users[b]["updated"])

    def _apply(self, o: dict[str, Any], email: str) -> None:
        bid = self._resolve(email)
        if bid is None:
            if o.get("_update_existing_only") is True:
                return
            bid = self._new_user(email, None, {})
        user = self.users[bid]
        attrs = user["attributes"]
        for key, value in o.items():
            if key in IDENTIFIERS or key == "_update_existing_only":
                continue
            if value is None:
                attrs.pop(key, None)
            elif isinstance(value, list):
                attrs[key] = self._fit(email, key, list(dict.fromkeys(value)))
            elif isinstance(value, dict) and set(value) <= {"add", "remove"}:
                current = [v for v in attrs.get(key) or [] if isinstance(v, str)] \
                    if isinstance(attrs.get(key), list) else []
                for v in value.get("add", []):
                    if v in current:
                        current.remove(v)
                    current.append(v)
                drop = set(value.get("remove", []))
                attrs[key] = self._fit(email, key, [v for v in current if v not in drop])
            elif isinstance(value, dict) and set(value) == {"inc"}:
                attrs[key] = (attrs.get(key) or 0) + value["inc"]
            else:
                attrs[key] = value
        user["updated"] = next(self._seq)

    def _fit(self, email: str, key: str, values: list[str]) -> list[str]:
        if len(values) <= self.max_array_length:
            return values
        cut = len(values) - self.max_array_length
        self.truncations.append((email, key, values[:cut]))
        return values[cut:]

    # -- erasure endpoints ---------------------------------------------------------------------
    def _json_object(self, body: bytes, headers: Any, what: str) -> dict[str, Any]:
        ctype = (headers.get("Content-Type") or "").split(";")[0].strip()
        if ctype != "application/json":
            raise self._fatal(400, "Bad Request", f"{what}: content type {ctype!r}, not application/json")
        try:
            doc = _loads(body)
        except ValueError:
            raise self._fatal(400, "Bad Request", f"{what}: body is not JSON") from None
        if not isinstance(doc, dict):
            raise self._fatal(400, "Bad Request", f"{what}: body is not an object")
        return doc

    def _purge(self) -> None:
        """Drop the profiles whose queued deletion is due (caller holds the lock)."""
        now = time.monotonic()
        for bid in [b for b, t in self._deleting.items() if t <= now]:
            del self._deleting[bid]
            user = self.users.pop(bid, None)
            if user and user["email"]:
                left = [b for b in self.by_email.get(user["email"], []) if b != bid]
                if left:
                    self.by_email[user["email"]] = left
                else:
                    self.by_email.pop(user["email"], None)

    def _export_ids(self, body: bytes, headers: Any, **_: Any) -> Response:
        doc = self._json_object(body, headers, "users/export/ids")
        kinds = [k for k in ("external_ids", "user_aliases", "device_id", "braze_id", "email_address", "phone")
                 if doc.get(k)]
        if kinds != ["email_address"] or not isinstance(doc["email_address"], str):
            raise self._fatal(400, "Bad Request", f"users/export/ids: this fake answers one email_address, got {kinds}")
        fields = doc.get("fields_to_export")
        if not isinstance(fields, list) or not fields:
            raise self._fatal(400, "fields_to_export is required", "users/export/ids: fields_to_export missing")
        with self.lock:
            self._purge()
            ids = list(self.by_email.get(doc["email_address"].strip().lower(), []))
            users = [{f: self.users[b].get(f) for f in fields if f in ("braze_id", "external_id", "email")}
                     for b in ids]
        return Response(201, {"users": users, "message": "success"})

    def _delete(self, body: bytes, headers: Any, **_: Any) -> Response:
        doc = self._json_object(body, headers, "users/delete")
        kinds = [k for k in DELETE_KINDS if doc.get(k) is not None]
        if len(kinds) != 1 or not isinstance(doc[kinds[0]], list):
            raise self._fatal(400, "Only one of external_ids, user_aliases, braze_ids, email_addresses or "
                                   "phone_numbers may be given", f"users/delete: identifier kinds {kinds}")
        kind, ids = kinds[0], doc[kinds[0]]
        if len(ids) > MAX_DELETE_IDS:
            raise self._fatal(400, "Max Input Length Exceeded", f"users/delete: {len(ids)} identifiers, over 50")
        if kind != "braze_ids" or not all(isinstance(i, str) for i in ids):
            raise self._fatal(400, "Bad Request", f"users/delete: this fake deletes by braze_ids only, got {kind}")
        with self.lock:
            self._purge()
            found = [b for b in ids if b in self.users and b not in self._deleting]
            for b in found:
                self._deleting[b] = time.monotonic() + self.deletion_delay
            self.deletion_calls.append({"kind": kind, "ids": list(ids), "deleted": len(found)})
            self._purge()
            self._cond.notify_all()
        return Response(201, {"deleted": len(found), "message": "success"})
