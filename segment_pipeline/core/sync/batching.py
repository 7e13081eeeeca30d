"""Batching engine: stream plan rows, cut them into request-sized batches, keep a bounded number
of batches in flight on worker threads, and hand each finished batch back to the caller's thread
(which records the confirmation, so all state writes happen on one thread, one batch at a time).

Request bodies are built without per-row Python work: :func:`plan_batches` has DuckDB render each
plan row's encoded record (a JSON item, a CSV line) *with its own separator* as a string column,
streams it as Arrow record batches, cuts batches on row and byte budgets from the column's
lengths, and takes a batch's payload as one slice of the Arrow value buffer (the rows' texts are
contiguous there, so the payload is the concatenation of its records without a join).
"""

from __future__ import annotations

import bisect
import concurrent.futures as cf
import itertools
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from segment_pipeline.core.warehouse import spill_dir

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
    con = duckdb.connect(config={"temp_directory": str(spill_dir())})  # spills stay private (0700)
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
class Batch:
    """One request's worth of plan rows: ``table`` (email, segments, member) and the ``payload``,
    the concatenation of the rows' encoded records (each with its trailing separator)."""

    table: pa.Table
    payload: bytes

    def __len__(self) -> int:
        return self.table.num_rows

    @property
    def emails(self) -> list[str]:
        return self.table.column("email").to_pylist()


def plan_batches(plan_path: Path, action: str, record_sql: str, max_rows: int, max_bytes: int | None = None,
                 params: Mapping[str, object] | None = None, read_rows: int = 65_536,
                 extra: tuple[str, ...] = ()) -> Iterator[Batch]:
    """Batches of one action's plan rows (ordered by email), each at most ``max_rows`` rows and
    ``max_bytes`` payload bytes; ``record_sql`` is the DuckDB expression rendering one row's
    record (over the plan columns ``email``, ``segments``, ``member``, ``held``). A single record over
    ``max_bytes`` raises ``ValueError``. ``extra``: more plan columns kept in each batch's table
    (after ``email``, ``segments``, ``member``), e.g. ``fields`` for the mapped-field mirror.
    """
    con = duckdb.connect(config={"temp_directory": str(spill_dir())})  # spills stay private (0700)
    pending: list[pa.RecordBatch] = []
    pending_rows = 0
    pending_bytes = 0
    try:
        # the plan file is written sorted by (action, email) and DuckDB keeps a file's row order
        # (preserve_insertion_order): no second sort before the first batch can go out
        reader = con.sql(
            f"SELECT email, segments, member, {record_sql} AS record{''.join(', ' + c for c in extra)} "
            "FROM read_parquet($path) "
            "WHERE action = $action",
            params={"path": str(plan_path), "action": action, **(params or {})},
        ).to_arrow_reader(read_rows)
        for rb in itertools.chain(reader, [None]):
            if rb is not None:
                if rb.num_rows == 0:
                    continue
                pending.append(rb)
                pending_rows += rb.num_rows
                pending_bytes += _payload_bytes(rb.column(3))
                if pending_rows < max_rows and (max_bytes is None or pending_bytes < max_bytes):
                    continue
            if not pending:
                break
            table = pa.Table.from_batches(pending).combine_chunks()
            rest = yield from _cut(table, max_rows, max_bytes, final=rb is None, keep=len(extra))
            pending = rest.to_batches() if rest is not None and rest.num_rows else []
            pending_rows = sum(b.num_rows for b in pending)
            pending_bytes = sum(_payload_bytes(b.column(3)) for b in pending)
    finally:
        con.close()


def _cut(table: pa.Table, max_rows: int, max_bytes: int | None, final: bool, keep: int = 0) -> Iterator[Batch]:
    """Yield full batches from the front of ``table`` (all of it when ``final``); return the rest."""
    records = table.column(3).combine_chunks()
    lengths = pc.binary_length(records).to_pylist()
    ends = list(itertools.accumulate(lengths))  # ends[i] = payload bytes of rows [0, i]
    start, n = 0, table.num_rows
    while start < n:
        before = ends[start - 1] if start else 0
        stop = min(n, start + max_rows)
        if max_bytes is not None:
            fit = bisect.bisect_right(ends, before + max_bytes, start, stop)
            if fit == start:
                raise ValueError(f"one record is {lengths[start]} bytes, over the {max_bytes} byte request limit")
            stop = fit
        if stop == n and not final and (stop - start < max_rows) and (
                max_bytes is None or ends[n - 1] - before < max_bytes):
            break  # not full yet: wait for more rows
        yield Batch(table.slice(start, stop - start).select([0, 1, 2, *range(4, 4 + keep)]),
                    _payload(records.slice(start, stop - start)))
        start = stop
    return table.slice(start) if start < n else None


def _payload_bytes(arr: pa.Array) -> int:
    return int(pc.sum(pc.binary_length(arr)).as_py() or 0)


def _payload(arr: pa.Array) -> bytes:
    """The concatenated values of a string array, sliced straight out of its value buffer."""
    if len(arr) == 0:
        return b""
    if pa.types.is_string(arr.type) or pa.types.is_binary(arr.type) or pa.types.is_large_string(arr.type) \
            or pa.types.is_large_binary(arr.type):
        if arr.null_count:
            raise ValueError("a plan record rendered as NULL")
        width = 8 if pa.types.is_large_string(arr.type) or pa.types.is_large_binary(arr.type) else 4
        offsets = arr.buffers()[1]
        first = int.from_bytes(offsets[arr.offset * width:(arr.offset + 1) * width].to_pybytes(), "little")
        last = int.from_bytes(
            offsets[(arr.offset + len(arr)) * width:(arr.offset + len(arr) + 1) * width].to_pybytes(), "little")
        return arr.buffers()[2][first:last].to_pybytes()
    return "".join(arr.to_pylist()).encode("utf-8")  # e.g. string_view: no contiguous buffer


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
