"""The sync asset's removal guard (issue 16): a bad upstream day stops the run before anything is
sent; run config ``allow_large_removal: true`` confirms it; the plan summary is in the metadata."""

from __future__ import annotations

from pathlib import Path

import dagster as dg

from segment_pipeline.core.warehouse import Warehouse
from segment_pipeline.defs.resources import SegmentCatalogResource, WarehouseResource
from segment_pipeline.defs.syncs.assets import klaviyo_sync
from segment_pipeline.defs.syncs.resources import DotdigitalResource, klaviyo_resource_from_env
from segment_pipeline_tests.fakes.helpers import KLAVIYO_KEY, write_memberships
from segment_pipeline_tests.fakes.klaviyo import FakeKlaviyo

CATALOG = """
segments:
  - id: vip
    name: VIP
    rule: {field: order_count, op: ">=", value: 3}
    sync: {klaviyo: true}
"""


def test_guard_stops_the_asset_on_a_bad_day_and_run_config_confirms(tmp_path: Path, monkeypatch):
    wh = Warehouse(tmp_path / "warehouse")
    people = [f"p{i}@x.io" for i in range(10)]
    write_memberships(wh, "2026-11-01", [("vip", e) for e in people])
    catalog = tmp_path / "segments.yaml"
    catalog.write_text(CATALOG)
    monkeypatch.setenv("SEGMENT_PIPELINE_DESTINATIONS", "none")  # no mappings
    monkeypatch.setenv("SEGMENT_PIPELINE_SYNC_MAX_REMOVAL_SHARE", "0.5")
    with FakeKlaviyo() as fake:
        monkeypatch.setenv("KLAVIYO_API_KEY", KLAVIYO_KEY)
        monkeypatch.setenv("KLAVIYO_BASE_URL", fake.url)
        res = {"warehouse": WarehouseResource(root=str(wh.root)),
               "segment_catalog": SegmentCatalogResource(path=str(catalog)),
               "klaviyo": klaviyo_resource_from_env(), "dotdigital": DotdigitalResource()}
        first = dg.materialize([klaviyo_sync], resources=res)
        (mat,) = first.asset_materializations_for_node("klaviyo_sync")
        assert mat.metadata["plan"].value == {"contacts_held": 0, "desired": 10, "add": 10, "update": 0, "clear": 0,
                                              "remove": 0, "leaving": 0, "forgotten": 0, "leaving_share": 0.0}
        write_memberships(wh, "2026-11-02", [("vip", "p0@x.io")])  # 9 of 10 gone: an upstream failure
        jobs = len(fake.jobs)
        stopped = dg.materialize([klaviyo_sync], resources=res, raise_on_error=False)
        assert not stopped.success
        (failure,) = [e for e in stopped.all_events if e.event_type_value == "STEP_FAILURE"]
        text = str(failure.event_specific_data.error.message)
        assert "9 of the 10 contacts the destination holds (90.0%), over the removal guard of 50%" in text
        assert len(fake.jobs) == jobs
        (lid,) = fake.lists_named("Nosto Customers")
        assert len(fake.member_emails(lid)) == 10
        ok = dg.materialize([klaviyo_sync], resources=res,
                            run_config={"ops": {"klaviyo_sync": {"config": {"allow_large_removal": True}}}})
        (mat,) = ok.asset_materializations_for_node("klaviyo_sync")
        assert mat.metadata["removed"].value == 9 and fake.member_emails(lid) == {"p0@x.io"}
        assert mat.metadata["plan"].value["leaving"] == 9 and "confirmed: klaviyo" in mat.metadata["notes"].value


def test_a_guard_stop_caused_by_a_new_suppression_list_says_so_and_carries_the_plan(tmp_path: Path, monkeypatch):
    """Review item 11: the failure's metadata holds the plan (and the privacy counts), and its message
    names what privacy holds back when that explains the removals, not only "a bad upstream day"."""
    wh = Warehouse(tmp_path / "warehouse")
    people = [f"p{i}@x.io" for i in range(10)]
    write_memberships(wh, "2026-11-01", [("vip", e) for e in people])
    catalog = tmp_path / "segments.yaml"
    catalog.write_text(CATALOG)
    monkeypatch.setenv("SEGMENT_PIPELINE_DESTINATIONS", "none")
    monkeypatch.setenv("SEGMENT_PIPELINE_SYNC_MAX_REMOVAL_SHARE", "0.5")
    monkeypatch.setenv("SEGMENT_PIPELINE_LANDING", str(tmp_path / "landing"))
    privacy = tmp_path / "privacy.yaml"
    monkeypatch.setenv("SEGMENT_PIPELINE_PRIVACY", "none")  # no privacy file on the first day
    with FakeKlaviyo() as fake:
        monkeypatch.setenv("KLAVIYO_API_KEY", KLAVIYO_KEY)
        monkeypatch.setenv("KLAVIYO_BASE_URL", fake.url)
        res = {"warehouse": WarehouseResource(root=str(wh.root)),
               "segment_catalog": SegmentCatalogResource(path=str(catalog)),
               "klaviyo": klaviyo_resource_from_env(), "dotdigital": DotdigitalResource()}
        assert dg.materialize([klaviyo_sync], resources=res).success
        # the same members the next day, but a new list suppresses 8 of them
        write_memberships(wh, "2026-11-02", [("vip", e) for e in people])
        (tmp_path / "unsubscribed.csv").write_text("email\n" + "\n".join(people[:8]) + "\n")
        privacy.write_text("suppression:\n  - {name: unsubscribed, path: unsubscribed.csv, column: email}\n")
        monkeypatch.setenv("SEGMENT_PIPELINE_PRIVACY", str(privacy))
        jobs = len(fake.jobs)

        stopped = dg.materialize([klaviyo_sync], resources=res, raise_on_error=False)

        assert not stopped.success and len(fake.jobs) == jobs
        (failure,) = [e for e in stopped.all_events if e.event_type_value == "STEP_FAILURE"]
        text = str(failure.event_specific_data.error.message)
        assert "8 of the 10 contacts the destination holds (80.0%)" in text
        assert ("Privacy holds back 8 of the day's members: 8 on suppression lists (unsubscribed 8); these can "
                "explain the removals") in text
        meta = failure.event_specific_data.user_failure_data.metadata
        assert meta["plan"].value["leaving"] == 8 and meta["plan"].value["contacts_held"] == 10
        assert meta["suppressed"].value == {"unsubscribed": 8} and meta["suppressed_total"].value == 8
