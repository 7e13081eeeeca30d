"""Declarative automation driving the real pipeline day by day, the feed following its inputs, and
the sync schedules gated by the memberships check.

The automation conditions are evaluated with Dagster's own evaluator at chosen times
(``dg.evaluate_automation_conditions``), and every run they request is executed in-process, so the
test sees exactly what the daemon would launch and what those runs produce.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import dagster as dg
import pytest
from dagster_aws.s3 import S3Resource

from segment_pipeline.core.segments import load_catalog
from segment_pipeline.core.warehouse import Warehouse
from segment_pipeline.defs.exports.assets import segment_feed_daily
from segment_pipeline.defs.exports.resources import ExportsResource
from segment_pipeline.defs.privacy.deletion import deletion_requests
from segment_pipeline.defs.profiles.assets import profiles
from segment_pipeline.defs.raw.assets import ingest_events, ingest_profiles
from segment_pipeline.defs.resources import LandingZoneResource, SegmentCatalogResource, WarehouseResource
from segment_pipeline.defs.segments.assets import build_memberships_asset, segment_key
from segment_pipeline.defs.syncs.assets import dotdigital_sync_schedule, klaviyo_sync_schedule
from segment_pipeline_tests.landing import members, profile, write_ndjson

UTC = dt.UTC
CATALOG = """
segments:
  - id: germans
    name: Germans
    rule: {field: country, op: "=", value: DE}
  - id: vip_static
    name: VIP (static)
    type: static
    active_from: 2026-11-10
    rule: {field: country, op: "=", value: DE}
  - id: flash_sale
    name: Flash sale
    active_from: 2026-11-10
    active_until: 2026-11-12
    rule: {field: country, op: "=", value: DE}
"""
DAYS = ["2026-11-09", "2026-11-10", "2026-11-11", "2026-11-12"]
ARRIVALS = {"2026-11-09": [("a@x.io", "DE"), ("b@x.io", "FR")], "2026-11-10": [("c@x.io", "DE")],
            "2026-11-11": [("d@x.io", "DE")], "2026-11-12": [("e@x.io", "DE")]}


def at(day: str, hhmm: str) -> dt.datetime:
    return dt.datetime.fromisoformat(f"{day}T{hhmm}:00").replace(tzinfo=UTC)


def next_day(day: str) -> str:
    return (dt.date.fromisoformat(day) + dt.timedelta(days=1)).isoformat()


class Pipeline:
    """The daily pipeline's real assets on a temporary landing zone, warehouse and export folder."""

    def __init__(self, root: Path, catalog_text: str):
        self.landing, self.exports = root / "landing", root / "exports"
        self.wh = Warehouse(root / "warehouse")
        catalog = root / "segments.yaml"
        catalog.write_text(catalog_text)
        self.assets = [deletion_requests, ingest_profiles, ingest_events, profiles,
                       build_memberships_asset(load_catalog(catalog)), segment_feed_daily]
        self.resources = {
            "warehouse": WarehouseResource(root=str(self.wh.root)),
            "landing": LandingZoneResource(root=str(self.landing)),
            "segment_catalog": SegmentCatalogResource(path=str(catalog)),
            "exports": ExportsResource(local_dir=str(self.exports), s3=S3Resource()),
        }
        self.defs = dg.Definitions(assets=self.assets, resources=self.resources)
        self.cursor = None

    def land(self, day: str, people: list[tuple[str, str]], name: str | None = None) -> None:
        write_ndjson(self.landing, "profiles", day,
                     [profile(email, f"{day}T08:00:00Z", country=country) for email, country in people], name=name)

    def evaluate(self, instance, when: dt.datetime) -> dict[str, set[dg.AssetKey]]:
        """What the automation would request at ``when``: partition -> assets (one run per partition)."""
        result = dg.evaluate_automation_conditions(self.defs, instance, evaluation_time=when, cursor=self.cursor)
        self.cursor = result.cursor
        requested: dict[str, set[dg.AssetKey]] = {}
        for key in {k for a in self.assets for k in a.keys}:
            for partition in result.get_requested_partitions(key):
                requested.setdefault(partition, set()).add(key)
        return requested

    def execute(self, instance, partition: str, keys: set[dg.AssetKey]) -> dg.ExecuteInProcessResult:
        return dg.materialize(self.assets, selection=dg.AssetSelection.assets(*keys), partition_key=partition,
                              instance=instance, resources=self.resources)

    def materialize(self, instance, selection, start: str, end: str | None = None, **kwargs):
        tags = {"dagster/asset_partition_range_start": start, "dagster/asset_partition_range_end": end or start}
        return dg.materialize(self.assets, selection=selection, instance=instance, resources=self.resources,
                              tags=tags, raise_on_error=False, **kwargs)

    def feed_days(self) -> list[str]:
        return sorted(p.stem for p in self.exports.rglob("daily/*/2026-*.json"))


def latest_meta(instance, key: dg.AssetKey, day: str) -> dict:
    records = instance.fetch_materializations(dg.AssetRecordsFilter(asset_key=key, asset_partitions=[day]),
                                              limit=1).records
    return {k: v.value for k, v in records[0].asset_materialization.metadata.items()}


@pytest.fixture(scope="module")
def daily(tmp_path_factory):
    """Four days driven by the automation conditions alone: one cron tick per day."""
    pipe = Pipeline(tmp_path_factory.mktemp("daily"), CATALOG)
    for day, people in ARRIVALS.items():
        pipe.land(day, people)
    with dg.instance_for_test() as instance:
        ticks = []
        assert pipe.evaluate(instance, at(next_day(DAYS[0]), "02:00")) == {}  # first evaluation: nothing
        for day in DAYS:
            before = pipe.evaluate(instance, at(next_day(day), "02:59"))
            requests = pipe.evaluate(instance, at(next_day(day), "03:01"))
            results = [pipe.execute(instance, p, keys) for p, keys in requests.items()]
            after = pipe.evaluate(instance, at(next_day(day), "03:10"))
            ticks.append({"day": day, "before": before, "requests": requests, "results": results, "after": after})
        yield pipe, instance, ticks


def test_daily_cron_runs_yesterday_through_the_whole_chain_once(daily):
    pipe, _, ticks = daily
    every_key = {key for a in pipe.assets for key in a.keys}
    for tick in ticks:
        assert tick["before"] == {}  # nothing before the cron time
        assert tick["requests"] == {tick["day"]: every_key}  # yesterday, the whole chain, in one go
        assert all(r.success for r in tick["results"])
        # the day's deletion requests are applied before the day is ingested (review item 2)
        steps = [e.step_key for r in tick["results"] for e in r.get_step_success_events()]
        assert steps.index("deletion_requests") < min(steps.index("ingest_profiles"), steps.index("ingest_events"))
        assert tick["after"] == {}  # the feed was written in that run: no follow-up run
    assert pipe.feed_days() == DAYS  # the daily export, every day


def test_dynamic_refresh_daily_static_stays_frozen_scheduled_window_applies(daily):
    pipe, instance, _ = daily
    germans = [members(pipe.wh, d, "germans") for d in DAYS]
    assert germans == [{"a@x.io"}, {"a@x.io", "c@x.io"}, {"a@x.io", "c@x.io", "d@x.io"},
                       {"a@x.io", "c@x.io", "d@x.io", "e@x.io"}]

    status = {d: latest_meta(instance, segment_key("vip_static"), d) for d in DAYS}
    assert status["2026-11-09"]["status"] == "skipped"  # before active_from
    assert status["2026-11-10"]["status"] == "refreshed"  # activation day: first evaluation, then frozen
    assert [status[d]["status"] for d in DAYS[2:]] == ["frozen", "frozen"]
    assert all(members(pipe.wh, d, "vip_static") == {"a@x.io", "c@x.io"} for d in DAYS[1:])  # d@, e@ never added

    flash = {d: latest_meta(instance, segment_key("flash_sale"), d)["status"] for d in DAYS}
    assert flash == {"2026-11-09": "skipped", "2026-11-10": "refreshed", "2026-11-11": "refreshed",
                     "2026-11-12": "skipped"}  # active_until is exclusive
    assert members(pipe.wh, "2026-11-12", "flash_sale") == set()


def test_feed_follows_memberships_rematerialized_outside_the_daily_run(daily):
    pipe, instance, _ = daily
    # someone re-materializes the segments of one day from the UI (no feed in that run)
    rerun = pipe.materialize(instance, dg.AssetSelection.groups("segments"), "2026-11-11")
    assert rerun.success and not rerun.asset_materializations_for_node("segment_feed_daily")
    requests = pipe.evaluate(instance, at("2026-11-13", "09:00"))
    assert requests == {"2026-11-11": {dg.AssetKey("segment_feed_daily")}}  # only that day's feed
    assert pipe.execute(instance, "2026-11-11", requests["2026-11-11"]).success
    assert pipe.evaluate(instance, at("2026-11-13", "09:01")) == {}


# -- syncs wait for memberships that passed their check -----------------------------------------------------

GATE_CATALOG = """
segments:
  - id: germans
    name: Germans
    rule: {field: country, op: "=", value: DE}
  - id: vip_static
    name: VIP (static)
    type: static
    rule: {field: country, op: "=", value: DE}
"""


def tick(schedule: dg.ScheduleDefinition, instance, when: dt.datetime):
    with dg.build_schedule_context(instance=instance, scheduled_execution_time=when) as context:
        return schedule.evaluate_tick(context)


def test_sync_schedules_skip_while_the_memberships_check_fails(tmp_path):
    pipe = Pipeline(tmp_path, GATE_CATALOG)
    pipe.land("2026-11-09", [("a@x.io", "DE"), ("b@x.io", "FR")])
    pipe.land("2026-11-10", [("c@x.io", "DE")])
    chain = dg.AssetSelection.assets(*[k for a in pipe.assets for k in a.keys])
    with dg.instance_for_test() as instance:
        assert pipe.materialize(instance, chain, "2026-11-09", "2026-11-10").success
        for schedule in (klaviyo_sync_schedule, dotdigital_sync_schedule):
            ok = tick(schedule, instance, at("2026-11-11", "00:00"))
            assert len(ok.run_requests) == 1 and ok.run_requests[0].tags["segment_pipeline/sync"]

        # a corrected delivery for 11-09 drops a@x.io; only raw 11-09 and then day 11-10 are re-run, so
        # the static segment's frozen copy (from 11-09) still names an identity 11-10 no longer has
        pipe.land("2026-11-09", [("b@x.io", "FR")])
        assert pipe.materialize(instance, dg.AssetSelection.groups("raw"), "2026-11-09").success
        partial = pipe.materialize(instance, chain, "2026-11-10")
        assert not partial.success
        (evaluation,) = [e for e in partial.get_asset_check_evaluations()
                         if e.check_name == "known_segments_and_identities"]
        assert not evaluation.passed
        assert not partial.asset_materializations_for_node("segment_feed_daily")  # blocked in the run itself

        blocked = tick(klaviyo_sync_schedule, instance, at("2026-11-11", "12:00"))
        assert not blocked.run_requests
        assert "known_segments_and_identities" in blocked.skip_message and partial.run_id in blocked.skip_message
        assert not tick(dotdigital_sync_schedule, instance, at("2026-11-11", "06:00")).run_requests

        # the fix: re-run from the corrected day; the check passes and the next tick syncs
        assert pipe.materialize(instance, chain, "2026-11-09", "2026-11-10").success
        resumed = tick(klaviyo_sync_schedule, instance, at("2026-11-12", "00:00"))
        assert len(resumed.run_requests) == 1 and resumed.run_requests[0].run_key.startswith("klaviyo:2026-11-12")
