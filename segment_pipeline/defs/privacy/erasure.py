"""``privacy_erasure``: one propagation pass of the deletion ledger to every configured destination
(:func:`segment_pipeline.core.privacy.erasure.propagate`), and its daily schedule.

The destinations are the sync resources (one per registered destination, credentials from the
environment: ``defs/syncs/resources.py``); one without credentials is skipped and, if its mirror
shows real syncs, named in the metadata (``unconfigured_with_mirror``). The pass records every
step in the ledger, so a failed or killed run is finished by the next one. Metadata: per
destination ``<name>_asked``, ``_confirmed``, ``_done`` (awaiting confirmation), ``_failed``,
``_mirror_rows_removed``; ``open_requests`` and ``settled``. Never an address.

Schedule ``privacy_erasure_schedule`` (UTC): ``SEGMENT_PIPELINE_ERASURE_CRON``, default daily at
05:00 (``0 5 * * *``), before the daily syncs (dotdigital 06:00, Braze 06:30, Meta 07:00); Klaviyo
syncs every 12 hours (00:00, 12:00), so some of its runs fall between a request and its erasure. The
order is a convenience, not what keeps the person out: from the request on, every sync plan leaves
tombstoned addresses out (``core/sync/diff.py``, ``write_plan``), whichever runs first. The
asset fails (after recording everything) when a destination failed, so the failure shows in the UI;
the next run retries what was not confirmed.
"""

import os

import dagster as dg

from segment_pipeline.core.privacy.erasure import propagate
from segment_pipeline.core.sync.destinations import DESTINATIONS
from segment_pipeline.core.sync.engine import Destination

CRON_ENV, CRON = "SEGMENT_PIPELINE_ERASURE_CRON", "0 5 * * *"


@dg.asset(name="privacy_erasure", group_name="privacy", kinds={"privacy"},
          deps=[dg.AssetKey("deletion_requests")],  # lineage: the requests it propagates (and forget's CLI)
          required_resource_keys={"warehouse", *DESTINATIONS},
          description="Deletion requests of the ledger propagated to every configured destination through the "
                      "vendor's own deletion endpoint, retried until each confirms; the sync mirrors lose the "
                      "confirmed addresses.")
def privacy_erasure(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
    wh = context.resources.warehouse.get()
    destinations: dict[str, Destination] = {}
    try:
        for name, cls in DESTINATIONS.items():
            resource = getattr(context.resources, name)
            client = resource.client()
            if client is not None:
                destinations[name] = cls(client, resource.settings())
        report = propagate(wh.root, destinations, log=context.log.info)
    finally:
        for d in destinations.values():
            if d.client is not None:
                d.client.close()
    meta = report.metadata()
    if not report.ok:
        failed = ", ".join(f"{n}: {d.error or f'{d.failed} failed'}" for n, d in sorted(report.destinations.items())
                           if d.failed or d.error)
        raise dg.Failure(f"deletions not confirmed everywhere ({failed}); retried on the next run",
                         metadata=meta)
    return dg.MaterializeResult(metadata=meta)


privacy_erasure_schedule = dg.ScheduleDefinition(
    name="privacy_erasure_schedule", target=dg.AssetSelection.assets(privacy_erasure),
    cron_schedule=os.environ.get(CRON_ENV) or CRON, execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.RUNNING,
)


@dg.definitions
def erasure_definitions() -> dg.Definitions:
    return dg.Definitions(assets=[privacy_erasure], schedules=[privacy_erasure_schedule])
