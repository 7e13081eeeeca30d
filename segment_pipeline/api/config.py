"""Settings of the segment API, all from the environment (see ``docs/api.md`` for the table).

The export storage is built from the same variables as the Dagster ``ExportsResource``
(``SEGMENT_PIPELINE_EXPORT_DIR`` / ``..._BUCKET`` / ``..._PREFIX`` / ``..._ENDPOINT_URL`` /
``..._REGION`` / ``..._PUBLIC_URL`` / ``..._IDENTIFIER`` / ``..._MAX_CONCURRENT``), so the API
reads exactly where the pipeline writes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from segment_pipeline import settings
from segment_pipeline.core.exports.daily_feed import DEFAULT_IDENTIFIER
from segment_pipeline.core.exports.keys import check_identifier
from segment_pipeline.core.exports.storage import ExportStorage, LocalExportStorage, S3ExportStorage
from segment_pipeline.core.feed_auth import signing_key_from_env, state_dir


def storage_from_env() -> ExportStorage:
    """The export storage the Dagster ``exports`` resource would use, from the same variables."""
    bucket = os.environ.get("SEGMENT_PIPELINE_EXPORT_BUCKET")
    if bucket:
        import boto3

        client = boto3.client(
            "s3",
            endpoint_url=os.environ.get("SEGMENT_PIPELINE_EXPORT_ENDPOINT_URL") or None,
            region_name=os.environ.get("SEGMENT_PIPELINE_EXPORT_REGION") or None,
        )
        return S3ExportStorage(client, bucket, os.environ.get("SEGMENT_PIPELINE_EXPORT_PREFIX") or "exports")
    root = os.environ.get("SEGMENT_PIPELINE_EXPORT_DIR") or str(Path(settings.warehouse_root()).parent / "exports")
    return LocalExportStorage(root, public_url=os.environ.get("SEGMENT_PIPELINE_EXPORT_PUBLIC_URL") or None)


def _int(name: str, default: int) -> int:
    value = os.environ.get(name)
    return int(value) if value else default


def _float(name: str, default: float) -> float:
    value = os.environ.get(name)
    return float(value) if value else default


@dataclass
class ApiSettings:
    warehouse_root: str = field(default_factory=settings.warehouse_root)
    state_dir: Path = field(default_factory=state_dir)
    identifier: str = DEFAULT_IDENTIFIER
    signing_key: bytes | None = None
    url_ttl_seconds: int = 4 * 3600
    rate_per_second: float = 20.0
    burst: int = 40
    auth_failures_per_minute: float = 30.0
    max_body_bytes: int = 64 * 1024
    max_concurrent_exports: int = 4
    lock_stale_after_seconds: int = 6 * 3600
    public_url: str | None = None
    dagster_url: str | None = None
    dagster_location: str = "segment_pipeline"
    gzip_level: int = 6
    recheck_seconds: float = 1.0

    @classmethod
    def from_env(cls) -> ApiSettings:
        return cls(
            identifier=check_identifier(os.environ.get("SEGMENT_PIPELINE_EXPORT_IDENTIFIER") or DEFAULT_IDENTIFIER),
            signing_key=signing_key_from_env(),
            url_ttl_seconds=_int("SEGMENT_PIPELINE_API_URL_TTL_SECONDS", 4 * 3600),
            rate_per_second=_float("SEGMENT_PIPELINE_API_RATE_PER_SECOND", 20.0),
            burst=_int("SEGMENT_PIPELINE_API_BURST", 40),
            auth_failures_per_minute=_float("SEGMENT_PIPELINE_API_AUTH_FAILURES_PER_MINUTE", 30.0),
            max_body_bytes=_int("SEGMENT_PIPELINE_API_MAX_BODY_BYTES", 64 * 1024),
            max_concurrent_exports=_int("SEGMENT_PIPELINE_EXPORT_MAX_CONCURRENT", 2),
            public_url=(os.environ.get("SEGMENT_PIPELINE_API_PUBLIC_URL") or "").rstrip("/") or None,
            dagster_url=os.environ.get("SEGMENT_PIPELINE_DAGSTER_URL") or None,
            dagster_location=os.environ.get("SEGMENT_PIPELINE_DAGSTER_LOCATION") or "segment_pipeline",
            gzip_level=_int("SEGMENT_PIPELINE_API_GZIP_LEVEL", 6),
            recheck_seconds=_float("SEGMENT_PIPELINE_API_RECHECK_SECONDS", 1.0),
        )
