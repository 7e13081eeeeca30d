"""Deletion requests propagated to every destination, retried until each confirms (issue 15, part 3).

One pass (:func:`propagate`), for every configured destination (one whose credentials are set),
over the requests of the deletion ledger (:class:`~segment_pipeline.core.privacy.ledger.Ledger`)
that destination has not confirmed yet:

0. only requests whose warehouse scrub is done (``warehouse_done``) are propagated: until then a
   sync could still send the person from a memberships file not yet scrubbed, re-creating the
   contact after the vendor confirmed its deletion (and after the mirror forgot it);
1. ``ledger.mark_many(..., "asked")`` for a batch of addresses (:attr:`Destination.erase_batch`), then
   :meth:`Destination.erase`: the vendor's own deletion endpoint (Klaviyo's data-privacy deletion
   job, dotdigital contact deletion, Braze ``/users/delete``, removal from every Meta audience the
   sync filled; each adapter's docstring cites the vendor pages);
2. per address: ``done`` when the vendor accepted the deletion, ``confirmed`` only on the vendor's
   confirmation or verified absence (its own lookup no longer finds the contact), ``failed`` with
   the reason otherwise (faults, throttling beyond the retry budget, refused credentials). What is
   not confirmed is asked again on the next pass: vendors' deletions are idempotent and every
   adapter looks the contact up first, so asking twice deletes nothing twice;
3. the destination's sync mirror (``<warehouse>/sync_state/<name>/state.duckdb``: every table
   with an ``email`` column, :func:`mirror_tables`: ``held``, ``held_values``, ``members``,
   ``truncated``, ``rejects`` today) loses the confirmed addresses, matched by SHA-256, and
   the file is rewritten into a fresh one (``COPY FROM DATABASE``, then an atomic rename), so the
   deleted rows' bytes do not survive in free blocks of the old file; plan files a killed sync left
   behind (``plans/*.parquet``, which hold addresses) are removed too. This runs under the mirror's
   lock (a sync of that destination running now: the rewrite waits for the next pass);
4. ``ledger.settle`` with the configured destinations: the pending address is deleted once the
   warehouse scrub and every destination confirmed. A registered destination without credentials
   whose mirror still holds the address (it was synced there before its credentials were removed)
   keeps the request open: settling would delete the only copy of the address its deletion needs.
   The pass names such destinations (``unconfigured_with_mirror``); removing that destination's
   ``sync_state/<name>`` folder says the account is gone.

SIGKILL-safe: every step is recorded in the ledger (its own transaction) before the next one; a
pass killed anywhere is finished by the next pass without duplicate ledger rows or lost
confirmations (a confirmation is never taken back, and a deletion re-asked is looked up first).
The mirror rewrite is marked by a file (``sync_state/<name>/erasure-rewrite``) written before
the deletion commits and removed after the rename, so a kill in between is caught up by the next
pass.

Nothing here puts an address into a log line, an error, the ledger or metadata: addresses are
referred to by their SHA-256 prefix, and vendor error texts are stripped of the address.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import os
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import duckdb
import pyarrow as pa

from segment_pipeline.core.atomic import FILE_MODE, open_private
from segment_pipeline.core.esp.http import EspAuthError, EspError
from segment_pipeline.core.privacy.ledger import Ledger, Pending
from segment_pipeline.core.sync.destinations import DESTINATIONS
from segment_pipeline.core.sync.engine import Destination, Erasure
from segment_pipeline.core.sync.state import StateStore, SyncLockedError, Target
from segment_pipeline.core.warehouse import sql_ident, sql_string

Log = Callable[[str], None]

#: Present in a mirror's folder from before erased rows are deleted until the fresh copy replaced it.
REWRITE_MARK = "erasure-rewrite"
SYNC_STATE = "sync_state"


@dataclass
class DestinationErasure:
    """One destination's part of a pass. Counts are addresses (requests), not API calls."""

    destination: str
    asked: int = 0
    confirmed: int = 0
    #: accepted by the vendor, not verified yet (checked again next pass)
    done: int = 0
    failed: int = 0
    #: rows removed from the sync mirror, and whether the mirror file was rewritten
    mirror_rows_removed: int = 0
    mirror_rewritten: bool = False
    #: stale plan files (addresses) removed from the mirror's folder
    stale_plans_removed: int = 0
    #: why the mirror was not rewritten this pass (a sync running), or None
    mirror_skipped: str | None = None
    #: a failure of the whole destination (credentials, unreachable), without any address
    error: str | None = None
    #: requests not asked yet because their warehouse scrub is not done (next pass)
    waiting_for_warehouse: int = 0


@dataclass
class ErasureReport:
    """What one pass did (the Dagster asset's metadata: :meth:`metadata`)."""

    destinations: dict[str, DestinationErasure] = field(default_factory=dict)
    open_requests: int = 0
    settled: int = 0
    #: registered destinations without credentials whose mirror shows real syncs: the vendor may
    #: still hold the people asked to be forgotten, and nothing here can delete them
    unconfigured_with_mirror: list[str] = field(default_factory=list)
    #: per such destination: open requests whose address its mirror holds (they are not settled)
    blocked: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not any(d.failed or d.error for d in self.destinations.values())

    def metadata(self) -> dict[str, object]:
        out: dict[str, object] = {"open_requests": self.open_requests, "settled": self.settled,
                                  "destinations": ", ".join(sorted(self.destinations)) or "none configured"}
        for name, d in sorted(self.destinations.items()):
            for key in ("asked", "confirmed", "done", "failed", "waiting_for_warehouse", "mirror_rows_removed",
                        "stale_plans_removed"):
                out[f"{name}_{key}"] = getattr(d, key)
            if d.error:
                out[f"{name}_error"] = d.error
            if d.mirror_skipped:
                out[f"{name}_mirror_skipped"] = d.mirror_skipped
        if self.unconfigured_with_mirror:
            out["unconfigured_with_mirror"] = ", ".join(self.unconfigured_with_mirror)
            for name, n in sorted(self.blocked.items()):
                out[f"{name}_blocked_unconfigured"] = n
        return out


def _tag(digest: str) -> str:
    return f"sha256:{digest[:12]}"


def redact(text: str, emails: Iterable[str]) -> str:
    """``text`` with every given address (as is and URL-encoded) replaced by ``<address>``."""
    for email in emails:
        for form in {email, quote(email, safe=""), quote(email, safe="@")}:
            if form:
                text = text.replace(form, "<address>")
    return text


def _chunks(items: Sequence[Pending], size: int) -> Iterable[Sequence[Pending]]:
    for i in range(0, len(items), max(1, size)):
        yield items[i:i + max(1, size)]


# -- the mirror --------------------------------------------------------------------------------
@contextlib.contextmanager
def mirror_lock(state_dir: Path) -> Iterator[None]:
    """The mirror's exclusive lock (the one a sync holds: :meth:`StateStore.lock`), without
    waiting: :class:`SyncLockedError` while a sync of the destination runs. No folder, no lock."""
    state_dir = Path(state_dir)
    if not state_dir.is_dir():
        yield
        return
    fd = open_private(state_dir / "lock", os.O_CREAT | os.O_RDWR)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise SyncLockedError(f"a sync is running on {state_dir.name}") from None
        yield
    finally:
        os.close(fd)


def mirror_tables(con: duckdb.DuckDBPyConnection) -> list[str]:
    """The tables of the mirror open on ``con`` that hold addresses: every table of its own
    database with a column ``email`` (read from ``information_schema``, so a table a later issue
    adds to :mod:`segment_pipeline.core.sync.state`, like issue 16's ``held_values``, is erased too)."""
    return [r[0] for r in con.execute(
        "SELECT DISTINCT table_name FROM information_schema.columns WHERE table_catalog = current_database() "
        "AND table_schema = 'main' AND column_name = 'email' ORDER BY table_name").fetchall()]


def _read_mirror(state_dir: Path, sql: str | Callable[[duckdb.DuckDBPyConnection], str]) -> list[tuple[Any, ...]]:
    """Rows of ``sql`` (or of the query ``sql(con)`` builds) over the mirror (caller holds
    :func:`mirror_lock`); none without a mirror."""
    path = Path(state_dir) / "state.duckdb"
    if not path.exists():
        return []
    con = duckdb.connect(str(path), read_only=True)
    try:
        return con.execute(sql if isinstance(sql, str) else sql(con)).fetchall()
    finally:
        con.close()


def mirror_containers(state_dir: Path) -> list[str]:
    """Every container (list, book, audience) the destination's mirror has held members of or run
    against (:attr:`Target.container`); empty without a mirror. Takes the mirror's lock
    (:class:`SyncLockedError` while a sync runs)."""
    with mirror_lock(state_dir):
        rows = _read_mirror(state_dir, "SELECT DISTINCT container FROM members")
        dests = _read_mirror(state_dir, "SELECT DISTINCT dest FROM runs WHERE NOT coalesce(dry_run, false)")
    return sorted({r[0] for r in rows} | {Target.parse(d[0]).container for d in dests if d[0]})


def has_real_runs(state_dir: Path) -> bool:
    """Whether the mirror records a real (not dry) sync run (a sync running now: assumed so)."""
    try:
        with mirror_lock(state_dir):
            rows = _read_mirror(state_dir, "SELECT count(*) FROM runs WHERE NOT coalesce(dry_run, false)")
    except SyncLockedError:
        return True
    return bool(rows and rows[0][0])


@dataclass(frozen=True)
class MirrorScrub:
    rows_removed: int
    rewritten: bool
    stale_plans_removed: int


def scrub_mirror(state_dir: Path, hashes: Collection[str]) -> MirrorScrub:
    """Remove the addresses whose SHA-256 hex is in ``hashes`` from the mirror under ``state_dir``
    (tables :func:`mirror_tables`) and rewrite ``state.duckdb`` into a fresh file, under the
    mirror's lock. Raises :class:`SyncLockedError` while a sync of the destination runs.

    Rewritten only when rows were removed now or by a pass killed before its rename (the mark);
    stale plan files (a killed sync's, holding addresses) are removed whenever the lock is held.
    """
    state_dir = Path(state_dir)
    path = state_dir / "state.duckdb"
    if not path.exists():
        return MirrorScrub(0, False, 0)
    rewritten = False
    removed = plans = 0
    with mirror_lock(state_dir):
        if not hashes and not (state_dir / REWRITE_MARK).exists():
            return MirrorScrub(0, False, _remove_stale_plans(state_dir))
        store = StateStore(state_dir)  # opened under the lock: no sync has the file open
        try:
            plans, removed, rewritten = _scrub_locked(store, state_dir, path, hashes)
        finally:
            with contextlib.suppress(Exception):
                store.close()
    return MirrorScrub(removed, rewritten, plans)


def _scrub_locked(store: StateStore, state_dir: Path, path: Path, hashes: Collection[str]) -> tuple[int, int, bool]:
    """:func:`scrub_mirror`'s work, lock held: ``(stale plans removed, rows removed, rewritten)``."""
    plans = _remove_stale_plans(state_dir)
    con = store.con
    removed = 0
    mark = state_dir / REWRITE_MARK
    if hashes:
        con.register("erased_hashes", pa.table({"email_sha256": pa.array(sorted(hashes), pa.string())}))
        with store.transaction():
            for table in mirror_tables(con):
                where = f"FROM {sql_ident(table)} WHERE sha256(email) IN (SELECT email_sha256 FROM erased_hashes)"
                n = con.execute(f"SELECT count(*) {where}").fetchall()[0][0]
                if n:
                    if not mark.exists():  # before the deletion commits: a kill until the rename is caught up
                        os.close(open_private(mark, os.O_CREAT | os.O_WRONLY))
                    con.execute(f"DELETE {where}")
                    removed += n
        con.unregister("erased_hashes")
    if removed or mark.exists():
        _rewrite(store, path)
        mark.unlink(missing_ok=True)
        return plans, removed, True
    return plans, removed, False


def _remove_stale_plans(state_dir: Path) -> int:
    """Plan files are deleted by the run that wrote them; under the lock, any left is a killed run's."""
    n = 0
    for plan in (state_dir / "plans").glob("*.parquet") if (state_dir / "plans").is_dir() else ():
        plan.unlink(missing_ok=True)
        n += 1
    return n


def _rewrite(store: StateStore, path: Path) -> None:
    """Copy the open mirror into a fresh file and rename it over ``path`` (lock held by the caller)."""
    tmp = path.with_name(path.name + ".erasure-tmp")
    for leftover in (tmp, tmp.with_name(tmp.name + ".wal")):
        leftover.unlink(missing_ok=True)
    con = store.con
    catalog = con.execute("SELECT current_database()").fetchall()[0][0]
    con.execute(f"ATTACH {sql_string(str(tmp))} AS erasure_fresh")
    try:
        con.execute(f"COPY FROM DATABASE {catalog} TO erasure_fresh")
    finally:
        con.execute("DETACH erasure_fresh")
    os.chmod(tmp, FILE_MODE)
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    con.close()  # checkpoints the old file; its WAL (if any) is about the old file only
    os.replace(tmp, path)
    path.with_name(path.name + ".wal").unlink(missing_ok=True)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    # StateStore.close() closes the connection again (a no-op); the caller releases the lock


# -- destinations --------------------------------------------------------------------------------
def destination_from_options(name: str, given: Mapping[str, Any]) -> Destination | None:
    """The registered destination ``name`` built from option values (``Option.name -> value``),
    or None when its credentials are not set (it cannot erase: a dry-run destination)."""
    cls = DESTINATIONS[name]
    values = cls.option_values(given)
    client = cls.client_from(values)
    return None if client is None else cls(client, cls.settings_from(values))


def destinations_from_env(environ: Mapping[str, str] | None = None) -> dict[str, Destination]:
    """Every registered destination whose credentials are set in the environment (the variables
    each :class:`~segment_pipeline.core.sync.engine.Option` declares, as the sync resources read them)."""
    env = os.environ if environ is None else environ
    out: dict[str, Destination] = {}
    for name, cls in DESTINATIONS.items():
        d = destination_from_options(name, {o.name: env.get(o.env) for o in cls.options})
        if d is not None:
            out[name] = d
    return out


# -- one pass ----------------------------------------------------------------------------------
def propagate(warehouse_root: str | os.PathLike[str], destinations: Mapping[str, Destination], *,
              log: Log | None = None) -> ErasureReport:
    """One propagation pass (see the module docstring) over ``destinations`` (registry name ->
    adapter with a client; build them with :func:`destinations_from_env` or from the Dagster
    resources). Returns the pass's :class:`ErasureReport`; raises only on a broken ledger or
    mirror file (vendor failures are recorded per request and destination)."""
    log = log or (lambda _m: None)
    root = Path(warehouse_root)
    ledger = Ledger(root)
    report = ErasureReport()
    scrubbed = {r["request_id"] for r in ledger.status() if r["warehouse_done_at"] is not None}
    for name, d in sorted(destinations.items()):
        if d.client is None:
            continue
        report.destinations[name] = _propagate_one(ledger, root, name, d, scrubbed, log)
    confirmed = _confirmed_open_hashes(ledger)
    for name, rep in sorted(report.destinations.items()):
        if rep.mirror_skipped is None:
            _scrub(name, root / SYNC_STATE / name, confirmed.get(name, set()), rep, log)
    open_requests = ledger.requests(open_only=True)
    blocked: set[str] = set()
    for name in sorted(set(DESTINATIONS) - set(report.destinations)):
        state_dir = root / SYNC_STATE / name
        if not has_real_runs(state_dir):
            continue
        report.unconfigured_with_mirror.append(name)
        held = _hashes_in_mirror(state_dir, {r.email_sha256 for r in open_requests})
        report.blocked[name] = len(held)
        blocked |= held
        log(f"erasure: {name} has synced contacts but no credentials now: {len(held)} of the people asked to be "
            "forgotten are in its mirror, so their requests stay open (set its credentials to erase there, or "
            f"remove {SYNC_STATE}/{name} once the account is gone)")
    names = sorted(report.destinations)
    mirrors_current = all(r.mirror_skipped is None for r in report.destinations.values())
    ready = _settleable(ledger, names) if mirrors_current else set()
    for req in open_requests:
        # ledger.settle decides; the one status read above only spares it the requests still waiting
        if req.request_id in ready and req.email_sha256 not in blocked and ledger.settle(req.request_id, names):
            report.settled += 1
            log(f"erasure: request {req.request_id} ({_tag(req.email_sha256)}) settled")
        else:
            report.open_requests += 1
    return report


def _settleable(ledger: Ledger, names: Sequence[str]) -> set[str]:
    """Open requests whose warehouse scrub is done and which every destination of ``names`` confirmed."""
    done: dict[str, set[str]] = {}
    for row in ledger.status():
        if row["settled_at"] is None and row["warehouse_done_at"] is not None:
            confirmed = done.setdefault(row["request_id"], set())
            if row["destination"] and row["confirmed_at"] is not None:
                confirmed.add(row["destination"])
    return {rid for rid, confirmed in done.items() if confirmed >= set(names)}


def _hashes_in_mirror(state_dir: Path, hashes: Collection[str]) -> set[str]:
    """Which of ``hashes`` (SHA-256 of addresses) the destination's mirror holds (all while a sync runs)."""
    if not hashes:
        return set()
    def query(con: duckdb.DuckDBPyConnection) -> str:
        union = " UNION ".join(f"SELECT sha256(email) AS h FROM {sql_ident(t)}" for t in mirror_tables(con))
        return f"SELECT DISTINCT h FROM ({union})"

    try:
        with mirror_lock(state_dir):
            rows = _read_mirror(state_dir, query)
    except SyncLockedError:
        return set(hashes)
    return set(hashes) & {r[0] for r in rows}


def _propagate_one(ledger: Ledger, root: Path, name: str, d: Destination, scrubbed: Collection[str],
                   log: Log) -> DestinationErasure:
    rep = DestinationErasure(name)
    state_dir = root / SYNC_STATE / name
    todo = ledger.destination_todo(name)
    rep.waiting_for_warehouse = sum(1 for p in todo if p.request_id not in scrubbed)
    todo = [p for p in todo if p.request_id in scrubbed]  # see the module docstring, step 1
    if todo and not d.erase_batch:
        rep.error = f"{name} cannot erase contacts (no deletion endpoint in its adapter)"
        rep.failed = len(todo)
        ledger.mark_many([p.request_id for p in todo], name, "failed", rep.error)
        log(f"erasure: {rep.error}")
        todo = []
    try:
        known = mirror_containers(state_dir) if todo else []
    except SyncLockedError:
        rep.mirror_skipped = f"a {name} sync holds the mirror; its deletions wait for the next pass"
        log(f"erasure: {rep.mirror_skipped}")
        return rep
    for chunk in _chunks(todo, d.erase_batch):
        emails = [p.email for p in chunk]
        ids = [p.request_id for p in chunk]
        ledger.mark_many(ids, name, "asked")  # one transaction per batch and state
        rep.asked += len(chunk)
        try:
            results = d.erase(emails, known)
        except EspError as exc:
            detail = redact(str(exc), emails)[:500]
            ledger.mark_many(ids, name, "failed", detail)
            rep.failed += len(chunk)
            rep.error = detail
            log(f"erasure: {name}: {len(chunk)} deletions failed: {detail}")
            if isinstance(exc, EspAuthError):
                rest = todo[todo.index(chunk[-1]) + 1:]
                ledger.mark_many([p.request_id for p in rest], name, "failed", f"not asked: {detail}")
                rep.failed += len(rest)
                break
            continue
        failed: dict[str, list[str]] = {}
        accepted: list[str] = []
        confirmed: list[str] = []
        for p in chunk:
            r = results.get(p.email) or Erasure("failed", "the destination gave no result for this address")
            if r.state == "failed":
                detail = redact(r.detail, [p.email])[:500]
                failed.setdefault(detail, []).append(p.request_id)
                log(f"erasure: {name}: {_tag(p.email_sha256)} failed: {detail}")
                continue
            accepted.append(p.request_id)
            if r.state == "confirmed":
                confirmed.append(p.request_id)
        for detail, failed_ids in failed.items():
            ledger.mark_many(failed_ids, name, "failed", detail)
        ledger.mark_many(accepted, name, "done")
        ledger.mark_many(confirmed, name, "confirmed")
        rep.failed += sum(len(v) for v in failed.values())
        rep.confirmed += len(confirmed)
        rep.done += len(accepted) - len(confirmed)
    if todo:
        log(f"erasure: {name}: {rep.asked} asked, {rep.confirmed} confirmed, {rep.done} awaiting confirmation, "
            f"{rep.failed} failed")
    return rep


def _confirmed_open_hashes(ledger: Ledger) -> dict[str, set[str]]:
    """Destination -> SHA-256 of the open requests it confirmed (what its mirror must not hold)."""
    out: dict[str, set[str]] = {}
    for row in ledger.status():
        if row["destination"] and row["confirmed_at"] is not None and row["settled_at"] is None:
            out.setdefault(row["destination"], set()).add(row["email_sha256"])
    return out


def _scrub(name: str, state_dir: Path, hashes: set[str], rep: DestinationErasure, log: Log) -> None:
    try:
        done = scrub_mirror(state_dir, hashes)
    except SyncLockedError:
        rep.mirror_skipped = f"a {name} sync holds the mirror; rewritten on the next pass"
        log(f"erasure: {name}: {rep.mirror_skipped}")
        return
    rep.mirror_rows_removed, rep.mirror_rewritten, rep.stale_plans_removed = (
        done.rows_removed, done.rewritten, done.stale_plans_removed)
    if done.rows_removed or done.rewritten:
        log(f"erasure: {name}: {done.rows_removed} mirror rows removed; state.duckdb rewritten")


# -- status ------------------------------------------------------------------------------------
def status_rows(warehouse_root: str | os.PathLike[str], request_id: str | None = None) -> list[dict[str, Any]]:
    """The ledger per request and destination (hashes only), for ``segment-pipeline erasure status``."""
    return Ledger(warehouse_root).status(request_id)


def format_status(rows: Sequence[Mapping[str, Any]]) -> str:
    """A plain-text table of :func:`status_rows`: one line per request and destination."""
    def ts(v: object) -> str:
        return v.strftime("%Y-%m-%d %H:%M:%S") if isinstance(v, dt.datetime) else "-"

    head = ("request", "sha256", "source", "warehouse", "settled", "destination", "asked", "done", "confirmed",
            "attempts", "last_error")
    lines = [head]
    for r in rows:
        lines.append((r["request_id"], str(r["email_sha256"])[:16], str(r["source"]), ts(r["warehouse_done_at"]),
                      ts(r["settled_at"]), r["destination"] or "-", ts(r["asked_at"]), ts(r["done_at"]),
                      ts(r["confirmed_at"]), str(r["attempts"]),
                      "" if r["confirmed_at"] is not None else str(r["last_error"] or "")[:80]))
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(head) - 1)]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(line[:-1], widths, strict=True)) + "  " + line[-1]
                     for line in lines)
