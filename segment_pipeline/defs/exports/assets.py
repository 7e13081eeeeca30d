"""Export assets and jobs (thin: the work is in ``segment_pipeline.core.exports``).

* ``segment_feed_daily`` (daily partitioned): ``daily/<identifier>/YYYY-MM-DD.json`` + ``latest``.
* ``google_customer_match_files`` (daily partitioned): ``customer_match/YYYY-MM-DD/<segment>.csv``
  + ``manifest.json`` for the segments toggled ``google_customer_match`` (``core/exports/customer_match.py``).
* ``segment_export`` (run config = the ``/users/export/segment`` request) via ``segment_export_job``.
* ``segment_csv_export_job`` (run config: segment, range) for ad-hoc use from the launchpad.

Concurrency tags on segment export runs (for ``run_queue.tag_concurrency_limits`` in
``dagster.yaml``): ``segment_export/segment_id`` = :func:`segment_export_tags` value (one per
segment) and ``segment_export/all`` = ``true`` (set on every run of the job). The job also guards
itself with a lock per segment and ``max_concurrent_segment_exports`` slots.
"""


import datetime as dt

import dagster as dg
from pydantic import Field

from segment_pipeline.core.exports import csv_range, customer_match, daily_feed
from segment_pipeline.core.exports import segment_export as chunked
from segment_pipeline.core.exports.callback import redact
from segment_pipeline.core.exports.keys import tag_value
from segment_pipeline.core.exports.storage import LocalExportStorage
from segment_pipeline.core.warehouse import connect
from segment_pipeline.defs.automation.conditions import DAILY_FRESHNESS, FEED
from segment_pipeline.defs.exports.resources import ExportsResource
from segment_pipeline.defs.partitions import daily_partitions, partition_days, single_run
from segment_pipeline.defs.privacy.assets import held_back, privacy_metadata, refresh_suppression
from segment_pipeline.defs.resources import SegmentCatalogResource, WarehouseResource

SEGMENT_TAG = "segment_export/segment_id"
GLOBAL_TAG = "segment_export/all"


def segment_export_tags(segment_id: str) -> dict[str, str]:
    """Run tags for an export of ``segment_id`` (add them when launching ``segment_export_job``)."""
    return {SEGMENT_TAG: tag_value(segment_id), GLOBAL_TAG: "true"}


# -- daily feed ---------------------------------------------------------------------------------------


@dg.asset(
    deps=[dg.AssetKey("profiles"), dg.AssetKey("memberships")],
    partitions_def=daily_partitions,
    backfill_policy=single_run,
    group_name="exports",
    kinds={"duckdb", "json"},
    automation_condition=FEED,
    freshness_policy=DAILY_FRESHNESS,
    check_specs=[
        dg.AssetCheckSpec(
            "feed_is_complete",
            asset="segment_feed_daily",
            description="One line per identity, valid JSON on every line, only segment names that exist.",
        )
    ],
)
def segment_feed_daily(context: dg.AssetExecutionContext, warehouse: WarehouseResource, exports: ExportsResource):
    """The daily segment export feed: one NDJSON file per day listing every identity processed up
    to that day with the names of its segments, at daily/IDENTIFIER/YYYY-MM-DD.json under the export
    root, plus a latest pointer. (Shown as the asset's description: plain text, no markup.)"""
    wh, storage, identifier = warehouse.get(), exports.storage(), exports.feed_identifier()
    if isinstance(storage, LocalExportStorage):
        swept = storage.sweep()  # leftovers of killed writes (feed, exports, locks) whose writer is gone
        if swept:
            context.log.info(f"removed {len(swept)} leftover temporary file(s) of killed writes")
    refresh_suppression(wh)  # the lists in force (suppressed addresses are left out of the feed)
    con = connect(memory_limit=exports.duckdb_memory_limit)
    problems: dict[str, list[str]] = {}
    for day in partition_days(context):
        result = daily_feed.write_daily_feed(con, wh, storage, day, identifier)
        privacy = privacy_metadata(held_back(wh, day, refresh=False))
        check = daily_feed.verify_daily_feed(con, wh, storage, day, identifier)
        if not check.passed:
            problems[day.isoformat()] = check.problems
        context.add_asset_metadata(
            {
                "location": result.location,
                "identifier": identifier,
                "rows": result.lines,
                "dagster/row_count": result.lines,
                "bytes": result.bytes,
                "latest_updated": result.latest_updated,
                **privacy,
            },
            partition_key=day.isoformat(),
        )
    yield dg.MaterializeResult()
    yield dg.AssetCheckResult(
        check_name="feed_is_complete",
        passed=not problems,
        metadata={"days_checked": len(context.partition_keys), "problems": dg.MetadataValue.json(problems)},
    )


# -- Google Customer Match upload files ---------------------------------------------------------------


@dg.asset(
    deps=[dg.AssetKey("memberships")],
    partitions_def=daily_partitions,
    backfill_policy=single_run,
    group_name="exports",
    kinds={"duckdb", "csv"},
    automation_condition=FEED,
    freshness_policy=DAILY_FRESHNESS,
)
def google_customer_match_files(context: dg.AssetExecutionContext, warehouse: WarehouseResource,
                                exports: ExportsResource, segment_catalog: SegmentCatalogResource):
    """Google Ads Customer Match upload files: for each segment whose sync toggle google_customer_match is on,
    one CSV of SHA-256 hashed emails (header Email, Google's normalization) per day at
    customer_match/YYYY-MM-DD/SEGMENT.csv under the export root, plus manifest.json, published atomically.
    (Shown as the asset's description: plain text, no markup.)"""
    wh, storage = warehouse.get(), exports.storage()
    segments = segment_catalog.load().synced(customer_match.TOGGLE)
    refresh_suppression(wh)
    con = connect(memory_limit=exports.duckdb_memory_limit)
    try:
        for day in partition_days(context):
            result = customer_match.write_customer_match(con, wh, storage, day, segments)
            context.add_asset_metadata(
                {"location": result.location, "segments": len(result.files), "rows": result.rows,
                 "dagster/row_count": result.rows,
                 "files": dg.MetadataValue.json([{k: f.__dict__[k] for k in ("segment_name", "file", "rows")}
                                                 for f in result.files]),
                 **privacy_metadata(held_back(wh, day, segments, refresh=False))},
                partition_key=day.isoformat(),
            )
    finally:
        con.close()
    return dg.MaterializeResult()


# -- per-segment export ----------------------------------------------------------------------------------


class SegmentExportConfig(dg.Config):
    """The ``/users/export/segment`` request body (plus an optional data day)."""

    segment_id: str = Field(description="Identifier of the segment to export (required).")
    fields_to_export: list[str] = Field(
        description=f"User fields to export (required); one of: {', '.join(chunked.SUPPORTED_FIELDS)}."
    )
    output_format: str = Field(default="zip", description="'zip' (default) or 'gzip'.")
    callback_endpoint: str | None = Field(default=None, description="URL to POST {'success': true} to when done.")
    as_of: str | None = Field(default=None, description="Data day (YYYY-MM-DD); default: newest memberships day.")
    object_prefix: str | None = Field(
        default=None,
        description="Pre-chosen RANDOM_UUID-TIMESTAMP naming the export folder (set by the segment API so it "
        "can answer with it at once); default: a fresh one when the run starts.",
    )
    download_url: str | None = Field(
        default=None, description="URL sent as 'url' in the callback instead of the storage URL (local mode)."
    )


@dg.asset(
    deps=[dg.AssetKey("profiles"), dg.AssetKey("memberships")],
    group_name="exports",
    kinds={"duckdb", "json"},
    check_specs=[
        dg.AssetCheckSpec(
            "chunks_add_up",
            asset="segment_export",
            description="ceil(members/5000) files whose line counts add up to the segment's member count.",
        )
    ],
)
def segment_export(
    context: dg.AssetExecutionContext,
    config: SegmentExportConfig,
    warehouse: WarehouseResource,
    exports: ExportsResource,
):
    """A segment's users as NDJSON in zip or gzip files of 5,000 users each, under
    segment-export/SEGMENT_ID/YYYY-MM-dd/RANDOM_UUID-TIMESTAMP/, then a POST to the callback
    endpoint. At most one export per segment runs at a time."""
    request = chunked.SegmentExportRequest.parse(
        config.model_dump(exclude={"as_of", "object_prefix", "download_url"}, exclude_none=True),
        model=warehouse.get().model,
    )
    tagged = context.run.tags.get(SEGMENT_TAG)
    if tagged is not None and tagged != tag_value(request.segment_id):
        raise dg.Failure(
            f"run tag {SEGMENT_TAG}={tagged!r} does not match segment {request.segment_id!r} "
            f"(expected {tag_value(request.segment_id)!r}); launch with segment_export_tags(segment_id)"
        )
    refresh_suppression(warehouse.get())  # the lists in force: suppressed members are not exported
    storage = exports.storage()

    def fail_dead_run(found) -> None:
        """A lock whose holder died belonged to a run that Dagster still shows as running: end it,
        so it no longer holds a slot of the run queue (``segment_export/all``) or of the API."""
        dead_run = context.instance.get_run_by_id(found.owner.removeprefix("run ")) if found.owner.startswith(
            "run ") else None
        if dead_run is not None and not dead_run.is_finished and found.state == "dead":
            context.instance.report_run_failed(
                dead_run, f"its export process died before finishing ({found.why}); lock taken over by run "
                f"{context.run.run_id}",
            )

    result = chunked.run_segment_export(
        connect(memory_limit=exports.duckdb_memory_limit),
        warehouse.get(),
        storage,
        request,
        owner=f"run {context.run.run_id}",
        as_of=config.as_of,
        max_concurrent=exports.max_concurrent_segment_exports,
        lock_stale_after=exports.lock_stale_after_seconds,
        callback_attempts=exports.callback_attempts,
        callback_backoff_seconds=exports.callback_backoff_seconds,
        callback_token=exports.callback_token,
        progress=lambda files, rows: context.log.debug(f"{files} file(s), {rows} users written"),
        log=context.log.info,
        object_prefix=config.object_prefix,
        download_url=config.download_url,
        on_lock_takeover=fail_dead_run,
    )
    if result.callback is not None and not result.callback.delivered:
        context.log.error(
            f"callback to {redact(request.callback_endpoint or '')} failed ({result.callback.error}); "
            f"the export itself is complete at {result.location}"
        )
    check = chunked.verify_segment_export(storage, result.manifest_key, result.members)
    metadata = {
        "segment_id": request.segment_id,
        "as_of": result.as_of,
        "location": result.location,
        "manifest": storage.location(result.manifest_key),
        "object_prefix": result.object_prefix,
        "members": result.members,
        "files": len(result.files),
        "rows": result.rows,
        "dagster/row_count": result.rows,
        "bytes": result.bytes,
        "fields": ", ".join(result.fields),
        "output_format": result.output_format,
        **privacy_metadata(held_back(warehouse.get(), dt.date.fromisoformat(result.as_of), [request.segment_id],
                                     refresh=False)),
        "callback": "none" if result.callback is None else (
            f"delivered after {result.callback.attempts} attempt(s)" if result.callback.delivered
            else f"FAILED after {result.callback.attempts} attempt(s): {result.callback.error}"
        ),
    }
    return dg.MaterializeResult(
        metadata=metadata,
        check_results=[
            dg.AssetCheckResult(
                check_name="chunks_add_up",
                passed=check.passed,
                metadata={
                    "files": check.files,
                    "expected_files": check.expected_files,
                    "lines": check.lines,
                    "members": check.members,
                    "problems": dg.MetadataValue.json(check.problems),
                },
            )
        ],
    )


segment_export_job = dg.define_asset_job(
    "segment_export_job",
    selection=dg.AssetSelection.assets(segment_export),
    tags={GLOBAL_TAG: "true"},
    description="Export one segment's users (run config: segment_id, fields_to_export, output_format, "
    "callback_endpoint). Launch with segment_export_tags(segment_id) as run tags.",
)


def segment_export_run_request(
    segment_id: str,
    fields_to_export: list[str],
    output_format: str = "zip",
    callback_endpoint: str | None = None,
) -> dg.RunRequest:
    """A validated run request for ``segment_export_job`` carrying the concurrency tags."""
    body = {"segment_id": segment_id, "fields_to_export": fields_to_export, "output_format": output_format}
    if callback_endpoint:
        body["callback_endpoint"] = callback_endpoint
    chunked.SegmentExportRequest.parse(body)
    return dg.RunRequest(
        run_config={"ops": {"segment_export": {"config": body}}}, tags=segment_export_tags(segment_id)
    )


# -- CSV by date range ------------------------------------------------------------------------------------


class SegmentCsvConfig(dg.Config):
    segment_id: str = Field(description="The segment to export.")
    date_range: str = Field(default="past_30_days", description="'past_7_days', 'past_30_days' or 'custom'.")
    start: str | None = Field(default=None, description="First day (YYYY-MM-DD), for 'custom'.")
    end: str | None = Field(default=None, description="Last day (YYYY-MM-DD, inclusive), for 'custom'.")
    as_of: str | None = Field(default=None, description="Last day of the past_* ranges; default newest data.")


@dg.op(tags={"kind": "duckdb"})
def export_segment_csv(
    context: dg.OpExecutionContext, config: SegmentCsvConfig, warehouse: WarehouseResource, exports: ExportsResource
) -> None:
    """Emails that were members of the segment on any day in the range, with first/last day seen."""
    wh = warehouse.get()
    try:
        start, end = csv_range.resolve_range(wh, config.date_range, config.start, config.end, config.as_of)
    except ValueError as exc:
        raise dg.Failure(f"segment {config.segment_id!r}: {exc}") from exc
    refresh_suppression(wh)
    storage = exports.storage()
    result = csv_range.write_segment_csv(connect(memory_limit=exports.duckdb_memory_limit), wh, storage,
                                         config.segment_id, start, end)
    context.log_event(
        dg.AssetObservation(
            asset_key=dg.AssetKey(["exports", "segment_csv"]),
            metadata={
                "segment_id": config.segment_id,
                "range": f"{start}..{end}",
                "location": result.location,
                "url": result.url,
                "rows": result.rows,
                "bytes": result.bytes,
            },
        )
    )
    context.log.info(f"wrote {result.rows} emails for {start}..{end} to {result.location}")


@dg.job(description="Ad-hoc CSV of a segment's members over past_7_days, past_30_days or a custom range.")
def segment_csv_export_job():
    export_segment_csv()


