"""Desired state of one integration on one day: every email in at least one synced segment, with
the sorted names of those segments (canonical JSON text, so equality is a string compare)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping

from segment_pipeline.core.warehouse import Warehouse


def desired_sql(warehouse: Warehouse, day: str | dt.date, synced: Mapping[str, str]) -> tuple[str, list[object]]:
    """SQL (+ params) with columns ``email VARCHAR, segments VARCHAR`` (JSON list of names, sorted).

    ``synced`` maps segment id -> segment name for the segments whose sync toggle is on for this
    integration. Rows without an email are skipped (the destinations are keyed by email).
    """
    if not synced:
        return "SELECT NULL::VARCHAR AS email, NULL::VARCHAR AS segments LIMIT 0", []
    items = sorted(synced.items())
    values = ", ".join("(?, ?)" for _ in items)
    params: list[object] = [x for pair in items for x in pair]
    sql = f"""
        SELECT m.email AS email,
               to_json(list_sort(list_distinct(list(s.segment_name))))::VARCHAR AS segments
        FROM {warehouse.scan('memberships', days=[day])} AS m
        JOIN (VALUES {values}) AS s(segment_id, segment_name) ON s.segment_id = m.segment_id
        WHERE m.email IS NOT NULL AND m.email <> ''
        GROUP BY m.email
    """
    return sql, params
