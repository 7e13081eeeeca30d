"""Benchmark the destination side of forgetting (issue 15): the sync mirror scrub, and one pass.

    python benchmarks/bench_erasure.py [--mirror-rows 1000000] [--erase 10000] [--pass-requests 200]

1. Mirror scrub (:func:`segment_pipeline.core.privacy.erasure.scrub_mirror`): a sync mirror with
   ``--mirror-rows`` profiles in ``held`` and as many list ``members`` (what a Klaviyo sync of that
   many contacts leaves), of which ``--erase`` addresses (spread evenly) are removed by hash and
   the file rewritten fresh. Prints the time, rows removed and the file sizes before and after.
2. One pass (:func:`segment_pipeline.core.privacy.erasure.propagate`) of ``--pass-requests``
   deletion requests to the dotdigital fake (in this process, loopback HTTP: lookup, delete,
   lookup per address), ledger marks and settling included, the client's pacing lifted. Prints
   the time per address. The vendors' own rate limits (dotdigital's default tier: 300 calls a
   minute, three calls per address), not this, bound a real pass (docs/syncs.md, "Deletion requests").
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from segment_pipeline.core.privacy.erasure import propagate, scrub_mirror  # noqa: E402
from segment_pipeline.core.privacy.ledger import Ledger  # noqa: E402
from segment_pipeline.core.sync.destinations.dotdigital import DotdigitalDestination, DotdigitalSettings  # noqa: E402
from segment_pipeline.core.sync.state import StateStore  # noqa: E402


def bench_mirror(work: Path, rows: int, erase: int) -> None:
    state = work / "sync_state" / "klaviyo"
    with StateStore(state) as s:
        s.con.execute(f"""INSERT INTO held SELECT 'klaviyo|u|property=nosto_segment', 'customer.' || i || '@example.com',
                          '["Loyal Customers","VIP"]', now()::TIMESTAMP FROM range({rows}) t(i)""")
        s.con.execute(f"""INSERT INTO members SELECT 'klaviyo|u|list=L', 'customer.' || i || '@example.com',
                          now()::TIMESTAMP FROM range({rows}) t(i)""")
    before = (state / "state.duckdb").stat().st_size
    step = max(1, rows // max(1, erase))
    hashes = {hashlib.sha256(f"customer.{i}@example.com".encode()).hexdigest() for i in range(0, rows, step)}
    t = time.monotonic()
    r = scrub_mirror(state, hashes)
    took = time.monotonic() - t
    after = (state / "state.duckdb").stat().st_size
    print(f"mirror scrub: {rows:,} held + {rows:,} members rows ({before / 1e6:.1f} MB), {len(hashes):,} addresses "
          f"erased: {r.rows_removed:,} rows removed, file rewritten fresh ({after / 1e6:.1f} MB) in {took:.1f} s")


def bench_pass(work: Path, n: int) -> None:
    from segment_pipeline_tests.fakes.dotdigital import FakeDotdigital
    from segment_pipeline_tests.fakes.helpers import dotdigital_client

    root = work / "warehouse"
    with FakeDotdigital(limits={"default": [(1_000_000, 60.0)]}) as fake:
        for i in range(n):
            fake.seed_contact(f"p{i}@example.com")
        ledger = Ledger(root)
        reqs = ledger.request([f"p{i}@example.com" for i in range(n)], "cli")
        ledger.warehouse_done_many([r.request_id for r in reqs])
        # the client's pacing lifted too (it keeps dotdigital's conservative 300 calls/min otherwise):
        # what is measured is our overhead, HTTP round trips and the ledger
        client = dotdigital_client(fake.url, limits={"default": [(1_000_000, 60.0)]})
        t = time.monotonic()
        report = propagate(root, {"dotdigital": DotdigitalDestination(client, DotdigitalSettings())})
        took = time.monotonic() - t
        client.close()
    d = report.destinations["dotdigital"]
    print(f"one pass, {n} requests to the dotdigital fake: {d.confirmed} confirmed, {report.settled} settled, "
          f"{len(fake.deletion_calls)} DELETE calls, {took:.1f} s ({took / n * 1000:.0f} ms per address)")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mirror-rows", type=int, default=1_000_000)
    ap.add_argument("--erase", type=int, default=10_000)
    ap.add_argument("--pass-requests", type=int, default=200)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-erasure-") as tmp:
        bench_mirror(Path(tmp), args.mirror_rows, args.erase)
        bench_pass(Path(tmp), args.pass_requests)
    return 0


if __name__ == "__main__":
    sys.exit(main())
