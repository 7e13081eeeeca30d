"""Benchmark the ESP syncs against the fakes: a first full sync and a ~1% daily change sync.

    python benchmarks/bench_sync.py --profiles 1000000 [--integration klaviyo|dotdigital|both]

The fake runs in its own process (so it does not share our GIL) with realistic limits:

* Klaviyo: the documented per-endpoint limits, unscaled (bulk import 10/s burst + 150/min steady,
  job polls and list add/remove the same, profile lookups 75/s + 750/min); jobs complete after
  0.5 s + 20 us per profile; full request validation against the specs (per item shape).
* dotdigital: import creation limited per minute with the window SCALED DOWN 10x (20 imports per
  6 s instead of per 60 s, to keep the run short), other calls 300 per 6 s; at most 3 active
  imports; an import completes after 10 us per contact.

Printed per run: records changed, records sent, sent/changed, requests, retries, 429s, seconds,
achieved records/s, and the rate-limit ceiling for the bottleneck request family: the fastest
schedule the limits allow for the number of record-carrying requests the run needed (the k-th
request cannot start before ``t[k-n] + window`` for every ``(n, window)`` limit). The ratio
achieved/ceiling is reported when that schedule lasts at least 2 s; shorter runs are latency-bound
(job processing + polling), not rate-bound, and are marked n/a.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import duckdb  # noqa: E402

from segment_pipeline.core.esp.dotdigital import DotdigitalClient  # noqa: E402
from segment_pipeline.core.esp.klaviyo import KlaviyoClient  # noqa: E402
from segment_pipeline.core.sync.desired import desired_sql  # noqa: E402
from segment_pipeline.core.sync.runner import (  # noqa: E402
    DotdigitalSettings,
    KlaviyoSettings,
    sync_dotdigital,
    sync_klaviyo,
)
from segment_pipeline.core.warehouse import Warehouse  # noqa: E402

SEGMENTS = {f"s{i}": f"Segment {i}" for i in range(8)}
DD_SCALE = 0.1  # dotdigital per-minute windows scaled to 6 s
DD_LIMITS = {"import": [(20, 60.0 * DD_SCALE)], "default": [(300, 60.0 * DD_SCALE)]}
KLAVIYO_BULK = [(10, 1.0), (150, 60.0)]


def _serve(kind: str, conn) -> None:
    sys.path.insert(0, str(ROOT))
    if kind == "klaviyo":
        from segment_pipeline_tests.fakes.klaviyo import FakeKlaviyo

        fake = FakeKlaviyo(advance_on_poll=False, queue_seconds=0.5, seconds_per_profile=20e-6)
    else:
        from segment_pipeline_tests.fakes.dotdigital import FakeDotdigital

        fake = FakeDotdigital(limits=DD_LIMITS, max_active_imports=3, advance_on_poll=False, seconds_per_contact=10e-6)
    fake.start()
    conn.send(fake.url)
    conn.recv()  # wait for "stop"
    conn.send({"requests": fake.count(), "throttled": fake.count(status=429), "violations": len(fake.spec_violations)})
    fake.stop()


def write_days(wh: Warehouse, n: int) -> None:
    """Day 1: n identities in 1-3 of 8 segments. Day 2: ~1% of identities changed (moved, left, new)."""
    con = duckdb.connect()
    base = f"""SELECT i, 'user' || i || '@example.com' AS email FROM range({n}) t(i)"""
    day1 = f"""
        SELECT 's' || ((i + k * 3) % 8) AS segment_id, substr(md5(email), 1, 16) AS identity_id, email
        FROM ({base}) b, range(3) r(k) WHERE k <= i % 3"""
    wh.write_partition(con, "memberships", "2026-11-01", day1)
    # 0.4% move to another segment set, 0.3% leave everything, 0.3% new identities
    day2 = f"""
        SELECT CASE WHEN i % 250 = 7 THEN 's' || ((i + k * 3 + 1) % 8) ELSE segment_id END AS segment_id,
               identity_id, email
        FROM ({day1.replace('SELECT ', 'SELECT i, k, ', 1)}) d
        WHERE i % 1000 NOT IN (11, 12, 13)
        UNION ALL
        SELECT 's1', substr(md5('new' || i || '@example.com'), 1, 16), 'new' || i || '@example.com'
        FROM range({max(1, n * 3 // 1000)}) t(i)"""
    wh.write_partition(con, "memberships", "2026-11-02", day2)
    con.close()


def changed(wh: Warehouse) -> int:
    con = duckdb.connect()
    s1, p1 = desired_sql(wh, "2026-11-01", SEGMENTS)
    s2, p2 = desired_sql(wh, "2026-11-02", SEGMENTS)
    n = con.execute(f"""SELECT count(*) FROM ({s1}) a FULL OUTER JOIN ({s2}) b ON a.email = b.email
                        WHERE a.segments IS DISTINCT FROM b.segments""", p1 + p2).fetchone()[0]
    con.close()
    return n


def min_schedule_seconds(requests: int, limits: list[tuple[int, float]]) -> float:
    t: list[float] = []
    for k in range(requests):
        t.append(max([0.0] + [t[k - lim] + w for lim, w in limits if k >= lim]))
    return t[-1] if t else 0.0


def bench(kind: str, n: int, tmp: Path) -> None:
    wh = Warehouse(tmp / "warehouse")
    t0 = time.monotonic()
    write_days(wh, n)
    n_changed = changed(wh)
    print(f"\n== {kind}: {n:,} identities (fixtures in {time.monotonic() - t0:.1f}s), day-2 changes: {n_changed:,}")
    parent, child = mp.Pipe()
    proc = mp.get_context("spawn").Process(target=_serve, args=(kind, child), daemon=True)
    proc.start()
    url = parent.recv()
    state = tmp / f"state-{kind}"
    for day, label, expected in (("2026-11-01", "first sync", None), ("2026-11-02", "1% change", n_changed)):
        if kind == "klaviyo":
            client = KlaviyoClient("pk_test_fake", base_url=url, pool_size=24, poll_initial=1.0, poll_max=2.0)
            settings = KlaviyoSettings(max_in_flight=16)
            report = sync_klaviyo(wh, day, SEGMENTS, state_dir=state, dry_run_root=tmp / "dry", client=client,
                                  settings=settings)
            per_req, limits, family = settings.max_profiles_per_job, KLAVIYO_BULK, "bulk_import_profiles"
        else:
            client = DotdigitalClient("apiuser-fake@apiconnector.com", "fake-password", base_url=url,
                                      limits=DD_LIMITS, poll_initial=0.3, poll_max=1.0)
            settings = DotdigitalSettings(contacts_per_import=20_000, max_in_flight=3)
            report = sync_dotdigital(wh, day, SEGMENTS, state_dir=state, dry_run_root=tmp / "dry", client=client,
                                     settings=settings)
            per_req, limits, family = settings.contacts_per_import, DD_LIMITS["import"], "import"
        client.close()
        sent = report.records_sent
        carrying = client.stats.by_family.get(family, 0)
        achieved = sent / report.seconds if report.seconds else 0.0
        floor = min_schedule_seconds(carrying, limits)
        line = (f"{label:>10}: changed={expected if expected is not None else report.desired:,} sent={sent:,} "
                f"removed={report.removed:,} requests={report.requests:,} ({family}={carrying}) "
                f"retries={report.retries} 429s={report.throttled} seconds={report.seconds:.2f} "
                f"achieved={achieved:,.0f} rec/s")
        if floor >= 2.0:
            ceiling = sent / floor
            line += f" ceiling={ceiling:,.0f} rec/s ({carrying} x {per_req:,} per request in >= {floor:.1f}s) " \
                    f"ratio={achieved / ceiling:.0%}"
        else:
            line += f" ceiling: n/a (rate schedule {floor:.1f}s, latency-bound)"
        if expected:
            line += f" sent/changed={sent / expected:.3f}x"
        print(line, flush=True)
    parent.send("stop")
    print(f"   fake: {parent.recv()}")
    proc.join(5)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profiles", type=int, default=1_000_000)
    ap.add_argument("--integration", choices=["klaviyo", "dotdigital", "both"], default="both")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-sync-"))
    try:
        for kind in (["klaviyo", "dotdigital"] if args.integration == "both" else [args.integration]):
            bench(kind, args.profiles, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
