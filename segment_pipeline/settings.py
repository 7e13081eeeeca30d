"""Where things live by default, overridable through environment variables.

Defaults resolve against the project checkout (the folder holding ``data/``) when the package runs
from one, else against the current directory, so ``dg dev`` works from anywhere in the repo.
"""

from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]

#: First day of the shipped sample data, and the default start of the daily partitions.
DEFAULT_START_DATE = "2026-11-01"


def base_dir() -> Path:
    return PROJECT_ROOT if (PROJECT_ROOT / "data").is_dir() else Path.cwd()


def _env_path(var: str, default_relative: str) -> str:
    value = os.environ.get(var)
    return str(Path(value).expanduser().absolute()) if value else str(base_dir() / default_relative)


def warehouse_root() -> str:
    return _env_path("SEGMENT_PIPELINE_WAREHOUSE", "data/warehouse")


def landing_root() -> str:
    return _env_path("SEGMENT_PIPELINE_LANDING", "data/landing")


def segments_file() -> str:
    return _env_path("SEGMENT_PIPELINE_SEGMENTS", "data/segments.yaml")


def start_date() -> str:
    return os.environ.get("SEGMENT_PIPELINE_START_DATE", DEFAULT_START_DATE)


def sources_file() -> str:
    """Per-source reading options (encoding, empty CSV cells, timestamp tolerance); optional file."""
    return _env_path("SEGMENT_PIPELINE_SOURCES", "data/sources.yaml")
