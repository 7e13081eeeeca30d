"""Operations: the run-failure alert, the dagster.yaml instance template, what the code location wires up."""

from __future__ import annotations

import datetime as dt
import shutil

import dagster as dg
import pytest

from segment_pipeline import settings
from segment_pipeline.core import alerts
from segment_pipeline.defs.automation.sensors import PIPELINE_TAG, run_failure_alert
from segment_pipeline.defs.automation.sync_gate import SYNC_TAG
from segment_pipeline.defs.exports.assets import GLOBAL_TAG, SEGMENT_TAG
from segment_pipeline.defs.raw.assets import ingest_events, ingest_profiles
from segment_pipeline.defs.resources import LandingZoneResource, WarehouseResource
from segment_pipeline_tests.fakes.callback import callback_server
from segment_pipeline_tests.landing import write_ndjson

SECRET_PATH = "/services/T000/B000/s3cr3t-t0ken"


@pytest.fixture(scope="module")
def failed_run(tmp_path_factory):
    """A real pipeline run that fails: a landing file that is not NDJSON at all."""
    root = tmp_path_factory.mktemp("failing")
    bad = root / "landing" / "events" / "date=2026-11-03" / "broken.ndjson"
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"\x00\x01 this is not json {{{\n")
    write_ndjson(root / "landing", "profiles", "2026-11-03", [{"email": "a@x.io", "updated_at": "2026-11-03T08:00:00Z"}])
    with dg.instance_for_test() as instance:
        result = dg.materialize(
            [ingest_profiles, ingest_events], instance=instance, partition_key="2026-11-03", raise_on_error=False,
            resources={"warehouse": WarehouseResource(root=str(root / "wh")),
                       "landing": LandingZoneResource(root=str(root / "landing"))},
        )
        assert not result.success
        yield instance, instance.get_run_by_id(result.run_id)


def alert_tick(instance, run):
    failure = instance.get_records_for_run(run.run_id, of_type=dg.DagsterEventType.RUN_FAILURE).records[0]
    context = dg.build_run_status_sensor_context(
        sensor_name="run_failure_alert", dagster_instance=instance, dagster_run=run,
        dagster_event=failure.event_log_entry.dagster_event,
    ).for_run_failure()
    return run_failure_alert(context)


def test_failed_run_posts_run_asset_error_and_link(failed_run, monkeypatch, caplog):
    instance, run = failed_run
    monkeypatch.setenv(alerts.UI_URL_ENV, "http://dagster.internal:3000/")
    with callback_server() as hook:
        monkeypatch.setenv(alerts.WEBHOOK_ENV, hook.url + SECRET_PATH)
        assert alert_tick(instance, run) is None
    (payload,) = hook.received
    assert payload["run_id"] == run.run_id and payload["job"] == run.job_name
    assert payload["assets"] == ["quarantine_events", "raw_events"]  # the step that failed, not the one that passed
    assert payload["partitions"] == "2026-11-03"
    assert "broken.ndjson" in payload["error"] and len(payload["error"]) <= alerts.MAX_ERROR_CHARS
    assert payload["link"] == f"http://dagster.internal:3000/runs/{run.run_id}"
    text = payload["text"]
    assert run.run_id[:8] in text and "raw_events" in text and payload["link"] in text and len(text) < 800
    assert "s3cr3t" not in caplog.text  # the webhook URL (a secret) is never logged


def test_nothing_is_sent_without_a_webhook(failed_run, monkeypatch):
    instance, run = failed_run
    monkeypatch.delenv(alerts.WEBHOOK_ENV, raising=False)
    with callback_server() as hook:
        skipped = alert_tick(instance, run)
    assert isinstance(skipped, dg.SkipReason) and alerts.WEBHOOK_ENV in skipped.skip_message
    assert hook.attempts == 0


def test_an_unreachable_or_failing_webhook_is_reported_without_its_url(failed_run, monkeypatch):
    instance, run = failed_run
    with callback_server(fail_first=10, fail_status=500) as hook:
        monkeypatch.setenv(alerts.WEBHOOK_ENV, hook.url + SECRET_PATH)
        skipped = alert_tick(instance, run)
    assert isinstance(skipped, dg.SkipReason) and "HTTP 500" in skipped.skip_message
    assert "s3cr3t" not in skipped.skip_message and SECRET_PATH not in skipped.skip_message


def test_message_is_concise_for_many_assets_and_long_errors():
    alert = alerts.FailureAlert(run_id="0123456789abcdef", job_name="daily_segments", error="x" * 5000 + "\nmore",
                                assets=[f"segment/s{i}" for i in range(30)], base_url="http://ui")
    text = alert.text()
    assert "(+22 more)" in text and len(text) < 800 and text.endswith("http://ui/runs/0123456789abcdef")


# -- instance template ---------------------------------------------------------------------------------------


def test_dagster_yaml_template_configures_the_queue_limits_and_freshness(tmp_path, monkeypatch):
    home = tmp_path / "home"
    home.mkdir()
    shutil.copy(settings.INSTANCE_TEMPLATE, home / "dagster.yaml")
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    with dg.DagsterInstance.get() as instance:
        assert type(instance.run_coordinator).__name__ == "QueuedRunCoordinator"
        queue = instance.get_concurrency_config().run_queue_config
        limits = {limit["key"]: limit for limit in queue.tag_concurrency_limits}
        assert queue.max_concurrent_runs >= 1  # the global cap
        # the tags our runs carry are the ones the template limits
        assert limits[SEGMENT_TAG] == {"key": SEGMENT_TAG, "value": {"applyLimitPerUniqueValue": True}, "limit": 1}
        assert limits[GLOBAL_TAG]["limit"] >= 1
        assert limits[PIPELINE_TAG] == {"key": PIPELINE_TAG, "value": "daily", "limit": 1}
        assert limits[SYNC_TAG]["limit"] == 1
        assert instance.freshness_enabled and instance.run_retries_enabled and instance.run_monitoring_enabled


# -- what the code location wires up -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def code_location():
    from segment_pipeline.definitions import defs

    return defs()


def test_sensors_and_schedules_run_by_default(code_location):
    sensors = {s.name: s for s in code_location.sensors}
    assert {"landing_zone_sensor", "daily_pipeline_automation", "run_failure_alert"} <= set(sensors)
    assert all(s.default_status == dg.DefaultSensorStatus.RUNNING for s in sensors.values())
    schedules = {s.name: s for s in code_location.schedules}
    assert all(schedules[n].default_status == dg.DefaultScheduleStatus.RUNNING
               for n in ("klaviyo_sync_schedule", "dotdigital_sync_schedule"))


def test_freshness_policies_and_automation_conditions(code_location):
    graph = code_location.resolve_asset_graph()
    node = graph.get

    feed = node(dg.AssetKey("segment_feed_daily")).freshness_policy
    assert feed.fail_window.to_timedelta() == dt.timedelta(hours=26)
    assert node(dg.AssetKey("memberships")).freshness_policy.fail_window.to_timedelta() == dt.timedelta(hours=26)
    assert node(dg.AssetKey(["segment", "geo_germany"])).freshness_policy is not None
    assert node(dg.AssetKey("klaviyo_sync")).freshness_policy.fail_window.to_timedelta() < dt.timedelta(hours=24)

    daily = {k for k in graph.get_all_asset_keys() if node(k).automation_condition is not None}
    assert {dg.AssetKey(k) for k in ("raw_profiles", "raw_events", "profiles", "memberships", "membership_changes",
                                     "segment_feed_daily")} <= daily
    assert dg.AssetKey(["segment", "vip_launch_list"]) in daily  # part of the one-pass multi-asset
    # on demand or on their own schedules, never by the daily automation
    assert not daily & {dg.AssetKey("segment_export"), dg.AssetKey("klaviyo_sync"), dg.AssetKey("dotdigital_sync")}
