"""The deletion ledger: who asked to be forgotten, and who has confirmed it (GDPR Art. 17, CCPA).

Everything lives under ``<warehouse root>/privacy/`` (folder ``0700``, files ``0600``):

``ledger.duckdb``
    Hashes only, never an address. Tables:

    ``requests(request_id, email_sha256, requested_at, source, warehouse_done_at, settled_at)``
        One row per deletion request. ``source`` is ``"cli"`` or ``"landing:<folder>"``. A request
        is *open* until :meth:`Ledger.settle` settles it.
    ``tombstones(email_sha256, created_at, request_id, lifted_at)``
        The identities that later landing files must not bring back (ingestion quarantines their
        rows as ``deleted identity``) until :meth:`Ledger.lift` lifts the tombstone.
    ``destinations(request_id, destination, asked_at, done_at, confirmed_at, attempts, last_error)``
        Per request and destination (registry name: ``klaviyo``, ``dotdigital``, ``braze``,
        ``meta``): when the vendor's deletion was asked, done and confirmed.

    ``request_files(source_file, version, recorded_at, requests, rejected)``
        The request files of ``deletion_requests`` sources already recorded (path relative to the
        landing root, and the version read: size and mtime), so a file is read once, however late.
    ``request_rejects(source_file, version, source_line, reason, recorded_at)``
        The quarantine of request rows that are not a valid address: file, line and reason, never
        the value.

``pending/<request_id>.json``
    ``{"request_id", "email_sha256", "email"}``: the normalised address, which the warehouse scrub
    (raw quarantine text is matched on the address) and the destinations' deletion endpoints need.
    Written atomically; deleted by :meth:`Ledger.settle` once the warehouse and every destination
    confirmed. After that the warehouse tables, the quarantine and every sync mirror (all its
    tables with an ``email`` column, :func:`segment_pipeline.core.privacy.erasure.mirror_tables`)
    no longer hold the address, and no sync plan or dry-run payload has named it since the request
    (:func:`segment_pipeline.core.sync.diff.write_plan` leaves tombstoned addresses out). Dry-run
    payload folders written *before* the request (``sync_dry_run/``) are not scanned: they keep it
    until retention expires them (``SEGMENT_PIPELINE_RETAIN_DRY_RUN_DAYS``, docs/privacy.md).

``tombstones.parquet``
    A copy of the unlifted tombstones (column ``email_sha256``), rewritten atomically with every
    change, so any DuckDB connection can join on it (:meth:`Ledger.tombstone_sql`) without opening
    ``ledger.duckdb`` (which DuckDB lets one process at a time open for writing).

``lock``
    Every operation holds an exclusive ``flock`` on it and opens ``ledger.duckdb`` only for that
    operation, so the CLI, the daily assets and the erasure asset of several processes are
    serialised (like :mod:`segment_pipeline.core.sync.state`, but waiting instead of refusing:
    operations are short).

The hash is the SHA-256 hex digest (lowercase) of the UTF-8 bytes of the normalised address
(:func:`segment_pipeline.core.identity.normalize_email`), the form Customer Match and Meta use
(Google Ads "Customer Match data formatting": normalised, SHA-256, hex).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import hashlib
import json
import os
import re
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import duckdb
import pyarrow as pa

from segment_pipeline.core.atomic import (
    FILE_MODE,
    atomic_path,
    open_private,
    private_mkdir,
    temp_sibling,
)
from segment_pipeline.core.identity import email_problem, normalize_email
from segment_pipeline.core.warehouse import sql_string

PRIVACY_DIR = "privacy"
LEDGER_FILE = "ledger.duckdb"
PENDING_DIR = "pending"
TOMBSTONES_FILE = "tombstones.parquet"
DESTINATION_STATES = ("asked", "done", "confirmed", "failed")
_HEX64 = re.compile(r"^[0-9a-fA-F]{64}$")

SCHEMA = """
CREATE TABLE IF NOT EXISTS requests (
    request_id VARCHAR PRIMARY KEY, email_sha256 VARCHAR NOT NULL, requested_at TIMESTAMP NOT NULL,
    source VARCHAR NOT NULL, warehouse_done_at TIMESTAMP, settled_at TIMESTAMP);
CREATE TABLE IF NOT EXISTS tombstones (
    email_sha256 VARCHAR PRIMARY KEY, created_at TIMESTAMP NOT NULL, request_id VARCHAR, lifted_at TIMESTAMP);
CREATE TABLE IF NOT EXISTS destinations (
    request_id VARCHAR NOT NULL, destination VARCHAR NOT NULL, asked_at TIMESTAMP, done_at TIMESTAMP,
    confirmed_at TIMESTAMP, attempts INTEGER NOT NULL DEFAULT 0, last_error VARCHAR,
    PRIMARY KEY (request_id, destination));
CREATE TABLE IF NOT EXISTS meta (key VARCHAR PRIMARY KEY, value VARCHAR);
CREATE TABLE IF NOT EXISTS request_files (
    source_file VARCHAR NOT NULL, version VARCHAR NOT NULL, recorded_at TIMESTAMP NOT NULL,
    requests INTEGER NOT NULL, rejected INTEGER NOT NULL, PRIMARY KEY (source_file, version));
CREATE TABLE IF NOT EXISTS request_rejects (
    source_file VARCHAR NOT NULL, version VARCHAR NOT NULL, source_line BIGINT, reason VARCHAR NOT NULL,
    recorded_at TIMESTAMP NOT NULL);
"""


class InvalidAddressError(ValueError):
    """A deletion request for something that is not an email address (the message names it)."""


def email_sha256(email: str) -> str:
    """SHA-256 hex (64 lowercase digits) of the normalised ``email``."""
    return hashlib.sha256(normalize_email(email).encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class Request:
    request_id: str
    email_sha256: str
    requested_at: dt.datetime
    source: str  # "cli", "landing:<folder>"


@dataclass(frozen=True)
class Pending:
    request_id: str
    email_sha256: str
    email: str


def _write_private(target: Path, text: str) -> None:
    """Publish a small file atomically: written ``0600`` from its creation under a hidden temporary
    name next to it (:func:`~segment_pipeline.core.atomic.temp_sibling`, swept if a crash leaves it),
    then renamed. (Lighter than ``atomic_write_text`` for thousands of pending files.)"""
    tmp = temp_sibling(target)
    fd = open_private(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


class Ledger:
    """<warehouse root>/privacy/: ledger.duckdb (hashes only, never an address; flock-serialised like
    core/sync/state.py, 0600) and pending/<request_id>.json (the normalised address, 0600, written atomically,
    deleted by settle() once the warehouse and every destination confirmed). See the module docstring."""

    def __init__(self, warehouse_root: str | os.PathLike[str]):
        self.dir = Path(warehouse_root).absolute() / PRIVACY_DIR
        self.path = self.dir / LEDGER_FILE
        self.pending_dir = self.dir / PENDING_DIR
        self.tombstones_path = self.dir / TOMBSTONES_FILE

    # -- plumbing ------------------------------------------------------------------------
    @contextlib.contextmanager
    def _open(self, write: bool = True) -> Iterator[duckdb.DuckDBPyConnection]:
        """The ledger, locked for this process, in one transaction (committed on success)."""
        private_mkdir(self.dir)
        fd = open_private(self.dir / "lock", os.O_CREAT | os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            con = duckdb.connect(str(self.path))
            try:
                for path in (self.path, self.path.with_name(self.path.name + ".wal")):
                    with contextlib.suppress(FileNotFoundError):
                        os.chmod(path, FILE_MODE)
                con.execute(SCHEMA)
                con.execute("BEGIN TRANSACTION")
                try:
                    yield con
                except BaseException:
                    con.execute("ROLLBACK")
                    raise
                con.execute("COMMIT")
                if write:
                    self._publish_tombstones(con)
            finally:
                con.close()
                with contextlib.suppress(FileNotFoundError):
                    os.chmod(self.path, FILE_MODE)
        finally:
            os.close(fd)

    def _publish_tombstones(self, con: duckdb.DuckDBPyConnection) -> None:
        """Rewrite ``tombstones.parquet`` when the tombstones changed since it was written (the
        version is bumped in the same transaction as the change, so a crash in between is caught up
        by the next operation)."""
        version = self._meta(con, "tombstones_version") or "0"
        if self.tombstones_path.exists() and self._meta(con, "tombstones_published") == version:
            return
        with atomic_path(self.tombstones_path) as tmp:
            con.execute(f"COPY (SELECT email_sha256 FROM tombstones WHERE lifted_at IS NULL ORDER BY 1) "
                        f"TO {sql_string(str(tmp))} (FORMAT parquet)")
        con.execute("INSERT OR REPLACE INTO meta VALUES ('tombstones_published', ?)", [version])

    @staticmethod
    def _meta(con: duckdb.DuckDBPyConnection, key: str) -> str | None:
        rows = con.execute("SELECT value FROM meta WHERE key = ?", [key]).fetchall()
        return rows[0][0] if rows else None

    @classmethod
    def _bump(cls, con: duckdb.DuckDBPyConnection) -> None:
        version = int(cls._meta(con, "tombstones_version") or "0") + 1
        con.execute("INSERT OR REPLACE INTO meta VALUES ('tombstones_version', ?)", [str(version)])

    def _pending_path(self, request_id: str) -> Path:
        if not re.fullmatch(r"[0-9a-zA-Z_-]+", request_id):
            raise ValueError(f"not a request id: {request_id!r}")
        return self.pending_dir / f"{request_id}.json"

    # -- requests ------------------------------------------------------------------------
    def request(self, emails: Iterable[str], source: str) -> list[Request]:
        """Record a deletion request per address: normalise (core/identity.py), hash (SHA-256 hex
        of the normalised address), write a tombstone and a pending file. Idempotent: an open
        request for the same hash is returned, not duplicated (and its tombstone restored if it was
        lifted); its warehouse step is reopened (``warehouse_done_at`` reset), so the next
        :func:`~.forget.forget` scrubs the warehouse and exports again. Returns one :class:`Request` per distinct address, in input order.

        Raises :class:`InvalidAddressError` (naming the value's position and the reason, never the
        value) if any entry is not a valid address; nothing is recorded then.
        """
        normalised: dict[str, str] = {}
        for n, raw in enumerate(emails, 1):
            problem = email_problem(raw)
            if problem is not None:
                raise InvalidAddressError(f"deletion request entry {n}: {problem}")
            email = normalize_email(raw)
            normalised.setdefault(hashlib.sha256(email.encode("utf-8")).hexdigest(), email)
        self.sweep_pending()
        wanted = list(normalised.items())
        with self._open() as con:
            now = _now()
            con.register("wanted", pa.table({"email_sha256": pa.array([d for d, _ in wanted], pa.string())}))
            open_rows = {r[1]: Request(*r) for r in con.execute("""
                SELECT arg_min(request_id, (requested_at, request_id)), email_sha256, min(requested_at),
                       arg_min(source, (requested_at, request_id))
                FROM requests WHERE settled_at IS NULL AND email_sha256 IN (SELECT email_sha256 FROM wanted)
                GROUP BY email_sha256""").fetchall()}
            if open_rows:  # a repeated request scrubs again (the person may have come back since)
                con.execute("UPDATE requests SET warehouse_done_at = NULL WHERE settled_at IS NULL "
                            "AND email_sha256 IN (SELECT email_sha256 FROM wanted)")
            new = [Request(f"del-{uuid.uuid4().hex}", d, now, source) for d, _ in wanted if d not in open_rows]
            if new:
                con.register("new_requests", pa.table({"request_id": [r.request_id for r in new],
                                                       "email_sha256": [r.email_sha256 for r in new]}))
                con.execute("INSERT INTO requests SELECT request_id, email_sha256, ?, ?, NULL, NULL FROM new_requests",
                            [now, source])
            by_hash = {**open_rows, **{r.email_sha256: r for r in new}}
            out = [by_hash[d] for d, _ in wanted]
            private_mkdir(self.pending_dir)
            for (digest, email), req in zip(wanted, out, strict=True):
                pending = self._pending_path(req.request_id)
                if not pending.exists():
                    _write_private(pending, json.dumps(
                        {"request_id": req.request_id, "email_sha256": digest, "email": email}))
            con.register("all_requests", pa.table({"request_id": [r.request_id for r in out],
                                                   "email_sha256": [r.email_sha256 for r in out]}))
            added = con.execute("""
                INSERT OR REPLACE INTO tombstones
                SELECT email_sha256, ?, request_id, NULL FROM all_requests
                WHERE email_sha256 NOT IN (SELECT email_sha256 FROM tombstones WHERE lifted_at IS NULL)""",
                                [now]).fetchall()[0][0]
            if added:
                self._bump(con)
        return out

    # -- request files -------------------------------------------------------------------
    def file_recorded(self, source_file: str, version: str) -> bool:
        """Whether this version of the request file ``source_file`` was recorded already."""
        if not self.path.exists():
            return False
        with self._open(write=False) as con:
            return bool(con.execute("SELECT count(*) FROM request_files WHERE source_file = ? AND version = ?",
                                    [source_file, version]).fetchall()[0][0])

    def record_file(self, source_file: str, version: str, requests: int,
                    rejects: Iterable[tuple[int | None, str]]) -> None:
        """Record that this version of ``source_file`` was read: ``requests`` recorded, and its
        ``rejects`` ((line, reason), never a value) quarantined in ``request_rejects``."""
        rejects = list(rejects)
        with self._open(write=False) as con:
            now = _now()
            con.execute("INSERT OR REPLACE INTO request_files VALUES (?, ?, ?, ?, ?)",
                        [source_file, version, now, requests, len(rejects)])
            con.execute("DELETE FROM request_rejects WHERE source_file = ? AND version = ?", [source_file, version])
            if rejects:
                con.executemany("INSERT INTO request_rejects VALUES (?, ?, ?, ?, ?)",
                                [[source_file, version, line, reason, now] for line, reason in rejects])

    def rejects(self) -> list[dict]:
        """The quarantined request rows: ``source_file``, ``source_line``, ``reason``, oldest first."""
        if not self.path.exists():
            return []
        with self._open(write=False) as con:
            rows = con.execute("SELECT source_file, source_line, reason FROM request_rejects "
                               "ORDER BY recorded_at, source_file, source_line").fetchall()
        return [{"source_file": f, "source_line": n, "reason": r} for f, n, r in rows]

    def requests(self, open_only: bool = True) -> list[Request]:
        """Requests (open ones by default), oldest first."""
        where = "WHERE settled_at IS NULL" if open_only else ""
        with self._open(write=False) as con:
            rows = con.execute(f"SELECT request_id, email_sha256, requested_at, source FROM requests {where} "
                               "ORDER BY requested_at, request_id").fetchall()
        return [Request(*r) for r in rows]

    def pending(self, request_id: str) -> Pending | None:
        """The request's pending address, None once settled (or never written)."""
        try:
            data = json.loads(self._pending_path(request_id).read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        return Pending(data["request_id"], data["email_sha256"], data["email"])

    def warehouse_todo(self) -> list[Pending]:
        """Open requests whose warehouse scrub is not done yet, oldest first (with their address)."""
        self.sweep_pending()
        with self._open(write=False) as con:
            ids = [r[0] for r in con.execute("""SELECT request_id FROM requests
                   WHERE settled_at IS NULL AND warehouse_done_at IS NULL
                   ORDER BY requested_at, request_id""").fetchall()]
        return [p for p in (self.pending(i) for i in ids) if p is not None]

    def warehouse_done(self, request_id: str) -> None:
        """Record that the identity is gone from the warehouse and export roots (first time kept)."""
        self.warehouse_done_many([request_id])

    def warehouse_done_many(self, request_ids: Iterable[str]) -> None:
        """:meth:`warehouse_done` for many requests in one transaction (KeyError if one is unknown)."""
        ids = sorted(set(request_ids))
        if not ids:
            return
        with self._open(write=False) as con:
            con.register("done_ids", pa.table({"request_id": pa.array(ids, pa.string())}))
            unknown = con.execute("SELECT request_id FROM done_ids WHERE request_id NOT IN "
                                  "(SELECT request_id FROM requests) LIMIT 1").fetchall()
            if unknown:
                raise KeyError(f"no deletion request {unknown[0][0]!r} in the ledger")
            con.execute("UPDATE requests SET warehouse_done_at = coalesce(warehouse_done_at, ?) "
                        "WHERE request_id IN (SELECT request_id FROM done_ids)", [_now()])

    @staticmethod
    def _known(con: duckdb.DuckDBPyConnection, request_id: str) -> None:
        if not con.execute("SELECT count(*) FROM requests WHERE request_id = ?", [request_id]).fetchall()[0][0]:
            raise KeyError(f"no deletion request {request_id!r} in the ledger")

    # -- tombstones ----------------------------------------------------------------------
    def tombstoned(self) -> list[str]:
        """email_sha256 of the tombstones not lifted, sorted."""
        with self._open(write=False) as con:
            return [r[0] for r in con.execute(
                "SELECT email_sha256 FROM tombstones WHERE lifted_at IS NULL ORDER BY 1").fetchall()]

    def tombstone_sql(self) -> str:
        """A DuckDB relation (``SELECT ...``, usable in ``FROM (...)`` or ``IN (...)``) with one
        column ``email_sha256``: the same set as :meth:`tombstoned`, read from
        ``tombstones.parquet`` (brought up to date first) by any connection."""
        with self._open() as con:
            self._publish_tombstones(con)
        if not self.tombstones_path.exists():  # pragma: no cover - written by _open
            return "SELECT NULL::VARCHAR AS email_sha256 LIMIT 0"
        return f"SELECT email_sha256 FROM read_parquet({sql_string(str(self.tombstones_path))})"

    def lift(self, email_or_sha256: str) -> bool:
        """Lift the tombstone of an address (or its SHA-256 hex): later landing files may bring the
        person back. True if a tombstone was lifted, False if there was none."""
        value = email_or_sha256.strip()
        digest = value.lower() if _HEX64.match(value) else email_sha256(value)
        with self._open() as con:
            n = con.execute("SELECT count(*) FROM tombstones WHERE email_sha256 = ? AND lifted_at IS NULL",
                            [digest]).fetchall()[0][0]
            if n:
                con.execute("UPDATE tombstones SET lifted_at = ? WHERE email_sha256 = ?", [_now(), digest])
                self._bump(con)
        return bool(n)

    # -- destinations --------------------------------------------------------------------
    def destination_todo(self, destination: str) -> list[Pending]:
        """Open requests not yet confirmed for ``destination`` (address read from pending/), oldest first."""
        with self._open(write=False) as con:
            ids = [r[0] for r in con.execute("""
                SELECT r.request_id FROM requests r
                LEFT JOIN destinations d ON d.request_id = r.request_id AND d.destination = ?
                WHERE r.settled_at IS NULL AND d.confirmed_at IS NULL
                ORDER BY r.requested_at, r.request_id""", [destination]).fetchall()]
        return [p for p in (self.pending(i) for i in ids) if p is not None]

    def mark(self, request_id: str, destination: str,
             state: Literal["asked", "done", "confirmed", "failed"], detail: str = "") -> None:
        """Record a step of the request at ``destination``: ``asked``/``done``/``confirmed`` set
        ``asked_at``/``done_at``/``confirmed_at`` (the first time only), ``asked`` also counts an
        attempt; ``failed`` stores ``detail`` as ``last_error`` (never put an address or a secret in it)."""
        if state not in DESTINATION_STATES:
            raise ValueError(f"unknown state {state!r}; one of {DESTINATION_STATES}")
        with self._open(write=False) as con:
            self._known(con, request_id)
            con.execute("INSERT OR IGNORE INTO destinations (request_id, destination) VALUES (?, ?)",
                        [request_id, destination])
            now = _now()
            if state == "failed":
                con.execute("UPDATE destinations SET last_error = ? WHERE request_id = ? AND destination = ?",
                            [detail or "failed", request_id, destination])
            else:
                col = {"asked": "asked_at", "done": "done_at", "confirmed": "confirmed_at"}[state]
                extra = ", attempts = attempts + 1" if state == "asked" else ""
                con.execute(f"UPDATE destinations SET {col} = coalesce({col}, ?){extra} "
                            "WHERE request_id = ? AND destination = ?", [now, request_id, destination])

    def mark_many(self, request_ids: Iterable[str], destination: str,
                  state: Literal["asked", "done", "confirmed", "failed"], detail: str = "") -> None:
        """:meth:`mark` for many requests at one destination in one transaction (KeyError if one is
        unknown): the erasure marks a batch of addresses at once (one ledger transaction per batch
        and state, not per address)."""
        if state not in DESTINATION_STATES:
            raise ValueError(f"unknown state {state!r}; one of {DESTINATION_STATES}")
        ids = sorted(set(request_ids))
        if not ids:
            return
        with self._open(write=False) as con:
            con.register("mark_ids", pa.table({"request_id": pa.array(ids, pa.string())}))
            unknown = con.execute("SELECT request_id FROM mark_ids WHERE request_id NOT IN "
                                  "(SELECT request_id FROM requests) LIMIT 1").fetchall()
            if unknown:
                raise KeyError(f"no deletion request {unknown[0][0]!r} in the ledger")
            con.execute("INSERT OR IGNORE INTO destinations (request_id, destination) "
                        "SELECT request_id, ? FROM mark_ids", [destination])
            where = "WHERE destination = ? AND request_id IN (SELECT request_id FROM mark_ids)"
            if state == "failed":
                con.execute(f"UPDATE destinations SET last_error = ? {where}", [detail or "failed", destination])
            else:
                col = {"asked": "asked_at", "done": "done_at", "confirmed": "confirmed_at"}[state]
                extra = {"asked": ", attempts = attempts + 1", "confirmed": ", last_error = NULL"}.get(state, "")
                con.execute(f"UPDATE destinations SET {col} = coalesce({col}, ?){extra} {where}", [_now(), destination])

    def status(self, request_id: str | None = None) -> list[dict]:
        """Per request and destination (one row with ``destination`` None for a request no
        destination has touched yet): ``request_id, email_sha256, requested_at, source,
        warehouse_done_at, settled_at, destination, asked_at, done_at, confirmed_at, attempts,
        last_error``; oldest request first."""
        where, params = ("WHERE r.request_id = ?", [request_id]) if request_id else ("", [])
        with self._open(write=False) as con:
            cur = con.execute(f"""
                SELECT r.request_id, r.email_sha256, r.requested_at, r.source, r.warehouse_done_at, r.settled_at,
                       d.destination, d.asked_at, d.done_at, d.confirmed_at, coalesce(d.attempts, 0) AS attempts,
                       d.last_error
                FROM requests r LEFT JOIN destinations d USING (request_id) {where}
                ORDER BY r.requested_at, r.request_id, d.destination""", params)
            cols = [c[0] for c in cur.description]
            return [dict(zip(cols, row, strict=True)) for row in cur.fetchall()]

    def settle(self, request_id: str, destinations: Iterable[str]) -> bool:
        """Delete pending/<id>.json when the warehouse is done and every given destination
        confirmed; True if the request is settled (now or before)."""
        wanted = sorted(set(destinations))
        with self._open(write=False) as con:
            self._known(con, request_id)
            done, settled = con.execute("SELECT warehouse_done_at, settled_at FROM requests WHERE request_id = ?",
                                        [request_id]).fetchall()[0]
            if settled is None:
                if done is None:
                    return False
                if wanted:
                    confirmed = con.execute(
                        f"SELECT count(*) FROM destinations WHERE request_id = ? AND confirmed_at IS NOT NULL "
                        f"AND destination IN ({', '.join('?' for _ in wanted)})", [request_id, *wanted]).fetchall()[0][0]
                    if confirmed < len(wanted):
                        return False
                con.execute("UPDATE requests SET settled_at = ? WHERE request_id = ?", [_now(), request_id])
        # after the commit: a crash in between leaves a pending file of a settled request, which
        # sweep_pending() (run by every request() and warehouse_todo()) removes
        self._pending_path(request_id).unlink(missing_ok=True)
        return True

    def sweep_pending(self) -> list[str]:
        """Delete pending files of settled requests, and of requests a crash kept from being
        committed (no row); return their request ids."""
        if not self.pending_dir.is_dir():
            return []
        with self._open(write=False) as con:
            open_ids = {r[0] for r in con.execute("SELECT request_id FROM requests WHERE settled_at IS NULL").fetchall()}
            removed = []
            for path in self.pending_dir.glob("*.json"):
                if path.stem not in open_ids:
                    path.unlink(missing_ok=True)
                    removed.append(path.stem)
        return sorted(removed)
