"""Memberships over days: dynamic vs static, inactive and scheduled segments, day-over-day changes."""

from __future__ import annotations

import duckdb
import pytest

from segment_pipeline.core.memberships import compute_memberships
from segment_pipeline.core.segments import parse_catalog
from segment_pipeline.core.warehouse import Warehouse, connect
from segment_pipeline_tests.landing import members
from segment_pipeline_tests.partitions import write_rows

DAYS = ["2026-11-01", "2026-11-02", "2026-11-03", "2026-11-04"]


def catalog(*extra: dict):
    buyers = {"id": "buyers", "name": "Buyers", "rule": {"field": "order_count", "op": ">=", "value": 1}}
    return parse_catalog({"segments": [buyers, *extra]}, source="test.yaml")


@pytest.fixture
def landing():
    """A new buyer each day: a on day 1, b on day 2, c on day 3, d on day 4 (alternating US/DE):
    ``{day: (profiles rows as of that day, raw_events rows landed that day)}``."""
    out, people = {}, []
    for i, (day, who) in enumerate(zip(DAYS, ["a", "b", "c", "d"], strict=True)):
        people.append({"email": f"{who}@example.com", "country": "DE" if i % 2 else "US", "order_count": 1,
                       "total_revenue": 10, "updated_at": f"{day}T08:00:00"})
        order = {"event_id": f"e{i}", "email": f"{who}@example.com", "event": "order",
                 "occurred_at": f"{day}T09:00:00", "revenue": 10}
        out[day] = (list(people), [order])
    return out


def run_pipeline(warehouse, landing: dict, catalog, days: list[str], refresh_static=()) -> dict:
    """Write the days' profiles and raw_events partitions, then compute memberships (ascending)."""
    con = connect(preserve_order=True)
    reports = {}
    for day in days:
        profiles, events = landing[day]
        write_rows(warehouse, "profiles", day, profiles)
        write_rows(warehouse, "raw_events", day, events)
        reports[day] = compute_memberships(con, warehouse, catalog, day, refresh_static=refresh_static)
    return reports


def test_dynamic_segment_refreshes_daily_and_changes_are_recorded(tmp_path, landing):
    wh = Warehouse(tmp_path / "wh")
    reports = run_pipeline(wh, landing, catalog(), DAYS)
    assert [len(members(wh, d, "buyers")) for d in DAYS] == [1, 2, 3, 4]
    changes = duckdb.connect().execute(
        f"SELECT date::VARCHAR, email, change FROM {wh.scan('membership_changes')} ORDER BY ALL"
    ).fetchall()
    assert changes == [
        ("2026-11-01", "a@example.com", "added"),
        ("2026-11-02", "b@example.com", "added"),
        ("2026-11-03", "c@example.com", "added"),
        ("2026-11-04", "d@example.com", "added"),
    ]
    assert reports["2026-11-02"].compared_with.isoformat() == "2026-11-01"
    assert reports["2026-11-01"].compared_with is None
    stats = reports["2026-11-04"].by_id()["buyers"]
    assert (stats.status, stats.member_count, stats.added, stats.removed) == ("refreshed", 4, 1, 0)


def test_removals_when_a_rule_stops_matching(tmp_path, landing):
    wh = Warehouse(tmp_path / "wh")
    recent = {"id": "recent", "name": "Ordered in the last 2 days",
              "rule": {"event": {"name": "order", "within_days": 2}}}
    reports = run_pipeline(wh, landing, catalog(recent), DAYS)
    assert members(wh, "2026-11-04", "recent") == {"c@example.com", "d@example.com"}
    day4 = reports["2026-11-04"].by_id()["recent"]
    assert (day4.added, day4.removed) == (1, 1)
    removed = duckdb.connect().execute(
        f"SELECT email FROM {wh.scan('membership_changes', days=['2026-11-04'])} "
        "WHERE segment_id = 'recent' AND change = 'removed'"
    ).fetchall()
    assert removed == [("b@example.com",)]


def test_static_segment_is_frozen_at_first_materialization_until_refreshed(tmp_path, landing):
    wh = Warehouse(tmp_path / "wh")
    static = {"id": "launch_list", "name": "Launch list", "type": "static", "active_from": "2026-11-02",
              "rule": {"segment": "buyers"}}
    cat = catalog(static)
    reports = run_pipeline(wh, landing, cat, DAYS[:3])
    assert members(wh, "2026-11-01", "launch_list") == set()  # not active yet
    assert reports["2026-11-01"].by_id()["launch_list"].status == "skipped"
    frozen = {"a@example.com", "b@example.com"}
    assert members(wh, "2026-11-02", "launch_list") == frozen
    assert members(wh, "2026-11-03", "launch_list") == frozen  # buyers grew, the static segment did not
    s3 = reports["2026-11-03"].by_id()["launch_list"]
    assert (s3.status, str(s3.frozen_on)) == ("frozen", "2026-11-02")
    # re-running a frozen day is idempotent; an explicit refresh re-evaluates and moves the anchor
    run_pipeline(wh, landing, cat, ["2026-11-03"])
    assert members(wh, "2026-11-03", "launch_list") == frozen
    refreshed = run_pipeline(wh, landing, cat, ["2026-11-03"], refresh_static=["launch_list"])
    assert members(wh, "2026-11-03", "launch_list") == frozen | {"c@example.com"}
    assert refreshed["2026-11-03"].by_id()["launch_list"].status == "refreshed"
    run_pipeline(wh, landing, cat, ["2026-11-04"])
    assert members(wh, "2026-11-04", "launch_list") == frozen | {"c@example.com"}


def test_inactive_and_scheduled_segments_are_skipped(tmp_path, landing):
    wh = Warehouse(tmp_path / "wh")
    paused = {"id": "paused", "name": "Paused", "status": "inactive", "rule": {"segment": "buyers"}}
    window = {"id": "window", "name": "Window", "active_from": "2026-11-02", "active_until": "2026-11-04",
              "rule": {"segment": "buyers"}}
    uses_paused = {"id": "uses_paused", "name": "Uses paused", "rule": {"any": [{"segment": "paused"}]}}
    reports = run_pipeline(wh, landing, catalog(paused, window, uses_paused), DAYS)
    statuses = {d: {s: reports[d].by_id()[s].status for s in ("paused", "window")} for d in DAYS}
    assert statuses == {
        "2026-11-01": {"paused": "skipped", "window": "skipped"},
        "2026-11-02": {"paused": "skipped", "window": "refreshed"},
        "2026-11-03": {"paused": "skipped", "window": "refreshed"},
        "2026-11-04": {"paused": "skipped", "window": "skipped"},  # active_until is exclusive
    }
    assert [len(members(wh, d, "window")) for d in DAYS] == [0, 2, 3, 0]
    assert all(members(wh, d, "paused") == set() for d in DAYS)
    assert all(members(wh, d, "uses_paused") == set() for d in DAYS)  # an inactive segment has no members
    removed_day4 = reports["2026-11-04"].by_id()["window"]
    assert (removed_day4.member_count, removed_day4.removed) == (0, 3)


def test_range_in_one_go_equals_day_by_day(tmp_path, landing):
    static = {"id": "frozen", "name": "Frozen", "type": "static", "rule": {"field": "country", "op": "=", "value": "DE"}}
    cat = catalog(static)
    one_go, by_day = Warehouse(tmp_path / "a"), Warehouse(tmp_path / "b")
    run_pipeline(one_go, landing, cat, DAYS)
    for day in DAYS:
        run_pipeline(by_day, landing, cat, [day])
    run_pipeline(by_day, landing, cat, ["2026-11-02"])  # and a re-run replaces, never appends
    con = duckdb.connect()
    for table in ("memberships", "membership_changes", "segment_stats"):
        a = con.execute(f"SELECT * FROM {one_go.scan(table)} ORDER BY ALL").fetchall()
        b = con.execute(f"SELECT * FROM {by_day.scan(table)} ORDER BY ALL").fetchall()
        assert a == b, table
        assert a, table


def test_unknown_refresh_segment_is_rejected(tmp_path, landing):
    with pytest.raises(ValueError, match="ghost"):
        run_pipeline(Warehouse(tmp_path / "wh"), landing, catalog(), DAYS[:1], refresh_static=["ghost"])


def test_rules_on_columns_the_days_data_lacks_name_the_column_and_the_fix(tmp_path):
    """The model declared an attribute and a property after the day's partitions were written."""
    from segment_pipeline.core.model import parse_model

    before = parse_model({"events": {"Order Completed": {}}})
    after = parse_model({"attributes": {"skin_type": "string"},
                         "events": {"Order Completed": {"properties": {"revenue": "money"}}}})
    write_rows(Warehouse(tmp_path / "wh", model=before), "profiles", DAYS[0], [{"email": "a@example.com"}])
    write_rows(Warehouse(tmp_path / "wh", model=before), "raw_events", DAYS[0], [
        {"event_id": "e1", "email": "a@example.com", "event": "Order Completed", "occurred_at": f"{DAYS[0]}T09:00:00"}])
    wh = Warehouse(tmp_path / "wh", model=after)

    def segments(rule):
        return parse_catalog({"segments": [{"id": "s", "name": "S", "rule": rule}]}, source="test.yaml", model=after)

    with pytest.raises(ValueError, match=r"profiles column\(s\) \['skin_type'\].*partition of 2026-11-01.*re-run profiles"):
        compute_memberships(connect(), wh, segments({"field": "skin_type", "op": "=", "value": "oily"}), DAYS[0])
    with pytest.raises(ValueError, match=r"raw_events column\(s\) \['revenue'\].*re-run ingestion"):
        compute_memberships(connect(), wh, segments({"event": {"name": "Order Completed", "measure": "sum",
                                                               "property": "revenue", "value": 10}}), DAYS[0])
    # rules that read only what the data has still evaluate
    compute_memberships(connect(), wh, segments({"event": {"name": "Order Completed"}}), DAYS[0])
    assert members(wh, DAYS[0], "s") == {"a@example.com"}
