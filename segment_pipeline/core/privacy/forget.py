"""``forget``: record deletion requests, then remove the identities from the warehouse and exports.

One function, :func:`forget`, serves the CLI (``segment-pipeline forget``) and the daily
``deletion_requests`` asset (requests delivered as landing files, :func:`read_request_file`):

1. the requests are recorded in the ledger (:mod:`.ledger`): a tombstone (hash) that keeps later
   landing files from bringing the person back, and a pending file with the address;
2. every open request whose warehouse step is not done is scrubbed, all together, from every file
   under the warehouse root, the export root and the API's identity index (:mod:`.scrub`);
3. the newest incremental state (``profile_state``, ``segment_state``), scrubbed like every table,
   gets its ``inputs`` watermark restamped (:func:`~segment_pipeline.core.incremental.restamp_after_scrub`),
   so the next day continues it instead of rebuilding in full;
4. ``warehouse_done`` is recorded for each. The destinations' deletion (vendor endpoints, then the
   sync mirror rows) and :meth:`~.ledger.Ledger.settle`, which deletes the pending address, are
   the erasure step's.

Idempotent and crash-safe: a run killed at any point leaves every file old or new, the requests
not marked done, and the next run (any ``forget``, even with no new address) finishes them.
Runs are serialised by an exclusive ``flock`` on ``<warehouse>/privacy/forget.lock``.

Not removed (documented in docs/privacy.md): the Dagster instance's own storage (run logs, event
metadata: the pipeline never logs addresses, but a user's own log lines could), landing files
(the landing zone is the sender's; requests tombstone them instead), the sync mirrors until the
destination confirmed, backups and copies outside the two roots.
"""

from __future__ import annotations

import contextlib
import csv
import fcntl
import io
import json
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from segment_pipeline.core.atomic import open_private, private_mkdir
from segment_pipeline.core.exports.storage import ExportStorage, LocalExportStorage, S3ExportStorage
from segment_pipeline.core.incremental import inputs_snapshot, restamp_after_scrub
from segment_pipeline.core.privacy.ledger import PRIVACY_DIR, InvalidAddressError, Ledger, Request
from segment_pipeline.core.privacy.scrub import (
    ExportScrubber,
    ScrubReport,
    Targets,
    identity_index_dirs,
    scrub_identity_indexes,
    scrub_tree,
)
from segment_pipeline.core.warehouse import Warehouse, connect

LOCK_FILE = "forget.lock"
#: Column (CSV header) or key (NDJSON) of a request file holding the address.
EMAIL_COLUMN = "email"


class RequestFileError(ValueError):
    """A file of deletion requests cannot be read; the message names the file and the row."""


@dataclass
class ForgetResult:
    requested: list[Request] = field(default_factory=list)
    done: list[str] = field(default_factory=list)  # request ids whose warehouse step completed
    report: ScrubReport = field(default_factory=ScrubReport)

    def summary(self) -> dict[str, object]:
        r = self.report
        return {"requests_recorded": len(self.requested), "requests_done": len(self.done),
                "files_scanned": r.files_scanned, "files_rewritten": r.files_rewritten,
                "files_deleted": r.files_deleted, "rows_removed": r.rows_removed, "rows_masked": r.rows_masked,
                "bytes_rewritten": r.bytes_rewritten}


@contextlib.contextmanager
def _locked(warehouse_root: Path) -> Iterator[None]:
    folder = private_mkdir(warehouse_root / PRIVACY_DIR)
    fd = open_private(folder / LOCK_FILE, os.O_CREAT | os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def forget(
    warehouse_root: str | os.PathLike[str],
    storage: ExportStorage | None,
    emails: Iterable[str] = (),
    source: str = "cli",
    *,
    index_dirs: Iterable[Path] | None = None,
    log: Callable[[str], None] = lambda _msg: None,
    on_file: Callable[[object], None] | None = None,
) -> ForgetResult:
    """Record requests for ``emails`` (from ``source``: ``"cli"``, ``"landing:<folder>"``) and
    remove every open request's identity from the warehouse root, the export ``storage`` (None:
    no exports) and the identity index folders (default: the API state's). See the module doc.

    Raises :class:`~.ledger.InvalidAddressError` (nothing recorded) for an invalid address and
    :class:`~.scrub.ScrubError` naming a file that holds an identity but cannot be edited (the
    requests stay open; everything else scrubbed so far stays scrubbed).
    """
    root = Path(warehouse_root).absolute()
    ledger = Ledger(root)
    result = ForgetResult()
    emails = list(emails)
    if emails:
        result.requested = ledger.request(emails, source)
    elif not ledger.path.exists():
        log("no deletion request was ever recorded")
        return result  # no ledger is created (ingestion then skips the tombstone filter entirely)
    with _locked(root):
        todo = ledger.warehouse_todo()
        if not todo:
            log("no open deletion request to apply to the warehouse")
            return result
        targets = Targets.of(p.email for p in todo)
        # leftovers of killed writes (this command's too) may hold old content: removed first
        swept = Warehouse(root).sweep() + (storage.sweep() if isinstance(storage, LocalExportStorage) else [])
        if swept:
            log(f"removed {len(swept)} leftover temporary file(s) of killed writes")
        log(f"removing {len(todo)} identit{'y' if len(todo) == 1 else 'ies'} from {root}")
        wh = Warehouse(root)
        con = connect()
        try:
            snapshot = inputs_snapshot(con, wh)
            scrub_tree(root, targets, result.report, on_file=on_file)
            # the incremental state was scrubbed with the raw partitions: it continues tomorrow
            restamped = restamp_after_scrub(con, wh, snapshot, set(result.report.changed))
        finally:
            con.close()
        if restamped:
            log(f"incremental state kept (inputs restamped): {', '.join(restamped)}")
        if storage is not None:
            log(f"removing them from the exports in {storage}")
            ExportScrubber(storage, targets, ledger.dir, result.report).run(on_key=on_file)
        scrub_identity_indexes(identity_index_dirs() if index_dirs is None else index_dirs, targets, result.report)
        ledger.warehouse_done_many(p.request_id for p in todo)
        result.done.extend(p.request_id for p in todo)
    log(json.dumps(result.summary()))
    return result


def read_request_file(path: str | os.PathLike[str]) -> list[str]:
    """The addresses of a deletion request file: CSV with an ``email`` column, NDJSON/JSON lines
    with an ``email`` key, or plain text with one address per line (``.txt`` or no extension).
    Blank lines are skipped. Raises :class:`RequestFileError` naming the file and line (never the
    address) for a row without an address or an invalid one (:func:`read_request_rows` keeps the
    valid rows instead)."""
    emails, rejects = read_request_rows(path)
    if rejects:
        line, reason = rejects[0]
        raise RequestFileError(f"{path}: {'line ' + str(line) + ': ' if line else ''}{reason}")
    return emails


def read_request_rows(path: str | os.PathLike[str]) -> tuple[list[str], list[tuple[int | None, str]]]:
    """(valid addresses, rejected rows) of a deletion request file (formats as
    :func:`read_request_file`). A rejected row is ``(line, reason)``, the reason never holding the
    value (``no 'email' value``, ``not JSON (...)``, the address problem of
    :func:`segment_pipeline.core.identity.email_problem`); a CSV without an ``email`` column is
    one reject of line 1."""
    from segment_pipeline.core.identity import email_problem

    path = Path(path)
    name = path.name.lower()
    out: list[str] = []
    rejects: list[tuple[int | None, str]] = []

    def add(value: object, line: int) -> None:
        if not isinstance(value, str) or not value.strip():
            rejects.append((line, f"no {EMAIL_COLUMN!r} value"))
            return
        problem = email_problem(value)
        if problem:
            rejects.append((line, problem))
            return
        out.append(value)

    text = path.read_text(encoding="utf-8-sig")
    if name.endswith(".csv"):
        reader = csv.DictReader(io.StringIO(text))
        fields = {f.strip().lower(): f for f in reader.fieldnames or []}
        if EMAIL_COLUMN not in fields:
            return [], [(1, f"no {EMAIL_COLUMN!r} column in the header {reader.fieldnames}")]
        for row in reader:
            add(row.get(fields[EMAIL_COLUMN]), reader.line_num)
    elif name.endswith((".ndjson", ".jsonl", ".json")):
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError as exc:
                rejects.append((n, f"not JSON ({exc.msg})"))
                continue
            add(record.get(EMAIL_COLUMN) if isinstance(record, dict) else None, n)
    else:
        for n, line in enumerate(text.splitlines(), 1):
            if line.strip():
                add(line, n)
    return out, rejects


def export_storage_from_env() -> ExportStorage:
    """The export storage the pipeline writes to, from the same environment as
    :mod:`segment_pipeline.defs.exports.resources` (local folder, or S3 when a bucket is set)."""
    bucket = os.environ.get("SEGMENT_PIPELINE_EXPORT_BUCKET")
    if bucket:
        import boto3

        client = boto3.client("s3", endpoint_url=os.environ.get("SEGMENT_PIPELINE_EXPORT_ENDPOINT_URL") or None,
                              region_name=os.environ.get("SEGMENT_PIPELINE_EXPORT_REGION") or None)
        return S3ExportStorage(client, bucket, os.environ.get("SEGMENT_PIPELINE_EXPORT_PREFIX", "exports"))
    from segment_pipeline import settings

    root = os.environ.get("SEGMENT_PIPELINE_EXPORT_DIR") or str(Path(settings.warehouse_root()).parent / "exports")
    return LocalExportStorage(root)


__all__ = ["ForgetResult", "InvalidAddressError", "RequestFileError", "export_storage_from_env", "forget",
           "read_request_file", "read_request_rows"]
