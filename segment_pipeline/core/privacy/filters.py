"""The one privacy filter every output reads members through: suppression lists and consent gates.

:func:`sendable_memberships` is ``memberships`` (same columns, ``date`` included) without

* rows whose email is on a suppression list in force (:func:`~segment_pipeline.core.privacy.suppression.keep_email_sql`),
* rows of a segment with a consent gate whose identity's consent attribute is not true that day,
* with ``destination``: rows whose identity's consent attribute for that destination is not true.

The daily feed (:mod:`segment_pipeline.core.exports.daily_feed`), per-segment exports (asset and
API), CSV range exports, Google Customer Match files and every destination's desired state
(:mod:`segment_pipeline.core.sync.desired`) use it, so a suppressed address or a contact without
consent appears in none of them. The feed also leaves suppressed identities out entirely
(:func:`keep_email_sql` on ``profiles``). :func:`privacy_counts` gives what was held back, for run metadata.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from pathlib import Path

import duckdb

from segment_pipeline.core.privacy.config import PrivacyConfig, current_privacy
from segment_pipeline.core.privacy.suppression import current_path, keep_email_sql, suppressed_counts
from segment_pipeline.core.warehouse import Warehouse, sql_ident, sql_string


def _config(warehouse: Warehouse, config: PrivacyConfig | None) -> PrivacyConfig:
    cfg = config if config is not None else current_privacy()
    if cfg.consent.destinations or cfg.consent.segments:
        cfg.check_model(warehouse.model)
    return cfg


def consent_condition(config: PrivacyConfig, destination: str | None, alias: str = "p",
                      segment_column: str = "m.segment_id") -> str | None:
    """SQL condition on a ``profiles`` row ``alias`` (and the membership's segment) that the consent
    gates let through, or None when no gate applies."""
    conds = []
    attr = config.consent_for_destination(destination) if destination else None
    if attr:
        conds.append(f"{alias}.{sql_ident(attr)} IS TRUE")
    if config.consent.segments:
        whens = " ".join(f"WHEN {sql_string(seg)} THEN {alias}.{sql_ident(a)} IS TRUE"
                         for seg, a in sorted(config.consent.segments.items()))
        conds.append(f"(CASE {segment_column} {whens} ELSE TRUE END)")
    return " AND ".join(conds) if conds else None


def sendable_memberships(warehouse: Warehouse, *, days: Iterable[str | dt.date] | None = None,
                         since: str | dt.date | None = None, upto: str | dt.date | None = None,
                         destination: str | None = None, config: PrivacyConfig | None = None) -> str:
    """A SQL relation: ``warehouse.scan('memberships', ...)`` minus what must not be sent (module doc).

    Raises :class:`~segment_pipeline.core.privacy.config.PrivacyFileError` when a consent
    attribute is not a boolean attribute of the model.
    """
    cfg = _config(warehouse, config)
    kw = {"days": list(days) if days is not None else None, "since": since, "upto": upto}
    memberships = warehouse.scan("memberships", **kw)
    keep = keep_email_sql(warehouse, "m.email")
    consent = consent_condition(cfg, destination)
    if consent is None:
        return memberships if keep == "TRUE" else f"(SELECT m.* FROM {memberships} AS m WHERE {keep})"
    attrs = sorted({a for a in [cfg.consent_for_destination(destination or ""), *cfg.consent.segments.values()] if a})
    cols = ", ".join(sql_ident(a) for a in attrs)
    profiles = warehouse.scan("profiles", **kw)
    return (f"(SELECT m.* FROM {memberships} AS m LEFT JOIN (SELECT identity_id, date, {cols} FROM {profiles}) AS p "
            f"ON p.identity_id = m.identity_id AND p.date = m.date WHERE {keep} AND {consent})")


def privacy_fingerprint(warehouse: Warehouse) -> str:
    """Text that changes when the suppression load in force or the privacy file changes (for caches
    of filtered data, e.g. the API's identity index)."""
    from segment_pipeline import settings

    parts = []
    for path in (current_path(warehouse), Path(settings.privacy_file())):
        if path is not None and path.is_file():  # "none" (os.devnull) is no file
            st = path.stat()
            parts.append(f"{path}|{st.st_size}|{st.st_mtime_ns}")
    return "\n".join(parts)


def privacy_counts(con: duckdb.DuckDBPyConnection, warehouse: Warehouse, *, days: Iterable[str | dt.date],
                   segment_ids: Iterable[str] | None = None, destination: str | None = None,
                   config: PrivacyConfig | None = None) -> dict[str, object]:
    """What the filter held back among the memberships of ``days`` (of ``segment_ids`` when given):
    ``suppressed`` (per list: distinct emails) and ``consent_withheld`` (distinct identities that
    were members but were not sent for want of consent). Empty dict when nothing is declared."""
    cfg = _config(warehouse, config)
    days = list(days)
    where = ""
    if segment_ids is not None:
        ids = sorted(set(segment_ids))
        where = "WHERE segment_id IN (" + (", ".join(sql_string(s) for s in ids) or "NULL") + ")"
    members = f"(SELECT * FROM {warehouse.scan('memberships', days=days)} {where})"
    out: dict[str, object] = {}
    suppressed = suppressed_counts(con, warehouse, f"SELECT email FROM {members}")
    if suppressed:
        out["suppressed"] = suppressed
    consent = consent_condition(cfg, destination)
    if consent is not None:
        profiles = warehouse.scan("profiles", days=days)
        n = con.execute(
            f"""SELECT count(DISTINCT m.identity_id) FROM {members} AS m
                LEFT JOIN {profiles} AS p ON p.identity_id = m.identity_id AND p.date = m.date
                WHERE {keep_email_sql(warehouse, 'm.email')}
                  AND NOT coalesce(({consent}), FALSE)""").fetchall()[0][0]
        out["consent_withheld"] = int(n)
    return out
