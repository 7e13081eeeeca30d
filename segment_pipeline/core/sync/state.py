"""Per-integration sync state: the destination mirror, rejected rows and the run history.

One DuckDB file per integration, ``<state_dir>/state.duckdb``:

``held(holder, email, segments, updated_at)``
    What the profile/contact ``email`` was last *confirmed* to carry in the property or data field
    ``holder`` (service URL + property/field name, e.g. ``klaviyo|https://a.klaviyo.com|property=nosto_segment``):
    ``segments`` is the JSON list of names (``'[]'`` once cleared). The property belongs to the
    whole profile, not to a list, so this is keyed by the property, never by the list.
``members(container, email, updated_at)``
    The emails confirmed as members of the list/address book ``container`` (service URL + list or
    book id, e.g. ``dotdigital|https://r1-api.dotdigital.com|book=7``). One row per (container,
    email), kept by its writers rather than by a primary key (whose index maintenance doubled the
    cost of confirming a million new members): a confirmed upsert adds only the rows its plan saw
    as non-members, other inserts skip emails already present, and runs are serialized by the lock.

    Both change only after the destination confirmed a batch (job complete, import finished), one
    transaction per batch, so a SIGKILL loses at most the batches in flight, which the next run
    simply sends again. Keeping values and memberships apart is what makes a change of list, book,
    property or field name converge: switching list L1 -> L2 -> L1 still knows what every
    profile's property holds (issue 13, "list switch leaves stale values").
``held_values(holder, email, value, updated_at)``
    What the destination was last *confirmed* to hold in each mapped field (issue 16): ``holder``
    is the service URL + field name (:meth:`Target.field_holder`, e.g.
    ``dotdigital|https://r1-api.dotdigital.com|field=FIRSTNAME``), ``value`` the JSON text sent
    (``'null'`` once cleared). Like ``held``, it belongs to the profile, not to a list.
``truncated(holder, email, kept, dropped, run_id, recorded_at)``
    Profiles whose value was cut to the destination's value-length limit in the latest run that
    planned them: the names kept and the names dropped (JSON lists).
``rejects(dest, email, op, reason, run_id, rejected_at)``
    Rows the destination refused, with its reason; they stay out of the mirror, so the next run
    retries them, and they are deleted once accepted.
``runs(run_id, integration, dest, day, dry_run, status, started_at, finished_at, counts, error)``
    The run history (counts as JSON).

``dest`` (rejects, runs) is the whole destination identity, :class:`Target`.``dest``: service URL,
list/address book id and property/field name. Pointing the sync at another account starts from an
empty mirror; another list re-adds everyone to the new list but sends property values only where
they differ from what the profiles hold; another property name sends everyone's value under it.
A state file written before the split (one ``mirror`` table keyed by ``dest``) is migrated in place
on open.
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
from dataclasses import dataclass
from pathlib import Path

import duckdb
import pyarrow as pa

from segment_pipeline.core.atomic import FILE_MODE, open_private, private_mkdir

SCHEMA = """
CREATE TABLE IF NOT EXISTS held (
    holder VARCHAR NOT NULL, email VARCHAR NOT NULL, segments VARCHAR NOT NULL,
    updated_at TIMESTAMP NOT NULL, PRIMARY KEY (holder, email));
CREATE TABLE IF NOT EXISTS members (
    container VARCHAR NOT NULL, email VARCHAR NOT NULL, updated_at TIMESTAMP NOT NULL);
CREATE TABLE IF NOT EXISTS held_values (
    holder VARCHAR NOT NULL, email VARCHAR NOT NULL, value VARCHAR NOT NULL,
    updated_at TIMESTAMP NOT NULL, PRIMARY KEY (holder, email));
CREATE TABLE IF NOT EXISTS truncated (
    holder VARCHAR NOT NULL, email VARCHAR NOT NULL, kept VARCHAR NOT NULL, dropped VARCHAR NOT NULL,
    run_id VARCHAR NOT NULL, recorded_at TIMESTAMP NOT NULL, PRIMARY KEY (holder, email));
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


@dataclass(frozen=True)
class Target:
    """Where one run sends: ``holder`` keys what profiles carry (service + property/field name),
    ``container`` keys list/book membership (service + list/book id), ``dest`` is both (the run's
    identity in reports, rejects and run history, e.g. ``klaviyo|<url>|list=AbC|property=nosto_segment``)."""

    dest: str
    holder: str
    container: str

    @classmethod
    def of(cls, service: str, base_url: str, container: tuple[str, object], holder: tuple[str, str]) -> Target:
        """``Target.of("klaviyo", url, ("list", "AbC"), ("property", "nosto_segment"))``."""
        head = f"{service}|{base_url.rstrip('/')}"
        c, h = f"{container[0]}={container[1]}", f"{holder[0]}={holder[1]}"
        return cls(f"{head}|{c}|{h}", f"{head}|{h}", f"{head}|{c}")

    def field_holder(self, name: str = "") -> str:
        """The ``held_values`` key of mapped field ``name`` at this target's service
        (``service|url|field=<name>``); without a name, the prefix."""
        parts = self.dest.split("|", 2)
        head = f"{parts[0]}|{parts[1]}" if len(parts) >= 2 else self.dest
        return f"{head}|field={name}"

    @classmethod
    def parse(cls, dest: str) -> Target:
        """The target whose ``dest`` is ``dest`` (``service|url|container|holder``; only the holder,
        the last part, may itself contain ``|``). A dest of another shape is its own holder and container."""
        parts = dest.split("|", 3)
        if len(parts) < 4:
            return cls(dest, dest, dest)
        head = f"{parts[0]}|{parts[1]}"
        return cls(dest, f"{head}|{parts[3]}", f"{head}|{parts[2]}")


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
        self._migrate()

    def _private_files(self) -> None:
        """``chmod 0600`` the database files DuckDB created with the umask's mode (inside the
        ``0700`` folder, so nobody else could open them meanwhile)."""
        for path in (self.path, self.path.with_name(self.path.name + ".wal")):
            with contextlib.suppress(FileNotFoundError):
                os.chmod(path, FILE_MODE)

    def _migrate(self) -> None:
        """Split a pre-13 ``mirror(dest, email, segments, in_list)`` table into ``held`` and ``members``.

        A row with a non-empty value was confirmed by an upsert, which adds to the list/book for
        both destinations, so it is a member; so is any row flagged ``in_list``."""
        has = self.con.execute("SELECT count(*) FROM information_schema.tables WHERE table_name = 'mirror'"
                               ).fetchall()[0][0]
        if not has:
            return
        with self.transaction() as con:
            parts = "string_split(dest, '|')"
            head = f"{parts}[1] || '|' || {parts}[2]"
            rest = f"array_to_string(list_slice({parts}, 4, len({parts})), '|')"
            con.execute(f"""INSERT OR REPLACE INTO held
                            SELECT {head} || '|' || {rest}, email, segments, updated_at FROM mirror
                            WHERE len({parts}) >= 4""")
            con.execute(f"""INSERT INTO members
                            SELECT {head} || '|' || {parts}[3] AS container, email, max(updated_at) FROM mirror
                            WHERE len({parts}) >= 4 AND (in_list OR segments <> '[]') GROUP BY ALL""")
            con.execute("DROP TABLE mirror")

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
    def confirm(self, target: Target, emails: Sequence[str], segments: Sequence[str], member: bool | None = True) -> None:
        """Record, in one transaction, that these profiles now carry ``segments`` (and, with
        ``member`` True/False, are/are not members of the target's list); clears their rejects."""
        if not emails:
            return
        self.confirm_table(target, pa.table({"email": pa.array(list(emails), pa.string()),
                                             "segments": pa.array(list(segments), pa.string())}), member)

    def confirm_table(self, target: Target, batch: pa.Table, member: bool | None = True) -> None:
        """:meth:`confirm` for an Arrow table with columns ``email``, ``segments`` (and optionally
        ``member``: the row is a confirmed member already, as the plan saw it).

        ``member``: True adds the rows to the target's list/book, False removes them, None leaves
        membership as it was (a clear does not touch lists)."""
        if batch.num_rows == 0:
            return
        now = _now()
        with self.transaction() as con:
            con.register("confirmed_batch", batch)
            con.execute("INSERT OR REPLACE INTO held SELECT ?, email, segments, ? FROM confirmed_batch",
                        [target.holder, now])
            if member is True:
                self._add_members(con, target, "member" in batch.column_names, now)
            elif member is False:
                con.execute("DELETE FROM members WHERE container = ? AND email IN (SELECT email FROM confirmed_batch)",
                            [target.container])
            if self._has_rejects(con, target.dest):
                con.execute("DELETE FROM rejects WHERE dest = ? AND email IN (SELECT email FROM confirmed_batch)",
                            [target.dest])
            con.unregister("confirmed_batch")

    def confirm_members(self, target: Target, batch: pa.Table) -> None:
        """Record, in one transaction, that the rows of ``batch`` (``email`` and, optionally, the
        plan's ``member`` flag) are now members of the target's list/audience, for destinations
        that hold members only (no value: nothing goes into ``held``); clears their rejects."""
        if batch.num_rows == 0:
            return
        with self.transaction() as con:
            con.register("confirmed_batch", batch)
            self._add_members(con, target, "member" in batch.column_names, _now())
            if self._has_rejects(con, target.dest):
                con.execute("DELETE FROM rejects WHERE dest = ? AND email IN (SELECT email FROM confirmed_batch)",
                            [target.dest])
            con.unregister("confirmed_batch")

    def confirm_values(self, target: Target, batch: pa.Table) -> None:
        """Record, in one transaction, the mapped-field values the rows of ``batch`` (``email``,
        ``fields``: the JSON object of the changes sent, NULL: none) now hold; ``null`` = cleared."""
        if batch.num_rows == 0 or "fields" not in batch.column_names:
            return
        with self.transaction() as con:
            con.register("confirmed_values", batch.select(["email", "fields"]))
            con.execute("""INSERT OR REPLACE INTO held_values
                           SELECT ? || k, email, json_extract(fields, '$."' || k || '"')::VARCHAR, ?
                           FROM (SELECT email, fields, unnest(json_keys(fields)) AS k
                                 FROM confirmed_values WHERE fields IS NOT NULL)""",
                        [target.field_holder(), _now()])
            con.unregister("confirmed_values")

    def field_values(self, target: Target | str, name: str) -> dict[str, object]:
        """``email -> value`` (decoded JSON; None once cleared) the mirror holds for mapped field
        ``name``. Small-state helper for tests and tools (never used on the sync path)."""
        t = self._target(target)
        rows = self.con.execute("SELECT email, value FROM held_values WHERE holder = ?",
                                [t.field_holder(name)]).fetchall()
        return {e: json.loads(v) for e, v in rows}

    @staticmethod
    def _add_members(con: duckdb.DuckDBPyConnection, target: Target, planned: bool, now: dt.datetime) -> None:
        """Add the rows of ``confirmed_batch`` to the target's list: with ``planned`` (the batch
        carries the plan's ``member`` flag) only those the plan saw as non-members, else those not
        present yet."""
        if planned:
            con.execute("INSERT INTO members SELECT ?, email, ? FROM confirmed_batch WHERE NOT member",
                        [target.container, now])
        else:
            con.execute("""INSERT INTO members SELECT ?, email, ? FROM (SELECT DISTINCT email FROM confirmed_batch)
                           WHERE email NOT IN (SELECT email FROM members WHERE container = ?)""",
                        [target.container, now, target.container])

    @staticmethod
    def _has_rejects(con: duckdb.DuckDBPyConnection, dest: str) -> bool:
        return bool(con.execute("SELECT count(*) FROM rejects WHERE dest = ?", [dest]).fetchall()[0][0])

    def set_in_list(self, target: Target, emails: Sequence[str], in_list: bool) -> None:
        """Record list/book membership alone (list add/remove calls that carry no value)."""
        if not emails:
            return
        batch = pa.table({"email": pa.array(list(emails), pa.string())})
        with self.transaction() as con:
            con.register("confirmed_batch", batch)
            if in_list:
                self._add_members(con, target, False, _now())
            else:
                con.execute("DELETE FROM members WHERE container = ? AND email IN (SELECT email FROM confirmed_batch)",
                            [target.container])
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

    @staticmethod
    def _target(target: Target | str) -> Target:
        return target if isinstance(target, Target) else Target.parse(target)

    def mirror_count(self, target: Target | str) -> int:
        t = self._target(target)
        return self.con.execute("SELECT count(*) FROM held WHERE holder = ? AND segments <> '[]'",
                                [t.holder]).fetchall()[0][0]

    def mirror_rows(self, target: Target | str) -> dict[str, tuple[list[str], bool]]:
        """``email -> (names the profile carries, member of the list)``, for every email the
        target's property or list knows. Small-state helper for tests and tools (never used on the sync path)."""
        t = self._target(target)
        rows = self.con.execute("""
            SELECT coalesce(h.email, m.email), coalesce(h.segments, '[]'), m.email IS NOT NULL
            FROM (SELECT email, segments FROM held WHERE holder = ?) h
            FULL OUTER JOIN (SELECT email FROM members WHERE container = ?) m ON h.email = m.email""",
                                [t.holder, t.container]).fetchall()
        return {e: (json.loads(s), b) for e, s, b in rows}

    def rejects(self, dest: str) -> dict[str, str]:
        return dict(self.con.execute("SELECT email, reason FROM rejects WHERE dest = ?", [dest]).fetchall())

    def truncations(self, target: Target | str) -> dict[str, tuple[list[str], list[str]]]:
        """``email -> (names kept, names dropped)`` for the profiles whose value was cut to the
        destination's limit when last planned."""
        t = self._target(target)
        rows = self.con.execute("SELECT email, kept, dropped FROM truncated WHERE holder = ?", [t.holder]).fetchall()
        return {e: (json.loads(k), json.loads(d)) for e, k, d in rows}

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
