"""Sync entry points by destination name, on the one engine (:mod:`segment_pipeline.core.sync.engine`).

:func:`sync` runs any registered destination; :func:`sync_klaviyo` and :func:`sync_dotdigital`
are the same call with the destination fixed (kept for scripts and the benchmark).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from segment_pipeline.core.esp import dotdigital as dd
from segment_pipeline.core.esp import klaviyo as kl
from segment_pipeline.core.esp.http import EspClient
from segment_pipeline.core.sync.destinations import destination
from segment_pipeline.core.sync.destinations.dotdigital import (
    REPORT_OK_KEYS,
    DotdigitalDestination,
    DotdigitalSettings,
)
from segment_pipeline.core.sync.destinations.klaviyo import KlaviyoDestination, KlaviyoSettings
from segment_pipeline.core.sync.engine import Log, run_sync
from segment_pipeline.core.sync.report import SyncReport
from segment_pipeline.core.warehouse import Warehouse

__all__ = ["REPORT_OK_KEYS", "DotdigitalSettings", "KlaviyoSettings", "sync", "sync_dotdigital", "sync_klaviyo"]


def sync(name: str, warehouse: Warehouse, day: str | dt.date, synced: Mapping[str, str], *, state_dir: Path,
         dry_run_root: Path, client: EspClient | None, settings: Any = None, log: Log | None = None) -> SyncReport:
    """One run of the destination registered as ``name`` (``client`` None: dry run; ``settings``
    None: the destination's defaults)."""
    cls = destination(name)
    d = cls(client, settings if settings is not None else cls.settings_from(cls.option_values()))
    return run_sync(d, warehouse, day, synced, state_dir=state_dir, dry_run_root=dry_run_root, log=log)


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
