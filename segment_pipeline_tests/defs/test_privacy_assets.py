"""Dagster wiring of issue 15: the suppression_lists and retention assets, and the privacy counts
that the feed and the sync assets record in their metadata (in-process, small data)."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import dagster as dg
import pytest
from dagster_aws.s3 import S3Resource

from segment_pipeline.core.exports.storage import LocalExportStorage
from segment_pipeline.core.privacy.suppression import SUPPRESSION_TABLE, partition_dates
from segment_pipeline.core.warehouse import Warehouse
from segment_pipeline.defs.exports.assets import segment_feed_daily
from segment_pipeline.defs.exports.resources import ExportsResource
from segment_pipeline.defs.privacy.assets import retention, suppression_lists
from segment_pipeline.defs.resources import LandingZoneResource, SegmentCatalogResource, WarehouseResource
from segment_pipeline.defs.syncs.assets import klaviyo_sync
from segment_pipeline.defs.syncs.resources import DotdigitalResource, KlaviyoResource
from segment_pipeline_tests.core.test_exports_warehouse_fixtures import profile, write_day

DAY = dt.date(2026, 11, 3)
CATALOG = """
segments:
  - id: vip
    name: VIP
    rule: {field: order_count, op: ">=", value: 3}
    sync: {klaviyo: true}
"""


@pytest.fixture
def setup(tmp_path: Path, monkeypatch):
    wh = Warehouse(tmp_path / "warehouse")
    emails = ["a@x.io", "b@x.io", "no@x.io"]
    write_day(wh, DAY, [profile(e) for e in emails], {"vip": "VIP"}, {"vip": emails})
    (tmp_path / "segments.yaml").write_text(CATALOG)
    (tmp_path / "optout.txt").write_text("NO@x.io\nbroken\n")
    privacy = tmp_path / "privacy.yaml"
    privacy.write_text("suppression:\n  - {name: optout, path: optout.txt}\n")
    monkeypatch.setenv("SEGMENT_PIPELINE_PRIVACY", str(privacy))
    return wh, {"warehouse": WarehouseResource(root=str(wh.root)),
                "landing": LandingZoneResource(root=str(tmp_path / "landing")),
                "segment_catalog": SegmentCatalogResource(path=str(tmp_path / "segments.yaml")),
                "exports": ExportsResource(local_dir=str(tmp_path / "exports"), s3=S3Resource()),
                "klaviyo": KlaviyoResource(), "dotdigital": DotdigitalResource()}


def meta_of(result: dg.ExecuteInProcessResult, node: str) -> dict:
    (mat,) = result.asset_materializations_for_node(node)
    return {k: v.value for k, v in mat.metadata.items()}


def test_privacy_assets_are_in_the_code_location():
    from segment_pipeline.definitions import defs

    loaded = defs()
    for key in ("suppression_lists", "retention"):
        spec = loaded.resolve_assets_def(key).specs_by_key[dg.AssetKey(key)]
        assert spec.group_name == "privacy" and spec.automation_condition is not None


def test_suppression_lists_asset_reports_each_list(setup):
    wh, resources = setup
    result = dg.materialize([suppression_lists], resources=resources)
    meta = meta_of(result, "suppression_lists")
    assert meta["lists"] == {"optout": {"entries": 1, "files": 1, "quarantined": 1, "blank": 0}}
    assert (meta["hashes"], meta["quarantined"], meta["list_count"]) == (1, 1, 1)
    assert partition_dates(wh, SUPPRESSION_TABLE)


def test_feed_and_sync_leave_the_suppressed_out_and_count_them(setup):
    wh, resources = setup
    # no suppression_lists run first: the export and the sync load the lists themselves
    feed = dg.materialize([segment_feed_daily], resources=resources, partition_key=DAY.isoformat())
    meta = meta_of(feed, "segment_feed_daily")
    assert meta["rows"] == 2 and meta["suppressed"] == {"optout": 1} and meta["suppressed_total"] == 1
    lines = LocalExportStorage(Path(resources["exports"].local_dir)).get_bytes(f"daily/nosto_segments/{DAY}.json")
    assert b"no@x.io" not in lines
    sync = dg.materialize([klaviyo_sync], resources=resources)  # dry run (no credentials)
    meta = meta_of(sync, "klaviyo_sync")
    assert meta["upserted"] == 2 and meta["suppressed"] == {"optout": 1} and "consent_withheld" not in meta
    payloads = b"".join(p.read_bytes() for p in Path(meta["payload_dir"]).rglob("*") if p.is_file())
    assert b"a@x.io" in payloads and b"no@x.io" not in payloads


def test_a_bad_privacy_file_fails_the_sync_naming_file_and_entry(setup, tmp_path):
    _wh, resources = setup
    (tmp_path / "privacy.yaml").write_text("suppression:\n  - {name: optout}\n")
    result = dg.materialize([klaviyo_sync], resources=resources, raise_on_error=False)
    assert not result.success
    (failure,) = [e for e in result.all_events if e.is_step_failure]
    message = failure.step_failure_data.error.message
    assert f"{tmp_path / 'privacy.yaml'}: suppression.0: give exactly one of path" in message


def test_retention_asset_reports_per_kind(setup, tmp_path, monkeypatch):
    _wh, resources = setup
    old = tmp_path / "landing" / "profiles" / "date=2020-01-01"
    old.mkdir(parents=True)
    (old / "a.csv").write_text("email\n")
    monkeypatch.setenv("SEGMENT_PIPELINE_RETAIN_LANDING_DAYS", "30")
    result = dg.materialize([retention], resources=resources)
    meta = meta_of(result, "retention")
    assert (meta["landing_removed"], meta["landing_bytes_removed"], meta["landing_oldest_kept"]) == (1, 6, "none")
    assert meta["retention"]["quarantine"] == {"days": "keep", "removed": 0, "bytes": 0, "oldest_kept": None}
    assert not old.exists()
    monkeypatch.setenv("SEGMENT_PIPELINE_RETAIN_DRY_RUN_DAYS", "-3")
    bad = dg.materialize([retention], resources=resources, raise_on_error=False)
    assert not bad.success
    assert "SEGMENT_PIPELINE_RETAIN_DRY_RUN_DAYS='-3': expected a whole number of days >= 1, or off" in json.dumps(
        [e.step_failure_data.error.message for e in bad.all_events if e.is_step_failure])
