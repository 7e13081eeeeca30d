"""Desired state of one integration on one day: every email in at least one synced segment, with
the sorted names of those segments (canonical JSON text, so equality is a string compare).

Building a JSON list per email is the costly part at scale (a million emails, each a list of
strings to dedupe, sort and render). Most audiences share a few combinations of segments, so the
query first folds each email's segments into a bitmask (one 64-bit word per 64 synced segments,
a cheap integer aggregate), renders the JSON text once per distinct mask, and joins it back.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping

from segment_pipeline.core.privacy.filters import sendable_memberships
from segment_pipeline.core.warehouse import Warehouse

WORD_BITS = 64


def desired_sql(warehouse: Warehouse, day: str | dt.date, synced: Mapping[str, str],
                destination: str | None = None) -> tuple[str, list[object]]:
    """SQL (+ params) with columns ``email VARCHAR, segments VARCHAR`` (JSON list of names, sorted).

    ``synced`` maps segment id -> segment name for the segments whose sync toggle is on for this
    integration. Rows without an email are skipped (the destinations are keyed by email), and so are
    suppressed addresses and contacts a consent gate of ``destination`` or of the segment holds back
    (:func:`segment_pipeline.core.privacy.filters.sendable_memberships`). The
    text equals ``to_json(list_sort(list_distinct(<names>)))`` of the email's synced segments.
    """
    if not synced:
        return "SELECT NULL::VARCHAR AS email, NULL::VARCHAR AS segments LIMIT 0", []
    items = sorted(synced.items())
    # segment i sets bit i % 64 of word i // 64 (positions are ours, never user data)
    values = ", ".join(f"(?, ?, {i // WORD_BITS}, {i % WORD_BITS})" for i in range(len(items)))
    params: list[object] = [x for pair in items for x in pair]
    words = [f"w{k}" for k in range((len(items) + WORD_BITS - 1) // WORD_BITS)]
    fold = ", ".join(
        f"bit_or(CASE WHEN s.word = {k} THEN 1::UBIGINT << s.bit ELSE 0::UBIGINT END) AS {w}"
        for k, w in enumerate(words))
    pick = "CASE s.word " + " ".join(f"WHEN {k} THEN k.{w}" for k, w in enumerate(words)) + " END"
    cols = ", ".join(words)
    sql = f"""
        WITH seg(segment_id, segment_name, word, bit) AS (VALUES {values}),
        g AS MATERIALIZED (
            SELECT m.email AS email, {fold}
            FROM {sendable_memberships(warehouse, days=[day], destination=destination)} AS m
            JOIN seg AS s ON s.segment_id = m.segment_id
            WHERE m.email IS NOT NULL AND m.email <> ''
            GROUP BY m.email),
        t AS (
            SELECT {", ".join(f"k.{w}" for w in words)},
                   to_json(list_sort(list_distinct(list(s.segment_name))))::VARCHAR AS segments
            FROM (SELECT DISTINCT {cols} FROM g) AS k
            JOIN seg AS s ON (({pick}) >> s.bit) & 1::UBIGINT = 1::UBIGINT
            GROUP BY {", ".join(f"k.{w}" for w in words)})
        SELECT g.email AS email, t.segments AS segments FROM g JOIN t USING ({cols})
    """
    return sql, params
