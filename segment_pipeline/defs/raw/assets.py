"""Raw ingestion: each day's landing files of every declared source, mapped to the data model and
validated into the warehouse; bad rows quarantined.

``raw_profiles`` ingests every ``profiles`` and ``stream`` source, ``raw_events`` every ``events``
and ``stream`` source (core/sources.py). ``raw_events`` of a day depends on ``raw_profiles`` of the
same day: the identity links that day's profile records carry resolve its events (core/links.py).
Both depend on ``deletion_requests`` of the same day (defs/privacy/deletion.py), so the daily run
records that day's deletion requests and scrubs them before it ingests the day.
When a day's profiles link ids that earlier days quarantined as ``unresolved identity``, the
``raw_profiles`` metadata ``resolves_earlier_days`` names those days (``{day: rows}``), a log line
gives the backfill command, and the ``late_links_sensor`` re-runs them.
"""

import dagster as dg

from segment_pipeline import settings
from segment_pipeline.core.ingest import KINDS, day_sources, ingest_day
from segment_pipeline.core.landing_watch import (
    LATE_LINKS_METADATA_KEY,
    VERSIONS_METADATA_KEY,
    expired_marker_path,
    kind_file_versions,
    late_links_command,
    read_expired,
    versions_metadata,
)
from segment_pipeline.core.links import resolves_earlier_days
from segment_pipeline.core.sources import load_sources
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

    # the same day's deletion requests first: their tombstones are recorded and the forgotten
    # identities scrubbed before the day is ingested (and never while it is being published)
    deps = [dg.AssetKey("deletion_requests"), *([dg.AssetKey("raw_profiles")] if kind == "events" else [])]

    @dg.multi_asset(
        name=f"ingest_{kind}",
        specs=[
            dg.AssetSpec(raw_key, description=f"Validated {kind[:-1]} rows of every {kind} source, mapped to the "
                         "data model, as they landed each day (Parquet).", deps=deps,
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
        # a bad sources file fails here, naming the file and the entry
        declared = load_sources(settings.sources_file())
        sources = day_sources(kind, declared if declared.sources else None)
        worst = (0.0, None)
        days = partition_days(context)
        for day in days:
            key = day.isoformat()
            # taken before reading: tells the landing sensor this version of the day is processed
            versions = versions_metadata(v for name in sources for v in kind_file_versions(landing.root, name, key))
            if not versions and read_expired(landing.root, [key]):
                # landing retention removed this day's files: its raw_* partition is all that is left
                # of them, so it is kept as it is (re-reading the empty folder would empty it)
                context.log.warning(
                    f"{kind} {key}: the landing files of this day were removed by landing retention "
                    f"({expired_marker_path(landing.root, key).name}); raw_{kind} and quarantine_{kind} "
                    "are kept as they are, not re-ingested")
                context.add_asset_metadata(
                    {"landing_removed_by_retention": True, "reingested": False,
                     VERSIONS_METADATA_KEY: dg.MetadataValue.json({}),
                     "path": dg.MetadataValue.path(str(wh.partition_path(f"raw_{kind}", day)))},
                    asset_key=raw_key, partition_key=key)
                context.add_asset_metadata({"landing_removed_by_retention": True, "reingested": False},
                                           asset_key=quarantine_key, partition_key=key)
                continue
            # no options: ingest_day reads the settings' sources file itself, so every declared
            # folder counts as known (not only this kind's) and errors name that file
            report = ingest_day(con, wh, landing.root, kind, day)
            context.log.info(
                f"{kind} {key}: {report.rows_valid} valid, {report.rows_quarantined} quarantined "
                f"from {len(report.files)} file(s) of source(s) {', '.join(sources) or '(none)'}"
            )
            if report.unsourced_folders:
                context.log.warning(
                    f"{key}: landing folder(s) {report.unsourced_folders} have files but no source in "
                    f"{settings.sources_file()}: not read (declare a source to ingest them)")
            earlier: dict[str, int] = {}
            if kind == "profiles" and wh.model.links:
                # days of this run are re-run by it: only the days before it are reported
                earlier = resolves_earlier_days(con, wh, day, before=days[0])
                if earlier:
                    context.log.warning(
                        f"{key}: links for ids quarantined as unresolved identity on earlier day(s) "
                        f"{earlier} (rows per day): re-run them and the later days to attribute them "
                        f"(the late_links_sensor does): {late_links_command(earlier, wh.partition_dates('profiles'), key)}")
            if report.resolved_by_later_links:
                context.log.info(f"{kind} {key}: {report.resolved_by_later_links} row(s) attributed through "
                                 "links that landed on later days")
            for name, keys in report.unmapped.items():
                context.log.info(f"{kind} {key}: source {name}: unmapped columns kept as JSON: {keys}")
            context.add_asset_metadata(
                {
                    "rows_read": report.rows_read,
                    "rows_valid": report.rows_valid,
                    "rows_quarantined": report.rows_quarantined,
                    "quarantine_ratio": report.quarantine_ratio,
                    "files": dg.MetadataValue.json(report.files),
                    VERSIONS_METADATA_KEY: dg.MetadataValue.json(versions),
                    "sources": dg.MetadataValue.json(report.sources),
                    "source_options": dg.MetadataValue.json(
                        {name: src.model_dump(mode="json", exclude={"mapping", "preset_mapping"})
                         for name, src in sources.items()}),
                    "unmapped_columns": dg.MetadataValue.json(report.unmapped),
                    "ignored_columns": dg.MetadataValue.json(report.ignored),
                    "folders_without_source": dg.MetadataValue.json(report.unsourced_folders),
                    "unresolved_identity": report.unresolved,
                    "resolved_by_later_links": report.resolved_by_later_links,
                    **({LATE_LINKS_METADATA_KEY: dg.MetadataValue.json(earlier)} if kind == "profiles" else {}),
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
