"""Benchmark: ingestion through a source mapping vs the fixed-schema ingestion before issue 11.

    python benchmarks/bench_ingest.py                       # 1M profiles, 3M events, 3M-message stream
    python benchmarks/bench_ingest.py --profiles 100000     # a quick run (events and stream scale with it)
    python benchmarks/bench_ingest.py --repeat 3 --skip-stream   # best of 3 alternating runs, on a busy machine

Issue 11's bound: ingesting through a mapping costs at most 1.2x today's fixed-schema ingestion at
1M profiles and 3M events, and a Segment-spec stream of 3M events ingests within the same bound.

What runs (data generated first, not timed, kept under ``--work`` for the next run):

1. **baseline**: the apparel sample (``segment-pipeline generate``: ``--profiles`` customers,
   ``--events-per-profile`` events each, NDJSON, ``--days`` daily files) ingested by the code of
   ``--baseline-rev`` (default: the commit before the data model was introduced, i.e. main before
   issue 11), checked out into a temporary ``git worktree`` that is removed afterwards;
2. **mapping**: the same files ingested by this checkout, through ``data/model.yaml`` and the
   mappings of ``data/sources.yaml``;
3. **stream**: a Segment-spec stream (``segment-pipeline generate --example beauty_shop``, only its
   ``segment_stream`` folder) of about ``--stream-events`` messages, ingested by this checkout with
   ``examples/beauty_shop``'s model and sources; compared per event with the baseline's event
   ingestion (the same bound).

Each ingestion is the ``raw`` asset group (every raw asset and its checks) materialized over all days
as one in-process Dagster run in a fresh Python process; the time is the run's (imports and
definitions loading excluded), with the per-step times from the run's step events. Each is printed
next to its **floor**: a bare DuckDB read of the same files written to Parquet, measured in the same
benchmark run (machines, and the same machine under load, vary 2x; the floors show how busy it was).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BOUND = 1.2

#: Runs in a child process with cwd and PYTHONPATH = the checkout to measure; prints one JSON line.
CHILD = r"""
import json, sys, time, warnings
import dagster as dg
for w in (dg.BetaWarning, dg.PreviewWarning, dg.SupersessionWarning, DeprecationWarning):
    warnings.filterwarnings("ignore", category=w)
from segment_pipeline.definitions import defs as load_defs
first, last = sys.argv[1], sys.argv[2]
defs = load_defs()
keys = dg.AssetSelection.groups("raw").resolve(defs.resolve_asset_graph())
job = defs.resolve_implicit_global_asset_job_def().get_subset(asset_selection=keys)
instance = dg.DagsterInstance.ephemeral()
t0 = time.perf_counter()
result = job.execute_in_process(
    instance=instance, raise_on_error=False,
    tags={"dagster/asset_partition_range_start": first, "dagster/asset_partition_range_end": last},
    run_config={"loggers": {"console": {"config": {"log_level": "ERROR"}}}})
seconds = time.perf_counter() - t0
steps, rows = {}, {}
for ev in result.all_events:
    if ev.event_type_value == "STEP_SUCCESS":
        steps[ev.step_key] = ev.event_specific_data.duration_ms / 1000
    if ev.event_type_value == "ASSET_MATERIALIZATION":
        mat = ev.event_specific_data.materialization
        for k, v in mat.metadata.items():
            if k.startswith("rows") and isinstance(v.value, int):
                key = f"{mat.asset_key.to_user_string()}.{k}"
                rows[key] = rows.get(key, 0) + v.value
print(json.dumps({"success": result.success, "seconds": seconds, "steps": steps, "rows": rows}))
"""


def _git(*args: str) -> str:
    return subprocess.run(["git", "-C", str(ROOT), *args], check=True, capture_output=True, text=True).stdout.strip()


def default_baseline_rev() -> str:
    """The commit before ``segment_pipeline/core/model.py`` was added (main before issue 11)."""
    added = _git("log", "--diff-filter=A", "--format=%H", "--", "segment_pipeline/core/model.py").splitlines()
    if not added:
        raise SystemExit("cannot find the commit that added core/model.py; pass --baseline-rev")
    return f"{added[-1]}~1"


def generate(args: argparse.Namespace, example: str, out: Path, profiles: int) -> None:
    marker = out / ".generated.json"
    spec = {"example": example, "profiles": profiles, "days": args.days, "start": args.start,
            "events_per_profile": args.events_per_profile, "seed": args.seed}
    if marker.is_file() and json.loads(marker.read_text()) == spec:
        return
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, "-m", "segment_pipeline.cli", "generate", "--example", example, "--out", str(out),
           "--profiles", str(profiles), "--days", str(args.days), "--start", args.start, "--seed", str(args.seed),
           "--events-per-profile", str(args.events_per_profile)]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    print(f"  generated {example} ({profiles:,} customers, {args.days} days) in {time.perf_counter() - t0:.0f}s "
          "(not timed)", flush=True)
    marker.write_text(json.dumps(spec))


def ingest(checkout: Path, env: dict[str, str], first: str, last: str) -> dict:
    """The raw group over first..last in a fresh process of ``checkout``; its run time and counts."""
    child_env = {k: v for k, v in os.environ.items() if not k.startswith(("SEGMENT_PIPELINE_", "DAGSTER_"))}
    child_env.update(env, PYTHONPATH=str(checkout), SEGMENT_PIPELINE_START_DATE=first, SEGMENT_PIPELINE_END_DATE=last)
    shutil.rmtree(env["SEGMENT_PIPELINE_WAREHOUSE"], ignore_errors=True)
    out = subprocess.run([sys.executable, "-c", CHILD, first, last], cwd=checkout, env=child_env,
                         capture_output=True, text=True)
    lines = out.stdout.strip().splitlines()
    info = json.loads(lines[-1]) if out.returncode == 0 and lines else None
    if info is None or not info["success"]:
        print(f"  ingestion in {checkout} FAILED:\n{out.stderr[-3000:]}", flush=True)
        return {"seconds": float("nan"), "steps": {}, "rows": {}, "failed": True}
    return info


def floor(files: list[str], fmt: str, scratch: Path) -> float:
    """A bare DuckDB read of ``files`` into one Parquet file: the least any ingestion must do."""
    import duckdb

    reader = (f"read_json({files!r}, format = 'newline_delimited', ignore_errors = true, union_by_name = true, "
              "maximum_object_size = 16777216)" if fmt == "ndjson"
              else f"read_csv({files!r}, header = true, all_varchar = true, ignore_errors = true, union_by_name = true)")
    target = scratch / "floor.parquet"
    con = duckdb.connect()
    t0 = time.perf_counter()
    con.execute(f"COPY (SELECT * FROM {reader}) TO '{target}' (FORMAT parquet)")
    seconds = time.perf_counter() - t0
    con.close()
    target.unlink(missing_ok=True)
    return seconds


def verdict(ratio: float) -> str:
    if ratio != ratio:  # NaN: a leg failed
        return "not measured: a run failed, see above"
    return "OK" if ratio <= BOUND else "OVER"


def files_of(folder: Path, pattern: str) -> list[str]:
    return sorted(str(p) for p in folder.glob(pattern))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profiles", type=int, default=1_000_000, help="apparel customers (default 1M)")
    parser.add_argument("--events-per-profile", type=float, default=3.0, help="apparel events per customer (3M at 1M)")
    parser.add_argument("--stream-events", type=int, default=None,
                        help="Segment messages of the stream (default: profiles x events-per-profile, 3M at 1M)")
    parser.add_argument("--days", type=int, default=7, help="daily files per source")
    parser.add_argument("--start", default="2026-11-01")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--baseline-rev", default=None,
                        help="git revision of today's fixed-schema ingestion (default: main before issue 11)")
    parser.add_argument("--work", type=Path, default=ROOT / "bench_data" / "ingest",
                        help="generated data and warehouses (kept: the next run of the same size reuses the data)")
    parser.add_argument("--skip-stream", action="store_true", help="only the baseline / mapping comparison")
    parser.add_argument("--repeat", type=int, default=1,
                        help="run baseline and mapping alternately this many times and keep the best of each "
                             "(the stream leg, too, runs this many times, best kept)")
    args = parser.parse_args()
    rev = args.baseline_rev or default_baseline_rev()
    stream_events = args.stream_events or int(args.profiles * args.events_per_profile)
    first = args.start
    last = (dt.date.fromisoformat(first) + dt.timedelta(days=args.days - 1)).isoformat()
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    print(f"bench_ingest: {args.profiles:,} profiles x {args.events_per_profile:g} events, {args.days} days; "
          f"baseline {rev} ({_git('rev-parse', '--short', rev)})", flush=True)

    apparel = work / f"apparel-{args.profiles}"
    generate(args, "apparel", apparel, args.profiles)
    # the beauty generator writes about 4.9 Segment messages per customer over a few days
    beauty = work / f"beauty-{stream_events}"
    if not args.skip_stream:
        generate(args, "beauty_shop", beauty, max(1, round(stream_events / 4.9)))
        stream_only = work / f"stream-{stream_events}"
        if not (stream_only / "segment_stream").exists():
            stream_only.mkdir(parents=True, exist_ok=True)
            (stream_only / "segment_stream").symlink_to(beauty / "segment_stream")

    base_dir = Path(tempfile.mkdtemp(prefix="bench-ingest-baseline-"))
    baseline_checkout = base_dir / "checkout"
    _git("worktree", "add", "--detach", str(baseline_checkout), rev)
    baseline = mapping = None
    try:
        for _ in range(args.repeat):  # alternate the two, keep the best of each: load varies over minutes
            b = ingest(baseline_checkout, {"SEGMENT_PIPELINE_WAREHOUSE": str(work / "wh-baseline"),
                                           "SEGMENT_PIPELINE_LANDING": str(apparel)}, first, last)
            m = ingest(ROOT, {"SEGMENT_PIPELINE_WAREHOUSE": str(work / "wh-mapping"),
                              "SEGMENT_PIPELINE_LANDING": str(apparel)}, first, last)
            baseline = b if baseline is None or b["seconds"] < baseline["seconds"] else baseline
            mapping = m if mapping is None or m["seconds"] < mapping["seconds"] else mapping
    finally:
        _git("worktree", "remove", "--force", str(baseline_checkout))
        shutil.rmtree(base_dir, ignore_errors=True)
    apparel_files = files_of(apparel, "*/date=*/*.ndjson")
    apparel_floor = floor(apparel_files, "ndjson", work)
    event_floor = floor(files_of(apparel, "events/date=*/*.ndjson"), "ndjson", work)

    def line(name: str, info: dict, floor_s: float, note: str = "") -> None:
        steps = ", ".join(f"{k} {v:.1f}s" for k, v in sorted(info["steps"].items()))
        print(f"  {name:<9} {info['seconds']:>8.1f}s   floor {floor_s:>6.1f}s ({info['seconds'] / floor_s:4.1f}x)  "
              f"[{steps}]{note}", flush=True)

    best = f", best of {args.repeat} alternating runs each" if args.repeat > 1 else ""
    print(f"\ningestion of {args.profiles:,} profiles + {int(args.profiles * args.events_per_profile):,} events "
          f"(apparel, NDJSON, {args.days} days{best}; floor: bare DuckDB read -> Parquet of the same files):")
    line("baseline", baseline, apparel_floor)
    line("mapping", mapping, apparel_floor)
    ratio = mapping["seconds"] / baseline["seconds"]
    print(f"  ratio mapping / baseline: {mapping['seconds']:.1f}s / {baseline['seconds']:.1f}s = {ratio:.2f}x "
          f"(bound {BOUND}x: {verdict(ratio)})")
    verdicts = [f"mapping: {mapping['seconds']:.1f}s vs baseline {baseline['seconds']:.1f}s = {ratio:.2f}x "
                f"(bound {BOUND}x): {verdict(ratio)}"]
    print(f"  rows: baseline {json.dumps(baseline['rows'])}\n        mapping  {json.dumps(mapping['rows'])}")

    if not args.skip_stream:
        stream = None
        for _ in range(args.repeat):  # best of --repeat, like the baseline and mapping legs
            s = ingest(ROOT, {"SEGMENT_PIPELINE_WAREHOUSE": str(work / "wh-stream"),
                              "SEGMENT_PIPELINE_LANDING": str(work / f"stream-{stream_events}"),
                              "SEGMENT_PIPELINE_MODEL": str(ROOT / "examples/beauty_shop/model.yaml"),
                              "SEGMENT_PIPELINE_SOURCES": str(ROOT / "examples/beauty_shop/sources.yaml"),
                              "SEGMENT_PIPELINE_SEGMENTS": str(ROOT / "examples/beauty_shop/segments.yaml")},
                       first, last)
            stream = s if stream is None or s["seconds"] < stream["seconds"] else stream
        stream_files = files_of(beauty, "segment_stream/date=*/*.ndjson")
        messages = sum(Path(f).read_bytes().count(b"\n") for f in stream_files)
        stream_floor = floor(stream_files, "ndjson", work)
        base_events = sum(v for k, v in baseline["steps"].items() if "event" in k)
        n_events = int(args.profiles * args.events_per_profile)
        best_of = f", best of {args.repeat} runs" if args.repeat > 1 else ""
        print(f"\nSegment-spec stream of {messages:,} messages (identify + track{best_of}; "
              "floor: bare DuckDB read -> Parquet):")
        line("stream", stream, stream_floor)
        print(f"  baseline event ingestion: {base_events:.1f}s for {n_events:,} events (floor {event_floor:.1f}s)")
        per_m = stream["seconds"] / messages * 1e6
        base_per_m = base_events / n_events * 1e6
        ratio = per_m / base_per_m
        same = base_per_m * messages / 1e6  # the baseline's event ingestion at the stream's size
        print(f"  stream {stream['seconds']:.1f}s for {messages:,} messages vs baseline events {same:.1f}s for as "
              f"many events (scaled per event) = {ratio:.2f}x (bound {BOUND}x: {verdict(ratio)})")
        print(f"  per million: stream {per_m:.1f}s vs baseline events {base_per_m:.1f}s; floors per million: stream "
              f"{stream_floor / messages * 1e6:.1f}s, apparel events {event_floor / n_events * 1e6:.1f}s")
        verdicts.append(f"stream: {stream['seconds']:.1f}s for {messages:,} messages vs baseline {same:.1f}s for as "
                        f"many events = {ratio:.2f}x (bound {BOUND}x): {verdict(ratio)}")
    print("\nverdict (issue 11: mapping and stream within " + f"{BOUND}x of the fixed-schema ingestion):")
    for v in verdicts:
        print(f"  {v}")


if __name__ == "__main__":
    main()
