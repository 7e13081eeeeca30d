"""Where exports go: a local folder by default, an S3 bucket (any endpoint) when configured.

Environment (read when the code location loads; secrets only through ``dg.EnvVar``):

* ``SEGMENT_PIPELINE_EXPORT_DIR``: local export folder (default ``<warehouse>/../exports``,
  i.e. ``data/exports``). Used when no bucket is set.
* ``SEGMENT_PIPELINE_EXPORT_BUCKET``: S3 bucket; setting it switches exports to S3.
* ``SEGMENT_PIPELINE_EXPORT_PREFIX``: key prefix in the bucket (default ``exports``).
* ``SEGMENT_PIPELINE_EXPORT_ENDPOINT_URL`` / ``SEGMENT_PIPELINE_EXPORT_REGION``: S3 endpoint
  (MinIO, moto, ...) and region. Credentials come from the usual AWS chain (``AWS_ACCESS_KEY_ID``
  / ``AWS_SECRET_ACCESS_KEY`` / profile / role); nothing needs them in local mode.
* ``SEGMENT_PIPELINE_EXPORT_IDENTIFIER``: the daily feed's key (default ``nosto_segments``).
* ``SEGMENT_PIPELINE_EXPORT_PUBLIC_URL``: base URL serving the local export folder, for the
  callback's ``url`` (default: ``file://`` URIs).
* ``SEGMENT_PIPELINE_EXPORT_MAX_CONCURRENT``: segment exports allowed at once (default 4).
* ``SEGMENT_PIPELINE_EXPORT_CALLBACK_TOKEN``: optional bearer token sent to callback endpoints.
"""

from __future__ import annotations

import os
from pathlib import Path

import dagster as dg
from dagster_aws.s3 import S3Resource

from segment_pipeline import settings
from segment_pipeline.core.exports.daily_feed import DEFAULT_IDENTIFIER
from segment_pipeline.core.exports.keys import check_identifier
from segment_pipeline.core.exports.storage import ExportStorage, LocalExportStorage, S3ExportStorage


class ExportsResource(dg.ConfigurableResource):
    """Export destination and settings (see the module docstring for the environment)."""

    local_dir: str = ""
    bucket: str = ""
    prefix: str = "exports"
    s3: S3Resource
    identifier: str = DEFAULT_IDENTIFIER
    public_url: str = ""
    max_concurrent_segment_exports: int = 2  # matches the segment_export/all run-queue limit in dagster.yaml
    lock_stale_after_seconds: int = 6 * 3600
    callback_attempts: int = 5
    callback_backoff_seconds: float = 2.0
    callback_token: str | None = None
    duckdb_memory_limit: str = "2GB"

    @property
    def kind(self) -> str:
        return "s3" if self.bucket else "file"

    def storage(self) -> ExportStorage:
        if self.bucket:
            return S3ExportStorage(self.s3.get_client(), self.bucket, self.prefix)
        root = self.local_dir or str(Path(settings.warehouse_root()).parent / "exports")
        return LocalExportStorage(root, public_url=self.public_url or None)

    def feed_identifier(self) -> str:
        return check_identifier(self.identifier)


def _env(name: str) -> dg.EnvVar | str:
    return dg.EnvVar(name) if os.environ.get(name) else ""


def exports_resource_from_env() -> ExportsResource:
    s3_options = {}
    if os.environ.get("SEGMENT_PIPELINE_EXPORT_ENDPOINT_URL"):
        s3_options["endpoint_url"] = dg.EnvVar("SEGMENT_PIPELINE_EXPORT_ENDPOINT_URL")
    if os.environ.get("SEGMENT_PIPELINE_EXPORT_REGION"):
        s3_options["region_name"] = dg.EnvVar("SEGMENT_PIPELINE_EXPORT_REGION")
    options: dict = {
        "local_dir": _env("SEGMENT_PIPELINE_EXPORT_DIR"),
        "bucket": _env("SEGMENT_PIPELINE_EXPORT_BUCKET"),
        "public_url": _env("SEGMENT_PIPELINE_EXPORT_PUBLIC_URL"),
        "s3": S3Resource(**s3_options),
    }
    if os.environ.get("SEGMENT_PIPELINE_EXPORT_PREFIX"):
        options["prefix"] = dg.EnvVar("SEGMENT_PIPELINE_EXPORT_PREFIX")
    if os.environ.get("SEGMENT_PIPELINE_EXPORT_IDENTIFIER"):
        options["identifier"] = dg.EnvVar("SEGMENT_PIPELINE_EXPORT_IDENTIFIER")
    if os.environ.get("SEGMENT_PIPELINE_EXPORT_MAX_CONCURRENT"):
        options["max_concurrent_segment_exports"] = dg.EnvVar.int("SEGMENT_PIPELINE_EXPORT_MAX_CONCURRENT")
    if os.environ.get("SEGMENT_PIPELINE_EXPORT_CALLBACK_TOKEN"):
        options["callback_token"] = dg.EnvVar("SEGMENT_PIPELINE_EXPORT_CALLBACK_TOKEN")
    return ExportsResource(**options)


@dg.definitions
def export_resources() -> dg.Definitions:
    return dg.Definitions(resources={"exports": exports_resource_from_env()})
