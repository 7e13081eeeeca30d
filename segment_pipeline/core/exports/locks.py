"""Exclusive locks stored next to the exports, so they hold across processes and machines.

A lock is a small JSON object created with :meth:`ExportStorage.create_exclusive` (atomic
create-if-absent, locally and on S3). It is removed when the guarded block ends; one left behind by
a crashed process counts as stale after ``stale_after`` seconds and is then broken by the next
taker. Keys live under ``_locks/`` at the export root, never inside published export folders.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import socket
import time
import uuid
from collections.abc import Callable, Iterator

from segment_pipeline.core.exports.keys import join_key
from segment_pipeline.core.exports.storage import ExportStorage

LOCKS_PREFIX = "_locks"


class ExportInProgressError(RuntimeError):
    """Another export holds the lock this one needs."""


def _describe(raw: bytes | None) -> tuple[float | None, str]:
    try:
        info = json.loads(raw or b"{}")
        return float(info["created_at"]), str(info.get("owner") or "unknown")
    except (ValueError, KeyError, TypeError):
        return None, "unknown"


def try_acquire(
    storage: ExportStorage,
    key: str,
    *,
    owner: str,
    stale_after: float,
    now: Callable[[], float] = time.time,
) -> tuple[bytes | None, str]:
    """Take the lock at ``key``; return (token, "") or (None, why-not)."""
    token = json.dumps(
        {"owner": owner, "created_at": now(), "host": socket.gethostname(), "pid": os.getpid(),
         "nonce": uuid.uuid4().hex}
    ).encode()
    for _ in range(2):
        if storage.create_exclusive(key, token):
            return token, ""
        raw = storage.get_bytes(key)
        if raw is None:  # released between our create and our read: try again
            continue
        created, holder = _describe(raw)
        if created is None:
            modified = storage.last_modified(key)
            created = modified.timestamp() if modified else None
        if created is not None and now() - created > stale_after:
            storage.delete(key)  # stale: its owner crashed; the next create decides who wins
            continue
        since = dt.datetime.fromtimestamp(created, tz=dt.UTC).isoformat(timespec="seconds") if created else "?"
        return None, f"held by {holder} since {since}"
    return None, "held by another export (lock contended)"


def release(storage: ExportStorage, key: str, token: bytes) -> None:
    if storage.get_bytes(key) == token:  # never remove a lock someone else took after ours went stale
        storage.delete(key)


@contextlib.contextmanager
def segment_lock(
    storage: ExportStorage, kind: str, encoded_segment: str, segment_id: str, *, owner: str, stale_after: float
) -> Iterator[None]:
    """At most one ``kind`` export per segment at a time; a second one fails fast and says why."""
    key = join_key(LOCKS_PREFIX, kind, encoded_segment + ".lock")
    token, why = try_acquire(storage, key, owner=owner, stale_after=stale_after)
    if token is None:
        raise ExportInProgressError(
            f"an export of segment {segment_id!r} is already running ({why}); at most one export per "
            "segment runs at a time, so wait for it to finish and retry"
        )
    try:
        yield
    finally:
        release(storage, key, token)


@contextlib.contextmanager
def global_slot(storage: ExportStorage, kind: str, limit: int, *, owner: str, stale_after: float) -> Iterator[int]:
    """One of ``limit`` slots for ``kind`` exports overall; fails fast when all are taken."""
    if limit < 1:
        raise ValueError(f"the concurrent export limit must be at least 1, got {limit}")
    for slot in range(limit):
        key = join_key(LOCKS_PREFIX, kind, "_slots", f"slot-{slot}.lock")
        token, _ = try_acquire(storage, key, owner=owner, stale_after=stale_after)
        if token is not None:
            try:
                yield slot
            finally:
                release(storage, key, token)
            return
    raise ExportInProgressError(
        f"{limit} {kind} exports are already running (the configured maximum); retry when one finishes"
    )
