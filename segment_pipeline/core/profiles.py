"""Profiles as of the end of a day: identity resolution, latest-wins attributes, computed traits.

Everything here follows the declared data model (:mod:`segment_pipeline.core.model`): the
identity links, the attributes and the traits are the model's; nothing is hard-coded.

Identity is the normalized email (``core/identity.py``: white space and invisible characters
stripped, lowercased; ingestion already normalized it and resolved records that carried only an
identity link), so ``Anna@Example.com `` and ``anna@example.com`` are one customer. One profile
row per identity (``profiles`` columns: :meth:`DataModel.schemas`).

**Latest given value wins.** For every identity link and every attribute the latest *given* value
wins, ordered by ``updated_at`` and then by delivery (landing day, file name, line), so ties
resolve the same way every time. A record gives a field when it has a value for it, or when it
clears it (``raw_profiles.cleared`` lists the field: an explicit JSON null or ``""``; an empty
CSV cell or Parquet null when the source's ``csv_empty_cell`` is ``clear``): a clear is a NULL
value that wins when it is the latest. A record that leaves the field out (partial update) keeps
the older value. A field never given is NULL; nothing is guessed from other columns.

**custom_attributes** (the sources' unmapped columns, a JSON object per record) merge per key:
each key takes the value of the latest record (same order) that has the key; a key whose latest
value is JSON ``null`` is dropped (a clear). The profile's ``custom_attributes`` is a JSON object
with keys in sorted order, values as landed (JSON types kept), NULL when no key is left.

**Seen times.** ``updated_at`` is the latest profile record's time; ``first_seen_at`` the earliest
sign of the customer: its first profile record, its first event, and, when the model declares a
``timestamp`` attribute ``created_at`` (the Segment spec's reserved ``createdAt`` trait: "Date the
user's account was first created", segment.com/docs/connections/spec/identify/#traits), its
earliest given value; ``last_seen_at`` the later of ``updated_at`` and the last event.

**Traits** are compiled by :mod:`segment_pipeline.core.traits` over the events that occurred
before the end of the day. An email seen only in events (a guest checkout) is an identity too,
with empty attributes. ``random_bucket`` is ``md5(email) mod 10000`` (stable per identity).

A day's profiles are a pure function of all validated data landed up to and including that day,
so re-running any day (or a range, in any order) gives the same snapshot.

**Incremental** (issue 12, ``docs/incremental.md``): :func:`build_profiles` derives the day's
profiles from the state of the day before merged with what the day brings
(:mod:`segment_pipeline.core.incremental`), so a day costs what it brings, not the length of the
history; it falls back to a full build when that state is missing or stale. :func:`profiles_sql`
is the full recompute from every raw partition, the reference the incremental state is tested
against (same values, every column).
"""

from __future__ import annotations

import datetime as dt

import duckdb

from segment_pipeline.core.model import DataModel
from segment_pipeline.core.traits import compile_traits, q
from segment_pipeline.core.warehouse import Warehouse, as_date

#: "Latest" order of profile records, packed into one HUGEINT (a struct-valued arg_max key is
#: ~12x slower): updated_at (microseconds), then landing day, then file (``file_no``: its rank by
#: path among that day's files, 16 bits), then line (40 bits).
ORDER_KEY = (
    "(epoch_us(updated_at)::HUGEINT * (1::HUGEINT << 72)"
    " + ((date - DATE '1970-01-01')::HUGEINT << 56)"
    " + (least(file_no, 65535)::HUGEINT << 40)"
    " + source_line)"
)
#: A ``timestamp`` attribute of this name counts toward ``first_seen_at`` (see the module doc).
CREATED_AT = "created_at"


def latest_fields(model: DataModel) -> tuple[str, ...]:
    """The profile fields resolved with "latest given value wins": identity links, then attributes."""
    return (*model.links, *model.attributes)


def profiles_sql(warehouse: Warehouse, day: str | dt.date) -> tuple[str, dict[str, object]]:
    """The SELECT producing the ``profiles`` partition for ``day`` and its parameters."""
    day = as_date(day)
    model = warehouse.model
    end = dt.datetime.combine(day + dt.timedelta(days=1), dt.time())
    traits = compile_traits(model, day, events_cte="ev", agg_cte="activity")
    params: dict[str, object] = {"end_ts": end, **traits.params}
    fields = latest_fields(model)
    latest = []
    for i, name in enumerate(fields):
        params[f"clear_{i}"] = name
        col = q(name)
        # arg_max_null: the latest given record's value, NULL when that record cleared it
        latest.append(f"arg_max_null({col}, ord) FILTER (WHERE {col} IS NOT NULL OR list_contains(cleared, $clear_{i})) AS {col}")
    created = model.attributes.get(CREATED_AT)
    has_created = created is not None and created.type == "timestamp"
    first_created = f"min({q(CREATED_AT)})" if has_created else "NULL::TIMESTAMP"
    raw = warehouse.scan("raw_profiles", upto=day)
    ev_cols = ", ".join(q(c) for c in traits.columns)
    sql = f"""
    WITH files AS (  -- each landing day's files in name order (a later file wins a same-time tie)
        SELECT date, source_file, row_number() OVER (PARTITION BY date ORDER BY source_file) - 1 AS file_no
        FROM (SELECT DISTINCT date, source_file FROM {raw})
    ),
    rp AS (SELECT r.*, {ORDER_KEY} AS ord FROM {raw} r JOIN files USING (date, source_file)),
    ev AS (
        SELECT {ev_cols}
        FROM {warehouse.scan('raw_events', upto=day)}
        WHERE occurred_at < $end_ts AND email IS NOT NULL
    ),
    attrs AS (
        SELECT email,
            {(',' + chr(10) + '            ').join([*latest, ''])}{first_created} AS first_created_at,
            max(updated_at) AS updated_at,
            min(updated_at) AS first_profile_at
        FROM rp GROUP BY email
    ),
    custom_kv AS (  -- latest given value per custom attribute key
        SELECT email, key, arg_max_null(value, ord) AS value
        FROM (SELECT email, ord, unnest(map_keys(m)) AS key, unnest(map_values(m)) AS value
              FROM (SELECT email, ord, custom_attributes::JSON::MAP(VARCHAR, JSON) AS m
                    FROM rp WHERE custom_attributes IS NOT NULL))
        GROUP BY email, key
    ),
    custom AS (
        SELECT email, '{{' || string_agg(to_json(key)::VARCHAR || ':' || value::VARCHAR, ',' ORDER BY key) || '}}'
            AS custom_attributes
        FROM custom_kv WHERE value IS NOT NULL AND value::VARCHAR <> 'null' GROUP BY email
    ),
    {(',' + chr(10) + '    ').join(traits.ctes)}
    SELECT
        md5(i.email)[1:16] AS identity_id,
        i.email,
        {''.join(f'a.{q(x)}, ' for x in fields)}
        c.custom_attributes,
        a.updated_at,
        least(a.first_profile_at, a.first_created_at, activity.first_event_at) AS first_seen_at,
        greatest(a.updated_at, activity.last_event_at) AS last_seen_at,
        {''.join(f'{s}, ' for s in traits.select)}
        (md5_number(i.email) % 10000)::INTEGER AS random_bucket
    FROM (SELECT email FROM attrs UNION SELECT email FROM activity) i
    LEFT JOIN attrs a USING (email)
    LEFT JOIN custom c USING (email)
    {' '.join(f'LEFT JOIN {j} USING (email)' for j in traits.joins)}
    """
    return sql, params


def build_profiles(con: duckdb.DuckDBPyConnection, warehouse: Warehouse, day: str | dt.date,
                   full_rebuild: bool = False, recompute: bool = False) -> int:
    """Write the ``profiles`` partition for ``day``; return the number of identities.

    By default from the incremental state (:func:`segment_pipeline.core.incremental.build_state`:
    state of ``day - 1`` + the day, or a full build of the state when that is missing or stale, or
    when ``full_rebuild``). ``recompute=True`` bypasses the state and recomputes the profiles from
    every raw partition with :func:`profiles_sql` (the reference; no state written).

    Raises ``ValueError`` naming the columns and days, with the fix, when a raw partition up to
    ``day`` was written before the data model declared a column the profiles read (an attribute,
    identity link or trait property added to the model without re-running ingestion).
    """
    con.execute("SET TimeZone = 'UTC'")
    model = warehouse.model
    needed = {
        "raw_profiles": list(latest_fields(model)),  # (cleared: older partitions read as "none")
        "raw_events": [c for c in compile_traits(model, as_date(day), events_cte="ev", agg_cte="activity").columns
                       if c in warehouse.schema("raw_events")],  # (not the partition's hive column, date)
    }
    # continuing the state of the day before reads only the day's raw partitions (that state was
    # built, and the earlier partitions checked, with the same model); a full build reads them all
    since = None
    if not (full_rebuild or recompute):
        from segment_pipeline.core.incremental import can_continue

        if can_continue(con, warehouse, day) == "":
            since = as_date(day)
    for table, columns in needed.items():
        lacking = warehouse.partitions_lacking(con, table, columns, upto=day, since=since)
        if lacking:
            first = min(lacking)
            names = sorted({c for cols in lacking.values() for c in cols})
            raise ValueError(
                f"profiles for {as_date(day)}: the {table} partition(s) of "
                f"{', '.join(d.isoformat() for d in lacking)} lack column(s) {names}: they were ingested before "
                f"the data model declared them. Re-run ingestion from {first} on, then profiles: "
                f"dg launch --job daily_segments --partition-range {first}...{as_date(day)}"
            )
    if recompute:
        sql, params = profiles_sql(warehouse, day)
    else:
        from segment_pipeline.core.incremental import build_state, profiles_from_state_sql

        build_state(con, warehouse, day, full=full_rebuild)
        sql, params = profiles_from_state_sql(warehouse, day)
    return warehouse.write_partition(con, "profiles", day, sql, params)
