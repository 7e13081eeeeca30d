"""`segment-pipeline demo` (the README quick start) as a user runs it: short output with one line per
stage and a summary whose counts are the warehouse's; a run in DAGSTER_HOME the landing sensor
then knows; partitions closed at the sample's last day."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import dagster as dg
import duckdb
import pytest

from segment_pipeline import settings
from segment_pipeline.core.segments import load_catalog
from segment_pipeline.core.warehouse import Warehouse
from segment_pipeline.demo import ENV_FILE_NOTE, PartitionsClosed, pin_partitions, sample_days
from segment_pipeline_tests.landing import SAMPLE_LANDING, copy_sample_days

DAYS = ["2026-11-01", "2026-11-02", "2026-11-03"]
DEMO_TIMEOUT = 600  # upper bound on a loaded 2-core machine, not a speed claim


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    landing = root / "landing"
    copy_sample_days(landing, DAYS)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SEGMENT_PIPELINE_", "DAGSTER_"))}
    env.update({
        "DAGSTER_HOME": str(root / "home"),
        "SEGMENT_PIPELINE_LANDING": str(landing),
        "SEGMENT_PIPELINE_WAREHOUSE": str(root / "warehouse"),
        "SEGMENT_PIPELINE_EXPORT_DIR": str(root / "exports"),
        # already set, so the demo keeps it and writes no .env into the checkout (pin_partitions is
        # tested on its own below)
        "SEGMENT_PIPELINE_END_DATE": DAYS[-1],
    })
    proc = subprocess.run([sys.executable, "-m", "segment_pipeline.cli", "demo"], cwd=root, env=env,
                          capture_output=True, text=True, timeout=DEMO_TIMEOUT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc, root, env


def test_demo_prints_progress_per_stage_and_a_short_summary(demo):
    proc, _, _ = demo
    lines = proc.stdout.splitlines()
    assert len(lines) <= 25, proc.stdout  # not hundreds of Dagster DEBUG lines
    assert "DEBUG" not in proc.stdout + proc.stderr
    assert "Warning" not in proc.stdout + proc.stderr and "superseded" not in proc.stdout + proc.stderr
    stages = [ln for ln in lines if re.match(r"\s+\[\d/5\] ", ln)]
    assert len(stages) == 5, proc.stdout
    assert [re.search(r"\] (\w+)", ln).group(1) for ln in stages if "ingest" not in ln] == [
        "profiles", "compute_memberships", "segment_feed_daily"]
    assert sorted(re.search(r"\] (\w+)", ln).group(1) for ln in stages if "ingest" in ln) == [
        "ingest_events", "ingest_profiles"]
    assert [re.search(r"\[(\d)/5\]", ln).group(1) for ln in stages] == ["1", "2", "3", "4", "5"]
    assert re.search(r"Done in \d+s: run \w{8} \(daily_segments, 2026-11-01\.\.\.2026-11-03\) succeeded", proc.stdout)
    # Dagster wants an absolute DAGSTER_HOME: the command to copy says $PWD/...
    assert "Open the UI on this instance:  DAGSTER_HOME=$PWD/home dg dev" in proc.stdout


def test_demo_summary_counts_are_the_warehouse_counts(demo):
    proc, root, _ = demo
    wh, con, last = Warehouse(root / "warehouse"), duckdb.connect(), DAYS[-1]

    def one(sql: str) -> int:
        return con.execute(sql).fetchall()[0][0]

    identities = one(f"SELECT count(*) FROM {wh.scan('profiles', days=[last])}")
    memberships = one(f"SELECT count(*) FROM {wh.scan('memberships', days=[last])}")
    with_members = one(f"SELECT count(DISTINCT segment_id) FROM {wh.scan('memberships', days=[last])}")
    q_profiles = one(f"SELECT count(*) FROM {wh.scan('quarantine_profiles')}")
    q_events = one(f"SELECT count(*) FROM {wh.scan('quarantine_events')}")
    segments = load_catalog(settings.segments_file()).segments
    skipped = sum(1 for s in segments if s.status != "active" or (s.active_from and str(s.active_from) > last)
                  or (s.active_until and str(s.active_until) <= last))
    parquet = sum(1 for p in (root / "warehouse").rglob("*") if p.is_file())
    feed = sum(1 for p in (root / "exports").rglob("*") if p.is_file())
    assert q_profiles + q_events > 0 and identities > 0 and parquet > 0 and feed > 0

    out = "\n".join(ln.strip() for ln in proc.stdout.splitlines())
    assert f"days           3 (2026-11-01 .. {last})" in out
    assert f"identities     {identities:,} on {last}" in out
    assert (f"segments       {len(segments)} ({with_members} with members, {skipped} skipped), "
            f"{memberships:,} memberships on {last}") in out
    assert f"quarantined    {q_profiles + q_events:,} rows ({q_profiles:,} profiles, {q_events:,} events;" in out
    # paths as typed from the folder the demo ran in (here: the test's root)
    assert f"files written  {parquet:,} Parquet files in warehouse" in out
    assert f"{feed:,} files of the daily feed in exports" in out
    # the per-stage lines carry the same numbers
    assert re.search(rf"ingest_events\s+3 days: [\d,]+ event rows valid, {q_events:,} quarantined", out)
    assert re.search(rf"profiles\s+3 days: {identities:,} identities on {last}", out)


def test_demo_run_is_recorded_and_the_landing_sensor_does_not_repeat_it(demo):
    from segment_pipeline_tests.defs.test_automation_landing import evaluate

    _, root, env = demo
    with dg.DagsterInstance.from_config(env["DAGSTER_HOME"]) as instance:
        (run,) = instance.get_runs()
        assert run.job_name == "daily_segments" and run.status == dg.DagsterRunStatus.SUCCESS
        assert (run.tags["dagster/asset_partition_range_start"], run.tags["dagster/asset_partition_range_end"]) == (
            DAYS[0], DAYS[-1])
        # the UI starts right after the demo: a fresh landing sensor finds nothing to run
        result, _ = evaluate(instance, root / "landing", None)
        assert not result.run_requests
        assert f"{len(DAYS)} day(s) with new files were already processed by earlier runs" in result.skip_message
    assert (Path(env["DAGSTER_HOME"]) / "dagster.yaml").read_text() == settings.INSTANCE_TEMPLATE.read_text()


def test_pin_partitions_writes_the_end_date_once_and_keeps_a_set_one(tmp_path, monkeypatch):
    monkeypatch.delenv("SEGMENT_PIPELINE_END_DATE", raising=False)
    env_file = tmp_path / ".env"
    env_file.write_text("MY_SETTING=1\n")
    message = pin_partitions(env_file, "2026-11-14")
    assert "SEGMENT_PIPELINE_END_DATE=2026-11-14 written to" in message
    assert env_file.read_text() == f"MY_SETTING=1\n{ENV_FILE_NOTE}\nSEGMENT_PIPELINE_END_DATE=2026-11-14\n"
    assert os.environ["SEGMENT_PIPELINE_END_DATE"] == "2026-11-14"

    monkeypatch.delenv("SEGMENT_PIPELINE_END_DATE")
    assert pin_partitions(env_file, "2026-11-10") == (
        "partitions: end at SEGMENT_PIPELINE_END_DATE=2026-11-14 (already set)")  # kept, not rewritten
    assert env_file.read_text().count("SEGMENT_PIPELINE_END_DATE") == 1
    with pytest.raises(PartitionsClosed, match="before 2026-11-20: raise or remove it"):
        pin_partitions(env_file, "2026-11-20")


def test_sample_days_are_the_day_folders():
    assert sample_days(SAMPLE_LANDING) == [f"2026-11-{d:02d}" for d in range(1, 15)]


def test_a_failing_stage_is_named_with_its_error_and_the_run_to_open(tmp_path):
    landing = tmp_path / "landing"
    copy_sample_days(landing, DAYS[:1])
    bad = landing / "events" / f"date={DAYS[0]}" / "partner.csv"
    bad.write_text("foo,bar\n1,2\n")  # a CSV without the required columns: the day cannot be read
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SEGMENT_PIPELINE_", "DAGSTER_"))}
    env.update({"DAGSTER_HOME": str(tmp_path / "home"), "SEGMENT_PIPELINE_LANDING": str(landing),
                "SEGMENT_PIPELINE_WAREHOUSE": str(tmp_path / "warehouse"),
                "SEGMENT_PIPELINE_EXPORT_DIR": str(tmp_path / "exports"), "SEGMENT_PIPELINE_END_DATE": DAYS[0]})
    proc = subprocess.run([sys.executable, "-m", "segment_pipeline.cli", "demo"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=DEMO_TIMEOUT)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert len(proc.stdout.splitlines()) <= 15 and "DEBUG" not in proc.stdout + proc.stderr
    assert re.search(r"\[\d/5\] ingest_events\s+FAILED", proc.stdout), proc.stdout
    assert re.search(r"\n  ingest_events: .*partner\.csv", proc.stdout), proc.stdout  # the error names the file
    assert re.search(r"Failed after \d+s: run \w{8} \(daily_segments, 2026-11-01\.\.\.2026-11-01\)", proc.stdout)
    assert "Runs -> " in proc.stdout


def test_demo_writes_owner_only_files_the_run_history_included(demo):
    """Dagster's event log in DAGSTER_HOME holds the member previews (emails): the demo's instance
    folder is 0700 and every file the demo wrote (run storage, warehouse, exports) is owner-only,
    whatever the umask it was started with."""
    _, root, env = demo
    home = Path(env["DAGSTER_HOME"])
    assert home.stat().st_mode & 0o777 == 0o700
    written = [p for folder in (home, root / "warehouse", root / "exports") for p in folder.rglob("*")
               if p.name != "dagster.yaml"]  # the copied template holds no personal data
    assert any(p.suffix == ".db" for p in written)  # the run and event storage is among them
    assert [(str(p), oct(p.stat().st_mode & 0o777)) for p in written if p.stat().st_mode & 0o077] == []
