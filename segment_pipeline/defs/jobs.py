"""Jobs: the main daily pipeline, from landing files to segment memberships."""

import dagster as dg

from segment_pipeline.defs.partitions import daily_partitions

#: Landing files -> validated rows -> profiles -> memberships, for one day or a range of days.
daily_segments_job = dg.define_asset_job(
    name="daily_segments",
    selection=dg.AssetSelection.groups("raw", "profiles", "segments"),
    partitions_def=daily_partitions,
    description="Ingest the day's landing files, rebuild profiles as of that day and compute segment memberships.",
)
