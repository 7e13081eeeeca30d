"""Segment definitions as data: loading, validation against the data model, compilation to DuckDB SQL.

A segments file (YAML) holds a list of segment definitions::

    segments:
      - id: loyal_customers               # [a-z0-9_]+, unique; used in keys and file names
        name: Loyal customers             # free text, shown to users and sent to partners
        description: Three or more orders
        type: dynamic                     # dynamic (refreshed daily) | static (frozen)
        status: active                    # active | inactive
        active_from: 2026-11-05           # optional, inclusive
        active_until: 2026-12-24          # optional, exclusive: inactive from that day on
        sync: {klaviyo: true, dotdigital: false}
        rule:
          all:
            - {field: orders_total, op: ">=", value: 3}

Rules name what the declared data model (:mod:`segment_pipeline.core.model`) declares, and
nothing else; see ``README.md`` ("Segment rules") for the full language:

* ``{field, op, value}`` compares a profile field (``DataModel.profile_fields()``: identity links,
  attributes, traits, and the built-ins ``email``, ``updated_at``, ``first_seen_at``,
  ``last_seen_at``, ``random_bucket``). The operators depend on the field's type
  (:data:`OPERATORS`): text ``= != < <= > >= in, not in, between, contains`` (case-insensitive
  substring); numbers (integer, number, money) and dates/timestamps the comparisons, ``in``,
  ``not in``, ``between``; booleans ``is true, is false, =, !=``; lists of strings ``contains``
  (an element equals the value), ``contains any`` / ``contains all`` (a list of values); every
  type ``is null, is not null`` (a list is null when it is NULL or empty). Date/timestamp values
  may be ``YYYY-MM-DD`` or ``{days_ago: N}`` relative to the as-of day.
* ``{all: [...]}``, ``{any: [...]}``, ``{not: node}``.
* ``{event: {name, within_days, where: [{property, op, value}], measure: count|sum, property,
  op, value}}`` compares the count (or the sum of a numeric ``property``) of the identity's
  events named ``name`` (one declared event name or a list; omitted: any event) in the window
  whose declared properties pass every ``where`` filter (operators by the property's type, as
  for ``field``).
* ``{affinity: {property, value, within_days, event, min_share, min_interactions, top}}`` on a
  declared ``string`` or ``list[string]`` property: interactions are the events in the window
  (default 90 days; of the ``event`` names, default all) whose property is not null (for a list,
  each non-null element is one interaction); ``min_interactions`` (default 1) counts all of them
  (the share's denominator), ``min_share`` is the value's count divided by that total, and
  ``top: true`` means the value is the identity's most frequent one (a tie goes to the value
  sorting last in byte, i.e. code point, order).
* ``{random_bucket: {from, to}}``: stable 0-9999 bucket per identity, inclusive range. The
  profile's ``random_bucket`` is ``md5_number(email) % 10000``: the MD5 digest of the UTF-8
  normalized email read as a little-endian unsigned 128-bit integer (DuckDB's ``md5_number``).
* ``{segment: other_id}``: membership of another segment on the same day.

Older spellings still load, as aliases of the canonical keys: ``type`` for the event's ``name``,
``field`` for a ``where`` filter's ``property``, ``sum_field`` for the event's ``property``,
``dimension`` for the affinity's ``property`` and ``event_types`` for its ``event``. Loaded rules
are kept in the canonical spelling (:attr:`Segment.rule`).

Every event name, property and field must be declared in the model: an unknown one (a typo, or
an event a source keeps with ``undeclared_events: keep`` but the model does not list) is an
error naming it and what is declared. Declaring an event takes one line (``Email Opened: {}``).

Loading (:func:`load_catalog`) is bounded whatever the file holds: the YAML limits of
:mod:`segment_pipeline.core.safe_yaml` (size, encoding, nesting, aliases, duplicate keys), then
``MAX_RULE_DEPTH``/``MAX_RULE_NODES`` per rule and ``MAX_EXPANDED_*``/``MAX_CATALOG_NODES`` with
segment references expanded. Each segment and each rule node is validated by a pydantic model
(:class:`SegmentEntry`, :class:`FieldRule`, :class:`EventRule`, :class:`AffinityRule`,
:class:`RandomBucketRule`, :class:`SegmentRef`) with the data model in the validation context.
Every error is a :class:`SegmentDefinitionError` naming the file, the segment when known, the
rule path (``rule.all[1].event.where[0]``) and the problem, in at most
``safe_yaml.MAX_MESSAGE_CHARS`` characters, user values abbreviated.

Compilation never splices a user-supplied value into SQL text: every value becomes a bound
parameter (``$p0``, ``$p1`` ...); identifiers are names the model declares, always quoted.
Every leaf is wrapped in ``coalesce(..., false)`` so rules use two-valued logic: a missing value
never matches a comparison, and ``not`` of a non-match is a match.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import math
import re
import reprlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from yaml.nodes import MappingNode, ScalarNode, SequenceNode

from segment_pipeline.core.model import NUMERIC_TYPES, DataModel, load_model
from segment_pipeline.core.safe_yaml import YamlFileError, cap_message, load_yaml_file
from segment_pipeline.core.sync.destinations import DESTINATIONS
from segment_pipeline.core.warehouse import sql_ident as _ident

SEGMENT_TYPES = ("dynamic", "static")
STATUSES = ("active", "inactive")
#: the sync toggles: one per registered destination, plus the Google Customer Match file export
INTEGRATIONS = (*DESTINATIONS, "google_customer_match")

COMPARISON_OPS = {"=": "=", "==": "=", "!=": "<>", "<>": "<>", "<": "<", "<=": "<=", ">": ">", ">=": ">="}
LIST_OPS = ("in", "not in")
NULL_OPS = ("is null", "is not null")
BOOLEAN_OPS = ("is true", "is false")
ELEMENT_OPS = ("contains any", "contains all")
ALL_OPS = (*COMPARISON_OPS, *LIST_OPS, "between", "contains", *ELEMENT_OPS, *BOOLEAN_OPS, *NULL_OPS)
_ORDERED_OPS = (*COMPARISON_OPS, *LIST_OPS, "between", *NULL_OPS)
#: The operators of a field or property, by its model type.
OPERATORS: dict[str, tuple[str, ...]] = {
    "string": (*_ORDERED_OPS, "contains"),
    "integer": _ORDERED_OPS,
    "number": _ORDERED_OPS,
    "money": _ORDERED_OPS,
    "date": _ORDERED_OPS,
    "timestamp": _ORDERED_OPS,
    "boolean": ("=", "==", "!=", "<>", *BOOLEAN_OPS, *NULL_OPS),
    "list[string]": ("contains", *ELEMENT_OPS, *NULL_OPS),
}
#: Types an affinity's property may have.
AFFINITY_TYPES = ("string", "list[string]")
RULE_KINDS = ("all", "any", "not", "field", "event", "affinity", "random_bucket", "segment")

SEGMENT_ID_RE = re.compile(r"^[a-z0-9][a-z0-9_]{0,63}$")
#: Nesting of one segment's own rule (``all``/``any``/``not`` levels).
MAX_RULE_DEPTH = 32
#: Rule nodes (``all``/``any``/``not`` and leaves) in one segment's own rule.
MAX_RULE_NODES = 1000
#: Nesting and size of a rule with every ``{segment: id}`` replaced by that segment's rule, which
#: is how it compiles; and the size of all live rules together (one query).
MAX_EXPANDED_DEPTH = 64
MAX_EXPANDED_NODES = 5_000
MAX_CATALOG_NODES = 50_000
#: ``{days_ago: N}`` range (about 100 years either way).
MAX_DAYS_AGO = 36_500
#: ``within_days`` range.
MAX_WINDOW_DAYS = 3650


class SegmentDefinitionError(ValueError):
    """A segment definition is invalid; the message names the file, the segment and the problem.

    Messages are short whatever the input: quoted values are abbreviated and the whole message is
    cut to ``safe_yaml.MAX_MESSAGE_CHARS`` characters.
    """

    def __init__(self, message: str):
        super().__init__(cap_message(message))


_repr = reprlib.Repr()  # (keyword arguments need Python 3.12)
_repr.maxlevel, _repr.maxstring, _repr.maxother = 2, 60, 60
_repr.maxlist = _repr.maxtuple = _repr.maxdict = _repr.maxset = 5


def _brief(value: Any) -> str:
    """A bounded ``repr`` of a user-supplied value for messages (never walks a huge structure)."""
    return _repr.repr(value)


def _keys(mapping: Mapping) -> str:
    """The keys of a user mapping for messages: sorted as text, abbreviated."""
    return _brief(sorted(mapping, key=str))


def _names(names, limit: int = 40) -> str:
    """Declared names for a message: sorted, each abbreviated, at most ``limit`` of them."""
    ordered = sorted(names)
    shown = ", ".join(_brief(n) for n in ordered[:limit])
    return f"[{shown}{', ...' if len(ordered) > limit else ''}]"


@dataclass(frozen=True)
class Segment:
    id: str
    name: str
    rule: Mapping[str, Any]  # validated, in the canonical spelling
    description: str = ""
    type: str = "dynamic"
    status: str = "active"
    active_from: dt.date | None = None
    active_until: dt.date | None = None
    sync: Mapping[str, bool] = field(default_factory=dict)

    def is_active_on(self, day: dt.date) -> bool:
        """Active status, inside the optional ``[active_from, active_until)`` window."""
        if self.status != "active":
            return False
        if self.active_from and day < self.active_from:
            return False
        return not (self.active_until and day >= self.active_until)

    def referenced_segments(self) -> list[str]:
        return sorted(set(_walk_segment_refs(self.rule)))

    def leaves(self) -> list[Mapping[str, Any]]:
        """The leaf nodes of this segment's own rule (``field``, ``event``, ``affinity``,
        ``random_bucket``, ``segment``), in rule order."""
        out, stack = [], [self.rule]
        while stack:
            node = stack.pop()
            if "not" in node:
                stack.append(node["not"])
            elif "all" in node or "any" in node:
                stack.extend(reversed(node.get("all") or node.get("any")))
            else:
                out.append(node)
        return out


@dataclass(frozen=True)
class Catalog:
    segments: tuple[Segment, ...]
    source: str = "<memory>"
    model: DataModel | None = None  # the data model the rules were validated against

    def by_id(self) -> dict[str, Segment]:
        return {s.id: s for s in self.segments}

    def __getitem__(self, segment_id: str) -> Segment:
        try:
            return self.by_id()[segment_id]
        except KeyError:
            raise KeyError(f"unknown segment {segment_id!r}") from None

    def synced(self, integration: str) -> dict[str, str]:
        """``{segment_id: name}`` of the segments with the integration's sync toggle on."""
        return {s.id: s.name for s in self.segments if s.sync.get(integration)}

    def evaluation_order(self) -> list[Segment]:
        """Segments ordered so that every segment comes after the segments it references."""
        seen: set[str] = set()
        ordered: list[Segment] = []
        by_id = self.by_id()

        def visit(seg: Segment) -> None:
            if seg.id in seen:
                return
            seen.add(seg.id)
            for ref in seg.referenced_segments():
                visit(by_id[ref])
            ordered.append(seg)

        for seg in self.segments:
            visit(seg)
        return ordered

    def columns_read(self, segment_ids: list[str]) -> tuple[list[str], list[str]]:
        """``(profile columns, raw_events property columns)`` the rules of ``segment_ids`` (and of
        the segments they reference) read, each sorted."""
        by_id, seen, stack = self.by_id(), set(), list(segment_ids)
        fields: set[str] = set()
        props: set[str] = set()
        while stack:
            seg = by_id[stack.pop()]
            if seg.id in seen:
                continue
            seen.add(seg.id)
            for leaf in seg.leaves():
                if "field" in leaf:
                    fields.add(leaf["field"])
                elif "random_bucket" in leaf:
                    fields.add("random_bucket")
                elif "segment" in leaf:
                    stack.append(leaf["segment"])
                elif "event" in leaf:
                    props.update(c["property"] for c in leaf["event"].get("where") or [])
                    if leaf["event"].get("property"):
                        props.add(leaf["event"]["property"])
                elif "affinity" in leaf:
                    props.add(leaf["affinity"]["property"])
        return sorted(fields), sorted(props)

    def preview_fields(self, segment_id: str, limit: int = 4) -> list[str]:
        """Profile fields that show why identities are in a segment (for member previews), at
        most ``limit``, in first-use order: the fields its rule compares; for an affinity on a
        property, the model's ``top`` traits of that property (and their share); for an event
        condition, the model's ``count``/``sum`` traits of those events without filters. Rules of
        referenced segments count too (each segment once). ``email`` is never listed."""
        model = self.model or _default_model()
        by_id, out, seen, stack = self.by_id(), [], set(), [segment_id]

        def add(name: str) -> None:
            if name != "email" and name not in out:
                out.append(name)

        while stack and len(out) < limit:
            seg = by_id[stack.pop(0)]  # breadth first: a segment's own fields before its references
            if seg.id in seen:
                continue
            seen.add(seg.id)
            for leaf in seg.leaves():
                if "field" in leaf:
                    add(leaf["field"])
                elif "random_bucket" in leaf:
                    add("random_bucket")
                elif "segment" in leaf:
                    stack.append(leaf["segment"])
                elif "affinity" in leaf:
                    for name, trait in model.traits.items():
                        if trait.function == "top" and trait.aggregation.property == leaf["affinity"]["property"]:
                            add(name)
                            add(f"{name}_share")
                elif "event" in leaf:
                    names = set(_as_list(leaf["event"].get("name")) or ())
                    for name, trait in model.traits.items():
                        agg = trait.aggregation
                        if trait.function in ("count", "sum") and not agg.where and names & set(agg.event_names()):
                            add(name)
        return out[:limit]


# ---------------------------------------------------------------------------------------------
# Values and comparisons (shared by profile fields and event properties)
# ---------------------------------------------------------------------------------------------


def _is_number(value: Any) -> bool:
    """An int or float that is finite as a float (not a bool, not NaN or infinity, not 10**400)."""
    if not isinstance(value, int | float) or isinstance(value, bool):
        return False
    try:
        return math.isfinite(float(value))
    except OverflowError:
        return False


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _timestamp_value(value: Any) -> dt.datetime:
    """A timestamp rule value (text or YAML date/datetime) as naive UTC; ValueError/OverflowError if invalid."""
    text = str(value).replace("Z", "+00:00")
    parsed = dt.datetime.fromisoformat(text) if "T" in text or " " in text else dt.datetime.fromisoformat(text + "T00:00:00")
    if parsed.tzinfo is not None:
        parsed = parsed.astimezone(dt.UTC).replace(tzinfo=None)
    return parsed


def _check_value_type(value: Any, ftype: str, what: str) -> None:
    """Refuse a rule value that does not fit the model type ``ftype`` of ``what`` (e.g. ``field 'x'``)."""
    ok = False
    if ftype in ("string", "list[string]"):
        ok = isinstance(value, str)
    elif ftype in NUMERIC_TYPES:
        ok = _is_number(value)
    elif ftype == "boolean":
        ok = isinstance(value, bool)
    elif ftype in ("date", "timestamp"):
        if isinstance(value, Mapping):
            days = value.get("days_ago")
            ok = set(value) == {"days_ago"} and _is_int(days) and -MAX_DAYS_AGO <= days <= MAX_DAYS_AGO
        elif isinstance(value, dt.date | str):
            try:
                if ftype == "timestamp":
                    _timestamp_value(value)
                elif not isinstance(value, dt.date):
                    dt.date.fromisoformat(value)
                ok = True
            except (ValueError, OverflowError):
                ok = False
    if not ok:
        finite = isinstance(value, int | float) and not isinstance(value, bool)
        expected = {
            "string": "text",
            "list[string]": "text (one element)",
            "boolean": "true or false",
            "date": f"a date YYYY-MM-DD or {{days_ago: N}} (N from -{MAX_DAYS_AGO} to {MAX_DAYS_AGO})",
            "timestamp": f"a date/timestamp or {{days_ago: N}} (N from -{MAX_DAYS_AGO} to {MAX_DAYS_AGO})",
        }.get(ftype, "a finite number" if finite else "a number")
        raise ValueError(f"{what} is {ftype}: value {_brief(value)} is not {expected}")


def _check_comparison(what: str, ftype: str, op: Any, has_value: bool, value: Any) -> None:
    """Refuse an operator that does not apply to ``ftype`` or a value that does not fit it."""
    if not isinstance(op, str) or op not in ALL_OPS:
        raise ValueError(f"{what}: unknown operator {_brief(op)}; known: {list(ALL_OPS)}")
    if op not in OPERATORS[ftype]:
        raise ValueError(f"{what} is {ftype}: operator {op!r} does not apply; {ftype} takes {list(OPERATORS[ftype])}")
    if op in NULL_OPS or op in BOOLEAN_OPS:
        if has_value:
            raise ValueError(f"{what}: operator {op!r} takes no value")
        return
    if not has_value:
        raise ValueError(f"{what}: operator {op!r} needs a value")
    if op in (*LIST_OPS, *ELEMENT_OPS):
        if not isinstance(value, list) or not value:
            raise ValueError(f"{what}: operator {op!r} needs a non-empty list")
        for v in value:
            _check_value_type(v, ftype, what)
    elif op == "between":
        if not isinstance(value, list) or len(value) != 2:
            raise ValueError(f"{what}: 'between' needs a list of two values [low, high]")
        for v in value:
            _check_value_type(v, ftype, what)
    else:
        _check_value_type(value, ftype, what)


def _check_window(days: Any) -> Any:
    if days is not None and (not _is_int(days) or not 1 <= days <= MAX_WINDOW_DAYS):
        raise ValueError(f"within_days must be an integer from 1 to {MAX_WINDOW_DAYS}, got {_brief(days)}")
    return days


# ---------------------------------------------------------------------------------------------
# The pydantic models of a segments file: one segment, and each kind of rule leaf
# ---------------------------------------------------------------------------------------------


def _model_of(info: ValidationInfo) -> DataModel:
    return info.context["model"]


class _Node(BaseModel):
    """A mapping with known keys: ``ALIASES`` (old spelling -> canonical) are renamed before
    validation; an unknown key, or a key given in both spellings, is refused."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    ALIASES: ClassVar[dict[str, str]] = {}

    @model_validator(mode="before")
    @classmethod
    def _canonical_keys(cls, raw: Any) -> Any:
        if not isinstance(raw, Mapping):
            raise ValueError(f"expected a mapping, got {_brief(raw)}")
        for old, new in cls.ALIASES.items():
            if old in raw and new in raw:
                raise ValueError(f"give {new!r} or its older spelling {old!r}, not both")
        out = {cls.ALIASES.get(k, k): v for k, v in raw.items()}  # the user's key order, canonical names
        extra = set(out) - set(cls.model_fields)
        if extra:
            raise ValueError(f"unexpected key(s) {_keys(extra)}; allowed: {sorted(cls.model_fields)}")
        return out

    @classmethod
    def canonical(cls, raw: Mapping[str, Any]) -> dict[str, Any]:
        """A validated node's input in the canonical spelling, keys in the user's order (defaults
        left out)."""
        return {cls.ALIASES.get(k, k): v for k, v in raw.items()}


class FieldRule(_Node):
    """``{field, op, value}``: a profile field (``DataModel.profile_fields()``) compared by an
    operator of its type (:data:`OPERATORS`)."""

    field: Any
    op: Any = None
    value: Any = None

    @model_validator(mode="after")
    def _check(self, info: ValidationInfo) -> FieldRule:
        fields = info.context["fields"]
        name = self.field
        if not isinstance(name, str) or name not in fields:
            raise ValueError(f"unknown profile field {_brief(name)}; known: {_names(fields)}")
        _check_comparison(f"field {name!r}", fields[name], self.op, "value" in self.model_fields_set, self.value)
        return self


class Where(_Node):
    """One filter of an event condition: ``{property, op, value}`` on a declared property."""

    ALIASES: ClassVar[dict[str, str]] = {"field": "property"}
    property: Any
    op: Any = None
    value: Any = None

    @model_validator(mode="after")
    def _check(self, info: ValidationInfo) -> Where:
        props = info.context["props"]
        name = self.property
        if not isinstance(name, str) or name not in props:
            raise ValueError(f"unknown property {_brief(name)}; declared: {_names(props)}")
        _check_comparison(f"property {name!r}", props[name], self.op, "value" in self.model_fields_set, self.value)
        return self


def _event_names(value: Any, key: str, info: ValidationInfo) -> Any:
    """One declared event name or a non-empty list of them (``None``: any event)."""
    if value is None:
        return None
    names = value if isinstance(value, list) else [value]
    if isinstance(value, list) and not value:
        raise ValueError(f"{key} must be an event name or a non-empty list of them")
    events = _model_of(info).events
    for name in names:
        if not isinstance(name, str):
            raise ValueError(f"{key} must be an event name or a non-empty list of them, got {_brief(name)}")
        if name not in events:
            raise ValueError(
                f"unknown event {_brief(name)}; declared: {_names(events)} (declare it under 'events' in the"
                " model file, e.g. with no properties: {}, to use it in rules)"
            )
    return value


def _declared_on(model: DataModel, names: list[str] | None, prop: str) -> bool:
    return names is None or any(prop in model.events[n].properties for n in names)


def _as_list(value: Any) -> list[str] | None:
    return None if value is None else ([value] if isinstance(value, str) else list(value))


class EventRule(_Node):
    """``{event: {name, within_days, where, measure, property, op, value}}``: the count (or the
    sum of a numeric ``property``) of the identity's events named ``name`` (omitted: any)."""

    ALIASES: ClassVar[dict[str, str]] = {"type": "name", "sum_field": "property"}
    name: Any = None
    within_days: Any = None
    where: list[Where] = Field(default_factory=list)
    measure: Any = "count"
    property: Any = None
    op: Any = ">="
    value: Any = 1

    @field_validator("name", mode="before")
    @classmethod
    def _names(cls, value: Any, info: ValidationInfo) -> Any:
        return _event_names(value, "name", info)

    @field_validator("within_days", mode="before")
    @classmethod
    def _window(cls, value: Any) -> Any:
        return _check_window(value)

    @field_validator("where", mode="before")
    @classmethod
    def _where_list(cls, value: Any) -> Any:
        if value is None:
            return []
        if not isinstance(value, list):
            raise ValueError(f"expected a list of {{property, op, value}}, got {_brief(value)}")
        return value

    @model_validator(mode="after")
    def _check(self, info: ValidationInfo) -> EventRule:
        model, props = _model_of(info), info.context["props"]
        names = _as_list(self.name)
        for i, cond in enumerate(self.where):
            if not _declared_on(model, names, cond.property):
                raise ValueError(f"where[{i}]: property {cond.property!r} is not declared on event(s) {_brief(names)}")
        if self.measure not in ("count", "sum"):
            raise ValueError(f"measure must be 'count' or 'sum', got {_brief(self.measure)}")
        numeric = sorted(p for p, t in props.items() if t in NUMERIC_TYPES and _declared_on(model, names, p))
        if self.measure == "sum":
            if not isinstance(self.property, str) or self.property not in numeric:
                raise ValueError(f"measure 'sum' needs property (older spelling: sum_field), a numeric property of the"
                                 f" event(s), one of {_names(numeric)}; got {_brief(self.property)}")
        elif self.property is not None:
            raise ValueError("property (sum_field) only applies to measure 'sum'")
        if not isinstance(self.op, str) or self.op not in COMPARISON_OPS:
            raise ValueError(f"op must be one of {list(COMPARISON_OPS)}, got {_brief(self.op)}")
        if not _is_number(self.value) or abs(self.value) > 1e15:
            raise ValueError(f"value must be a finite number (at most 1e15 in size), got {_brief(self.value)}")
        return self

    @classmethod
    def canonical(cls, raw: Mapping[str, Any]) -> dict[str, Any]:
        out = super().canonical(raw)
        if out.get("where"):
            out["where"] = [Where.canonical(c) for c in out["where"]]
        return out


class AffinityRule(_Node):
    """``{affinity: {property, value, within_days, event, min_share, min_interactions, top}}`` on a
    declared string or list-of-strings property."""

    ALIASES: ClassVar[dict[str, str]] = {"dimension": "property", "event_types": "event"}
    property: Any = None
    value: Any = None
    within_days: Any = None
    event: Any = None
    min_share: Any = None
    min_interactions: Any = 1
    top: Any = False

    @field_validator("event", mode="before")
    @classmethod
    def _names(cls, value: Any, info: ValidationInfo) -> Any:
        return _event_names(value, "event", info)

    @field_validator("within_days", mode="before")
    @classmethod
    def _window(cls, value: Any) -> Any:
        return _check_window(value)

    @model_validator(mode="after")
    def _check(self, info: ValidationInfo) -> AffinityRule:
        model, props = _model_of(info), info.context["props"]
        names = _as_list(self.event)
        usable = sorted(p for p, t in props.items() if t in AFFINITY_TYPES and _declared_on(model, names, p))
        if not isinstance(self.property, str) or self.property not in usable:
            raise ValueError(f"property {_brief(self.property)} is not a declared string or list[string] property"
                             f"{' of ' + _brief(names) if names else ''}; usable: {_names(usable)} (older spelling: dimension)")
        if not isinstance(self.value, str):
            raise ValueError(f"value must be text (a value of {self.property!r})")
        if not isinstance(self.top, bool):
            raise ValueError("top must be true or false")
        share = self.min_share
        if share is not None and (not _is_number(share) or not 0 < share <= 1):
            raise ValueError(f"min_share must be a number in (0, 1], got {_brief(share)}")
        if not self.top and share is None:
            raise ValueError("give min_share (e.g. 0.3) or top: true")
        mi = self.min_interactions
        if not _is_int(mi) or not 1 <= mi <= 1_000_000_000:
            raise ValueError(f"min_interactions must be an integer from 1 to 1000000000, got {_brief(mi)}")
        return self


class RandomBucketRule(_Node):
    """``{random_bucket: {from, to}}``: 0 <= from <= to <= 9999, inclusive."""

    model_config = ConfigDict(populate_by_name=True)
    lo: Any = Field(alias="from")
    hi: Any = Field(alias="to")

    @model_validator(mode="before")
    @classmethod
    def _canonical_keys(cls, raw: Any) -> Any:
        if not isinstance(raw, Mapping) or set(raw) != {"from", "to"}:
            raise ValueError("expected {from: N, to: M}")
        return dict(raw)

    @model_validator(mode="after")
    def _check(self) -> RandomBucketRule:
        lo, hi = self.lo, self.hi
        if not all(_is_int(v) and 0 <= v <= 9999 for v in (lo, hi)) or lo > hi:
            raise ValueError(f"from/to must be integers 0-9999 with from <= to, got {_brief(lo)}..{_brief(hi)}")
        return self


#: The pydantic model validating each kind of leaf (the value under its kind key; ``field``'s is
#: the node itself).
LEAF_MODELS: dict[str, type[_Node]] = {
    "field": FieldRule, "event": EventRule, "affinity": AffinityRule, "random_bucket": RandomBucketRule,
}


def _date_value(value: Any, what: str) -> dt.date | None:
    if value is None:
        return None
    if isinstance(value, dt.datetime):
        return value.date()
    if isinstance(value, dt.date):
        return value
    if isinstance(value, str):
        try:
            return dt.date.fromisoformat(value)
        except ValueError:
            pass
    raise ValueError(f"'{what}' must be a date YYYY-MM-DD, got {_brief(value)}")


class SegmentEntry(BaseModel):
    """One entry of ``segments:`` (its ``rule`` is validated node by node by :func:`_rule`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    id: str
    name: str
    description: str = ""
    type: str = "dynamic"
    status: str = "active"
    active_from: dt.date | None = None
    active_until: dt.date | None = None
    sync: dict[str, bool] = Field(default_factory=dict)
    rule: Any = None

    @model_validator(mode="before")
    @classmethod
    def _checked(cls, raw: Any) -> Any:
        if not isinstance(raw, Mapping):
            raise ValueError(f"expected a mapping, got {type(raw).__name__}")
        unknown = set(raw) - set(cls.model_fields)
        if unknown:
            raise ValueError(f"unknown key(s) {_keys(unknown)}; allowed: {sorted(cls.model_fields)}")
        # the checks in the order a reader fixes them: id, name, ..., rule
        seg_id = raw.get("id")
        if not isinstance(seg_id, str) or not SEGMENT_ID_RE.match(seg_id):
            raise ValueError("'id' must be 1-64 characters of lowercase letters, digits and underscores,"
                             " starting with a letter or digit")
        name = raw.get("name")
        if not isinstance(name, str) or not name.strip():
            raise ValueError("'name' is required and must be a non-empty string")
        out = dict(raw)
        out["description"] = raw.get("description") or ""
        if not isinstance(out["description"], str):
            raise ValueError("'description' must be a string")
        if raw.get("type", "dynamic") not in SEGMENT_TYPES:
            raise ValueError(f"'type' must be one of {list(SEGMENT_TYPES)}, got {_brief(raw.get('type'))}")
        if raw.get("status", "active") not in STATUSES:
            raise ValueError(f"'status' must be one of {list(STATUSES)}, got {_brief(raw.get('status'))}")
        out["active_from"] = _date_value(raw.get("active_from"), "active_from")
        out["active_until"] = _date_value(raw.get("active_until"), "active_until")
        if out["active_from"] and out["active_until"] and out["active_until"] <= out["active_from"]:
            raise ValueError("'active_until' must be after 'active_from'")
        sync = raw.get("sync") or {}
        if not isinstance(sync, Mapping):
            raise ValueError("'sync' must be a mapping like {klaviyo: true}")
        for key, value in sync.items():
            if key not in INTEGRATIONS:
                raise ValueError(f"sync: unknown integration {_brief(key)}; known: {list(INTEGRATIONS)}")
            if not isinstance(value, bool):
                raise ValueError(f"sync.{key} must be true or false, got {_brief(value)}")
        out["sync"] = dict(sync)
        if "rule" not in raw:
            raise ValueError("'rule' is required")
        return out


# ---------------------------------------------------------------------------------------------
# Loading and validation
# ---------------------------------------------------------------------------------------------


def load_catalog(path: str | Path, model: DataModel | None = None) -> Catalog:
    """Read, parse and validate a segments file against a data model.

    ``model``: the declared data model rules are checked against (default: the settings' model
    file, ``SEGMENT_PIPELINE_MODEL``). The file is read within the limits of
    :mod:`segment_pipeline.core.safe_yaml` (size, encoding, nesting, alias expansion, duplicate
    keys) and then validated (:func:`parse_catalog`). Raises :class:`SegmentDefinitionError`
    naming the file, the segment when known, the rule path and the problem (a broken model file
    raises :class:`segment_pipeline.core.model.ModelFileError`, naming that file).
    """
    path = Path(path)
    try:
        doc = load_yaml_file(path, "segments file")
    except YamlFileError as exc:
        label = _segment_in_trail(exc.trail)
        if label and exc.problem:
            raise SegmentDefinitionError(f"segments file {exc.file}: {label}: {exc.where}: {exc.problem}") from None
        raise SegmentDefinitionError(str(exc)) from None
    return parse_catalog(doc, source=str(path), model=model)


def _segment_in_trail(trail: list) -> str | None:
    """``"segment 'id'"`` (or ``"segment #N"``) holding the place a YAML trail leads to, if any."""
    steps = list(trail)
    if steps and isinstance(steps[0][0], MappingNode):  # {segments: [...]}
        key = steps[0][1]
        if not (isinstance(key, ScalarNode) and key.value == "segments"):
            return None
        steps = steps[1:]
    if not steps or not isinstance(steps[0][0], SequenceNode) or not isinstance(steps[0][1], int):
        return None
    label = f"segment #{steps[0][1] + 1}"
    if len(steps) > 1 and isinstance(steps[1][0], MappingNode):
        for key, value in steps[1][0].value:  # the pairs composed before the problem
            if isinstance(key, ScalarNode) and key.value == "id" and isinstance(value, ScalarNode):
                label = f"segment {_brief(value.value)}"
    return label


def _default_model() -> DataModel:
    from segment_pipeline import settings

    return load_model(settings.model_file())


def parse_catalog(doc: Any, source: str = "<memory>", model: DataModel | None = None) -> Catalog:
    """Validate a parsed segments document against ``model`` (default: the settings' model)."""
    model = model or _default_model()
    items = doc.get("segments") if isinstance(doc, Mapping) else doc
    if not isinstance(items, list):
        raise SegmentDefinitionError(f"{source}: expected a list under 'segments', got {_brief(doc)}")
    context = {"model": model, "fields": model.profile_fields(), "props": model.property_types()}
    segments: list[Segment] = []
    seen: dict[str, int] = {}
    for index, raw in enumerate(items):
        seg = _parse_segment(raw, index, source, context)
        if seg.id in seen:
            raise SegmentDefinitionError(
                f"{source}: segment {seg.id!r}: duplicate id (also defined as segment #{seen[seg.id] + 1})"
            )
        seen[seg.id] = index
        segments.append(seg)
    catalog = Catalog(tuple(segments), source=source, model=model)
    _check_references(catalog)
    return catalog


def _first_error(exc: ValidationError) -> tuple[str, str]:
    """``(location, message)`` of a validation error's first problem (``where[0].value`` style)."""
    err = exc.errors(include_url=False, include_input=False)[0]
    loc = ""
    for part in err["loc"]:
        loc += f"[{part}]" if isinstance(part, int) else f".{part}"
    message = err["msg"].removeprefix("Value error, ")
    inner = _INNER_PATH.match(message)  # a model check naming a part of the node: "where[0]: ..."
    if inner:
        loc, message = f"{loc}.{inner.group(1)}", message[inner.end():]
    return loc, message


_INNER_PATH = re.compile(r"^([a-z_]+(?:\[\d+\])+): ")


def _parse_segment(raw: Any, index: int, source: str, context: dict) -> Segment:
    seg_id = raw.get("id") if isinstance(raw, Mapping) else None
    label = f"segment {_brief(seg_id)}" if seg_id is not None else f"segment #{index + 1}"
    try:
        entry = SegmentEntry.model_validate(raw, context=context)
    except ValidationError as exc:
        _, problem = _first_error(exc)
        raise SegmentDefinitionError(f"{source}: {label}: {problem}") from None

    def fail(where: str, problem: str) -> SegmentDefinitionError:
        return SegmentDefinitionError(f"{source}: {label}: {where}: {problem}")

    rule = _rule(entry.rule, fail, "rule", 0, [0], context)
    return Segment(
        id=entry.id, name=entry.name, description=entry.description, type=entry.type, status=entry.status,
        active_from=entry.active_from, active_until=entry.active_until, sync=dict(entry.sync), rule=rule,
    )


def _rule(node: Any, fail, where: str, depth: int, count: list[int], context: dict) -> dict[str, Any]:
    """Validate one rule node and its children; return it in the canonical spelling.

    ``count[0]`` counts the nodes of the segment; depth and count are checked before anything is
    walked, so a deep or shared (DAG) structure built in memory is refused in bounded time.
    """
    if depth > MAX_RULE_DEPTH:
        raise fail(_short_path(where), f"rule nesting deeper than {MAX_RULE_DEPTH} levels")
    count[0] += 1
    if count[0] > MAX_RULE_NODES:
        raise fail(_short_path(where), f"rule has more than {MAX_RULE_NODES} conditions")
    if not isinstance(node, Mapping):
        raise fail(where, f"expected a rule mapping, got {_brief(node)}")
    kinds = [k for k in RULE_KINDS if k in node]
    if len(kinds) != 1:
        raise fail(where, f"a rule node needs exactly one of {'/'.join(RULE_KINDS)}, got keys {_keys(node)}")
    kind = kinds[0]
    if kind != "field" and len(node) != 1:
        raise fail(where, f"unexpected key(s) {_keys(set(node) - {kind})}")
    if kind in ("all", "any"):
        children = node[kind]
        if not isinstance(children, list) or not children:
            raise fail(f"{where}.{kind}", "expected a non-empty list of rules")
        return {kind: [_rule(c, fail, f"{where}.{kind}[{i}]", depth + 1, count, context) for i, c in enumerate(children)]}
    if kind == "not":
        return {"not": _rule(node["not"], fail, f"{where}.not", depth + 1, count, context)}
    if kind == "segment":
        if not isinstance(node["segment"], str):
            raise fail(f"{where}.segment", f"expected a segment id, got {_brief(node['segment'])}")
        return {"segment": node["segment"]}
    value, path = (node, where) if kind == "field" else (node[kind], f"{where}.{kind}")
    leaf_model = LEAF_MODELS[kind]
    try:
        leaf_model.model_validate(value, context=context)
    except ValidationError as exc:
        loc, problem = _first_error(exc)
        raise fail(path + loc, problem) from None
    return leaf_model.canonical(value) if kind == "field" else {kind: leaf_model.canonical(value)}


def _short_path(where: str, limit: int = 120) -> str:
    """A rule path like ``rule.all[0].not...`` abbreviated in the middle when long."""
    return where if len(where) <= limit else f"{where[:40]}...{where[-(limit - 43):]}"


def _walk_segment_refs(node: Any):
    if not isinstance(node, Mapping):
        return
    if "segment" in node and isinstance(node["segment"], str):
        yield node["segment"]
    for key in ("all", "any"):
        for child in node.get(key, []) or []:
            yield from _walk_segment_refs(child)
    if "not" in node:
        yield from _walk_segment_refs(node["not"])


def _check_references(catalog: Catalog) -> None:
    """Refuse unknown and cyclic segment references, and rules too deep or big once expanded.

    A ``{segment: id}`` node compiles to that segment's rule, so a chain of references nests and
    repeats rules like a deeper rule would (``a: all[b, b]``, ``b: all[c, c]``... doubles at each
    step). Every walk here is iterative or bounded by the checks before it.
    """
    by_id = catalog.by_id()
    src = catalog.source
    refs = {seg.id: seg.referenced_segments() for seg in catalog.segments}
    for seg in catalog.segments:
        for ref in refs[seg.id]:
            if ref not in by_id:
                raise SegmentDefinitionError(f"{src}: segment {seg.id!r}: references unknown segment {_brief(ref)}")
    # cycle detection: iterative white/grey/black DFS reporting the cycle path; `order` lists
    # every segment after the segments it references
    state: dict[str, int] = {}
    order: list[str] = []
    for root in catalog.segments:
        if root.id in state:
            continue
        state[root.id] = 1
        path, stack = [root.id], [iter(refs[root.id])]
        while stack:
            ref = next(stack[-1], None)
            if ref is None:
                done = path.pop()
                stack.pop()
                state[done] = 2
                order.append(done)
            elif state.get(ref) == 1:
                cycle = [*path[path.index(ref):], ref]
                raise SegmentDefinitionError(f"{src}: segment {path[-1]!r}: cycle between segments: {' -> '.join(cycle)}")
            elif ref not in state:
                state[ref] = 1
                path.append(ref)
                stack.append(iter(refs[ref]))
    # size and depth with references expanded (each reference counts one level and one node)
    measures: dict[str, tuple[int, int]] = {}
    total = 0
    for seg_id in order:
        depth, size = _measure(by_id[seg_id].rule, measures)
        if depth > MAX_EXPANDED_DEPTH:
            raise SegmentDefinitionError(
                f"{src}: segment {seg_id!r}: rule nests {depth} levels deep counting the rules of the segments it"
                f" references (at most {MAX_EXPANDED_DEPTH})"
            )
        if size > MAX_EXPANDED_NODES:
            raise SegmentDefinitionError(
                f"{src}: segment {seg_id!r}: rule has {size} conditions counting the rules of the segments it"
                f" references, each time they are referenced (at most {MAX_EXPANDED_NODES})"
            )
        measures[seg_id] = (depth, size)
        total += size
        if total > MAX_CATALOG_NODES:
            raise SegmentDefinitionError(
                f"{src}: segment {seg_id!r}: the segments up to this one have more than {MAX_CATALOG_NODES}"
                " conditions together, counting referenced rules each time they are referenced"
            )


def _measure(node: Mapping[str, Any], measures: Mapping[str, tuple[int, int]]) -> tuple[int, int]:
    """``(levels, nodes)`` of a validated rule, a reference counting as 1 + the referenced rule's."""
    if "segment" in node:
        depth, size = measures[node["segment"]]
        return depth + 1, size + 1
    if "all" in node or "any" in node:
        parts = [_measure(child, measures) for child in node.get("all") or node.get("any")]
        return 1 + max(d for d, _ in parts), 1 + sum(n for _, n in parts)
    if "not" in node:
        depth, size = _measure(node["not"], measures)
        return depth + 1, size + 1
    return 1, 1


# ---------------------------------------------------------------------------------------------
# Compilation
# ---------------------------------------------------------------------------------------------


@dataclass
class CompiledSegments:
    """One SQL query computing a boolean column per segment for every identity.

    ``sql`` selects ``identity_id, email`` and one column per entry of ``columns``
    (segment id -> column name). ``params`` are the bound values, named ``$p0``... Relations are
    referenced through the placeholders ``{profiles}``, ``{events}`` (``raw_events`` in the
    model's schema) and, for frozen segments, ``{frozen}`` (columns segment_id, identity_id);
    ``render`` fills them in.
    """

    sql: str
    params: dict[str, Any]
    columns: dict[str, str]
    #: The same query reading the event features from the segments' incremental state (one row per
    #: identity, a column per feature: :func:`segment_state_plan`) instead of the raw events, via
    #: the placeholder ``{state}`` (``None``: a rule cannot be kept incrementally).
    state_sql: str | None = None
    state_params: dict[str, Any] = field(default_factory=dict)

    def render(self, profiles: str, events: str, frozen: str | None = None, state: str | None = None) -> str:
        """The query over ``profiles`` and ``events``; with ``state`` (and a ``state_sql``), over the
        segments' state instead of the events."""
        if state is not None and self.state_sql is not None:
            sql = self.state_sql.replace("{profiles}", profiles).replace("{state}", state)
        else:
            sql = self.sql.replace("{profiles}", profiles).replace("{events}", events)
        if "{frozen}" in sql:
            if frozen is None:
                raise ValueError("this query reads frozen segment memberships: pass the frozen relation")
            sql = sql.replace("{frozen}", frozen)
        return sql


#: Model type -> the SQL type a rule value is bound as.
_BIND_TYPES = {"string": "VARCHAR", "list[string]": "VARCHAR", "integer": "DOUBLE", "number": "DOUBLE",
               "money": "DOUBLE", "boolean": "BOOLEAN"}


class _Compiler:
    def __init__(self, as_of: dt.date, frozen: set[str], inactive: set[str], catalog: Catalog):
        self.as_of = as_of
        self.frozen = frozen
        self.inactive = inactive
        self.by_id = catalog.by_id()
        model = catalog.model or _default_model()
        self.fields = model.profile_fields()
        self.props = model.property_types()
        self.params: dict[str, Any] = {}
        self.features: dict[tuple, str] = {}  # feature spec -> column name
        self.feature_sql: list[str] = []
        self.top_ctes: dict[tuple, str] = {}  # (property, window, names) -> cte name
        self.top_sql: list[str] = []
        self.inline_cache: dict[str, str] = {}
        #: per feature column: (aggregate without the window, window days, SQL type, invertible),
        #: per top CTE: (element, filter without the window, window days, element type): what the
        #: incremental state keeps (core/incremental.py); ``stateable`` False when a filter
        #: depends on the as-of day
        self.feature_base: dict[str, tuple[str, int | None, str, bool]] = {}
        self.top_base: dict[str, tuple[str, str, int, str]] = {}

    # parameters --------------------------------------------------------------------------
    def bind(self, value: Any) -> str:
        name = f"p{len(self.params)}"
        self.params[name] = value
        return f"${name}"

    def window_start(self, days: int | None) -> str | None:
        if days is None:
            return None
        start = dt.datetime.combine(self.as_of + dt.timedelta(days=1), dt.time()) - dt.timedelta(days=days)
        return f"{self.bind(start)}::TIMESTAMP"

    def typed(self, value: Any, ftype: str) -> str:
        if ftype == "date":
            if isinstance(value, Mapping):
                return f"{self.bind(self.as_of - dt.timedelta(days=value['days_ago']))}::DATE"
            return f"{self.bind(str(value))}::DATE"
        if ftype == "timestamp":
            if isinstance(value, Mapping):
                return f"{self.bind(dt.datetime.combine(self.as_of - dt.timedelta(days=value['days_ago']), dt.time()))}::TIMESTAMP"
            return f"{self.bind(_timestamp_value(value))}::TIMESTAMP"
        if ftype in NUMERIC_TYPES:
            return f"{self.bind(float(value))}::DOUBLE"
        return f"{self.bind(value)}::{_BIND_TYPES[ftype]}"

    # comparisons -------------------------------------------------------------------------
    def comparison(self, column: str, ftype: str, op: str, value: Any = None) -> str:
        """``column`` (SQL, of model type ``ftype``) compared by a validated operator."""
        if ftype == "list[string]":
            if op == "is null":
                return f"({column} IS NULL OR len({column}) = 0)"
            if op == "is not null":
                return f"(len({column}) > 0)"
            if op == "contains":
                return f"list_contains({column}, {self.typed(value, ftype)})"
            items = ", ".join(self.typed(v, ftype) for v in value)
            return f"list_has_{'any' if op == 'contains any' else 'all'}({column}, [{items}])"
        if op == "is null":
            return f"({column} IS NULL)"
        if op == "is not null":
            return f"({column} IS NOT NULL)"
        if op == "is true":
            return f"({column} IS TRUE)"
        if op == "is false":
            return f"({column} IS FALSE)"
        if op in COMPARISON_OPS:
            return f"({column} {COMPARISON_OPS[op]} {self.typed(value, ftype)})"
        if op in LIST_OPS:
            items = ", ".join(self.typed(v, ftype) for v in value)
            neg = "NOT " if op == "not in" else ""
            return f"({column} {neg}IN ({items}))"
        if op == "between":
            return f"({column} BETWEEN {self.typed(value[0], ftype)} AND {self.typed(value[1], ftype)})"
        if op == "contains":
            return f"contains(lower({column}), lower({self.typed(value, ftype)}))"
        raise AssertionError(op)

    # features over events ----------------------------------------------------------------
    def feature(self, spec: tuple, aggregate: str, base: tuple[str, int | None, str, bool] | None = None) -> str:
        """The column for an aggregate over events, computed once per distinct ``spec`` (named by
        a hash of the spec, so a feature has the same column whichever segments are live).

        (A repeated spec reuses the first column; values bound while building the repeated
        aggregate text stay unreferenced and are dropped from the parameters at the end.)
        """
        if spec not in self.features:
            name = "f_" + hashlib.sha256(repr(spec).encode()).hexdigest()[:12]
            self.features[spec] = name
            self.feature_sql.append(f"{aggregate} AS {name}")
            if base is not None:
                self.feature_base[name] = base
        return f"coalesce(ev.{self.features[spec]}, 0)"

    def sum_type(self, prop: str) -> tuple[str, bool]:
        """The stored type of a sum of ``prop`` and whether subtracting it is exact."""
        ptype = self.props[prop]
        return {"integer": ("DECIMAL(38,0)", True), "money": ("DECIMAL(38,2)", True)}.get(ptype, ("DOUBLE", False))

    def event_filter(self, names: list[str] | None, days: int | None, extra: list[str]) -> str:
        conds = []
        if names:
            conds.append('"event" IN (' + ", ".join(self.bind(n) for n in names) + ")")
        start = self.window_start(days)
        if start:
            conds.append(f"occurred_at >= {start}")
        conds.extend(extra)
        return " AND ".join(conds) if conds else "TRUE"

    # nodes -------------------------------------------------------------------------------
    def compile(self, node: Mapping[str, Any]) -> str:
        if "all" in node:
            return "(" + " AND ".join(self.compile(c) for c in node["all"]) + ")"
        if "any" in node:
            return "(" + " OR ".join(self.compile(c) for c in node["any"]) + ")"
        if "not" in node:
            return f"(NOT {self.compile(node['not'])})"
        if "field" in node:
            f = node["field"]
            return f"coalesce({self.comparison('p.' + _ident(f), self.fields[f], node['op'], node.get('value'))}, false)"
        if "random_bucket" in node:
            rb = node["random_bucket"]
            return f"coalesce(p.random_bucket BETWEEN {self.bind(rb['from'])} AND {self.bind(rb['to'])}, false)"
        if "event" in node:
            return self.compile_event(node["event"])
        if "affinity" in node:
            return self.compile_affinity(node["affinity"])
        if "segment" in node:
            return self.compile_segment_ref(node["segment"])
        raise AssertionError(node)

    def compile_event(self, ev: Mapping[str, Any]) -> str:
        names = _as_list(ev.get("name"))
        where = ev.get("where") or []
        extra = [
            f"coalesce({self.comparison(_ident(c['property']), self.props[c['property']], c['op'], c.get('value'))}, false)"
            for c in where
        ]
        key_extra = tuple(repr(sorted(c.items())) for c in where)
        measure = ev.get("measure", "count")
        spec = ("event", tuple(names or ()), ev.get("within_days"), key_extra, measure, ev.get("property"))
        filt = self.event_filter(names, ev.get("within_days"), extra)
        base_filt = self.event_filter(names, None, extra)
        if measure == "count":
            agg = f"count(*) FILTER (WHERE {filt})"
            base = (f"count(*) FILTER (WHERE {base_filt})", ev.get("within_days"), "BIGINT", True)
        else:
            agg = f"sum({_ident(ev['property'])}) FILTER (WHERE {filt})"
            base = (f"sum({_ident(ev['property'])}) FILTER (WHERE {base_filt})", ev.get("within_days"),
                    *self.sum_type(ev["property"]))
        col = self.feature(spec, agg, base)
        op = COMPARISON_OPS[ev.get("op", ">=")]
        return f"coalesce({col} {op} {self.bind(ev.get('value', 1))}, false)"

    def compile_affinity(self, aff: Mapping[str, Any]) -> str:
        """Affinity: interactions = the identity's events in the window (of the ``event`` names,
        if given) whose ``property`` is not null (a list property: each non-null element);
        ``min_interactions`` applies to all of them (the share's denominator), ``min_share`` to
        the chosen value's share of them, ``top`` to the most frequent value among them (ties: the
        value that sorts last, see ``top_cte``)."""
        prop = aff["property"]
        col = _ident(prop)
        is_list = self.props[prop] == "list[string]"
        days = aff.get("within_days", 90)
        names = tuple(_as_list(aff.get("event")) or ())
        value_param = self.bind(aff["value"])
        if is_list:
            total_agg = f"sum(list_count({col})) FILTER (WHERE {self.event_filter(list(names), days, [])})"
            total_base = f"sum(list_count({col})) FILTER (WHERE {self.event_filter(list(names), None, [])})"
        else:
            total_agg = f"count(*) FILTER (WHERE {self.event_filter(list(names), days, [f'{col} IS NOT NULL'])})"
            total_base = f"count(*) FILTER (WHERE {self.event_filter(list(names), None, [f'{col} IS NOT NULL'])})"
        total = self.feature(("aff_total", prop, days, names), total_agg, (total_base, days, "BIGINT", True))
        conds = [f"{total} >= {self.bind(aff.get('min_interactions', 1))}"]
        if aff.get("min_share") is not None:
            if is_list:
                hits_agg = (f"sum(list_count(list_filter({col}, lambda x: x = {value_param}))) "
                            f"FILTER (WHERE {self.event_filter(list(names), days, [])})")
                hits_base = (f"sum(list_count(list_filter({col}, lambda x: x = {value_param}))) "
                             f"FILTER (WHERE {self.event_filter(list(names), None, [])})")
            else:
                hits_agg = f"count(*) FILTER (WHERE {self.event_filter(list(names), days, [f'{col} = {value_param}'])})"
                hits_base = f"count(*) FILTER (WHERE {self.event_filter(list(names), None, [f'{col} = {value_param}'])})"
            hits = self.feature(("aff_hit", prop, days, names, aff["value"]), hits_agg, (hits_base, days, "BIGINT", True))
            # a division, like a top trait's share: 7 of 25 is a share of exactly 0.28 (0.28 * 25
            # would be 7.000000000000001 in floating point and exclude it)
            conds.append(f"{hits}::DOUBLE / nullif({total}, 0) >= {self.bind(float(aff['min_share']))}")
        if aff.get("top"):
            cte = self.top_cte(prop, is_list, days, names)
            conds.append(f"{cte}.top_value = {value_param}")
        return "coalesce(" + " AND ".join(conds) + ", false)"

    def top_cte(self, prop: str, is_list: bool, days: int, names: tuple) -> str:
        key = (prop, days, names)
        if key not in self.top_ctes:
            name = "top_" + hashlib.sha256(repr(key).encode()).hexdigest()[:12]
            self.top_ctes[key] = name
            col = _ident(prop)
            filt = self.event_filter(list(names), days, [f"{col} IS NOT NULL"])
            self.top_base[name] = (f"unnest({col})" if is_list else col,
                                   self.event_filter(list(names), None, [f"{col} IS NOT NULL"]), days,
                                   "VARCHAR" if is_list else _BIND_TYPES.get(self.props[prop], "VARCHAR"))
            values = (f"(SELECT email, unnest({col}) AS v FROM scoped_events WHERE {filt})" if is_list
                      else f"(SELECT email, {col} AS v FROM scoped_events WHERE {filt})")
            # ties on the count go to the value that sorts last (byte order of its UTF-8 text,
            # i.e. code point order: "Nova" over "Aura", "aura" over "Zen"), like a profile
            # ``top`` trait, so the result is deterministic
            self.top_sql.append(
                f"{name} AS (SELECT email, arg_max(v, (n, v)) AS top_value FROM "
                f"(SELECT email, v, count(*) AS n FROM {values} WHERE v IS NOT NULL GROUP BY ALL) GROUP BY email)"
            )
        return self.top_ctes[key]

    def compile_segment_ref(self, seg_id: str) -> str:
        if seg_id in self.inactive:
            return "false"
        if seg_id in self.frozen:
            return f"coalesce(fz.{_frozen_col(seg_id)}, false)"
        if seg_id not in self.inline_cache:
            self.inline_cache[seg_id] = self.compile(self.by_id[seg_id].rule)
        return self.inline_cache[seg_id]


def _frozen_col(seg_id: str) -> str:
    return f"frozen_{seg_id}"


def compile_segments(
    catalog: Catalog,
    live: list[str],
    as_of: dt.date,
    frozen: set[str] | None = None,
    inactive: set[str] | None = None,
) -> CompiledSegments:
    """Compile the rules of the ``live`` segments into one query evaluated as of ``as_of``.

    ``frozen`` segments (static, not refreshed today) and ``inactive`` ones are not evaluated;
    references to them read the frozen membership or are false.
    """
    frozen = set(frozen or ())
    inactive = set(inactive or ())
    comp = _Compiler(as_of, frozen, inactive, catalog)
    by_id = catalog.by_id()
    columns: dict[str, str] = {}
    exprs: list[str] = []
    for i, seg_id in enumerate(live):
        col = f"s{i}"
        columns[seg_id] = col
        exprs.append(f"{comp.compile(by_id[seg_id].rule)} AS {col}")
    end = comp.bind(dt.datetime.combine(as_of + dt.timedelta(days=1), dt.time()))
    ctes = [f"scoped_events AS (SELECT * FROM {{events}} WHERE occurred_at < {end}::TIMESTAMP)"]
    joins = []
    if comp.feature_sql:
        ctes.append(f"ev AS (SELECT email, {', '.join(comp.feature_sql)} FROM scoped_events GROUP BY email)")
        joins.append("LEFT JOIN ev ON ev.email = p.email")
    ctes.extend(comp.top_sql)
    for name in comp.top_ctes.values():
        joins.append(f"LEFT JOIN {name} ON {name}.email = p.email")
    frozen_refs = sorted(s for s in frozen if any(s in by_id[x].referenced_segments() for x in _closure(by_id, live)))
    if frozen_refs:
        flags = ", ".join(
            f"bool_or(segment_id = {comp.bind(s)}) AS {_frozen_col(s)}" for s in frozen_refs
        )
        ctes.append(f"fz AS (SELECT identity_id, {flags} FROM {{frozen}} GROUP BY identity_id)")
        joins.append("LEFT JOIN fz ON fz.identity_id = p.identity_id")
    select_list = ", ".join(["p.identity_id", "p.email", *exprs]) if exprs else "p.identity_id, p.email"
    sql = f"WITH {', '.join(ctes)} SELECT {select_list} FROM {{profiles}} p {' '.join(joins)}"
    # a reused feature may leave a bound value unreferenced; DuckDB rejects unused named params
    used = set(re.findall(r"\$(p\d+)\b", sql))
    params = {k: v for k, v in comp.params.items() if k in used}
    # the same rules over the incremental state: a column per feature, value counts per top CTE
    state_ctes = ["nothing AS (SELECT 1)"]
    state_joins = []
    if comp.feature_sql:
        state_ctes.append(f"ev AS (SELECT email, {', '.join(comp.features.values())} FROM {{state}})")
        state_joins.append("LEFT JOIN ev ON ev.email = p.email")
    for name in comp.top_ctes.values():
        state_ctes.append(f"{name} AS (SELECT email, (list_max(list_transform({name}_vc, lambda x: "
                          f"struct_pack(n := x.n, v := x.v)))).v AS top_value FROM {{state}})")
        state_joins.append(f"LEFT JOIN {name} ON {name}.email = p.email")
    state_ctes += [c for c in ctes if c.startswith("fz AS")]
    state_joins += [j for j in joins if j.startswith("LEFT JOIN fz")]
    state_sql = f"WITH {', '.join(state_ctes)} SELECT {select_list} FROM {{profiles}} p {' '.join(state_joins)}"
    state_used = set(re.findall(r"\$(p\d+)\b", state_sql))
    return CompiledSegments(sql=sql, params=params, columns=columns, state_sql=state_sql,
                            state_params={k: v for k, v in comp.params.items() if k in state_used})


@dataclass
class EventFeatures:
    """What the incremental state of the segments keeps (core/incremental.py): per feature column
    ``(aggregate over events without the window, window days or None, SQL type, invertible)``, per
    top CTE ``(element expression, filter without the window, window days, element type)``, and
    the bound values they reference."""

    features: dict[str, tuple[str, int | None, str, bool]]
    tops: dict[str, tuple[str, str, int, str]]
    params: dict[str, Any]
    properties: list[str]


def event_features(catalog: Catalog, as_of: dt.date) -> EventFeatures | None:
    """The event features of every segment's rules (whichever are live on a day, a feature's
    column name is the same), or ``None`` when a rule's event filter depends on the as-of day
    (a ``{days_ago: N}`` value on an event property): those are evaluated over the raw events."""

    def collect(day: dt.date) -> tuple[EventFeatures, tuple]:
        comp = _Compiler(day, set(), set(), catalog)
        for seg in catalog.segments:
            comp.compile(seg.rule)
        texts = [*(b[0] for b in comp.feature_base.values()), *(b[0] + b[1] for b in comp.top_base.values())]
        used = {n for t in texts for n in re.findall(r"\$(p\d+)\b", t)}
        feats = EventFeatures(dict(sorted(comp.feature_base.items())), dict(sorted(comp.top_base.items())),
                              {k: v for k, v in comp.params.items() if k in used},
                              sorted(catalog.columns_read([s.id for s in catalog.segments])[1]))
        return feats, (feats.features, feats.tops, repr(sorted(feats.params.items())))

    feats, key = collect(as_of)
    if collect(as_of + dt.timedelta(days=1))[1] != key:
        return None
    return feats


def _closure(by_id: Mapping[str, Segment], roots: list[str]) -> set[str]:
    out: set[str] = set()
    stack = list(roots)
    while stack:
        s = stack.pop()
        if s in out:
            continue
        out.add(s)
        stack.extend(by_id[s].referenced_segments())
    return out
