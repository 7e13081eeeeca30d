"""Per-segment user export, the shape of the common ``/users/export/segment`` APIs.

Request (see :class:`SegmentExportRequest`)::

    {"segment_id": "...",                      required
     "fields_to_export": ["email", ...],        required, names from SUPPORTED_FIELDS
     "output_format": "zip" | "gzip",           optional, default "zip"
     "callback_endpoint": "https://..."}        optional

Output: the segment's members (``memberships`` of the export day, default the newest day with
memberships) as NDJSON user objects holding only the requested fields, in files of at most 5,000
users (so ``ceil(members / 5000)`` files), each zipped (one ``<random>.json`` entry) or gzipped::

    segment-export/<SEGMENT_ID>/<YYYY-MM-DD>/<RANDOM_UUID>-<TIMESTAMP>/<random>.zip|.gz
    segment-export/<SEGMENT_ID>/<YYYY-MM-DD>/<RANDOM_UUID>-<TIMESTAMP>.manifest.json

``SEGMENT_ID`` is the percent-encoded id (:func:`.keys.encode_segment`), ``YYYY-MM-DD`` the UTC
day and ``TIMESTAMP`` the unix time (seconds) when the export started. The manifest (files, line
counts, request) is written last: an export folder without its manifest is incomplete. Locally
the folder appears in one rename; on S3 files are uploaded whole, deleted again if the export
fails, and folders a crashed export left without manifest are swept by the segment's next export.

Memory stays flat whatever the segment size: the member ids of a pass (at most
``members_per_pass``, split by ``hash(identity_id)``) are the only state that grows, lines stream
from DuckDB in Arrow batches (``con.sql(...).to_arrow_reader``, which does not materialize the
result), and a few threads compress and publish 5,000-line chunks while DuckDB produces the next
ones. Lines are ordered by ``identity_id`` within each pass (and passes by hash part), and the
chunk file names derive from the object prefix and the chunk's position, so exporting the same
day again under the same object prefix gives byte-identical files (zip entry and gzip header
times are the export's start time); under another prefix the decompressed contents are the same.
Readers should still treat line order as not significant.

Values follow the reference promise "the least data possible": a field the user has no value for
is left out of the object (read a missing field as null / empty). Fields come from the declared
data model (:func:`field_columns`, docs/exports.md "Fields"):

* ``braze_id`` (alias ``identity_id``): our identity id; ``external_id``: the model's first identity
  link; standard fields (``first_name``, ``home_city``, ``dob``, ...): the model's attribute of that
  name (:data:`STANDARD_ATTRIBUTES`); ``dob``: ``YYYY-MM-DD``; ``created_at``: ISO 8601 UTC
  (``...Z``); ``custom_attributes``: the model's other attributes over the sources' unmapped
  columns (:func:`field_sql`). A field the model cannot fill is refused (:func:`check_fields`).
* ``purchases``: events the model marks ``purchase: {product: <property>}``, grouped by that
  property (``name``); ``custom_events``: every other event grouped by event name. Each item is
  ``{"name", "first", "last", "count"}`` where ``first``, ``last`` and ``count`` (number of events)
  cover *all* events that occurred up to the end of the export day, and only items whose ``last``
  falls in the 90 days ending with the export day (``last >= export_day - 89 days``, 00:00 UTC)
  are listed, sorted by name.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import gzip
import hashlib
import io
import json
import math
import re
import shutil
import time
import uuid
import zipfile
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field

import duckdb
import pyarrow as pa

from segment_pipeline.core.atomic import is_abandoned
from segment_pipeline.core.exports.callback import CallbackResult, post_callback, redact, validate_endpoint
from segment_pipeline.core.exports.daily_feed import ExportInputError, _local_copy
from segment_pipeline.core.exports.keys import encode_segment, join_key
from segment_pipeline.core.exports.locks import LockState, global_slot, segment_lock
from segment_pipeline.core.exports.storage import ExportStorage, LocalExportStorage
from segment_pipeline.core.model import DataModel
from segment_pipeline.core.privacy.filters import sendable_memberships
from segment_pipeline.core.warehouse import Warehouse, as_date, sql_string
from segment_pipeline.core.warehouse import sql_ident as _q

EXPORT_PREFIX = "segment-export"
LOCK_KIND = "segment-export"
CHUNK_SIZE = 5000
#: Members handled per pass: the per-pass set of member ids is the only state that grows with the
#: segment, so peak memory stays flat however large the segment is (each extra pass rescans profiles).
MEMBERS_PER_PASS = 2_000_000
#: Threads compressing chunks (zlib releases the GIL) while DuckDB produces the next lines.
WRITER_THREADS = 2
OUTPUT_FORMATS = {"zip": ".zip", "gzip": ".gz"}
EVENT_WINDOW_DAYS = 90
MANIFEST_SUFFIX = ".manifest.json"

_TS = "'%Y-%m-%dT%H:%M:%SZ'"

#: The export's fields (the names of Braze's ``/users/export/segment``,
#: braze.com/docs/api/endpoints/export/user_data/post_users_segment) -> what fills them from the data
#: model (:func:`field_columns`). Standard user fields read the model's attribute of that name (the
#: first one declared of :data:`STANDARD_ATTRIBUTES`); a field the model cannot fill is refused at
#: request time (:meth:`SegmentExportRequest.parse` with the model, and again when the export runs).
SUPPORTED_FIELDS: dict[str, str] = {
    "braze_id": "the identity id (identity_id)",
    "identity_id": "the identity id",
    "external_id": "the model's first identity link (identity.links[0])",
    "email": "the normalized email",
    "first_name": "attribute first_name",
    "last_name": "attribute last_name",
    "country": "attribute country",
    "home_city": "attribute home_city, else city",
    "language": "attribute language",
    "time_zone": "attribute time_zone",
    "dob": "attribute dob, else date_of_birth (YYYY-MM-DD)",
    "gender": "attribute gender",
    "phone": "attribute phone",
    "random_bucket": "the identity's random bucket (0-9999)",
    "total_revenue": "trait or attribute total_revenue",
    "created_at": "attribute created_at (ISO 8601 UTC)",
    "custom_attributes": "the model's attributes not exported as standard fields, plus the sources' unmapped columns",
    "purchases": "events the model marks as purchases, by product",
    "custom_events": "every other event, by event name",
}
#: Standard fields read from the first of these profile columns the model declares (attribute,
#: identity link or trait; see :func:`field_columns`).
STANDARD_ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "first_name": ("first_name",), "last_name": ("last_name",), "country": ("country",),
    "home_city": ("home_city", "city"), "language": ("language",), "time_zone": ("time_zone",),
    "dob": ("dob", "date_of_birth"), "gender": ("gender",), "phone": ("phone",),
    "total_revenue": ("total_revenue",), "created_at": ("created_at",),
}
_EVENT_FIELDS = {"purchases", "custom_events"}


def field_columns(model: DataModel) -> dict[str, str | None]:
    """Each export field -> the ``profiles`` column it reads (``""``: built from several columns or
    from events), or None when the model cannot fill it (e.g. ``external_id`` without identity
    links, ``purchases`` without an event marked ``purchase``, ``first_name`` without that attribute)."""
    columns = model.schemas()["profiles"]
    out: dict[str, str | None] = {
        "braze_id": "identity_id", "identity_id": "identity_id", "email": "email", "random_bucket": "random_bucket",
        "external_id": model.links[0] if model.links else None,
        "custom_attributes": "", "custom_events": "",
        "purchases": "" if model.purchase_events() else None,
    }
    for name, candidates in STANDARD_ATTRIBUTES.items():
        out[name] = next((c for c in candidates if c in columns and c not in ("email", "identity_id")), None)
    return {name: out[name] for name in SUPPORTED_FIELDS}


def model_fields(model: DataModel) -> list[str]:
    """The export fields this model can fill, in :data:`SUPPORTED_FIELDS` order."""
    return [name for name, column in field_columns(model).items() if column is not None]


def check_fields(model: DataModel, fields: Sequence[str]) -> None:
    """Raise :class:`SegmentExportRequestError` naming the fields ``model`` cannot fill."""
    columns = field_columns(model)
    missing = [f for f in fields if columns.get(f) is None]
    if missing:
        reasons = "; ".join(f"{f}: needs {SUPPORTED_FIELDS[f]}" for f in missing)
        raise SegmentExportRequestError(
            f"fields_to_export: the data model cannot fill {missing} ({reasons}); "
            f"fields this model supports: {', '.join(model_fields(model))}"
        )


def _json_of(column: str, sql_type: str) -> str:
    """The JSON value of a profile column: dates ``YYYY-MM-DD``, timestamps ISO 8601 UTC, lists
    as arrays, money as a number with its cents."""
    col = f"p.{_q(column)}"
    if sql_type == "DATE":
        return f"to_json(strftime({col}, '%Y-%m-%d'))"
    if sql_type == "TIMESTAMP":
        return f"to_json(strftime({col}, {_TS}))"
    return f"to_json({col})"


def custom_attribute_columns(model: DataModel) -> list[str]:
    """The model's attributes that go into ``custom_attributes``: those no standard field reads."""
    standard = {c for f, c in field_columns(model).items() if f in STANDARD_ATTRIBUTES and c}
    return [a for a in model.attributes if a not in standard]


def field_sql(model: DataModel, name: str) -> str:
    """SQL for the JSON value of export field ``name`` over ``p`` (the member's profile row) and
    ``ev`` (its event items); NULL leaves the field out of the user object.

    ``custom_attributes`` is one JSON object: the profile's ``custom_attributes`` (the sources'
    unmapped columns) overlaid with the model's attributes that no standard field exports
    (:func:`custom_attribute_columns`; a declared attribute wins over an unmapped column of the same
    name); keys without a value are left out, and an empty object leaves the field out.
    """
    columns = field_columns(model)
    types = model.schemas()["profiles"]
    if name == "purchases":
        return "to_json(ev.purchases)"
    if name == "custom_events":
        return "to_json(ev.custom_events)"
    if name == "custom_attributes":
        declared = custom_attribute_columns(model)
        base = "coalesce(p.custom_attributes, '{}')::JSON"
        if declared:
            pairs = ", ".join(f"{sql_string(a)}, {_json_of(a, types[a])}" for a in declared)
            merged = f"json_merge_patch({base}, json_object({pairs}))::VARCHAR"
        else:
            merged = f"{base}::VARCHAR"
        return f"nullif({merged}, '{{}}')"
    column = columns[name]
    if column is None:
        raise SegmentExportRequestError(f"fields_to_export: the data model cannot fill {name!r} ({SUPPORTED_FIELDS[name]})")
    return _json_of(column, types[column])


class SegmentExportRequestError(ValueError):
    """A request that cannot run; the message names the field."""


@dataclass(frozen=True)
class SegmentExportRequest:
    segment_id: str
    fields_to_export: tuple[str, ...]
    output_format: str = "zip"
    callback_endpoint: str | None = None

    @classmethod
    def parse(cls, body: Mapping[str, object], model: DataModel | None = None) -> SegmentExportRequest:
        """Validate a request body; with ``model``, also refuse fields the data model cannot fill
        (:func:`check_fields`). Raises :class:`SegmentExportRequestError` naming the field."""
        unknown_keys = sorted(set(body) - {"segment_id", "fields_to_export", "output_format", "callback_endpoint"})
        if unknown_keys:
            raise SegmentExportRequestError(f"unknown request field(s) {unknown_keys}")
        segment_id = body.get("segment_id")
        if not isinstance(segment_id, str) or not segment_id.strip():
            raise SegmentExportRequestError(f"segment_id is required (a non-empty string), got {segment_id!r}")
        try:
            encode_segment(segment_id)
        except ValueError as exc:
            raise SegmentExportRequestError(f"segment_id: {exc}") from exc
        fields = body.get("fields_to_export")
        if fields is None:
            raise SegmentExportRequestError(
                f"fields_to_export is required; valid fields: {', '.join(SUPPORTED_FIELDS)}"
            )
        if isinstance(fields, str) or not isinstance(fields, Sequence) or not fields:
            raise SegmentExportRequestError("fields_to_export must be a non-empty list of field names")
        bad = [f for f in fields if f not in SUPPORTED_FIELDS]
        if bad:
            raise SegmentExportRequestError(
                f"fields_to_export: unknown field(s) {bad} for segment {segment_id!r}; "
                f"valid fields: {', '.join(SUPPORTED_FIELDS)}"
            )
        output_format = body.get("output_format") or "zip"
        if output_format not in OUTPUT_FORMATS:
            raise SegmentExportRequestError(
                f"output_format must be one of {sorted(OUTPUT_FORMATS)}, got {output_format!r}"
            )
        callback = body.get("callback_endpoint") or None
        if callback is not None:
            try:
                validate_endpoint(str(callback))
            except ValueError as exc:
                raise SegmentExportRequestError(str(exc)) from exc
        if model is not None:
            check_fields(model, fields)
        return cls(segment_id, tuple(dict.fromkeys(fields)), str(output_format), callback)


@dataclass
class ExportedFile:
    key: str
    lines: int
    bytes: int


@dataclass
class SegmentExportResult:
    segment_id: str
    as_of: str
    started_at: int
    object_prefix: str
    prefix: str
    manifest_key: str
    location: str
    url: str
    output_format: str
    fields: list[str]
    members: int
    files: list[ExportedFile] = field(default_factory=list)
    callback: CallbackResult | None = None

    @property
    def rows(self) -> int:
        return sum(f.lines for f in self.files)

    @property
    def bytes(self) -> int:
        return sum(f.bytes for f in self.files)


def segment_prefix(segment_id: str) -> str:
    return join_key(EXPORT_PREFIX, encode_segment(segment_id))


_OBJECT_PREFIX = re.compile(r"^([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})-([0-9]{1,12})$")


def new_object_prefix(started_at: float | None = None) -> str:
    """A fresh ``RANDOM_UUID-TIMESTAMP`` (unix seconds) naming one export."""
    return f"{uuid.uuid4()}-{int(started_at if started_at is not None else time.time())}"


def parse_object_prefix(object_prefix: str) -> int:
    """The start timestamp of a ``RANDOM_UUID-TIMESTAMP`` object prefix; ValueError if malformed."""
    match = _OBJECT_PREFIX.match(object_prefix) if isinstance(object_prefix, str) else None
    if not match:
        raise ValueError(f"object_prefix must look like '<uuid4>-<unix seconds>', got {object_prefix!r}")
    return int(match.group(2))


def export_key_prefix(segment_id: str, object_prefix: str) -> str:
    """``segment-export/<SEGMENT_ID>/<YYYY-MM-DD>/<object_prefix>``: where that export's files go
    (the manifest is this plus :data:`MANIFEST_SUFFIX`), known before the export starts."""
    started = dt.datetime.fromtimestamp(parse_object_prefix(object_prefix), tz=dt.UTC)
    return f"{segment_prefix(segment_id)}/{started.date().isoformat()}/{object_prefix}"


def latest_membership_day(warehouse: Warehouse) -> dt.date:
    days = warehouse.partition_dates("memberships")
    if not days:
        raise ExportInputError("no memberships partition exists yet: nothing to export")
    return days[-1]


def member_lines_sql(
    warehouse: Warehouse,
    fields: Sequence[str],
    as_of: dt.date,
    *,
    parts: int = 1,
    part: int = 0,
    without_profile: bool = False,
) -> str:
    """One VARCHAR column ``line`` (a JSON object plus ``\\n``) per member; ``$segment_id`` is bound.

    Only members whose ``hash(identity_id) % parts == part`` (all of them when ``parts == 1``), so
    an export can run in several passes each holding a bounded set of members. The segment's ids
    are the build side of a semi join that the ``profiles`` scan probes: the state that grows with
    the segment is that set of ids (no aggregate, no member email carried) and the sort of the
    pass's lines by ``identity_id`` (for byte-identical re-runs; it spills to disk beyond the
    memory limit), and an identity is emitted once however often ``memberships`` lists it. With ``without_profile`` the
    lines are those of members that have no ``profiles`` row (only ``identity_id``/``email``, from
    ``memberships``): a separate, normally empty, pass.
    """
    memberships = sendable_memberships(warehouse, days=[as_of])  # suppression lists and consent gates
    profiles = warehouse.scan("profiles", days=[as_of])

    def in_part(column: str) -> str:
        return f"hash({column}) % {int(parts)} = {int(part)}" if parts > 1 else "true"

    members = f"(SELECT identity_id, email FROM {memberships} WHERE segment_id = $segment_id AND {in_part('identity_id')})"
    if without_profile:
        nulls = ", ".join(
            f"NULL::{typ} AS {_q(name)}" for name, typ in warehouse.schema("profiles").items()
            if name not in ("identity_id", "email")
        )
        source = f"""(SELECT m.identity_id, any_value(m.email) AS email, {nulls}
                      FROM {members} m LEFT JOIN (SELECT identity_id FROM {profiles} WHERE {in_part('identity_id')}) q
                        ON q.identity_id = m.identity_id
                      WHERE q.identity_id IS NULL GROUP BY m.identity_id)"""
    else:
        source = f"""(SELECT * FROM {profiles}
                      WHERE {in_part('identity_id')} AND identity_id IN (SELECT identity_id FROM {members}))"""
    model = warehouse.model
    check_fields(model, fields)
    parts_sql = ", ".join(f"'\"{name}\":' || ({field_sql(model, name)})" for name in fields)
    ctes = []
    event_join = ""
    if _EVENT_FIELDS & set(fields):
        events = warehouse.scan("raw_events", upto=as_of)
        window_start = as_of - dt.timedelta(days=EVENT_WINDOW_DAYS - 1)
        purchases = model.purchase_events()
        if purchases:
            is_purchase = f"e.event IN ({', '.join(sql_string(n) for n in purchases)})"
            whens = " ".join(f"WHEN e.event = {sql_string(n)} THEN CAST(e.{_q(prop)} AS VARCHAR)" for n, prop in purchases.items())
            item_name = f"CASE {whens} ELSE e.event END"
        else:
            is_purchase, item_name = "false", "e.event"
        day_end = as_of + dt.timedelta(days=1)
        # memberships.email is the profile's (normalized) email of that identity
        ctes.append(
            f"""items AS (
                SELECT e.email, {is_purchase} AS is_purchase, {item_name} AS name,
                min(e.occurred_at) AS first, max(e.occurred_at) AS last, count(*) AS count
                FROM {events} e
                WHERE e.occurred_at < DATE '{day_end}' AND e.email IN (SELECT email FROM {members})
                GROUP BY 1, 2, 3  -- not GROUP BY ALL: with the HAVING on max(occurred_at), DuckDB
                                  -- also grouped by occurred_at (one item per event, not per name)
                HAVING name IS NOT NULL AND max(e.occurred_at) >= DATE '{window_start}')"""
        )
        item = f"{{'name': name, 'first': strftime(first, {_TS}), 'last': strftime(last, {_TS}), 'count': count}}"
        ctes.append(
            f"""ev AS (
                SELECT email,
                       list({item} ORDER BY name) FILTER (WHERE is_purchase) AS purchases,
                       list({item} ORDER BY name) FILTER (WHERE NOT is_purchase) AS custom_events
                FROM items GROUP BY email)"""
        )
        event_join = "LEFT JOIN ev ON ev.email = p.email"
    with_sql = f"WITH {', '.join(ctes)}" if ctes else ""
    # ordered by identity_id, so the files' bytes do not depend on DuckDB's scheduling (the sort
    # spills to disk beyond the memory limit; it holds at most one pass of lines)
    return f"""
        {with_sql}
        SELECT '{{' || concat_ws(',', {parts_sql}) || '}}' || chr(10) AS line
        FROM {source} p {event_join}
        ORDER BY p.identity_id
    """


def _member_rows(con: duckdb.DuckDBPyConnection, warehouse: Warehouse, segment_id: str, as_of: dt.date) -> int:
    """Rows of the segment in ``memberships`` of ``as_of`` (cheap; 0 also checks the segment exists)."""
    rows = con.execute(
        f"SELECT count(*) FROM {warehouse.scan('memberships', days=[as_of])} WHERE segment_id = ?", [segment_id]
    ).fetchall()[0][0]
    if rows:
        return rows
    stats = warehouse.scan("segment_stats", days=[as_of])
    known = con.execute(f"SELECT count(*) FROM {stats} WHERE segment_id = ?", [segment_id]).fetchall()[0][0]
    if not known:
        some = [r[0] for r in con.execute(f"SELECT DISTINCT segment_id FROM {stats} ORDER BY 1 LIMIT 10").fetchall()]
        raise ExportInputError(f"segment {segment_id!r} does not exist on {as_of} (known segments include {some})")
    return 0


@dataclass
class _Count:
    members: int = 0
    lines: int = 0


def _member_line_arrays(
    con: duckdb.DuckDBPyConnection,
    warehouse: Warehouse,
    request: SegmentExportRequest,
    as_of: dt.date,
    parts: int,
    batch_rows: int,
    count: _Count,
) -> Iterator[pa.Array]:
    """Stream the ``line`` arrays of every member, pass by pass (see :func:`member_lines_sql`).

    Each pass counts its distinct members first and checks it produced exactly one line each
    (a member without profile gets its line from a second query, only when lines are missing).
    Readers come from ``con.sql(...).to_arrow_reader``, which streams; ``con.execute(...)`` plus an
    Arrow fetch would materialize the whole result first. A reader is drained and closed before the
    next statement runs on the connection.
    """
    params = {"segment_id": request.segment_id}
    memberships = sendable_memberships(warehouse, days=[as_of])
    for part in range(parts):
        in_part = f"AND hash(identity_id) % {parts} = {part}" if parts > 1 else ""
        expected = con.execute(
            f"SELECT count(DISTINCT identity_id) FROM {memberships} WHERE segment_id = $segment_id {in_part}", params
        ).fetchall()[0][0]
        produced = 0
        for without_profile in (False, True):
            if without_profile and produced >= expected:
                break
            sql = member_lines_sql(
                warehouse, request.fields_to_export, as_of, parts=parts, part=part, without_profile=without_profile
            )
            reader = con.sql(sql, params=params).to_arrow_reader(batch_rows)
            try:
                for batch in reader:
                    produced += batch.num_rows
                    count.lines += batch.num_rows
                    yield batch.column(0)
            finally:
                reader.close()
        if produced != expected:
            raise ExportInputError(
                f"segment {request.segment_id!r} on {as_of}: {produced} lines for {expected} members "
                "(an identity has more than one profiles row)"
            )
        count.members += expected


def chunk_name(object_prefix: str, index: int) -> str:
    """The random-looking name of chunk ``index`` of an export: 32 hex digits of
    SHA-256(``object_prefix/index``), unique per export and the same when it is written again."""
    return hashlib.sha256(f"{object_prefix}/{index}".encode()).hexdigest()[:32]


def _line_chunks(arrays: Iterable[pa.Array], chunk_size: int) -> Iterator[tuple[list[memoryview], int]]:
    """Group the ``line`` strings into runs of ``chunk_size`` as zero-copy views of Arrow buffers."""
    pieces: list[memoryview] = []
    count = 0
    for arr in arrays:
        if arr.type not in (pa.string(), pa.large_string()):
            arr = arr.cast(pa.large_string())
        _validity, offsets_buf, data_buf = arr.buffers()
        offsets = memoryview(offsets_buf).cast("q" if arr.type == pa.large_string() else "i")
        data = memoryview(data_buf or b"")
        base, pos, n = arr.offset, 0, len(arr)
        while pos < n:
            take = min(chunk_size - count, n - pos)
            start, stop = offsets[base + pos], offsets[base + pos + take]
            pieces.append(data[start:stop])
            count += take
            pos += take
            if count == chunk_size:
                yield pieces, count
                pieces, count = [], 0
    if count:
        yield pieces, count


def _write_chunk(path, name: str, pieces: list[memoryview], output_format: str, started: dt.datetime) -> None:
    if output_format == "zip":
        info = zipfile.ZipInfo(f"{name}.json", date_time=started.timetuple()[:6])
        info.compress_type = zipfile.ZIP_DEFLATED
        with zipfile.ZipFile(path, "w") as zf, zf.open(info, "w") as entry:
            for piece in pieces:
                entry.write(piece)
    else:
        with open(path, "wb") as raw, gzip.GzipFile(
            filename=f"{name}.json", mode="wb", fileobj=raw, compresslevel=6, mtime=int(started.timestamp())
        ) as gz:
            for piece in pieces:
                gz.write(piece)


def sweep_incomplete(storage: ExportStorage, segment_id: str) -> list[str]:
    """Delete export folders of ``segment_id`` that have no manifest (left by crashed exports),
    and local temporary entries whose writer is gone (:func:`segment_pipeline.core.atomic.is_abandoned`).

    Only safe while holding the segment's export lock (no other export of it is running).
    """
    prefix = segment_prefix(segment_id)
    keys = storage.list_keys(prefix)
    manifests = {k[: -len(MANIFEST_SUFFIX)] for k in keys if k.endswith(MANIFEST_SUFFIX)}
    folders = {k.rsplit("/", 1)[0] for k in keys if not k.endswith(MANIFEST_SUFFIX)}
    removed = sorted(f for f in folders if f.count("/") == 3 and f not in manifests)
    for folder in removed:
        storage.delete_prefix(folder)
    if isinstance(storage, LocalExportStorage):
        for leftover in storage.list_temporaries(prefix):
            if not is_abandoned(leftover):
                continue  # its writer still runs (e.g. a lock broken as stale under a live export)
            if leftover.is_dir():
                shutil.rmtree(leftover, ignore_errors=True)
            else:
                leftover.unlink(missing_ok=True)
    return removed


def export_segment(
    con: duckdb.DuckDBPyConnection,
    warehouse: Warehouse,
    storage: ExportStorage,
    request: SegmentExportRequest,
    *,
    as_of: str | dt.date | None = None,
    started_at: float | None = None,
    chunk_size: int = CHUNK_SIZE,
    batch_rows: int = 65536,
    progress: Callable[[int, int], None] | None = None,
    object_prefix: str | None = None,
    members_per_pass: int = MEMBERS_PER_PASS,
    writer_threads: int = WRITER_THREADS,
) -> SegmentExportResult:
    """Write the export files and then the manifest (no lock, no callback: see :func:`run_segment_export`).

    ``object_prefix`` (optional, ``RANDOM_UUID-TIMESTAMP`` from :func:`new_object_prefix`) lets a
    caller announce where the export will land before it runs; its timestamp is the start time.

    Memory is bounded whatever the segment size: members are read in
    ``ceil(rows / members_per_pass)`` hash passes, lines stream from DuckDB in Arrow batches of
    ``batch_rows`` and are cut into chunks that ``writer_threads`` threads compress and publish
    while the next lines are produced (at most ``2 * writer_threads`` chunks in flight).
    """
    check_fields(warehouse.model, request.fields_to_export)
    if object_prefix is not None:
        started_at = parse_object_prefix(object_prefix)
    day = as_date(as_of) if as_of is not None else latest_membership_day(warehouse)
    rows = _member_rows(con, warehouse, request.segment_id, day)
    parts = max(1, math.ceil(rows / max(1, members_per_pass)))
    started_ts = int(started_at if started_at is not None else time.time())
    started = dt.datetime.fromtimestamp(started_ts, tz=dt.UTC)
    object_prefix = object_prefix or f"{uuid.uuid4()}-{started_ts}"
    prefix = export_key_prefix(request.segment_id, object_prefix)
    ext = OUTPUT_FORMATS[request.output_format]
    files: list[ExportedFile] = []
    count = _Count()
    arrays = _member_line_arrays(con, warehouse, request, day, parts, batch_rows, count)

    def write(batch, name: str, pieces: list[memoryview], lines: int) -> ExportedFile:
        with batch.writer(name + ext) as tmp:
            _write_chunk(tmp, name, pieces, request.output_format, started)
            size = tmp.stat().st_size
        return ExportedFile(f"{prefix}/{name}{ext}", lines, size)

    def collect(future: Future) -> None:
        files.append(future.result())
        if progress:
            progress(len(files), sum(f.lines for f in files))

    with storage.batch(prefix) as batch, ThreadPoolExecutor(max(1, writer_threads)) as pool:
        pending: deque[Future] = deque()
        try:
            for index, (pieces, lines) in enumerate(_line_chunks(arrays, chunk_size)):
                pending.append(pool.submit(write, batch, chunk_name(object_prefix, index), pieces, lines))
                while len(pending) >= 2 * max(1, writer_threads):
                    collect(pending.popleft())
            while pending:
                collect(pending.popleft())
        except BaseException:
            for future in pending:
                future.cancel()
            raise
        finally:
            arrays.close()
    members = count.members
    exported = sum(f.lines for f in files)
    if exported != members:
        raise ExportInputError(f"segment {request.segment_id!r}: exported {exported} users but it has {members} members")
    result = SegmentExportResult(
        segment_id=request.segment_id,
        as_of=day.isoformat(),
        started_at=started_ts,
        object_prefix=object_prefix,
        prefix=prefix,
        manifest_key=prefix + MANIFEST_SUFFIX,
        location=storage.location(prefix),
        url=storage.url(prefix),
        output_format=request.output_format,
        fields=list(request.fields_to_export),
        members=members,
        files=files,
    )
    manifest = {
        "segment_id": request.segment_id,
        "as_of": result.as_of,
        "started_at": started_ts,
        "finished_at": int(time.time()),
        "object_prefix": object_prefix,
        "prefix": prefix,
        "output_format": request.output_format,
        "fields_to_export": result.fields,
        "members": members,
        "files": [asdict(f) for f in files],
    }
    storage.put_bytes(result.manifest_key, json.dumps(manifest, ensure_ascii=False, indent=1).encode())
    return result


def callback_payload(storage: ExportStorage, result: SegmentExportResult, url: str | None = None) -> dict:
    """``{"success": true}``, plus ``url`` when exports are not in the partner's own S3 bucket
    (``url`` overrides the storage URL, e.g. with the API's status URL for this export)."""
    payload: dict[str, object] = {"success": True}
    if storage.kind != "s3":
        payload["url"] = url or result.url
    return payload


def run_segment_export(
    con: duckdb.DuckDBPyConnection,
    warehouse: Warehouse,
    storage: ExportStorage,
    request: SegmentExportRequest,
    *,
    owner: str = "",
    as_of: str | dt.date | None = None,
    max_concurrent: int = 4,
    lock_stale_after: float = 6 * 3600,
    callback_attempts: int = 5,
    callback_backoff_seconds: float = 1.0,
    callback_token: str | None = None,
    progress: Callable[[int, int], None] | None = None,
    log: Callable[[str], None] = lambda _msg: None,
    object_prefix: str | None = None,
    download_url: str | None = None,
    on_lock_takeover: Callable[[LockState], None] | None = None,
) -> SegmentExportResult:
    """The whole request: one export per segment and ``max_concurrent`` overall (fail fast
    otherwise), sweep leftovers of crashed exports, export, then the callback (outcome recorded
    on the result; a failing callback never undoes the published export).

    A lock or slot left by an export whose process provably died is taken over at once (see
    :mod:`.locks`); ``on_lock_takeover`` is told what was found (default: logged)."""
    started_at = parse_object_prefix(object_prefix) if object_prefix is not None else time.time()
    encoded = encode_segment(request.segment_id)

    def took_over(found: LockState) -> None:
        log(f"took over the export lock of {found.owner}: {found.why or 'stale'}")
        if on_lock_takeover is not None:
            on_lock_takeover(found)

    with contextlib.ExitStack() as stack:
        stack.enter_context(segment_lock(
            storage, LOCK_KIND, encoded, request.segment_id, owner=owner, stale_after=lock_stale_after,
            on_takeover=took_over,
        ))
        stack.enter_context(global_slot(
            storage, LOCK_KIND, max_concurrent, owner=owner, stale_after=lock_stale_after, on_takeover=took_over,
        ))
        swept = sweep_incomplete(storage, request.segment_id)
        if swept:
            log(f"removed {len(swept)} incomplete export folder(s) of segment {request.segment_id!r}: {swept}")
        result = export_segment(
            con, warehouse, storage, request, as_of=as_of, started_at=started_at, progress=progress,
            object_prefix=object_prefix,
        )
    if request.callback_endpoint:
        result.callback = post_callback(
            request.callback_endpoint,
            callback_payload(storage, result, download_url),
            attempts=callback_attempts,
            backoff_seconds=callback_backoff_seconds,
            bearer_token=callback_token,
        )
        outcome = "delivered" if result.callback.delivered else "FAILED"
        log(
            f"callback to {redact(request.callback_endpoint)} {outcome} after {result.callback.attempts} "
            f"attempt(s): {result.callback.history}"
        )
    return result


# -- verification (asset check) --------------------------------------------------------------------


@dataclass
class SegmentExportCheck:
    passed: bool
    expected_files: int
    files: int
    lines: int
    members: int
    problems: list[str]


def verify_segment_export(
    storage: ExportStorage, manifest_key: str, members: int, chunk_size: int = CHUNK_SIZE
) -> SegmentExportCheck:
    """Re-read a published export: ``ceil(members / chunk_size)`` files whose decompressed line
    counts (each at most ``chunk_size``) add up to ``members``, exactly the files of the manifest."""
    problems: list[str] = []
    raw = storage.get_bytes(manifest_key)
    expected_files = math.ceil(members / chunk_size)
    if raw is None:
        return SegmentExportCheck(False, expected_files, 0, 0, members, [f"manifest {manifest_key} missing"])
    manifest = json.loads(raw)
    keys = storage.list_keys(manifest["prefix"])
    if sorted(keys) != sorted(f["key"] for f in manifest["files"]):
        problems.append("the files present differ from the manifest")
    if len(keys) != expected_files:
        problems.append(f"{len(keys)} files, expected ceil({members}/{chunk_size}) = {expected_files}")
    total = 0
    for key in keys:
        with _local_copy(storage, key) as path:
            lines = _count_lines_compressed(path, key)
        if lines > chunk_size:
            problems.append(f"{key} holds {lines} lines (> {chunk_size})")
        total += lines
    if total != members:
        problems.append(f"{total} lines in all files for {members} members")
    return SegmentExportCheck(not problems, expected_files, len(keys), total, members, problems)


def _count_lines_compressed(path, key: str) -> int:
    count = 0
    if key.endswith(".zip"):
        with zipfile.ZipFile(path) as zf:
            for name in zf.namelist():
                with zf.open(name) as fh:
                    count += _count_stream(fh)
    else:
        with gzip.open(path, "rb") as fh:
            count += _count_stream(fh)
    return count


def _count_stream(fh: io.BufferedIOBase) -> int:
    count = 0
    while chunk := fh.read(1 << 20):
        count += chunk.count(b"\n")
    return count
