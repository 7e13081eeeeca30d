"""The daily segment feed: every identity processed up to a day, with its segment names.

Format (one JSON object per line, UTF-8, ``\\n``-terminated, compact, like the reference feed)::

    {"email":"jane@example.com","nosto_segments":["Adidas fans","First Time Buyer"]}
    {"email":"joe@example.com","nosto_segments":[]}

* Rows: the ``profiles`` partition of that day (one per identity processed up to the day), so
  identities in no segment appear with an empty list. Lines are sorted by email (byte order), so
  re-running a day writes the same file byte for byte; readers should not rely on the order.
* Names: ``segment_stats.segment_name`` of that day for each of the identity's ``memberships`` of
  that day, sorted; names are data (quotes, commas, unicode are JSON-escaped as needed).
* The key (``identifier``, default ``nosto_segments``) is configurable; changing it writes the next
  export under the new key and folder.

Layout under the export root (local folder or ``s3://bucket/prefix``)::

    daily/<identifier>/YYYY-MM-DD.json   the feed of that day (replaced when the day is re-run)
    daily/<identifier>/latest            JSON pointer {"date", "key", "file", "lines", "bytes", ...}

The feed file is published atomically before the pointer, and the pointer itself is replaced
atomically and only moves forward in time, so ``latest`` only ever names a complete file. An empty
account (no profiles yet) gives an empty file.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import duckdb

from segment_pipeline.core.exports.keys import check_identifier, join_key
from segment_pipeline.core.exports.storage import ExportStorage, LocalExportStorage
from segment_pipeline.core.privacy.filters import sendable_memberships
from segment_pipeline.core.privacy.suppression import keep_email_sql
from segment_pipeline.core.warehouse import Warehouse, as_date, sql_string
from segment_pipeline.core.warehouse import sql_ident as _ident

DEFAULT_IDENTIFIER = "nosto_segments"
DAILY_PREFIX = "daily"
LATEST_NAME = "latest"


class ExportInputError(ValueError):
    """The warehouse data for an export is inconsistent (the message names the segment/field)."""


def daily_key(identifier: str, day: str | dt.date) -> str:
    return join_key(DAILY_PREFIX, check_identifier(identifier), f"{as_date(day).isoformat()}.json")


def latest_key(identifier: str) -> str:
    return join_key(DAILY_PREFIX, check_identifier(identifier), LATEST_NAME)


@dataclass
class DailyFeedResult:
    day: str
    identifier: str
    key: str
    location: str
    lines: int
    bytes: int
    latest_updated: bool

    def as_dict(self) -> dict:
        return asdict(self)


def segment_names_relation(warehouse: Warehouse, con: duckdb.DuckDBPyConnection, day: dt.date) -> str:
    """``(segment_id, segment_name)`` for ``day``, after checking every membership has a name."""
    stats = warehouse.scan("segment_stats", days=[day])
    memberships = warehouse.scan("memberships", days=[day])
    bad_names = con.execute(
        f"SELECT segment_id, count(DISTINCT segment_name), count(segment_name) FROM {stats} "
        "GROUP BY segment_id HAVING count(DISTINCT segment_name) <> 1 OR count(segment_name) <> count(*) "
        "ORDER BY segment_id LIMIT 5"
    ).fetchall()
    if bad_names:
        raise ExportInputError(
            f"segment_stats for {day}: segment_name must be set and unique per segment; offending "
            f"segment_id(s): {[r[0] for r in bad_names]}"
        )
    unknown = con.execute(
        f"SELECT DISTINCT m.segment_id FROM (SELECT DISTINCT segment_id FROM {memberships}) m "
        f"ANTI JOIN {stats} s ON s.segment_id = m.segment_id ORDER BY 1 LIMIT 5"
    ).fetchall()
    if unknown:
        raise ExportInputError(
            f"memberships for {day} reference segment_id(s) {[r[0] for r in unknown]} that have no "
            f"segment_stats row (segment_name) for that day"
        )
    return f"(SELECT segment_id, any_value(segment_name) AS segment_name FROM {stats} GROUP BY segment_id)"


def daily_feed_sql(warehouse: Warehouse, con: duckdb.DuckDBPyConnection, day: dt.date, identifier: str) -> str:
    names = segment_names_relation(warehouse, con, day)
    profiles = warehouse.scan("profiles", days=[day])
    memberships = sendable_memberships(warehouse, days=[day])  # suppression lists and consent gates
    return f"""
        WITH per_identity AS (
            SELECT m.identity_id, list(n.segment_name ORDER BY n.segment_name) AS names
            FROM {memberships} m JOIN {names} n ON n.segment_id = m.segment_id
            GROUP BY m.identity_id
        )
        SELECT p.email AS email, coalesce(pi.names, []::VARCHAR[]) AS {_ident(check_identifier(identifier))}
        FROM {profiles} p LEFT JOIN per_identity pi ON pi.identity_id = p.identity_id
        WHERE {keep_email_sql(warehouse, 'p.email')}
        ORDER BY p.email ASC NULLS FIRST, p.identity_id
    """


def write_daily_feed(
    con: duckdb.DuckDBPyConnection,
    warehouse: Warehouse,
    storage: ExportStorage,
    day: str | dt.date,
    identifier: str = DEFAULT_IDENTIFIER,
) -> DailyFeedResult:
    """Write the feed of ``day`` and move ``latest`` to it (if it is the newest); see module doc."""
    day = as_date(day)
    key = daily_key(identifier, day)
    select = daily_feed_sql(warehouse, con, day, identifier)
    with storage.writer(key) as tmp:
        lines = con.execute(
            f"COPY ({select}) TO {sql_string(str(tmp))} (FORMAT json, COMPRESSION uncompressed)"
        ).fetchall()[0][0]
        if not tmp.exists():  # zero rows: DuckDB may not create the file; an empty feed is a file
            tmp.touch()
        size = tmp.stat().st_size
    latest_updated = _advance_latest(storage, identifier, day, key, lines, size)
    return DailyFeedResult(day.isoformat(), identifier, key, storage.location(key), lines, size, latest_updated)


def read_latest(storage: ExportStorage, identifier: str) -> dict | None:
    raw = storage.get_bytes(latest_key(identifier))
    return json.loads(raw) if raw else None


def _advance_latest(
    storage: ExportStorage, identifier: str, day: dt.date, key: str, lines: int, size: int
) -> bool:
    current = read_latest(storage, identifier)
    if current and current.get("date", "") > day.isoformat() and storage.exists(current["key"]):
        return False  # a back-fill of an older day never moves the pointer back
    pointer = {
        "date": day.isoformat(),
        "key": key,
        "file": key.rsplit("/", 1)[1],
        "lines": lines,
        "bytes": size,
        "written_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    storage.put_bytes(latest_key(identifier), json.dumps(pointer).encode())
    return True


# -- verification (asset check) --------------------------------------------------------------------


@dataclass
class DailyFeedCheck:
    day: str
    passed: bool
    lines: int
    identities: int
    problems: list[str]


def verify_daily_feed(
    con: duckdb.DuckDBPyConnection,
    warehouse: Warehouse,
    storage: ExportStorage,
    day: str | dt.date,
    identifier: str = DEFAULT_IDENTIFIER,
) -> DailyFeedCheck:
    """Re-read the published feed: one line per identity, valid JSON objects, known segment names."""
    day = as_date(day)
    key = daily_key(identifier, day)
    problems: list[str] = []
    identities = con.execute(f"SELECT count(*) FROM {warehouse.scan('profiles', days=[day])} AS p "
                             f"WHERE {keep_email_sql(warehouse, 'p.email')}").fetchall()[0][0]
    if not storage.exists(key):
        return DailyFeedCheck(day.isoformat(), False, 0, identities, [f"{storage.location(key)} is missing"])
    with _local_copy(storage, key) as path:
        lines = _count_lines(path)
        if lines != identities:
            problems.append(f"{lines} lines for {identities} identities")
        if lines:
            ident = sql_string(identifier)
            try:
                parsed, emails, bad = con.execute(
                    f"""SELECT count(*), count(DISTINCT email),
                               count(*) FILTER (WHERE json_type(j) <> 'OBJECT'
                                   OR json_type(j, '$.email') NOT IN ('VARCHAR', 'NULL')
                                   OR json_type(j, '$.' || json_quote({ident})) <> 'ARRAY')
                        FROM (SELECT json AS j, json ->> 'email' AS email
                              FROM read_json_objects({sql_string(str(path))}, format = 'newline_delimited'))"""
                ).fetchall()[0]
            except duckdb.Error as exc:
                problems.append(f"invalid JSON: {str(exc).splitlines()[0]}")
            else:
                if parsed != lines:
                    problems.append(f"{parsed} JSON objects for {lines} lines")
                if emails != parsed:
                    problems.append(f"{parsed - emails} duplicate email line(s)")
                if bad:
                    problems.append(f"{bad} line(s) are not {{'email': string, {identifier!r}: list}} objects")
                if not problems:
                    names = segment_names_relation(warehouse, con, day)
                    unknown = con.execute(
                        f"""SELECT DISTINCT name FROM (
                                SELECT unnest(from_json(json -> {sql_string('$.' + json.dumps(identifier))},
                                                        '["VARCHAR"]')) AS name
                                FROM read_json_objects({sql_string(str(path))}, format = 'newline_delimited'))
                            WHERE name NOT IN (SELECT segment_name FROM {names}) ORDER BY 1 LIMIT 5"""
                    ).fetchall()
                    if unknown:
                        problems.append(f"unknown segment name(s): {[r[0] for r in unknown]}")
    return DailyFeedCheck(day.isoformat(), not problems, lines, identities, problems)


class _local_copy:
    """A local path holding the object at ``key`` (the file itself locally, a temp download on S3)."""

    def __init__(self, storage: ExportStorage, key: str):
        self.storage, self.key, self.tmp = storage, key, None

    def __enter__(self) -> Path:
        if isinstance(self.storage, LocalExportStorage):
            return self.storage.path(self.key)
        fd, name = tempfile.mkstemp(prefix=".tmp-check-", suffix=".json")
        self.tmp = Path(name)
        with os.fdopen(fd, "wb") as out, self.storage.open_read(self.key) as body:
            while chunk := body.read(1 << 20):
                out.write(chunk)
        return self.tmp

    def __exit__(self, *exc) -> None:
        if self.tmp is not None:
            self.tmp.unlink(missing_ok=True)


def _count_lines(path: Path) -> int:
    count, last = 0, b"\n"
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 22):
            count += chunk.count(b"\n")
            last = chunk[-1:]
    return count + (0 if last == b"\n" else 1)
