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
                    "traits": 2, "dagster/row_count": 3, "state_build": "full"}
    (check,) = result.get_asset_check_evaluations()
    assert check.passed


def test_profiles_asset_continues_the_previous_state_and_rebuilds_in_full_when_configured(tmp_path, monkeypatch):
    (tmp_path / "model.yaml").write_text(MODEL)
    monkeypatch.setenv("SEGMENT_PIPELINE_MODEL", str(tmp_path / "model.yaml"))
    wh = Warehouse(tmp_path / "wh")
    for day, who in (("2026-11-01", "a@x.io"), ("2026-11-02", "b@x.io")):
        write_raw(wh, "raw_profiles", day, [profile_row(who, f"{day}T08:00:00", skin_type="dry")])
        write_raw(wh, "raw_events", day, [event_row(day, who, "Email Opened", f"{day}T09:00:00", campaign="spring")])
    resources = {"warehouse": WarehouseResource(root=str(wh.root))}

    def build(day: str, config: dict | None = None) -> dict:
        run_config = {"ops": {"profiles": {"config": config}}} if config else None
        result = dg.materialize([profiles], resources=resources, partition_key=day, run_config=run_config)
        (mat,) = result.asset_materializations_for_node("profiles")
        return {k: v.value for k, v in mat.metadata.items()}

    assert build("2026-11-01")["state_build"] == "full"  # nothing to continue
    day2 = build("2026-11-02")
    assert (day2["state_build"], day2["identities"]) == ("incremental", 2)
    again = build("2026-11-02", {"full_rebuild": True})
    assert (again["state_build"], again["identities"]) == ("full", 2)
