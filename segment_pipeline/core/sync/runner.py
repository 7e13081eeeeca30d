"""Sync entry points: :func:`sync_klaviyo` and :func:`sync_dotdigital`.

One run, for one integration and one memberships day:

1. build the desired state (emails in synced segments -> sorted segment names),
2. ensure the destination containers exist (Klaviyo list; dotdigital data field + address book),
   which also yields the destination identity used as the mirror key,
3. diff desired vs. the mirror into a plan (upserts, clears, removals),
4. send the plan in batches with a bounded number in flight; after the destination confirms a
   batch (job complete / import finished, errors read) the mirror is updated for exactly the
   accepted rows, rejected rows are recorded with their reason (and retried next run),
5. record the run (counts) in the run history and return a :class:`SyncReport`.

Without a client (no credentials) the run is a dry run: the same plan, diffed against the mirror of
the last real destination, is written as request payloads under ``dry_run_root`` with a summary.
"""

from __future__ import annotations

import datetime as dt
import json
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from segment_pipeline.core.esp import dotdigital as dd
from segment_pipeline.core.esp import klaviyo as kl
from segment_pipeline.core.esp.http import HttpStats
from segment_pipeline.core.sync.batching import Batch, InFlight, Row, chunk, plan_batches, plan_rows
from segment_pipeline.core.sync.desired import desired_sql
from segment_pipeline.core.sync.diff import CLEAR, REMOVE, UPSERT, write_plan
from segment_pipeline.core.sync.dryrun import DryRunWriter
from segment_pipeline.core.sync.report import SyncReport
from segment_pipeline.core.sync.state import StateStore
from segment_pipeline.core.warehouse import Warehouse

Log = Callable[[str], None]


@dataclass(frozen=True)
class KlaviyoSettings:
    list_name: str = "Nosto Customers"
    property_name: str = "nosto_segment"
    max_profiles_per_job: int = kl.MAX_IMPORT_PROFILES
    max_bytes_per_job: int = kl.MAX_IMPORT_BYTES
    #: Import jobs submitted and not yet confirmed (about 10/s go out, each takes the server a while).
    max_in_flight: int = 32
    removal_batch: int = kl.MAX_LIST_MEMBERS_PER_CALL


@dataclass(frozen=True)
class DotdigitalSettings:
    data_field: str = "NOSTOSEGMENT"
    address_book: str = "Nosto Customers"
    separator: str = "|"
    contacts_per_import: int = 20_000
    max_active_imports: int = 3  # imports started and not yet finished (dotdigital allows a few)
    #: Batches being sent, imported or confirmed: more than the active imports, so the next
    #: import's upload and the last one's report and confirmation overlap with running imports.
    max_in_flight: int = 6
    upsert_merge_option: str = "OnlyOverwriteIfNotEmpty"  # an empty cell never wipes anything
    clear_merge_option: str = "Overwrite"  # only way to empty a field; the file has Email + our field only


class _Run:
    """Shared bookkeeping for one run."""

    def __init__(self, integration: str, warehouse: Warehouse, day: str | dt.date, synced: Mapping[str, str],
                 state_dir: Path, dry_run_root: Path, dry_run: bool, log: Log | None):
        self.integration = integration
        self.warehouse = warehouse
        self.day = str(day)
        self.synced = dict(synced)
        self.state_dir = Path(state_dir)
        self.dry_run_root = Path(dry_run_root)
        self.log = log or (lambda _m: None)
        self.run_id = f"{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}"
        self.store = StateStore(self.state_dir)
        self.store.lock()
        self.report = SyncReport(integration, "", self.day, dry_run, self.run_id)
        self.started = time.monotonic()
        self.stats0: tuple[int, ...] | None = None
        self.plan_path: Path | None = None

    @staticmethod
    def _snap(stats: HttpStats) -> tuple[int, ...]:
        return (stats.requests, stats.retries, stats.throttled, stats.faults, stats.bytes_sent)

    def execute(self, stats: HttpStats | None, work: Callable[[], None]) -> SyncReport:
        """Run ``work`` (plan + send) between the run's bookkeeping; the report records any error."""
        if stats is not None:
            self.stats0 = self._snap(stats)
        error: BaseException | None = None
        try:
            work()
        except BaseException as exc:
            error = exc
            raise
        finally:
            report = self.finish(stats, error)
        return report

    def dry_dest(self) -> str:
        return self.store.get_meta("last_dest") or f"{self.integration}|dry-run"

    def plan(self, dest: str, track_list: bool) -> Path:
        self.report.destination = dest
        sql, params = desired_sql(self.warehouse, self.day, self.synced)
        plan_path = self.plan_path = self.state_dir / "plans" / f"{self.run_id}.parquet"
        counts = write_plan(self.store, dest, sql, params, plan_path, track_list)
        r = self.report
        r.desired, r.planned_upserts, r.planned_clears, r.planned_removals = (
            counts.desired, counts.upserts, counts.clears, counts.removals)
        self.log(f"{self.integration}: {counts.desired} desired; plan: {counts.upserts} upserts, "
                 f"{counts.clears} clears, {counts.removals} removals")
        if not self.report.dry_run:
            self.store.start_run(self.run_id, self.integration, dest, self.day, False)
            self.store.set_meta("last_dest", dest)
        return plan_path

    def finish(self, stats: HttpStats | None, error: BaseException | None) -> SyncReport:
        r = self.report
        if stats is not None:
            now, base = self._snap(stats), self.stats0 or (0, 0, 0, 0, 0)
            r.requests, r.retries, r.throttled, r.faults, r.bytes_sent = (a - b for a, b in zip(now, base, strict=True))
        r.seconds = round(time.monotonic() - self.started, 3)
        r.status = "ok" if error is None else "failed"
        try:
            if not r.dry_run and r.destination:
                self.store.finish_run(self.run_id, r.status, r.counts(), None if error is None else str(error)[:500])
        finally:
            if self.plan_path is not None and self.plan_path.exists():
                self.plan_path.unlink()
            self.store.close()
        return r


# -- Klaviyo ------------------------------------------------------------------------------
def sync_klaviyo(warehouse: Warehouse, day: str | dt.date, synced: Mapping[str, str], *, state_dir: Path,
                 dry_run_root: Path, client: kl.KlaviyoClient | None, settings: KlaviyoSettings = KlaviyoSettings(),
                 log: Log | None = None) -> SyncReport:
    run = _Run("klaviyo", warehouse, day, synced, state_dir, dry_run_root, client is None, log)

    def work() -> None:
        if client is None:
            dest = run.dry_dest()
            list_id = f"DRY-RUN:{settings.list_name}"
        else:
            list_id = client.ensure_list(settings.list_name)
            dest = f"klaviyo|{client.base_url}|list={list_id}|property={settings.property_name}"
        _klaviyo_send(run, run.plan(dest, track_list=True), dest, list_id, client, settings)

    return run.execute(client.stats if client else None, work)


def _klaviyo_send(run: _Run, plan_path: Path, dest: str, list_id: str, client: kl.KlaviyoClient | None,
                  s: KlaviyoSettings) -> None:
    r, store = run.report, run.store
    writer = DryRunWriter(run.dry_run_root, "klaviyo") if client is None else None
    budget = s.max_bytes_per_job - kl.IMPORT_OVERHEAD_BYTES
    record_sql = kl.profile_item_sql(s.property_name)

    def body(batch: Batch, into_list: str | None) -> bytes:
        return kl.import_body_joined(batch.payload[:-1], into_list)  # records end with ","

    for action in (UPSERT, CLEAR):
        into_list = list_id if action == UPSERT else None  # clears never (re-)add anyone to the list
        batches = plan_batches(plan_path, action, record_sql, s.max_profiles_per_job, budget)
        if writer is not None:
            for i, batch in enumerate(batches, 1):
                writer.write(f"{action}-{i:05d}.json", body(batch, into_list))
                _count(r, action, batch.table)
            continue

        def work(batch: Batch, into_list: str | None = into_list) -> tuple[kl.ImportJob, list[kl.ImportError_]]:
            job_id = client.submit_import(body(batch, into_list))
            batch.payload = b""  # sent: only the rows are needed to confirm it
            job = client.wait_import(job_id)
            return job, (client.import_errors(job_id) if job.failed else [])

        def done(batch: Batch, result: tuple[kl.ImportJob, list[kl.ImportError_]], action: str = action) -> None:
            job, errors = result
            _confirm(run, dest, batch, action, {e.email: e.reason for e in errors if e.email}, job.failed,
                     f"klaviyo job {job.id}: {{failed}} failures", "import failed (unattributed error)",
                     keep_membership=action == CLEAR)  # a clear leaves list membership as it was

        InFlight(work, done, s.max_in_flight).run(batches)

    removals = chunk(plan_rows(plan_path, REMOVE), s.removal_batch)
    if writer is not None:
        for i, batch in enumerate(removals, 1):
            body = {"list": list_id, "emails": [b.email for b in batch]}
            writer.write(f"remove-{i:05d}.json", json.dumps(body, indent=1).encode())
            r.removed += len(batch)
            r.batches += 1
        r.payload_dir = str(writer.dir)
        writer.summary({**r.counts(), "requests_planned": writer.requests, "list_name": s.list_name,
                        "property_name": s.property_name, "destination": dest, "day": run.day})
        return

    def remove_work(batch: list[Row]) -> int:
        ids = client.profile_ids([b.email for b in batch])
        if ids:
            client.remove_from_list(list_id, sorted(ids.values()))
        return len(ids)

    def remove_done(batch: list[Row], _found: int) -> None:
        store.set_in_list(dest, [b.email for b in batch], False)
        r.removed += len(batch)
        r.batches += 1

    InFlight(remove_work, remove_done, 2).run(removals)


def _split(batch: Batch, bad: Mapping[str, str]) -> tuple[pa.Table, list[str]]:
    """The batch's rows the destination accepted (Arrow) and the emails it rejected."""
    if not bad:
        return batch.table, []
    refused = pc.is_in(batch.table.column("email"), value_set=pa.array(list(bad), pa.string()))
    rejected = batch.table.filter(refused).column("email").to_pylist()
    return batch.table.filter(pc.invert(refused)), rejected


def _not_members(ok: pa.Table) -> int:
    return int(pc.sum(pc.cast(pc.invert(ok.column("member")), pa.int64())).as_py() or 0)


def _count(r: SyncReport, action: str, ok: pa.Table) -> None:
    r.batches += 1
    if action == UPSERT:
        r.upserted += ok.num_rows
        r.added += _not_members(ok)
    else:
        r.cleared += ok.num_rows


def _confirm(run: _Run, dest: str, batch: Batch, action: str, bad: Mapping[str, str], failed: int, what: str,
             unattributed: str, keep_membership: bool = False) -> None:
    """Record a batch the destination finished: the accepted rows go into the mirror (as list members,
    or with their membership as it was when ``keep_membership``), the refused ones into ``rejects``
    with the destination's reason. If the destination reports more ``failed`` rows than it names in
    ``bad``, nothing is confirmed (``unattributed`` is every row's reason) and the next run resends."""
    r = run.report
    if failed > len(bad):
        run.log(f"{what.format(failed=failed)}, {len(bad)} attributable; batch left unconfirmed")
        bad = {e: unattributed for e in batch.emails}
    ok, rejected = _split(batch, bad)
    in_list = ok.column("member") if keep_membership else pa.repeat(True, ok.num_rows)
    run.store.confirm_table(dest, pa.table({"email": ok.column("email"), "segments": ok.column("segments"),
                                            "in_list": in_list}))
    run.store.reject(dest, [(e, action, bad[e]) for e in rejected], run.run_id)
    _count(r, action, ok)
    r.rejected += len(rejected)


# -- dotdigital ---------------------------------------------------------------------------
REPORT_OK_KEYS = {"newContacts", "updatedContacts"}


def sync_dotdigital(warehouse: Warehouse, day: str | dt.date, synced: Mapping[str, str], *, state_dir: Path,
                    dry_run_root: Path, client: dd.DotdigitalClient | None,
                    settings: DotdigitalSettings = DotdigitalSettings(), log: Log | None = None) -> SyncReport:
    run = _Run("dotdigital", warehouse, day, synced, state_dir, dry_run_root, client is None, log)

    def work() -> None:
        if client is None:
            dest, book = run.dry_dest(), 0
        else:
            client.ensure_data_field(settings.data_field)
            book = client.ensure_address_book(settings.address_book)
            dest = f"dotdigital|{client.base_url}|book={book}|field={settings.data_field.upper()}"
        _dotdigital_send(run, run.plan(dest, track_list=False), dest, book, client, settings)

    return run.execute(client.stats if client else None, work)


def _dotdigital_send(run: _Run, plan_path: Path, dest: str, book: int, client: dd.DotdigitalClient | None,
                     s: DotdigitalSettings) -> None:
    r = run.report
    writer = DryRunWriter(run.dry_run_root, "dotdigital") if client is None else None
    header = dd.csv_header(s.data_field)
    budget = dd.MAX_FILE_BYTES - len(header) - 1024
    active = threading.BoundedSemaphore(max(1, min(s.max_active_imports, s.max_in_flight)))
    record_sql = dd.contact_line_sql(s.separator)

    for action, merge in ((UPSERT, s.upsert_merge_option), (CLEAR, s.clear_merge_option)):
        batches = plan_batches(plan_path, action, record_sql, s.contacts_per_import, budget)

        if writer is not None:
            for i, batch in enumerate(batches, 1):
                writer.write(f"{action}-{i:05d}-{merge}.csv", header + batch.payload)
                _count(r, action, batch.table)
            continue

        def work(batch: Batch, merge: str = merge) -> tuple[dict[str, int], list[dd.ImportFault]]:
            with active:  # an import occupies one of the account's import slots until it is finished
                import_id = client.start_import(book, header + batch.payload, merge)
                batch.payload = b""  # sent: only the rows are needed to confirm it
                client.wait_import(import_id)
            report = client.import_report(import_id)
            problems = sum(v for k, v in report.items() if k not in REPORT_OK_KEYS and isinstance(v, int))
            return problems, (client.import_faults(import_id) if problems else [])

        def done(batch: Batch, result: tuple[int, list[dd.ImportFault]], action: str = action) -> None:
            problems, faults = result
            _confirm(run, dest, batch, action, {f.email: f.reason for f in faults if f.email}, problems,
                     "dotdigital import: {failed} problems", "import problem (unattributed)")

        InFlight(work, done, s.max_in_flight).run(batches)

    if writer is not None:
        r.payload_dir = str(writer.dir)
        writer.summary({**r.counts(), "requests_planned": writer.requests, "data_field": s.data_field,
                        "address_book": s.address_book, "destination": dest, "day": run.day})

