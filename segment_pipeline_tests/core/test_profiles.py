"""Profiles: identity merge on normalized email, latest attributes win, behavioural aggregates."""

from __future__ import annotations

import datetime as dt

import duckdb
import pytest

from segment_pipeline.core.ingest import ingest_day
from segment_pipeline.core.profiles import build_profiles
from segment_pipeline.core.warehouse import Warehouse, connect
from segment_pipeline_tests.landing import event, profile, write_ndjson


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
