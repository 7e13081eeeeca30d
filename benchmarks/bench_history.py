"""Benchmark (issue 12): the last day's run against the length of history, with a floor.

    python benchmarks/bench_history.py                                   # 1,000,000 identities; 7, 30, 90, 180 days
    python benchmarks/bench_history.py --identities 100000 --days 7,30   # a quick run
    python benchmarks/bench_history.py --identities 200000 --compare     # and the former full recompute

For each history length L (``--days``), in a fresh warehouse of the apparel model (``data/model.yaml``
with ``data/segments.yaml`` and two more segments: 20):

* not timed: days 1..L-1 are written as raw partitions (``--identities`` identities, about
  ``--events-per-identity`` events per identity per day, the four event types with brands,
  categories, revenue; ``--updates`` of the identities send a profile update each day, some with
  cleared fields), then day L-1's state is built in full (profiles and the segments' state, with
  the rollups of the longest window) and its memberships, as a running deployment would have it;
  day L's landing files (NDJSON: profile updates and events in the shop's source format) are written.
* timed, the last day's run: ingest day L (profiles and events, validated, with quarantine),
  profiles and traits of day L (incremental: state of L-1 + day L), memberships of 20 segments.
* the floor, measured right after in the same process: bare DuckDB doing the least any daily job
  must do: read day L's two landing files, merge the day's profile rows and event counts into the
  previous profiles snapshot (latest wins per email), write the new snapshot, and evaluate 20 simple
  rules over it into one memberships file. No validation, no state, no traits.

Prints, per length, the run's seconds (and its stages), the floor's and the ratio run/floor; then
the ratio of the longest history's run to the shortest one's (issue 12's target: 180/7 <= 1.3).
Figures on this shared 2-core machine move with the other work on it: compare within one run.
"""

from __future__ import annotations

import argparse
import datetime as dt
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

START = dt.date(2026, 1, 1)
BRANDS = "['Nike', 'Adidas', 'Puma', 'Timberland', 'Levi''s', 'Carhartt', NULL]"
CATEGORIES = "['sneakers', 'jackets', 'boots', 'jeans', 'accessories', NULL]"
EVENTS = "['page_view', 'product_view', 'product_view', 'product_view', 'add_to_cart', 'order']"


def cpu_seconds() -> float:
    """User + system CPU time of this process (DuckDB's threads included): steadier than wall time
    on a machine other work shares."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _fill(wh, table: str, exprs: dict[str, str]) -> str:
    from segment_pipeline.core.warehouse import sql_ident

    return ", ".join(f"{exprs.get(c, 'NULL')} AS {sql_ident(c)}" for c in wh.schema(table))


def write_history(con, wh, days: list[dt.date], n: int, per_day: int, updates: float) -> None:
    """Raw partitions of ``days`` in the model's schema (what ingestion would have written)."""
    for d_no, day in enumerate(days):
        h = f"(hash(i, {d_no}, 'p') % 1000003)::BIGINT"
        k = f"((hash(i, {d_no}, 'k') % {n})::BIGINT)"
        profiles = _fill(wh, "raw_profiles", {
            "email": f"'u' || {k} || '@example.com'", "email_raw": f"'u' || {k} || '@example.com'",
            "customer_id": f"'C' || {k}", "first_name": f"'F' || ({h} % 500)", "city": f"'city' || ({h} % 50)",
            "country": f"['DE', 'FR', 'US', 'GB'][1 + {h} % 4]", "loyalty_tier": f"['bronze', 'silver', 'gold'][1 + {h} % 3]",
            "created_at": f"TIMESTAMP '2025-01-01' + INTERVAL ({k} % 300) DAY",
            "updated_at": f"TIMESTAMP '{day}' + INTERVAL ({h} % 86400) SECOND",
            "cleared": f"CASE WHEN {h} % 50 = 0 THEN ['city'] END",
            "source": "'profiles'", "source_file": f"'profiles/date={day}/profiles.ndjson'", "source_line": "i",
        })
        wh.write_partition(con, "raw_profiles", day, f"SELECT {profiles} FROM range({int(n * updates)}) t(i)")
        g = f"(hash(j, {d_no}, 'e') % 1000003)::BIGINT"
        events = _fill(wh, "raw_events", {
            "event_id": f"'{d_no}-' || j", "email": f"'u' || (hash(j, {d_no}, 'who') % {n})::BIGINT || '@example.com'",
            "event": "kind", "occurred_at": f"TIMESTAMP '{day}' + INTERVAL ({g} % 86400) SECOND",
            "brand": f"CASE WHEN kind <> 'page_view' THEN {BRANDS}[1 + {g} % 7] END",
            "category": f"CASE WHEN kind <> 'page_view' THEN {CATEGORIES}[1 + {g} // 7 % 6] END",
            "price": f"CASE WHEN kind <> 'page_view' THEN ({g} % 20000) / 100 END",
            "revenue": f"CASE WHEN kind = 'order' THEN ({g} % 30000) / 100 END",
            "quantity": "CASE WHEN kind IN ('order', 'add_to_cart') THEN 1 END",
            "utm_source": f"['instagram', 'google', NULL, NULL][1 + {g} // 13 % 4]",
            "source": "'events'", "source_file": f"'events/date={day}/events.ndjson'", "source_line": "j",
        })
        wh.write_partition(con, "raw_events", day,
                           f"SELECT {events} FROM (SELECT j, {EVENTS}[1 + (hash(j, {d_no}, 'k') % 6)::BIGINT] AS kind FROM range({per_day}) t(j))")


def write_landing(con, landing: Path, day: dt.date, d_no: int, n: int, per_day: int, updates: float) -> None:
    """Day ``day``'s landing files in the shop's source format (data/sources.yaml)."""
    k = f"((hash(i, {d_no}, 'k') % {n})::BIGINT)"
    h = f"(hash(i, {d_no}, 'p') % 1000003)::BIGINT"
    for kind in ("profiles", "events"):
        (landing / kind / f"date={day}").mkdir(parents=True, exist_ok=True)
    con.execute(f"""COPY (SELECT 'C' || {k} AS customer_id, 'u' || {k} || '@example.com' AS email, 'F' || ({h} % 500) AS first_name,
                    CASE WHEN {h} % 50 = 0 THEN NULL ELSE 'city' || ({h} % 50) END AS city,
                    ['DE', 'FR', 'US', 'GB'][1 + {h} % 4] AS country, ['bronze', 'silver', 'gold'][1 + {h} % 3] AS loyalty_tier,
                    strftime(TIMESTAMP '2025-01-01' + INTERVAL ({k} % 300) DAY, '%Y-%m-%dT%H:%M:%SZ') AS created_at,
                    strftime(TIMESTAMP '{day}' + INTERVAL ({h} % 86400) SECOND, '%Y-%m-%dT%H:%M:%SZ') AS updated_at
                    FROM range({int(n * updates)}) t(i))
                    TO '{landing}/profiles/date={day}/profiles-{day}.ndjson' (FORMAT json)""")
    g = f"(hash(j, {d_no}, 'e') % 1000003)::BIGINT"
    con.execute(f"""COPY (SELECT 'ev-{d_no}-' || j AS event_id, 'u' || (hash(j, {d_no}, 'who') % {n})::BIGINT || '@example.com' AS email,
                    kind AS event_type, strftime(TIMESTAMP '{day}' + INTERVAL ({g} % 86400) SECOND, '%Y-%m-%dT%H:%M:%SZ') AS occurred_at,
                    CASE WHEN kind <> 'page_view' THEN {BRANDS}[1 + {g} % 7] END AS brand,
                    CASE WHEN kind <> 'page_view' THEN {CATEGORIES}[1 + {g} // 7 % 6] END AS category,
                    CASE WHEN kind <> 'page_view' THEN ({g} % 20000) / 100 END AS price,
                    CASE WHEN kind = 'order' THEN ({g} % 30000) / 100 END AS revenue,
                    CASE WHEN kind IN ('order', 'add_to_cart') THEN 1 END AS quantity,
                    ['instagram', 'google', NULL, NULL][1 + {g} // 13 % 4] AS utm_source
                    FROM (SELECT j, {EVENTS}[1 + (hash(j, {d_no}, 'k') % 6)::BIGINT] AS kind FROM range({per_day}) t(j)))
                    TO '{landing}/events/date={day}/events-{day}.ndjson' (FORMAT json)""")


def floor(con, wh, landing: Path, day: dt.date, out: Path) -> float:
    """Bare DuckDB: the least a daily job must do (see the module doc); returns seconds."""
    prev = wh.partition_path("profiles", day - dt.timedelta(days=1))
    t = time.perf_counter()
    con.execute(f"""
        COPY (
            WITH p AS (SELECT email, arg_max(COLUMNS(* EXCLUDE (email)), updated_at) FROM
                       read_json('{landing}/profiles/date={day}/*.ndjson', format = 'newline_delimited') GROUP BY email),
                 e AS (SELECT email, count(*) AS events, count(*) FILTER (WHERE event_type = 'order') AS orders
                       FROM read_json('{landing}/events/date={day}/*.ndjson', format = 'newline_delimited') GROUP BY email)
            SELECT s.* REPLACE (coalesce(p.city, s.city) AS city, coalesce(p.loyalty_tier, s.loyalty_tier) AS loyalty_tier,
                                s.order_count + coalesce(e.orders, 0) AS order_count)
            FROM read_parquet('{prev}') s LEFT JOIN p USING (email) LEFT JOIN e USING (email)
        ) TO '{out}/snapshot.parquet' (FORMAT parquet, COMPRESSION zstd)""")
    rules = [f"order_count >= {i % 4}" if i % 2 else f"random_bucket < {500 * (i + 1)}" for i in range(20)]
    union = " UNION ALL ".join(f"SELECT 's{i}' AS segment_id, identity_id, email FROM snap WHERE {r}"
                               for i, r in enumerate(rules))
    con.execute(f"COPY (WITH snap AS (SELECT * FROM read_parquet('{out}/snapshot.parquet')) {union}) "
                f"TO '{out}/memberships.parquet' (FORMAT parquet, COMPRESSION zstd)")
    return time.perf_counter() - t


def run_length(length: int, args: argparse.Namespace, base: Path) -> dict:
    from benchmarks.bench_pipeline import EXTRA_SEGMENTS
    from segment_pipeline.core.ingest import ingest_day
    from segment_pipeline.core.memberships import compute_memberships
    from segment_pipeline.core.model import load_model
    from segment_pipeline.core.profiles import build_profiles
    from segment_pipeline.core.segments import load_catalog
    from segment_pipeline.core.warehouse import Warehouse, connect

    work = base / f"history_{length}"
    work.mkdir()
    doc = yaml.safe_load((ROOT / "data" / "segments.yaml").read_text())
    doc["segments"] += EXTRA_SEGMENTS
    (work / "segments.yaml").write_text(yaml.safe_dump(doc))
    model = load_model(ROOT / "data" / "model.yaml")
    catalog = load_catalog(work / "segments.yaml", model)
    wh = Warehouse(work / "warehouse", model)
    con = connect(preserve_order=True)
    days = [START + dt.timedelta(days=i) for i in range(length)]
    per_day = int(args.identities * args.events_per_identity)
    t = time.perf_counter()
    write_history(con, wh, days[:-1], args.identities, per_day, args.updates)
    build_profiles(con, wh, days[-2], full_rebuild=True)
    compute_memberships(con, wh, catalog, days[-2])
    write_landing(con, work / "landing", days[-1], length - 1, args.identities, per_day, args.updates)
    print(f"  history of {length} days ({per_day * (length - 1):,} events), state of day {length - 1} built: "
          f"{time.perf_counter() - t:.1f}s (not timed)", flush=True)
    con.close()
    con = connect(preserve_order=True)
    stages = {}
    t0, c0 = time.perf_counter(), cpu_seconds()
    for kind in ("profiles", "events"):
        ingest_day(con, wh, work / "landing", kind, days[-1])
    stages["ingest"] = time.perf_counter() - t0
    t = time.perf_counter()
    identities = build_profiles(con, wh, days[-1])
    stages["profiles"] = time.perf_counter() - t
    t = time.perf_counter()
    report = compute_memberships(con, wh, catalog, days[-1])
    stages["memberships"] = time.perf_counter() - t
    total, total_cpu = time.perf_counter() - t0, cpu_seconds() - c0
    modes = {table: con.execute(f"SELECT value::VARCHAR FROM parquet_kv_metadata('{wh.partition_path(table, days[-1])}') "
                                "WHERE key::VARCHAR = 'mode'").fetchall()[0][0] for table in ("profile_state", "segment_state")}
    c = cpu_seconds()
    fl = floor(connect(), wh, work / "landing", days[-1], work)
    fl_cpu = cpu_seconds() - c
    recompute = None
    if args.compare:  # the former way: the day's profiles and event rules from the whole raw history
        t = time.perf_counter()
        build_profiles(con, wh, days[-1], recompute=True)
        compute_memberships(con, wh, catalog, days[-1], use_state=False)
        recompute = time.perf_counter() - t
    shutil.rmtree(work)
    return {"total": total, "cpu": total_cpu, "floor": fl, "floor_cpu": fl_cpu, "stages": stages, "identities": identities,
            "memberships": report.total_rows, "modes": modes, "recompute": recompute}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--identities", type=int, default=1_000_000)
    parser.add_argument("--days", default="7,30,90,180", help="history lengths, comma-separated")
    parser.add_argument("--events-per-identity", type=float, default=0.3, help="events per identity per day")
    parser.add_argument("--updates", type=float, default=0.02, help="share of identities updating their profile per day")
    parser.add_argument("--compare", action="store_true",
                        help="also time the former full recompute of the last day (profiles and event rules from all history)")
    args = parser.parse_args()
    lengths = [int(x) for x in args.days.split(",")]
    results = {}
    with tempfile.TemporaryDirectory(prefix="bench_history") as tmp:
        for length in lengths:
            print(f"history {length} days, {args.identities:,} identities:", flush=True)
            r = run_length(length, args, Path(tmp))
            results[length] = r
            s = r["stages"]
            print(f"  last day's run {r['total']:.2f}s (ingest {s['ingest']:.2f}s, profiles {s['profiles']:.2f}s, "
                  f"memberships {s['memberships']:.2f}s; state {r['modes']['profile_state']}/{r['modes']['segment_state']}), "
                  f"{r['identities']:,} identities, {r['memberships']:,} memberships; floor {r['floor']:.2f}s, "
                  f"run/floor {r['total'] / r['floor']:.2f}x; cpu: run {r['cpu']:.2f}s, floor {r['floor_cpu']:.2f}s", flush=True)
            if r["recompute"] is not None:
                print(f"  for comparison, profiles + memberships recomputed from the whole history: {r['recompute']:.2f}s "
                      f"(incremental: {s['profiles'] + s['memberships']:.2f}s)", flush=True)
    first, last = lengths[0], lengths[-1]
    print(f"ratio {last} days / {first} days: {results[last]['total'] / results[first]['total']:.2f} wall, "
          f"{results[last]['cpu'] / results[first]['cpu']:.2f} cpu "
          f"(floor ratio {results[last]['floor'] / results[first]['floor']:.2f} wall, "
          f"{results[last]['floor_cpu'] / results[first]['floor_cpu']:.2f} cpu); "
          f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")


if __name__ == "__main__":
    main()
