"""Profiles as of the end of a day: identity resolution and behavioural aggregates.

Identity is the normalized email (``core/identity.py``: white space and invisible characters
stripped, lowercased; ingestion already normalized it), so ``Anna@Example.com `` and
``anna@example.com`` are one customer. For every attribute (``ATTRIBUTES``, ``created_at``
included) the latest *given* value wins, ordered by ``updated_at`` and then by delivery (landing
day, file name, line), so ties resolve the same way every time. A record gives an attribute when it has
a value for it, or when it clears it (``raw_profiles.cleared``: an explicit JSON null or ``""``; an
empty CSV cell or Parquet null when the source's ``csv_empty_cell`` is ``clear``): a clear is a
NULL value that wins when it is the latest. A record that leaves the attribute out (partial update)
keeps the older value. An attribute never given is NULL (``created_at`` is never guessed from
other columns: ``first_seen_at`` is the earliest sign of the customer). Events join the identity by
the same normalized email. An email seen only in events (a guest checkout) is an identity too,
with empty attributes.

A day's profiles are a pure function of all validated data landed up to and including that day,
so re-running any day (or a range, in any order) gives the same snapshot.
"""

from __future__ import annotations

import datetime as dt

import duckdb

from segment_pipeline.core.warehouse import Warehouse, as_date

#: Attributes resolved with "latest given value wins" (a clear gives NULL; see the module doc).
ATTRIBUTES = (
    "customer_id", "first_name", "last_name", "gender", "dob", "phone", "country", "city",
    "language", "time_zone", "loyalty_tier", "created_at",
)
#: "Latest" order of profile records, packed into one HUGEINT (a struct-valued arg_max key is
#: ~12x slower): updated_at (microseconds), then landing day, then file (``file_no``: its rank by
#: path among that day's files, 16 bits), then line (40 bits).
ORDER_KEY = (
    "(epoch_us(updated_at)::HUGEINT * (1::HUGEINT << 72)"
    " + ((date - DATE '1970-01-01')::HUGEINT << 56)"
    " + (least(file_no, 65535)::HUGEINT << 40)"
    " + source_line)"
)
SHORT_WINDOW_DAYS = 30
AFFINITY_WINDOW_DAYS = 90


def profiles_sql(warehouse: Warehouse, day: str | dt.date) -> tuple[str, dict[str, object]]:
    """The SELECT producing the ``profiles`` partition for ``day`` and its parameters."""
    day = as_date(day)
    end = dt.datetime.combine(day + dt.timedelta(days=1), dt.time())
    params = {
        "day": day,
        "end_ts": end,
        "since_short": end - dt.timedelta(days=SHORT_WINDOW_DAYS),
        "since_affinity": end - dt.timedelta(days=AFFINITY_WINDOW_DAYS),
    }
    # arg_max_null: the latest given record's value, NULL when that record cleared it
    latest = ",\n            ".join(
        f"arg_max_null({a}, ord) FILTER (WHERE {a} IS NOT NULL OR list_contains(cleared, '{a}')) AS {a}"
        for a in ATTRIBUTES
    )
    raw = warehouse.scan("raw_profiles", upto=day)
    sql = f"""
    WITH files AS (  -- each landing day's files in name order (a later file wins a same-time tie)
        SELECT date, source_file, row_number() OVER (PARTITION BY date ORDER BY source_file) - 1 AS file_no
        FROM (SELECT DISTINCT date, source_file FROM {raw})
    ),
    rp AS (SELECT r.*, {ORDER_KEY} AS ord FROM {raw} r JOIN files USING (date, source_file)),
    ev AS (
        SELECT email, event_type, occurred_at, brand, category, revenue, utm_source
        FROM {warehouse.scan('raw_events', upto=day)}
        WHERE occurred_at < $end_ts
    ),
    attrs AS (
        SELECT email,
            {latest},
            min(created_at) AS first_created_at,
            max(updated_at) AS updated_at,
            min(updated_at) AS first_profile_at
        FROM rp GROUP BY email
    ),
    activity AS (
        SELECT email,
            min(occurred_at) AS first_event_at,
            max(occurred_at) AS last_event_at,
            count(*) FILTER (WHERE event_type = 'order') AS order_count,
            coalesce(sum(revenue) FILTER (WHERE event_type = 'order'), 0) AS total_revenue,
            min(occurred_at) FILTER (WHERE event_type = 'order') AS first_order_at,
            max(occurred_at) FILTER (WHERE event_type = 'order') AS last_order_at,
            count(*) FILTER (WHERE occurred_at >= $since_short) AS event_count_30d,
            count(*) FILTER (WHERE event_type = 'order' AND occurred_at >= $since_short) AS order_count_30d,
            coalesce(sum(revenue) FILTER (WHERE event_type = 'order' AND occurred_at >= $since_short), 0) AS revenue_30d,
            count(*) FILTER (WHERE brand IS NOT NULL AND occurred_at >= $since_affinity) AS brand_interactions_90d,
            count(*) FILTER (WHERE category IS NOT NULL AND occurred_at >= $since_affinity) AS category_interactions_90d,
            arg_min(utm_source, occurred_at) FILTER (WHERE utm_source IS NOT NULL) AS first_utm_source
        FROM ev GROUP BY email
    ),
    top_brand AS (
        SELECT email, arg_max(brand, (n, brand)) AS top_brand_90d, max(n) AS top_brand_n
        FROM (SELECT email, brand, count(*) AS n FROM ev
              WHERE brand IS NOT NULL AND occurred_at >= $since_affinity GROUP BY ALL)
        GROUP BY email
    ),
    top_category AS (
        SELECT email, arg_max(category, (n, category)) AS top_category_90d, max(n) AS top_category_n
        FROM (SELECT email, category, count(*) AS n FROM ev
              WHERE category IS NOT NULL AND occurred_at >= $since_affinity GROUP BY ALL)
        GROUP BY email
    )
    SELECT
        md5(i.email)[1:16] AS identity_id,
        i.email,
        {', '.join(f'a.{x}' for x in ATTRIBUTES)},
        a.updated_at,
        least(a.first_profile_at, a.first_created_at, ac.first_event_at) AS first_seen_at,
        greatest(a.updated_at, ac.last_event_at) AS last_seen_at,
        coalesce(ac.order_count, 0) AS order_count,
        coalesce(ac.total_revenue, 0) AS total_revenue,
        ac.first_order_at,
        ac.last_order_at,
        ($day::DATE - ac.last_order_at::DATE)::INTEGER AS days_since_last_order,
        coalesce(ac.event_count_30d, 0) AS event_count_30d,
        coalesce(ac.order_count_30d, 0) AS order_count_30d,
        coalesce(ac.revenue_30d, 0) AS revenue_30d,
        coalesce(ac.brand_interactions_90d, 0) AS brand_interactions_90d,
        coalesce(ac.category_interactions_90d, 0) AS category_interactions_90d,
        tb.top_brand_90d,
        tb.top_brand_n / nullif(ac.brand_interactions_90d, 0) AS top_brand_share_90d,
        tc.top_category_90d,
        tc.top_category_n / nullif(ac.category_interactions_90d, 0) AS top_category_share_90d,
        ac.first_utm_source,
        (md5_number(i.email) % 10000)::INTEGER AS random_bucket
    FROM (SELECT email FROM attrs UNION SELECT email FROM activity) i
    LEFT JOIN attrs a USING (email)
    LEFT JOIN activity ac USING (email)
    LEFT JOIN top_brand tb USING (email)
    LEFT JOIN top_category tc USING (email)
    """
    return sql, params


def build_profiles(con: duckdb.DuckDBPyConnection, warehouse: Warehouse, day: str | dt.date) -> int:
    """Write the ``profiles`` partition for ``day``; return the number of identities."""
    con.execute("SET TimeZone = 'UTC'")
    sql, params = profiles_sql(warehouse, day)
    return warehouse.write_partition(con, "profiles", day, sql, params)
