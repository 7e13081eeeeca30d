"""Tombstones at ingestion: landing rows of a forgotten identity are quarantined, never ingested.

A row is a *deleted identity* when its email (after identity-link resolution, so a record that
carries only a linked id resolving to a tombstoned email counts too) hashes to a tombstone of the
ledger (:meth:`~segment_pipeline.core.privacy.ledger.Ledger.tombstone_sql`), or when a rejected
row's original text holds an address (any case) that does. Such a row goes to the quarantine with
the reason :data:`DELETED_IDENTITY` and, instead of its text, only ``{"email_sha256": "<hex>"}``;
it is counted like every quarantined row (``reasons`` of the ingestion report).

The identity links such a record gives are written with the email ``sha256:<hex>`` instead of the
address, so that later records carrying only the linked id (an order with a customer number) are
recognised as the deleted identity too, on that day and later days. A link of that form always
resolves to a deleted identity, even once the tombstone is lifted: re-run the days whose profiles
gave it (after lifting) to link the id to the address again. (So ``identity_links`` keeps the
linked id of a forgotten person whose records keep arriving, with the hash: what the tombstone
needs to recognise them.)

Without a ledger (no deletion request ever) :func:`tombstone_filter` returns None and ingestion
runs exactly as before.
"""

from __future__ import annotations

from dataclasses import dataclass

import duckdb

from segment_pipeline.core.privacy.ledger import PRIVACY_DIR, TOMBSTONES_FILE, Ledger
from segment_pipeline.core.privacy.scrub import LINK_MARKER, Targets
from segment_pipeline.core.warehouse import Warehouse

DELETED_IDENTITY = "deleted identity"
TABLE = "tombstones_now"


@dataclass(frozen=True)
class TombstoneFilter:
    """SQL expressions over the temp table :data:`TABLE` (loaded by :func:`tombstone_filter`)."""

    table: str = TABLE
    #: no unlifted tombstone: only links marked ``sha256:`` are deleted identities (no hashing per row)
    empty: bool = False

    def _raw_hashes(self, raw: str) -> str:
        return (f"list_intersect(list_transform({Targets.tokens_sql(raw)}, lambda x: sha256(rtrim(x, '.'))), "
                f"(SELECT list(email_sha256) FROM {self.table}))")

    def _email_hash(self, email: str) -> str:
        known = f"(SELECT email_sha256 FROM {self.table})"
        hashed = "" if self.empty else f"WHEN sha256(lower({email})) IN {known} THEN sha256(lower({email})) "
        return (f"CASE WHEN {email} IS NULL THEN NULL "
                f"WHEN starts_with({email}, '{LINK_MARKER}') THEN substr({email}, {len(LINK_MARKER) + 1}) "
                f"{hashed}END")

    def link_email(self, email: str) -> str:
        """SQL: the email an identity link keeps: a deleted identity's becomes ``sha256:<hex>``."""
        return f"CASE WHEN {self.deleted(email)} THEN '{LINK_MARKER}' || {self._email_hash(email)} ELSE {email} END"

    def deleted(self, email: str, raw: str | None = None) -> str:
        """SQL boolean: the row (its resolved ``email``, its rejected ``raw`` text) is a deleted identity."""
        cond = f"({self._email_hash(email)} IS NOT NULL"
        if raw is not None and not self.empty:
            cond += f" OR ({raw} IS NOT NULL AND len({self._raw_hashes(raw)}) > 0)"
        return cond + ")"

    def kept_raw(self, email: str, raw: str | None = None) -> str:
        """SQL VARCHAR: what the quarantine keeps of a deleted identity's row (the hash only)."""
        digest = self._email_hash(email)
        if raw is not None and not self.empty:
            digest = f"coalesce({digest}, {self._raw_hashes(raw)}[1])"
        return f"to_json({{'email_sha256': {digest}}})::VARCHAR"


def tombstone_filter(con: duckdb.DuckDBPyConnection, warehouse: Warehouse) -> TombstoneFilter | None:
    """Load the unlifted tombstones into the temp table :data:`TABLE` of ``con``; None when there
    are none (no ledger was ever written: nothing is opened)."""
    if not (warehouse.root / PRIVACY_DIR / TOMBSTONES_FILE).exists():
        return None
    con.execute(f"CREATE OR REPLACE TEMP TABLE {TABLE} AS {Ledger(warehouse.root).tombstone_sql()}")
    return TombstoneFilter(empty=not con.execute(f"SELECT count(*) FROM {TABLE}").fetchall()[0][0])
