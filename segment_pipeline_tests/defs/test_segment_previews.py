"""Member previews show the profile fields a segment's rule reads, whatever the data model."""

from __future__ import annotations

import datetime as dt

import dagster as dg

from segment_pipeline.core.memberships import compute_memberships
from segment_pipeline.core.model import parse_model
from segment_pipeline.core.segments import parse_catalog
from segment_pipeline.core.warehouse import Warehouse, connect
from segment_pipeline.defs.segments.assets import _previews
from segment_pipeline_tests.partitions import write_rows

MODEL = parse_model({
    "attributes": {"skin_type": "string", "loyalty_points": "integer", "tags": "list[string]",
                   "accepts_email_marketing": "boolean"},
    "events": {"Order Completed": {"properties": {"revenue": "money", "brands": "list[string]"}}},
    "traits": {"orders_total": {"count": {"event": "Order Completed"}},
               "revenue_total": {"sum": {"event": "Order Completed", "property": "revenue"}},
               "top_brand": {"top": {"property": "brands"}}},
}, source="beauty.yaml")
DAY = "2026-11-10"


def test_preview_columns_follow_the_rule_and_values_are_table_cells(tmp_path):
    catalog = parse_catalog({"segments": [
        {"id": "oily_vip", "name": "Oily VIP", "rule": {"all": [
            {"field": "skin_type", "op": "=", "value": "oily"}, {"field": "tags", "op": "contains", "value": "VIP"},
            {"field": "accepts_email_marketing", "op": "is true"}]}},
        {"id": "buyers", "name": "Buyers", "rule": {"event": {"name": "Order Completed"}}},
        {"id": "glow_fans", "name": "Glow fans", "rule": {"affinity": {"property": "brands", "value": "Glow", "top": True}}},
    ]}, source="beauty-segments.yaml", model=MODEL)
    wh = Warehouse(tmp_path / "wh", model=MODEL)
    write_rows(wh, "profiles", DAY, [
        {"email": "ana@example.com", "skin_type": "oily", "tags": ["VIP", "wholesale"], "accepts_email_marketing": True,
         "orders_total": 1, "revenue_total": "12.50", "top_brand": "Glow", "top_brand_share": 1.0},
        {"email": "bo@example.com", "skin_type": "dry"},
    ])
    write_rows(wh, "raw_events", DAY, [{"event_id": "o1", "email": "ana@example.com", "event": "Order Completed",
                                        "occurred_at": f"{DAY}T10:00:00", "revenue": "12.50", "brands": ["Glow"]}])
    con = connect()
    compute_memberships(con, wh, catalog, DAY)
    previews = _previews(con, wh, catalog, dt.date(2026, 11, 10), ["oily_vip", "buyers", "glow_fans"])

    def table(seg):
        value = previews[seg]
        assert isinstance(value, dg.TableMetadataValue)
        return [(c.name, c.type) for c in value.schema.columns], [r.data for r in value.records]

    assert table("oily_vip") == (
        [("email", "string"), ("skin_type", "string"), ("tags", "string"), ("accepts_email_marketing", "bool")],
        [{"email": "ana@example.com", "skin_type": "oily", "tags": "VIP, wholesale", "accepts_email_marketing": True}],
    )
    assert table("buyers") == ([("email", "string"), ("orders_total", "int"), ("revenue_total", "string")],
                               [{"email": "ana@example.com", "orders_total": 1, "revenue_total": "12.50"}])
    assert table("glow_fans")[0] == [("email", "string"), ("top_brand", "string"), ("top_brand_share", "float")]
