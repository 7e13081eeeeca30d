"""Benchmark: profiles from the declared model (core/profiles.py + core/traits.py) against main's
former hard-coded profiles SQL (frozen in segment_pipeline_tests/core/test_traits.py), same data.

    python benchmarks/bench_profiles.py [--identities 500000] [--events-per-day 600000] [--repeat 3]

Generates raw_profiles/raw_events partitions for five landing days in the apparel model's schema
(the generator of the equivalence test, scaled up; not timed), then builds the last day's
profiles partition both ways through ``Warehouse.write_partition`` (same sort, casts and Parquet
writing), alternating, and prints the wall and CPU time of each run, the medians and their ratios
(CPU time is the steadier figure on a shared machine). The
two partitions are also compared (they must be equal row for row, shares under their new names).
"""

from __future__ import annotations

import argparse
import resource
import statistics
import tempfile
import time
from pathlib import Path


def cpu_seconds() -> float:
    """User + system CPU time of this process (DuckDB's threads included): steadier than wall time
    on a machine other work shares."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    from segment_pipeline.core.model import load_model
    from segment_pipeline.core.profiles import build_profiles
    from segment_pipeline.core.warehouse import Warehouse, connect
    from segment_pipeline_tests.core.test_traits import LANDING_DAYS, _generate, reference_sql

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--identities", type=int, default=500_000)
    parser.add_argument("--events-per-day", type=int, default=600_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--model", default="data/model.yaml")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench_profiles") as tmp:
        wh = Warehouse(Path(tmp) / "wh", load_model(args.model))
        con = connect()
        con.execute("SET TimeZone = 'UTC'")
        t = time.perf_counter()
        _generate(wh, con, n=args.identities, m=args.events_per_day)
        print(f"generated {args.identities:,} identities, {args.events_per_day * len(LANDING_DAYS):,} events "
              f"over {len(LANDING_DAYS)} landing days in {time.perf_counter() - t:.1f}s (not timed)", flush=True)
        day = LANDING_DAYS[-1]
        ref = Warehouse(Path(tmp) / "ref", wh.model)
        for table in ("raw_profiles", "raw_events"):
            (ref.root / table).parent.mkdir(parents=True, exist_ok=True)
            (ref.root / table).symlink_to(wh.root / table)
        renamed = {"top_brand_share_90d": "top_brand_90d_share", "top_category_share_90d": "top_category_90d_share"}
        sql, params = reference_sql(wh, day)
        cols = {renamed.get(c, c) for c in (r[0] for r in con.execute(f"DESCRIBE {sql}", params).fetchall())}
        fill = ", ".join(
            f"NULL::{t} AS {c}" for c, t in wh.schema("profiles").items() if c not in cols
        )
        ref_sql = f"SELECT * RENAME (top_brand_share_90d AS top_brand_90d_share, " \
                  f"top_category_share_90d AS top_category_90d_share), {fill} FROM ({sql})"
        times: dict[str, list[float]] = {"model": [], "main": []}
        cpu: dict[str, list[float]] = {"model": [], "main": []}
        for _ in range(args.repeat):
            for name, build in (("model", lambda: build_profiles(con, wh, day)),
                                ("main", lambda: ref.write_partition(con, "profiles", day, ref_sql, params))):
                t, c = time.perf_counter(), cpu_seconds()
                build()
                times[name].append(time.perf_counter() - t)
                cpu[name].append(cpu_seconds() - c)
            print(f"model {times['model'][-1]:6.2f}s wall {cpu['model'][-1]:6.2f}s cpu   "
                  f"main's SQL {times['main'][-1]:6.2f}s wall {cpu['main'][-1]:6.2f}s cpu", flush=True)
        common = ", ".join(sorted(cols))
        new, old = wh.scan("profiles", days=[day]), ref.scan("profiles", days=[day])
        diff = con.execute(f"SELECT count(*) FROM ((SELECT {common} FROM {new} EXCEPT ALL SELECT {common} FROM {old}) "
                           f"UNION ALL (SELECT {common} FROM {old} EXCEPT ALL SELECT {common} FROM {new}))").fetchall()[0][0]
        m, r = statistics.median(times["model"]), statistics.median(times["main"])
        mc, rc = statistics.median(cpu["model"]), statistics.median(cpu["main"])
        print(f"median wall: model {m:.2f}s, main's SQL {r:.2f}s, ratio {m / r:.2f}x; "
              f"median cpu: model {mc:.2f}s, main's SQL {rc:.2f}s, ratio {mc / rc:.2f}x; rows differing: {diff}")


if __name__ == "__main__":
    main()
