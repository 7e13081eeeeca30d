"""Benchmark ``forget``: remove F identities out of N from D days of warehouse history and exports.

    python benchmarks/bench_forget.py [--identities 1000000] [--days 30] [--forget 10000] [--workdir DIR]

Setup (generated with DuckDB, once per size; ``customer.<i>@example.com``, the model's other
columns NULL): per day, ``raw_profiles`` (N/10 records), ``raw_events`` (N/2), ``quarantine_profiles``
(N/1000 rows whose raw text holds the address in upper case), ``identity_links`` (N/10),
``profiles`` (all N), ``memberships`` (5 segments, N/2 rows) and ``segment_stats``, and the daily
feed file of the day (N lines) with its ``latest`` pointer. The F identities are spread evenly
over the N, so every file holds some of them (the worst case: every file is rewritten).

Figures:

* ours: wall time of :func:`segment_pipeline.core.privacy.forget.forget` (request recording,
  scrub of every file, ledger), files scanned and rewritten, rows removed, bytes rewritten;
* floor, measured in the same run on the same files: a plain rewrite of every file ours rewrote,
  with no search at all (Parquet: ``COPY (SELECT *) TO`` with the same settings; text: a byte copy),
  i.e. what any approach that rewrites those files must at least spend.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

START = dt.date(2026, 10, 1)
SEGMENTS = [("loyal", "Loyal customers", 3), ("nike", "Nike fans", 5), ("de", "geo-area Germany", 7),
            ("first", "First Time Buyer", 11), ("ig", "UTM-tag Instagram", 13)]


def generate(workdir: Path, n: int, days: int) -> None:
    from segment_pipeline.core.exports.daily_feed import write_daily_feed
    from segment_pipeline.core.exports.storage import LocalExportStorage
    from segment_pipeline.core.warehouse import Warehouse, connect

    marker = workdir / f"generated-{n}-{days}"
    if marker.exists():
        return
    shutil.rmtree(workdir, ignore_errors=True)
    wh = Warehouse(workdir / "warehouse")
    storage = LocalExportStorage(workdir / "exports")
    con = connect(memory_limit="2GB")
    email = "'customer.' || i || '@example.com'"
    ident = f"substr(md5({email}), 1, 16)"

    def select(table: str, given: dict[str, str], source: str) -> str:
        cols = ", ".join(f"{given.get(c, f'NULL::{t}')} AS \"{c}\"" for c, t in wh.schema(table).items())
        return f"SELECT {cols} FROM {source}"

    for d in range(days):
        day = START + dt.timedelta(days=d)
        ts = f"TIMESTAMP '{day.isoformat()} 12:00:00'"
        part = f"range({n}) t(i) WHERE i % 10 = {d % 10}"
        wh.write_partition(con, "raw_profiles", day, select("raw_profiles", {
            "email": email, "customer_id": "'C' || i", "first_name": "'First'", "updated_at": ts,
            "source": "'profiles'", "source_file": f"'profiles/date={day}/p.ndjson'", "source_line": "i"}, part))
        wh.write_partition(con, "raw_events", day, select("raw_events", {
            "email": email, "event_id": f"'ev-{d}-' || i", "event": "'product_view'", "occurred_at": ts,
            "source": "'events'", "source_file": f"'events/date={day}/e.ndjson'", "source_line": "i"},
            f"range({n}) t(i) WHERE i % 2 = {d % 2}"))
        wh.write_partition(con, "quarantine_profiles", day, select("quarantine_profiles", {
            "source_file": f"'profiles/date={day}/p.ndjson'", "source_line": "i", "reason": "'dob: not a date'",
            "raw": "'{\"email\": \"' || upper(" + email + ") || '\", \"dob\": \"1990-13-45\"}'"},
            f"range({n}) t(i) WHERE i % 1000 = {d % 1000}"))
        wh.write_partition(con, "identity_links", day, select("identity_links", {
            "link": "'customer_id'", "value": "'C' || i", "email": email, "linked_at": ts, "linked_on": f"DATE '{day}'",
            "source_file": f"'profiles/date={day}/p.ndjson'", "source_line": "i"}, part))
        wh.write_partition(con, "profiles", day, select("profiles", {
            "identity_id": ident, "email": email, "random_bucket": "i % 10000"}, f"range({n}) t(i)"))
        wh.write_partition(con, "memberships", day, " UNION ALL ".join(
            f"SELECT '{sid}' AS segment_id, {ident} AS identity_id, {email} AS email FROM range({n}) t(i) WHERE i % {m} = 0"
            for sid, _, m in SEGMENTS))
        wh.write_partition(con, "segment_stats", day, " UNION ALL ".join(
            f"SELECT '{sid}' AS segment_id, '{name}' AS segment_name, 'dynamic' AS segment_type, 'refreshed' AS status, "
            f"NULL::DATE AS frozen_on, {n // m} AS member_count, 0 AS added, 0 AS removed" for sid, name, m in SEGMENTS))
        write_daily_feed(con, wh, storage, day)
        print(f"  generated {day}", flush=True)
    con.close()
    marker.touch()


def tree_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def floor(paths: list[Path]) -> float:
    """Rewrite each file with no search: Parquet through DuckDB with the warehouse's settings, others copied."""
    from segment_pipeline.core.warehouse import ROW_GROUP_SIZE, connect, sql_string

    con = connect(preserve_order=True)
    scratch = Path(tempfile.mkdtemp(prefix="bench_forget_floor-"))
    start = time.perf_counter()
    for n, path in enumerate(paths):
        target = scratch / f"{n}{path.suffix}"
        if path.suffix == ".parquet":
            con.execute(f"COPY (SELECT * FROM read_parquet({sql_string(str(path))}, hive_partitioning = false)) TO "
                        f"{sql_string(str(target))} (FORMAT parquet, COMPRESSION zstd, ROW_GROUP_SIZE {ROW_GROUP_SIZE})")
        else:
            shutil.copyfile(path, target)
        os.replace(target, scratch / f"{n}.done{path.suffix}")
    elapsed = time.perf_counter() - start
    shutil.rmtree(scratch, ignore_errors=True)
    con.close()
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--identities", type=int, default=1_000_000)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--forget", type=int, default=10_000, help="identities to forget")
    parser.add_argument("--workdir", default=str(Path(tempfile.gettempdir()) / "bench_forget"))
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    os.environ.setdefault("SEGMENT_PIPELINE_MODEL", str(Path(__file__).resolve().parent.parent / "data" / "model.yaml"))
    from segment_pipeline.core.exports.storage import LocalExportStorage
    from segment_pipeline.core.privacy.forget import forget

    n, days, f = args.identities, args.days, args.forget
    base = Path(args.workdir)
    print(f"generating {n} identities x {days} days in {base} (once per size) ...", flush=True)
    generate(base / "source", n, days)
    run = base / "run"  # a fresh copy: the generated data stays reusable
    shutil.rmtree(run, ignore_errors=True)
    shutil.copytree(base / "source", run)
    wh_root, exports = run / "warehouse", run / "exports"
    size = tree_bytes(wh_root) + tree_bytes(exports)
    step = max(1, n // f)
    emails = [f"customer.{i}@example.com" for i in range(0, n, step)][:f]

    start = time.perf_counter()
    result = forget(wh_root, LocalExportStorage(exports), emails, "cli", index_dirs=[])
    ours = time.perf_counter() - start
    changed = result.report.changed  # warehouse files by absolute path, export files by key
    rewritten = [Path(p) for p in changed if Path(p).is_absolute() and Path(p).is_file()]
    rewritten += [exports / k for k in changed if not Path(k).is_absolute() and (exports / k).is_file()]
    floor_s = floor(rewritten)
    r = result.report
    print(f"\nforget {len(emails)} of {n} identities, {days} days "
          f"({size / 1e6:.1f} MB under the warehouse and export roots):")
    print(f"  ours : {ours:8.2f} s  files scanned {r.files_scanned}, rewritten {r.files_rewritten}, "
          f"rows/lines removed {r.rows_removed}, bytes rewritten {r.bytes_rewritten / 1e6:.1f} MB")
    print(f"  floor: {floor_s:8.2f} s  plain rewrite of the same {len(rewritten)} files, no search")
    print(f"  ratio ours/floor: {ours / floor_s:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
