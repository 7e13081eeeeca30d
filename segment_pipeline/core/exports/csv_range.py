"""CSV export of a segment's members over a date range (the manual "CSV export" of the reference).

Rows: every email that was a member of the segment on any day in ``[start, end]`` (from the daily
``memberships`` partitions), with the first and last day it was seen as a member in that range.
Format: RFC 4180 (comma separated, ``"``-quoted when needed with ``""`` escapes, CRLF line
endings), UTF-8 without BOM, a header row, columns in this fixed order::

    email,first_seen,last_seen

sorted by email. Ranges: ``past_7_days`` / ``past_30_days`` end on ``as_of`` (default: the newest
day with memberships) and include it; ``custom`` takes ``start`` and ``end`` (inclusive). Published
atomically at ``csv/<SEGMENT_ID>/<start>_<end>.csv`` (re-running the same range replaces it).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import duckdb

from segment_pipeline.core.exports.daily_feed import ExportInputError
from segment_pipeline.core.exports.keys import encode_segment, join_key
from segment_pipeline.core.exports.segment_export import latest_membership_day
from segment_pipeline.core.exports.storage import ExportStorage
from segment_pipeline.core.privacy.filters import sendable_memberships
from segment_pipeline.core.warehouse import Warehouse, as_date, sql_string

CSV_PREFIX = "csv"
CSV_COLUMNS = ("email", "first_seen", "last_seen")
RANGES = {"past_7_days": 7, "past_30_days": 30}
MAX_RANGE_DAYS = 3660


@dataclass
class CsvExportResult:
    segment_id: str
    start: str
    end: str
    key: str
    location: str
    url: str
    rows: int
    bytes: int


def resolve_range(
    warehouse: Warehouse,
    date_range: str,
    start: str | dt.date | None = None,
    end: str | dt.date | None = None,
    as_of: str | dt.date | None = None,
) -> tuple[dt.date, dt.date]:
    if date_range in RANGES:
        if start or end:
            raise ValueError(f"date_range {date_range!r} takes no start/end (use date_range 'custom')")
        last = as_date(as_of) if as_of else latest_membership_day(warehouse)
        return last - dt.timedelta(days=RANGES[date_range] - 1), last
    if date_range != "custom":
        raise ValueError(f"date_range must be one of {[*RANGES, 'custom']}, got {date_range!r}")
    if not start or not end:
        raise ValueError("date_range 'custom' needs both start and end (YYYY-MM-DD)")
    try:
        first, last = as_date(start), as_date(end)
    except ValueError as exc:
        raise ValueError(f"start/end must be dates (YYYY-MM-DD): {exc}") from exc
    if first > last:
        raise ValueError(f"start {first} is after end {last}")
    if (last - first).days >= MAX_RANGE_DAYS:
        raise ValueError(f"the range {first}..{last} is longer than {MAX_RANGE_DAYS} days")
    return first, last


def csv_key(segment_id: str, start: dt.date, end: dt.date) -> str:
    return join_key(CSV_PREFIX, encode_segment(segment_id), f"{start.isoformat()}_{end.isoformat()}.csv")


def write_segment_csv(
    con: duckdb.DuckDBPyConnection,
    warehouse: Warehouse,
    storage: ExportStorage,
    segment_id: str,
    start: dt.date,
    end: dt.date,
) -> CsvExportResult:
    key = csv_key(segment_id, start, end)
    memberships = warehouse.scan("memberships", since=start, upto=end)
    stats = warehouse.scan("segment_stats", since=start, upto=end)
    known = con.execute(
        f"SELECT (SELECT count(*) FROM {stats} WHERE segment_id = $s) "
        f"+ (SELECT count(*) FROM (SELECT 1 FROM {memberships} WHERE segment_id = $s LIMIT 1))",
        {"s": segment_id},
    ).fetchall()[0][0]
    if not known:
        raise ExportInputError(f"segment {segment_id!r} has no stats or memberships between {start} and {end}")
    sendable = sendable_memberships(warehouse, since=start, upto=end)  # suppression lists and consent gates
    select = f"""
        SELECT email, strftime(min(date), '%Y-%m-%d') AS first_seen, strftime(max(date), '%Y-%m-%d') AS last_seen
        FROM {sendable}
        WHERE segment_id = $s AND email IS NOT NULL
        GROUP BY email ORDER BY email
    """
    with storage.writer(key) as tmp:
        rows = con.execute(
            f"COPY ({select}) TO {sql_string(str(tmp))} "
            "(FORMAT csv, HEADER true, DELIMITER ',', QUOTE '\"', ESCAPE '\"', NEW_LINE '\\r\\n', "
            "COMPRESSION uncompressed)",
            {"s": segment_id},
        ).fetchall()[0][0]
        if not tmp.exists() or tmp.stat().st_size == 0:
            tmp.write_bytes((",".join(CSV_COLUMNS) + "\r\n").encode())
        size = tmp.stat().st_size
    return CsvExportResult(
        segment_id, start.isoformat(), end.isoformat(), key, storage.location(key), storage.url(key), rows, size
    )
