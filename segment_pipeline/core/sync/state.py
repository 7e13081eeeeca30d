"""Per-integration sync state: the destination mirror, rejected rows and the run history.

One DuckDB file per integration, ``<state_dir>/state.duckdb``:

``mirror(dest, email, segments, in_list, updated_at)``
    What the destination ``dest`` was last *confirmed* to hold for ``email``: ``segments`` is the
    JSON list of names its property/data field carries (``'[]'`` once cleared) and ``in_list``
    whether it is a member of our list (Klaviyo). Rows change only after the destination confirmed
    a batch (job complete, import finished), one transaction per batch, so a SIGKILL loses at
    most the batches in flight, which the next run simply sends again.
``rejects(dest, email, op, reason, run_id, rejected_at)``
    Rows the destination refused, with its reason; they stay out of the mirror, so the next run
    retries them, and they are deleted once accepted.
``runs(run_id, integration, dest, day, dry_run, status, started_at, finished_at, counts, error)``
    The run history (counts as JSON).

``dest`` is the destination identity (service URL, list/address book id, property name): pointing
the sync at another account or list starts from an empty mirror, so everyone is sent again.
An exclusive ``flock`` on ``<state_dir>/lock`` keeps two runs of one integration apart.

The mirror holds every synced email: the state folder is created ``0700`` and its files
(``state.duckdb`` and its WAL, ``runs.jsonl``, ``lock``, plans) are ``0600``, whatever the umask.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import duckdb
import pyarrow as pa

from segment_pipeline.core.atomic import FILE_MODE, open_private, private_mkdir

SCHEMA = """
CREATE TABLE IF NOT EXISTS mirror (
    dest VARCHAR NOT NULL, email VARCHAR NOT NULL, segments VARCHAR NOT NULL, in_list BOOLEAN NOT NULL,
    updated_at TIMESTAMP NOT NULL, PRIMARY KEY (dest, email));
CREATE TABLE IF NOT EXISTS rejects (
    dest VARCHAR NOT NULL, email VARCHAR NOT NULL, op VARCHAR NOT NULL, reason VARCHAR NOT NULL,
    run_id VARCHAR NOT NULL, rejected_at TIMESTAMP NOT NULL, PRIMARY KEY (dest, email));
CREATE TABLE IF NOT EXISTS runs (
    run_id VARCHAR PRIMARY KEY, integration VARCHAR, dest VARCHAR, day VARCHAR, dry_run BOOLEAN,
    status VARCHAR, started_at TIMESTAMP, finished_at TIMESTAMP, counts VARCHAR, error VARCHAR);
CREATE TABLE IF NOT EXISTS meta (key VARCHAR PRIMARY KEY, value VARCHAR);
"""


class SyncLockedError(RuntimeError):
    pass


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


class StateStore:
    def __init__(self, state_dir: str | os.PathLike[str]):
        self.dir = Path(state_dir)
        private_mkdir(self.dir)
        self.path = self.dir / "state.duckdb"
        self._lock_fd: int | None = None
        self.con = duckdb.connect(str(self.path))
        self.con.execute(SCHEMA)
        self._private_files()

    def _private_files(self) -> None:
        """``chmod 0600`` the database files DuckDB created with the umask's mode (inside the
        ``0700`` folder, so nobody else could open them meanwhile)."""
        for path in (self.path, self.path.with_name(self.path.name + ".wal")):
            with contextlib.suppress(FileNotFoundError):
                os.chmod(path, FILE_MODE)

    # -- lifecycle -----------------------------------------------------------------------
    def lock(self) -> None:
        fd = open_private(self.dir / "lock", os.O_CREAT | os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise SyncLockedError(f"another sync is running on {self.dir}") from None
        self._lock_fd = fd

    def close(self) -> None:
        with contextlib.suppress(duckdb.Error):
            self._private_files()
        self.con.close()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def __enter__(self) -> StateStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[duckdb.DuckDBPyConnection]:
        self.con.execute("BEGIN TRANSACTION")
        try:
            yield self.con
        except BaseException:
            self.con.execute("ROLLBACK")
            raise
        self.con.execute("COMMIT")

    # -- meta ----------------------------------------------------------------------------
    def get_meta(self, key: str) -> str | None:
        rows = self.con.execute("SELECT value FROM meta WHERE key = ?", [key]).fetchall()
        return rows[0][0] if rows else None

    def set_meta(self, key: str, value: str) -> None:
        self.con.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", [key, value])

    # -- mirror --------------------------------------------------------------------------
    def confirm(self, dest: str, emails: Sequence[str], segments: Sequence[str], in_list: Sequence[bool] | bool) -> None:
        """Record, in one transaction, that ``dest`` now holds these rows; clears their rejects."""
        if not emails:
            return
        flags = [in_list] * len(emails) if isinstance(in_list, bool) else list(in_list)
        self.confirm_table(dest, pa.table({"email": pa.array(list(emails), pa.string()),
                                           "segments": pa.array(list(segments), pa.string()),
                                           "in_list": pa.array(flags, pa.bool_())}))

    def confirm_table(self, dest: str, batch: pa.Table) -> None:
        """:meth:`confirm` for an Arrow table with columns ``email``, ``segments``, ``in_list``."""
        if batch.num_rows == 0:
            return
        with self.transaction() as con:
            con.register("confirmed_batch", batch)
            con.execute("""INSERT OR REPLACE INTO mirror
                           SELECT ?, email, segments, in_list, ? FROM confirmed_batch""", [dest, _now()])
            if self._has_rejects(con, dest):
                con.execute("DELETE FROM rejects WHERE dest = ? AND email IN (SELECT email FROM confirmed_batch)",
                            [dest])
            con.unregister("confirmed_batch")

    @staticmethod
    def _has_rejects(con: duckdb.DuckDBPyConnection, dest: str) -> bool:
        return bool(con.execute("SELECT count(*) FROM rejects WHERE dest = ?", [dest]).fetchall()[0][0])

    def set_in_list(self, dest: str, emails: Sequence[str], in_list: bool) -> None:
        if not emails:
            return
        batch = pa.table({"email": pa.array(list(emails), pa.string())})
        with self.transaction() as con:
            con.register("confirmed_batch", batch)
            con.execute("""UPDATE mirror SET in_list = ?, updated_at = ?
                           WHERE dest = ? AND email IN (SELECT email FROM confirmed_batch)""", [in_list, _now(), dest])
            con.unregister("confirmed_batch")

    def reject(self, dest: str, rows: Sequence[tuple[str, str, str]], run_id: str) -> None:
        """``rows`` of (email, op, reason)."""
        if not rows:
            return
        batch = pa.table({"email": [r[0] for r in rows], "op": [r[1] for r in rows], "reason": [r[2] for r in rows]})
        with self.transaction() as con:
            con.register("rejected_batch", batch)
            con.execute("INSERT OR REPLACE INTO rejects SELECT ?, email, op, reason, ?, ? FROM rejected_batch",
                        [dest, run_id, _now()])
            con.unregister("rejected_batch")

    def mirror_count(self, dest: str) -> int:
        return self.con.execute("SELECT count(*) FROM mirror WHERE dest = ? AND segments <> '[]'", [dest]).fetchall()[0][0]

    def mirror_rows(self, dest: str) -> dict[str, tuple[list[str], bool]]:
        """Small-state helper for tests and tools (never used on the sync path)."""
        rows = self.con.execute("SELECT email, segments, in_list FROM mirror WHERE dest = ?", [dest]).fetchall()
        return {e: (json.loads(s), b) for e, s, b in rows}

    def rejects(self, dest: str) -> dict[str, str]:
        return dict(self.con.execute("SELECT email, reason FROM rejects WHERE dest = ?", [dest]).fetchall())

    # -- runs ----------------------------------------------------------------------------
    def start_run(self, run_id: str, integration: str, dest: str, day: str, dry_run: bool) -> None:
        self.con.execute("INSERT INTO runs VALUES (?, ?, ?, ?, ?, 'running', ?, NULL, NULL, NULL)",
                         [run_id, integration, dest, day, dry_run, _now()])

    def finish_run(self, run_id: str, status: str, counts: dict[str, object], error: str | None = None) -> None:
        self.con.execute("UPDATE runs SET status = ?, finished_at = ?, counts = ?, error = ? WHERE run_id = ?",
                         [status, _now(), json.dumps(counts), error, run_id])
        with os.fdopen(open_private(self.dir / "runs.jsonl"), "a", encoding="utf-8") as fh:
            fh.write(json.dumps({"run_id": run_id, "status": status, "finished_at": _now().isoformat(),
                                 "error": error, **counts}) + "\n")

    def runs(self, limit: int = 50) -> list[dict[str, object]]:
        cur = self.con.execute("SELECT * FROM runs ORDER BY started_at DESC LIMIT ?", [limit])
        cols = [d[0] for d in cur.description]
        return [dict(zip(cols, r, strict=True)) for r in cur.fetchall()]
