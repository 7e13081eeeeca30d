"""Per-segment chunked export: request shape, fields, chunking, formats, events, locks, callback, crash."""

from __future__ import annotations

import datetime as dt
import gzip
import json
import math
import os
import signal
import subprocess
import sys
import textwrap
import zipfile
from decimal import Decimal

import pytest

from segment_pipeline.core.exports.daily_feed import ExportInputError
from segment_pipeline.core.exports.keys import encode_segment, join_key
from segment_pipeline.core.exports.locks import ExportInProgressError, segment_lock
from segment_pipeline.core.exports.segment_export import (
    SUPPORTED_FIELDS,
    SegmentExportRequest,
    SegmentExportRequestError,
    export_segment,
    model_fields,
    run_segment_export,
    verify_segment_export,
)
from segment_pipeline.core.exports.storage import LocalExportStorage, S3ExportStorage
from segment_pipeline.core.model import parse_model
from segment_pipeline.core.profiles import build_profiles
from segment_pipeline.core.warehouse import Warehouse, connect
from segment_pipeline_tests.core.test_exports_warehouse_fixtures import (
    DAY,
    identity,
    profile,
    write_day,
    write_rows,
    write_synthetic_segment,
)
from segment_pipeline_tests.fakes.callback import callback_server
from segment_pipeline_tests.fakes.s3 import moto_s3_server
from segment_pipeline_tests.raw_tables import event_row, profile_row, write_raw
from segment_pipeline_tests.waiting import child_env


def request(segment_id="vip", fields=("email", "first_name"), **extra) -> SegmentExportRequest:
    return SegmentExportRequest.parse({"segment_id": segment_id, "fields_to_export": list(fields), **extra})


def read_export(storage, result) -> list[dict]:
    users = []
    for f in result.files:
        raw = storage.get_bytes(f.key)
        if f.key.endswith(".zip"):
            with zipfile.ZipFile(__import__("io").BytesIO(raw)) as zf:
                (name,) = zf.namelist()
                assert name.endswith(".json")
                data = zf.read(name)
        else:
            data = gzip.decompress(raw)
        users.extend(json.loads(line) for line in data.decode().splitlines())
    return users


@pytest.fixture
def small(tmp_path):
    wh = Warehouse(tmp_path / "warehouse")
    write_day(
        wh,
        DAY,
        [
            profile("jane@x.io", customer_id="c-1", first_name="Jane", last_name="Doe", city="Tampere",
                    dob=dt.date(1990, 5, 17), gender="F", random_bucket=42, total_revenue=99.5,
                    loyalty_tier="gold", created_at=dt.datetime(2026, 1, 2, 3, 4, 5), country="FI"),
            profile("joe@x.io", first_name="Joe"),
            profile("out@x.io", first_name="Outsider"),
        ],
        {"vip": "VIP", "../x": "Hostile", "empty": "Nobody"},
        {"vip": ["jane@x.io", "joe@x.io"], "../x": ["joe@x.io"]},
    )
    return wh


# -- request ---------------------------------------------------------------------------------------


def test_unknown_fields_are_rejected_with_the_valid_list():
    with pytest.raises(SegmentExportRequestError) as err:
        request(fields=["email", "shoe_size"])
    assert "shoe_size" in str(err.value) and "'vip'" in str(err.value)
    assert all(name in str(err.value) for name in SUPPORTED_FIELDS)


@pytest.mark.parametrize(
    "body, match",
    [
        ({"fields_to_export": ["email"]}, "segment_id is required"),
        ({"segment_id": "", "fields_to_export": ["email"]}, "segment_id is required"),
        ({"segment_id": "s"}, "fields_to_export is required"),
        ({"segment_id": "s", "fields_to_export": []}, "non-empty list"),
        ({"segment_id": "s", "fields_to_export": "email"}, "non-empty list"),
        ({"segment_id": "s", "fields_to_export": ["email"], "output_format": "rar"}, "output_format"),
        ({"segment_id": "s", "fields_to_export": ["email"], "callback_endpoint": "ftp://x"}, "callback_endpoint"),
        ({"segment_id": "s", "fields_to_export": ["email"], "colour": "red"}, "colour"),
    ],
)
def test_bad_requests_name_the_field(body, match):
    with pytest.raises(SegmentExportRequestError, match=match):
        SegmentExportRequest.parse(body)


def test_defaults_match_the_reference():
    req = request()
    assert req.output_format == "zip" and req.callback_endpoint is None


# -- output ------------------------------------------------------------------------------------------


def test_only_requested_fields_and_missing_values_left_out(small, tmp_path):
    storage = LocalExportStorage(tmp_path / "exports")
    fields = [f for f in SUPPORTED_FIELDS if f not in ("purchases", "custom_events", "identity_id")]
    result = export_segment(connect(), small, storage, request(fields=fields), started_at=1793761200)
    users = {u["email"]: u for u in read_export(storage, result)}
    assert users["jane@x.io"] == {
        "braze_id": identity("jane@x.io"), "external_id": "c-1", "email": "jane@x.io", "first_name": "Jane",
        "last_name": "Doe", "country": "FI", "home_city": "Tampere", "dob": "1990-05-17", "gender": "F",
        "random_bucket": 42, "total_revenue": 99.5, "created_at": "2026-01-02T03:04:05Z",
        "custom_attributes": {"loyalty_tier": "gold"},
    }
    assert users["joe@x.io"] == {"braze_id": identity("joe@x.io"), "email": "joe@x.io", "first_name": "Joe"}
    narrow = export_segment(connect(), small, storage, request(fields=["first_name"]))
    assert sorted(u["first_name"] for u in read_export(storage, narrow)) == ["Jane", "Joe"]


def test_key_layout(small, tmp_path):
    storage = LocalExportStorage(tmp_path / "exports")
    result = export_segment(connect(), small, storage, request(), started_at=1793761200)  # 2026-11-04 UTC
    (f,) = result.files
    parts = f.key.split("/")
    assert parts[:3] == ["segment-export", "vip", "2026-11-04"] and len(parts) == 5
    uuid_part, ts = parts[3].rsplit("-", 1)
    assert ts == "1793761200" and len(uuid_part) == 36 and result.object_prefix == parts[3]
    assert len(parts[4]) == 32 + 4 and parts[4].endswith(".zip")
    assert storage.exists(result.manifest_key) and result.manifest_key == "/".join(parts[:4]) + ".manifest.json"


@pytest.mark.parametrize("fmt, ext", [("zip", ".zip"), ("gzip", ".gz")])
def test_chunks_of_5000(tmp_path, fmt, ext):
    wh = Warehouse(tmp_path / "warehouse")
    write_synthetic_segment(wh, DAY, "big", n_members=12_001, n_profiles=12_500)
    storage = LocalExportStorage(tmp_path / "exports")
    result = export_segment(connect(), wh, storage, request("big", ["email", "external_id"], output_format=fmt))
    assert [f.lines for f in sorted(result.files, key=lambda f: -f.lines)] == [5000, 5000, 2001]
    assert all(f.key.endswith(ext) for f in result.files)
    users = read_export(storage, result)
    assert len(users) == 12_001 == len({u["email"] for u in users})
    check = verify_segment_export(storage, result.manifest_key, 12_001)
    assert check.passed and check.files == math.ceil(12_001 / 5000)


def test_empty_segment_gives_zero_files_and_unknown_segment_is_an_error(small, tmp_path):
    storage = LocalExportStorage(tmp_path / "exports")
    result = export_segment(connect(), small, storage, request("empty"))
    assert result.files == [] and verify_segment_export(storage, result.manifest_key, 0).passed
    with pytest.raises(ExportInputError, match="segment 'nope' does not exist"):
        export_segment(connect(), small, storage, request("nope"))


def test_purchases_and_custom_events_semantics(small, tmp_path):
    def ev(kind, days_ago, product=None, email="jane@x.io"):
        when = dt.datetime.combine(DAY, dt.time(12)) - dt.timedelta(days=days_ago)
        return {"event_id": f"{kind}-{days_ago}-{product}", "email": email, "event": kind, "occurred_at": when,
                "product_id": product}

    write_rows(small, "raw_events", DAY - dt.timedelta(days=120),
               [ev("order", 120, "P1"), ev("order", 100, "P2"), ev("page_view", 200)])
    write_rows(small, "raw_events", DAY, [ev("order", 10, "P1"), ev("page_view", 89), ev("add_to_cart", 95),
                                         ev("order", -1, "P3")])  # -1: after the export day
    storage = LocalExportStorage(tmp_path / "exports")
    result = export_segment(connect(), small, storage, request(fields=["email", "purchases", "custom_events"]))
    users = {u["email"]: u for u in read_export(storage, result)}
    assert users["jane@x.io"]["purchases"] == [
        {"name": "P1", "first": "2026-07-06T12:00:00Z", "last": "2026-10-24T12:00:00Z", "count": 2}
    ]
    assert users["jane@x.io"]["custom_events"] == [
        {"name": "page_view", "first": "2026-04-17T12:00:00Z", "last": "2026-08-06T12:00:00Z", "count": 2}
    ]
    assert users["joe@x.io"] == {"email": "joe@x.io"}


# -- a non-apparel model ---------------------------------------------------------------------------
BEAUTY = parse_model({
    "identity": {"links": ["shopify_id", "user_id"]},
    "attributes": {"first_name": "string", "skin_type": "string", "loyalty_points": "integer",
                   "tags": "list[string]", "accepts_marketing": "boolean", "birthday": "date"},
    "events": {
        "Order Completed": {"purchase": {"product": "sku"}, "properties": {"sku": "string", "revenue": "money"}},
        "Email Opened": {"properties": {"campaign": "string"}},
    },
    "traits": {"orders": {"count": {"event": "Order Completed"}}},
}, source="beauty.yaml")


def test_a_beauty_models_own_attributes_and_events_fill_custom_attributes_purchases_and_custom_events(tmp_path):
    wh = Warehouse(tmp_path / "warehouse", BEAUTY)
    write_raw(wh, "raw_profiles", DAY, [
        profile_row("ann@x.io", "2026-11-01T08:00:00", first_name="Ann", skin_type="oily", loyalty_points=650,
                    tags=["VIP", "wholesale"], accepts_marketing=True, birthday="1990-05-17", shopify_id="S-1",
                    custom_attributes={"favourite_scent": "rose", "skin_type": "unmapped loses", "n": 3}),
        profile_row("bo@x.io", "2026-11-01T08:00:00", user_id="U-2"),
    ])
    at = dt.datetime.combine(DAY, dt.time(9))
    write_raw(wh, "raw_events", DAY, [
        event_row("1", "ann@x.io", "Order Completed", at, sku="SERUM-1", revenue=20),
        event_row("2", "ann@x.io", "Order Completed", at + dt.timedelta(hours=1), sku="SERUM-1", revenue=20),
        event_row("3", "ann@x.io", "Email Opened", at, campaign="spring"),
        event_row("4", "ann@x.io", "Subscription Started", at, properties={"plan": "monthly"}),  # undeclared, kept
    ])
    con = connect()
    build_profiles(con, wh, DAY)
    write_rows(wh, "memberships", DAY, [{"segment_id": "oily", "identity_id": identity(e), "email": e}
                                        for e in ("ann@x.io", "bo@x.io")])
    write_rows(wh, "segment_stats", DAY, [{"segment_id": "oily", "segment_name": "Oily", "segment_type": "rule",
                                           "status": "refreshed", "member_count": 2}])
    fields = model_fields(BEAUTY)
    assert fields == ["braze_id", "identity_id", "external_id", "email", "first_name", "random_bucket",
                      "custom_attributes", "purchases", "custom_events"]
    storage = LocalExportStorage(tmp_path / "exports")
    result = export_segment(con, wh, storage, SegmentExportRequest.parse(
        {"segment_id": "oily", "fields_to_export": ["external_id", "email", "first_name", "custom_attributes",
                                                    "purchases", "custom_events"]}, model=BEAUTY))
    users = {u["email"]: u for u in read_export(storage, result)}
    nine, ten = "2026-11-03T09:00:00Z", "2026-11-03T10:00:00Z"
    assert users["ann@x.io"] == {
        "external_id": "S-1", "email": "ann@x.io", "first_name": "Ann",
        "custom_attributes": {"skin_type": "oily", "loyalty_points": 650, "tags": ["VIP", "wholesale"],
                              "accepts_marketing": True, "birthday": "1990-05-17", "favourite_scent": "rose", "n": 3},
        "purchases": [{"name": "SERUM-1", "first": nine, "last": ten, "count": 2}],
        "custom_events": [{"name": "Email Opened", "first": nine, "last": nine, "count": 1},
                          {"name": "Subscription Started", "first": nine, "last": nine, "count": 1}],
    }
    assert users["bo@x.io"] == {"email": "bo@x.io"}  # external_id is the first link only; nothing else given


@pytest.mark.parametrize("field", ["last_name", "home_city", "total_revenue", "created_at"])
def test_a_field_the_model_cannot_fill_is_refused_with_the_fields_it_can(tmp_path, field):
    body = {"segment_id": "oily", "fields_to_export": ["email", field]}
    with pytest.raises(SegmentExportRequestError) as err:
        SegmentExportRequest.parse(body, model=BEAUTY)
    assert f"cannot fill ['{field}']" in str(err.value) and "custom_attributes, purchases, custom_events" in str(err.value)
    no_links = parse_model({"attributes": {"first_name": "string"}})
    with pytest.raises(SegmentExportRequestError, match=r"cannot fill \['external_id', 'purchases'\]"):
        SegmentExportRequest.parse({"segment_id": "s", "fields_to_export": ["external_id", "purchases"]}, model=no_links)
    # the export itself checks too (a request parsed without the model)
    with pytest.raises(SegmentExportRequestError, match=field):
        export_segment(connect(), Warehouse(tmp_path / "wh", BEAUTY), LocalExportStorage(tmp_path / "out"),
                       SegmentExportRequest.parse(body))


@pytest.mark.parametrize("segment_id", ["../x", "a/b", "two words", "ünï 🎯"])
def test_hostile_segment_ids_stay_in_one_folder(tmp_path, segment_id):
    wh = Warehouse(tmp_path / "warehouse")
    write_day(wh, DAY, [profile("a@x.io")], {segment_id: "S"}, {segment_id: ["a@x.io"]})
    root = tmp_path / "exports"
    result = export_segment(connect(), wh, LocalExportStorage(root), request(segment_id))
    files = [p for p in tmp_path.rglob("*") if p.is_file() and "warehouse" not in p.parts]
    assert len(files) == 2
    for p in files:
        rel = p.relative_to(root).parts
        assert rel[0] == "segment-export" and rel[1] == encode_segment(segment_id)
    assert result.prefix.split("/")[1] == encode_segment(segment_id)


# -- concurrency, callback, crash -------------------------------------------------------------------


def test_second_export_of_the_same_segment_fails_fast(small, tmp_path):
    storage = LocalExportStorage(tmp_path / "exports")
    with segment_lock(storage, "segment-export", "vip", "vip", owner="run-1", stale_after=3600):
        with pytest.raises(ExportInProgressError, match="export of segment 'vip' is already running"):
            run_segment_export(connect(), small, storage, request(), owner="run-2")
        run_segment_export(connect(), small, storage, request("../x"), owner="run-3")  # other segments run
    assert storage.list_keys("_locks") == []


def test_callback_that_fails_at_first_is_retried(small, tmp_path):
    storage = LocalExportStorage(tmp_path / "exports")
    with callback_server(fail_first=2) as hook:
        result = run_segment_export(
            connect(), small, storage, request(callback_endpoint=hook.url), callback_backoff_seconds=0.01
        )
    assert result.callback.delivered and result.callback.attempts == 3
    assert hook.received == [{"success": True, "url": (tmp_path / "exports" / result.prefix).as_uri()}]


def test_callback_that_never_succeeds_keeps_the_export(small, tmp_path):
    storage = LocalExportStorage(tmp_path / "exports")
    with callback_server(fail_first=100, drop=True) as hook:
        result = run_segment_export(
            connect(), small, storage, request(callback_endpoint=hook.url),
            callback_attempts=3, callback_backoff_seconds=0.01,
        )
    assert not result.callback.delivered and result.callback.attempts == 3 and hook.attempts == 3
    assert verify_segment_export(storage, result.manifest_key, 2).passed


def test_s3_export_and_callback_without_url(small):
    with moto_s3_server() as moto, callback_server(fail_first=1, fail_status=500) as hook:
        bucket = moto.new_bucket()
        storage = S3ExportStorage(moto.client(), bucket, prefix="partner")
        result = run_segment_export(
            connect(), small, storage, request("../x", output_format="gzip", callback_endpoint=hook.url),
            callback_backoff_seconds=0.01,
        )
        keys = moto.keys(bucket)
        assert len(keys) == 2 and all(k.startswith("partner/segment-export/%2E%2E%2Fx/") for k in keys)
        assert any(k.endswith(".gz") for k in keys) and any(k.endswith(".manifest.json") for k in keys)
        assert read_export(storage, result) == [{"email": "joe@x.io", "first_name": "Joe"}]
        assert verify_segment_export(storage, result.manifest_key, 1).passed
    assert hook.received == [{"success": True}]


CRASHING_EXPORT = textwrap.dedent(
    """
    import sys, time
    from segment_pipeline.core.exports.segment_export import SegmentExportRequest, export_segment
    from segment_pipeline.core.exports.storage import LocalExportStorage
    from segment_pipeline.core.warehouse import Warehouse, connect

    def progress(files, rows):
        print(files, rows, flush=True)
        time.sleep(60)  # the test kills us here, between two published chunks

    req = SegmentExportRequest.parse({"segment_id": "big", "fields_to_export": ["email"]})
    export_segment(connect(), Warehouse(sys.argv[1]), LocalExportStorage(sys.argv[2]), req, progress=progress)
    """
)


def test_crash_mid_export_leaves_nothing_that_looks_complete_and_is_swept(tmp_path):
    wh = Warehouse(tmp_path / "warehouse")
    write_synthetic_segment(wh, DAY, "big", n_members=10_500, n_profiles=10_500)
    root = tmp_path / "exports"
    proc = subprocess.Popen(
        [sys.executable, "-c", CRASHING_EXPORT, str(wh.root), str(root)], stdout=subprocess.PIPE, text=True,
        env=child_env(),
    )
    try:
        assert proc.stdout.readline().split() == ["1", "5000"]
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    storage = LocalExportStorage(root)
    assert storage.list_keys("segment-export") == []  # only hidden .tmp-* leftovers, no manifest
    assert storage.list_temporaries("segment-export")
    result = run_segment_export(connect(), wh, storage, request("big", ["email"]))
    assert not storage.list_temporaries("segment-export")
    assert len(storage.list_keys("segment-export")) == 3 + 1
    assert verify_segment_export(storage, result.manifest_key, 10_500).passed


def test_s3_orphans_without_manifest_are_swept_by_the_next_export(small):
    with moto_s3_server() as moto:
        storage = S3ExportStorage(moto.client(), moto.new_bucket(), prefix="exports")
        orphan = join_key("segment-export", "vip", "2026-11-01", "dead-1793500000", "f.zip")
        storage.put_bytes(orphan, b"left by a crashed export")
        result = run_segment_export(connect(), small, storage, request())
        assert not storage.exists(orphan)
        assert storage.list_keys("segment-export") == sorted([f.key for f in result.files] + [result.manifest_key])


# -- chunking, streaming and passes ---------------------------------------------------------------------


def _emails(storage, result) -> list[str]:
    return [u["email"] for u in read_export(storage, result)]


@pytest.mark.parametrize("n_members, expected", [(4_999, [4_999]), (5_000, [5_000]), (5_001, [5_000, 1]),
                                                  (10_000, [5_000, 5_000])])
def test_chunk_boundaries(tmp_path, n_members, expected):
    wh = Warehouse(tmp_path / "warehouse")
    write_synthetic_segment(wh, DAY, "big", n_members=n_members, n_profiles=n_members + 10)
    storage = LocalExportStorage(tmp_path / "exports")
    result = export_segment(connect(), wh, storage, request("big", ["email"]))
    assert sorted((f.lines for f in result.files), reverse=True) == expected
    assert sorted(_emails(storage, result)) == sorted(f"u{i}@example.com" for i in range(n_members))
    assert verify_segment_export(storage, result.manifest_key, n_members).passed
    manifest = json.loads(storage.get_bytes(result.manifest_key))
    assert sorted(f["lines"] for f in manifest["files"]) == sorted(expected) and manifest["members"] == n_members


def test_segment_larger_than_one_fetch_batch(tmp_path):
    """70,001 members: more than one 65,536-row Arrow batch, so chunks straddle batch boundaries."""
    wh = Warehouse(tmp_path / "warehouse")
    write_synthetic_segment(wh, DAY, "big", n_members=70_001, n_profiles=71_000)
    storage = LocalExportStorage(tmp_path / "exports")
    result = export_segment(connect(), wh, storage, request("big", ["email", "external_id", "random_bucket"]))
    assert sorted(f.lines for f in result.files) == [1] + [5_000] * 14
    users = read_export(storage, result)
    assert len(users) == 70_001 == len({u["email"] for u in users})
    assert all(u == {"email": u["email"], "external_id": "c" + u["email"][1:-12],
                     "random_bucket": int(u["email"][1:-12]) % 10000} for u in users)
    # tiny batches (many per chunk) and tiny passes (many per export) give the same users
    again = export_segment(connect(), wh, storage, request("big", ["email", "external_id", "random_bucket"]),
                           batch_rows=777, members_per_pass=9_000, writer_threads=1)
    assert sorted(f.lines for f in again.files) == [1] + [5_000] * 14
    assert sorted(read_export(storage, again), key=lambda u: u["email"]) == sorted(users, key=lambda u: u["email"])
    assert verify_segment_export(storage, again.manifest_key, 70_001).passed


@pytest.mark.parametrize("members_per_pass", [1, 2, 1_000_000])
def test_passes_dedupe_and_members_without_profile(tmp_path, members_per_pass):
    """Whatever the number of passes: one line per identity even when ``memberships`` lists it
    twice, and a member without a profile row still gets its line (braze_id and email only)."""
    wh = Warehouse(tmp_path / "warehouse")
    emails = ["a@x.io", "b@x.io", "c@x.io", "ghost@x.io"]
    write_day(wh, DAY, [profile(e, first_name=e[0].upper()) for e in emails[:3]], {"s": "S"}, {"s": emails})
    write_rows(wh, "memberships", DAY, [{"segment_id": "s", "identity_id": identity(e), "email": e}
                                        for e in emails + ["a@x.io", "ghost@x.io"]])
    storage = LocalExportStorage(tmp_path / "exports")
    result = export_segment(connect(), wh, storage, request("s", ["braze_id", "email", "first_name"]),
                            members_per_pass=members_per_pass)
    users = sorted(read_export(storage, result), key=lambda u: u["email"])
    assert users == [
        {"braze_id": identity("a@x.io"), "email": "a@x.io", "first_name": "A"},
        {"braze_id": identity("b@x.io"), "email": "b@x.io", "first_name": "B"},
        {"braze_id": identity("c@x.io"), "email": "c@x.io", "first_name": "C"},
        {"braze_id": identity("ghost@x.io"), "email": "ghost@x.io"},
    ]
    assert result.members == 4 and verify_segment_export(storage, result.manifest_key, 4).passed


def test_an_identity_with_two_profile_rows_fails_and_publishes_nothing(tmp_path):
    wh = Warehouse(tmp_path / "warehouse")
    write_day(wh, DAY, [profile("a@x.io"), profile("a@x.io", first_name="Twin")], {"s": "S"}, {"s": ["a@x.io"]})
    storage = LocalExportStorage(tmp_path / "exports")
    with pytest.raises(ExportInputError, match="2 lines for 1 members"):
        export_segment(connect(), wh, storage, request("s"))
    assert storage.list_keys("segment-export") == [] and not storage.list_temporaries("segment-export")


def test_money_is_a_json_number_with_its_cents(small, tmp_path):
    write_rows(small, "profiles", DAY, [profile("jane@x.io", total_revenue=Decimal("1234567.89")),
                                        profile("joe@x.io", total_revenue=Decimal("0.10"))])
    storage = LocalExportStorage(tmp_path / "exports")
    result = export_segment(connect(), small, storage, request(fields=["email", "total_revenue"], output_format="gzip"))
    (f,) = result.files
    text = gzip.decompress(storage.get_bytes(f.key)).decode()
    assert '"total_revenue":1234567.89' in text and '"total_revenue":0.10' in text  # numbers, not strings
    revenue = {u["email"]: u["total_revenue"] for u in map(json.loads, text.splitlines())}
    assert revenue == {"jane@x.io": 1234567.89, "joe@x.io": 0.1}
