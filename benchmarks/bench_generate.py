"""Benchmark the sample-data generator: wall time, throughput, bytes written and peak RSS.

    python benchmarks/bench_generate.py --profiles 1000000 --days 7 --format ndjson --clean
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import sys
import tempfile
import time

from segment_pipeline.core.generate import FORMATS, generate


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profiles", type=int, default=10_000_000)
    parser.add_argument("--days", type=int, default=7)
    parser.add_argument("--events-per-profile", type=float, default=3.0)
    parser.add_argument("--format", choices=FORMATS, default="ndjson")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--start", default="2026-11-01")
    parser.add_argument("--out", default=os.path.join(tempfile.gettempdir(), "bench_landing"),
                        help="output folder (default: bench_landing in the system temp folder)")
    parser.add_argument("--memory-limit", default="1500MB", help="DuckDB memory_limit")
    parser.add_argument("--threads", type=int, default=None, help="DuckDB threads (default: all cores)")
    parser.add_argument("--clean", action="store_true", help="delete the output folder afterwards")
    args = parser.parse_args(argv)

    shutil.rmtree(args.out, ignore_errors=True)
    t0 = time.perf_counter()
    summary = generate(
        args.out,
        profiles=args.profiles,
        days=args.days,
        seed=args.seed,
        start=args.start,
        fmt=args.format,
        events_per_profile=args.events_per_profile,
        memory_limit=args.memory_limit,
        threads=args.threads,
    )
    seconds = time.perf_counter() - t0
    rows = summary["profile_rows"] + summary["event_rows"]
    # ru_maxrss is in KiB on Linux
    peak_kib = max(
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    )
    print(f"profiles={args.profiles:,} days={args.days} format={args.format} out={args.out}")
    print(f"files          {summary['files']}")
    print(f"profile rows   {summary['profile_rows']:,} ({summary['malformed_profile_rows']:,} malformed)")
    print(f"event rows     {summary['event_rows']:,} ({summary['malformed_event_rows']:,} malformed)")
    print(f"seconds        {seconds:.1f}")
    print(f"rows/s         {rows / seconds:,.0f}")
    print(f"bytes written  {summary['bytes']:,} ({summary['bytes'] / 2**30:.2f} GiB)")
    print(f"peak RSS       {peak_kib / 1024:,.0f} MiB")
    if args.clean:
        shutil.rmtree(args.out, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
