"""A stateful fake of the Meta Marketing API custom-audience endpoints (facts and their pages:
``specs/meta/FACTS.md`` beside this module).

State: custom audiences of one ad account (names are not unique, as at Meta, so a client creating
a second audience of a name is caught), their members (SHA-256 hashes) and upload sessions.

Enforced: the ``access_token`` parameter (query, form or JSON body; code 190 otherwise), the
Graph API version path, the users payload (``schema`` ``EMAIL_SHA256`` single-key or
``["EMAIL_SHA256"]`` multi-key; ``data`` a list of at most 10,000 records), ``session`` fields when
given (``session_id`` an integer, ``batch_seq`` from 1 and not repeated, nothing after the batch
flagged ``last_batch_flag``, ``estimated_num_total`` an integer), audience creation fields
(``subtype=CUSTOM``, a known ``customer_file_source``) and the ad account's ``custom_audience``
rate limit (``calls_per_hour`` in ``window`` seconds), answered as Meta does: HTTP 400 with error
code 80003 and an ``X-Business-Use-Case-Usage`` header giving ``estimated_time_to_regain_access``
in minutes. Records that are not 64 lowercase hex characters are counted in
``num_invalid_entries`` (with samples) and not added, as Meta counts entries it cannot use.

Observation for tests: :meth:`members`, :meth:`matched` (members that are known Meta users:
``known_hashes``, default every valid hash), ``raw_email_bodies`` (requests whose body or query
held an ``@``: raw emails must never arrive), ``spec_violations``, and the base class's request log
and fault injection.
"""

from __future__ import annotations

import itertools
import json
import math
import re
import threading
from typing import Any
from urllib.parse import parse_qs

try:
    from orjson import loads as _loads
except ImportError:  # pragma: no cover - orjson is a dev dependency
    _loads = json.loads

from segment_pipeline_tests.fakes.base import FakeService, HttpError, Response

HASH_RE = re.compile(r"^[0-9a-f]{64}$")
MAX_USERS_PER_CALL = 10_000
SCHEMAS = {"EMAIL_SHA256", "EMAIL"}
CUSTOMER_FILE_SOURCES = {"USER_PROVIDED_ONLY", "PARTNER_PROVIDED_ONLY", "BOTH_USER_AND_PARTNER_PROVIDED"}
FAMILY = "custom_audience"


class FakeMeta(FakeService):
    name = "meta"

    def __init__(self, access_token: str = "meta-test-token", ad_account_id: str = "1234567890",
                 api_version: str = "v25.0", calls_per_hour: int = 5_000, window: float = 3600.0,
                 known_hashes: set[str] | None = None, throttle_status: int = 400):
        super().__init__(limits={FAMILY: [(calls_per_hour, window)]})
        #: the HTTP status of a throttling answer (Meta answers 400 or 403 with codes 4/17/613/80003)
        self.throttle_status = throttle_status
        self.token = access_token
        self.account = ad_account_id
        self.version = api_version
        self.known_hashes = known_hashes
        self.audiences: dict[str, dict[str, Any]] = {}
        self.sessions: dict[tuple[str, int], dict[str, Any]] = {}
        self.raw_email_bodies = 0
        self.consent_attempts: list[str] = []  # no consent field exists in these endpoints
        #: every DELETE /{audience}/users: (audience id, the valid hashes removed), in order
        self.removals: list[tuple[str, list[str]]] = []
        self._ids = itertools.count(23850000000000001)
        self._session_ids = itertools.count(1)
        self._mlock = threading.Lock()
        v = re.escape(api_version)
        self.route("GET", rf"/{v}/act_(\d+)/customaudiences", FAMILY, self._list)
        self.route("POST", rf"/{v}/act_(\d+)/customaudiences", FAMILY, self._create)
        self.route("POST", rf"/{v}/(\d+)/users", FAMILY, self._add)
        self.route("DELETE", rf"/{v}/(\d+)/users", FAMILY, self._remove)
        self.route("POST", rf"/{v}/(\d+)/usersreplace", FAMILY, self._replace)

    # -- errors in Graph API style --------------------------------------------------------------
    def error_response(self, err: HttpError) -> Response:
        if err.status == 429:  # the base class's rate limiter: answer as Meta's BUC throttle does
            secs = float(err.headers.get("Retry-After") or 1)
            usage = {self.account: [{"type": "custom_audience", "call_count": 100, "total_cputime": 1,
                                     "total_time": 1, "estimated_time_to_regain_access": math.floor(secs / 60)}]}
            return Response(self.throttle_status, {"error": {
                "message": "There have been too many calls to this ad-account. Wait a bit and try again.",
                "type": "OAuthException", "code": 80003, "error_subcode": 2446079, "fbtrace_id": "fake"}},
                {"X-Business-Use-Case-Usage": json.dumps(usage)})
        code = {401: 190, 404: 803}.get(err.status, 100)
        return Response(err.status if err.status != 401 else 400,
                        {"error": {"message": err.message, "type": "OAuthException", "code": code,
                                   "fbtrace_id": "fake"}})

    # -- helpers ------------------------------------------------------------------------------
    def _params(self, query: dict[str, str], headers: Any, body: bytes) -> dict[str, Any]:
        if b"@" in body or any("@" in v for v in query.values()):
            with self.lock:
                self.raw_email_bodies += 1
        params: dict[str, Any] = dict(query)
        if body:
            ctype = (headers.get("Content-Type") or "").split(";")[0].strip()
            if ctype == "application/json":
                try:
                    parsed = _loads(body)
                except ValueError:
                    raise HttpError(400, "request body is not valid JSON", "invalid") from None
                if not isinstance(parsed, dict):
                    raise HttpError(400, "request body must be a JSON object", "invalid")
                params.update(parsed)
            else:
                params.update({k: v[-1] for k, v in parse_qs(body.decode("utf-8", "replace")).items()})
        if params.get("access_token") != self.token:
            raise HttpError(401, "Invalid OAuth access token - Cannot parse access token", "auth")
        return params

    def _violation(self, message: str) -> HttpError:
        with self.lock:
            self.spec_violations.append(message)
        return HttpError(400, f"(#100) {message}", "invalid")

    def _audience(self, audience_id: str) -> dict[str, Any]:
        a = self.audiences.get(audience_id)
        if a is None:
            raise HttpError(404, f"Unsupported request - object with ID '{audience_id}' does not exist", "missing")
        return a

    # -- audiences ----------------------------------------------------------------------------
    def _list(self, match, query, body, headers) -> Response:
        params = self._params(query, headers, body)
        if match.group(1) != self.account:
            raise HttpError(403, "ad account not accessible with this token", "forbidden")
        fields = [f for f in str(params.get("fields", "id")).split(",") if f]
        limit = int(params.get("limit", 25))
        after = int(params.get("after", 0) or 0)
        with self.lock:
            rows = [{f: a[f] for f in fields if f in a} for a in self.audiences.values()]
        page = rows[after:after + limit]
        paging: dict[str, Any] = {"cursors": {"before": str(after), "after": str(after + len(page))}}
        if after + limit < len(rows):
            paging["next"] = f"/{self.version}/act_{self.account}/customaudiences?after={after + limit}"
        return Response(200, {"data": page, "paging": paging})

    def _create(self, match, query, body, headers) -> Response:
        p = self._params(query, headers, body)
        if match.group(1) != self.account:
            raise HttpError(403, "ad account not accessible with this token", "forbidden")
        name = p.get("name")
        if not isinstance(name, str) or not name.strip():
            raise self._violation("customaudiences: name is required")
        if p.get("subtype") != "CUSTOM":
            raise self._violation(f"customaudiences: subtype must be CUSTOM for a customer file, got {p.get('subtype')!r}")
        if p.get("customer_file_source") not in CUSTOMER_FILE_SOURCES:
            raise self._violation("customaudiences: customer_file_source must be one of "
                                  f"{sorted(CUSTOMER_FILE_SOURCES)}, got {p.get('customer_file_source')!r}")
        with self.lock:
            aid = str(next(self._ids))
            self.audiences[aid] = {"id": aid, "name": name, "subtype": "CUSTOM", "description": p.get("description", ""),
                                   "customer_file_source": p["customer_file_source"], "members": set()}
        return Response(200, {"id": aid})

    # -- members ------------------------------------------------------------------------------
    def _payload(self, p: dict[str, Any]) -> list[str]:
        payload = p.get("payload")
        if isinstance(payload, str):
            try:
                payload = _loads(payload)
            except ValueError:
                raise self._violation("payload is not valid JSON") from None
        if not isinstance(payload, dict):
            raise self._violation("payload is required: {schema, data}")
        schema, data = payload.get("schema"), payload.get("data")
        multi = isinstance(schema, list)
        keys = schema if multi else [schema]
        if not keys or any(k not in SCHEMAS for k in keys) or len(keys) != 1:
            raise self._violation(f"payload.schema must be EMAIL_SHA256 (or [\"EMAIL_SHA256\"]), got {schema!r}")
        if not isinstance(data, list) or not data:
            raise self._violation("payload.data must be a non-empty list")
        if len(data) > MAX_USERS_PER_CALL:
            raise self._violation(f"payload.data has {len(data)} records; at most {MAX_USERS_PER_CALL} per call")
        out = []
        for rec in data:
            if multi:
                if not isinstance(rec, list) or len(rec) != 1:
                    raise self._violation("multi-key records must be lists as long as the schema")
                rec = rec[0]
            if not isinstance(rec, str):
                raise self._violation("records must be strings")
            out.append(rec)
        return out

    def _session(self, audience_id: str, p: dict[str, Any], required: bool) -> int | None:
        s = p.get("session")
        if s is None:
            if required:
                raise self._violation("usersreplace requires session {session_id, batch_seq, last_batch_flag}")
            return None
        if isinstance(s, str):
            s = _loads(s)
        if not isinstance(s, dict):
            raise self._violation("session must be an object")
        sid, seq, last = s.get("session_id"), s.get("batch_seq"), s.get("last_batch_flag")
        total = s.get("estimated_num_total")
        if type(sid) is not int or type(seq) is not int or seq < 1 or type(last) is not bool:
            raise self._violation(f"session fields: session_id int, batch_seq int >= 1, last_batch_flag bool; got {s!r}")
        if total is not None and type(total) is not int:
            raise self._violation("session.estimated_num_total must be an integer")
        with self.lock:
            st = self.sessions.setdefault((audience_id, sid), {"seqs": set(), "last": None, "received": 0})
            if seq in st["seqs"]:
                raise self._violation(f"session {sid}: batch_seq {seq} sent twice")
            if st["last"] is not None and seq > st["last"]:
                raise self._violation(f"session {sid}: batch_seq {seq} after the last batch {st['last']}")
            st["seqs"].add(seq)
            if last:
                st["last"] = seq
        return sid

    def _apply(self, match, query, body, headers, add: bool, replace: bool = False) -> Response:
        p = self._params(query, headers, body)
        audience_id = match.group(1)
        with self.lock:
            a = self._audience(audience_id)
        hashes = self._payload(p)
        sid = self._session(audience_id, p, required=replace)
        valid = [h for h in hashes if HASH_RE.match(h)]
        invalid = [h for h in hashes if not HASH_RE.match(h)]
        with self.lock:
            if replace and sid is not None and not self.sessions[(audience_id, sid)]["received"]:
                a["members"] = set()  # a replacement session starts from an empty audience
            if add:
                a["members"].update(valid)
            else:
                a["members"].difference_update(valid)
                self.removals.append((audience_id, list(valid)))
            if sid is not None:
                self.sessions[(audience_id, sid)]["received"] += len(hashes)
            session_id = sid if sid is not None else next(self._session_ids)
        samples = {h[:80]: "not a lowercase hex SHA-256" for h in invalid[:10]}
        return Response(200, {"audience_id": audience_id, "session_id": str(session_id), "num_received": len(hashes),
                              "num_invalid_entries": len(invalid), "invalid_entry_samples": samples})

    def _add(self, match, query, body, headers) -> Response:
        return self._apply(match, query, body, headers, add=True)

    def _remove(self, match, query, body, headers) -> Response:
        return self._apply(match, query, body, headers, add=False)

    def _replace(self, match, query, body, headers) -> Response:
        return self._apply(match, query, body, headers, add=True, replace=True)

    # -- observation --------------------------------------------------------------------------
    def audience_named(self, name: str) -> list[str]:
        with self.lock:
            return [a["id"] for a in self.audiences.values() if a["name"] == name]

    def members(self, name: str) -> set[str]:
        (aid,) = self.audience_named(name)
        with self.lock:
            return set(self.audiences[aid]["members"])

    def matched(self, name: str) -> int:
        """Members that are Meta users (``known_hashes``; all members when it is None)."""
        m = self.members(name)
        return len(m) if self.known_hashes is None else len(m & self.known_hashes)
