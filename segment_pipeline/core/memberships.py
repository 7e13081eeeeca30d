"""Daily segment memberships, day-over-day changes and per-segment stats.

For a day D:

* a segment that is inactive on D (status ``inactive``, or outside ``[active_from,
  active_until)``) is *skipped*: no members, status ``skipped``;
* a ``dynamic`` segment is evaluated against the profiles and events as of D (``refreshed``);
* a ``static`` segment is frozen: it keeps the members it had on its refresh day P (the
  ``frozen_on`` date recorded in ``segment_stats``), read from the memberships of day P. Its
  first materialization is a refresh, and so is a day listed in ``refresh_static``.
  The refresh day is taken from the latest earlier day's stats, so running a range in one go
  or day by day (ascending) gives identical results;
* changes compare D with the latest earlier memberships partition (normally D-1): ``added``
  and ``removed`` rows per segment, the dataset the ESP syncs read.

``event:`` and ``affinity:`` rules read their counts, sums and value counts from the segments'
incremental state (``segment_state``, kept like the traits' state: ``docs/incremental.md``), so
a day costs what it brings, not the whole event history.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass, field

import duckdb

from segment_pipeline.core.incremental import build_state, can_continue, segment_plan
from segment_pipeline.core.segments import Catalog, compile_segments
from segment_pipeline.core.warehouse import Warehouse, as_date, sql_string


@dataclass
class SegmentDayStats:
    segment_id: str
    name: str
    type: str
    status: str  # refreshed | frozen | skipped
    frozen_on: dt.date | None
    member_count: int = 0
    added: int = 0
    removed: int = 0


@dataclass
class MembershipReport:
    day: dt.date
    compared_with: dt.date | None
    stats: list[SegmentDayStats] = field(default_factory=list)
    total_rows: int = 0

    def by_id(self) -> dict[str, SegmentDayStats]:
        return {s.segment_id: s for s in self.stats}


def _refresh_points(warehouse: Warehouse, con: duckdb.DuckDBPyConnection, day: dt.date) -> dict[str, dt.date]:
    """segment_id -> frozen_on, from the latest stats partition before ``day``."""
    earlier = [d for d in warehouse.partition_dates("segment_stats") if d < day]
    if not earlier:
        return {}
    rows = con.execute(
        f"SELECT segment_id, frozen_on FROM {warehouse.scan('segment_stats', days=[earlier[-1]])} "
        "WHERE frozen_on IS NOT NULL"
    ).fetchall()
    return dict(rows)


def compute_memberships(
    con: duckdb.DuckDBPyConnection,
    warehouse: Warehouse,
    catalog: Catalog,
    day: str | dt.date,
    refresh_static: Iterable[str] = (),
    use_state: bool = True,
) -> MembershipReport:
    """Write the day's ``memberships``, ``membership_changes`` and ``segment_stats`` (see the
    module doc). ``use_state=False`` evaluates the event rules over the raw events instead of the
    segments' incremental state (the reference the state is tested against)."""
    day = as_date(day)
    con.execute("SET TimeZone = 'UTC'")
    refresh_static = set(refresh_static)
    unknown = refresh_static - set(catalog.by_id())
    if unknown:
        raise ValueError(f"refresh_static names unknown segment(s) {sorted(unknown)}")

    previous_points = _refresh_points(warehouse, con, day)
    inactive: set[str] = set()
    frozen: dict[str, dt.date] = {}
    live: list[str] = []
    frozen_on: dict[str, dt.date | None] = {}
    for seg in catalog.evaluation_order():
        if not seg.is_active_on(day):
            inactive.add(seg.id)
            frozen_on[seg.id] = previous_points.get(seg.id) if seg.type == "static" else None
            continue
        if seg.type == "static":
            point = previous_points.get(seg.id)
            if (
                point is None
                or seg.id in refresh_static
                or point >= day
                or not warehouse.has_partition("memberships", point)
            ):
                live.append(seg.id)
                frozen_on[seg.id] = day
            else:
                frozen[seg.id] = point
                frozen_on[seg.id] = point
        else:
            live.append(seg.id)
            frozen_on[seg.id] = None

    compiled = compile_segments(catalog, live, day, frozen=set(frozen), inactive=inactive)
    frozen_rel = _frozen_relation(warehouse, frozen)
    profiles_rel, events_rel = warehouse.scan("profiles", days=[day]), warehouse.scan("raw_events", upto=day)
    seg_plan = segment_plan(catalog, day, warehouse.model) if use_state else None
    # continuing the segments' state reads only the day's events (the earlier ones were checked
    # when that state was built with the same rules and model); otherwise all of them are read
    continuing = seg_plan is not None and can_continue(con, warehouse, day, *seg_plan) == ""
    checked_events = warehouse.scan("raw_events", days=[day]) if continuing else events_rel
    _check_columns(con, catalog, live, day, profiles_rel, checked_events)
    # the event rules read the segments' incremental state (the day's events merged into the day
    # before's: core/incremental.py), not the whole raw history; a rule that cannot be kept that
    # way (a days_ago filter on an event property) reads the raw events
    if seg_plan is not None:
        build_state(con, warehouse, day, pl=seg_plan[0], fp=seg_plan[1])
        state_rel = f"read_parquet({sql_string(str(warehouse.partition_path('segment_state', day)))}, hive_partitioning = false)"
        query = compiled.render(profiles=profiles_rel, events=events_rel, frozen=frozen_rel, state=state_rel)
        params = compiled.state_params
    else:
        query = compiled.render(profiles=profiles_rel, events=events_rel, frozen=frozen_rel)
        params = compiled.params
    con.execute(f"CREATE OR REPLACE TEMP TABLE seg_eval AS {query}", params)
    parts = []
    for seg_id, col in compiled.columns.items():
        parts.append(f"SELECT {sql_string(seg_id)} AS segment_id, identity_id, email FROM seg_eval WHERE {col}")
    if frozen:
        parts.append(f"SELECT segment_id, identity_id, email FROM {frozen_rel}")
    members_sql = " UNION ALL ".join(parts) if parts else "SELECT NULL::VARCHAR AS segment_id, NULL::VARCHAR AS identity_id, NULL::VARCHAR AS email LIMIT 0"
    total = warehouse.write_partition(con, "memberships", day, members_sql)
    con.execute("DROP TABLE IF EXISTS seg_eval")

    earlier = [d for d in warehouse.partition_dates("memberships") if d < day]
    compared_with = earlier[-1] if earlier else None
    today = warehouse.scan("memberships", days=[day])
    before = warehouse.scan("memberships", days=[compared_with]) if compared_with else warehouse.empty_relation("memberships")
    changes_sql = f"""
        SELECT segment_id, identity_id, email, 'added' AS change FROM (
            SELECT segment_id, identity_id, email FROM {today}
            EXCEPT SELECT segment_id, identity_id, email FROM {before})
        UNION ALL
        SELECT segment_id, identity_id, email, 'removed' AS change FROM (
            SELECT segment_id, identity_id, email FROM {before}
            EXCEPT SELECT segment_id, identity_id, email FROM {today})
    """
    warehouse.write_partition(con, "membership_changes", day, changes_sql)

    counts = {
        seg: (n, a, r)
        for seg, n, a, r in con.execute(f"""
            WITH m AS (SELECT segment_id, count(*) AS n FROM {today} GROUP BY segment_id),
                 c AS (SELECT segment_id,
                              count(*) FILTER (WHERE change = 'added') AS a,
                              count(*) FILTER (WHERE change = 'removed') AS r
                       FROM {warehouse.scan('membership_changes', days=[day])} GROUP BY segment_id)
            SELECT segment_id, coalesce(m.n, 0), coalesce(c.a, 0), coalesce(c.r, 0)
            FROM m FULL OUTER JOIN c USING (segment_id)
        """).fetchall()
    }
    report = MembershipReport(day=day, compared_with=compared_with, total_rows=total)
    for seg in catalog.segments:
        status = "skipped" if seg.id in inactive else ("frozen" if seg.id in frozen else "refreshed")
        n, a, r = counts.get(seg.id, (0, 0, 0))
        report.stats.append(SegmentDayStats(seg.id, seg.name, seg.type, status, frozen_on.get(seg.id), n, a, r))
    # Removals of segments no longer in the catalog still count in the changes dataset.
    _write_stats(con, warehouse, day, report.stats)
    return report


def _check_columns(con, catalog: Catalog, live: list[str], day: dt.date, profiles_rel: str, events_rel: str) -> None:
    """Refuse, with the fix, rules reading a column the day's data was written without: the model
    declared an attribute, trait or property after those partitions were built (DuckDB's own
    error would only say the column is not found)."""
    fields, props = catalog.columns_read(live)
    for table, rel, needed, fix in (
        ("profiles", profiles_rel, fields, f"re-run profiles for {day} (and the days after it)"),
        ("raw_events", events_rel, props, "re-run ingestion of the events since the model declared it, then profiles"
                                          " and memberships for those days"),
    ):
        if not needed:
            continue
        have = {row[0] for row in con.execute(f"DESCRIBE SELECT * FROM {rel}").fetchall()}
        missing = [c for c in needed if c not in have]
        if missing:
            scope = f"the {table} partition of {day}" if table == "profiles" else f"no {table} partition up to {day}"
            raise ValueError(
                f"segment rules read {table} column(s) {missing}, which {scope} "
                f"{'lacks' if table == 'profiles' else 'has'}: it was written before the data model declared them; {fix}"
            )


def _frozen_relation(warehouse: Warehouse, frozen: dict[str, dt.date]) -> str:
    if not frozen:
        return warehouse.empty_relation("memberships")
    parts = [
        f"SELECT segment_id, identity_id, email FROM {warehouse.scan('memberships', days=[point])} "
        f"WHERE segment_id = {sql_string(seg_id)}"
        for seg_id, point in sorted(frozen.items())
    ]
    return "(" + " UNION ALL ".join(parts) + ")"


def _write_stats(con: duckdb.DuckDBPyConnection, warehouse: Warehouse, day: dt.date, stats: list[SegmentDayStats]) -> None:
    con.execute(
        "CREATE OR REPLACE TEMP TABLE seg_stats (segment_id VARCHAR, segment_name VARCHAR, segment_type VARCHAR, "
        "status VARCHAR, frozen_on DATE, member_count BIGINT, added BIGINT, removed BIGINT)"
    )
    if stats:
        con.executemany(
            "INSERT INTO seg_stats VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            [(s.segment_id, s.name, s.type, s.status, s.frozen_on, s.member_count, s.added, s.removed) for s in stats],
        )
    warehouse.write_partition(con, "segment_stats", day, "SELECT * FROM seg_stats")
    con.execute("DROP TABLE seg_stats")
