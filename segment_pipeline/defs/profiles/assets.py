"""Profiles: one row per resolved identity, as of the end of each day."""

import dagster as dg

from segment_pipeline.core.profiles import build_profiles
from segment_pipeline.core.warehouse import connect
from segment_pipeline.defs.automation.conditions import DAILY
from segment_pipeline.defs.partitions import daily_partitions, partition_days, single_run
from segment_pipeline.defs.resources import WarehouseResource


@dg.asset(
    deps=[dg.AssetKey("raw_profiles"), dg.AssetKey("raw_events")],
    partitions_def=daily_partitions,
    backfill_policy=single_run,
    group_name="profiles",
    kinds={"duckdb", "parquet"},
    automation_condition=DAILY,
    check_specs=[
        dg.AssetCheckSpec("unique_identities", asset="profiles",
                          description="Every identity (normalized email) appears exactly once per day."),
    ],
)
def profiles(context: dg.AssetExecutionContext, warehouse: WarehouseResource):
    """Identity-resolved profiles (normalized email; identity links and attributes: latest given
    value wins; custom attributes merged per key) with the computed traits the data model declares
    (core/traits.py), from everything landed up to the end of the day."""
    wh = warehouse.get()
    con = connect()
    duplicates_total = 0
    for day in partition_days(context):
        n = build_profiles(con, wh, day)
        path = wh.partition_path("profiles", day)
        duplicates = con.execute(
            f"SELECT count(*) - count(DISTINCT email) FROM {wh.scan('profiles', days=[day])}"
        ).fetchall()[0][0]
        duplicates_total += duplicates
        with_records, events_only, with_custom = con.execute(
            f"SELECT count(*) FILTER (WHERE updated_at IS NOT NULL), count(*) FILTER (WHERE updated_at IS NULL), "
            f"count(*) FILTER (WHERE custom_attributes IS NOT NULL) FROM {wh.scan('profiles', days=[day])}"
        ).fetchall()[0]
        context.add_asset_metadata(
            {
                "identities": n,
                "with_profile_records": with_records,
                "events_only": events_only,
                "with_custom_attributes": with_custom,
                "traits": len(wh.model.traits),
                "dagster/row_count": n,
                "path": dg.MetadataValue.path(str(path)),
            },
            partition_key=day.isoformat(),
        )
    yield dg.MaterializeResult()
    yield dg.AssetCheckResult(
        check_name="unique_identities",
        passed=duplicates_total == 0,
        metadata={"duplicate_rows": duplicates_total},
    )
