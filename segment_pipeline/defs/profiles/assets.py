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
    """Identity-resolved profiles (normalized email, latest attributes win) with behavioural
    aggregates (orders, revenue, recency, brand/category affinity, first-touch UTM, random_bucket)
    computed from everything landed up to the end of the day."""
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
        buyers, revenue = con.execute(
            f"SELECT count(*) FILTER (WHERE order_count > 0), coalesce(sum(total_revenue), 0) "
            f"FROM {wh.scan('profiles', days=[day])}"
        ).fetchall()[0]
        context.add_asset_metadata(
            {
                "identities": n,
                "buyers": buyers,
                "total_revenue": float(revenue),
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
