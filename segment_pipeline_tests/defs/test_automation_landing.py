"""The landing-zone sensor: file versions, settling, cursor and run keys, late days, partitions."""

from __future__ import annotations

import datetime as dt
import os
import time
from pathlib import Path

import dagster as dg
import pytest

from segment_pipeline.core.landing_watch import LandingCursor, detect_changes, rerun_range, scan_landing
from segment_pipeline.defs.automation.sensors import (
    LANDING_DAYS_TAG,
    PIPELINE_TAG,
    RANGE_END,
    RANGE_START,
    landing_zone_sensor,
)
from segment_pipeline.defs.resources import LandingZoneResource
from segment_pipeline_tests.landing import event, profile, write_ndjson

OLD = time.time() - 3600  # an mtime well past any settle window
_DEFS: dg.Definitions | None = None  # the code location, loaded once


def land(root: Path, kind: str, day: str, rows: list, name: str | None = None, mtime: float | None = OLD) -> Path:
    path = write_ndjson(root, kind, day, rows, name=name)
    if mtime is not None:
        os.utime(path, (mtime, mtime))
    return path


def profiles_rows(n: int = 2, day: str = "2026-11-03") -> list[dict]:
    return [profile(f"p{i}@example.com", f"{day}T10:00:00Z", country="DE") for i in range(n)]


def evaluate(instance, root: Path, cursor: str | None):
    from segment_pipeline.definitions import defs

    global _DEFS
    _DEFS = _DEFS or defs()
    with dg.build_sensor_context(instance=instance, cursor=cursor, definitions=_DEFS,
                                 resources={"landing": LandingZoneResource(root=str(root))}) as context:
        return landing_zone_sensor.evaluate_tick(context), context


@pytest.fixture
def instance():
    with dg.instance_for_test() as inst:
        yield inst


@pytest.fixture(autouse=True)
def settle_window(monkeypatch):
    monkeypatch.setenv("SEGMENT_PIPELINE_LANDING_SETTLE_SECONDS", "60")


# -- the pure scan/cursor logic ----------------------------------------------------------------------------


def test_scan_ignores_files_still_being_written_and_waits_for_fresh_ones(tmp_path):
    land(tmp_path, "profiles", "2026-11-03", profiles_rows(), name="a.ndjson")
    land(tmp_path, "events", "2026-11-03", [], name="b.ndjson.part")  # still being written: ignored
    land(tmp_path, "events", "2026-11-03", [], name=".hidden.ndjson")
    land(tmp_path, "events", "2026-11-03", [], name="c.ndjson.tmp")
    fresh = land(tmp_path, "events", "2026-11-04", [], name="d.ndjson", mtime=None)  # just written
    scans = scan_landing(tmp_path, now=time.time(), settle_seconds=60)
    assert [f.path for f in scans["2026-11-03"].files] == ["profiles/date=2026-11-03/a.ndjson"]
    assert scans["2026-11-03"].settled
    assert not scans["2026-11-04"].settled and scans["2026-11-04"].unsettled == ["events/date=2026-11-04/d.ndjson"]
    os.utime(fresh, (OLD, OLD))
    assert scan_landing(tmp_path, now=time.time(), settle_seconds=60)["2026-11-04"].settled


def test_scan_sees_compressed_deliveries_as_landing_files(tmp_path):
    day = tmp_path / "events" / "date=2026-11-03"
    day.mkdir(parents=True)
    for name in ("a.ndjson.gz", "b.csv.zst", "c.jsonl.gz", "d.ndjson.gz.part", ".e.csv.gz"):
        (day / name).write_bytes(b"\x1f\x8b")
        os.utime(day / name, (OLD, OLD))
    scans = scan_landing(tmp_path, now=time.time(), settle_seconds=60)
    assert sorted(f.path for f in scans["2026-11-03"].files) == [
        "events/date=2026-11-03/a.ndjson.gz", "events/date=2026-11-03/b.csv.zst", "events/date=2026-11-03/c.jsonl.gz",
    ]


def test_a_day_changes_when_a_file_is_added_replaced_or_removed(tmp_path):
    a = land(tmp_path, "profiles", "2026-11-03", profiles_rows(2))
    always = lambda day: True  # noqa: E731
    first = detect_changes(scan_landing(tmp_path, time.time(), 60), LandingCursor(), always)
    assert list(first.changed) == ["2026-11-03"]
    cursor = first.advance(LandingCursor())
    assert LandingCursor.parse(cursor.serialize()) == cursor
    assert not detect_changes(scan_landing(tmp_path, time.time(), 60), cursor, always).changed  # same version

    land(tmp_path, "profiles", "2026-11-03", profiles_rows(3))  # replaced (new size and mtime)
    replaced = detect_changes(scan_landing(tmp_path, time.time(), 60), cursor, always)
    assert list(replaced.changed) == ["2026-11-03"] and replaced.changed["2026-11-03"] != cursor.days["2026-11-03"]
    cursor = replaced.advance(cursor)

    a.unlink()  # the day's only file removed: its rows must go, so the day changed
    removed = detect_changes(scan_landing(tmp_path, time.time(), 60), cursor, always)
    assert list(removed.changed) == ["2026-11-03"]
    cursor = removed.advance(cursor)
    assert not detect_changes(scan_landing(tmp_path, time.time(), 60), cursor, always).changed


def test_rerun_range_covers_the_late_day_and_every_later_computed_day():
    assert rerun_range(["2026-11-03"], ["2026-11-01", "2026-11-02", "2026-11-03", "2026-11-09"]) == (
        "2026-11-03", "2026-11-09")
    assert rerun_range(["2026-11-10"], ["2026-11-01", "2026-11-09"]) == ("2026-11-10", "2026-11-10")
    assert rerun_range(["2026-11-02", "2026-11-05"], []) == ("2026-11-02", "2026-11-05")
    assert rerun_range([], ["2026-11-01"]) is None


# -- the sensor ---------------------------------------------------------------------------------------------


def test_sensor_requests_one_range_run_once_per_file_version(tmp_path, instance):
    for day in ("2026-11-01", "2026-11-02", "2026-11-03"):
        land(tmp_path, "profiles", day, profiles_rows(day=day))
        land(tmp_path, "events", day, [event(f"e-{day}", "p0@example.com", "order", f"{day}T12:00:00Z", revenue=10)])

    result, _ = evaluate(instance, tmp_path, None)
    (request,) = result.run_requests
    assert request.job_name in (None, "daily_segments")
    assert request.tags[RANGE_START] == "2026-11-01" and request.tags[RANGE_END] == "2026-11-03"
    assert request.tags[PIPELINE_TAG] == "daily"
    assert request.tags[LANDING_DAYS_TAG] == "2026-11-01,2026-11-02,2026-11-03"
    cursor = result.cursor

    # the next tick (or the daemon restarted with the saved cursor): nothing new, no run
    again, _ = evaluate(instance, tmp_path, cursor)
    assert not again.run_requests and "no new or changed landing files" in again.skip_message
    # a tick evaluated again from the *old* cursor (crash before the cursor was saved) asks for
    # the same run key, which Dagster launches only once
    replay, _ = evaluate(instance, tmp_path, None)
    assert replay.run_requests[0].run_key == request.run_key

    # a second file for one day: a new version of that day, a new run key
    land(tmp_path, "events", "2026-11-03", [event("e-x", "p1@example.com", "page_view", "2026-11-03T13:00:00Z")],
         name="late-part.ndjson")
    changed, _ = evaluate(instance, tmp_path, cursor)
    (second,) = changed.run_requests
    assert second.partition_key == "2026-11-03" and second.run_key != request.run_key


def test_file_being_written_is_not_picked_up_until_it_settles(tmp_path, instance):
    land(tmp_path, "profiles", "2026-11-05", profiles_rows(), name="big.ndjson.part")  # writer's temp name
    result, _ = evaluate(instance, tmp_path, None)
    assert not result.run_requests

    final = land(tmp_path, "profiles", "2026-11-05", profiles_rows(), name="big.ndjson", mtime=None)  # just renamed/written
    land(tmp_path, "events", "2026-11-05", [], name="ok.ndjson")  # settled, but its day waits for big.ndjson
    result, _ = evaluate(instance, tmp_path, None)
    assert not result.run_requests and "waiting for files to settle" in result.skip_message
    assert result.cursor is None  # nothing handed over: the day is looked at again next tick

    os.utime(final, (OLD, OLD))
    result, _ = evaluate(instance, tmp_path, None)
    assert [r.partition_key for r in result.run_requests] == ["2026-11-05"]


def test_late_file_reruns_its_day_and_the_later_days_already_computed(tmp_path, instance):
    for day in ("2026-11-01", "2026-11-02", "2026-11-03", "2026-11-04"):
        land(tmp_path, "profiles", day, profiles_rows(day=day))
    first, _ = evaluate(instance, tmp_path, None)
    for day in ("2026-11-01", "2026-11-02", "2026-11-03", "2026-11-04"):  # that run's result
        instance.report_runless_asset_event(dg.AssetMaterialization("memberships", partition=day))

    land(tmp_path, "events", "2026-11-02", [event("late-1", "p0@example.com", "order", "2026-11-02T09:00:00Z",
                                                  revenue=5)], name="late.ndjson")
    late, _ = evaluate(instance, tmp_path, first.cursor)
    (request,) = late.run_requests
    assert (request.tags[RANGE_START], request.tags[RANGE_END]) == ("2026-11-02", "2026-11-04")
    assert request.tags[LANDING_DAYS_TAG] == "2026-11-02"


def test_days_that_are_not_partitions_yet_wait(tmp_path, instance):
    today = dt.datetime.now(dt.UTC).date()
    land(tmp_path, "profiles", today.isoformat(), profiles_rows(day=today.isoformat()))  # today: no partition yet
    land(tmp_path, "profiles", "2026-10-20", profiles_rows(day="2026-10-20"))  # before the first partition
    result, _ = evaluate(instance, tmp_path, None)
    assert not result.run_requests
    assert result.cursor is None  # still unhandled: today's files run once today's partition exists


# -- days another run already processed (the demo, a CLI backfill, the UI) -------------------------------


def ingest_range(instance, landing: Path, warehouse: Path, start: str, end: str):
    """Ingestion of ``start..end`` as any other run would do it (here: in-process, one range run)."""
    from segment_pipeline.defs.raw.assets import ingest_events, ingest_profiles
    from segment_pipeline.defs.resources import WarehouseResource

    result = dg.materialize(
        [ingest_profiles, ingest_events], instance=instance,
        resources={"warehouse": WarehouseResource(root=str(warehouse)), "landing": LandingZoneResource(root=str(landing))},
        tags={RANGE_START: start, RANGE_END: end},
    )
    assert result.success


def test_days_already_ingested_by_another_run_are_not_run_again(tmp_path, instance):
    landing, days = tmp_path / "landing", ["2026-11-01", "2026-11-02", "2026-11-03"]
    for day in days:
        land(landing, "profiles", day, profiles_rows(day=day))
        land(landing, "events", day, [event(f"e-{day}", "p0@example.com", "order", f"{day}T12:00:00Z", revenue=10)])
    ingest_range(instance, landing, tmp_path / "wh", days[0], days[-1])  # e.g. `segment-pipeline demo`

    # the UI starts right after: a fresh sensor (no cursor) knows these versions were processed
    result, _ = evaluate(instance, landing, None)
    assert not result.run_requests
    assert "3 day(s) with new files were already processed by earlier runs" in result.skip_message
    assert set(LandingCursor.parse(result.cursor).days) == set(days)  # remembered: not looked up again
    again, _ = evaluate(instance, landing, result.cursor)
    assert not again.run_requests and "no new or changed landing files" in again.skip_message

    # a file replaced after that run: only that version is new; it re-runs its day and the later days
    land(landing, "events", "2026-11-02", [event("e-new", "p1@example.com", "order", "2026-11-02T15:00:00Z",
                                                revenue=7)], name="events-2026-11-02.ndjson")
    changed, _ = evaluate(instance, landing, None)  # even from no cursor: the other days stay processed
    (request,) = changed.run_requests
    assert request.tags[LANDING_DAYS_TAG] == "2026-11-02"
    assert (request.tags[RANGE_START], request.tags[RANGE_END]) == ("2026-11-02", "2026-11-03")

    # a day the earlier run never saw runs as before
    land(landing, "profiles", "2026-11-04", profiles_rows(day="2026-11-04"))
    new_day, _ = evaluate(instance, landing, changed.cursor)
    assert [r.partition_key for r in new_day.run_requests] == ["2026-11-04"]


def test_a_run_that_read_an_older_version_does_not_count_as_processed(tmp_path, instance):
    landing = tmp_path / "landing"
    path = land(landing, "profiles", "2026-11-05", profiles_rows(day="2026-11-05"))
    ingest_range(instance, landing, tmp_path / "wh", "2026-11-05", "2026-11-05")
    os.utime(path, (OLD + 60, OLD + 60))  # same bytes, rewritten later (a re-delivery): a new version
    result, _ = evaluate(instance, landing, None)
    assert [r.partition_key for r in result.run_requests] == ["2026-11-05"]


def test_end_date_closes_the_partitions_and_the_sensor_leaves_later_days(monkeypatch):
    import datetime as _dt

    from segment_pipeline.defs.partitions import build_daily_partitions, is_partition_day

    now = _dt.datetime(2026, 11, 29, 12, tzinfo=_dt.UTC)
    monkeypatch.delenv("SEGMENT_PIPELINE_END_DATE", raising=False)
    monkeypatch.setenv("SEGMENT_PIPELINE_START_DATE", "2026-11-01")
    live = build_daily_partitions()  # a live deployment: through yesterday, one more every day
    assert live.end is None
    assert is_partition_day("2026-11-28", now, live) and not is_partition_day("2026-11-29", now, live)

    monkeypatch.setenv("SEGMENT_PIPELINE_END_DATE", "2026-11-14")  # a closed data set (the demo's sample)
    closed = build_daily_partitions()
    keys = closed.get_partition_keys(current_time=now)
    assert (len(keys), keys[0], keys[-1]) == (14, "2026-11-01", "2026-11-14")
    assert closed.get_partition_keys(current_time=now + _dt.timedelta(days=30)) == keys  # not growing
    assert is_partition_day("2026-11-14", now, closed) and not is_partition_day("2026-11-15", now, closed)
    assert not is_partition_day("2026-11-10", _dt.datetime(2026, 11, 10, 12, tzinfo=_dt.UTC), closed)  # not yet

    monkeypatch.setenv("SEGMENT_PIPELINE_END_DATE", "2026-10-01")
    with pytest.raises(ValueError, match="SEGMENT_PIPELINE_END_DATE=2026-10-01 is before SEGMENT_PIPELINE_START_DATE"):
        build_daily_partitions()
    monkeypatch.setenv("SEGMENT_PIPELINE_END_DATE", "14.11.2026")
    with pytest.raises(ValueError, match="is not a date"):
        build_daily_partitions()


def test_the_sensor_watches_every_declared_source_and_reports_folders_without_one(tmp_path, instance, monkeypatch):
    sources = tmp_path / "sources.yaml"
    sources.write_text("sources:\n  crm: {kind: profiles}\n  app: {kind: stream, preset: segment_spec}\n")
    monkeypatch.setenv("SEGMENT_PIPELINE_SOURCES", str(sources))
    land(tmp_path / "landing", "crm", "2026-11-02", profiles_rows(day="2026-11-02"))
    land(tmp_path / "landing", "loyalty", "2026-11-03", profiles_rows(day="2026-11-03"))
    result, _ = evaluate(instance, tmp_path / "landing", None)
    (request,) = result.run_requests  # the declared folder's day; the undeclared folder's is not run
    assert request.partition_key == "2026-11-02"
    again, _ = evaluate(instance, tmp_path / "landing", result.cursor)
    assert "folder(s) without a source, not ingested: loyalty" in again.skip_message
    # a file of a new declared folder is a change of its day
    land(tmp_path / "landing", "app", "2026-11-02", [{"type": "identify", "userId": "u1"}])
    changed, _ = evaluate(instance, tmp_path / "landing", result.cursor)
    assert changed.run_requests[0].partition_key == "2026-11-02"


def test_a_stream_file_recorded_by_both_kinds_is_one_file_of_its_day():
    from segment_pipeline.core.landing_watch import DayScan, FileVersion, processed_digest

    recorded = {"app/date=2026-11-02/a.ndjson": [10, 5]}  # raw_profiles and raw_events both read it
    assert processed_digest([recorded, recorded]) == DayScan("", [FileVersion("app/date=2026-11-02/a.ndjson", 10, 5)]).digest


# -- late identity links: earlier days a later day's links attribute --------------------------------------


def test_late_links_name_the_days_not_ingested_again_since_and_the_command_covers_the_later_days():
    from segment_pipeline.core.landing_watch import LateLinks, late_link_days, late_links_command

    found = [LateLinks(10, "2026-11-03", {"2026-11-01": 2}), LateLinks(20, "2026-11-05", {"2026-11-01": 3,
                                                                                          "2026-11-02": 1})]
    assert late_link_days(found, {}) == {"2026-11-01": 3, "2026-11-02": 1}
    # day 1 ingested again after the first links (15) but before the second (20): still to run
    assert late_link_days(found, {"2026-11-01": 15}) == {"2026-11-01": 3, "2026-11-02": 1}
    assert late_link_days(found, {"2026-11-01": 25, "2026-11-02": 21}) == {}
    command = late_links_command(["2026-11-01"], ["2026-11-01", "2026-11-06"], "2026-11-03")
    assert command == "dg launch --job daily_segments --partition-range 2026-11-01...2026-11-06"


def test_landing_retention_never_makes_the_sensor_rerun_the_days_it_removed(tmp_path, instance):
    from segment_pipeline.core.privacy.retention import enforce_retention

    landing = tmp_path / "landing"
    for day in ("2026-11-01", "2026-11-02", "2026-11-03"):
        land(landing, "profiles", day, profiles_rows(day=day))
        land(landing, "events", day, [event(f"e-{day}", "p0@example.com", "order", f"{day}T12:00:00Z", revenue=10)])
    first, _ = evaluate(instance, landing, None)
    assert first.run_requests and "2026-11-01" in LandingCursor.parse(first.cursor).days  # the cursor knows the day

    now = dt.datetime(2026, 11, 3, 12, 0, tzinfo=dt.UTC)  # keep 1 day: 2026-11-01 expires
    removed = enforce_retention(tmp_path / "warehouse", landing, None, {"landing": 1}, now).kinds["landing"]
    assert sorted(removed.removed_items) == ["events/date=2026-11-01", "profiles/date=2026-11-01"]
    assert not (landing / "profiles" / "date=2026-11-01").exists()

    after, _ = evaluate(instance, landing, first.cursor)  # the next tick launches nothing for the removed day
    assert not after.run_requests and "no new or changed landing files" in after.skip_message

    # a genuinely changed recent day still runs, alone (the removed day is not part of the change)
    land(landing, "events", "2026-11-03", [event("e-y", "p1@example.com", "page_view", "2026-11-03T13:00:00Z")],
         name="late-part.ndjson")
    changed, _ = evaluate(instance, landing, first.cursor)
    (request,) = changed.run_requests
    assert request.partition_key == "2026-11-03" and request.tags[LANDING_DAYS_TAG] == "2026-11-03"

    # a new delivery for the expired day is a change like any other
    land(landing, "profiles", "2026-11-01", profiles_rows(3, day="2026-11-01"), name="redelivered.ndjson")
    redelivered, _ = evaluate(instance, landing, changed.cursor)
    (again,) = redelivered.run_requests
    assert again.tags[LANDING_DAYS_TAG] == "2026-11-01"


def test_a_run_of_a_day_landing_retention_removed_keeps_its_raw_partitions(tmp_path, instance):
    """Any run of such a day (a backfill, the late_links_sensor) keeps its raw_* rows."""
    import duckdb

    from segment_pipeline.core.privacy.retention import enforce_retention

    landing, wh = tmp_path / "landing", tmp_path / "wh"
    land(landing, "profiles", "2026-11-01", profiles_rows(3, day="2026-11-01"))
    land(landing, "events", "2026-11-01", [event("e-1", "p0@example.com", "order", "2026-11-01T12:00:00Z", revenue=10)])
    ingest_range(instance, landing, wh, "2026-11-01", "2026-11-01")
    enforce_retention(wh, landing, None, {"landing": 1}, dt.datetime(2026, 11, 3, tzinfo=dt.UTC))
    assert not (landing / "profiles" / "date=2026-11-01").exists()

    ingest_range(instance, landing, wh, "2026-11-01", "2026-11-01")
    for table, rows in (("raw_profiles", 3), ("raw_events", 1)):
        glob = str(wh / table / "date=2026-11-01" / "*.parquet")
        assert duckdb.connect().execute(f"SELECT count(*) FROM read_parquet('{glob}')").fetchone()[0] == rows
    mat = instance.get_latest_materialization_event(dg.AssetKey("raw_profiles")).asset_materialization
    assert mat.metadata["landing_removed_by_retention"].value is True
