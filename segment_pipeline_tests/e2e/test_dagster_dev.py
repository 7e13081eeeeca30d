"""`dagster dev -w workspace.yaml` as users drive it: the landing sensor, a partitioned run launched
through the Dagster GraphQL client, a multi-day backfill, asset metadata, freshness and the files."""

from __future__ import annotations

import json
import os
import time

import duckdb
import pytest
from dagster_graphql import DagsterGraphQLClient, DagsterGraphQLClientError

from segment_pipeline.core.sync.destinations import DESTINATIONS
from segment_pipeline.core.warehouse import Warehouse
from segment_pipeline_tests.e2e.conftest import (
    LANDED_DAYS,
    RUN_TIMEOUT,
    runs_with_tag,
    wait_for,
    wait_for_run,
)
from segment_pipeline_tests.landing import event, profile

pytestmark = pytest.mark.e2e

DAILY_GROUPS = ("raw", "profiles", "segments")


def client(server) -> DagsterGraphQLClient:
    return DagsterGraphQLClient("127.0.0.1", port_number=server.port)


def warehouse(server) -> Warehouse:
    return Warehouse(server.root / "warehouse")


def feed_file(server, day: str):
    return server.root / "exports" / "daily" / "nosto_segments" / f"{day}.json"


def metadata(server, path: list[str], day: str) -> dict:
    query = """query($key: AssetKeyInput!, $p: [String!]!) { assetNodeOrError(assetKey: $key) { ... on AssetNode {
      latestMaterializationByPartition(partitions: $p) { partition runId metadataEntries { label
        ... on IntMetadataEntry { intValue } ... on TextMetadataEntry { text } } } } } }"""
    node = server.graphql(query, {"key": {"path": path}, "p": [day]})["assetNodeOrError"]
    (mat,) = node["latestMaterializationByPartition"]
    assert mat is not None, f"{'/'.join(path)} has no materialization for {day}"
    return {"runId": mat["runId"], **{e["label"]: e.get("intValue", e.get("text")) for e in mat["metadataEntries"]}}


def member_count_in_warehouse(server, day: str, segment_id: str) -> int:
    wh = warehouse(server)
    return duckdb.connect().execute(
        f"SELECT count(*) FROM {wh.scan('memberships', days=[day])} WHERE segment_id = ?", [segment_id]
    ).fetchall()[0][0]


def daily_asset_keys(server) -> list[list[str]]:
    nodes = server.graphql("{ assetNodes { assetKey { path } groupName } }")["assetNodes"]
    return [n["assetKey"]["path"] for n in nodes
            if n["groupName"] in DAILY_GROUPS or n["assetKey"]["path"] == ["segment_feed_daily"]]


def test_code_location_sensors_and_schedules_are_running(dev_server):
    data = dev_server.graphql("""{ repositoriesOrError { ... on RepositoryConnection { nodes { name
        location { name } sensors { name sensorState { status } } schedules { name scheduleState { status } } } } } }""")
    (repo,) = [r for r in data["repositoriesOrError"]["nodes"] if r["location"]["name"] == "segment_pipeline"]
    sensors = {s["name"]: s["sensorState"]["status"] for s in repo["sensors"]}
    schedules = {s["name"]: s["scheduleState"]["status"] for s in repo["schedules"]}
    assert {k: sensors.get(k) for k in ("landing_zone_sensor", "daily_pipeline_automation", "run_failure_alert")} == {
        "landing_zone_sensor": "RUNNING", "daily_pipeline_automation": "RUNNING", "run_failure_alert": "RUNNING"}
    assert schedules == {**{f"{name}_sync_schedule": "RUNNING" for name in DESTINATIONS},
                         "privacy_erasure_schedule": "RUNNING"}


def test_landing_sensor_runs_the_landed_days_and_a_dropped_file(dev_server, first_sensor_run):
    # the three days present at start: one single-run range
    assert first_sensor_run["final_status"] == "SUCCESS"
    tags = first_sensor_run["tags"]
    assert (tags["dagster/asset_partition_range_start"], tags["dagster/asset_partition_range_end"]) == (
        LANDED_DAYS[0], LANDED_DAYS[-1])
    wh = warehouse(dev_server)
    assert [d.isoformat() for d in wh.partition_dates("memberships")][:3] == LANDED_DAYS
    assert all(feed_file(dev_server, d).is_file() for d in LANDED_DAYS)

    # a partner drops a new day's file the safe way: written under .part, then renamed into place
    day = "2026-11-04"
    folder = dev_server.landing / "events" / f"date={day}"
    folder.mkdir(parents=True)
    part = folder / "events.ndjson.part"
    rows = [profile("new.customer@example.com", f"{day}T09:00:00Z", country="DE")]
    (dev_server.landing / "profiles" / f"date={day}").mkdir(parents=True)
    profiles_file = dev_server.landing / "profiles" / f"date={day}" / "profiles.ndjson"
    profiles_file.write_text("".join(json.dumps(r) + "\n" for r in rows))
    # until the events file is in place too, the profiles file counts as still being written (a
    # modification time ahead of now never settles), so however long this test is held up between
    # the two files, the sensor sees the day complete or not at all
    later = time.time() + 3600
    os.utime(profiles_file, (later, later))
    part.write_text(json.dumps(event("e2e-1", "new.customer@example.com", "order", f"{day}T10:00:00Z",
                                     revenue=42.5, brand="Nike")) + "\n")
    os.replace(part, folder / "events.ndjson")
    now = time.time()
    os.utime(profiles_file, (now, now))

    def second_run():
        runs = runs_with_tag(dev_server, "segment_pipeline/trigger", "landing_zone_sensor")
        return [r for r in runs if r["tags"].get("segment_pipeline/landing_days") == day]

    (run,) = wait_for("the sensor's run for the dropped file", second_run, RUN_TIMEOUT, dev_server.log_tail, interval=2)
    assert run["tags"].get("dagster/partition") == day
    assert wait_for_run(dev_server, run["runId"]) == "SUCCESS"
    assert wh.has_partition("memberships", day) and feed_file(dev_server, day).is_file()
    feed = [json.loads(line) for line in feed_file(dev_server, day).read_text().splitlines()]
    assert any(row["email"] == "new.customer@example.com" for row in feed)
    raw = metadata(dev_server, ["raw_events"], day)
    assert raw["rows_valid"] == 1 and raw["runId"] == run["runId"]

    # later ticks see the same file versions: no further runs (ticks are counted, not timed)
    ticks_query = """{ sensorOrError(sensorSelector: {repositoryLocationName: "segment_pipeline",
        repositoryName: "__repository__", sensorName: "landing_zone_sensor"}) { ... on Sensor {
        sensorState { ticks(limit: 50) { status timestamp } } } } }"""
    finished_at = time.time()
    wait_for("two more landing sensor ticks", lambda: sum(
        t["timestamp"] > finished_at for t in
        dev_server.graphql(ticks_query)["sensorOrError"]["sensorState"]["ticks"]) >= 2,
        RUN_TIMEOUT, dev_server.log_tail, interval=2)
    assert len(runs_with_tag(dev_server, "segment_pipeline/trigger", "landing_zone_sensor")) == 2


def test_partitioned_materialization_through_the_graphql_client(dev_server, first_sensor_run):
    day = "2026-11-05"
    gql = client(dev_server)
    run_id = gql.submit_job_execution("daily_segments", repository_location_name="segment_pipeline",
                                      tags={"dagster/partition": day})

    def finished():
        try:
            status = gql.get_run_status(run_id).value
        except DagsterGraphQLClientError:
            return None
        return status if status in ("SUCCESS", "FAILURE", "CANCELED") else None

    assert wait_for(f"run {run_id}", finished, RUN_TIMEOUT, dev_server.log_tail, interval=2) == "SUCCESS"

    wh = warehouse(dev_server)
    assert wh.partition_path("memberships", day).is_file() and wh.partition_path("profiles", day).is_file()
    meta = metadata(dev_server, ["segment", "geo_germany"], day)
    assert meta["runId"] == run_id and meta["member_count"] == member_count_in_warehouse(dev_server, day, "geo_germany")
    assert meta["member_count"] > 0
    feed_meta = metadata(dev_server, ["segment_feed_daily"], day)
    lines = feed_file(dev_server, day).read_text().splitlines()
    assert feed_meta["rows"] == len(lines) > 0


def test_multi_day_backfill_runs_as_one_run(dev_server, first_sensor_run):
    days = ["2026-11-06", "2026-11-07", "2026-11-08"]
    launched = dev_server.graphql(
        """mutation($params: LaunchBackfillParams!) { launchPartitionBackfill(backfillParams: $params) {
             __typename ... on LaunchBackfillSuccess { backfillId } ... on PythonError { message } } }""",
        {"params": {"assetSelection": [{"path": p} for p in daily_asset_keys(dev_server)],
                    "partitionNames": days, "title": "e2e backfill"}},
    )["launchPartitionBackfill"]
    assert launched["__typename"] == "LaunchBackfillSuccess", launched
    backfill_id = launched["backfillId"]
    query = """query($id: String!) { partitionBackfillOrError(backfillId: $id) { ... on PartitionBackfill {
        status runs { runId status } } } }"""

    def done():
        backfill = dev_server.graphql(query, {"id": backfill_id})["partitionBackfillOrError"]
        return backfill if backfill["status"] not in ("REQUESTED",) else None

    backfill = wait_for(f"backfill {backfill_id}", done, RUN_TIMEOUT, dev_server.log_tail, interval=2)
    assert backfill["status"] == "COMPLETED_SUCCESS"
    (run,) = backfill["runs"]  # BackfillPolicy.single_run: the whole range in one run
    assert run["status"] == "SUCCESS"

    for day in days:
        assert feed_file(dev_server, day).is_file()
        meta = metadata(dev_server, ["segment", "geo_germany"], day)
        assert meta["runId"] == run["runId"]
        assert meta["member_count"] == member_count_in_warehouse(dev_server, day, "geo_germany")


def test_freshness_shows_fresh_exports_and_stale_never_synced_assets(dev_server, first_sensor_run):
    query = """query($key: AssetKeyInput!) { assetNodeOrError(assetKey: $key) { ... on AssetNode {
        freshnessStatusInfo { freshnessStatus } } } }"""

    def status(*path):
        info = dev_server.graphql(query, {"key": {"path": list(path)}})["assetNodeOrError"]["freshnessStatusInfo"]
        return info and info["freshnessStatus"]

    # the freshness daemon evaluates every few seconds here; wait for its verdicts
    assert wait_for("freshness of the daily feed", lambda: status("segment_feed_daily") == "HEALTHY",
                    RUN_TIMEOUT, dev_server.log_tail, interval=2)
    assert wait_for("freshness of memberships", lambda: status("memberships") == "HEALTHY",
                    RUN_TIMEOUT, dev_server.log_tail, interval=2)
    assert status("klaviyo_sync") != "HEALTHY"  # never materialized: not fresh
