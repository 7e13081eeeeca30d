"""Benchmark the ESP syncs against the fakes: a first full sync and a ~1% daily change sync.

    python benchmarks/bench_sync.py --profiles 1000000 [--integration klaviyo|dotdigital|braze|meta|both] [--repeat 3]
                                    [--window-scale 0.1] [--meta-calls 5000 --meta-window 3600]

The fake runs in its own process (a real HTTP server on loopback that does not share our GIL),
started fresh for every repetition, with realistic limits:

* Klaviyo: the documented per-endpoint limits, unscaled (bulk import 10/s burst + 150/min steady,
  job polls and list add/remove the same, profile lookups 75/s + 750/min); jobs complete
  0.5 s + 20 us per profile after they were created; every request is checked (auth, revision,
  5 MB / 10,000 profiles per job, consent keys in every profile). The spec check of the imported
  profiles' shapes covers a sample of about 200 per job (``--full-validation``: every profile).
* Meta: the ``custom_audience`` limit of the ad account, by default the documented development-tier
  floor (5,000 calls per hour; it never binds for 1M profiles, about 230 calls), or ``--meta-calls``
  per ``--meta-window`` seconds to make it bind; one audience per segment (8), 10,000 hashes per
  call, answered synchronously. "changed" counts (segment, email) adds and removes.
* dotdigital: per-minute limits (imports 20 per 60 s, other calls 300 per 60 s); at most 3 active
  imports; an import completes 10 us per contact after it was created. ``--dd-window-scale 0.1``
  shrinks the windows to 6 s for a 10x shorter run (the ceilings use the same scaling); that run
  is harsher than the real one, since imports and polls take as long as ever in a window 10x
  shorter.
* Braze: ``/users/track`` 3,000 requests per 3 s, 75 attributes objects per request, answered at
  once. ``--window-scale 10`` stretches the window to 30 s (100 requests/s): unscaled, 1,000
  requests/s is more than a Python client and fake sharing two cores can send and answer, so the
  limit would never bind.

The fake counts a request against its limits when the request's headers arrive, as an API
gateway does (before the body is read), and runs with a 1 ms GIL switch interval so that stamp
stays close to the arrival even while it parses other bodies.

Printed per run: records changed, records sent, sent/changed, requests (and per family), 429s,
wall seconds (plan = desired state + diff; send = the rest), CPU seconds of the client process
(all threads, DuckDB included) and of the fake process, achieved records/s, and:

``ceiling``    the rate-limit ceiling: records / the fastest schedule the documented limits allow
               for the record-carrying requests the run needed (the k-th request cannot start
               before ``t[k-n] + window`` for every ``(n, window)`` limit). The ratio is
               achieved / ceiling, over the whole run (plan included) and over the send phase.
``ideal``      the same schedule for a zero-overhead client that also waits for the server's
               processing of the last job/import and, for dotdigital, keeps at most 3 imports
               active (their processing time is the fake's configured one): what a perfect client
               could reach against this fake.
``pacing``     how close the client sends to the rate limit: the minimum schedule above / the
               span over which the fake actually admitted the record-carrying requests (first to
               last). Unlike the ratios it leaves out the fixed costs before the first request
               (plan) and after the last (the last job's processing and its poll), which a run of
               1M records to Klaviyo (a 9 s schedule) cannot amortize: a perfect client that
               confirms its jobs reaches at most 9.0 / 9.7 = 93% over the whole run.

Ratios are reported when the rate schedule lasts at least 2 s; shorter runs are latency-bound
(job processing + polling), not rate-bound, and are marked n/a.
"""

from __future__ import annotations

import argparse
import gc
import multiprocessing as mp
import os
import resource
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import duckdb  # noqa: E402

from segment_pipeline.core.esp.braze import BrazeClient  # noqa: E402
from segment_pipeline.core.esp.dotdigital import DotdigitalClient  # noqa: E402
from segment_pipeline.core.esp.klaviyo import KlaviyoClient  # noqa: E402
from segment_pipeline.core.esp.meta import DEFAULT_CALLS_PER_HOUR, MetaClient  # noqa: E402
from segment_pipeline.core.sync.desired import desired_sql  # noqa: E402
from segment_pipeline.core.sync.destinations.braze import BrazeSettings  # noqa: E402
from segment_pipeline.core.sync.destinations.meta import MetaSettings  # noqa: E402
from segment_pipeline.core.sync.runner import DotdigitalSettings, KlaviyoSettings, sync  # noqa: E402
from segment_pipeline.core.warehouse import Warehouse  # noqa: E402

SEGMENTS = {f"s{i}": f"Segment {i}" for i in range(8)}
BRAZE_KEY = "braze-test-rest-key"
DD_SCALE = 1.0  # dotdigital's per-minute windows as documented; --dd-window-scale 0.1 makes them 6 s


def dd_limits(scale: float) -> dict[str, list[tuple[int, float]]]:
    return {"import": [(20, 60.0 * scale)], "default": [(300, 60.0 * scale)]}
DD_ACTIVE_IMPORTS = 3
DD_SECONDS_PER_CONTACT = 10e-6
KLAVIYO_BULK = [(10, 1.0), (150, 60.0)]
KLAVIYO_QUEUE_SECONDS, KLAVIYO_SECONDS_PER_PROFILE = 0.5, 20e-6


def meta_limits() -> list[tuple[int, float]]:
    """Meta's ``custom_audience`` limit as benchmarked: ``--meta-calls`` per ``--meta-window`` seconds
    (default the documented development-tier floor, 5,000 per hour), passed to the fake's process
    through the environment."""
    return [(int(os.environ.get("BENCH_META_CALLS", DEFAULT_CALLS_PER_HOUR)),
             float(os.environ.get("BENCH_META_WINDOW", 3600.0)))]


def _meta_fake(_full_validation: bool, _scale: float) -> Any:
    from segment_pipeline_tests.fakes.meta import FakeMeta

    ((calls, window),) = meta_limits()
    return FakeMeta(calls_per_hour=calls, window=window)


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _klaviyo_fake(full_validation: bool, _scale: float) -> Any:
    from segment_pipeline_tests.fakes.klaviyo import FakeKlaviyo

    return FakeKlaviyo(advance_on_poll=False, queue_seconds=KLAVIYO_QUEUE_SECONDS,
                       seconds_per_profile=KLAVIYO_SECONDS_PER_PROFILE,
                       validate_sample=None if full_validation else 100)


def _dotdigital_fake(_full_validation: bool, scale: float) -> Any:
    from segment_pipeline_tests.fakes.dotdigital import FakeDotdigital

    return FakeDotdigital(limits=dd_limits(scale), max_active_imports=DD_ACTIVE_IMPORTS, advance_on_poll=False,
                          seconds_per_contact=DD_SECONDS_PER_CONTACT)


def _braze_fake(_full_validation: bool, scale: float) -> Any:
    from segment_pipeline_tests.fakes.braze import FakeBraze

    return FakeBraze(limits={"users_track": braze_limits(scale)}, record_objects=False)


def braze_limits(scale: float) -> list[tuple[int, float]]:
    return [(3_000, 3.0 * scale)]  # /users/track: 3,000 requests per 3 s; --window-scale 10 makes it 30 s


@dataclass(frozen=True)
class Profile:
    """How the benchmark drives one destination: its fake (built in the fake's process), client and
    settings, the endpoint family carrying the records with its documented windows, how long the
    fake takes to process a request of ``size`` records, and the jobs it runs at once."""

    fake: Callable[[bool, float], Any]  # (full_validation, window scale)
    client: Callable[[str, float], Any]  # (url, window scale)
    settings: Callable[[], Any]
    per_request: Callable[[Any], int]
    family: str
    limits: Callable[[float], list[tuple[int, float]]]
    duration: Callable[[int], float]
    concurrency: int | None
    scaled: bool  # --dd-window-scale applies


PROFILES: dict[str, Profile] = {
    "klaviyo": Profile(
        _klaviyo_fake,
        lambda url, _s: KlaviyoClient("pk_test_fake", base_url=url, pool_size=40, poll_initial=1.0, poll_max=2.0),
        lambda: KlaviyoSettings(max_in_flight=32), lambda s: s.max_profiles_per_job, "bulk_import_profiles",
        lambda _s: KLAVIYO_BULK, lambda size: KLAVIYO_QUEUE_SECONDS + KLAVIYO_SECONDS_PER_PROFILE * size, None, False),
    "dotdigital": Profile(
        _dotdigital_fake,
        lambda url, scale: DotdigitalClient("apiuser-fake@apiconnector.com", "fake-password", base_url=url,
                                            limits=dd_limits(scale), poll_initial=0.3, poll_max=1.0),
        lambda: DotdigitalSettings(contacts_per_import=20_000, max_active_imports=DD_ACTIVE_IMPORTS),
        lambda s: s.contacts_per_import, "import", lambda scale: dd_limits(scale)["import"],
        lambda size: DD_SECONDS_PER_CONTACT * size, DD_ACTIVE_IMPORTS, True),
    "braze": Profile(
        _braze_fake, lambda url, scale: BrazeClient(BRAZE_KEY, url, limits={"users_track": braze_limits(scale)}, pool_size=40),
        lambda: BrazeSettings(max_in_flight=32), lambda s: s.objects_per_request, "users_track", braze_limits,
        lambda _size: 0.0, None, True),
    "meta": Profile(
        _meta_fake, lambda url, _s: MetaClient("meta-test-token", "1234567890", base_url=url, pool_size=8,
                                               calls_per_hour=meta_limits()[0][0], window_seconds=meta_limits()[0][1]),
        lambda: MetaSettings(max_in_flight=4), lambda s: s.records_per_call, "custom_audience",
        lambda _s: meta_limits(), lambda _size: 0.0, None, False),
}


def _serve(kind: str, full_validation: bool, conn, dd_scale: float = DD_SCALE) -> None:
    sys.path.insert(0, str(ROOT))
    # The fake stamps a request "received" (what its rate limits count) once a handler thread has
    # read it; with CPython's default 5 ms GIL switch interval and a dozen busy threads that can
    # lag the arrival by tens of ms, where a real API gateway stamps on arrival. 1 ms keeps it close.
    sys.setswitchinterval(0.001)
    fake = PROFILES[kind].fake(full_validation, dd_scale)
    fake.freeze_heap = True  # this process runs nothing but the fake
    fake.start()
    conn.send(fake.url)
    while conn.recv() == "stats":
        with fake.lock:
            throttled: dict[str, int] = {}
            for r in fake.log:
                if r.status == 429 or (kind == "meta" and r.status == 400):  # Meta throttles with 400/80003
                    throttled[r.family] = throttled.get(r.family, 0) + 1
            carrying = [r.received_at for r in fake.log if r.family == PROFILES[kind].family and r.status < 300]
            conn.send({"requests": len(fake.log), "throttled": throttled, "violations": len(fake.spec_violations),
                       "consent_attempts": len(fake.consent_attempts), "cpu": _cpu(), "carrying_at": carrying,
                       "received": [(r.family, r.received_at, r.status) for r in fake.log]})
    fake.stop()
    gc.unfreeze()


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
                        WHERE a.segments IS DISTINCT FROM b.segments""", p1 + p2).fetchall()[0][0]
    con.close()
    return n


def changed_memberships(wh: Warehouse) -> int:
    """(segment, email) pairs added or removed between the two days, in the synced segments."""
    con = duckdb.connect()
    ids = ", ".join(f"'{k}'" for k in SEGMENTS)
    d1, d2 = (f"(SELECT DISTINCT segment_id, email FROM {wh.scan('memberships', days=[d])} WHERE segment_id IN ({ids}))"
              for d in ("2026-11-01", "2026-11-02"))
    n = con.execute(f"SELECT (SELECT count(*) FROM ({d1} EXCEPT {d2})) + (SELECT count(*) FROM ({d2} EXCEPT {d1}))"
                    ).fetchall()[0][0]
    con.close()
    return n


def min_schedule_seconds(requests: int, limits: list[tuple[int, float]]) -> float:
    """Start time of the last of ``requests`` requests under sliding-window ``limits`` (all sent ASAP)."""
    t: list[float] = []
    for k in range(requests):
        t.append(max([0.0] + [t[k - lim] + w for lim, w in limits if k >= lim]))
    return t[-1] if t else 0.0


def ideal_seconds(sizes: list[int], limits: list[tuple[int, float]], duration, concurrency: int | None) -> float:
    """End of the last job for a zero-overhead client: rate windows, server processing, concurrency."""
    starts: list[float] = []
    ends: list[float] = []
    for k, size in enumerate(sizes):
        t = max([0.0] + [starts[k - lim] + w for lim, w in limits if k >= lim])
        if concurrency and k >= concurrency:
            t = max(t, sorted(ends)[k - concurrency])
        starts.append(t)
        ends.append(t + duration(size))
    return max(ends) if ends else 0.0


def _sizes(n: int, per_request: int) -> list[int]:
    return [min(per_request, n - i) for i in range(0, n, per_request)]


def run_once(kind: str, wh: Warehouse, tmp: Path, n_changed: int, full_validation: bool, quiet: bool,
             verbose: bool = False, dd_scale: float = DD_SCALE) -> list[dict]:
    parent, child = mp.Pipe()
    proc = mp.get_context("spawn").Process(target=_serve, args=(kind, full_validation, child, dd_scale),
                                           daemon=True)
    proc.start()
    url = parent.recv()
    state = Path(tempfile.mkdtemp(prefix=f"state-{kind}-", dir=tmp))
    results = []
    for day, label, expected in (("2026-11-01", "first sync", None), ("2026-11-02", "1% change", n_changed)):
        marks: dict[str, float] = {}

        def log(msg: str, marks: dict[str, float] = marks) -> None:
            if "desired; plan:" in msg:
                marks.setdefault("planned", time.monotonic())

        parent.send("stats")
        fake0 = parent.recv()
        cpu0, t0 = _cpu(), time.monotonic()
        prof = PROFILES[kind]
        client, settings = prof.client(url, dd_scale), prof.settings()
        report = sync(kind, wh, day, SEGMENTS, state_dir=state, dry_run_root=tmp / "dry", client=client,
                      settings=settings, log=log)
        per_req, limits, family = prof.per_request(settings), prof.limits(dd_scale), prof.family
        duration, concurrency = prof.duration, prof.concurrency
        wall, cpu = time.monotonic() - t0, _cpu() - cpu0
        client.close()
        parent.send("stats")
        fake1 = parent.recv()
        sent = report.records_sent + (report.removed if kind == "meta" else 0)  # Meta: removals carry records
        plan_s = marks.get("planned", t0) - t0
        needed = len(_sizes(report.upserted + report.rejected, per_req)) + len(_sizes(report.cleared, per_req))
        if kind == "meta":  # every call (audience lookups, one partial batch per audience) counts against the limit
            needed = sum(1 for f, _a, st in fake1["received"][len(fake0["received"]):] if f == family and st < 300)
        floor = min_schedule_seconds(needed, limits)
        ideal = ideal_seconds(_sizes(report.upserted + report.rejected, per_req) + _sizes(report.cleared, per_req),
                              limits, duration, concurrency) if kind != "meta" else floor  # Meta answers at once
        throttled = {k: v - fake0["throttled"].get(k, 0) for k, v in fake1["throttled"].items()
                     if v - fake0["throttled"].get(k, 0)}
        res = dict(label=label, changed=expected if expected is not None else report.desired, sent=sent,
                   removed=report.removed, requests=report.requests, family=family,
                   carrying=client.stats.by_family.get(family, 0), needed=needed, retries=report.retries,
                   throttled=throttled, seconds=report.seconds, wall=wall, plan=plan_s, cpu=cpu,
                   fake_cpu=fake1["cpu"] - fake0["cpu"], floor=floor, ideal=ideal, per_req=per_req,
                   violations=fake1["violations"], consent=fake1["consent_attempts"],
                   by_family=dict(client.stats.by_family),
                   received=fake1["received"][len(fake0["received"]):])
        admitted = [a for f, a, st in res["received"] if f == family and st < 300]
        res["span"] = max(admitted) - min(admitted) if len(admitted) > 1 else 0.0
        results.append(res)
        if not quiet:
            print(_line(res), flush=True)
        if verbose:
            at = fake1["carrying_at"][len(fake0["carrying_at"]):]
            print(f"{'':>12}accepted {family} requests at (s after the first): "
                  + " ".join(f"{x - at[0]:.2f}" for x in at), flush=True)
    parent.send("stop")
    proc.join(10)
    return results


def _line(r: dict) -> str:
    achieved = r["sent"] / r["seconds"] if r["seconds"] else 0.0
    send_s = r["seconds"] - r["plan"]
    line = (f"{r['label']:>10}: changed={r['changed']:,} sent={r['sent']:,} removed={r['removed']:,} "
            f"requests={r['requests']:,} ({r['family']}={r['carrying']}, needed {r['needed']}) "
            f"429s={sum(r['throttled'].values())}{r['throttled'] or ''} retries={r['retries']} "
            f"wall={r['seconds']:.2f}s (plan {r['plan']:.2f}s + send {send_s:.2f}s) "
            f"cpu client={r['cpu']:.2f}s fake={r['fake_cpu']:.2f}s achieved={achieved:,.0f} rec/s")
    if r["floor"] >= 2.0:
        ceiling = r["sent"] / r["floor"]
        line += (f"\n{'':>12}ceiling={ceiling:,.0f} rec/s ({r['needed']} x <= {r['per_req']:,} per request "
                 f"in >= {r['floor']:.2f}s) ratio={r['floor'] / r['seconds']:.0%} "
                 f"(send phase {r['floor'] / send_s:.0%}); ideal client {r['ideal']:.2f}s "
                 f"-> {r['ideal'] / r['seconds']:.0%} of ideal"
                 f"\n{'':>12}pacing: the {r['needed']} record-carrying requests were admitted over {r['span']:.2f}s, "
                 f"the limits allow >= {r['floor']:.2f}s -> {r['floor'] / r['span']:.0%} of the rate-limit ceiling")
    else:
        line += f" ceiling: n/a (rate schedule {r['floor']:.1f}s, latency-bound)"
    if r["label"] != "first sync" and r["changed"]:
        line += f" sent/changed={r['sent'] / r['changed']:.3f}x"
    if r["violations"] or r["consent"]:
        line += f" SPEC VIOLATIONS={r['violations']} CONSENT ATTEMPTS={r['consent']}"
    return line


def bench(kind: str, n: int, tmp: Path, repeat: int, full_validation: bool, verbose: bool,
          dd_scale: float = DD_SCALE) -> None:
    wh = Warehouse(tmp / f"warehouse-{kind}")
    t0 = time.monotonic()
    write_days(wh, n)
    n_changed = changed_memberships(wh) if kind == "meta" else changed(wh)  # Meta: per-audience adds/removes
    print(f"\n== {kind}: {n:,} identities (fixtures in {time.monotonic() - t0:.1f}s), day-2 changes: {n_changed:,}"
          f"{'' if not PROFILES[kind].scaled or dd_scale == 1 else f' (rate windows scaled x{dd_scale:g})'}", flush=True)
    runs = []
    for i in range(repeat):
        if repeat > 1:
            print(f"-- run {i + 1}/{repeat}", flush=True)
        runs.append(run_once(kind, wh, tmp, n_changed, full_validation, quiet=False, verbose=verbose,
                             dd_scale=dd_scale))
    if repeat > 1:
        for j, label in enumerate(("first sync", "1% change")):
            rs = [r[j] for r in runs]
            med = {k: statistics.median(r[k] for r in rs) for k in ("seconds", "plan", "cpu", "fake_cpu")}
            line = (f"median of {repeat} {label}: wall={med['seconds']:.2f}s (plan {med['plan']:.2f}s) "
                    f"cpu client={med['cpu']:.2f}s fake={med['fake_cpu']:.2f}s")
            if rs[0]["floor"] >= 2.0:
                ratios = sorted(r["floor"] / r["seconds"] for r in rs)
                sends = sorted(r["floor"] / (r["seconds"] - r["plan"]) for r in rs)
                pacing = sorted(r["floor"] / r["span"] for r in rs)
                line += (f" ratio min/median/max={ratios[0]:.0%}/{statistics.median(ratios):.0%}/{ratios[-1]:.0%}"
                         f" (send phase {sends[0]:.0%}/{statistics.median(sends):.0%}/{sends[-1]:.0%};"
                         f" pacing {pacing[0]:.0%}/{statistics.median(pacing):.0%}/{pacing[-1]:.0%})")
            else:
                line += " sent/changed=" + "/".join(f"{r['sent'] / r['changed']:.3f}x" for r in rs)
            print(line, flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profiles", type=int, default=1_000_000)
    ap.add_argument("--integration", choices=[*PROFILES, "both"], default="both")
    ap.add_argument("--repeat", type=int, default=1, help="repetitions (fresh fake and state each time)")
    ap.add_argument("--full-validation", action="store_true",
                    help="Klaviyo fake checks the shape of every imported profile against the spec")
    ap.add_argument("--window-scale", "--dd-window-scale", dest="dd_window_scale", type=float, default=DD_SCALE,
                    help="scale the rate windows of dotdigital (0.1: 6 s windows, a 10x shorter run) and Braze "
                         "(10: 3,000 requests per 30 s, a limit this machine can reach)")
    ap.add_argument("--meta-calls", type=int, default=DEFAULT_CALLS_PER_HOUR,
                    help="Meta custom_audience calls allowed per --meta-window (default 5,000: the dev-tier floor)")
    ap.add_argument("--meta-window", type=float, default=3600.0, help="Meta rate window in seconds (default 3600)")
    ap.add_argument("--verbose", action="store_true", help="print when each record-carrying request was accepted")
    args = ap.parse_args()
    os.environ["BENCH_META_CALLS"], os.environ["BENCH_META_WINDOW"] = str(args.meta_calls), str(args.meta_window)
    tmp = Path(tempfile.mkdtemp(prefix="bench-sync-"))
    try:
        for kind in (list(PROFILES) if args.integration == "both" else [args.integration]):
            bench(kind, args.profiles, tmp, args.repeat, args.full_validation, args.verbose, args.dd_window_scale)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
