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

Late links. A record of day D whose ids are linked to nothing as of D is resolved against the
links that landed on **later** days present in the warehouse when D is (re-)run: per id, the
**earliest** later link (the first day after D that linked it; :func:`later_links_sql`). The
earliest, not the latest, because it is the identity closest in time to the record, and because it
stays put as history grows: a day re-run now and again after more days landed gets the same
attribution (the later landing of yet another link for that id changes nothing), so a re-run with
the same warehouse writes the same bytes and a day needs re-running once, when its first link
lands. A link known as of D always wins over a later one. The cost is one read of the later days'
``identity_links`` partitions (small: one row per id linked that day), only when some record of the
day is still unresolved, filtered to those ids.

Knowing what to re-run. When day E's profiles give links, :func:`resolves_earlier_days` looks up the
earlier days whose quarantine still holds ``unresolved identity`` rows for those ids (the id the
quarantine reason names) and counts them per day; the raw asset records them as metadata
(``resolves_earlier_days``) and the ``late_links_sensor`` re-runs those days and the later ones.

Storage. ``identity_links/date=D`` holds the links given by the valid records of landing day D
(``link, value, email, linked_at, linked_on, source_file, source_line``; the latest per id within the
day), written when profiles of D are ingested: a day costs only its own records, whatever the
history. The links known at the end of day D are the latest per id over the partitions up to D
(:func:`links_as_of`), read only when some record of the day carries a linked id without an email.
Events of D read them after profiles of D (the raw events asset depends on raw profiles of the same
day). A link that lands later in a day's folder attributes that day's and later days' records once
those days are re-run: the landing sensor re-runs every later day when an older day changes.
"""

from __future__ import annotations

import datetime as dt

import duckdb

from segment_pipeline.core.warehouse import Warehouse, as_date
from segment_pipeline.core.warehouse import sql_ident as _ident
from segment_pipeline.core.warehouse import sql_string as _lit

TABLE = "identity_links"
#: Prefix of the quarantine reason of a record whose linked id is linked to no email.
UNRESOLVED = "unresolved identity"


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


def late_link_sql(n: int) -> str:
    """SQL: the landing day of the link that resolved a row (the first of ``_l0`` .. ``_l{n-1}`` of
    :func:`resolution_sql` with an email), NULL when none did."""
    return "CASE " + " ".join(f"WHEN _l{i}.email IS NOT NULL THEN _l{i}.linked_on" for i in range(n)) + " END"


def write_links(con: duckdb.DuckDBPyConnection, warehouse: Warehouse, day: dt.date, select_sql: str) -> int:
    """Publish the links given on ``day`` (atomically, like every partition)."""
    return warehouse.write_partition(con, TABLE, day, select_sql)


def later_links_sql(warehouse: Warehouse, day: str | dt.date, wanted: str, known: str) -> str | None:
    """SQL: for the ids of ``wanted`` (rows ``link, value``) that ``known`` (the links as of ``day``)
    lacks, the earliest link that landed on a day after ``day`` (the ``identity_links`` columns); None
    when no later day has links. The earliest: it stays the same as later days land (module doc)."""
    day = as_date(day)
    later = [d for d in warehouse.partition_dates(TABLE) if d > day]
    if not later:
        return None
    cols = ", ".join(_ident(c) for c in warehouse.schema(TABLE))
    order = "(linked_on, linked_at, source_file, source_line)"
    return f"""
        SELECT link, value, r.email AS email, r.linked_at AS linked_at, r.linked_on AS linked_on,
               r.source_file AS source_file, r.source_line AS source_line
        FROM (SELECT link, value, min_by({_RECORD}, {order}) AS r
              FROM (SELECT {cols} FROM {warehouse.scan(TABLE, days=later)}) l
              WHERE (link, value) IN (SELECT (link, value) FROM {wanted})
                AND (link, value) NOT IN (SELECT (link, value) FROM {known})
              GROUP BY link, value)
    """


def wanted_ids_sql(staged: str, links: tuple[str, ...]) -> str:
    """SQL: the distinct ``(link, value)`` of the valid records of ``staged`` without an email."""
    return "(SELECT DISTINCT link, value FROM (" + " UNION ALL ".join(
        f"SELECT {_lit(link)} AS link, {_ident(link)} AS value FROM {staged} "
        f"WHERE reason IS NULL AND email IS NULL AND {_ident(link)} IS NOT NULL"
        for link in links
    ) + "))"


#: The ``(link, value)`` an ``unresolved identity`` quarantine reason names (:func:`resolution_sql`).
_REASON_RE = f"^{UNRESOLVED}: (\\S+) '(.*)' is linked to no email$"


def resolves_earlier_days(con: duckdb.DuckDBPyConnection, warehouse: Warehouse, day: str | dt.date,
                          before: str | dt.date | None = None) -> dict[str, int]:
    """Earlier days a re-run would now attribute: ``{YYYY-MM-DD: rows}`` of the days before ``day``
    (and before ``before``, the first day of the run: days of the same run are re-run by it anyway)
    whose ``quarantine_profiles`` / ``quarantine_events`` hold ``unresolved identity`` rows for an id
    the links of ``day`` (its ``identity_links`` partition) link; ascending, empty when none.

    The id is the one the quarantine reason names (the first linked id the record carried): a record
    carrying several ids, the first of them still unlinked, is not found by a link of another one.
    Cost: the ``reason`` column of the earlier days' quarantine (column-pruned), read only when the
    day gave links."""
    day = as_date(day)
    limit = min(day, as_date(before)) if before is not None else day
    if not warehouse.has_partition(TABLE, day) or not con.execute(
            f"SELECT count(*) FROM {warehouse.scan(TABLE, days=[day])}").fetchall()[0][0]:
        return {}  # the day linked no id
    found: dict[str, int] = {}
    for kind in ("profiles", "events"):
        days = [d for d in warehouse.partition_dates(f"quarantine_{kind}") if d < limit]
        if not days:
            continue
        for d, n in con.execute(f"""
            SELECT q.date, count(*) FROM (
                SELECT date, regexp_extract(reason, {_lit(_REASON_RE)}, ['link', 'value']) AS id
                FROM {warehouse.scan(f"quarantine_{kind}", days=days)}
                WHERE starts_with(reason, {_lit(UNRESOLVED + ': ')})) q
            SEMI JOIN (SELECT link, value FROM {warehouse.scan(TABLE, days=[day])}) l
              ON l.link = q.id.link AND l.value = q.id.value
            GROUP BY ALL
        """).fetchall():
            found[d.isoformat()] = found.get(d.isoformat(), 0) + n
    return dict(sorted(found.items()))
