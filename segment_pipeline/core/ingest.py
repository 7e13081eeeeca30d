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
import polars as pl

from segment_pipeline.core.atomic import unique_tag
from segment_pipeline.core.identity import normalize_sql, problem_sql, strip_sql
from segment_pipeline.core.sources import SourceOptions
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
#: Profile attributes a record can clear (an explicit JSON null or empty string; an empty CSV cell or
#: a Parquet null when the source's ``csv_empty_cell`` is ``clear``). Required fields cannot be cleared.
CLEARABLE = [f for f in SOURCE_FIELDS["profiles"] if f not in REQUIRED_FIELDS["profiles"]]
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


def _number_lines(path: Path, target: Path) -> None:
    """Write ``(source_line, raw)`` for every physical line of ``path`` to a Parquet file.

    Polars reads the file in parallel and numbers rows exactly (0x1F never occurs unescaped in
    valid JSON, so no line is split and quotes mean nothing); DuckDB then parses the numbered
    lines in parallel. Invalid UTF-8 bytes become U+FFFD, and such lines are quarantined. Numbering inside DuckDB needs an order-preserving window that serialises
    the whole parse onto one core.
    """
    try:
        (
            pl.scan_csv(path, has_header=False, separator="\x1f", quote_char=None, schema={"raw": pl.String},
                        raise_if_empty=False, encoding="utf8-lossy")
            .with_row_index("source_line", offset=1)
            .sink_parquet(target, compression="lz4")
        )
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise LandingFileError(f"{path}: cannot be read as NDJSON: {_first_line(exc)}") from None


def _ndjson_relation(path: Path, lines: Path, fields: list[str], track_given: bool) -> str:
    # Each line is parsed once, by one json_transform unnested into columns. DuckDB may evaluate an
    # expression on rows a filter or CASE branch excludes, so the parser only ever receives valid
    # input: the line when it is a JSON object, else '{}' (its fields then read as NULL).
    src = f"read_parquet({sql_string(str(lines))})"
    structure = sql_string("{" + ", ".join(f'"{f}": "VARCHAR"' for f in fields) + "}")
    # given: the keys the object has (a key present with null or "" clears that attribute)
    given = "json_keys(CASE WHEN parse_error IS NULL THEN raw ELSE '{}' END)" if track_given else "NULL::VARCHAR[]"
    return f"""(
        SELECT {sql_string(str(path))} AS source_file, source_line, parse_error, raw, {given} AS given,
               unnest(json_transform(CASE WHEN parse_error IS NULL THEN raw ELSE '{{}}' END, {structure}))
        FROM (
            SELECT source_line::BIGINT AS source_line, raw,
                   CASE WHEN contains(raw, '\ufffd') THEN 'line is not valid UTF-8'
                        WHEN NOT json_valid(raw) THEN 'line is not valid JSON'
                        WHEN NOT starts_with(ltrim(raw), '{{') THEN 'line is not a JSON object'
                   END AS parse_error
            FROM {src}
            WHERE raw IS NOT NULL AND trim(raw) <> ''
        )
    )"""


def _given_sql(clearable: list[str], columns: list[str]) -> str:
    """The attributes a tabular file gives in every row: those of ``clearable`` it has a column for."""
    given = [f for f in clearable if f in columns]
    return "[" + ", ".join(sql_string(f) for f in given) + "]::VARCHAR[]" if given else "NULL::VARCHAR[]"


def _csv_relation(
    con: duckdb.DuckDBPyConnection, path: Path, fields: list[str], required: list[str], clearable: list[str]
) -> str:
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
    columns = ", ".join(f"{sql_string(h)}: 'VARCHAR'" for h in header)
    # Rows DuckDB's CSV reader rejects (wrong column count, bad quoting, invalid UTF-8) are kept
    # in its reject tables with their line numbers; they are quarantined, not lost.
    return f"""(
        SELECT {src} AS source_file, row_number() OVER () + 1 AS source_line, NULL::VARCHAR AS parse_error,
               NULL::VARCHAR AS raw, {_given_sql(clearable, header)} AS given, {cols}
        FROM read_csv({src}, {CSV_OPTIONS}, columns = {{{columns}}},
                      store_rejects = true, rejects_table = 'csv_rejects', rejects_scan = 'csv_reject_scans')
    )"""


def _parquet_relation(
    con: duckdb.DuckDBPyConnection, path: Path, fields: list[str], required: list[str], clearable: list[str]
) -> str:
    src = sql_string(str(path))
    try:
        names = [r[0] for r in con.execute(f"DESCRIBE SELECT * FROM read_parquet({src}, hive_partitioning = false)").fetchall()]
    except duckdb.Error as exc:
        raise LandingFileError(f"{path}: cannot be read as Parquet: {_first_line(exc)}") from None
    missing = [f for f in required if f not in names]
    if missing:
        raise LandingFileError(f"{path}: Parquet file lacks required column(s) {missing}; columns are {names}")
    cols = ", ".join(f"CAST({_q(f)} AS VARCHAR) AS {f}" if f in names else f"NULL::VARCHAR AS {f}" for f in fields)
    # raw stays NULL here: a rejected row's fields are rendered as JSON for the quarantine later
    return f"""(
        SELECT {src} AS source_file, file_row_number + 1 AS source_line, NULL::VARCHAR AS parse_error,
               NULL::VARCHAR AS raw, {_given_sql(clearable, names)} AS given, {cols}
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


def _validation_sql(kind: str, day: dt.date) -> tuple[dict[str, str], list[tuple[str, str]], dict[str, str]]:
    """SQL for ``kind``: (values parsed once, ordered (condition, reason) rules, typed output columns).

    The parsed values (``_ts_*``, ``_num_*``) are computed once per row in an inner projection and
    shared by the rules and the typed output; the first rule that matches names the reason.
    """
    latest = dt.datetime.combine(day + dt.timedelta(days=1), dt.time()) + FUTURE_TOLERANCE
    latest_sql = f"TIMESTAMP '{latest.isoformat(sep=' ')}'"
    parsed: dict[str, str] = {}
    rules: list[tuple[str, str]] = [("parse_error IS NOT NULL", "parse_error")]
    for f in REQUIRED_FIELDS[kind]:
        rules.append((f"{f} IS NULL OR {strip_sql(f)} = ''", f"'missing required field {f}'"))
    # one email rule for ingestion and the API (core/identity.py): strip, validate, lowercase
    parsed["_email"] = strip_sql("email")
    parsed["_email_problem"] = problem_sql(strip_sql("email"))
    rules.append(("_email_problem IS NOT NULL", "_email_problem"))

    def ts_rule(col: str, required: bool) -> None:
        parsed[f"_ts_{col}"] = _ts(f"nullif(trim({col}), '')")
        guard = "" if required else f"{col} IS NOT NULL AND trim({col}) <> '' AND "
        rules.append((f"{guard}_ts_{col} IS NULL", f"'{col}: not a valid ISO 8601 timestamp'"))
        rules.append(
            (f"{guard}(_ts_{col} < TIMESTAMP '{MIN_TIMESTAMP.isoformat(sep=' ')}' OR _ts_{col} > {latest_sql})",
             f"'{col}: timestamp outside the plausible range (2000-01-01 .. end of the landing day)'")
        )

    typed: dict[str, str] = {f: f"nullif({strip_sql(f)}, '')" for f in SOURCE_FIELDS[kind]}
    typed["email"] = normalize_sql("_email")
    if kind == "profiles":
        ts_rule("updated_at", True)
        ts_rule("created_at", False)
        parsed["_dob"] = "try_cast(nullif(trim(dob), '') AS DATE)"
        rules.append(("dob IS NOT NULL AND trim(dob) <> '' AND _dob IS NULL", "'dob: not a valid date (YYYY-MM-DD)'"))
        typed["email_raw"] = "email"
        typed["dob"] = "_dob"
        typed["created_at"] = "_ts_created_at"
        typed["updated_at"] = "_ts_updated_at"
        typed["country"] = f"upper({typed['country']})"
        # attributes this record clears: given (key present / column with clearing on) but empty
        cleared = ", ".join(f"CASE WHEN list_contains(given, '{f}') AND {typed[f]} IS NULL THEN '{f}' END" for f in CLEARABLE)
        typed["cleared"] = f"nullif(list_filter([{cleared}], lambda x: x IS NOT NULL), [])"
    else:
        ts_rule("occurred_at", True)
        types = ", ".join(f"'{t}'" for t in EVENT_TYPES)
        rules.append((f"event_type NOT IN ({types})", f"'event_type: unknown value (expected one of {', '.join(EVENT_TYPES)})'"))
        for num in ("price", "revenue"):
            parsed[f"_num_{num}"] = f"try_cast(nullif(trim({num}), '') AS DOUBLE)"
            rules.append(
                (f"{num} IS NOT NULL AND trim({num}) <> '' AND (_num_{num} IS NULL OR NOT isfinite(_num_{num}))",
                 f"'{num}: not a number'")
            )
            rules.append((f"_num_{num} < 0", f"'{num}: negative'"))
            rules.append((f"_num_{num} >= 1e15", f"'{num}: implausibly large'"))
            typed[num] = f"_num_{num}::DECIMAL(18,2)"
        parsed["_num_quantity"] = "try_cast(nullif(trim(quantity), '') AS DOUBLE)"
        rules.append(
            ("quantity IS NOT NULL AND trim(quantity) <> '' AND (_num_quantity IS NULL "
             "OR _num_quantity <> floor(_num_quantity) OR _num_quantity < 0 OR _num_quantity > 1000000)",
             "'quantity: not a non-negative integer'")
        )
        typed["event_type"] = "trim(event_type)"
        typed["occurred_at"] = "_ts_occurred_at"
        typed["quantity"] = "_num_quantity::INTEGER"
    typed["source_file"] = "source_file"
    typed["source_line"] = "source_line"
    return parsed, rules, typed


def ingest_day(
    con: duckdb.DuckDBPyConnection,
    warehouse: Warehouse,
    landing_root: str | Path,
    kind: str,
    day: str | dt.date,
    options: SourceOptions | None = None,
) -> IngestReport:
    """Validate every landing file of ``kind`` for ``day`` into the warehouse; return the counts.

    ``options`` are the source's reading options (``core/sources.py``; defaults when None). For
    profiles, ``options.csv_empty_cell == "clear"`` makes an empty CSV cell or a Parquet null clear
    its attribute (recorded in ``raw_profiles.cleared``); NDJSON clears with an explicit null/"".

    One ordered pass reads, numbers, parses and validates every row into a staging Parquet file
    (typed values, the reason for rejected rows, and their original text); the outputs are then
    written from it with column-pruned scans. Nothing reaches the warehouse until every file has
    been read, so an unreadable file leaves the day's previous partitions as they were.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    day = as_date(day)
    report = IngestReport(kind=kind, day=day)
    files = landing_files(landing_root, kind, day)
    report.files = [str(f) for f in files]
    fields = SOURCE_FIELDS[kind]
    options = options or SourceOptions()
    track_given = kind == "profiles"
    clearable = CLEARABLE if track_given and options.csv_empty_cell == "clear" else []
    con.execute("SET TimeZone = 'UTC'")

    staging_dir = warehouse.staging_dir()  # 0700; names carry the owner, for Warehouse.sweep
    run_id = unique_tag()
    staging = staging_dir / f"{kind}-{day.isoformat()}-{run_id}.parquet"
    temp_files = [staging]
    parts: list[str] = []
    ndjson_files: list[Path] = []
    has_csv = False
    for i, path in enumerate(files):
        fmt = FORMATS[path.suffix.lower()]
        if path.stat().st_size == 0:
            continue  # an empty delivery is valid: no rows
        if fmt == "ndjson":
            lines = staging_dir / f"{kind}-{day.isoformat()}-{run_id}-lines-{i}.parquet"
            temp_files.append(lines)
            try:
                _number_lines(path, lines)
            except LandingFileError:
                _remove(temp_files)
                raise
            parts.append(_ndjson_relation(path, lines, fields, track_given))
            ndjson_files.append(path)
        elif fmt == "csv":
            parts.append(_csv_relation(con, path, fields, REQUIRED_FIELDS[kind], clearable))
            has_csv = True
        else:
            parts.append(_parquet_relation(con, path, fields, REQUIRED_FIELDS[kind], clearable))

    parsed, rules, typed = _validation_sql(kind, day)
    reason = "CASE " + " ".join(f"WHEN {cond} THEN {msg}" for cond, msg in rules) + " END"
    source_cols = ", ".join(["source_file", "source_line", "parse_error", "raw", "given", *fields])
    if parts:
        union = " UNION ALL ".join(f"SELECT {source_cols} FROM {p}" for p in parts)
    else:
        union = f"SELECT NULL::VARCHAR AS source_file, NULL::BIGINT AS source_line, NULL::VARCHAR AS parse_error, NULL::VARCHAR AS raw, NULL::VARCHAR[] AS given, {', '.join(f'NULL::VARCHAR AS {f}' for f in fields)} LIMIT 0"
    outputs = {name: expr for name, expr in typed.items() if name in SCHEMAS[f"raw_{kind}"]}
    # NDJSON keeps a rejected line's original text; CSV and Parquet rows are rendered as JSON
    source_json = "to_json({" + ", ".join(f"'{f}': {f}" for f in fields) + "})::VARCHAR"
    staged_sql = f"""
        SELECT {', '.join(f'{expr} AS {name}' for name, expr in outputs.items())},
               reason, parse_error,
               CASE WHEN reason IS NOT NULL THEN coalesce(raw, {source_json}) END AS raw
        FROM (SELECT *, {reason} AS reason
              FROM (SELECT *, {', '.join(f'{expr} AS {name}' for name, expr in parsed.items())} FROM ({union})))
    """
    try:
        # CSV rows are numbered by position (an order-preserving scan); NDJSON and Parquet rows
        # carry their line numbers already, so their parse runs in parallel, in any order.
        con.execute(f"SET preserve_insertion_order = {'true' if has_csv else 'false'}")
        try:
            con.execute(f"COPY ({staged_sql}) TO {sql_string(str(staging))} (FORMAT parquet, COMPRESSION lz4)")
        except duckdb.Error as exc:
            names = ", ".join(report.files) or "(no files)"
            raise LandingFileError(f"{kind} for {day}: cannot read landing file(s) {names}: {_first_line(exc)}") from None
        staged = f"read_parquet({sql_string(str(staging))})"
        _check_ndjson_readable(con, staged, ndjson_files)
        rejected_csv = _csv_rejects(con)
        line = "s.source_line"
        joins = ""
        if rejected_csv:
            _renumber_after_rejects(con, staged, rejected_csv)
            joins += " LEFT JOIN csv_line_map lm ON lm.source_file = s.source_file AND lm.position = s.source_line"
            line = "coalesce(lm.line, s.source_line)"
        duplicate = "FALSE"
        if kind == "events":
            # An event delivered twice (same event_id) is kept once: later copies are quarantined.
            con.execute(f"""
                CREATE OR REPLACE TEMP TABLE dup_events AS
                SELECT event_id, min((source_file, source_line)) AS first
                FROM {staged} WHERE reason IS NULL GROUP BY event_id HAVING count(*) > 1
            """)
            joins += " LEFT JOIN dup_events d ON d.event_id = s.event_id"
            duplicate = "(d.event_id IS NOT NULL AND (s.source_file, s.source_line) <> d.first)"
        columns = ", ".join(f"s.{c}" if c != "source_line" else f"{line} AS source_line" for c in outputs)
        as_json = "to_json({" + ", ".join(f"'{f}': s.{f}" for f in fields if f in outputs) + "})::VARCHAR"
        quarantine_sql = f"""
            SELECT s.source_file, {line} AS source_line,
                   CASE WHEN s.reason IS NOT NULL THEN s.reason
                        ELSE 'duplicate event_id (an earlier row of this day has it)' END AS reason,
                   coalesce(s.raw, {as_json}) AS raw
            FROM {staged} s {joins} WHERE s.reason IS NOT NULL OR {duplicate}
        """ + (f" UNION ALL SELECT source_file, source_line, reason, raw FROM {rejected_csv}" if rejected_csv else "")
        report.rows_valid = warehouse.write_partition(
            con, f"raw_{kind}", day, f"SELECT {columns} FROM {staged} s {joins} WHERE s.reason IS NULL AND NOT {duplicate}"
        )
        report.rows_quarantined = warehouse.write_partition(con, f"quarantine_{kind}", day, quarantine_sql)
        report.rows_read = report.rows_valid + report.rows_quarantined
        report.reasons = dict(con.execute(
            f"SELECT reason, count(*) FROM {warehouse.scan(f'quarantine_{kind}', days=[day])} "
            "GROUP BY reason ORDER BY 2 DESC, 1"
        ).fetchall())
    finally:
        _remove(temp_files)
        for table in ("dup_events", "csv_line_map", "csv_rejects_q"):
            con.execute(f"DROP TABLE IF EXISTS {table}")
    return report


def _remove(paths: list[Path]) -> None:
    for path in paths:
        path.unlink(missing_ok=True)


def _check_ndjson_readable(con: duckdb.DuckDBPyConnection, staged: str, files: list[Path]) -> None:
    """A file with lines but not one JSON object among them is not NDJSON: fail, naming it."""
    if not files:
        return
    counts = dict(
        (f, (total, ok))
        for f, total, ok in con.execute(
            f"SELECT source_file, count(*), count(*) FILTER (WHERE parse_error IS NULL) FROM {staged} GROUP BY ALL"
        ).fetchall()
    )
    for path in files:
        total, ok = counts.get(str(path), (0, 0))
        if total and not ok:
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
    """CSV rows are numbered by position among accepted rows; map positions past rejected lines.

    Builds ``csv_line_map(source_file, position, line)`` for the files that had rejected lines.
    (Assumes one physical line per record, which holds unless a quoted field spans lines.)
    """
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE csv_line_map AS
        WITH files AS (
            SELECT source_file,
                   (SELECT count(*) FROM {staged} s WHERE s.source_file = r.source_file) + count(*) AS total
            FROM {rejects} r GROUP BY source_file
        )
        SELECT f.source_file, row_number() OVER (PARTITION BY f.source_file ORDER BY l) + 1 AS position, l AS line
        FROM files f, LATERAL (SELECT unnest(range(2, f.total + 2)) AS l) lines
        WHERE l NOT IN (SELECT source_line FROM {rejects} r WHERE r.source_file = f.source_file)
    """)
