"""Where things live by default, overridable through environment variables.

Defaults resolve against the project checkout (the folder holding ``data/``) when the package runs
from one, else against the current directory, so ``dg dev`` works from anywhere in the repo.
"""

from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]

#: The Dagster instance template (run queue limits, retention, freshness): copied to
#: ``$DAGSTER_HOME/dagster.yaml``. Kept out of the project root so ``dg dev`` does not warn that a
#: root ``dagster.yaml`` "will not be used".
INSTANCE_TEMPLATE = PROJECT_ROOT / "deploy" / "dagster.yaml"

#: The production instance template: the same run queue limits and retention as
#: :data:`INSTANCE_TEMPLATE`, with runs, events and schedules in PostgreSQL and step logs in S3, every
#: host and secret from environment variables (``docs/deploy.md``).
PRODUCTION_INSTANCE_TEMPLATE = PROJECT_ROOT / "deploy" / "production" / "dagster.yaml"

#: First day of the shipped sample data, and the default start of the daily partitions.
DEFAULT_START_DATE = "2026-11-01"


def base_dir() -> Path:
    return PROJECT_ROOT if (PROJECT_ROOT / "data").is_dir() else Path.cwd()


def _env_path(var: str, default_relative: str) -> str:
    value = os.environ.get(var)
    return str(Path(value).expanduser().absolute()) if value else str(base_dir() / default_relative)


class SettingsError(ValueError):
    """A setting (environment variable) names something that is not there; the message names the
    variable and its value."""


#: The value of an optional-file setting that means "no file" (e.g. ``SEGMENT_PIPELINE_DESTINATIONS=none``).
NO_FILE = "none"


def _optional_file(var: str, default_relative: str) -> str:
    """An optional file's path: the default (missing = no file), or the explicitly set ``var``,
    which must name an existing file (a typo must not switch a feature off silently); ``none``
    means no file (:data:`os.devnull`, which every loader reads as "no file"). Raises
    :class:`SettingsError` naming the variable and the path."""
    value = (os.environ.get(var) or "").strip()
    if value.lower() == NO_FILE:
        return os.devnull
    path = _env_path(var, default_relative)
    if value and not Path(path).is_file():
        what = "is a folder, not a file" if Path(path).is_dir() else "does not exist"
        raise SettingsError(f"{var}={value}: {path} {what} (unset it for the default "
                            f"{default_relative}, or set it to {NO_FILE} for no file)")
    return path


def warehouse_root() -> str:
    return _env_path("SEGMENT_PIPELINE_WAREHOUSE", "data/warehouse")


def landing_root() -> str:
    return _env_path("SEGMENT_PIPELINE_LANDING", "data/landing")


def segments_file() -> str:
    return _env_path("SEGMENT_PIPELINE_SEGMENTS", "data/segments.yaml")


def model_file() -> str:
    """The declared data model (identity, attributes, events, traits): ``SEGMENT_PIPELINE_MODEL``."""
    return _env_path("SEGMENT_PIPELINE_MODEL", "data/model.yaml")


def start_date() -> str:
    return os.environ.get("SEGMENT_PIPELINE_START_DATE", DEFAULT_START_DATE)


def end_date() -> str | None:
    """``SEGMENT_PIPELINE_END_DATE``: the last daily partition (inclusive, YYYY-MM-DD), or ``None``
    (the default) for partitions that run through yesterday (UTC) and grow by one every day.

    Set it only for a closed data set: the shipped sample (``segment-pipeline demo`` sets it to the
    sample's last day in the project's ``.env``), a historical replay, a test. A live deployment
    leaves it unset.
    """
    return os.environ.get("SEGMENT_PIPELINE_END_DATE") or None


def sources_file() -> str:
    """Per-source reading options (encoding, empty CSV cells, timestamp tolerance): ``SEGMENT_PIPELINE_SOURCES``,
    default ``data/sources.yaml``; optional file (:func:`_optional_file`: set but missing raises
    :class:`SettingsError`, ``none`` means no file)."""
    return _optional_file("SEGMENT_PIPELINE_SOURCES", "data/sources.yaml")


def privacy_file() -> str:
    """Suppression lists and consent gates (``core/privacy/config.py``): ``SEGMENT_PIPELINE_PRIVACY``,
    default ``data/privacy.yaml``; optional file (set but missing raises :class:`SettingsError`, ``none``
    means no file: no suppression list, no consent gate)."""
    return _optional_file("SEGMENT_PIPELINE_PRIVACY", "data/privacy.yaml")


#: Retention settings (``core/privacy/retention.py``): what -> environment variable holding days.
RETENTION_SETTINGS = {
    "landing": "SEGMENT_PIPELINE_RETAIN_LANDING_DAYS",
    "quarantine": "SEGMENT_PIPELINE_RETAIN_QUARANTINE_DAYS",
    "dry_run": "SEGMENT_PIPELINE_RETAIN_DRY_RUN_DAYS",
    "published": "SEGMENT_PIPELINE_RETAIN_PUBLISHED_DAYS",
}


def retention_days(what: str) -> int | None:
    """Days to keep ``what`` (a key of :data:`RETENTION_SETTINGS`); ``None`` (unset, empty or
    ``off``, the default) keeps everything. Raises ``ValueError`` naming the variable for a value
    that is not a whole number of days >= 1."""
    var = RETENTION_SETTINGS[what]
    raw = (os.environ.get(var) or "").strip()
    if raw.lower() in ("", "off", "none"):
        return None
    if not raw.isdigit() or int(raw) < 1:
        raise ValueError(f"{var}={raw!r}: expected a whole number of days >= 1, or off")
    return int(raw)


def destinations_file() -> str:
    """Field mappings per sync destination (``SEGMENT_PIPELINE_DESTINATIONS``, default
    ``data/destinations.yaml``); optional file: without it (or set to ``none``) destinations get the
    segment names only; set but missing raises :class:`SettingsError`."""
    return _optional_file("SEGMENT_PIPELINE_DESTINATIONS", "data/destinations.yaml")


#: Default removal guard: a sync run that would clear, remove or take a mapped field from more than
#: this share of the contacts a destination holds stops unless confirmed (docs/syncs.md).
DEFAULT_MAX_REMOVAL_SHARE = 0.2


def sync_max_removal_share() -> float:
    """``SEGMENT_PIPELINE_SYNC_MAX_REMOVAL_SHARE``: 0..1 (default 0.2; 1 turns the guard off).
    Raises ``ValueError`` naming the variable for anything else."""
    raw = os.environ.get("SEGMENT_PIPELINE_SYNC_MAX_REMOVAL_SHARE", "").strip()
    if not raw:
        return DEFAULT_MAX_REMOVAL_SHARE
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"SEGMENT_PIPELINE_SYNC_MAX_REMOVAL_SHARE must be a number from 0 to 1 "
                         f"(e.g. 0.2 for 20%), got {raw[:40]!r}")
    return value
