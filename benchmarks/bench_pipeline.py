"""Benchmark: ingestion, profiles and memberships (20 segments) at scale, against a bare-DuckDB floor.

    python benchmarks/bench_pipeline.py --profiles 1000000
    python benchmarks/bench_pipeline.py --profiles 10000000 --keep-landing

Generates ``--profiles`` customers with 3 events each over ``--days`` daily files (not timed),
then times, each stage in a fresh process so peak RSS is per stage:

* ingest: validate every day's profile and event files into the warehouse (with quarantine);
* profiles: identity-resolved profiles as of the last day, from all landed days;
* memberships: 20 segments as of the last day (the shipped 18 plus two more);

and the floor: one bare DuckDB script doing the same essential work in a single query chain
(read the landing files typed, resolve identities with latest-wins for every attribute, aggregate
events into the same profile columns, write profiles, evaluate the same 20 rules, write memberships),
with no validation, quarantine, line numbers, staging, per-day partitions or stats.
Prints seconds and peak RSS per stage, the total, and the ratio pipeline / floor.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

EVENT_COLUMNS = {c: "VARCHAR" for c in (
    "email", "event_type", "occurred_at", "brand", "category", "utm_source", "utm_medium", "utm_campaign",
    "product_id", "product_name", "order_id", "price", "quantity", "revenue")}
PROFILE_COLUMNS = {c: "VARCHAR" for c in (
    "email", "updated_at", "created_at", "dob", "customer_id", "first_name", "last_name", "gender", "phone",
    "country", "city", "language", "time_zone", "loyalty_tier")}

EXTRA_SEGMENTS = [
    {"id": "big_spender_recent", "name": "Big spender, last 30 days",
     "rule": {"event": {"type": "order", "within_days": 30, "measure": "sum", "sum_field": "revenue", "op": ">=", "value": 150}}},
    {"id": "sneaker_viewers", "name": "Sneaker viewers",
     "rule": {"event": {"type": "product_view", "within_days": 14, "where": [{"field": "category", "op": "=", "value": "sneakers"}]}}},
]


def stage(name: str, args: argparse.Namespace) -> dict:
    """Run one stage in a child process; return its seconds and peak RSS."""
    cmd = [sys.executable, __file__, "--run-stage", name, "--work", str(args.work), "--days", str(args.days),
           "--start", args.start, "--format", args.format]
    t0 = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if out.returncode != 0:
        print(f"{name}: FAILED after {seconds:.1f}s\n{out.stderr[-2000:]}", flush=True)
        return {"seconds": float("nan"), "peak_rss_mb": float("nan"), "failed": True}
    info = json.loads(out.stdout.strip().splitlines()[-1])
    info["wall_seconds"] = seconds
    print(f"{name}: {info['seconds']:.1f}s, peak RSS {info['peak_rss_mb']:.0f} MB", flush=True)
    return info


def run_stage(name: str, work: Path, days: int, start: str, fmt: str) -> None:
    from segment_pipeline.core.ingest import ingest_day
    from segment_pipeline.core.memberships import compute_memberships
    from segment_pipeline.core.profiles import build_profiles
    from segment_pipeline.core.segments import load_catalog
    from segment_pipeline.core.warehouse import Warehouse, connect

    wh = Warehouse(work / "warehouse")
    landing = work / "landing"
    day_list = [dt.date.fromisoformat(start) + dt.timedelta(days=i) for i in range(days)]
    t0 = time.perf_counter()
    detail: dict = {}
    if name == "ingest":
        con = connect(preserve_order=True)
        rows = 0
        for day in day_list:
            for kind in ("profiles", "events"):
                report = ingest_day(con, wh, landing, kind, day)
                rows += report.rows_read
                detail[f"quarantined_{kind}"] = detail.get(f"quarantined_{kind}", 0) + report.rows_quarantined
        detail["rows_read"] = rows
    elif name == "profiles":
        detail["identities"] = build_profiles(connect(), wh, day_list[-1])
    elif name == "memberships":
        catalog = load_catalog(work / "segments.yaml")
        report = compute_memberships(connect(), wh, catalog, day_list[-1])
        detail["segments"] = len(report.stats)
        detail["memberships"] = report.total_rows
    elif name == "floor":
        detail.update(floor(work, day_list, fmt))
    detail["seconds"] = time.perf_counter() - t0
    detail["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(detail))


def _reader(landing: Path, kind: str, fmt: str, columns: dict[str, str]) -> str:
    cols = "{" + ", ".join(f"{k}: '{v}'" for k, v in columns.items()) + "}"
    if fmt == "ndjson":
        return (f"read_json('{landing}/{kind}/*/*.ndjson', format = 'newline_delimited', ignore_errors = true, "
                f"columns = {cols})")
    if fmt == "csv":
        return f"read_csv('{landing}/{kind}/*/*.csv', header = true, all_varchar = true, ignore_errors = true)"
    return f"(SELECT {', '.join(columns)} FROM read_parquet('{landing}/{kind}/*/*.parquet', union_by_name = true))"


def floor(work: Path, day_list: list[dt.date], fmt: str) -> dict:
    """The same essential work as one bare DuckDB script (no validation, quarantine or bookkeeping)."""
    import duckdb

    from segment_pipeline.core.segments import compile_segments, load_catalog

    db = work / "floor.duckdb"
    db.unlink(missing_ok=True)
    # file-backed, so its tables can spill beyond the memory limit like the pipeline's files do
    con = duckdb.connect(str(db), config={"preserve_insertion_order": False})
    con.execute("SET TimeZone = 'UTC'")
    con.execute(f"SET temp_directory = '{work / 'floor_tmp'}'")
    con.execute(f"SET memory_limit = '{os.environ.get('SEGMENT_PIPELINE_DUCKDB_MEMORY', '3GB')}'")
    landing = work / "landing"
    out = work / "floor"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    end = dt.datetime.combine(day_list[-1] + dt.timedelta(days=1), dt.time())
    con.execute(f"""
        CREATE TABLE ev AS
        SELECT lower(trim(email)) AS email, event_type, try_cast(occurred_at AS TIMESTAMPTZ)::TIMESTAMP AS occurred_at,
               brand, category, utm_source, utm_medium, utm_campaign, product_id, product_name, order_id,
               try_cast(price AS DECIMAL(18,2)) AS price, try_cast(quantity AS INTEGER) AS quantity,
               try_cast(revenue AS DECIMAL(18,2)) AS revenue
        FROM {_reader(landing, 'events', fmt, EVENT_COLUMNS)}
        WHERE email IS NOT NULL
    """)
    attrs = ["customer_id", "first_name", "last_name", "gender", "dob", "phone", "country", "city", "language",
             "time_zone", "loyalty_tier"]
    latest = ", ".join(f"arg_max({a}, updated_at) FILTER (WHERE {a} IS NOT NULL) AS {a}" for a in attrs)
    con.execute(f"""
        CREATE TABLE prof AS
        WITH rp AS (
            SELECT lower(trim(email)) AS email, try_cast(updated_at AS TIMESTAMPTZ)::TIMESTAMP AS updated_at,
                   try_cast(created_at AS TIMESTAMPTZ)::TIMESTAMP AS created_at, try_cast(dob AS DATE) AS dob,
                   * EXCLUDE (email, updated_at, created_at, dob)
            FROM {_reader(landing, 'profiles', fmt, PROFILE_COLUMNS)}
            WHERE email IS NOT NULL
        ),
        a AS (SELECT email, {latest}, min(created_at) AS created_at, max(updated_at) AS updated_at
              FROM rp GROUP BY email),
        o AS (SELECT email, count(*) FILTER (WHERE event_type = 'order') AS order_count,
                     coalesce(sum(revenue) FILTER (WHERE event_type = 'order'), 0) AS total_revenue,
                     min(occurred_at) FILTER (WHERE event_type = 'order') AS first_order_at,
                     max(occurred_at) FILTER (WHERE event_type = 'order') AS last_order_at,
                     min(occurred_at) AS first_seen_at, max(occurred_at) AS last_seen_at,
                     count(*) FILTER (WHERE occurred_at >= TIMESTAMP '{end}' - INTERVAL 30 DAY) AS event_count_30d,
                     count(*) FILTER (WHERE brand IS NOT NULL) AS brand_interactions_90d,
                     count(*) FILTER (WHERE category IS NOT NULL) AS category_interactions_90d,
                     arg_min(utm_source, occurred_at) FILTER (WHERE utm_source IS NOT NULL) AS first_utm_source
              FROM ev GROUP BY email),
        tb AS (SELECT email, arg_max(brand, n) AS top_brand_90d FROM
               (SELECT email, brand, count(*) AS n FROM ev WHERE brand IS NOT NULL GROUP BY ALL) GROUP BY email),
        tc AS (SELECT email, arg_max(category, n) AS top_category_90d FROM
               (SELECT email, category, count(*) AS n FROM ev WHERE category IS NOT NULL GROUP BY ALL) GROUP BY email)
        SELECT md5(email)[1:16] AS identity_id, email, a.* EXCLUDE (email), o.* EXCLUDE (email),
               tb.top_brand_90d, tc.top_category_90d, (md5_number(email) % 10000)::INTEGER AS random_bucket
        FROM a FULL OUTER JOIN o USING (email) LEFT JOIN tb USING (email) LEFT JOIN tc USING (email)
    """)
    con.execute(f"COPY prof TO '{out}/profiles.parquet' (FORMAT parquet)")
    catalog = load_catalog(work / "segments.yaml")
    live = [s.id for s in catalog.segments if s.is_active_on(day_list[-1])]
    inactive = {s.id for s in catalog.segments} - set(live)
    compiled = compile_segments(catalog, live, day_list[-1], inactive=inactive)
    query = compiled.render(profiles="prof", events=f"(SELECT *, event_type AS event FROM ev WHERE occurred_at < TIMESTAMP '{end}')")
    con.execute(f"CREATE TABLE flags AS {query}", compiled.params)
    unions = " UNION ALL ".join(f"SELECT '{s}' AS segment_id, identity_id, email FROM flags WHERE {c}"
                                for s, c in compiled.columns.items())
    con.execute(f"COPY ({unions}) TO '{out}/memberships.parquet' (FORMAT parquet)")
    n = con.execute(f"SELECT count(*) FROM '{out}/memberships.parquet'").fetchall()[0][0]
    con.close()
    db.unlink(missing_ok=True)
    return {"memberships": n}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--profiles", type=int, default=1_000_000)
    p.add_argument("--days", type=int, default=7)
    p.add_argument("--start", default="2026-11-01")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--format", choices=["ndjson", "parquet", "csv"], default="ndjson", help="landing file format")
    p.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "segment_pipeline_bench",
                   help="scratch folder (default: segment_pipeline_bench in the system temp folder)")
    p.add_argument("--keep-landing", action="store_true", help="reuse generated files of the same size")
    p.add_argument("--run-stage", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.run_stage:
        run_stage(args.run_stage, args.work, args.days, args.start, args.format)
        return

    import yaml

    from segment_pipeline.core.generate import generate

    args.work.mkdir(parents=True, exist_ok=True)
    marker = args.work / "landing.json"
    wanted = {"profiles": args.profiles, "days": args.days, "seed": args.seed, "start": args.start, "format": args.format}
    if not (args.keep_landing and marker.exists() and json.loads(marker.read_text()) == wanted):
        shutil.rmtree(args.work / "landing", ignore_errors=True)
        t0 = time.perf_counter()
        generate(str(args.work / "landing"), args.profiles, args.days, args.seed, args.start, args.format)
        print(f"generated {args.profiles:,} profiles x 3 events over {args.days} days in {time.perf_counter() - t0:.1f}s (not timed)")
        marker.write_text(json.dumps(wanted))
    shipped = yaml.safe_load((ROOT / "data" / "segments.yaml").read_text())
    shipped["segments"].extend(EXTRA_SEGMENTS)
    (args.work / "segments.yaml").write_text(yaml.safe_dump(shipped, sort_keys=False))
    shutil.rmtree(args.work / "warehouse", ignore_errors=True)
    size = sum(f.stat().st_size for f in (args.work / "landing").rglob("*") if f.is_file())
    print(f"landing: {size / 1e9:.2f} GB of {args.format}; {len(shipped['segments'])} segments; "
          f"cores: {os.cpu_count()}; DuckDB memory limit: {os.environ.get('SEGMENT_PIPELINE_DUCKDB_MEMORY', '3GB')}")

    results = {name: stage(name, args) for name in ("ingest", "profiles", "memberships", "floor")}
    pipeline_s = sum(results[s]["seconds"] for s in ("ingest", "profiles", "memberships"))
    pipeline_rss = max(results[s]["peak_rss_mb"] for s in ("ingest", "profiles", "memberships"))
    print(f"\n{'stage':<12} {'seconds':>9} {'peak RSS MB':>12}  detail")
    for name, r in results.items():
        detail = {k: v for k, v in r.items() if k not in ("seconds", "peak_rss_mb", "wall_seconds")}
        print(f"{name:<12} {r['seconds']:>9.1f} {r['peak_rss_mb']:>12.0f}  {detail}")
    print(f"{'pipeline':<12} {pipeline_s:>9.1f} {pipeline_rss:>12.0f}  (ingest + profiles + memberships)")
    print(f"ratio pipeline/floor: {pipeline_s / results['floor']['seconds']:.2f}x")


if __name__ == "__main__":
    main()
