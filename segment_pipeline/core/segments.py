"""Segment definitions as data: loading, validation and compilation to DuckDB SQL.

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
            - {field: order_count, op: ">=", value: 3}

Rule nodes (see ``README.md`` for the full language):

* ``{field, op, value}`` compares a profile field: ``=, !=, <, <=, >, >=, in, not in, between,
  contains`` (case-insensitive substring), ``is null, is not null``. Date/timestamp values may be
  ``YYYY-MM-DD`` or ``{days_ago: N}`` relative to the as-of day.
* ``{all: [...]}``, ``{any: [...]}``, ``{not: node}``.
* ``{event: {type, within_days, where: [{field, op, value}], measure: count|sum, sum_field, op, value}}``
  compares the count (or sum of a numeric event field) of matching events.
* ``{affinity: {dimension: brand|category, value, within_days, event_types, min_share,
  min_interactions}}`` or with ``top: true``: the value is the identity's most frequent one.
  Interactions are the events in the window (default 90 days; of ``event_types``, default all)
  whose dimension is not null; ``min_interactions`` (default 1) counts all of them (the share's
  denominator), ``min_share`` is the value's count divided by that total, and a ``top`` tie goes
  to the value sorting last in byte (code point) order, as in the profiles' ``top_*_90d``.
* ``{random_bucket: {from, to}}``: stable 0-9999 bucket per identity, inclusive range. The
  profile's ``random_bucket`` is ``md5_number(email) % 10000``: the MD5 digest of the UTF-8
  normalized email read as a little-endian unsigned 128-bit integer (DuckDB's ``md5_number``).
* ``{segment: other_id}``: membership of another segment on the same day.

Loading (:func:`load_catalog`) is bounded whatever the file holds: the YAML limits of
:mod:`segment_pipeline.core.safe_yaml` (size, encoding, nesting, aliases, duplicate keys), then
``MAX_RULE_DEPTH``/``MAX_RULE_NODES`` per rule and ``MAX_EXPANDED_*``/``MAX_CATALOG_NODES`` with
segment references expanded. Every error is a :class:`SegmentDefinitionError` naming the file,
the segment when known and the problem, in at most ``safe_yaml.MAX_MESSAGE_CHARS`` characters.

Compilation never splices a user-supplied value into SQL text: every value becomes a bound
parameter (``$p0``, ``$p1`` ...). Identifiers come only from the fixed field catalogs below.
Every leaf is wrapped in ``coalesce(..., false)`` so rules use two-valued logic: a missing value
never matches a comparison, and ``not`` of a non-match is a match.
"""

from __future__ import annotations

import datetime as dt
import math
import re
import reprlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from yaml.nodes import MappingNode, ScalarNode, SequenceNode

from segment_pipeline.core.safe_yaml import YamlFileError, cap_message, load_yaml_file
from segment_pipeline.core.sync.destinations import DESTINATIONS

PROFILE_FIELDS: dict[str, str] = {
    "email": "string",
    "customer_id": "string",
    "first_name": "string",
    "last_name": "string",
    "gender": "string",
    "phone": "string",
    "country": "string",
    "city": "string",
    "language": "string",
    "time_zone": "string",
    "loyalty_tier": "string",
    "first_utm_source": "string",
    "top_brand_90d": "string",
    "top_category_90d": "string",
    "order_count": "number",
    "total_revenue": "number",
    "days_since_last_order": "number",
    "event_count_30d": "number",
    "order_count_30d": "number",
    "revenue_30d": "number",
    "brand_interactions_90d": "number",
    "category_interactions_90d": "number",
    "top_brand_share_90d": "number",
    "top_category_share_90d": "number",
    "random_bucket": "number",
    "dob": "date",
    "created_at": "timestamp",
    "updated_at": "timestamp",
    "first_seen_at": "timestamp",
    "last_seen_at": "timestamp",
    "first_order_at": "timestamp",
    "last_order_at": "timestamp",
}

EVENT_FIELDS: dict[str, str] = {
    "product_id": "string",
    "product_name": "string",
    "brand": "string",
    "category": "string",
    "order_id": "string",
    "utm_source": "string",
    "utm_medium": "string",
    "utm_campaign": "string",
    "price": "number",
    "quantity": "number",
    "revenue": "number",
}

EVENT_TYPES = ("page_view", "product_view", "add_to_cart", "order")
AFFINITY_DIMENSIONS = ("brand", "category")
SEGMENT_TYPES = ("dynamic", "static")
STATUSES = ("active", "inactive")
#: the sync toggles: one per registered destination, plus the Google Customer Match file export
INTEGRATIONS = (*DESTINATIONS, "google_customer_match")

COMPARISON_OPS = {"=": "=", "==": "=", "!=": "<>", "<>": "<>", "<": "<", "<=": "<=", ">": ">", ">=": ">="}
LIST_OPS = ("in", "not in")
NULL_OPS = ("is null", "is not null")
ALL_OPS = (*COMPARISON_OPS, *LIST_OPS, "between", "contains", *NULL_OPS)

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


@dataclass(frozen=True)
class Segment:
    id: str
    name: str
    rule: Mapping[str, Any]
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


@dataclass(frozen=True)
class Catalog:
    segments: tuple[Segment, ...]
    source: str = "<memory>"

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


# ---------------------------------------------------------------------------------------------
# Loading and validation
# ---------------------------------------------------------------------------------------------


def load_catalog(path: str | Path) -> Catalog:
    """Read, parse and validate a segments file.

    The file is read within the limits of :mod:`segment_pipeline.core.safe_yaml` (size, encoding,
    nesting, alias expansion, duplicate keys) and then validated (:func:`parse_catalog`). Raises
    :class:`SegmentDefinitionError` naming the file, the segment when known, and the problem.
    """
    path = Path(path)
    try:
        doc = load_yaml_file(path, "segments file")
    except YamlFileError as exc:
        label = _segment_in_trail(exc.trail)
        if label and exc.problem:
            raise SegmentDefinitionError(f"segments file {exc.file}: {label}: {exc.where}: {exc.problem}") from None
        raise SegmentDefinitionError(str(exc)) from None
    return parse_catalog(doc, source=str(path))


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


def parse_catalog(doc: Any, source: str = "<memory>") -> Catalog:
    items = doc.get("segments") if isinstance(doc, Mapping) else doc
    if not isinstance(items, list):
        raise SegmentDefinitionError(f"{source}: expected a list under 'segments', got {_brief(doc)}")
    segments: list[Segment] = []
    seen: dict[str, int] = {}
    for index, raw in enumerate(items):
        seg = _parse_segment(raw, index, source)
        if seg.id in seen:
            raise SegmentDefinitionError(
                f"{source}: segment {seg.id!r}: duplicate id (also defined as segment #{seen[seg.id] + 1})"
            )
        seen[seg.id] = index
        segments.append(seg)
    catalog = Catalog(tuple(segments), source=source)
    _check_references(catalog)
    return catalog


_SEGMENT_KEYS = {"id", "name", "description", "type", "status", "active_from", "active_until", "sync", "rule"}


def _parse_segment(raw: Any, index: int, source: str) -> Segment:
    if not isinstance(raw, Mapping):
        raise SegmentDefinitionError(f"{source}: segment #{index + 1}: expected a mapping, got {type(raw).__name__}")
    seg_id = raw.get("id")
    label = f"segment {_brief(seg_id)}" if seg_id is not None else f"segment #{index + 1}"

    def fail(problem: str) -> SegmentDefinitionError:
        return SegmentDefinitionError(f"{source}: {label}: {problem}")

    unknown = set(raw) - _SEGMENT_KEYS
    if unknown:
        raise fail(f"unknown key(s) {_keys(unknown)}; allowed: {sorted(_SEGMENT_KEYS)}")
    if not isinstance(seg_id, str) or not SEGMENT_ID_RE.match(seg_id):
        raise fail("'id' must be 1-64 characters of lowercase letters, digits and underscores, starting with a letter or digit")
    name = raw.get("name")
    if not isinstance(name, str) or not name.strip():
        raise fail("'name' is required and must be a non-empty string")
    description = raw.get("description", "") or ""
    if not isinstance(description, str):
        raise fail("'description' must be a string")
    seg_type = raw.get("type", "dynamic")
    if seg_type not in SEGMENT_TYPES:
        raise fail(f"'type' must be one of {list(SEGMENT_TYPES)}, got {_brief(seg_type)}")
    status = raw.get("status", "active")
    if status not in STATUSES:
        raise fail(f"'status' must be one of {list(STATUSES)}, got {_brief(status)}")
    active_from = _parse_date_value(raw.get("active_from"), fail, "active_from")
    active_until = _parse_date_value(raw.get("active_until"), fail, "active_until")
    if active_from and active_until and active_until <= active_from:
        raise fail("'active_until' must be after 'active_from'")
    sync = raw.get("sync", {}) or {}
    if not isinstance(sync, Mapping):
        raise fail("'sync' must be a mapping like {klaviyo: true}")
    for key, value in sync.items():
        if key not in INTEGRATIONS:
            raise fail(f"sync: unknown integration {_brief(key)}; known: {list(INTEGRATIONS)}")
        if not isinstance(value, bool):
            raise fail(f"sync.{key} must be true or false, got {_brief(value)}")
    if "rule" not in raw:
        raise fail("'rule' is required")
    _validate_rule(raw["rule"], fail, "rule", 0, [0])
    return Segment(
        id=seg_id,
        name=name,
        description=description,
        type=seg_type,
        status=status,
        active_from=active_from,
        active_until=active_until,
        sync=dict(sync),
        rule=raw["rule"],
    )


def _parse_date_value(value: Any, fail, what: str) -> dt.date | None:
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
    raise fail(f"'{what}' must be a date YYYY-MM-DD, got {_brief(value)}")


def _validate_rule(node: Any, fail, where: str, depth: int, count: list[int]) -> None:
    """Validate one rule node and its children; ``count[0]`` counts the nodes of the segment."""
    if depth > MAX_RULE_DEPTH:
        raise fail(f"{_short_path(where)}: rule nesting deeper than {MAX_RULE_DEPTH} levels")
    count[0] += 1
    if count[0] > MAX_RULE_NODES:
        raise fail(f"{_short_path(where)}: rule has more than {MAX_RULE_NODES} conditions")
    if not isinstance(node, Mapping):
        raise fail(f"{where}: expected a rule mapping, got {_brief(node)}")
    kinds = [k for k in ("all", "any", "not", "field", "event", "affinity", "random_bucket", "segment") if k in node]
    if len(kinds) != 1:
        raise fail(f"{where}: a rule node needs exactly one of all/any/not/field/event/affinity/random_bucket/segment, got keys {_keys(node)}")
    kind = kinds[0]
    if kind in ("all", "any"):
        _only_keys(node, {kind}, fail, where)
        children = node[kind]
        if not isinstance(children, list) or not children:
            raise fail(f"{where}.{kind}: expected a non-empty list of rules")
        for i, child in enumerate(children):
            _validate_rule(child, fail, f"{where}.{kind}[{i}]", depth + 1, count)
    elif kind == "not":
        _only_keys(node, {"not"}, fail, where)
        _validate_rule(node["not"], fail, f"{where}.not", depth + 1, count)
    elif kind == "field":
        _validate_comparison(node, PROFILE_FIELDS, fail, where, "profile field")
    elif kind == "event":
        _validate_event(node["event"], fail, f"{where}.event")
        _only_keys(node, {"event"}, fail, where)
    elif kind == "affinity":
        _only_keys(node, {"affinity"}, fail, where)
        _validate_affinity(node["affinity"], fail, f"{where}.affinity")
    elif kind == "random_bucket":
        _only_keys(node, {"random_bucket"}, fail, where)
        rb = node["random_bucket"]
        if not isinstance(rb, Mapping) or set(rb) != {"from", "to"}:
            raise fail(f"{where}.random_bucket: expected {{from: N, to: M}}")
        lo, hi = rb["from"], rb["to"]
        if not all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 9999 for v in (lo, hi)) or lo > hi:
            raise fail(f"{where}.random_bucket: from/to must be integers 0-9999 with from <= to, got {_brief(lo)}..{_brief(hi)}")
    elif kind == "segment":
        _only_keys(node, {"segment"}, fail, where)
        if not isinstance(node["segment"], str):
            raise fail(f"{where}.segment: expected a segment id, got {_brief(node['segment'])}")


def _short_path(where: str, limit: int = 120) -> str:
    """A rule path like ``rule.all[0].not...`` abbreviated in the middle when long."""
    return where if len(where) <= limit else f"{where[:40]}...{where[-(limit - 43):]}"


def _only_keys(node: Mapping, allowed: set[str], fail, where: str) -> None:
    extra = set(node) - allowed
    if extra:
        raise fail(f"{where}: unexpected key(s) {_keys(extra)}")


def _validate_comparison(node: Mapping, catalog: Mapping[str, str], fail, where: str, what: str) -> None:
    _only_keys(node, {"field", "op", "value"}, fail, where)
    name = node["field"]
    if not isinstance(name, str) or name not in catalog:
        raise fail(f"{where}: unknown {what} {_brief(name)}; known: {sorted(catalog)}")
    op = node.get("op")
    if not isinstance(op, str) or op not in ALL_OPS:
        raise fail(f"{where}: field {name!r}: unknown operator {_brief(op)}; known: {list(ALL_OPS)}")
    ftype = catalog[name]
    if op in NULL_OPS:
        if "value" in node:
            raise fail(f"{where}: field {name!r}: operator {op!r} takes no value")
        return
    if "value" not in node:
        raise fail(f"{where}: field {name!r}: operator {op!r} needs a value")
    value = node["value"]
    if op in LIST_OPS:
        if not isinstance(value, list) or not value:
            raise fail(f"{where}: field {name!r}: operator {op!r} needs a non-empty list")
        for v in value:
            _check_value_type(v, ftype, fail, where, name)
    elif op == "between":
        if not isinstance(value, list) or len(value) != 2:
            raise fail(f"{where}: field {name!r}: 'between' needs a list of two values [low, high]")
        for v in value:
            _check_value_type(v, ftype, fail, where, name)
    elif op == "contains":
        if ftype != "string":
            raise fail(f"{where}: field {name!r}: 'contains' applies to text fields, {name!r} is {ftype}")
        _check_value_type(value, ftype, fail, where, name)
    else:
        _check_value_type(value, ftype, fail, where, name)


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


def _check_value_type(value: Any, ftype: str, fail, where: str, name: str) -> None:
    ok = False
    if ftype == "string":
        ok = isinstance(value, str)
    elif ftype == "number":
        ok = _is_number(value)
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
        expected = {
            "string": "text",
            "number": "a finite number" if isinstance(value, int | float) and not isinstance(value, bool) else "a number",
            "date": f"a date YYYY-MM-DD or {{days_ago: N}} (N from -{MAX_DAYS_AGO} to {MAX_DAYS_AGO})",
            "timestamp": f"a date/timestamp or {{days_ago: N}} (N from -{MAX_DAYS_AGO} to {MAX_DAYS_AGO})",
        }[ftype]
        raise fail(f"{where}: field {name!r} is {ftype}: value {_brief(value)} is not {expected}")


_EVENT_KEYS = {"type", "within_days", "where", "measure", "sum_field", "op", "value"}


def _validate_event(ev: Any, fail, where: str) -> None:
    if not isinstance(ev, Mapping):
        raise fail(f"{where}: expected a mapping")
    _only_keys(ev, _EVENT_KEYS, fail, where)
    types = ev.get("type")
    if types is not None:
        if isinstance(types, list) and not types:
            raise fail(f"{where}: type must be an event type or a non-empty list of them")
        for t in types if isinstance(types, list) else [types]:
            if t not in EVENT_TYPES:
                raise fail(f"{where}: unknown event type {_brief(t)}; known: {list(EVENT_TYPES)}")
    _check_window(ev.get("within_days"), fail, where)
    conditions = ev.get("where", []) or []
    if not isinstance(conditions, list):
        raise fail(f"{where}.where: expected a list of {{field, op, value}}, got {_brief(conditions)}")
    for i, cond in enumerate(conditions):
        if not isinstance(cond, Mapping) or "field" not in cond:
            raise fail(f"{where}.where[{i}]: expected {{field, op, value}}")
        _validate_comparison(cond, EVENT_FIELDS, fail, f"{where}.where[{i}]", "event field")
    measure = ev.get("measure", "count")
    if measure not in ("count", "sum"):
        raise fail(f"{where}: measure must be 'count' or 'sum', got {_brief(measure)}")
    if measure == "sum":
        sf = ev.get("sum_field")
        if not isinstance(sf, str) or EVENT_FIELDS.get(sf) != "number":
            numeric = sorted(k for k, v in EVENT_FIELDS.items() if v == "number")
            raise fail(f"{where}: measure 'sum' needs sum_field, one of {numeric}; got {_brief(sf)}")
    elif "sum_field" in ev:
        raise fail(f"{where}: sum_field only applies to measure 'sum'")
    op = ev.get("op", ">=")
    if not isinstance(op, str) or op not in COMPARISON_OPS:
        raise fail(f"{where}: op must be one of {list(COMPARISON_OPS)}, got {_brief(op)}")
    value = ev.get("value", 1)
    if not _is_number(value) or abs(value) > 1e15:
        raise fail(f"{where}: value must be a finite number (at most 1e15 in size), got {_brief(value)}")


def _check_window(days: Any, fail, where: str) -> None:
    if days is None:
        return
    if not _is_int(days) or not 1 <= days <= 3650:
        raise fail(f"{where}: within_days must be an integer from 1 to 3650, got {_brief(days)}")


_AFFINITY_KEYS = {"dimension", "value", "within_days", "event_types", "min_share", "min_interactions", "top"}


def _validate_affinity(aff: Any, fail, where: str) -> None:
    if not isinstance(aff, Mapping):
        raise fail(f"{where}: expected a mapping")
    _only_keys(aff, _AFFINITY_KEYS, fail, where)
    if aff.get("dimension") not in AFFINITY_DIMENSIONS:
        raise fail(f"{where}: dimension must be one of {list(AFFINITY_DIMENSIONS)}, got {_brief(aff.get('dimension'))}")
    if not isinstance(aff.get("value"), str):
        raise fail(f"{where}: value must be text (the brand or category)")
    _check_window(aff.get("within_days"), fail, where)
    event_types = aff.get("event_types", []) or []
    if not isinstance(event_types, list):
        raise fail(f"{where}: event_types must be a list of event types, got {_brief(event_types)}")
    for t in event_types:
        if t not in EVENT_TYPES:
            raise fail(f"{where}: unknown event type {_brief(t)}; known: {list(EVENT_TYPES)}")
    top = aff.get("top", False)
    if not isinstance(top, bool):
        raise fail(f"{where}: top must be true or false")
    share = aff.get("min_share")
    if share is not None and (not _is_number(share) or not 0 < share <= 1):
        raise fail(f"{where}: min_share must be a number in (0, 1], got {_brief(share)}")
    if not top and share is None:
        raise fail(f"{where}: give min_share (e.g. 0.3) or top: true")
    mi = aff.get("min_interactions", 1)
    if not _is_int(mi) or not 1 <= mi <= 1_000_000_000:
        raise fail(f"{where}: min_interactions must be an integer from 1 to 1000000000, got {_brief(mi)}")


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
    referenced through the placeholders ``{profiles}``, ``{events}`` and, for frozen segments,
    ``{frozen}`` (columns segment_id, identity_id); ``render`` fills them in.
    """

    sql: str
    params: dict[str, Any]
    columns: dict[str, str]

    def render(self, profiles: str, events: str, frozen: str | None = None) -> str:
        sql = self.sql.replace("{profiles}", profiles).replace("{events}", events)
        if "{frozen}" in sql:
            if frozen is None:
                raise ValueError("this query reads frozen segment memberships: pass the frozen relation")
            sql = sql.replace("{frozen}", frozen)
        return sql


class _Compiler:
    def __init__(self, as_of: dt.date, frozen: set[str], inactive: set[str], catalog: Catalog):
        self.as_of = as_of
        self.frozen = frozen
        self.inactive = inactive
        self.by_id = catalog.by_id()
        self.params: dict[str, Any] = {}
        self.features: dict[tuple, str] = {}  # feature spec -> column name
        self.feature_sql: list[str] = []
        self.top_ctes: dict[tuple, str] = {}  # (dimension, window, types) -> cte name
        self.top_sql: list[str] = []
        self.inline_cache: dict[str, str] = {}

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
        if ftype == "number":
            return f"{self.bind(float(value))}::DOUBLE"
        return f"{self.bind(value)}::VARCHAR"

    # comparisons -------------------------------------------------------------------------
    def comparison(self, column: str, ftype: str, op: str, value: Any = None) -> str:
        if op == "is null":
            return f"({column} IS NULL)"
        if op == "is not null":
            return f"({column} IS NOT NULL)"
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
    def feature(self, spec: tuple, aggregate: str) -> str:
        """The column for an aggregate over events, computed once per distinct ``spec``.

        (A repeated spec reuses the first column; values bound while building the repeated
        aggregate text stay unreferenced and are dropped from the parameters at the end.)
        """
        if spec not in self.features:
            name = f"f{len(self.features)}"
            self.features[spec] = name
            self.feature_sql.append(f"{aggregate} AS {name}")
        return f"coalesce(ev.{self.features[spec]}, 0)"

    def event_filter(self, types: list[str] | None, days: int | None, extra: list[str]) -> str:
        conds = []
        if types:
            conds.append("event_type IN (" + ", ".join(self.bind(t) for t in types) + ")")
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
            return f"coalesce({self.comparison('p.' + f, PROFILE_FIELDS[f], node['op'], node.get('value'))}, false)"
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
        types = ev.get("type")
        types = [types] if isinstance(types, str) else (list(types) if types else None)
        extra = [
            f"coalesce({self.comparison(c['field'], EVENT_FIELDS[c['field']], c['op'], c.get('value'))}, false)"
            for c in ev.get("where", []) or []
        ]
        key_extra = tuple(repr(sorted(c.items())) for c in ev.get("where", []) or [])
        measure = ev.get("measure", "count")
        spec = ("event", tuple(types or ()), ev.get("within_days"), key_extra, measure, ev.get("sum_field"))
        filt = self.event_filter(types, ev.get("within_days"), extra)
        agg = f"count(*) FILTER (WHERE {filt})" if measure == "count" else f"sum({ev['sum_field']}) FILTER (WHERE {filt})"
        col = self.feature(spec, agg)
        op = COMPARISON_OPS[ev.get("op", ">=")]
        return f"coalesce({col} {op} {self.bind(ev.get('value', 1))}, false)"

    def compile_affinity(self, aff: Mapping[str, Any]) -> str:
        """Affinity: interactions = the identity's events in the window (of ``event_types``, if
        given) whose ``dimension`` is not null; ``min_interactions`` applies to all of them (the
        share's denominator), ``min_share`` to the chosen value's share of them, ``top`` to the
        most frequent value among them (ties: the value that sorts last, see ``top_cte``)."""
        dim = aff["dimension"]
        days = aff.get("within_days", 90)
        types = tuple(aff.get("event_types") or ())
        value_param = self.bind(aff["value"])
        total = self.feature(
            ("aff_total", dim, days, types),
            f"count(*) FILTER (WHERE {self.event_filter(list(types), days, [f'{dim} IS NOT NULL'])})",
        )
        conds = [f"{total} >= {self.bind(aff.get('min_interactions', 1))}"]
        if aff.get("min_share") is not None:
            hits = self.feature(
                ("aff_hit", dim, days, types, aff["value"]),
                f"count(*) FILTER (WHERE {self.event_filter(list(types), days, [f'{dim} = {value_param}'])})",
            )
            # a division, like top_<dim>_share_90d: 7 of 25 is a share of exactly 0.28 (0.28 * 25
            # would be 7.000000000000001 in floating point and exclude it)
            conds.append(f"{hits}::DOUBLE / nullif({total}, 0) >= {self.bind(float(aff['min_share']))}")
        if aff.get("top"):
            cte = self.top_cte(dim, days, types)
            conds.append(f"{cte}.top_value = {value_param}")
        return "coalesce(" + " AND ".join(conds) + ", false)"

    def top_cte(self, dim: str, days: int, types: tuple) -> str:
        key = (dim, days, types)
        if key not in self.top_ctes:
            name = f"top{len(self.top_ctes)}"
            self.top_ctes[key] = name
            filt = self.event_filter(list(types), days, [f"{dim} IS NOT NULL"])
            # ties on the count go to the value that sorts last (byte order of its UTF-8 text,
            # i.e. code point order: "Nike" over "Adidas", "adidas" over "Zara"), like the
            # profiles' top_brand_90d / top_category_90d, so the result is deterministic
            self.top_sql.append(
                f"{name} AS (SELECT email, arg_max({dim}, (n, {dim})) AS top_value FROM "
                f"(SELECT email, {dim}, count(*) AS n FROM scoped_events WHERE {filt} GROUP BY ALL) GROUP BY email)"
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
    return CompiledSegments(sql=sql, params=params, columns=columns)


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
