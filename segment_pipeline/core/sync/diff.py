"""The diff: desired state vs. the destination mirror -> a plan of upserts, clears and removals.

The desired state is materialized once (a temporary DuckDB table), values over the destination's
length limit are fitted to it (:class:`ValueFit`), and the plan is written to a Parquet file
(DuckDB does the joins, streaming), then read back in record batches by the batching engine, so
nothing the size of the audience is ever held in Python.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from segment_pipeline.core.atomic import FILE_MODE, private_mkdir
from segment_pipeline.core.sync.fields import (
    UNSET_PREFIX,
    FieldCounts,
    FieldPlan,
    field_counts_sql,
    field_rows_sql,
    fields_object_sql,
    unset_rows_sql,
)
from segment_pipeline.core.sync.state import StateStore, Target, _now
from segment_pipeline.core.warehouse import sql_string

UPSERT, CLEAR, REMOVE = "upsert", "clear", "remove"


@dataclass(frozen=True)
class PlanCounts:
    desired: int
    upserts: int
    clears: int
    removals: int
    truncated: int = 0  # desired profiles whose value was cut to the destination's limit
    dropped_all: int = 0  # of which no name fitted at all (treated as not desired: cleared/removed)
    dropped_names: tuple[tuple[str, int], ...] = ()  # the names dropped most often, with how often (top 5)
    held_contacts: int = 0  # contacts holding a non-empty value per the mirror (members-only destinations: members)
    leaving: int = 0  # planned contacts whose value is cleared, who are removed, or lose a mapped value they held
    field_counts: FieldCounts | None = None  # per mapped field: values to send, clears, over the limit
    unsets: int = 0  # ``unset:<field>`` rows (destinations that clear fields in their own requests)
    #: contacts left out of the plan because they asked to be forgotten (tombstoned, ``forgotten``):
    #: desired, held or members per the mirror, with no row of any action in the plan
    forgotten: int = 0


@dataclass(frozen=True)
class ValueFit:
    """A destination's limit on the value it stores, and how a value is rendered.

    ``max_chars``: the most characters the property/field holds (None: no documented limit).
    ``render``: the stored text of a list of names (e.g. ``"|".join``); ``length_sql``: a DuckDB
    expression over the plan's JSON ``segments`` giving the same text's length in characters.
    ``unit``: what ``max_chars`` counts, for messages ("character"; Braze's arrays: "name", with
    ``render`` giving one character per name).

    Policy (documented in docs/syncs.md): a value over the limit keeps whole segment names, in the
    desired (sorted) order, each name that still fits in ``max_chars`` once rendered; the others are
    dropped, never cut mid-name. The profile is recorded in the state's ``truncated`` table with the
    names kept and dropped, and counted in the run's ``truncated`` metadata. A profile none of whose
    names fits is treated as not desired (counted in ``truncated`` too).
    """

    max_chars: int | None
    render: Callable[[Sequence[str]], str]
    length_sql: str
    unit: str = "character"

    def fit(self, names: Sequence[str]) -> tuple[list[str], list[str]]:
        """``(kept, dropped)`` for one sorted list of names."""
        if self.max_chars is None or len(self.render(names)) <= self.max_chars:
            return list(names), []
        kept: list[str] = []
        dropped: list[str] = []
        for name in names:
            if len(self.render([*kept, name])) <= self.max_chars:
                kept.append(name)
            else:
                dropped.append(name)
        return kept, dropped


def write_plan(store: StateStore, target: Target, desired_sql: str, params: list[object], plan_path: Path,
               track_membership: bool, removes: bool, fit: ValueFit | None = None, run_id: str | None = None,
               values: bool = True, withdraw: str | None = None, fields: FieldPlan | None = None,
               forgotten: str | None = None) -> PlanCounts:
    """Write ``action, email, segments, member, held`` rows to ``plan_path``; return the counts.

    * ``upsert``: email is desired with segments different from what its profile is confirmed to
      carry in ``target.holder`` (or, with ``track_membership``, not yet confirmed as a member of
      ``target.container``); ``segments`` is the desired JSON list (fitted to ``fit``).
    * ``clear``: email is no longer desired but its profile still carries a non-empty list.
    * ``remove`` (``removes`` only): email is no longer desired but still a member of the list;
      with ``withdraw`` (a SQL predicate on ``email``, e.g. "is suppressed") also without ``removes``
      for the members it holds for.

    ``member`` is whether the email is a confirmed member of the target's list (for "added" counts);
    ``held`` is the JSON list its profile is confirmed to carry (NULL: nothing known), for
    destinations that send changes as deltas (Braze's array ``add``/``remove``).
    ``values`` False (a destination holding members only, e.g. an ad audience): what profiles carry
    is not compared (nothing is kept in ``held``), so upserts are the desired non-members and there
    are no clears; leavers are ``remove`` rows.
    With ``run_id`` (a real run) the fitted profiles replace the holder's rows in ``truncated``.

    ``fields`` (mapped destination fields, :mod:`segment_pipeline.core.sync.fields`): every row also
    has ``fields`` (JSON object of the mapped-field changes, NULL when none) and ``field_clears``;
    a desired contact whose mapped values changed is an upsert even when its segment names did not;
    with ``fields.unset_separately`` the clears are ``unset:<field>`` rows of their own.

    ``forgotten``: a DuckDB relation with one column ``email_sha256`` (SHA-256 hex of normalised
    addresses: :meth:`segment_pipeline.core.privacy.ledger.Ledger.tombstone_sql`). An address in it
    gets no row of any action (no upsert, clear, remove nor ``unset:`` row), so neither a real run
    nor a dry run's payload names a person who asked to be forgotten, between ``forget`` and the
    erasure's confirmation too (Klaviyo's bulk import would re-create a deleted profile on a clear).
    They are counted in :attr:`PlanCounts.forgotten`; their mirror rows stay for the erasure
    (:mod:`segment_pipeline.core.privacy.erasure`), which deletes them at the vendor, then in the mirror.
    """
    private_mkdir(plan_path.parent)
    con = store.con
    con.execute("CREATE OR REPLACE TEMP TABLE forgotten_hashes AS "
                + (f"SELECT DISTINCT email_sha256 FROM ({forgotten}) WHERE email_sha256 IS NOT NULL" if forgotten
                   else "SELECT NULL::VARCHAR AS email_sha256 LIMIT 0"))
    n_forgotten = 0
    try:
        if con.execute("SELECT count(*) FROM forgotten_hashes").fetchall()[0][0]:
            con.execute(f"CREATE OR REPLACE TEMP TABLE desired_all AS {desired_sql}", params)
            n_forgotten = con.execute("""
                SELECT count(DISTINCT email) FROM (
                    SELECT email FROM desired_all UNION ALL SELECT email FROM held WHERE holder = ?
                    UNION ALL SELECT email FROM members WHERE container = ?)
                WHERE sha256(email) IN (SELECT email_sha256 FROM forgotten_hashes)""",
                                      [target.holder, target.container]).fetchall()[0][0]
            con.execute("CREATE OR REPLACE TEMP TABLE desired_rows AS SELECT * FROM desired_all "
                        "WHERE email IS NULL OR sha256(email) NOT IN (SELECT email_sha256 FROM forgotten_hashes)")
        else:
            con.execute(f"CREATE OR REPLACE TEMP TABLE desired_rows AS {desired_sql}", params)
    finally:
        con.execute("DROP TABLE IF EXISTS desired_all")
    try:
        truncated = dropped_all = 0
        dropped_names: list[tuple[str, int]] = []
        desired_from = "desired_rows"
        if fit is not None and fit.max_chars is not None:
            # the length expression runs once per distinct value (a few), not once per email
            long = con.execute(f"SELECT segments FROM (SELECT DISTINCT segments FROM desired_rows) "
                               f"WHERE ({fit.length_sql}) > ?", [fit.max_chars]).fetchall()
            if long:
                fitted = [(s, *fit.fit(json.loads(s))) for (s,) in long]
                con.register("fitted_values", pa.table({
                    "segments": [f[0] for f in fitted],
                    "kept": [json.dumps(f[1], ensure_ascii=False, separators=(",", ":")) for f in fitted],
                    "dropped": [json.dumps(f[2], ensure_ascii=False, separators=(",", ":")) for f in fitted]}))
                con.execute("""CREATE OR REPLACE TEMP TABLE desired_fitted AS
                               SELECT d.email, coalesce(f.kept, d.segments) AS segments, f.kept, f.dropped
                               FROM desired_rows d LEFT JOIN fitted_values f USING (segments)""")
                con.unregister("fitted_values")
                truncated, dropped_all = con.execute(
                    "SELECT count(kept), count(*) FILTER (WHERE kept = '[]') FROM desired_fitted").fetchall()[0]
                desired_from = "(SELECT email, segments FROM desired_fitted WHERE segments <> '[]')"
                dropped_names = con.execute("""
                    SELECT name, count(*) AS n FROM (
                        SELECT unnest(from_json(dropped, '["VARCHAR"]')) AS name FROM desired_fitted
                        WHERE dropped IS NOT NULL)
                    GROUP BY name ORDER BY n DESC, name LIMIT 5""").fetchall()
            if run_id is not None:
                with store.transaction() as tx:
                    tx.execute("DELETE FROM truncated WHERE holder = ?", [target.holder])
                    if long:
                        tx.execute("""INSERT INTO truncated SELECT ?, email, kept, dropped, ?, ?
                                      FROM desired_fitted WHERE kept IS NOT NULL""", [target.holder, run_id, _now()])
        field_counts = None
        extra_cols, extra_join, extra_cond, extra_none, unsets = "", "", "", "", []
        if fields is not None and fields.mappings:
            fsql, fparams = field_rows_sql(fields, desired_from)
            obj, nclear = fields_object_sql(fields, alias="r")
            if fields.unset_separately:  # the clears are unset rows, which count them
                nclear = "0"
            # only the contacts with something to send or count (about the day's changes, not the audience)
            idx = range(len(fields.mappings))
            keep = (f"coalesce({', '.join(f'r.s{i}' for i in idx)}) IS NOT NULL OR "
                    + " OR ".join(f"r.o{i}" for i in idx))
            con.execute(f"CREATE OR REPLACE TEMP TABLE field_rows AS "
                        f"SELECT r.*, {obj} AS fields, ({nclear}) AS field_clears FROM ({fsql}) AS r WHERE {keep}",
                        fparams)
            field_counts = FieldCounts.from_row(fields.mappings, con.execute(field_counts_sql(fields)).fetchall()[0])
            extra_cols = ", f.fields, coalesce(f.field_clears, 0) AS field_clears"
            extra_join = " LEFT JOIN field_rows f ON f.email = k.email"
            extra_cond = " OR f.fields IS NOT NULL"
            extra_none = ", NULL::VARCHAR AS fields, 0 AS field_clears"
            unsets = unset_rows_sql(fields) if fields.unset_separately else []
        track = "TRUE" if track_membership else "FALSE"
        # every action: a forgotten address is in no row (its mirror rows stay: erasure removes those)
        keep_known = ("(email IS NULL OR sha256(email) NOT IN (SELECT email_sha256 FROM forgotten_hashes))"
                      if n_forgotten else "TRUE")
        compare = "TRUE" if values else "FALSE"
        remove = "TRUE" if removes else (f"({withdraw})" if withdraw else "FALSE")
        sql = f"""
            WITH d AS (SELECT email, segments FROM {desired_from}),
            h AS (SELECT email, segments FROM held WHERE holder = ?),
            mb AS (SELECT DISTINCT email FROM members WHERE container = ?),  -- one row per email, whatever happens
            j AS (
                SELECT coalesce(d.email, h.email) AS email, d.segments AS want, h.segments AS have
                FROM d FULL OUTER JOIN h ON d.email = h.email),
            k AS (
                SELECT coalesce(j.email, mb.email) AS email, j.want, j.have, mb.email IS NOT NULL AS member
                FROM j FULL OUTER JOIN mb ON j.email = mb.email)
            SELECT '{UPSERT}' AS action, k.email, want AS segments, member, have AS held{extra_cols} FROM k{extra_join}
                WHERE want IS NOT NULL AND (({compare} AND have IS DISTINCT FROM want) OR ({track} AND NOT member){extra_cond})
            UNION ALL
            SELECT '{CLEAR}', email, '[]', member, have{extra_none} FROM k WHERE {compare} AND want IS NULL AND have <> '[]'
            UNION ALL
            SELECT '{REMOVE}', email, '[]', member, have{extra_none} FROM k WHERE want IS NULL AND {remove} AND member
            {"".join(f" UNION ALL {u}" for u in unsets)}
        """
        con.execute(
            f"COPY (SELECT * FROM ({sql}) WHERE {keep_known} ORDER BY action, email) TO {sql_string(str(plan_path))} (FORMAT parquet, COMPRESSION zstd)",
            [target.holder, target.container],
        ).fetchall()
        os.chmod(plan_path, FILE_MODE)  # in a 0700 folder from its creation; the file itself 0600 too
        desired = con.execute(f"SELECT count(*) FROM {desired_from}").fetchall()[0][0]
        # what the destination holds: profiles carrying a non-empty value (members-only destinations:
        # list/audience members); one count, no join, so the guard costs the plan next to nothing
        held_contacts = con.execute(
            "SELECT count(*) FROM held WHERE holder = ? AND segments <> '[]'" if values else
            "SELECT count(*) FROM members WHERE container = ?",
            [target.holder if values else target.container]).fetchall()[0][0]
    finally:
        con.execute("DROP TABLE IF EXISTS field_rows")
        con.execute("DROP TABLE IF EXISTS desired_fitted")
        con.execute("DROP TABLE IF EXISTS desired_rows")
        con.execute("DROP TABLE IF EXISTS forgotten_hashes")
    plan = f"read_parquet({sql_string(str(plan_path))})"
    counts = dict(con.execute(f"SELECT action, count(*) FROM {plan} GROUP BY action").fetchall())
    losing = f"action IN ('{CLEAR}', '{REMOVE}')" + (" OR field_clears > 0" if extra_cols else "")
    leaving = con.execute(f"SELECT count(DISTINCT email) FILTER (WHERE {losing}) FROM {plan}").fetchall()[0][0]
    return PlanCounts(desired, counts.get(UPSERT, 0), counts.get(CLEAR, 0), counts.get(REMOVE, 0),
                      truncated, dropped_all, tuple((str(a), int(b)) for a, b in dropped_names),
                      int(held_contacts), int(leaving or 0), field_counts,
                      sum(n for a, n in counts.items() if str(a).startswith(UNSET_PREFIX)), int(n_forgotten))
