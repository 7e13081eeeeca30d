"""Remove identities from every file under the warehouse root and the export root (issue 15).

What is matched (:class:`Targets`)
    An identity is matched by its normalised address (``core/identity.py``), compared with the
    lowercased text of a value, and by the SHA-256 hex forms the product writes: of the normalised
    address (Meta, the ledger) and of Google's normalisation (Customer Match:
    :func:`segment_pipeline.core.sync.hashing.google_email_hash`), any case. A value is searched
    for *tokens*: address-shaped runs (RFC 5322 dot-atom ``atext`` or the common ``[a-z0-9._%+-]``
    class, ``@``, a dotted domain) and 64-hex-digit runs, so an address inside quarantine text,
    JSON, a CSV cell or a payload is found whatever its case or surroundings. (An address written
    with JSON escapes inside its characters, e.g. ``\\u0040``, is not recognised.)

What is removed, by kind of file (the warehouse is walked, no table list: a new table is covered)
    * Parquet (every warehouse table and partition, whatever its columns): every row with a token
      in any text-like column (VARCHAR, JSON, lists, structs, maps cast to text). The file is
      rewritten in its row order with the warehouse's settings and replaced atomically, unless it
      changed since it was read (a writer published it meanwhile): then the new file is scrubbed.
      ``identity_links`` rows of a target keep their linked id with the email rewritten to
      ``sha256:<hex>`` (the tombstone recognises later records carrying only that id).
    * DuckDB files: every row of every table with a token; the file is then copied into a fresh
      file (DuckDB keeps deleted bytes in its blocks) which replaces it atomically.
    * SQLite identity index files (``identity_index/``, a cache): deleted when they hold a token.
    * JSON documents (dry-run payloads, summaries): list items and object members holding a token
      are removed. NDJSON, CSV and other text: lines holding a token are removed.
    * ``.gz`` and ``.zip`` files: their content as above, recompressed.
    * Exports (through :class:`~segment_pipeline.core.exports.storage.ExportStorage`, local folder
      or S3): the daily feed files (and the ``latest`` pointer's ``lines``/``bytes``), per-segment
      exports (the remaining lines re-cut into chunks of the export's size, and the manifest's
      ``members`` and ``files`` rewritten; locally the folder is replaced whole and chunks keep
      their names, on S3 new chunks are uploaded under fresh names, the manifest switched to them,
      then the old ones deleted), Customer Match files (their manifest's
      ``rows``, ``members``, ``bytes``, ``sha256``), CSV range exports and any other file.
    * Any other file holding a token cannot be scrubbed: :class:`ScrubError` names it, and the
      request stays open (``warehouse_done`` is not recorded).

Not touched here: ``privacy/`` (the ledger holds the hashes by design, and the pending address
until the request settles), ``sync_state/`` (the sync mirror: it knows what a destination holds,
so its rows go only after that destination confirmed the deletion, with :func:`scrub_duckdb_file`,
by the erasure step), ``_staging/`` and temporary entries (scratch of running writers, swept).

Crash safety. Every file is replaced atomically (old or new, never half). Files whose counts live
in another file (segment export manifests, Customer Match manifests, the feed's ``latest``
pointer) are recorded in ``privacy/scrub_journal.json`` before the rewrite and the count file is
rewritten from the files themselves after it; a run killed in between leaves the journal, and
the next run finishes those count files first. A re-run finds nothing left to remove and rewrites
nothing.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import gzip
import hashlib
import io
import json
import os
import re
import shutil
import tempfile
import uuid
import zipfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from segment_pipeline.core.atomic import TMP_PREFIX, atomic_path, atomic_write_text, private_mkdir
from segment_pipeline.core.exports.segment_export import CHUNK_SIZE, MANIFEST_SUFFIX, _write_chunk, chunk_name
from segment_pipeline.core.exports.storage import ExportStorage, LocalExportStorage, S3ExportStorage
from segment_pipeline.core.identity import normalize_email
from segment_pipeline.core.sync.hashing import google_email_hash
from segment_pipeline.core.warehouse import ROW_GROUP_SIZE, STAGING_DIR, connect, sql_ident, sql_string

#: Folders under the warehouse root the scrub leaves alone (see the module docstring).
SKIPPED_DIRS = ("privacy", "sync_state", STAGING_DIR)
JOURNAL = "scrub_journal.json"

_ATEXT = r"a-z0-9.!#$%&'*+/=?^_`{|}~-"
EMAIL_TOKEN = rf"[{_ATEXT}]+@[a-z0-9-]+(?:\.[a-z0-9-]+)+"
COMMON_TOKEN = r"[a-z0-9._%+-]+@[a-z0-9-]+(?:\.[a-z0-9-]+)+"
HEX_TOKEN = r"[0-9a-f]{64}"
_PY_TOKENS = (re.compile(EMAIL_TOKEN.encode()), re.compile(COMMON_TOKEN.encode()), re.compile(HEX_TOKEN.encode()))
TEXT_SUFFIXES = (".json", ".jsonl", ".ndjson", ".csv", ".txt", ".log", ".tsv", "")
_BLOCK = 1 << 22


class ScrubError(RuntimeError):
    """A file holds an identity being forgotten but cannot be scrubbed (the message names it)."""


@dataclass(frozen=True)
class Targets:
    """The tokens to remove: normalised addresses and their SHA-256 hex forms (lowercase)."""

    tokens: frozenset[str]

    @classmethod
    def of(cls, emails: Iterable[str]) -> Targets:
        out: set[str] = set()
        for raw in emails:
            email = normalize_email(raw)
            out |= {email, hashlib.sha256(email.encode()).hexdigest(), google_email_hash(email)}
        return cls(frozenset(out))

    def __bool__(self) -> bool:
        return bool(self.tokens)

    @property
    def _bytes(self) -> frozenset[bytes]:
        cached = self.__dict__.get("_tokens_b")
        if cached is None:
            cached = frozenset(t.encode() for t in self.tokens)
            object.__setattr__(self, "_tokens_b", cached)
        return cached

    def found(self, low: bytes) -> set[bytes]:
        """The target tokens in the lowercased bytes ``low``."""
        if b"@" not in low and len(low) < 64:
            return set()
        wanted = self._bytes
        return {t for pattern in _PY_TOKENS for t in set(pattern.findall(low)) if t in wanted}

    def hit(self, data: bytes | str) -> bool:
        """True if ``data`` holds a target token (any case)."""
        low = (data.encode("utf-8", "surrogatepass") if isinstance(data, str) else data).lower()
        return bool(self.found(low))

    @staticmethod
    def tokens_sql(*values: str) -> str:
        """DuckDB: the list of candidate tokens of the text expressions ``values`` (one row's columns).

        Only values with an ``@`` or long enough for a hash are looked at. A value that is one
        address (most identity columns) is its own token (one DFA pass, no extraction); others are
        tokenised once (addresses and hex runs in one pattern), and a token that starts with a
        character outside the common address class (``'|jane@x.com``) also gives its common-class
        suffix."""
        texts = "[" + ", ".join(f"lower(CAST({v} AS VARCHAR))" for v in values) + "]"
        start = sql_string("abcdefghijklmnopqrstuvwxyz0123456789._%+-")
        variants = (f"lambda t: CASE WHEN contains({start}, left(t, 1)) OR NOT contains(t, '@') THEN [t] "
                    f"ELSE [t, regexp_extract(t, {sql_string(COMMON_TOKEN)})] END")
        per_value = (f"lambda v: CASE WHEN regexp_full_match(v, {sql_string(EMAIL_TOKEN)}) THEN [v] "
                     f"ELSE flatten(list_transform(regexp_extract_all(v, {sql_string(EMAIL_TOKEN + '|' + HEX_TOKEN)}), "
                     f"{variants})) END")
        interesting = f"list_filter({texts}, lambda v: v IS NOT NULL AND (contains(v, '@') OR length(v) >= 64))"
        return f"flatten(list_transform({interesting}, {per_value}))"


@dataclass
class ScrubReport:
    files_scanned: int = 0
    files_rewritten: int = 0
    files_deleted: int = 0
    rows_removed: int = 0
    #: identity link rows kept with their email rewritten to ``sha256:<hex>`` (not removed)
    rows_masked: int = 0
    bytes_rewritten: int = 0
    #: path or export key -> rows/lines/items removed
    changed: dict[str, int] = field(default_factory=dict)

    def add(self, name: str, removed: int, size: int) -> None:
        self.files_rewritten += 1
        self.rows_removed += removed
        self.bytes_rewritten += size
        self.changed[name] = self.changed.get(name, 0) + removed


_TEXTLIKE = re.compile(r"VARCHAR|JSON|STRUCT|MAP|\[\]|UNION")


def _text_columns(con: duckdb.DuckDBPyConnection, relation: str) -> list[str]:
    return [name for name, typ, *_ in con.execute(f"DESCRIBE SELECT * FROM {relation}").fetchall()
            if _TEXTLIKE.search(typ)]


def _hit_rows_sql(targets_table: str, relation: str, columns: list[str], row_id: str) -> str:
    tokens = Targets.tokens_sql(*(sql_ident(c) for c in columns))
    return f"""SELECT DISTINCT r FROM (SELECT {row_id} AS r, unnest({tokens}) AS tok FROM {relation})
               WHERE rtrim(tok, '.') IN (SELECT token FROM {targets_table})"""


def _load_targets(con: duckdb.DuckDBPyConnection, targets: Targets) -> str:
    con.register("forget_targets_in", pa.table({"token": pa.array(sorted(targets.tokens), pa.string())}))
    con.execute("CREATE OR REPLACE TEMP TABLE forget_targets AS SELECT token FROM forget_targets_in")
    con.unregister("forget_targets_in")
    return "forget_targets"


# -- Parquet -----------------------------------------------------------------------------------


#: The email of an identity link of a deleted identity (``core/privacy/tombstones.py``).
LINK_MARKER = "sha256:"
#: The table whose ``email`` column the scrub masks (``sha256:<hex>``) instead of removing the row.
LINKS_TABLE = "identity_links"
#: How often a Parquet file that changed while it was being scrubbed is scrubbed again.
CHANGED_RETRIES = 5


class _Changed(Exception):
    """The file changed (another writer published it) between the scrub's read and its replace."""


def _stamp(path: Path) -> tuple[int, int, int, int]:
    st = path.stat()
    return st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size


def scrub_parquet_file(con: duckdb.DuckDBPyConnection, path: Path, table: str = "forget_targets",
                       *, mask_links: bool = False,
                       before_replace: Callable[[Path], None] | None = None) -> tuple[int, int, int]:
    """Remove the rows of the Parquet file ``path`` that hold a target token (``table`` of tokens
    loaded in ``con``); rewrite it atomically in its row order. Returns (rows removed, bytes
    written, rows masked).

    ``mask_links`` (files of :data:`LINKS_TABLE`): a row whose ``email`` is a target keeps its
    linked id with the email rewritten to ``sha256:<hex>`` (:data:`LINK_MARKER`, the ledger's hash)
    instead of being removed, so the tombstone still recognises later records carrying only that
    id; such rows are counted as masked. Other hits in the row still remove it.

    The file is never replaced by a scrub of an older version: if its inode, mtime or size changed
    between the read and the replace (a writer published it meanwhile), the rewrite is discarded and
    the new file scrubbed again, up to :data:`CHANGED_RETRIES` times, then :class:`ScrubError`.
    ``before_replace(path)`` is called after the rewrite is written, before that check (for tests
    of a concurrent writer)."""
    for _attempt in range(CHANGED_RETRIES):
        try:
            return _scrub_parquet_once(con, path, table, mask_links, before_replace)
        except _Changed:
            con.execute("DROP TABLE IF EXISTS forget_hits")
        except FileNotFoundError:
            return 0, 0, 0  # removed meanwhile (a writer replaced its folder): nothing of it is left
    raise ScrubError(f"{path}: kept changing while it was scrubbed ({CHANGED_RETRIES} attempts)")


def _scrub_parquet_once(con: duckdb.DuckDBPyConnection, path: Path, table: str, mask_links: bool,
                        before_replace: Callable[[Path], None] | None) -> tuple[int, int, int]:
    before = _stamp(path)
    rel = f"read_parquet({sql_string(str(path))}, hive_partitioning = false, file_row_number = true)"
    columns = [c for c in _text_columns(con, rel) if c != "file_row_number"]
    if not columns:
        return 0, 0, 0
    masking = mask_links and "email" in columns
    key = "lower(trim(email))"
    hit_rel = out_rel = rel
    if masking:
        out_rel = (f"(SELECT * REPLACE (CASE WHEN {key} IN (SELECT token FROM {table}) "
                   f"THEN '{LINK_MARKER}' || sha256({key}) ELSE email END AS email) FROM {rel})")
        hit_rel = (f"(SELECT * REPLACE (CASE WHEN starts_with(email, '{LINK_MARKER}') THEN NULL ELSE email END "
                   f"AS email) FROM {out_rel})")
    con.execute(f"CREATE OR REPLACE TEMP TABLE forget_hits AS "
                f"{_hit_rows_sql(table, hit_rel, columns, 'file_row_number')}")
    removed = con.execute("SELECT count(*) FROM forget_hits").fetchall()[0][0]
    masked = con.execute(f"SELECT count(*) FROM {rel} WHERE {key} IN (SELECT token FROM {table}) "
                         "AND file_row_number NOT IN (SELECT r FROM forget_hits)").fetchall()[0][0] if masking else 0
    if not removed and not masked:
        con.execute("DROP TABLE forget_hits")
        return 0, 0, 0
    codec = con.execute(f"SELECT any_value(compression) FROM parquet_metadata({sql_string(str(path))})").fetchall()[0][0]
    codec = codec if codec in ("ZSTD", "SNAPPY", "GZIP", "LZ4_RAW", "UNCOMPRESSED", "BROTLI") else "ZSTD"
    codec = "LZ4" if codec == "LZ4_RAW" else codec
    # the file's own key-value metadata (the incremental state's model and inputs) is kept
    kv = ", ".join(f"{sql_string(k)}: {sql_string(v)}" for k, v in con.execute(
        f"SELECT key::VARCHAR, value::VARCHAR FROM parquet_kv_metadata({sql_string(str(path))})").fetchall()
        if not k.startswith(("ARROW:", "pandas")))
    kv = f", KV_METADATA {{{kv}}}" if kv else ""
    with atomic_path(path) as tmp:
        con.execute(f"""COPY (SELECT * EXCLUDE (file_row_number) FROM {out_rel}
                              WHERE file_row_number NOT IN (SELECT r FROM forget_hits) ORDER BY file_row_number)
                        TO {sql_string(str(tmp))} (FORMAT parquet, COMPRESSION {codec}, ROW_GROUP_SIZE {ROW_GROUP_SIZE}{kv})""")
        if before_replace is not None:
            before_replace(path)
        if _stamp(path) != before:
            raise _Changed(str(path))  # the temporary file is discarded; the caller scrubs the new one
    con.execute("DROP TABLE forget_hits")
    return removed, path.stat().st_size, masked


# -- DuckDB ------------------------------------------------------------------------------------


def scrub_duckdb_file(path: str | os.PathLike[str], targets: Targets) -> tuple[int, int]:
    """Delete every row holding a target token from every table of the DuckDB file ``path``, then
    copy the database into a fresh file that replaces it atomically (the old blocks, which still
    hold the deleted values, go with the old file). The file must not be open elsewhere.
    Returns (rows removed, bytes written)."""
    path = Path(path)
    con = duckdb.connect()
    try:
        table = _load_targets(con, targets)
        con.execute(f"ATTACH {sql_string(str(path))} AS src")
        removed = 0
        tables = con.execute("SELECT schema_name, table_name FROM duckdb_tables() WHERE database_name = 'src'").fetchall()
        for schema, name in tables:
            qualified = f"src.{sql_ident(schema)}.{sql_ident(name)}"
            columns = _text_columns(con, qualified)
            if not columns:
                continue
            hits = _hit_rows_sql(table, qualified, columns, "rowid")
            n = con.execute(f"SELECT count(*) FROM ({hits})").fetchall()[0][0]
            if n:
                con.execute(f"DELETE FROM {qualified} WHERE rowid IN ({hits})")
                removed += n
        if not removed:
            con.execute("DETACH src")
            return 0, 0
        with atomic_path(path) as tmp:
            con.execute(f"ATTACH {sql_string(str(tmp))} AS fresh")
            con.execute("COPY FROM DATABASE src TO fresh")
            con.execute("DETACH fresh")
            con.execute("DETACH src")
            wal = tmp.with_name(tmp.name + ".wal")
            if wal.exists():  # pragma: no cover - DETACH checkpoints
                raise ScrubError(f"{path}: the fresh copy was not checkpointed")
        Path(str(path) + ".wal").unlink(missing_ok=True)
        return removed, path.stat().st_size
    finally:
        con.close()


# -- text, JSON, compressed ---------------------------------------------------------------------


def _filter_lines(src: io.BufferedIOBase, dst: io.BufferedIOBase, targets: Targets) -> tuple[int, int]:
    """Copy the lines of ``src`` without a target token to ``dst``; (lines removed, lines kept).

    Streamed in blocks: each block is tokenised (C regex, no per-line Python work); only blocks
    holding a target are walked token by token to find the lines to drop."""
    removed = kept = 0
    rest = b""
    while True:
        block = src.read(_BLOCK)
        data = rest + block
        if block:
            cut = data.rfind(b"\n") + 1
            data, rest = data[:cut], data[cut:]
        else:
            rest = b""
        if data:
            low = data.lower()
            drop: set[tuple[int, int]] = set()
            found = targets.found(low)
            for pattern in _PY_TOKENS if found else ():
                for match in pattern.finditer(low):
                    if match.group() in found:
                        pos = match.start()
                        start = low.rfind(b"\n", 0, pos) + 1
                        end = low.find(b"\n", pos)
                        drop.add((start, len(low) if end < 0 else end + 1))
            lines = data.count(b"\n") + (0 if data.endswith(b"\n") else 1)
            at = 0
            for start, end in sorted(drop):
                dst.write(data[at:start])
                at = end
            dst.write(data[at:])
            removed += len(drop)
            kept += lines - len(drop)
        if not block:
            return removed, kept


def _scrub_json_value(value: Any, targets: Targets) -> tuple[Any, int]:
    """``value`` without the list items and object members that hold a target; (value, removed)."""
    if isinstance(value, list):
        out, removed = [], 0
        for item in value:
            if targets.hit(json.dumps(item, ensure_ascii=False)):
                removed += 1
            else:
                out.append(item)
        return out, removed
    if isinstance(value, dict):
        out_d, removed = {}, 0
        for k, v in value.items():
            if targets.hit(k) or (isinstance(v, str) and targets.hit(v)):
                removed += 1
                continue
            out_d[k], n = _scrub_json_value(v, targets)
            removed += n
        return out_d, removed
    return value, 0


def scrub_bytes(data: bytes, name: str, targets: Targets) -> tuple[bytes, int] | None:
    """The content ``data`` of a file called ``name`` without target tokens, and what was removed;
    None when nothing holds one. Raises :class:`ScrubError` for a binary kind it cannot edit."""
    lower = name.lower()
    if lower.endswith(".gz"):
        inner = scrub_bytes(gzip.decompress(data), name[:-3], targets)
        if inner is None:
            if targets.hit(data):  # in the gzip header (its file name)
                raise ScrubError(f"{name}: holds an identity being forgotten in its gzip header")
            return None
        return gzip.compress(inner[0], mtime=0), inner[1]
    if lower.endswith(".zip"):
        if not _zip_hits(io.BytesIO(data), targets):
            return None
        out, removed = io.BytesIO(), 0
        with zipfile.ZipFile(io.BytesIO(data)) as src, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as dst:
            for info in src.infolist():
                if targets.hit(info.filename):
                    raise ScrubError(f"{name}: an entry name holds an identity being forgotten")
                content = src.read(info)
                scrubbed = scrub_bytes(content, info.filename, targets)
                if scrubbed is not None:
                    content, n = scrubbed
                    removed += n
                dst.writestr(info, content)
        return out.getvalue(), removed
    if not targets.hit(data):
        return None
    if lower.endswith(".parquet") or lower.endswith(".duckdb") or lower.endswith(".sqlite") or b"\0" in data[:4096]:
        raise ScrubError(f"{name}: a binary file holds an identity being forgotten and cannot be edited in place")
    if lower.endswith(".json") and data.lstrip()[:1] in (b"{", b"["):
        try:
            doc = json.loads(data)
        except ValueError:
            doc = None
        if doc is not None:
            new, removed = _scrub_json_value(doc, targets)
            text = json.dumps(new, ensure_ascii=False, indent=1 if b"\n " in data else None)
            out_bytes = text.encode() + (b"\n" if data.endswith(b"\n") else b"")
            if targets.hit(out_bytes):
                raise ScrubError(f"{name}: an identity being forgotten remains in a JSON value")
            return out_bytes, removed
    dst = io.BytesIO()
    removed, _kept = _filter_lines(io.BytesIO(data), dst, targets)
    return dst.getvalue(), removed


def _stream_hits(fh: io.BufferedIOBase, targets: Targets) -> bool:
    overlap = b""
    while block := fh.read(_BLOCK):
        if targets.hit(overlap + block):
            return True
        overlap = block[-400:]
    return False


def _zip_hits(source: Path | io.BytesIO, targets: Targets) -> bool:
    with zipfile.ZipFile(source) as zf:
        for info in zf.infolist():
            if targets.hit(info.filename):
                return True
            with zf.open(info) as fh:
                if _stream_hits(fh, targets):
                    return True
    return False


def _json_document(path: Path) -> bool:
    """Whether a ``.json`` file is one JSON document (not NDJSON: one value per line)."""
    with open(path, "rb") as fh:
        head = fh.read(1 << 20)
    if head.lstrip()[:1] not in (b"{", b"["):
        return False
    first, _, more = head.partition(b"\n")
    if not more.strip():
        return True  # a single line: a compact document
    try:
        json.loads(first)
    except ValueError:
        return True  # an indented document: its first line alone is not JSON
    return False


def _file_hits(path: Path, targets: Targets, name: str | None = None) -> bool:
    """Whether the file holds a target token: its bytes, and the content of a gzip or zip file
    (``name``: the file's name when ``path`` is a local copy), streamed in overlapping blocks."""
    lower = (name or path.name).lower()
    with open(path, "rb") as fh:
        if _stream_hits(fh, targets):
            return True
    try:
        if lower.endswith(".gz"):
            with gzip.open(path, "rb") as fh:
                return _stream_hits(fh, targets)
        if lower.endswith(".zip"):
            return _zip_hits(path, targets)
    except (OSError, zipfile.BadZipFile, EOFError) as exc:
        raise ScrubError(f"{name or path}: cannot read the compressed file to look for identities: {exc}") from None
    return False


def _line_hits(con: duckdb.DuckDBPyConnection, path: Path) -> set[int] | None:
    """The 1-based numbers of the lines of the UTF-8 text file ``path`` that hold a target token
    (``forget_targets`` loaded in ``con``, which must preserve insertion order), found by DuckDB
    (RE2, linear time, parallel scan); None when DuckDB cannot read it as plain lines (not UTF-8,
    a record separator byte in it): the caller falls back to :func:`_filter_lines`.
    :func:`_copy_without_lines` checks every dropped line, so a numbering mismatch can never
    drop a line that holds no target."""
    lines = (f"read_csv({sql_string(str(path))}, columns = {{'line': 'VARCHAR'}}, header = false, auto_detect = false, "
             f"delim = chr(30), quote = '', escape = '', new_line = '\\n', max_line_size = {1 << 30})")
    try:
        rows = con.execute(f"""
            SELECT DISTINCT n FROM (SELECT n, unnest({Targets.tokens_sql('line')}) AS tok
                                    FROM (SELECT line, row_number() OVER () AS n FROM {lines}))
            WHERE tok IN (SELECT token FROM forget_targets)""").fetchall()
    except duckdb.Error:
        return None
    return {r[0] for r in rows}


class _Misnumbered(Exception):
    pass


def _copy_without_lines(src: Path, dst: Path, drop: set[int], targets: Targets) -> int:
    """Copy ``src`` to ``dst`` without the lines numbered in ``drop`` (1-based, split on ``\\n``);
    raises :class:`_Misnumbered` if a line to drop holds no target (or is missing)."""
    dropped = 0
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        for n, line in enumerate(fin, 1):
            if n not in drop:
                fout.write(line)
            elif not targets.hit(line):
                raise _Misnumbered(f"{src}: line {n}")
            else:
                dropped += 1
    if dropped != len(drop):
        raise _Misnumbered(f"{src}: {len(drop) - dropped} line(s) not found")
    return dropped


def _scrub_text_file(con: duckdb.DuckDBPyConnection, src: Path, name: str, targets: Targets,
                     write: Callable[[], contextlib.AbstractContextManager[Path]]) -> tuple[int, int] | None:
    """Scrub a text file (JSON document, NDJSON, CSV, other lines): None when nothing holds a
    target, else (items or lines removed, bytes written) after writing through ``write()``."""
    lower = name.lower()
    if lower.endswith(".json") and _json_document(src):
        result = scrub_bytes(src.read_bytes(), name, targets)
        if result is None:
            return None
        with write() as tmp:
            tmp.write_bytes(result[0])
        return result[1], len(result[0])
    drop = _line_hits(con, src)
    if drop:
        try:
            with write() as tmp:
                removed = _copy_without_lines(src, tmp, drop, targets)
                size = tmp.stat().st_size
            return removed, size
        except _Misnumbered:
            drop = None  # nothing was published: the Python filter below does it
    if drop is None:  # not plain UTF-8 lines: the streaming Python filter
        if not _file_hits(src, targets, name):
            return None
        with write() as tmp, open(src, "rb") as fin, open(tmp, "wb") as fout:
            removed, _ = _filter_lines(fin, fout, targets)
            size = tmp.stat().st_size if tmp.exists() else 0
        return removed, size
    return None


def _scrub_local_file(con: duckdb.DuckDBPyConnection, path: Path, targets: Targets, report: ScrubReport) -> None:
    """One file of the warehouse tree, by kind (see the module docstring)."""
    name = path.name.lower()
    if name.endswith((".wal", ".duckdb.wal")):
        return
    if name.endswith(".duckdb"):
        removed, size = scrub_duckdb_file(path, targets)
        if removed:
            report.add(str(path), removed, size)
        return
    if name.endswith(TEXT_SUFFIXES) and path.suffix in TEXT_SUFFIXES:
        done = _scrub_text_file(con, path, path.name, targets, lambda: atomic_path(path))
        if done is not None:
            report.add(str(path), *done)
        return
    if not _file_hits(path, targets):
        return
    if path.parent.name == "identity_index" and name.endswith(".sqlite"):
        path.unlink(missing_ok=True)  # a cache (core/api_identity.py): rebuilt from the scrubbed tables
        report.files_deleted += 1
        report.changed[str(path)] = -1
        return
    if name.endswith((".gz", ".zip")):
        result = scrub_bytes(path.read_bytes(), path.name, targets)
        if result is not None:
            with atomic_path(path) as tmp:
                tmp.write_bytes(result[0])
            report.add(str(path), result[1], len(result[0]))
        return
    raise ScrubError(f"{path}: holds an identity being forgotten and is of a kind the scrub cannot edit")


def scrub_tree(root: str | os.PathLike[str], targets: Targets, report: ScrubReport | None = None,
               skip: Iterable[str] = SKIPPED_DIRS, on_file: Callable[[Path], None] | None = None) -> ScrubReport:
    """Scrub every file under ``root`` (folders named in ``skip`` directly under it, and temporary
    entries, are left out). Parquet files share one DuckDB connection."""
    root = Path(root)
    report = report or ScrubReport()
    if not targets or not root.is_dir():
        return report
    skipped = {root / s for s in skip}
    con = connect(preserve_order=True)
    try:
        _load_targets(con, targets)
        for dirpath, dirnames, filenames in os.walk(root):
            here = Path(dirpath)
            dirnames[:] = sorted(d for d in dirnames if not d.startswith(TMP_PREFIX) and here / d not in skipped)
            for fname in sorted(filenames):
                if fname.startswith(TMP_PREFIX):
                    continue
                path = here / fname
                report.files_scanned += 1
                if on_file is not None:
                    on_file(path)
                if fname.endswith(".parquet"):
                    links = here.relative_to(root).parts[:1] == (LINKS_TABLE,)
                    removed, size, masked = scrub_parquet_file(con, path, mask_links=links)
                    if removed or masked:
                        report.add(str(path), removed, size)
                        report.rows_masked += masked
                else:
                    _scrub_local_file(con, path, targets, report)
    finally:
        con.close()
    return report


# -- exports ----------------------------------------------------------------------------------


def all_keys(storage: ExportStorage) -> list[str]:
    """Every key under the export root (local folder or S3 prefix), temporary entries excluded."""
    if isinstance(storage, LocalExportStorage):
        root = Path(storage.root)
        keys = []
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith(TMP_PREFIX))
            rel = Path(dirpath).relative_to(root).as_posix()
            keys.extend(f for f in (f"{rel}/{n}" if rel != "." else n for n in sorted(filenames))
                        if not f.rsplit("/", 1)[-1].startswith(TMP_PREFIX))
        return keys
    if isinstance(storage, S3ExportStorage):
        prefix = storage.object_key("x")[:-1]
        keys = []
        for page in storage.client.get_paginator("list_objects_v2").paginate(Bucket=storage.bucket, Prefix=prefix):
            keys.extend(obj["Key"][len(prefix):] for obj in page.get("Contents", []))
        return sorted(keys)
    raise TypeError(f"unsupported export storage {storage!r}")


@contextlib.contextmanager
def _read_local(storage: ExportStorage, key: str) -> Iterator[Path]:
    if isinstance(storage, LocalExportStorage):
        yield storage.path(key)
        return
    with tempfile.TemporaryDirectory(prefix="segment_pipeline_forget-") as tmpdir:
        os.chmod(tmpdir, 0o700)
        local = Path(tmpdir) / "object"
        with storage.open_read(key) as src, open(local, "wb") as dst:
            shutil.copyfileobj(src, dst, _BLOCK)
        yield local


def _count_lines(path: Path) -> int:
    n = 0
    with open(path, "rb") as fh:
        while block := fh.read(_BLOCK):
            n += block.count(b"\n")
    return n


class ExportScrubber:
    """Scrub the export root through its storage (see the module docstring)."""

    def __init__(self, storage: ExportStorage, targets: Targets, journal_dir: Path, report: ScrubReport):
        self.storage, self.targets, self.report = storage, targets, report
        self.journal = journal_dir / JOURNAL

    # journal of count files to rewrite (keys only, never an address)
    def _journal(self) -> list[str]:
        try:
            return json.loads(self.journal.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return []

    def _note(self, key: str) -> None:
        keys = self._journal()
        if key not in keys:
            private_mkdir(self.journal.parent)
            atomic_write_text(self.journal, json.dumps([*keys, key]))

    def _done(self, key: str) -> None:
        keys = [k for k in self._journal() if k != key]
        if keys:
            atomic_write_text(self.journal, json.dumps(keys))
        else:
            self.journal.unlink(missing_ok=True)

    def run(self, on_key: Callable[[str], None] | None = None) -> None:
        try:
            self._run(on_key)
        finally:
            if self.__dict__.get("con") is not None:
                self.con.close()
                self.con = None

    def _run(self, on_key: Callable[[str], None] | None) -> None:
        for key in self._journal():  # count files a killed run left to rewrite
            self._recount(key)
        keys = all_keys(self.storage)
        manifests = [k for k in keys if k.endswith(MANIFEST_SUFFIX)]
        handled: set[str] = set()
        for manifest in manifests:  # per-segment exports: chunks + manifest
            prefix = manifest[: -len(MANIFEST_SUFFIX)]
            chunks = [k for k in keys if k.startswith(prefix + "/")]
            handled |= {manifest, *chunks}
            self._segment_export(manifest, chunks, on_key)
        for key in keys:
            if key in handled or key.rsplit("/", 1)[-1].startswith(TMP_PREFIX):
                continue
            self.report.files_scanned += 1
            if on_key is not None:
                on_key(key)
            self._plain(key)

    def _count_file_of(self, key: str) -> str | None:
        parts = key.split("/")
        if parts[0] == "daily" and len(parts) == 3 and parts[2].endswith(".json"):
            return f"daily/{parts[1]}/latest"
        if parts[0] == "customer_match" and len(parts) == 3 and parts[2].endswith(".csv"):
            return f"customer_match/{parts[1]}/manifest.json"
        return None

    def _plain(self, key: str) -> None:
        name = key.rsplit("/", 1)[-1]
        count_file = self._count_file_of(key)

        @contextlib.contextmanager
        def write() -> Iterator[Path]:
            if count_file:  # before the file changes: a killed run leaves the count file to fix
                self._note(count_file)
            with self.storage.writer(key) as tmp:
                yield tmp

        with _read_local(self.storage, key) as local:
            if name.lower().endswith((".gz", ".zip")) or Path(name).suffix not in TEXT_SUFFIXES:
                if not _file_hits(local, self.targets, name):
                    return
                result = scrub_bytes(local.read_bytes(), name, self.targets)
                if result is None:
                    return
                with write() as tmp:
                    tmp.write_bytes(result[0])
                done: tuple[int, int] | None = (result[1], len(result[0]))
            else:
                done = _scrub_text_file(self._con(), local, name, self.targets, write)
        if done is None:
            return
        self.report.add(key, *done)
        if count_file:
            self._recount(count_file)

    def _con(self) -> duckdb.DuckDBPyConnection:
        if self.__dict__.get("con") is None:
            self.con = connect(preserve_order=True)
            _load_targets(self.con, self.targets)
        return self.con

    def _recount(self, key: str) -> None:
        """Rewrite a count file (feed pointer, Customer Match manifest, segment export manifest)
        from the files it describes."""
        raw = self.storage.get_bytes(key)
        if raw is None:
            self._done(key)
            return
        doc = json.loads(raw)
        if key.endswith("/latest"):
            if self.storage.exists(doc["key"]):
                with _read_local(self.storage, doc["key"]) as local:
                    doc["lines"], doc["bytes"] = _count_lines(local), local.stat().st_size
        elif key.startswith("customer_match/"):
            folder = key.rsplit("/", 1)[0]
            for f in doc.get("files", []):
                fkey = f"{folder}/{f['file']}"
                if not self.storage.exists(fkey):
                    continue
                with _read_local(self.storage, fkey) as local:
                    rows = max(0, _count_lines(local) - 1)  # the header line
                    removed = int(f.get("rows", rows)) - rows
                    f["rows"], f["bytes"] = rows, local.stat().st_size
                    f["sha256"] = hashlib.sha256(local.read_bytes()).hexdigest()
                    f["members"] = max(0, int(f.get("members", rows)) - removed)
        elif key.endswith(MANIFEST_SUFFIX):
            files = []
            for f in doc.get("files", []):
                if self.storage.exists(f["key"]):
                    with _read_local(self.storage, f["key"]) as local:
                        lines = _chunk_lines(local, f["key"])
                        files.append({**f, "lines": lines, "bytes": local.stat().st_size})
            doc["files"] = files
            doc["members"] = sum(f["lines"] for f in files)
        text = json.dumps(doc, ensure_ascii=False, indent=1) + ("\n" if raw.endswith(b"\n") else "")
        if key.endswith("/latest"):
            text = json.dumps(doc)
        self.storage.put_bytes(key, text.encode())
        self._done(key)

    def _segment_export(self, manifest_key: str, chunks: list[str], on_key: Callable[[str], None] | None) -> None:
        self.report.files_scanned += 1 + len(chunks)
        if on_key is not None:
            on_key(manifest_key)
        raw = self.storage.get_bytes(manifest_key) or b"{}"
        manifest = json.loads(raw)
        s3 = not isinstance(self.storage, LocalExportStorage)
        listed = [f["key"] for f in manifest.get("files", []) if f.get("key") in set(chunks)] or sorted(chunks)
        if s3:  # chunks no manifest names: uploads of a forget killed before its manifest was written
            for key in sorted(set(chunks) - set(listed)):
                self.storage.delete(key)
        chunks = listed
        hit = self.targets.hit(raw)
        for key in chunks:
            with _read_local(self.storage, key) as local:
                if _chunk_hits(local, key, self.targets):
                    hit = True
                    break
        if not hit:
            return
        if self.targets.hit(raw):
            raise ScrubError(f"{manifest_key}: the export's manifest holds an identity being forgotten")
        self._note(manifest_key)
        prefix = manifest["prefix"]
        object_prefix = manifest.get("object_prefix") or prefix.rsplit("/", 1)[-1]
        fmt = manifest.get("output_format", "gzip")
        ext = ".zip" if fmt == "zip" else ".gz"
        started = dt.datetime.fromtimestamp(int(manifest.get("started_at", 0)), tz=dt.UTC)
        order = chunks
        # locally the folder is replaced whole, so the chunks keep their names (index-based, as a
        # re-export writes them); on S3 (no multi-object atomicity) they get fresh names, the
        # manifest is switched to them, then the old ones are deleted: a killed run leaves the old
        # export complete and consistent, plus unnamed uploads the next run deletes
        name_prefix = f"{object_prefix}/forget-{uuid.uuid4().hex[:12]}" if s3 else object_prefix
        # the chunk size the export was cut with: every file but the last is full
        sizes = [int(f.get("lines", 0)) for f in manifest.get("files", [])]
        chunk_size = max(sizes) if len(sizes) > 1 else max([CHUNK_SIZE, *sizes])
        removed = 0
        written: list[dict] = []
        with tempfile.TemporaryDirectory(prefix="segment_pipeline_forget-") as tmpdir:
            os.chmod(tmpdir, 0o700)
            kept = Path(tmpdir) / "kept.ndjson"
            with open(kept, "wb") as dst:
                for key in order:
                    with _read_local(self.storage, key) as local, _open_chunk(local, key) as src:
                        n, _ = _filter_lines(src, dst, self.targets)
                        removed += n
            with self.storage.batch(prefix) as batch, open(kept, "rb") as src:
                index = 0
                while True:
                    lines = [line for _, line in zip(range(chunk_size), src, strict=False)]
                    if not lines:
                        break
                    name = chunk_name(name_prefix, index)
                    with batch.writer(name + ext) as tmp:
                        _write_chunk(tmp, name, [memoryview(b"".join(lines))], fmt, started)
                        size = tmp.stat().st_size
                    written.append({"key": f"{prefix}/{name}{ext}", "lines": len(lines), "bytes": size})
                    self.report.bytes_rewritten += size
                    index += 1
        manifest["files"] = written
        manifest["members"] = sum(f["lines"] for f in written)
        self.storage.put_bytes(manifest_key, json.dumps(manifest, ensure_ascii=False, indent=1).encode())
        if s3:  # locally the batch replaced the folder
            for key in sorted(set(chunks) - {f["key"] for f in written}):
                self.storage.delete(key)
        self._done(manifest_key)
        self.report.add(manifest_key, removed, 0)


@contextlib.contextmanager
def _open_chunk(path: Path, key: str) -> Iterator[io.BufferedIOBase]:
    if key.endswith(".zip"):
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
            with zf.open(names[0]) if len(names) == 1 else _concat(zf, names) as fh:
                yield fh
    else:
        with gzip.open(path, "rb") as fh:
            yield fh


@contextlib.contextmanager
def _concat(zf: zipfile.ZipFile, names: list[str]) -> Iterator[io.BufferedIOBase]:
    yield io.BytesIO(b"".join(zf.read(n) for n in names))


def _chunk_hits(path: Path, key: str, targets: Targets) -> bool:
    with _open_chunk(path, key) as fh:
        return _stream_hits(fh, targets)


def _chunk_lines(path: Path, key: str) -> int:
    n = 0
    with _open_chunk(path, key) as fh:
        while block := fh.read(_BLOCK):
            n += block.count(b"\n")
    return n


def identity_index_dirs() -> list[Path]:
    """The API's identity index folder (``<API state>/identity_index``), wherever the state lives."""
    from segment_pipeline.core.feed_auth import state_dir

    return [state_dir() / "identity_index"]


def scrub_identity_indexes(folders: Iterable[Path], targets: Targets, report: ScrubReport) -> None:
    """Delete identity index files (a cache, rebuilt from the scrubbed tables) holding a target."""
    for folder in folders:
        if not folder.is_dir():
            continue
        for path in sorted(folder.glob("*.sqlite")):
            report.files_scanned += 1
            if _file_hits(path, targets):
                path.unlink(missing_ok=True)
                report.files_deleted += 1
                report.changed[str(path)] = -1
