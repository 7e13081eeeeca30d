"""Google Customer Match upload files: format, hashing, manifest and atomic publication."""

from __future__ import annotations

import json
from pathlib import Path

import dagster as dg
import duckdb
import pytest
from dagster_aws.s3 import S3Resource

from segment_pipeline.core.exports import customer_match as cm
from segment_pipeline.core.exports.storage import LocalExportStorage, S3ExportStorage
from segment_pipeline.core.sync.hashing import google_email_hash
from segment_pipeline.core.warehouse import Warehouse
from segment_pipeline.defs.exports.assets import google_customer_match_files
from segment_pipeline.defs.exports.resources import ExportsResource
from segment_pipeline.defs.resources import SegmentCatalogResource, WarehouseResource
from segment_pipeline_tests.fakes.helpers import write_memberships
from segment_pipeline_tests.fakes.s3 import moto_s3_server

DAY = "2026-11-03"
SEGMENTS = {"vip": "VIP", "../odd id": "Odd 'name', ü"}
ROWS = [("vip", "Jane.Doe@GMAIL.com"), ("vip", "janedoe+promo@gmail.com"),  # one Google account
        ("vip", " joe@Example.com "), ("vip", "user.name+nyc@example.com"),
        ("../odd id", "dana@example.com"), ("other", "zed@example.com")]


@pytest.fixture
def wh(tmp_path: Path) -> Warehouse:
    w = Warehouse(tmp_path / "warehouse")
    write_memberships(w, DAY, ROWS)
    return w


def _lines(data: bytes) -> list[str]:
    assert data.endswith(b"\n") and b"\r" not in data and b"@" not in data
    return data.decode("utf-8").splitlines()


def test_files_have_googles_header_and_normalized_hashes_and_a_manifest(wh, tmp_path):
    storage = LocalExportStorage(tmp_path / "exports")
    result = cm.write_customer_match(duckdb.connect(), wh, storage, DAY, SEGMENTS)
    folder = tmp_path / "exports" / "customer_match" / DAY
    vip = _lines((folder / "vip.csv").read_bytes())
    expected = sorted({google_email_hash(e) for e in
                       ("janedoe@gmail.com", "joe@example.com", "user.name+nyc@example.com")})
    assert vip == ["Email", *expected]  # the two gmail spellings are one member
    odd = _lines((folder / cm.file_name("../odd id")).read_bytes())
    assert odd == ["Email", "07e2f1394b0ea80e2adca010ea8318df697001a005ba7452720edda4b0ce57b3"]  # Google's example
    manifest = cm.read_manifest(storage, DAY)
    assert manifest is not None and manifest["header"] == ["Email"] and manifest["day"] == DAY
    files = {f["segment_id"]: f for f in manifest["files"]}
    assert files["vip"]["rows"] == 3 and files["vip"]["members"] == 4 and files["vip"]["segment_name"] == "VIP"
    assert files["../odd id"]["segment_name"] == "Odd 'name', ü"
    assert sorted(p.name for p in folder.iterdir()) == sorted([cm.MANIFEST, "vip.csv", cm.file_name("../odd id")])
    assert result.rows == 4 and result.location.endswith(f"customer_match/{DAY}/manifest.json")
    # a re-run replaces the day's folder byte for byte (sorted lines), nothing left behind
    before = (folder / "vip.csv").read_bytes()
    cm.write_customer_match(duckdb.connect(), wh, storage, DAY, {"vip": "VIP"})
    assert (folder / "vip.csv").read_bytes() == before
    assert sorted(p.name for p in folder.iterdir()) == [cm.MANIFEST, "vip.csv"]
    assert not [p for p in (tmp_path / "exports").rglob("*") if p.name.startswith(".")]


def test_a_failed_day_publishes_nothing_and_keeps_the_previous_files(wh, tmp_path):
    storage = LocalExportStorage(tmp_path / "exports")
    cm.write_customer_match(duckdb.connect(), wh, storage, DAY, SEGMENTS)
    before = cm.read_manifest(storage, DAY)
    con = duckdb.connect()
    con.close()  # every query on it fails, after the day's batch folder was started
    with pytest.raises(duckdb.Error):
        cm.write_customer_match(con, wh, storage, DAY, {"vip": "VIP"})
    assert cm.read_manifest(storage, DAY) == before
    with pytest.raises(ValueError, match="2026-11-09"):
        cm.write_customer_match(duckdb.connect(), wh, storage, "2026-11-09", SEGMENTS)


def test_files_on_s3_with_the_manifest(wh):
    with moto_s3_server() as moto:
        client = moto.client()
        client.create_bucket(Bucket="cm-files")
        storage = S3ExportStorage(client, "cm-files", prefix="exports")
        result = cm.write_customer_match(duckdb.connect(), wh, storage, DAY, {"vip": "VIP"})
        assert result.location == f"s3://cm-files/exports/customer_match/{DAY}/manifest.json"
        assert _lines(storage.get_bytes(f"customer_match/{DAY}/vip.csv"))[0] == "Email"
        assert json.loads(storage.get_bytes(f"customer_match/{DAY}/manifest.json"))["files"][0]["rows"] == 3


def test_the_dagster_asset_writes_the_toggled_segments(wh, tmp_path):
    catalog = tmp_path / "segments.yaml"
    catalog.write_text("""segments:
  - id: vip
    name: VIP
    rule: {field: order_count, op: ">=", value: 1}
    sync: {google_customer_match: true, meta: true}
  - id: other
    name: Other
    rule: {field: order_count, op: "=", value: 0}
    sync: {klaviyo: true}
""", encoding="utf-8")
    result = dg.materialize(
        [google_customer_match_files], partition_key=DAY,
        resources={"warehouse": WarehouseResource(root=str(wh.root)),
                   "exports": ExportsResource(local_dir=str(tmp_path / "exports"), s3=S3Resource()),
                   "segment_catalog": SegmentCatalogResource(path=str(catalog))})
    assert result.success
    (mat,) = result.asset_materializations_for_node("google_customer_match_files")
    assert mat.metadata["segments"].value == 1 and mat.metadata["rows"].value == 3
    assert (tmp_path / "exports" / "customer_match" / DAY / "vip.csv").exists()
    assert not (tmp_path / "exports" / "customer_match" / DAY / "other.csv").exists()
