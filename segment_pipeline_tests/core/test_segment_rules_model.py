"""Segment rules on a data model that is not the apparel demo's: a beauty shop with its own
attributes (a list, a boolean, an integer), events with spaces in their names, a list property
and a money trait. Each operator kind is evaluated on profiles and raw_events partitions written
in the model's shape; errors name the file, the segment and the rule entry."""

from __future__ import annotations

import datetime as dt
import textwrap

import pytest

from segment_pipeline.core import safe_yaml
from segment_pipeline.core.memberships import compute_memberships
from segment_pipeline.core.model import parse_model
from segment_pipeline.core.segments import (
    SegmentDefinitionError,
    compile_segments,
    load_catalog,
    parse_catalog,
)
from segment_pipeline.core.warehouse import Warehouse, connect
from segment_pipeline_tests.landing import members
from segment_pipeline_tests.partitions import write_rows

BEAUTY = parse_model({
    "identity": {"links": ["customer_id"]},
    "attributes": {
        "skin_type": "string",
        "loyalty_points": {"type": "integer", "minimum": 0},
        "accepts_email_marketing": "boolean",
        "tags": "list[string]",
    },
    "events": {
        "Order Completed": {"properties": {"revenue": "money", "brands": {"type": "list[string]", "path": "products[*].brand"}}},
        "Email Opened": {},
    },
    "traits": {"revenue_30d": {"sum": {"event": "Order Completed", "property": "revenue", "within_days": 30}}},
}, source="beauty-model.yaml")
DAY = "2026-11-10"

# revenue_30d as of 2026-11-10 (the 30 days from 2026-10-12): ana 80.50 + 40.00, ben 40.00
PROFILES = [
    {"email": "ana@example.com", "customer_id": "C1", "skin_type": "oily", "loyalty_points": 750,
     "accepts_email_marketing": True, "tags": ["VIP", "wholesale"], "revenue_30d": "120.50"},
    {"email": "ben@example.com", "customer_id": "C2", "skin_type": "dry", "loyalty_points": 500,
     "accepts_email_marketing": False, "tags": ["wholesale"], "revenue_30d": "40.00"},
    {"email": "cai@example.com", "skin_type": "Oily", "loyalty_points": 20, "tags": [], "revenue_30d": 0},
    {"email": "dee@example.com", "accepts_email_marketing": True, "revenue_30d": 0},
]


def order(event_id, email, day, revenue, brands):
    return {"event_id": event_id, "email": email, "event": "Order Completed", "occurred_at": f"{day}T10:00:00",
            "revenue": revenue, "brands": brands}


def opened(event_id, email, day):
    return {"event_id": event_id, "email": email, "event": "Email Opened", "occurred_at": f"{day}T10:00:00"}


EVENTS = [
    order("a1", "ana@example.com", "2026-11-01", "80.50", ["Glow", "Dew"]),
    order("a2", "ana@example.com", "2026-11-09", "40.00", ["Glow"]),
    opened("a3", "ana@example.com", "2026-11-10"),
    order("b1", "ben@example.com", "2026-10-01", "300.00", ["Dew"]),
    order("b2", "ben@example.com", "2026-11-05", "40.00", ["Dew", "Glow"]),
    opened("b3", "ben@example.com", "2026-11-02"),
    opened("b4", "ben@example.com", "2026-11-03"),
    opened("c1", "cai@example.com", "2026-10-20"),
]


@pytest.fixture(scope="module")
def warehouse(tmp_path_factory):
    wh = Warehouse(tmp_path_factory.mktemp("beauty") / "wh", model=BEAUTY)
    write_rows(wh, "profiles", DAY, PROFILES)
    for day in sorted({e["occurred_at"][:10] for e in EVENTS}):
        write_rows(wh, "raw_events", day, [e for e in EVENTS if e["occurred_at"].startswith(day)])
    return wh


def evaluate(warehouse, **rules) -> dict[str, set[str]]:
    """Members (name before the @) of one segment per keyword (id -> rule) on 2026-11-10."""
    catalog = parse_catalog({"segments": [{"id": k, "name": k, "rule": r} for k, r in rules.items()]},
                            source="beauty-segments.yaml", model=BEAUTY)
    compute_memberships(connect(), warehouse, catalog, DAY)
    return {k: {e.split("@")[0] for e in members(warehouse, DAY, k)} for k in rules}


def field(name, op, *value):
    return {"field": name, "op": op, **({"value": value[0]} if value else {})}


def test_string_attribute(warehouse):
    assert evaluate(
        warehouse,
        eq=field("skin_type", "=", "oily"),  # exact: cai's "Oily" differs
        ne=field("skin_type", "!=", "oily"),  # dee has none: a missing value never matches
        in_=field("skin_type", "in", ["dry", "Oily"]),
        contains=field("skin_type", "contains", "OIL"),  # case-insensitive substring
        null=field("skin_type", "is null"),
        link=field("customer_id", "=", "C2"),  # an identity link is a profile field too
    ) == {"eq": {"ana"}, "ne": {"ben", "cai"}, "in_": {"ben", "cai"}, "contains": {"ana", "cai"}, "null": {"dee"},
          "link": {"ben"}}


def test_integer_attribute_and_money_trait_compare_as_numbers(warehouse):
    assert evaluate(
        warehouse,
        points_500=field("loyalty_points", ">=", 500),
        below=field("loyalty_points", "<", 500),
        between=field("loyalty_points", "between", [20, 500]),
        in_=field("loyalty_points", "in", [20, 750]),
        basket_100=field("revenue_30d", ">=", 100),
        exact_money=field("revenue_30d", "=", 120.5),
        above=field("revenue_30d", ">", 39.99),
    ) == {"points_500": {"ana", "ben"}, "below": {"cai"}, "between": {"ben", "cai"}, "in_": {"ana", "cai"},
          "basket_100": {"ana"}, "exact_money": {"ana"}, "above": {"ana", "ben"}}


def test_boolean_attribute(warehouse):
    assert evaluate(
        warehouse,
        true=field("accepts_email_marketing", "is true"),
        false=field("accepts_email_marketing", "is false"),
        eq_false=field("accepts_email_marketing", "=", False),
        ne_true=field("accepts_email_marketing", "!=", True),
        null=field("accepts_email_marketing", "is null"),
        not_true={"not": field("accepts_email_marketing", "is true")},  # two-valued: cai (unknown) is "not true"
    ) == {"true": {"ana", "dee"}, "false": {"ben"}, "eq_false": {"ben"}, "ne_true": {"ben"}, "null": {"cai"},
          "not_true": {"ben", "cai"}}


def test_list_attribute(warehouse):
    assert evaluate(
        warehouse,
        vip=field("tags", "contains", "VIP"),  # an element equals the value
        vip_lower=field("tags", "contains", "vip"),  # exactly: elements are not case-folded
        any_=field("tags", "contains any", ["VIP", "wholesale"]),
        all_=field("tags", "contains all", ["VIP", "wholesale"]),
        all_one=field("tags", "contains all", ["wholesale"]),
        null=field("tags", "is null"),  # NULL or empty
        not_null=field("tags", "is not null"),
    ) == {"vip": {"ana"}, "vip_lower": set(), "any_": {"ana", "ben"}, "all_": {"ana"}, "all_one": {"ana", "ben"},
          "null": {"cai", "dee"}, "not_null": {"ana", "ben"}}


def test_event_conditions_on_the_models_events(warehouse):
    def event(**spec):
        return {"event": spec}

    assert evaluate(
        warehouse,
        opened_7d=event(name="Email Opened", within_days=7),  # the 7 days 11-04..11-10
        engaged=event(name="Email Opened", op=">=", value=2),
        never_opened=event(name="Email Opened", op="=", value=0),
        glow_buyers=event(name="Order Completed", where=[{"property": "brands", "op": "contains", "value": "Glow"}]),
        glow_and_dew_7d=event(name="Order Completed", within_days=7,
                              where=[{"property": "brands", "op": "contains all", "value": ["Glow", "Dew"]}]),
        any_brand=event(name="Order Completed", where=[{"property": "brands", "op": "contains any", "value": ["Nope", "Dew"]}],
                        op=">=", value=2),
        big_order_30d=event(name="Order Completed", within_days=30,
                            where=[{"property": "revenue", "op": ">=", "value": 80}]),
        spent_300=event(name="Order Completed", measure="sum", property="revenue", op=">=", value=300),
        either_3d=event(name=["Order Completed", "Email Opened"], within_days=3),
        any_event=event(op=">=", value=3),
    ) == {"opened_7d": {"ana"}, "engaged": {"ben"}, "never_opened": {"dee"}, "glow_buyers": {"ana", "ben"},
          "glow_and_dew_7d": {"ben"}, "any_brand": {"ben"}, "big_order_30d": {"ana"}, "spent_300": {"ben"},
          "either_3d": {"ana"}, "any_event": {"ana", "ben"}}


def test_affinity_on_a_list_property_counts_each_element(warehouse):
    def glow(**extra):
        return {"affinity": {"property": "brands", "value": "Glow", **extra}}

    # 90 days: ana's elements Glow, Dew, Glow (2 of 3 Glow); ben's Dew, Dew, Glow (1 of 3)
    assert evaluate(
        warehouse,
        half=glow(min_share=0.5),
        third=glow(min_share=0.3, min_interactions=3),
        four=glow(min_share=0.3, min_interactions=4),
        top=glow(top=True),
        top_dew={"affinity": {"property": "brands", "value": "Dew", "top": True}},
        top_30d=glow(top=True, within_days=30),  # ben: Dew 1, Glow 1, a tie to the value sorting last
        of_orders=glow(min_share=0.5, event="Order Completed"),
    ) == {"half": {"ana"}, "third": {"ana", "ben"}, "four": set(), "top": {"ana"}, "top_dew": {"ben"},
          "top_30d": {"ana", "ben"}, "of_orders": {"ana"}}


def test_older_spellings_load_as_the_canonical_rule(warehouse):
    old = {"event": {"type": "Order Completed", "where": [{"field": "revenue", "op": ">", "value": 10}],
                     "measure": "sum", "sum_field": "revenue", "value": 100}}
    new = {"event": {"name": "Order Completed", "where": [{"property": "revenue", "op": ">", "value": 10}],
                     "measure": "sum", "property": "revenue", "value": 100}}
    old_aff = {"affinity": {"dimension": "brands", "value": "Glow", "event_types": ["Order Completed"], "top": True}}
    new_aff = {"affinity": {"property": "brands", "value": "Glow", "event": ["Order Completed"], "top": True}}
    catalog = parse_catalog({"segments": [{"id": "old", "name": "Old", "rule": {"all": [old, old_aff]}}]},
                            source="beauty-segments.yaml", model=BEAUTY)
    assert catalog["old"].rule == {"all": [new, new_aff]}
    assert evaluate(warehouse, old={"all": [old, old_aff]}, new={"all": [new, new_aff]}) == {
        "old": {"ana"}, "new": {"ana"}}


def test_values_are_bound_and_model_names_quoted():
    hostile = "x'); DROP TABLE t; --"
    catalog = parse_catalog({"segments": [{"id": "a", "name": "A", "rule": {"all": [
        field("tags", "contains any", [hostile, "Levi's"]),
        {"event": {"name": "Order Completed", "where": [{"property": "brands", "op": "contains", "value": hostile}]}},
        {"affinity": {"property": "brands", "value": hostile, "top": True}},
    ]}}]}, source="beauty-segments.yaml", model=BEAUTY)
    compiled = compile_segments(catalog, ["a"], dt.date(2026, 11, 10))
    for value in ["DROP TABLE", "Levi's", "Order Completed"]:
        assert value not in compiled.sql
    assert '"tags"' in compiled.sql and '"brands"' in compiled.sql and '"event" IN' in compiled.sql
    assert {hostile, "Levi's", "Order Completed"} <= set(compiled.params.values())


@pytest.mark.parametrize(
    ("rule", "fragments"),
    [
        # unknown names: the file's entry, what is declared
        ("{field: hair_colour, op: '=', value: red}",
         ["rule.any[1]: unknown profile field 'hair_colour'", "'skin_type'", "'loyalty_points'"]),
        ("{event: {name: Subscription Started}}",
         ["rule.any[1].event.name: unknown event 'Subscription Started'", "['Email Opened', 'Order Completed']",
          "declare it under 'events' in the model file"]),
        ("{event: {name: Order Completed, where: [{property: sku, op: '=', value: A1}]}}",
         ["rule.any[1].event.where[0]: unknown property 'sku'", "['brands', 'revenue']"]),
        ("{event: {name: Email Opened, where: [{property: revenue, op: '>', value: 1}]}}",
         ["rule.any[1].event.where[0]: property 'revenue' is not declared on event(s) ['Email Opened']"]),
        ("{affinity: {property: revenue, value: '10', top: true}}",
         ["rule.any[1].affinity: property 'revenue' is not a declared string or list[string] property", "['brands']"]),
        # type mismatches
        ("{field: loyalty_points, op: '>=', value: lots}",
         ["rule.any[1]: field 'loyalty_points' is integer: value 'lots' is not a number"]),
        ("{field: accepts_email_marketing, op: '=', value: 'yes'}",
         ["rule.any[1]: field 'accepts_email_marketing' is boolean: value 'yes' is not true or false"]),
        ("{field: tags, op: contains, value: 5}", ["field 'tags' is list[string]: value 5 is not text (one element)"]),
        ("{field: tags, op: contains any, value: VIP}", ["field 'tags': operator 'contains any' needs a non-empty list"]),
        ("{field: tags, op: '=', value: VIP}",
         ["field 'tags' is list[string]: operator '=' does not apply", "'contains any'"]),
        ("{field: skin_type, op: is true}", ["field 'skin_type' is string: operator 'is true' does not apply"]),
        ("{event: {name: Order Completed, where: [{property: brands, op: contains, value: [Glow]}]}}",
         ["rule.any[1].event.where[0]: property 'brands' is list[string]: value ['Glow'] is not text"]),
        ("{event: {name: Order Completed, measure: sum, property: brands}}",
         ["rule.any[1].event: measure 'sum' needs property", "['revenue']; got 'brands'"]),
    ],
)
def test_errors_name_file_segment_entry_and_problem(tmp_path, rule, fragments):
    path = tmp_path / "beauty-segments.yaml"
    path.write_text(textwrap.dedent(f"""
        segments:
          - id: oily_skin
            name: Oily skin
            rule: {{field: skin_type, op: '=', value: oily}}
          - id: broken
            name: Broken
            rule:
              any:
                - {{field: skin_type, op: '=', value: dry}}
                - {rule}
    """))
    with pytest.raises(SegmentDefinitionError) as err:
        load_catalog(path, BEAUTY)
    message = str(err.value)
    assert message.startswith(f"{path}: segment 'broken': ")
    assert len(message) <= safe_yaml.MAX_MESSAGE_CHARS
    for fragment in fragments:
        assert fragment in message
