"""Benchmark the segment API against a bare static file server of the same stack.

    python benchmarks/bench_api.py [--identities 1000000] [--clients 50] [--seconds 10] [--workdir DIR]

Setup: a warehouse day with ``--identities`` profiles and 5 segments (generated with DuckDB), its
daily feed written by ``write_daily_feed``, one feed token. Servers run in their own processes:

* ours: ``segment-pipeline serve`` (Starlette + uvicorn, auth, rate limiter raised out of the way);
* floor: a bare ``starlette.staticfiles.StaticFiles`` app on uvicorn serving the same folder
  (no auth, no ETag logic beyond Starlette's own, nothing else).

Figures (``--clients`` concurrent keep-alive clients, a minimal asyncio HTTP/1.1 client in this
process so that client overhead stays small; both servers share the machine with it):

* identity lookups: requests/s over ``--seconds`` (random known emails);
* feed download: MB/s for ours and the floor (each client downloads the whole file, repeatedly,
  for ``--seconds``), and the ratio ours/floor;
* peak RSS of our server (``VmHWM``) during a 100-client pull of the feed, next to its size.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import datetime as dt
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

DAY = dt.date(2026, 11, 3)


def generate(workdir: Path, identities: int) -> Path:
    from segment_pipeline.core.exports.daily_feed import write_daily_feed
    from segment_pipeline.core.exports.storage import LocalExportStorage
    from segment_pipeline.core.warehouse import Warehouse, connect

    wh = Warehouse(workdir / "warehouse")
    storage = LocalExportStorage(workdir / "exports")
    marker = workdir / f"generated-{identities}"
    if not marker.exists():
        shutil.rmtree(workdir, ignore_errors=True)
        con = connect(memory_limit="2GB")
        email = "'customer.' || i || '@example.com'"
        given = {"identity_id": f"substr(md5({email}), 1, 16)", "email": email, "random_bucket": "i % 10000"}
        # every other column of the model's profiles is NULL
        cols = ", ".join(f"{given.get(c, f'NULL::{t}')} AS \"{c}\"" for c, t in wh.schema("profiles").items())
        wh.write_partition(con, "profiles", DAY, f"SELECT {cols} FROM range({identities}) t(i)")
        segs = [("loyal", "Loyal customers", 3), ("nike", "Nike fans", 5), ("de", "geo-area Germany", 7),
                ("first", "First Time Buyer", 2), ("ig", "UTM-tag Instagram", 11)]
        union = " UNION ALL ".join(
            f"SELECT '{sid}' AS segment_id, substr(md5({email}), 1, 16) AS identity_id, {email} AS email "
            f"FROM range({identities}) t(i) WHERE i % {mod} = 0" for sid, _, mod in segs
        )
        wh.write_partition(con, "memberships", DAY, union)
        stats = " UNION ALL ".join(
            f"SELECT '{sid}' AS segment_id, '{name}' AS segment_name, 'dynamic' AS segment_type, 'refreshed' AS status, "
            f"NULL::DATE AS frozen_on, {identities // mod} AS member_count, 0 AS added, 0 AS removed"
            for sid, name, mod in segs
        )
        wh.write_partition(con, "segment_stats", DAY, stats)
        write_daily_feed(con, wh, storage, DAY)
        marker.touch()
    return storage.path(f"daily/nosto_segments/{DAY.isoformat()}.json")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_up(port: int, proc: subprocess.Popen) -> None:
    for _ in range(600):
        if proc.poll() is not None:
            raise SystemExit(f"server exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise SystemExit("server did not start")


def vm(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return 0


# -- a minimal keep-alive HTTP/1.1 client --------------------------------------------------------------


async def _request(reader, writer, path: str, headers: str) -> tuple[int, int]:
    writer.write(f"GET {path} HTTP/1.1\r\nHost: bench\r\n{headers}\r\n".encode())
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    length = None
    chunked = False
    for line in lines[1:]:
        k, _, v = line.partition(":")
        if k.lower() == "content-length":
            length = int(v)
        elif k.lower() == "transfer-encoding" and "chunked" in v.lower():
            chunked = True
    received = 0
    if length is not None:
        while received < length:
            data = await reader.read(min(1 << 20, length - received))
            if not data:
                raise ConnectionError("closed mid-body")
            received += len(data)
    elif chunked:
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                await reader.readuntil(b"\r\n")
                break
            await reader.readexactly(size + 2)
            received += size
    return status, received


async def load(port: int, clients: int, seconds: float, paths: list[str], headers: str) -> tuple[int, int, int, float]:
    """(requests done, bytes received, non-2xx, elapsed seconds) with ``clients`` connections that
    keep sending requests for ``seconds`` (requests under way then are completed and counted)."""
    started = time.monotonic()
    deadline = started + seconds
    totals = [0, 0, 0]

    async def worker(i: int) -> None:
        rnd = random.Random(i)
        reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 22)
        try:
            while time.monotonic() < deadline:
                status, size = await _request(reader, writer, rnd.choice(paths), headers)
                totals[0] += 1
                totals[1] += size
                totals[2] += status >= 300
        finally:
            writer.close()

    await asyncio.gather(*(worker(i) for i in range(clients)))
    return totals[0], totals[1], totals[2], time.monotonic() - started


async def pull_once(port: int, clients: int, path: str, headers: str) -> int:
    async def one() -> int:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 22)
        try:
            return (await _request(reader, writer, path, headers))[1]
        finally:
            writer.close()

    return sum(await asyncio.gather(*(one() for _ in range(clients))))


FLOOR_APP = textwrap.dedent("""
    import sys, uvicorn
    from starlette.applications import Starlette
    from starlette.routing import Mount
    from starlette.staticfiles import StaticFiles
    app = Starlette(routes=[Mount("/", app=StaticFiles(directory=sys.argv[1]))])
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[2]), access_log=False, log_level="warning")
""")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--identities", type=int, default=1_000_000)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--workdir", default=str(Path(tempfile.gettempdir()) / "bench_api"),
                        help="scratch folder (default: bench_api in the system temp folder)")
    args = parser.parse_args()
    workdir = Path(args.workdir)

    t = time.perf_counter()
    feed = generate(workdir, args.identities)
    size = feed.stat().st_size
    print(f"setup: {args.identities:,} identities, feed {size / 1e6:.1f} MB ({time.perf_counter() - t:.1f}s)")

    env = {
        **os.environ,
        "SEGMENT_PIPELINE_WAREHOUSE": str(workdir / "warehouse"),
        "SEGMENT_PIPELINE_EXPORT_DIR": str(workdir / "exports"),
        "SEGMENT_PIPELINE_API_STATE": str(workdir / "api_state"),
        "SEGMENT_PIPELINE_API_RATE_PER_SECOND": "1000000",
        "SEGMENT_PIPELINE_API_BURST": "1000000",
        "SEGMENT_PIPELINE_API_SIGNING_KEY": "bench-" + "k" * 40,
    }
    from segment_pipeline.core.feed_auth import CredentialStore

    _, token = CredentialStore(workdir / "api_state").create_feed_token("nosto", note="bench")
    auth = "Authorization: Basic " + base64.b64encode(f"nosto:{token}".encode()).decode() + "\r\n"

    port = free_port()
    ours = subprocess.Popen(
        [sys.executable, "-m", "segment_pipeline.cli", "serve", "--port", str(port), "--log-level", "warning"], env=env
    )
    floor_port = free_port()
    floor = subprocess.Popen([sys.executable, "-c", FLOOR_APP, str(feed.parent), str(floor_port)])
    try:
        wait_up(port, ours)
        wait_up(floor_port, floor)
        rnd = random.Random(1)
        emails = [f"/identities/customer.{rnd.randrange(args.identities)}@example.com" for _ in range(2000)]
        t = time.perf_counter()
        asyncio.run(load(port, 1, 0.01, emails[:1], auth))  # builds the day's lookup index
        print(f"identity index build (first lookup): {time.perf_counter() - t:.1f}s")

        done, _, bad, took = asyncio.run(load(port, args.clients, args.seconds, emails, auth))
        print(f"identity lookups: {done / took:,.0f} req/s with {args.clients} clients ({bad} non-2xx)")

        ident = "Accept-Encoding: identity\r\n"
        done, nbytes, bad, took = asyncio.run(load(port, args.clients, args.seconds, ["/segments/export"], auth + ident))
        ours_mbs = nbytes / 1e6 / took
        print(f"feed download (ours):  {ours_mbs:,.0f} MB/s, {done} files, {args.clients} clients ({bad} non-2xx)")
        done, nbytes, bad, took = asyncio.run(load(floor_port, args.clients, args.seconds, [f"/{feed.name}"], ident))
        floor_mbs = nbytes / 1e6 / took
        print(f"feed download (floor): {floor_mbs:,.0f} MB/s, {done} files, bare StaticFiles ({bad} non-2xx)")
        print(f"ratio ours/floor: {ours_mbs / floor_mbs:.2f}")

        with open(f"/proc/{ours.pid}/clear_refs", "w") as fh:
            fh.write("5")  # reset the peak (VmHWM) so it covers this pull only, not the index build
        baseline = vm(ours.pid, "VmRSS")
        t = time.perf_counter()
        total = asyncio.run(pull_once(port, 100, "/segments/export", auth + ident))
        elapsed = time.perf_counter() - t
        print(
            f"100-client pull: {total / 1e9:.2f} GB in {elapsed:.1f}s; server RSS before {baseline / 2**20:.0f} MiB, "
            f"peak {vm(ours.pid, 'VmHWM') / 2**20:.0f} MiB (file {size / 2**20:.0f} MiB)"
        )
    finally:
        for proc in (ours, floor):
            proc.terminate()
            proc.wait(10)


if __name__ == "__main__":
    main()
