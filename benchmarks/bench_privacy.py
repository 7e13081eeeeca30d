"""Benchmark the privacy filter: what a suppression list costs a destination's desired state.

    python benchmarks/bench_privacy.py [--rows 2000000] [--listed 10000] [--workdir DIR]

Setup: one memberships partition of ``--rows`` rows (5 segments, two memberships per email, so
``--rows / 2`` emails), generated with DuckDB; a plain CSV suppression list of ``--listed``
addresses, half of them members. Figures: the list's load (normalize, validate, hash, publish),
and the desired-state query (``core/sync/desired.py``, the same one every destination runs) without
any list and with the list in force (second of two runs each).
"""

from __future__ import annotations

import argparse
import datetime as dt
import shutil
import tempfile
import time
from pathlib import Path

from segment_pipeline.core.privacy.config import parse_privacy
from segment_pipeline.core.privacy.suppression import load_suppression
from segment_pipeline.core.sync.desired import desired_sql
from segment_pipeline.core.warehouse import Warehouse, connect, sql_string

DAY = dt.date(2026, 11, 3)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=2_000_000)
    ap.add_argument("--listed", type=int, default=10_000)
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench_privacy_"))
    try:
        wh = Warehouse(work / "warehouse")
        con = connect()
        wh.write_partition(con, "memberships", DAY,
                           f"SELECT 'seg' || (i % 5) AS segment_id, substr(md5('u' || (i // 2)), 1, 16) AS identity_id, "
                           f"'u' || (i // 2) || '@example.com' AS email FROM range({args.rows}) t(i)")
        synced = {f"seg{i}": f"Segment {i}" for i in range(5)}

        def desired() -> tuple[float, int]:
            sql, params = desired_sql(wh, DAY, synced, destination="klaviyo")
            best = None
            for _ in range(2):
                t = time.perf_counter()
                n = con.execute(f"SELECT count(*) FROM ({sql})", params).fetchall()[0][0]
                best = (time.perf_counter() - t, n)
            return best

        base = desired()
        (work / "cfg").mkdir()
        step = max(1, args.rows // args.listed)  # every step-th email exists, so about half are members
        con.execute(f"COPY (SELECT 'u' || (i * {step}) || '@example.com' AS email FROM range({args.listed}) t(i)) "
                    f"TO {sql_string(str(work / 'cfg' / 'list.csv'))} (HEADER)")
        config = parse_privacy({"suppression": [{"name": "list", "path": "list.csv"}]}, "bench", work / "cfg")
        t = time.perf_counter()
        load = load_suppression(con, wh, config, work, DAY)
        load_s = time.perf_counter() - t
        filtered = desired()
        print(f"memberships rows:            {args.rows:,} ({base[1]:,} emails)")
        print(f"suppression list load:       {load_s:.2f} s ({load.hashes:,} hashes)")
        print(f"desired state, no list:      {base[0]:.2f} s")
        print(f"desired state, list applied: {filtered[0]:.2f} s ({base[1] - filtered[1]:,} emails held back)")
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
