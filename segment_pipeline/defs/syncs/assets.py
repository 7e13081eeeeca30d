"""Sync assets and schedules: one ``<name>_sync`` asset and ``<name>_sync_schedule`` per registered
destination (:data:`segment_pipeline.core.sync.destinations.DESTINATIONS`), all built here.

Each asset syncs the latest complete ``memberships`` day (or ``config.day``) for the segments whose
toggle for that destination is on, incrementally against the destination mirror under
``<warehouse>/sync_state/<name>/``; without credentials it dry-runs into
``<warehouse>/sync_dry_run/<name>/<timestamp>/``. Each materialization records the run's counts as
metadata (the asset page plots them: the run history), and the run's ``plan`` summary.

Field mappings (which attributes and traits each destination receives) are read per run from
``settings.destinations_file()`` and validated against the model. A run that would clear or remove
more than ``SEGMENT_PIPELINE_SYNC_MAX_REMOVAL_SHARE`` of the destination's contacts fails before
sending anything unless its run config says ``allow_large_removal: true`` (docs/syncs.md); the
failure's metadata holds the ``plan`` and the privacy counts, and its message names what privacy
holds back when that explains the removals (:func:`segment_pipeline.core.sync.plan.privacy_reason`).

Schedules (UTC; cron overridable per destination): Klaviyo ``SEGMENT_PIPELINE_KLAVIYO_SYNC_CRON``
(default every 12 hours, ``0 */12 * * *``), dotdigital ``SEGMENT_PIPELINE_DOTDIGITAL_SYNC_CRON``
(default daily, ``0 6 * * *``), Meta ``SEGMENT_PIPELINE_META_SYNC_CRON`` (default daily, ``0 7 * * *``;
one custom audience per synced segment). A segment whose toggle is switched on is picked up by the next run
(the catalog is read per run). A scheduled tick is skipped, with the reason, while memberships are
being recomputed or when their latest blocking check failed (``defs/automation/sync_gate.py``).
"""

import datetime as dt
import os

import dagster as dg

from segment_pipeline import settings
from segment_pipeline.core.sync.destinations import DESTINATIONS
from segment_pipeline.core.sync.engine import Destination, run_sync
from segment_pipeline.core.sync.plan import RemovalGuardError, privacy_reason
from segment_pipeline.core.sync.report import SyncReport
from segment_pipeline.core.sync.runner import destination_mappings
from segment_pipeline.core.warehouse import Warehouse
from segment_pipeline.defs.automation.sync_gate import gated_sync
from segment_pipeline.defs.privacy.assets import held_back, privacy_metadata

MEMBERSHIPS = dg.AssetKey("memberships")


class SyncConfig(dg.Config):
    day: str = ""  # YYYY-MM-DD; empty = the latest complete memberships day
    #: confirm a run that clears or removes more than SEGMENT_PIPELINE_SYNC_MAX_REMOVAL_SHARE of the
    #: contacts the destination holds (the removal guard, docs/syncs.md)
    allow_large_removal: bool = False


def _day(wh: Warehouse, config: SyncConfig) -> dt.date:
    if config.day:
        day = dt.date.fromisoformat(config.day)
        if not wh.has_partition("memberships", day):
            raise dg.Failure(f"no complete memberships partition for {day}")
        return day
    days = wh.partition_dates("memberships")
    if not days:
        raise dg.Failure("no complete memberships partition yet: materialize memberships first")
    return days[-1]


def _synced(catalog, integration: str) -> dict[str, str]:
    return {s.id: s.name for s in catalog.segments if s.sync.get(integration)}


def _result(report: SyncReport, privacy: dict[str, object] | None = None) -> dg.MaterializeResult:
    meta: dict[str, object] = dict(report.counts())
    meta.update(privacy_metadata(privacy or {}))
    meta.update(dry_run=report.dry_run, day=report.day, status=report.status, run_id=report.run_id,
                destination=report.destination)
    if report.notes:
        meta["notes"] = "; ".join(report.notes)
    if report.plan:
        meta["plan"] = dg.MetadataValue.json(report.plan)
    if report.payload_dir:
        meta["payload_dir"] = dg.MetadataValue.path(report.payload_dir)
    return dg.MaterializeResult(metadata=meta)


def _guard_failure(exc: RemovalGuardError, privacy: dict[str, object]) -> dg.Failure:
    """The removal guard's stop: its message, plus what privacy holds back when that explains the
    removals; metadata ``plan`` (the summary the stop is about) and the privacy counts."""
    counts = exc.counts
    leaving = counts.leaving if counts is not None else int(exc.plan.get("leaving", 0))
    forgotten = counts.forgotten if counts is not None else int(exc.plan.get("forgotten", 0))
    meta: dict[str, object] = {"plan": dg.MetadataValue.json(exc.plan), **privacy_metadata(privacy)}
    if forgotten:
        meta["forgotten"] = forgotten
    return dg.Failure(str(exc) + privacy_reason(leaving, privacy, forgotten), metadata=meta, allow_retries=False)


def _freshness(hours: int) -> dg.FreshnessPolicy:
    return dg.FreshnessPolicy.time_window(fail_window=dt.timedelta(hours=hours),
                                          warn_window=dt.timedelta(hours=hours - 1))


def sync_asset(d: type[Destination]) -> dg.AssetsDefinition:
    """The ``<name>_sync`` asset of destination ``d``."""

    @dg.asset(name=f"{d.name}_sync", group_name="syncs", kinds={d.name}, deps=[MEMBERSHIPS],
              freshness_policy=_freshness(d.freshness_hours), description=d.description,
              required_resource_keys={"warehouse", "segment_catalog", d.name})
    def _sync(context: dg.AssetExecutionContext, config: SyncConfig) -> dg.MaterializeResult:
        wh = context.resources.warehouse.get()
        day = _day(wh, config)
        catalog = context.resources.segment_catalog.load()
        synced = _synced(catalog, d.name)
        resource = getattr(context.resources, d.name)
        client = resource.client()
        context.log.info(f"{d.name} sync of {day}: {len(synced)} synced segments" + ("" if client else " (dry run)"))
        if not synced:
            context.log.warning(f"no segment of {catalog.source} has sync: {{{d.name}: true}}: no segment names are "
                                f"sent to {d.title} (what earlier runs sent is cleared)")
        privacy = held_back(wh, day, synced, d.name)
        try:
            dest = d(client, resource.settings())
            dest.mappings = destination_mappings(dest, wh.model)
            if dest.mappings:
                context.log.info(f"{d.name}: {len(dest.mappings)} mapped fields from {settings.destinations_file()}")
            try:
                report = run_sync(dest, wh, day, synced, state_dir=wh.root / "sync_state" / d.name,
                                  dry_run_root=wh.root / "sync_dry_run", log=context.log.info,
                                  max_removal_share=settings.sync_max_removal_share(),
                                  allow_large_removal=config.allow_large_removal)
            except RemovalGuardError as exc:
                raise _guard_failure(exc, privacy) from None
        finally:
            if client:
                client.close()
        return _result(report, privacy)

    return _sync


def sync_schedule(d: type[Destination], asset: dg.AssetsDefinition) -> dg.ScheduleDefinition:
    return dg.ScheduleDefinition(
        name=f"{d.name}_sync_schedule", target=dg.AssetSelection.assets(asset),
        cron_schedule=os.environ.get(d.cron_env) or d.cron, execution_timezone="UTC",
        default_status=dg.DefaultScheduleStatus.RUNNING, execution_fn=gated_sync(d.name),
    )


SYNC_ASSETS: dict[str, dg.AssetsDefinition] = {name: sync_asset(d) for name, d in DESTINATIONS.items()}
SYNC_SCHEDULES: dict[str, dg.ScheduleDefinition] = {
    name: sync_schedule(d, SYNC_ASSETS[name]) for name, d in DESTINATIONS.items()}

# stable names for callers and tests
klaviyo_sync, dotdigital_sync = SYNC_ASSETS["klaviyo"], SYNC_ASSETS["dotdigital"]
klaviyo_sync_schedule, dotdigital_sync_schedule = SYNC_SCHEDULES["klaviyo"], SYNC_SCHEDULES["dotdigital"]


@dg.definitions
def sync_definitions() -> dg.Definitions:
    return dg.Definitions(assets=list(SYNC_ASSETS.values()), schedules=list(SYNC_SCHEDULES.values()))
