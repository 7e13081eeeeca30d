"""Sensors: landing files -> daily pipeline runs, late identity links -> re-runs of earlier days,
daily automation, failure alerts."""

import datetime as dt
import os
import time

import dagster as dg

from segment_pipeline import settings
from segment_pipeline.core import alerts
from segment_pipeline.core.ingest import KINDS, unsourced_folders
from segment_pipeline.core.landing_watch import (
    LATE_LINKS_METADATA_KEY,
    VERSIONS_METADATA_KEY,
    LandingCursor,
    LateLinks,
    detect_changes,
    late_link_days,
    late_links_command,
    late_links_run_key,
    processed_digest,
    read_expired,
    rerun_range,
    run_key,
    scan_landing,
    source_folders,
)
from segment_pipeline.defs.jobs import DAILY_SELECTION, daily_segments_job
from segment_pipeline.defs.partitions import is_partition_day
from segment_pipeline.defs.resources import LandingZoneResource

PIPELINE_TAG, PIPELINE_DAILY = "segment_pipeline/pipeline", "daily"
TRIGGER_TAG = "segment_pipeline/trigger"
LANDING_DAYS_TAG = "segment_pipeline/landing_days"
LATE_LINK_DAYS_TAG = "segment_pipeline/late_link_days"
RANGE_START, RANGE_END = "dagster/asset_partition_range_start", "dagster/asset_partition_range_end"

END_DATE_ENV = "SEGMENT_PIPELINE_END_DATE"
SETTLE_ENV, DEFAULT_SETTLE_SECONDS = "SEGMENT_PIPELINE_LANDING_SETTLE_SECONDS", 60.0
INTERVAL_ENV, DEFAULT_INTERVAL_SECONDS = "SEGMENT_PIPELINE_LANDING_SENSOR_INTERVAL", 30


def _settle_seconds() -> float:
    return float(os.environ.get(SETTLE_ENV) or DEFAULT_SETTLE_SECONDS)


def _partition_days(now: float):
    """Is a day a partition at ``now``? (``partitions.is_partition_day``: start date through
    yesterday, UTC, or through ``SEGMENT_PIPELINE_END_DATE``.)"""
    moment = dt.datetime.fromtimestamp(now, dt.UTC)
    return lambda day: is_partition_day(day, moment)


def _processed_versions(instance: dg.DagsterInstance, days: list[str]) -> dict[str, str | None]:
    """day -> the day version (landing_watch digest) that the latest ingestion of both kinds read,
    from the ``raw_*`` materializations of any run (this sensor, the demo, a CLI or UI backfill)."""
    recorded: dict[str, dict[str, dict | None]] = {day: {} for day in days}
    for kind in KINDS:
        pending, cursor = set(days), None
        while pending:
            result = instance.fetch_materializations(
                dg.AssetRecordsFilter(asset_key=dg.AssetKey(f"raw_{kind}"), asset_partitions=sorted(pending)),
                limit=max(100, 2 * len(pending)), cursor=cursor, ascending=False,
            )
            for record in result.records:  # newest first: the first one per partition is the latest
                mat = record.asset_materialization
                if mat is None or mat.partition not in pending:
                    continue
                pending.discard(mat.partition)
                value = mat.metadata.get(VERSIONS_METADATA_KEY)
                recorded[mat.partition][kind] = value.value if isinstance(value, dg.JsonMetadataValue) else None
            if not result.has_more:
                break
            cursor = result.cursor
    return {day: processed_digest(kinds.get(k) for k in KINDS) for day, kinds in recorded.items()}


def _short_list(days, limit: int = 12) -> str:
    days = sorted(days)
    return ",".join(days) if len(days) <= limit else ",".join(days[:limit]) + f",... ({len(days)} days)"


@dg.sensor(
    name="landing_zone_sensor",
    job=daily_segments_job,
    minimum_interval_seconds=int(os.environ.get(INTERVAL_ENV) or DEFAULT_INTERVAL_SECONDS),
    default_status=dg.DefaultSensorStatus.RUNNING,
    description=(
        "Runs the daily pipeline for days whose landing files (in every declared source's folder) are "
        "new, changed or removed, and for "
        "every later day already computed (they depend on it), as one single-run range. Day folders "
        "that landing retention removed are not re-run (their raw_* partitions are kept). Days whose "
        "files an earlier run already ingested (the demo, a backfill) are not run again. A file must "
        f"be unmodified for {SETTLE_ENV} seconds (default {DEFAULT_SETTLE_SECONDS:.0f}); names ending "
        ".tmp/.part/.partial/.crdownload and hidden files are ignored."
    ),
)
def landing_zone_sensor(context: dg.SensorEvaluationContext, landing: LandingZoneResource):
    now = time.time()
    cursor = LandingCursor.parse(context.cursor)
    folders = source_folders()  # every declared source's folder (a bad sources file fails the tick, naming it)
    unsourced = unsourced_folders(landing.root, folders)
    if unsourced:
        context.log.warning(f"landing folder(s) without a source, not ingested: {unsourced} "
                            f"(declare them in {settings.sources_file()})")
    changes = detect_changes(scan_landing(landing.root, now, _settle_seconds(), folders), cursor, _partition_days(now),
                             read_expired(landing.root))  # days retention removed are not re-run
    for day, files in changes.waiting.items():
        context.log.info(f"{day}: waiting for {len(files)} file(s) to settle: {', '.join(files[:5])}")
    if changes.not_yet_partitions:
        closed = f" (partitions end at {END_DATE_ENV}={settings.end_date()})" if settings.end_date() else ""
        context.log.info(f"files for days that are not partitions yet{closed}: {_short_list(changes.not_yet_partitions)}")
    waiting = f"; {len(changes.waiting)} day(s) waiting for files to settle" if changes.waiting else ""
    if unsourced:
        waiting += f"; folder(s) without a source, not ingested: {', '.join(unsourced)}"
    if not changes.changed:
        return dg.SkipReason(f"no new or changed landing files{waiting}")

    to_run, done = changes.split(_processed_versions(context.instance, sorted(changes.changed)))
    new_cursor = changes.advance(cursor).serialize()
    if done:
        context.log.info(f"already ingested by an earlier run, not run again: {_short_list(done)}")
    if not to_run:
        return dg.SensorResult(
            skip_reason=dg.SkipReason(
                f"{len(done)} day(s) with new files were already processed by earlier runs "
                f"({_short_list(done)}){waiting}"),
            cursor=new_cursor,
        )

    computed = {k for k in context.instance.get_materialized_partitions(dg.AssetKey("memberships"))}
    start, end = rerun_range(to_run, computed | set(cursor.days) | set(done))
    tags = {PIPELINE_TAG: PIPELINE_DAILY, TRIGGER_TAG: "landing_zone_sensor",
            LANDING_DAYS_TAG: _short_list(to_run)}
    if start != end:
        tags.update({RANGE_START: start, RANGE_END: end})
    context.log.info(f"landing files changed for {_short_list(to_run)}: running {start}..{end}")
    request = dg.RunRequest(
        run_key=run_key(start, end, to_run),
        partition_key=start if start == end else None,
        tags=tags,
    )
    return dg.SensorResult(run_requests=[request], cursor=new_cursor)


def _latest_storage_ids(instance: dg.DagsterInstance, key: str, days: list[str]) -> dict[str, int]:
    """day -> storage id of the latest materialization of asset ``key`` for that partition."""
    latest: dict[str, int] = {}
    pending, cursor = set(days), None
    while pending:
        result = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=dg.AssetKey(key), asset_partitions=sorted(pending)),
            limit=max(100, 2 * len(pending)), cursor=cursor, ascending=False,
        )
        for record in result.records:  # newest first
            mat = record.asset_materialization
            if mat is not None and mat.partition in pending:
                pending.discard(mat.partition)
                latest[mat.partition] = record.storage_id
        if not result.has_more:
            break
        cursor = result.cursor
    return latest


@dg.sensor(
    name="late_links_sensor",
    job=daily_segments_job,
    minimum_interval_seconds=int(os.environ.get(INTERVAL_ENV) or DEFAULT_INTERVAL_SECONDS),
    default_status=dg.DefaultSensorStatus.RUNNING,
    description=(
        "Re-runs earlier days when a day's profile or identify records link ids those days quarantined "
        f"as unresolved identity (raw_profiles metadata {LATE_LINKS_METADATA_KEY}), with every later day "
        "already computed, as one single-run range. A day ingested again since those links landed is "
        "not run again."
    ),
)
def late_links_sensor(context: dg.SensorEvaluationContext):
    after = int(context.cursor) if context.cursor else None
    found: list[LateLinks] = []
    last, cursor = after, None
    while True:
        result = context.instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=dg.AssetKey("raw_profiles"), after_storage_id=after),
            limit=1000, cursor=cursor, ascending=True,
        )
        for record in result.records:
            last = record.storage_id
            mat = record.asset_materialization
            value = mat.metadata.get(LATE_LINKS_METADATA_KEY) if mat is not None else None
            if isinstance(value, dg.JsonMetadataValue) and value.value and mat.partition:
                found.append(LateLinks(record.storage_id, mat.partition, dict(value.value)))
        if not result.has_more:
            break
        cursor = result.cursor
    new_cursor = None if last is None else str(last)
    named = sorted({day for item in found for day in item.earlier})
    pending = late_link_days(found, _latest_storage_ids(context.instance, "raw_events", named))
    if not pending:
        already = f" ({len(named)} named day(s) ingested again since)" if named else ""
        return dg.SensorResult(skip_reason=dg.SkipReason(f"no earlier days for late identity links{already}"),
                               cursor=new_cursor)
    computed = {k for k in context.instance.get_materialized_partitions(dg.AssetKey("memberships"))}
    link_days = [item.day for item in found]
    start, end = rerun_range(pending, computed | set(link_days))
    tags = {PIPELINE_TAG: PIPELINE_DAILY, TRIGGER_TAG: "late_links_sensor", LATE_LINK_DAYS_TAG: _short_list(pending)}
    if start != end:
        tags.update({RANGE_START: start, RANGE_END: end})
    context.log.info(f"links landed on {_short_list(set(link_days))} for ids unresolved on {pending} (rows per day): "
                     f"running {start}..{end} (by hand: {late_links_command(pending, computed, max(link_days))})")
    request = dg.RunRequest(run_key=late_links_run_key(start, end, found),
                            partition_key=start if start == end else None, tags=tags)
    return dg.SensorResult(run_requests=[request], cursor=new_cursor)


#: Evaluates the daily pipeline's AutomationConditions (``conditions.DAILY`` / ``FEED``). Its runs
#: carry the daily pipeline tag, so they queue behind landing-sensor runs instead of racing them;
#: a condition true for several days at once becomes one backfill (one run per range).
daily_pipeline_automation = dg.AutomationConditionSensorDefinition(
    "daily_pipeline_automation",
    target=dg.AssetSelection.from_string(DAILY_SELECTION),
    run_tags={PIPELINE_TAG: PIPELINE_DAILY, TRIGGER_TAG: "daily_pipeline_automation"},
    default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=30,
    description="Daily pipeline at SEGMENT_PIPELINE_DAILY_CRON (yesterday's partition); feed follows its inputs.",
)


# -- failure alerts -------------------------------------------------------------------------------------


def _innermost_message(error) -> str:
    while error is not None and getattr(error, "cause", None) is not None:
        error = error.cause
    return getattr(error, "message", "") or ""


def _failed_assets(context: dg.RunFailureSensorContext, failed_steps: set[str]) -> list[str]:
    planned = context.instance.get_records_for_run(
        run_id=context.dagster_run.run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION_PLANNED, limit=10_000
    ).records
    by_step: dict[str | None, set[str]] = {}
    for record in planned:
        event = record.event_log_entry.dagster_event
        if event is not None and event.asset_key is not None:
            by_step.setdefault(event.step_key, set()).add(event.asset_key.to_user_string())
    hit = set().union(*(by_step.get(s, set()) for s in failed_steps)) if failed_steps else set()
    if not hit:
        hit = {k.to_user_string() for k in (context.dagster_run.asset_selection or ())}
    return sorted(hit)


def _partitions(tags) -> str | None:
    if tags.get("dagster/partition"):
        return tags["dagster/partition"]
    if tags.get(RANGE_START):
        return f"{tags[RANGE_START]}..{tags.get(RANGE_END, tags[RANGE_START])}"
    return None


@dg.run_failure_sensor(
    name="run_failure_alert",
    default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=30,
    description=f"Posts run, assets, error and a link to {alerts.WEBHOOK_ENV} when a run fails (nothing if unset).",
)
def run_failure_alert(context: dg.RunFailureSensorContext):
    url = alerts.webhook_url()
    run = context.dagster_run
    if url is None:
        return dg.SkipReason(f"{alerts.WEBHOOK_ENV} is not set: no alert for failed run {run.run_id}")
    step_failures = context.get_step_failure_events()
    errors = [_innermost_message(e.event_specific_data.error) for e in step_failures
              if e.event_specific_data is not None and getattr(e.event_specific_data, "error", None)]
    alert = alerts.FailureAlert(
        run_id=run.run_id,
        job_name=run.job_name,
        error=next((e for e in errors if e), None) or context.failure_event.message or "run failed",
        assets=_failed_assets(context, {e.step_key for e in step_failures if e.step_key}),
        partitions=_partitions(run.tags),
        base_url=alerts.ui_url(),
    )
    try:
        status = alerts.post_alert(url, alert)
    except alerts.AlertError as exc:
        context.log.warning(f"failure alert for run {run.run_id} not delivered: {exc}")
        return dg.SkipReason(f"alert not delivered: {exc}")
    context.log.info(f"failure alert for run {run.run_id} sent to {alerts.describe(url)} (HTTP {status})")
    return None
