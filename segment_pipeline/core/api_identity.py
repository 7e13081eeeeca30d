"""Identity lookups for the segment API: which segments one email belongs to on a day.

A lookup must be fast at any warehouse size, so the first lookup of a day builds an on-disk index
(SQLite, primary key on the normalized email) from that day's ``profiles``, ``memberships`` and
``segment_stats`` partitions, streamed out of DuckDB in sorted batches: memory stays bounded and
each later lookup is one B-tree probe. Index files live in ``<state dir>/identity_index/`` and are
named after the day and a fingerprint of the three partition files (path, size, mtime), so a
re-run of the day builds a new index and the old one is removed. They are a cache: delete them at
will. An index holds every email with its segments: the folder is created ``0700`` and each index
is written ``0600`` before it is published (:func:`segment_pipeline.core.atomic.atomic_path`,
which also removes the leftovers of a build that was killed).

Emails are normalized and validated exactly as ingestion does: both use the one rule of
``core/identity.py`` (white space and invisible characters stripped at both ends, lowercased,
ESP-compatible syntax), so a lookup of ``" Anna@Example.com"`` finds what ingestion stored.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import sqlite3
import threading
import time
from pathlib import Path

from segment_pipeline.core.atomic import atomic_path, open_private, private_mkdir
from segment_pipeline.core.identity import email_problem, is_email, normalize_email
from segment_pipeline.core.privacy.filters import privacy_fingerprint, sendable_memberships
from segment_pipeline.core.privacy.suppression import keep_email_sql
from segment_pipeline.core.warehouse import Warehouse, connect

__all__ = ["IdentityIndex", "email_problem", "is_email", "normalize_email"]

TABLES = ("profiles", "memberships", "segment_stats")
_local = threading.local()


class IdentityIndex:
    def __init__(
        self, warehouse: Warehouse, cache_dir: str | os.PathLike[str], memory_limit: str = "1GB",
        recheck_seconds: float = 1.0,
    ):
        self.warehouse = warehouse
        self.recheck_seconds = recheck_seconds  # how long a seen state of the warehouse is trusted
        self._latest: tuple[float, dt.date | None] = (-1e18, None)
        self._paths: dict[dt.date, tuple[float, Path]] = {}
        self.cache_dir = Path(cache_dir)
        self.memory_limit = memory_limit
        self._build_locks: dict[dt.date, threading.Lock] = {}
        self._locks_guard = threading.Lock()

    def days(self) -> list[dt.date]:
        """Days with all three partitions, ascending."""
        common = set(self.warehouse.partition_dates("memberships"))
        for table in ("profiles", "segment_stats"):
            common &= set(self.warehouse.partition_dates(table))
        return sorted(common)

    def latest_day(self) -> dt.date | None:
        checked, day = self._latest
        now = time.monotonic()
        if now - checked > self.recheck_seconds:
            days = self.days()
            day = days[-1] if days else None
            self._latest = (now, day)
        return day

    def has_day(self, day: dt.date) -> bool:
        return all(self.warehouse.has_partition(t, day) for t in TABLES)

    def _fingerprint(self, day: dt.date) -> str:
        h = hashlib.sha256()
        for table in TABLES:
            path = self.warehouse.partition_path(table, day)
            st = path.stat()
            h.update(f"{path}|{st.st_size}|{st.st_mtime_ns}|{st.st_ino}\n".encode())
        h.update(privacy_fingerprint(self.warehouse).encode())  # a list or gate change rebuilds the index
        return h.hexdigest()[:16]

    def index_path(self, day: dt.date) -> Path:
        """The index of ``day``, built first if missing or stale."""
        now = time.monotonic()
        seen = self._paths.get(day)
        if seen is not None and now - seen[0] <= self.recheck_seconds and seen[1].exists():
            return seen[1]
        path = self._index_path(day)
        self._paths[day] = (now, path)
        return path

    def _index_path(self, day: dt.date) -> Path:
        path = self.cache_dir / f"identity-{day.isoformat()}-{self._fingerprint(day)}.sqlite"
        if path.exists():
            return path
        with self._locks_guard:
            lock = self._build_locks.setdefault(day, threading.Lock())
        with lock:
            if not path.exists():
                self._build(day, path)
        return path

    def _build(self, day: dt.date, target: Path) -> None:
        private_mkdir(self.cache_dir)
        with atomic_path(target) as tmp:
            self._write_index(day, tmp)
        for old in self.cache_dir.glob(f"identity-{day.isoformat()}-*.sqlite"):
            if old != target:
                old.unlink(missing_ok=True)  # open readers keep their file until they close it

    def _write_index(self, day: dt.date, tmp: Path) -> None:
        wh = self.warehouse
        sql = f"""
            WITH names AS (
                SELECT segment_id, any_value(segment_name) AS segment_name
                FROM {wh.scan("segment_stats", days=[day])} GROUP BY segment_id),
            ids AS (
                SELECT identity_id, any_value(email) AS email FROM (
                    SELECT identity_id, email FROM {wh.scan("profiles", days=[day])} AS p
                    WHERE {keep_email_sql(wh, "p.email")}  -- suppressed: an unknown identity to the API
                    UNION ALL SELECT identity_id, email FROM {sendable_memberships(wh, days=[day])})
                WHERE email IS NOT NULL GROUP BY identity_id),
            per AS (
                SELECT m.identity_id,
                       to_json(list({{'id': m.segment_id, 'name': coalesce(n.segment_name, m.segment_id)}}
                                    ORDER BY m.segment_id))::VARCHAR AS segments
                FROM (SELECT DISTINCT segment_id, identity_id FROM {sendable_memberships(wh, days=[day])}) m
                LEFT JOIN names n USING (segment_id)
                GROUP BY m.identity_id)
            SELECT ids.email, ids.identity_id, coalesce(per.segments, '[]') AS segments
            FROM ids LEFT JOIN per USING (identity_id)
            ORDER BY ids.email
        """
        con = connect(memory_limit=self.memory_limit, preserve_order=True)
        os.close(open_private(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL))  # 0600 from its creation
        db = sqlite3.connect(tmp)
        try:
            db.execute("PRAGMA journal_mode = OFF")
            db.execute("PRAGMA synchronous = OFF")
            db.execute(
                "CREATE TABLE identities (email TEXT PRIMARY KEY, identity_id TEXT NOT NULL, segments TEXT NOT NULL) "
                "WITHOUT ROWID"
            )
            reader = con.sql(sql).to_arrow_reader(50_000)
            for batch in reader:
                cols = batch.to_pydict()
                db.executemany(
                    "INSERT OR REPLACE INTO identities VALUES (?, ?, ?)",
                    zip(cols["email"], cols["identity_id"], cols["segments"], strict=True),
                )
            db.commit()
        finally:
            db.close()
            con.close()

    def _connection(self, path: Path) -> sqlite3.Connection:
        conns: dict[Path, sqlite3.Connection] | None = getattr(_local, "sqlite", None)
        if conns is None:
            conns = _local.sqlite = {}
        db = conns.get(path)
        if db is None:
            for stale in [p for p in conns if not p.exists()]:
                conns.pop(stale).close()
            db = conns[path] = sqlite3.connect(f"file:{path}?mode=ro&immutable=1", uri=True, check_same_thread=False)
        return db

    def lookup(self, email: str, day: dt.date) -> dict | None:
        """``{"email", "identity_id", "date", "segments": [{"id", "name"}]}`` or None if unknown.

        ``email`` must already be normalized (:func:`normalize_email`).
        """
        db = self._connection(self.index_path(day))
        rows = db.execute("SELECT identity_id, segments FROM identities WHERE email = ?", [email]).fetchall()
        if not rows:
            return None
        identity_id, segments = rows[0]
        return {"email": email, "identity_id": identity_id, "date": day.isoformat(), "segments": json.loads(segments)}
