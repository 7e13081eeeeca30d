"""Raw ingestion: each day's landing files, validated into the warehouse; bad rows quarantined."""

import dagster as dg

from segment_pipeline import settings
from segment_pipeline.core.ingest import KINDS, ingest_day
from segment_pipeline.core.landing_watch import VERSIONS_METADATA_KEY, kind_file_versions, versions_metadata
from segment_pipeline.core.sources import source_options
from segment_pipeline.core.warehouse import connect
from segment_pipeline.defs.automation.conditions import DAILY
from segment_pipeline.defs.partitions import daily_partitions, partition_days, single_run
from segment_pipeline.defs.resources import LandingZoneResource, WarehouseResource


class IngestConfig(dg.Config):
    max_quarantine_ratio: float = 0.05
    """The quarantine-ratio check fails when more than this share of a day's rows is rejected."""


def _ingest_asset(kind: str) -> dg.AssetsDefinition:
    raw_key = dg.AssetKey(f"raw_{kind}")
    quarantine_key = dg.AssetKey(f"quarantine_{kind}")

    @dg.multi_asset(
        name=f"ingest_{kind}",
        specs=[
            dg.AssetSpec(raw_key, description=f"Validated {kind[:-1]} rows as they landed each day (Parquet).",
                         kinds={"duckdb", "parquet"}, group_name="raw", automation_condition=DAILY),
            dg.AssetSpec(quarantine_key, description=f"Rejected {kind[:-1]} rows with reason, source file and line.",
                         kinds={"duckdb", "parquet"}, group_name="raw", automation_condition=DAILY),
        ],
        check_specs=[
            dg.AssetCheckSpec("quarantine_ratio", asset=raw_key,
                              description="Share of rejected rows per day stays under the configured ratio."),
        ],
        partitions_def=daily_partitions,
        backfill_policy=single_run,
    )
    def ingest(context: dg.AssetExecutionContext, config: IngestConfig, warehouse: WarehouseResource,
               landing: LandingZoneResource):
        wh = warehouse.get()
        swept = wh.sweep()  # leftovers of killed writes whose writer is gone
        if swept:
            context.log.info(f"removed {len(swept)} leftover temporary file(s) of killed writes")
        con = connect(preserve_order=True)
        # the landing folder name is the source name; a bad sources file fails here, naming it
        options = source_options(settings.sources_file(), kind)
        worst = (0.0, None)
        for day in partition_days(context):
            key = day.isoformat()
            # taken before reading: tells the landing sensor this version of the day is processed
            versions = versions_metadata(kind_file_versions(landing.root, kind, key))
            report = ingest_day(con, wh, landing.root, kind, day, options)
            context.log.info(
                f"{kind} {key}: {report.rows_valid} valid, {report.rows_quarantined} quarantined "
                f"from {len(report.files)} file(s)"
            )
            context.add_asset_metadata(
                {
                    "rows_read": report.rows_read,
                    "rows_valid": report.rows_valid,
                    "rows_quarantined": report.rows_quarantined,
                    "quarantine_ratio": report.quarantine_ratio,
                    "files": dg.MetadataValue.json(report.files),
                    VERSIONS_METADATA_KEY: dg.MetadataValue.json(versions),
                    "source_options": dg.MetadataValue.json(options.model_dump()),
                    "path": dg.MetadataValue.path(str(wh.partition_path(f"raw_{kind}", day))),
                },
                asset_key=raw_key,
                partition_key=key,
            )
            context.add_asset_metadata(
                {
                    "rows_quarantined": report.rows_quarantined,
                    "reasons": dg.MetadataValue.json(report.reasons),
                    "path": dg.MetadataValue.path(str(wh.partition_path(f"quarantine_{kind}", day))),
                },
                asset_key=quarantine_key,
                partition_key=key,
            )
            if report.quarantine_ratio >= worst[0]:
                worst = (report.quarantine_ratio, key)
        yield dg.MaterializeResult(asset_key=raw_key)
        yield dg.MaterializeResult(asset_key=quarantine_key)
        ratio, day_key = worst
        yield dg.AssetCheckResult(
            asset_key=raw_key,
            check_name="quarantine_ratio",
            passed=ratio <= config.max_quarantine_ratio,
            severity=dg.AssetCheckSeverity.WARN,
            metadata={"worst_ratio": ratio, "worst_day": day_key or "", "threshold": config.max_quarantine_ratio},
        )

    return ingest


ingest_profiles = _ingest_asset("profiles")
ingest_events = _ingest_asset("events")
assert set(KINDS) == {"profiles", "events"}
