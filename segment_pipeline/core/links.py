"""Identity links: external ids (``model.identity.links``, e.g. ``customer_id`` or a Segment
``userId``) linked to the primary identity, the normalized email.

Rule. Every valid profile (or ``identify``) record that carries both an email and a linked id links
that id to that email. A record without an email but with a linked id is attributed to the email
the id is linked to **as of the end of its landing day** (links of every day up to and including
it); one with no linked id known is quarantined as ``unresolved identity: <link> '<id>' is linked
to no email`` (counted in the report). When an id is linked to different emails, the latest link
wins: the record with the latest record time (``updated_at``), then the later landing day, then the
later file and line. With several links declared, the first one (in the model's order) the record
carries that resolves wins.

Storage. ``identity_links/date=D`` holds the links given by the valid records of landing day D
(``link, value, email, linked_at, linked_on, source_file, source_line``; the latest per id within the
day), written when profiles of D are ingested: a day costs only its own records, whatever the
history. The links known at the end of day D are the latest per id over the partitions up to D
(:func:`links_as_of`), read only when some record of the day carries a linked id without an email.
Events of D read them after profiles of D (the raw events asset depends on raw profiles of the same
day). A link that lands later in a day's folder attributes that day's and later days' records once
those days are re-run: the landing sensor re-runs every later day when an older day changes, and
``segment-pipeline backfill`` re-runs any range. A link landing on a later day does not rewrite
earlier days.
"""

from __future__ import annotations

import datetime as dt

import duckdb

from segment_pipeline.core.warehouse import Warehouse, as_date

TABLE = "identity_links"
#: Prefix of the quarantine reason of a record whose linked id is linked to no email.
UNRESOLVED = "unresolved identity"


def _lit(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


_ORDER = "(linked_at, linked_on, source_file, source_line)"
_RECORD = ("{'email': email, 'linked_at': linked_at, 'linked_on': linked_on, "
           "'source_file': source_file, 'source_line': source_line}")


def _latest(relation: str) -> str:
    """SQL: per (link, value) of ``relation``, the latest link (:data:`_ORDER`)."""
    return f"""
        SELECT link, value, r.email AS email, r.linked_at AS linked_at, r.linked_on AS linked_on,
               r.source_file AS source_file, r.source_line AS source_line
        FROM (SELECT link, value, max_by({_RECORD}, {_ORDER}) AS r FROM {relation} GROUP BY link, value)
    """


def links_as_of(warehouse: Warehouse, day: str | dt.date, *, before: bool = False) -> str:
    """SQL relation of the links known at the end of ``day`` (``before``: of the day before):
    the latest per id over the ``identity_links`` partitions up to it; empty when there are none."""
    day = as_date(day)
    days = [d for d in warehouse.partition_dates(TABLE) if (d < day if before else d <= day)]
    cols = ", ".join(_ident(c) for c in warehouse.schema(TABLE))
    if not days:
        return f"(SELECT {cols} FROM {warehouse.empty_relation(TABLE)})"
    return f"({_latest(f'(SELECT {cols} FROM {warehouse.scan(TABLE, days=days)})')})"


def day_links_sql(day: dt.date, staged: str, links: tuple[str, ...]) -> str:
    """SQL: the links the valid records of ``staged`` give (rows with ``reason``, ``email``,
    ``updated_at``, ``source_file``, ``source_line`` and the link columns), the latest per id."""
    new = " UNION ALL ".join(
        f"SELECT {_lit(link)} AS link, {_ident(link)} AS value, email, updated_at AS linked_at, "
        f"DATE '{day.isoformat()}' AS linked_on, source_file, source_line "
        f"FROM {staged} WHERE reason IS NULL AND email IS NOT NULL AND {_ident(link)} IS NOT NULL"
        for link in links
    )
    return _latest(f"({new})")


def links_with_day(warehouse: Warehouse, day: dt.date, day_links: str) -> str:
    """SQL: the links known at the end of ``day``: those of the days before and ``day_links``."""
    cols = ", ".join(_ident(c) for c in warehouse.schema(TABLE))
    return _latest(f"(SELECT {cols} FROM {links_as_of(warehouse, day, before=True)} "
                   f"UNION ALL SELECT {cols} FROM {day_links})")


def resolution_sql(alias: str, table: str, links: tuple[str, ...]) -> tuple[str, str, str, str]:
    """(joins, resolved email, unresolved condition, reason) for rows ``alias`` with an ``email``
    column (NULL when the record had none) and the link columns, against links ``table``."""
    joins = "".join(
        f" LEFT JOIN {table} _l{i} ON _l{i}.link = {_lit(link)} AND _l{i}.value = {alias}.{_ident(link)}"
        for i, link in enumerate(links)
    )
    email = f"coalesce({alias}.email, {', '.join(f'_l{i}.email' for i in range(len(links)))})"
    unresolved = f"({alias}.reason IS NULL AND {email} IS NULL)"
    carried = ", ".join(
        f"CASE WHEN {alias}.{_ident(link)} IS NOT NULL THEN {_lit(link + ' ')} || '''' || {alias}.{_ident(link)} || '''' END"
        for link in links
    )
    reason = f"'{UNRESOLVED}: ' || coalesce({carried}, '?') || ' is linked to no email'"
    return joins, email, unresolved, reason


def write_links(con: duckdb.DuckDBPyConnection, warehouse: Warehouse, day: dt.date, select_sql: str) -> int:
    """Publish the links given on ``day`` (atomically, like every partition)."""
    return warehouse.write_partition(con, TABLE, day, select_sql)
