"""Jobs: the main daily pipeline, from landing files to segment memberships and the daily feed."""

import dagster as dg

#: What the main job materializes, as a Dagster selection string (also used by the CLI demo).
DAILY_SELECTION = "group:raw or group:profiles or group:segments or key:segment_feed_daily"

#: Landing files -> validated rows -> profiles -> memberships -> daily export, for a day or a range
#: (daily partitioned: the partitions come from the selected assets).
daily_segments_job = dg.define_asset_job(
    name="daily_segments",
    selection=dg.AssetSelection.groups("raw", "profiles", "segments") | dg.AssetSelection.assets("segment_feed_daily"),
    description=(
        "Ingest the day's landing files, rebuild profiles as of that day, compute segment memberships "
        "and write the daily segment export feed."
    ),
)
