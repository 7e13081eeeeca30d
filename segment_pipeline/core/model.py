"""The declared data model: identity, profile attributes, events and computed traits, as data.

A model file (YAML, default ``data/model.yaml``, path from ``SEGMENT_PIPELINE_MODEL``) says what the
user's data holds; everything downstream (ingestion's typed columns, profiles, segment rules,
exports) is derived from it, so nothing in ``core/`` knows a shop's words. Example::

    identity:
      primary: email                 # always email: normalized by core/identity.py
      links: [customer_id, user_id]  # external ids linked to an email by profile/identify records

    attributes:                      # profile attributes: latest given value wins, a clear clears
      first_name: string
      loyalty_points: {type: integer, minimum: 0, description: points balance}
      tags: list[string]

    events:                          # an open vocabulary: names are the user's own
      Order Completed:
        purchase: {product: product_id}   # exports list these under purchases, by product_id
        properties:
          product_id: string
          revenue: money
          brands: {type: "list[string]", path: "products[*].brand"}
      Email Opened: {}

    traits:                          # computed per identity as of each day (one aggregation each)
      orders_total: {count: {event: Order Completed}}
      revenue_30d: {sum: {event: Order Completed, property: revenue, within_days: 30}}
      top_brand_90d: {top: {property: brand, within_days: 90}}   # also top_brand_90d_count, _share

Types (:data:`TYPES`, with their DuckDB column type): ``string``, ``integer`` (BIGINT), ``number``
(DOUBLE), ``money`` (DECIMAL(18,2): exact, so sums do not depend on evaluation order), ``boolean``,
``date``, ``timestamp`` (UTC), ``list[string]``. ``minimum``/``maximum`` bound numbers: a value
outside quarantines its row, naming the field.

Names: attributes, identity links, traits and properties are column names: a letter, then letters,
digits and underscores (at most 63), unique ignoring case (DuckDB column names ignore case), and
none may take a built-in column's name (:data:`RESERVED`). Event names are free text (1-200
characters, no control characters). One property name has one type across all events (it is one
column of ``raw_events``).

Errors are :class:`ModelFileError` naming the file and the entry:
``data/model.yaml: attributes.loyalty_points.type: unknown type 'int'; known: string, integer, ...``.
"""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from segment_pipeline.core.safe_yaml import YamlFileError, cap_message, load_yaml_file

#: Model type -> DuckDB column type.
TYPES: dict[str, str] = {
    "string": "VARCHAR",
    "integer": "BIGINT",
    "number": "DOUBLE",
    "money": "DECIMAL(18,2)",
    "boolean": "BOOLEAN",
    "date": "DATE",
    "timestamp": "TIMESTAMP",
    "list[string]": "VARCHAR[]",
}
NUMERIC_TYPES = ("integer", "number", "money")
#: Columns the pipeline itself owns in raw tables and profiles; no declared name may take one.
RESERVED = frozenset({
    "identity_id", "email", "email_raw", "updated_at", "cleared", "source", "source_file", "source_line",
    "custom_attributes", "first_seen_at", "last_seen_at", "random_bucket", "date", "event_id", "event",
    "occurred_at", "properties", "reason", "raw", "segment_id", "member", "segments",
})
NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,62}$")
EVENT_NAME_MAX = 200
#: Trait functions and the DuckDB type of their value (``None``: the property's own type).
TRAIT_FUNCTIONS: dict[str, str | None] = {
    "count": "BIGINT",            # events matching
    "sum": None,                  # of a numeric property (integer -> BIGINT, money -> DECIMAL(18,2), number -> DOUBLE)
    "min": None,
    "max": None,
    "avg": "DOUBLE",
    "first": None,                # value of the property on the earliest matching event
    "last": None,                 # ... on the latest one
    "first_time": "TIMESTAMP",    # occurred_at of the earliest matching event
    "last_time": "TIMESTAMP",
    "days_since": "INTEGER",      # as-of day minus the day of the latest matching event
    "distinct_count": "BIGINT",   # distinct non-null values of the property
    "exists": "BOOLEAN",          # any matching event
    "top": "VARCHAR",             # most frequent value; adds <name>_count (BIGINT) and <name>_share (DOUBLE)
}
PROPERTY_FUNCTIONS = {"sum", "min", "max", "avg", "first", "last", "distinct_count", "top"}
#: Filter operators of a trait's ``where`` (the segment rules' comparison operators).
WHERE_OPS = ("=", "!=", "<", "<=", ">", ">=", "in", "not in", "is null", "is not null", "contains")


def where_value_problem(ptype: str, op: str, value: Any) -> str | None:
    """Why a trait filter ``{op, value}`` does not fit a property of model type ``ptype`` (None: it fits).

    ``is null``/``is not null`` take no value; ``in``/``not in`` a non-empty list; every value must
    be of the property's type (numbers for integer/number/money, true/false for booleans, text for
    strings and list elements, ISO text or a YAML date for dates and timestamps); ``contains``
    applies to strings and lists; booleans take ``=``/``!=``; lists take no ``<``/``>`` comparisons.
    """
    if op in ("is null", "is not null"):
        return f"'{op}' takes no value" if value is not None else None
    if op in ("in", "not in") and (not isinstance(value, list) or not value):
        return f"'{op}' needs a non-empty list of values"
    for v in value if op in ("in", "not in") else [value]:
        if v is None:
            return f"'{op}' needs a value"
        if ptype == "integer" and (isinstance(v, bool) or not isinstance(v, int)):
            return f"{v!r} is not an integer"
        if ptype in ("number", "money") and (isinstance(v, bool) or not isinstance(v, (int, float))):
            return f"{v!r} is not a number"
        if ptype == "boolean" and not isinstance(v, bool):
            return f"{v!r} is not true/false"
        if ptype in ("string", "list[string]") and not isinstance(v, str):
            return f"{v!r} is not a string (quote it in YAML)"
        if ptype in ("date", "timestamp") and not isinstance(v, (str, dt.date)):
            return f"{v!r} is not a {ptype}"
    if op == "contains" and ptype not in ("string", "list[string]"):
        return f"'contains' applies to string and list properties, not {ptype}"
    if ptype == "boolean" and op not in ("=", "!="):
        return f"a boolean property takes '=' or '!=', not {op!r}"
    if ptype == "list[string]" and op in ("<", "<=", ">", ">="):
        return f"a list property takes =, !=, contains, in, not in, is null, is not null; not {op!r}"
    return None


class ModelFileError(ValueError):
    """The model file cannot be read or is invalid; the message names the file and the entry."""


def _type_name(value: Any) -> Any:
    if isinstance(value, str):
        value = value.strip()
        return {"list": "list[string]", "list[str]": "list[string]", "int": value, "float": value}.get(value, value)
    return value


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Field_(_Strict):
    """A typed value: a profile attribute or an event property."""

    type: str
    description: str = ""
    minimum: float | None = None
    maximum: float | None = None

    @field_validator("type", mode="before")
    @classmethod
    def _known_type(cls, value: Any) -> str:
        value = _type_name(value)
        if value not in TYPES:
            raise ValueError(f"unknown type {value!r}; known: {', '.join(TYPES)}")
        return value

    @model_validator(mode="after")
    def _bounds(self) -> Field_:
        if (self.minimum is not None or self.maximum is not None) and self.type not in NUMERIC_TYPES:
            raise ValueError(f"minimum/maximum apply to numeric types ({', '.join(NUMERIC_TYPES)}), not {self.type}")
        if self.minimum is not None and self.maximum is not None and self.minimum > self.maximum:
            raise ValueError("minimum is larger than maximum")
        return self

    @property
    def sql_type(self) -> str:
        return TYPES[self.type]


class Attribute(Field_):
    """A profile attribute (latest given value wins)."""


class Property(Field_):
    """An event property. ``path``: where it is in the event's properties object, as a dotted
    path with ``[*]`` for every element of a list (``products[*].brand``: the brands of an
    order's products, a ``list[string]``); default: the property's own name."""

    path: str | None = None


def _shorthand(value: Any) -> Any:
    """``first_name: string`` is ``first_name: {type: string}``."""
    return {"type": value} if isinstance(value, str) else value


class Purchase(_Strict):
    """Marks an event as a purchase (for exports' ``purchases``): ``product`` names the event's
    property identifying the product bought (one item per distinct value)."""

    product: str


class Event(_Strict):
    """An event name's declaration: typed ``properties``; ``purchase: {product: <property>}`` when
    the event is a purchase (the per-segment export lists those under ``purchases``, grouped by
    that property, and every other event under ``custom_events``)."""

    description: str = ""
    properties: dict[str, Annotated[Property, Field()]] = Field(default_factory=dict)
    purchase: Purchase | None = None

    @field_validator("properties", mode="before")
    @classmethod
    def _props(cls, value: Any) -> Any:
        if value is None:
            return {}
        if isinstance(value, dict):
            return {k: _shorthand(v) for k, v in value.items()}
        return value


class Where(_Strict):
    """One filter of a trait: ``{property, op, value}`` on a declared property of the events."""

    property: str
    op: str = "="
    value: Any = None

    @field_validator("op")
    @classmethod
    def _op(cls, value: str) -> str:
        if value not in WHERE_OPS:
            raise ValueError(f"unknown operator {value!r}; known: {', '.join(WHERE_OPS)}")
        return value


class Aggregation(_Strict):
    """What a trait aggregates: events named ``event`` (one name, a list, or omitted for any),
    filtered by ``where``, inside ``within_days`` days ending with the as-of day (omitted: all
    time), over ``property`` for the functions that read one."""

    event: str | list[str] | None = None
    property: str | None = None
    where: list[Where] = Field(default_factory=list)
    within_days: int | None = Field(default=None, ge=1, le=36_500)

    def event_names(self) -> tuple[str, ...]:
        """The event names (empty: any event)."""
        if self.event is None:
            return ()
        return (self.event,) if isinstance(self.event, str) else tuple(self.event)


class Trait(_Strict):
    """A computed trait: exactly one function key holding its :class:`Aggregation`, plus an
    optional description. ``{count: {event: order}}``, ``{top: {property: brand, within_days: 90}}``."""

    description: str = ""
    function: str
    aggregation: Aggregation

    @model_validator(mode="before")
    @classmethod
    def _one_function(cls, value: Any) -> Any:
        if not isinstance(value, dict):
            raise ValueError("expected a mapping like {count: {event: ...}}")
        if "function" in value:
            return value
        keys = [k for k in value if k in TRAIT_FUNCTIONS]
        others = sorted(set(value) - set(TRAIT_FUNCTIONS) - {"description"})
        if others:
            raise ValueError(f"unknown key(s) {others}; a trait is one of {', '.join(TRAIT_FUNCTIONS)} (+ description)")
        if len(keys) != 1:
            raise ValueError(f"a trait needs exactly one function of {', '.join(TRAIT_FUNCTIONS)}, got {keys or 'none'}")
        return {"description": value.get("description", ""), "function": keys[0], "aggregation": value[keys[0]] or {}}


class Identity(_Strict):
    primary: Literal["email"] = "email"
    links: list[str] = Field(default_factory=list)


class DataModel(_Strict):
    """A validated model. Use :func:`load_model` to read one from a file."""

    identity: Identity = Field(default_factory=Identity)
    attributes: dict[str, Attribute] = Field(default_factory=dict)
    events: dict[str, Event] = Field(default_factory=dict)
    traits: dict[str, Trait] = Field(default_factory=dict)

    @field_validator("attributes", mode="before")
    @classmethod
    def _attrs(cls, value: Any) -> Any:
        if value is None:
            return {}
        return {k: _shorthand(v) for k, v in value.items()} if isinstance(value, dict) else value

    @field_validator("events", "traits", mode="before")
    @classmethod
    def _none_is_empty(cls, value: Any) -> Any:
        if value is None:
            return {}
        if isinstance(value, dict):
            return {k: ({} if v is None else v) for k, v in value.items()}
        return value

    @model_validator(mode="after")
    def _consistent(self) -> DataModel:
        problems: list[str] = []
        seen: dict[str, str] = {}

        def claim(name: str, where: str) -> None:
            if not isinstance(name, str) or not NAME_RE.fullmatch(name):
                problems.append(f"{where}: {name!r} is not a valid name (a letter, then letters, digits, _; at most 63)")
                return
            if name.lower() in RESERVED:
                problems.append(f"{where}: {name!r} is a built-in column; choose another name")
                return
            other = seen.get(name.lower())
            if other is not None:
                problems.append(f"{where}: {name!r} is already declared as {other} (names ignore case)")
                return
            seen[name.lower()] = where

        for name in self.identity.links:
            claim(name, f"identity.links.{name}")
        for name in self.attributes:
            claim(name, f"attributes.{name}")
        for name, trait in self.traits.items():
            claim(name, f"traits.{name}")
            if trait.function == "top":
                claim(f"{name}_count", f"traits.{name} (its count column)")
                claim(f"{name}_share", f"traits.{name} (its share column)")
        prop_types: dict[str, tuple[str, str]] = {}
        for event, spec in self.events.items():
            if spec.purchase is not None and spec.purchase.product not in spec.properties:
                problems.append(f"events.{event}.purchase.product: {spec.purchase.product!r} is not a property of "
                                f"{event!r}; declared: {sorted(spec.properties)}")
            if not event or len(event) > EVENT_NAME_MAX or any(ord(c) < 32 or ord(c) == 127 for c in event):
                problems.append(f"events.{event!r}: an event name is 1-{EVENT_NAME_MAX} characters without control characters")
            for prop, field in spec.properties.items():
                where = f"events.{event}.properties.{prop}"
                if not isinstance(prop, str) or not NAME_RE.fullmatch(prop):
                    problems.append(f"{where}: not a valid name (a letter, then letters, digits, _; at most 63)")
                    continue
                if prop.lower() in RESERVED:
                    problems.append(f"{where}: {prop!r} is a built-in column of raw_events; choose another name "
                                    "(a source mapping can map the source's key to it)")
                    continue
                first = prop_types.get(prop.lower())
                if first and first[0] != field.type:
                    problems.append(f"{where}: type {field.type} differs from {first[1]} ({first[0]}); "
                                    "a property has one type across events")
                elif first and first[2] != prop:
                    problems.append(f"{where}: {prop!r} differs only in case from {first[1]}")
                else:
                    prop_types.setdefault(prop.lower(), (field.type, where, prop))
        props = {v[2]: v[0] for v in prop_types.values()}
        for name, trait in self.traits.items():
            agg, fn = trait.aggregation, trait.function
            for ev in agg.event_names():
                if ev not in self.events:
                    problems.append(f"traits.{name}.{fn}.event: unknown event {ev!r}; declared: {sorted(self.events)}")
            if fn in PROPERTY_FUNCTIONS:
                if agg.property is None:
                    problems.append(f"traits.{name}.{fn}: needs a property")
                elif agg.property not in props:
                    problems.append(f"traits.{name}.{fn}.property: unknown property {agg.property!r}; declared: {sorted(props)}")
                else:
                    ptype = props[agg.property]
                    if fn in ("sum", "avg") and ptype not in NUMERIC_TYPES:
                        problems.append(f"traits.{name}.{fn}.property: {agg.property!r} is {ptype}; {fn} needs a number")
                    if fn in ("min", "max") and ptype in ("boolean", "list[string]"):
                        problems.append(f"traits.{name}.{fn}.property: {agg.property!r} is {ptype}; {fn} needs an ordered type")
                    if fn == "top" and ptype not in ("string", "list[string]"):
                        problems.append(f"traits.{name}.top.property: {agg.property!r} is {ptype}; top needs a string")
            elif agg.property is not None:
                problems.append(f"traits.{name}.{fn}: {fn} takes no property")
            for i, cond in enumerate(agg.where):
                if cond.property not in props:
                    problems.append(f"traits.{name}.{fn}.where[{i}].property: unknown property {cond.property!r}")
                    continue
                problem = where_value_problem(props[cond.property], cond.op, cond.value)
                if problem:
                    problems.append(f"traits.{name}.{fn}.where[{i}]: {problem}")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    # -- derived shapes --------------------------------------------------------------------
    def purchase_events(self) -> dict[str, str]:
        """Event names marked as purchases -> the property identifying the product."""
        return {name: spec.purchase.product for name, spec in self.events.items() if spec.purchase is not None}

    @property
    def links(self) -> tuple[str, ...]:
        """The identity-link columns (external ids), in declaration order."""
        return tuple(self.identity.links)

    def property_types(self) -> dict[str, str]:
        """Every declared property (across events) -> its model type; one column each in ``raw_events``."""
        out: dict[str, str] = {}
        for spec in self.events.values():
            for prop, field in spec.properties.items():
                out.setdefault(prop, field.type)
        return out

    def trait_columns(self) -> dict[str, str]:
        """Profile columns of the traits -> DuckDB type (``top`` adds ``_count`` and ``_share``)."""
        props = self.property_types()
        out: dict[str, str] = {}
        for name, trait in self.traits.items():
            fn = trait.function
            typ = TRAIT_FUNCTIONS[fn]
            if typ is None:
                ptype = props[trait.aggregation.property]
                typ = "BIGINT" if (fn == "sum" and ptype == "integer") else TYPES[ptype]
            if fn == "top" and props.get(trait.aggregation.property) == "list[string]":
                typ = "VARCHAR"
            if fn in ("first", "last", "min", "max") and props.get(trait.aggregation.property) == "list[string]":
                typ = "VARCHAR[]"
            out[name] = typ
            if fn == "top":
                out[f"{name}_count"] = "BIGINT"
                out[f"{name}_share"] = "DOUBLE"
        return out

    def profile_fields(self) -> dict[str, str]:
        """Every field a segment rule's ``field:`` may name -> its model type (identity links and
        attributes as declared, traits by their value; built-ins ``email``, ``updated_at``,
        ``first_seen_at``, ``last_seen_at``, ``random_bucket``)."""
        out = {"email": "string", **{link: "string" for link in self.links}}
        out.update({name: a.type for name, a in self.attributes.items()})
        reverse = {v: k for k, v in TYPES.items()}
        reverse["INTEGER"] = "integer"
        out.update({name: reverse[typ] for name, typ in self.trait_columns().items()})
        out.update({"updated_at": "timestamp", "first_seen_at": "timestamp", "last_seen_at": "timestamp",
                    "random_bucket": "integer"})
        return out

    def schemas(self) -> dict[str, dict[str, str]]:
        """The column types of the model-dependent warehouse tables (``raw_profiles``,
        ``raw_events``, ``profiles``), in column order."""
        links = {link: "VARCHAR" for link in self.links}
        attrs = {name: a.sql_type for name, a in self.attributes.items()}
        props = {name: TYPES[typ] for name, typ in self.property_types().items()}
        return {
            "raw_profiles": {
                "email": "VARCHAR",       # normalized (core/identity.py); resolved through a link when absent
                "email_raw": "VARCHAR",   # as it landed (NULL when resolved through a link)
                **links,
                **attrs,
                "custom_attributes": "VARCHAR",  # JSON object of the source's unmapped columns (NULL: none)
                "updated_at": "TIMESTAMP",
                "cleared": "VARCHAR[]",   # attributes this record explicitly clears (NULL: none)
                "source": "VARCHAR",      # the source (landing folder) name
                "source_file": "VARCHAR",
                "source_line": "BIGINT",
            },
            "raw_events": {
                "event_id": "VARCHAR",
                "email": "VARCHAR",       # normalized; resolved through a link when the event has none
                **links,
                "event": "VARCHAR",       # the event name, as declared or (undeclared, kept) as landed
                "occurred_at": "TIMESTAMP",
                **props,
                "properties": "VARCHAR",  # JSON object of the properties without a typed column (NULL: none)
                "source": "VARCHAR",
                "source_file": "VARCHAR",
                "source_line": "BIGINT",
            },
            "profiles": {
                "identity_id": "VARCHAR",  # first 16 hex chars of md5(normalized email)
                "email": "VARCHAR",
                **links,
                **attrs,
                "custom_attributes": "VARCHAR",  # JSON object: latest given value per unmapped key
                "updated_at": "TIMESTAMP",
                "first_seen_at": "TIMESTAMP",
                "last_seen_at": "TIMESTAMP",
                **self.trait_columns(),
                "random_bucket": "INTEGER",
            },
        }


def format_errors(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"] if p not in ("function-after[_consistent(), DataModel]",))
        msg = err["msg"].removeprefix("Value error, ")
        parts.append(f"{loc}: {msg}" if loc else msg)
    return "; ".join(parts)


def parse_model(doc: Any, source: str = "<memory>") -> DataModel:
    """Validate a parsed model document; :class:`ModelFileError` names ``source`` and the entry."""
    if doc is None:
        doc = {}
    if not isinstance(doc, dict):
        raise ModelFileError(f"{source}: expected a mapping with identity/attributes/events/traits")
    try:
        return DataModel.model_validate(doc)
    except ValidationError as exc:
        raise ModelFileError(cap_message(f"{source}: {format_errors(exc)}")) from None


def load_model(path: str | Path) -> DataModel:
    """Read and validate a model file (bounded YAML, :mod:`segment_pipeline.core.safe_yaml`).

    Raises :class:`ModelFileError` naming the file and the entry (a missing file too: the model
    is not optional).
    """
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"{path}: model file not found (set SEGMENT_PIPELINE_MODEL or create it)")
    try:
        doc = load_yaml_file(path, "model file")
    except YamlFileError as exc:
        raise ModelFileError(str(exc)) from None
    return parse_model(doc, source=str(path))
