"""Profiles: one row per resolved identity, as of the end of each day."""

import dagster as dg

from segment_pipeline.core.profiles import build_profiles
from segment_pipeline.core.warehouse import connect, sql_string
from segment_pipeline.defs.automation.conditions import DAILY
from segment_pipeline.defs.partitions import daily_partitions, partition_days, single_run
from segment_pipeline.defs.resources import WarehouseResource


class ProfilesConfig(dg.Config):
    """``full_rebuild: true`` builds the first day of the run from every raw partition up to it
    instead of continuing the previous day's state (after a data model change); the later days
    of the run then continue from it (docs/incremental.md)."""

    full_rebuild: bool = False


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
def profiles(context: dg.AssetExecutionContext, warehouse: WarehouseResource, config: ProfilesConfig):
    """Identity-resolved profiles (normalized email; identity links and attributes: latest given
    value wins; custom attributes merged per key) with the computed traits the data model declares
    (core/traits.py), from everything landed up to the end of the day; kept incrementally: the
    previous day's state merged with the day (core/incremental.py), or a full build when that
    state is missing, stale or the full_rebuild config is set."""
    wh = warehouse.get()
    con = connect()
    duplicates_total = 0
    for i, day in enumerate(partition_days(context)):
        n = build_profiles(con, wh, day, full_rebuild=config.full_rebuild and i == 0)
        state = wh.partition_path("profile_state", day)
        mode = con.execute(
            f"SELECT value::VARCHAR FROM parquet_kv_metadata({sql_string(str(state))}) WHERE key::VARCHAR = 'mode'"
        ).fetchall()
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
                "state_build": mode[0][0] if mode else "unknown",  # incremental | full
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
