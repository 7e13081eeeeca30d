"""The sync engine: one run of any destination adapter, and the adapter interface.

A *destination* (:class:`Destination`) declares what it can do (:class:`Capabilities`), its limits
(:class:`Limits`), how it is configured (:class:`Option`, read by the Dagster resource) and how to
build a request from a batch of rendered records, send it, wait for it and read its per-row
result (:class:`Outcome`). Everything else is the engine's, the same for every destination:

1. build the desired state (emails in synced segments -> sorted segment names) and fit each value
   to the destination's value-length limit (:class:`~segment_pipeline.core.sync.diff.ValueFit`),
2. let the adapter ensure its containers (list, address book, data field), which yields the
   :class:`~segment_pipeline.core.sync.state.Target` (what the mirror is keyed on),
3. diff desired vs. the mirror into a plan (upserts, clears, removals),
4. send the plan in batches cut on the adapter's row and byte budgets, a bounded number in flight
   (pacing itself is the client's: :class:`~segment_pipeline.core.esp.http.HttpSession` keeps the
   documented rate-limit windows); after the destination finished a batch, the accepted rows go
   into the mirror and the rejected ones into ``rejects`` with the destination's reason (they are
   retried next run),
5. record the run in the run history and return a :class:`SyncReport` (the asset's metadata).

Without a client (no credentials) the run is a dry run: the same plan, diffed against the mirror of
the last real target, is written as request payloads under ``dry_run_root`` with a summary.

Per-row outcome (issue 13): a batch's result is the rows the destination names as refused. When
its counters add up to more than the rows it names (dotdigital counts an unsubscribed contact as
suppressed *and* as a fault), that is recorded (``report_mismatches``) and the named rows are
rejected; the rest of the batch is confirmed. Only a refusal that names no row at all
(``Outcome.unattributed``) leaves the batch unconfirmed, so it is sent again next run.
"""

from __future__ import annotations

import abc
import contextlib
import dataclasses
import datetime as dt
import re
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import pyarrow as pa
import pyarrow.compute as pc

from segment_pipeline.core.esp.http import EspClient, HttpStats
from segment_pipeline.core.privacy.ledger import PRIVACY_DIR, TOMBSTONES_FILE, Ledger
from segment_pipeline.core.privacy.suppression import keep_email_sql
from segment_pipeline.core.sync.batching import Batch, InFlight, Row, chunk, plan_batches, plan_rows
from segment_pipeline.core.sync.desired import desired_sql
from segment_pipeline.core.sync.diff import CLEAR, REMOVE, UPSERT, PlanCounts, ValueFit, write_plan
from segment_pipeline.core.sync.dryrun import DryRunWriter
from segment_pipeline.core.sync.fields import UNSET_PREFIX, FieldPlan
from segment_pipeline.core.sync.mappings import FieldMapping
from segment_pipeline.core.sync.plan import RemovalGuardError, guard_message, plan_summary
from segment_pipeline.core.sync.report import SyncReport
from segment_pipeline.core.sync.state import StateStore, Target
from segment_pipeline.core.warehouse import Warehouse

Log = Callable[[str], None]


# -- the adapter interface ------------------------------------------------------------------
@dataclass(frozen=True)
class Capabilities:
    """What a destination can be told.

    ``property_upsert``: set a profile property / contact field to the list of segment names
    (and clear it). Without it the destination holds members only: the mirror keeps membership
    alone (no value in ``held``), upserts add desired non-members and (with ``list_remove``)
    leavers are removed. ``list_add``: an upsert also adds the profile to the target's list/book.
    ``list_remove``: profiles no longer desired can be removed from the list (:meth:`Destination.remove`).
    ``audience_per_segment``: the destination holds one audience per synced segment (ad platforms:
    a Meta custom audience). The engine then runs once per synced segment, with
    :attr:`Destination.segment` set and the desired state of that segment alone, so an upsert
    means "add to the segment's audience" and a removal "remove from it"; each audience is its own
    target (mirror, rejects, run history, dry-run folder), the runs share one open state store
    and their reports are summed into one (:func:`merge_reports`).
    """

    property_upsert: bool = True
    list_add: bool = True
    list_remove: bool = False
    audience_per_segment: bool = False
    #: without ``list_remove``: a member whose address is now on a suppression list is still
    #: removed from the list (:meth:`Destination.remove`), not left in it with its value cleared
    list_withdraw: bool = False


@dataclass(frozen=True)
class Limits:
    """A destination's documented limits (the adapter's docstring cites the source of each).

    ``records_per_request`` / ``bytes_per_request``: the most records and body bytes in one
    request (``request_overhead`` of them are the request's envelope, not records).
    ``value``: the value-length limit and how a value is rendered (None: no documented limit).
    ``rate_limits``: the documented windows per endpoint family, ``[(requests, seconds), ...]``;
    the client paces every request by them. ``concurrent_jobs``: asynchronous jobs/imports the
    account may have running at once (None: no limit). ``in_flight``: batches being sent, processed
    or confirmed at once. ``removals_per_request``: profiles per list-removal call.
    ``confirm_rows`` / ``confirm_seconds``: for destinations with small synchronous requests (Braze:
    75 rows each), finished batches are recorded in the mirror together, once this many rows or
    seconds have gathered (0: every batch on its own, the default). Recording a batch costs a
    state transaction (milliseconds) whatever its size; gathered, a crash loses at most these
    rows' confirmations too, and the next run sends them again.
    """

    records_per_request: int
    bytes_per_request: int
    request_overhead: int = 0
    value: ValueFit | None = None
    rate_limits: Mapping[str, Sequence[tuple[int, float]]] = field(default_factory=dict)
    concurrent_jobs: int | None = None
    in_flight: int = 4
    removals_per_request: int = 1000
    confirm_rows: int = 0
    confirm_seconds: float = 1.0


@dataclass(frozen=True)
class Option:
    """One configuration field of a destination: the Dagster resource field ``name``, the
    environment variable that sets it, its default and whether it is a secret (never shown, logged
    or put into metadata). A destination without its secrets set runs dry."""

    name: str
    env: str
    default: str | int = ""
    secret: bool = False
    help: str = ""


@dataclass
class Outcome:
    """What the destination said about one finished request.

    ``rejected``: email -> the destination's reason, for every row it names as refused.
    ``counted``: rows its counters report as not applied (0 when it gives no counters).
    ``unattributed``: refusals naming no row; any makes the engine leave the batch unconfirmed.
    ``ref``: the job/import id, for log lines.
    """

    rejected: dict[str, str] = field(default_factory=dict)
    counted: int = 0
    unattributed: int = 0
    ref: str = ""


@dataclass(frozen=True)
class Erasure:
    """What a destination said about erasing one address (:meth:`Destination.erase`, issue 15).

    ``state``: ``confirmed`` (the vendor confirmed the deletion, or its own lookup no longer finds
    the contact: verified absence), ``done`` (the vendor accepted the deletion request but it is
    not verified yet: checked again on the next run), ``failed`` (``detail`` says why; asked
    again on the next run). ``detail``: the vendor's words or ours, never the address.
    """

    state: str
    detail: str = ""

    def __post_init__(self) -> None:
        if self.state not in ERASURE_STATES:
            raise ValueError(f"erasure state must be one of {ERASURE_STATES}, got {self.state!r}")


ERASURE_STATES = ("confirmed", "done", "failed")


class Destination(abc.ABC):
    """A destination adapter: one instance per run, holding the client (None: dry run) and settings.

    Class attributes declare the destination to the registry (name, Dagster asset and schedule,
    configuration); methods build and send requests. See docs/syncs.md, "Adding a destination".
    """

    #: registry key, asset ``<name>_sync``, state under ``sync_state/<name>``, the segments'
    #: ``sync: {<name>: true}`` toggle.
    name: ClassVar[str]
    title: ClassVar[str]  # for descriptions, e.g. "Klaviyo"
    description: ClassVar[str]  # the asset's description
    capabilities: ClassVar[Capabilities]
    options: ClassVar[tuple[Option, ...]]
    cron_env: ClassVar[str]  # environment variable overriding the schedule
    cron: ClassVar[str]  # default schedule (UTC)
    freshness_hours: ClassVar[int]  # asset is late after this long without a run (warn one hour before)
    #: mapped-field clears cannot ride on an upsert: each cleared field is sent in ``unset:<field>``
    #: requests of its own (dotdigital: an empty cell clears only under the Overwrite merge option)
    unset_separately: ClassVar[bool] = False

    def __init__(self, client: EspClient | None, settings: Any, mappings: Sequence[FieldMapping] = ()):
        self.client = client
        self.settings = settings
        #: the validated field mappings of this destination (:mod:`segment_pipeline.core.sync.mappings`);
        #: ``record_sql`` then renders the plan's ``fields`` column too
        self.mappings: tuple[FieldMapping, ...] = tuple(mappings)
        #: the list/book id (or a dry-run placeholder) once :meth:`connect` / :meth:`dry_connect` ran
        self.container_ref: Any = None
        #: ``(segment_id, segment_name)`` being synced (``capabilities.audience_per_segment`` only)
        self.segment: tuple[str, str] | None = None

    # -- configuration (used by the Dagster resource) -------------------------------------------
    @classmethod
    def option_values(cls, given: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Every option's value: the given one, or the option's declared default where it is missing
        or empty. :meth:`client_from` and :meth:`settings_from` receive this complete mapping, so a
        default is declared once, in :attr:`options`."""
        given = given or {}
        return {o.name: given.get(o.name) or o.default for o in cls.options}

    @classmethod
    @abc.abstractmethod
    def client_from(cls, options: Mapping[str, Any]) -> EspClient | None:
        """The client for these option values (complete: :meth:`option_values`), or None when a
        secret is missing (dry run)."""

    @classmethod
    @abc.abstractmethod
    def settings_from(cls, options: Mapping[str, Any]) -> Any:
        """The sync settings for these option values (complete: :meth:`option_values`)."""

    # -- declared limits --------------------------------------------------------------------
    @abc.abstractmethod
    def limits(self) -> Limits: ...

    # -- setup --------------------------------------------------------------------------------
    @abc.abstractmethod
    def connect(self) -> Target:
        """Ensure the destination's containers exist (real run) and return the target."""

    @abc.abstractmethod
    def dry_connect(self) -> None:
        """Set :attr:`container_ref` to a placeholder for dry-run payloads."""

    # -- requests ------------------------------------------------------------------------------
    @abc.abstractmethod
    def record_sql(self, action: str) -> str:
        """DuckDB expression rendering one plan row (``email``, ``segments`` JSON, ``member``,
        ``held``: the JSON list the profile is confirmed to carry, NULL if unknown; with
        :attr:`mappings` also ``fields``: the JSON object of mapped-field changes, NULL: none) as
        its record in a request body, *with its own trailing separator*. ``action`` is
        ``upsert``, ``clear`` or (``unset_separately``) ``unset:<field>``."""

    @abc.abstractmethod
    def build_request(self, action: str, payload: bytes) -> bytes:
        """The request body for a batch: ``payload`` is the batch's records concatenated."""

    @abc.abstractmethod
    def submit(self, action: str, body: bytes) -> Any:
        """Send one request; return a handle (job/import id)."""

    @abc.abstractmethod
    def wait(self, handle: Any) -> Any:
        """Wait until the destination finished the request; return what :meth:`outcome` needs."""

    @abc.abstractmethod
    def outcome(self, finished: Any) -> Outcome:
        """Read the per-row result of a finished request."""

    def remove(self, emails: Sequence[str]) -> None:
        """Remove these profiles from the target's list (``capabilities.list_remove`` only)."""
        raise NotImplementedError(f"{self.name} cannot remove from lists")

    def dry_removal(self, emails: Sequence[str]) -> bytes:
        """The request a removal would send, for dry runs (``capabilities.list_remove`` only)."""
        raise NotImplementedError(f"{self.name} cannot remove from lists")

    @abc.abstractmethod
    def dry_run_name(self, action: str, index: int) -> str:
        """File name of the ``index``-th (1-based) dry-run request of ``action``."""

    def summary(self) -> dict[str, object]:
        """Settings worth showing in the dry-run summary (never secrets)."""
        return {}

    def segment_field(self) -> str | None:
        """The property/field/attribute holding the segment names (never a mapping's target);
        None for destinations holding members only."""
        return None

    # -- erasure (issue 15: deletion requests propagated to the destination) ---------------------
    #: addresses per :meth:`erase` call; 0: this destination cannot erase
    erase_batch: ClassVar[int] = 0

    def erase(self, emails: Sequence[str], known: Sequence[str] = ()) -> dict[str, Erasure]:
        """Delete the contacts/profiles with these (normalised) addresses through the vendor's own
        deletion endpoint, and confirm it where the vendor allows: ``email -> Erasure`` for every
        address given. ``known``: the containers (:attr:`Target.container`) this destination's
        mirror has ever held, for destinations that erase per container (Meta audiences).

        Must be idempotent (a re-run after a crash asks again): look up first, and treat "not
        found" as confirmed. Raises :class:`~segment_pipeline.core.esp.http.EspAuthError` when the
        credentials cannot delete at all; any other failure of one address is its ``failed``
        :class:`Erasure`. Never puts an address into an error, log line or ``detail``."""
        raise NotImplementedError(f"{self.name} cannot erase contacts")


# -- one run ----------------------------------------------------------------------------------
def run_sync(destination: Destination, warehouse: Warehouse, day: str | dt.date, synced: Mapping[str, str], *,
             state_dir: Path, dry_run_root: Path, log: Log | None = None, max_removal_share: float | None = None,
             allow_large_removal: bool = False) -> SyncReport:
    """Sync ``day``'s memberships of the ``synced`` segments (id -> name) to ``destination``.

    Raises what the destination's client raises (after recording the run as failed); a dry run
    (``destination.client is None``) never touches the network. A destination with
    ``capabilities.audience_per_segment`` is run once per synced segment (in name order, stopping
    at the first failure) and the reports are summed (:func:`merge_reports`).

    Removal guard: with ``max_removal_share`` (0..1; the asset and the CLI pass
    ``settings.sync_max_removal_share()``), a real run whose plan would clear, remove or take a
    mapped field from more than that share of the contacts the destination holds (per the mirror)
    raises :class:`~segment_pipeline.core.sync.plan.RemovalGuardError` before sending anything,
    unless ``allow_large_removal``. A dry run only notes it.
    """
    guard = (max_removal_share, allow_large_removal)
    if not destination.capabilities.audience_per_segment:
        return _Run(destination, warehouse, day, synced, Path(state_dir), Path(dry_run_root), log,
                    guard=guard).execute()
    reports = []
    started = time.monotonic()
    store = StateStore(state_dir)  # one lock and one open state for all the audiences' runs
    try:
        store.lock()
        for segment_id, name in sorted(synced.items(), key=lambda kv: (kv[1], kv[0])):
            destination.segment = (segment_id, name)
            reports.append(_Run(destination, warehouse, day, {segment_id: name}, Path(state_dir), Path(dry_run_root),
                                log, scope=segment_id, store=store, guard=guard).execute())
    finally:
        destination.segment = None
        store.close()
    merged = merge_reports(destination.name, str(day), destination.client is None, reports)
    merged.seconds = round(time.monotonic() - started, 3)  # the whole run, gaps between audiences included
    return merged


def merge_reports(integration: str, day: str, dry_run: bool, reports: Sequence[SyncReport]) -> SyncReport:
    """One report summing the counts of per-audience runs; ``destination`` and ``run_id`` list theirs."""
    out = SyncReport(integration, "; ".join(r.destination for r in reports), day, dry_run,
                     "; ".join(r.run_id for r in reports))
    for f in dataclasses.fields(SyncReport):
        v = getattr(out, f.name)
        if isinstance(v, int | float) and not isinstance(v, bool):
            setattr(out, f.name, sum(getattr(r, f.name) for r in reports))
    out.seconds = round(out.seconds, 3)
    out.status = "ok" if all(r.status == "ok" for r in reports) else "failed"
    out.notes = [n for r in reports for n in r.notes]
    out.plan = {r.run_id: r.plan for r in reports if r.plan}
    dirs = sorted({str(Path(r.payload_dir).parent.parent) for r in reports if r.payload_dir})
    out.payload_dir = dirs[0] if len(dirs) == 1 else (", ".join(dirs) or None)
    return out


def forgotten_sql(warehouse: Warehouse) -> str | None:
    """The tombstoned addresses' hashes (:meth:`Ledger.tombstone_sql`) a plan leaves out, or None
    when no deletion ledger was ever written (nothing is created then)."""
    if not (warehouse.root / PRIVACY_DIR / TOMBSTONES_FILE).exists():
        return None
    return Ledger(warehouse.root).tombstone_sql()


class _Run:
    def __init__(self, d: Destination, warehouse: Warehouse, day: str | dt.date, synced: Mapping[str, str],
                 state_dir: Path, dry_run_root: Path, log: Log | None, scope: str = "",
                 store: StateStore | None = None, guard: tuple[float | None, bool] = (None, False)):
        self.d = d
        self.warehouse = warehouse
        self.day = str(day)
        self.synced = dict(synced)
        self.state_dir = state_dir
        self.dry_run_root = dry_run_root
        self.log = log or (lambda _m: None)
        self.dry = d.client is None
        self.run_id = f"{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}"
        self.own_store = store is None
        self.store = store if store is not None else StateStore(state_dir)
        if self.own_store:
            self.store.lock()
        self.report = SyncReport(d.name, "", self.day, self.dry, self.run_id)
        self.started = time.monotonic()
        self.plan_path: Path | None = None
        self.target: Target | None = None
        self.limits = d.limits()
        #: finished batches not yet recorded (``Limits.confirm_rows``): action -> gathered rows
        self._gathered: dict[str, _Gathered] = {}
        #: per-audience runs keep their own "last real target" and dry-run folder
        self.scope = scope
        self.last_key = f"last_dest:{scope}" if scope else "last_dest"
        self.max_removal_share, self.allow_large_removal = guard
        #: mapped fields take part only where the destination holds profile values
        self.mapped = bool(d.mappings) and d.capabilities.property_upsert
        self.counts: PlanCounts | None = None

    @staticmethod
    def _snap(stats: HttpStats) -> tuple[int, ...]:
        return (stats.requests, stats.retries, stats.throttled, stats.faults, stats.bytes_sent)

    def execute(self) -> SyncReport:
        stats = self.d.client.stats if self.d.client is not None else None
        base = self._snap(stats) if stats is not None else None
        error: BaseException | None = None
        try:
            self.work()
        except BaseException as exc:
            error = exc
            raise
        finally:
            r = self.report
            if stats is not None and base is not None:
                now = self._snap(stats)
                r.requests, r.retries, r.throttled, r.faults, r.bytes_sent = (a - b for a, b in zip(now, base, strict=True))
            r.seconds = round(time.monotonic() - self.started, 3)
            r.status = "ok" if error is None else "failed"
            try:
                if not r.dry_run and r.destination:
                    self.store.finish_run(self.run_id, r.status, r.counts(),
                                          None if error is None else str(error)[:500])
            finally:
                if self.plan_path is not None and self.plan_path.exists():
                    self.plan_path.unlink()
                if self.own_store:
                    self.store.close()
        return self.report

    # -- plan ------------------------------------------------------------------------------
    def work(self) -> None:
        if self.dry:
            last = self.store.get_meta(self.last_key)
            self.target = Target.parse(last) if last else Target.parse(f"{self.d.name}|dry-run")
            self.d.dry_connect()
        else:
            self.target = self.d.connect()
        self.plan()
        self.send()

    def plan(self) -> None:
        d, r, target = self.d, self.report, self.target
        assert target is not None
        r.destination = target.dest
        sql, params = desired_sql(self.warehouse, self.day, self.synced, destination=d.name)
        caps = d.capabilities
        # suppressed members leave the list even where leavers stay in it (issue 15)
        withdraw = f"NOT {keep_email_sql(self.warehouse, 'email')}" if caps.list_withdraw and not caps.list_remove \
            else None
        self.plan_path = self.state_dir / "plans" / f"{self.run_id}.parquet"
        counts = write_plan(self.store, target, sql, params, self.plan_path,
                            track_membership=d.capabilities.list_add, removes=d.capabilities.list_remove,
                            withdraw=withdraw,
                            fit=self.limits.value, run_id=None if self.dry else self.run_id,
                            values=d.capabilities.property_upsert, fields=self.field_plan(target),
                            forgotten=forgotten_sql(self.warehouse))
        self.counts = counts
        r.desired, r.planned_upserts, r.planned_clears, r.planned_removals = (
            counts.desired, counts.upserts, counts.clears, counts.removals)
        r.held_contacts, r.leaving, r.forgotten = counts.held_contacts, counts.leaving, counts.forgotten
        fc = counts.field_counts
        if fc is not None:
            r.planned_field_values, r.planned_field_clears = sum(fc.sets.values()), sum(fc.clears.values())
            r.fields_over_limit = sum(fc.over.values())
            over = {k: v for k, v in fc.over.items() if v}
            if over:
                r.notes.append("values over the field's length limit, not sent (the destination keeps its value): "
                               + ", ".join(f"{k} ({v})" for k, v in over.items()))
        r.plan = plan_summary(counts, self.plan_path, d.mappings if self.mapped else ())
        share = counts.leaving / counts.held_contacts if counts.held_contacts else 0.0
        r.truncated = counts.truncated
        self.log(f"{d.name}: {counts.desired} desired; plan: {counts.upserts} upserts, "
                 f"{counts.clears} clears, {counts.removals} removals")
        if counts.truncated:
            value = self.limits.value
            most = ", ".join(f"{name!r} ({n})" for name, n in counts.dropped_names)
            r.notes.append(f"{counts.truncated} values over the {value.max_chars if value else '?'}-"
                           f"{value.unit if value else 'character'} limit "
                           f"kept whole segment names up to it ({counts.dropped_all} had none fit); "
                           f"dropped most: {most}")
            self.log(f"{d.name}: {r.notes[-1]}; see the 'truncated' table in {self.state_dir / 'state.duckdb'}")
        if not self.dry:
            self.store.start_run(self.run_id, d.name, target.dest, self.day, False)
            self.store.set_meta(self.last_key, target.dest)
        limit = self.max_removal_share
        if limit is not None and counts.held_contacts and share > limit:
            message = guard_message(d.name, counts, limit, self.day)
            if self.dry or self.allow_large_removal:
                r.notes.append(("confirmed: " if self.allow_large_removal and not self.dry else "") + message)
                self.log(f"{d.name}: {r.notes[-1]}")
            else:
                raise RemovalGuardError(message, plan=r.plan, counts=counts)

    def field_plan(self, target: Target) -> FieldPlan | None:
        """The mapped fields' part of the plan (None without mappings). Values come from the
        ``profiles`` partition of the synced day, which memberships are computed from."""
        if not self.mapped:
            return None
        if not self.warehouse.has_partition("profiles", self.day):
            raise ValueError(f"{self.d.name}: field mappings need the profiles partition of {self.day}, "
                             "which is missing: materialize profiles for that day first")
        return FieldPlan(self.d.mappings, self.d.name, self.warehouse.scan("profiles", days=[self.day]),
                         target.field_holder(), self.d.unset_separately)

    # -- send ------------------------------------------------------------------------------
    def send(self) -> None:
        d, r, lim = self.d, self.report, self.limits
        assert self.plan_path is not None
        folder = f"{d.name}/{_safe_part(self.scope)}" if self.scope else d.name
        writer = DryRunWriter(self.dry_run_root, folder) if self.dry else None
        budget = lim.bytes_per_request - lim.request_overhead
        jobs = threading.BoundedSemaphore(max(1, min(lim.concurrent_jobs, lim.in_flight))) \
            if lim.concurrent_jobs else None

        unsets = [f"{UNSET_PREFIX}{m.target}" for m in d.mappings if m.clears] \
            if self.mapped and d.unset_separately else []
        extra = ("fields",) if self.mapped else ()
        for action in (UPSERT, *unsets, CLEAR):
            batches = plan_batches(self.plan_path, action, d.record_sql(action), lim.records_per_request, budget,
                                   extra=extra)
            if writer is not None:
                for i, batch in enumerate(batches, 1):
                    writer.write(d.dry_run_name(action, i), d.build_request(action, batch.payload))
                    _count(r, action, batch.table)
                continue

            def work(batch: Batch, action: str = action) -> Outcome:
                body = d.build_request(action, batch.payload)
                batch.payload = b""  # built: only the rows are needed to confirm it
                with jobs if jobs is not None else contextlib.nullcontext():
                    finished = d.wait(d.submit(action, body))  # a job holds an account slot until done
                return d.outcome(finished)

            def done(batch: Batch, outcome: Outcome, action: str = action) -> None:
                self.confirm(batch, action, outcome)

            try:
                InFlight(work, done, lim.in_flight).run(batches)
            finally:
                self.record(action)  # what finished is recorded, also when a later batch failed

        if d.capabilities.list_remove or d.capabilities.list_withdraw:
            self.removals(writer)
        if writer is not None:
            r.payload_dir = str(writer.dir)
            writer.summary({**r.counts(), "requests_planned": writer.requests, **d.summary(),
                            "destination": r.destination, "day": self.day})

    def removals(self, writer: DryRunWriter | None) -> None:
        d, r, target = self.d, self.report, self.target
        assert self.plan_path is not None and target is not None
        batches = chunk(plan_rows(self.plan_path, REMOVE), self.limits.removals_per_request)
        if writer is not None:
            for i, batch in enumerate(batches, 1):
                writer.write(d.dry_run_name(REMOVE, i), d.dry_removal([b.email for b in batch]))
                r.removed += len(batch)
                r.batches += 1
            return

        def work(batch: list[Row]) -> None:
            d.remove([b.email for b in batch])

        def done(batch: list[Row], _none: None) -> None:
            self.store.set_in_list(target, [b.email for b in batch], False)
            r.removed += len(batch)
            r.batches += 1

        InFlight(work, done, 2).run(batches)

    def confirm(self, batch: Batch, action: str, outcome: Outcome) -> None:
        """Record a finished batch: accepted rows into the mirror (upserts also as list members
        when the destination adds them; clears leave membership as it was), refused rows into
        ``rejects`` with the destination's reason. See the module docstring for the per-row rule.
        With ``Limits.confirm_rows`` the batch is gathered with others and written by :meth:`record`."""
        r = self.report
        bad = dict(outcome.rejected)
        if outcome.unattributed:
            self.log(f"{self.d.name} {outcome.ref}: {outcome.unattributed} refusals name no row; "
                     "batch left unconfirmed (sent again next run)")
            r.unconfirmed += batch.table.num_rows
            bad = {e: "refused without naming the row (unattributed); batch resent next run" for e in batch.emails}
        elif outcome.counted > len(bad):
            r.report_mismatches += 1
            self.log(f"{self.d.name} {outcome.ref}: counters report {outcome.counted} rows not applied, the rows "
                     f"name {len(bad)}; confirming per row")
        ok, rejected = _split(batch, bad)
        g = self._gathered.setdefault(action, _Gathered(time.monotonic()))
        g.ok.append(ok)
        g.rejected.extend((e, action, bad[e]) for e in rejected)
        g.rows += batch.table.num_rows
        g.batches += 1
        lim = self.limits
        if lim.confirm_rows <= 0 or g.rows >= lim.confirm_rows or time.monotonic() - g.since >= lim.confirm_seconds:
            self.record(action)

    def record(self, action: str) -> None:
        """Write the gathered finished batches of ``action`` to the state in one go."""
        g = self._gathered.pop(action, None)
        if g is None:
            return
        r, target = self.report, self.target
        assert target is not None
        ok = g.ok[0] if len(g.ok) == 1 else pa.concat_tables(g.ok)
        if not self.d.capabilities.property_upsert:  # members only (ad audiences): no value to keep
            self.store.confirm_members(target, ok)
        elif action.startswith(UNSET_PREFIX):  # a mapped field's clear alone: nothing else was sent
            self.store.confirm_values(target, ok)
        else:
            member = True if action == UPSERT and self.d.capabilities.list_add else None
            self.store.confirm_table(target, ok, member)
            if self.mapped:
                self.store.confirm_values(target, ok)
        self.store.reject(target.dest, g.rejected, self.run_id)
        _count(r, action, ok, g.batches)
        r.rejected += len(g.rejected)


@dataclass
class _Gathered:
    """Finished batches of one action not yet written to the state."""

    since: float
    ok: list[pa.Table] = field(default_factory=list)
    rejected: list[tuple[str, str, str]] = field(default_factory=list)
    rows: int = 0
    batches: int = 0


def _safe_part(text: str) -> str:
    """A file-name-safe form of a segment id (dry-run folders)."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", text).strip(".") or "_"


def _split(batch: Batch, bad: Mapping[str, str]) -> tuple[pa.Table, list[str]]:
    """The batch's rows the destination accepted (Arrow) and the emails it rejected."""
    if not bad:
        return batch.table, []
    refused = pc.is_in(batch.table.column("email"), value_set=pa.array(list(bad), pa.string()))
    rejected = batch.table.filter(refused).column("email").to_pylist()
    return batch.table.filter(pc.invert(refused)), rejected


def _not_members(ok: pa.Table) -> int:
    return int(pc.sum(pc.cast(pc.invert(ok.column("member")), pa.int64())).as_py() or 0)


def _count(r: SyncReport, action: str, ok: pa.Table, batches: int = 1) -> None:
    r.batches += batches
    if action == UPSERT:
        r.upserted += ok.num_rows
        r.added += _not_members(ok)
        if "fields" in ok.column_names:
            r.fields_updated += ok.num_rows - ok.column("fields").null_count
    elif action.startswith(UNSET_PREFIX):
        r.fields_cleared += ok.num_rows
    else:
        r.cleared += ok.num_rows
