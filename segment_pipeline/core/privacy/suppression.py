"""Suppression lists: addresses that are never exported or synced, kept in the warehouse as hashes only.

**Loading** (:func:`load_suppression`, the daily ``suppression_lists`` asset): every list declared
in the privacy file (:mod:`segment_pipeline.core.privacy.config`) is read with DuckDB, streaming,
and written as one partition ``<warehouse>/suppression/date=YYYY-MM-DD/data.parquet`` with the
columns ``list_name VARCHAR, email_sha256 VARCHAR`` (sorted, distinct): the plain addresses are
never stored. A plain address is normalized as identities are (:mod:`segment_pipeline.core.identity`:
Unicode-trimmed, lowercased, validated) and hashed with SHA-256 (lowercase hex); a hashed list must
hold SHA-256 hex digests of the trimmed, lowercased address (Meta's "EMAIL_SHA256" rule, see
:mod:`segment_pipeline.core.sync.hashing`; for an ASCII address that is the identity
normalization), compared ignoring case and surrounding white space. An entry that is not a valid
address (plain) or not 64 hex characters (hashed) is quarantined in
``<warehouse>/quarantine_suppression/date=YYYY-MM-DD/data.parquet`` (``list_name, source_file,
source_line, reason``: the value itself is not kept) and counted; blank lines are counted as
``blank``. A declared list whose file or folder is missing, or a file lacking the column, fails the
load naming the list, the file and the column (an empty list would silently let its addresses through).

Readers: ``.csv`` (header row; ``column``; ``delimiter``), ``.txt`` (one address per line, no
header), ``.ndjson`` / ``.jsonl`` (``column`` is the key of each object; a line that is not a JSON
object or lacks the key is quarantined with that reason), ``.parquet`` (``column``). An empty line
or cell is counted as ``blank``. A folder is read
recursively (hidden files and other suffixes are skipped); ``source_line`` is the 1-based line of
the file (csv: counting the header; parquet: the row).

**Applying** (:func:`keep_email_sql`): the latest loaded partition is the one in force, for every
day's outputs (a back-filled old day is filtered by today's lists). The one predicate is used by
:mod:`segment_pipeline.core.privacy.filters`, which every export and every destination's desired
state read their members through.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, field
from pathlib import Path

import duckdb

from segment_pipeline.core.atomic import atomic_path
from segment_pipeline.core.identity import problem_sql, strip_sql
from segment_pipeline.core.privacy.config import (
    LIST_SUFFIXES,
    PrivacyConfig,
    PrivacyFileError,
    SuppressionList,
)
from segment_pipeline.core.warehouse import Warehouse, as_date, sql_ident, sql_string

SUPPRESSION_TABLE = "suppression"
QUARANTINE_TABLE = "quarantine_suppression"
PARTITION_FILE = "data.parquet"
HASH_RE = "[0-9a-f]{64}"
NOT_A_HASH = "not a SHA-256 hex digest (64 hex characters)"


@dataclass
class ListLoad:
    """What one list gave: distinct hashes kept, files read, entries quarantined, blank lines."""

    entries: int = 0
    files: int = 0
    quarantined: int = 0
    blank: int = 0


@dataclass
class SuppressionLoad:
    day: str
    location: str | None  # the partition written (None: no list declared)
    lists: dict[str, ListLoad] = field(default_factory=dict)

    @property
    def hashes(self) -> int:
        return sum(v.entries for v in self.lists.values())

    @property
    def quarantined(self) -> int:
        return sum(v.quarantined for v in self.lists.values())


def partition_path(warehouse: Warehouse, table: str, day: str | dt.date) -> Path:
    return warehouse.partition_path(table, day)


def partition_dates(warehouse: Warehouse, table: str = SUPPRESSION_TABLE) -> list[dt.date]:
    return warehouse.partition_dates(table)


def list_files(location: Path) -> list[Path]:
    """The readable files of a list location (a file, or a folder read recursively), sorted."""
    if location.is_file():
        return [location]
    if not location.is_dir():
        return []
    return sorted(p for p in location.rglob("*") if p.is_file() and p.suffix.lower() in LIST_SUFFIXES
                  and not any(part.startswith(".") for part in p.relative_to(location).parts))


def _lines_sql(f: str) -> str:
    """Every line of a text file as ``v VARCHAR`` (NULL for an empty line), with its 1-based ``line``."""
    return (f"SELECT v, row_number() OVER () AS line FROM read_csv({f}, header = false, "
            "columns = {'v': 'VARCHAR'}, delim = '\x1f', quote = '', escape = '', strict_mode = false)")


def _entries_sql(con: duckdb.DuckDBPyConnection, entry: SuppressionList, path: Path, shown: str) -> str:
    """``value VARCHAR, line BIGINT, blank BOOLEAN, bad VARCHAR`` of one file: ``blank`` for an empty
    line or cell (counted, not quarantined), ``bad`` a reason found while reading (NULL: none)."""
    f, col = sql_string(str(path)), entry.column
    suffix = path.suffix.lower()
    if suffix == ".txt":
        return f"SELECT v AS value, line, v IS NULL OR trim(v) = '' AS blank, NULL AS bad FROM ({_lines_sql(f)})"
    if suffix in (".ndjson", ".jsonl"):
        key = sql_string("$." + json.dumps(col))
        return f"""SELECT CASE WHEN json_valid(v) AND json_type(v) = 'OBJECT' THEN json_extract_string(v, {key}) END AS value,
                          line, v IS NULL OR trim(v) = '' AS blank,
                          CASE WHEN NOT json_valid(v) THEN 'not valid JSON'
                               WHEN json_type(v) <> 'OBJECT' THEN 'not a JSON object'
                               WHEN json_extract_string(v, {key}) IS NULL THEN {sql_string(f"no value for key {col!r}")}
                          END AS bad
                   FROM ({_lines_sql(f)})"""
    reader = (f"read_csv({f}, header = true, all_varchar = true, delim = {sql_string(entry.delimiter)}, quote = '\"', "
              "escape = '\"', strict_mode = false, null_padding = true)" if suffix == ".csv" else f"read_parquet({f})")
    cols = [r[0] for r in con.execute(f"DESCRIBE SELECT * FROM {reader}").fetchall()]
    if col not in cols:
        raise PrivacyFileError(f"suppression list {entry.name!r}: {shown} has no column {col!r} (columns: "
                               f"{', '.join(cols[:10])})")
    offset = 1 if suffix == ".csv" else 0
    value = f"CAST({sql_ident(col)} AS VARCHAR)"
    return (f"SELECT {value} AS value, row_number() OVER () + {offset} AS line, "
            f"{value} IS NULL OR trim({value}) = '' AS blank, NULL AS bad FROM {reader}")


def load_suppression(con: duckdb.DuckDBPyConnection, warehouse: Warehouse, config: PrivacyConfig,
                     landing_root: str | Path, day: str | dt.date) -> SuppressionLoad:
    """Read every declared list and publish the day's hashes (and quarantine); see the module doc.

    Raises :class:`PrivacyFileError` naming the list (and file, column) when a list cannot be read.
    With no list declared nothing is written and the filters let every address through.
    """
    day = as_date(day)
    result = SuppressionLoad(day.isoformat(), None)
    if not config.suppression:
        return result
    con.execute("CREATE OR REPLACE TEMP TABLE suppression_entries (list_name VARCHAR, source_file VARCHAR, "
                "source_line BIGINT, email_sha256 VARCHAR, reason VARCHAR, blank BOOLEAN)")
    try:
        for entry in config.suppression:
            location = config.list_location(entry, landing_root)
            files = list_files(location)
            if not files and not location.exists():
                raise PrivacyFileError(f"{config.source}: suppression list {entry.name!r}: {location} does not exist")
            result.lists[entry.name] = ListLoad(files=len(files))
            for path in files:
                shown = path.name if path == location else str(path.relative_to(location))
                try:
                    rows = _entries_sql(con, entry, path, shown)
                    if entry.hashed:
                        norm = "lower(trim(value))"
                        reason = f"CASE WHEN regexp_full_match({norm}, '{HASH_RE}') THEN NULL ELSE '{NOT_A_HASH}' END"
                        digest = norm
                    else:
                        stripped = strip_sql("value")
                        reason = problem_sql(stripped)
                        digest = f"sha256(lower({stripped}))"
                    con.execute(
                        f"""INSERT INTO suppression_entries
                            SELECT ?, ?, line, CASE WHEN r IS NULL THEN {digest} END, r, blank
                            FROM (SELECT *, CASE WHEN blank THEN NULL WHEN bad IS NOT NULL THEN bad ELSE {reason} END AS r
                                  FROM ({rows}))""",
                        [entry.name, shown])
                except duckdb.Error as exc:
                    raise PrivacyFileError(f"suppression list {entry.name!r}: cannot read {shown}: "
                                           f"{str(exc).splitlines()[0]}") from None
        target = partition_path(warehouse, SUPPRESSION_TABLE, day)
        with atomic_path(target) as tmp:
            con.execute(f"""COPY (SELECT DISTINCT list_name, email_sha256 FROM suppression_entries
                                  WHERE email_sha256 IS NOT NULL ORDER BY list_name, email_sha256)
                            TO {sql_string(str(tmp))} (FORMAT parquet, COMPRESSION zstd)""")
        quarantine = partition_path(warehouse, QUARANTINE_TABLE, day)
        with atomic_path(quarantine) as tmp:
            con.execute(f"""COPY (SELECT list_name, source_file, source_line, reason FROM suppression_entries
                                  WHERE reason IS NOT NULL AND NOT blank ORDER BY ALL)
                            TO {sql_string(str(tmp))} (FORMAT parquet, COMPRESSION zstd)""")
        for name, kept, bad, blank in con.execute(
                """SELECT list_name, count(DISTINCT email_sha256), count(*) FILTER (WHERE reason IS NOT NULL AND NOT blank),
                          count(*) FILTER (WHERE blank) FROM suppression_entries GROUP BY list_name""").fetchall():
            r = result.lists[name]
            r.entries, r.quarantined, r.blank = int(kept), int(bad), int(blank)
        result.location = str(target)
    finally:
        con.execute("DROP TABLE IF EXISTS suppression_entries")
    return result


def current_path(warehouse: Warehouse) -> Path | None:
    """The suppression partition in force: the latest one loaded (None: never loaded)."""
    days = partition_dates(warehouse)
    return partition_path(warehouse, SUPPRESSION_TABLE, days[-1]) if days else None


def suppressed_relation(warehouse: Warehouse) -> str | None:
    """SQL relation ``(list_name, email_sha256)`` of the lists in force, or None when none was loaded."""
    path = current_path(warehouse)
    return None if path is None else f"read_parquet({sql_string(str(path))}, hive_partitioning = false)"


def keep_email_sql(warehouse: Warehouse, column: str) -> str:
    """SQL predicate: ``column`` (a normalized email, NULL allowed) is on no suppression list."""
    rel = suppressed_relation(warehouse)
    if rel is None:
        return "TRUE"
    return f"({column} IS NULL OR sha256({column}) NOT IN (SELECT email_sha256 FROM {rel}))"


def suppressed_counts(con: duckdb.DuckDBPyConnection, warehouse: Warehouse, emails: str,
                      params: list[object] | None = None) -> dict[str, int]:
    """Per list, how many distinct emails of the relation ``emails`` (a query with a column
    ``email``) it suppresses; every loaded list is named, with 0 when it matched none."""
    rel = suppressed_relation(warehouse)
    if rel is None:
        return {}
    rows = con.execute(
        f"""SELECT l.list_name, count(DISTINCT e.email) FILTER (WHERE e.email IS NOT NULL)
            FROM (SELECT DISTINCT list_name FROM {rel}) l
            LEFT JOIN {rel} s ON s.list_name = l.list_name
            LEFT JOIN (SELECT DISTINCT email, sha256(email) AS h FROM ({emails}) WHERE email IS NOT NULL) e
              ON e.h = s.email_sha256
            GROUP BY l.list_name ORDER BY l.list_name""", params or []).fetchall()
    return {str(name): int(n) for name, n in rows}


def _sources(config: PrivacyConfig, landing_root: str | Path) -> list[Path]:
    """The privacy file and every list file and folder: a change to any makes the load stale."""
    out = [Path(config.source)] if config.source != "<memory>" else []
    for entry in config.suppression:
        location = config.list_location(entry, landing_root)
        out.append(location)
        if location.is_dir():
            out.extend(p for p in location.rglob("*"))
    return out


def ensure_current(con: duckdb.DuckDBPyConnection, warehouse: Warehouse, config: PrivacyConfig,
                   landing_root: str | Path, today: dt.date | None = None) -> SuppressionLoad | None:
    """Load the lists (:func:`load_suppression`, as of ``today``, default the UTC date) unless
    today's partition exists and is newer than the privacy file and every list file and folder;
    return the load, or None when nothing had to be done. Every export and sync calls this first,
    so lists are loaded at most once a day and a changed list is in force on the next run.

    When the privacy file no longer declares any list but lists were loaded before, an empty
    partition is written, so the removed lists stop applying.
    """
    today = today or dt.datetime.now(dt.UTC).date()
    days = partition_dates(warehouse)
    if not config.suppression:
        if not days:
            return None
        latest = partition_path(warehouse, SUPPRESSION_TABLE, days[-1])
        if con.execute(f"SELECT count(*) FROM read_parquet({sql_string(str(latest))})").fetchall()[0][0] == 0:
            return None
        target = partition_path(warehouse, SUPPRESSION_TABLE, max(today, days[-1]))
        with atomic_path(target) as tmp:
            con.execute(f"COPY (SELECT NULL::VARCHAR AS list_name, NULL::VARCHAR AS email_sha256 LIMIT 0) "
                        f"TO {sql_string(str(tmp))} (FORMAT parquet)")
        return SuppressionLoad(today.isoformat(), str(target))
    current = partition_path(warehouse, SUPPRESSION_TABLE, today)
    if current.exists():
        loaded = current.stat().st_mtime
        # a list file gone since the load makes it stale too: the reload names the missing file
        if all(p.exists() and p.stat().st_mtime <= loaded for p in _sources(config, landing_root)):
            return None
    return load_suppression(con, warehouse, config, landing_root, today)


class SuppressionNotCurrentError(PrivacyFileError):
    """The privacy file declares suppression lists but no load of them is in force and none can be
    made: nothing may be exported or synced (it would go out unfiltered)."""


def refresh_suppression(warehouse: Warehouse, landing_root: str | Path | None = None,
                        config: PrivacyConfig | None = None, today: dt.date | None = None) -> SuppressionLoad | None:
    """What every export and sync (asset or ``segment-pipeline sync plan/run``) calls before it reads
    members: :func:`ensure_current` with the privacy file of the settings (``config``, default
    :func:`~segment_pipeline.core.privacy.config.current_privacy`) and the landing root of the settings
    (``landing_root``), on its own DuckDB connection. Returns the load made, or None (already current).

    Fails closed: raises :class:`PrivacyFileError` naming the file, list or entry when the privacy file
    or a list is invalid or missing, and :class:`SuppressionNotCurrentError` when lists are declared
    but today's load cannot be written (e.g. a read-only warehouse), so nothing goes out unfiltered.
    """
    from segment_pipeline import settings
    from segment_pipeline.core.privacy.config import current_privacy
    from segment_pipeline.core.warehouse import connect

    config = config if config is not None else current_privacy()
    today = today or dt.datetime.now(dt.UTC).date()
    con = connect(memory_limit="1GB")
    try:
        result = ensure_current(con, warehouse, config, landing_root or settings.landing_root(), today)
    except (OSError, duckdb.Error) as exc:
        if not config.suppression:
            raise
        raise SuppressionNotCurrentError(
            f"{config.source}: declares suppression lists but they cannot be loaded into {warehouse.root} "
            f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}): refusing to send or "
            "export unfiltered") from None
    finally:
        con.close()
    if config.suppression and not partition_path(warehouse, SUPPRESSION_TABLE, today).exists():
        raise SuppressionNotCurrentError(f"{config.source}: declares suppression lists but no load of today "
                                         f"({today}) is in {warehouse.root}: refusing to send or export unfiltered")
    return result
