"""dotdigital v2 REST client (HTTP Basic with the API user).

Only what the sync needs, shaped as ``v2-api-swagger.json`` describes it: data fields (list,
create), address books (list, create), CSV contact import into an address book with a merge option
(``ApiFileMedia``: file name + base64 data), import progress, report and faults.

Imports carry only two columns, ``Email`` and our data field, so no other contact data is ever
touched; there is no opt-in or consent column, so new contacts get dotdigital's default opt-in
type (Unknown) and existing contacts keep theirs.
"""

from __future__ import annotations

import base64
import csv
import io
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from segment_pipeline.core.esp.http import (
    EspAmbiguous,
    EspClient,
    EspError,
    HttpSession,
    RetryPolicy,
    find_or_create,
)
from segment_pipeline.core.esp.polling import PollTimer, poll_until
from segment_pipeline.core.warehouse import sql_string as _sql_literal

DEFAULT_BASE_URL = "https://r1-api.dotdigital.com"
MAX_FILE_BYTES = 50 * 1024 * 1024
#: Per-minute limits per tier. dotdigital's numbers depend on the account package; these are
#: conservative defaults, overridable (``limits=``) when an account has more.
DEFAULT_LIMITS: dict[str, list[tuple[int, float]]] = {
    "import": [(20, 60.0)],
    "default": [(300, 60.0)],
}
FINISHED = "Finished"
FAILED_STATUSES = {"RejectedByWatchdog", "InvalidFileFormat", "Failed", "ExceedsAllowedContactLimit", "Unknown"}


@dataclass(frozen=True)
class ImportFault:
    email: str | None
    reason: str


def contacts_csv(rows: Iterable[Sequence[str]], field: str, *more: str) -> bytes:
    """``Email,<FIELD>[,<FIELD2>...]`` CSV (RFC 4180 quoting) for ``(email, value, ...)`` rows; an
    empty value clears (under the Overwrite merge option)."""
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\r\n")
    w.writerow(["Email", field, *more])
    w.writerows(rows)
    return out.getvalue().encode("utf-8")


def csv_field_sql(expr: str) -> str:
    """DuckDB expression quoting ``expr`` exactly as :mod:`csv` does by default (QUOTE_MINIMAL):
    a field containing a comma, a double quote, CR or LF is wrapped in quotes, quotes doubled."""
    return (f"(CASE WHEN regexp_matches({expr}, '[\",\\r\\n]') "
            f"THEN '\"' || replace({expr}, '\"', '\"\"') || '\"' ELSE {expr} END)")


def contact_line_sql(separator: str, email: str = "email", segments: str = "segments") -> str:
    """DuckDB expression for one :func:`contacts_csv` data line (``email,value\\r\\n``) per plan row.

    ``segments`` is the plan's JSON list of names; the value is the names joined by ``separator``
    ('' for an empty list, which clears the field under the Overwrite merge option).
    """
    value = f"array_to_string(from_json({segments}, '[\"VARCHAR\"]'), {_sql_literal(separator)})"
    return f"({csv_field_sql(email)} || ',' || {csv_field_sql(value)} || chr(13) || chr(10))"


def csv_header(field: str, *more: str) -> bytes:
    return contacts_csv([], field, *more)


class DotdigitalClient(EspClient):
    def __init__(
        self,
        username: str,
        password: str,
        *,
        base_url: str = DEFAULT_BASE_URL,
        policy: RetryPolicy | None = None,
        limits: Mapping[str, list[tuple[int, float]]] | None = None,
        pool_size: int = 8,
        poll_initial: float = 2.0,
        poll_max: float = 15.0,
        import_timeout: float = 3600.0,
    ):
        if not username or not password:
            raise ValueError("a dotdigital API user and password are required")
        self.http = HttpSession(base_url, service="dotdigital", auth=(username, password),
                                headers={"Accept": "application/json"},
                                families={**DEFAULT_LIMITS, **(limits or {})}, policy=policy, pool_size=pool_size)
        self.base_url = base_url.rstrip("/")
        self.poll_initial, self.poll_max, self.import_timeout = poll_initial, poll_max, import_timeout
        #: Learns how long imports take, to check each about once (see :meth:`wait_import`).
        self.poll_timer = PollTimer(poll_initial, poll_max)

    # -- data fields ---------------------------------------------------------------------
    def data_fields(self) -> list[dict[str, Any]]:
        return self.http.request("GET", "/v2/data-fields", family="default").json()

    def _has_field(self, name: str) -> bool:
        return any(str(f.get("name", "")).upper() == name.upper() for f in self.data_fields())

    def _field_type(self, name: str) -> str | None:
        for f in self.data_fields():
            if str(f.get("name", "")).upper() == name.upper():
                return str(f.get("type") or "String")
        return None

    def ensure_data_field(self, name: str, type_: str = "String", attempts: int = 5, what: str = "") -> None:
        """Create the data field ``name`` of type ``type_`` (``String``, ``Numeric``, ``Date``,
        ``Boolean``: ``ApiDataTypes`` of the v2 spec) unless it exists; a failed create is
        re-checked. A field that exists with another type raises :class:`EspError` naming both
        types (``what`` says where the field comes from, for the message)."""
        existing = self._field_type(name)
        if existing is not None:
            if existing != type_:
                raise EspError(f"dotdigital data field {name.upper()} exists with type {existing}, but "
                               f"{what or 'the sync'} needs {type_}: map it to another field, set the mapping's "
                               "type, or change the field in dotdigital")
            return

        def create() -> bool:
            try:
                self.http.request("POST", "/v2/data-fields", family="default", idempotent=False, expect=(200, 201),
                                  json_body={"name": name, "type": type_, "visibility": "Private",
                                             "defaultValue": None}, content_type="application/json")
            except EspAmbiguous:
                raise  # may or may not exist now: find_or_create looks again
            except EspError as exc:
                if exc.status != 400 or not self._has_field(name):  # a 400 as it was just created is fine
                    raise
            return True

        find_or_create(lambda: True if self._has_field(name) else None, create,
                       f"dotdigital: could not ensure data field {name!r}", attempts)

    # -- address books -------------------------------------------------------------------
    def find_address_book(self, name: str) -> int | None:
        skip, found = 0, []
        while True:
            page = self.http.request("GET", "/v2/address-books", family="default",
                                     params={"select": 1000, "skip": skip}).json()
            found += [b["id"] for b in page if b.get("name") == name]
            if len(page) < 1000:
                return min(found) if found else None
            skip += 1000

    def ensure_address_book(self, name: str, attempts: int = 5) -> int:
        def create() -> int:
            resp = self.http.request("POST", "/v2/address-books", family="default", idempotent=False,
                                     expect=(200, 201), content_type="application/json",
                                     json_body={"name": name, "visibility": "Private"})
            return int(resp.json()["id"])

        return find_or_create(lambda: self.find_address_book(name), create,
                              f"dotdigital: could not ensure address book {name!r}", attempts)

    # -- removal from an address book (suppressed contacts, issue 15) ----------------------
    def remove_from_address_book(self, address_book_id: int, emails: Sequence[str]) -> int:
        """Remove these contacts from the address book (the contacts themselves are kept); return
        how many were found. ``POST /v2/address-books/{id}/contacts/delete`` takes contact ids and
        answers 202 (v2 API spec: ``ApiContact_DeleteContactsFromAddressBook``)."""
        ids = [i for i in (self.contact_id(e) for e in emails) if i is not None]
        if ids:
            self.http.request("POST", f"/v2/address-books/{int(address_book_id)}/contacts/delete", family="default",
                              json_body=sorted(ids), content_type="application/json", expect=(200, 202, 204))
        return len(ids)

    # -- imports -------------------------------------------------------------------------
    def start_import(self, address_book_id: int, csv_bytes: bytes, merge_option: str, file_name: str = "nosto.csv") -> str:
        if len(csv_bytes) > MAX_FILE_BYTES:
            raise ValueError(f"import file of {len(csv_bytes)} bytes exceeds 50MB")
        # ApiFileMedia {"fileName": ..., "data": <base64>}; base64 needs no JSON escaping, so the
        # (up to 67 MB) body is assembled directly instead of going through json.dumps
        body = b"".join((b'{"fileName":', json.dumps(file_name).encode(), b',"data":"',
                         base64.b64encode(csv_bytes), b'"}'))
        resp = self.http.request(
            "POST", f"/v2/address-books/{int(address_book_id)}/contacts/import/with-merge-option/{merge_option}",
            family="import", data=body, content_type="application/json", expect=(200, 201, 202),
        )
        return resp.json()["id"]

    def import_status(self, import_id: str) -> str:
        return self.http.request("GET", f"/v2/contacts/import/{import_id}", family="status").json()["status"]

    def wait_import(self, import_id: str, submitted_at: float | None = None) -> str:
        """Check the import's status until it is finished; ``submitted_at`` defaults to now.

        The first check is timed by :class:`PollTimer` (learned from earlier imports) to find the
        import finished; after a miss the next checks come soon, then back off up to ``poll_max``.
        """
        status = poll_until(self.poll_timer, lambda: self.import_status(import_id),
                            lambda st: st == FINISHED or st in FAILED_STATUSES, timeout=self.import_timeout,
                            what=f"dotdigital import {import_id}", submitted_at=submitted_at)
        if status in FAILED_STATUSES:
            raise EspError(f"dotdigital import {import_id} ended with status {status}")
        return status

    def import_report(self, import_id: str) -> dict[str, int]:
        return self.http.request("GET", f"/v2/contacts/import/{import_id}/report", family="default").json()

    def import_faults(self, import_id: str) -> list[ImportFault]:
        raw = self.http.request("GET", f"/v2/contacts/import/{import_id}/report-faults", family="default").content
        rows = list(csv.reader(io.StringIO(raw.decode("utf-8-sig"), newline="")))
        if not rows:
            return []
        lower = [h.strip().lower() for h in rows[0]]
        ei = lower.index("email") if "email" in lower else None
        ri = lower.index("reason") if "reason" in lower else None
        return [ImportFault(row[ei].strip().lower() if ei is not None and ei < len(row) else None,
                            (row[ri] if ri is not None and ri < len(row) else "rejected")[:500])
                for row in rows[1:] if row]

    # -- contact deletion (issue 15) --------------------------------------------------------
    def contact_id(self, email: str) -> int | None:
        """The id of the contact with this email, None when dotdigital has none (``404``):
        ``GET /v2/contacts/{email}`` (``ApiContact_GetContactByEmail`` in ``v2-api-swagger.json``).
        The address travels URL-encoded in the path, so an error raised here names the path as
        ``/v2/contacts/<address>``, never the address."""
        try:
            resp = self.http.request("GET", f"/v2/contacts/{quote(email, safe='@')}", family="default",
                                     expect=(200, 404))
        except EspError as exc:
            hint = str(exc).split(": ", 2)[-1] if str(exc).count(": ") >= 2 else f"HTTP {exc.status}"
            raise type(exc)(f"dotdigital GET /v2/contacts/<address>: {hint.replace(email, '<address>')}",
                            exc.status) from None
        if resp.status_code == 404:
            return None
        return int(resp.json()["id"])

    def delete_contact(self, contact: int) -> bool:
        """Delete the contact (``DELETE /v2/contacts/{id}``, ``ApiContact_DeleteContact``, answered
        ``204``); False when it was already gone (``404``). Deleting twice is harmless, so the call
        is retried on faults."""
        resp = self.http.request("DELETE", f"/v2/contacts/{int(contact)}", family="default", expect=(204, 404))
        return resp.status_code == 204


def field_value(segments: Sequence[str], separator: str) -> str:
    return separator.join(segments)
