"""Benchmark the export writers against a bare-DuckDB floor, each case in a fresh process.

    python benchmarks/bench_exports.py [--profiles 10000000] [--members 1000000,2000000,4000000]
                                       [--repeat 3] [--workdir DIR]

Inputs are generated directly with DuckDB, once per ``--members`` value (kept in
``<workdir>/p<profiles>-m<members>``): a ``profiles`` partition with ``--profiles`` rows of the
full schema; ``memberships`` with one ``<members>``-member segment plus four others of 10% each;
``segment_stats`` naming them. Cases:

* daily pipeline: ``write_daily_feed`` (validation, atomic publish, ``latest`` pointer)
* daily floor: one hand-written ``COPY (<same join>) TO ... (FORMAT json)``
* segment pipeline: ``export_segment`` of the big segment, 6 fields, zip chunks of 5,000
* segment floor: ``COPY (<same 6 fields of the same members>) TO ... (FORMAT json)`` then the whole
  file zipped by Python's ``zipfile`` (ZIP_DEFLATED, default level) in the same process

The daily cases run on the 2,000,000-member data set (else the first one). Each run is a fresh
process and prints wall seconds, CPU seconds (user + system of the process, all threads) and peak
RSS (``ru_maxrss``, DuckDB included); floor and pipeline runs alternate so they share the machine's
load. With ``--repeat N`` the min and median over the N runs are reported; the ratios use the
medians and the mins. Timings on a shared machine are noisy: compare ratios, not absolute seconds.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
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
    con.execute("SET enable_progress_bar = false").fetchall()
    t = time.perf_counter()
    email = "'user' || i || '@example.com'"
    given = {
        "identity_id": f"substr(md5({email}), 1, 16)", "email": email, "customer_id": "'cust-' || i",
        "first_name": "'First' || (i % 5000)", "last_name": "'Last' || (i % 7919)",
        "gender": "CASE WHEN i % 2 = 0 THEN 'F' ELSE 'M' END", "dob": "DATE '1960-01-01' + (i % 15000)::INT",
        "phone": "CASE WHEN i % 3 = 0 THEN '+35840' || (i % 1000000) END",
        "country": "['FI', 'SE', 'DE', 'US', 'FR'][1 + i % 5]", "city": "'City ' || (i % 300)",
        "language": "['fi', 'sv', 'de', 'en', 'fr'][1 + i % 5]", "time_zone": "'Europe/Helsinki'",
        "loyalty_tier": "['bronze', 'silver', 'gold'][1 + i % 3]",
        "created_at": "TIMESTAMP '2024-01-01' + to_seconds(i % 60000000)", "order_count": "i % 7",
        "total_revenue": "(i % 1000) * 1.25", "event_count_30d": "i % 40", "order_count_30d": "i % 3",
        "random_bucket": "(i % 10000)::INT",
    }
    # the profiles columns of the model (data/model.yaml); those not given are NULL
    cols = ", ".join(f"{given.get(c, f'NULL::{t}')} AS \"{c}\"" for c, t in wh.schema("profiles").items())
    wh.write_partition(con, "profiles", DAY, f"SELECT {cols} FROM range({profiles}) t(i)")
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


def run_case(case: str, workdir: Path, options: dict) -> dict:
    from segment_pipeline.core.exports.daily_feed import write_daily_feed
    from segment_pipeline.core.exports.segment_export import SegmentExportRequest, export_segment
    from segment_pipeline.core.exports.storage import LocalExportStorage
    from segment_pipeline.core.warehouse import Warehouse, connect, sql_string

    wh = Warehouse(workdir / "warehouse")
    out = workdir / "out" / case
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    con = connect(memory_limit=MEMORY_LIMIT)
    con.execute("SET enable_progress_bar = false").fetchall()
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
        result = export_segment(con, wh, LocalExportStorage(out), req, as_of=DAY, **options)
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
    usage = resource.getrusage(resource.RUSAGE_SELF)
    shutil.rmtree(out, ignore_errors=True)
    return {"case": case, "seconds": round(seconds, 2), "cpu_seconds": round(usage.ru_utime + usage.ru_stime, 2),
            "peak_rss_mb": round(usage.ru_maxrss / 1024), "rows": rows, "bytes": size}


def _run(case: str, workdir: Path, options: dict) -> dict:
    proc = subprocess.run(
        [sys.executable, __file__, "--case", case, "--workdir", str(workdir), "--options", json.dumps(options)],
        check=True, capture_output=True, text=True, env={**os.environ},
    )
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _summary(runs: list[dict]) -> dict:
    def stat(key: str, how) -> float:
        return how(r[key] for r in runs)

    return {
        "runs": len(runs),
        "seconds_min": stat("seconds", min), "seconds_median": round(statistics.median(r["seconds"] for r in runs), 2),
        "cpu_min": stat("cpu_seconds", min), "cpu_median": round(statistics.median(r["cpu_seconds"] for r in runs), 2),
        "rss_min": stat("peak_rss_mb", min), "rss_max": stat("peak_rss_mb", max),
        "rss_median": round(statistics.median(r["peak_rss_mb"] for r in runs)),
        "rows": runs[0]["rows"], "bytes": runs[0]["bytes"],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profiles", type=int, default=10_000_000)
    parser.add_argument("--members", default="2000000",
                        help="comma-separated segment sizes, e.g. 1000000,2000000,4000000 (default 2000000)")
    parser.add_argument("--workdir", default=str(Path(tempfile.gettempdir()) / "bench_exports"),
                        help="scratch folder (default: bench_exports in the system temp folder)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per case (min and median reported)")
    parser.add_argument("--no-daily", action="store_true", help="skip the daily feed cases")
    parser.add_argument("--members-per-pass", type=int, help="export_segment(members_per_pass=...)")
    parser.add_argument("--writer-threads", type=int, help="export_segment(writer_threads=...)")
    parser.add_argument("--case", help=argparse.SUPPRESS)
    parser.add_argument("--options", default="{}", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        print(json.dumps(run_case(args.case, Path(args.workdir), json.loads(args.options))))
        return 0
    options = {}
    if args.members_per_pass:
        options["members_per_pass"] = args.members_per_pass
    if args.writer_threads:
        options["writer_threads"] = args.writer_threads
    sizes = [int(m) for m in args.members.split(",")]
    daily_size = 2_000_000 if 2_000_000 in sizes else sizes[0]
    print(f"{args.profiles:,} profiles; segment sizes {[f'{m:,}' for m in sizes]}; {args.repeat} run(s) per case, "
          f"each in a fresh process; export_segment options {options or 'default'}", flush=True)
    table = []
    for members in sizes:
        workdir = Path(args.workdir) / f"p{args.profiles}-m{members}"
        generate(workdir, args.profiles, members)
        pairs = [("segment-floor", "segment-pipeline")]
        if members == daily_size and not args.no_daily:
            pairs.insert(0, ("daily-floor", "daily-pipeline"))
        for floor_case, pipeline_case in pairs:
            runs: dict[str, list[dict]] = {floor_case: [], pipeline_case: []}
            for _ in range(args.repeat):  # alternate, so both see the same machine load
                runs[floor_case].append(_run(floor_case, workdir, {}))
                runs[pipeline_case].append(_run(pipeline_case, workdir, options))
            floor, pipe = _summary(runs[floor_case]), _summary(runs[pipeline_case])
            for case, s in ((floor_case, floor), (pipeline_case, pipe)):
                print(f"  {members:>10,} {case:17s} wall min {s['seconds_min']:6.2f} s  median {s['seconds_median']:6.2f} s"
                      f"  | cpu median {s['cpu_median']:6.2f} s  | peak RSS median {s['rss_median']:5d} MB"
                      f" (max {s['rss_max']})  | rows {s['rows']:>11,}  bytes {s['bytes']:>13,}", flush=True)
            what = floor_case.split("-")[0]
            print(f"  {members:>10,} {what}: pipeline/floor wall median {pipe['seconds_median'] / floor['seconds_median']:.2f}x"
                  f" (min {pipe['seconds_min'] / floor['seconds_min']:.2f}x), peak RSS "
                  f"{pipe['rss_median'] / floor['rss_median']:.2f}x  (target <= 1.5x wall, bounded RSS)", flush=True)
            table.append({"members": members, "what": what, "floor": floor, "pipeline": pipe})
    print(json.dumps(table))
    return 0


if __name__ == "__main__":
    sys.exit(main())
