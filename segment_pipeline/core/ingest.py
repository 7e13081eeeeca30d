"""Raw ingestion: landing files of one day -> validated rows + quarantined rows.

Landing layout: ``<landing>/<kind>/date=YYYY-MM-DD/<any name>.ndjson|.json|.jsonl|.csv|.parquet``
with ``kind`` in ``profiles`` / ``events``; the text formats may also be compressed (``.gz``,
``.zst``, e.g. ``part-1.ndjson.gz``). Several files per day are fine (late or split deliveries);
hidden files and names ending in ``.tmp``/``.part`` are ignored as still being written.

Text files (NDJSON, CSV) are read in their source's declared encoding (``encoding`` in the sources
file, default UTF-8; a byte-order mark wins). Anything other than plain, valid UTF-8 is first
decompressed and transcoded, streaming, into a UTF-8 staging copy: transcoding keeps every line
break, so line numbers are the same as in the decompressed original. Bytes that are not valid in
the encoding become U+FFFD and quarantine their line (NDJSON) or row (CSV), wherever they are.

Every row read ends in exactly one place: the validated table (``raw_<kind>``) or the quarantine
(``quarantine_<kind>``) with the reason, the source file and the line (1-based physical line for
NDJSON, the physical line where the record starts for CSV, 1-based row number for Parquet). Every
typed value (timestamps, dates, money, quantities) is converted with a guarded try-conversion: a
value that does not parse or does not fit its column type quarantines its row with a reason naming
the field. A file that cannot be read at all (not NDJSON, corrupt Parquet or archive, CSV without
the required columns) fails the whole day with an error naming the file, before anything is
written. Both outputs are replaced atomically, so re-running a day never appends twice.
"""

from __future__ import annotations

import codecs
import csv
import datetime as dt
import gzip
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import polars as pl

from segment_pipeline import settings
from segment_pipeline.core.atomic import unique_tag
from segment_pipeline.core.identity import normalize_sql, problem_sql, strip_sql
from segment_pipeline.core.sources import SourceOptions, source_options
from segment_pipeline.core.warehouse import SCHEMAS, Warehouse, as_date, sql_string

KINDS = ("profiles", "events")
TEXT_FORMATS = {".ndjson": "ndjson", ".jsonl": "ndjson", ".json": "ndjson", ".csv": "csv"}
FORMATS = {**TEXT_FORMATS, ".parquet": "parquet"}
#: Compressed text deliveries: ``<name>.<text format>.<compression suffix>``, read transparently.
COMPRESSIONS = {".gz": "gzip", ".zst": "zstd"}
#: Byte-order marks, longest first (a UTF-32 LE mark starts like a UTF-16 LE one); the codec named
#: here consumes the mark itself.
BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"), (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16"),
)
#: Bytes read (and decompressed or transcoded) at a time: files are streamed, never held whole.
CHUNK_BYTES = 1 << 22
#: Raw control characters that are never valid in a JSON text (tab and CR are whitespace between
#: tokens, so a line holding only those is judged by the JSON parser alone), as an RE2 class.
JSON_CONTROL_CHARS = r"[\x00-\x08\x0b\x0c\x0e-\x1f]"
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
#: Timestamps must fall in this range (catches 'infinity', epoch zeros and typos like 20261); the
#: upper end is the end of the landing day (UTC) plus the source's ``timestamp_tolerance_hours``.
MIN_TIMESTAMP = dt.datetime(2000, 1, 1)
#: Birth dates must fall between this date and the landing day.
MIN_DOB = dt.date(1900, 1, 1)
#: Largest plausible money amount (exclusive) and quantity; DECIMAL(18,2) itself ends below 1e16.
MAX_MONEY = 1e15
MAX_QUANTITY = 1_000_000


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


def file_format(name: str) -> tuple[str, str | None] | None:
    """``(format, compression)`` of a landing file name, or None when it is not a supported type.

    ``events.ndjson`` -> ``("ndjson", None)``; ``events.csv.gz`` -> ``("csv", "gzip")``;
    ``p.jsonl.zst`` -> ``("ndjson", "zstd")``. Parquet is compressed internally, never wrapped.
    """
    lower = name.lower()
    for ext, compression in COMPRESSIONS.items():
        if lower.endswith(ext):
            inner = Path(lower[: -len(ext)]).suffix
            return (TEXT_FORMATS[inner], compression) if inner in TEXT_FORMATS else None
    suffix = Path(lower).suffix
    return (FORMATS[suffix], None) if suffix in FORMATS else None


SUPPORTED_TYPES = sorted(FORMATS) + sorted(t + c for t in TEXT_FORMATS for c in COMPRESSIONS)


def landing_files(landing_root: str | Path, kind: str, day: str | dt.date) -> list[Path]:
    folder = Path(landing_root) / kind / f"date={as_date(day).isoformat()}"
    if not folder.is_dir():
        return []
    files = []
    for path in sorted(folder.iterdir()):
        if not path.is_file() or path.name.startswith(".") or path.name.endswith(IGNORED_SUFFIXES):
            continue
        if file_format(path.name) is None:
            raise LandingFileError(
                f"{path}: unsupported landing file type {''.join(path.suffixes[-2:])!r}; "
                f"expected one of {SUPPORTED_TYPES}"
            )
        files.append(path)
    return files


# ---------------------------------------------------------------------------------------------
# Text files: decompress and transcode to UTF-8 when needed, keeping every line break
# ---------------------------------------------------------------------------------------------


@dataclass
class TextFile:
    """A text landing file ready to read: ``read_path`` is plain UTF-8 (the file itself or a staging
    copy); ``encoding`` is the codec it was decoded with; ``lossy`` says bytes invalid in that
    encoding were replaced by U+FFFD (their lines are quarantined); ``lines`` is its number of
    physical lines (line feeds, plus a last line without one)."""

    path: Path
    read_path: Path
    encoding: str
    lossy: bool = False
    lines: int = 0

    @property
    def encoding_label(self) -> str:
        return {"utf-8-sig": "UTF-8", "utf-8": "UTF-8", "utf-16": "UTF-16", "utf-32": "UTF-32"}.get(
            self.encoding, self.encoding
        )


def _raw_chunks(path: Path, compression: str | None) -> Iterator[bytes]:
    """The (decompressed) bytes of ``path`` in chunks; a corrupt or truncated archive raises
    :class:`LandingFileError` naming the file."""
    try:
        if compression == "gzip":
            with gzip.open(path, "rb") as fh:  # concatenated members are read as one stream
                while chunk := fh.read(CHUNK_BYTES):
                    yield chunk
        elif compression == "zstd":
            yield from _zstd_chunks(path)
        else:
            with path.open("rb") as fh:
                while chunk := fh.read(CHUNK_BYTES):
                    yield chunk
    except (EOFError, OSError, zlib.error) as exc:
        raise LandingFileError(f"{path}: corrupt or truncated {compression} file: {_first_line(exc)}") from None


def _zstd_chunks(path: Path) -> Iterator[bytes]:
    """Decompress every zstd frame of ``path``; a frame cut short raises ``EOFError`` (the stream
    reader of the ``zstandard`` package would silently return the truncated data)."""
    import zstandard

    decompressor = zstandard.ZstdDecompressor()
    frame, fed = decompressor.decompressobj(), False
    try:
        with path.open("rb") as fh:
            pending = b""
            while data := pending or fh.read(CHUNK_BYTES):
                pending = b""
                out = frame.decompress(data)
                fed = True
                if out:
                    yield out
                if frame.eof:  # next frame (or trailing garbage, which the next frame rejects)
                    pending = frame.unused_data
                    frame, fed = decompressor.decompressobj(), False
    except zstandard.ZstdError as exc:
        raise OSError(f"not a valid zstd stream: {exc}") from None
    if fed and not frame.eof:
        raise EOFError("compressed file ended before the end of its last zstd frame")


def _detect_encoding(head: bytes, declared: str) -> tuple[str, bool]:
    """(codec, has a byte-order mark) for a file starting with ``head``: a BOM wins."""
    for mark, codec in BOMS:
        if head.startswith(mark):
            return codec, True
    return declared, False


def _prepare_text(path: Path, compression: str | None, declared: str, target: Path, check_utf8: bool = True) -> TextFile:
    """Make ``path`` readable as plain UTF-8, streaming; ``target`` receives a transcoded copy when
    the file is compressed, has a BOM, declares another encoding or is not valid UTF-8.

    With ``check_utf8=False`` a plain file declared UTF-8 is taken as it is, unread (the caller's
    reader then finds invalid bytes itself, and asks again with ``check_utf8=True``); its ``lines``
    stay 0.
    """
    chunks = _raw_chunks(path, compression)
    head = b""
    for chunk in chunks:  # at least 4 bytes (or the whole text) to see a byte-order mark
        head += chunk
        if len(head) >= 4:
            break
    encoding, bom = _detect_encoding(head, codecs.lookup(declared).name)
    lines = _LineCounter()
    if compression is None and not bom and encoding == "utf-8" and not check_utf8:
        return TextFile(path, path, "utf-8")
    if compression is None and not bom and encoding == "utf-8":
        decoder = codecs.getincrementaldecoder("utf-8")("strict")
        try:
            for chunk in _chain(head, chunks):
                lines.add(chunk)
                if not chunk.isascii():
                    decoder.decode(chunk)
            decoder.decode(b"", final=True)
            return TextFile(path, path, "utf-8", lines=lines.total)
        except UnicodeDecodeError:
            chunks = _raw_chunks(path, None)  # start over, replacing the invalid bytes
            head, lines = b"", _LineCounter()
    decoder = codecs.getincrementaldecoder(encoding)("replace")
    lossy = False
    with target.open("wb") as out:
        for chunk in _chain(head, chunks):
            text = decoder.decode(chunk)
            lossy = lossy or "\ufffd" in text
            out.write(data := text.encode("utf-8", "replace"))
            lines.add(data)
        text = decoder.decode(b"", final=True)
        lossy = lossy or "\ufffd" in text
        out.write(data := text.encode("utf-8", "replace"))
        lines.add(data)
    return TextFile(path, target, encoding, lossy, lines.total)


class _LineCounter:
    """Counts physical lines of a byte stream fed in chunks."""

    def __init__(self) -> None:
        self.feeds = 0
        self.last = b"\n"

    def add(self, chunk: bytes) -> None:
        if chunk:
            self.feeds += chunk.count(b"\n")
            self.last = chunk[-1:]

    @property
    def total(self) -> int:
        return self.feeds + (self.last != b"\n")


def _chain(head: bytes, rest: Iterator[bytes]) -> Iterator[bytes]:
    if head:
        yield head
    yield from rest


# ---------------------------------------------------------------------------------------------
# Reading each format into one shape: (source_file, source_line, parse_error, raw, <fields as text>)
# ---------------------------------------------------------------------------------------------


class _NotUtf8(Exception):
    """The file given to :func:`_number_lines` as UTF-8 is not valid UTF-8."""


def _number_lines(text: TextFile, target: Path) -> None:
    """Write ``(source_line, raw)`` for every physical line of a prepared NDJSON file to Parquet.

    Polars reads the (valid UTF-8) file in parallel, splitting on line feeds only (a trailing CR is
    dropped) and numbering lines exactly; DuckDB then parses the numbered lines in parallel.
    Numbering inside DuckDB needs an order-preserving window that serialises the whole parse onto
    one core.
    """
    try:
        (
            pl.scan_lines(text.read_path, name="raw", row_index_name="source_line", row_index_offset=1)
            .sink_parquet(target, compression="lz4")
        )
    except (pl.exceptions.PolarsError, OSError) as exc:
        if text.read_path == text.path and "utf8" in str(exc).lower().replace("-", ""):
            raise _NotUtf8 from None
        raise LandingFileError(f"{text.path}: cannot be read as NDJSON: {_first_line(exc)}") from None


def _ndjson_relation(text: TextFile, lines: Path, fields: list[str], track_given: bool) -> str:
    # Each line is parsed once, by one json_transform unnested into columns. DuckDB may evaluate an
    # expression on rows a filter or CASE branch excludes, so the parser only ever receives valid
    # input: the line when it is a JSON object, else '{}' (its fields then read as NULL).
    src = f"read_parquet({sql_string(str(lines))})"
    structure = sql_string("{" + ", ".join(f'"{f}": "VARCHAR"' for f in fields) + "}")
    invalid_text = (
        f"WHEN contains(raw, '\ufffd') THEN {sql_string(f'line is not valid {text.encoding_label}')}"
        if text.lossy else ""
    )
    # A key given twice would be resolved silently (the parser keeps the first): such a line is
    # quarantined. Every line with a repeated key has more keys than distinct known keys present,
    # and those more than non-null known fields; each test is costlier than the one before and
    # runs only on the lines that pass it, so clean lines skip the exact count of distinct keys.
    non_null = " + ".join(f"({f} IS NOT NULL)::INTEGER" for f in fields)
    paths = "[" + ", ".join(sql_string(f'$."{f}"') for f in fields) + "]"
    # given: the keys the object has (a key present with null or "" clears that attribute)
    given = "keys" if track_given else "NULL::VARCHAR[]"
    return f"""(
        SELECT {sql_string(str(text.path))} AS source_file, source_line, raw, {given} AS given, {', '.join(fields)},
               CASE WHEN parse_error IS NULL AND n_keys > {non_null}
                         AND n_keys > list_count(list_filter(json_exists(obj, {paths}), lambda x: x))
                         AND list_unique(keys) < n_keys
                    THEN 'invalid JSON: duplicate key "'
                         || list_filter(keys, lambda k, i: list_position(keys, k) < i)[1] || '"'
                    ELSE parse_error END AS parse_error
        FROM (
            SELECT source_line, parse_error, raw, obj, keys, len(keys) AS n_keys,
                   unnest(json_transform(obj, {structure}))
            FROM (
                SELECT *, json_keys(obj) AS keys
                FROM (SELECT *, CASE WHEN parse_error IS NULL THEN raw ELSE '{{}}' END AS obj
                FROM (
                    SELECT source_line::BIGINT AS source_line, raw,
                           CASE {invalid_text}
                                WHEN NOT json_valid(raw) THEN
                                    CASE WHEN regexp_matches(raw, '{JSON_CONTROL_CHARS}')
                                         THEN 'invalid JSON: control character'
                                         ELSE 'line is not valid JSON' END
                                WHEN NOT starts_with(ltrim(raw, ' \t\r'), '{{') THEN 'line is not a JSON object'
                           END AS parse_error
                    FROM {src}
                    WHERE raw IS NOT NULL AND trim(raw) <> ''
                ))
            )
        )
    )"""


def _csv_record_lines(text: TextFile, target: Path) -> None:
    """Write ``(record, line, blank)`` to Parquet: the physical line on which each CSV record starts.

    ``record`` counts records as DuckDB's CSV reader numbers them in its reject table (1 = the
    header; a blank line counts as a record that holds no row). Python's CSV reader follows the
    same RFC 4180 rules (quote and escape ``"``; a quote inside an unquoted field is a character)
    and says how many physical lines each record took; the file is streamed, the map written in
    batches. Only needed for a file whose records do not all take exactly one line.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema([("record", pa.int64()), ("line", pa.int64()), ("blank", pa.bool_())])
    _allow_long_csv_fields()
    try:
        with text.read_path.open(newline="", encoding="utf-8") as fh, pq.ParquetWriter(target, schema) as out:
            reader = csv.reader(fh, strict=False)
            batch: dict[str, list] = {"record": [], "line": [], "blank": []}
            start = 1
            for record, row in enumerate(reader, start=1):
                batch["record"].append(record)
                batch["line"].append(start)
                batch["blank"].append(not row)
                start = reader.line_num + 1
                if len(batch["record"]) >= 100_000:
                    out.write_table(pa.table(batch, schema=schema))
                    batch = {k: [] for k in batch}
            out.write_table(pa.table(batch, schema=schema))
    except (csv.Error, UnicodeDecodeError, OSError) as exc:
        raise LandingFileError(f"{text.path}: cannot be read as CSV: {_first_line(exc)}") from None


def _allow_long_csv_fields() -> None:
    """Python's CSV reader refuses fields over 128 KiB by default; DuckDB's reader has no such limit."""
    if csv.field_size_limit() < 1 << 30:
        csv.field_size_limit(1 << 30)


def _given_sql(clearable: list[str], columns: list[str]) -> str:
    """The attributes a tabular file gives in every row: those of ``clearable`` it has a column for."""
    given = [f for f in clearable if f in columns]
    return "[" + ", ".join(sql_string(f) for f in given) + "]::VARCHAR[]" if given else "NULL::VARCHAR[]"


def _csv_relation(text: TextFile, fields: list[str], required: list[str], clearable: list[str]) -> str:
    path, src = text.path, sql_string(str(text.read_path))
    _allow_long_csv_fields()
    try:
        with text.read_path.open(newline="", encoding="utf-8-sig") as fh:
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
    parse_error = "NULL::VARCHAR"
    if text.lossy:  # any cell, kept or not, with a byte invalid in the file's encoding
        # the reason names the first column holding such a byte
        parse_error = "CASE " + " ".join(
            f"WHEN contains({_q(h)}, '\ufffd') THEN {sql_string(f'{h}: not valid {text.encoding_label}')}"
            for h in header) + " END"
    # Rows are numbered by position here (an order-preserving scan) and, when some record of the
    # file spans lines or a line is blank, mapped after the scan to the physical line where their
    # record starts (see _csv_record_lines). Rows DuckDB's CSV reader
    # rejects (wrong column count, bad quoting) are kept in its reject tables with their record
    # number; they are quarantined, not lost.
    return f"""(
        SELECT {sql_string(str(path))} AS source_file, row_number() OVER () + 1 AS source_line,
               {parse_error} AS parse_error, NULL::VARCHAR AS raw, {_given_sql(clearable, header)} AS given, {cols}
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
    # Guarded twice: a text that is no timestamp, and one whose UTC value does not fit TIMESTAMP.
    return f"try_cast(try_cast({col} AS TIMESTAMPTZ) AS TIMESTAMP)"


def _given(col: str) -> str:
    return f"{col} IS NOT NULL AND trim({col}) <> ''"


def _validation_sql(
    kind: str, day: dt.date, tolerance_hours: float = 15.0
) -> tuple[dict[str, str], list[tuple[str, str]], dict[str, str]]:
    """SQL for ``kind``: (values parsed once, ordered (condition, reason) rules, typed output columns).

    The parsed values (``_ts_*``, ``_num_*``, ``_dec_*``, ``_int_*``) are computed once per row in an
    inner projection and shared by the rules and the typed output; the first rule that matches
    names the reason. Every conversion to a typed column is a try-conversion guarded by a rule, so
    a value that does not fit (``1e400``, a price of ``1e20`` in DECIMAL(18,2), a quantity of
    ``1e30`` in INTEGER, a year 30000 timestamp) quarantines its row naming the field instead of
    failing the day. Timestamps later than the end of the landing day (UTC) plus
    ``tolerance_hours`` are implausible.
    """
    latest = dt.datetime.combine(day + dt.timedelta(days=1), dt.time()) + dt.timedelta(hours=tolerance_hours)
    latest_sql = f"TIMESTAMP '{latest.isoformat(sep=' ')}'"
    parsed: dict[str, str] = {}
    rules: list[tuple[str, str]] = [("parse_error IS NOT NULL", "parse_error")]
    for f in REQUIRED_FIELDS[kind]:
        rules.append((f"{f} IS NULL OR _s_{f} = ''", f"'missing required field {f}'"))
    # one email rule for ingestion and the API (core/identity.py): strip, validate, lowercase
    # every field's stripped text ``_s_<field>`` is computed once, one projection below these values
    # (see ingest_day): the rules and typed columns refer to it instead of repeating the strip
    # expression (a long one) in each of their tests, which made planning a day cost ~0.3 s
    parsed["_email_problem"] = problem_sql("_s_email")
    rules.append(("_email_problem IS NOT NULL", "_email_problem"))

    def ts_rule(col: str, required: bool) -> None:
        parsed[f"_ts_{col}"] = _ts(f"nullif(trim({col}), '')")
        guard = "" if required else f"{_given(col)} AND "
        rules.append((f"{guard}_ts_{col} IS NULL", f"'{col}: not a valid ISO 8601 timestamp'"))
        rules.append(
            (f"{guard}(_ts_{col} < TIMESTAMP '{MIN_TIMESTAMP.isoformat(sep=' ')}' OR _ts_{col} > {latest_sql})",
             f"'{col}: timestamp outside the plausible range (2000-01-01 .. end of the landing day (UTC) "
             f"+ timestamp_tolerance_hours {tolerance_hours:g} h)'")
        )

    typed: dict[str, str] = {f: f"nullif(_s_{f}, '')" for f in SOURCE_FIELDS[kind]}
    typed["email"] = normalize_sql("_s_email")
    if kind == "profiles":
        ts_rule("updated_at", True)
        ts_rule("created_at", False)
        parsed["_dob"] = "try_cast(nullif(trim(dob), '') AS DATE)"
        rules.append((f"{_given('dob')} AND _dob IS NULL", "'dob: not a valid date (YYYY-MM-DD)'"))
        # a date DuckDB parses may still be no birth date (year 99999 even breaks Python readers)
        rules.append(
            (f"_dob < DATE '{MIN_DOB.isoformat()}' OR _dob > DATE '{day.isoformat()}'",
             f"'dob: outside the plausible range ({MIN_DOB.isoformat()} .. the landing day)'")
        )
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
            value = f"nullif(trim({num}), '')"
            parsed[f"_num_{num}"] = f"try_cast({value} AS DOUBLE)"
            parsed[f"_dec_{num}"] = f"try_cast({value} AS DECIMAL(18,2))"  # exact, rounded to cents
            # NaN, Infinity, 'abc': not a number; 1e400 (no finite DOUBLE) and 1e20: do not fit
            rules.append(
                (f"{_given(num)} AND (_num_{num} IS NULL OR (NOT isfinite(_num_{num}) "
                 f"AND NOT regexp_matches({num}, '[0-9]')))",
                 f"'{num}: not a number'")
            )
            rules.append((f"{_given(num)} AND _num_{num} < 0", f"'{num}: negative'"))
            rules.append((f"{_given(num)} AND _dec_{num} IS NULL", f"'{num}: does not fit DECIMAL(18,2)'"))
            rules.append((f"_dec_{num} >= {MAX_MONEY:.0f}", f"'{num}: implausibly large (at least {MAX_MONEY:.0e})'"))
            typed[num] = f"_dec_{num}"
        parsed["_num_quantity"] = "try_cast(nullif(trim(quantity), '') AS DOUBLE)"
        parsed["_int_quantity"] = "try_cast(_num_quantity AS INTEGER)"
        rules.append(
            (f"{_given('quantity')} AND (_num_quantity IS NULL OR NOT isfinite(_num_quantity) "
             "OR _num_quantity <> floor(_num_quantity) OR _num_quantity < 0)",
             "'quantity: not a non-negative integer'")
        )
        rules.append((f"{_given('quantity')} AND _int_quantity IS NULL", "'quantity: does not fit INTEGER'"))
        rules.append((f"_int_quantity > {MAX_QUANTITY}", f"'quantity: implausibly large (over {MAX_QUANTITY})'"))
        typed["event_type"] = "trim(event_type)"
        typed["occurred_at"] = "_ts_occurred_at"
        typed["quantity"] = "_int_quantity"
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

    ``options`` are the source's reading options (encoding, timestamp tolerance, empty CSV cells); by
    default they are read from the sources file (``settings.sources_file()``), the landing folder
    ``kind`` being the source name. For profiles, an explicit NDJSON ``null``/``""`` clears its
    attribute, and so does an empty CSV cell or a Parquet null when ``options.csv_empty_cell`` is
    ``clear`` (recorded in ``raw_profiles.cleared``). One ordered pass reads, numbers, parses and validates every row into a staging
    Parquet file (typed values, the reason for rejected rows, and their original text); the outputs
    are then written from it with column-pruned scans. Nothing reaches the warehouse until every
    file has been read, so an unreadable file leaves the day's previous partitions as they were.
    Raises :class:`LandingFileError` naming the file when one cannot be read at all.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    day = as_date(day)
    if options is None:
        options = source_options(settings.sources_file(), kind)
    report = IngestReport(kind=kind, day=day)
    files = landing_files(landing_root, kind, day)
    report.files = [str(f) for f in files]
    fields = SOURCE_FIELDS[kind]
    track_given = kind == "profiles"
    clearable = CLEARABLE if track_given and options.csv_empty_cell == "clear" else []
    con.execute("SET TimeZone = 'UTC'")

    staging_dir = warehouse.staging_dir()  # 0700; names carry the owner, for Warehouse.sweep
    run_id = unique_tag()
    staging = staging_dir / f"{kind}-{day.isoformat()}-{run_id}.parquet"
    temp_files = [staging]
    parts: list[str] = []
    ndjson_files: list[Path] = []
    csv_files: list[TextFile] = []
    try:
        for i, path in enumerate(files):
            fmt, compression = file_format(path.name) or ("", None)
            if path.stat().st_size == 0:
                continue  # an empty delivery is valid: no rows
            if fmt == "parquet":
                parts.append(_parquet_relation(con, path, fields, REQUIRED_FIELDS[kind], clearable))
                continue
            # names built whole: the run id holds dots (its owner tag), so no Path.with_suffix here
            copy = staging_dir / f"{kind}-{day.isoformat()}-{run_id}-{i}.utf8"
            lines = staging_dir / f"{kind}-{day.isoformat()}-{run_id}-{i}.lines.parquet"
            temp_files.append(copy)
            # NDJSON: Polars checks UTF-8 as it numbers the lines, so a plain file is not read twice
            text = _prepare_text(path, compression, options.encoding, copy,
                                 check_utf8=fmt == "csv")
            if text.read_path.stat().st_size == 0:
                continue  # an empty (compressed) delivery
            if fmt == "ndjson":
                temp_files.append(lines)
                try:
                    _number_lines(text, lines)
                except _NotUtf8:  # number a copy with the invalid bytes replaced
                    text = _prepare_text(path, compression, options.encoding, copy)
                    _number_lines(text, lines)
                parts.append(_ndjson_relation(text, lines, fields, track_given))
                ndjson_files.append(path)
            else:
                parts.append(_csv_relation(text, fields, REQUIRED_FIELDS[kind], clearable))
                csv_files.append(text)
    except BaseException:
        _remove(temp_files)
        raise
    has_csv = bool(csv_files)

    parsed, rules, typed = _validation_sql(kind, day, options.timestamp_tolerance_hours)
    stripped = ", ".join(f"{strip_sql(f)} AS _s_{f}" for f in fields)
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
              FROM (SELECT *, {', '.join(f'{expr} AS {name}' for name, expr in parsed.items())}
                    FROM (SELECT *, {stripped} FROM ({union}))))
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
        line = "s.source_line"
        joins = ""
        rejected_csv = None
        if csv_files:
            maps = _csv_record_maps(con, staged, csv_files, staging_dir / f"{kind}-{day.isoformat()}-{run_id}",
                                    temp_files)
            rejected_csv = _csv_rejects(con, maps)
            if maps:
                _csv_line_map(con, maps, rejected_csv)
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
        for table in ("dup_events", "csv_line_map", "csv_rejects_q", "csv_rejects", "csv_reject_scans"):
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


def _csv_record_maps(
    con: duckdb.DuckDBPyConnection, staged: str, csv_files: list[TextFile], stem: Path, temp_files: list[Path]
) -> list[tuple[TextFile, Path]]:
    """Record start lines for the CSV files that need them. In a file with as many records as lines,
    record n is on line n: rows need a map only when rejected records sit between them, and that
    map is the identity. A file with fewer records than lines (a field over several lines, or a
    blank line) is read once more for the lines each record took. In every other file a row's
    position + 1 already is its physical line."""
    accepted = dict(con.execute(f"SELECT source_file, count(*) FROM {staged} GROUP BY ALL").fetchall())
    try:
        rejected = dict(con.execute(
            "SELECT s.file_path, count(DISTINCT e.line) FROM csv_rejects e JOIN csv_reject_scans s "
            "USING (scan_id, file_id) GROUP BY ALL"
        ).fetchall())
    except duckdb.Error:
        rejected = {}
    maps = []
    for i, text in enumerate(csv_files):
        n_rejected = rejected.get(str(text.read_path), 0)
        records = 1 + accepted.get(str(text.path), 0) + n_rejected
        if records == text.lines and not n_rejected:
            continue
        target = stem.with_name(f"{stem.name}-records-{i}.parquet")
        temp_files.append(target)
        if records == text.lines:
            con.execute(f"COPY (SELECT r AS record, r AS line, false AS blank FROM range(1, {records + 1}) t(r)) "
                        f"TO {sql_string(str(target))} (FORMAT parquet)")
        else:
            _csv_record_lines(text, target)
        maps.append((text, target))
    return maps


def _csv_rejects(con: duckdb.DuckDBPyConnection, maps: list[tuple[TextFile, Path]]) -> str | None:
    """The CSV reader's rejected rows of this run as quarantine rows, or None if there were none.

    Their ``source_line`` is the physical line where the rejected record starts; ``source_file``
    the landing file (not the UTF-8 staging copy the reader may have read).
    """
    try:
        n = con.execute("SELECT count(*) FROM csv_rejects").fetchall()[0][0]
    except duckdb.Error:
        return None
    if not n:
        return None
    records = " UNION ALL ".join(
        ["SELECT NULL::VARCHAR AS read_path, NULL::VARCHAR AS source_file, NULL::BIGINT AS record, "
         "NULL::BIGINT AS line WHERE false"]
        + [f"SELECT {sql_string(str(t.read_path))}, {sql_string(str(t.path))}, record, line "
           f"FROM read_parquet({sql_string(str(m))})" for t, m in maps]
    )
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE csv_rejects_q AS
        SELECT DISTINCT ON (s.file_path, e.line) coalesce(r.source_file, s.file_path) AS source_file,
               coalesce(r.line, e.line)::BIGINT AS source_line,
               'unparsable CSV row: ' || e.error_type || ': ' || coalesce(e.error_message, '') AS reason,
               e.csv_line AS raw, e.line::BIGINT AS record
        FROM csv_rejects e JOIN csv_reject_scans s USING (scan_id, file_id)
        LEFT JOIN ({records}) r ON r.read_path = s.file_path AND r.record = e.line
        ORDER BY s.file_path, e.line, e.column_idx  -- one row per rejected record, its first error
    """)
    con.execute("DROP TABLE IF EXISTS csv_rejects")
    con.execute("DROP TABLE IF EXISTS csv_reject_scans")
    return "(SELECT source_file, source_line, reason, raw FROM csv_rejects_q)"


def _csv_line_map(con: duckdb.DuckDBPyConnection, maps: list[tuple[TextFile, Path]], rejects: str | None) -> None:
    """Build ``csv_line_map(source_file, position, line)``: the physical start line of the row the
    CSV reader accepted at ``position`` (its rank + 1, the line when every record is one line),
    from the record start lines minus the header, blank lines and rejected records."""
    records = " UNION ALL ".join(
        f"SELECT {sql_string(str(t.path))} AS source_file, record, line, blank FROM read_parquet({sql_string(str(m))})"
        for t, m in maps
    )
    rejected = "SELECT source_file, record FROM csv_rejects_q" if rejects else \
        "SELECT NULL::VARCHAR AS source_file, NULL::BIGINT AS record LIMIT 0"
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE csv_line_map AS
        SELECT source_file, row_number() OVER (PARTITION BY source_file ORDER BY record) + 1 AS position, line
        FROM ({records}) r
        WHERE record > 1 AND NOT blank
          AND NOT EXISTS (SELECT 1 FROM ({rejected}) x WHERE x.source_file = r.source_file AND x.record = r.record)
    """)
