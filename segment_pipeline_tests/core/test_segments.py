"""Segment definitions: validation messages, the rule language, and safe compilation."""

from __future__ import annotations

import datetime as dt
import textwrap
from pathlib import Path

import pytest
import yaml

from segment_pipeline import settings
from segment_pipeline.core.ingest import ingest_day
from segment_pipeline.core.memberships import compute_memberships
from segment_pipeline.core.profiles import build_profiles
from segment_pipeline.core.segments import SegmentDefinitionError, load_catalog, parse_catalog
from segment_pipeline.core.warehouse import Warehouse, connect
from segment_pipeline_tests.landing import event, members, profile, write_ndjson

DAY = "2026-11-10"


def catalog_of(*segments: dict):
    return parse_catalog({"segments": list(segments)}, source="test.yaml")


def seg(seg_id: str, rule: dict, **extra) -> dict:
    return {"id": seg_id, "name": extra.pop("name", seg_id.replace("_", " ").title()), "rule": rule, **extra}


# ---------------------------------------------------------------------------------------------
# The shipped definitions
# ---------------------------------------------------------------------------------------------


def test_shipped_catalog_loads_with_the_segments_from_the_field():
    catalog = load_catalog(Path(settings.PROJECT_ROOT) / "data" / "segments.yaml")
    names = {s.name for s in catalog.segments}
    for expected in [
        "Prospects", "First Time Buyer", "Loyal customers", "Nike fans", "Adidas fans", "Timberland fans",
        "UTM-tag Instagram", "geo-area Germany", "geo-area New York", "jacket category affinity",
    ]:
        assert expected in names
    assert len(catalog.segments) >= 10
    assert {s.type for s in catalog.segments} == {"dynamic", "static"}
    assert any(s.status == "inactive" for s in catalog.segments)
    assert any(s.active_from for s in catalog.segments)


# ---------------------------------------------------------------------------------------------
# Invalid definitions fail loading with a message naming the segment and the problem
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("segments", "fragments"),
    [
        ([seg("a", {"field": "shoe_size", "op": "=", "value": 1})], ["'a'", "unknown profile field 'shoe_size'"]),
        ([seg("a", {"field": "order_count", "op": ">=", "value": "three"})], ["'a'", "order_count", "not a number"]),
        ([seg("a", {"field": "country", "op": "=", "value": 3})], ["'a'", "country", "not text"]),
        ([seg("a", {"field": "dob", "op": "<", "value": "yesterday"})], ["'a'", "dob", "date"]),
        ([seg("a", {"field": "country", "op": "~", "value": "DE"})], ["'a'", "unknown operator '~'"]),
        ([seg("a", {"field": "country", "op": "in", "value": "DE"})], ["'a'", "non-empty list"]),
        ([seg("a", {"field": "order_count", "op": "contains", "value": "1"})], ["'a'", "contains"]),
        ([seg("a", {"field": "country", "op": "is null", "value": "x"})], ["'a'", "takes no value"]),
        ([seg("a", {"field": "country", "op": "="}), ], ["'a'", "needs a value"]),
        ([seg("dup", {"field": "country", "op": "=", "value": "DE"}),
          seg("dup", {"field": "country", "op": "=", "value": "US"})], ["'dup'", "duplicate id"]),
        ([seg("a", {"segment": "b"}), seg("b", {"segment": "c"}), seg("c", {"segment": "a"})], ["cycle", "a -> b -> c -> a"]),
        ([seg("a", {"segment": "a"})], ["'a'", "cycle"]),
        ([seg("a", {"segment": "ghost"})], ["'a'", "unknown segment 'ghost'"]),
        ([seg("a", {"event": {"type": "teleport"}})], ["'a'", "unknown event type 'teleport'"]),
        ([seg("a", {"event": {"where": [{"field": "colour", "op": "=", "value": "red"}]}})], ["'a'", "unknown event field 'colour'"]),
        ([seg("a", {"event": {"measure": "sum", "sum_field": "brand"}})], ["'a'", "sum_field"]),
        ([seg("a", {"affinity": {"dimension": "colour", "value": "red", "min_share": 0.5}})], ["'a'", "dimension"]),
        ([seg("a", {"affinity": {"dimension": "brand", "value": "Nike"}})], ["'a'", "min_share"]),
        ([seg("a", {"random_bucket": {"from": 10, "to": 5}})], ["'a'", "random_bucket"]),
        ([seg("a", {"all": []})], ["'a'", "non-empty list"]),
        ([seg("a", {"field": "country", "op": "=", "value": "DE", "any": []})], ["'a'", "exactly one"]),
        ([seg("Bad Id", {"field": "country", "op": "=", "value": "DE"})], ["'Bad Id'", "'id'"]),
        ([seg("a", {"field": "country", "op": "=", "value": "DE"}, type="sometimes")], ["'a'", "'type'"]),
        ([seg("a", {"field": "country", "op": "=", "value": "DE"}, status="paused")], ["'a'", "'status'"]),
        ([seg("a", {"field": "country", "op": "=", "value": "DE"}, sync={"mailchimp": True})], ["'a'", "mailchimp"]),
        ([seg("a", {"field": "country", "op": "=", "value": "DE"}, active_from="2026-12-01",
              active_until="2026-11-01")], ["'a'", "active_until"]),
        ([{"id": "a", "rule": {"field": "country", "op": "=", "value": "DE"}}], ["'a'", "'name' is required"]),
        ([{"id": "a", "name": "A"}], ["'a'", "'rule' is required"]),
        ([seg("a", {"field": "country", "op": "=", "value": "DE"}, colour="red")], ["'a'", "unknown key"]),
    ],
)
def test_invalid_definitions_name_the_segment_and_the_problem(segments, fragments):
    with pytest.raises(SegmentDefinitionError) as err:
        catalog_of(*segments)
    message = str(err.value)
    assert "test.yaml" in message
    for fragment in fragments:
        assert fragment in message


def test_invalid_yaml_file_names_the_file(tmp_path):
    path = tmp_path / "segments.yaml"
    path.write_text("segments: [ {id: a, name: 'x'\n")
    with pytest.raises(SegmentDefinitionError, match="segments.yaml"):
        load_catalog(path)
    with pytest.raises(SegmentDefinitionError, match="does not exist"):
        load_catalog(tmp_path / "missing.yaml")


# ---------------------------------------------------------------------------------------------
# The rule language, evaluated end to end on a tiny warehouse
# ---------------------------------------------------------------------------------------------

PEOPLE = [
    profile("anna@example.com", "2026-11-01T08:00:00Z", country="DE", city="Berlin", loyalty_tier="gold",
            first_name="Anna", dob="1990-05-01"),
    profile("bob@example.com", "2026-11-01T08:00:00Z", country="US", city="New York", first_name="Bob"),
    profile("cleo@example.com", "2026-11-01T08:00:00Z", country="US", city="Los Angeles", first_name="O'Brien"),
    profile("dan@example.com", "2026-11-01T08:00:00Z", country="FR", city="Paris"),
    profile("eve@example.com", "2026-11-01T08:00:00Z"),
]
EVENTS = [
    # anna: 3 orders (Nike, Nike, Adidas), instagram first touch
    event("a1", "anna@example.com", "order", "2026-11-02T10:00:00Z", brand="Nike", category="jackets",
          price=120, quantity=1, revenue=120, utm_source="instagram"),
    event("a2", "anna@example.com", "order", "2026-11-05T10:00:00Z", brand="Nike", category="sneakers",
          price=80, quantity=1, revenue=80),
    event("a3", "anna@example.com", "order", "2026-11-09T10:00:00Z", brand="Adidas", category="jackets",
          price=150, quantity=1, revenue=150),
    # bob: one order, many Timberland views
    event("b1", "bob@example.com", "order", "2026-11-03T10:00:00Z", brand="Timberland", category="boots",
          price=200, quantity=1, revenue=200, utm_source="google"),
    event("b2", "bob@example.com", "product_view", "2026-11-08T10:00:00Z", brand="Timberland", category="boots"),
    event("b3", "bob@example.com", "product_view", "2026-11-09T10:00:00Z", brand="Timberland", category="jackets"),
    # cleo: browses, adds to cart, never orders; instagram recently
    event("c1", "cleo@example.com", "product_view", "2026-11-09T10:00:00Z", brand="Levi's", category="jeans",
          utm_source="instagram"),
    event("c2", "cleo@example.com", "add_to_cart", "2026-11-10T10:00:00Z", brand="Levi's", category="jeans",
          price=90, quantity=1),
    # dan: an old visit only
    event("d1", "dan@example.com", "page_view", "2026-11-01T10:00:00Z", utm_source="facebook"),
]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A warehouse holding the five people above, processed for 2026-11-10."""
    root = tmp_path_factory.mktemp("world")
    landing = root / "landing"
    for d in ("2026-11-01", "2026-11-02", "2026-11-03", "2026-11-05", "2026-11-08", "2026-11-09", "2026-11-10"):
        write_ndjson(landing, "events", d, [e for e in EVENTS if e["occurred_at"].startswith(d)])
    write_ndjson(landing, "profiles", "2026-11-01", PEOPLE)
    return root, landing


def evaluate(world, *segments: dict, day: str = DAY) -> dict[str, set[str]]:
    root, landing = world
    catalog = catalog_of(*segments)
    wh = Warehouse(root / f"wh-{abs(hash(yaml.safe_dump(list(segments))))}")
    con = connect(preserve_order=True)
    for landed in sorted(p.name[5:] for p in (landing / "events").iterdir()):
        for kind in ("profiles", "events"):
            ingest_day(con, wh, landing, kind, landed)
    build_profiles(con, wh, day)  # profiles as of `day` read everything landed up to it
    compute_memberships(con, wh, catalog, day)
    return {s["id"]: {e.split("@")[0] for e in members(wh, day, s["id"])} for s in segments}


def test_comparison_operators(world):
    result = evaluate(
        world,
        seg("eq", {"field": "country", "op": "=", "value": "US"}),
        seg("ne", {"field": "country", "op": "!=", "value": "US"}),
        seg("lt", {"field": "order_count", "op": "<", "value": 1}),
        seg("le", {"field": "order_count", "op": "<=", "value": 1}),
        seg("gt", {"field": "total_revenue", "op": ">", "value": 200}),
        seg("ge", {"field": "total_revenue", "op": ">=", "value": 200}),
        seg("in_", {"field": "city", "op": "in", "value": ["Berlin", "Paris"]}),
        seg("not_in", {"field": "city", "op": "not in", "value": ["Berlin", "Paris"]}),
        seg("between", {"field": "total_revenue", "op": "between", "value": [100, 250]}),
        seg("contains", {"field": "city", "op": "contains", "value": "YORK"}),
        seg("is_null", {"field": "country", "op": "is null"}),
        seg("not_null", {"field": "country", "op": "is not null"}),
        seg("dob", {"field": "dob", "op": "<", "value": "2000-01-01"}),
        seg("recent_order", {"field": "last_order_at", "op": ">=", "value": {"days_ago": 3}}),
    )
    assert result["eq"] == {"bob", "cleo"}
    assert result["ne"] == {"anna", "dan"}  # eve has no country: a missing value never matches
    assert result["lt"] == {"cleo", "dan", "eve"}
    assert result["le"] == {"bob", "cleo", "dan", "eve"}
    assert result["gt"] == {"anna"}
    assert result["ge"] == {"anna", "bob"}
    assert result["in_"] == {"anna", "dan"}
    assert result["not_in"] == {"bob", "cleo"}
    assert result["between"] == {"bob"}
    assert result["contains"] == {"bob"}
    assert result["is_null"] == {"eve"}
    assert result["not_null"] == {"anna", "bob", "cleo", "dan"}
    assert result["dob"] == {"anna"}
    assert result["recent_order"] == {"anna"}  # anna ordered on 11-09; bob's order was 11-03


def test_nesting_with_two_valued_logic(world):
    result = evaluate(
        world,
        seg("all_", {"all": [{"field": "country", "op": "=", "value": "US"}, {"field": "order_count", "op": ">=", "value": 1}]}),
        seg("any_", {"any": [{"field": "country", "op": "=", "value": "DE"}, {"field": "city", "op": "=", "value": "Paris"}]}),
        seg("not_", {"not": {"field": "country", "op": "=", "value": "US"}}),
        seg("deep", {"not": {"any": [{"all": [{"field": "country", "op": "=", "value": "US"}]}, {"field": "country", "op": "is null"}]}}),
    )
    assert result["all_"] == {"bob"}
    assert result["any_"] == {"anna", "dan"}
    assert result["not_"] == {"anna", "dan", "eve"}  # eve (no country) is not in the US
    assert result["deep"] == {"anna", "dan"}


def test_event_conditions(world):
    result = evaluate(
        world,
        seg("two_orders", {"event": {"type": "order", "op": ">=", "value": 2}}),
        seg("no_orders", {"event": {"type": "order", "op": "=", "value": 0}}),
        seg("nike_orders_7d", {"event": {"type": "order", "within_days": 7,
                                         "where": [{"field": "brand", "op": "=", "value": "Nike"}]}}),
        seg("spent_300", {"event": {"type": "order", "measure": "sum", "sum_field": "revenue", "op": ">=", "value": 300}}),
        seg("viewed_or_carted_2d", {"event": {"type": ["product_view", "add_to_cart"], "within_days": 2}}),
        seg("any_event_3d", {"event": {"within_days": 3}}),
        seg("apostrophe", {"event": {"where": [{"field": "brand", "op": "=", "value": "Levi's"}], "op": ">=", "value": 2}}),
    )
    assert result["two_orders"] == {"anna"}
    assert result["no_orders"] == {"cleo", "dan", "eve"}
    # last 7 days of 11-10 are 11-04..11-10: anna's Nike order of 11-05 counts, 11-02 does not
    assert result["nike_orders_7d"] == {"anna"}
    assert result["spent_300"] == {"anna"}
    assert result["viewed_or_carted_2d"] == {"bob", "cleo"}
    assert result["any_event_3d"] == {"anna", "bob", "cleo"}
    assert result["apostrophe"] == {"cleo"}


def test_affinity_share_top_and_random_bucket(world):
    result = evaluate(
        world,
        seg("nike_fans", {"affinity": {"dimension": "brand", "value": "Nike", "min_share": 0.6}}),
        seg("nike_half", {"affinity": {"dimension": "brand", "value": "Nike", "min_share": 0.5, "min_interactions": 2}}),
        seg("timberland_top", {"affinity": {"dimension": "brand", "value": "Timberland", "top": True}}),
        seg("jackets_top", {"affinity": {"dimension": "category", "value": "jackets", "top": True}}),
        seg("orders_only", {"affinity": {"dimension": "brand", "value": "Adidas", "min_share": 0.3,
                                         "event_types": ["order"], "within_days": 2}}),
        seg("bucket_all", {"random_bucket": {"from": 0, "to": 9999}}),
        seg("bucket_none", {"not": {"random_bucket": {"from": 0, "to": 9999}}}),
    )
    assert result["nike_fans"] == {"anna"}  # 2 of 3 brand interactions
    assert result["nike_half"] == {"anna"}
    assert result["timberland_top"] == {"bob"}
    assert result["jackets_top"] == {"anna"}  # bob: boots 2 vs jackets 1
    assert result["orders_only"] == {"anna"}  # only the Adidas order falls in the 2-day window
    assert result["bucket_all"] == {"anna", "bob", "cleo", "dan", "eve"}
    assert result["bucket_none"] == set()


def test_segment_membership_references(world):
    result = evaluate(
        world,
        seg("us", {"field": "country", "op": "=", "value": "US"}),
        seg("buyers", {"field": "order_count", "op": ">=", "value": 1}),
        seg("us_buyers", {"all": [{"segment": "us"}, {"segment": "buyers"}]}),
        seg("not_us_buyers", {"not": {"segment": "us_buyers"}}),
    )
    assert result["us_buyers"] == {"bob"}
    assert result["not_us_buyers"] == {"anna", "cleo", "dan", "eve"}


@pytest.mark.parametrize(
    "hostile",
    [
        "O'Brien",
        "x'); DROP TABLE profiles; --",
        'Robert"; DELETE FROM memberships; --',
        "$p0",
        "{profiles}",
        "semi;colon",
        "ünïcødé ✓",
    ],
)
def test_hostile_values_and_names_are_data(world, hostile):
    result = evaluate(
        world,
        seg("hostile", {"any": [{"field": "first_name", "op": "=", "value": hostile},
                                {"field": "first_name", "op": "=", "value": "O'Brien"}]}, name=hostile),
        seg("hostile_in", {"field": "city", "op": "in", "value": [hostile, "Paris"]}, name=f"{hostile} 2"),
        seg("hostile_contains", {"field": "first_name", "op": "contains", "value": hostile}),
    )
    # the value is compared as data: only the real O'Brien and Paris rows match
    assert result["hostile"] == {"cleo"}
    assert result["hostile_in"] == {"dan"}
    assert result["hostile_contains"] == ({"cleo"} if hostile == "O'Brien" else set())


def test_compiled_sql_never_contains_values(tmp_path):
    from segment_pipeline.core.segments import compile_segments

    catalog = catalog_of(seg("a", {"all": [
        {"field": "city", "op": "=", "value": "x'); DROP TABLE t; --"},
        {"event": {"where": [{"field": "brand", "op": "in", "value": ["Levi's", "evil' OR 1=1 --"]}]}},
        {"affinity": {"dimension": "brand", "value": "Nike'--", "top": True}},
    ]}))
    compiled = compile_segments(catalog, ["a"], dt.date(2026, 11, 10))
    for value in ["DROP TABLE", "Levi's", "OR 1=1", "Nike'--"]:
        assert value not in compiled.sql
    assert "x'); DROP TABLE t; --" in compiled.params.values()


def test_yaml_file_round_trip(tmp_path):
    path = tmp_path / "segments.yaml"
    path.write_text(textwrap.dedent("""
        segments:
          - id: germany
            name: "geo-area Germany; it's \\"quoted\\""
            sync: {klaviyo: true}
            rule: {field: country, op: "=", value: DE}
    """))
    catalog = load_catalog(path)
    assert catalog["germany"].name == 'geo-area Germany; it\'s "quoted"'
    assert catalog.synced("klaviyo") == {"germany": catalog["germany"].name}
    assert catalog.synced("dotdigital") == {}
