"""Profiles: identity merge on normalized email, latest attributes win, behavioural aggregates."""

from __future__ import annotations

import datetime as dt
import os

import duckdb
import pytest

from segment_pipeline.core.ingest import ingest_day
from segment_pipeline.core.profiles import build_profiles
from segment_pipeline.core.segments import parse_catalog
from segment_pipeline.core.sources import SourceOptions
from segment_pipeline.core.warehouse import Warehouse, connect
from segment_pipeline_tests.landing import (
    event,
    members,
    profile,
    run_pipeline,
    write_csv,
    write_ndjson,
    write_parquet,
)


@pytest.fixture
def setup(tmp_path):
    wh = Warehouse(tmp_path / "wh")
    landing = tmp_path / "landing"

    def run(*days: str) -> dict[str, dict]:
        con = connect(preserve_order=True)
        for d in sorted({p.name[5:] for k in ("profiles", "events") if (landing / k).exists() for p in (landing / k).iterdir()}):
            for kind in ("profiles", "events"):
                ingest_day(con, wh, landing, kind, d)
        out = {}
        for d in days:
            build_profiles(con, wh, d)
            rel = duckdb.connect().sql(f"SELECT * FROM {wh.scan('profiles', days=[d])}")
            out[d] = {row[1]: dict(zip(rel.columns, row, strict=True)) for row in rel.fetchall()}
        return out

    return wh, landing, run


def test_identity_merge_latest_attributes_win_and_partial_updates_keep_values(setup):
    wh, landing, run = setup
    write_ndjson(landing, "profiles", "2026-11-01", [
        profile("Anna.Schmidt@Example.com", "2026-11-01T08:00:00Z", first_name="Anna", city="Berlin",
                country="DE", loyalty_tier="bronze", customer_id="C1", created_at="2026-10-01T00:00:00Z"),
        profile("  anna.schmidt@example.com ", "2026-11-01T09:00:00Z", city="Hamburg"),
    ])
    write_ndjson(landing, "profiles", "2026-11-02", [
        profile("ANNA.SCHMIDT@EXAMPLE.COM", "2026-11-02T10:00:00Z", loyalty_tier="gold", phone="+4930123"),
        # an older update delivered late must not override newer values
        profile("anna.schmidt@example.com", "2026-10-15T10:00:00Z", city="Munich", first_name="Annette"),
    ])
    out = run("2026-11-01", "2026-11-02")
    day1, day2 = out["2026-11-01"], out["2026-11-02"]
    assert list(day1) == ["anna.schmidt@example.com"] and list(day2) == ["anna.schmidt@example.com"]
    a1, a2 = day1["anna.schmidt@example.com"], day2["anna.schmidt@example.com"]
    assert (a1["city"], a1["loyalty_tier"], a1["phone"]) == ("Hamburg", "bronze", None)
    assert (a2["city"], a2["loyalty_tier"], a2["phone"], a2["first_name"]) == ("Hamburg", "gold", "+4930123", "Anna")
    assert a2["customer_id"] == "C1" and a2["country"] == "DE"
    assert a2["created_at"] == dt.datetime(2026, 10, 1)
    assert a2["updated_at"] == dt.datetime(2026, 11, 2, 10)
    assert a1["identity_id"] == a2["identity_id"] and len(a1["identity_id"]) == 16


def test_same_timestamp_ties_resolve_by_delivery_order(setup):
    wh, landing, run = setup
    write_ndjson(landing, "profiles", "2026-11-01", [
        profile("a@example.com", "2026-11-01T08:00:00Z", city="First"),
        profile("a@example.com", "2026-11-01T08:00:00Z", city="Second"),
    ])
    assert run("2026-11-01")["2026-11-01"]["a@example.com"]["city"] == "Second"


def test_behavioural_aggregates_as_of_each_day(setup):
    wh, landing, run = setup
    write_ndjson(landing, "profiles", "2026-11-01", [profile("a@example.com", "2026-11-01T08:00:00Z")])
    write_ndjson(landing, "events", "2026-11-01", [
        event("1", "a@example.com", "page_view", "2026-11-01T09:00:00Z", utm_source="instagram"),
        event("2", "A@example.com", "order", "2026-11-01T10:00:00Z", brand="Nike", category="jackets", revenue=100),
    ])
    write_ndjson(landing, "events", "2026-11-03", [
        event("3", "a@example.com", "product_view", "2026-11-03T09:00:00Z", brand="Adidas", category="jackets",
              utm_source="google"),
        event("4", "a@example.com", "product_view", "2026-11-03T09:30:00Z", brand="Adidas", category="sneakers"),
        event("5", "a@example.com", "order", "2026-11-03T10:00:00Z", brand="Adidas", category="sneakers", revenue=50.5),
        # a guest who only ever checked out: an identity without a profile record
        event("6", "guest@example.com", "order", "2026-11-03T11:00:00Z", revenue=20),
    ])
    out = run("2026-11-02", "2026-11-03")
    a2 = out["2026-11-02"]["a@example.com"]
    assert "guest@example.com" not in out["2026-11-02"]
    assert (a2["order_count"], a2["total_revenue"], a2["days_since_last_order"]) == (1, 100.0, 1)
    assert (a2["top_brand_90d"], a2["top_brand_share_90d"]) == ("Nike", 1.0)
    a3 = out["2026-11-03"]["a@example.com"]
    assert (a3["order_count"], a3["total_revenue"]) == (2, 150.5)
    assert a3["first_order_at"] == dt.datetime(2026, 11, 1, 10) and a3["last_order_at"] == dt.datetime(2026, 11, 3, 10)
    assert a3["first_utm_source"] == "instagram"  # first touch, not the latest
    assert (a3["top_brand_90d"], a3["brand_interactions_90d"]) == ("Adidas", 4)
    assert a3["top_brand_share_90d"] == pytest.approx(0.75)
    assert a3["top_category_90d"] == "sneakers"  # 2 sneakers vs 2 jackets: ties break by name, deterministic
    assert a3["event_count_30d"] == 5 and a3["last_seen_at"] == dt.datetime(2026, 11, 3, 10)
    guest = out["2026-11-03"]["guest@example.com"]
    assert (guest["order_count"], guest["first_name"], guest["created_at"]) == (1, None, None)  # never given
    assert guest["first_seen_at"] == dt.datetime(2026, 11, 3, 11)


def test_random_bucket_is_stable_and_in_range(setup):
    wh, landing, run = setup
    emails = [f"user{i}@example.com" for i in range(400)]
    write_ndjson(landing, "profiles", "2026-11-01", [profile(e, "2026-11-01T08:00:00Z") for e in emails])
    write_ndjson(landing, "profiles", "2026-11-02", [profile(e.upper(), "2026-11-02T08:00:00Z") for e in emails[:10]])
    out = run("2026-11-01", "2026-11-02")
    b1 = {e: p["random_bucket"] for e, p in out["2026-11-01"].items()}
    b2 = {e: p["random_bucket"] for e, p in out["2026-11-02"].items()}
    assert b1 == b2
    assert all(0 <= b <= 9999 for b in b1.values())
    assert len(set(b1.values())) > 350  # spread out, not a constant
    # stable across runs and machines: md5 of the normalized email
    expected = duckdb.connect().execute("SELECT (md5_number('user0@example.com') % 10000)::INTEGER").fetchall()[0][0]
    assert b1["user0@example.com"] == expected


# -- clearing a value (issue 10 point 7) and created_at (point 11) ------------------------------


def test_explicit_null_clears_missing_key_keeps_and_a_later_value_sets_again(setup):
    wh, landing, run = setup
    write_ndjson(landing, "profiles", "2026-11-01", [
        profile("a@example.com", "2026-11-01T08:00:00Z", country="DE", phone="+4930123", city="Berlin"),
    ])
    write_ndjson(landing, "profiles", "2026-11-02", [
        # the customer removed the phone number and the country; the city is not mentioned
        {"email": "a@example.com", "updated_at": "2026-11-02T08:00:00Z", "country": None, "phone": ""},
    ])
    write_ndjson(landing, "profiles", "2026-11-03", [profile("a@example.com", "2026-11-03T08:00:00Z", country="fr")])
    out = run("2026-11-01", "2026-11-02", "2026-11-03")
    a1, a2, a3 = (out[d]["a@example.com"] for d in ("2026-11-01", "2026-11-02", "2026-11-03"))
    assert (a1["country"], a1["phone"], a1["city"]) == ("DE", "+4930123", "Berlin")
    assert (a2["country"], a2["phone"], a2["city"]) == (None, None, "Berlin")
    assert (a3["country"], a3["phone"], a3["city"]) == ("FR", None, "Berlin")  # set again; phone stays cleared


def test_clear_is_ordered_like_any_value(setup):
    wh, landing, run = setup
    write_ndjson(landing, "profiles", "2026-11-01", [
        # same updated_at: the later line wins, whether it sets or clears
        profile("set-then-clear@example.com", "2026-11-01T08:00:00Z", city="Berlin"),
        profile("set-then-clear@example.com", "2026-11-01T08:00:00Z", city=None),
        profile("clear-then-set@example.com", "2026-11-01T08:00:00Z", city=None),
        profile("clear-then-set@example.com", "2026-11-01T08:00:00Z", city="Paris"),
        profile("late-clear@example.com", "2026-11-01T09:00:00Z", city="Rome"),
    ])
    write_ndjson(landing, "profiles", "2026-11-02", [
        # an older clear delivered a day later loses to the newer value
        profile("late-clear@example.com", "2026-11-01T07:00:00Z", city=None),
        # same updated_at on a later landing day wins
        profile("clear-then-set@example.com", "2026-11-01T08:00:00Z", city=None),
    ])
    out = run("2026-11-01", "2026-11-02")
    day1, day2 = out["2026-11-01"], out["2026-11-02"]
    assert [day1[e]["city"] for e in ("set-then-clear@example.com", "clear-then-set@example.com", "late-clear@example.com")] \
        == [None, "Paris", "Rome"]
    assert [day2[e]["city"] for e in ("set-then-clear@example.com", "clear-then-set@example.com", "late-clear@example.com")] \
        == [None, None, "Rome"]


@pytest.mark.parametrize(("empty_cell", "expected"), [("keep", ("DE", "+4930123")), ("clear", (None, None))])
def test_empty_csv_cell_and_parquet_null_follow_the_source_setting(tmp_path, empty_cell, expected):
    wh, landing = Warehouse(tmp_path / "wh"), tmp_path / "landing"
    write_ndjson(landing, "profiles", "2026-11-01", [
        profile("c@example.com", "2026-11-01T08:00:00Z", country="DE", phone="+4930123", city="Berlin"),
        profile("p@example.com", "2026-11-01T08:00:00Z", country="DE", phone="+4930123", city="Berlin"),
    ])
    # the CSV has no city column and the Parquet file no city field: city is kept either way
    write_csv(landing, "profiles", "2026-11-02", ["email", "updated_at", "country", "phone"],
              [["c@example.com", "2026-11-02T08:00:00Z", "", ""]])
    write_parquet(landing, "profiles", "2026-11-02", [
        {"email": "p@example.com", "updated_at": "2026-11-02T08:00:00Z", "country": None, "phone": ""},
    ])
    options = SourceOptions(csv_empty_cell=empty_cell)
    con = connect(preserve_order=True)
    for day in ("2026-11-01", "2026-11-02"):
        ingest_day(con, wh, landing, "profiles", day, options)
    build_profiles(con, wh, "2026-11-02")
    got = dict(con.execute(
        f"SELECT email, (country, phone, city) FROM {wh.scan('profiles', days=['2026-11-02'])}"
    ).fetchall())
    assert got == {
        "c@example.com": (*expected, "Berlin"),
        "p@example.com": (*expected, "Berlin"),
    }


def test_created_at_is_the_latest_given_value_and_null_when_never_given(setup):
    wh, landing, run = setup
    write_ndjson(landing, "profiles", "2026-11-01", [
        profile("a@example.com", "2026-11-01T08:00:00Z", created_at="2026-10-01T00:00:00Z"),
        profile("b@example.com", "2026-11-01T08:00:00Z", city="Berlin"),  # never says when it was created
        profile("c@example.com", "2026-11-01T08:00:00Z", created_at="2026-10-03T00:00:00Z"),
    ])
    write_ndjson(landing, "profiles", "2026-11-02", [
        profile("a@example.com", "2026-11-02T08:00:00Z", created_at="2026-10-05T12:00:00Z"),  # a correction
        profile("a@example.com", "2026-11-02T09:00:00Z", city="Paris"),  # leaves created_at alone
        profile("c@example.com", "2026-11-02T08:00:00Z", created_at=None),  # clears it
    ])
    write_ndjson(landing, "events", "2026-11-01", [event("e1", "b@example.com", "page_view", "2026-11-01T07:00:00Z"),
                                                   event("e2", "guest@example.com", "order", "2026-11-01T10:00:00Z")])
    out = run("2026-11-01", "2026-11-02")
    d1, d2 = out["2026-11-01"], out["2026-11-02"]
    assert d1["a@example.com"]["created_at"] == dt.datetime(2026, 10, 1)
    assert d2["a@example.com"]["created_at"] == dt.datetime(2026, 10, 5, 12)  # later record wins, not the earliest
    assert d2["c@example.com"]["created_at"] is None
    # never given: null, not the first updated_at or event; first_seen_at has that meaning
    assert (d2["b@example.com"]["created_at"], d2["b@example.com"]["first_seen_at"]) == (None, dt.datetime(2026, 11, 1, 7))
    assert (d2["guest@example.com"]["created_at"], d2["guest@example.com"]["first_seen_at"]) == (
        None, dt.datetime(2026, 11, 1, 10))
    assert d2["a@example.com"]["first_seen_at"] == dt.datetime(2026, 10, 1)


def test_created_at_is_null_matches_in_segments(tmp_path):
    wh, landing = Warehouse(tmp_path / "wh"), tmp_path / "landing"
    write_ndjson(landing, "profiles", "2026-11-01", [
        profile("known@example.com", "2026-11-01T08:00:00Z", created_at="2026-10-01T00:00:00Z"),
        profile("unknown@example.com", "2026-11-01T08:00:00Z"),
    ])
    write_ndjson(landing, "events", "2026-11-01", [event("e1", "guest@example.com", "order", "2026-11-01T10:00:00Z")])
    catalog = parse_catalog({"segments": [
        {"id": "no_created", "name": "No created_at", "rule": {"field": "created_at", "op": "is null"}},
        {"id": "old", "name": "Created before November", "rule": {"field": "created_at", "op": "<", "value": "2026-11-01"}},
    ]}, source="test.yaml")
    run_pipeline(wh, landing, catalog, ["2026-11-01"])
    assert members(wh, "2026-11-01", "no_created") == {"unknown@example.com", "guest@example.com"}
    assert members(wh, "2026-11-01", "old") == {"known@example.com"}


def test_partitions_written_before_the_cleared_column_still_build(setup):
    """A warehouse from before ``raw_profiles.cleared`` existed: its partitions read as 'nothing cleared'."""
    wh, landing, run = setup
    write_ndjson(landing, "profiles", "2026-11-01", [profile("a@example.com", "2026-11-01T08:00:00Z", city="Berlin")])
    write_ndjson(landing, "profiles", "2026-11-02", [profile("a@example.com", "2026-11-02T08:00:00Z", city=None)])
    con = connect(preserve_order=True)
    for day in ("2026-11-01", "2026-11-02"):
        ingest_day(con, wh, landing, "profiles", day)
    old = wh.partition_path("raw_profiles", "2026-11-01")
    con.execute(f"COPY (SELECT * EXCLUDE (cleared) FROM read_parquet('{old}')) TO '{old}.old' (FORMAT parquet)")
    os.replace(f"{old}.old", old)
    build_profiles(con, wh, "2026-11-02")
    got = con.execute(f"SELECT city FROM {wh.scan('profiles', days=['2026-11-02'])}").fetchall()
    assert got == [(None,)]


@pytest.mark.parametrize(("first", "second"), [("a-morning.ndjson", "b-evening.ndjson"), ("b-morning.ndjson", "c-evening.ndjson")])
def test_same_time_records_in_two_files_resolve_by_file_name(setup, first, second):
    wh, landing, run = setup
    ts = "2026-11-01T08:00:00Z"
    write_ndjson(landing, "profiles", "2026-11-01", [profile("a@example.com", ts, city="Old"),
                                                     profile("b@example.com", ts, city=None)], name=first)
    write_ndjson(landing, "profiles", "2026-11-01", [profile("a@example.com", ts, city=None),
                                                     profile("b@example.com", ts, city="New")], name=second)
    day = run("2026-11-01")["2026-11-01"]
    assert (day["a@example.com"]["city"], day["b@example.com"]["city"]) == (None, "New")
