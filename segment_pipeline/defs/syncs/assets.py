"""Sync assets: keep each email platform's contacts carrying the names of their synced segments.

``klaviyo_sync`` / ``dotdigital_sync`` sync the latest complete ``memberships`` day (or
``config.day``) for the segments whose toggle for that integration is on, incrementally against
the destination mirror under ``<warehouse>/sync_state/<integration>/``; without credentials they
dry-run into ``<warehouse>/sync_dry_run/<integration>/<timestamp>/``. Each materialization
records the run's counts as metadata (the asset page plots them: the run history).

Schedules (UTC; cron overridable): ``SEGMENT_PIPELINE_KLAVIYO_SYNC_CRON`` (default every 12 hours,
``0 */12 * * *``) and ``SEGMENT_PIPELINE_DOTDIGITAL_SYNC_CRON`` (default daily, ``0 6 * * *``).
A segment whose toggle is switched on is picked up by the next run (the catalog is read per run).
A scheduled tick is skipped, with the reason, while memberships are being recomputed or when their
latest blocking check failed (``defs/automation/sync_gate.py``).
"""


import datetime as dt
import os

import dagster as dg

from segment_pipeline.core.sync.report import SyncReport
from segment_pipeline.core.sync.runner import sync_dotdigital, sync_klaviyo
from segment_pipeline.core.warehouse import Warehouse
from segment_pipeline.defs.automation.conditions import DAILY_FRESHNESS, TWELVE_HOURLY_FRESHNESS
from segment_pipeline.defs.automation.sync_gate import gated_sync
from segment_pipeline.defs.resources import SegmentCatalogResource, WarehouseResource
from segment_pipeline.defs.syncs.resources import DotdigitalResource, KlaviyoResource

KLAVIYO_CRON_ENV, KLAVIYO_CRON = "SEGMENT_PIPELINE_KLAVIYO_SYNC_CRON", "0 */12 * * *"
DOTDIGITAL_CRON_ENV, DOTDIGITAL_CRON = "SEGMENT_PIPELINE_DOTDIGITAL_SYNC_CRON", "0 6 * * *"


class SyncConfig(dg.Config):
    day: str = ""  # YYYY-MM-DD; empty = the latest complete memberships day


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


def _result(report: SyncReport) -> dg.MaterializeResult:
    meta: dict[str, object] = dict(report.counts())
    meta.update(dry_run=report.dry_run, day=report.day, status=report.status, run_id=report.run_id,
                destination=report.destination)
    if report.payload_dir:
        meta["payload_dir"] = dg.MetadataValue.path(report.payload_dir)
    return dg.MaterializeResult(metadata=meta)


def _run_sync(context: dg.AssetExecutionContext, config: SyncConfig, warehouse: WarehouseResource,
              segment_catalog: SegmentCatalogResource, integration: str, resource, sync) -> dg.MaterializeResult:
    """Sync the chosen day's memberships of the integration's synced segments (dry run without a client)."""
    wh = warehouse.get()
    day = _day(wh, config)
    synced = _synced(segment_catalog.load(), integration)
    client = resource.client()
    context.log.info(f"{integration} sync of {day}: {len(synced)} synced segments" + ("" if client else " (dry run)"))
    try:
        report = sync(wh, day, synced, state_dir=wh.root / "sync_state" / integration,
                      dry_run_root=wh.root / "sync_dry_run", client=client, settings=resource.settings(),
                      log=context.log.info)
    finally:
        if client:
            client.close()
    return _result(report)


@dg.asset(group_name="syncs", kinds={"klaviyo"}, deps=[dg.AssetKey("memberships")],
          freshness_policy=TWELVE_HOURLY_FRESHNESS)
def klaviyo_sync(context: dg.AssetExecutionContext, config: SyncConfig, warehouse: WarehouseResource,
                 segment_catalog: SegmentCatalogResource, klaviyo: KlaviyoResource) -> dg.MaterializeResult:
    """Klaviyo list membership and the nosto_segment profile property, for the synced segments."""
    return _run_sync(context, config, warehouse, segment_catalog, "klaviyo", klaviyo, sync_klaviyo)


@dg.asset(group_name="syncs", kinds={"dotdigital"}, deps=[dg.AssetKey("memberships")],
          freshness_policy=DAILY_FRESHNESS)
def dotdigital_sync(context: dg.AssetExecutionContext, config: SyncConfig, warehouse: WarehouseResource,
                    segment_catalog: SegmentCatalogResource, dotdigital: DotdigitalResource) -> dg.MaterializeResult:
    """dotdigital NOSTOSEGMENT data field and address book, for the synced segments."""
    return _run_sync(context, config, warehouse, segment_catalog, "dotdigital", dotdigital, sync_dotdigital)


klaviyo_sync_schedule = dg.ScheduleDefinition(
    name="klaviyo_sync_schedule", target=dg.AssetSelection.assets(klaviyo_sync),
    cron_schedule=os.environ.get(KLAVIYO_CRON_ENV) or KLAVIYO_CRON, execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.RUNNING, execution_fn=gated_sync("klaviyo"),
)
dotdigital_sync_schedule = dg.ScheduleDefinition(
    name="dotdigital_sync_schedule", target=dg.AssetSelection.assets(dotdigital_sync),
    cron_schedule=os.environ.get(DOTDIGITAL_CRON_ENV) or DOTDIGITAL_CRON, execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.RUNNING, execution_fn=gated_sync("dotdigital"),
)
