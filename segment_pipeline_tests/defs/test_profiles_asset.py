"""The profiles asset on a model of the user's own (SEGMENT_PIPELINE_MODEL): metadata from the model."""

from __future__ import annotations

import dagster as dg

from segment_pipeline.core.warehouse import Warehouse
from segment_pipeline.defs.profiles.assets import profiles
from segment_pipeline.defs.resources import WarehouseResource
from segment_pipeline_tests.raw_tables import event_row, profile_row, write_raw

MODEL = """
identity: {links: [user_id]}
attributes:
  skin_type: string
  loyalty_points: integer
events:
  Email Opened: {properties: {campaign: string}}
traits:
  opens_30d: {count: {event: Email Opened, within_days: 30}}
  top_campaign: {top: {property: campaign}}
"""


def test_profiles_asset_builds_a_user_model_and_reports_counts_from_it(tmp_path, monkeypatch):
    (tmp_path / "model.yaml").write_text(MODEL)
    monkeypatch.setenv("SEGMENT_PIPELINE_MODEL", str(tmp_path / "model.yaml"))
    wh = Warehouse(tmp_path / "wh")
    write_raw(wh, "raw_profiles", "2026-11-01", [
        profile_row("a@x.io", "2026-11-01T08:00:00", skin_type="oily", loyalty_points=5, custom_attributes={"vip": True}),
        profile_row("b@x.io", "2026-11-01T08:00:00", user_id="U2"),
    ])
    write_raw(wh, "raw_events", "2026-11-01", [event_row("1", "guest@x.io", "Email Opened", "2026-11-01T09:00:00",
                                                         campaign="spring")])
    result = dg.materialize([profiles], resources={"warehouse": WarehouseResource(root=str(wh.root))},
                            partition_key="2026-11-01")
    assert result.success
    (mat,) = result.asset_materializations_for_node("profiles")
    meta = {k: v.value for k, v in mat.metadata.items() if k != "path"}
    assert meta == {"identities": 3, "with_profile_records": 2, "events_only": 1, "with_custom_attributes": 1,
                    "traits": 2, "dagster/row_count": 3}
    (check,) = result.get_asset_check_evaluations()
    assert check.passed
