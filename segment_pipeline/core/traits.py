"""Computed traits: the model's declared aggregations, compiled to DuckDB SQL over ``raw_events``.

Every trait of :class:`segment_pipeline.core.model.DataModel` (``traits:`` in the model file) is one
aggregation per identity (the normalized ``email``) over the events that occurred before the end of
the as-of day ``D`` (``occurred_at < D + 1 day``, UTC), narrowed by:

* ``event``: one event name, a list of names, or omitted for any event (undeclared ones included);
* ``where``: filters on declared properties (all must hold), see :func:`where_sql`;
* ``within_days: N``: only events with ``occurred_at >= D + 1 day - N days``, i.e. the N days
  ending with the as-of day; omitted: all time.

Functions (value type in :data:`segment_pipeline.core.model.TRAIT_FUNCTIONS`) and the value an
identity without any matching event gets:

==================  ==========================================================  ===============
function            value                                                        no events
==================  ==========================================================  ===============
``count``           matching events                                              ``0``
``sum``             sum of the property (NULLs ignored)                          ``0``
``min``/``max``     smallest/largest value of the property                       NULL
``avg``             mean of the property (DOUBLE)                                NULL
``first``/``last``  the property on the earliest/latest matching event where it     NULL
                    is not NULL (ties on ``occurred_at``: the earlier/later
                    delivered row: landing day, file, line)
``first_time``      ``occurred_at`` of the earliest matching event               NULL
``last_time``       ``occurred_at`` of the latest matching event                 NULL
``days_since``      as-of day minus the day of the latest matching event          NULL
``distinct_count``  distinct non-NULL values (list properties: elements)          ``0``
``exists``          any matching event                                           ``false``
``top``             most frequent non-NULL value (list properties: each element  NULL, ``_count``
                    counts once per event); ties go to the value sorting last;    ``0``,
                    adds ``<name>_count`` (its count) and ``<name>_share`` (its   ``_share`` NULL
                    count / all counted values)
==================  ==========================================================  ===============

Shape of the compiled SQL (:func:`traits_sql`): all traits but ``top`` are FILTERed aggregates of
one ``GROUP BY email`` over the events (one pass); each ``top`` is its own sub-aggregate (counts
per identity and value, then the largest per identity). Every value from the model (event names,
filter values, window starts) is a bound parameter; identifiers are quoted. Each trait is one
aggregation over per-identity rows, so issue 12 (incremental state) can compute the same traits
from per-identity-per-day rollups (counts/sums add up, min/max/first/last combine, top adds the
per-value counts) without changing the declarations.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from segment_pipeline.core.model import TYPES, DataModel, Trait, where_value_problem
from segment_pipeline.core.warehouse import sql_ident as q

#: Identity, event name and time columns every compiled query reads from the events relation.
BASE_COLUMNS = ("email", "event", "occurred_at")
#: Delivery order of events (tie-breaker of ``first``/``last`` on equal ``occurred_at``).
DELIVERY_COLUMNS = ("date", "source_file", "source_line")


class TraitError(ValueError):
    """A trait cannot be compiled (e.g. a ``where`` value that does not fit its property);
    the message names the trait and the entry (``traits.<name>.<function>.where[i]: ...``)."""


@dataclass
class Params:
    """Named parameters collected while compiling (``$name`` placeholders)."""

    values: dict[str, Any] = field(default_factory=dict)

    def add(self, value: Any, stem: str = "v") -> str:
        """The placeholder of ``value`` (one per distinct value and stem)."""
        for name, known in self.values.items():
            if name.startswith(f"t_{stem}_") and type(known) is type(value) and known == value:
                return f"${name}"
        name = f"t_{stem}_{len(self.values)}"
        self.values[name] = value
        return f"${name}"


def where_sql(model: DataModel, trait_name: str, trait: Trait, params: Params) -> list[str]:
    """SQL conditions of a trait's ``where`` filters (all must hold).

    Properties compare as SQL does: an event without the property (NULL) matches only ``is null``,
    whatever the operator. ``in`` / ``not in`` take a list; ``contains`` on a string is a
    case-insensitive substring. On a ``list[string]`` property, ``=`` and ``contains`` mean "has
    this element", ``!=`` "does not have it", ``in`` "has any of these", ``not in`` "has none of
    these".
    Raises :class:`TraitError` naming the trait and the filter when a value does not fit.
    """
    props = model.property_types()
    out = []
    for i, cond in enumerate(trait.aggregation.where):
        ptype = props[cond.property]
        entry = f"{trait.function}.where[{i}]"
        problem = where_value_problem(ptype, cond.op, cond.value)
        if problem:  # the model file's validation reports it first; a model built in code may not
            raise TraitError(f"traits.{trait_name}.{entry}: {problem}")
        col = q(cond.property)
        op = cond.op
        if op == "is null":
            out.append(f"{col} IS NULL")
            continue
        if op == "is not null":
            out.append(f"{col} IS NOT NULL")
            continue
        if ptype == "list[string]":
            if op in ("=", "contains"):
                out.append(f"list_contains({col}, {params.add(cond.value)}::VARCHAR)")
            elif op == "!=":
                out.append(f"NOT list_contains({col}, {params.add(cond.value)}::VARCHAR)")
            elif op == "in":
                out.append(f"list_has_any({col}, {params.add(cond.value)}::VARCHAR[])")
            else:  # not in
                out.append(f"NOT list_has_any({col}, {params.add(cond.value)}::VARCHAR[])")
            continue
        sql_type = TYPES[ptype]
        if op == "contains":
            out.append(f"contains(lower({col}), lower({params.add(cond.value)}::VARCHAR))")
        elif op == "in":
            out.append(f"list_contains({params.add(cond.value)}::{sql_type}[], {col})")
        elif op == "not in":
            out.append(f"({col} IS NOT NULL AND NOT list_contains({params.add(cond.value)}::{sql_type}[], {col}))")
        else:
            out.append(f"{col} {op} {params.add(cond.value)}::{sql_type}")
    return out


def _event_sql(names: tuple[str, ...], params: Params) -> list[str]:
    if not names:
        return []
    if len(names) == 1:
        return [f"event = {params.add(names[0], 'event')}"]
    return [f"event IN ({', '.join(params.add(n, 'event') for n in names)})"]


@dataclass
class CompiledTraits:
    """The compiled traits of a model for one as-of day.

    ``ctes``: CTE definitions (``name AS (...)``) to put in a ``WITH`` after the events relation
    named ``events_cte`` (columns :attr:`columns`); ``joins``: the CTE names to ``LEFT JOIN ...
    USING (email)`` onto the identities; ``select``: the trait columns' expressions, in
    ``model.trait_columns()`` order, over those CTEs' aliases (``defaults`` applied); ``params``.
    """

    columns: tuple[str, ...]
    ctes: list[str]
    joins: list[str]
    select: list[str]
    params: dict[str, Any]


def compile_traits(model: DataModel, day: dt.date, events_cte: str = "ev", agg_cte: str = "activity") -> CompiledTraits:
    """Compile every trait of ``model`` as of ``day`` (see the module doc).

    The events relation ``events_cte`` must hold :data:`BASE_COLUMNS`, the properties the traits
    read, and (when a ``first``/``last`` trait exists) :data:`DELIVERY_COLUMNS`, already limited to
    ``occurred_at < day + 1``. The aggregate CTE ``agg_cte`` also yields ``first_event_at`` and
    ``last_event_at`` (all events), which profiles need for first/last seen.
    """
    params = Params()
    end = dt.datetime.combine(day + dt.timedelta(days=1), dt.time())
    props = model.property_types()
    windows: dict[int, str] = {}
    needed: set[str] = set()
    delivery = False

    def window(days: int | None) -> list[str]:
        if days is None:
            return []
        if days not in windows:
            windows[days] = params.add(end - dt.timedelta(days=days), f"since{days}")
        return [f"occurred_at >= {windows[days]}"]

    aggs = ["min(occurred_at) AS first_event_at", "max(occurred_at) AS last_event_at"]
    ctes: list[str] = []
    joins = [agg_cte]
    select: list[str] = []
    for name, trait in model.traits.items():
        fn, agg = trait.function, trait.aggregation
        prop = agg.property
        col = q(prop) if prop else None
        if prop:
            needed.add(prop)
        needed.update(w.property for w in agg.where)
        conds = [*_event_sql(agg.event_names(), params), *where_sql(model, name, trait, params), *window(agg.within_days)]
        is_list = prop is not None and props[prop] == "list[string]"
        alias = q(name)
        target = q(f"{agg_cte}") + "." + alias

        def filt(extra: list[str], conds: list[str] = conds) -> str:
            all_conds = [*conds, *extra]
            return f" FILTER (WHERE {' AND '.join(all_conds)})" if all_conds else ""

        if fn == "top":
            cte = f"top_{len(ctes)}"
            element = f"unnest({col})" if is_list else col
            inner_where = " AND ".join([*conds]) or "true"
            ctes.append(
                f"{cte} AS (\n"
                f"        SELECT email, arg_max(v, (n, v)) AS top, max(n) AS top_count, sum(n) AS counted\n"
                f"        FROM (SELECT email, v, count(*) AS n FROM (\n"
                f"                  SELECT email, {element} AS v FROM {events_cte} WHERE {inner_where})\n"
                f"              WHERE v IS NOT NULL GROUP BY ALL)\n"
                f"        GROUP BY email)"
            )
            joins.append(cte)
            select += [
                f"{cte}.top AS {alias}",
                f"coalesce({cte}.top_count, 0) AS {q(name + '_count')}",
                f"{cte}.top_count / nullif({cte}.counted, 0) AS {q(name + '_share')}",
            ]
            continue
        if fn == "count":
            expr, default = f"count(*){filt([])}", "0"
        elif fn == "exists":
            expr, default = f"count(*){filt([])} > 0", "false"
        elif fn == "sum":
            expr, default = f"sum({col}){filt([])}", "0"
        elif fn in ("min", "max", "avg"):
            expr, default = f"{fn}({col}){filt([])}", None
        elif fn in ("first", "last"):
            delivery = True
            key = "(occurred_at, date, source_file, source_line)"
            expr = f"arg_{'min' if fn == 'first' else 'max'}({col}, {key}){filt([f'{col} IS NOT NULL'])}"
            default = None
        elif fn == "first_time":
            expr, default = f"min(occurred_at){filt([])}", None
        elif fn in ("last_time", "days_since"):
            expr, default = f"max(occurred_at){filt([])}", None
        elif fn == "distinct_count":
            if is_list:
                expr = f"length(list_distinct(flatten(list({col}){filt([f'{col} IS NOT NULL'])})))"
            else:
                expr = f"count(DISTINCT {col}){filt([])}"
            default = "0"
        else:  # pragma: no cover - the model validates function names
            raise TraitError(f"traits.{name}: unknown function {fn!r}")
        aggs.append(f"{expr} AS {alias}")
        if fn == "days_since":
            params.values["t_day"] = day
            select.append(f"($t_day::DATE - {target}::DATE)::INTEGER AS {alias}")
        elif default is not None:
            select.append(f"coalesce({target}, {default}) AS {alias}")
        else:
            select.append(f"{target} AS {alias}")
    ctes.insert(0, f"{agg_cte} AS (\n        SELECT email,\n            " + ",\n            ".join(aggs)
                + f"\n        FROM {events_cte} GROUP BY email)")
    columns = [*BASE_COLUMNS, *sorted(needed)]
    if delivery:
        columns += list(DELIVERY_COLUMNS)
    return CompiledTraits(tuple(columns), ctes, joins, select, params.values)
