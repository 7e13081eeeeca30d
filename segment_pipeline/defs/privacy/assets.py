"""Privacy assets (thin; the logic is in ``segment_pipeline/core/privacy/``) and the helpers every
export and sync asset uses to keep the suppression lists current and to report what was held back.

* ``suppression_lists``: loads the lists of the privacy file (``SEGMENT_PIPELINE_PRIVACY``) as
  hashes into the warehouse, daily (``SEGMENT_PIPELINE_SUPPRESSION_CRON``, default ``0 2 * * *``
  UTC, before the daily pipeline). Exports and syncs also reload them first when the privacy file or
  a list changed since today's load (:func:`refresh_suppression`), so a new list is never missed.
* ``retention``: enforces the retention settings daily (``SEGMENT_PIPELINE_RETENTION_CRON``,
  default ``30 4 * * *`` UTC) and reports per kind what it removed (count, bytes) and the oldest
  item kept.
"""

import datetime as dt
import os
from collections.abc import Iterable

import dagster as dg

from segment_pipeline import settings
from segment_pipeline.core.privacy.config import PrivacyFileError, current_privacy
from segment_pipeline.core.privacy.filters import privacy_counts
from segment_pipeline.core.privacy.retention import KINDS, enforce_retention
from segment_pipeline.core.privacy.suppression import ensure_current, load_suppression
from segment_pipeline.core.privacy.suppression import refresh_suppression as core_refresh
from segment_pipeline.core.warehouse import Warehouse, connect
from segment_pipeline.defs.exports.resources import ExportsResource
from segment_pipeline.defs.resources import LandingZoneResource, WarehouseResource

SUPPRESSION_CRON_ENV, SUPPRESSION_CRON = "SEGMENT_PIPELINE_SUPPRESSION_CRON", "0 2 * * *"
RETENTION_CRON_ENV, RETENTION_CRON = "SEGMENT_PIPELINE_RETENTION_CRON", "30 4 * * *"


def refresh_suppression(wh: Warehouse, landing_root: str | None = None) -> None:
    """Reload the suppression lists if today's load is missing or stale
    (:func:`segment_pipeline.core.privacy.suppression.refresh_suppression`, fail closed; raises
    ``dg.Failure`` naming the file, list or entry when the privacy file or a list is invalid, or when
    lists are declared but cannot be loaded)."""
    try:
        core_refresh(wh, landing_root or settings.landing_root())
    except (PrivacyFileError, settings.SettingsError) as exc:
        raise dg.Failure(str(exc)) from None


def held_back(wh: Warehouse, day: dt.date, segment_ids: Iterable[str] | None = None,
              destination: str | None = None, refresh: bool = True) -> dict[str, object]:
    """Refresh the lists (unless ``refresh`` is False), then count what the privacy filter holds
    back among ``day``'s members (of ``segment_ids``; with ``destination`` its consent gate too)."""
    if refresh:
        refresh_suppression(wh)
    con = connect(memory_limit="1GB")
    try:
        return privacy_counts(con, wh, days=[day], segment_ids=None if segment_ids is None else list(segment_ids),
                              destination=destination)
    except PrivacyFileError as exc:
        raise dg.Failure(str(exc)) from None
    finally:
        con.close()


def privacy_metadata(counts: dict[str, object]) -> dict[str, object]:
    """Run metadata: ``suppressed`` (per list, JSON), ``suppressed_total``, ``consent_withheld``."""
    out: dict[str, object] = {}
    if "suppressed" in counts:
        per_list = dict(counts["suppressed"])  # type: ignore[call-overload]
        out["suppressed"] = dg.MetadataValue.json(per_list)
        out["suppressed_total"] = sum(per_list.values())
    if "consent_withheld" in counts:
        out["consent_withheld"] = counts["consent_withheld"]
    return out


@dg.asset(group_name="privacy", kinds={"duckdb", "parquet"},
          automation_condition=dg.AutomationCondition.on_cron(
              os.environ.get(SUPPRESSION_CRON_ENV) or SUPPRESSION_CRON, "UTC"))
def suppression_lists(context: dg.AssetExecutionContext, warehouse: WarehouseResource,
                      landing: LandingZoneResource) -> dg.MaterializeResult:
    """The suppression lists of the privacy file, loaded as SHA-256 hashes (never the plain addresses) into
    the warehouse table suppression; malformed entries go to quarantine_suppression with file, line and reason.
    Every export and sync leaves these addresses out. (Shown as the asset's description: plain text.)"""
    wh = warehouse.get()
    con = connect(memory_limit="1GB")
    try:
        config = current_privacy()
        result = load_suppression(con, wh, config, landing.root, dt.datetime.now(dt.UTC).date())
        if not config.suppression:
            ensure_current(con, wh, config, landing.root)  # lists removed from the file stop applying
    except PrivacyFileError as exc:
        raise dg.Failure(str(exc)) from None
    finally:
        con.close()
    lists = {name: vars(v) for name, v in result.lists.items()}
    if result.quarantined:
        context.log.warning(f"{result.quarantined} malformed suppression entries quarantined "
                            "(file, line and reason in quarantine_suppression)")
    return dg.MaterializeResult(metadata={
        "lists": dg.MetadataValue.json(lists), "list_count": len(lists), "hashes": result.hashes,
        "quarantined": result.quarantined, "blank": sum(v.blank for v in result.lists.values()),
        "location": result.location or "no list declared"})


@dg.asset(group_name="privacy", kinds={"python"},
          automation_condition=dg.AutomationCondition.on_cron(
              os.environ.get(RETENTION_CRON_ENV) or RETENTION_CRON, "UTC"))
def retention(context: dg.AssetExecutionContext, warehouse: WarehouseResource, landing: LandingZoneResource,
              exports: ExportsResource) -> dg.MaterializeResult:
    """Removes what is older than the retention settings (SEGMENT_PIPELINE_RETAIN_LANDING_DAYS, _QUARANTINE_DAYS,
    _DRY_RUN_DAYS, _PUBLISHED_DAYS; unset = keep): landing day folders, quarantine partitions, dry-run payloads,
    published feed and export files. Reports per kind the items and bytes removed and the oldest item kept."""
    try:
        days = {k: settings.retention_days(k) for k in KINDS}
    except ValueError as exc:
        raise dg.Failure(str(exc)) from None
    result = enforce_retention(warehouse.get().root, landing.root, exports.storage(), days)
    meta: dict[str, object] = {"retention": dg.MetadataValue.json(result.metadata())}
    for kind, r in result.kinds.items():
        meta[f"{kind}_removed"] = r.removed
        meta[f"{kind}_bytes_removed"] = r.bytes
        meta[f"{kind}_oldest_kept"] = r.oldest_kept or "none"
        if r.removed:
            context.log.info(f"retention {kind}: removed {r.removed} item(s), {r.bytes} bytes (older than {r.days} days)")
    return dg.MaterializeResult(metadata=meta)
