"""Watching the landing zone: which days got new or changed files, and which days to re-run.

A *file version* is (path, size, mtime). A day's version is a digest of the versions of all its
eligible landing files (every declared source's folder, :func:`source_folders`); a day whose digest differs from the one recorded when it was
last handed to the pipeline has changed (a file was added, replaced, appended to or removed).

A file still being written is never picked up half-way:

* names the ingestion ignores (hidden files, ``.tmp``/``.part``/``.partial``/``.crdownload``) are
  ignored here too: writers that write under such a name and rename at the end are safe at once;
* compressed deliveries (``.ndjson.gz``, ``.csv.zst``, ...) are landing files like any other;
* any other file must have *settled*: unmodified for ``settle_seconds``. A day with a file that has
  not settled waits as a whole, so a day is not run on half of its files.

Profiles for day D read all raw data up to D and memberships(D) compare with D-1, so a change to
day D affects D and every later day already computed: :func:`rerun_range` returns that range.

*Already processed*: every ingestion run, whoever launched it (this sensor, ``segment-pipeline
demo``, a CLI backfill, the UI), records the versions of the files it read in its materialization
metadata (:data:`VERSIONS_METADATA_KEY`, :func:`versions_metadata`). A day whose current version
equals what the latest ingestion of both kinds recorded is not run again (:meth:`LandingChanges.split`).
*Expired by retention*: landing retention (:mod:`segment_pipeline.core.privacy.retention`) removes
old day folders but keeps their ``raw_*`` partitions. Before it removes a day it records the file
versions it removes in a marker (:func:`write_expired_marker`,
``<landing>/_retention/YYYY-MM-DD.json``); :func:`detect_changes` leaves those versions out of the
day, so a day whose folders retention removed is not "changed to no files" and is never run again
(that run would rewrite its ``raw_*`` partitions empty). A new file delivered for such a day later
(any file version retention did not remove) is a change like any other.
*Late identity links*: when a day's profiles link ids that earlier days quarantined as unresolved,
its ``raw_profiles`` materialization names those days (:data:`LATE_LINKS_METADATA_KEY`); the
``late_links_sensor`` re-runs them and the later days (:func:`late_link_days`, :func:`rerun_range`).

No Dagster here: the sensors in ``defs/automation`` are thin wrappers.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from segment_pipeline.core.atomic import atomic_write_text
from segment_pipeline.core.ingest import IGNORED_SUFFIXES, KINDS

DAY_DIR = re.compile(r"^date=(\d{4}-\d{2}-\d{2})$")
CURSOR_VERSION = 1


@dataclass(frozen=True)
class FileVersion:
    path: str  # relative to the landing root, e.g. "events/date=2026-11-03/part-1.ndjson"
    size: int
    mtime_ns: int

    def token(self) -> str:
        return f"{self.path}\t{self.size}\t{self.mtime_ns}"


@dataclass
class DayScan:
    day: str
    files: list[FileVersion] = field(default_factory=list)
    unsettled: list[str] = field(default_factory=list)  # relative paths modified too recently

    @property
    def settled(self) -> bool:
        return not self.unsettled

    @property
    def digest(self) -> str:
        h = hashlib.sha256()
        for f in sorted(self.files, key=lambda f: f.path):
            h.update(f.token().encode() + b"\n")
        return h.hexdigest()[:20]


def eligible(name: str) -> bool:
    """The same rule as ingestion: no hidden files, no names of files still being written."""
    return not name.startswith(".") and not name.endswith(IGNORED_SUFFIXES)


#: Materialization metadata key (on ``raw_profiles`` / ``raw_events``, per partition) holding the
#: landing file versions that ingestion read: ``{relative path: [size, mtime_ns]}``.
VERSIONS_METADATA_KEY = "landing_file_versions"


def source_folders(sources_file: str | Path | None = None) -> list[str]:
    """The landing folders to watch: every source the sources file declares (default: the
    settings' file); the ``profiles``/``events`` folders when it declares none."""
    from segment_pipeline import settings
    from segment_pipeline.core.sources import load_sources

    declared = load_sources(settings.sources_file() if sources_file is None else sources_file).sources
    # deletion requests are read by their own daily asset (core/privacy/forget.py), not by ingestion
    return sorted(n for n, s in declared.items() if s.kind != "deletion_requests") if declared else list(KINDS)


def kind_file_versions(root: str | Path, kind: str, day: str) -> list[FileVersion]:
    """The eligible files of one source folder and day as versions (path relative to ``root``),
    sorted by path. (``kind``: the folder name, a source.)

    Ingestion takes these *before* reading the files: a file changed while it was read gets a
    newer mtime than the one recorded, so the sensor runs its day again.
    """
    root = Path(root)
    day_dir = root / kind / f"date={day}"
    versions = []
    if day_dir.is_dir():
        for path in day_dir.iterdir():
            if not eligible(path.name):
                continue
            try:
                stat = path.stat()
            except FileNotFoundError:
                continue
            if path.is_file():
                versions.append(FileVersion(path.relative_to(root).as_posix(), stat.st_size, stat.st_mtime_ns))
    return sorted(versions, key=lambda v: v.path)


#: Folder under the landing root holding retention's markers, one per expired day (ingestion and
#: :func:`segment_pipeline.core.ingest.unsourced_folders` skip ``_`` folders).
EXPIRED_DIR = "_retention"


def expired_marker_path(root: str | Path, day: str) -> Path:
    """``<root>/_retention/YYYY-MM-DD.json``: the marker of a day whose landing folders retention removed."""
    return Path(root) / EXPIRED_DIR / f"{day}.json"


def write_expired_marker(root: str | Path, day: str, versions: Iterable[FileVersion], removed_at: str) -> Path:
    """Record (atomically) that retention removes ``versions`` (files of ``day``, paths relative to
    ``root``), merged with what an earlier sweep recorded for that day; written *before* the folders
    are removed, so a sweep that dies half-way still leaves the marker. ``removed_at``: ISO 8601."""
    path = expired_marker_path(root, day)
    files = read_expired(root, [day]).get(day, {})
    files.update(versions_metadata(versions))
    body = {"day": day, "removed_at": removed_at, "files": dict(sorted(files.items()))}
    atomic_write_text(path, json.dumps(body, separators=(",", ":")))
    return path


def read_expired(root: str | Path, days: Iterable[str] | None = None) -> dict[str, dict[str, list[int]]]:
    """day -> the file versions retention removed (``{path: [size, mtime_ns]}``), for the days that
    have a marker (all of them, or only ``days``). Raises ``ValueError`` naming a marker that is not
    valid JSON of that shape."""
    folder = Path(root) / EXPIRED_DIR
    if not folder.is_dir():
        return {}
    paths = ([expired_marker_path(root, d) for d in days] if days is not None
             else sorted(p for p in folder.iterdir() if p.suffix == ".json" and eligible(p.name)))
    out: dict[str, dict[str, list[int]]] = {}
    for path in paths:
        try:
            data = json.loads(path.read_text())
            out[path.stem] = {str(k): [int(v[0]), int(v[1])] for k, v in data["files"].items()}
        except FileNotFoundError:
            continue
        except (ValueError, KeyError, TypeError, IndexError, AttributeError) as exc:
            raise ValueError(f"{path}: not a retention marker ({exc})") from None
    return out


def versions_metadata(versions: Iterable[FileVersion]) -> dict[str, list[int]]:
    """The JSON-able form recorded under :data:`VERSIONS_METADATA_KEY`: ``{path: [size, mtime_ns]}``."""
    return {v.path: [v.size, v.mtime_ns] for v in sorted(versions, key=lambda v: v.path)}


def processed_digest(recorded_by_kind: Iterable[Mapping[str, list[int]] | None]) -> str | None:
    """The day version an ingestion processed, from what each kind's materialization recorded
    (:func:`versions_metadata`); ``None`` when a kind has no record (never ingested, or ingested
    before versions were recorded): such a day counts as not processed."""
    files: dict[str, FileVersion] = {}  # a stream source's files are recorded by both kinds: once here
    for recorded in recorded_by_kind:
        if recorded is None:
            return None
        files.update((path, FileVersion(path, int(size), int(mtime))) for path, (size, mtime) in recorded.items())
    return DayScan("", list(files.values())).digest


def scan_landing(
    root: str | Path, now: float, settle_seconds: float, folders: Iterable[str] | None = None
) -> dict[str, DayScan]:
    """Every day folder under ``<root>/<source>/date=YYYY-MM-DD/`` with its eligible files, for
    the source folders ``folders`` (default: :func:`source_folders`)."""
    root = Path(root)
    days: dict[str, DayScan] = {}
    for kind in (source_folders() if folders is None else folders):
        kind_dir = root / kind
        if not kind_dir.is_dir():
            continue
        for day_dir in kind_dir.iterdir():
            match = DAY_DIR.match(day_dir.name)
            if not match or not day_dir.is_dir():
                continue
            try:
                dt.date.fromisoformat(match.group(1))
            except ValueError:
                continue
            scan = days.setdefault(match.group(1), DayScan(match.group(1)))
            for path in day_dir.iterdir():
                if not eligible(path.name):
                    continue
                try:
                    stat = path.stat()
                except FileNotFoundError:  # renamed or removed while we looked
                    continue
                if not path.is_file():
                    continue
                rel = path.relative_to(root).as_posix()
                scan.files.append(FileVersion(rel, stat.st_size, stat.st_mtime_ns))
                if now - stat.st_mtime_ns / 1e9 < settle_seconds:
                    scan.unsettled.append(rel)
    return {d: days[d] for d in sorted(days)}


@dataclass
class LandingCursor:
    """What the sensor has already handed to the pipeline: day -> digest of its files then."""

    days: dict[str, str] = field(default_factory=dict)

    @classmethod
    def parse(cls, raw: str | None) -> LandingCursor:
        if not raw:
            return cls()
        data = json.loads(raw)
        if data.get("v") != CURSOR_VERSION:
            raise ValueError(f"unknown landing cursor version {data.get('v')!r}")
        return cls(days=dict(data.get("days", {})))

    def serialize(self) -> str:
        return json.dumps({"v": CURSOR_VERSION, "days": dict(sorted(self.days.items()))}, separators=(",", ":"))


@dataclass
class LandingChanges:
    changed: dict[str, str]  # day -> new digest, for settled days that changed and can run now
    waiting: dict[str, list[str]]  # day -> files not settled yet
    not_yet_partitions: list[str]  # days with files but no partition yet (today, future, before start)
    expired: list[str] = field(default_factory=list)  # known days whose folders retention removed: not run

    def advance(self, cursor: LandingCursor) -> LandingCursor:
        days = dict(cursor.days)
        days.update(self.changed)
        return LandingCursor(days)

    def split(self, processed: Mapping[str, str | None]) -> tuple[dict[str, str], dict[str, str]]:
        """``(to_run, already_processed)``: changed days whose current version an earlier run
        already ingested (``processed``: day -> :func:`processed_digest`) need no run; the cursor
        records them all the same (:meth:`advance`)."""
        to_run, done = {}, {}
        for day, digest in self.changed.items():
            (done if processed.get(day) == digest else to_run)[day] = digest
        return to_run, done


def detect_changes(scans: Mapping[str, DayScan], cursor: LandingCursor, is_partition,
                   expired: Mapping[str, Mapping[str, list[int]]] | None = None) -> LandingChanges:
    """Days whose files changed since the cursor, that have settled and are partitions now.

    A day recorded in the cursor whose folder disappeared counts as changed to "no files" (its
    rows must go), unless retention removed it: ``expired`` (:func:`read_expired`: day -> file
    versions retention removed) are left out of their day, and a day left with no files is
    unchanged (listed in ``LandingChanges.expired``). ``is_partition(day) -> bool`` says whether
    the day is a partition yet.
    """
    changed: dict[str, str] = {}
    waiting: dict[str, list[str]] = {}
    not_yet: list[str] = []
    retired: list[str] = []
    expired = expired or {}
    all_days = sorted(set(scans) | set(cursor.days))
    for day in all_days:
        scan = scans.get(day) or DayScan(day)
        if day in expired:
            gone = {FileVersion(p, s, m).token() for p, (s, m) in expired[day].items()}
            kept = [f for f in scan.files if f.token() not in gone]
            scan = DayScan(day, kept, [u for u in scan.unsettled if any(f.path == u for f in kept)])
            if not kept:
                retired.append(day)
                continue
        if not scan.settled:
            waiting[day] = sorted(scan.unsettled)
            continue
        digest, previous = scan.digest, cursor.days.get(day)
        if previous == digest or (previous is None and not scan.files):
            continue  # unchanged, or an empty folder never seen before
        if not is_partition(day):
            not_yet.append(day)
            continue
        changed[day] = digest
    return LandingChanges(changed, waiting, not_yet, retired)


def rerun_range(changed_days: Iterable[str], materialized_days: Iterable[str]) -> tuple[str, str] | None:
    """The one range of days to (re)compute: from the earliest changed day through the later of the
    latest changed day and the latest already-computed day after it (later days depend on it)."""
    changed = sorted(changed_days)
    if not changed:
        return None
    start = changed[0]
    later = [d for d in materialized_days if d > start]
    return start, max([changed[-1], *later])


def run_key(start: str, end: str, changed: Mapping[str, str]) -> str:
    """Deterministic per set of file versions: the same landing state never launches twice."""
    h = hashlib.sha256(json.dumps(sorted(changed.items())).encode()).hexdigest()[:16]
    return f"landing:{start}..{end}:{h}"


# -- late identity links: earlier days a later day's links attribute -----------------------------------

#: Materialization metadata key (on ``raw_profiles``, per partition E) holding the earlier days whose
#: quarantine has ``unresolved identity`` rows for ids E's records link: ``{YYYY-MM-DD: rows}``
#: (:func:`segment_pipeline.core.links.resolves_earlier_days`).
LATE_LINKS_METADATA_KEY = "resolves_earlier_days"


@dataclass(frozen=True)
class LateLinks:
    """One ``raw_profiles`` materialization of day ``day`` (event log ``storage_id``) that named
    earlier days (``earlier``: day -> unresolved rows its links attribute)."""

    storage_id: int
    day: str
    earlier: Mapping[str, int]


def late_link_days(found: Iterable[LateLinks], reingested: Mapping[str, int]) -> dict[str, int]:
    """The earlier days still to re-run, ``{day: rows}``: named by some materialization and not
    ingested again since it (``reingested``: day -> storage id of its latest ``raw_events``
    materialization; a day re-run after the links landed has attributed its rows already)."""
    days: dict[str, int] = {}
    for item in found:
        for day, rows in item.earlier.items():
            if reingested.get(day, -1) < item.storage_id:
                days[day] = max(days.get(day, 0), int(rows))
    return dict(sorted(days.items()))


def late_links_command(earlier: Iterable[str], computed_days: Iterable[str | dt.date], day: str) -> str:
    """The backfill command that re-runs the ``earlier`` days through ``day`` and every later day
    already computed (``computed_days``; they depend on them), as one range (README, "Backfills
    from the CLI")."""
    start, end = rerun_range(earlier, [str(d) for d in computed_days] + [day])
    return f"dg launch --job daily_segments --partition-range {start}...{end}"


def late_links_run_key(start: str, end: str, found: Iterable[LateLinks]) -> str:
    """Deterministic per set of materializations: the same late links never launch twice."""
    ids = sorted(item.storage_id for item in found)
    h = hashlib.sha256(json.dumps(ids).encode()).hexdigest()[:16]
    return f"late-links:{start}..{end}:{h}"
