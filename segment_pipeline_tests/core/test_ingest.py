"""Raw ingestion: validation, quarantine with file and line, unreadable files, idempotency."""

from __future__ import annotations

import gzip

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
        (10, "updated_at: timestamp outside the plausible range "
             "(2000-01-01 .. end of the landing day (UTC) + timestamp_tolerance_hours 15 h)"),
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
    assert reasons[3] == "event: undeclared event 'teleport' (declared: add_to_cart, order, page_view, product_view)"
    assert reasons[4] == "quantity: not an integer"
    assert reasons[5] == "price: not a number"
    assert reasons[6] == "revenue: below the minimum 0"  # a model bound (data/model.yaml)
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
        ("noemail.csv", b"name,updated_at\nx,2026-11-03T00:00:00Z\n", "lacks the column 'email'"),
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


# -- issue 10: real-world files -------------------------------------------------------------------


def write_bytes(landing, kind: str, name: str, data: bytes, day: str = DAY):
    path = landing / kind / f"date={day}" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def ev_line(event_id: str, extra: str = "", occurred_at: str = "2026-11-03T10:00:00Z") -> str:
    return (f'{{"event_id": "{event_id}", "email": "a@example.com", "event_type": "order", '
            f'"occurred_at": "{occurred_at}"{extra}}}')


def test_numbers_that_do_not_fit_their_column_quarantine_the_row_naming_the_field(tmp_path, wh):
    write_ndjson(tmp_path, "events", DAY, [
        ev_line("ok", ', "price": 12.345, "quantity": 3, "revenue": "37.04"'),   # 1 valid
        ev_line("nan", ', "price": "NaN"'),                                      # 2
        ev_line("inf", ', "price": Infinity'),                                   # 3
        ev_line("big", ', "price": 1e400'),                                      # 4 no finite DOUBLE
        ev_line("e20", ', "price": 1e20'),                                       # 5 beyond DECIMAL(18,2)
        ev_line("q30", ', "quantity": 1e30'),                                    # 6 beyond INTEGER
        ev_line("rev", ', "revenue": "-Infinity"'),                              # 7
        ev_line("e15", ', "revenue": 2e15'),                                     # 8 fits, implausible
        ev_line("q2m", ', "quantity": 2000000'),                                 # 9
        ev_line("ts", "", occurred_at="294277-01-01T00:00:00Z"),                 # 10 beyond TIMESTAMP
    ])
    report = ingest_day(connect(preserve_order=True), wh, tmp_path, "events", DAY)
    assert (report.rows_valid, report.rows_quarantined) == (1, 9)
    assert rows(wh, "raw_events", "event_id, price::VARCHAR, quantity, revenue::VARCHAR") == [
        ("ok", "12.35", 3, "37.04"),
    ]
    assert rows(wh, "quarantine_events", "source_line, reason") == [
        (2, "price: not a number"),
        (3, "price: not a number"),
        (4, "price: does not fit DECIMAL(18,2)"),
        (5, "price: does not fit DECIMAL(18,2)"),
        (6, "quantity: does not fit BIGINT"),
        (7, "revenue: not a number"),
        (8, "revenue: implausibly large (at least 1e+15)"),
        (9, "quantity: above the maximum 1000000"),  # a model bound (data/model.yaml)
        (10, "occurred_at: not a valid ISO 8601 timestamp"),
    ]


def test_typed_values_of_profiles_and_of_typed_parquet_columns_are_guarded_too(tmp_path, wh):
    write_ndjson(tmp_path, "profiles", DAY, [
        profile("a@example.com", "2026-11-03T08:00:00Z", dob="1990-02-01"),
        profile("b@example.com", "2026-11-03T08:00:00Z", dob="99999-01-01"),
        profile("c@example.com", "2026-11-03T08:00:00Z", created_at="294277-01-01T00:00:00Z"),
        profile("d@example.com", "9999-12-31T23:59:59Z"),
    ])
    report = ingest_day(connect(preserve_order=True), wh, tmp_path, "profiles", DAY)
    assert (report.rows_valid, report.rows_quarantined) == (1, 3)
    assert [r for _, r in rows(wh, "quarantine_profiles", "source_line, reason")] == [
        "dob: outside the plausible range (1900-01-01 .. 2199-12-31)",
        "created_at: not a valid ISO 8601 timestamp",
        "updated_at: timestamp outside the plausible range "
        "(2000-01-01 .. end of the landing day (UTC) + timestamp_tolerance_hours 15 h)",
    ]
    # a Parquet delivery with real DOUBLE columns: NaN, inf and 1e20 as values, not text
    path = tmp_path / "events" / f"date={DAY}" / "e.parquet"
    path.parent.mkdir(parents=True)
    duckdb.connect().execute(f"""
        COPY (SELECT 'e' || i AS event_id, 'a@example.com' AS email, 'order' AS event_type,
                     TIMESTAMP '2026-11-03 10:00:00' AS occurred_at, p AS price, q AS quantity
              FROM (VALUES (1, 9.5, 1.0), (2, 'nan'::DOUBLE, 1.0), (3, 'inf'::DOUBLE, 1.0), (4, 1e20, 1.0),
                           (5, 1.0, 1e30)) t(i, p, q))
        TO '{path}' (FORMAT parquet)""")
    report = ingest_day(connect(preserve_order=True), wh, tmp_path, "events", DAY)
    assert rows(wh, "raw_events", "event_id, price::VARCHAR, quantity") == [("e1", "9.50", 1)]
    assert rows(wh, "quarantine_events", "source_line, reason") == [
        (2, "price: not a number"), (3, "price: not a number"), (4, "price: does not fit DECIMAL(18,2)"),
        (5, "quantity: does not fit BIGINT"),
    ]


def test_control_characters_quarantine_the_line_and_ndjson_errors_speak_of_ndjson(tmp_path, wh):
    lines = [
        ev_line("e1").encode(),
        ev_line("e2", ', "brand": "Ac\x1fme"').encode(),             # unit separator inside a string
        ev_line("e3", ', "brand": "A\x00"').encode(),                # NUL inside a string
        ev_line("e4").encode() + b"\x1f",                            # after the object
        ev_line("e5", ', "brand": "tab\there"').encode(),            # a raw tab in a string is invalid too
        ev_line("e6", ',\t"brand": "x"').encode(),                   # a tab between tokens is fine
        b'{"event_id": "e7", "email": "nul\\u0000@example.com", "event_type": "order", '
        b'"occurred_at": "2026-11-03T10:00:00Z"}',                   # an escaped NUL in email: invalid email
    ]
    write_bytes(tmp_path, "events", "e.ndjson", b"\n".join(lines) + b"\n")
    report = ingest_day(connect(preserve_order=True), wh, tmp_path, "events", DAY)
    assert [r[0] for r in rows(wh, "raw_events", "event_id") if r[0] != "e7"] == ["e1", "e6"]
    quarantined = rows(wh, "quarantine_events", "source_line, reason")
    assert quarantined[:4] == [
        (2, "invalid JSON: control character"),
        (3, "invalid JSON: control character"),
        (4, "invalid JSON: control character"),
        (5, "line is not valid JSON"),
    ]
    assert report.rows_read == 7  # the email with an escaped NUL crashes nothing (its validity: the email rule)
    # a file of nothing but such lines fails the day, and the error speaks of NDJSON, not CSV
    bad = write_bytes(tmp_path, "events", "f.ndjson", b"\x1f\x1f\n\x00,\x1f\n")
    with pytest.raises(LandingFileError) as err:
        ingest_day(connect(preserve_order=True), wh, tmp_path, "events", DAY)
    assert str(bad) in str(err.value) and "NDJSON" in str(err.value) and "CSV" not in str(err.value)


def test_a_json_object_with_a_key_twice_is_quarantined_not_resolved(tmp_path, wh):
    write_ndjson(tmp_path, "profiles", DAY, [
        '{"email": "a@example.com", "email": "b@example.com", "updated_at": "2026-11-03T08:00:00Z"}',
        '{"email": "c@example.com", "updated_at": "2026-11-03T08:00:00Z", "note": 1, "note": 2}',
        '{"email": "d@example.com", "updated_at": "2026-11-03T08:00:00Z", "country": null, "extra": {"k": 1, "k": 2}}',
        '{"email": "e@example.com", "updated_at": "2026-11-03T08:00:00Z", "phone": null, "unknown": 1}',
    ])
    report = ingest_day(connect(preserve_order=True), wh, tmp_path, "profiles", DAY)
    assert (report.rows_valid, report.rows_quarantined) == (2, 2)
    assert rows(wh, "quarantine_profiles", "source_line, reason") == [
        (1, 'invalid JSON: duplicate key "email"'), (2, 'invalid JSON: duplicate key "note"'),
    ]
    assert [r[0] for r in rows(wh, "raw_profiles", "email")] == ["d@example.com", "e@example.com"]


LATIN = "email,updated_at,first_name,city\n"


@pytest.mark.parametrize("filler_rows", [0, 2000], ids=["bad-byte-in-first-8kb", "bad-byte-after-100kb"])
def test_bytes_invalid_in_the_encoding_quarantine_their_row_wherever_they_are(tmp_path, wh, filler_rows):
    filler = "".join(f"f{i}@example.com,2026-11-03T08:00:00Z,Fill,Berlin\n" for i in range(filler_rows))
    data = (LATIN + filler).encode() + "m@example.com,2026-11-03T08:00:00Z,Müller,Köln\n".encode("cp1252") + \
        b"z@example.com,2026-11-03T08:00:00Z,Zoe,Ulm\n"
    assert (data.index(b"\xfc") < 8192) == (filler_rows == 0)
    write_bytes(tmp_path, "profiles", "p.csv", data)
    report = ingest_day(connect(preserve_order=True), wh, tmp_path, "profiles", DAY)
    assert (report.rows_valid, report.rows_quarantined) == (filler_rows + 1, 1)
    ((line, reason, raw),) = rows(wh, "quarantine_profiles", "source_line, reason, raw")
    assert (line, reason) == (filler_rows + 2, "first_name: not valid UTF-8")
    assert "m@example.com" in raw  # the row is kept, with the undecodable bytes replaced
    # NDJSON alike
    write_bytes(tmp_path, "events", "e.ndjson", (ev_line("e1") + "\n").encode() * max(filler_rows, 1)
                + ev_line("e2", ', "brand": "Müller"').encode("cp1252") + b"\n")
    report = ingest_day(connect(preserve_order=True), wh, tmp_path, "events", DAY)
    assert rows(wh, "quarantine_events", "source_line, reason")[-1] == (max(filler_rows, 1) + 1, "line is not valid UTF-8")


@pytest.mark.parametrize(("encoding", "bom", "declared"), [
    ("cp1252", b"", "cp1252"),
    ("latin-1", b"", "latin-1"),
    ("utf-16-le", b"\xff\xfe", None),          # a byte-order mark needs no declaration
    ("utf-16-be", b"\xfe\xff", "cp1252"),      # and wins over the declared encoding
    ("utf-8", b"\xef\xbb\xbf", None),
])
def test_a_source_declares_its_encoding_and_a_bom_is_honoured(tmp_path, wh, monkeypatch, encoding, bom, declared):
    sources = tmp_path / "sources.yaml"
    enc = f"encoding: {declared}, " if declared else ""  # without one: the default, UTF-8
    sources.write_text(f"sources:\n  profiles: {{{enc}kind: profiles}}\n"
                       f"  events: {{{enc}kind: events, event: event_type}}\n")
    monkeypatch.setenv("SEGMENT_PIPELINE_SOURCES", str(sources))
    text = (LATIN.replace("\n", "\r\n")  # a Windows export: CRLF line ends, one field over two lines
            + "m@example.com,2026-11-03T08:00:00Z,Müller,\"Köln\r\nSüd\"\r\nbad,2026-11-03T08:00:00Z,Jörg,Köln\r\n")
    write_bytes(tmp_path, "profiles", "p.csv", bom + text.encode(encoding))
    report = ingest_day(connect(preserve_order=True), wh, tmp_path, "profiles", DAY)
    assert (report.rows_valid, report.rows_quarantined) == (1, 1)
    assert rows(wh, "raw_profiles", "first_name, city, source_line") == [("Müller", "Köln\r\nSüd", 2)]
    assert rows(wh, "quarantine_profiles", "source_line, reason") == [(4, "email: no @")]
    line = ev_line("e1", ', "brand": "Müller"') + "\n" + ev_line("e2", ', "brand": "Köln"', occurred_at="x") + "\n"
    write_bytes(tmp_path, "events", "e.ndjson", bom + line.encode(encoding))
    ingest_day(connect(preserve_order=True), wh, tmp_path, "events", DAY)
    assert rows(wh, "raw_events", "brand, source_line") == [("Müller", 1)]
    assert rows(wh, "quarantine_events", "source_line, reason") == [(2, "occurred_at: not a valid ISO 8601 timestamp")]


def test_csv_source_line_is_the_physical_line_where_the_record_starts(tmp_path, wh):
    write_bytes(tmp_path, "profiles", "p.csv", (
        "email,updated_at,city\n"                                   # 1
        'a@example.com,2026-11-03T08:00:00Z,"Line one\n'           # 2  a record over two lines
        'line two"\n'                                               # 3
        "bad-email,2026-11-03T08:00:00Z,Ulm\n"                      # 4
        "\n"                                                        # 5  blank
        'b@example.com,2026-11-03T08:00:00Z,"He said ""hi""\n'     # 6  escaped quotes and a line break
        '"\n'                                                       # 7
        'c@example.com,2026-11-03T08:00:00Z,"x\ny",EXTRA\n'         # 8  rejected: too many columns
        "d@example.com,2026-11-03T08:00:00Z,Köln\n"                 # 10
        "e@example.com,2026-11-03T08:00:00Z,too,many,columns\n"     # 11 rejected
        "f@example.com,2026-11-03T08:00:00Z,Bonn\n"                 # 12
        'g@example.com,2026-11-03T08:00:00Z,5 11" tall\n'           # 13 a quote inside an unquoted field
        "bad2,2026-11-03T08:00:00Z,Ulm\n"                           # 14
        'h@example.com,2026-11-03T08:00:00Z,"last\nrow"'            # 15 no line feed at the end
    ).encode())
    report = ingest_day(connect(preserve_order=True), wh, tmp_path, "profiles", DAY)
    assert (report.rows_valid, report.rows_quarantined) == (6, 4)
    assert rows(wh, "raw_profiles", "email, source_line") == [
        ("a@example.com", 2), ("b@example.com", 6), ("d@example.com", 10), ("f@example.com", 12),
        ("g@example.com", 13), ("h@example.com", 15),
    ]
    quarantined = rows(wh, "quarantine_profiles", "source_line, reason")
    assert [(line, reason.split(":")[0]) for line, reason in quarantined] == [
        (4, "email"), (8, "unparsable CSV row"), (11, "unparsable CSV row"), (14, "email"),
    ]


def _zstd(data: bytes) -> bytes:
    import zstandard

    return zstandard.ZstdCompressor().compress(data)


@pytest.mark.parametrize(("name", "compress"), [
    ("e.ndjson.gz", gzip.compress), ("e.jsonl.gz", gzip.compress), ("e.json.gz", gzip.compress),
    ("e.ndjson.zst", _zstd), ("e.csv.gz", gzip.compress), ("e.csv.zst", _zstd),
])
def test_compressed_deliveries_are_read_with_lines_of_the_decompressed_text(tmp_path, wh, name, compress):
    if ".csv" in name:
        text = ("event_id,email,event_type,occurred_at,product_name\n"
                'e1,a@example.com,order,2026-11-03T10:00:00Z,"two\nlines"\n'
                "e2,a@example.com,order,yesterday,x\n"
                "e3,a@example.com,order,2026-11-03T10:00:00Z,x\n")
        bad_line, last_line = 4, 5
    else:
        text = ev_line("e1") + "\n\n" + ev_line("e2", occurred_at="yesterday") + "\n" + ev_line("e3") + "\n"
        bad_line, last_line = 3, 4
    # two concatenated members/frames, as `cat a.gz b.gz` or a streaming writer produces
    cut = text.index("\n", len(text) // 2) + 1
    write_bytes(tmp_path, "events", name, compress(text[:cut].encode()) + compress(text[cut:].encode()))
    report = ingest_day(connect(preserve_order=True), wh, tmp_path, "events", DAY)
    assert (report.rows_valid, report.rows_quarantined) == (2, 1)
    assert rows(wh, "raw_events", "event_id, source_line") == [("e1", 2 if ".csv" in name else 1), ("e3", last_line)]
    assert rows(wh, "quarantine_events", "source_line, reason") == [
        (bad_line, "occurred_at: not a valid ISO 8601 timestamp"),
    ]
    assert not list((wh.root / "_staging").iterdir())  # decompressed copies are removed


@pytest.mark.parametrize(("name", "content", "fragment"), [
    ("e.ndjson.gz", gzip.compress((ev_line("e1") + "\n").encode() * 2000)[:-40], "corrupt or truncated gzip"),
    ("e.ndjson.gz", b"not gzip at all", "corrupt or truncated gzip"),
    ("e.csv.zst", _zstd(b"event_id,email\n" * 5000)[:-20], "corrupt or truncated zstd"),
    ("e.ndjson.zst", b"\x28\xb5\x2f\xfd garbage", "corrupt or truncated zstd"),
    ("e.parquet.gz", b"\x1f\x8b", "unsupported landing file type '.parquet.gz'"),
    ("e.txt.gz", b"\x1f\x8b", "unsupported landing file type"),
])
def test_a_corrupt_or_truncated_archive_fails_the_day_naming_the_file(tmp_path, wh, name, content, fragment):
    write_ndjson(tmp_path, "events", DAY, [event("e0", "a@example.com", "order", "2026-11-03T10:00:00Z")])
    bad = write_bytes(tmp_path, "events", name, content)
    with pytest.raises(LandingFileError) as err:
        ingest_day(connect(preserve_order=True), wh, tmp_path, "events", DAY)
    assert str(bad) in str(err.value) and fragment in str(err.value)
    assert not wh.has_partition("raw_events", DAY)
    assert not list((wh.root / "_staging").iterdir()) if (wh.root / "_staging").exists() else True


def test_local_day_files_west_of_utc_keep_their_evening_events(tmp_path, wh):
    write_ndjson(tmp_path, "events", DAY, [
        event("us", "a@example.com", "order", "2026-11-03T21:30:00-05:00", revenue=10),   # 02:30 UTC next day
        event("utc12", "b@example.com", "order", "2026-11-03T23:59:00-12:00"),           # the last real zone
        event("kiribati", "c@example.com", "order", "2026-11-03T00:00:00+14:00"),        # the first real zone
        event("future", "d@example.com", "order", "2026-11-05T12:00:00Z"),               # 2 days ahead
    ])
    report = ingest_day(connect(preserve_order=True), wh, tmp_path, "events", DAY)
    assert rows(wh, "raw_events", "event_id, occurred_at::VARCHAR") == [
        ("kiribati", "2026-11-02 10:00:00"), ("us", "2026-11-04 02:30:00"), ("utc12", "2026-11-04 11:59:00"),
    ]
    assert report.reasons == {
        "occurred_at: timestamp outside the plausible range "
        "(2000-01-01 .. end of the landing day (UTC) + timestamp_tolerance_hours 15 h)": 1,
    }
    # the event counts from the UTC day on which it happened
    from segment_pipeline.core.profiles import build_profiles

    con = connect(preserve_order=True)
    for day in (DAY, "2026-11-04"):
        build_profiles(con, wh, day)
    counts = dict(con.execute(
        f"SELECT CAST(date AS VARCHAR), order_count FROM {wh.scan('profiles')} WHERE email = 'a@example.com'"
    ).fetchall())
    assert counts.get(DAY, 0) == 0 and counts["2026-11-04"] == 1


def test_the_timestamp_tolerance_is_a_per_source_setting(tmp_path, wh, monkeypatch):
    sources = tmp_path / "sources.yaml"
    sources.write_text("sources:\n  events: {kind: events, timestamp_tolerance_hours: 1, event: event_type}\n")
    monkeypatch.setenv("SEGMENT_PIPELINE_SOURCES", str(sources))
    write_ndjson(tmp_path, "events", DAY, [
        event("early", "a@example.com", "order", "2026-11-04T00:30:00Z"),
        event("us", "a@example.com", "order", "2026-11-03T21:30:00-05:00"),
    ])
    ingest_day(connect(preserve_order=True), wh, tmp_path, "events", DAY)
    assert rows(wh, "raw_events", "event_id") == [("early",)]
    assert rows(wh, "quarantine_events", "reason") == [
        ("occurred_at: timestamp outside the plausible range "
         "(2000-01-01 .. end of the landing day (UTC) + timestamp_tolerance_hours 1 h)",),
    ]
