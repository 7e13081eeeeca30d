"""Mapped field values in the plan: what each desired contact should carry in every mapped
destination field, diffed per field against what the destination was last told.

The mirror keeps one row per (field holder, email) in ``held_values`` (holder: service URL + field
name, like ``held`` for the segment names), with the JSON text last confirmed, ``'null'`` once
cleared. :func:`field_rows_sql` builds, for the desired emails, one column ``s<i>`` per mapping:
the JSON text to send (a value, or ``'null'`` to clear) or NULL when nothing changes, then the
plan's ``fields`` column is the JSON object of the changes (``{"first_name": "Ann", "points": null}``,
NULL when none) and ``field_clears`` how many of them clear. All DuckDB, streaming; the desired
values come from the ``profiles`` partition of the synced day.

Rules per mapping (documented in docs/syncs.md, "Field mappings"):

* a value that differs from the one last confirmed (or was never confirmed: a new mapping sends
  everyone once) is sent;
* no value: ``null: leave`` sends nothing; ``null: clear`` sends the clear unless the mirror says
  the field is cleared already;
* a value over the field's length limit is not sent (counted in ``over``, never cut);
* only desired contacts (in at least one synced segment) get field values; a contact who leaves
  every synced segment keeps the values last sent.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

from segment_pipeline.core.sync.mappings import FieldMapping, over_limit_sql, value_sql
from segment_pipeline.core.warehouse import sql_string

UNSET_PREFIX = "unset:"


@dataclass(frozen=True)
class FieldPlan:
    """What :func:`~segment_pipeline.core.sync.diff.write_plan` needs to plan mapped fields.

    ``profiles``: a DuckDB relation of the day's ``profiles`` (``Warehouse.scan``); ``vendor``: the
    destination name (conversions); ``holder_prefix``: the mirror key of the service, to which the
    field name is appended (:meth:`~segment_pipeline.core.sync.state.Target.field_holder`);
    ``unset_separately``: clears cannot ride on an upsert (dotdigital: an empty cell only clears
    under the ``Overwrite`` merge option), so each cleared field gets its own ``unset:<field>`` rows.
    """

    mappings: tuple[FieldMapping, ...]
    vendor: str
    profiles: str
    holder_prefix: str
    unset_separately: bool = False

    def holder(self, m: FieldMapping) -> str:
        return self.holder_prefix + m.target


def key_literal(name: str) -> str:
    """The JSON object key ``"name"`` as a SQL string literal."""
    return sql_string(json.dumps(name, ensure_ascii=False))


def path_literal(name: str) -> str:
    """The JSON path ``$."name"`` as a SQL string literal (names never hold a double quote)."""
    return sql_string(f'$."{name}"')


def field_rows_sql(fp: FieldPlan, desired_from: str) -> tuple[str, list[object]]:
    """SQL (+ params) with columns ``email, s0.., o0.., w0..`` for every desired email that has a
    profile: ``s<i>`` the JSON text to send for mapping ``i`` (NULL: nothing), ``o<i>`` the value is
    over the field's limit (not sent), ``w<i>`` the send clears a value the destination was
    confirmed to hold (what the removal guard counts; a clear of a value never sent is not)."""
    ms = fp.mappings
    values = ", ".join(f"{value_sql(m, fp.vendor)} AS v{i}" for i, m in enumerate(ms))
    held = ", ".join(f"max(value) FILTER (WHERE holder = ?) AS h{i}" for i in range(len(ms)))
    holders = [fp.holder(m) for m in ms]
    outs = []
    for i, m in enumerate(ms):
        clear = f"CASE WHEN h{i} IS DISTINCT FROM 'null' THEN 'null' END" if m.clears else "NULL"
        outs.append(f"CASE WHEN o{i} THEN NULL WHEN v{i} IS NULL THEN {clear} "
                    f"WHEN v{i} IS DISTINCT FROM h{i} THEN v{i} END AS s{i}")
    overs = ", ".join(f"{over_limit_sql(m, f'v{i}')} AS o{i}" for i, m in enumerate(ms))
    sql = f"""
        WITH d AS (SELECT email FROM {desired_from}),
        pv AS (SELECT p.email AS email, {values} FROM {fp.profiles} AS p JOIN d ON d.email = p.email),
        po AS (SELECT *, {overs} FROM pv),
        hv AS (SELECT email, {held} FROM held_values
               WHERE holder IN ({", ".join("?" for _ in ms)}) GROUP BY email)
        SELECT po.email, {", ".join(outs)}, {", ".join(f"o{i}" for i in range(len(ms)))},
               {", ".join(f"(h{i} IS NOT NULL AND h{i} <> 'null' AND v{i} IS NULL AND {'TRUE' if m.clears else 'FALSE'}) AS w{i}"
                          for i, m in enumerate(ms))}
        FROM po LEFT JOIN hv ON hv.email = po.email
    """
    return sql, [*holders, *holders]


def fields_object_sql(fp: FieldPlan, alias: str = "f") -> tuple[str, str]:
    """``(fields, field_clears)`` SQL over :func:`field_rows_sql`'s columns: the JSON object text of
    the changes an upsert carries (NULL when none) and how many of them clear a value the
    destination was confirmed to hold. With
    ``unset_separately`` the clears are left out (they become ``unset:<field>`` rows)."""
    parts, clears = [], []
    for i, m in enumerate(fp.mappings):
        s = f"{alias}.s{i}"
        cond = f"{s} IS NOT NULL" + (f" AND {s} <> 'null'" if fp.unset_separately else "")
        parts.append(f"CASE WHEN {cond} THEN {key_literal(m.target)} || ':' || {s} END")
        clears.append(f"CASE WHEN {alias}.w{i} THEN 1 ELSE 0 END")
    obj = f"NULLIF('{{' || concat_ws(',', {', '.join(parts)}) || '}}', '{{}}')"
    return obj, " + ".join(clears) or "0"


def unset_rows_sql(fp: FieldPlan, k: str = "k", f: str = "f") -> list[str]:
    """One SELECT per clearing mapping (``unset_separately`` only): ``unset:<field>`` plan rows."""
    out = []
    for i, m in enumerate(fp.mappings):
        if not m.clears:
            continue
        out.append(f"SELECT {sql_string(UNSET_PREFIX + m.target)} AS action, {k}.email, {k}.want AS segments, "
                   f"{k}.member, {k}.have AS held, '{{' || {key_literal(m.target)} || ':null}}' AS fields, "
                   f"CASE WHEN {f}.w{i} THEN 1 ELSE 0 END AS field_clears "
                   f"FROM {k} JOIN field_rows {f} ON {f}.email = {k}.email "
                   f"WHERE {k}.want IS NOT NULL AND {f}.s{i} = 'null'")
    return out


def field_counts_sql(fp: FieldPlan) -> str:
    """One row: per mapping ``set<i>``, ``clear<i>``, ``over<i>`` counts over ``field_rows``."""
    cols = []
    for i in range(len(fp.mappings)):
        cols += [f"count(*) FILTER (WHERE s{i} IS NOT NULL AND s{i} <> 'null') AS set{i}",
                 f"count(*) FILTER (WHERE s{i} = 'null') AS clear{i}",
                 f"count(*) FILTER (WHERE o{i}) AS over{i}"]
    return f"SELECT {', '.join(cols)} FROM field_rows"


@dataclass(frozen=True)
class FieldCounts:
    """Per mapped field (destination field name): contacts getting a value, a clear, or nothing
    because the value is over the field's limit."""

    sets: dict[str, int]
    clears: dict[str, int]
    over: dict[str, int]

    @classmethod
    def from_row(cls, mappings: Sequence[FieldMapping], row: Sequence[int]) -> FieldCounts:
        sets, clears, over = {}, {}, {}
        for i, m in enumerate(mappings):
            sets[m.target], clears[m.target], over[m.target] = (int(x) for x in row[3 * i:3 * i + 3])
        return cls(sets, clears, over)


# -- record pieces for the adapters --------------------------------------------------------------
def value_of(m: FieldMapping, fields: str = "fields") -> str:
    """SQL: the JSON text of ``m``'s change in the row's ``fields`` (NULL: no change; ``'null'``: clear)."""
    return f"json_extract({fields}, {path_literal(m.target)})::VARCHAR"


def members_sql(mappings: Sequence[FieldMapping], with_nulls: bool, fields: str = "fields") -> str:
    """SQL: ``"name":value`` members joined with commas (NULL when none), for the mappings' changes;
    ``with_nulls`` False leaves the clears out."""
    parts = []
    for m in mappings:
        v = value_of(m, fields)
        cond = f"{v} IS NOT NULL" + ("" if with_nulls else f" AND {v} <> 'null'")
        parts.append(f"CASE WHEN {cond} THEN {key_literal(m.target.split('.', 1)[-1] if m.kind == 'location' else m.target)}"
                     f" || ':' || {v} END")
    if not parts:
        return "NULL"
    return f"NULLIF(concat_ws(',', {', '.join(parts)}), '')"


def cleared_names_sql(mappings: Sequence[FieldMapping], fields: str = "fields") -> str:
    """SQL: the JSON list text of the mappings whose change is a clear (NULL when none)."""
    parts = [f"CASE WHEN {value_of(m, fields)} = 'null' THEN {key_literal(m.target)} END" for m in mappings]
    if not parts:
        return "NULL"
    return f"NULLIF('[' || concat_ws(',', {', '.join(parts)}) || ']', '[]')"
