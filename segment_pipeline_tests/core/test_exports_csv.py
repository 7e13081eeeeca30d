"""CSV by date range: RFC 4180 quoting, UTF-8, header, stable columns, ranges."""

from __future__ import annotations

import csv
import datetime as dt
import io

import pytest

from segment_pipeline.core.exports.csv_range import resolve_range, write_segment_csv
from segment_pipeline.core.exports.daily_feed import ExportInputError
from segment_pipeline.core.exports.storage import LocalExportStorage
from segment_pipeline.core.warehouse import Warehouse, connect
from segment_pipeline_tests.core.test_exports_warehouse_fixtures import DAY, profile, write_day

ODD = '"quoted, comma"@x.io'


@pytest.fixture(scope="module")
def wh(tmp_path_factory):
    wh = Warehouse(tmp_path_factory.mktemp("csv") / "warehouse")
    people = ["a@x.io", "b@x.io", ODD, "ü@x.io"]
    for offset in range(10):
        day = DAY - dt.timedelta(days=offset)
        members = ["a@x.io"] + (["b@x.io"] if offset in (2, 5) else []) + ([ODD, "ü@x.io"] if offset == 8 else [])
        write_day(wh, day, [profile(p) for p in people], {"seg/1": "S"}, {"seg/1": members})
    return wh


def test_past_7_days(wh, tmp_path):
    storage = LocalExportStorage(tmp_path / "exports")
    start, end = resolve_range(wh, "past_7_days")
    assert (start, end) == (DAY - dt.timedelta(days=6), DAY)
    result = write_segment_csv(connect(), wh, storage, "seg/1", start, end)
    raw = storage.get_bytes(result.key)
    assert raw.startswith(b"email,first_seen,last_seen\r\n")
    assert result.key == "csv/seg%2F1/2026-10-28_2026-11-03.csv" and result.rows == 2
    assert list(csv.reader(io.StringIO(raw.decode("utf-8"), newline=""))) == [
        ["email", "first_seen", "last_seen"],
        ["a@x.io", "2026-10-28", "2026-11-03"],
        ["b@x.io", "2026-10-29", "2026-11-01"],
    ]


def test_quoting_and_utf8(wh, tmp_path):
    storage = LocalExportStorage(tmp_path / "exports")
    start, end = resolve_range(wh, "past_30_days")
    result = write_segment_csv(connect(), wh, storage, "seg/1", start, end)
    raw = storage.get_bytes(result.key)
    assert b'"""quoted, comma""@x.io",2026-10-26,2026-10-26\r\n' in raw
    assert "ü@x.io,2026-10-26,2026-10-26\r\n".encode() in raw
    rows = list(csv.DictReader(io.StringIO(raw.decode("utf-8"), newline="")))
    assert [r["email"] for r in rows] == sorted(["a@x.io", "b@x.io", ODD, "ü@x.io"])


def test_custom_range_and_rerun_replaces(wh, tmp_path):
    storage = LocalExportStorage(tmp_path / "exports")
    start, end = resolve_range(wh, "custom", "2026-10-26", "2026-10-26")
    write_segment_csv(connect(), wh, storage, "seg/1", start, end)
    result = write_segment_csv(connect(), wh, storage, "seg/1", start, end)
    assert result.rows == 3 and storage.list_keys("csv") == [result.key]
    assert not storage.list_temporaries("csv")


def test_empty_range_gives_header_only(wh, tmp_path):
    storage = LocalExportStorage(tmp_path / "exports")
    result = write_segment_csv(connect(), wh, storage, "seg/1", dt.date(2026, 10, 20), dt.date(2026, 10, 30))
    assert result.rows == 4  # partitions start on 2026-10-25
    quiet = DAY - dt.timedelta(days=40)  # outside every other test's range
    write_day(wh, quiet, [profile("a@x.io")], {"seg/1": "S"}, {})  # the segment exists but is empty
    none = write_segment_csv(connect(), wh, storage, "seg/1", quiet, quiet)
    assert none.rows == 0 and storage.get_bytes(none.key) == b"email,first_seen,last_seen\r\n"


@pytest.mark.parametrize(
    "args, match",
    [
        (("past_week",), "date_range must be one of"),
        (("custom", "2026-11-03", None), "needs both start and end"),
        (("custom", "2026-11-03", "2026-11-01"), "start 2026-11-03 is after end 2026-11-01"),
        (("custom", "yesterday", "2026-11-01"), "start/end must be dates"),
        (("past_7_days", "2026-11-01", None), "takes no start/end"),
    ],
)
def test_bad_ranges_are_explained(wh, args, match):
    with pytest.raises(ValueError, match=match):
        resolve_range(wh, *args)


def test_unknown_segment(wh, tmp_path):
    with pytest.raises(ExportInputError, match="segment 'nope'"):
        write_segment_csv(connect(), wh, LocalExportStorage(tmp_path / "e"), "nope", DAY, DAY)
