"""Raw ingestion: validation, quarantine with file and line, unreadable files, idempotency."""

from __future__ import annotations

import duckdb
import pytest

from segment_pipeline.core.ingest import LandingFileError, ingest_day
from segment_pipeline.core.sources import SourceOptions
from segment_pipeline.core.warehouse import Warehouse, connect
from segment_pipeline_tests.landing import event, profile, write_csv, write_ndjson, write_parquet

DAY = "2026-11-03"


@pytest.fixture
def wh(tmp_path):
    return Warehouse(tmp_path / "wh")


def rows(wh: Warehouse, table: str, cols: str = "*") -> list[tuple]:
    return duckdb.connect().execute(f"SELECT {cols} FROM {wh.scan(table)} ORDER BY ALL").fetchall()


def test_ndjson_profiles_bad_rows_are_quarantined_with_reason_file_and_line(tmp_path, wh):
    path = write_ndjson(tmp_path, "profiles", DAY, [
        profile("  Anna.Schmidt@Example.COM ", "2026-11-03T08:00:00Z", country="de"),      # 1 valid
        profile("not-an-email", "2026-11-03T08:00:00Z"),                                    # 2
        "",                                                                                 # 3 blank: skipped
        profile("bob@example.com", "yesterday"),                                            # 4
        '{"email": "x@y.com", "first_',                                                     # 5
        "[1, 2, 3]",                                                                        # 6
        {"updated_at": "2026-11-03T08:00:00Z"},                                             # 7 no email
        profile("carl@example.com", "2026-11-03T09:00:00Z", dob="1990-02-30"),              # 8
        profile("dora@example.com", "2026-11-03T09:00:00+02:00", created_at="2026-11-01T00:00:00Z"),  # 9 valid
        profile("eve@example.com", "2026-11-05T09:00:00Z"),                                 # 10 future
    ])
    report = ingest_day(connect(preserve_order=True), wh, tmp_path, "profiles", DAY)
    assert (report.rows_read, report.rows_valid, report.rows_quarantined) == (9, 2, 7)
    quarantined = rows(wh, "quarantine_profiles", "source_line, reason, source_file")
    assert [(line, reason) for line, reason, _ in quarantined] == [
        (2, "email: no @"),
        (4, "updated_at: not a valid ISO 8601 timestamp"),
        (5, "line is not valid JSON"),
        (6, "line is not a JSON object"),
        (7, "missing required field email"),
        (8, "dob: not a valid date (YYYY-MM-DD)"),
        (10, "updated_at: timestamp outside the plausible range (2000-01-01 .. end of the landing day)"),
    ]
    assert {f for _, _, f in quarantined} == {str(path)}
    raw_texts = rows(wh, "quarantine_profiles", "raw")
    assert ('{"email": "x@y.com", "first_',) in raw_texts  # the original text is kept, nothing lost
    valid = rows(wh, "raw_profiles", "email, email_raw, country, updated_at::VARCHAR, source_line")
    assert valid == [
        ("anna.schmidt@example.com", "  Anna.Schmidt@Example.COM ", "DE", "2026-11-03 08:00:00", 1),
        ("dora@example.com", "dora@example.com", None, "2026-11-03 07:00:00", 9),  # offset converted to UTC
    ]
    assert report.reasons["line is not valid JSON"] == 1


def test_event_validation_and_duplicate_delivery(tmp_path, wh):
    write_ndjson(tmp_path, "events", DAY, [
        event("e1", "a@example.com", "order", "2026-11-03T10:00:00Z", price=10, quantity=2, revenue=20),
        event("e1", "a@example.com", "order", "2026-11-03T10:00:00Z", price=10, quantity=2, revenue=20),
        event("e2", "a@example.com", "teleport", "2026-11-03T10:00:00Z"),
        event("e3", "a@example.com", "add_to_cart", "2026-11-03T10:00:00Z", quantity="three"),
        event("e4", "a@example.com", "order", "2026-11-03T10:00:00Z", price="abc"),
        event("e5", "a@example.com", "order", "2026-11-03T10:00:00Z", revenue=-5),
        {"email": "a@example.com", "event_type": "page_view", "occurred_at": "2026-11-03T10:00:00Z"},
        event("e6", "a@example.com", "page_view", "2026-13-45T00:00:00Z"),
        event("e7", "A@Example.com", "page_view", "2026-11-02T23:00:00Z", utm_source="instagram"),
    ])
    report = ingest_day(connect(preserve_order=True), wh, tmp_path, "events", DAY)
    assert (report.rows_valid, report.rows_quarantined) == (2, 7)
    reasons = dict(rows(wh, "quarantine_events", "source_line, reason"))
    assert reasons[2] == "duplicate event_id (an earlier row of this day has it)"
    assert reasons[3].startswith("event_type: unknown value")
    assert reasons[4] == "quantity: not a non-negative integer"
    assert reasons[5] == "price: not a number"
    assert reasons[6] == "revenue: negative"
    assert reasons[7] == "missing required field event_id"
    assert reasons[8] == "occurred_at: not a valid ISO 8601 timestamp"
    assert rows(wh, "raw_events", "event_id, email, quantity, revenue") == [
        ("e1", "a@example.com", 2, 20.0),
        ("e7", "a@example.com", None, None),  # a late event from the day before is fine
    ]


def test_csv_and_parquet_landing_files(tmp_path, wh):
    header = ["email", "updated_at", "first_name", "country"]
    write_csv(tmp_path, "profiles", DAY, header, [
        ["a@example.com", "2026-11-03T08:00:00Z", "Ann, \"the\" first", "DE"],
        ["bad-email", "2026-11-03T08:00:00Z", "", ""],
        ["b@example.com", "2026-11-03T08:00:00Z", "", "US"],
    ])
    write_parquet(tmp_path, "profiles", DAY, [
        {"email": "c@example.com", "updated_at": "2026-11-03T08:00:00Z", "first_name": "Cleo", "country": "FR"},
        {"email": "d@example.com", "updated_at": "not a time", "first_name": "Dan", "country": "FR"},
    ])
    report = ingest_day(connect(preserve_order=True), wh, tmp_path, "profiles", DAY)
    assert (report.rows_valid, report.rows_quarantined) == (3, 2)
    assert rows(wh, "raw_profiles", "email, first_name, country") == [
        ("a@example.com", 'Ann, "the" first', "DE"),
        ("b@example.com", None, "US"),
        ("c@example.com", "Cleo", "FR"),
    ]
    quarantined = rows(wh, "quarantine_profiles", "source_file, source_line, reason")
    assert [(f.rsplit(".", 1)[-1], line, r) for f, line, r in quarantined] == [
        ("csv", 3, "email: no @"),
        ("parquet", 2, "updated_at: not a valid ISO 8601 timestamp"),
    ]


def test_unparsable_csv_rows_are_quarantined_not_dropped(tmp_path, wh):
    path = tmp_path / "profiles" / f"date={DAY}" / "p.csv"
    path.parent.mkdir(parents=True)
    path.write_text(
        "email,updated_at,country\n"
        "a@example.com,2026-11-03T08:00:00Z,DE\n"
        "b@example.com,2026-11-03T08:00:00Z,US,EXTRA,COLUMNS\n"
        "c@example.com,2026-11-03T08:00:00Z,FR\n"
        "not-an-email,2026-11-03T08:00:00Z,FR\n"
        "d@example.com,2026-11-03T08:00:00Z,FR\n"
    )
    report = ingest_day(connect(preserve_order=True), wh, tmp_path, "profiles", DAY)
    assert report.rows_read == 5
    assert rows(wh, "raw_profiles", "email, source_line") == [("a@example.com", 2), ("c@example.com", 4), ("d@example.com", 6)]
    (line, reason, raw), (line2, reason2, _) = rows(wh, "quarantine_profiles", "source_line, reason, raw")
    assert line == 3 and reason.startswith("unparsable CSV row") and "EXTRA" in raw
    assert (line2, reason2) == (5, "email: no @")  # numbered past the rejected line


@pytest.mark.parametrize(
    ("name", "content", "fragment"),
    [
        ("garbage.ndjson", b"this is not json\nneither is this\n", "not NDJSON"),
        ("broken.parquet", b"PAR1 definitely not parquet", "cannot be read as Parquet"),
        ("noemail.csv", b"name,updated_at\nx,2026-11-03T00:00:00Z\n", "lacks required column(s) ['email']"),
        ("data.xlsx", b"PK\x03\x04", "unsupported landing file type"),
    ],
)
def test_unreadable_file_fails_the_day_naming_the_file_and_writes_nothing(tmp_path, wh, name, content, fragment):
    good = write_ndjson(tmp_path, "profiles", DAY, [profile("a@example.com", "2026-11-03T08:00:00Z")])
    con = connect(preserve_order=True)
    ingest_day(con, wh, tmp_path, "profiles", DAY)
    before = {p: p.read_bytes() for p in (tmp_path / "wh").rglob("*.parquet")}
    bad = good.parent / name
    bad.write_bytes(content)
    with pytest.raises(LandingFileError) as err:
        ingest_day(con, wh, tmp_path, "profiles", DAY)
    assert str(bad) in str(err.value) and fragment in str(err.value)
    after = {p: p.read_bytes() for p in (tmp_path / "wh").rglob("*") if p.is_file()}
    assert after == before  # the previous good partition is untouched, no partial or temp files


def test_rerun_replaces_instead_of_appending_and_late_files_are_picked_up(tmp_path, wh):
    write_ndjson(tmp_path, "events", DAY, [event("e1", "a@example.com", "page_view", "2026-11-03T10:00:00Z")])
    con = connect(preserve_order=True)
    ingest_day(con, wh, tmp_path, "events", DAY)
    ingest_day(con, wh, tmp_path, "events", DAY)
    assert len(rows(wh, "raw_events")) == 1
    write_ndjson(tmp_path, "events", DAY, [event("e2", "b@example.com", "page_view", "2026-11-03T11:00:00Z")],
                 name="late-delivery.ndjson")
    (tmp_path / "events" / f"date={DAY}" / "still-writing.ndjson.part").write_text("{")
    report = ingest_day(con, wh, tmp_path, "events", DAY)
    assert report.rows_valid == 2 and len(report.files) == 2
    assert [r[0] for r in rows(wh, "raw_events", "event_id")] == ["e1", "e2"]


def test_days_without_files_or_with_empty_files_give_empty_partitions(tmp_path, wh):
    (tmp_path / "events" / f"date={DAY}").mkdir(parents=True)
    (tmp_path / "events" / f"date={DAY}" / "empty.ndjson").write_bytes(b"")
    con = connect(preserve_order=True)
    assert ingest_day(con, wh, tmp_path, "events", DAY).rows_read == 0
    assert ingest_day(con, wh, tmp_path, "profiles", DAY).rows_read == 0
    assert wh.has_partition("raw_events", DAY) and wh.has_partition("quarantine_profiles", DAY)
    assert rows(wh, "raw_events") == []


def test_invalid_utf8_quarantines_the_line_not_the_file(tmp_path, wh):
    path = tmp_path / "events" / f"date={DAY}" / "e.ndjson"
    path.parent.mkdir(parents=True)
    good = b'{"event_id": "e1", "email": "a@example.com", "event_type": "page_view", "occurred_at": "2026-11-03T10:00:00Z"}'
    bad = b'{"event_id": "e2", "email": "b@example.com", "event_type": "page_view", "occurred_at": "2026-11-03T10:00:00Z", "brand": "\xff\xfe"}'
    path.write_bytes(good + b"\n" + bad + b"\n")
    report = ingest_day(connect(preserve_order=True), wh, tmp_path, "events", DAY)
    assert (report.rows_valid, report.rows_quarantined) == (1, 1)
    assert rows(wh, "quarantine_events", "source_line, reason") == [(2, "line is not valid UTF-8")]


def test_ndjson_explicit_null_or_empty_string_clears_and_a_missing_key_keeps(tmp_path, wh):
    write_ndjson(tmp_path, "profiles", DAY, [
        {"email": "a@example.com", "updated_at": "2026-11-03T08:00:00Z", "country": None, "phone": "  ", "city": "Rome"},
        {"email": "b@example.com", "updated_at": "2026-11-03T08:00:00Z", "created_at": None, "dob": ""},
        {"email": "c@example.com", "updated_at": "2026-11-03T08:00:00Z"},
    ])
    ingest_day(connect(preserve_order=True), wh, tmp_path, "profiles", DAY)
    assert rows(wh, "raw_profiles", "email, cleared, city") == [
        ("a@example.com", ["phone", "country"], "Rome"),  # in CLEARABLE order
        ("b@example.com", ["dob", "created_at"], None),
        ("c@example.com", None, None),  # nothing given, nothing cleared
    ]


def test_csv_empty_cells_clear_only_when_the_source_says_so(tmp_path, wh):
    write_csv(tmp_path, "profiles", DAY, ["email", "updated_at", "country", "city"], [
        ["a@example.com", "2026-11-03T08:00:00Z", "", "Rome"],
        ["b@example.com", "2026-11-03T08:00:00Z", "", ""],
    ])
    con = connect(preserve_order=True)
    ingest_day(con, wh, tmp_path, "profiles", DAY)
    assert rows(wh, "raw_profiles", "email, cleared") == [("a@example.com", None), ("b@example.com", None)]
    ingest_day(con, wh, tmp_path, "profiles", DAY, SourceOptions(csv_empty_cell="clear"))
    # only columns the file has: first_name, phone, ... are not in the header and are kept
    assert rows(wh, "raw_profiles", "email, cleared") == [("a@example.com", ["country"]), ("b@example.com", ["country", "city"])]
