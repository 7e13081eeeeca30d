"""A stateful fake of the Klaviyo JSON:API (the endpoints in ``specs/klaviyo``, beside this module).

State: profiles (by id, unique by email, with custom ``properties`` and ``subscriptions`` consent
state), lists (names are NOT unique, as in Klaviyo, so a client creating a second "Nosto
Customers" list is caught), list members, async bulk import jobs and their import errors.

Enforced: ``Authorization: Klaviyo-API-Key <key>`` (401), a ``revision`` header (400), JSON:API
bodies valid against the shipped spec (400, and recorded in ``spec_violations``), at most 10,000
profiles and 5 MB per import job, at most 1,000 profiles per list add/remove call, page sizes, and
the per-endpoint burst/steady rate limits read from the specs' ``x-klaviyo-ratelimit`` (429 +
``Retry-After``). Jobs move queued -> processing -> complete one step per poll (``advance_on_poll``)
or after ``queue_seconds``/``seconds_per_profile`` (time-based), whichever is further along;
profiles change only when a job completes. Invalid emails (and ``reject_emails``) become import
errors. Any attempt to send consent/subscription data or to call a subscribe/unsubscribe endpoint
is recorded in ``consent_attempts``.

Data-privacy deletion jobs (``POST /api/data-privacy-deletion-jobs``, issue 15): bodies valid
against ``request_profile_deletion.json`` with exactly one identifier (``email``, ``phone_number``
or ``id``; several: 400, as documented), answered ``202`` without a body, rate limited by the
spec's ``x-klaviyo-ratelimit`` (3/s, 60/m). Each accepted request is recorded in
:attr:`deletion_requests`; the matching profiles disappear (from profiles, lists and consent)
``deletion_seconds`` later (default 0: at the next tick), as Klaviyo deletes asynchronously.
"""

from __future__ import annotations

import itertools
import json
import re
import time
import uuid
from typing import Any

try:  # parsing 100 MB of import bodies is most of this fake's work in the benchmark
    from orjson import loads as _loads
except ImportError:  # pragma: no cover - orjson is a dev dependency
    _loads = json.loads

from segment_pipeline_tests.fakes.base import SPECS_DIR, FakeService, HttpError, Response, SpecValidator

SPEC_DIR = SPECS_DIR / "klaviyo"
EMAIL_RE = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
CONSENT_KEYS = {"subscriptions", "consent", "email_consent", "sms_consent", "accepts_marketing", "subscribed",
                "$consent", "opt_in", "marketing_consent"}
#: The consent keys as they appear in a JSON body (a key is always a quoted string; a body with
#: ``\\u`` escapes could spell one differently, so it always gets the per-profile check).
_CONSENT_NEEDLES = tuple(json.dumps(k).encode() for k in sorted(CONSENT_KEYS)) + (b"\\u",)
REVISION_RE = re.compile(r"^\d{4}-\d{2}-\d{2}(\.[A-Za-z0-9_-]+)?$")
MAX_IMPORT_PROFILES = 10_000
MAX_IMPORT_BYTES = 5 * 1024 * 1024
MAX_LIST_MEMBERS_PER_CALL = 1_000

_UNITS = {"s": 1.0, "m": 60.0, "d": 86400.0}


def documented_limits() -> dict[str, list[tuple[int, float]]]:
    """``operationId -> [(n, window_seconds), ...]`` from each spec's ``x-klaviyo-ratelimit``."""
    out: dict[str, list[tuple[int, float]]] = {}
    for f in sorted(SPEC_DIR.glob("*.json")):
        spec = json.loads(f.read_text())
        for ops in spec["paths"].values():
            for op in ops.values():
                if isinstance(op, dict) and "x-klaviyo-ratelimit" in op:
                    out[op["operationId"]] = [
                        (int(v.split("/")[0]), _UNITS[v.split("/")[1]]) for v in op["x-klaviyo-ratelimit"].values()
                    ]
    return out


def _parse_filter(expr: str) -> tuple[str, str, list[str]]:
    """``equals(name,"x")`` / ``any(email,["a","b"])`` -> (operator, field, values)."""
    m = re.fullmatch(r"\s*(equals|any)\(\s*([\w.]+)\s*,\s*(.*)\)\s*", expr, re.S)
    if not m:
        raise HttpError(400, f"invalid filter: {expr[:80]}", "invalid")
    op, fld, raw = m.groups()
    found = re.findall(r'"((?:[^"\\]|\\.)*)"|\'((?:[^\'\\]|\\.)*)\'', raw)
    values = [re.sub(r"\\(.)", r"\1", a or b) for a, b in found]
    if not values or (op == "any") != raw.strip().startswith("["):
        raise HttpError(400, f"invalid filter value: {raw[:80]}", "invalid")
    return op, fld, values


class FakeKlaviyo(FakeService):
    name = "klaviyo"

    def __init__(
        self,
        api_key: str = "pk_test_fake",
        *,
        limits: dict[str, list[tuple[int, float]]] | None = None,
        advance_on_poll: bool = True,
        queue_seconds: float | None = None,
        seconds_per_profile: float | None = None,
        validate: bool = True,
        validate_sample: int | None = None,
    ):
        base = documented_limits()
        base.update(limits or {})
        super().__init__(limits=base, max_body_bytes=MAX_IMPORT_BYTES + 64 * 1024)
        self.api_key = api_key
        self.advance_on_poll = advance_on_poll
        self.queue_seconds = queue_seconds
        self.seconds_per_profile = seconds_per_profile
        self.validate = validate
        #: None: the shape of every imported profile is checked against the spec; k: a sample of
        #: about 2k per job (benchmarks). Every profile is imported and consent-checked either way.
        self.validate_sample = validate_sample
        self._profile_seq = itertools.count(1)
        self.profiles: dict[str, dict[str, Any]] = {}  # id -> profile
        #: id -> email marketing consent; a profile not in here was never subscribed. Nothing this
        #: fake accepts from a client ever changes it (consent is only set by :meth:`seed_profile`).
        self.consent: dict[str, str] = {}
        #: Profiles applied per hold of :attr:`lock` when a job completes in the background, so
        #: requests arriving meanwhile are not held up for a whole job.
        self.apply_chunk = 1_000
        self.by_email: dict[str, str] = {}
        self.lists: dict[str, dict[str, Any]] = {}  # id -> {"name", "members": set, "created"}
        self.jobs: dict[str, dict[str, Any]] = {}
        self._unfinished: dict[str, dict[str, Any]] = {}  # jobs not complete yet (for tick)
        self.consent_attempts: list[str] = []
        self.reject_emails: set[str] = set()
        #: Added to every job's failed_count beyond its import errors (a counter above the named rows).
        self.extra_failed_count = 0
        self.revisions_seen: set[str] = set()
        #: every accepted deletion job: {"identifier": "email"|"phone_number"|"id", "value", "at"}
        self.deletion_requests: list[dict[str, Any]] = []
        #: seconds from an accepted deletion job to the profiles' disappearance
        self.deletion_seconds = 0.0
        self._deletions_due: list[tuple[float, str, str]] = []  # (due, identifier, value)
        #: emails of the profiles deleted so far, in order
        self.deleted_emails: list[str] = []
        self._ids = itertools.count(1)
        self.specs = {f.stem: SpecValidator(f) for f in SPEC_DIR.glob("*.json")}
        r = self.route
        r("GET", r"/api/lists/?", "get_lists", self._get_lists)
        r("POST", r"/api/lists/?", "create_list", self._create_list)
        r("POST", r"/api/lists/(?P<id>[^/]+)/relationships/profiles/?", "add_profiles_to_list", self._add_members)
        r("DELETE", r"/api/lists/(?P<id>[^/]+)/relationships/profiles/?", "remove_profiles_from_list",
          self._remove_members)
        r("GET", r"/api/lists/(?P<id>[^/]+)/relationships/profiles/?", "get_profile_ids_for_list", self._list_member_ids)
        r("GET", r"/api/profiles/?", "get_profiles", self._get_profiles)
        r("POST", r"/api/profile-bulk-import-jobs/?", "bulk_import_profiles", self._create_job)
        r("GET", r"/api/profile-bulk-import-jobs/(?P<id>[^/]+)/?", "get_bulk_import_profiles_job", self._get_job)
        r("GET", r"/api/profile-bulk-import-jobs/(?P<id>[^/]+)/import-errors/?",
          "get_errors_for_bulk_import_profiles_job", self._get_job_errors)
        r("GET", r"/api/profile-bulk-import-jobs/(?P<id>[^/]+)/relationships/profiles/?",
          "get_profile_ids_for_bulk_import_profiles_job", self._get_job_profile_ids)
        r("POST", r"/api/data-privacy-deletion-jobs/?", "request_profile_deletion", self._request_deletion)

    # -- test helpers --------------------------------------------------------------------
    def seed_profile(self, email: str, properties: dict[str, Any] | None = None, consent: str = "SUBSCRIBED") -> str:
        with self.lock:
            pid = self._new_profile(email)
            self.profiles[pid]["properties"].update(properties or {})
            self.consent[pid] = consent
            return pid

    def profile(self, email: str) -> dict[str, Any] | None:
        """The profile as Klaviyo would show it, ``subscriptions`` (email marketing consent) included."""
        with self.lock:
            pid = self.by_email.get(email)
            if not pid:
                return None
            consent = self.consent.get(pid, "NEVER_SUBSCRIBED")
            return {**self.profiles[pid], "subscriptions": {"email": {"marketing": {"consent": consent}}}}

    def lists_named(self, name: str) -> list[str]:
        with self.lock:
            return [lid for lid, li in self.lists.items() if li["name"] == name]

    def member_emails(self, list_id: str) -> set[str]:
        with self.lock:
            return {self.profiles[p]["email"] for p in self.lists[list_id]["members"]}

    def property_of(self, email: str, prop: str) -> Any:
        p = self.profile(email)
        return None if p is None else p["properties"].get(prop)

    # -- hooks ---------------------------------------------------------------------------
    def authenticate(self, headers: Any) -> None:
        if headers.get("Authorization") != f"Klaviyo-API-Key {self.api_key}":
            raise HttpError(401, "Missing or invalid private key.", "not_authenticated")

    def check_headers(self, headers: Any, family: str) -> None:
        rev = headers.get("revision")
        if not rev or not REVISION_RE.match(rev):
            raise HttpError(400, "A valid revision header is required (YYYY-MM-DD[.suffix]).", "invalid")
        self.revisions_seen.add(rev)

    def error_response(self, err: HttpError) -> Response:
        body = {"errors": [{"id": str(uuid.uuid4()), "status": err.status, "code": err.code,
                            "title": err.message[:60], "detail": err.message, "source": {"pointer": "/data/"}}]}
        return Response(err.status, body, err.headers, "application/vnd.api+json")

    def on_unknown(self, method: str, path: str, body: bytes) -> None:
        if "subscri" in path:
            with self.lock:
                self.consent_attempts.append(f"{method} {path}")

    # -- helpers -------------------------------------------------------------------------
    def _json(self, body: bytes, headers: Any, spec: str, schema: str, **kw: Any) -> Any:
        ctype = (headers.get("Content-Type") or "").split(";")[0].strip()
        if ctype not in ("application/vnd.api+json", "application/json"):
            raise HttpError(415, f"unsupported content type {ctype!r}", "unsupported_media_type")
        try:
            doc = _loads(body)
        except ValueError:
            raise HttpError(400, "body is not JSON", "invalid") from None
        if self.validate:
            errs = self.specs[spec].errors(schema, doc, **kw)
            if errs:
                with self.lock:
                    self.spec_violations.extend(f"{spec}: {e}" for e in errs)
                raise HttpError(400, f"invalid body: {errs[0]}", "invalid")
        return doc

    def _new_id(self, n: int = 26) -> str:
        return (uuid.uuid4().hex.upper() + uuid.uuid4().hex.upper())[:n]

    def _new_profile(self, email: str, now: str | None = None) -> str:
        pid = f"01P{next(self._profile_seq):023X}"  # unique, 26 characters like Klaviyo's ids
        now = now or _iso()
        self.profiles[pid] = {"id": pid, "email": email, "properties": {}, "created": now, "updated": now}
        self.by_email[email] = pid
        return pid

    def _page_size(self, query: dict[str, str], default: int, maximum: int) -> int:
        try:
            size = int(query.get("page[size]", default))
        except ValueError:
            raise HttpError(400, "page[size] must be an integer", "invalid") from None
        if not 1 <= size <= maximum:
            raise HttpError(400, f"page[size] must be between 1 and {maximum}", "invalid")
        return size

    def _page(self, items: list[Any], query: dict[str, str], base: str, size: int) -> tuple[list[Any], dict[str, str]]:
        start = int(query.get("page[cursor]") or 0)
        chunk = items[start:start + size]
        links = {"self": base}
        if start + size < len(items):
            links["next"] = f"{base}?page[size]={size}&page[cursor]={start + size}"
        return chunk, links

    # -- lists ---------------------------------------------------------------------------
    def _list_resource(self, lid: str) -> dict[str, Any]:
        li = self.lists[lid]
        return {"type": "list", "id": lid,
                "attributes": {"name": li["name"], "created": li["created"], "updated": li["created"],
                               "opt_in_process": "double_opt_in"},
                "links": {"self": f"{self.url}/api/lists/{lid}/"}}

    def _get_lists(self, query: dict[str, str], **_: Any) -> Response:
        size = self._page_size(query, 10, 10)
        with self.lock:
            ids = sorted(self.lists)
            if "filter" in query:
                op, fld, values = _parse_filter(query["filter"])
                if fld not in ("name", "id"):
                    raise HttpError(400, f"filter on {fld} not supported", "invalid")
                ids = [i for i in ids if (self.lists[i]["name"] if fld == "name" else i) in values]
            chunk, links = self._page(ids, query, f"{self.url}/api/lists/", size)
            return Response(200, {"data": [self._list_resource(i) for i in chunk], "links": links},
                            content_type="application/vnd.api+json")

    def _create_list(self, body: bytes, headers: Any, **_: Any) -> Response:
        doc = self._json(body, headers, "create_list", "ListCreateQuery")
        attrs = doc["data"]["attributes"]
        with self.lock:
            lid = self._new_id(6)
            self.lists[lid] = {"name": attrs["name"], "members": set(), "created": _iso()}
            return Response(201, {"data": self._list_resource(lid)}, content_type="application/vnd.api+json")

    def _members_body(self, body: bytes, headers: Any, spec: str, schema: str, lid: str) -> list[str]:
        doc = self._json(body, headers, spec, schema)
        ids = [d["id"] for d in doc["data"]]
        if len(ids) > MAX_LIST_MEMBERS_PER_CALL:
            raise HttpError(400, f"at most {MAX_LIST_MEMBERS_PER_CALL} profiles per call (got {len(ids)})", "invalid")
        if lid not in self.lists:
            raise HttpError(404, f"list {lid} not found", "not_found")
        unknown = [i for i in ids if i not in self.profiles]
        if unknown:
            raise HttpError(400, f"unknown profile id {unknown[0]}", "invalid")
        return ids

    def _add_members(self, match: re.Match[str], body: bytes, headers: Any, **_: Any) -> Response:
        with self.lock:
            ids = self._members_body(body, headers, "add_profiles_to_list", "ListMembersAddQuery", match["id"])
            self.lists[match["id"]]["members"].update(ids)
        return Response(204)

    def _remove_members(self, match: re.Match[str], body: bytes, headers: Any, **_: Any) -> Response:
        with self.lock:
            ids = self._members_body(body, headers, "remove_profiles_from_list", "ListMembersDeleteQuery", match["id"])
            self.lists[match["id"]]["members"].difference_update(ids)
        return Response(204)

    def _list_member_ids(self, match: re.Match[str], query: dict[str, str], **_: Any) -> Response:
        size = self._page_size(query, 20, 100)
        with self.lock:
            if match["id"] not in self.lists:
                raise HttpError(404, "list not found", "not_found")
            ids = sorted(self.lists[match["id"]]["members"])
            chunk, links = self._page(ids, query, f"{self.url}/api/lists/{match['id']}/relationships/profiles/", size)
            return Response(200, {"data": [{"type": "profile", "id": i} for i in chunk], "links": links},
                            content_type="application/vnd.api+json")

    # -- profiles ------------------------------------------------------------------------
    def _get_profiles(self, query: dict[str, str], **_: Any) -> Response:
        size = self._page_size(query, 20, 100)
        with self.lock:
            if "filter" in query:
                op, fld, values = _parse_filter(query["filter"])
                if fld == "email":
                    ids = [self.by_email[v] for v in values if v in self.by_email]
                elif fld == "id":
                    ids = [v for v in values if v in self.profiles]
                else:
                    raise HttpError(400, f"filter on {fld} not supported here", "invalid")
                if op == "any" and len(values) > 100:
                    raise HttpError(400, "at most 100 values in an any() filter", "invalid")
            else:
                ids = sorted(self.profiles)
            chunk, links = self._page(ids, query, f"{self.url}/api/profiles/", size)
            data = [{"type": "profile", "id": i,
                     "attributes": {"email": self.profiles[i]["email"], "properties": dict(self.profiles[i]["properties"])},
                     "links": {"self": f"{self.url}/api/profiles/{i}/"}} for i in chunk]
            return Response(200, {"data": data, "links": links}, content_type="application/vnd.api+json")

    # -- bulk import jobs ----------------------------------------------------------------
    def _create_job(self, body: bytes, headers: Any, **_: Any) -> Response:
        if len(body) > MAX_IMPORT_BYTES:
            raise HttpError(413, f"payload exceeds 5MB ({len(body)} bytes)", "too_large")
        doc = self._json(body, headers, "bulk_import_profiles", "ProfileImportJobCreateQuery",
                         items_at=("data", "attributes", "profiles", "data"), item_schema="ProfileUpsertQueryResourceObject",
                         sample=self.validate_sample)
        profiles = doc["data"]["attributes"]["profiles"]["data"]
        if len(profiles) > MAX_IMPORT_PROFILES:
            raise HttpError(400, f"at most {MAX_IMPORT_PROFILES} profiles per job (got {len(profiles)})", "invalid")
        list_ids = [d["id"] for d in (doc["data"].get("relationships") or {}).get("lists", {}).get("data", [])]
        attempts = []
        if any(needle in body for needle in _CONSENT_NEEDLES):  # else no profile can carry a consent key
            for p in profiles:
                attrs = p.get("attributes") or {}
                hits = sorted(CONSENT_KEYS & (set(attrs) | set(attrs.get("properties") or {})))
                if hits:
                    attempts.append(f"bulk import profile with {hits}")
        with self.lock:
            for lid in list_ids:
                if lid not in self.lists:
                    raise HttpError(400, f"list {lid} not found", "invalid")
            self.consent_attempts.extend(attempts)
            jid = self._new_id()
            self.jobs[jid] = {"id": jid, "stage": 0, "created": time.monotonic(), "created_at": _iso(),
                              "profiles": profiles, "list_ids": list_ids, "errors": [], "profile_ids": [],
                              "completed_at": None, "started_at": None, "failed": 0, "applied": 0}
            self._unfinished[jid] = self.jobs[jid]
            return Response(202, {"data": self._job_resource(self.jobs[jid])}, content_type="application/vnd.api+json")

    _STAGES = ("queued", "processing", "complete")

    def _job_resource(self, job: dict[str, Any]) -> dict[str, Any]:
        done = job["stage"] == 2
        total = len(job["profiles"])
        return {"type": "profile-bulk-import-job", "id": job["id"],
                "attributes": {"status": self._STAGES[job["stage"]], "created_at": job["created_at"],
                               "total_count": total, "completed_count": total if done else 0,
                               "failed_count": job["failed"], "completed_at": job["completed_at"],
                               "started_at": job["started_at"], "expires_at": None},
                "links": {"self": f"{self.url}/api/profile-bulk-import-jobs/{job['id']}/"}}

    def _due_stage(self, job: dict[str, Any], polled: bool) -> int:
        stage = job["stage"]
        if polled and self.advance_on_poll:
            stage = min(2, stage + 1)
        if self.seconds_per_profile is not None or self.queue_seconds is not None:
            elapsed = time.monotonic() - job["created"]
            q = self.queue_seconds or 0.0
            p = (self.seconds_per_profile or 0.0) * len(job["profiles"])
            stage = max(stage, 2 if elapsed >= q + p else 1 if elapsed >= q else 0)
        return stage

    def _advance(self, job: dict[str, Any], polled: bool, apply: bool = True) -> bool:
        """Move a job to the stage it is due in (caller holds :attr:`lock`). A job due to complete
        is applied at once, or with ``apply=False`` left to the caller: then True is returned."""
        stage = self._due_stage(job, polled)
        if stage >= 1 and job["started_at"] is None:
            job["started_at"] = _iso()
        if stage == 2 and job["stage"] < 2:
            if apply:
                self._apply(job, len(job["profiles"]))
            return not apply
        job["stage"] = stage
        return False

    def tick(self) -> None:
        """Complete the jobs whose processing time is up, a chunk of profiles per hold of the lock;
        carry out the deletion jobs that are due."""
        if self._deletions_due:
            self._apply_deletions()
        if self.seconds_per_profile is None and self.queue_seconds is None:
            return  # jobs only move when polled
        with self.lock:
            due = [job for job in list(self._unfinished.values()) if self._advance(job, polled=False, apply=False)]
        for job in due:
            while True:
                with self.lock:
                    if job["stage"] == 2 or self._apply(job, self.apply_chunk):
                        break

    def _apply(self, job: dict[str, Any], count: int) -> bool:
        """Apply up to ``count`` more of the job's profiles (caller holds the lock); True once complete.

        Profiles are upserted in the job's order; the job turns ``complete`` (and its counts final)
        only when the last one is applied, as Klaviyo reports it.
        """
        now = _iso()
        members = [self.lists[lid]["members"] for lid in job["list_ids"]]
        by_email, profiles, reject, ids = self.by_email, self.profiles, self.reject_emails, job["profile_ids"]
        start = job["applied"]
        stop = min(len(job["profiles"]), start + count)
        for p in job["profiles"][start:stop]:
            attrs = p.get("attributes") or {}
            email = attrs.get("email")
            if not email or not EMAIL_RE.match(email) or email in reject:
                job["errors"].append({"type": "import-error", "id": str(uuid.uuid4()),
                                      "attributes": {"code": "invalid", "title": "Invalid input",
                                                     "detail": f"Invalid email address: {email!r}",
                                                     "source": {"pointer": "/data/attributes/email"},
                                                     "original_payload": attrs}})
                continue
            pid = by_email.get(email) or self._new_profile(email, now)
            prof = profiles[pid]
            for k, v in attrs.items():
                if k == "properties":
                    prof["properties"].update(v or {})
                elif k == "location":  # the given location keys change; a null one clears it
                    loc = prof.setdefault("location", {})
                    loc.update(v or {})
                elif k not in ("email", "subscriptions"):
                    prof[k] = v  # a standard attribute; null clears it (update_profile.json)
            unset = ((p.get("meta") or {}).get("patch_properties") or {}).get("unset")
            for key in ([unset] if isinstance(unset, str) else unset or []):
                prof["properties"].pop(key, None)  # ProfileMetaPatchProperties.unset
            prof["updated"] = now
            ids.append(pid)
            for m in members:
                m.add(pid)
        job["applied"] = stop
        if stop < len(job["profiles"]):
            return False
        job["failed"] = len(job["errors"]) + self.extra_failed_count
        job["completed_at"] = now
        job["profiles_count"] = len(job["profiles"])
        job["stage"] = 2
        self._unfinished.pop(job["id"], None)
        return True

    def _job(self, jid: str) -> dict[str, Any]:
        job = self.jobs.get(jid)
        if job is None:
            raise HttpError(404, f"job {jid} not found", "not_found")
        return job

    def _get_job(self, match: re.Match[str], **_: Any) -> Response:
        with self.lock:
            job = self._job(match["id"])
            self._advance(job, polled=True)
            return Response(200, {"data": self._job_resource(job)}, content_type="application/vnd.api+json")

    def _get_job_errors(self, match: re.Match[str], query: dict[str, str], **_: Any) -> Response:
        size = self._page_size(query, 20, 100)
        with self.lock:
            job = self._job(match["id"])
            base = f"{self.url}/api/profile-bulk-import-jobs/{job['id']}/import-errors/"
            chunk, links = self._page(job["errors"], query, base, size)
            return Response(200, {"data": chunk, "links": links}, content_type="application/vnd.api+json")

    # -- data privacy ----------------------------------------------------------------------
    def _request_deletion(self, body: bytes, headers: Any, **_: Any) -> Response:
        doc = self._json(body, headers, "request_profile_deletion", "DataPrivacyCreateDeletionJobQuery")
        profile = doc["data"]["attributes"]["profile"]["data"]
        given = [("id", profile.get("id"))] + [(k, v) for k, v in (profile.get("attributes") or {}).items()
                                               if k in ("email", "phone_number")]
        given = [(k, v) for k, v in given if v]
        if len(given) != 1:
            raise HttpError(400, "Exactly one of email, phone_number or id must be provided.", "invalid")
        kind, value = given[0]
        with self.lock:
            self.deletion_requests.append({"identifier": kind, "value": value, "at": time.monotonic()})
            self._deletions_due.append((time.monotonic() + self.deletion_seconds, kind, value))
            self._cond.notify_all()
        return Response(202, None, content_type="application/vnd.api+json")

    def _apply_deletions(self) -> None:
        """Delete the profiles of the deletion jobs that are due (profile, list memberships, consent)."""
        with self.lock:
            now = time.monotonic()
            due = [d for d in self._deletions_due if d[0] <= now]
            self._deletions_due = [d for d in self._deletions_due if d[0] > now]
            for _at, kind, value in due:
                if kind == "id":
                    pids = [value] if value in self.profiles else []
                else:
                    pids = [pid for pid, p in self.profiles.items() if p.get(kind) == value]
                for pid in pids:
                    email = self.profiles.pop(pid)["email"]
                    if self.by_email.get(email) == pid:
                        del self.by_email[email]
                    self.consent.pop(pid, None)
                    for li in self.lists.values():
                        li["members"].discard(pid)
                    self.deleted_emails.append(email)
            if due:
                self._cond.notify_all()

    def deletions_for(self, email: str) -> int:
        """Deletion jobs accepted for this email."""
        with self.lock:
            return sum(1 for d in self.deletion_requests if d["identifier"] == "email" and d["value"] == email)

    def _get_job_profile_ids(self, match: re.Match[str], query: dict[str, str], **_: Any) -> Response:
        size = self._page_size(query, 20, 100)
        with self.lock:
            job = self._job(match["id"])
            base = f"{self.url}/api/profile-bulk-import-jobs/{job['id']}/relationships/profiles/"
            chunk, links = self._page(job["profile_ids"], query, base, size)
            return Response(200, {"data": [{"type": "profile", "id": i} for i in chunk], "links": links},
                            content_type="application/vnd.api+json")


def _iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime())


