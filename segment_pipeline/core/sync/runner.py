"""Sync entry points by destination name, on the one engine (:mod:`segment_pipeline.core.sync.engine`).

:func:`sync` runs any registered destination; :func:`sync_klaviyo` and :func:`sync_dotdigital`
are the same call with the destination fixed (kept for scripts and the benchmark).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from segment_pipeline.core.esp import dotdigital as dd
from segment_pipeline.core.esp import klaviyo as kl
from segment_pipeline.core.esp.http import EspClient
from segment_pipeline.core.model import DataModel
from segment_pipeline.core.sync.destinations import destination
from segment_pipeline.core.sync.destinations.dotdigital import (
    REPORT_OK_KEYS,
    DotdigitalDestination,
    DotdigitalSettings,
)
from segment_pipeline.core.sync.destinations.klaviyo import KlaviyoDestination, KlaviyoSettings
from segment_pipeline.core.sync.engine import Log, run_sync
from segment_pipeline.core.sync.mappings import FieldMapping, load_mappings
from segment_pipeline.core.sync.report import SyncReport
from segment_pipeline.core.warehouse import Warehouse

__all__ = ["REPORT_OK_KEYS", "DotdigitalSettings", "KlaviyoSettings", "sync", "sync_dotdigital", "sync_klaviyo"]


def sync(name: str, warehouse: Warehouse, day: str | dt.date, synced: Mapping[str, str], *, state_dir: Path,
         dry_run_root: Path, client: EspClient | None, settings: Any = None, log: Log | None = None,
         mappings: Sequence[FieldMapping] = (), max_removal_share: float | None = None,
         allow_large_removal: bool = False) -> SyncReport:
    """One run of the destination registered as ``name`` (``client`` None: dry run; ``settings``
    None: the destination's defaults; ``mappings``: its validated field mappings; the removal
    guard as :func:`~segment_pipeline.core.sync.engine.run_sync` describes it)."""
    cls = destination(name)
    d = cls(client, settings if settings is not None else cls.settings_from(cls.option_values()), mappings)
    return run_sync(d, warehouse, day, synced, state_dir=state_dir, dry_run_root=dry_run_root, log=log,
                    max_removal_share=max_removal_share, allow_large_removal=allow_large_removal)


def sync_klaviyo(warehouse: Warehouse, day: str | dt.date, synced: Mapping[str, str], *, state_dir: Path,
                 dry_run_root: Path, client: kl.KlaviyoClient | None, settings: KlaviyoSettings | None = None,
                 log: Log | None = None) -> SyncReport:
    return run_sync(KlaviyoDestination(client, settings or KlaviyoSettings()), warehouse, day, synced, state_dir=state_dir,
                    dry_run_root=dry_run_root, log=log)


def sync_dotdigital(warehouse: Warehouse, day: str | dt.date, synced: Mapping[str, str], *, state_dir: Path,
                    dry_run_root: Path, client: dd.DotdigitalClient | None,
                    settings: DotdigitalSettings | None = None, log: Log | None = None) -> SyncReport:
    return run_sync(DotdigitalDestination(client, settings or DotdigitalSettings()), warehouse, day, synced, state_dir=state_dir,
                    dry_run_root=dry_run_root, log=log)


def destination_mappings(d: Any, model: DataModel, path: str | Path | None = None) -> tuple[FieldMapping, ...]:
    """The validated field mappings of destination ``d`` from the destinations file (``path``,
    default ``settings.destinations_file()``; absent file: none). Raises
    :class:`~segment_pipeline.core.sync.mappings.MappingFileError` naming the file and the entry
    (a consent attribute of the privacy file, ``settings.privacy_file()``, is refused as a source;
    an invalid privacy file raises its :class:`~segment_pipeline.core.privacy.config.PrivacyFileError`)."""
    from segment_pipeline import settings as app_settings
    from segment_pipeline.core.privacy.config import current_privacy
    from segment_pipeline.core.sync.destinations import DESTINATIONS

    field = d.segment_field()
    loaded = load_mappings(path if path is not None else app_settings.destinations_file(), model,
                           tuple(DESTINATIONS), {d.name: field} if field else None,
                           current_privacy().consent_attributes())
    return loaded.of(d.name)
