"""Raw ingestion: landing files of one day, of every source of a kind -> validated rows in the data
model's columns + quarantined rows.

Landing layout: ``<landing>/<source>/date=YYYY-MM-DD/<any name>.ndjson|.json|.jsonl|.csv|.parquet``,
one folder per source of the sources file (:mod:`segment_pipeline.core.sources`); the text formats
may also be compressed (``.gz``, ``.zst``, e.g. ``part-1.ndjson.gz``). Several files per day are
fine (late or split deliveries); hidden files and names ending in ``.tmp``/``.part`` are ignored as
still being written. ``profiles`` ingestion reads every ``profiles`` and ``stream`` source into
``raw_profiles``, ``events`` ingestion every ``events`` and ``stream`` source into ``raw_events``;
each record goes through its source's mapping (:mod:`segment_pipeline.core.mapping`): the text of
each model field is extracted per file format (a column, a JSON key or path), then typed and
checked in one SQL pass. Columns no mapping reads are kept as JSON (``custom_attributes`` /
``properties``) and counted; records with only a linked id are attributed through
:mod:`segment_pipeline.core.links`.

Text files (NDJSON, CSV) are read in their source's declared encoding (``encoding`` in the sources
file, default UTF-8; a byte-order mark wins). Anything other than plain, valid UTF-8 is first
decompressed and transcoded, streaming, into a UTF-8 staging copy: transcoding keeps every line
break, so line numbers are the same as in the decompressed original. Bytes that are not valid in
the encoding become U+FFFD and quarantine their line (NDJSON) or row (CSV), wherever they are.

Every row read ends in exactly one place: the validated table (``raw_<kind>``) or the quarantine
(``quarantine_<kind>``) with the reason, the source file and the line (1-based physical line for
NDJSON, the physical line where the record starts for CSV, 1-based row number for Parquet); a
``stream`` source's line lands in the profiles tables when it is a profile message (``identify``),
else in the events tables (unparsable lines too). Every
typed value (timestamps, dates, numbers, money, booleans, lists) is converted with a guarded
try-conversion: a value that does not parse, does not fit its column type or falls outside the
model's bounds quarantines its row with a reason naming the field. A file that cannot be read at
all (not NDJSON, corrupt Parquet or archive, a CSV/Parquet file without a mapped column) fails the
whole day with an error naming the file, before anything is
written. Both outputs are replaced atomically, so re-running a day never appends twice.
"""

from __future__ import annotations

import codecs
import csv
import datetime as dt
import gzip
import json
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import polars as pl

from segment_pipeline import settings
from segment_pipeline.core.atomic import unique_tag
from segment_pipeline.core.identity import strip_sql
from segment_pipeline.core.links import (
    UNRESOLVED,
    day_links_sql,
    late_link_sql,
    later_links_sql,
    links_as_of,
    links_with_day,
    resolution_sql,
    wanted_ids_sql,
    write_links,
)
from segment_pipeline.core.mapping import MappingError, SourcePlan, Target, build_plan, json_path, typing_sql
from segment_pipeline.core.privacy.tombstones import DELETED_IDENTITY, tombstone_filter
from segment_pipeline.core.sources import (
    CsvOptions,
    Source,
    SourceOptions,
    SourcesFile,
    SourcesFileError,
    load_sources,
    sources_of_kind,
)
from segment_pipeline.core.warehouse import Warehouse, as_date, sql_string
from segment_pipeline.core.warehouse import sql_ident as _q

__all__ = ["IngestReport", "LandingFileError", "SourceOptions", "ingest_day", "landing_files"]

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
#: Rows per row group of the numbered-lines and staging Parquet files. DuckDB scans a Parquet file
#: in parallel by row group: one large group (a day's lines, up to hundreds of thousands) is
#: parsed and validated by a single thread, small ones by every thread.
SCRATCH_ROW_GROUP = 4096


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
    #: source -> {rows_valid, rows_quarantined}
    sources: dict[str, dict[str, int]] = field(default_factory=dict)
    #: source -> {column or key kept as JSON (custom_attributes / properties): rows giving it}
    unmapped: dict[str, dict[str, int]] = field(default_factory=dict)
    #: source -> {column the source ``ignore``s: rows that had it}
    ignored: dict[str, dict[str, int]] = field(default_factory=dict)
    #: landing folders with files for this day that no source declares (not read)
    unsourced_folders: list[str] = field(default_factory=list)
    #: rows quarantined as ``unresolved identity`` (a linked id linked to no email)
    unresolved: int = 0
    #: rows attributed through a link that landed on a later day (core/links.py, "Late links")
    resolved_by_later_links: int = 0
    #: rows of a forgotten identity (a tombstone of core/privacy/ledger.py), quarantined with its hash only
    deleted_identity: int = 0

    @property
    def quarantine_ratio(self) -> float:
        return self.rows_quarantined / self.rows_read if self.rows_read else 0.0


def file_format(name: str, declared: str = "auto") -> tuple[str, str | None] | None:
    """``(format, compression)`` of a landing file name, or None when it is not a supported type.

    ``events.ndjson`` -> ``("ndjson", None)``; ``events.csv.gz`` -> ``("csv", "gzip")``;
    ``p.jsonl.zst`` -> ``("ndjson", "zstd")``. Parquet is compressed internally, never wrapped.
    A source's declared format (not ``auto``) wins over the name (``export.txt`` as ``csv``); the
    compression still comes from the name.
    """
    lower = name.lower()
    if declared != "auto":
        compression = next((c for ext, c in COMPRESSIONS.items() if lower.endswith(ext)), None)
        return declared, (None if declared == "parquet" else compression)
    for ext, compression in COMPRESSIONS.items():
        if lower.endswith(ext):
            inner = Path(lower[: -len(ext)]).suffix
            return (TEXT_FORMATS[inner], compression) if inner in TEXT_FORMATS else None
    suffix = Path(lower).suffix
    return (FORMATS[suffix], None) if suffix in FORMATS else None


SUPPORTED_TYPES = sorted(FORMATS) + sorted(t + c for t in TEXT_FORMATS for c in COMPRESSIONS)


def landing_files(landing_root: str | Path, source: str, day: str | dt.date, declared: str = "auto") -> list[Path]:
    """The files of source folder ``source`` for ``day``, sorted; a file of an unsupported type fails."""
    folder = Path(landing_root) / source / f"date={as_date(day).isoformat()}"
    if not folder.is_dir():
        return []
    files = []
    for path in sorted(folder.iterdir()):
        if not path.is_file() or path.name.startswith(".") or path.name.endswith(IGNORED_SUFFIXES):
            continue
        if file_format(path.name, declared) is None:
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
    csv_options: CsvOptions | None = None

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
# Reading each format into one shape: (source_file, source_line, parse_error, raw, given, _extra,
# _props, _ignored, <each target's text>)
# ---------------------------------------------------------------------------------------------


class _NotUtf8(Exception):
    """The file given to :func:`_number_lines` as UTF-8 is not valid UTF-8."""


def _number_lines(text: TextFile, target: Path, containing: list[str] | None = None) -> None:
    """Write ``(source_line, raw)`` for every physical line of a prepared NDJSON file to Parquet.

    Polars reads the (valid UTF-8) file in parallel, splitting on line feeds only (a trailing CR is
    dropped) and numbering lines exactly; DuckDB then parses the numbered lines in parallel.
    Numbering inside DuckDB needs an order-preserving window that serialises the whole parse onto
    one core.

    ``containing``: keep only the lines holding at least one of these literal strings (numbered as
    before: a line keeps its physical line number). Used as an exact pre-filter, never as the rule
    (see :func:`_stream_prefilter`).
    """
    lines = pl.scan_lines(text.read_path, name="raw", row_index_name="source_line", row_index_offset=1)
    if containing:
        lines = lines.filter(pl.col("raw").str.contains_any(containing))
    try:
        lines.sink_parquet(target, compression="lz4", row_group_size=SCRATCH_ROW_GROUP)
    except (pl.exceptions.PolarsError, OSError) as exc:
        if text.read_path == text.path and "utf8" in str(exc).lower().replace("-", ""):
            raise _NotUtf8 from None
        raise LandingFileError(f"{text.path}: cannot be read as NDJSON: {_first_line(exc)}") from None


def _stream_prefilter(plan: SourcePlan) -> list[str] | None:
    """Literal strings of which a stream's profile-message line must hold one, or None (no filter).

    The profiles side of a ``stream`` source reads only valid JSON lines whose message type is one
    of the profile types (``identify``): such a line holds that type's text verbatim, or else spells
    some character of it as a JSON escape (``\\u0069dentify``) and then holds a backslash. Lines
    with neither can only land on the events side, so the profiles step does not parse them at all
    (about four in five lines of a Segment stream); the message-type test after the parse stays
    the rule. The events side reads every line (unparsable lines land there).
    """
    mt = plan.source.message_type
    if plan.kind != "profiles" or mt is None or not mt.profiles or any(not t for t in mt.profiles):
        return None
    return [*mt.profiles, "\\"]


def _target_columns(plan: SourcePlan) -> list[str]:
    return [t.name for t in plan.targets]


def _sql_list(values: list[str]) -> str:
    return "[" + ", ".join(sql_string(v) for v in values) + "]::VARCHAR[]"


def _ndjson_text(t: Target, nested: set[str] = frozenset(), within: tuple[str, str] | None = None,
                 sub: tuple[str, str] | None = None) -> str:
    """SQL: the text of target ``t`` in a JSON line (``_js``: the top-level keys as text; ``_jp``:
    the nested paths in ``nested`` as text, see :func:`_nested_structure`; ``obj``: the object).

    ``within``: ``(path, column)``, a column holding the JSON text of the object at ``path`` (NULL
    when that value is not an object): list paths (``[*]``) below ``path`` are read from it, a small
    object, instead of parsing the whole line again (the same values: a path below a value that is
    not an object gives nothing either way).

    ``sub``: ``(key, column)``, a struct read from the JSON text of the object at top-level ``key``
    (see :func:`_ndjson_relation`): the nested paths below ``key`` are read from it."""
    fm = t.fmap
    if fm is None:
        return "NULL::VARCHAR"
    if fm.constant is not None:
        return sql_string(fm.constant)
    if fm.column is not None:
        return f"_js[{sql_string(fm.column)}]"
    exprs = []
    for p in fm.paths():
        if "." not in p and "[" not in p:
            exprs.append(f"_js[{sql_string(p)}]")
        elif p in nested and sub is not None and p.startswith(sub[0] + "."):
            exprs.append(sub[1] + "".join(f"[{sql_string(k)}]" for k in p[len(sub[0]) + 1:].split(".")))
        elif p in nested:
            exprs.append("_jp" + "".join(f"[{sql_string(k)}]" for k in p.split(".")))
        elif "[*]" in p and within is not None and p.startswith(within[0] + "."):
            below = p[len(within[0]) + 1:]
            rest = sql_string(json_path(below))
            value = f"nullif(to_json(json_extract_string(coalesce({within[1]}, '{{}}'), {rest}))::VARCHAR, '[]')"
            exprs.append(_when_key_written(within[1], below.split(".")[0].removesuffix("[*]"), value))
        elif "[*]" in p:
            exprs.append(f"nullif(to_json(json_extract_string(obj, {sql_string(json_path(p))}))::VARCHAR, '[]')")
        else:
            exprs.append(f"json_extract_string(obj, {sql_string(json_path(p))})")
    return exprs[0] if len(exprs) == 1 else f"coalesce({', '.join(exprs)})"


def _when_key_written(column: str, key: str, value: str) -> str:
    """SQL: ``value`` (a path below ``key`` read from the JSON text in ``column``) only where that
    text holds the key as written, else NULL (what the path gives on an object without the key).

    The text is DuckDB's own rendering of an object (``json_extract``), which writes a plain key
    (no quote, backslash or control character) as itself between quotes, however the line spelled
    it: an object without that text has no such key, and most lines are read no further (a list
    path such as ``products[*].brand`` is read on the few events that carry ``products``). Other
    keys are read on every line.
    """
    if not key or any(c in key for c in '"\\') or any(ord(c) < 0x20 or c in "\u2028\u2029" for c in key):
        return value
    return f"CASE WHEN contains({column}, {sql_string(json.dumps(key, ensure_ascii=False))}) THEN {value} END"


def _nested_structure(plan: SourcePlan) -> tuple[dict, set[str]]:
    """(``json_transform`` structure as a dict, the dotted paths it reads) for the targets' nested
    JSON paths.

    One ``json_transform`` of the line into nested structs reads every ``a.b.c`` path at once (the
    text of a value, as ``json_extract_string`` gives it: NULL when a step is missing or not an
    object), instead of one parse of the line per path. Paths with list steps (``[*]``), and paths
    whose step names clash in a DuckDB struct (names equal ignoring case, or a path that is also
    another path's prefix), keep their own ``json_extract_string``.
    """
    tree: dict = {}
    covered: set[str] = set()
    paths = dict.fromkeys(p for t in plan.targets if t.fmap is not None and t.fmap.constant is None
                          and t.fmap.column is None for p in t.fmap.paths() if "." in p and "[" not in p)
    for path in paths:
        steps = path.split(".")
        node: dict | None = tree
        for i, key in enumerate(steps):
            leaf = i == len(steps) - 1
            if not key or any(k != key and k.lower() == key.lower() for k in node):
                node = None
            elif leaf:
                node = None if key in node else node
            elif node.get(key) == "VARCHAR":
                node = None
            else:
                node = node.get(key, {})
            if node is None:
                break
        if node is None:
            continue
        node = tree
        for key in steps[:-1]:
            node = node.setdefault(key, {})
        node[steps[-1]] = "VARCHAR"
        covered.add(path)
    return tree, covered


def _removal_patch(keys: list[str]) -> str:
    """SQL: a JSON merge patch (RFC 7396) removing ``keys`` from an object (each set to null)."""
    return sql_string(json.dumps(dict.fromkeys(keys), ensure_ascii=False))


#: Lines sampled from the start of an NDJSON file for its common unread keys (see _common_unread_keys).
UNREAD_SAMPLE_LINES = 1000
#: At most this many common unread keys are read along with the mapped keys.
MAX_COMMON_UNREAD = 16


def _common_unread_keys(con: duckdb.DuckDBPyConnection, lines: Path, plan: SourcePlan) -> list[str]:
    """The keys no mapping reads that the first lines of a numbered NDJSON file give most often
    (e.g. a Segment ``anonymousId`` when the model has no such link), at most
    :data:`MAX_COMMON_UNREAD`: :func:`_ndjson_relation` reads their values in its parse of the
    mapped keys, so a line whose unread keys are all among them needs no further pass. A sample,
    not a rule: other lines are read the general way, with the same result."""
    known = {*plan.read_keys(), *plan.other_keys, *plan.source.ignore}
    rows = con.execute(f"""
        SELECT k FROM (
            SELECT unnest(json_keys(raw)) AS k
            FROM (SELECT raw FROM read_parquet({sql_string(str(lines))}) LIMIT {UNREAD_SAMPLE_LINES})
            WHERE starts_with(raw, '{{') AND json_valid(raw) AND json_type(raw) = 'OBJECT')
        GROUP BY k ORDER BY count(*) DESC, k
    """).fetchall()
    names = [k for (k,) in rows if k not in known]
    taken: list[str] = []
    # one struct holds them and the mapped keys: no two names that DuckDB would take as one
    folded = {k.lower() for k in known}
    for k in names:
        if k and k.lower() not in folded and len(taken) < MAX_COMMON_UNREAD:
            taken.append(k)
            folded.add(k.lower())
    return taken


def _ndjson_relation(text: TextFile, lines: Path, plan: SourcePlan, track_given: bool,
                     common_unread: list[str] = ()) -> str:
    # Each line is parsed once, by one json_transform of the keys the mapping reads. DuckDB may
    # evaluate an expression on rows a filter or CASE branch excludes, so the parser only ever
    # receives valid input: the line when it is a JSON object, else '{}' (its fields then read as NULL).
    src = f"read_parquet({sql_string(str(lines))})"
    keys = plan.read_keys()
    known = list(dict.fromkeys([*keys, *plan.other_keys, *plan.source.ignore]))
    tree, nested = _nested_structure(plan)
    # top-level keys read only through nested paths (traits, context, properties) are not taken
    # as text: that would write out their whole subtree on every line; _jp has them
    direct = {k for t in plan.targets if t.fmap is not None and t.fmap.constant is None
              for k in ([t.fmap.column] if t.fmap.column is not None else t.fmap.paths()) if "." not in k and "[" not in k}
    via_jp = {p.split(".")[0] for p in nested} - direct
    js_keys = [k for k in keys if k not in via_jp]
    # the common unread keys (JSON text of their values) are read in the same parse
    common = [k for k in common_unread if k not in known]
    members: dict = {**dict.fromkeys(js_keys, "VARCHAR"), **dict.fromkeys(common, "JSON")}
    folded = {k.lower() for k in members}
    # One parse of the line: the nested paths' structure joins the top-level keys' (when no two
    # names are one to DuckDB). A single top-level object path (a stream's properties) is read as
    # its JSON text, the small object the paths below it are then read from (_pp), not as a
    # subtree of the line: the line is parsed once, not again for that object.
    merged = not any(k.lower() in folded for k in tree)
    pkey = plan.object_paths[0] if len(plan.object_paths) == 1 else None
    if pkey is not None and ("." in pkey or "[" in pkey or pkey in direct or not merged or pkey.lower() in folded
                             or any(k != pkey and k.lower() == pkey.lower() for k in tree)):
        pkey = None
    sub_tree = None
    if merged:
        if pkey is not None:
            sub_tree = tree.pop(pkey, None)
        members.update(tree)
        if pkey is not None:
            members[pkey] = "JSON"
        tree = {}
    structure = sql_string(json.dumps(members)) if members else None
    invalid_text = (
        f"WHEN contains(raw, '\ufffd') THEN {sql_string(f'line is not valid {text.encoding_label}')}"
        if text.lossy else ""
    )
    # A key given twice would be resolved silently (the parser keeps the first): such a line is
    # quarantined. Every line with a repeated key (or a key the mapping does not read) has more
    # keys than distinct known keys present, and those more than non-null known fields; each test
    # is costlier than the one before and runs only on the lines that pass it. The last test reads
    # the unread keys (the merge patch below removes every occurrence of each known key and keeps
    # the others as given): a line repeats a key exactly when it has more keys than its distinct
    # known keys plus its unread ones, or its unread keys repeat one, so the costly comparison of
    # all keys runs only on the lines with two or more unread keys (a Segment line has its many
    # known keys and few unread ones).
    # the distinct known keys a line has, from its key list (the parser's decoded names)
    n_known = " + ".join(f"list_contains(keys, {sql_string(k)})::INTEGER" for k in known) or "0"
    given = "keys" if track_given else "NULL::VARCHAR[]"
    duplicate = ("'invalid JSON: duplicate key \"' "
                 "|| list_filter(keys, lambda k, i: list_position(keys, k) < i)[1] || '\"'")
    # with one object path (a stream's properties), its object feeds the list paths below it
    within = (plan.object_paths[0], "_props_obj") if len(plan.object_paths) == 1 and \
        "[" not in plan.object_paths[0] else None
    sub = (pkey, "_pp") if sub_tree else None
    texts = ", ".join(f"{_ndjson_text(t, nested, within, sub)} AS {t.sql_name}" for t in plan.targets)
    # the unread keys: the object without the known ones (a merge patch setting them to null
    # removes them; one parse, not a conversion of every value to JSON)
    # A line whose unread keys are all common ones (see _common_unread_keys) writes that object from
    # its key list and the values its parse read: the same text (the same JSON writer), in the same
    # order, without a second pass over the line.
    extra = (
        "CASE WHEN parse_error IS NULL AND n_keys > _n_known THEN "
        f"json_merge_patch(obj, {_removal_patch(known)})::VARCHAR END"
    )
    n_unread = "coalesce(len(json_keys(_unread)), 0)"
    if common:
        known_list = _sql_list(known) if known else "[]::VARCHAR[]"
        unread = f"list_filter(keys, lambda k: NOT list_contains({known_list}, k))"
        values = "[" + ", ".join(f"coalesce(_js[{sql_string(k)}]::VARCHAR, 'null')" for k in common) + "]"
        common_list = _sql_list(common)
        # A line with exactly one unread key, a common one (a Segment anonymousId), writes it
        # without listing its keys: that key's name and value
        n_common = " + ".join(f"list_contains(keys, {sql_string(k)})::INTEGER" for k in common)
        single = "CASE " + " ".join(
            f"WHEN list_contains(keys, {sql_string(k)}) THEN '{{' || to_json({sql_string(k)})::VARCHAR || ':' || "
            f"coalesce(_js[{sql_string(k)}]::VARCHAR, 'null') || '}}'" for k in common) + " END"
        n_unread = f"CASE WHEN _single THEN 1 ELSE {n_unread} END"
        extra = (
            "CASE WHEN parse_error IS NULL AND n_keys > _n_known THEN "
            f"CASE WHEN _single THEN {single} WHEN list_has_all({common_list}, {unread}) THEN "
            f"'{{' || array_to_string(list_transform({unread}, lambda k: to_json(k)::VARCHAR || ':' || "
            f"{values}[list_position({common_list}, k)]), ',') || '}}' "
            f"ELSE json_merge_patch(obj, {_removal_patch(known)})::VARCHAR END END"
        )
    props = "NULL::VARCHAR"
    if pkey is not None:  # its text from the one parse (a JSON text starts with '{' exactly when it is an object)
        value = f"_js[{sql_string(pkey)}]::VARCHAR"
        props = f"CASE WHEN starts_with({value}, '{{') THEN {value} END"
    elif plan.object_paths and not any("[" in path for path in plan.object_paths):
        # the first path holding an object, from one extraction of every path (a JSON text starts
        # with '{' exactly when it is an object)
        listed = ", ".join(sql_string(json_path(path)) for path in plan.object_paths)
        props = f"list_filter(json_extract(obj, [{listed}])::VARCHAR[], lambda x: starts_with(x, '{{'))[1]"
    elif plan.object_paths:
        objects = []
        for path in plan.object_paths:
            jp = sql_string(json_path(path))
            objects.append(f"CASE WHEN json_type(obj, {jp}) = 'OBJECT' THEN json_extract(obj, {jp})::VARCHAR END")
        props = objects[0] if len(objects) == 1 else f"coalesce({', '.join(objects)})"
    ignored = (f"list_filter(keys, lambda k: list_contains({_sql_list(plan.source.ignore)}, k))"
               if plan.source.ignore else "NULL::VARCHAR[]")
    js = f"json_transform(obj, {structure})" if structure else "NULL::STRUCT(x VARCHAR)"
    # A stream's line feeds one kind, by its message type: the other kind's lines are dropped here,
    # right after the first parse, so only this kind's lines are read further (the same test as
    # the WHERE of _plan_select, which stays the rule). A profile message with a key given twice
    # is unparsable, so it lands on the events side: the events side keeps those too (the
    # profiles side drops them after its own duplicate-key test).
    kind_filter = ""
    mt = plan.source.message_type
    if mt is not None:
        mtype = strip_sql(f"_js[{sql_string(mt.column)}]")
        listed = ", ".join(sql_string(t) for t in mt.profiles)
        kind_filter = (f"WHERE parse_error IS NULL AND {mtype} IN ({listed})" if plan.kind == "profiles" else
                       f"WHERE parse_error IS NOT NULL OR {mtype} IS NULL OR {mtype} NOT IN ({listed}) "
                       "OR list_unique(keys) < n_keys")
    jp = ("_js" if merged else
          f"json_transform(obj, {sql_string(json.dumps(tree))})" if tree else "NULL::STRUCT(x VARCHAR)")
    pp = f"json_transform(_props_obj, {sql_string(json.dumps(sub_tree))})" if sub_tree else "NULL::STRUCT(x VARCHAR)"
    single = f"n_keys = _n_known + 1 AND {n_common} = 1" if common else "FALSE"
    return f"""(
        SELECT {sql_string(str(text.path))} AS source_file, source_line, raw, {given} AS given,
               nullif(_unread, '{{}}') AS _extra, _props_obj AS _props, {ignored} AS _ignored, {texts},
               CASE WHEN _unread IS NULL THEN parse_error
                    WHEN n_keys > _n_known + n_unread THEN {duplicate}
                    WHEN n_unread < 2 THEN parse_error
                    WHEN list_unique(json_keys(_unread)) < n_unread THEN {duplicate}
                    ELSE parse_error END AS parse_error
        FROM (
          SELECT *, {n_unread} AS n_unread
          FROM (
            SELECT *, {extra} AS _unread, {pp} AS _pp
            FROM (
            SELECT *, {single} AS _single, {props} AS _props_obj
            FROM (
                SELECT *, {n_known} AS _n_known
                FROM (SELECT *, {jp} AS _jp FROM (
                    SELECT source_line, parse_error, raw, obj, keys, len(keys) AS n_keys, {js} AS _js
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
                            WHERE raw IS NOT NULL AND (starts_with(raw, '{{') OR trim(raw) <> '')
                        ))
                    )
                ) {kind_filter})
            )
            )
          )
        )
    )"""


def _csv_record_lines(text: TextFile, target: Path, options: CsvOptions | None = None) -> None:
    """Write ``(record, line, blank)`` to Parquet: the physical line on which each CSV record starts.

    ``record`` counts records as DuckDB's CSV reader numbers them in its reject table (1 = the
    header; a blank line counts as a record that holds no row). Python's CSV reader follows the
    same RFC 4180 rules (quote and escape ``"``; a quote inside an unquoted field is a character)
    and says how many physical lines each record took; the file is streamed, the map written in
    batches. Only needed for a file whose records do not all take exactly one line.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    options = options or CsvOptions()
    schema = pa.schema([("record", pa.int64()), ("line", pa.int64()), ("blank", pa.bool_())])
    _allow_long_csv_fields()
    try:
        with text.read_path.open(newline="", encoding="utf-8") as fh, pq.ParquetWriter(target, schema) as out:
            reader = csv.reader(fh, strict=False, delimiter=options.delimiter, quotechar=options.quote,
                                escapechar=options.escape, doublequote=options.escape is None)
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


def _tabular_texts(path: Path, plan: SourcePlan, header: list[str], cell) -> tuple[str, list[str]]:
    """(SQL of each target's text, the header columns read) for a CSV/Parquet file; a column the
    mapping names explicitly that the file lacks fails the file, naming file and column."""
    exprs, used = [], []
    for t in plan.targets:
        fm = t.fmap
        if fm is None:
            exprs.append(f"NULL::VARCHAR AS {t.sql_name}")
            continue
        if fm.constant is not None:
            exprs.append(f"{sql_string(fm.constant)} AS {t.sql_name}")
            continue
        options = []
        for name in ([fm.column] if fm.column is not None else fm.paths()):
            if name in header:
                options.append(cell(name))
                used.append(name)
                continue
            top = name.split(".")[0].split("[")[0]
            if fm.column is None and top in header:  # a JSON text column, e.g. properties
                rest = name[len(top):].lstrip(".")
                col = cell(top)
                valid = f"CASE WHEN json_valid({col}) THEN {col} ELSE '{{}}' END"
                jp = sql_string(json_path(rest) if rest and not rest.startswith("[") else "$" + rest)
                options.append(f"to_json(json_extract_string({valid}, {jp}))::VARCHAR" if "[*]" in name
                               else f"json_extract_string({valid}, {jp})")
                used.append(top)
        if not options:
            if t.explicit or t.name in (plan.source.required or ()):
                wanted = fm.column if fm.column is not None else " or ".join(fm.paths())
                raise LandingFileError(
                    f"{path}: lacks the column {wanted!r} that source {plan.name!r} maps to {t.name}; "
                    f"columns are {header}")
            exprs.append(f"NULL::VARCHAR AS {t.sql_name}")
        else:
            exprs.append(f"{options[0] if len(options) == 1 else 'coalesce(' + ', '.join(options) + ')'} AS {t.sql_name}")
    return ", ".join(exprs), used


def _tabular_extra(plan: SourcePlan, header: list[str], used: list[str], cell) -> tuple[str, str]:
    """(SQL of ``_extra``: a JSON object of the columns the mapping does not read, NULL when all are
    empty; SQL of ``_ignored``: the ``ignore``d columns the file has)."""
    ignored = [h for h in header if h in plan.source.ignore]
    rest = [h for h in header if h not in used and h not in ignored and h not in plan.other_keys]
    ignored_sql = _sql_list(ignored) if ignored else "NULL::VARCHAR[]"
    if not rest:
        return "NULL::VARCHAR", ignored_sql
    members = ", ".join(f"{sql_string(h)}: nullif({cell(h)}, '')" for h in rest)
    return f"nullif(json_merge_patch('{{}}', to_json({{{members}}}))::VARCHAR, '{{}}')", ignored_sql


def _csv_options(options: CsvOptions) -> str:
    escape = options.escape or options.quote
    return (
        f"header = true, all_varchar = true, delim = {sql_string(options.delimiter)}, "
        f"quote = {sql_string(options.quote)}, escape = {sql_string(escape)}, "
        "auto_detect = false, hive_partitioning = false, null_padding = false"
    )


def _csv_relation(text: TextFile, plan: SourcePlan, clearable: bool) -> str:
    path, src = text.path, sql_string(str(text.read_path))
    options = plan.source.csv
    _allow_long_csv_fields()
    try:
        with text.read_path.open(newline="", encoding="utf-8-sig") as fh:
            header = next(csv.reader(fh, delimiter=options.delimiter, quotechar=options.quote,
                                     escapechar=options.escape, doublequote=options.escape is None), [])
    except (UnicodeDecodeError, csv.Error) as exc:
        raise LandingFileError(f"{path}: cannot be read as CSV: {exc}") from None
    if len(set(header)) != len(header) or any(not h for h in header):
        raise LandingFileError(f"{path}: CSV header has empty or repeated column names: {header}")
    texts, used = _tabular_texts(path, plan, header, _q)
    extra, ignored = _tabular_extra(plan, header, used, _q)
    columns = ", ".join(f"{sql_string(h)}: 'VARCHAR'" for h in header)
    parse_error = "NULL::VARCHAR"
    if text.lossy:  # any cell, kept or not, with a byte invalid in the file's encoding
        # the reason names the first column holding such a byte (its model field when mapped)
        names = {}
        for t in plan.targets:
            if t.fmap is not None and t.fmap.column is not None:
                names.setdefault(t.fmap.column, t.name)
        parse_error = "CASE " + " ".join(
            f"WHEN contains({_q(h)}, '\ufffd') THEN {sql_string(f'{names.get(h, h)}: not valid {text.encoding_label}')}"
            for h in header) + " END"
    given = _sql_list(header) if clearable else "NULL::VARCHAR[]"
    # Rows are numbered by position here (an order-preserving scan) and, when some record of the
    # file spans lines or a line is blank, mapped after the scan to the physical line where their
    # record starts (see _csv_record_lines). Rows DuckDB's CSV reader
    # rejects (wrong column count, bad quoting) are kept in its reject tables with their record
    # number; they are quarantined, not lost.
    return f"""(
        SELECT {sql_string(str(path))} AS source_file, row_number() OVER () + 1 AS source_line,
               {parse_error} AS parse_error, NULL::VARCHAR AS raw, {given} AS given,
               {extra} AS _extra, NULL::VARCHAR AS _props, {ignored} AS _ignored, {texts}
        FROM read_csv({src}, {_csv_options(options)}, columns = {{{columns}}},
                      store_rejects = true, rejects_table = 'csv_rejects', rejects_scan = 'csv_reject_scans')
    )"""


def _parquet_relation(con: duckdb.DuckDBPyConnection, path: Path, plan: SourcePlan, clearable: bool) -> str:
    src = sql_string(str(path))
    try:
        described = con.execute(f"DESCRIBE SELECT * FROM read_parquet({src}, hive_partitioning = false)").fetchall()
    except duckdb.Error as exc:
        raise LandingFileError(f"{path}: cannot be read as Parquet: {_first_line(exc)}") from None
    names = [r[0] for r in described]
    nested = {r[0] for r in described if r[1].endswith("]") or r[1].startswith(("STRUCT", "MAP", "JSON"))}

    def cell(name: str) -> str:
        # lists, structs and maps as JSON text (a list column feeds a list[string] field; a struct a path)
        return f"to_json({_q(name)})::VARCHAR" if name in nested else f"CAST({_q(name)} AS VARCHAR)"

    texts, used = _tabular_texts(path, plan, names, cell)
    extra, ignored = _tabular_extra(plan, names, used, cell)
    given = _sql_list(names) if clearable else "NULL::VARCHAR[]"
    # raw stays NULL here: a rejected row's fields are rendered as JSON for the quarantine later
    return f"""(
        SELECT {src} AS source_file, file_row_number + 1 AS source_line, NULL::VARCHAR AS parse_error,
               NULL::VARCHAR AS raw, {given} AS given, {extra} AS _extra, NULL::VARCHAR AS _props,
               {ignored} AS _ignored, {texts}
        FROM read_parquet({src}, file_row_number = true, hive_partitioning = false)
    )"""


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


# ---------------------------------------------------------------------------------------------
# One day of one kind: every source feeding it, into one partition
# ---------------------------------------------------------------------------------------------


def day_sources(kind: str, options: Source | SourcesFile | dict[str, Source] | None = None) -> dict[str, Source]:
    """The sources whose records ``kind`` (``profiles``/``events``) ingests.

    ``options``: a :class:`SourcesFile` or ``{name: Source}`` (those feeding ``kind`` are taken), a
    single :class:`Source` (read as the source named ``kind``), or None: the sources file of the
    settings; when it declares none for ``kind``, the folder named ``kind`` with the default mapping.
    """
    if isinstance(options, Source):
        return {kind: options}
    if options is None:
        declared = load_sources(settings.sources_file())
    elif isinstance(options, SourcesFile):
        declared = options
    else:
        declared = SourcesFile(sources=dict(options))
    chosen = sources_of_kind(declared, kind)
    if not chosen and not declared.sources:
        chosen = {kind: Source(kind=kind)}
    return chosen


def unsourced_folders(landing_root: str | Path, declared: Iterable[str], day: dt.date | None = None) -> list[str]:
    """Landing folders no source declares (that hold a ``date=`` folder, of ``day`` when given)."""
    root = Path(landing_root)
    if not root.is_dir():
        return []
    names = set(declared)
    out = []
    for child in sorted(root.iterdir()):
        if not child.is_dir() or child.name in names or child.name.startswith((".", "_")):
            continue
        wanted = f"date={day.isoformat()}" if day else None
        if any(d.is_dir() and d.name.startswith("date=") and (wanted is None or d.name == wanted) for d in child.iterdir()):
            out.append(child.name)
    return out


def ingest_day(
    con: duckdb.DuckDBPyConnection,
    warehouse: Warehouse,
    landing_root: str | Path,
    kind: str,
    day: str | dt.date,
    options: Source | SourcesFile | dict[str, Source] | None = None,
) -> IngestReport:
    """Validate the landing files of every source feeding ``kind`` for ``day`` into the warehouse.

    ``kind`` is ``profiles`` (``raw_profiles``) or ``events`` (``raw_events``); the sources are
    chosen by :func:`day_sources` from ``options`` (default: the settings' sources file; ``stream``
    sources feed both kinds). Each source's files are read through its mapping
    (:mod:`segment_pipeline.core.mapping`) into the model's columns; unmapped columns are kept as
    JSON (``custom_attributes`` / ``properties``) and counted. Records that carry only a linked id
    are attributed to its email (:mod:`segment_pipeline.core.links`), else quarantined as
    ``unresolved identity``. One pass reads, parses and validates every row into a staging Parquet
    file (typed values, the reason for rejected rows, their original text); the outputs are then
    written from it with column-pruned scans. Nothing reaches the warehouse until every file has
    been read, so an unreadable file leaves the day's previous partitions as they were.

    Raises :class:`LandingFileError` naming the file when one cannot be read at all (or lacks a
    mapped column), :class:`SourcesFileError` when a mapping names a field the model lacks.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    day = as_date(day)
    model = warehouse.model
    sources = day_sources(kind, options)
    plans = []
    for name, source in sources.items():
        try:
            plans.append(build_plan(name, source, model, kind))
        except MappingError as exc:
            raise SourcesFileError(f"{settings.sources_file() if options is None else 'sources'}: {exc}") from None
    report = IngestReport(kind=kind, day=day)
    if options is None:
        known = list(load_sources(settings.sources_file()).sources) or list(KINDS)
    elif isinstance(options, Source):
        known = [*KINDS, *sources]
    else:
        known = list(options.sources if isinstance(options, SourcesFile) else options)
    report.unsourced_folders = unsourced_folders(landing_root, known, day)
    con.execute("SET TimeZone = 'UTC'")
    schema = warehouse.schema(f"raw_{kind}")

    staging_dir = warehouse.staging_dir()  # 0700; names carry the owner, for Warehouse.sweep
    run_id = unique_tag()
    staging = staging_dir / f"{kind}-{day.isoformat()}-{run_id}.parquet"
    temp_files = [staging]
    selects: list[str] = []
    ndjson_files: list[Path] = []
    csv_files: list[TextFile] = []
    file_source: dict[str, str] = {}
    try:
        for plan in plans:
            source = plan.source
            clearable = kind == "profiles" and source.csv_empty_cell == "clear"
            parts: list[str] = []
            files = landing_files(landing_root, plan.name, day, source.format)
            report.files.extend(str(f) for f in files)
            for path in files:
                file_source[str(path)] = plan.name
                i = len(file_source)
                fmt, compression = file_format(path.name, source.format) or ("", None)
                if path.stat().st_size == 0:
                    continue  # an empty delivery is valid: no rows
                if fmt == "parquet":
                    parts.append(_parquet_relation(con, path, plan, clearable))
                    continue
                # names built whole: the run id holds dots (its owner tag), so no Path.with_suffix here
                copy = staging_dir / f"{kind}-{day.isoformat()}-{run_id}-{i}.utf8"
                lines = staging_dir / f"{kind}-{day.isoformat()}-{run_id}-{i}.lines.parquet"
                temp_files.append(copy)
                # NDJSON: Polars checks UTF-8 as it numbers the lines, so a plain file is not read twice
                text = _prepare_text(path, compression, source.encoding, copy, check_utf8=fmt == "csv")
                if text.read_path.stat().st_size == 0:
                    continue  # an empty (compressed) delivery
                if fmt == "ndjson":
                    temp_files.append(lines)
                    try:
                        _number_lines(text, lines, _stream_prefilter(plan))
                    except _NotUtf8:  # number a copy with the invalid bytes replaced
                        text = _prepare_text(path, compression, source.encoding, copy)
                        _number_lines(text, lines, _stream_prefilter(plan))
                    parts.append(_ndjson_relation(text, lines, plan, kind == "profiles",
                                                  _common_unread_keys(con, lines, plan)))
                    ndjson_files.append(path)
                else:
                    text.csv_options = source.csv
                    parts.append(_csv_relation(text, plan, clearable))
                    csv_files.append(text)
            if parts:
                selects.append(_plan_select(plan, parts, day, model, schema, kind == "profiles"))
    except BaseException:
        _remove(temp_files)
        raise
    has_csv = bool(csv_files)
    if not selects:
        cols = ", ".join(f"NULL::{typ} AS {_q(c)}" for c, typ in schema.items())
        selects = [f"SELECT {cols}, NULL::VARCHAR AS reason, NULL::VARCHAR AS parse_error, NULL::VARCHAR AS raw, "
                   "NULL::VARCHAR[] AS _ignored LIMIT 0"]
    staged_sql = " UNION ALL ".join(f"({s})" for s in selects)
    try:
        # CSV rows are numbered by position (an order-preserving scan); NDJSON and Parquet rows
        # carry their line numbers already, so their parse runs in parallel, in any order.
        con.execute(f"SET preserve_insertion_order = {'true' if has_csv else 'false'}")
        try:
            con.execute(f"COPY ({staged_sql}) TO {sql_string(str(staging))} "
                        f"(FORMAT parquet, COMPRESSION lz4, ROW_GROUP_SIZE {SCRATCH_ROW_GROUP})")
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
        if kind == "events" and any(p.source.dedupe_on for p in plans):
            # An event delivered twice (same event_id) is kept once: later copies are quarantined.
            con.execute(f"""
                CREATE OR REPLACE TEMP TABLE dup_events AS
                SELECT event_id, min((source_file, source_line)) AS first
                FROM {staged} WHERE reason IS NULL AND event_id IS NOT NULL GROUP BY event_id HAVING count(*) > 1
            """)
            joins += " LEFT JOIN dup_events d ON d.event_id = s.event_id"
            duplicate = "(d.event_id IS NOT NULL AND (s.source_file, s.source_line) <> d.first)"
        # identity links: the emails of records that carry only a linked id
        email, unresolved, unresolved_reason = "s.email", "FALSE", "NULL"
        day_links = None  # profiles: the links this day's records give (written below)
        if model.links:
            if kind == "profiles":
                day_links = day_links_sql(day, staged, model.links)
            needs = con.execute(f"SELECT count(*) FROM {staged} WHERE reason IS NULL AND email IS NULL").fetchall()[0][0]
            if needs:
                if kind == "profiles":
                    con.execute(f"CREATE OR REPLACE TEMP TABLE links_day AS {day_links}")
                    day_links = "SELECT * FROM links_day"
                known = links_with_day(warehouse, day, "links_day") if kind == "profiles" else \
                    f"SELECT * FROM {links_as_of(warehouse, day)}"
                con.execute(f"CREATE OR REPLACE TEMP TABLE links_now AS {known}")
                # ids linked to nothing as of the day: the earliest link of a later day, if any
                later = later_links_sql(warehouse, day, wanted_ids_sql(staged, model.links), "links_now")
                if later is not None:
                    con.execute(f"INSERT INTO links_now {later}")
                ljoins, email, unresolved, unresolved_reason = resolution_sql("s", "links_now", model.links)
                joins += ljoins
                if later is not None:
                    report.resolved_by_later_links = con.execute(
                        f"SELECT count(*) FROM {staged} s {ljoins} WHERE s.reason IS NULL AND s.email IS NULL AND "
                        f"{late_link_sql(len(model.links))} > DATE '{day.isoformat()}'").fetchall()[0][0]
        # tombstones (issue 15): rows of a forgotten identity are quarantined with only its hash
        tomb = tombstone_filter(con, warehouse)
        deleted = tomb.deleted(email, "s.raw") if tomb else "FALSE"
        if tomb and day_links is not None:
            day_links = f"SELECT * REPLACE ({tomb.link_email('email')} AS email) FROM ({day_links})"
        if tomb and rejected_csv:
            csv_deleted = tomb.deleted("NULL", "raw")
            rejected_csv = (f"(SELECT source_file, source_line, CASE WHEN {csv_deleted} THEN '{DELETED_IDENTITY}' "
                            f"ELSE reason END AS reason, CASE WHEN {csv_deleted} THEN {tomb.kept_raw('NULL', 'raw')} "
                            f"ELSE raw END AS raw FROM {rejected_csv})")
        columns = ", ".join(
            f"{line} AS source_line" if c == "source_line" else (f"{email} AS email" if c == "email" else f"s.{_q(c)}")
            for c in schema)
        as_json = "to_json({" + ", ".join(f"'{c}': s.{_q(c)}" for c in schema
                                          if c not in ("source", "source_file", "source_line", "cleared")) + "})::VARCHAR"
        quarantine_sql = f"""
            SELECT s.source_file, {line} AS source_line,
                   CASE WHEN {deleted} THEN '{DELETED_IDENTITY}'
                        WHEN s.reason IS NOT NULL THEN s.reason
                        WHEN {duplicate} THEN 'duplicate event_id (an earlier row of this day has it)'
                        ELSE {unresolved_reason} END AS reason,
                   CASE WHEN {deleted} THEN {tomb.kept_raw(email, "s.raw") if tomb else "NULL"}
                        ELSE coalesce(s.raw, {as_json}) END AS raw
            FROM {staged} s {joins} WHERE s.reason IS NOT NULL OR {duplicate} OR {unresolved} OR {deleted}
        """ + (f" UNION ALL SELECT source_file, source_line, reason, raw FROM {rejected_csv}" if rejected_csv else "")
        report.rows_valid = warehouse.write_partition(
            con, f"raw_{kind}", day,
            f"SELECT {columns} FROM {staged} s {joins} WHERE s.reason IS NULL AND NOT {duplicate} AND NOT {unresolved} "
            f"AND NOT {deleted}"
        )
        report.rows_quarantined = warehouse.write_partition(con, f"quarantine_{kind}", day, quarantine_sql)
        report.rows_read = report.rows_valid + report.rows_quarantined
        quarantine = warehouse.scan(f"quarantine_{kind}", days=[day])
        report.reasons = dict(con.execute(
            f"SELECT reason, count(*) FROM {quarantine} GROUP BY reason ORDER BY 2 DESC, 1"
        ).fetchall())
        report.unresolved = sum(n for r, n in report.reasons.items() if r.startswith(UNRESOLVED))
        report.deleted_identity = report.reasons.get(DELETED_IDENTITY, 0)
        if day_links is not None:
            write_links(con, warehouse, day, day_links)
        _source_counts(con, report, warehouse, kind, day, staged, file_source, [p.name for p in plans])
    finally:
        _remove(temp_files)
        for table in ("dup_events", "csv_line_map", "csv_rejects_q", "csv_rejects", "csv_reject_scans", "links_now",
                      "links_day", "tombstones_now"):
            con.execute(f"DROP TABLE IF EXISTS {table}")
    return report


def _plan_select(plan: SourcePlan, parts: list[str], day: dt.date, model, schema: dict[str, str], clearable: bool) -> str:
    """The staged rows of one source: every schema column typed, plus reason, parse_error, raw."""
    source = plan.source
    parsed, rules, typed = typing_sql(plan, day, source.timestamp_tolerance_hours, model, clearable)
    names = _target_columns(plan)
    mt = source.message_type
    where = ""
    if mt is not None:
        if plan.kind == "profiles":
            where = f"WHERE parse_error IS NULL AND _s__mtype IN ({', '.join(sql_string(t) for t in mt.profiles)})"
        else:
            listed = ", ".join(sql_string(t) for t in mt.profiles)
            where = f"WHERE parse_error IS NOT NULL OR _s__mtype IS NULL OR _s__mtype NOT IN ({listed})"
            expected = ", ".join(mt.events)
            rules.insert(1, (f"_s__mtype IS NULL OR _s__mtype NOT IN ({', '.join(sql_string(t) for t in mt.events)})",
                             f"'{mt.column}: unsupported message type ''' || coalesce(_s__mtype, 'null') || "
                             f"''' (events: {expected}; profiles: {', '.join(mt.profiles)})'"))
    stripped = ", ".join(f"{strip_sql(_q(n))} AS {_q('_s_' + n)}" for n in names)
    reason = "CASE " + " ".join(f"WHEN {cond} THEN {msg}" for cond, msg in rules) + " END"
    cols = ", ".join(["source_file", "source_line", "parse_error", "raw", "given", "_extra", "_props", "_ignored",
                      *(_q(n) for n in names)])
    union = " UNION ALL ".join(f"SELECT {cols} FROM {p}" for p in parts)
    outputs = {c: typed.get(c, c) for c in schema}
    outputs["source_file"], outputs["source_line"] = "source_file", "source_line"
    # NDJSON keeps a rejected line's original text; CSV and Parquet rows are rendered as JSON
    source_json = "to_json({" + ", ".join(f"{sql_string(n)}: {_q(n)}" for n in names if not n.startswith("_")) + "})::VARCHAR"
    parsed_sql = "".join(f", {expr} AS {_q(name)}" for name, expr in parsed.items())
    return f"""
        SELECT {', '.join(f'{expr} AS {_q(name)}' for name, expr in outputs.items())},
               reason, parse_error,
               CASE WHEN reason IS NOT NULL THEN coalesce(raw, {source_json}) END AS raw, _ignored
        FROM (SELECT *, {reason} AS reason
              FROM (SELECT *{parsed_sql}
                    FROM (SELECT *, {stripped} FROM ({union}))))
        {where}
    """


def _source_counts(con, report: IngestReport, warehouse: Warehouse, kind: str, day: dt.date, staged: str,
                   file_source: dict[str, str], names: list[str]) -> None:
    """Per-source rows valid/quarantined, unmapped keys kept as JSON, ignored columns, with counts."""
    per = {n: {"rows_valid": 0, "rows_quarantined": 0} for n in names}
    for source, n in con.execute(
        f"SELECT source, count(*) FROM {warehouse.scan(f'raw_{kind}', days=[day])} GROUP BY ALL"
    ).fetchall():
        per.setdefault(source, {"rows_valid": 0, "rows_quarantined": 0})["rows_valid"] = n
    for f, n in con.execute(
        f"SELECT source_file, count(*) FROM {warehouse.scan(f'quarantine_{kind}', days=[day])} GROUP BY ALL"
    ).fetchall():
        name = file_source.get(f, "?")
        per.setdefault(name, {"rows_valid": 0, "rows_quarantined": 0})["rows_quarantined"] += n
    report.sources = per
    col = "custom_attributes" if kind == "profiles" else "properties"
    for source, key, n in con.execute(
        f"SELECT source, k, count(*) FROM (SELECT source, unnest(json_keys({col})) AS k FROM {staged} "
        f"WHERE reason IS NULL AND {col} IS NOT NULL) GROUP BY ALL ORDER BY 1, 3 DESC, 2"
    ).fetchall():
        report.unmapped.setdefault(source, {})[key] = n
    for source, key, n in con.execute(
        f"SELECT source, k, count(*) FROM (SELECT source, unnest(_ignored) AS k FROM {staged} "
        "WHERE _ignored IS NOT NULL) GROUP BY ALL ORDER BY 1, 3 DESC, 2"
    ).fetchall():
        report.ignored.setdefault(source, {})[key] = n


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
            _csv_record_lines(text, target, text.csv_options)
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
