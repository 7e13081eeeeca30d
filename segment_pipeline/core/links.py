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

Storage. ``identity_links/date=D`` (one partition per landing day) holds every link known at the
end of day D: ``link, value, email, linked_at, linked_on, source_file, source_line``. It is built
incrementally from the latest earlier partition plus day D's profile records, when profiles of D
are ingested; events of D read it (the raw events asset depends on raw profiles of the same day).
A link that arrives later attributes earlier events once those days are re-run: the landing
sensor re-runs every later day when an older day changes, and ``segment-pipeline backfill`` re-runs
any range.
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


def links_as_of(warehouse: Warehouse, day: str | dt.date, *, before: bool = False) -> str:
    """SQL relation of the links known at the end of ``day`` (``before``: of the day before):
    the latest ``identity_links`` partition on or before it; empty when there is none."""
    day = as_date(day)
    days = [d for d in warehouse.partition_dates(TABLE) if (d < day if before else d <= day)]
    cols = ", ".join(_ident(c) for c in warehouse.schema(TABLE))
    if not days:
        return f"(SELECT {cols} FROM {warehouse.empty_relation(TABLE)})"
    return f"(SELECT {cols} FROM {warehouse.scan(TABLE, days=[days[-1]])})"


def day_links_sql(warehouse: Warehouse, day: dt.date, staged: str, links: tuple[str, ...]) -> str:
    """SQL: the links at the end of ``day``: those of the day before and the valid records of
    ``staged`` (rows with ``reason``, ``email``, ``updated_at``, the link columns), latest wins."""
    new = " UNION ALL ".join(
        f"SELECT {_lit(link)} AS link, {_ident(link)} AS value, email, updated_at AS linked_at, "
        f"DATE '{day.isoformat()}' AS linked_on, source_file, source_line "
        f"FROM {staged} WHERE reason IS NULL AND email IS NOT NULL AND {_ident(link)} IS NOT NULL"
        for link in links
    )
    return f"""
        SELECT link, value, r.email AS email, r.linked_at AS linked_at, r.linked_on AS linked_on,
               r.source_file AS source_file, r.source_line AS source_line
        FROM (
            SELECT link, value,
                   max_by({{'email': email, 'linked_at': linked_at, 'linked_on': linked_on,
                            'source_file': source_file, 'source_line': source_line}},
                          (linked_at, linked_on, source_file, source_line)) AS r
            FROM (SELECT * FROM {links_as_of(warehouse, day, before=True)} UNION ALL {new})
            GROUP BY link, value
        )
    """


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
    """Publish the links at the end of ``day`` (atomically, like every partition)."""
    return warehouse.write_partition(con, TABLE, day, select_sql)
