"""Google Customer Match upload files: per day, one CSV of hashed emails per synced segment, plus
a manifest, for upload to Google Ads (Audience manager > Customer list > upload a file, or an
SFTP/scheduled upload).

A segment is included when its toggle ``sync: {google_customer_match: true}`` is on in
``data/segments.yaml`` (:data:`TOGGLE`).

File format (Google Ads "Format your customer data file",
https://support.google.com/google-ads/answer/7659867): CSV in UTF-8, the English header ``Email``
(email address matching uses "Email" as the column header), one member per line, ``\\n`` line ends,
no quoting needed (a value is 64 hex characters)::

    Email
    07e2f1394b0ea80e2adca010ea8318df697001a005ba7452720edda4b0ce57b3
    ...

Each value is the SHA-256 (lowercase hex) of the email normalized by Google's current rules
(:func:`segment_pipeline.core.sync.hashing.google_email_hash_sql`: lowercase, all whitespace
removed, gmail.com/googlemail.com without dots and ``+suffix`` in the local part). Raw emails are
never written. Emails that normalize to the same address (``j.doe@gmail.com`` and
``jdoe+x@gmail.com``) give one line; lines are sorted, so re-running a day gives the same bytes.

Layout under the export root (local folder or ``s3://bucket/prefix``)::

    customer_match/YYYY-MM-DD/<segment>.csv      one file per synced segment (segment id, key-encoded)
    customer_match/YYYY-MM-DD/manifest.json      what the folder holds (written last)

The manifest: ``{"day", "format": "google_customer_match_csv", "header": ["Email"], "hash":
"sha256-hex", "normalization": "google-2025", "files": [{"segment_id", "segment_name", "file",
"rows", "members", "bytes", "sha256"}], "created_at"}`` (``members``: memberships with an email;
``rows``: distinct hashes, fewer when emails collapse under Google's rules). Publishing is atomic
per day (:meth:`~segment_pipeline.core.exports.storage.ExportStorage.batch`: locally the day's
folder appears whole; on S3 the manifest is uploaded last and the day's files are removed again if
the batch fails), so a reader that finds the manifest finds every file it names complete.
Re-running a day replaces the day's folder.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

import duckdb

from segment_pipeline.core.exports.keys import encode_segment, join_key
from segment_pipeline.core.exports.storage import ExportStorage
from segment_pipeline.core.privacy.filters import sendable_memberships
from segment_pipeline.core.sync.hashing import google_email_hash_sql
from segment_pipeline.core.warehouse import Warehouse, as_date, sql_string

#: The segments' ``sync:`` toggle that selects segments for this export.
TOGGLE = "google_customer_match"
PREFIX = "customer_match"
HEADER = "Email"
MANIFEST = "manifest.json"
FORMAT = "google_customer_match_csv"


@dataclass
class CustomerMatchFile:
    segment_id: str
    segment_name: str
    file: str
    rows: int
    members: int
    bytes: int
    sha256: str


@dataclass
class CustomerMatchResult:
    day: str
    prefix: str
    location: str
    files: list[CustomerMatchFile] = field(default_factory=list)

    @property
    def rows(self) -> int:
        return sum(f.rows for f in self.files)


def day_prefix(day: str | dt.date) -> str:
    return join_key(PREFIX, as_date(day).isoformat())


def manifest_key(day: str | dt.date) -> str:
    return join_key(PREFIX, as_date(day).isoformat(), MANIFEST)


def file_name(segment_id: str) -> str:
    return f"{encode_segment(segment_id)}.csv"


def write_customer_match(con: duckdb.DuckDBPyConnection, warehouse: Warehouse, storage: ExportStorage,
                         day: str | dt.date, segments: Mapping[str, str]) -> CustomerMatchResult:
    """Publish ``day``'s upload files for ``segments`` (segment id -> name) and their manifest.

    Raises ``ValueError`` naming the day when the memberships partition of the day is missing.
    DuckDB streams each file (no member list in Python).
    """
    day = as_date(day)
    if not warehouse.has_partition("memberships", day):
        raise ValueError(f"customer match export: no complete memberships partition for {day}")
    prefix = day_prefix(day)
    result = CustomerMatchResult(day.isoformat(), prefix, storage.location(manifest_key(day)))
    memberships = sendable_memberships(warehouse, days=[day])  # suppression lists and consent gates
    members_of = dict(con.execute(  # one read for every segment's member count
        f"SELECT segment_id, count(*) FROM {memberships} WHERE email IS NOT NULL AND email <> '' GROUP BY 1"
    ).fetchall())
    with storage.batch(prefix) as batch:
        for segment_id, name in sorted(segments.items()):
            name_in_file = file_name(segment_id)
            with batch.writer(name_in_file) as tmp:
                members = members_of.get(segment_id, 0)
                select = (f"SELECT DISTINCT {google_email_hash_sql('email')} AS {HEADER} FROM {memberships} "
                          f"WHERE segment_id = {sql_string(segment_id)} AND email IS NOT NULL AND email <> '' "
                          "ORDER BY 1")
                rows = con.execute(f"COPY ({select}) TO {sql_string(str(tmp))} (FORMAT csv, HEADER true)"
                                   ).fetchall()[0][0]
                if not tmp.exists() or tmp.stat().st_size == 0:  # an empty segment is a header-only file
                    tmp.write_text(HEADER + "\n", encoding="utf-8")
                size, digest = _size_and_digest(tmp)
            result.files.append(CustomerMatchFile(segment_id, name, name_in_file, int(rows), int(members), size, digest))
        manifest = {"day": day.isoformat(), "format": FORMAT, "header": [HEADER], "hash": "sha256-hex",
                    "normalization": "google-data-manager: lowercase; no whitespace; gmail.com/googlemail.com "
                                     "local part without '.' and '+suffix'",
                    "files": [asdict(f) for f in result.files],
                    "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")}
        with batch.writer(MANIFEST) as tmp:
            tmp.write_text(json.dumps(manifest, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return result


def _size_and_digest(path: Path) -> tuple[int, str]:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return path.stat().st_size, h.hexdigest()


def read_manifest(storage: ExportStorage, day: str | dt.date) -> dict | None:
    raw = storage.get_bytes(manifest_key(day))
    return None if raw is None else json.loads(raw)
