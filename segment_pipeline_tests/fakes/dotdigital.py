"""A stateful fake of the dotdigital v2 REST API (the parts in ``v2-api-swagger.json`` the sync uses).

State: data fields (names unique, as in dotdigital), address books (names NOT unique here, so a
client creating a second one is caught), contacts (unique by email, with data fields, opt-in type,
status, consent records and address-book memberships) and async contact imports with a report and
a faults CSV.

Enforced: HTTP Basic auth (401), JSON bodies valid against the spec (400 + ``spec_violations``),
the 50 MB file limit, at most ``max_active_imports`` running imports, per-minute rate limits per
tier (429 + ``Retry-After``), merge-option semantics for the columns in the file (other data is
never touched), opt-in type ``Unknown`` for new contacts. Consent columns (``consent*``) or an
opt-in column in an import are recorded in ``consent_attempts`` (and ignored), as are calls to
unsubscribe/resubscribe/suppress or ``with-consent`` endpoints (answered 404). A contact can be
read by email (``GET /v2/contacts/{email}``) and contacts removed from an address book by id
(``POST /v2/address-books/{id}/contacts/delete``; the contacts themselves stay), as suppression does.

Contact deletion (issue 15): ``GET /v2/contacts/{email or id}`` answers the ``ApiContact`` (``404``
``ERROR_CONTACT_NOT_FOUND`` when there is none) and ``DELETE /v2/contacts/{id}`` deletes the
contact from the account and every address book (``204``; ``404`` when already gone), both in the
``default`` rate tier, with auth and faults like every other call. Each delete is recorded in
:attr:`deletion_calls` (contact id, email, whether it existed).
"""

from __future__ import annotations

import base64
import csv
import io
import itertools
import json
import re
import time
import uuid
from typing import Any
from urllib.parse import unquote

from segment_pipeline_tests.fakes.base import SPECS_DIR, FakeService, HttpError, Response, SpecValidator

SPEC_PATH = SPECS_DIR / "dotdigital" / "v2-api-swagger.json"
EMAIL_RE = re.compile(r"^[^@\s,]+@[^@\s,]+\.[^@\s,]+$")
MAX_FILE_BYTES = 50 * 1024 * 1024
CONSENT_COLUMNS = {"consentdatetime", "consentip", "consenttext", "consenturl", "consentuseragent",
                   "optintype", "opt_in_type", "status"}
MERGE_OPTIONS = {"Overwrite", "OnlyOverwriteIfNotEmpty", "OnlyOverwriteIfContactDataNotPopulated"}
#: Per-minute limits per tier (dotdigital's tiered scheme; the numbers are account dependent).
DEFAULT_LIMITS: dict[str, list[tuple[int, float]]] = {
    "import": [(20, 60.0)],  # "low" tier: bulk imports
    "default": [(300, 60.0)],
}
#: dotdigital: "contact data fields of type 'text' can contain up to 255 characters"
#: (https://support.dotmailer.com/hc/en-gb/articles/212211908-Creating-and-deleting-contact-data-fields).
MAX_TEXT_FIELD_CHARS = 255
BUILTIN_FIELDS = ("FIRSTNAME", "LASTNAME", "FULLNAME", "GENDER", "POSTCODE")


_INVALID = object()


def _typed(kind: str, text: str) -> Any:
    """A CSV cell as the data field of type ``kind`` holds it (``ApiDataTypes`` of the v2 spec),
    or ``_INVALID``: Numeric a number, Date an ISO 8601 date/date-time (kept as text), Boolean
    true/false (also yes/no, 1/0). Modelling choice: dotdigital's import page does not list the
    exact formats it parses; these are the ones the sync sends."""
    import datetime as _dt

    if kind == "Numeric":
        try:
            number = float(text)
        except ValueError:
            return _INVALID
        return int(number) if number.is_integer() and "." not in text and "e" not in text.lower() else number
    if kind == "Date":
        try:
            _dt.datetime.fromisoformat(text)
        except ValueError:
            return _INVALID
        return text
    if kind == "Boolean":
        low = text.strip().lower()
        if low in ("true", "yes", "1"):
            return True
        if low in ("false", "no", "0"):
            return False
        return _INVALID
    return text


class FakeDotdigital(FakeService):
    name = "dotdigital"

    def __init__(
        self,
        username: str = "apiuser-fake@apiconnector.com",
        password: str = "fake-password",
        *,
        limits: dict[str, list[tuple[int, float]]] | None = None,
        max_active_imports: int = 3,
        advance_on_poll: bool = True,
        seconds_per_contact: float | None = None,
        validate: bool = True,
    ):
        super().__init__(limits={**DEFAULT_LIMITS, **(limits or {})}, max_body_bytes=MAX_FILE_BYTES * 4 // 3 + 4096)
        self.auth = "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()
        self.max_active_imports = max_active_imports
        #: Rows applied per hold of :attr:`lock` when an import finishes in the background.
        self.apply_chunk = 2_000
        self.advance_on_poll = advance_on_poll
        self.seconds_per_contact = seconds_per_contact
        self.validate = validate
        self.spec = SpecValidator(SPEC_PATH)
        self.data_fields: dict[str, dict[str, Any]] = {f: {"name": f, "type": "String", "visibility": "Private",
                                                            "defaultValue": None} for f in BUILTIN_FIELDS}
        self.address_books: dict[int, dict[str, Any]] = {}
        self.contacts: dict[str, dict[str, Any]] = {}  # email -> contact
        self.imports: dict[str, dict[str, Any]] = {}
        self.consent_attempts: list[str] = []
        self.reject_emails: set[str] = set()
        #: email -> suppression counter (e.g. "unsubscribed"): such a row is not applied and, as the
        #: real report does, counted both there and in "suppressedContacts", with one faults-file row.
        self.suppressed_emails: dict[str, str] = {}
        self.create_calls: dict[str, int] = {"data-fields": 0, "address-books": 0}
        #: every DELETE /v2/contacts/{id}: {"id", "email" (None when there was no such contact), "status"}
        self.deletion_calls: list[dict[str, Any]] = []
        self._book_ids = itertools.count(1001)
        self._contact_ids = itertools.count(1)
        r = self.route
        r("GET", r"/v2/data-fields", "default", self._get_fields)
        r("POST", r"/v2/data-fields", "default", self._create_field)
        r("GET", r"/v2/address-books", "default", self._get_books)
        r("POST", r"/v2/address-books", "default", self._create_book)
        r("POST", r"/v2/address-books/(?P<book>\d+)/contacts/import/with-merge-option/(?P<merge>\w+)", "import",
          self._import)
        r("GET", r"/v2/contacts/import/(?P<id>[0-9a-f-]{36})", "status", self._status)
        r("POST", r"/v2/address-books/(?P<book>\d+)/contacts/delete", "default", self._remove_from_book)
        r("GET", r"/v2/contacts/import/(?P<id>[0-9a-f-]{36})/report", "default", self._report)
        r("GET", r"/v2/contacts/import/(?P<id>[0-9a-f-]{36})/report-faults", "default", self._faults)
        r("GET", r"/v2/contacts/(?P<key>[^/]+)", "default", self._get_contact)
        r("DELETE", r"/v2/contacts/(?P<id>[^/]+)", "default", self._delete_contact)

    # -- test helpers --------------------------------------------------------------------
    def seed_contact(self, email: str, fields: dict[str, Any] | None = None, opt_in: str = "Double",
                     status: str = "Subscribed", consent: list[dict[str, Any]] | None = None) -> None:
        with self.lock:
            c = self._new_contact(email)
            c.update(optInType=opt_in, status=status, consent=consent or [{"key": "TEXT", "value": "yes please"}])
            c["dataFields"].update(fields or {})

    def books_named(self, name: str) -> list[int]:
        with self.lock:
            return [i for i, b in self.address_books.items() if b["name"] == name]

    def field_value(self, email: str, field: str) -> Any:
        with self.lock:
            c = self.contacts.get(email)
            return None if c is None else c["dataFields"].get(field)

    def book_members(self, book_id: int) -> set[str]:
        with self.lock:
            return {e for e, c in self.contacts.items() if book_id in c["books"]}

    # -- hooks ---------------------------------------------------------------------------
    def authenticate(self, headers: Any) -> None:
        if headers.get("Authorization") != self.auth:
            raise HttpError(401, "Authorization has been denied for this request.", headers={
                "WWW-Authenticate": 'Basic realm="dotdigital"'})

    def error_response(self, err: HttpError) -> Response:
        return Response(err.status, {"message": err.message}, err.headers)

    def on_unknown(self, method: str, path: str, body: bytes) -> None:
        if re.search(r"unsubscribe|resubscribe|suppress|consent|preferences", path):
            with self.lock:
                self.consent_attempts.append(f"{method} {path}")

    # -- helpers -------------------------------------------------------------------------
    def _body(self, body: bytes, headers: Any, schema: str) -> Any:
        if (headers.get("Content-Type") or "").split(";")[0].strip() != "application/json":
            raise HttpError(415, "The request entity's media type is not supported.")
        try:
            doc = json.loads(body)
        except ValueError:
            raise HttpError(400, "ERROR_INVALID_JSON") from None
        if self.validate:
            errs = self.spec.errors(schema, doc)
            if errs:
                with self.lock:
                    self.spec_violations.extend(errs)
                raise HttpError(400, f"ERROR_VALIDATION: {errs[0]}")
        return doc

    def _new_contact(self, email: str) -> dict[str, Any]:
        c = {"id": next(self._contact_ids), "email": email, "optInType": "Unknown", "emailType": "Html",
             "status": "Subscribed", "dataFields": {}, "consent": [], "books": set()}
        self.contacts[email] = c
        return c

    # -- data fields and address books ---------------------------------------------------
    def _get_fields(self, **_: Any) -> Response:
        with self.lock:
            return Response(200, list(self.data_fields.values()))

    def _create_field(self, body: bytes, headers: Any, **_: Any) -> Response:
        doc = self._body(body, headers, "ApiDataField")
        name = doc["name"].upper()
        with self.lock:
            self.create_calls["data-fields"] += 1
            if name in self.data_fields:
                raise HttpError(400, "Field name already exists ERROR_NON_UNIQUE_DATAFIELD")
            if doc.get("type", "String") != "String" and doc.get("type") not in ("Numeric", "Date", "Boolean"):
                raise HttpError(400, "ERROR_DATAFIELD_INVALID_TYPE")
            self.data_fields[name] = {"name": name, "type": doc.get("type", "String"),
                                      "visibility": doc.get("visibility", "Private"),
                                      "defaultValue": doc.get("defaultValue")}
        return Response(201)

    def _get_books(self, query: dict[str, str], **_: Any) -> Response:
        select, skip = int(query.get("select", 1000)), int(query.get("skip", 0))
        if not 1 <= select <= 1000:
            raise HttpError(400, "select must be between 1 and 1000")
        with self.lock:
            books = [{"id": i, "name": b["name"], "visibility": b["visibility"],
                      "contacts": sum(1 for c in self.contacts.values() if i in c["books"])}
                     for i, b in sorted(self.address_books.items())]
        return Response(200, books[skip:skip + select])

    def _create_book(self, body: bytes, headers: Any, **_: Any) -> Response:
        doc = self._body(body, headers, "ApiAddressBook")
        with self.lock:
            self.create_calls["address-books"] += 1
            bid = next(self._book_ids)
            self.address_books[bid] = {"name": doc["name"], "visibility": doc.get("visibility", "Private")}
            return Response(201, {"id": bid, "name": doc["name"], "visibility": self.address_books[bid]["visibility"],
                                  "contacts": 0})

    # -- contacts and book removal (suppression, issue 15) ---------------------------------
    def _remove_from_book(self, match: re.Match[str], body: bytes, headers: Any, **_: Any) -> Response:
        """``ApiContact_DeleteContactsFromAddressBook``: an array of contact ids; the contacts stay."""
        if (headers.get("Content-Type") or "").split(";")[0].strip() != "application/json":
            raise HttpError(415, "The request entity's media type is not supported.")
        ids = json.loads(body)
        if not isinstance(ids, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
            with self.lock:
                self.spec_violations.append(f"contacts/delete: body must be an array of contact ids, got {body[:80]!r}")
            raise HttpError(400, "ERROR_VALIDATION: an array of integer contact ids")
        book = int(match["book"])
        with self.lock:
            if book not in self.address_books:
                raise HttpError(404, "ERROR_ADDRESSBOOK_NOT_FOUND")
            wanted = set(ids)
            for c in self.contacts.values():
                if c["id"] in wanted:
                    c["books"].discard(book)
        return Response(202, {"id": str(uuid.uuid4()), "status": "Completed"})

    # -- imports -------------------------------------------------------------------------
    def _active(self) -> int:
        for imp in self.imports.values():
            self._advance(imp, polled=False)
        return sum(1 for i in self.imports.values() if i["status"] == "NotFinished")

    def _import(self, match: re.Match[str], body: bytes, headers: Any, **_: Any) -> Response:
        merge = match["merge"]
        if merge not in MERGE_OPTIONS:
            raise HttpError(400, f"ERROR_INVALID_MERGE_OPTION {merge}")
        doc = self._body(body, headers, "ApiFileMedia")
        try:
            raw = base64.b64decode(doc.get("data") or "", validate=True)
        except ValueError:
            raise HttpError(400, "ERROR_FILE_INVALID: data is not base64") from None
        if len(raw) > MAX_FILE_BYTES:
            raise HttpError(400, "ERROR_FILE_TOO_LARGE (max 50MB)")
        if not str(doc.get("fileName") or "").lower().endswith(".csv"):
            raise HttpError(400, "ERROR_FILE_INVALID: only .csv is supported by this fake")
        rows = list(csv.reader(io.StringIO(raw.decode("utf-8-sig"), newline="")))
        if not rows or "email" not in [h.strip().lower() for h in rows[0]]:
            raise HttpError(400, "ERROR_FILE_INVALID: the file must have an Email column")
        book = int(match["book"])
        with self.lock:
            if book not in self.address_books:
                raise HttpError(404, "ERROR_ADDRESSBOOK_NOT_FOUND")
            if self._active() >= self.max_active_imports:
                raise HttpError(429, "Too many active imports", headers={"Retry-After": "1"})
            iid = str(uuid.uuid4())
            self.imports[iid] = {"id": iid, "status": "NotFinished", "stage": 0, "created": time.monotonic(),
                                 "rows": rows, "book": book, "merge": merge, "report": None, "faults": []}
            return Response(202, {"id": iid, "status": "NotFinished"})

    def _due(self, imp: dict[str, Any], polled: bool) -> bool:
        done = polled and self.advance_on_poll and imp["stage"] >= 1
        if polled:
            imp["stage"] += 1
        if self.seconds_per_contact is not None:
            done = done or time.monotonic() - imp["created"] >= self.seconds_per_contact * len(imp["rows"])
        return done

    def _advance(self, imp: dict[str, Any], polled: bool) -> None:
        """Finish the import if it is due (caller holds the lock)."""
        if imp["status"] == "NotFinished" and self._due(imp, polled):
            self._apply(imp, len(imp["rows"]))

    def tick(self) -> None:
        """Finish the imports whose processing time is up, a chunk of rows per hold of the lock
        (so status checks arriving meanwhile are answered without waiting for a whole file)."""
        if self.seconds_per_contact is None:
            return  # imports only move when polled
        with self.lock:
            due = [i for i in self.imports.values() if i["status"] == "NotFinished" and self._due(i, polled=False)]
        for imp in due:
            while True:
                with self.lock:
                    if imp["status"] != "NotFinished" or self._apply(imp, self.apply_chunk):
                        break

    def _apply(self, imp: dict[str, Any], count: int) -> bool:
        """Apply up to ``count`` more rows of the import (caller holds the lock); True once finished."""
        header = [h.strip() for h in imp["rows"][0]]
        lower = [h.lower() for h in header]
        email_col = lower.index("email")
        consent_cols = [h for h in lower if h in CONSENT_COLUMNS]
        field_cols = [(i, h.upper()) for i, h in enumerate(header)
                      if i != email_col and h.lower() not in CONSENT_COLUMNS]
        unknown = [h for _, h in field_cols if h not in self.data_fields]
        if "applied" not in imp:  # first chunk
            if consent_cols:
                self.consent_attempts.append(f"import with columns {consent_cols}")
            imp["applied"], imp["seen"] = 1, set()
            imp["report"] = {k: 0 for k in (
                "newContacts", "updatedContacts", "globallySuppressed", "invalidEntries", "duplicateEmails",
                "blocked", "unsubscribed", "hardBounced", "softBounced", "ispComplaints", "mailBlocked",
                "domainSuppressed", "pendingDoubleOptin", "failures", "suppressedContacts")}
        report, seen = imp["report"], imp["seen"]
        contacts, reject, merge, book = self.contacts, self.reject_emails, imp["merge"], imp["book"]
        start = imp["applied"]
        stop = min(len(imp["rows"]), start + count)
        new = updated = 0
        for row in imp["rows"][start:stop]:
            if not row:
                continue
            email = row[email_col].strip().lower() if email_col < len(row) else ""
            if email in seen:
                report["duplicateEmails"] += 1
                imp["faults"].append(("Duplicate email in file", row))
                continue
            seen.add(email)
            if unknown or not EMAIL_RE.match(email) or email in reject:
                report["invalidEntries"] += 1
                imp["faults"].append(("Invalid email" if not unknown else f"Unknown data field {unknown[0]}", row))
                continue
            if email in self.suppressed_emails:
                report[self.suppressed_emails[email]] += 1
                report["suppressedContacts"] += 1
                imp["faults"].append((f"Contact is suppressed ({self.suppressed_emails[email]})", row))
                continue
            wrong = [(name, self.data_fields[name]["type"]) for i, name in field_cols
                     if i < len(row) and row[i] and _typed(self.data_fields[name]["type"], row[i]) is _INVALID]
            if wrong:  # dotdigital refuses a value its data field's type cannot hold
                report["invalidEntries"] += 1
                imp["faults"].append((f"Invalid value for data field {wrong[0][0]} ({wrong[0][1]})", row))
                continue
            too_long = [name for i, name in field_cols if i < len(row) and len(row[i]) > MAX_TEXT_FIELD_CHARS]
            if too_long:  # text data fields hold 255 characters (see the client's docstring for the source)
                self.spec_violations.append(f"import: {too_long[0]} value over {MAX_TEXT_FIELD_CHARS} characters")
                report["invalidEntries"] += 1
                imp["faults"].append((f"Data field {too_long[0]} value too long", row))
                continue
            c = contacts.get(email)
            if c is None:
                c = self._new_contact(email)
                new += 1
            else:
                updated += 1
            fields = c["dataFields"]
            for i, name in field_cols:
                value = row[i] if i < len(row) else ""
                typed = _typed(self.data_fields[name]["type"], value) if value else None
                if merge == "Overwrite":
                    fields[name] = typed
                elif merge == "OnlyOverwriteIfNotEmpty":
                    if value:
                        fields[name] = typed
                elif not fields.get(name):  # OnlyOverwriteIfContactDataNotPopulated
                    fields[name] = typed
            c["books"].add(book)
        report["newContacts"] += new
        report["updatedContacts"] += updated
        imp["applied"] = stop
        if stop < len(imp["rows"]):
            return False
        del imp["seen"]
        imp["status"] = "Finished"
        return True

    def _imp(self, iid: str) -> dict[str, Any]:
        imp = self.imports.get(iid)
        if imp is None:
            raise HttpError(404, "ERROR_IMPORT_NOT_FOUND")
        return imp

    def _status(self, match: re.Match[str], **_: Any) -> Response:
        with self.lock:
            imp = self._imp(match["id"])
            self._advance(imp, polled=True)
            return Response(200, {"id": imp["id"], "status": imp["status"]})

    def _report(self, match: re.Match[str], **_: Any) -> Response:
        with self.lock:
            imp = self._imp(match["id"])
            if imp["status"] == "NotFinished":
                raise HttpError(400, "ERROR_IMPORT_REPORT_NOT_FOUND: import not finished")
            return Response(200, imp["report"])

    def _faults(self, match: re.Match[str], **_: Any) -> Response:
        with self.lock:
            imp = self._imp(match["id"])
            if imp["status"] == "NotFinished":
                raise HttpError(400, "ERROR_IMPORT_REPORT_NOT_FOUND: import not finished")
            out = io.StringIO()
            w = csv.writer(out)
            w.writerow(["Reason", *imp["rows"][0]])
            for reason, row in imp["faults"]:
                w.writerow([reason, *row])
            return Response(200, out.getvalue().encode("utf-8"), content_type="application/octet-stream")

    # -- contacts (lookup and deletion) ------------------------------------------------------
    def contact(self, email: str) -> dict[str, Any] | None:
        """The contact with this email (case-insensitive, as dotdigital matches addresses), or None."""
        with self.lock:
            c = self.contacts.get(email)
            if c is None:
                c = next((v for k, v in self.contacts.items() if k.lower() == email.lower()), None)
            return c

    def _contact_resource(self, c: dict[str, Any]) -> dict[str, Any]:
        return {"id": c["id"], "email": c["email"], "optInType": c["optInType"], "emailType": c["emailType"],
                "dataFields": [{"key": k, "value": v} for k, v in sorted(c["dataFields"].items())],
                "status": c["status"]}

    def _get_contact(self, match: re.Match[str], **_: Any) -> Response:
        key = unquote(match["key"])
        with self.lock:
            if key.isdigit():
                c = next((v for v in self.contacts.values() if v["id"] == int(key)), None)
            else:
                c = self.contact(key)
            if c is None:
                raise HttpError(404, "Contact not found (ERROR_CONTACT_NOT_FOUND)")
            return Response(200, self._contact_resource(c))

    def _delete_contact(self, match: re.Match[str], **_: Any) -> Response:
        raw = match["id"]
        if not raw.isdigit() or int(raw) > 2**31 - 1:  # int32 in the spec (ApiContact_DeleteContact)
            self.spec_violations.append(f"DELETE /v2/contacts/{{id}}: id must be an int32, got {raw[:20]!r}")
            raise HttpError(400, "ERROR_PARAMETER_INVALID: id")
        cid = int(raw)
        with self.lock:
            email = next((e for e, v in self.contacts.items() if v["id"] == cid), None)
            self.deletion_calls.append({"id": cid, "email": email, "status": 204 if email else 404})
            if email is None:
                raise HttpError(404, "Contact not found (ERROR_CONTACT_NOT_FOUND)")
            del self.contacts[email]
            self.suppressed_emails.pop(email, None)
            self._cond.notify_all()
        return Response(204)
