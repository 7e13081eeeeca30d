"""Export artifacts: the daily NDJSON feed, chunked per-segment exports, CSV by date range.

Pure logic, no Dagster: storage (local folder or S3, atomic publication, key safety), writers,
locks and the callback poster. ``segment_pipeline.defs.exports`` wires them into Dagster.
"""

from segment_pipeline.core.exports.callback import CallbackResult, post_callback
from segment_pipeline.core.exports.csv_range import CsvExportResult, resolve_range, write_segment_csv
from segment_pipeline.core.exports.daily_feed import (
    DEFAULT_IDENTIFIER,
    ExportInputError,
    daily_key,
    latest_key,
    read_latest,
    verify_daily_feed,
    write_daily_feed,
)
from segment_pipeline.core.exports.keys import UnsafeKeyError, encode_segment, tag_value
from segment_pipeline.core.exports.locks import ExportInProgressError
from segment_pipeline.core.exports.segment_export import (
    CHUNK_SIZE,
    SUPPORTED_FIELDS,
    SegmentExportRequest,
    SegmentExportRequestError,
    export_segment,
    run_segment_export,
    verify_segment_export,
)
from segment_pipeline.core.exports.storage import ExportStorage, LocalExportStorage, S3ExportStorage

__all__ = [
    "CHUNK_SIZE",
    "DEFAULT_IDENTIFIER",
    "SUPPORTED_FIELDS",
    "CallbackResult",
    "CsvExportResult",
    "ExportInProgressError",
    "ExportInputError",
    "ExportStorage",
    "LocalExportStorage",
    "S3ExportStorage",
    "SegmentExportRequest",
    "SegmentExportRequestError",
    "UnsafeKeyError",
    "daily_key",
    "encode_segment",
    "export_segment",
    "latest_key",
    "post_callback",
    "read_latest",
    "resolve_range",
    "run_segment_export",
    "tag_value",
    "verify_daily_feed",
    "verify_segment_export",
    "write_daily_feed",
    "write_segment_csv",
]
