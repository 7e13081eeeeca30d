"""Benchmark the export writers against a bare-DuckDB floor, each case in a fresh process.

    python benchmarks/bench_exports.py [--profiles 10000000] [--members 2000000] [--workdir /tmp/bench_exports]

Inputs are generated directly with DuckDB (a ``profiles`` partition with ``--profiles`` rows of the
full schema; ``memberships`` with one ``--members`` segment plus four others of 10% each;
``segment_stats`` naming them). Cases:

* daily pipeline: ``write_daily_feed`` (validation, atomic publish, ``latest`` pointer)
* daily floor: one hand-written ``COPY (<same join>) TO ... (FORMAT json)``
* segment pipeline: ``export_segment`` of the big segment, 6 fields, zip chunks of 5,000
* segment floor: ``COPY (<same 6 fields of the same members>) TO ... (FORMAT json)`` then the whole
  file zipped by Python's ``zipfile`` (ZIP_DEFLATED, default level) in the same process

Each case prints wall seconds and peak RSS (``ru_maxrss`` of its own process, DuckDB included).
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
import time
import zipfile
from pathlib import Path

DAY = dt.date(2026, 11, 3)
SEGMENT = "big-segment"
FIELDS = ["email", "external_id", "first_name", "last_name", "country", "random_bucket"]
MEMORY_LIMIT = "4GB"


def generate(workdir: Path, profiles: int, members: int) -> None:
    from segment_pipeline.core.warehouse import Warehouse, connect

    wh = Warehouse(workdir / "warehouse")
    marker = workdir / f"generated-{profiles}-{members}"
    if marker.exists():
        return
    shutil.rmtree(workdir, ignore_errors=True)
    con = connect(memory_limit=MEMORY_LIMIT)
    t = time.perf_counter()
    email = "'user' || i || '@example.com'"
    wh.write_partition(
        con, "profiles", DAY,
        f"""SELECT substr(md5({email}), 1, 16) AS identity_id, {email} AS email, 'cust-' || i AS customer_id,
               'First' || (i % 5000) AS first_name, 'Last' || (i % 7919) AS last_name,
               CASE WHEN i % 2 = 0 THEN 'F' ELSE 'M' END AS gender, DATE '1960-01-01' + (i % 15000)::INT AS dob,
               CASE WHEN i % 3 = 0 THEN '+35840' || (i % 1000000) END AS phone,
               ['FI', 'SE', 'DE', 'US', 'FR'][1 + i % 5] AS country, 'City ' || (i % 300) AS city,
               ['fi', 'sv', 'de', 'en', 'fr'][1 + i % 5] AS language, 'Europe/Helsinki' AS time_zone,
               ['bronze', 'silver', 'gold'][1 + i % 3] AS loyalty_tier,
               TIMESTAMP '2024-01-01' + to_seconds(i % 60000000) AS created_at, NULL::TIMESTAMP AS updated_at,
               NULL::TIMESTAMP AS first_seen_at, NULL::TIMESTAMP AS last_seen_at, i % 7 AS order_count,
               (i % 1000) * 1.25 AS total_revenue, NULL::TIMESTAMP AS first_order_at, NULL::TIMESTAMP AS last_order_at,
               NULL::INT AS days_since_last_order, i % 40 AS event_count_30d, i % 3 AS order_count_30d,
               0.0 AS revenue_30d, 0 AS brand_interactions_90d, 0 AS category_interactions_90d,
               NULL AS top_brand_90d, NULL::DOUBLE AS top_brand_share_90d, NULL AS top_category_90d,
               NULL::DOUBLE AS top_category_share_90d, NULL AS first_utm_source, (i % 10000)::INT AS random_bucket
        FROM range({profiles}) t(i)""",
    )
    # the big segment: every (profiles/members)-th profile; four others of 10% each
    step = max(1, profiles // members)
    wh.write_partition(
        con, "memberships", DAY,
        f"""SELECT '{SEGMENT}' AS segment_id, substr(md5({email}), 1, 16) AS identity_id, {email} AS email
            FROM range(0, {members * step}, {step}) t(i)
            UNION ALL
            SELECT 'seg-' || k, substr(md5({email}), 1, 16), {email}
            FROM range({profiles}) t(i), range(4) s(k) WHERE (i + k) % 10 = 0""",
    )
    wh.write_partition(
        con, "segment_stats", DAY,
        f"""SELECT segment_id, 'Segment "' || segment_id || '", ünï' AS segment_name, 'rule' AS segment_type,
                   'refreshed' AS status, NULL::DATE AS frozen_on, count(*) AS member_count, 0 AS added, 0 AS removed
            FROM {wh.scan('memberships', days=[DAY])} GROUP BY segment_id""",
    )
    marker.touch()
    print(f"generated {profiles:,} profiles / {members:,}-member segment in {time.perf_counter() - t:.1f}s", flush=True)


def run_case(case: str, workdir: Path) -> dict:
    from segment_pipeline.core.exports.daily_feed import write_daily_feed
    from segment_pipeline.core.exports.segment_export import SegmentExportRequest, export_segment
    from segment_pipeline.core.exports.storage import LocalExportStorage
    from segment_pipeline.core.warehouse import Warehouse, connect, sql_string

    wh = Warehouse(workdir / "warehouse")
    out = workdir / "out" / case
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    con = connect(memory_limit=MEMORY_LIMIT)
    t = time.perf_counter()
    if case == "daily-pipeline":
        result = write_daily_feed(con, wh, LocalExportStorage(out), DAY)
        rows, size = result.lines, result.bytes
    elif case == "daily-floor":
        target = out / "floor.json"
        rows = con.execute(
            f"""COPY (
                  SELECT p.email, coalesce(g.names, []::VARCHAR[]) AS nosto_segments
                  FROM {wh.scan('profiles', days=[DAY])} p
                  LEFT JOIN (SELECT m.identity_id, list(s.segment_name ORDER BY s.segment_name) AS names
                             FROM {wh.scan('memberships', days=[DAY])} m
                             JOIN {wh.scan('segment_stats', days=[DAY])} s USING (segment_id)
                             GROUP BY m.identity_id) g USING (identity_id)
                ) TO {sql_string(str(target))} (FORMAT json)"""
        ).fetchall()[0][0]
        size = target.stat().st_size
    elif case == "segment-pipeline":
        req = SegmentExportRequest.parse({"segment_id": SEGMENT, "fields_to_export": FIELDS})
        result = export_segment(con, wh, LocalExportStorage(out), req, as_of=DAY)
        rows, size = result.rows, result.bytes
    elif case == "segment-floor":
        target = out / "floor.json"
        rows = con.execute(
            f"""COPY (
                  SELECT p.email, p.customer_id AS external_id, p.first_name, p.last_name, p.country, p.random_bucket
                  FROM {wh.scan('memberships', days=[DAY])} m
                  JOIN {wh.scan('profiles', days=[DAY])} p USING (identity_id)
                  WHERE m.segment_id = '{SEGMENT}'
                ) TO {sql_string(str(target))} (FORMAT json)"""
        ).fetchall()[0][0]
        with zipfile.ZipFile(out / "floor.zip", "w", zipfile.ZIP_DEFLATED) as zf:
            zf.write(target, "floor.json")
        size = (out / "floor.zip").stat().st_size
    else:
        raise SystemExit(f"unknown case {case}")
    seconds = time.perf_counter() - t
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    shutil.rmtree(out, ignore_errors=True)
    return {"case": case, "seconds": round(seconds, 2), "peak_rss_mb": round(peak_mb), "rows": rows, "bytes": size}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profiles", type=int, default=10_000_000)
    parser.add_argument("--members", type=int, default=2_000_000)
    parser.add_argument("--workdir", default="/tmp/bench_exports")
    parser.add_argument("--repeat", type=int, default=1, help="runs per case (best time is reported)")
    parser.add_argument("--case", help=argparse.SUPPRESS)
    args = parser.parse_args()
    workdir = Path(args.workdir)
    if args.case:
        print(json.dumps(run_case(args.case, workdir)))
        return 0
    generate(workdir, args.profiles, args.members)
    results = {}
    for case in ("daily-floor", "daily-pipeline", "segment-floor", "segment-pipeline"):
        runs = []
        for _ in range(args.repeat):
            proc = subprocess.run(
                [sys.executable, __file__, "--case", case, "--workdir", str(workdir)],
                check=True, capture_output=True, text=True, env={**os.environ},
            )
            runs.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        best = min(runs, key=lambda r: r["seconds"])
        results[case] = best
        print(f"{case:18s} {best['seconds']:8.2f} s  peak RSS {best['peak_rss_mb']:6d} MB  "
              f"rows {best['rows']:>11,}  bytes {best['bytes']:>13,}", flush=True)
    for what in ("daily", "segment"):
        pipe, floor = results[f"{what}-pipeline"], results[f"{what}-floor"]
        print(f"{what}: pipeline/floor = {pipe['seconds'] / floor['seconds']:.2f}x time, "
              f"{pipe['peak_rss_mb'] / floor['peak_rss_mb']:.2f}x peak RSS (target <= 1.5x time)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
