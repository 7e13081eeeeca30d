"""A source's mapping, compiled against the data model: which text each output column reads, and
the SQL that types it, validates it and names the field of a value that does not fit.

:func:`build_plan` turns a :class:`~segment_pipeline.core.sources.Source` and the
:class:`~segment_pipeline.core.model.DataModel` into a :class:`SourcePlan`: one :class:`Target` per
output column of ``raw_profiles`` / ``raw_events`` (email, identity links, attributes or event
properties, the record time, event id and name) with the field map it reads. The readers in
:mod:`segment_pipeline.core.ingest` extract each target's *text* from a file (a CSV/Parquet column,
a JSON key or path); :func:`typing_sql` then gives, per target, one guarded try-conversion to the
model type (``integer`` BIGINT, ``number`` DOUBLE, ``money`` DECIMAL(18,2), ``boolean``, ``date``,
``timestamp`` UTC, ``list[string]``) and the ordered rules whose first match is the row's reason
(``"loyalty_points: not an integer"``, ``"price: below the minimum 0"``). Everything is SQL over
whole files (DuckDB), no Python per row.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, field

from segment_pipeline.core.identity import normalize_sql, problem_sql
from segment_pipeline.core.model import DataModel, Field_
from segment_pipeline.core.sources import DEFAULT_FALSE, DEFAULT_TRUE, END_OF_LANDING_DAY, FieldMap, Source
from segment_pipeline.core.warehouse import sql_ident as _ident
from segment_pipeline.core.warehouse import sql_string as _lit

#: Timestamps must fall in this range (catches 'infinity', epoch zeros and typos like 20261); the
#: upper end is the end of the landing day (UTC) plus the source's ``timestamp_tolerance_hours``.
MIN_TIMESTAMP = dt.datetime(2000, 1, 1)
#: Dates (birth dates, contract ends...) must fall in this range (year 99999 breaks Python readers).
MIN_DATE, MAX_DATE = dt.date(1900, 1, 1), dt.date(2199, 12, 31)
#: Largest plausible money amount (exclusive); DECIMAL(18,2) itself ends below 1e16.
MAX_MONEY = 1e15


class MappingError(ValueError):
    """A source's mapping does not fit the model; the message names the source and the entry."""


@dataclass
class Target:
    """One output column and where its text comes from.

    ``role``: ``email`` | ``link`` | ``attribute`` | ``property`` | ``event_id`` | ``event`` |
    ``time`` | ``mtype`` (a stream's message type). ``fmap`` None: the end of the landing day.
    ``explicit``: named by the user's mapping (a tabular file must have its column).
    """

    name: str
    role: str
    type: str = "string"
    fmap: FieldMap | None = None
    explicit: bool = False
    spec: Field_ | None = None

    @property
    def sql_name(self) -> str:
        return _ident(self.name)


@dataclass
class SourcePlan:
    name: str
    source: Source
    kind: str  # the table kind this plan feeds: profiles | events
    targets: list[Target] = field(default_factory=list)
    #: event name -> its declared (typed) properties; properties typed only on those events
    event_props: dict[str, set[str]] = field(default_factory=dict)
    props_path: str | None = None
    #: where a JSON record keeps its properties (events) or traits (profiles) object, first present wins
    object_paths: list[str] = field(default_factory=list)
    #: top-level keys the other kind's plan of a ``stream`` source reads (not unmapped here)
    other_keys: list[str] = field(default_factory=list)

    def target(self, name: str) -> Target | None:
        return next((t for t in self.targets if t.name == name), None)

    def read_keys(self) -> list[str]:
        """The top-level columns / JSON keys the targets read (in target order, unique)."""
        out: dict[str, None] = {}
        for t in self.targets:
            if t.fmap is not None and t.fmap.constant is None:
                out.update(dict.fromkeys(t.fmap.top_keys()))
        for path in self.object_paths:
            out[path.split(".")[0].split("[")[0]] = None
        return list(out)


def build_plan(name: str, source: Source, model: DataModel, kind: str, _nested: bool = False) -> SourcePlan:
    """Compile ``source`` (named ``name``) for the ``kind`` table against ``model``.

    Raises :class:`MappingError` naming the source and entry when the user's mapping names a field
    the model does not declare (preset entries for undeclared fields are skipped: their columns
    stay custom attributes / untyped properties).
    """
    plan = SourcePlan(name, source, kind)
    if source.kind == "stream" and not _nested:
        other = build_plan(name, source, model, "events" if kind == "profiles" else "profiles", _nested=True)
        plan.other_keys = other.read_keys()
    where = f"sources.{name}"
    links = list(model.links)
    allowed = {"email", *links}
    if kind == "profiles":
        allowed |= set(model.attributes)
    else:
        allowed |= {"event_id", *model.property_types()}
    unknown = sorted(set(source.mapping) - allowed - ({"event_id", *model.property_types()} if source.kind == "stream" else set())
                     - (set(model.attributes) if source.kind == "stream" else set()))
    if unknown:
        hint = {
            "updated_at": "; a profile record's time is set by the source's observed_at: {column: ..., timestamp: ...}",
            "occurred_at": "; an event's time is set by the source's occurred_at: {column: ..., timestamp: ...}",
            "event": "; the event name is set by the source's event: {column: ...} or {constant: ...}",
        }.get(unknown[0], "")
        raise MappingError(f"{where}.mapping.{unknown[0]}: unknown model field {unknown[0]!r}; "
                           f"the model declares: {', '.join(sorted(allowed))}{hint}")

    def fmap_for(field_name: str, default: FieldMap | None) -> tuple[FieldMap | None, bool]:
        if field_name in source.mapping:
            return source.mapping[field_name], not source.mapping[field_name].optional
        if field_name in source.preset_mapping:
            return source.preset_mapping[field_name].model_copy(update={"optional": True}), False
        if source.map_same_names and default is not None:
            return default, False
        return None, False

    def add(field_name: str, role: str, typ: str, spec: Field_ | None = None, default: FieldMap | None = None) -> None:
        fm, explicit = fmap_for(field_name, default if default is not None else FieldMap(column=field_name, optional=True))
        if fm is not None:
            plan.targets.append(Target(field_name, role, typ, fm, explicit, spec))

    if source.message_type is not None:
        plan.targets.append(Target("_mtype", "mtype", "string", FieldMap(column=source.message_type.column), True))
    if kind == "events":
        add("event_id", "event_id", "string")
    add("email", "email", "string")
    for link in links:
        add(link, "link", "string")
    if kind == "profiles":
        traits = source.traits.paths() if source.traits else []
        plan.object_paths = traits
        for attr, spec in model.attributes.items():
            default = FieldMap(path=[f"{t}.{attr}" for t in traits], optional=True) if traits else None
            add(attr, "attribute", spec.type, spec, default)
        observed = source.observed_at
        if observed == END_OF_LANDING_DAY:
            plan.targets.append(Target("updated_at", "time", "timestamp", None))
        else:
            plan.targets.append(Target("updated_at", "time", "timestamp", observed, True))
        return plan
    plan.targets.append(Target("event", "event", "string", source.event, True))
    if source.occurred_at == END_OF_LANDING_DAY:
        plan.targets.append(Target("occurred_at", "time", "timestamp", None))
    else:
        plan.targets.append(Target("occurred_at", "time", "timestamp", source.occurred_at, True))
    plan.object_paths = source.properties.paths() if source.properties else []
    plan.props_path = plan.object_paths[0] if plan.object_paths else None
    paths: dict[str, str] = {}
    for event, spec in model.events.items():
        plan.event_props[event] = set(spec.properties)
        for prop, pspec in spec.properties.items():
            paths.setdefault(prop, pspec.path or prop)
    for prop, typ in model.property_types().items():
        spec = next(e.properties[prop] for e in model.events.values() if prop in e.properties)
        path = paths[prop]
        if plan.props_path:
            default = FieldMap(path=f"{plan.props_path}.{path}", optional=True)
        elif "." in path or "[" in path:
            default = FieldMap(path=path, optional=True)
        else:
            default = FieldMap(column=path, optional=True)
        fm, explicit = fmap_for(prop, default)
        if fm is None and plan.props_path:  # map_same_names off: declared properties still read their path
            fm = default
        if fm is not None:
            plan.targets.append(Target(prop, "property", typ, fm, explicit, spec))
    return plan


# ---------------------------------------------------------------------------------------------
# Typing and validation: (values parsed once, ordered rules, typed output columns)
# ---------------------------------------------------------------------------------------------


def _given(s: str) -> str:
    return f"({s} IS NOT NULL AND {s} <> '')"


def _strptime_ts(s: str, fmt: str) -> str:
    return f"try_strptime(nullif({s}, ''), {_lit(fmt)})"


def timestamp_sql(s: str, fmap: FieldMap | None, timezone: str) -> str:
    """SQL: the UTC TIMESTAMP of the stripped text ``s`` per the map's ``timestamp`` format, NULL
    when it does not parse or does not fit. A text without an offset is in ``timezone``."""
    fmt = (fmap.timestamp if fmap else None) or "iso8601"
    v = f"nullif({s}, '')"
    if fmt in ("epoch_s", "epoch_ms"):
        # to_timestamp raises on values beyond TIMESTAMP (1e20, NaN): it only ever receives a number
        # of seconds below 1e11 (the year 5138) or NULL; later times then fail the plausibility rule
        secs = f"try_cast({v} AS DOUBLE)" + (" / 1000" if fmt == "epoch_ms" else "")
        guarded = f"CASE WHEN isfinite({secs}) AND abs({secs}) < 1e11 THEN {secs} END"
        return f"CAST(to_timestamp({guarded}) AS TIMESTAMP)"
    if fmt != "iso8601":
        local = _strptime_ts(s, fmt)
        if "%z" in fmt or "%Z" in fmt:
            return f"try_cast(try_cast({local} AS TIMESTAMPTZ) AS TIMESTAMP)"
        return local if timezone == "UTC" else f"try_cast(timezone({_lit(timezone)}, {local}) AS TIMESTAMP)"
    utc = f"try_cast(try_cast({v} AS TIMESTAMPTZ) AS TIMESTAMP)"
    if timezone == "UTC":
        return utc  # the session is UTC: a text without an offset reads as UTC
    return (f"CASE WHEN regexp_matches({v}, '(Z|z|[+-][0-9]{{2}}(:?[0-9]{{2}})?)$') THEN {utc} "
            f"ELSE try_cast(timezone({_lit(timezone)}, try_cast({v} AS TIMESTAMP)) AS TIMESTAMP) END")


def typing_sql(
    plan: SourcePlan, day: dt.date, tolerance_hours: float, model: DataModel, clearable: bool
) -> tuple[dict[str, str], list[tuple[str, str]], dict[str, str]]:
    """SQL over a relation with each target's text (``<name>``) and its stripped text
    (``_s_<name>``): (parsed values, ordered (condition, reason) rules, typed output columns).

    Every conversion is a try-conversion guarded by a rule, so a value that does not fit quarantines
    its row naming the field instead of failing the day. Timestamps later than the end of the
    landing day (UTC) plus ``tolerance_hours`` are implausible. Event properties are typed only on
    events that declare them (elsewhere their text goes to ``properties``) and checked on every
    declared event (a property has one type), never on undeclared (kept, untyped) events.
    """
    source = plan.source
    latest = dt.datetime.combine(day + dt.timedelta(days=1), dt.time()) + dt.timedelta(hours=tolerance_hours)
    latest_sql = f"TIMESTAMP '{latest.isoformat(sep=' ')}'"
    end_of_day = f"TIMESTAMP '{day.isoformat()} 23:59:59.999999'"
    parsed: dict[str, str] = {}
    rules: list[tuple[str, str]] = [("parse_error IS NOT NULL", "parse_error")]
    typed: dict[str, str] = {}
    names = {t.name for t in plan.targets}
    links = [t.name for t in plan.targets if t.role == "link"]

    def s(name: str) -> str:
        return f"_s_{name}"

    # required fields and the identity
    required = list(source.required or [])
    if plan.kind == "events" and source.required is None:
        required = [n for n in ("event_id",) if source.dedupe_on and n in names]
    for name in required:
        if name in names:
            rules.append((f"NOT {_given(s(name))}", f"'missing required field {name}'"))
        else:
            rules.append(("TRUE", _lit(f"missing required field {name} (the source maps nothing to it)")))
    identity = [n for n in ("email", *links) if n in names]
    if identity:
        rules.append((" AND ".join(f"NOT {_given(s(n))}" for n in identity),
                      _lit("missing identity: no email" + (f" and no linked id ({', '.join(links)})" if links else ""))))
    else:
        rules.append(("TRUE", _lit("missing identity: the source maps no email or linked id")))
    if plan.kind == "events":
        rules.append(("_event IS NULL", "'missing required field event'"))
    for t in plan.targets:
        if t.role == "time" and t.fmap is not None:
            rules.append((f"NOT {_given(s(t.name))}", f"'missing required field {t.name}'"))

    if "email" in names:
        parsed["_email_problem"] = f"CASE WHEN {_given(s('email'))} THEN {problem_sql(s('email'))} END"
        rules.append(("_email_problem IS NOT NULL", "_email_problem"))
        typed["email"] = f"nullif({normalize_sql(s('email'))}, '')"
        if plan.kind == "profiles":
            typed["email_raw"] = "email"
    else:
        typed["email"] = "NULL::VARCHAR"
        if plan.kind == "profiles":
            typed["email_raw"] = "NULL::VARCHAR"

    event_name = None
    if plan.kind == "events":
        mt = source.message_type
        event_name = f"nullif({s('event')}, '')" if "event" in names else "NULL::VARCHAR"
        if mt is not None and mt.event_names:
            cases = " ".join(f"WHEN {_lit(k)} THEN {_lit(v)}" for k, v in mt.event_names.items())
            event_name = f"coalesce(CASE _s__mtype {cases} END, {event_name})"
        parsed["_event"] = event_name
        typed["event"] = "_event"
        declared = sorted(plan.event_props)
        if source.undeclared_events == "quarantine":
            listed = ", ".join(_lit(e) for e in declared) or "NULL"
            shown = ", ".join(declared[:20]) + (" ..." if len(declared) > 20 else "")
            rules.append((f"_event NOT IN ({listed})",
                          f"'event: undeclared event ''' || _event || ''' (declared: {shown.replace(chr(39), chr(39) * 2)})'"))

    misplaced: list[str] = []  # JSON members of property texts on events that do not declare them
    all_events = set(plan.event_props)
    for t in plan.targets:
        if t.role in ("email", "mtype"):
            continue
        v = s(t.name)
        if t.role in ("link", "event_id"):
            typed[t.name] = f"nullif({v}, '')"
            continue
        if t.role == "event":
            continue
        guard = ""
        if t.role == "property":
            declaring = sorted(e for e, props in plan.event_props.items() if t.name in props)
            if set(declaring) != all_events or source.undeclared_events == "keep":
                guard = f"_event IN ({', '.join(_lit(e) for e in declaring)})"
                if not (t.fmap and any(p.startswith(b + ".") for b in plan.object_paths for p in t.fmap.paths())):
                    misplaced.append(f"{_lit(t.name)}: CASE WHEN NOT ({guard}) THEN nullif({v}, '') END")
        value, trules = _convert(t, v, source.timezone, latest_sql, end_of_day, tolerance_hours)
        # a property has one type across the model's events: its value is checked on every declared
        # event (typed only on those declaring it), never on an undeclared (kept, untyped) one
        pre = ""
        if t.role == "property" and source.undeclared_events == "keep":
            pre = f"_event IN ({', '.join(_lit(e) for e in sorted(all_events)) or 'NULL'}) AND "
        for cond, reason in trules:
            rules.append((f"{pre}({cond})", reason))
        for key, expr in value[1].items():
            parsed[key] = expr
        typed[t.name] = f"CASE WHEN {guard} THEN {value[0]} END" if guard else value[0]

    if plan.kind == "profiles":
        attrs = [t for t in plan.targets if t.role == "attribute"]
        if clearable and attrs:
            # every JSON path whose presence a "given" test reads, checked in one parse of the line
            # (one json_exists of them all, not one per path: a line has as many as twice the attributes)
            paths = list(dict.fromkeys(p for t in attrs for p in _given_paths(t)))
            if paths:
                listed = ", ".join(_lit(json_path(p)) for p in paths)
                parsed["_given_paths"] = (f"json_exists(coalesce(CASE WHEN parse_error IS NULL THEN raw END, '{{}}'), "
                                          f"[{listed}]::VARCHAR[])")
            cleared = ", ".join(f"CASE WHEN {_given_key(t, paths)} AND {typed[t.name]} IS NULL THEN {_lit(t.name)} END"
                                for t in attrs)
            typed["cleared"] = f"nullif(list_filter([{cleared}], lambda x: x IS NOT NULL), [])"
        else:
            typed["cleared"] = "NULL::VARCHAR[]"
        for name in model.attributes:
            typed.setdefault(name, f"NULL::{model.attributes[name].sql_type}")
        typed["custom_attributes"] = _custom_attributes_sql(plan)
    else:
        for prop, typ in model.property_types().items():
            if prop not in typed:
                from segment_pipeline.core.model import TYPES

                typed[prop] = f"NULL::{TYPES[typ]}"
        typed["properties"] = _properties_sql(plan, misplaced)
    for link in model.links:
        typed.setdefault(link, "NULL::VARCHAR")
    if plan.kind == "events":
        typed.setdefault("event_id", "NULL::VARCHAR")
    typed["source"] = _lit(plan.name)
    return parsed, rules, typed


def _given_paths(t: Target) -> list[str]:
    """The JSON paths whose presence tells that a record gives target ``t`` (none when its top-level
    keys or its column tell: see :func:`_given_key`)."""
    fm = t.fmap
    if fm is None or fm.constant is not None or fm.column is not None:
        return []
    if all("." not in p and "[" not in p for p in fm.paths()):
        return []
    return list(fm.paths())


def _given_key(t: Target, paths: list[str]) -> str:
    """SQL: the record gives target ``t`` (its key present, even as null/"", or its column there).

    ``paths``: the paths listed in the parsed column ``_given_paths`` (a list of booleans: each
    path present in the line), which holds every path of :func:`_given_paths`."""
    fm = t.fmap
    if fm is None or fm.constant is not None:
        return "FALSE"
    if not _given_paths(t):
        keys = fm.top_keys()
        return "(" + " OR ".join(f"list_contains(given, {_lit(k)})" for k in keys) + ")"
    return "(" + " OR ".join(f"_given_paths[{paths.index(p) + 1}]" for p in _given_paths(t)) + ")"


def json_path(path: str) -> str:
    """``products[*].brand`` -> ``$."products"[*]."brand"`` (every key quoted)."""
    out = "$"
    for seg in path.split("."):
        star = seg.endswith("[*]")
        key = seg[:-3] if star else seg
        out += '."' + key.replace('"', '\\"') + '"' + ("[*]" if star else "")
    return out


def _object_keys_read(plan: SourcePlan, targets: list[Target]) -> list[str]:
    """The keys of the record's traits/properties object that ``targets`` read."""
    keys = set()
    for t in targets:
        for p in (t.fmap.paths() if t.fmap else []):
            for base in plan.object_paths:
                if p.startswith(base + "."):
                    keys.add(p[len(base) + 1:].split(".")[0].split("[")[0])
    return sorted(keys)


def _untyped_sql(patch: str) -> str:
    """SQL: the ``_props`` object without the keys the JSON merge patch ``patch`` (SQL of a text
    like ``{"price": null}``, RFC 7396) sets to null: one parse, values kept as they were."""
    return f"CASE WHEN _props IS NOT NULL THEN json_merge_patch(_props, {patch})::VARCHAR END"


def _patch(keys: list[str]) -> str:
    return _lit(json.dumps(dict.fromkeys(keys), ensure_ascii=False))


def _custom_attributes_sql(plan: SourcePlan) -> str:
    """SQL: ``custom_attributes``: the unmapped columns/keys (``_extra``) and the keys of the
    traits object no target reads. NULL when empty."""
    if not plan.object_paths:
        return "_extra"
    known = _object_keys_read(plan, plan.targets)
    merged = f"json_merge_patch(coalesce(_extra, '{{}}'), coalesce({_untyped_sql(_patch(known))}, '{{}}'))"
    # unguarded: with neither object the merge gives '{}', hence NULL; a CASE around the merge
    # (only rows with either) doubled its cost, though nearly every row has one
    return f"nullif({merged}::VARCHAR, '{{}}')"


def _properties_sql(plan: SourcePlan, misplaced: list[str]) -> str:
    """SQL: the ``properties`` JSON object: the unmapped keys (``_extra``), the properties object's
    keys no declared property of this event reads (``_props``), and property values given on events
    that do not declare them. NULL when empty."""
    parts = ["_extra"]
    if plan.object_paths:
        props = [t for t in plan.targets if t.role == "property"]
        typed_keys = {e: _object_keys_read(plan, [t for t in props if t.name in names])
                      for e, names in plan.event_props.items()}
        cases = " ".join(f"WHEN {_lit(e)} THEN {_patch(keys)}" for e, keys in typed_keys.items() if keys)
        known = f"CASE _event {cases} ELSE '{{}}' END" if cases else "'{}'"
        parts.append(_untyped_sql(known))
    if misplaced:
        parts.append("json_merge_patch('{}', to_json({" + ", ".join(misplaced) + "}))::VARCHAR")
    if len(parts) == 1:
        return "nullif(_extra, '{}')"
    # one variadic merge patch (each part applied in turn to '{}', RFC 7396): one parse of the
    # accumulated object instead of one per part
    merged = "json_merge_patch('{}', " + ", ".join(f"coalesce({p}, '{{}}')" for p in parts) + ")"
    # unguarded: when every part is NULL the merge gives '{}', hence NULL; a CASE around the merge
    # (only rows with some part) doubled its cost, though nearly every row of a stream has one
    return f"nullif({merged}::VARCHAR, '{{}}')"


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(value)


def _convert(t: Target, v: str, timezone: str, latest_sql: str, end_of_day: str, tolerance: float
             ) -> tuple[tuple[str, dict[str, str]], list[tuple[str, str]]]:
    """((typed SQL, parsed helper columns), rules) converting stripped text ``v`` of ``t``."""
    n, typ, fm, spec = t.name, t.type, t.fmap, t.spec
    p = f"_p_{n}"
    given = _given(v)
    rules: list[tuple[str, str]] = []
    parsed: dict[str, str] = {}
    if t.role == "time" and fm is None:
        return (end_of_day, {}), []
    if typ == "string":
        value = f"nullif({v}, '')"
        if fm and fm.case:
            value = f"{fm.case}({value})"
        return (value, {}), []
    if typ in ("integer", "number", "money"):
        parsed[f"{p}_num"] = f"try_cast(nullif({v}, '') AS DOUBLE)"
        num = f"{p}_num"
        not_number = f"{given} AND ({num} IS NULL OR (NOT isfinite({num}) AND NOT regexp_matches({v}, '[0-9]')))"
        if typ == "integer":
            parsed[p] = (f"coalesce(try_cast(nullif({v}, '') AS BIGINT), CASE WHEN isfinite({num}) AND {num} = floor({num}) "
                         f"AND abs({num}) < 9.2e18 THEN try_cast({num} AS BIGINT) END)")
            rules.append((f"{given} AND ({num} IS NULL OR NOT isfinite({num}) OR {num} <> floor({num}))", f"'{n}: not an integer'"))
            rules.append((f"{given} AND {p} IS NULL", f"'{n}: does not fit BIGINT'"))
        elif typ == "number":
            parsed[p] = f"CASE WHEN isfinite({num}) THEN {num} END"
            rules.append((not_number, f"'{n}: not a number'"))
            rules.append((f"{given} AND {p} IS NULL", f"'{n}: does not fit DOUBLE'"))
        else:
            parsed[p] = f"try_cast(nullif({v}, '') AS DECIMAL(18,2))"  # exact, rounded to cents
            rules.append((not_number, f"'{n}: not a number'"))
            rules.append((f"{given} AND {p} IS NULL", f"'{n}: does not fit DECIMAL(18,2)'"))
            rules.append((f"{p} >= {MAX_MONEY:.0f}", f"'{n}: implausibly large (at least {MAX_MONEY:.0e})'"))
        if spec is not None and spec.minimum is not None:
            rules.append((f"{p} < {spec.minimum!r}", f"'{n}: below the minimum {_num(spec.minimum)}'"))
        if spec is not None and spec.maximum is not None:
            rules.append((f"{p} > {spec.maximum!r}", f"'{n}: above the maximum {_num(spec.maximum)}'"))
        return (p, parsed), rules
    if typ == "boolean":
        words = fm.boolean if fm and fm.boolean else None
        true = [w.lower() for w in (words.true if words else DEFAULT_TRUE)]
        false = [w.lower() for w in (words.false if words else DEFAULT_FALSE)]
        parsed[p] = (f"CASE WHEN lower({v}) IN ({', '.join(_lit(w) for w in true)}) THEN TRUE "
                     f"WHEN lower({v}) IN ({', '.join(_lit(w) for w in false)}) THEN FALSE END")
        rules.append((f"{given} AND {p} IS NULL",
                      _lit(f"{n}: not a boolean (true: {', '.join(true)}; false: {', '.join(false)})")))
        return (p, parsed), rules
    if typ == "date":
        if fm and fm.timestamp:
            parsed[p] = f"try_cast({timestamp_sql(v, fm, timezone)} AS DATE)"
            expected = fm.timestamp
        else:
            parsed[p] = f"try_cast(nullif({v}, '') AS DATE)"
            expected = "YYYY-MM-DD"
        rules.append((f"{given} AND {p} IS NULL", _lit(f"{n}: not a valid date ({expected})")))
        rules.append((f"{p} < DATE '{MIN_DATE}' OR {p} > DATE '{MAX_DATE}'",
                      _lit(f"{n}: outside the plausible range ({MIN_DATE} .. {MAX_DATE})")))
        return (p, parsed), rules
    if typ == "timestamp":
        parsed[p] = timestamp_sql(v, fm, timezone)
        fmt = (fm.timestamp if fm else None) or "iso8601"
        label = {"iso8601": "ISO 8601 timestamp", "epoch_s": "epoch seconds timestamp",
                 "epoch_ms": "epoch milliseconds timestamp"}.get(fmt, f"timestamp ({fmt})")
        rules.append((f"{given} AND {p} IS NULL", _lit(f"{n}: not a valid {label}")))
        rules.append(
            (f"{p} < TIMESTAMP '{MIN_TIMESTAMP.isoformat(sep=' ')}' OR {p} > {latest_sql}",
             f"'{n}: timestamp outside the plausible range (2000-01-01 .. end of the landing day (UTC) "
             f"+ timestamp_tolerance_hours {tolerance:g} h)'")
        )
        return (p, parsed), rules
    if typ == "list[string]":
        is_json = f"(starts_with({v}, '[') AND json_valid({v}))"
        split = fm.split if fm else None
        items = (f"string_split({v}, {_lit(split)})" if split else f"[{v}]")
        from_json = f"from_json(CASE WHEN {is_json} THEN {v} ELSE '[]' END, '[\"VARCHAR\"]')"
        cleaned = "lambda x: x IS NOT NULL AND x <> ''"
        parsed[p] = (f"CASE WHEN {given} THEN nullif(list_filter(list_transform("
                     f"CASE WHEN {is_json} THEN {from_json} ELSE {items} END, lambda x: trim(x)), {cleaned}), []) END")
        if fm and fm.case:
            parsed[p] = f"list_transform({parsed[p]}, lambda x: {fm.case}(x))"
        rules.append((f"starts_with({v}, '[') AND NOT json_valid({v})", _lit(f"{n}: not a valid JSON list")))
        return (p, parsed), rules
    raise MappingError(f"{n}: unsupported type {typ}")
