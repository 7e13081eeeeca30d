"""dotdigital: an address book plus a String contact data field holding the segment names.

Requests: CSV contact imports into the address book (``Email,<FIELD>`` only, so no other contact
data and no consent is touched) with merge option ``OnlyOverwriteIfNotEmpty`` for upserts (an empty
cell never wipes anything) and ``Overwrite`` for clears (the only way to empty a field). The value
is the names joined by ``separator`` (default ``|``). Contacts are never deleted, and a contact
leaving the synced segments stays in the book with the field cleared, except a contact whose address
is now on a suppression list (issue 15): it is removed from the address book ("Delete multiple
contacts from address book", ``POST /v2/address-books/{id}/contacts/delete`` with contact ids found
by ``GET /v2/contacts/{email}``, v2 API spec ``ApiContact_DeleteContactsFromAddressBook``), the
contact itself kept.
Per-row result: the import's faults CSV (one row per contact not applied, with its reason); the
report's counters are only compared with it (see :mod:`segment_pipeline.core.sync.engine`).

Limits and their sources:

* a text contact data field holds at most 255 characters: dotdigital support, "Creating and
  deleting contact data fields" (https://support.dotmailer.com/hc/en-gb/articles/212211908-Creating-and-deleting-contact-data-fields):
  "contact data fields of type 'text' can contain up to 255 characters". Longer values are fitted
  (:class:`~segment_pipeline.core.sync.diff.ValueFit`: whole names kept, the contact recorded as
  truncated with the dropped names).
* import file size: 50 MB (:data:`segment_pipeline.core.esp.dotdigital.MAX_FILE_BYTES`); rate
  limits per minute and the number of imports running at once depend on the account's package:
  :data:`segment_pipeline.core.esp.dotdigital.DEFAULT_LIMITS` and ``max_active_imports`` are
  conservative defaults.

Mapped fields (:mod:`segment_pipeline.core.sync.mappings`): every mapped data field is created on
connect when missing, with the type its source needs (``String``/``Numeric``/``Date``/``Boolean``,
the v2 spec's ``ApiDataTypes``); one that exists with another type stops the run with an error
naming it (a Date value in a String field would be refused row by row). Upsert files then carry
``Email``, the segment field and the mapped fields only, a cell only where the value changed (an
empty cell changes nothing under ``OnlyOverwriteIfNotEmpty``), so unmapped fields are never touched.
A mapped field's clear (``null: clear``) is sent in a file of its own, ``Email`` and that one
field, under ``Overwrite`` (the only way to empty a field), as ``unset:<FIELD>`` plan rows.
Text values over 255 characters are not sent (counted, see the mappings module).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from segment_pipeline.core.esp import dotdigital as dd
from segment_pipeline.core.esp.http import EspAuthError, EspError
from segment_pipeline.core.sync.diff import UPSERT, ValueFit
from segment_pipeline.core.sync.engine import Capabilities, Destination, Erasure, Limits, Option, Outcome
from segment_pipeline.core.sync.fields import UNSET_PREFIX, path_literal
from segment_pipeline.core.sync.state import Target

#: Characters a dotdigital text data field holds (source in the module docstring).
MAX_FIELD_CHARS = 255
#: Report counters of rows that were applied; every other integer counter is a problem.
REPORT_OK_KEYS = {"newContacts", "updatedContacts"}


@dataclass(frozen=True)
class DotdigitalSettings:
    data_field: str = "NOSTOSEGMENT"
    address_book: str = "Nosto Customers"
    separator: str = "|"
    contacts_per_import: int = 20_000
    max_active_imports: int = 3  # imports started and not yet finished (dotdigital allows a few)
    #: Batches being sent, imported or confirmed: more than the active imports, so the next
    #: import's upload and the last one's report and confirmation overlap with running imports.
    max_in_flight: int = 6
    upsert_merge_option: str = "OnlyOverwriteIfNotEmpty"  # an empty cell never wipes anything
    clear_merge_option: str = "Overwrite"  # only way to empty a field; the file has Email + our field only
    max_value_chars: int = MAX_FIELD_CHARS


def _sql_literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


class DotdigitalDestination(Destination):
    name = "dotdigital"
    title = "dotdigital"
    description = "dotdigital NOSTOSEGMENT data field and address book, for the synced segments."
    capabilities = Capabilities(property_upsert=True, list_add=True, list_remove=False, list_withdraw=True)
    options = (
        Option("api_user", "DOTDIGITAL_API_USER", secret=True, help="API user (HTTP Basic)"),
        Option("api_password", "DOTDIGITAL_API_PASSWORD", secret=True),
        Option("base_url", "DOTDIGITAL_BASE_URL", dd.DEFAULT_BASE_URL, help="the account's region endpoint"),
        Option("data_field", "SEGMENT_PIPELINE_DOTDIGITAL_FIELD", "NOSTOSEGMENT"),
        Option("address_book", "SEGMENT_PIPELINE_DOTDIGITAL_ADDRESS_BOOK", "Nosto Customers"),
        Option("max_concurrent_imports", "SEGMENT_PIPELINE_DOTDIGITAL_CONCURRENT_IMPORTS", 3),
    )
    cron_env, cron = "SEGMENT_PIPELINE_DOTDIGITAL_SYNC_CRON", "0 6 * * *"
    freshness_hours = 26
    unset_separately = True  # an empty cell clears only under Overwrite: each cleared field gets its own file

    client: dd.DotdigitalClient | None
    settings: DotdigitalSettings

    @classmethod
    def client_from(cls, options: Mapping[str, Any]) -> dd.DotdigitalClient | None:
        if not (options["api_user"] and options["api_password"]):
            return None
        return dd.DotdigitalClient(options["api_user"], options["api_password"], base_url=options["base_url"])

    @classmethod
    def settings_from(cls, options: Mapping[str, Any]) -> DotdigitalSettings:
        return DotdigitalSettings(data_field=options["data_field"], address_book=options["address_book"],
                                  max_active_imports=int(options["max_concurrent_imports"]))

    def limits(self) -> Limits:
        s = self.settings
        sep = s.separator
        value = ValueFit(
            s.max_value_chars, sep.join,
            f"length(array_to_string(from_json(segments, '[\"VARCHAR\"]'), {_sql_literal(sep)}))")
        return Limits(records_per_request=s.contacts_per_import, bytes_per_request=dd.MAX_FILE_BYTES,
                      request_overhead=len(self._header(UPSERT)) + 1024, value=value,
                      rate_limits=dd.DEFAULT_LIMITS, concurrent_jobs=s.max_active_imports, in_flight=s.max_in_flight)

    def connect(self) -> Target:
        assert self.client is not None
        self.client.ensure_data_field(self.settings.data_field)
        for m in self.mappings:
            self.client.ensure_data_field(m.target, m.field_type or "String", what=f"mapped from {m.source}")
        self.container_ref = self.client.ensure_address_book(self.settings.address_book)
        return Target.of("dotdigital", self.client.base_url, ("book", self.container_ref),
                         ("field", self.settings.data_field.upper()))

    def dry_connect(self) -> None:
        self.container_ref = 0

    def _merge(self, action: str) -> str:
        return self.settings.upsert_merge_option if action == UPSERT else self.settings.clear_merge_option

    def _header(self, action: str) -> bytes:
        if action.startswith(UNSET_PREFIX):
            return dd.csv_header(action[len(UNSET_PREFIX):])
        if action == UPSERT and self.mappings:
            return dd.csv_header(self.settings.data_field, *(m.target for m in self.mappings))
        return dd.csv_header(self.settings.data_field)

    def segment_field(self) -> str:
        return self.settings.data_field

    def record_sql(self, action: str) -> str:
        if action.startswith(UNSET_PREFIX):  # Email and the one field, empty: cleared under Overwrite
            return f"({dd.csv_field_sql('email')} || ',' || chr(13) || chr(10))"
        if action != UPSERT or not self.mappings:
            return dd.contact_line_sql(self.settings.separator)
        names = f"array_to_string(from_json(segments, '[\"VARCHAR\"]'), {_sql_literal(self.settings.separator)})"
        seg = f"(CASE WHEN held IS DISTINCT FROM segments THEN {names} ELSE '' END)"
        cells = [dd.csv_field_sql(seg)] + [
            dd.csv_field_sql(f"coalesce(json_extract_string(fields, {path_literal(m.target)}), '')")
            for m in self.mappings]
        joined = " || ',' || ".join(cells)
        return f"({dd.csv_field_sql('email')} || ',' || {joined} || chr(13) || chr(10))"

    def build_request(self, action: str, payload: bytes) -> bytes:
        return self._header(action) + payload

    def submit(self, action: str, body: bytes) -> str:
        assert self.client is not None
        return self.client.start_import(self.container_ref, body, self._merge(action))

    def wait(self, handle: str) -> str:
        assert self.client is not None
        self.client.wait_import(handle)
        return handle

    def outcome(self, import_id: str) -> Outcome:
        assert self.client is not None
        report = self.client.import_report(import_id)
        counted = sum(v for k, v in report.items() if k not in REPORT_OK_KEYS and isinstance(v, int))
        faults = self.client.import_faults(import_id) if counted else []
        return Outcome({f.email: f.reason for f in faults if f.email}, counted=counted,
                       unattributed=sum(1 for f in faults if not f.email), ref=f"import {import_id}")

    def dry_run_name(self, action: str, index: int) -> str:
        return f"{action.replace(':', '-')}-{index:05d}-{self._merge(action)}.csv"

    def summary(self) -> dict[str, object]:
        return {"data_field": self.settings.data_field, "address_book": self.settings.address_book}

    def remove(self, emails: Sequence[str]) -> None:
        """Remove suppressed contacts from the address book (``capabilities.list_withdraw``)."""
        assert self.client is not None
        self.client.remove_from_address_book(self.container_ref, emails)

    def dry_removal(self, emails: Sequence[str]) -> bytes:
        return json.dumps({"addressBookId": self.container_ref, "emails": list(emails)}, indent=1).encode()

    # -- erasure (issue 15) -------------------------------------------------------------------
    erase_batch = 100

    def erase(self, emails: Sequence[str], known: Sequence[str] = ()) -> dict[str, Erasure]:
        """Per address: look the contact up (``GET /v2/contacts/{email}``; ``404``: no such contact,
        confirmed), delete it (``DELETE /v2/contacts/{id}``; ``404``: already gone) and look it up
        again: confirmed once dotdigital no longer finds it (``v2-api-swagger.json``,
        ``ApiContact_GetContactByEmail`` / ``ApiContact_DeleteContact``). Deleting the contact
        removes it from every address book of the account, not only ours."""
        assert self.client is not None
        out: dict[str, Erasure] = {}
        for email in emails:
            try:
                contact = self.client.contact_id(email)
                if contact is None:
                    out[email] = Erasure("confirmed", "no dotdigital contact has this address")
                    continue
                self.client.delete_contact(contact)
                if self.client.contact_id(email) is None:
                    out[email] = Erasure("confirmed", "contact deleted; no longer found")
                else:
                    out[email] = Erasure("done", "contact deleted (204) but still found: checked again on the next run")
            except EspAuthError:
                raise
            except EspError as exc:
                out[email] = Erasure("failed", str(exc).replace(email, "<address>")[:500])
        return out
