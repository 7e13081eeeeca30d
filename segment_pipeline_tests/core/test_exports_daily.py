"""Daily NDJSON feed: reference format, identities without segments, identifier, latest pointer."""

from __future__ import annotations

import datetime as dt
import json

import pytest

from segment_pipeline.core.exports.daily_feed import (
    ExportInputError,
    daily_key,
    read_latest,
    verify_daily_feed,
    write_daily_feed,
)
from segment_pipeline.core.exports.storage import LocalExportStorage, S3ExportStorage
from segment_pipeline.core.warehouse import Warehouse, connect
from segment_pipeline_tests.core.test_exports_warehouse_fixtures import DAY, profile, write_day, write_rows
from segment_pipeline_tests.fakes.s3 import moto_s3_server

NAMES = {"s1": 'Nike "fans", EU', "s2": "Prospects", "s3": "géo-zone 東京"}


@pytest.fixture
def wh(tmp_path):
    wh = Warehouse(tmp_path / "warehouse")
    write_day(
        wh,
        DAY,
        [profile("jane@x.io"), profile("joe@x.io"), profile("ann@x.io")],
        NAMES,
        {"s1": ["jane@x.io", "joe@x.io"], "s2": ["jane@x.io"], "s3": ["joe@x.io"]},
    )
    return wh


def read_lines(storage, key) -> list[dict]:
    raw = storage.get_bytes(key).decode("utf-8")
    assert raw.endswith("\n")
    return [json.loads(line) for line in raw.splitlines()]


def test_feed_matches_reference_format(wh, tmp_path):
    storage = LocalExportStorage(tmp_path / "exports")
    result = write_daily_feed(connect(), wh, storage, DAY)
    assert result.key == "daily/nosto_segments/2026-11-03.json" and result.lines == 3
    assert (tmp_path / "exports/daily/nosto_segments/2026-11-03.json").is_file()
    rows = {r["email"]: r for r in read_lines(storage, result.key)}
    assert rows == {
        "jane@x.io": {"email": "jane@x.io", "nosto_segments": ['Nike "fans", EU', "Prospects"]},
        "joe@x.io": {"email": "joe@x.io", "nosto_segments": ['Nike "fans", EU', "géo-zone 東京"]},
        "ann@x.io": {"email": "ann@x.io", "nosto_segments": []},
    }
    first_line = storage.get_bytes(result.key).split(b"\n")[0].decode()
    assert list(json.loads(first_line)) == ["email", "nosto_segments"]  # key order as in the reference
    check = verify_daily_feed(connect(), wh, storage, DAY)
    assert check.passed, check.problems


def test_identifier_is_configurable(wh, tmp_path):
    storage = LocalExportStorage(tmp_path / "exports")
    write_daily_feed(connect(), wh, storage, DAY)
    result = write_daily_feed(connect(), wh, storage, DAY, identifier="acme_segments")
    assert result.key == "daily/acme_segments/2026-11-03.json"
    assert all(set(r) == {"email", "acme_segments"} for r in read_lines(storage, result.key))
    assert verify_daily_feed(connect(), wh, storage, DAY, identifier="acme_segments").passed
    with pytest.raises(ValueError, match="identifier"):
        write_daily_feed(connect(), wh, storage, DAY, identifier="../evil")


def test_empty_account_gives_an_empty_file(tmp_path):
    wh = Warehouse(tmp_path / "warehouse")
    storage = LocalExportStorage(tmp_path / "exports")
    result = write_daily_feed(connect(), wh, storage, DAY)
    assert result.lines == 0 and storage.get_bytes(result.key) == b""
    assert read_latest(storage, "nosto_segments")["key"] == result.key
    assert verify_daily_feed(connect(), wh, storage, DAY).passed


def test_latest_points_to_newest_complete_file_and_never_moves_back(wh, tmp_path):
    storage = LocalExportStorage(tmp_path / "exports")
    later = DAY + dt.timedelta(days=1)
    write_day(wh, later, [profile("jane@x.io")], NAMES, {"s2": ["jane@x.io"]})
    write_daily_feed(connect(), wh, storage, later)
    older = write_daily_feed(connect(), wh, storage, DAY)  # back-fill of an older day
    assert not older.latest_updated
    latest = read_latest(storage, "nosto_segments")
    assert latest["date"] == "2026-11-04" and latest["lines"] == 1
    assert storage.get_bytes(latest["key"]).count(b"\n") == latest["lines"]


def test_rerun_replaces_the_days_file(wh, tmp_path):
    storage = LocalExportStorage(tmp_path / "exports")
    write_daily_feed(connect(), wh, storage, DAY)
    write_day(wh, DAY, [profile("solo@x.io")], NAMES, {})
    result = write_daily_feed(connect(), wh, storage, DAY)
    assert read_lines(storage, result.key) == [{"email": "solo@x.io", "nosto_segments": []}]
    assert storage.list_keys("daily") == ["daily/nosto_segments/2026-11-03.json", "daily/nosto_segments/latest"]
    assert not storage.list_temporaries("daily")


def test_membership_of_an_unknown_segment_is_a_clear_error(wh, tmp_path):
    write_rows(wh, "memberships", DAY, [{"segment_id": "ghost-seg", "identity_id": "x", "email": "x@x.io"}])
    storage = LocalExportStorage(tmp_path / "exports")
    with pytest.raises(ExportInputError, match="ghost-seg"):
        write_daily_feed(connect(), wh, storage, DAY)
    assert storage.list_keys("daily") == []  # nothing half-written


def test_check_detects_a_broken_file(wh, tmp_path):
    storage = LocalExportStorage(tmp_path / "exports")
    write_daily_feed(connect(), wh, storage, DAY)
    key = daily_key("nosto_segments", DAY)
    good = storage.get_bytes(key)
    storage.put_bytes(key, good + b'{"email": "x@x.io", "nosto_segments": ["Nope"]}\n')
    check = verify_daily_feed(connect(), wh, storage, DAY)
    assert not check.passed and "4 lines for 3 identities" in check.problems[0]
    storage.put_bytes(key, good.replace(b"Prospects", b"Prospectz"))
    assert "unknown segment name(s): ['Prospectz']" in verify_daily_feed(connect(), wh, storage, DAY).problems
    storage.put_bytes(key, good[:-10] + b"\n")
    assert "invalid JSON" in verify_daily_feed(connect(), wh, storage, DAY).problems[0]


def test_feed_on_s3(wh):
    with moto_s3_server() as moto:
        bucket = moto.new_bucket()
        storage = S3ExportStorage(moto.client(), bucket, prefix="exports")
        result = write_daily_feed(connect(), wh, storage, DAY)
        assert result.location == f"s3://{bucket}/exports/daily/nosto_segments/2026-11-03.json"
        assert moto.keys(bucket) == ["exports/daily/nosto_segments/2026-11-03.json", "exports/daily/nosto_segments/latest"]
        assert len(moto.get(bucket, "exports/daily/nosto_segments/2026-11-03.json").splitlines()) == 3
        assert verify_daily_feed(connect(), wh, storage, DAY).passed
