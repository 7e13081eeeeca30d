"""Sources with mappings (issue 11): presets, transforms, unmapped columns, stream sources and
identity links, ingested into a small model of a second shop."""

from __future__ import annotations

import json

import duckdb
import pytest

from segment_pipeline.core.ingest import LandingFileError, ingest_day
from segment_pipeline.core.links import resolves_earlier_days
from segment_pipeline.core.model import parse_model
from segment_pipeline.core.sources import SourcesFileError, parse_sources
from segment_pipeline.core.warehouse import Warehouse, connect
from segment_pipeline_tests.landing import write_ndjson

DAY, DAY2, DAY3 = "2026-11-03", "2026-11-04", "2026-11-05"

MODEL = parse_model({
    "identity": {"links": ["customer_id", "user_id"]},
    "attributes": {
        "first_name": "string",
        "accepts_email_marketing": "boolean",
        "country": "string",
        "tags": "list[string]",
        "total_spent": {"type": "money", "minimum": 0},
        "loyalty_points": {"type": "integer", "minimum": 0},
        "skin_type": "string",
        "created_at": "timestamp",
    },
    "events": {
        "Order Completed": {"properties": {
            "revenue": {"type": "money", "minimum": 0},
            "brands": {"type": "list[string]", "path": "products[*].brand"},
        }},
        "Page Viewed": {"properties": {"url": "string"}},
    },
})

SHOPIFY_HEADER = [
    "Customer ID", "First Name", "Last Name", "Email", "Accepts Email Marketing", "Default Address Company",
    "Default Address Address1", "Default Address Address2", "Default Address City", "Default Address Province Code",
    "Default Address Country Code", "Default Address Zip", "Default Address Phone", "Phone", "Accepts SMS Marketing",
    "Total Spent", "Total Orders", "Note", "Tax Exempt", "Tags",
]


@pytest.fixture
def wh(tmp_path):
    return Warehouse(tmp_path / "wh", model=MODEL)


def sources(doc: dict):
    return parse_sources({"sources": doc}).sources


def rows(wh: Warehouse, table: str, cols: str = "*", where: str = "") -> list[tuple]:
    return duckdb.connect().execute(f"SELECT {cols} FROM {wh.scan(table)} {where} ORDER BY ALL").fetchall()


def write_text(landing, source: str, name: str, text: str, day: str = DAY):
    path = landing / source / f"date={day}" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def shopify_csv(rows_: list[dict]) -> str:
    import csv
    import io

    out = io.StringIO()
    writer = csv.DictWriter(out, SHOPIFY_HEADER, lineterminator="\n")
    writer.writeheader()
    for r in rows_:
        writer.writerow({h: r.get(h, "") for h in SHOPIFY_HEADER})
    return out.getvalue()


def test_shopify_preset_maps_the_real_export_header_and_keeps_the_rest_as_custom_attributes(tmp_path, wh):
    write_text(tmp_path, "shopify", "customers_export.csv", shopify_csv([
        {"Customer ID": "7001", "First Name": "Ana", "Email": " Ana@Example.com", "Accepts Email Marketing": "yes",
         "Default Address Country Code": "de", "Total Spent": "120.50", "Tags": "VIP, wholesale,,",
         "Note": "called twice", "Default Address City": "Berlin"},
        {"Customer ID": "7002", "Email": "bo@example.com", "Accepts Email Marketing": "no", "Total Spent": "-3"},
        {"Customer ID": "7003", "Email": "cy@example.com", "Accepts Email Marketing": "maybe"},
        {"Customer ID": "7004", "Email": "dee@example.com", "Accepts SMS Marketing": "yes"},
    ]))
    src = sources({"shopify": {"preset": "shopify_customers_csv"}})
    report = ingest_day(connect(preserve_order=True), wh, tmp_path, "profiles", DAY, src)
    assert (report.rows_valid, report.rows_quarantined) == (2, 2)
    assert rows(wh, "raw_profiles", "email, customer_id, first_name, accepts_email_marketing, country, tags, "
                "total_spent::VARCHAR, updated_at::VARCHAR, source") == [
        ("ana@example.com", "7001", "Ana", True, "DE", ["VIP", "wholesale"], "120.50",
         "2026-11-03 23:59:59.999999", "shopify"),  # a snapshot export: as of the end of the landing day
        ("dee@example.com", "7004", None, None, None, None, None, "2026-11-03 23:59:59.999999", "shopify"),
    ]
    assert rows(wh, "quarantine_profiles", "source_line, reason") == [
        (3, "total_spent: below the minimum 0"),
        (4, "accepts_email_marketing: not a boolean (true: yes; false: no)"),
    ]
    # columns whose model field this model does not declare are kept, never dropped, and counted
    custom = dict(rows(wh, "raw_profiles", "email, custom_attributes"))
    assert json.loads(custom["ana@example.com"]) == {"Default Address City": "Berlin", "Note": "called twice"}
    assert json.loads(custom["dee@example.com"]) == {"Accepts SMS Marketing": "yes"}
    assert report.unmapped == {"shopify": {"Accepts SMS Marketing": 1, "Default Address City": 1, "Note": 1}}
    assert report.sources == {"shopify": {"rows_valid": 2, "rows_quarantined": 2}}


def test_a_mapped_column_missing_from_a_file_fails_the_file_naming_file_and_column(tmp_path, wh):
    path = write_text(tmp_path, "crm", "p.csv", "mail,points\na@example.com,3\n")
    src = sources({"crm": {"kind": "profiles", "observed_at": "end_of_landing_day",
                           "mapping": {"email": "mail", "loyalty_points": "Points"}}})
    with pytest.raises(LandingFileError) as err:
        ingest_day(connect(preserve_order=True), wh, tmp_path, "profiles", DAY, src)
    assert str(path) in str(err.value) and "'Points'" in str(err.value) and "loyalty_points" in str(err.value)
    assert not wh.has_partition("raw_profiles", DAY)


def test_transforms_timestamps_timezones_and_custom_delimiters(tmp_path, wh):
    write_text(tmp_path, "crm", "p.csv", (
        "mail;points;since;seen;skin\n"
        "a@example.com;12;03/11/2026 10:00;1793697600000;OILY\n"     # Berlin 10:00 = 09:00 UTC
        "b@example.com;1.5;03/11/2026 10:00;1793697600000;dry\n"     # not an integer
        "c@example.com;7;2026-11-03;1793697600000;dry\n"             # not the pattern
        "d@example.com;;;;\n"
    ))
    src = sources({"crm": {
        "kind": "profiles", "csv": {"delimiter": ";"}, "timezone": "Europe/Berlin",
        "observed_at": {"column": "seen", "timestamp": "epoch_ms"},
        "mapping": {"email": "mail", "loyalty_points": "points", "skin_type": {"column": "skin", "case": "lower"},
                    "created_at": {"column": "since", "timestamp": "%d/%m/%Y %H:%M"}},
    }})
    ingest_day(connect(preserve_order=True), wh, tmp_path, "profiles", DAY, src)
    assert rows(wh, "raw_profiles", "email, loyalty_points, created_at::VARCHAR, updated_at::VARCHAR, skin_type") == [
        ("a@example.com", 12, "2026-11-03 09:00:00", "2026-11-03 09:20:00", "oily"),
    ]
    assert rows(wh, "quarantine_profiles", "source_line, reason") == [
        (3, "loyalty_points: not an integer"),
        (4, "created_at: not a valid timestamp (%d/%m/%Y %H:%M)"),
        (5, "missing required field updated_at"),
    ]


def segment(kind: str, **fields) -> dict:
    return {"type": kind, "timestamp": "2026-11-03T10:00:00Z", "context": {"ip": "1.2.3.4"}, **fields}


def test_a_segment_spec_stream_feeds_profiles_and_events_through_identity_links(tmp_path, wh):
    write_ndjson(tmp_path, "app", DAY, [
        segment("identify", messageId="m1", userId="u1", traits={"email": "Ann@Example.com", "skin_type": "oily",
                                                                 "plan": "pro"}),
        segment("identify", messageId="m2", userId="u2", context={"traits": {"email": "bo@example.com"}}),
        segment("track", messageId="m3", userId="u1", event="Order Completed",
                properties={"revenue": 30, "products": [{"brand": "Acme"}, {"brand": "Zeta"}], "coupon": "X"}),
        segment("track", messageId="m3", userId="u1", event="Order Completed", properties={"revenue": 30}),
        segment("page", messageId="m4", userId="u2", name="Home", properties={"url": "/"}),
        segment("track", messageId="m5", userId="u9", event="Email Opened"),
        segment("track", messageId="m6", userId="u2", event="Email Opened", properties={"subject": "Hi"}),
        segment("group", messageId="m7", userId="u1", groupId="g1"),
        segment("track", messageId="m8", userId="u1", event="Order Completed", properties={"revenue": "lots"}),
    ])
    src = sources({"app": {"kind": "stream", "preset": "segment_spec"}})
    con = connect(preserve_order=True)
    profiles = ingest_day(con, wh, tmp_path, "profiles", DAY, src)
    events = ingest_day(con, wh, tmp_path, "events", DAY, src)
    assert (profiles.rows_valid, profiles.rows_quarantined) == (2, 0)
    assert rows(wh, "raw_profiles", "email, user_id, skin_type, custom_attributes") == [
        ("ann@example.com", "u1", "oily", '{"plan":"pro"}'),
        ("bo@example.com", "u2", None, None),
    ]
    assert rows(wh, "identity_links", "link, value, email") == [
        ("user_id", "u1", "ann@example.com"), ("user_id", "u2", "bo@example.com"),
    ]
    assert rows(wh, "raw_events", "event_id, email, event, revenue::VARCHAR, brands, url, properties") == [
        ("m3", "ann@example.com", "Order Completed", "30.00", ["Acme", "Zeta"], None, '{"coupon":"X"}'),
        ("m4", "bo@example.com", "Page Viewed", None, None, "/", '{"name":"Home"}'),  # the page name: kept
        ("m6", "bo@example.com", "Email Opened", None, None, None, '{"subject":"Hi"}'),  # undeclared: kept untyped
    ]
    assert rows(wh, "quarantine_events", "source_line, reason") == [
        (4, "duplicate event_id (an earlier row of this day has it)"),
        (6, "unresolved identity: user_id 'u9' is linked to no email"),
        (8, "type: unsupported message type 'group' (events: track, page, screen; profiles: identify)"),
        (9, "revenue: not a number"),
    ]
    assert events.unresolved == 1
    assert events.ignored == {"app": {"context": 7}}  # delivery metadata: not kept, counted


def test_stream_paths_read_as_json_paths_do_objects_nesting_case_and_unread_keys(tmp_path, wh):
    # the stream's nested paths are read in one pass (issue 11 performance): the values must be the
    # ones each JSON path gives (a step that is not an object gives nothing, keys match exactly)
    write_ndjson(tmp_path, "app", DAY, [
        segment("identify", messageId="m1", userId="u1", traits='{"email": "no@example.com"}',
                context={"traits": {"email": "c1@example.com", "skin_type": "dry"}}),
        segment("identify", messageId="m2", userId="u2",
                traits={"Email": "up@example.com", "email": "low@example.com", "skin_type": 5.50}),
        segment("identify", messageId="m3", userId="u3", anonymousId="a3", extra={"n": [1, 2.0], "s": "\u00e9"},
                traits={"email": "x3@example.com", "first_name": None}),
        segment("track", messageId="m4", userId="u1", event="Order Completed", properties=[1]),
        segment("page", messageId="m5", userId="u2", properties="{}"),
        segment("track", messageId="m6", userId="u3", event="Order Completed", anonymousId="a3",
                properties={"revenue": 1.50, "products": [{"brand": "Acme", "Brand": "x"}], "note": {"k": None}}),
    ])
    src = sources({"app": {"kind": "stream", "preset": "segment_spec"}})
    con = connect(preserve_order=True)
    profiles = ingest_day(con, wh, tmp_path, "profiles", DAY, src)
    events = ingest_day(con, wh, tmp_path, "events", DAY, src)
    assert (profiles.rows_valid, profiles.rows_quarantined, events.rows_quarantined) == (3, 0, 0)
    assert rows(wh, "raw_profiles", "user_id, email, skin_type, first_name, custom_attributes") == [
        ("u1", "c1@example.com", "dry", None, None),  # traits is a text, not an object: context.traits
        ("u2", "low@example.com", "5.5", None, '{"Email":"up@example.com"}'),
        ("u3", "x3@example.com", None, None, '{"anonymousId":"a3","extra":{"n":[1,2.0],"s":"é"}}'),
    ]
    assert rows(wh, "raw_events", "event_id, event, revenue::VARCHAR, brands, url, properties") == [
        ("m4", "Order Completed", None, None, None, None),
        ("m5", "Page Viewed", None, None, None, None),
        # products: read by the brands path; note: its null member is lost combining the JSON parts
        ("m6", "Order Completed", "1.50", ["Acme"], None, '{"anonymousId":"a3","note":{}}'),
    ]


def test_stream_message_types_read_exactly_and_repeated_keys_quarantined(tmp_path, wh):
    # the profiles step parses only lines that can be profile messages (a literal 'identify' or a
    # JSON escape, issue 11 performance): a type spelled with an escape or spaces is still one, a
    # track line naming 'identify' is not; a key given twice is caught among known and unread keys
    ts = '"timestamp": "2026-11-03T10:00:00Z"'
    write_ndjson(tmp_path, "app", DAY, [
        '{"type": "\\u0069dentify", "messageId": "m1", "userId": "u1", ' + ts + ', "traits": {"email": "a@example.com"}}',
        '{"type": " identify ", "messageId": "m2", "userId": "u2", ' + ts + ', "traits": {"email": "b@example.com"}}',
        '{"type": "track", "event": "identify clicked", "messageId": "m3", "userId": "u1", ' + ts + '}',
        '{"type": "track", "event": "Email Opened", "messageId": "m4", "userId": "u1", ' + ts + '}',
        # a known key twice (and one unread key)
        '{"type": "track", "event": "Email Opened", "messageId": "m5", "messageId": "m6", "userId": "u1", '
        + ts + ', "foo": 1}',
        # a known key twice, once spelled with an escape
        '{"type": "track", "event": "Email Opened", "messageId": "m7", "\\u006dessageId": "m8", "userId": "u1", '
        + ts + '}',
        # an unread key twice among three unread ones
        '{"type": "track", "event": "Email Opened", "messageId": "m9", "userId": "u1", ' + ts
        + ', "foo": 1, "bar": 2, "foo": 3}',
        # an identify with a repeated key: quarantined on the events side like every unparsable line
        '{"type": "identify", "userId": "u3", "userId": "u4", "messageId": "m10", ' + ts
        + ', "traits": {"email": "c@example.com"}}',
        # unread keys, none repeated; a nested object repeating a key is not a repeated key of the line
        '{"type": "track", "event": "Email Opened", "messageId": "m11", "userId": "u1", ' + ts
        + ', "foo": 1, "bar": {"k": 1, "k": 2}}',
    ])
    src = sources({"app": {"kind": "stream", "preset": "segment_spec"}})
    con = connect(preserve_order=True)
    profiles = ingest_day(con, wh, tmp_path, "profiles", DAY, src)
    events = ingest_day(con, wh, tmp_path, "events", DAY, src)
    assert (profiles.rows_valid, profiles.rows_quarantined) == (2, 0)
    assert rows(wh, "raw_profiles", "user_id, email") == [("u1", "a@example.com"), ("u2", "b@example.com")]
    assert rows(wh, "raw_events", "event_id, event") == [
        ("m11", "Email Opened"), ("m3", "identify clicked"), ("m4", "Email Opened"),
    ]
    assert rows(wh, "quarantine_events", "source_line, reason") == [
        (5, 'invalid JSON: duplicate key "messageId"'),
        (6, 'invalid JSON: duplicate key "messageId"'),
        (7, 'invalid JSON: duplicate key "foo"'),
        (8, 'invalid JSON: duplicate key "userId"'),
    ]
    assert (events.rows_valid, events.rows_quarantined) == (3, 4)


def test_stream_list_paths_read_from_the_properties_object_give_the_json_path_values(tmp_path, wh):
    # properties.products[*].brand is read from the properties object, not the whole line (issue 11
    # performance): the values are those of the JSON path on the line (checked against 7af6286)
    def track(i, props):
        return segment("track", messageId=f"m{i}", userId="u1", event="Order Completed", properties=props)
    write_ndjson(tmp_path, "app", DAY, [
        segment("identify", messageId="i1", userId="u1", traits={"email": "a@example.com"}),
        track(1, {"products": [{"brand": "A"}, "x", {"brand": 2.50}, {"brand": None}, {"brand": [1]}]}),
        track(2, {"products": {"brand": "B"}}),
        track(3, [{"products": [{"brand": "C"}]}]),
        track(4, {"products": [{"brand": 1e300}, {"brand": 12345678901234567890}]}),
        '{"type": "track", "timestamp": "2026-11-03T10:00:00Z", "userId": "u1", "event": "Order Completed", '
        '"messageId": "m5", "properties": {"products": [{"brand": 1.0e2}, {"brand": "\\u00e9\\""}], "x": {"y": 1}}}',
        # the key spelled with an escape is the same key (read only where the properties hold it)
        '{"type": "track", "timestamp": "2026-11-03T10:00:00Z", "userId": "u1", "event": "Order Completed", '
        '"messageId": "m6", "properties": {"\\u0070roducts": [{"brand": "D"}], "note": "products"}}',
    ])
    src = sources({"app": {"kind": "stream", "preset": "segment_spec"}})
    con = connect(preserve_order=True)
    ingest_day(con, wh, tmp_path, "profiles", DAY, src)
    ingest_day(con, wh, tmp_path, "events", DAY, src)
    assert rows(wh, "raw_events", "event_id, brands, properties") == [
        ("m1", ["A", "2.5", "[1]"], None),
        ("m2", None, None),
        ("m3", None, None),
        ("m4", ["1e300", "12345678901234567890"], None),
        ("m5", ["100.0", '\u00e9"'], '{"x":{"y":1}}'),
        ("m6", ["D"], '{"note":"products"}'),
    ]


def test_stream_traits_given_as_null_or_empty_clear_their_attribute_and_absent_ones_keep(tmp_path, wh):
    # a trait present as null or "" (in traits or context.traits) clears its attribute, an absent one
    # keeps it: the presence of every trait path is read in one json_exists of the line (issue 11 perf)
    write_ndjson(tmp_path, "app", DAY, [
        segment("identify", messageId="i1", userId="u1", traits={"email": "a@example.com", "country": None,
                                                                  "skin_type": ""}),
        segment("identify", messageId="i2", userId="u2", traits={"email": "b@example.com"},
                context={"traits": {"first_name": None}}),
        segment("identify", messageId="i3", userId="u3", traits={"email": "c@example.com", "country": "FR"}),
    ])
    src = sources({"app": {"kind": "stream", "preset": "segment_spec"}})
    ingest_day(connect(preserve_order=True), wh, tmp_path, "profiles", DAY, src)
    assert rows(wh, "raw_profiles", "user_id, cleared, country") == [
        ("u1", ["country", "skin_type"], None), ("u2", ["first_name"], None), ("u3", None, "FR"),
    ]


def test_unread_keys_are_kept_as_given_whether_common_in_the_file_or_not(tmp_path, wh):
    # keys no mapping reads (anonymousId: the model has no such link) that a file's first lines give
    # most often are read with the mapped keys (issue 11 perf); a line with other unread keys (here
    # one of 17, beyond the 16 read so) is read the general way: the same properties either way
    many = {f"k{i}": i for i in range(17)}
    write_ndjson(tmp_path, "app", DAY, [
        segment("identify", messageId="i1", userId="u1", anonymousId="a0", traits={"email": "a@example.com"}),
        segment("page", messageId="m1", userId="u1", anonymousId="a1", properties={"url": "/"}),
        segment("page", messageId="m2", userId="u1", anonymousId={"b": [1, 2.50, None]}, properties={"url": "/"}),
        segment("page", messageId="m3", userId="u1", anonymousId=None, coupon="X", properties={"url": "/"}),
        segment("page", messageId="m4", userId="u1", coupon="Y", anonymousId="a4"),
        segment("page", messageId="m5", userId="u1", **many),
    ])
    src = sources({"app": {"kind": "stream", "preset": "segment_spec"}})
    con = connect(preserve_order=True)
    ingest_day(con, wh, tmp_path, "profiles", DAY, src)
    events = ingest_day(con, wh, tmp_path, "events", DAY, src)
    assert rows(wh, "raw_events", "event_id, properties") == [
        ("m1", '{"anonymousId":"a1"}'),
        ("m2", '{"anonymousId":{"b":[1,2.5,null]}}'),
        ("m3", '{"coupon":"X"}'),
        ("m4", '{"coupon":"Y","anonymousId":"a4"}'),
        ("m5", json.dumps(many, separators=(",", ":"))),
    ]
    assert events.unmapped["app"] == {"k0": 1, "k1": 1, "k10": 1, "k11": 1, "k12": 1, "k13": 1, "k14": 1, "k15": 1,
                                      "k16": 1, "k2": 1, "k3": 1, "k4": 1, "k5": 1, "k6": 1, "k7": 1, "k8": 1, "k9": 1,
                                      "anonymousId": 3, "coupon": 2}


def test_stream_fields_properties_and_unread_keys_come_from_one_parse_with_the_same_values(tmp_path, wh):
    # one json_transform reads a line's fields and its properties object as JSON text; the property
    # paths read that text (issue 11 perf, round 5): escaped spellings, a key in another case, a
    # repeated key, and unread keys named like properties give what they gave before (checked on cc422a7)
    ts = '"timestamp": "2026-11-03T10:00:00Z", "userId": "u1", "event": "Order Completed"'
    write_ndjson(tmp_path, "app", DAY, [
        segment("identify", messageId="i1", userId="u1", traits={"email": "a@example.com"}),
        '{"type": "track", "messageId": "m1", ' + ts + ', "properties": {"r\\u0065venue": 5.5, "coupon": null}}',
        '{"type": "track", "messageId": "m2", ' + ts + ', "anonymousId": "a", "anonymousId": "b"}',
        '{"type": "track", "messageId": "m3", ' + ts + ', "\\u0061nonymousId": "a3", "properties": {"revenue": 1}}',
        '{"type": "track", "messageId": "m4", ' + ts + ', "Properties": {"revenue": 1}, "properties": {"revenue": 2}}',
        '{"type": "track", "messageId": "m5", ' + ts + ', "properties": {"revenue": 1}, "properties": {"revenue": 2}}',
        '{"type": "track", "messageId": "m6", ' + ts + ', "properties": null, "revenue": 3, "anonymousId": "a6"}',
        '{"type": "track", "messageId": "m7", ' + ts + ', "properties": "x", "anonymousId": {"revenue": null}}',
    ])
    src = sources({"app": {"kind": "stream", "preset": "segment_spec"}})
    con = connect(preserve_order=True)
    ingest_day(con, wh, tmp_path, "profiles", DAY, src)
    events = ingest_day(con, wh, tmp_path, "events", DAY, src)
    assert rows(wh, "raw_events", "event_id, revenue::VARCHAR, properties") == [
        ("m1", "5.50", None),
        ("m3", "1.00", '{"anonymousId":"a3"}'),
        ("m4", "2.00", '{"Properties":{"revenue":1}}'),
        ("m6", None, '{"revenue":3,"anonymousId":"a6"}'),
        ("m7", None, '{"anonymousId":{}}'),
    ]
    assert rows(wh, "quarantine_events", "source_line, reason") == [
        (3, 'invalid JSON: duplicate key "anonymousId"'),
        (6, 'invalid JSON: duplicate key "properties"'),
    ]
    assert events.unmapped["app"] == {"anonymousId": 3, "Properties": 1, "revenue": 1}


def test_paths_whose_keys_differ_only_in_case_are_each_read_exactly(tmp_path, wh):
    write_ndjson(tmp_path, "app", DAY, [
        segment("identify", messageId="m1", userId="u1", traits={"Email": "up@example.com"}),
        segment("identify", messageId="m2", userId="u2", traits={"email": "low@example.com", "Email": "up@example.com"}),
    ])
    src = sources({"app": {"kind": "stream", "preset": "segment_spec",
                           "mapping": {"email": {"path": ["traits.email", "traits.Email"]}}}})
    ingest_day(connect(preserve_order=True), wh, tmp_path, "profiles", DAY, src)
    assert rows(wh, "raw_profiles", "user_id, email") == [("u1", "up@example.com"), ("u2", "low@example.com")]


def test_undeclared_events_are_quarantined_when_the_source_says_so(tmp_path, wh):
    write_ndjson(tmp_path, "app", DAY, [
        {"id": "e1", "mail": "a@example.com", "name": "Email Opened", "at": "2026-11-03T10:00:00Z"},
        {"id": "e2", "mail": "a@example.com", "name": "Page Viewed", "at": "2026-11-03T10:00:00Z", "url": "/x"},
    ])
    src = sources({"app": {"kind": "events", "undeclared_events": "quarantine", "event": "name",
                           "occurred_at": "at", "mapping": {"event_id": "id", "email": "mail"}}})
    ingest_day(connect(preserve_order=True), wh, tmp_path, "events", DAY, src)
    assert rows(wh, "raw_events", "event_id, url") == [("e2", "/x")]
    assert rows(wh, "quarantine_events", "reason") == [
        ("event: undeclared event 'Email Opened' (declared: Order Completed, Page Viewed)",)]


def test_a_link_resolves_records_without_email_latest_link_wins_and_a_late_link_needs_a_rerun(tmp_path, wh):
    profiles_src = {"crm": {"kind": "profiles"}}
    events_src = {"shop": {"kind": "events", "event": "event_type"}}
    src = sources({**profiles_src, **events_src})
    write_ndjson(tmp_path, "shop", DAY, [
        {"event_id": "e1", "customer_id": "C1", "event_type": "Order Completed", "occurred_at": "2026-11-03T10:00:00Z"},
        {"event_id": "e2", "customer_id": "C2", "event_type": "Order Completed", "occurred_at": "2026-11-03T10:00:00Z"},
    ])
    write_ndjson(tmp_path, "crm", DAY, [
        {"email": "old@example.com", "customer_id": "C1", "updated_at": "2026-11-03T08:00:00Z"},
        {"email": "new@example.com", "customer_id": "C1", "updated_at": "2026-11-03T09:00:00Z"},
        {"customer_id": "C1", "first_name": "Neo", "updated_at": "2026-11-03T10:00:00Z"},  # no email: resolved
        {"customer_id": "C3", "first_name": "Nobody", "updated_at": "2026-11-03T10:00:00Z"},
    ])
    con = connect(preserve_order=True)
    ingest_day(con, wh, tmp_path, "profiles", DAY, src)
    ingest_day(con, wh, tmp_path, "events", DAY, src)
    assert rows(wh, "raw_profiles", "email, email_raw, first_name", "WHERE first_name IS NOT NULL") == [
        ("new@example.com", None, "Neo"),  # the latest link (by record time) wins
    ]
    assert rows(wh, "quarantine_profiles", "reason") == [("unresolved identity: customer_id 'C3' is linked to no email",)]
    assert rows(wh, "raw_events", "event_id, email") == [("e1", "new@example.com")]
    assert rows(wh, "quarantine_events", "reason") == [("unresolved identity: customer_id 'C2' is linked to no email",)]
    # links land on later days: C2 on day 2, C2 again (another email) and C3 on day 3
    write_ndjson(tmp_path, "crm", DAY2, [{"email": "c2@example.com", "customer_id": "C2",
                                          "updated_at": "2026-11-04T08:00:00Z"}])
    write_ndjson(tmp_path, "crm", DAY3, [{"email": "c2-moved@example.com", "customer_id": "C2",
                                          "updated_at": "2026-11-05T08:00:00Z"},
                                         {"email": "c3@example.com", "customer_id": "C3",
                                          "updated_at": "2026-11-05T08:00:00Z"}])
    ingest_day(con, wh, tmp_path, "profiles", DAY2, src)
    assert resolves_earlier_days(con, wh, DAY2) == {DAY: 1}  # the event e2 of day 1
    ingest_day(con, wh, tmp_path, "profiles", DAY3, src)
    assert resolves_earlier_days(con, wh, DAY3) == {DAY: 2}  # e2 and the profile of C3
    assert resolves_earlier_days(con, wh, DAY3, before=DAY) == {}  # a run from day 1 re-runs it anyway
    # re-running day 1 attributes them: the earliest later link of each id (c2@, not c2-moved@)
    assert ingest_day(con, wh, tmp_path, "profiles", DAY, src).resolved_by_later_links == 1
    assert ingest_day(con, wh, tmp_path, "events", DAY, src).resolved_by_later_links == 1
    assert rows(wh, "raw_events", "event_id, email") == [("e1", "new@example.com"), ("e2", "c2@example.com")]
    assert rows(wh, "raw_profiles", "email, first_name", f"WHERE date = DATE '{DAY}' AND first_name IS NOT NULL") == [
        ("c3@example.com", "Nobody"), ("new@example.com", "Neo")]
    assert rows(wh, "quarantine_events", "reason") == [] and rows(wh, "quarantine_profiles", "reason") == []
    assert resolves_earlier_days(con, wh, DAY3) == {}  # nothing left to attribute
    # a link known as of the day wins over a later one; day 1's own links stay day 1's
    from segment_pipeline.core.links import links_as_of

    known = duckdb.connect().execute(f"SELECT value, email FROM {links_as_of(wh, DAY2)} ORDER BY 1").fetchall()
    assert known == [("C1", "new@example.com"), ("C2", "c2@example.com")]
    assert rows(wh, "identity_links", "value", f"WHERE date = DATE '{DAY2}'") == [("C2",)]  # a day holds its own
    assert rows(wh, "identity_links", "value", f"WHERE date = DATE '{DAY}'") == [("C1",)]


def test_a_late_link_rerun_is_byte_identical_and_stable_as_more_days_land(tmp_path, wh):
    src = sources({"crm": {"kind": "profiles"}, "shop": {"kind": "events", "event": "event_type"}})
    write_ndjson(tmp_path, "shop", DAY, [
        {"event_id": "e2", "customer_id": "C2", "event_type": "Order Completed", "occurred_at": "2026-11-03T10:00:00Z"}])
    write_ndjson(tmp_path, "crm", DAY2, [{"email": "c2@example.com", "customer_id": "C2",
                                          "updated_at": "2026-11-04T08:00:00Z"}])
    con = connect(preserve_order=True)
    for day in (DAY, DAY2):
        ingest_day(con, wh, tmp_path, "profiles", day, src)
    ingest_day(con, wh, tmp_path, "events", DAY, src)
    first = wh.partition_path("raw_events", DAY).read_bytes()
    ingest_day(con, wh, tmp_path, "events", DAY, src)
    assert wh.partition_path("raw_events", DAY).read_bytes() == first  # same warehouse, same bytes
    # a newer link for the id on a later day does not move the attribution already made
    write_ndjson(tmp_path, "crm", DAY3, [{"email": "other@example.com", "customer_id": "C2",
                                          "updated_at": "2026-11-05T08:00:00Z"}])
    ingest_day(con, wh, tmp_path, "profiles", DAY3, src)
    ingest_day(con, wh, tmp_path, "events", DAY, src)
    assert wh.partition_path("raw_events", DAY).read_bytes() == first


def test_a_landing_folder_without_a_source_is_reported_not_ignored(tmp_path, wh):
    write_ndjson(tmp_path, "crm", DAY, [{"email": "a@example.com", "updated_at": "2026-11-03T08:00:00Z"}])
    write_ndjson(tmp_path, "loyalty", DAY, [{"email": "a@example.com", "points": 3}])
    report = ingest_day(connect(preserve_order=True), wh, tmp_path, "profiles", DAY, sources({"crm": {"kind": "profiles"}}))
    assert report.rows_valid == 1 and report.unsourced_folders == ["loyalty"]


@pytest.mark.parametrize(("doc", "expected"), [
    ({"shop": {"kind": "profiles", "mapping": {"tags": "Tags"}}},
     "sources.shop.mapping.tags: unknown model field 'tags'"),
    ({"shop": {"format": "csv"}}, "sources.shop.kind: required (profiles | events | stream)"),
    ({"shop": {"preset": "no_such_preset"}}, "sources.shop.preset: no preset 'no_such_preset'"),
    ({"shop": {"kind": "profiles", "timezone": "Mars/Olympus"}}, "sources.shop.timezone: Value error, unknown time zone 'Mars/Olympus'"),
    ({"shop": {"kind": "profiles", "mapping": {"email": {"column": "a", "path": "b"}}}}, "sources.shop.mapping.email"),
    ({"shop": {"kind": "profiles", "observed_at": {"column": "t", "timestamp": "unix"}}}, "timestamp 'unix'"),
    ({"shop": {"kind": "orders"}}, "sources.shop.kind"),
])
def test_sources_file_errors_name_the_file_the_source_and_the_entry(tmp_path, wh, doc, expected):
    import yaml

    f = tmp_path / "sources.yaml"
    f.write_text(yaml.safe_dump({"sources": doc}))
    from segment_pipeline.core.sources import load_sources

    with pytest.raises(SourcesFileError) as err:
        loaded = load_sources(f)
        ingest_day(connect(), Warehouse(tmp_path / "wh2", model=MODEL.model_copy(
            update={"attributes": {k: v for k, v in MODEL.attributes.items() if k != "tags"}})),
            tmp_path, "profiles", DAY, loaded)
    assert expected in str(err.value)


def test_raw_events_depend_on_raw_profiles_of_the_same_day():
    import dagster as dg

    from segment_pipeline.defs.raw.assets import ingest_events

    assert dg.AssetKey("raw_profiles") in ingest_events.asset_deps[dg.AssetKey("raw_events")]


def test_json_lists_epoch_seconds_default_boolean_words_and_the_default_mapping(tmp_path, wh):
    write_ndjson(tmp_path, "crm", DAY, [
        {"email": "a@example.com", "updated_at": 1793697600, "tags": [" VIP ", "", "wholesale"],
         "accepts_email_marketing": "Yes", "favourite_colour": "teal"},
        {"email": "b@example.com", "updated_at": "1793697600", "tags": "solo", "accepts_email_marketing": False},
        {"email": "c@example.com", "updated_at": 1793697600, "tags": "[broken"},
        {"email": "d@example.com", "updated_at": 1e20},
        {"email": "e@example.com", "updated_at": "NaN"},
    ])
    src = sources({"crm": {"kind": "profiles", "observed_at": {"column": "updated_at", "timestamp": "epoch_s"}}})
    report = ingest_day(connect(preserve_order=True), wh, tmp_path, "profiles", DAY, src)
    assert rows(wh, "raw_profiles", "email, updated_at::VARCHAR, tags, accepts_email_marketing, custom_attributes") == [
        ("a@example.com", "2026-11-03 09:20:00", ["VIP", "wholesale"], True, '{"favourite_colour":"teal"}'),
        ("b@example.com", "2026-11-03 09:20:00", ["solo"], False, None),
    ]
    assert rows(wh, "quarantine_profiles", "source_line, reason") == [
        (3, "tags: not a valid JSON list"),
        (4, "updated_at: not a valid epoch seconds timestamp"),  # beyond TIMESTAMP: no error, a reason
        (5, "updated_at: not a valid epoch seconds timestamp"),
    ]
    assert report.unmapped == {"crm": {"favourite_colour": 1}}


def test_kept_undeclared_events_and_properties_on_events_that_do_not_declare_them_stay_untyped(tmp_path, wh):
    path = tmp_path / "shop" / f"date={DAY}" / "e.csv"
    path.parent.mkdir(parents=True)
    path.write_text(
        "event_id,email,event_type,occurred_at,revenue,url,channel\n"
        "e1,a@example.com,Order Completed,2026-11-03T10:00:00Z,12.5,,web\n"
        "e2,a@example.com,Page Viewed,2026-11-03T10:00:00Z,3,/collections,\n"          # revenue on a page view
        "e3,a@example.com,Subscription Started,2026-11-03T10:00:00Z,free,,app\n"  # undeclared: not checked
        "e4,a@example.com,Order Completed,2026-11-03T10:00:00Z,-1,,\n"
    )
    src = sources({"shop": {"kind": "events", "event": "event_type"}})
    report = ingest_day(connect(preserve_order=True), wh, tmp_path, "events", DAY, src)
    assert rows(wh, "raw_events", "event_id, event, revenue::VARCHAR, url, properties") == [
        ("e1", "Order Completed", "12.50", None, '{"channel":"web"}'),
        ("e2", "Page Viewed", None, "/collections", '{"revenue":"3"}'),
        ("e3", "Subscription Started", None, None, '{"channel":"app","revenue":"free"}'),
    ]
    assert rows(wh, "quarantine_events", "source_line, reason") == [(5, "revenue: below the minimum 0")]
    assert report.unmapped == {"shop": {"channel": 2, "revenue": 2}}


def test_a_rerun_writes_byte_identical_partitions_links_included(tmp_path, wh):
    write_ndjson(tmp_path, "app", DAY, [
        segment("identify", messageId=f"i{i}", userId=f"u{i}", traits={"email": f"p{i}@example.com"}) for i in range(50)
    ] + [
        segment("track", messageId=f"m{i}", userId=f"u{i % 60}", event="Order Completed", properties={"revenue": i})
        for i in range(200)
    ])
    src = sources({"app": {"kind": "stream", "preset": "segment_spec"}})

    def run(threads: int) -> dict:
        con = connect(preserve_order=True, threads=threads)
        for kind in ("profiles", "events"):
            ingest_day(con, wh, tmp_path, kind, DAY, src)
        return {p.relative_to(wh.root): p.read_bytes() for p in sorted(wh.root.rglob("*.parquet"))}

    first = run(1)
    assert any("identity_links" in str(p) for p in first) and len(first) == 5
    assert run(2) == first


def test_parquet_list_and_struct_columns_feed_lists_and_paths(tmp_path, wh):
    path = tmp_path / "crm" / f"date={DAY}" / "p.parquet"
    path.parent.mkdir(parents=True)
    duckdb.connect().execute(f"""
        COPY (SELECT 'a@example.com' AS email, TIMESTAMP '2026-11-03 08:00:00' AS updated_at,
                     ['VIP', 'wholesale'] AS tags, {{'points': 40, 'tier': 'gold'}} AS loyalty)
        TO '{path}' (FORMAT parquet)""")
    src = sources({"crm": {"kind": "profiles", "mapping": {"loyalty_points": {"path": "loyalty.points"}}}})
    ingest_day(connect(preserve_order=True), wh, tmp_path, "profiles", DAY, src)
    assert rows(wh, "raw_profiles", "tags, loyalty_points, custom_attributes") == [
        (["VIP", "wholesale"], 40, None),  # the struct column is read by the mapping: not unmapped
    ]


def test_an_export_of_one_event_takes_its_name_from_a_constant_and_its_time_from_the_landing_day(tmp_path, wh):
    write_text(tmp_path, "orders", "orders.csv", "Order,Mail,Total\nO-1,a@example.com,19.99\nO-2,b@example.com,abc\n")
    src = sources({"orders": {"kind": "events", "event": {"constant": "Order Completed"},
                              "occurred_at": "end_of_landing_day",
                              "mapping": {"event_id": "Order", "email": "Mail", "revenue": "Total"}}})
    ingest_day(connect(preserve_order=True), wh, tmp_path, "events", DAY, src)
    assert rows(wh, "raw_events", "event_id, event, occurred_at::VARCHAR, revenue::VARCHAR") == [
        ("O-1", "Order Completed", "2026-11-03 23:59:59.999999", "19.99"),
    ]
    assert rows(wh, "quarantine_events", "source_line, reason") == [(3, "revenue: not a number")]
