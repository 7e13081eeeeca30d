"""Dagster wiring of the exports: assets, checks, jobs, run config, tags and the storage resource."""

from __future__ import annotations

import datetime as dt
import json

import dagster as dg
import pytest
from dagster_aws.s3 import S3Resource

from segment_pipeline.core.exports.locks import segment_lock
from segment_pipeline.core.exports.storage import LocalExportStorage
from segment_pipeline.core.warehouse import Warehouse
from segment_pipeline.defs.exports.assets import (
    GLOBAL_TAG,
    SEGMENT_TAG,
    segment_csv_export_job,
    segment_export,
    segment_export_job,
    segment_export_run_request,
    segment_export_tags,
    segment_feed_daily,
)
from segment_pipeline.defs.exports.resources import ExportsResource, exports_resource_from_env
from segment_pipeline.defs.resources import WarehouseResource
from segment_pipeline_tests.core.test_exports_warehouse_fixtures import DAY, profile, write_day
from segment_pipeline_tests.fakes.callback import callback_server
from segment_pipeline_tests.fakes.s3 import moto_s3_server

NEXT = DAY + dt.timedelta(days=1)


@pytest.fixture
def wh(tmp_path):
    wh = Warehouse(tmp_path / "warehouse")
    for day in (DAY, NEXT):
        write_day(
            wh, day, [profile("a@x.io"), profile("b@x.io"), profile("c@x.io")],
            {"vip": "VIP", "../x": "Hostile 'name', ü"}, {"vip": ["a@x.io", "b@x.io"], "../x": ["c@x.io"]},
        )
    return wh


def defs_for(wh: Warehouse, exports: ExportsResource) -> dg.Definitions:
    return dg.Definitions(
        assets=[segment_feed_daily, segment_export],
        jobs=[segment_export_job, segment_csv_export_job],
        resources={"warehouse": WarehouseResource(root=str(wh.root)), "exports": exports},
    )


def local(tmp_path, **extra) -> ExportsResource:
    return ExportsResource(local_dir=str(tmp_path / "exports"), s3=S3Resource(), callback_backoff_seconds=0.01, **extra)


def test_code_location_loads_exports():
    from segment_pipeline.definitions import defs

    loaded = defs()
    assert loaded.resolve_job_def("segment_export_job").tags[GLOBAL_TAG] == "true"
    assert loaded.resolve_job_def("segment_csv_export_job")
    keys = loaded.resolve_all_asset_keys()
    assert dg.AssetKey("segment_feed_daily") in keys and dg.AssetKey("segment_export") in keys
    assert segment_feed_daily.backfill_policy == dg.BackfillPolicy.single_run()
    assert segment_feed_daily.group_names_by_key[dg.AssetKey("segment_feed_daily")] == "exports"


def test_daily_feed_partition_range_in_one_run(wh, tmp_path):
    result = dg.materialize(
        [segment_feed_daily],
        resources={"warehouse": WarehouseResource(root=str(wh.root)), "exports": local(tmp_path)},
        tags={"dagster/asset_partition_range_start": DAY.isoformat(),
              "dagster/asset_partition_range_end": NEXT.isoformat()},
    )
    assert result.success
    mats = result.asset_materializations_for_node("segment_feed_daily")
    assert sorted(m.partition for m in mats) == [DAY.isoformat(), NEXT.isoformat()]
    assert all(m.metadata["rows"].value == 3 for m in mats)
    (check,) = result.get_asset_check_evaluations()
    assert check.passed
    storage = LocalExportStorage(tmp_path / "exports")
    assert json.loads(storage.get_bytes("daily/nosto_segments/latest"))["date"] == NEXT.isoformat()
    lines = storage.get_bytes(f"daily/nosto_segments/{DAY}.json").decode().splitlines()
    assert {"email": "c@x.io", "nosto_segments": ["Hostile 'name', ü"]} in [json.loads(x) for x in lines]


def test_segment_export_job_with_callback_failing_first(wh, tmp_path):
    with callback_server(fail_first=1) as hook:
        request = segment_export_run_request("../x", ["email", "braze_id"], "gzip", hook.url)
        assert request.tags == {SEGMENT_TAG: segment_export_tags("../x")[SEGMENT_TAG], GLOBAL_TAG: "true"}
        job = defs_for(wh, local(tmp_path)).resolve_job_def("segment_export_job")
        result = job.execute_in_process(run_config=request.run_config, tags=request.tags)
    assert result.success
    (mat,) = result.asset_materializations_for_node("segment_export")
    assert mat.metadata["members"].value == 1 and mat.metadata["files"].value == 1
    assert mat.metadata["callback"].value == "delivered after 2 attempt(s)"
    assert "token=secret" not in json.dumps({k: str(v.value) for k, v in mat.metadata.items()})
    (check,) = result.get_asset_check_evaluations()
    assert check.passed and check.metadata["expected_files"].value == 1
    assert hook.received[0]["success"] is True and hook.received[0]["url"].startswith("file://")
    assert (tmp_path / "exports" / "segment-export" / "%2E%2E%2Fx").is_dir()


def test_segment_export_job_rejects_unknown_fields_listing_valid_ones(wh, tmp_path):
    job = defs_for(wh, local(tmp_path)).resolve_job_def("segment_export_job")
    result = job.execute_in_process(
        run_config={"ops": {"segment_export": {"config": {"segment_id": "vip", "fields_to_export": ["shoe"]}}}},
        raise_on_error=False,
    )
    assert not result.success
    message = str(result.get_step_failure_events()[0].step_failure_data.error)
    assert "shoe" in message and "external_id" in message


def test_second_concurrent_export_of_a_segment_gets_a_clear_answer(wh, tmp_path):
    exports = local(tmp_path)
    job = defs_for(wh, exports).resolve_job_def("segment_export_job")
    run = segment_export_run_request("vip", ["email"])
    with segment_lock(exports.storage(), "segment-export", "vip", "vip", owner="run first", stale_after=3600):
        result = job.execute_in_process(run_config=run.run_config, tags=run.tags, raise_on_error=False)
    assert not result.success
    message = str(result.get_step_failure_events()[0].step_failure_data.error)
    assert "export of segment 'vip' is already running (held by run first" in message
    mismatched = job.execute_in_process(
        run_config=run.run_config, tags=segment_export_tags("other"), raise_on_error=False
    )
    assert "does not match segment 'vip'" in str(mismatched.get_step_failure_events()[0].step_failure_data.error)


def test_export_job_takes_over_the_lock_and_slot_of_a_killed_export_and_fails_its_run(wh, tmp_path):
    """Issue 10 point 12: a SIGKILLed export left the segment lock and the only slot held; the next
    export takes both over at once and ends the dead run, so it holds no run-queue slot either."""
    import os
    import signal

    from dagster._core.storage.dagster_run import DagsterRun

    from segment_pipeline_tests.core.test_export_locks import hold_in_subprocess, wait_until_zombie_or_gone

    if not os.path.isdir("/proc/self"):
        pytest.skip("pid start times come from /proc")
    exports = local(tmp_path, max_concurrent_segment_exports=1)
    instance = dg.DagsterInstance.ephemeral()
    instance.add_run(DagsterRun(job_name="segment_export_job", run_id="killed-run", status=dg.DagsterRunStatus.STARTED,
                                tags=segment_export_tags("vip")))
    holder = hold_in_subprocess(exports.storage(), "run killed-run")
    os.kill(holder.pid, signal.SIGKILL)
    wait_until_zombie_or_gone(holder.pid)
    holder.wait()
    run = segment_export_run_request("vip", ["email"])
    job = defs_for(wh, exports).resolve_job_def("segment_export_job")
    result = job.execute_in_process(run_config=run.run_config, tags=run.tags, instance=instance)
    assert result.success
    dead = instance.get_run_by_id("killed-run")
    assert dead.status == dg.DagsterRunStatus.FAILURE
    (failure,) = instance.get_records_for_run("killed-run", of_type=dg.DagsterEventType.RUN_FAILURE).records
    assert f"pid {holder.pid}" in failure.event_log_entry.dagster_event.message
    assert "died before finishing" in failure.event_log_entry.dagster_event.message
    logs = [e.message for e in instance.all_logs(result.run_id) if e.message]
    assert any("took over the export lock of run killed-run" in m for m in logs)


def test_csv_job_from_run_config(wh, tmp_path):
    job = defs_for(wh, local(tmp_path)).resolve_job_def("segment_csv_export_job")
    config = {"segment_id": "vip", "date_range": "custom", "start": DAY.isoformat(), "end": NEXT.isoformat()}
    result = job.execute_in_process(run_config={"ops": {"export_segment_csv": {"config": config}}})
    assert result.success
    raw = (tmp_path / "exports" / "csv" / "vip" / f"{DAY}_{NEXT}.csv").read_bytes()
    assert raw == b"email,first_seen,last_seen\r\na@x.io,2026-11-03,2026-11-04\r\nb@x.io,2026-11-03,2026-11-04\r\n"
    bad = job.execute_in_process(
        run_config={"ops": {"export_segment_csv": {"config": {**config, "end": "2026-01-01"}}}}, raise_on_error=False
    )
    assert "segment 'vip': start 2026-11-03 is after end 2026-01-01" in str(
        bad.get_step_failure_events()[0].step_failure_data.error
    )


def test_resource_from_env_local_default_and_s3(monkeypatch, tmp_path):
    for var in ("BUCKET", "PREFIX", "ENDPOINT_URL", "REGION", "DIR", "IDENTIFIER"):
        monkeypatch.delenv(f"SEGMENT_PIPELINE_EXPORT_{var}", raising=False)
    monkeypatch.setenv("SEGMENT_PIPELINE_WAREHOUSE", str(tmp_path / "data" / "warehouse"))
    storage = exports_resource_from_env().storage()
    assert isinstance(storage, LocalExportStorage) and storage.root == tmp_path / "data" / "exports"
    with moto_s3_server() as moto:
        bucket = moto.new_bucket()
        monkeypatch.setenv("SEGMENT_PIPELINE_EXPORT_BUCKET", bucket)
        monkeypatch.setenv("SEGMENT_PIPELINE_EXPORT_PREFIX", "partner/feeds")
        monkeypatch.setenv("SEGMENT_PIPELINE_EXPORT_ENDPOINT_URL", moto.endpoint_url)
        monkeypatch.setenv("SEGMENT_PIPELINE_EXPORT_REGION", "us-east-1")
        monkeypatch.setenv("SEGMENT_PIPELINE_EXPORT_IDENTIFIER", "acme_segments")
        resource = exports_resource_from_env()
        wh = Warehouse(tmp_path / "data" / "warehouse")
        write_day(wh, DAY, [profile("a@x.io")], {"vip": "VIP"}, {"vip": ["a@x.io"]})
        result = dg.materialize(
            [segment_feed_daily],
            resources={"warehouse": WarehouseResource(root=str(wh.root)), "exports": resource},
            partition_key=DAY.isoformat(),
        )
        assert result.success
        assert moto.keys(bucket) == [
            f"partner/feeds/daily/acme_segments/{DAY}.json", "partner/feeds/daily/acme_segments/latest"
        ]
        job = defs_for(wh, resource).resolve_job_def("segment_export_job")
        run = segment_export_run_request("vip", ["email", "custom_attributes"])
        assert job.execute_in_process(run_config=run.run_config, tags=run.tags).success
        assert resource.kind == "s3"
        assert [k for k in moto.keys(bucket) if "segment-export" in k][0].startswith("partner/feeds/segment-export/vip/")
        assert not [k for k in moto.keys(bucket) if "_locks" in k]
