"""Raw ingestion: landing files of one day -> validated rows + quarantined rows.

Landing layout: ``<landing>/<kind>/date=YYYY-MM-DD/<any name>.ndjson|.json|.jsonl|.csv|.parquet``
with ``kind`` in ``profiles`` / ``events``. Several files per day are fine (late or split
deliveries); hidden files and names ending in ``.tmp``/``.part`` are ignored as still being written.

Every row read ends in exactly one place: the validated table (``raw_<kind>``) or the quarantine
(``quarantine_<kind>``) with the reason, the source file and the line (1-based physical line for
NDJSON and CSV, 1-based row number for Parquet). A file that cannot be read at all (not NDJSON,
corrupt Parquet, CSV without the required columns) fails the whole day with an error naming the
file, before anything is written. Both outputs are replaced atomically, so re-running a day never
appends twice.
"""

from __future__ import annotations

import csv
import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path

import duckdb

from segment_pipeline.core.warehouse import SCHEMAS, Warehouse, as_date, sql_string

KINDS = ("profiles", "events")
FORMATS = {".ndjson": "ndjson", ".jsonl": "ndjson", ".json": "ndjson", ".csv": "csv", ".parquet": "parquet"}
IGNORED_SUFFIXES = (".tmp", ".part", ".partial", ".crdownload")
#: RFC 4180 CSV with a header row; everything read as text and typed by the validation below.
#: (No hive partitioning: the ``date=`` folder is where the file landed, not a column of it.)
CSV_OPTIONS = (
    "header = true, all_varchar = true, delim = ',', quote = '\"', escape = '\"', "
    "auto_detect = false, hive_partitioning = false, null_padding = false"
)

#: Fields read from landing files, per kind (everything is read as text, then typed here).
SOURCE_FIELDS: dict[str, list[str]] = {
    "profiles": [
        "customer_id", "email", "first_name", "last_name", "gender", "dob", "phone", "country",
        "city", "language", "time_zone", "loyalty_tier", "created_at", "updated_at",
    ],
    "events": [
        "event_id", "email", "event_type", "occurred_at", "product_id", "product_name", "brand",
        "category", "price", "quantity", "revenue", "order_id", "utm_source", "utm_medium",
        "utm_campaign",
    ],
}
REQUIRED_FIELDS = {"profiles": ["email", "updated_at"], "events": ["event_id", "email", "event_type", "occurred_at"]}
EVENT_TYPES = ("page_view", "product_view", "add_to_cart", "order")
EMAIL_PATTERN = r"^[^@\s]+@[^@\s]+\.[^@\s.]+$"
#: Timestamps must fall in this range (catches 'infinity', epoch zeros and typos like 20261).
MIN_TIMESTAMP = dt.datetime(2000, 1, 1)
#: How far past the end of its landing day a timestamp may be (clock skew) before it is rejected.
FUTURE_TOLERANCE = dt.timedelta(hours=1)


class LandingFileError(RuntimeError):
    """A landing file cannot be read at all; the message names the file."""


@dataclass
class IngestReport:
    kind: str
    day: dt.date
    files: list[str] = field(default_factory=list)
    rows_read: int = 0
    rows_valid: int = 0
    rows_quarantined: int = 0
    reasons: dict[str, int] = field(default_factory=dict)

    @property
    def quarantine_ratio(self) -> float:
        return self.rows_quarantined / self.rows_read if self.rows_read else 0.0


def landing_files(landing_root: str | Path, kind: str, day: str | dt.date) -> list[Path]:
    folder = Path(landing_root) / kind / f"date={as_date(day).isoformat()}"
    if not folder.is_dir():
        return []
    files = []
    for path in sorted(folder.iterdir()):
        if not path.is_file() or path.name.startswith(".") or path.name.endswith(IGNORED_SUFFIXES):
            continue
        if path.suffix.lower() not in FORMATS:
            raise LandingFileError(
                f"{path}: unsupported landing file type {path.suffix!r}; expected one of {sorted(FORMATS)}"
            )
        files.append(path)
    return files


# ---------------------------------------------------------------------------------------------
# Reading each format into one shape: (source_file, source_line, parse_error, raw, <fields as text>)
# ---------------------------------------------------------------------------------------------


def _ndjson_relation(path: Path, fields: list[str]) -> str:
    # Read physical lines (0x1F never occurs unescaped in valid JSON, so no line is split), number
    # them with a streaming row_number (the connection preserves insertion order), then parse.
    lines = (
        f"read_csv({sql_string(str(path))}, columns = {{'raw': 'VARCHAR'}}, header = false, "
        "delim = '\x1f', quote = '', escape = '', auto_detect = false, strict_mode = false, "
        "hive_partitioning = false)"
    )
    extracted = ", ".join(f"j[{i + 1}] AS {f}" for i, f in enumerate(fields))
    paths = "[" + ", ".join(sql_string(f"$.{f}") for f in fields) + "]"
    return f"""(
        SELECT source_file, source_line,
               CASE WHEN raw IS NULL OR trim(raw) = '' THEN 'empty line'
                    WHEN NOT json_valid(raw) THEN 'line is not valid JSON'
                    WHEN json_type(raw) <> 'OBJECT' THEN 'line is not a JSON object'
               END AS parse_error,
               raw, {extracted}
        FROM (
            SELECT {sql_string(str(path))} AS source_file, source_line, raw,
                   CASE WHEN json_valid(raw) AND json_type(raw) = 'OBJECT'
                        THEN json_extract_string(raw, {paths}) END AS j
            FROM (SELECT raw, row_number() OVER () AS source_line FROM {lines})
        )
        WHERE NOT (raw IS NULL OR trim(raw) = '')
    )"""


def _csv_relation(con: duckdb.DuckDBPyConnection, path: Path, fields: list[str], required: list[str]) -> str:
    src = sql_string(str(path))
    try:
        with path.open(newline="", encoding="utf-8-sig") as fh:
            header = next(csv.reader(fh), [])
    except (UnicodeDecodeError, csv.Error) as exc:
        raise LandingFileError(f"{path}: cannot be read as CSV: {exc}") from None
    if len(set(header)) != len(header) or any(not h for h in header):
        raise LandingFileError(f"{path}: CSV header has empty or repeated column names: {header}")
    missing = [f for f in required if f not in header]
    if missing:
        raise LandingFileError(f"{path}: CSV header lacks required column(s) {missing}; header is {header}")
    cols = ", ".join(f"{_q(f)} AS {f}" if f in header else f"NULL::VARCHAR AS {f}" for f in fields)
    struct = ", ".join(f"{sql_string(h)}: {_q(h)}" for h in header)
    columns = ", ".join(f"{sql_string(h)}: 'VARCHAR'" for h in header)
    # Rows DuckDB's CSV reader rejects (wrong column count, bad quoting, invalid UTF-8) are kept
    # in its reject tables with their line numbers; they are quarantined, not lost.
    return f"""(
        SELECT {src} AS source_file, row_number() OVER () + 1 AS source_line, NULL::VARCHAR AS parse_error,
               to_json({{{struct}}})::VARCHAR AS raw, {cols}
        FROM read_csv({src}, {CSV_OPTIONS}, columns = {{{columns}}},
                      store_rejects = true, rejects_table = 'csv_rejects', rejects_scan = 'csv_reject_scans')
    )"""


def _parquet_relation(con: duckdb.DuckDBPyConnection, path: Path, fields: list[str], required: list[str]) -> str:
    src = sql_string(str(path))
    try:
        names = [r[0] for r in con.execute(f"DESCRIBE SELECT * FROM read_parquet({src}, hive_partitioning = false)").fetchall()]
    except duckdb.Error as exc:
        raise LandingFileError(f"{path}: cannot be read as Parquet: {_first_line(exc)}") from None
    missing = [f for f in required if f not in names]
    if missing:
        raise LandingFileError(f"{path}: Parquet file lacks required column(s) {missing}; columns are {names}")
    cols = ", ".join(f"CAST({_q(f)} AS VARCHAR) AS {f}" if f in names else f"NULL::VARCHAR AS {f}" for f in fields)
    struct = ", ".join(f"{sql_string(n)}: {_q(n)}" for n in names if n != "file_row_number")
    return f"""(
        SELECT {src} AS source_file, file_row_number + 1 AS source_line, NULL::VARCHAR AS parse_error,
               to_json({{{struct}}})::VARCHAR AS raw, {cols}
        FROM read_parquet({src}, file_row_number = true, hive_partitioning = false)
    )"""


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


# ---------------------------------------------------------------------------------------------
# Validation rules, as SQL: the first failing rule names the reason
# ---------------------------------------------------------------------------------------------


def _ts(col: str) -> str:
    return f"try_cast({col} AS TIMESTAMPTZ)::TIMESTAMP"


def _validation_sql(kind: str, day: dt.date) -> tuple[list[tuple[str, str]], dict[str, str]]:
    """(ordered list of (condition, reason), typed projections) for ``kind``."""
    latest = dt.datetime.combine(day + dt.timedelta(days=1), dt.time()) + FUTURE_TOLERANCE
    latest_sql = f"TIMESTAMP '{latest.isoformat(sep=' ')}'"
    rules: list[tuple[str, str]] = [("parse_error IS NOT NULL", "parse_error")]
    for f in REQUIRED_FIELDS[kind]:
        rules.append((f"{f} IS NULL OR trim({f}) = ''", f"'missing required field {f}'"))
    rules.append(
        (f"NOT regexp_full_match(lower(trim(email)), '{EMAIL_PATTERN}')", "'invalid email syntax in field email'")
    )

    def ts_rule(col: str, required: bool) -> None:
        guard = "" if required else f"{col} IS NOT NULL AND trim({col}) <> '' AND "
        rules.append((f"{guard}{_ts(col)} IS NULL", f"'{col}: not a valid ISO 8601 timestamp'"))
        rules.append(
            (f"{guard}({_ts(col)} < TIMESTAMP '{MIN_TIMESTAMP.isoformat(sep=' ')}' OR {_ts(col)} > {latest_sql})",
             f"'{col}: timestamp outside the plausible range (2000-01-01 .. end of the landing day)'")
        )

    typed: dict[str, str] = {}
    if kind == "profiles":
        ts_rule("updated_at", True)
        ts_rule("created_at", False)
        rules.append(("dob IS NOT NULL AND trim(dob) <> '' AND try_cast(dob AS DATE) IS NULL", "'dob: not a valid date (YYYY-MM-DD)'"))
        for f in SOURCE_FIELDS[kind]:
            typed[f] = f"nullif(trim({f}), '')"
        typed["email"] = "lower(trim(email))"
        typed["email_raw"] = "email"
        typed["dob"] = "try_cast(nullif(trim(dob), '') AS DATE)"
        typed["created_at"] = _ts("nullif(trim(created_at), '')")
        typed["updated_at"] = _ts("updated_at")
        typed["country"] = "upper(nullif(trim(country), ''))"
    else:
        ts_rule("occurred_at", True)
        types = ", ".join(f"'{t}'" for t in EVENT_TYPES)
        rules.append((f"event_type NOT IN ({types})", f"'event_type: unknown value (expected one of {', '.join(EVENT_TYPES)})'"))
        for num in ("price", "revenue"):
            rules.append(
                (f"{num} IS NOT NULL AND trim({num}) <> '' AND (try_cast({num} AS DOUBLE) IS NULL OR NOT isfinite(try_cast({num} AS DOUBLE)))",
                 f"'{num}: not a number'")
            )
            rules.append((f"try_cast({num} AS DOUBLE) < 0", f"'{num}: negative'"))
            rules.append((f"try_cast({num} AS DOUBLE) >= 1e15", f"'{num}: implausibly large'"))
        rules.append(
            ("quantity IS NOT NULL AND trim(quantity) <> '' AND (try_cast(quantity AS DOUBLE) IS NULL "
             "OR try_cast(quantity AS DOUBLE) <> floor(try_cast(quantity AS DOUBLE)) OR try_cast(quantity AS DOUBLE) < 0 "
             "OR try_cast(quantity AS DOUBLE) > 1000000)",
             "'quantity: not a non-negative integer'")
        )
        for f in SOURCE_FIELDS[kind]:
            typed[f] = f"nullif(trim({f}), '')"
        typed["email"] = "lower(trim(email))"
        typed["event_type"] = "trim(event_type)"
        typed["occurred_at"] = _ts("occurred_at")
        typed["price"] = "try_cast(try_cast(nullif(trim(price), '') AS DOUBLE) AS DECIMAL(18,2))"
        typed["revenue"] = "try_cast(try_cast(nullif(trim(revenue), '') AS DOUBLE) AS DECIMAL(18,2))"
        typed["quantity"] = "try_cast(try_cast(nullif(trim(quantity), '') AS DOUBLE) AS INTEGER)"
    typed["source_file"] = "source_file"
    typed["source_line"] = "source_line"
    return rules, typed


def ingest_day(
    con: duckdb.DuckDBPyConnection,
    warehouse: Warehouse,
    landing_root: str | Path,
    kind: str,
    day: str | dt.date,
) -> IngestReport:
    """Validate every landing file of ``kind`` for ``day`` into the warehouse; return the counts."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    day = as_date(day)
    report = IngestReport(kind=kind, day=day)
    files = landing_files(landing_root, kind, day)
    report.files = [str(f) for f in files]
    fields = SOURCE_FIELDS[kind]
    con.execute("SET TimeZone = 'UTC'")

    parts: list[str] = []
    for path in files:
        fmt = FORMATS[path.suffix.lower()]
        if path.stat().st_size == 0:
            continue  # an empty delivery is valid: no rows
        if fmt == "ndjson":
            rel = _ndjson_relation(path, fields)
            _check_ndjson_readable(con, path, rel)
        elif fmt == "csv":
            rel = _csv_relation(con, path, fields, REQUIRED_FIELDS[kind])
        else:
            rel = _parquet_relation(con, path, fields, REQUIRED_FIELDS[kind])
        parts.append(rel)

    rules, typed = _validation_sql(kind, day)
    reason = "CASE " + " ".join(f"WHEN {cond} THEN {msg}" for cond, msg in rules) + " END"
    source_cols = ", ".join(["source_file", "source_line", "parse_error", "raw", *fields])
    if parts:
        union = " UNION ALL ".join(f"SELECT {source_cols} FROM {p}" for p in parts)
    else:
        union = f"SELECT NULL::VARCHAR AS source_file, NULL::BIGINT AS source_line, NULL::VARCHAR AS parse_error, NULL::VARCHAR AS raw, {', '.join(f'NULL::VARCHAR AS {f}' for f in fields)} LIMIT 0"
    staged = f"staged_{kind}"
    try:
        con.execute(f"CREATE OR REPLACE TEMP TABLE {staged} AS SELECT *, {reason} AS reason FROM ({union})")
        rejected_csv = _csv_rejects(con)
        if rejected_csv:
            _renumber_after_rejects(con, staged, rejected_csv)
    except duckdb.Error as exc:
        names = ", ".join(report.files) or "(no files)"
        raise LandingFileError(f"{kind} for {day}: cannot read landing file(s) {names}: {_first_line(exc)}") from None

    if kind == "events":
        # An event delivered twice (same event_id) is kept once: later copies are quarantined.
        con.execute(f"""
            CREATE OR REPLACE TEMP TABLE {staged} AS
            SELECT * EXCLUDE (dup_rank) REPLACE (
                CASE WHEN dup_rank > 1 THEN 'duplicate event_id (an earlier row of this day has it)'
                     ELSE reason END AS reason)
            FROM (
                SELECT *, CASE WHEN reason IS NULL THEN row_number() OVER (
                    PARTITION BY event_id, reason IS NULL ORDER BY source_file, source_line) END AS dup_rank
                FROM {staged}
            )
        """)

    valid_cols = ", ".join(f"{expr} AS {name}" for name, expr in typed.items() if name in SCHEMAS[f"raw_{kind}"])
    quarantine_sql = (
        f"SELECT source_file, source_line, reason, raw FROM {staged} WHERE reason IS NOT NULL"
        + (f" UNION ALL SELECT source_file, source_line, reason, raw FROM {rejected_csv}" if rejected_csv else "")
    )
    report.rows_valid = warehouse.write_partition(
        con, f"raw_{kind}", day, f"SELECT {valid_cols} FROM {staged} WHERE reason IS NULL"
    )
    report.rows_quarantined = warehouse.write_partition(con, f"quarantine_{kind}", day, quarantine_sql)
    report.rows_read = report.rows_valid + report.rows_quarantined
    report.reasons = dict(
        con.execute(f"SELECT reason, count(*) FROM ({quarantine_sql}) GROUP BY reason ORDER BY 2 DESC, 1").fetchall()
    )
    con.execute(f"DROP TABLE IF EXISTS {staged}")
    return report


def _check_ndjson_readable(con: duckdb.DuckDBPyConnection, path: Path, rel: str) -> None:
    """A file with lines but not one JSON object among them is not NDJSON: fail, naming it."""
    try:
        total, parsed = con.execute(
            f"SELECT count(*), count(*) FILTER (WHERE parse_error IS NULL) FROM {rel}"
        ).fetchall()[0]
    except duckdb.Error as exc:
        raise LandingFileError(f"{path}: cannot be read as NDJSON: {_first_line(exc)}") from None
    if total and not parsed:
        raise LandingFileError(f"{path}: not NDJSON: none of its {total} line(s) is a JSON object")


def _csv_rejects(con: duckdb.DuckDBPyConnection) -> str | None:
    """The CSV reader's rejected rows of this run as quarantine rows, or None if there were none."""
    try:
        n = con.execute("SELECT count(*) FROM csv_rejects").fetchall()[0][0]
    except duckdb.Error:
        return None
    if not n:
        return None
    con.execute("""
        CREATE OR REPLACE TEMP TABLE csv_rejects_q AS
        SELECT DISTINCT ON (s.file_path, e.line) s.file_path AS source_file, e.line::BIGINT AS source_line,
               'unparsable CSV row: ' || e.error_type || ': ' || coalesce(e.error_message, '') AS reason,
               e.csv_line AS raw
        FROM csv_rejects e JOIN csv_reject_scans s USING (scan_id, file_id)
        ORDER BY s.file_path, e.line, e.column_idx  -- one row per rejected line, its first error
    """)
    con.execute("DROP TABLE IF EXISTS csv_rejects")
    con.execute("DROP TABLE IF EXISTS csv_reject_scans")
    return "csv_rejects_q"


def _renumber_after_rejects(con: duckdb.DuckDBPyConnection, staged: str, rejects: str) -> None:
    """CSV rows were numbered by position among accepted rows; shift them past rejected lines.

    (Assumes one physical line per record, which holds unless a quoted field spans lines.)
    """
    for (path,) in con.execute(f"SELECT DISTINCT source_file FROM {rejects}").fetchall():
        con.execute(
            f"""
            UPDATE {staged} SET source_line = m.line
            FROM (
                SELECT l AS line, row_number() OVER (ORDER BY l) + 1 AS position
                FROM range(2, (SELECT count(*) FROM {staged} WHERE source_file = $path)
                              + (SELECT count(*) FROM {rejects} WHERE source_file = $path) + 2) t(l)
                WHERE l NOT IN (SELECT source_line FROM {rejects} WHERE source_file = $path)
            ) m
            WHERE {staged}.source_file = $path AND {staged}.source_line = m.position
            """,
            {"path": path},
        )
