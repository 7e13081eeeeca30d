"""Retention: how long raw landing copies, quarantine rows, dry-run payloads and published files are kept.

Settings (:func:`segment_pipeline.settings.retention_days`; days, unset/``off`` = keep everything,
the default for each):

========================================== =============================================================
``SEGMENT_PIPELINE_RETAIN_LANDING_DAYS``   landing day folders ``<landing>/<source>/date=YYYY-MM-DD/``
                                           (the raw copies as delivered; ``raw_*`` tables are kept, since
                                           profiles and traits are rebuilt from them: each removed day
                                           gets a marker ``<landing>/_retention/YYYY-MM-DD.json``
                                           naming the file versions removed, and the landing sensor
                                           never re-runs a day for their removal,
                                           :mod:`segment_pipeline.core.landing_watch`)
``SEGMENT_PIPELINE_RETAIN_QUARANTINE_DAYS`` partitions of ``quarantine_profiles``, ``quarantine_events``
                                           and ``quarantine_suppression`` (the rows and their raw text)
``SEGMENT_PIPELINE_RETAIN_DRY_RUN_DAYS``   dry-run payload folders ``<warehouse>/sync_dry_run/.../<stamp>/``
``SEGMENT_PIPELINE_RETAIN_PUBLISHED_DAYS`` published files under the export root: daily feed files,
                                           per-segment exports, CSV range exports, Customer Match
                                           files (the file a feed's ``latest`` pointer names is always
                                           kept, as are the pointers and locks; a segment export goes
                                           as a unit and the newest one of each segment is kept, see
                                           :func:`enforce_segment_exports`)
========================================== =============================================================

Age: a dated item (a ``date=YYYY-MM-DD`` folder or partition, a feed file ``YYYY-MM-DD.json``, a
dry-run folder ``YYYYMMDDTHHMMSS...Z``) is as old as its date; other published files as their last
modification. An item is removed when it is *older than* the setting: with ``N`` days and today
``T`` (UTC), a dated item goes when its day is before ``T - N`` (so ``N = 1`` keeps yesterday and
today); a file modified before ``now - N days`` goes.

Removal is atomic per item: a folder is first renamed to a hidden temporary name (readers never see
it half removed; a crash leaves a ``.tmp-`` leftover the next sweep removes), then deleted; a file
or partition is unlinked, one system call. :func:`enforce_retention` returns per kind what was
removed (count, bytes) and the oldest item kept, for the ``retention`` asset's metadata.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from segment_pipeline.core.atomic import TMP_PREFIX, temp_sibling
from segment_pipeline.core.exports.csv_range import CSV_PREFIX
from segment_pipeline.core.exports.customer_match import PREFIX as CUSTOMER_MATCH_PREFIX
from segment_pipeline.core.exports.daily_feed import DAILY_PREFIX, LATEST_NAME, read_latest
from segment_pipeline.core.exports.segment_export import EXPORT_PREFIX, MANIFEST_SUFFIX, parse_object_prefix
from segment_pipeline.core.exports.storage import ExportStorage
from segment_pipeline.core.landing_watch import kind_file_versions, write_expired_marker
from segment_pipeline.core.privacy.suppression import QUARANTINE_TABLE

KINDS = ("landing", "quarantine", "dry_run", "published")
QUARANTINE_TABLES = ("quarantine_profiles", "quarantine_events", QUARANTINE_TABLE)
DRY_RUN_DIR = "sync_dry_run"
_DATE_DIR = re.compile(r"^date=(\d{4}-\d{2}-\d{2})$")
_STAMP = re.compile(r"^(\d{8})T\d{6}\d*Z$")
_FEED_FILE = re.compile(r"^(\d{4}-\d{2}-\d{2})\.json$")


@dataclass
class KindResult:
    """What retention did for one kind: ``days`` (None: kept all), removed items and bytes, the
    oldest item kept (its date or modification time, ISO 8601; None: nothing kept)."""

    days: int | None
    removed: int = 0
    bytes: int = 0
    oldest_kept: str | None = None
    removed_items: list[str] = field(default_factory=list)

    def metadata(self) -> dict[str, object]:
        return {"days": "keep" if self.days is None else self.days, "removed": self.removed,
                "bytes": self.bytes, "oldest_kept": self.oldest_kept}

    def keep(self, when: str) -> None:
        if self.oldest_kept is None or when < self.oldest_kept:
            self.oldest_kept = when


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _remove(path: Path) -> None:
    """Remove a file (unlink) or a folder (renamed away first, then deleted)."""
    if path.is_dir():
        hidden = temp_sibling(path)
        os.rename(path, hidden)
        shutil.rmtree(hidden)
    else:
        path.unlink(missing_ok=True)


def _dated(result: KindResult, items: list[tuple[Path, dt.date]], cutoff: dt.date, base: Path) -> None:
    for path, day in sorted(items, key=lambda x: (x[1], str(x[0]))):
        if result.days is not None and day < cutoff:
            result.bytes += _size(path)
            _remove(path)
            result.removed += 1
            result.removed_items.append(path.relative_to(base).as_posix())
        else:
            result.keep(day.isoformat())


def _date_dirs(root: Path, depth: int) -> list[tuple[Path, dt.date]]:
    """``date=YYYY-MM-DD`` folders ``depth`` levels below ``root``."""
    out = []
    if not root.is_dir():
        return out
    for path in root.glob("/".join(["*"] * depth)):
        m = _DATE_DIR.match(path.name)
        if m and path.is_dir() and not any(p.startswith(TMP_PREFIX) for p in path.relative_to(root).parts):
            try:
                out.append((path, dt.date.fromisoformat(m[1])))
            except ValueError:
                continue
    return out


def enforce_landing(landing_root: Path, days: int | None, today: dt.date, now: dt.datetime | None = None) -> KindResult:
    """Landing day folders older than ``days``; before a day's folders go, the file versions they
    hold are recorded in the day's retention marker
    (:func:`segment_pipeline.core.landing_watch.write_expired_marker`), so the landing sensor does
    not take their removal for a delivery that emptied the day."""
    r = KindResult(days)
    cutoff = today - dt.timedelta(days=days or 0)
    items = _date_dirs(landing_root, 2)
    if days is not None:
        stamp = (now or dt.datetime.now(dt.UTC)).isoformat(timespec="seconds")
        for day in sorted({d for _, d in items if d < cutoff}):
            versions = [v for path, d in items if d == day
                        for v in kind_file_versions(landing_root, path.parent.name, day.isoformat())]
            write_expired_marker(landing_root, day.isoformat(), versions, stamp)
    _dated(r, items, cutoff, landing_root)
    return r


def enforce_quarantine(warehouse_root: Path, days: int | None, today: dt.date) -> KindResult:
    r = KindResult(days)
    items = [(p, d) for t in QUARANTINE_TABLES for p, d in _date_dirs(warehouse_root / t, 1)]
    _dated(r, items, today - dt.timedelta(days=days or 0), warehouse_root)
    return r


def enforce_dry_run(warehouse_root: Path, days: int | None, today: dt.date) -> KindResult:
    r = KindResult(days)
    base = warehouse_root / DRY_RUN_DIR
    items = []
    if base.is_dir():
        for path in base.rglob("*"):
            m = _STAMP.match(path.name)
            if m and path.is_dir() and not any(p.startswith(TMP_PREFIX) for p in path.relative_to(base).parts):
                items.append((path, dt.datetime.strptime(m[1], "%Y%m%d").date()))
    _dated(r, items, today - dt.timedelta(days=days or 0), warehouse_root)
    return r


def enforce_published(storage: ExportStorage, days: int | None, now: dt.datetime) -> KindResult:
    """Published files by their date (feed files) or last modification (the others), through the
    export storage (local folder or S3; an S3 delete is one request per object)."""
    r = KindResult(days)
    cutoff_day = now.date() - dt.timedelta(days=days or 0)
    cutoff = now - dt.timedelta(days=days or 0)
    pinned: set[str] = set()
    feed_keys = storage.list_keys(DAILY_PREFIX)
    for key in feed_keys:
        parts = key.split("/")
        if parts[-1] == LATEST_NAME:
            pinned.add(key)
            latest = read_latest(storage, parts[-2])
            if latest and latest.get("key"):
                pinned.add(latest["key"])
    enforce_segment_exports(storage, r, cutoff)
    for prefix in (DAILY_PREFIX, CSV_PREFIX, CUSTOMER_MATCH_PREFIX):
        keys = feed_keys if prefix == DAILY_PREFIX else storage.list_keys(prefix)
        for key in keys:
            m = _FEED_FILE.match(key.rsplit("/", 1)[-1]) if prefix == DAILY_PREFIX else None
            if m:
                day = dt.date.fromisoformat(m[1])
                old, when = day < cutoff_day, day.isoformat()
            else:
                modified = storage.last_modified(key)
                if modified is None:
                    continue
                old, when = modified < cutoff, modified.isoformat(timespec="seconds")
            if days is not None and old and key not in pinned:
                r.bytes += storage.size(key)
                storage.delete(key)
                r.removed += 1
                r.removed_items.append(key)
            else:
                r.keep(when)
    return r


def enforce_segment_exports(storage: ExportStorage, r: KindResult, cutoff: dt.datetime) -> None:
    """Segment exports (``segment-export/<SEGMENT_ID>/<YYYY-MM-DD>/<object prefix>/`` chunks and
    their ``<object prefix>.manifest.json``) expire as a unit, never file by file, so no manifest
    is ever left naming chunks that are gone:

    * a complete export (one with a manifest) is as old as its manifest's last modification (the
      manifest is written last, when the export finished); when older than ``cutoff`` its manifest
      is deleted first (readers then see an incomplete folder, never a manifest with missing
      files), then its chunk files. The newest complete export of each segment (by its start time,
      the object prefix's timestamp) is always kept, however old, so a segment that is no longer
      exported still has its last export;
    * a folder without manifest (left by a crashed export) goes when all its files are older than
      ``cutoff`` (one still being written has fresh files).

    Each removed export counts as one item in ``r`` (``removed_items``: its key prefix; ``bytes``:
    all its files)."""
    days = r.days
    exports: dict[str, dict[str, list[str]]] = {}  # export key prefix -> {"manifest": [...], "files": [...]}
    for key in storage.list_keys(EXPORT_PREFIX):
        parts = key.split("/")
        if len(parts) == 4 and parts[3].endswith(MANIFEST_SUFFIX):
            exports.setdefault(key[: -len(MANIFEST_SUFFIX)], {"manifest": [], "files": []})["manifest"].append(key)
        elif len(parts) >= 5:
            exports.setdefault("/".join(parts[:4]), {"manifest": [], "files": []})["files"].append(key)
    newest: dict[str, tuple[int, str]] = {}  # segment -> (start time, export prefix) of its newest complete export
    for prefix, found in exports.items():
        if found["manifest"]:
            try:
                started = parse_object_prefix(prefix.rsplit("/", 1)[-1])
            except ValueError:
                started = -1
            segment = prefix.split("/")[1]
            newest[segment] = max(newest.get(segment, (started, prefix)), (started, prefix))
    pinned = {prefix for _, prefix in newest.values()}
    for prefix in sorted(exports):
        found = exports[prefix]
        times = [t for t in (storage.last_modified(k) for k in (found["manifest"] or found["files"])) if t is not None]
        if not times:
            continue
        when = max(times)
        if days is None or prefix in pinned or when >= cutoff:
            r.keep(when.isoformat(timespec="seconds"))
            continue
        keys = found["manifest"] + found["files"]  # the manifest first: never a manifest without its files
        r.bytes += sum(storage.size(k) for k in keys)
        for key in keys:
            storage.delete(key)
        if found["files"]:
            storage.delete_prefix(prefix)  # the emptied folder (a local storage keeps empty folders)
        r.removed += 1
        r.removed_items.append(prefix)


@dataclass
class RetentionResult:
    kinds: dict[str, KindResult]

    def metadata(self) -> dict[str, dict[str, object]]:
        return {k: v.metadata() for k, v in self.kinds.items()}


def enforce_retention(warehouse_root: str | Path, landing_root: str | Path, storage: ExportStorage | None,
                      settings: dict[str, int | None], now: dt.datetime | None = None) -> RetentionResult:
    """Apply each kind's setting (``settings``: kind -> days or None); see the module docstring."""
    now = now or dt.datetime.now(dt.UTC)
    today = now.date()
    wh, landing = Path(warehouse_root), Path(landing_root)
    kinds = {
        "landing": enforce_landing(landing, settings.get("landing"), today, now),
        "quarantine": enforce_quarantine(wh, settings.get("quarantine"), today),
        "dry_run": enforce_dry_run(wh, settings.get("dry_run"), today),
    }
    kinds["published"] = (enforce_published(storage, settings.get("published"), now) if storage is not None
                          else KindResult(settings.get("published")))
    return RetentionResult(kinds)
