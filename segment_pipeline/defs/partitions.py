"""The one partitioning scheme of the pipeline: a partition per calendar day (UTC).

Partitions run from ``SEGMENT_PIPELINE_START_DATE`` through yesterday (UTC): a live deployment gets
a new partition every day. ``SEGMENT_PIPELINE_END_DATE`` (inclusive) closes the range for a data set
that does not grow, such as the shipped two-week sample the demo runs: its assets then show all
partitions materialized instead of every day since the sample as "missing".
"""

import datetime as dt

import dagster as dg

from segment_pipeline import settings


def build_daily_partitions() -> dg.DailyPartitionsDefinition:
    """The daily partitions from the settings (start date, optional end date); errors name the variable."""
    start, end = settings.start_date(), settings.end_date()
    if end is None:
        return dg.DailyPartitionsDefinition(start_date=start, timezone="UTC")
    try:
        last = dt.date.fromisoformat(end)
    except ValueError:
        raise ValueError(f"SEGMENT_PIPELINE_END_DATE={end!r} is not a date (YYYY-MM-DD)") from None
    if last.isoformat() < start:
        raise ValueError(f"SEGMENT_PIPELINE_END_DATE={end} is before SEGMENT_PIPELINE_START_DATE={start}")
    # Dagster's end_date is exclusive: the day after the last partition
    return dg.DailyPartitionsDefinition(start_date=start, end_date=(last + dt.timedelta(days=1)).isoformat(),
                                        timezone="UTC")


daily_partitions = build_daily_partitions()

#: Every partitioned asset runs a partition range in one run: range backfills from the CLI
#: (``--partition-range``) and the UI then cost one process, not one per day.
single_run = dg.BackfillPolicy.single_run()


def partition_days(context: dg.AssetExecutionContext) -> list[dt.date]:
    """The days this run covers, ascending (one day, or a whole range in a single run)."""
    return sorted(dt.date.fromisoformat(k) for k in context.partition_keys)


def is_partition_day(day: str, now: dt.datetime, partitions: dg.DailyPartitionsDefinition | None = None) -> bool:
    """Is ``day`` (YYYY-MM-DD) a daily partition at ``now``: from the start date through yesterday
    (UTC), and not after ``SEGMENT_PIPELINE_END_DATE`` when that is set."""
    partitions = partitions or daily_partitions
    last = (now.astimezone(dt.UTC).date() - dt.timedelta(days=1)).isoformat()
    if partitions.end is not None:
        last = min(last, (partitions.end.date() - dt.timedelta(days=1)).isoformat())
    return partitions.start.date().isoformat() <= day <= last
