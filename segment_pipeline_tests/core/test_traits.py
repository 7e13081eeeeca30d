"""Computed traits compiled from the model (core/traits.py): the apparel model's traits equal
main's hard-coded aggregates on generated data, and every function, filter and window works on a
second, non-apparel model."""

from __future__ import annotations

import datetime as dt
import json

import duckdb
import pytest

from segment_pipeline.core.model import ModelFileError, Trait, load_model, parse_model
from segment_pipeline.core.profiles import build_profiles
from segment_pipeline.core.traits import TraitError, compile_traits
from segment_pipeline.core.warehouse import Warehouse, as_date, connect
from segment_pipeline_tests.raw_tables import event_row, profile_row, write_raw

APPAREL = load_model("data/model.yaml")

# -- main's SQL, frozen as the reference ----------------------------------------------------------
ATTRIBUTES = (
    "customer_id", "first_name", "last_name", "gender", "dob", "phone", "country", "city",
    "language", "time_zone", "loyalty_tier", "created_at",
)
ORDER_KEY = (
    "(epoch_us(updated_at)::HUGEINT * (1::HUGEINT << 72)"
    " + ((date - DATE '1970-01-01')::HUGEINT << 56)"
    " + (least(file_no, 65535)::HUGEINT << 40)"
    " + source_line)"
)
SHORT_WINDOW_DAYS = 30
AFFINITY_WINDOW_DAYS = 90


def reference_sql(warehouse: Warehouse, day: str | dt.date) -> tuple[str, dict[str, object]]:
    """main's hard-coded profiles SELECT before issue 11 (events' ``event`` was ``event_type``)."""
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
        FROM (SELECT *, event AS event_type FROM {warehouse.scan('raw_events', upto=day)})
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


# -- generated data ------------------------------------------------------------------------------
def _fill(wh: Warehouse, table: str, exprs: dict[str, str]) -> str:
    """A SELECT list giving every column of ``table``: ``exprs`` where given, else NULL."""
    return ", ".join(f"{exprs.get(c, 'NULL')} AS {c}" for c in wh.schema(table))


LANDING_DAYS = ("2026-06-20", "2026-08-01", "2026-09-15", "2026-11-01", "2026-11-02")


def _generate(wh: Warehouse, con: duckdb.DuckDBPyConnection, n: int = 1500, m: int = 4000) -> None:
    """Profiles (updates, clears, same-time ties, two files a day) and events (four declared types and
    an undeclared one, guests seen only in events, brands/categories with ties, future times)."""
    for d_no, day in enumerate(LANDING_DAYS):
        h = f"(hash(i, {d_no}, 'p') % 1000003)::BIGINT"
        profiles = _fill(wh, "raw_profiles", {
            "email": "'u' || i || '@example.com'", "email_raw": "'u' || i || '@example.com'",
            "customer_id": f"CASE WHEN {h} % 4 = 0 THEN NULL ELSE 'C' || ({h} % 97) END",
            "first_name": f"CASE WHEN {h} % 5 = 0 THEN NULL ELSE 'F' || ({h} % 13) END",
            "city": f"CASE WHEN {h} % 3 = 0 THEN NULL ELSE 'city' || ({h} % 7) END",
            "phone": f"CASE WHEN {h} % 6 = 0 THEN '+49' || ({h} % 1000) END",
            "country": f"['DE', 'FR', NULL][1 + {h} % 3]",
            "created_at": f"CASE WHEN {h} % 9 = 0 THEN TIMESTAMP '2026-01-01' + INTERVAL ({h} % 200) DAY END",
            "updated_at": f"TIMESTAMP '{day}' + INTERVAL ({h} % 4) HOUR",  # many same-time ties
            "cleared": f"CASE WHEN {h} % 7 = 0 THEN ['city', 'phone', 'customer_id'] END",
            "source": "'profiles'",
            "source_file": "'f' || (i % 2) || '.ndjson'",
            "source_line": "i",
        })
        wh.write_partition(con, "raw_profiles", day,
                           f"SELECT {profiles} FROM range({n}) t(i) WHERE hash(i, {d_no}) % 3 <> 0")
        h = f"(hash(j, {d_no}, 'e') % 1000003)::BIGINT"
        kind = f"['page_view', 'product_view', 'add_to_cart', 'order', 'signup'][1 + {h} % 5]"
        events = _fill(wh, "raw_events", {
            "event_id": f"'{d_no}-' || j",
            "email": f"'u' || ({h} % {n + 60}) || '@example.com'",  # ids >= n: guests
            "event": "kind",
            # unique per row (so first-touch has no ties), up to 120 days back, some after the day
            "occurred_at": f"TIMESTAMP '{day}' + INTERVAL 2 DAY - INTERVAL ({h} % 120) DAY + to_seconds({d_no * m} + j)",
            "brand": f"CASE WHEN kind IN ('product_view', 'add_to_cart', 'order') THEN ['Nike', 'Adidas', 'Puma', NULL][1 + {h} // 7 % 4] END",
            "category": f"CASE WHEN kind <> 'page_view' THEN ['jackets', 'shoes', NULL][1 + {h} // 11 % 3] END",
            "revenue": f"CASE WHEN kind = 'order' THEN ({h} % 20000) / 100 END",
            "utm_source": f"['ig', 'google', NULL, NULL][1 + {h} // 13 % 4]",
            "source": "'events'", "source_file": "'e.ndjson'", "source_line": "j",
        })
        wh.write_partition(con, "raw_events", day,
                           f"SELECT {events} FROM (SELECT j, {kind} AS kind FROM range({m}) t(j))")


def test_apparel_traits_equal_mains_hard_coded_aggregates_for_every_identity_and_column(tmp_path):
    wh = Warehouse(tmp_path / "wh", APPAREL)
    con = connect()
    con.execute("SET TimeZone = 'UTC'")
    _generate(wh, con)
    renamed = {"top_brand_90d_share": "top_brand_share_90d", "top_category_90d_share": "top_category_share_90d"}
    for day in ("2026-09-15", "2026-11-02"):
        build_profiles(con, wh, day)
        sql, params = reference_sql(wh, day)
        con.execute(f"CREATE OR REPLACE TEMP TABLE ref AS {sql}", params)
        ref_cols = [r[0] for r in con.execute("DESCRIBE ref").fetchall()]
        new = wh.scan("profiles", days=[day])
        new_cols = {renamed.get(c, c): c for c in wh.schema("profiles")}
        assert set(ref_cols) <= set(new_cols)
        select_new = ", ".join(f"{new_cols[c]} AS {c}" for c in ref_cols)
        cast_ref = ", ".join(f"CAST({c} AS {wh.schema('profiles')[new_cols[c]]}) AS {c}" for c in ref_cols)
        diff = con.execute(f"""
            SELECT count(*) FROM ((SELECT {select_new} FROM {new} EXCEPT ALL SELECT {cast_ref} FROM ref)
                                  UNION ALL (SELECT {cast_ref} FROM ref EXCEPT ALL SELECT {select_new} FROM {new}))
        """).fetchall()[0][0]
        n_ref, n_new = con.execute(f"SELECT (SELECT count(*) FROM ref), (SELECT count(*) FROM {new})").fetchall()[0]
        assert (diff, n_new) == (0, n_ref)
        # the data exercises what it should: guests, buyers, top-value ties, clears, shares below 1
        guests, buyers, shares, ties = con.execute(f"""
            SELECT count(*) FILTER (WHERE updated_at IS NULL), count(*) FILTER (WHERE order_count > 0),
                   count(*) FILTER (WHERE top_brand_90d_share < 1),
                   count(*) FILTER (WHERE top_brand_90d_count * 2 = brand_interactions_90d)
            FROM {new}""").fetchall()[0]
        assert min(guests, buyers, shares, ties) > 0 and n_ref > 1000
        # the new _count column: the top value's interactions
        assert con.execute(f"""SELECT count(*) FROM {new} WHERE top_brand_90d_count
                               <> coalesce(round(top_brand_90d_share * brand_interactions_90d), 0)""").fetchall() == [(0,)]


# -- a second, non-apparel model -----------------------------------------------------------------
BEAUTY = parse_model({
    "identity": {"links": ["shopify_id", "user_id"]},
    "attributes": {
        "skin_type": "string",
        "loyalty_points": {"type": "integer", "minimum": 0},
        "tags": "list[string]",
        "accepts_marketing": "boolean",
    },
    "events": {
        "Order Completed": {"properties": {
            "revenue": "money", "items": "integer", "coupon": "string",
            "brands": {"type": "list[string]", "path": "products[*].brand"},
        }},
        "Email Opened": {"properties": {"campaign": "string"}},
    },
    "traits": {
        "orders": {"count": {"event": "Order Completed"}},
        "spend_30d": {"sum": {"event": "Order Completed", "property": "revenue", "within_days": 30}},
        "items_total": {"sum": {"event": "Order Completed", "property": "items"}},
        "min_order": {"min": {"event": "Order Completed", "property": "revenue"}},
        "max_order": {"max": {"event": "Order Completed", "property": "revenue"}},
        "avg_order": {"avg": {"event": "Order Completed", "property": "revenue"}},
        "first_coupon": {"first": {"property": "coupon"}},
        "last_coupon": {"last": {"property": "coupon"}},
        "first_brands": {"first": {"property": "brands"}},
        "first_order_time": {"first_time": {"event": "Order Completed"}},
        "last_open_time": {"last_time": {"event": "Email Opened"}},
        "days_since_open": {"days_since": {"event": "Email Opened"}},
        "distinct_brands": {"distinct_count": {"property": "brands"}},
        "distinct_campaigns": {"distinct_count": {"property": "campaign"}},
        "opened_7d": {"exists": {"event": "Email Opened", "within_days": 7}},
        "top_brand": {"top": {"property": "brands"}},
        "engaged_7d": {"count": {"event": ["Email Opened", "Order Completed"], "within_days": 7}},
        "any_events": {"count": {}},
        "big_orders": {"count": {"event": "Order Completed", "where": [{"property": "revenue", "op": ">=", "value": 100}]}},
        "glow_events": {"count": {"where": [{"property": "brands", "op": "contains", "value": "Glow"}]}},
        "glow_or_dew": {"count": {"where": [{"property": "brands", "op": "in", "value": ["Glow", "Dew"]}]}},
        "not_glow": {"count": {"event": "Order Completed", "where": [{"property": "brands", "op": "!=", "value": "Glow"}]}},
        "not_glow_any": {"count": {"where": [{"property": "brands", "op": "!=", "value": "Glow"}]}},
        "not_saved": {"count": {"where": [{"property": "coupon", "op": "not in", "value": ["SAVE10"]}]}},
        "coupon_orders": {"count": {"where": [{"property": "coupon", "op": "in", "value": ["SAVE10", "SAVE20"]}]}},
        "no_coupon": {"count": {"event": "Order Completed", "where": [{"property": "coupon", "op": "is null"}]}},
        "spring_opens": {"count": {"where": [{"property": "campaign", "op": "contains", "value": "SPRING"}]}},
    },
}, source="beauty.yaml")


def test_every_trait_function_filter_and_window_on_a_beauty_model(tmp_path):
    wh = Warehouse(tmp_path / "wh", BEAUTY)
    order = "Order Completed"
    write_raw(wh, "raw_profiles", "2026-11-01", [
        profile_row("ann@example.com", "2026-11-01T08:00:00", skin_type="oily", loyalty_points=650,
                    tags=["VIP", "wholesale"], accepts_marketing=True, shopify_id="S1"),
        profile_row("cat@example.com", "2026-11-01T08:00:00", skin_type="dry", user_id="U3"),
    ])
    write_raw(wh, "raw_profiles", "2026-11-05", [
        profile_row("ann@example.com", "2026-11-05T08:00:00", tags=["VIP"], accepts_marketing=None),
    ])
    write_raw(wh, "raw_events", "2026-11-10", [
        event_row("e1", "ann@example.com", order, "2026-09-01T10:00:00", revenue=120, items=2, coupon="SAVE10",
                  brands=["Glow", "Dew"]),
        event_row("e2", "ann@example.com", order, "2026-11-01T10:00:00", revenue=30.5, items=1, coupon="SAVE20",
                  brands=["Glow"]),
        event_row("e3", "ann@example.com", order, "2026-11-10T23:59:59", revenue=50, items=3, brands=["Dew", "Pure"]),
        event_row("e4", "ann@example.com", "Email Opened", "2026-11-04T00:00:00", campaign="Spring Sale"),
        event_row("e5", "ann@example.com", "Email Opened", "2026-10-01T00:00:00", campaign="autumn"),
        event_row("e6", "ann@example.com", "Subscription Started", "2026-10-02T00:00:00", properties={"plan": "monthly"}),
        event_row("e7", "ann@example.com", order, "2026-11-11T00:00:00", revenue=999, brands=["Zzz"]),  # after the day
        event_row("e8", "bob@example.com", "Email Opened", "2026-11-09T12:00:00", campaign="spring promo"),
    ])
    con = connect()
    assert build_profiles(con, wh, "2026-11-10") == 3
    rel = con.sql(f"SELECT * FROM {wh.scan('profiles', days=['2026-11-10'])}")
    rows = {r[1]: dict(zip(rel.columns, r, strict=True)) for r in rel.fetchall()}
    ann, bob, cat = rows["ann@example.com"], rows["bob@example.com"], rows["cat@example.com"]
    assert (ann["skin_type"], ann["loyalty_points"], ann["tags"], ann["accepts_marketing"], ann["shopify_id"]) == (
        "oily", 650, ["VIP"], None, "S1")
    assert (cat["user_id"], cat["shopify_id"]) == ("U3", None)
    assert {k: ann[k] for k in BEAUTY.traits if k != "avg_order"} == {
        "orders": 3, "spend_30d": pytest.approx(80.5), "items_total": 6, "min_order": pytest.approx(30.5),
        "max_order": 120, "first_coupon": "SAVE10", "last_coupon": "SAVE20", "first_brands": ["Glow", "Dew"],
        "first_order_time": dt.datetime(2026, 9, 1, 10), "last_open_time": dt.datetime(2026, 11, 4),
        "days_since_open": 6, "distinct_brands": 3, "distinct_campaigns": 2, "opened_7d": True,
        "top_brand": "Glow",  # Glow 2, Dew 2, Pure 1: the tie goes to the value sorting last
        "engaged_7d": 2, "any_events": 6, "big_orders": 1, "glow_events": 2, "glow_or_dew": 3, "not_glow": 1,
        "not_glow_any": 1, "not_saved": 1,  # events without the property (NULL) match no operator but is null
        "coupon_orders": 2, "no_coupon": 1, "spring_opens": 1,
    }
    assert ann["avg_order"] == pytest.approx((120 + 30.5 + 50) / 3)
    assert (ann["top_brand_count"], ann["top_brand_share"]) == (2, pytest.approx(0.4))
    assert (bob["opened_7d"], bob["days_since_open"], bob["engaged_7d"], bob["spring_opens"], bob["any_events"]) == (
        True, 1, 1, 1, 1)
    defaults = {"orders": 0, "spend_30d": 0, "items_total": 0, "min_order": None, "avg_order": None,
                "first_coupon": None, "first_brands": None, "first_order_time": None, "days_since_open": None,
                "distinct_brands": 0, "distinct_campaigns": 0, "opened_7d": False, "top_brand": None,
                "top_brand_count": 0, "top_brand_share": None, "any_events": 0, "glow_events": 0, "not_glow": 0}
    assert {k: cat[k] for k in defaults} == defaults
    assert {k: bob[k] for k in defaults if k not in ("distinct_campaigns", "days_since_open", "opened_7d", "any_events")} \
        == {k: v for k, v in defaults.items() if k not in ("distinct_campaigns", "days_since_open", "opened_7d", "any_events")}
    assert con.execute(f"DESCRIBE SELECT * FROM {wh.scan('profiles', days=['2026-11-10'])}").fetchall()  # readable
    assert json.loads(con.execute(
        f"SELECT properties FROM {wh.scan('raw_events', days=['2026-11-10'])} WHERE event_id = 'e6'").fetchall()[0][0]) \
        == {"plan": "monthly"}


def test_compiled_traits_bind_values_as_parameters_and_quote_identifiers():
    model = parse_model({
        "events": {"It's \"quoted\"": {"properties": {"note": "string"}}},
        "traits": {"odd": {"count": {"event": "It's \"quoted\"", "where": [{"property": "note", "op": "=", "value": "'; DROP"}]}}},
    })
    compiled = compile_traits(model, as_date("2026-11-01"))
    sql = "\n".join(compiled.ctes)
    assert "DROP" not in sql and "It's" not in sql
    assert {"It's \"quoted\"", "'; DROP"} <= set(compiled.params.values())
    assert '"odd"' in sql and '"note"' in sql


@pytest.mark.parametrize(("where", "message"), [
    ({"property": "revenue", "op": ">=", "value": "lots"}, "traits.bad.count.where[0]: 'lots' is not a number"),
    ({"property": "coupon", "op": "in", "value": "SAVE10"}, "traits.bad.count.where[0]: 'in' needs a non-empty list"),
    ({"property": "brands", "op": "<", "value": "A"}, "traits.bad.count.where[0]: a list property takes"),
    ({"property": "items", "op": "contains", "value": 1}, "traits.bad.count.where[0]: 'contains' applies to string"),
    ({"property": "coupon", "op": "is null", "value": "x"}, "traits.bad.count.where[0]: 'is null' takes no value"),
])
def test_a_filter_value_that_does_not_fit_names_the_file_the_trait_and_the_filter(where, message):
    events = {name: {"properties": {p: f.type for p, f in e.properties.items()}} for name, e in BEAUTY.events.items()}
    with pytest.raises(ModelFileError) as exc:
        parse_model({"events": events, "traits": {"bad": {"count": {"where": [where]}}}}, source="beauty.yaml")
    assert f"beauty.yaml: {message}" in str(exc.value)
    # a model built without the file's validation is refused when compiled, with the same words
    model = parse_model({"events": events})
    trait = Trait.model_validate({"count": {"where": [where]}})
    with pytest.raises(TraitError, match=message.replace("[", r"\[").replace("]", r"\]")):
        compile_traits(model.model_copy(update={"traits": {"bad": trait}}), as_date("2026-11-01"))
