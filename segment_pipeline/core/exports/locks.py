"""Exclusive locks stored next to the exports, so they hold across processes and machines.

A lock is a small JSON object created with :meth:`ExportStorage.create_exclusive` (atomic
create-if-absent, locally and on S3)::

    {"owner": "run <run id>", "created_at": <unix seconds>, "host": <hostname>, "pid": <int>,
     "pid_start": <start time of that pid, clock ticks since boot>, "boot_id": <kernel boot id>,
     "pid_ns": <pid namespace>, "nonce": <random hex>}

It is removed when the guarded block ends. One left behind by a crashed holder is taken over:

* **at once** when the holder is *provably dead*: the lock was taken on this host (same hostname
  and, where recorded, the same pid namespace) and its pid no longer exists, is a zombie, or now
  belongs to another process (its start time in ``/proc/<pid>/stat`` differs from the recorded
  one: the pid was reused), or the host has rebooted since (another ``boot_id``);
* otherwise (another host or container, or a platform without ``/proc``) only after
  ``stale_after`` seconds.

Takeovers of one dead lock are serialized by an exclusive *takeover marker* (``<key>.takeover-<hash
of the dead lock>``), so two takers cannot both delete the dead lock and each other's new one.
Keys live under ``_locks/`` at the export root, never inside published export folders.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import os
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from segment_pipeline.core.atomic import pid_namespace, process_start
from segment_pipeline.core.exports.keys import join_key
from segment_pipeline.core.exports.storage import ExportStorage

LOCKS_PREFIX = "_locks"
#: a takeover marker older than this belongs to a taker that crashed mid-takeover and is ignored
TAKEOVER_MARKER_SECONDS = 60.0


class ExportInProgressError(RuntimeError):
    """Another export holds the lock this one needs."""


# -- who holds a lock, and is it alive ------------------------------------------------------------


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="ascii", errors="replace") as fh:
            return fh.read()
    except OSError:
        return None


def _boot_id() -> str | None:
    value = _read("/proc/sys/kernel/random/boot_id")
    return value.strip() if value else None


def holder_identity() -> dict:
    """What a lock records about the process taking it (see the module docstring)."""
    pid = os.getpid()
    started = process_start(pid)
    return {
        "host": socket.gethostname(), "pid": pid, "pid_start": started[0] if started else None,
        "boot_id": _boot_id(), "pid_ns": pid_namespace(),
    }


def dead_holder(info: dict) -> str | None:
    """Why the process recorded in a lock is provably dead, or None if it may be alive.

    Only a holder on this host (same hostname, same pid namespace when recorded) can be judged;
    it is dead when the host rebooted since, its pid is gone or a zombie, or its pid now names a
    process with another start time (reused).
    """
    host, pid = info.get("host"), info.get("pid")
    if not isinstance(pid, int) or host != socket.gethostname():
        return None
    ns = info.get("pid_ns")
    if ns is not None and ns != pid_namespace():
        return None  # another container with the same hostname: its pids are not ours to judge
    where = f"pid {pid} on {host}"
    boot = info.get("boot_id")
    if boot is not None and _boot_id() is not None and boot != _boot_id():
        return f"{where} is gone (the host rebooted)"
    started = process_start(pid)
    if started is None:
        if os.path.isdir("/proc/self"):
            return f"{where} is gone"
        try:  # no /proc (macOS): existence only, reuse cannot be told apart
            os.kill(pid, 0)
        except ProcessLookupError:
            return f"{where} is gone"
        except OSError:
            return None
        return None
    start, state = started
    if state in ("Z", "X", "x"):
        return f"{where} is gone (exited, not yet reaped)"
    recorded = info.get("pid_start")
    if recorded is not None and str(recorded) != start:
        return f"{where} is gone (the pid now belongs to another process)"
    return None


@dataclass
class LockState:
    """What is at a lock key: ``free``, ``held`` (by a live or unknown holder), ``dead`` (holder
    provably dead) or ``stale`` (older than ``stale_after``)."""

    state: str
    owner: str = ""
    created_at: float | None = None
    why: str = ""
    raw: bytes | None = None

    @property
    def takeable(self) -> bool:
        return self.state != "held"


def inspect_lock(raw: bytes | None, *, stale_after: float, now: float, modified: float | None = None) -> LockState:
    """Classify the bytes of a lock (``modified``: the object's mtime, for unreadable content)."""
    if raw is None:
        return LockState("free")
    try:
        info = json.loads(raw)
        if not isinstance(info, dict):
            raise TypeError
        created: float | None = float(info["created_at"])
        owner = str(info.get("owner") or "unknown")
    except (ValueError, KeyError, TypeError):
        info, created, owner = {}, modified, "unknown"
    dead = dead_holder(info)
    if dead:
        return LockState("dead", owner, created, dead, raw)
    if created is not None and now - created > stale_after:
        return LockState("stale", owner, created, f"held since more than {stale_after:.0f} s", raw)
    return LockState("held", owner, created, "", raw)


def read_lock(storage: ExportStorage, key: str, *, stale_after: float, now: float | None = None) -> LockState:
    raw = storage.get_bytes(key)
    modified = None
    if raw is not None:
        stamp = storage.last_modified(key)
        modified = stamp.timestamp() if stamp else None
    return inspect_lock(raw, stale_after=stale_after, now=time.time() if now is None else now, modified=modified)


def _break(storage: ExportStorage, key: str, found: LockState, now: float) -> bool:
    """Delete the dead/stale lock ``found`` at ``key`` unless another taker is already at it."""
    marker = f"{key}.takeover-{hashlib.sha256(found.raw or b'').hexdigest()[:16]}"
    if not storage.create_exclusive(marker, json.dumps({"created_at": now, **holder_identity()}).encode()):
        stamp = storage.last_modified(marker)
        if stamp is None or now - stamp.timestamp() <= TAKEOVER_MARKER_SECONDS:
            return False  # someone else is taking it over right now
        storage.delete(marker)  # left by a taker that crashed mid-takeover
        if not storage.create_exclusive(marker, b"{}"):
            return False
    try:
        if storage.get_bytes(key) == found.raw:
            storage.delete(key)
        return True
    finally:
        storage.delete(marker)


def try_acquire(
    storage: ExportStorage,
    key: str,
    *,
    owner: str,
    stale_after: float,
    now: Callable[[], float] = time.time,
    on_takeover: Callable[[LockState], None] | None = None,
) -> tuple[bytes | None, str]:
    """Take the lock at ``key``; return (token, "") or (None, why-not).

    A lock whose holder is provably dead, or older than ``stale_after`` seconds, is taken over
    (``on_takeover`` is called with what was found, e.g. to log it or fail the dead run)."""
    token = json.dumps(
        {"owner": owner, "created_at": now(), **holder_identity(), "nonce": uuid.uuid4().hex}
    ).encode()
    for _ in range(3):
        if storage.create_exclusive(key, token):
            return token, ""
        found = read_lock(storage, key, stale_after=stale_after, now=now())
        if found.state == "free":  # released between our create and our read: try again
            continue
        if found.takeable:
            if _break(storage, key, found, now()):
                if on_takeover is not None:
                    on_takeover(found)
                continue
            return None, f"held by {found.owner} (being taken over by another export)"
        since = (
            dt.datetime.fromtimestamp(found.created_at, tz=dt.UTC).isoformat(timespec="seconds")
            if found.created_at else "?"
        )
        return None, f"held by {found.owner} since {since}"
    return None, "held by another export (lock contended)"


def release(storage: ExportStorage, key: str, token: bytes) -> None:
    if storage.get_bytes(key) == token:  # never remove a lock someone else took after ours went stale
        storage.delete(key)


@contextlib.contextmanager
def segment_lock(
    storage: ExportStorage, kind: str, encoded_segment: str, segment_id: str, *, owner: str, stale_after: float,
    on_takeover: Callable[[LockState], None] | None = None,
) -> Iterator[None]:
    """At most one ``kind`` export per segment at a time; a second one fails fast and says why."""
    key = join_key(LOCKS_PREFIX, kind, encoded_segment + ".lock")
    token, why = try_acquire(storage, key, owner=owner, stale_after=stale_after, on_takeover=on_takeover)
    if token is None:
        raise ExportInProgressError(
            f"an export of segment {segment_id!r} is already running ({why}); at most one export per "
            "segment runs at a time, so wait for it to finish and retry"
        )
    try:
        yield
    finally:
        release(storage, key, token)


def slot_key(kind: str, slot: int) -> str:
    return join_key(LOCKS_PREFIX, kind, "_slots", f"slot-{slot}.lock")


@contextlib.contextmanager
def global_slot(
    storage: ExportStorage, kind: str, limit: int, *, owner: str, stale_after: float,
    on_takeover: Callable[[LockState], None] | None = None,
) -> Iterator[int]:
    """One of ``limit`` slots for ``kind`` exports overall; fails fast when all are taken."""
    if limit < 1:
        raise ValueError(f"the concurrent export limit must be at least 1, got {limit}")
    for slot in range(limit):
        key = slot_key(kind, slot)
        token, _ = try_acquire(storage, key, owner=owner, stale_after=stale_after, on_takeover=on_takeover)
        if token is not None:
            try:
                yield slot
            finally:
                release(storage, key, token)
            return
    raise ExportInProgressError(
        f"{limit} {kind} exports are already running (the configured maximum); retry when one finishes"
    )


def dead_lock_holders(storage: ExportStorage, kind: str, *, stale_after: float) -> dict[str, str]:
    """{owner: why} for every ``kind`` lock (segment locks and slots) whose holder is provably dead."""
    dead: dict[str, str] = {}
    for key in storage.list_keys(join_key(LOCKS_PREFIX, kind)):
        if not key.endswith(".lock"):
            continue
        found = read_lock(storage, key, stale_after=stale_after)
        if found.state == "dead":
            dead[found.owner] = found.why
    return dead
