"""Segment definitions: validation messages, the rule language, and safe compilation."""

from __future__ import annotations

import datetime as dt
import hashlib
import textwrap
from pathlib import Path

import pytest
import yaml

from segment_pipeline import settings
from segment_pipeline.core import safe_yaml
from segment_pipeline.core.memberships import compute_memberships
from segment_pipeline.core.segments import (
    MAX_EXPANDED_DEPTH,
    MAX_EXPANDED_NODES,
    MAX_RULE_DEPTH,
    MAX_RULE_NODES,
    SegmentDefinitionError,
    load_catalog,
    parse_catalog,
)
from segment_pipeline.core.warehouse import Warehouse, connect
from segment_pipeline_tests.landing import members
from segment_pipeline_tests.partitions import write_rows

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
        ([seg("a", {"event": {"name": "teleport"}})], ["'a'", "rule.event.name: unknown event 'teleport'", "'order'"]),
        ([seg("a", {"event": {"type": "teleport"}})], ["'a'", "rule.event.name: unknown event 'teleport'"]),  # older spelling
        ([seg("a", {"event": {"where": [{"property": "colour", "op": "=", "value": "red"}]}})],
         ["'a'", "rule.event.where[0]: unknown property 'colour'"]),
        ([seg("a", {"event": {"where": [{"field": "colour", "op": "=", "value": "red"}]}})], ["'a'", "unknown property 'colour'"]),
        ([seg("a", {"event": {"name": "page_view", "where": [{"property": "brand", "op": "=", "value": "Nike"}]}})],
         ["'a'", "rule.event.where[0]: property 'brand' is not declared on event(s) ['page_view']"]),
        ([seg("a", {"event": {"where": [{"property": "revenue", "op": ">", "value": "lots"}]}})],
         ["'a'", "rule.event.where[0]", "property 'revenue' is money", "not a number"]),
        ([seg("a", {"event": {"measure": "sum", "sum_field": "brand"}})], ["'a'", "sum_field", "'brand'"]),
        ([seg("a", {"event": {"measure": "sum", "property": "brand"}})], ["'a'", "measure 'sum' needs property", "'brand'"]),
        ([seg("a", {"event": {"name": "page_view", "measure": "sum", "property": "revenue"}})], ["'a'", "numeric property"]),
        ([seg("a", {"event": {"type": "order", "name": "order"}})], ["'a'", "give 'name' or its older spelling 'type'"]),
        ([seg("a", {"event": {"name": "order", "colour": "red"}})], ["'a'", "rule.event: unexpected key(s) ['colour']"]),
        ([seg("a", {"affinity": {"property": "colour", "value": "red", "min_share": 0.5}})], ["'a'", "property 'colour'"]),
        ([seg("a", {"affinity": {"dimension": "colour", "value": "red", "min_share": 0.5}})], ["'a'", "property 'colour'"]),
        ([seg("a", {"affinity": {"property": "revenue", "value": "1", "min_share": 0.5}})],
         ["'a'", "property 'revenue' is not a declared string or list[string] property"]),
        ([seg("a", {"affinity": {"property": "brand", "event": "page_view", "value": "Nike", "top": True}})],
         ["'a'", "property 'brand' is not a declared string or list[string] property of ['page_view']"]),
        ([seg("a", {"affinity": {"property": "brand", "event": ["teleport"], "value": "Nike", "top": True}})],
         ["'a'", "rule.affinity.event: unknown event 'teleport'"]),
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
        # values a hostile or careless file can carry: refused at load, never at compile time
        ([seg("a", {"field": "order_count", "op": ">", "value": float("nan")})], ["'a'", "nan is not a finite number"]),
        ([seg("a", {"field": "order_count", "op": "<", "value": float("inf")})], ["'a'", "inf is not a finite number"]),
        ([seg("a", {"field": "order_count", "op": ">", "value": 10**400})], ["'a'", "is not a finite number"]),
        ([seg("a", {"field": "dob", "op": "<", "value": {"days_ago": 10**9}})], ["'a'", "days_ago: N} (N from -36500"]),
        ([seg("a", {"field": "created_at", "op": ">", "value": "9999-12-31T23:00:00-05:00"})], ["'a'", "created_at"]),
        ([seg("a", {"field": ["country"], "op": "=", "value": "DE"})], ["'a'", "unknown profile field ['country']"]),
        ([seg("a", {"field": "country", "op": {"=": 1}, "value": "DE"})], ["'a'", "unknown operator {'=': 1}"]),
        ([seg("a", {"event": {"op": [">="]}})], ["'a'", "op must be one of"]),
        ([seg("a", {"event": {"measure": "sum", "sum_field": ["revenue"]}})], ["'a'", "sum_field"]),
        ([seg("a", {"event": {"value": float("nan")}})], ["'a'", "finite number"]),
        ([seg("a", {"event": {"where": "brand = Nike"}})], ["'a'", "rule.event.where: expected a list"]),
        ([seg("a", {"event": {"type": []}})], ["'a'", "non-empty list"]),
        ([seg("a", {"affinity": {"dimension": "brand", "value": "Nike", "min_share": float("nan")}})], ["'a'", "min_share"]),
        ([seg("a", {"affinity": {"dimension": "brand", "value": "Nike", "top": True, "min_interactions": 10**30}})],
         ["'a'", "min_interactions"]),
        ([seg("a", {"affinity": {"dimension": "brand", "value": "Nike", "top": True, "event_types": {"order": 1}}})],
         ["'a'", "event must be an event name or a non-empty list of them"]),
        ([seg("a", {"field": "loyalty_tier", "op": "is true"})], ["'a'", "field 'loyalty_tier' is string", "'is true'"]),
        ([seg("a", {"field": "order_count", "op": "contains any", "value": [1]})], ["'a'", "order_count", "contains any"]),
        ([seg("a", {1: "x", "field": "country", "op": "=", "value": "DE"})], ["'a'", "unexpected key(s) [1]"]),
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

def profile(email: str, **columns) -> dict:
    """A ``profiles`` row of the apparel model (traits as the profile build computes them)."""
    return {"email": email, "order_count": 0, "total_revenue": 0, **columns}


def event(event_id: str, email: str, name: str, occurred_at: str, **properties) -> dict:
    """A ``raw_events`` row of the apparel model: the event's name and its typed properties."""
    return {"event_id": event_id, "email": email, "event": name, "occurred_at": occurred_at, **properties}


PEOPLE = [
    profile("anna@example.com", country="DE", city="Berlin", loyalty_tier="gold", first_name="Anna", dob="1990-05-01",
            order_count=3, total_revenue=350, last_order_at="2026-11-09T10:00:00"),
    profile("bob@example.com", country="US", city="New York", first_name="Bob",
            order_count=1, total_revenue=200, last_order_at="2026-11-03T10:00:00"),
    profile("cleo@example.com", country="US", city="Los Angeles", first_name="O'Brien"),
    profile("dan@example.com", country="FR", city="Paris"),
    profile("eve@example.com"),
]
EVENTS = [
    # anna: 3 orders (Nike, Nike, Adidas), instagram first touch
    event("a1", "anna@example.com", "order", "2026-11-02T10:00:00", brand="Nike", category="jackets",
          price=120, quantity=1, revenue=120, utm_source="instagram"),
    event("a2", "anna@example.com", "order", "2026-11-05T10:00:00", brand="Nike", category="sneakers",
          price=80, quantity=1, revenue=80),
    event("a3", "anna@example.com", "order", "2026-11-09T10:00:00", brand="Adidas", category="jackets",
          price=150, quantity=1, revenue=150),
    # bob: one order, many Timberland views
    event("b1", "bob@example.com", "order", "2026-11-03T10:00:00", brand="Timberland", category="boots",
          price=200, quantity=1, revenue=200, utm_source="google"),
    event("b2", "bob@example.com", "product_view", "2026-11-08T10:00:00", brand="Timberland", category="boots"),
    event("b3", "bob@example.com", "product_view", "2026-11-09T10:00:00", brand="Timberland", category="jackets"),
    # cleo: browses, adds to cart, never orders; instagram recently
    event("c1", "cleo@example.com", "product_view", "2026-11-09T10:00:00", brand="Levi's", category="jeans",
          utm_source="instagram"),
    event("c2", "cleo@example.com", "add_to_cart", "2026-11-10T10:00:00", brand="Levi's", category="jeans",
          price=90, quantity=1),
    # dan: an old visit only
    event("d1", "dan@example.com", "page_view", "2026-11-01T10:00:00", utm_source="facebook"),
    # an event after the as-of day never counts
    event("a4", "anna@example.com", "order", "2026-11-11T10:00:00", brand="Nike", revenue=999),
]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """The five people above and their events, as profiles and raw_events partitions for 2026-11-10
    (profiles carry the traits the apparel model declares, as of that day)."""
    return tmp_path_factory.mktemp("world"), PEOPLE, EVENTS


def evaluate(world, *segments: dict, day: str = DAY, profiles: dict | None = None) -> dict[str, set[str]]:
    """Members (name before the @) of each segment on ``day``; ``profiles``, when given, is filled
    with that day's profile rows by name."""
    root, people, events = world
    catalog = catalog_of(*segments)
    wh = Warehouse(root / f"wh-{abs(hash(yaml.safe_dump(list(segments))))}")
    write_rows(wh, "profiles", day, people)
    for landed in sorted({e["occurred_at"][:10] for e in events}):
        write_rows(wh, "raw_events", landed, [e for e in events if e["occurred_at"].startswith(landed)])
    con = connect(preserve_order=True)
    compute_memberships(con, wh, catalog, day)
    if profiles is not None:
        cur = con.execute(f"SELECT * FROM {wh.scan('profiles', days=[day])}")
        names = [d[0] for d in cur.description]
        for row in cur.fetchall():
            record = dict(zip(names, row, strict=True))
            profiles[record["email"].split("@")[0]] = record
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
        seg("two_orders", {"event": {"name": "order", "op": ">=", "value": 2}}),
        seg("no_orders", {"event": {"name": "order", "op": "=", "value": 0}}),
        seg("nike_orders_7d", {"event": {"name": "order", "within_days": 7,
                                         "where": [{"property": "brand", "op": "=", "value": "Nike"}]}}),
        seg("spent_300", {"event": {"name": "order", "measure": "sum", "property": "revenue", "op": ">=", "value": 300}}),
        seg("viewed_or_carted_2d", {"event": {"name": ["product_view", "add_to_cart"], "within_days": 2}}),
        seg("any_event_3d", {"event": {"within_days": 3}}),
        seg("apostrophe", {"event": {"where": [{"property": "brand", "op": "=", "value": "Levi's"}], "op": ">=", "value": 2}}),
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
        seg("nike_fans", {"affinity": {"property": "brand", "value": "Nike", "min_share": 0.6}}),
        seg("nike_half", {"affinity": {"property": "brand", "value": "Nike", "min_share": 0.5, "min_interactions": 2}}),
        seg("timberland_top", {"affinity": {"property": "brand", "value": "Timberland", "top": True}}),
        seg("jackets_top", {"affinity": {"property": "category", "value": "jackets", "top": True}}),
        seg("orders_only", {"affinity": {"property": "brand", "value": "Adidas", "min_share": 0.3,
                                         "event": ["order"], "within_days": 2}}),
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
        {"event": {"where": [{"property": "brand", "op": "in", "value": ["Levi's", "evil' OR 1=1 --"]}]}},
        {"affinity": {"property": "brand", "value": "Nike'--", "top": True}},
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


# ---------------------------------------------------------------------------------------------
# Hostile segments files: a short error naming the file (and segment), in bounded time and memory
# ---------------------------------------------------------------------------------------------

LEAF = "{field: country, op: '=', value: DE}"


def write_segments(tmp_path, body: str | bytes, name: str = "segments.yaml") -> Path:
    path = tmp_path / name
    if isinstance(body, bytes):
        path.write_bytes(body)
    else:
        path.write_text(body, encoding="utf-8")
    return path


def load_error(path: Path) -> str:
    with pytest.raises(SegmentDefinitionError) as err:
        load_catalog(path)
    message = str(err.value)
    assert str(path) in message
    assert len(message) <= safe_yaml.MAX_MESSAGE_CHARS
    return message


def nested(levels: int, leaf: dict) -> dict:
    node = leaf
    for _ in range(levels):
        node = {"all": [node]}
    return node


@pytest.mark.parametrize(
    ("levels", "fragments"),
    [
        # 500 levels: the YAML composer would recurse past Python's limit; refused while parsing
        (500, ["segment 'deep'", "line 7, column ", f"nested deeper than {safe_yaml.MAX_DEPTH} levels"]),
        # 40 levels parse fine and are refused by the rule validation
        (40, ["segment 'deep'", f"rule nesting deeper than {MAX_RULE_DEPTH} levels"]),
    ],
)
def test_deeply_nested_rule_names_file_and_segment(tmp_path, levels, fragments):
    rule = "{all: [" * levels + LEAF + "]}" * levels
    path = write_segments(tmp_path, f"segments:\n  - id: ok\n    name: OK\n    rule: {LEAF}\n"
                                    f"  - id: deep\n    name: Deep\n    rule: {rule}\n")
    message = load_error(path)
    for fragment in fragments:
        assert fragment in message


def test_deep_nesting_in_flow_style_without_segments_names_the_file(tmp_path):
    path = write_segments(tmp_path, "segments: " + "[" * 100_000 + "]" * 100_000 + "\n")
    message = load_error(path)
    assert "segment #1" in message and "nested deeper than" in message


def test_deep_rule_built_in_memory_is_refused_not_a_recursion_error():
    with pytest.raises(SegmentDefinitionError, match=f"segment 'deep'.*deeper than {MAX_RULE_DEPTH}"):
        catalog_of(seg("deep", nested(5000, {"field": "country", "op": "=", "value": "DE"})))


def test_non_utf8_file_names_file_line_and_byte(tmp_path):
    body = f"segments:\n  - id: koeln\n    name: K\xf6ln\n    rule: {LEAF}\n".encode("latin-1")
    message = load_error(write_segments(tmp_path, body))
    assert "not UTF-8" in message and "byte 0xf6 at line 3, column 12" in message


@pytest.mark.parametrize("encoding", ["utf-8-sig", "utf-16"])
def test_byte_order_marked_files_load(tmp_path, encoding):
    body = "segments:\n  - id: koeln\n    name: Köln\n    rule: {field: city, op: '=', value: Köln}\n"
    catalog = load_catalog(write_segments(tmp_path, body.encode(encoding)))
    assert catalog["koeln"].name == "Köln" and catalog["koeln"].rule["value"] == "Köln"


BILLION_LAUGHS = "lol0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
    f"lol{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]\n" for i in range(1, 10)
)


def test_billion_laughs_is_refused_when_expansion_passes_the_limit(tmp_path):
    path = write_segments(tmp_path, BILLION_LAUGHS + "segments:\n  - id: lol\n    name: L\n    rule: {all: *a9}\n")
    message = load_error(path)
    # refused structurally while composing: lol2 (10 aliases of 11 nodes) is fine, lol3's aliases
    # of 111 nodes each pass the 10,000-node budget at its ninth alias (line 4)
    assert f"aliases expand to more than {safe_yaml.MAX_ALIAS_NODES} nodes" in message
    assert "line 4, column " in message and "alias *a2" in message


def test_alias_limits_name_the_segment(tmp_path):
    recursive = write_segments(tmp_path, f"segments:\n  - id: ok\n    name: OK\n    rule: {LEAF}\n"
                                         "  - id: loop\n    name: Loop\n    rule: &r {not: *r}\n", "rec.yaml")
    assert "segment 'loop': line 7, column " in load_error(recursive)
    assert "recursive alias" in load_error(recursive)
    many = ", ".join(["*v"] * (safe_yaml.MAX_ALIASES + 1))
    too_many = write_segments(tmp_path, f"segments:\n  - id: many\n    name: M\n    rule: {{field: city, op: in,"
                                        f" value: [&v Paris, {many}]}}\n", "many.yaml")
    message = load_error(too_many)
    assert "segment 'many': line 4, column " in message and f"more than {safe_yaml.MAX_ALIASES} aliases" in message


def test_aliases_and_merge_keys_within_the_limits_work(tmp_path):
    path = write_segments(tmp_path, textwrap.dedent("""
        base: &base {type: dynamic, sync: {klaviyo: true}}
        germany: &germany {field: country, op: "=", value: DE}
        segments:
          - <<: *base
            id: germans
            name: Germans
            rule: *germany
          - <<: *base
            id: german_buyers
            name: German buyers
            rule: {all: [*germany, {field: order_count, op: ">=", value: 1}]}
    """))
    catalog = load_catalog(path)
    assert catalog["germans"].rule == {"field": "country", "op": "=", "value": "DE"}
    assert catalog["german_buyers"].rule["all"][0] == catalog["germans"].rule
    assert catalog.synced("klaviyo") == {"germans": "Germans", "german_buyers": "German buyers"}


def test_duplicate_key_is_refused_not_silently_resolved(tmp_path):
    path = write_segments(tmp_path, "segments:\n  - id: de\n    name: DE\n"
                                    "    rule: {field: country, op: '=', value: DE}\n"
                                    "    rule: {field: country, op: '=', value: US}\n")
    message = load_error(path)
    assert "duplicate key rule (first at line 4)" in message and "line 5, column 5" in message


def test_huge_file_is_refused_before_parsing(tmp_path):
    path = write_segments(tmp_path, "segments: []\n" + "#" * safe_yaml.MAX_FILE_BYTES)
    assert f"larger than {safe_yaml.MAX_FILE_BYTES} bytes" in load_error(path)


def test_character_yaml_forbids_names_line_and_column(tmp_path):
    path = write_segments(tmp_path, f"segments:\n  - id: a\x00\n    name: A\n    rule: {LEAF}\n")
    assert "character U+0000 at line 2, column 10" in load_error(path)


@pytest.mark.parametrize(
    "body",
    [
        "segments:\n  - id: " + "a" * 200_000 + f"\n    name: A\n    rule: {LEAF}\n",
        "segments:\n  - id: a\n    name: A\n    rule: {field: order_count, op: '=', value: '" + "z" * 200_000 + "'}\n",
        "segments:\n  - id: a\n    name: A\n    rule: {" + ", ".join(f"k{i}: {i}" for i in range(3_000)) + "}\n",
        "segments:\n  - id: a\n    name: A\n    rule: {segment: " + "b" * 200_000 + "}\n",
        "segments:\n  - id: a\n    name: A\n    rule: *" + "b" * 200_000 + "\n",
        "segments:\n  - id: a\n    name: A\n    rule: {field: city, op: '=', value: 'x}\n" + "y" * 200_000 + "\n",
    ],
    ids=["long-id", "long-value", "many-keys", "long-reference", "long-undefined-alias", "syntax-error"],
)
def test_long_input_gives_a_short_message(tmp_path, body):
    message = load_error(write_segments(tmp_path, body))
    assert "segment '" in message or "not valid YAML" in message


def test_shared_subrules_built_in_memory_are_bounded():
    node = {"field": "country", "op": "=", "value": "DE"}
    for _ in range(25):  # a DAG of 26 levels standing for 2**25 conditions
        node = {"any": [node, node]}
    with pytest.raises(SegmentDefinitionError, match=f"segment 'dag'.*more than {MAX_RULE_NODES} conditions"):
        catalog_of(seg("dag", node))


def test_references_that_multiply_a_rule_are_refused():
    leaf = {"field": "country", "op": "=", "value": "DE"}
    doubling = [seg("d0", leaf)] + [
        seg(f"d{i}", {"all": [{"segment": f"d{i - 1}"}, {"segment": f"d{i - 1}"}]}) for i in range(1, 40)
    ]
    with pytest.raises(SegmentDefinitionError, match=f"segment 'd11'.*at most {MAX_EXPANDED_NODES}"):
        catalog_of(*doubling)
    chain = [seg("c0", leaf)] + [seg(f"c{i}", {"segment": f"c{i - 1}"}) for i in range(1, 1000)]
    with pytest.raises(SegmentDefinitionError, match=f"segment 'c64'.*at most {MAX_EXPANDED_DEPTH}"):
        catalog_of(*chain)


def test_deepest_accepted_rules_evaluate(world):
    leaf = {"field": "country", "op": "=", "value": "DE"}

    def nots(levels, node):
        for _ in range(levels):
            node = {"not": node}
        return node

    result = evaluate(
        world,
        seg("deepest", nots(MAX_RULE_DEPTH, leaf)),  # own nesting at the limit
        seg("deepest_ref", nots(MAX_EXPANDED_DEPTH - MAX_RULE_DEPTH - 2, {"segment": "deepest"})),
    )
    assert result["deepest"] == {"anna"}  # an even number of nots
    assert result["deepest_ref"] == {"anna"}


# ---------------------------------------------------------------------------------------------
# Semantics pinned against an independent reading of the README (issue 10, point 11)
# ---------------------------------------------------------------------------------------------

TASTE_EVENTS = [
    # fay: one sneakers view and one hoodies view (no brand)
    event("f1", "fay@example.com", "product_view", "2026-11-08T10:00:00", category="sneakers"),
    event("f2", "fay@example.com", "product_view", "2026-11-09T10:00:00", category="hoodies"),
    # gus: 7 Nike and 18 Adidas views, a Nike share of exactly 0.28
    *[event(f"g{i}", "gus@example.com", "product_view", f"2026-11-0{i % 9 + 1}T10:00:00",
            brand="Nike" if i < 7 else "Adidas") for i in range(25)],
    # hal: ties, 2 Adidas vs 2 Nike, and one "Tops" vs one "shoes"
    event("h1", "hal@example.com", "product_view", "2026-11-05T10:00:00", brand="Adidas", category="Tops"),
    event("h2", "hal@example.com", "product_view", "2026-11-06T10:00:00", brand="Adidas", category="shoes"),
    event("h3", "hal@example.com", "product_view", "2026-11-07T10:00:00", brand="Nike"),
    event("h4", "hal@example.com", "order", "2026-11-08T10:00:00", brand="Nike", price=10, quantity=1, revenue=10),
]


@pytest.fixture(scope="module")
def taste(tmp_path_factory):
    """Guests with brand/category interactions on 2026-11-01..10, plus Anna (no events); gus's and
    hal's profiles carry their top brand's share (18 of 25, 2 of 4) as the profile build gives it."""
    people = [profile("anna@example.com"), profile("fay@example.com"),
              profile("gus@example.com", top_brand_90d="Adidas", top_brand_90d_count=18, top_brand_90d_share=18 / 25),
              profile("hal@example.com", top_brand_90d="Nike", top_brand_90d_count=2, top_brand_90d_share=2 / 4)]
    return tmp_path_factory.mktemp("taste"), people, TASTE_EVENTS


def test_affinity_min_interactions_counts_all_interactions_of_the_dimension(taste):
    def sneakers(**extra):
        return {"affinity": {"property": "category", "value": "sneakers", **extra}}

    result = evaluate(
        taste,
        # the issue's example: one sneakers and one hoodies view
        seg("share_of_2", sneakers(min_share=0.5, min_interactions=2)),
        seg("share_of_3", sneakers(min_share=0.5, min_interactions=3)),
        # top: true and min_interactions read the same interactions
        seg("top_of_2", sneakers(top=True, min_interactions=2)),
        seg("top_of_3", sneakers(top=True, min_interactions=3)),
        # the same over brands: gus has 25 brand interactions (18 Adidas), hal 4 (2 Adidas)
        seg("adidas_of_5", {"affinity": {"property": "brand", "value": "Adidas", "min_share": 0.5,
                                         "min_interactions": 5}}),
    )
    assert result["share_of_2"] == {"fay"}
    assert result["share_of_3"] == set()
    assert result["top_of_2"] == {"fay"}  # a tie: "sneakers" sorts after "hoodies"
    assert result["top_of_3"] == set()
    assert result["adidas_of_5"] == {"gus"}


def test_affinity_share_is_exact_and_the_profile_share_compares_as_a_number(taste):
    def nike(share):
        return {"affinity": {"property": "brand", "value": "Nike", "min_share": share}}

    profiles: dict = {}
    result = evaluate(
        taste,
        seg("nike_28", nike(0.28)),  # gus: 7 of 25 (0.28 * 25 is 7.000000000000001 in floating point)
        seg("nike_29", nike(0.29)),
        seg("nike_50", nike(0.5)),  # hal: 2 of 4
        seg("share_field_72", {"field": "top_brand_90d_share", "op": ">=", "value": 0.72}),  # 18 of 25
        profiles=profiles,
    )
    assert result["nike_28"] == {"gus", "hal"}
    assert result["nike_29"] == {"hal"}
    assert result["nike_50"] == {"hal"}
    assert result["share_field_72"] == {"gus"}
    assert profiles["gus"]["top_brand_90d_share"] == 0.72  # the top trait's share column, as written


def test_top_tie_goes_to_the_value_sorting_last_in_byte_order(taste):
    def top(dimension, value):
        return {"affinity": {"property": dimension, "value": value, "top": True}}

    result = evaluate(
        taste,
        seg("top_nike", top("brand", "Nike")),
        seg("top_adidas", top("brand", "Adidas")),
        # byte (code point) order, not a case-insensitive one: "shoes" > "Tops" since "s" > "T"
        seg("top_shoes", top("category", "shoes")),
        seg("top_tops", top("category", "Tops")),
    )
    assert result["top_nike"] == {"hal"}  # hal: Adidas 2, Nike 2
    assert result["top_adidas"] == {"gus"}
    assert result["top_shoes"] == {"hal"}
    assert result["top_tops"] == set()
    # (the profile build's top traits break ties the same way: pinned in test_profiles.py)


def md5_bucket(email: str) -> int:
    """The README's formula, computed independently: the md5 digest of the UTF-8 email read as a
    little-endian 128-bit unsigned integer, modulo 10000."""
    return int.from_bytes(hashlib.md5(email.encode("utf-8")).digest(), "little") % 10_000


def test_random_bucket_formula_is_pinned(taste):
    assert md5_bucket("anna@example.com") == 4395  # big-endian would give 4230
    profiles: dict = {}
    result = evaluate(
        taste,
        seg("bucket_4395", {"random_bucket": {"from": 4395, "to": 4395}}),
        seg("bucket_4230", {"random_bucket": {"from": 4230, "to": 4230}}),
        profiles=profiles,
    )
    # "Anna@Example.COM" is hashed as its identity, the normalized email
    assert result["bucket_4395"] == {"anna"}
    assert result["bucket_4230"] == set()
    assert {name: p["random_bucket"] for name, p in profiles.items()} == {
        name: md5_bucket(f"{name}@example.com") for name in ("anna", "fay", "gus", "hal")
    }
