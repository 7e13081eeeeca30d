"""Progress of a segment export requested through the API (plain logic over storage + run status).

An export is ``queued`` (accepted, its Dagster run not started yet), ``running`` (files appear as
5,000-user chunks are written), ``complete`` (its manifest exists: the file list is final),
``failed`` or ``canceled`` (the run ended without a manifest). The manifest is the only proof of
completion, whatever the run status says; the run status explains everything short of that.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

from segment_pipeline.core.atomic import TMP_PREFIX
from segment_pipeline.core.exports.segment_export import CHUNK_SIZE, MANIFEST_SUFFIX
from segment_pipeline.core.exports.storage import ExportStorage, LocalExportStorage

FAILED_RUN = {"FAILURE": "failed", "CANCELED": "canceled", "CANCELING": "canceled"}
RUNNING_RUN = {"STARTING", "STARTED"}
QUEUED_RUN = {"QUEUED", "NOT_STARTED", "MANAGED", None}
IN_PROGRESS_RUN = RUNNING_RUN | {"QUEUED", "NOT_STARTED", "MANAGED", "CANCELING"}


@dataclass
class Progress:
    status: str
    files_written: int = 0
    expected_files: int | None = None
    members: int | None = None
    files: list[dict] = field(default_factory=list)
    message: str = ""

    @property
    def done(self) -> bool:
        return self.status in ("complete", "failed", "canceled")


def read_manifest(storage: ExportStorage, key_prefix: str) -> dict | None:
    raw = storage.get_bytes(key_prefix + MANIFEST_SUFFIX)
    return json.loads(raw) if raw else None


def files_written(storage: ExportStorage, key_prefix: str) -> int:
    """Chunk files finished so far by a running export (before its folder is published)."""
    if isinstance(storage, LocalExportStorage):
        folder = storage.path(key_prefix)
        parent, name = folder.parent, folder.name
        if not parent.is_dir():
            return 0
        count = 0
        for staging in parent.glob(f"{TMP_PREFIX}{name}.*"):
            if staging.is_dir():
                count += sum(1 for f in staging.iterdir() if not f.name.startswith(TMP_PREFIX))
        return count
    return len(storage.list_keys(key_prefix))


def export_progress(
    manifest: dict | None, run_status: str | None, written: int = 0, members: int | None = None,
    run_error: str = "",
) -> Progress:
    if manifest is not None:
        return Progress(
            "complete", len(manifest["files"]), len(manifest["files"]), manifest.get("members"),
            list(manifest["files"]),
        )
    expected = math.ceil(members / CHUNK_SIZE) if members is not None else None
    if run_status in FAILED_RUN:
        return Progress(FAILED_RUN[run_status], written, expected, members, message=run_error or "the export run failed")
    if run_status == "SUCCESS":
        return Progress("failed", written, expected, members, message="the run ended but the export has no manifest")
    if run_status in RUNNING_RUN:
        return Progress("running", written, expected, members)
    return Progress("queued", 0, expected, members)
