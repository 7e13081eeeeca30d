"""Deletion requests delivered as landing files (a ``kind: deletion_requests`` source), applied daily.

Each day's files of every ``deletion_requests`` source are read (:func:`read_request_file`) and
passed to :func:`segment_pipeline.core.privacy.forget.forget`, the code ``segment-pipeline forget``
runs: requests and tombstones recorded in the ledger, then every open request removed from the
warehouse, the exports and the identity index. Metadata counts requests and what was rewritten,
never an address. A run with no file still finishes requests a killed run left open.
"""

import dagster as dg

from segment_pipeline import settings
from segment_pipeline.core.ingest import landing_files
from segment_pipeline.core.privacy.forget import forget, read_request_file
from segment_pipeline.core.privacy.ledger import Ledger
from segment_pipeline.core.sources import load_sources
from segment_pipeline.defs.automation.conditions import DAILY
from segment_pipeline.defs.exports.resources import ExportsResource
from segment_pipeline.defs.partitions import daily_partitions, partition_days, single_run
from segment_pipeline.defs.resources import LandingZoneResource, WarehouseResource


@dg.asset(
    name="deletion_requests",
    description="Deletion requests (GDPR Art. 17 / CCPA) from the landing files of deletion_requests sources: "
                "recorded in the ledger (hash only) and removed from every warehouse and export file.",
    group_name="privacy",
    kinds={"duckdb", "parquet"},
    partitions_def=daily_partitions,
    backfill_policy=single_run,
    automation_condition=DAILY,
)
def deletion_requests(context: dg.AssetExecutionContext, warehouse: WarehouseResource,
                      landing: LandingZoneResource, exports: ExportsResource) -> dg.MaterializeResult:
    wh = warehouse.get()
    declared = load_sources(settings.sources_file()).sources
    names = sorted(n for n, s in declared.items() if s.kind == "deletion_requests")
    per_source: dict[str, int] = {}
    ledger = Ledger(wh.root)
    for name in names:
        emails: list[str] = []
        for day in partition_days(context):
            for path in landing_files(landing.root, name, day, declared[name].format):
                emails.extend(read_request_file(path))  # a bad row fails the run, naming file and line
        if emails:
            per_source[name] = len(ledger.request(emails, f"landing:{name}"))
    result = forget(wh.root, exports.storage(), log=context.log.info)
    return dg.MaterializeResult(metadata={**result.summary(), "requests_per_source": dg.MetadataValue.json(per_source),
                                          "sources": dg.MetadataValue.json(names)})
