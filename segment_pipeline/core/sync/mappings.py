"""Field mappings: which profile attributes and traits each destination receives, as data.

A user file (YAML, default ``data/destinations.yaml``, path from ``SEGMENT_PIPELINE_DESTINATIONS``;
optional: without it every destination gets the segment names only, as before) maps a field of the
data model (:meth:`~segment_pipeline.core.model.DataModel.profile_fields`: an attribute, an identity
link or a computed trait, all columns of the ``profiles`` table) to a destination field::

    klaviyo:
      mappings:
        - {from: first_name, to: first_name}            # a standard profile attribute
        - {from: city, to: location.city}               # a standard location attribute
        - {from: loyalty_tier, to: loyalty_tier}        # a custom profile property
        - {from: last_order_at, to: last_order_at, when_null: clear}
    dotdigital:
      mappings:
        - {from: first_name, to: FIRSTNAME}
        - {from: order_count, to: ORDERS}               # a Numeric data field, created if missing
    braze:
      mappings:
        - {from: first_name, to: first_name}            # a standard attribute
        - {from: total_revenue, to: lifetime_revenue}   # a custom attribute

Each entry is ``from`` (the model field), ``to`` (the destination field) and ``when_null`` (what
a missing value does; ``null:`` is read the same): ``leave`` (default: nothing is sent, the destination keeps what it holds) or
``clear`` (the destination's clear is sent: Klaviyo ``null`` for a standard attribute, ``unset`` for
a custom property; dotdigital an empty cell under the ``Overwrite`` merge option; Braze ``null``).

Refused at load time, with :class:`MappingFileError` naming the file and the entry
(``data/destinations.yaml: klaviyo.mappings[2] (to: subscriptions): ...``): an unknown model field,
``email`` (the identifier every destination is keyed on), a destination field whose type the source
cannot fill (a date into Klaviyo ``first_name``), a consent source (an attribute the privacy file
declares under ``consent:``, or one whose name :data:`CONSENT_WORDS` matches, e.g.
``email_consent``: the consent gate decides who is sent, its value is never sent), a consent,
subscription or opt-in field (Klaviyo
``subscriptions``/consent keys, dotdigital ``OPTINTYPE``/``STATUS``/consent columns, Braze
``email_subscribe``/``push_subscribe``/``subscription_groups``: consent is never ours to set, in line
with the vendors' reference integrations), the field that holds the segment names, two mappings
to the same destination field, and any mapping for Meta (its custom audiences hold members only).

Value conversions (:func:`value_sql`; each vendor fact with its source):

* Klaviyo: strings, numbers, booleans and lists of strings as JSON; a date as ``YYYY-MM-DD`` and a
  timestamp as ``YYYY-MM-DDTHH:MM:SSZ`` (UTC), both formats Klaviyo recognizes as dates
  ("Acceptable date and timestamp formats for profile and event properties",
  https://developers.klaviyo.com/en/docs/acceptable_date_and_timestamp_formats_for_profile_and_event_properties).
  Standard attributes and ``location.*`` take strings (``location.latitude``/``longitude`` also
  numbers), as the ``ProfileUpsertQueryResourceObject`` of the bulk import spec
  (``segment_pipeline_tests/fakes/specs/klaviyo/bulk_import_profiles.json``) declares them.
* dotdigital: the data field's type (``ApiDataTypes`` of the v2 spec: ``String``, ``Numeric``,
  ``Date``, ``Boolean``) follows the source: strings and lists (joined with ``|``) -> String,
  integer/number/money -> Numeric, date/timestamp -> Date (``YYYY-MM-DDTHH:MM:SS``, UTC, the ISO 8601
  ``date-time`` the v2 spec uses for every date), boolean -> Boolean (``true``/``false``). A text
  field holds 255 characters (dotdigital support, "Creating and deleting contact data fields",
  https://support.dotmailer.com/hc/en-gb/articles/212211908-Creating-and-deleting-contact-data-fields).
* Braze: strings, numbers, booleans and arrays of strings as JSON; a timestamp (or date) as ISO 8601
  ``YYYY-MM-DDTHH:MM:SSZ`` (Braze "Data types": Time "Date and time in a standard format (ISO 8601)";
  String "255 characters or fewer",
  https://www.braze.com/docs/user_guide/data/activation/custom_data/data_types/); the standard
  ``dob`` as ``YYYY-MM-DD`` (user attributes object,
  https://www.braze.com/docs/api/objects_filters/user_attributes_object/).

A value longer than the destination field holds (dotdigital and Braze strings: 255 characters) is
not sent (the destination keeps what it holds), counted per field in the run's ``fields_over_limit``
and named in its notes; it is never cut.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from segment_pipeline.core.model import DataModel, format_errors
from segment_pipeline.core.safe_yaml import YamlFileError, cap_message, load_yaml_file
from segment_pipeline.core.warehouse import sql_ident

NUMERIC = ("integer", "number", "money")
STRINGISH = ("string",)
#: Characters a text value may hold at dotdigital and Braze (sources in the module docstring).
MAX_TEXT_CHARS = 255

# -- what each destination accepts ------------------------------------------------------------
#: Klaviyo standard profile attributes (bulk import spec) -> model types they accept.
KLAVIYO_STANDARD: dict[str, tuple[str, ...]] = {
    **{k: STRINGISH for k in ("first_name", "last_name", "phone_number", "organization", "locale", "title",
                               "image", "external_id")},
    **{f"location.{k}": STRINGISH for k in ("address1", "address2", "city", "country", "region", "zip",
                                            "timezone", "ip")},
    "location.latitude": (*STRINGISH, "number", "money"),
    "location.longitude": (*STRINGISH, "number", "money"),
}
#: Klaviyo names never written: the identifiers and consent/subscription state (the bulk import
#: spec's ``subscriptions``; the consent keys Klaviyo's own integrations keep out of properties).
KLAVIYO_REFUSED = {"email", "id", "_kx", "subscriptions", "consent", "email_consent", "sms_consent",
                   "accepts_marketing", "subscribed", "opt_in", "marketing_consent", "sms_marketing",
                   "email_marketing", "push_marketing"}
#: dotdigital columns that set consent or opt-in instead of a data field (contact import
#: columns of the v2 API), and the identifier.
DOTDIGITAL_REFUSED = {"EMAIL", "OPTINTYPE", "OPT_IN_TYPE", "EMAILTYPE", "STATUS", "CONSENTDATETIME", "CONSENTIP",
                      "CONSENTTEXT", "CONSENTURL", "CONSENTUSERAGENT", "MOBILENUMBER"}
#: dotdigital built-in contact data fields (all text).
DOTDIGITAL_BUILTIN = ("FIRSTNAME", "LASTNAME", "FULLNAME", "GENDER", "POSTCODE")
DOTDIGITAL_TYPES = {"string": "String", "list[string]": "String", "integer": "Numeric", "number": "Numeric",
                    "money": "Numeric", "date": "Date", "timestamp": "Date", "boolean": "Boolean"}
#: Braze standard attributes of the user attributes object -> model types they accept.
BRAZE_STANDARD: dict[str, tuple[str, ...]] = {
    **{k: STRINGISH for k in ("first_name", "last_name", "phone", "home_city", "country", "gender", "language",
                               "time_zone")},
    "dob": ("date",),
}
#: Braze fields never written: identifiers, subscription and consent state, tracking opt-outs.
BRAZE_REFUSED = {"email", "external_id", "braze_id", "user_alias", "email_subscribe", "push_subscribe",
                 "subscription_groups", "email_open_tracking_disabled", "email_click_tracking_disabled",
                 "marked_email_as_spam_at", "push_tokens", "current_location", "date_of_first_session",
                 "date_of_last_session", "_update_existing_only"}
#: Consent-looking names refused for every destination (besides each one's own list above).
CONSENT_WORDS = re.compile(r"consent|^opt_?in|_subscribe$|^subscriptions?$|^subscription_groups?$|^unsubscribed?$",
                           re.IGNORECASE)
TARGET_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_.\- ]{0,99}$")
DOTDIGITAL_NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,99}$")

Vendor = Literal["klaviyo", "dotdigital", "braze"]


class MappingFileError(ValueError):
    """A destinations file problem, naming the file and the entry."""


@dataclass(frozen=True)
class FieldMapping:
    """One validated mapping: model field ``source`` (its model type ``source_type``) -> destination
    field ``target`` (dotdigital: upper case), ``null`` (``when_null``) ``"leave"`` or ``"clear"``; ``kind`` is
    ``standard``/``custom`` (Klaviyo also ``location``), ``field_type`` the dotdigital data field
    type (``String``/``Numeric``/``Date``/``Boolean``; None elsewhere), ``max_chars`` the longest
    text the field holds (None: no documented limit)."""

    source: str
    source_type: str
    target: str
    null: str = "leave"
    kind: str = "custom"
    field_type: str | None = None
    max_chars: int | None = None

    @property
    def clears(self) -> bool:
        return self.null == "clear"


class _Entry(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    from_: str = Field(alias="from", min_length=1)
    to: str = Field(min_length=1)
    when_null: Literal["leave", "clear"] = "leave"
    type: Literal["String", "Numeric", "Date", "Boolean"] | None = None  # dotdigital only: checked below


    @model_validator(mode="before")
    @classmethod
    def _yaml_null_key(cls, value: Any) -> Any:
        """``null: clear`` in YAML is a key None (YAML's null): read it as ``when_null``."""
        if isinstance(value, dict) and None in value:
            value = {("when_null" if k is None else k): v for k, v in value.items()}
        return value


class _DestinationEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")
    mappings: list[_Entry] = Field(default_factory=list)


@dataclass(frozen=True)
class DestinationMappings:
    """Every destination's validated mappings (``by_destination[name]``; empty tuple: none)."""

    by_destination: dict[str, tuple[FieldMapping, ...]]
    source: str = "<memory>"

    def of(self, destination: str) -> tuple[FieldMapping, ...]:
        return self.by_destination.get(destination, ())


NONE = DestinationMappings({})


def _check(vendor: str, e: _Entry, model_types: dict[str, str], reserved: str | None,
           consent: Mapping[str, str] | None = None) -> FieldMapping:
    """One entry -> :class:`FieldMapping`, or ``ValueError`` with the reason."""
    if e.from_ == "email":
        raise ValueError("email is the identifier every destination is keyed on; it is sent already")
    if consent and e.from_ in consent:
        raise ValueError(f"{e.from_} is a consent attribute ({consent[e.from_]}); consent is never sent by a sync "
                         "(it gates who is sent; manage consent in the destination)")
    if CONSENT_WORDS.search(e.from_):
        raise ValueError(f"{e.from_!r} names a consent, subscription or opt-in value; consent is never sent by a "
                         "sync (manage it in the destination)")
    if e.from_ not in model_types:
        raise ValueError(f"unknown attribute or trait {e.from_!r}; known: {', '.join(sorted(model_types))}")
    st = model_types[e.from_]
    target = e.to.strip()
    if e.type is not None and vendor != "dotdigital":
        raise ValueError("type applies to dotdigital data fields only")
    own = {"klaviyo": KLAVIYO_REFUSED, "dotdigital": DOTDIGITAL_REFUSED, "braze": BRAZE_REFUSED}.get(vendor, set())
    consent = {x.lower() for x in own} - {"email", "id", "_kx", "external_id", "braze_id", "user_alias",
                                          "mobilenumber", "current_location", "date_of_first_session",
                                          "date_of_last_session", "_update_existing_only", "push_tokens"}
    if CONSENT_WORDS.search(target) or target.lower() in consent:
        raise ValueError(f"{target!r} is a consent, subscription or opt-in field; consent is never set by a sync "
                         "(manage it in the destination)")
    if vendor == "klaviyo":
        if target.lower() in KLAVIYO_REFUSED or target.startswith("$"):
            raise ValueError(f"{target!r} cannot be mapped (a Klaviyo identifier or special property)")
        if reserved and target == reserved:
            raise ValueError(f"{target!r} is the property holding the segment names")
        if target in KLAVIYO_STANDARD:
            if st not in KLAVIYO_STANDARD[target]:
                raise ValueError(f"{e.from_} is {st}; Klaviyo {target} takes {' or '.join(KLAVIYO_STANDARD[target])}")
            return FieldMapping(e.from_, st, target, e.when_null, "location" if target.startswith("location.") else "standard")
        if target.startswith("location.") or not TARGET_RE.match(target):
            raise ValueError(f"{target!r} is not a Klaviyo standard attribute "
                             f"({', '.join(KLAVIYO_STANDARD)}) nor a custom property name "
                             "(a letter, then letters, digits, '_', '-', '.', ' ', at most 100)")
        return FieldMapping(e.from_, st, target, e.when_null, "custom")
    if vendor == "dotdigital":
        name = target.upper()
        if not DOTDIGITAL_NAME_RE.match(target):
            raise ValueError(f"{target!r} is not a dotdigital data field name (a letter, then letters, digits, '_'; "
                             "no spaces)")
        if name in DOTDIGITAL_REFUSED:
            raise ValueError(f"{name} is not a data field (dotdigital's identifier or consent/opt-in column)")
        if reserved and name == reserved.upper():
            raise ValueError(f"{name} is the data field holding the segment names")
        want = DOTDIGITAL_TYPES[st]
        if name in DOTDIGITAL_BUILTIN and want != "String":
            raise ValueError(f"{name} is a built-in text field; {e.from_} is {st}")
        if e.type is not None and e.type != want and not (e.type == "String" and st in NUMERIC + ("boolean",)):
            raise ValueError(f"{e.from_} is {st}, which a {e.type} data field cannot hold (use {want})")
        ftype = e.type or want
        return FieldMapping(e.from_, st, name, e.when_null, "standard" if name in DOTDIGITAL_BUILTIN else "custom",
                            ftype, MAX_TEXT_CHARS if ftype == "String" else None)
    if vendor == "braze":
        if target.lower() in BRAZE_REFUSED or target.startswith("$"):
            raise ValueError(f"{target!r} cannot be mapped (a Braze identifier or reserved field)")
        if reserved and target == reserved:
            raise ValueError(f"{target!r} is the attribute holding the segment names")
        if target in BRAZE_STANDARD:
            if st not in BRAZE_STANDARD[target]:
                raise ValueError(f"{e.from_} is {st}; Braze {target} takes {' or '.join(BRAZE_STANDARD[target])}")
            return FieldMapping(e.from_, st, target, e.when_null, "standard",
                                max_chars=MAX_TEXT_CHARS if st == "string" else None)
        if not TARGET_RE.match(target):
            raise ValueError(f"{target!r} is not a Braze custom attribute name")
        return FieldMapping(e.from_, st, target, e.when_null, "custom",
                            max_chars=MAX_TEXT_CHARS if st == "string" else None)
    raise ValueError(f"{vendor} holds audience members only; it has no profile fields to map")


#: The option naming the field that carries the segment names, per destination (never a mapping target).
SEGMENT_FIELD_DEFAULTS = {"klaviyo": "nosto_segment", "dotdigital": "NOSTOSEGMENT", "braze": "nosto_segment"}


def parse_mappings(doc: Any, model: DataModel, source: str = "<memory>", destinations: tuple[str, ...] = (),
                   reserved: dict[str, str] | None = None,
                   consent: Mapping[str, str] | None = None) -> DestinationMappings:
    """Validate a parsed destinations document against ``model``.

    ``destinations``: the registered destination names (an unknown top-level key is an error);
    ``reserved``: destination -> the field holding its segment names (default
    :data:`SEGMENT_FIELD_DEFAULTS`); ``consent``: the privacy file's consent attributes -> where each
    is declared (:meth:`~segment_pipeline.core.privacy.config.PrivacyConfig.consent_attributes`),
    refused as a source like a source whose name :data:`CONSENT_WORDS` matches. Raises
    :class:`MappingFileError` naming ``source`` and the entry.
    """
    if doc is None:
        return DestinationMappings({}, source)
    if not isinstance(doc, dict):
        raise MappingFileError(f"{source}: expected a mapping of destination name -> {{mappings: [...]}}")
    reserved = {**SEGMENT_FIELD_DEFAULTS, **(reserved or {})}
    types = model.profile_fields()
    out: dict[str, tuple[FieldMapping, ...]] = {}
    problems: list[str] = []
    for name, body in doc.items():
        if destinations and name not in destinations:
            problems.append(f"{name}: unknown destination; known: {', '.join(sorted(destinations))}")
            continue
        try:
            entry = _DestinationEntry.model_validate(body if body is not None else {})
        except ValidationError as exc:
            problems.append(f"{name}.{format_errors(exc)}")
            continue
        if name not in ("klaviyo", "dotdigital", "braze") and entry.mappings:
            problems.append(f"{name}.mappings: {name} holds audience members only (hashed emails); "
                            "it has no profile fields to map")
            continue
        seen: dict[str, int] = {}
        done: list[FieldMapping] = []
        for i, e in enumerate(entry.mappings):
            where = f"{name}.mappings[{i}] (from: {e.from_}, to: {e.to})"
            try:
                m = _check(name, e, types, reserved.get(name), consent)
            except ValueError as exc:
                problems.append(f"{where}: {exc}")
                continue
            key = m.target.lower() if name != "dotdigital" else m.target
            if key in seen:
                problems.append(f"{where}: {m.target!r} is mapped twice (also {name}.mappings[{seen[key]}])")
                continue
            seen[key] = i
            done.append(m)
        out[name] = tuple(done)
    if problems:
        raise MappingFileError(cap_message(f"{source}: " + "; ".join(problems)))
    return DestinationMappings(out, source)


def load_mappings(path: str | Path | None, model: DataModel, destinations: tuple[str, ...] = (),
                  reserved: dict[str, str] | None = None,
                  consent: Mapping[str, str] | None = None) -> DestinationMappings:
    """Read and validate the destinations file (as :func:`parse_mappings`); a missing file means no
    mappings (:data:`NONE`)."""
    if path is None or not Path(path).is_file():
        return DestinationMappings({}, str(path) if path else "<none>")
    try:
        doc = load_yaml_file(path, "destinations file")
    except YamlFileError as exc:
        raise MappingFileError(str(exc)) from None
    return parse_mappings(doc, model, str(path), destinations, reserved, consent)


# -- conversion ----------------------------------------------------------------------------------
_ISO_TS = "%Y-%m-%dT%H:%M:%SZ"


def value_sql(m: FieldMapping, vendor: str, alias: str = "p") -> str:
    """DuckDB expression: the value of ``m`` for one ``profiles`` row as the JSON text the
    destination is sent (NULL when the profile has no value; an empty string or list counts as none)."""
    col = f"{alias}.{sql_ident(m.source)}"
    st = m.source_type
    if st == "string":
        return f"to_json(NULLIF({col}, ''))::VARCHAR"
    if st in ("integer", "number"):
        return f"to_json({col})::VARCHAR"
    if st == "money":
        return f"to_json({col}::DOUBLE)::VARCHAR"
    if st == "boolean":
        return f"to_json({col})::VARCHAR"
    if st == "list[string]":
        if vendor == "dotdigital":
            return f"to_json(NULLIF(array_to_string({col}, '|'), ''))::VARCHAR"
        return f"(CASE WHEN len({col}) > 0 THEN to_json({col})::VARCHAR END)"
    if st == "date":
        if vendor == "klaviyo" or (vendor == "braze" and m.target == "dob"):
            return f"to_json(strftime({col}, '%Y-%m-%d'))::VARCHAR"
        if vendor == "dotdigital":
            return f"to_json(strftime({col}, '%Y-%m-%dT00:00:00'))::VARCHAR"
        return f"to_json(strftime({col}, '%Y-%m-%dT00:00:00Z'))::VARCHAR"
    if st == "timestamp":
        if vendor == "dotdigital":
            return f"to_json(strftime({col}, '%Y-%m-%dT%H:%M:%S'))::VARCHAR"
        return f"to_json(strftime({col}, '{_ISO_TS}'))::VARCHAR"
    raise ValueError(f"no conversion for model type {st}")  # pragma: no cover - every model type is above


def over_limit_sql(m: FieldMapping, value: str) -> str:
    """DuckDB boolean: the JSON text ``value`` is a string longer than the field holds."""
    if m.max_chars is None:
        return "FALSE"
    return f"coalesce(length(json_extract_string({value}, '$')) > {int(m.max_chars)}, FALSE)"
