"""The one partitioning scheme of the pipeline: a partition per calendar day (UTC)."""

import datetime as dt

import dagster as dg

from segment_pipeline import settings

daily_partitions = dg.DailyPartitionsDefinition(start_date=settings.start_date(), timezone="UTC")

#: Every partitioned asset runs a partition range in one run: range backfills from the CLI
#: (``--partition-range``) and the UI then cost one process, not one per day.
single_run = dg.BackfillPolicy.single_run()


def partition_days(context: dg.AssetExecutionContext) -> list[dt.date]:
    """The days this run covers, ascending (one day, or a whole range in a single run)."""
    return sorted(dt.date.fromisoformat(k) for k in context.partition_keys)
