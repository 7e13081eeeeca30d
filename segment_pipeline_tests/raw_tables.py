"""Raw warehouse tables written directly in the model's schema, for tests of what reads them
(profiles, traits, exports) without going through ingestion."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

import duckdb

from segment_pipeline.core.warehouse import Warehouse
from segment_pipeline_tests.partitions import write_rows


def write_raw(wh: Warehouse, table: str, day: str, rows: Iterable[Mapping[str, Any]],
              con: duckdb.DuckDBPyConnection | None = None, file: str | None = None) -> int:
    """Write ``rows`` (dicts of column -> value; missing columns are NULL) as ``table``'s partition
    for ``day`` in the warehouse model's schema (:func:`segment_pipeline_tests.partitions.write_rows`).
    ``source_file`` defaults to one file of the day, ``source_line`` to the row's position
    (1-based), ``source`` to ``test``."""
    default_file = file or f"{table}/date={day}/part-0.ndjson"
    full = [{"source": "test", "source_file": default_file, "source_line": i, **row} for i, row in enumerate(rows, start=1)]
    return write_rows(wh, table, day, full, con)


def profile_row(email: str, updated_at: str, **fields: Any) -> dict[str, Any]:
    """A ``raw_profiles`` row: ``fields`` given as None are cleared (listed in ``cleared``)."""
    cleared = sorted(k for k, v in fields.items() if v is None and k != "custom_attributes")
    row = {"email": email, "email_raw": email, "updated_at": updated_at, **{k: v for k, v in fields.items() if v is not None}}
    if cleared:
        row["cleared"] = cleared
    if isinstance(row.get("custom_attributes"), dict):
        row["custom_attributes"] = json.dumps(row["custom_attributes"])
    return row


def event_row(event_id: str, email: str, event: str, occurred_at: str, **properties: Any) -> dict[str, Any]:
    """A ``raw_events`` row (``properties`` given as a dict becomes the untyped JSON column)."""
    row = {"event_id": event_id, "email": email, "event": event, "occurred_at": occurred_at, **properties}
    if isinstance(row.get("properties"), dict):
        row["properties"] = json.dumps(row["properties"])
    return row
