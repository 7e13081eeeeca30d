"""Segment export requests made through the API: admission (404/409/429), launch, records, progress.

No HTTP and no Dagster here: runs are submitted through a *launcher* (``launch(run_config, tags)``,
``run_status(run_id)``, ``runs_in_progress(tags)``, ``mark_failed(run_id, message)``; see
:mod:`segment_pipeline.api.launch`). The launcher only queues runs: the API never executes one.

Admission is decided when the request arrives, not when the run starts:

1. the segment must exist on the newest memberships day (else 404);
2. one export per segment: the request takes a *reservation*, an exclusive object
   ``_locks/segment-export-api/<SEGMENT_ID>.lock`` in the export storage (atomic create-if-absent,
   so two API processes or two concurrent requests cannot both get it). A reservation whose
   export is over is released and retaken: manifest written, run ended (also when it ended
   without ever starting, e.g. canceled from the queue), run deleted, or no run id recorded
   :data:`LAUNCH_GRACE_SECONDS` after the request. A segment whose export was started elsewhere
   (Dagster UI, schedule) is detected by the job's own lock ``_locks/segment-export/<SEGMENT_ID>.lock``
   (unless its holder is provably dead) or by a run in progress with the segment tag. Any of these
   gives 409;
3. the global cap: at most ``max_concurrent`` exports in progress (reservations plus runs tagged
   ``segment_export/all``; an API export whose files are published no longer counts while its run
   sends the callback, as the job releases its own slot then), else 429.

Dead runs never hold a slot: before counting, a run whose export process provably died (the job's
lock names ``run <id>`` and its holder is dead, see :mod:`segment_pipeline.core.exports.locks`) is
marked failed in Dagster, and a run still ``NOT_STARTED`` :data:`NOT_STARTED_GRACE_SECONDS` after
it was created (submission never happened, e.g. the API process died in between) is not counted
and, if the API created it, marked failed. The API's view of such an export says ``failed`` with
the reason.

Each accepted request is recorded in ``<state dir>/exports/<object_prefix>.json`` (segment,
run id, where the files go, a failure reason once known), which is what ``GET`` on the prefix reads.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from segment_pipeline.core.api_progress import Progress, export_progress, files_written, read_manifest
from segment_pipeline.core.api_requests import RequestError
from segment_pipeline.core.exports.keys import encode_segment, join_key, tag_value
from segment_pipeline.core.exports.locks import LOCKS_PREFIX, dead_lock_holders, read_lock
from segment_pipeline.core.exports.segment_export import (
    LOCK_KIND,
    SegmentExportRequest,
    export_key_prefix,
    new_object_prefix,
    parse_object_prefix,
)
from segment_pipeline.core.exports.storage import ExportStorage
from segment_pipeline.core.privacy.filters import sendable_memberships
from segment_pipeline.core.warehouse import Warehouse, connect

API_LOCK_KIND = "segment-export-api"
SEGMENT_TAG = "segment_export/segment_id"  # same values as defs.exports.assets.segment_export_tags
GLOBAL_TAG = "segment_export/all"
PREFIX_TAG = "segment_export/object_prefix"
#: a reservation whose run id was never recorded after this long is abandoned (the API died mid-launch)
LAUNCH_GRACE_SECONDS = 120
#: a run still NOT_STARTED this long after its creation was never submitted and never will be
NOT_STARTED_GRACE_SECONDS = 120
RUNNING = ("STARTING", "STARTED", "CANCELING")
ENDED = ("SUCCESS", "FAILURE", "CANCELED")


@dataclass
class ExportRecord:
    object_prefix: str
    segment_id: str
    key_prefix: str
    run_id: str
    credential_id: str
    created_at: float
    members: int
    as_of: str
    fields_to_export: list[str]
    output_format: str
    callback: bool
    failure: str = ""


def export_tags(segment_id: str, object_prefix: str) -> dict[str, str]:
    return {SEGMENT_TAG: tag_value(segment_id), GLOBAL_TAG: "true", PREFIX_TAG: object_prefix}


class ExportService:
    def __init__(
        self,
        storage: ExportStorage,
        warehouse: Warehouse,
        state_dir: str | os.PathLike[str],
        launcher,
        *,
        max_concurrent: int = 4,
        stale_after: float = 6 * 3600,
        clock: Callable[[], float] = time.time,
    ):
        self.storage = storage
        self.warehouse = warehouse
        self.records_dir = Path(state_dir) / "exports"
        self.launcher = launcher
        self.max_concurrent = max_concurrent
        self.stale_after = stale_after
        self.clock = clock
        self._lock = threading.Lock()

    # -- records ---------------------------------------------------------------------------------
    def _record_path(self, object_prefix: str) -> Path:
        parse_object_prefix(object_prefix)  # only well-formed prefixes ever name a file
        return self.records_dir / f"{object_prefix}.json"

    def get(self, object_prefix: str) -> ExportRecord | None:
        try:
            path = self._record_path(object_prefix)
        except ValueError:
            return None
        try:
            return ExportRecord(**json.loads(path.read_bytes()))
        except FileNotFoundError:
            return None

    def _save(self, record: ExportRecord) -> None:
        self.records_dir.mkdir(parents=True, exist_ok=True)
        path = self._record_path(record.object_prefix)
        tmp = path.with_name(f".tmp-{path.name}")
        tmp.write_text(json.dumps(asdict(record)))
        os.replace(tmp, path)

    # -- segment ---------------------------------------------------------------------------------
    def segment_members(self, segment_id: str) -> tuple[dt.date, int]:
        """(newest memberships day, member count) or RequestError 404 for an unknown segment."""
        days = self.warehouse.partition_dates("memberships")
        if not days:
            raise RequestError(404, "no segment memberships exist yet: nothing to export")
        day = days[-1]
        con = connect(memory_limit="256MB", threads=1)
        try:
            known = con.execute(
                f"SELECT count(*) FROM {self.warehouse.scan('segment_stats', days=[day])} WHERE segment_id = ?",
                [segment_id],
            ).fetchall()[0][0]
            members = con.execute(
                f"SELECT count(DISTINCT identity_id) FROM {sendable_memberships(self.warehouse, days=[day])} "
                "WHERE segment_id = ?",
                [segment_id],
            ).fetchall()[0][0]
        finally:
            con.close()
        if not known and not members:
            raise RequestError(404, f"segment {segment_id!r} does not exist (as of {day})")
        return day, int(members)

    # -- admission -------------------------------------------------------------------------------
    def _reservation_key(self, segment_id: str) -> str:
        return join_key(LOCKS_PREFIX, API_LOCK_KIND, encode_segment(segment_id) + ".lock")

    def _finished(self, object_prefix: str | None, created: float) -> bool:
        """Is the export behind a reservation over (or abandoned)?"""
        record = self.get(object_prefix) if object_prefix else None
        if record is None:
            return self.clock() - created > LAUNCH_GRACE_SECONDS
        if record.failure or read_manifest(self.storage, record.key_prefix) is not None:
            return True
        if not record.run_id:
            return self.clock() - record.created_at > LAUNCH_GRACE_SECONDS
        status, _ = self.launcher.run_status(record.run_id)
        return status is None or status in ENDED  # None: the run was deleted (e.g. from the queue)

    def _published(self, tags: dict[str, str]) -> bool:
        """Is this API run's export already published (manifest written)? Its run may still be
        sending the callback, but like the job's own slot it no longer counts against the cap."""
        record = self.get(tags[PREFIX_TAG]) if tags.get(PREFIX_TAG) else None
        return record is not None and read_manifest(self.storage, record.key_prefix) is not None

    def _fail(self, run_id: str, tags: dict[str, str], why: str) -> None:
        """End a dead or never-started run in Dagster and remember why on its API record."""
        self.launcher.mark_failed(run_id, why)
        record = self.get(tags.get(PREFIX_TAG, "")) if tags.get(PREFIX_TAG) else None
        if record is not None and not record.failure:
            record.failure = why
            self._save(record)

    def live_runs(self, runs: list) -> list:
        """``runs`` (:class:`~segment_pipeline.api.launch.RunInfo`) without those that hold no slot:
        runs whose export process provably died and API runs never submitted are marked failed,
        other runs stuck in NOT_STARTED are not counted."""
        dead = None
        live = []
        for run in runs:
            if run.status in RUNNING:
                if dead is None:
                    dead = dead_lock_holders(self.storage, LOCK_KIND, stale_after=self.stale_after)
                why = dead.get(f"run {run.run_id}")
                if why:
                    self._fail(run.run_id, run.tags, f"the export process died before finishing ({why})")
                    continue
            elif run.status == "NOT_STARTED" and self.clock() - run.created_at > NOT_STARTED_GRACE_SECONDS:
                if PREFIX_TAG in run.tags:
                    self._fail(run.run_id, run.tags, "the run was created but never submitted to the run queue")
                continue
            live.append(run)
        return live

    def _holder(self, key: str) -> tuple[str | None, float] | None:
        """(object prefix, created) of the reservation at ``key``, None if there is none."""
        raw = self.storage.get_bytes(key)
        if raw is None:
            return None
        try:
            info = json.loads(raw)
            return info.get("object_prefix"), float(info["created_at"])
        except (ValueError, KeyError, TypeError):
            modified = self.storage.last_modified(key)
            return None, modified.timestamp() if modified else 0.0

    def _reserve(self, segment_id: str, object_prefix: str) -> None:
        key = self._reservation_key(segment_id)
        data = json.dumps({"object_prefix": object_prefix, "created_at": self.clock()}).encode()
        for _ in range(2):
            if self.storage.create_exclusive(key, data):
                return
            holder = self._holder(key)
            if holder is None:
                continue
            prefix, created = holder
            if self._finished(prefix, created) or self.clock() - created > self.stale_after:
                self.storage.delete(key)
                continue
            raise RequestError(
                409,
                f"an export of segment {segment_id!r} is already running (object_prefix {prefix}); at most one "
                "export per segment runs at a time: wait for it to finish (GET its object_prefix) and retry",
                object_prefix=prefix,
            )
        raise RequestError(409, f"an export of segment {segment_id!r} is being requested concurrently; retry")

    def release(self, record: ExportRecord) -> None:
        """Drop the segment's reservation if it is this export's."""
        key = self._reservation_key(record.segment_id)
        holder = self._holder(key)
        if holder is not None and holder[0] == record.object_prefix:
            self.storage.delete(key)

    def _active_reservations(self) -> set[str]:
        prefix = join_key(LOCKS_PREFIX, API_LOCK_KIND)
        active: set[str] = set()
        for key in self.storage.list_keys(prefix):
            holder = self._holder(key)
            if holder is None:
                continue
            object_prefix, created = holder
            if self._finished(object_prefix, created) or self.clock() - created > self.stale_after:
                self.storage.delete(key)
            else:
                active.add(object_prefix or key)
        return active

    def _job_lock_held(self, segment_id: str) -> bool:
        key = join_key(LOCKS_PREFIX, LOCK_KIND, encode_segment(segment_id) + ".lock")
        return read_lock(self.storage, key, stale_after=self.stale_after, now=self.clock()).state == "held"

    def submit(
        self,
        request: SegmentExportRequest,
        credential_id: str,
        *,
        status_url: Callable[[str], str] | None = None,
    ) -> ExportRecord:
        """Admit and launch one export (see the module docstring); RequestError on refusal."""
        day, members = self.segment_members(request.segment_id)
        object_prefix = new_object_prefix(self.clock())
        with self._lock:
            self._reserve(request.segment_id, object_prefix)
            try:
                ours = {SEGMENT_TAG: tag_value(request.segment_id)}
                elsewhere = [r for r in self.live_runs(self.launcher.runs_in_progress(ours)) if PREFIX_TAG not in r.tags]
                if elsewhere or self._job_lock_held(request.segment_id):
                    raise RequestError(
                        409,
                        f"an export of segment {request.segment_id!r} is already running (started outside this "
                        "API); at most one export per segment runs at a time: wait for it to finish and retry",
                    )
                reserved = self._active_reservations() | {object_prefix}
                runs = self.live_runs(self.launcher.runs_in_progress({GLOBAL_TAG: "true"}))
                others = {r.tags.get(PREFIX_TAG) or r.run_id for r in runs if not self._published(r.tags)}
                in_progress = len(reserved | others)
                if in_progress > self.max_concurrent:
                    raise RequestError(
                        429,
                        f"{self.max_concurrent} segment exports are already running (the configured maximum); "
                        "retry when one finishes",
                        retry_after=60,
                    )
                record = ExportRecord(
                    object_prefix=object_prefix,
                    segment_id=request.segment_id,
                    key_prefix=export_key_prefix(request.segment_id, object_prefix),
                    run_id="",
                    credential_id=credential_id,
                    created_at=self.clock(),
                    members=members,
                    as_of=day.isoformat(),
                    fields_to_export=list(request.fields_to_export),
                    output_format=request.output_format,
                    callback=bool(request.callback_endpoint),
                )
                config = {
                    "segment_id": request.segment_id,
                    "fields_to_export": list(request.fields_to_export),
                    "output_format": request.output_format,
                    "as_of": day.isoformat(),
                    "object_prefix": object_prefix,
                }
                if request.callback_endpoint:
                    config["callback_endpoint"] = request.callback_endpoint
                    if status_url is not None:
                        config["download_url"] = status_url(object_prefix)
                self._save(record)  # before the launch: a fast run's status lookup must find it
                try:
                    record.run_id = self.launcher.launch(
                        {"ops": {"segment_export": {"config": config}}}, export_tags(request.segment_id, object_prefix)
                    )
                except Exception as exc:
                    self._record_path(object_prefix).unlink(missing_ok=True)
                    raise RequestError(503, "the export could not be started (Dagster unavailable); retry later") from exc
                self._save(record)
            except BaseException:
                self.storage.delete(self._reservation_key(request.segment_id))
                raise
        return record

    # -- progress --------------------------------------------------------------------------------
    def progress(self, record: ExportRecord) -> Progress:
        manifest = read_manifest(self.storage, record.key_prefix)
        status, error = (None, "") if manifest is not None or not record.run_id else self.launcher.run_status(record.run_id)
        if manifest is None and not record.failure and record.run_id:
            if status is None:
                record.failure = "the export's run was deleted before it finished"
                self._save(record)
            elif status in RUNNING or status == "NOT_STARTED":
                info = RunInfo(record.run_id, export_tags(record.segment_id, record.object_prefix), status,
                               record.created_at)
                if not self.live_runs([info]):
                    record = self.get(record.object_prefix) or record
                    status, error = self.launcher.run_status(record.run_id)
        if status in ENDED:  # it may have finished since we looked
            manifest = read_manifest(self.storage, record.key_prefix)
        if manifest is None and record.failure:
            status, error = "FAILURE", record.failure
        written = files_written(self.storage, record.key_prefix) if manifest is None and status else 0
        progress = export_progress(manifest, status, written, record.members, error)
        if progress.status == "queued" and record.run_id:
            progress.message = getattr(self.launcher, "daemon_problem", lambda: "")()
        if progress.done:
            self.release(record)
        return progress


@dataclass
class RunInfo:
    """A run as :meth:`ExportService.live_runs` sees it (same fields as the launchers' ``RunInfo``)."""

    run_id: str
    tags: dict[str, str]
    status: str
    created_at: float
