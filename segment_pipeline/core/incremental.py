"""Incremental profiles and computed traits: state(D) = state(D-1) merged with day D (issue 12).

Design, tables and the cost of each trait kind: ``docs/incremental.md``. In short, for an as-of
day ``D`` this module writes, under the warehouse root (one Parquet partition per day, published
atomically, keyed by ``email`` so each can be split by identity shard):

* ``event_rollups/date=D``: one row per ``(email, occurred_on)`` with the partial aggregates
  (:class:`Partial`) of the events that became *visible* on D. An event is visible as of D when it
  landed on a day ``<= D`` and ``occurred_at < D + 1 day``; it becomes visible on
  ``greatest(landing day, occurred day)``.
* ``pending_events/date=D``: events landed by D that occur after D (carried until their day).
* ``profile_state/date=D``: one row per identity: the latest-wins fields with their order keys,
  custom attribute keys, seen times and every trait's partials as of D.

:func:`build_state` makes state(D) from state(D-1) and day D (the *incremental step*) when
state(D-1) exists, was built from the same model (fingerprint in the Parquet key-value metadata)
and from the same raw partitions (input watermark); otherwise, or with ``full=True``, from every
raw partition up to D (a *full build*, which also rewrites the rollups of the longest window).
Both give the same state, so profiles are the same either way: that is what
``segment_pipeline_tests/core/test_incremental.py`` checks against :func:`profiles_sql`'s full
recompute, for every day of the sample and of generated data with late files.

Raises ``ValueError`` (from :mod:`segment_pipeline.core.traits`: ``TraitError``) naming the trait
when a trait cannot be compiled.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import re
from dataclasses import dataclass, field

import duckdb

from segment_pipeline.core.atomic import atomic_path
from segment_pipeline.core.model import TYPES, DataModel
from segment_pipeline.core.traits import Params, _event_sql, where_sql
from segment_pipeline.core.warehouse import (
    ROW_GROUP_SIZE,
    STATE_TABLES,
    Warehouse,
    as_date,
    sql_ident,
    sql_string,
)

q = sql_ident
__all__ = ["STATE_TABLES", "build_state", "can_continue", "fingerprint", "inputs_snapshot", "plan",
           "profiles_from_state_sql", "rebuild", "restamp_after_scrub", "segment_plan", "watermark"]

#: Bump when the layout or meaning of the state tables changes: older state is then rebuilt.
STATE_VERSION = "2"
#: The order key of profile records (see ``profiles.ORDER_KEY``) as stored: HUGEINT is written to
#: Parquet as DOUBLE by DuckDB (lossy), DECIMAL(38,0) holds it exactly.
ORD_TYPE = "DECIMAL(38,0)"
KEY_TYPE = "STRUCT(o TIMESTAMP, d DATE, f VARCHAR, l BIGINT)"
DELIVERY_KEY = "struct_pack(o := occurred_at, d := date, f := source_file, l := source_line)"


@dataclass
class Partial:
    """One stored column of a trait's partial aggregate.

    ``rollup``: its aggregate over event rows (``None`` for value counts, built separately);
    ``merge``: how partial rows combine (``sum``, ``min``, ``max``, ``argmin:<key>``,
    ``argmax:<key>``, ``vc``); ``invertible``: whether rows leaving a window can be subtracted.
    """

    name: str
    type: str
    rollup: str | None
    merge: str
    invertible: bool


@dataclass
class TraitPlan:
    name: str
    function: str
    window: int | None
    partials: list[Partial]
    final: list[str]  # SELECT expressions over alias ``s`` (the state), in trait_columns() order
    vc: tuple[str, str] | None = None  # (element expression, WHERE) of a value-count partial


@dataclass
class Plan:
    traits: list[TraitPlan]
    params: dict[str, object]
    columns: tuple[str, ...]  # raw_events columns read (plus date)
    windows: list[int] = field(default_factory=list)
    #: (rollups, pending, state) tables; ``profiles``: the state also holds the latest-wins fields
    tables: tuple[str, str, str] = ("event_rollups", "pending_events", "profile_state")
    profiles: bool = True

    def partials(self) -> list[Partial]:
        return [p for t in self.traits for p in t.partials]


def plan(model: DataModel) -> Plan:
    """Compile the model's traits to partials (see :class:`Partial`); values are bound parameters."""
    params = Params()
    props = model.property_types()
    needed: set[str] = set()
    traits: list[TraitPlan] = []
    for i, (name, trait) in enumerate(model.traits.items()):
        fn, agg = trait.function, trait.aggregation
        prop = agg.property
        col = q(prop) if prop else None
        if prop:
            needed.add(prop)
        needed.update(w.property for w in agg.where)
        conds = [*_event_sql(agg.event_names(), params), *where_sql(model, name, trait, params)]
        ptype = props[prop] if prop else None
        exact = ptype in ("integer", "money")
        sum_type = {"integer": "DECIMAL(38,0)", "money": "DECIMAL(38,2)"}.get(ptype or "", "DOUBLE")

        def f(extra: list[str] = (), conds: list[str] = conds) -> str:
            c = [*conds, *extra]
            return f" FILTER (WHERE {' AND '.join(c)})" if c else ""

        p = f"t{i}_"
        alias = q(name)
        tp = TraitPlan(name, fn, agg.within_days, [], [])
        if fn in ("count", "exists"):
            tp.partials = [Partial(p + "n", "BIGINT", f"count(*){f()}", "sum", True)]
            tp.final = [f"coalesce(s.{p}n, 0) AS {alias}" if fn == "count" else f"coalesce(s.{p}n, 0) > 0 AS {alias}"]
        elif fn == "sum":
            tp.partials = [Partial(p + "s", sum_type, f"sum({col}){f()}", "sum", exact)]
            tp.final = [f"coalesce(s.{p}s, 0) AS {alias}"]
        elif fn == "avg":
            tp.partials = [Partial(p + "s", sum_type, f"sum({col}){f()}", "sum", exact),
                           Partial(p + "c", "BIGINT", f"count({col}){f()}", "sum", exact)]
            tp.final = [f"s.{p}s::DOUBLE / nullif(s.{p}c, 0) AS {alias}"]
        elif fn in ("min", "max"):
            tp.partials = [Partial(p + "m", TYPES[ptype], f"{fn}({col}){f()}", fn, False)]
            tp.final = [f"s.{p}m AS {alias}"]
        elif fn in ("first", "last"):
            am = "min" if fn == "first" else "max"
            nn = [f"{col} IS NOT NULL"]
            tp.partials = [Partial(p + "v", TYPES[ptype], f"arg_{am}({col}, {DELIVERY_KEY}){f(nn)}", f"arg{am}:{p}k", False),
                           Partial(p + "k", KEY_TYPE, f"{am}({DELIVERY_KEY}){f(nn)}", am, False)]
            tp.final = [f"s.{p}v AS {alias}"]
        elif fn in ("first_time", "last_time", "days_since"):
            am = "min" if fn == "first_time" else "max"
            tp.partials = [Partial(p + "t", "TIMESTAMP", f"{am}(occurred_at){f()}", am, False)]
            if fn == "days_since":
                params.values["t_day"] = dt.date(1970, 1, 1)  # set per day by the caller
                tp.final = [f"($t_day::DATE - s.{p}t::DATE)::INTEGER AS {alias}"]
            else:
                tp.final = [f"s.{p}t AS {alias}"]
        elif fn in ("distinct_count", "top"):
            is_list = ptype == "list[string]"
            vtype = "VARCHAR" if is_list else TYPES[ptype]
            tp.partials = [Partial(p + "vc", f"STRUCT(v {vtype}, n BIGINT)[]", None, "vc", True)]
            tp.vc = (f"unnest({col})" if is_list else col, " AND ".join(conds) or "true")
            if fn == "distinct_count":
                tp.final = [f"coalesce(len(s.{p}vc), 0) AS {alias}"]
            else:
                best = f"list_max(list_transform(s.{p}vc, lambda x: struct_pack(n := x.n, v := x.v)))"
                tp.final = [f"({best}).v AS {alias}",
                            f"coalesce(({best}).n, 0) AS {q(name + '_count')}",
                            f"({best}).n / nullif(list_sum(list_transform(s.{p}vc, lambda x: x.n)), 0) AS {q(name + '_share')}"]
        else:  # pragma: no cover - the model validates function names
            raise ValueError(f"traits.{name}: unknown function {fn!r}")
        traits.append(tp)
    windows = sorted({t.window for t in traits if t.window is not None})
    columns = ("email", "event", "occurred_at", *sorted(needed), "source_file", "source_line")
    return Plan(traits, params.values, columns, windows)


def fingerprint(model: DataModel) -> str:
    """Hash of what the state is built from: the model (links, attributes, events, traits)."""
    text = json.dumps([STATE_VERSION, model.model_dump(mode="json")], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def watermark(warehouse: Warehouse, upto: dt.date) -> str:
    """Hash of the size and modification time of every raw partition up to ``upto``: a state built
    from other raw files (a day re-ingested since) is not continued."""
    h = hashlib.sha256()
    for table in ("raw_profiles", "raw_events"):
        for day in warehouse.partition_dates(table):
            if day <= upto:
                st = os.stat(warehouse.partition_path(table, day))
                h.update(f"{table}/{day}/{st.st_size}/{st.st_mtime_ns};".encode())
    return h.hexdigest()[:32]


#: The state tables whose Parquet key-value metadata ``inputs`` holds :func:`watermark`.
WATERMARKED = ("profile_state", "segment_state")


@dataclass
class InputsSnapshot:
    """What :func:`restamp_after_scrub` needs: per state table, its newest day whose ``inputs``
    matched the raw partitions, and the (device, inode, mtime, size) of those raw partitions."""

    days: dict[str, dt.date] = field(default_factory=dict)
    stamps: dict[str, tuple[int, int, int, int]] = field(default_factory=dict)


def _raw_stamps(warehouse: Warehouse, upto: dt.date) -> dict[str, tuple[int, int, int, int]]:
    out = {}
    for table in ("raw_profiles", "raw_events"):
        for day in warehouse.partition_dates(table):
            if day <= upto:
                path = warehouse.partition_path(table, day)
                st = os.stat(path)
                out[str(path)] = (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)
    return out


def inputs_snapshot(con: duckdb.DuckDBPyConnection, warehouse: Warehouse) -> InputsSnapshot:
    """Taken before a scrub (``core/privacy/forget.py``): the newest partition of each
    :data:`WATERMARKED` table that is consistent with the raw partitions."""
    snap = InputsSnapshot()
    for table in WATERMARKED:
        days = warehouse.partition_dates(table)
        if days and _meta(con, warehouse, table, days[-1]).get("inputs") == watermark(warehouse, days[-1]):
            snap.days[table] = days[-1]
    if snap.days:
        snap.stamps = _raw_stamps(warehouse, max(snap.days.values()))
    return snap


def restamp_after_scrub(con: duckdb.DuckDBPyConnection, warehouse: Warehouse, snap: InputsSnapshot,
                        rewritten: set[str]) -> list[str]:
    """After a scrub removed identities from the raw partitions *and* from the state tables (the
    same rows: the state is keyed by email), the state still equals a full recompute, but the raw
    partitions' mtime/size changed. Rewrite the ``inputs`` of the state partitions of ``snap`` to
    the new :func:`watermark`, so the next day continues them instead of a full build. Only when
    every raw partition that changed since ``snap`` is one the scrub rewrote (``rewritten``: paths)
    and none was added or removed; a partition another writer published meanwhile keeps the old
    ``inputs`` (the next day then builds in full). Returns the restamped ``table/date=D``."""
    done = []
    for table, day in snap.days.items():
        before = {p: s for p, s in snap.stamps.items() if _day_of(p) <= day}
        after = _raw_stamps(warehouse, day)
        if set(after) != set(before) or any(after[p] != s and p not in rewritten for p, s in before.items()):
            continue
        path = _path(warehouse, table, day)
        meta = {**_meta(con, warehouse, table, day), "inputs": watermark(warehouse, day)}
        kv = ", ".join(f"{sql_string(k)}: {sql_string(v)}" for k, v in meta.items())
        src = f"read_parquet({sql_string(str(path))}, hive_partitioning = false, file_row_number = true)"
        with atomic_path(path) as tmp:
            con.execute(f"COPY (SELECT * EXCLUDE (file_row_number) FROM {src} ORDER BY file_row_number) "
                        f"TO {sql_string(str(tmp))} (FORMAT parquet, COMPRESSION zstd, "
                        f"ROW_GROUP_SIZE {ROW_GROUP_SIZE}, KV_METADATA {{{kv}}})")
        done.append(f"{table}/date={day.isoformat()}")
    return done


def _day_of(path: str) -> dt.date:
    return as_date(re.search(r"date=(\d{4}-\d{2}-\d{2})", path).group(1))


# ---------------------------------------------------------------------------------------------
# reading and writing state partitions
# ---------------------------------------------------------------------------------------------

def _path(warehouse: Warehouse, table: str, day: dt.date):
    return warehouse.partition_path(table, day)


def _read(warehouse: Warehouse, table: str, days: list[dt.date]) -> str:
    files = ", ".join(sql_string(str(_path(warehouse, table, d))) for d in days)
    return f"read_parquet([{files}], hive_partitioning = false)"


def _meta(con: duckdb.DuckDBPyConnection, warehouse: Warehouse, table: str, day: dt.date) -> dict[str, str]:
    path = _path(warehouse, table, day)
    if not path.exists():
        return {}
    rows = con.execute(f"SELECT key::VARCHAR, value::VARCHAR FROM parquet_kv_metadata({sql_string(str(path))})").fetchall()
    return dict(rows)


def _used(sql: str, params: dict[str, object]) -> dict[str, object]:
    """The parameters ``sql`` references (DuckDB rejects unused named parameters)."""
    names = set(re.findall(r"\$([A-Za-z_][A-Za-z0-9_]*)", sql))
    return {k: v for k, v in params.items() if k in names}


def _write(con: duckdb.DuckDBPyConnection, warehouse: Warehouse, table: str, day: dt.date, sql: str,
           params: dict[str, object], order: str, meta: dict[str, str]) -> None:
    kv = ", ".join(f"{k}: {sql_string(v)}" for k, v in meta.items())
    with atomic_path(_path(warehouse, table, day)) as tmp:
        con.execute(f"COPY (SELECT * FROM ({sql}) ORDER BY {order}) TO {sql_string(str(tmp))} "
                    f"(FORMAT parquet, COMPRESSION zstd, ROW_GROUP_SIZE {ROW_GROUP_SIZE}, KV_METADATA {{{kv}}})",
                    _used(sql, params))


# ---------------------------------------------------------------------------------------------
# SQL builders
# ---------------------------------------------------------------------------------------------

def _rollup_sql(pl: Plan, events: str, keys: list[str]) -> str:
    """Partials of the ``events`` relation (event columns + ``occurred_on`` + the ``keys``)
    grouped by ``keys``."""
    k = ", ".join(keys)
    aggs = ["min(occurred_at) AS first_event_at", "max(occurred_at) AS last_event_at"]
    aggs += [f"CAST({p.rollup} AS {p.type}) AS {p.name}" for p in pl.partials() if p.rollup is not None]
    sql = f"SELECT {k}, {', '.join(aggs)} FROM {events} GROUP BY {k}"
    vcs = [(t, t.partials[0]) for t in pl.traits if t.vc]
    if not vcs:
        return sql
    joins = []
    for j, (t, part) in enumerate(vcs):
        elem, where = t.vc
        joins.append(
            f"LEFT JOIN (SELECT {k}, CAST(list({{'v': v, 'n': n}} ORDER BY v) AS {part.type}) AS {part.name} FROM "
            f"(SELECT {k}, v, count(*) AS n FROM (SELECT {k}, {elem} AS v FROM {events} WHERE {where}) "
            f"WHERE v IS NOT NULL GROUP BY ALL) GROUP BY {k}) vc{j} USING ({k})"
        )
    return f"SELECT * FROM ({sql}) base {' '.join(joins)}"


def _attr_partials(model: DataModel) -> list[tuple[str, str]]:
    """(column, type) of the latest-wins part of the state."""
    from segment_pipeline.core.profiles import latest_fields

    types = {**{link: "VARCHAR" for link in model.links}, **{n: a.sql_type for n, a in model.attributes.items()}}
    cols = []
    for j, name in enumerate(latest_fields(model)):
        cols += [(f"a{j}_v", types[name]), (f"a{j}_o", ORD_TYPE)]
    return cols


#: The profile columns derived from the email alone (as ``profiles.profiles_sql`` computes them); the
#: state carries them so a day hashes only the emails new to it (MD5 of every email was the
#: largest single cost of writing a day's profiles).
IDENTITY_ID = "md5(email)[1:16]"
RANDOM_BUCKET = "(md5_number(email) % 10000)::INTEGER"

CUSTOM_TYPE = f"STRUCT(k VARCHAR, v VARCHAR, o {ORD_TYPE})[]"


def _state_columns(model: DataModel, pl: Plan) -> list[tuple[str, str]]:
    if not pl.profiles:
        return [("email", "VARCHAR"), ("first_event_at", "TIMESTAMP"), ("last_event_at", "TIMESTAMP"),
                *[(p.name, p.type) for p in pl.partials()]]
    return [
        ("email", "VARCHAR"), ("identity_id", "VARCHAR"), ("random_bucket", "INTEGER"),
        *_attr_partials(model), ("custom", CUSTOM_TYPE),
        ("updated_at", "TIMESTAMP"), ("first_profile_at", "TIMESTAMP"), ("first_created_at", "TIMESTAMP"),
        ("first_event_at", "TIMESTAMP"), ("last_event_at", "TIMESTAMP"),
        *[(p.name, p.type) for p in pl.partials()],
    ]


def _profile_day_sql(warehouse: Warehouse, raw: str) -> str:
    """The latest-wins partials of the profile records in ``raw`` grouped by email (same order key
    and "given" rule as the full recompute, ``profiles.profiles_sql``)."""
    from segment_pipeline.core.profiles import CREATED_AT, ORDER_KEY, latest_fields

    model = warehouse.model
    parts = []
    for j, name in enumerate(latest_fields(model)):
        col = q(name)
        given = f"{col} IS NOT NULL OR list_contains(cleared, {sql_string(name)})"
        parts.append(f"arg_max_null({col}, ord) FILTER (WHERE {given}) AS a{j}_v, max(ord) FILTER (WHERE {given}) AS a{j}_o")
    created = model.attributes.get(CREATED_AT)
    first_created = f"min({q(CREATED_AT)})" if created is not None and created.type == "timestamp" else "NULL::TIMESTAMP"
    return f"""
    WITH files AS (
        SELECT date, source_file, row_number() OVER (PARTITION BY date ORDER BY source_file) - 1 AS file_no
        FROM (SELECT DISTINCT date, source_file FROM {raw})
    ),
    rp AS (SELECT r.*, CAST({ORDER_KEY} AS {ORD_TYPE}) AS ord FROM {raw} r JOIN files USING (date, source_file)),
    attrs AS (
        SELECT email, {''.join(p + ', ' for p in parts)}{first_created} AS first_created_at,
               max(updated_at) AS updated_at, min(updated_at) AS first_profile_at
        FROM rp GROUP BY email
    ),
    custom AS (
        SELECT email, list({{'k': key, 'v': value, 'o': o}} ORDER BY key) AS custom FROM (
            SELECT email, key, arg_max_null(value::VARCHAR, ord) AS value, max(ord) AS o
            FROM (SELECT email, ord, unnest(map_keys(m)) AS key, unnest(map_values(m)) AS value
                  FROM (SELECT email, ord, custom_attributes::JSON::MAP(VARCHAR, JSON) AS m
                        FROM rp WHERE custom_attributes IS NOT NULL))
            GROUP BY email, key)
        GROUP BY email
    )
    SELECT * FROM attrs LEFT JOIN custom USING (email)
    """


def _merge_select(model: DataModel, pl: Plan, rows: str) -> str:
    """Merge partial rows (``rows``: a relation with every state column) per email."""
    out = ["email"]
    if pl.profiles:
        for j in range(len(_attr_partials(model)) // 2):
            out.append(f"arg_max_null(a{j}_v, a{j}_o) FILTER (WHERE a{j}_o IS NOT NULL) AS a{j}_v, max(a{j}_o) AS a{j}_o")
        # derived from the email alone: carried, hashed only for an identity new to the state
        out += [f"coalesce(max(identity_id), {IDENTITY_ID}) AS identity_id",
                f"coalesce(max(random_bucket), {RANDOM_BUCKET}) AS random_bucket"]
        out += ["max(updated_at) AS updated_at", "min(first_profile_at) AS first_profile_at",
                "min(first_created_at) AS first_created_at"]
    out += ["min(first_event_at) AS first_event_at", "max(last_event_at) AS last_event_at"]
    vcs = []
    for p in pl.partials():
        if p.merge == "sum":
            out.append(f"CAST(sum({p.name}) AS {p.type}) AS {p.name}")
        elif p.merge in ("min", "max"):
            out.append(f"{p.merge}({p.name}) AS {p.name}")
        elif p.merge.startswith("arg"):
            fn, key = p.merge.split(":")
            out.append(f"arg_{fn[3:]}({p.name}, {key}) FILTER (WHERE {key} IS NOT NULL) AS {p.name}")
        else:
            vcs.append(p)
    sql = f"SELECT {', '.join(out)} FROM rows GROUP BY email"
    joins = [
        "LEFT JOIN (SELECT email, list({'k': k, 'v': v, 'o': o} ORDER BY k) AS custom FROM ("
        "SELECT email, e.k AS k, arg_max_null(e.v, e.o) AS v, max(e.o) AS o FROM "
        "(SELECT email, unnest(custom) AS e FROM rows WHERE custom IS NOT NULL) GROUP BY email, e.k) GROUP BY email) cu USING (email)"
    ] if pl.profiles else []
    for j, p in enumerate(vcs):
        joins.append(
            f"LEFT JOIN (SELECT email, CAST(list({{'v': v, 'n': n}} ORDER BY v) AS {p.type}) AS {p.name} FROM ("
            f"SELECT email, e.v AS v, sum(e.n) AS n FROM (SELECT email, unnest({p.name}) AS e FROM rows "
            f"WHERE {p.name} IS NOT NULL) GROUP BY email, e.v HAVING sum(e.n) <> 0) GROUP BY email) m{j} USING (email)"
        )
    return f"WITH rows AS ({rows}) SELECT * FROM ({sql}) g {' '.join(joins)}"


def _project(model: DataModel, pl: Plan, source: str, *, attrs: bool, seen: bool,
             partial: dict[str, str] | None = None) -> str:
    """``source`` rows projected onto every state column: columns the source does not provide
    (or that ``partial`` maps to an expression, by name) are NULL / that expression."""
    partial = partial or {}
    cols = []
    for name, typ in _state_columns(model, pl):
        if name in partial:
            expr = partial[name]
        elif name == "email":
            expr = "email"
        elif name in ("first_event_at", "last_event_at"):
            expr = name if seen else "NULL"
        elif name.startswith("a") or name in ("custom", "updated_at", "first_profile_at", "first_created_at"):
            expr = name if attrs else "NULL"
        else:
            expr = "NULL"
        cols.append(f"CAST({expr} AS {typ}) AS {name}")
    return f"SELECT {', '.join(cols)} FROM {source}"


def _negate(p: Partial) -> str:
    if p.merge == "vc":
        return f"list_transform({p.name}, lambda x: struct_pack(v := x.v, n := -x.n))"
    return f"-{p.name}"


def _window_mask(pl: Plan, day: dt.date, params: dict[str, object], skip_non_invertible: bool = False) -> dict[str, str]:
    """Expressions taking a rollup's partials only inside each windowed trait's window (and none
    of a non-invertible windowed trait's with ``skip_non_invertible``: those are recomputed)."""
    out = {}
    for t in pl.traits:
        if t.window is None:
            for p in t.partials:
                out[p.name] = p.name
            continue
        start = day - dt.timedelta(days=t.window - 1)
        params[f"w_{t.window}"] = start
        skip = skip_non_invertible and not all(p.invertible for p in t.partials)
        for p in t.partials:
            out[p.name] = "NULL" if skip else f"CASE WHEN occurred_on >= $w_{t.window} THEN {p.name} END"
    return out


# ---------------------------------------------------------------------------------------------
# the step
# ---------------------------------------------------------------------------------------------

@dataclass
class StateReport:
    day: dt.date
    mode: str  # 'incremental' | 'full'
    reason: str  # why a full build was made ('' for incremental)
    identities: int = 0


def _can_continue(con, warehouse: Warehouse, day: dt.date, pl: Plan, fp: str) -> str:
    """'' when state(day-1) can be continued, else the reason for a full build."""
    prev = day - dt.timedelta(days=1)
    rollups, pending, state = pl.tables
    meta = _meta(con, warehouse, state, prev)
    if not meta:
        return f"no state for {prev}"
    if meta.get("model") != fp:
        return f"the state of {prev} was built from another data model"
    if meta.get("inputs") != watermark(warehouse, prev):
        return f"raw partitions up to {prev} changed since its state was built (re-run the days after a late file)"
    need = [prev] + [prev - dt.timedelta(days=i) for i in range(1, (max(pl.windows) if pl.windows else 0) + 1)]
    missing = [d for d in need if not _path(warehouse, rollups, d).exists()]
    if missing:
        return f"the event rollups of {missing[0]} are missing"
    files = ", ".join(sql_string(str(_path(warehouse, rollups, d))) for d in need)
    (matching,) = con.execute(f"SELECT count(*) FROM parquet_kv_metadata([{files}]) WHERE key::VARCHAR = 'model' "
                              f"AND value::VARCHAR = {sql_string(fp)}").fetchall()[0]
    if matching != len(need):
        return "the event rollups of the window were built from another data model"
    if _meta(con, warehouse, pending, prev).get("model") != fp:
        return f"the pending events of {prev} are missing or from another data model"
    return ""


def can_continue(con: duckdb.DuckDBPyConnection, warehouse: Warehouse, day: str | dt.date,
                 pl: Plan | None = None, fp: str | None = None) -> str:
    """'' when the state of the day before ``day`` can be continued (same model, same raw
    partitions, its rollups and pending events present), else why a full build is needed."""
    if pl is None:
        pl, fp = plan(warehouse.model), fingerprint(warehouse.model)
    return _can_continue(con, warehouse, as_date(day), pl, fp)


def _event_cols(pl: Plan, warehouse: Warehouse) -> list[str]:
    have = warehouse.schema("raw_events")
    return [c for c in pl.columns if c in have]


def build_state(con: duckdb.DuckDBPyConnection, warehouse: Warehouse, day: str | dt.date, full: bool = False,
                pl: Plan | None = None, fp: str | None = None) -> StateReport:
    """Write ``event_rollups``, ``pending_events`` and ``profile_state`` for ``day`` (see the module
    doc); return how it was built. Another ``pl`` (with its fingerprint ``fp``) keeps another
    state in its own tables the same way (the segments' event rules: ``segment_state``)."""
    day = as_date(day)
    model = warehouse.model
    if pl is None:
        pl, fp = plan(model), fingerprint(model)
    rollups, pending, state = pl.tables
    reason = "full rebuild requested" if full else _can_continue(con, warehouse, day, pl, fp)
    end = dt.datetime.combine(day + dt.timedelta(days=1), dt.time())
    params: dict[str, object] = {**{k: v for k, v in pl.params.items() if k != "t_day"}, "end_ts": end}
    cols = _event_cols(pl, warehouse)
    sel = ", ".join(q(c) for c in cols)
    pend_cols = f"{sel}, date AS landed_on"
    meta = {"model": fp}
    if reason:
        # full build: every raw partition up to the day
        raw_ev = warehouse.scan("raw_events", upto=day)
        vis_sql = (f"CREATE OR REPLACE TEMP TABLE inc_vis AS SELECT {sel}, date, occurred_at::DATE AS occurred_on, "
                   f"greatest(date, occurred_at::DATE) AS visible_on FROM {raw_ev} "
                   f"WHERE occurred_at < $end_ts AND email IS NOT NULL")
        con.execute(vis_sql, _used(vis_sql, params))
        rv_sql = f"CREATE OR REPLACE TEMP TABLE inc_rv AS {_rollup_sql(pl, 'inc_vis', ['visible_on', 'email', 'occurred_on'])}"
        con.execute(rv_sql, _used(rv_sql, params))
        first = day - dt.timedelta(days=max(pl.windows) if pl.windows else 0)
        with_rows = {r[0] for r in con.execute("SELECT DISTINCT visible_on FROM inc_rv").fetchall()}
        for d in sorted({first + dt.timedelta(days=i) for i in range((day - first).days + 1)}):
            where = f"visible_on = DATE '{d.isoformat()}'" if d in with_rows else "false"  # (empty: no scan)
            _write(con, warehouse, rollups, d, f"SELECT * EXCLUDE (visible_on) FROM inc_rv WHERE {where}", {},
                   "occurred_on, email", meta)
        _write(con, warehouse, pending, day,
               f"SELECT {pend_cols} FROM {raw_ev} WHERE occurred_at >= $end_ts AND email IS NOT NULL", params,
               "landed_on, source_file, source_line, occurred_at, email", meta)
        mask = _window_mask(pl, day, params)
        rows = " UNION ALL ".join([
            *([_project(model, pl, f"({_profile_day_sql(warehouse, warehouse.scan('raw_profiles', upto=day))})",
                        attrs=True, seen=False)] if pl.profiles else []),
            _project(model, pl, "inc_rv", attrs=False, seen=True, partial=mask),
        ])
        mode = "full"
    else:
        prev = day - dt.timedelta(days=1)
        params["day"] = day
        vis = (f"(SELECT {sel}, date, occurred_at::DATE AS occurred_on FROM {warehouse.scan('raw_events', days=[day])} "
               f"WHERE occurred_at < $end_ts AND email IS NOT NULL "
               f"UNION ALL SELECT {sel}, landed_on AS date, occurred_at::DATE AS occurred_on "
               f"FROM {_read(warehouse, pending, [prev])} WHERE occurred_at < $end_ts)")
        _write(con, warehouse, rollups, day, _rollup_sql(pl, vis, ["email", "occurred_on"]), params,
               "occurred_on, email", meta)
        _write(con, warehouse, pending, day,
               f"SELECT {pend_cols} FROM {warehouse.scan('raw_events', days=[day])} WHERE occurred_at >= $end_ts "
               f"AND email IS NOT NULL UNION ALL SELECT {sel}, landed_on FROM {_read(warehouse, pending, [prev])} "
               f"WHERE occurred_at >= $end_ts", params, "landed_on, source_file, source_line, occurred_at, email", meta)
        today = _read(warehouse, rollups, [day])
        prev_state = _read(warehouse, state, [prev])
        mask = _window_mask(pl, day, params, skip_non_invertible=True)
        non_inv = {t.window for t in pl.traits if t.window and not all(p.invertible for p in t.partials)}
        parts = [*([_project(model, pl, f"({_profile_day_sql(warehouse, warehouse.scan('raw_profiles', days=[day]))})",
                             attrs=True, seen=False)] if pl.profiles else []),
                 _project(model, pl, today, attrs=False, seen=True, partial=mask)]
        keep_prev: dict[str, str] = {}
        for n in pl.windows:
            leaving = day - dt.timedelta(days=n)
            params[f"x_{n}"] = leaving
            exp_rel = (f"(SELECT * FROM {_read(warehouse, rollups, [leaving + dt.timedelta(days=i) for i in range(n)])}"
                       f" WHERE occurred_on = $x_{n})")
            win = [t for t in pl.traits if t.window == n]
            inv = {p.name: _negate(p) for t in win if all(p.invertible for p in t.partials) for p in t.partials}
            if inv:
                parts.append(_project(model, pl, exp_rel, attrs=False, seen=False, partial=inv))
            if n in non_inv:
                rec = [p for t in win if not all(p.invertible for p in t.partials) for p in t.partials]
                touched = (f"(SELECT email FROM {today} WHERE occurred_on >= $w_{n} "
                           f"UNION SELECT email FROM {exp_rel})")
                con.execute(f"CREATE OR REPLACE TEMP TABLE inc_touched_{n} AS {touched}", _used(touched, params))
                window_rel = (f"(SELECT * FROM {_read(warehouse, rollups, [day - dt.timedelta(days=i) for i in range(n)])}"
                              f" WHERE occurred_on >= $w_{n} AND email IN (SELECT email FROM inc_touched_{n}))")
                parts.append(_project(model, pl, window_rel, attrs=False, seen=False, partial={p.name: p.name for p in rec}))
                for p in rec:
                    keep_prev[p.name] = f"CASE WHEN email IN (SELECT email FROM inc_touched_{n}) THEN NULL ELSE {p.name} END"
        # the previous state: everything carried, except non-invertible windowed partials of
        # touched identities (recomputed above); windowed rows of today only count inside windows
        # Only the identities the day touches (a record, an event, a row leaving or a window
        # recomputed) are merged; every other identity's state row is copied as it was.
        changes = " UNION ALL ".join(parts)
        con.execute(f"CREATE OR REPLACE TEMP TABLE inc_changes AS {changes}", _used(changes, params))
        touched = " UNION ".join(["SELECT email FROM inc_changes",
                                  *(f"SELECT email FROM inc_touched_{n}" for n in non_inv)])
        con.execute(f"CREATE OR REPLACE TEMP TABLE inc_touched AS SELECT email FROM ({touched}) WHERE email IS NOT NULL")
        prev_cols = {name: keep_prev.get(name, name) for name, _ in _state_columns(model, pl) if name != "email"}
        prev_touched = f"(SELECT * FROM {prev_state} WHERE email IS NULL OR email IN (SELECT email FROM inc_touched))"
        rows = _project(model, pl, prev_touched, attrs=True, seen=True, partial=prev_cols) + " UNION ALL FROM inc_changes"
        untouched = f"SELECT * FROM {prev_state} WHERE email IS NOT NULL AND email NOT IN (SELECT email FROM inc_touched)"
        mode = "incremental"
    # the partial rows are read once per merged part (fields, custom keys, value counts): materialize
    con.execute(f"CREATE OR REPLACE TEMP TABLE inc_rows AS {rows}", _used(rows, params))
    state_sql = _merge_select(model, pl, "SELECT * FROM inc_rows")
    if mode == "incremental":
        state_sql = f"SELECT * FROM ({state_sql}) UNION ALL BY NAME {untouched}"
    _write(con, warehouse, state, day, state_sql, params, "email NULLS FIRST",
           {**meta, "inputs": watermark(warehouse, day), "mode": mode})
    for name in ("inc_vis", "inc_rv", "inc_changes", "inc_touched", "inc_rows", *(f"inc_touched_{n}" for n in pl.windows)):
        con.execute(f"DROP TABLE IF EXISTS {name}")
    n = con.execute(f"SELECT count(*) FROM {_read(warehouse, state, [day])}").fetchall()[0][0]
    return StateReport(day, mode, reason, n)


def profiles_from_state_sql(warehouse: Warehouse, day: str | dt.date) -> tuple[str, dict[str, object]]:
    """The SELECT producing the ``profiles`` partition for ``day`` from its ``profile_state``."""
    from segment_pipeline.core.profiles import latest_fields

    day = as_date(day)
    model = warehouse.model
    pl = plan(model)
    params = {k: v for k, v in pl.params.items()}
    if "t_day" in params:
        params["t_day"] = day
    fields = latest_fields(model)
    traits = [e for t in pl.traits for e in t.final]
    sql = f"""
    WITH s AS (SELECT * FROM {_read(warehouse, 'profile_state', [day])}),
    c AS (
        SELECT email, '{{' || string_agg(to_json(e.k)::VARCHAR || ':' || e.v, ',' ORDER BY e.k) || '}}' AS custom_attributes
        FROM (SELECT email, unnest(custom) AS e FROM s WHERE custom IS NOT NULL)
        WHERE e.v IS NOT NULL AND e.v <> 'null' GROUP BY email
    )
    SELECT s.identity_id, s.email,
        {''.join(f's.a{j}_v AS {q(name)}, ' for j, name in enumerate(fields))}
        c.custom_attributes, s.updated_at,
        least(s.first_profile_at, s.first_created_at, s.first_event_at) AS first_seen_at,
        greatest(s.updated_at, s.last_event_at) AS last_seen_at,
        {''.join(f'{e}, ' for e in traits)}
        s.random_bucket
    FROM s LEFT JOIN c USING (email)
    """
    return sql, _used(sql, params)


def segment_plan(catalog, day: dt.date, model: DataModel) -> tuple[Plan, str] | None:
    """The plan (and fingerprint) of the segments' incremental state: one partial per event
    feature and value counts per top value of their ``event:`` and ``affinity:`` rules
    (:func:`segment_pipeline.core.segments.event_features`), in ``segment_rollups``,
    ``segment_pending``, ``segment_state``. ``None`` when a rule cannot be kept incrementally."""
    from segment_pipeline.core.segments import event_features

    feats = event_features(catalog, day)
    if feats is None:
        return None
    traits = []
    for name, (agg, days, typ, invertible) in feats.features.items():
        traits.append(TraitPlan(name, "feature", days, [Partial(name, typ, f"CAST({agg} AS {typ})", "sum", invertible)], []))
    for name, (elem, where, days, vtype) in feats.tops.items():
        traits.append(TraitPlan(name, "top", days, [Partial(f"{name}_vc", f"STRUCT(v {vtype}, n BIGINT)[]", None, "vc", True)],
                                [], vc=(elem, where)))
    columns = ("email", "event", "occurred_at", *feats.properties, "source_file", "source_line")
    pl = Plan(traits, dict(feats.params), columns, sorted({t.window for t in traits if t.window is not None}),
              tables=("segment_rollups", "segment_pending", "segment_state"), profiles=False)
    text = json.dumps([STATE_VERSION, fingerprint(model), sorted(feats.features.items()), sorted(feats.tops.items()),
                       sorted((k, repr(v)) for k, v in feats.params.items())], default=str)
    return pl, hashlib.sha256(text.encode()).hexdigest()[:32]


def rebuild(con: duckdb.DuckDBPyConnection, warehouse: Warehouse, first: str | dt.date,
            last: str | dt.date | None = None, progress=None) -> list[tuple[dt.date, int, str]]:
    """Rebuild the profiles from ``first`` through ``last`` (default: the latest day with a raw or
    profiles partition): a full build of the state of ``first`` (from every raw partition up to
    it), then the incremental step for each later day. For a model change, or to re-base the
    state. Returns ``(day, identities, mode)`` per day; ``progress`` (if given) is called with each.
    Raises ``ValueError`` when ``last`` is before ``first`` or there is nothing to rebuild.
    """
    from segment_pipeline.core.profiles import build_profiles

    first = as_date(first)
    if last is None:
        known = [d for t in ("raw_profiles", "raw_events", "profiles") for d in warehouse.partition_dates(t)]
        if not known:
            raise ValueError(f"nothing to rebuild: the warehouse {warehouse.root} has no raw or profiles partitions")
        last = max(known)
    last = as_date(last)
    if last < first:
        raise ValueError(f"rebuild: the last day {last} is before the first day {first}")
    out = []
    day = first
    while day <= last:
        n = build_profiles(con, warehouse, day, full_rebuild=day == first)
        mode = "full" if day == first else _meta(con, warehouse, "profile_state", day).get("mode", "incremental")
        out.append((day, n, mode))
        if progress:
            progress(day, n, mode)
        day += dt.timedelta(days=1)
    return out
