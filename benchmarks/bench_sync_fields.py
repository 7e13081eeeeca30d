"""Benchmark the plan of a sync with field mappings (issue 16): desired state + per-field diff.

    python benchmarks/bench_sync_fields.py --profiles 1000000 [--fields 4] [--repeat 3]

No destination and no network: the engine's planning (``write_plan``) alone, which is where mapped
fields cost anything (the requests carry a few more bytes). For N identities in one synced segment,
with ``--fields`` Klaviyo mappings (a string, an integer, a timestamp, a boolean, ...), it times:

* the plan without mappings (the segment-names path, for comparison),
* the first plan with mappings (every desired contact gets every value: "adding a mapping sends
  everyone once"), then confirms it into the mirror as a run would,
* the plan of a day where 1% of the profiles changed one mapped value (should plan 1% upserts).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import duckdb

from segment_pipeline.core.model import parse_model
from segment_pipeline.core.sync.desired import desired_sql
from segment_pipeline.core.sync.diff import write_plan
from segment_pipeline.core.sync.fields import FieldPlan
from segment_pipeline.core.sync.mappings import parse_mappings
from segment_pipeline.core.sync.state import StateStore, Target
from segment_pipeline.core.warehouse import Warehouse

MODEL = parse_model({"attributes": {"first_name": "string", "points": "integer", "last_order_at": "timestamp",
                                    "vip": "boolean", "city": "string", "tier": "string"}})
SOURCES = ["first_name", "points", "last_order_at", "vip", "city", "tier"]
D1, D2 = "2026-11-01", "2026-11-02"


def _profiles(wh: Warehouse, day: str, n: int, changed_every: int | None) -> None:
    schema = wh.schema("profiles")
    bump = f"+ CASE WHEN i % {changed_every} = 0 THEN 1 ELSE 0 END" if changed_every else ""
    given = {"email": "'u' || i || '@shop.com'", "identity_id": "substr(md5('u' || i), 1, 16)",
             "first_name": "'Name' || (i % 1000)", "points": f"(i % 500) {bump}",
             "last_order_at": "TIMESTAMP '2026-10-01' + to_seconds(i % 86400)", "vip": "i % 7 = 0",
             "city": "'City' || (i % 50)", "tier": "'T' || (i % 3)"}
    cols = ", ".join(f"{given[c]} AS \"{c}\"" if c in given else f"NULL::{t} AS \"{c}\"" for c, t in schema.items())
    con = duckdb.connect()
    try:
        wh.write_partition(con, "profiles", day, f"SELECT {cols} FROM range({n}) t(i)")
        wh.write_partition(con, "memberships", day,
                           f"SELECT 'loyal' AS segment_id, substr(md5('u' || i), 1, 16) AS identity_id, "
                           f"'u' || i || '@shop.com' AS email FROM range({n}) t(i)")
    finally:
        con.close()


def _plan(store: StateStore, wh: Warehouse, day: str, target: Target, plan: Path, fp: FieldPlan | None):
    sql, params = desired_sql(wh, day, {"loyal": "Loyal Customers"})
    started = time.perf_counter()
    counts = write_plan(store, target, sql, params, plan, track_membership=True, removes=True, fields=fp)
    return time.perf_counter() - started, counts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profiles", type=int, default=1_000_000)
    ap.add_argument("--fields", type=int, default=4, choices=range(1, len(SOURCES) + 1))
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    doc = {"klaviyo": {"mappings": [{"from": s, "to": s} for s in SOURCES[:args.fields]]}}
    maps = parse_mappings(doc, MODEL).of("klaviyo")
    results: dict[str, list[float]] = {"no mappings, 1% change": [], "first plan with mappings": [],
                                       "mappings, 1% change": []}
    for rep in range(args.repeat):
        with tempfile.TemporaryDirectory() as tmp:
            wh = Warehouse(Path(tmp) / "wh", model=MODEL)
            _profiles(wh, D1, args.profiles, None)
            _profiles(wh, D2, args.profiles, 100)
            target = Target.of("klaviyo", "https://a.klaviyo.com", ("list", "L"), ("property", "nosto_segment"))
            with StateStore(Path(tmp) / "state") as store:
                fp = FieldPlan(maps, "klaviyo", wh.scan("profiles", days=[D1]), target.field_holder())
                t_first, c_first = _plan(store, wh, D1, target, Path(tmp) / "p1.parquet", fp)
                # confirm everything as a run would (segments + members + field values)
                con = duckdb.connect()
                table = con.execute(f"SELECT email, segments, member, fields FROM read_parquet('{tmp}/p1.parquet') "
                                    "WHERE action = 'upsert'").to_arrow_table()
                con.close()
                store.confirm_table(target, table, True)
                store.confirm_values(target, table)
                t_plain, c_plain = _plan(store, wh, D2, target, Path(tmp) / "p0.parquet", None)
                fp2 = FieldPlan(maps, "klaviyo", wh.scan("profiles", days=[D2]), target.field_holder())
                t_change, c_change = _plan(store, wh, D2, target, Path(tmp) / "p2.parquet", fp2)
        results["first plan with mappings"].append(t_first)
        results["no mappings, 1% change"].append(t_plain)
        results["mappings, 1% change"].append(t_change)
        print(f"run {rep + 1}: first plan {t_first:.2f}s ({c_first.upserts:,} upserts); "
              f"no mappings 1% day {t_plain:.2f}s ({c_plain.upserts:,} upserts); "
              f"{args.fields} mappings 1% day {t_change:.2f}s ({c_change.upserts:,} upserts)")
    for name, xs in results.items():
        print(f"median {name}: {statistics.median(xs):.2f}s (min {min(xs):.2f}s)")


if __name__ == "__main__":
    main()
