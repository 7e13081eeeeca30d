"""The Dagster graph on the shipped sample: materialization, metadata, checks, CLI range backfill."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import dagster as dg
import duckdb
import pytest

from segment_pipeline import settings
from segment_pipeline.core.segments import load_catalog
from segment_pipeline.core.warehouse import Warehouse
from segment_pipeline.defs.profiles.assets import profiles
from segment_pipeline.defs.raw.assets import ingest_events, ingest_profiles
from segment_pipeline.defs.resources import LandingZoneResource, SegmentCatalogResource, WarehouseResource
from segment_pipeline.defs.segments.assets import build_memberships_asset, segment_key
from segment_pipeline_tests.waiting import HANG_TIMEOUT, child_env

SAMPLE_LANDING = Path(settings.PROJECT_ROOT) / "data" / "landing"
SEGMENTS = Path(settings.PROJECT_ROOT) / "data" / "segments.yaml"
FIRST, LAST = "2026-11-01", "2026-11-14"
TABLES = ("raw_profiles", "raw_events", "quarantine_profiles", "quarantine_events", "profiles", "memberships",
          "membership_changes", "segment_stats")


def pipeline_assets():
    return [ingest_profiles, ingest_events, profiles, build_memberships_asset(load_catalog(SEGMENTS))]


def resources(root: Path) -> dict:
    return {
        "warehouse": WarehouseResource(root=str(root)),
        "landing": LandingZoneResource(root=str(SAMPLE_LANDING)),
        "segment_catalog": SegmentCatalogResource(path=str(SEGMENTS)),
    }


def range_tags(start: str, end: str) -> dict[str, str]:
    return {"dagster/asset_partition_range_start": start, "dagster/asset_partition_range_end": end}


@pytest.fixture(scope="module")
def sample_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("sample_wh")
    instance = dg.DagsterInstance.ephemeral()
    result = dg.materialize(pipeline_assets(), instance=instance, resources=resources(root), tags=range_tags(FIRST, LAST))
    return result, instance, Warehouse(root)


def latest_by_partition(instance, key: dg.AssetKey) -> dict[str, dict]:
    records = instance.fetch_materializations(key, limit=1000).records
    out: dict[str, dict] = {}
    for rec in sorted(records, key=lambda r: r.storage_id):
        mat = rec.asset_materialization
        out[mat.partition] = {k: v.value for k, v in mat.metadata.items()}
    return out


def test_sample_data_is_shipped_and_small():
    files = sorted(p for p in SAMPLE_LANDING.rglob("*") if p.is_file())
    days = {p.parent.name for p in files}
    assert len(days) == 14 and {f"date={FIRST}", f"date={LAST}"} <= days
    assert sum(p.stat().st_size for p in files) < 8_000_000


def test_full_graph_materializes_the_sample_in_one_run(sample_run):
    result, instance, wh = sample_run
    assert result.success
    for table in TABLES:
        assert len(wh.partition_dates(table)) == 14, table
    con = duckdb.connect()
    n_profiles = con.execute(f"SELECT count(*) FROM {wh.scan('profiles', days=[LAST])}").fetchall()[0][0]
    assert 2500 <= n_profiles <= 3000  # ~3,000 customers, case/space duplicates merged
    quarantined = con.execute(f"SELECT count(*) FROM {wh.scan('quarantine_events')}").fetchall()[0][0]
    assert quarantined > 0  # the sample's malformed rows are kept, not dropped
    counts = dict(con.execute(
        f"SELECT segment_id, count(*) FROM {wh.scan('memberships', days=[LAST])} GROUP BY ALL").fetchall())
    for seg in ("prospects", "first_time_buyer", "loyal_customers", "nike_fans", "geo_germany", "geo_new_york",
                "utm_instagram", "jacket_affinity"):
        assert counts.get(seg, 0) > 0, seg
    assert "winter_sale_paused" not in counts


def test_per_day_metadata_gives_member_count_trends(sample_run):
    _, instance, wh = sample_run
    by_day = latest_by_partition(instance, dg.AssetKey("memberships"))
    assert sorted(by_day) == [f"2026-11-{d:02d}" for d in range(1, 15)]
    trend = [by_day[d]["members/geo_germany"] for d in sorted(by_day)]
    assert trend == sorted(trend) and trend[0] < trend[-1]  # one value per day, growing with the customer base
    truth = dict(duckdb.connect().execute(
        f"SELECT date::VARCHAR, count(*) FROM {wh.scan('memberships')} WHERE segment_id = 'geo_germany' GROUP BY ALL"
    ).fetchall())
    assert {d: m["members/geo_germany"] for d, m in by_day.items()} == truth

    segment_days = latest_by_partition(instance, segment_key("black_week_shoppers"))
    assert segment_days["2026-11-07"]["status"] == "skipped" and segment_days["2026-11-07"]["member_count"] == 0
    assert segment_days["2026-11-09"]["status"] == "refreshed" and segment_days["2026-11-09"]["member_count"] > 0
    nike = latest_by_partition(instance, segment_key("nike_fans"))[LAST]
    assert nike["member_count"] > 100  # so the preview is a cut, and says so
    assert nike["preview_rows"] == f"first 100 of {nike['member_count']:,} members, by email"
    emails = [r.data["email"] for r in nike["preview"].records]
    first_100 = [e for (e,) in duckdb.connect().execute(
        f"SELECT email FROM {wh.scan('memberships', days=[LAST])} WHERE segment_id = 'nike_fans' "
        "ORDER BY email LIMIT 100").fetchall()]
    assert emails == first_100  # the first 100 by email, in that order (the table shows from its first row)
    # the fields that show why: the model's top trait of the affinity's property, and its share
    assert [c.name for c in nike["preview"].schema.columns] == ["email", "top_brand_90d", "top_brand_90d_share"]
    keys = list(latest_by_partition(instance, segment_key("nike_fans"))[LAST])
    assert keys.index("preview_rows") == keys.index("preview") - 1  # the caption right above the table
    vip = latest_by_partition(instance, segment_key("vip_launch_list"))
    assert vip["2026-11-12"]["status"] == "frozen" and vip["2026-11-12"]["frozen_on"] == "2026-11-10"

    raw = latest_by_partition(instance, dg.AssetKey("raw_events"))
    assert all(m["rows_read"] == m["rows_valid"] + m["rows_quarantined"] for m in raw.values())


def test_asset_checks_pass_on_the_sample(sample_run):
    result, _, _ = sample_run
    evaluations = result.get_asset_check_evaluations()
    names = {(e.asset_key.to_user_string(), e.check_name): e.passed for e in evaluations}
    assert names == {
        ("raw_profiles", "quarantine_ratio"): True,
        ("raw_events", "quarantine_ratio"): True,
        ("profiles", "unique_identities"): True,
        ("memberships", "known_segments_and_identities"): True,
    }


def test_quarantine_check_fails_when_threshold_is_exceeded(tmp_path):
    result = dg.materialize(
        [ingest_events], resources=resources(tmp_path), tags=range_tags(FIRST, LAST),
        run_config={"ops": {"ingest_events": {"config": {"max_quarantine_ratio": 0.0}}}},
    )
    (check,) = result.get_asset_check_evaluations()
    assert check.check_name == "quarantine_ratio" and not check.passed
    worst_day, worst = duckdb.connect().execute(
        f"SELECT q.date::VARCHAR, q.n / (q.n + v.n) FROM "
        f"(SELECT date, count(*) AS n FROM {Warehouse(tmp_path).scan('quarantine_events')} GROUP BY date) q "
        f"JOIN (SELECT date, count(*) AS n FROM {Warehouse(tmp_path).scan('raw_events')} GROUP BY date) v USING (date) "
        "ORDER BY 2 DESC, 1 DESC LIMIT 1"
    ).fetchall()[0]
    assert check.metadata["worst_day"].value == worst_day
    assert check.metadata["worst_ratio"].value == pytest.approx(worst)


@pytest.mark.e2e
def test_cli_week_backfill_equals_seven_single_days(tmp_path):
    """`dagster asset materialize --partition-range` (one run) == the seven days one by one."""
    week_start, week_end = "2026-11-01", "2026-11-07"
    cli_root = tmp_path / "cli"
    env = child_env({"SEGMENT_PIPELINE_WAREHOUSE": str(cli_root), "SEGMENT_PIPELINE_LANDING": str(SAMPLE_LANDING),
                     "SEGMENT_PIPELINE_SEGMENTS": str(SEGMENTS)})
    env.pop("DAGSTER_HOME", None)
    proc = subprocess.run(
        [sys.executable, "-m", "dagster", "asset", "materialize", "-m", "segment_pipeline.definitions",
         "--select", "group:raw or group:profiles or group:segments",
         "--partition-range", f"{week_start}...{week_end}"],
        env=env, capture_output=True, text=True, timeout=HANG_TIMEOUT,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stderr.count("RUN_SUCCESS") + proc.stdout.count("RUN_SUCCESS") == 1  # a single run

    day_root = tmp_path / "days"
    days = [f"2026-11-{d:02d}" for d in range(1, 8)]
    for day in days:
        assert dg.materialize(pipeline_assets(), resources=resources(day_root), partition_key=day).success

    con = duckdb.connect()
    a, b = Warehouse(cli_root), Warehouse(day_root)
    for table in TABLES:
        assert a.partition_dates(table) == b.partition_dates(table), table
        q = "SELECT * FROM {} ORDER BY ALL"
        assert con.execute(q.format(a.scan(table))).fetchall() == con.execute(q.format(b.scan(table))).fetchall(), table


@pytest.mark.e2e
@pytest.mark.parametrize(
    ("vip_rule", "problem"),
    [
        ("{field: shoe_size, op: '>', value: 42}", "unknown profile field 'shoe_size'"),
        # hostile: 500 levels would overflow the YAML parser's recursion; refused while parsing
        ("{not: " * 500 + "{field: country, op: '=', value: DE}" + "}" * 500, "nested deeper than 100 levels"),
    ],
    ids=["unknown-field", "nested-500-deep"],
)
def test_invalid_segment_file_stops_the_code_location_with_a_clear_message(tmp_path, vip_rule, problem):
    bad = tmp_path / "segments.yaml"
    bad.write_text(
        "segments:\n"
        "  - {id: germany, name: Germany, rule: {field: country, op: '=', value: DE}}\n"
        f"  - {{id: vip, name: VIP, rule: {vip_rule}}}\n"
    )
    env = child_env({"SEGMENT_PIPELINE_SEGMENTS": str(bad), "SEGMENT_PIPELINE_WAREHOUSE": str(tmp_path / "wh")})
    proc = subprocess.run(
        [sys.executable, "-m", "dagster", "definitions", "validate", "-m", "segment_pipeline.definitions"],
        env=env, capture_output=True, text=True, timeout=HANG_TIMEOUT,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "segment 'vip'" in output and problem in output and str(bad) in output
    assert "RecursionError" not in output


def test_sources_file_decides_what_an_empty_csv_cell_means(tmp_path, monkeypatch):
    """As a user would: a sources file says the profiles export's empty cells clear attributes."""
    from segment_pipeline_tests.landing import profile, write_csv, write_ndjson

    landing = tmp_path / "landing"
    write_ndjson(landing, "profiles", FIRST, [profile("a@example.com", f"{FIRST}T08:00:00Z", country="DE", phone="+4930123")])
    write_csv(landing, "profiles", "2026-11-02", ["email", "updated_at", "country", "phone"],
              [["a@example.com", "2026-11-02T08:00:00Z", "", "+4930999"]])
    sources = tmp_path / "sources.yaml"
    monkeypatch.setenv("SEGMENT_PIPELINE_SOURCES", "none")  # no sources file (set to a missing file: an error)
    res = {"warehouse": WarehouseResource(root=str(tmp_path / "wh")), "landing": LandingZoneResource(root=str(landing))}
    wh = Warehouse(tmp_path / "wh")

    def country_on_day_two() -> str | None:
        result = dg.materialize([ingest_profiles, profiles], resources=res, tags=range_tags(FIRST, "2026-11-02"))
        assert result.success
        return duckdb.connect().execute(
            f"SELECT country FROM {wh.scan('profiles', days=['2026-11-02'])}").fetchall()[0][0]

    assert country_on_day_two() == "DE"  # no sources file: an empty cell keeps
    sources.write_text("sources:\n  profiles:\n    csv_empty_cell: clear\n")
    monkeypatch.setenv("SEGMENT_PIPELINE_SOURCES", str(sources))
    assert country_on_day_two() is None


def test_ingest_reads_each_source_with_the_options_of_the_sources_file(tmp_path, monkeypatch):
    landing = tmp_path / "landing"
    day_dir = landing / "profiles" / "date=2026-11-03"
    day_dir.mkdir(parents=True)
    (day_dir / "export.csv").write_bytes(
        "email,updated_at,last_name,city\nm@example.com,2026-11-03T08:00:00Z,Müller,Köln\n".encode("cp1252"))
    sources = tmp_path / "sources.yaml"
    sources.write_text("sources:\n  profiles:\n    encoding: cp1252\n")
    monkeypatch.setenv("SEGMENT_PIPELINE_SOURCES", str(sources))
    res = {**resources(tmp_path / "wh"), "landing": LandingZoneResource(root=str(landing))}
    instance = dg.DagsterInstance.ephemeral()
    assert dg.materialize([ingest_profiles], resources=res, partition_key="2026-11-03", instance=instance).success
    rows = duckdb.connect().execute(
        f"SELECT last_name, city FROM {Warehouse(tmp_path / 'wh').scan('raw_profiles')}").fetchall()
    assert rows == [("Müller", "Köln")]
    meta = latest_by_partition(instance, dg.AssetKey("raw_profiles"))["2026-11-03"]
    assert meta["source_options"]["profiles"]["encoding"] == "cp1252"
    assert meta["sources"] == {"profiles": {"rows_valid": 1, "rows_quarantined": 0}}
    sources.write_text("sources:\n  profiles:\n    encoding: utf-9\n")
    with pytest.raises(Exception, match="sources.profiles.encoding"):
        dg.materialize([ingest_profiles], resources=res, partition_key="2026-11-03")
