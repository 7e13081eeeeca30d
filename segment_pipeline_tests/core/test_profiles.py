"""Profiles from the declared model: identity merge, latest-given-wins links and attributes,
custom attributes merged per key, seen times, random_bucket. Raw tables are written directly in
the model's schema (ingestion has its own tests); computed traits: test_traits.py."""

from __future__ import annotations

import datetime as dt
import json
import os

import duckdb
import pytest

from segment_pipeline.core.model import load_model, parse_model
from segment_pipeline.core.profiles import build_profiles
from segment_pipeline.core.warehouse import Warehouse, connect
from segment_pipeline_tests.raw_tables import event_row, profile_row, write_raw

APPAREL = load_model("data/model.yaml")


@pytest.fixture
def wh(tmp_path):
    return Warehouse(tmp_path / "wh", APPAREL)


def run(wh: Warehouse, *days: str) -> dict[str, dict]:
    con = connect(preserve_order=True)
    out = {}
    for d in days:
        build_profiles(con, wh, d)
        rel = duckdb.connect().sql(f"SELECT * FROM {wh.scan('profiles', days=[d])}")
        out[d] = {row[1]: dict(zip(rel.columns, row, strict=True)) for row in rel.fetchall()}
    return out


def test_latest_given_value_wins_over_links_and_attributes_and_partial_updates_keep_values(wh):
    write_raw(wh, "raw_profiles", "2026-11-01", [
        profile_row("anna@example.com", "2026-11-01T08:00:00", first_name="Anna", city="Berlin", country="DE",
                    loyalty_tier="bronze", customer_id="C1", created_at="2026-10-01T00:00:00"),
        profile_row("anna@example.com", "2026-11-01T09:00:00", city="Hamburg"),
    ])
    write_raw(wh, "raw_profiles", "2026-11-02", [
        profile_row("anna@example.com", "2026-11-02T10:00:00", loyalty_tier="gold", phone="+4930123", customer_id="C9"),
        # an older update delivered late must not override newer values
        profile_row("anna@example.com", "2026-10-15T10:00:00", city="Munich", first_name="Annette", customer_id="C0"),
    ])
    out = run(wh, "2026-11-01", "2026-11-02")
    a1, a2 = out["2026-11-01"]["anna@example.com"], out["2026-11-02"]["anna@example.com"]
    assert (a1["city"], a1["loyalty_tier"], a1["phone"], a1["customer_id"]) == ("Hamburg", "bronze", None, "C1")
    assert (a2["city"], a2["loyalty_tier"], a2["phone"], a2["first_name"]) == ("Hamburg", "gold", "+4930123", "Anna")
    assert a2["customer_id"] == "C9" and a2["country"] == "DE"  # an identity link is latest-wins too
    assert a2["created_at"] == dt.datetime(2026, 10, 1)
    assert a2["updated_at"] == dt.datetime(2026, 11, 2, 10)
    assert a1["identity_id"] == a2["identity_id"] and len(a1["identity_id"]) == 16
    assert list(a2)[: 2 + len(APPAREL.links)] == ["identity_id", "email", *APPAREL.links]


def test_same_timestamp_ties_resolve_by_delivery_order(wh):
    write_raw(wh, "raw_profiles", "2026-11-01", [
        profile_row("a@example.com", "2026-11-01T08:00:00", city="First"),
        profile_row("a@example.com", "2026-11-01T08:00:00", city="Second"),
    ])
    assert run(wh, "2026-11-01")["2026-11-01"]["a@example.com"]["city"] == "Second"


@pytest.mark.parametrize(("first", "second"), [("a-morning.ndjson", "b-evening.ndjson"), ("b-morning.ndjson", "c-evening.ndjson")])
def test_same_time_records_in_two_files_resolve_by_file_name(wh, first, second):
    ts = "2026-11-01T08:00:00"
    rows = [
        {**profile_row("a@example.com", ts, city="Old"), "source_file": first, "source_line": 1},
        {**profile_row("b@example.com", ts, city=None), "source_file": first, "source_line": 2},
        {**profile_row("a@example.com", ts, city=None), "source_file": second, "source_line": 1},
        {**profile_row("b@example.com", ts, city="New"), "source_file": second, "source_line": 2},
    ]
    write_raw(wh, "raw_profiles", "2026-11-01", rows)
    day = run(wh, "2026-11-01")["2026-11-01"]
    assert (day["a@example.com"]["city"], day["b@example.com"]["city"]) == (None, "New")


def test_clear_is_ordered_like_any_value_and_a_later_value_sets_again(wh):
    write_raw(wh, "raw_profiles", "2026-11-01", [
        profile_row("set-then-clear@example.com", "2026-11-01T08:00:00", city="Berlin"),
        profile_row("set-then-clear@example.com", "2026-11-01T08:00:00", city=None),
        profile_row("clear-then-set@example.com", "2026-11-01T08:00:00", city=None),
        profile_row("clear-then-set@example.com", "2026-11-01T08:00:00", city="Paris"),
        profile_row("late-clear@example.com", "2026-11-01T09:00:00", city="Rome", phone="+1"),
    ])
    write_raw(wh, "raw_profiles", "2026-11-02", [
        profile_row("late-clear@example.com", "2026-11-01T07:00:00", city=None),  # older clear loses
        profile_row("clear-then-set@example.com", "2026-11-01T08:00:00", city=None),  # same time, later day wins
        profile_row("late-clear@example.com", "2026-11-02T07:00:00", phone=None),  # clears; city untouched
    ])
    write_raw(wh, "raw_profiles", "2026-11-03", [profile_row("late-clear@example.com", "2026-11-03T07:00:00", phone="+2")])
    out = run(wh, "2026-11-01", "2026-11-02", "2026-11-03")
    emails = ("set-then-clear@example.com", "clear-then-set@example.com", "late-clear@example.com")
    assert [out["2026-11-01"][e]["city"] for e in emails] == [None, "Paris", "Rome"]
    assert [out["2026-11-02"][e]["city"] for e in emails] == [None, None, "Rome"]
    assert [out[d]["late-clear@example.com"]["phone"] for d in ("2026-11-01", "2026-11-02", "2026-11-03")] == ["+1", None, "+2"]


def test_created_at_is_the_latest_given_value_never_guessed_and_counts_toward_first_seen(wh):
    write_raw(wh, "raw_profiles", "2026-11-01", [
        profile_row("a@example.com", "2026-11-01T08:00:00", created_at="2026-10-01T00:00:00"),
        profile_row("b@example.com", "2026-11-01T08:00:00", city="Berlin"),  # never says when it was created
        profile_row("c@example.com", "2026-11-01T08:00:00", created_at="2026-10-03T00:00:00"),
    ])
    write_raw(wh, "raw_profiles", "2026-11-02", [
        profile_row("a@example.com", "2026-11-02T08:00:00", created_at="2026-10-05T12:00:00"),  # a correction
        profile_row("a@example.com", "2026-11-02T09:00:00", city="Paris"),  # leaves created_at alone
        profile_row("c@example.com", "2026-11-02T08:00:00", created_at=None),  # clears it
    ])
    write_raw(wh, "raw_events", "2026-11-01", [event_row("e1", "b@example.com", "page_view", "2026-11-01T07:00:00"),
                                               event_row("e2", "guest@example.com", "order", "2026-11-01T10:00:00")])
    out = run(wh, "2026-11-01", "2026-11-02")
    d1, d2 = out["2026-11-01"], out["2026-11-02"]
    assert d1["a@example.com"]["created_at"] == dt.datetime(2026, 10, 1)
    assert d2["a@example.com"]["created_at"] == dt.datetime(2026, 10, 5, 12)  # later record wins, not the earliest
    assert d2["c@example.com"]["created_at"] is None
    assert (d2["b@example.com"]["created_at"], d2["b@example.com"]["first_seen_at"]) == (None, dt.datetime(2026, 11, 1, 7))
    guest = d2["guest@example.com"]  # seen only in events: an identity with empty attributes
    assert (guest["created_at"], guest["first_name"], guest["updated_at"]) == (None, None, None)
    assert guest["first_seen_at"] == guest["last_seen_at"] == dt.datetime(2026, 11, 1, 10)
    assert d2["a@example.com"]["first_seen_at"] == dt.datetime(2026, 10, 1)
    assert d2["a@example.com"]["last_seen_at"] == dt.datetime(2026, 11, 2, 9)


def test_custom_attributes_merge_per_key_latest_given_value_and_null_drops_a_key(wh):
    write_raw(wh, "raw_profiles", "2026-11-01", [
        profile_row("a@example.com", "2026-11-01T08:00:00", custom_attributes={"vip": True, "note": "x", "n": 1}),
        profile_row("a@example.com", "2026-11-01T09:00:00", custom_attributes={"n": 2, "tags": ["a", "b"]}),
        profile_row("a@example.com", "2026-11-01T07:00:00", custom_attributes={"n": 0, "old": "kept"}),  # older
        profile_row("b@example.com", "2026-11-01T08:00:00", city="Berlin"),
    ])
    write_raw(wh, "raw_profiles", "2026-11-02", [
        profile_row("a@example.com", "2026-11-02T08:00:00", custom_attributes={"note": None, "Ünïcode \"key\"": "v"}),
        profile_row("b@example.com", "2026-11-02T08:00:00", custom_attributes={"gone": None}),
    ])
    out = run(wh, "2026-11-01", "2026-11-02")
    a1 = out["2026-11-01"]["a@example.com"]["custom_attributes"]
    assert json.loads(a1) == {"vip": True, "note": "x", "n": 2, "tags": ["a", "b"], "old": "kept"}
    assert list(json.loads(a1)) == sorted(json.loads(a1))  # keys in sorted order: deterministic bytes
    a2 = json.loads(out["2026-11-02"]["a@example.com"]["custom_attributes"])
    assert a2 == {"vip": True, "n": 2, "tags": ["a", "b"], "old": "kept", "Ünïcode \"key\"": "v"}
    assert out["2026-11-02"]["b@example.com"]["custom_attributes"] is None  # no key left
    assert out["2026-11-01"]["b@example.com"]["custom_attributes"] is None


def test_random_bucket_is_stable_and_in_range(wh):
    emails = [f"user{i}@example.com" for i in range(400)]
    write_raw(wh, "raw_profiles", "2026-11-01", [profile_row(e, "2026-11-01T08:00:00") for e in emails])
    write_raw(wh, "raw_profiles", "2026-11-02", [profile_row(e, "2026-11-02T08:00:00", city="X") for e in emails[:10]])
    out = run(wh, "2026-11-01", "2026-11-02")
    b1 = {e: p["random_bucket"] for e, p in out["2026-11-01"].items()}
    b2 = {e: p["random_bucket"] for e, p in out["2026-11-02"].items()}
    assert b1 == b2
    assert all(0 <= b <= 9999 for b in b1.values())
    assert len(set(b1.values())) > 350  # spread out, not a constant
    expected = duckdb.connect().execute("SELECT (md5_number('user0@example.com') % 10000)::INTEGER").fetchall()[0][0]
    assert b1["user0@example.com"] == expected


def test_partitions_written_before_the_cleared_column_still_build(wh):
    """A warehouse from before ``raw_profiles.cleared`` existed: its partitions read as 'nothing cleared'."""
    write_raw(wh, "raw_profiles", "2026-11-01", [profile_row("a@example.com", "2026-11-01T08:00:00", city="Berlin")])
    write_raw(wh, "raw_profiles", "2026-11-02", [profile_row("a@example.com", "2026-11-02T08:00:00", city=None)])
    con = connect(preserve_order=True)
    old = wh.partition_path("raw_profiles", "2026-11-01")
    con.execute(f"COPY (SELECT * EXCLUDE (cleared) FROM read_parquet('{old}')) TO '{old}.old' (FORMAT parquet)")
    os.replace(f"{old}.old", old)
    build_profiles(con, wh, "2026-11-02")
    assert con.execute(f"SELECT city FROM {wh.scan('profiles', days=['2026-11-02'])}").fetchall() == [(None,)]


def test_an_attribute_declared_after_its_days_were_ingested_names_the_days_to_reingest(tmp_path):
    """Adding an attribute (or a trait on a new property) to the model without re-ingesting: the
    profiles refuse, naming the column, the days and the command, instead of DuckDB's binder error."""
    before = parse_model({"attributes": {"city": "string"},
                          "events": {"Viewed": {"properties": {"sku": "string"}}}})
    old = Warehouse(tmp_path / "wh", before)
    for day in ("2026-11-01", "2026-11-02"):
        write_raw(old, "raw_profiles", day, [profile_row("a@example.com", f"{day}T08:00:00", city="Berlin")])
        write_raw(old, "raw_events", day, [event_row(day, "a@example.com", "Viewed", f"{day}T09:00:00", sku="x")])
    con = connect()
    build_profiles(con, old, "2026-11-02")
    grown = Warehouse(tmp_path / "wh", parse_model({
        "attributes": {"city": "string", "pets": "list[string]"},
        "events": {"Viewed": {"properties": {"sku": "string", "breed": "string"}}},
        "traits": {"breeds": {"distinct_count": {"property": "breed"}}}}))
    with pytest.raises(ValueError) as exc:
        build_profiles(con, grown, "2026-11-02")
    assert str(exc.value) == (
        "profiles for 2026-11-02: the raw_profiles partition(s) of 2026-11-01, 2026-11-02 lack column(s) ['pets']: "
        "they were ingested before the data model declared them. Re-run ingestion from 2026-11-01 on, then "
        "profiles: dg launch --job daily_segments --partition-range 2026-11-01...2026-11-02")
    write_raw(grown, "raw_profiles", "2026-11-01", [profile_row("a@example.com", "2026-11-01T08:00:00", pets=["cat"])])
    write_raw(grown, "raw_profiles", "2026-11-02", [profile_row("a@example.com", "2026-11-02T08:00:00", city="Rome")])
    with pytest.raises(ValueError, match=r"raw_events partition\(s\) of 2026-11-01, 2026-11-02 lack column\(s\) \['breed'\]"):
        build_profiles(con, grown, "2026-11-02")
    for day in ("2026-11-01", "2026-11-02"):  # re-ingested: builds
        write_raw(grown, "raw_events", day, [event_row(day, "a@example.com", "Viewed", f"{day}T09:00:00", breed="pug")])
    build_profiles(con, grown, "2026-11-02")
    row = con.execute(f"SELECT pets, city, breeds FROM {grown.scan('profiles', days=['2026-11-02'])}").fetchall()
    assert row == [(["cat"], "Rome", 1)]


def test_rebuilding_a_day_gives_the_same_bytes(wh):
    write_raw(wh, "raw_profiles", "2026-11-01", [profile_row(f"u{i}@example.com", "2026-11-01T08:00:00", city=f"c{i % 7}",
                                                             custom_attributes={"k": i}) for i in range(300)])
    write_raw(wh, "raw_events", "2026-11-01", [event_row(str(i), f"u{i % 350}@example.com", "order", "2026-11-01T09:00:00",
                                                         brand=f"b{i % 3}", revenue=i, utm_source=f"s{i % 5}") for i in range(900)])
    con = connect()
    build_profiles(con, wh, "2026-11-01")
    first = wh.partition_path("profiles", "2026-11-01").read_bytes()
    build_profiles(con, wh, "2026-11-01")
    assert wh.partition_path("profiles", "2026-11-01").read_bytes() == first


def test_a_model_with_nothing_declared_still_gives_identities_and_custom_attributes(tmp_path):
    wh = Warehouse(tmp_path / "wh", parse_model({}))
    write_raw(wh, "raw_profiles", "2026-11-01", [profile_row("a@example.com", "2026-11-01T08:00:00",
                                                             custom_attributes={"plan": "pro"})])
    write_raw(wh, "raw_events", "2026-11-01", [event_row("1", "b@example.com", "Signed Up", "2026-11-01T09:00:00")])
    out = run(wh, "2026-11-01")["2026-11-01"]
    assert list(out["a@example.com"]) == ["identity_id", "email", "custom_attributes", "updated_at", "first_seen_at",
                                          "last_seen_at", "random_bucket", "date"]
    assert (out["a@example.com"]["custom_attributes"], out["b@example.com"]["first_seen_at"]) == (
        '{"plan":"pro"}', dt.datetime(2026, 11, 1, 9))
