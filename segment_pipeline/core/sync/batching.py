"""Batching engine: stream plan rows, cut them into request-sized batches, keep a bounded number
of batches in flight on worker threads, and hand each finished batch back to the caller's thread
(which records the confirmation, so all state writes happen on one thread, one batch at a time).
"""

from __future__ import annotations

import concurrent.futures as cf
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

import duckdb

B = TypeVar("B")
R = TypeVar("R")


@dataclass
class Row:
    email: str
    segments: str  # JSON list
    member: bool
    encoded: bytes | None = None


def plan_rows(plan_path: Path, action: str, rows_per_batch: int = 20_000) -> Iterator[Row]:
    """Rows of one action from the plan, streamed in Arrow record batches."""
    con = duckdb.connect()
    try:
        reader = con.sql(
            "SELECT email, segments, member FROM read_parquet($path) WHERE action = $action ORDER BY email",
            params={"path": str(plan_path), "action": action},
        ).to_arrow_reader(rows_per_batch)
        for rb in reader:
            cols = rb.to_pydict()
            for e, s, m in zip(cols["email"], cols["segments"], cols["member"], strict=True):
                yield Row(e, s, bool(m))
    finally:
        con.close()


def chunk(rows: Iterable[Row], max_rows: int, max_bytes: int | None = None,
          encode: Callable[[Row], bytes] | None = None, overhead: int = 1) -> Iterator[list[Row]]:
    """Cut rows into lists of at most ``max_rows`` rows and (with ``encode``) ``max_bytes`` encoded bytes.

    ``overhead`` is added per row (separators); a row that alone exceeds ``max_bytes`` raises.
    """
    batch: list[Row] = []
    size = 0
    for row in rows:
        n = 0
        if encode is not None:
            row.encoded = encode(row)
            n = len(row.encoded) + overhead
            if max_bytes is not None and n > max_bytes:
                raise ValueError(f"one record is {n} bytes, over the {max_bytes} byte request limit")
        if batch and (len(batch) >= max_rows or (max_bytes is not None and size + n > max_bytes)):
            yield batch
            batch, size = [], 0
        batch.append(row)
        size += n
    if batch:
        yield batch


@dataclass
class InFlight(Generic[B, R]):
    """Run ``work(batch)`` on up to ``max_in_flight`` threads; call ``done(batch, result)`` in order of completion.

    On the first failure no new batch starts; batches already in flight finish (and are
    confirmed through ``done``), then the first error is raised.
    """

    work: Callable[[B], R]
    done: Callable[[B, R], None]
    max_in_flight: int = 4

    def run(self, batches: Iterable[B]) -> int:
        it = iter(batches)
        pending: dict[cf.Future[R], B] = {}
        error: BaseException | None = None
        finished = 0
        with cf.ThreadPoolExecutor(max_workers=self.max_in_flight, thread_name_prefix="sync") as pool:
            exhausted = False
            while True:
                while error is None and not exhausted and len(pending) < self.max_in_flight:
                    try:
                        b = next(it)
                    except StopIteration:
                        exhausted = True
                        break
                    pending[pool.submit(self.work, b)] = b
                if not pending:
                    break
                done, _ = cf.wait(list(pending), return_when=cf.FIRST_COMPLETED)
                for fut in done:
                    b = pending.pop(fut)
                    try:
                        result = fut.result()
                    except BaseException as exc:  # noqa: BLE001 - re-raised after draining
                        error = error or exc
                        continue
                    self.done(b, result)
                    finished += 1
        if error is not None:
            raise error
        return finished


def first(values: Iterable[Any]) -> Any:
    return next(iter(values), None)
