"""The warehouse: Parquet tables, hive-partitioned by day, under one root folder.

Layout (``<root>/<table>/date=YYYY-MM-DD/data.parquet``)::

    raw_profiles/         validated profile rows as they landed that day
    raw_events/           validated event rows as they landed that day
    quarantine_profiles/  rejected profile rows with reason, source file and line
    quarantine_events/    rejected event rows with reason, source file and line
    profiles/             one row per resolved identity, as of the end of that day
    memberships/          one row per (date, segment, identity)
    membership_changes/   day-over-day changes: one row per (date, segment, identity, change)
    segment_stats/        one row per (date, segment): status, member count, added, removed

Every partition is one Parquet file, written to a temporary name and renamed into place, so a
reader sees either the old partition or the new one, never half of one, and re-running a day
replaces it instead of appending. ``SCHEMAS`` is the contract between stages: the columns each
table has, used to give readers an empty relation of the right shape when nothing exists yet.
"""

from __future__ import annotations

import datetime as dt
import os
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path

import duckdb

from segment_pipeline.core.atomic import atomic_path

PARTITION_FILE = "data.parquet"

SCHEMAS: dict[str, dict[str, str]] = {
    "raw_profiles": {
        "email": "VARCHAR",  # normalized (core/identity.py): stripped, lowercased
        "email_raw": "VARCHAR",
        "customer_id": "VARCHAR",
        "first_name": "VARCHAR",
        "last_name": "VARCHAR",
        "gender": "VARCHAR",
        "dob": "DATE",
        "phone": "VARCHAR",
        "country": "VARCHAR",
        "city": "VARCHAR",
        "language": "VARCHAR",
        "time_zone": "VARCHAR",
        "loyalty_tier": "VARCHAR",
        "created_at": "TIMESTAMP",
        "updated_at": "TIMESTAMP",
        "cleared": "VARCHAR[]",  # attributes this record explicitly clears (NULL: none)
        "source_file": "VARCHAR",
        "source_line": "BIGINT",
    },
    "raw_events": {
        "event_id": "VARCHAR",
        "email": "VARCHAR",  # normalized
        "event_type": "VARCHAR",
        "occurred_at": "TIMESTAMP",
        "product_id": "VARCHAR",
        "product_name": "VARCHAR",
        "brand": "VARCHAR",
        "category": "VARCHAR",
        "price": "DECIMAL(18,2)",  # money is exact: sums do not depend on evaluation order
        "quantity": "INTEGER",
        "revenue": "DECIMAL(18,2)",
        "order_id": "VARCHAR",
        "utm_source": "VARCHAR",
        "utm_medium": "VARCHAR",
        "utm_campaign": "VARCHAR",
        "source_file": "VARCHAR",
        "source_line": "BIGINT",
    },
    "quarantine_profiles": {
        "source_file": "VARCHAR",
        "source_line": "BIGINT",
        "reason": "VARCHAR",
        "raw": "VARCHAR",
    },
    "quarantine_events": {
        "source_file": "VARCHAR",
        "source_line": "BIGINT",
        "reason": "VARCHAR",
        "raw": "VARCHAR",
    },
    "profiles": {
        "identity_id": "VARCHAR",  # first 16 hex chars of md5(normalized email)
        "email": "VARCHAR",
        "customer_id": "VARCHAR",
        "first_name": "VARCHAR",
        "last_name": "VARCHAR",
        "gender": "VARCHAR",
        "dob": "DATE",
        "phone": "VARCHAR",
        "country": "VARCHAR",
        "city": "VARCHAR",
        "language": "VARCHAR",
        "time_zone": "VARCHAR",
        "loyalty_tier": "VARCHAR",
        "created_at": "TIMESTAMP",
        "updated_at": "TIMESTAMP",
        "first_seen_at": "TIMESTAMP",
        "last_seen_at": "TIMESTAMP",
        "order_count": "BIGINT",
        "total_revenue": "DECIMAL(18,2)",
        "first_order_at": "TIMESTAMP",
        "last_order_at": "TIMESTAMP",
        "days_since_last_order": "INTEGER",
        "event_count_30d": "BIGINT",
        "order_count_30d": "BIGINT",
        "revenue_30d": "DECIMAL(18,2)",
        "brand_interactions_90d": "BIGINT",
        "category_interactions_90d": "BIGINT",
        "top_brand_90d": "VARCHAR",
        "top_brand_share_90d": "DOUBLE",
        "top_category_90d": "VARCHAR",
        "top_category_share_90d": "DOUBLE",
        "first_utm_source": "VARCHAR",
        "random_bucket": "INTEGER",
    },
    "memberships": {
        "segment_id": "VARCHAR",
        "identity_id": "VARCHAR",
        "email": "VARCHAR",
    },
    "membership_changes": {
        "segment_id": "VARCHAR",
        "identity_id": "VARCHAR",
        "email": "VARCHAR",
        "change": "VARCHAR",  # 'added' | 'removed'
    },
    "segment_stats": {
        "segment_id": "VARCHAR",
        "segment_name": "VARCHAR",
        "segment_type": "VARCHAR",
        "status": "VARCHAR",  # 'refreshed' | 'frozen' | 'skipped'
        "frozen_on": "DATE",
        "member_count": "BIGINT",
        "added": "BIGINT",
        "removed": "BIGINT",
    },
}


def as_date(value: str | dt.date) -> dt.date:
    if isinstance(value, dt.datetime):
        return value.date()
    if isinstance(value, dt.date):
        return value
    return dt.date.fromisoformat(value)


def sql_string(value: str) -> str:
    """Quote a string as a SQL literal (for file paths, which DuckDB table functions need inline)."""
    return "'" + value.replace("'", "''") + "'"


class Warehouse:
    """Paths and readers/writers for the day-partitioned Parquet tables under ``root``."""

    def __init__(self, root: str | os.PathLike[str]):
        self.root = Path(root).absolute()

    def __repr__(self) -> str:
        return f"Warehouse({str(self.root)!r})"

    # -- paths ---------------------------------------------------------------------------
    def table_dir(self, table: str) -> Path:
        if table not in SCHEMAS:
            raise KeyError(f"unknown warehouse table {table!r}; known: {sorted(SCHEMAS)}")
        return self.root / table

    def partition_path(self, table: str, day: str | dt.date) -> Path:
        return self.table_dir(table) / f"date={as_date(day).isoformat()}" / PARTITION_FILE

    def has_partition(self, table: str, day: str | dt.date) -> bool:
        return self.partition_path(table, day).exists()

    def partition_dates(self, table: str) -> list[dt.date]:
        """Days for which ``table`` has a complete partition, ascending."""
        base = self.table_dir(table)
        if not base.exists():
            return []
        days = []
        for child in base.iterdir():
            if child.name.startswith("date=") and (child / PARTITION_FILE).exists():
                try:
                    days.append(dt.date.fromisoformat(child.name[5:]))
                except ValueError:
                    continue
        return sorted(days)

    # -- reading -------------------------------------------------------------------------
    def scan(
        self,
        table: str,
        *,
        days: Iterable[str | dt.date] | None = None,
        upto: str | dt.date | None = None,
        since: str | dt.date | None = None,
    ) -> str:
        """A SQL relation (for use in ``FROM``) over the selected partitions of ``table``.

        The relation has the table's columns plus ``date`` (DATE). With no partitions it is an
        empty relation of the same shape, so downstream SQL never special-cases a fresh start.
        Partitions written before a column was added read it as NULL (columns match by name).
        """
        if days is not None:
            wanted = sorted({as_date(d) for d in days})
            selected = [d for d in wanted if self.has_partition(table, d)]
        else:
            selected = self.partition_dates(table)
            if upto is not None:
                selected = [d for d in selected if d <= as_date(upto)]
            if since is not None:
                selected = [d for d in selected if d >= as_date(since)]
        if not selected:
            return self.empty_relation(table)
        files = ", ".join(sql_string(str(self.partition_path(table, d))) for d in selected)
        return f"read_parquet([{files}], hive_partitioning = true, hive_types = {{'date': 'DATE'}}, union_by_name = true)"

    @staticmethod
    def empty_relation(table: str) -> str:
        cols = ", ".join(f"NULL::{typ} AS {name}" for name, typ in SCHEMAS[table].items())
        return f"(SELECT {cols}, NULL::DATE AS date LIMIT 0)"

    # -- writing -------------------------------------------------------------------------
    def write_partition(
        self,
        con: duckdb.DuckDBPyConnection,
        table: str,
        day: str | dt.date,
        select_sql: str,
        params: Sequence[object] | dict[str, object] | None = None,
    ) -> int:
        """Write ``select_sql`` as the partition ``table/date=day``, atomically; return row count.

        The query's columns must be exactly the table's schema (checked), in any order; they are
        written in schema order with the schema's types.
        """
        target = self.partition_path(table, day)
        schema = SCHEMAS[table]
        rel_cols = [d[0] for d in con.execute(f"DESCRIBE {select_sql}", params).fetchall()]
        if sorted(rel_cols) != sorted(schema):
            missing = sorted(set(schema) - set(rel_cols))
            extra = sorted(set(rel_cols) - set(schema))
            raise ValueError(f"{table}: query columns do not match the schema (missing {missing}, extra {extra})")
        projection = ", ".join(f"CAST({_ident(c)} AS {t}) AS {_ident(c)}" for c, t in schema.items())
        with atomic_path(target) as tmp:
            con.execute(
                f"COPY (SELECT {projection} FROM ({select_sql})) TO {sql_string(str(tmp))} "
                "(FORMAT parquet, COMPRESSION zstd, ROW_GROUP_SIZE 122880)",
                params,
            )
        return con.execute(
            f"SELECT count(*) FROM read_parquet({sql_string(str(target))})"
        ).fetchall()[0][0]

    def delete_partition(self, table: str, day: str | dt.date) -> None:
        path = self.partition_path(table, day)
        if path.exists():
            path.unlink()


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def connect(
    memory_limit: str | None = None, threads: int | None = None, preserve_order: bool = False
) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection for streaming work over the warehouse.

    ``memory_limit`` defaults to ``SEGMENT_PIPELINE_DUCKDB_MEMORY`` (else 3GB): beyond it DuckDB
    spills to a temporary folder, so peak memory stays bounded whatever the data size.
    ``preserve_order`` keeps rows in source order (needed where line numbers are derived from
    position); without it DuckDB may reorder freely, which streams larger-than-memory work better.
    """
    con = duckdb.connect(config={"preserve_insertion_order": preserve_order})
    limit = memory_limit or os.environ.get("SEGMENT_PIPELINE_DUCKDB_MEMORY") or "3GB"
    con.execute(f"SET memory_limit = {sql_string(limit)}")
    spill = Path(tempfile.gettempdir()) / "segment_pipeline_duckdb"
    spill.mkdir(parents=True, exist_ok=True)
    con.execute(f"SET temp_directory = {sql_string(str(spill))}")
    con.execute("SET TimeZone = 'UTC'")
    con.execute("SET enable_progress_bar = false")
    if threads:
        con.execute(f"SET threads = {int(threads)}")
    return con
