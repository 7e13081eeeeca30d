"""Dagster wiring of the sync assets: code location, schedules, dry run, real run against fakes."""

from __future__ import annotations

import json
from pathlib import Path

import dagster as dg
import pytest

from segment_pipeline.core.warehouse import Warehouse
from segment_pipeline.defs.resources import SegmentCatalogResource, WarehouseResource
from segment_pipeline.defs.syncs.assets import (
    dotdigital_sync,
    dotdigital_sync_schedule,
    klaviyo_sync,
    klaviyo_sync_schedule,
)
from segment_pipeline.defs.syncs.resources import (
    DotdigitalResource,
    KlaviyoResource,
    klaviyo_resource_from_env,
)
from segment_pipeline_tests.fakes.dotdigital import FakeDotdigital
from segment_pipeline_tests.fakes.helpers import DD_PASSWORD, DD_USER, KLAVIYO_KEY, write_memberships
from segment_pipeline_tests.fakes.klaviyo import FakeKlaviyo

CATALOG = """
segments:
  - id: vip
    name: VIP
    rule: {field: order_count, op: ">=", value: 3}
    sync: {klaviyo: true, dotdigital: true}
  - id: lurkers
    name: Lurkers
    rule: {field: order_count, op: "=", value: 0}
    sync: {klaviyo: true}
"""


@pytest.fixture
def setup(tmp_path: Path):
    wh = Warehouse(tmp_path / "warehouse")
    write_memberships(wh, "2026-11-01", [("vip", "a@x.io")])
    write_memberships(wh, "2026-11-02", [("vip", "a@x.io"), ("vip", "b@x.io"), ("lurkers", "c@x.io")])
    catalog = tmp_path / "segments.yaml"
    catalog.write_text(CATALOG)
    return wh, {"warehouse": WarehouseResource(root=str(wh.root)),
                "segment_catalog": SegmentCatalogResource(path=str(catalog))}


def _meta(result: dg.ExecuteInProcessResult, key: str) -> dict:
    (mat,) = result.asset_materializations_for_node(key)
    return {k: v.value for k, v in mat.metadata.items()}


def test_code_location_has_sync_assets_and_schedules():
    from segment_pipeline.definitions import defs

    loaded = defs()
    for key in ("klaviyo_sync", "dotdigital_sync"):
        spec = loaded.resolve_assets_def(key).specs_by_key[dg.AssetKey(key)]
        assert spec.group_name == "syncs" and dg.AssetKey("memberships") in {d.asset_key for d in spec.deps}
    names = {s.name for s in loaded.schedules}
    assert {"klaviyo_sync_schedule", "dotdigital_sync_schedule"} <= names
    assert klaviyo_sync_schedule.cron_schedule == "0 */12 * * *"
    assert dotdigital_sync_schedule.cron_schedule == "0 6 * * *"


def test_without_credentials_both_syncs_dry_run_into_the_warehouse(setup):
    wh, resources = setup
    result = dg.materialize([klaviyo_sync, dotdigital_sync],
                            resources={**resources, "klaviyo": KlaviyoResource(), "dotdigital": DotdigitalResource()})
    assert result.success
    k = _meta(result, "klaviyo_sync")
    assert k["dry_run"] is True and k["day"] == "2026-11-02" and k["upserted"] == 3 and k["requests"] == 0
    assert (k["truncated"], k["report_mismatches"], k["unconfirmed"]) == (0, 0, 0)  # the fault counts are metadata
    assert Path(k["payload_dir"]).is_relative_to(wh.root / "sync_dry_run" / "klaviyo")
    d = _meta(result, "dotdigital_sync")
    assert d["upserted"] == 2  # lurkers is not synced to dotdigital
    summary = json.loads((Path(d["payload_dir"]) / "summary.json").read_text())
    assert summary["upserted"] == 2


def test_klaviyo_asset_syncs_given_day_and_records_counts_without_secrets(setup, monkeypatch):
    wh, resources = setup
    with FakeKlaviyo() as fake:
        monkeypatch.setenv("KLAVIYO_API_KEY", KLAVIYO_KEY)
        monkeypatch.setenv("KLAVIYO_BASE_URL", fake.url)
        res = {**resources, "klaviyo": klaviyo_resource_from_env(), "dotdigital": DotdigitalResource()}
        result = dg.materialize([klaviyo_sync], resources=res,
                                run_config={"ops": {"klaviyo_sync": {"config": {"day": "2026-11-01"}}}})
        meta = _meta(result, "klaviyo_sync")
        assert meta["upserted"] == 1 and meta["dry_run"] is False and meta["requests"] > 0
        assert all(KLAVIYO_KEY not in str(v) for v in meta.values())
        result = dg.materialize([klaviyo_sync], resources=res)  # latest day: b and c are new
        meta = _meta(result, "klaviyo_sync")
        assert meta["upserted"] == 2 and meta["added"] == 2
        assert fake.property_of("c@x.io", "nosto_segment") == ["Lurkers"]
        assert (wh.root / "sync_state" / "klaviyo" / "state.duckdb").exists()


def test_dotdigital_asset_runs_against_the_fake(setup):
    _wh, resources = setup
    with FakeDotdigital() as fake:
        dd = DotdigitalResource(api_user=DD_USER, api_password=DD_PASSWORD, base_url=fake.url)
        result = dg.materialize([dotdigital_sync], resources={**resources, "dotdigital": dd, "klaviyo": KlaviyoResource()})
        meta = _meta(result, "dotdigital_sync")
        assert meta["upserted"] == 2 and DD_PASSWORD not in json.dumps({k: str(v) for k, v in meta.items()})
        assert fake.field_value("b@x.io", "NOSTOSEGMENT") == "VIP"


def test_missing_memberships_fails_clearly(tmp_path):
    catalog = tmp_path / "segments.yaml"
    catalog.write_text(CATALOG)
    res = {"warehouse": WarehouseResource(root=str(tmp_path / "empty")), "segment_catalog":
           SegmentCatalogResource(path=str(catalog)), "klaviyo": KlaviyoResource(), "dotdigital": DotdigitalResource()}
    result = dg.materialize([klaviyo_sync], resources=res, raise_on_error=False)
    assert not result.success
