"""The warehouse: Parquet tables, hive-partitioned by day, under one root folder.

Layout (``<root>/<table>/date=YYYY-MM-DD/data.parquet``)::

    raw_profiles/         validated profile rows as they landed that day
    raw_events/           validated event rows as they landed that day
    quarantine_profiles/  rejected profile rows with reason, source file and line
    quarantine_events/    rejected event rows with reason, source file and line
    identity_links/       external ids linked to emails by that day's profile records
    profiles/             one row per resolved identity, as of the end of that day
    memberships/          one row per (date, segment, identity)
    membership_changes/   day-over-day changes: one row per (date, segment, identity, change)
    segment_stats/        one row per (date, segment): status, member count, added, removed
    event_rollups/        per (identity, occurred day): trait partials of the events visible that day
    pending_events/       events landed by that day that occur after it (carried to their day)
    profile_state/        one row per identity: latest-wins fields with order keys, trait partials
    segment_rollups/, segment_pending/, segment_state/   the same for the segments' event rules
                          (the incremental state: core/incremental.py, docs/incremental.md)

Every partition is one Parquet file, written to a temporary name and renamed into place, so a
reader sees either the old partition or the new one, never half of one, and re-running a day
replaces it instead of appending. :meth:`Warehouse.schema` is the contract between stages: the
columns each table has (``SCHEMAS`` for the fixed tables; for ``raw_profiles``, ``raw_events`` and
``profiles`` the declared data model's, :mod:`segment_pipeline.core.model`), also used to give
readers an empty relation of the right shape when nothing exists yet.

**Byte-identical re-runs.** Rows are written in the order of ``SORT_KEYS`` (a key unique per row
of the table, with tie-breakers), so re-running a day with the same inputs gives the same file,
byte for byte, whatever DuckDB's thread count or the order in which its threads finished. (DuckDB
writes row groups of exactly ``ROW_GROUP_SIZE`` rows from a sorted input, and its Parquet footer
names only the DuckDB version.)

**Owner-only.** Partition files are ``0600`` and the folders the warehouse creates ``0700``
(whatever the umask), set before a file is published (:mod:`segment_pipeline.core.atomic`).
:meth:`Warehouse.sweep` removes what killed writes left behind (temporary partition files,
ingestion's ``_staging/`` files) when their writer is gone; it runs when ingestion starts, and
each partition write removes its own target's leftovers.
"""

from __future__ import annotations

import datetime as dt
import os
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path

import duckdb

from segment_pipeline.core.atomic import DIR_MODE, atomic_path, private_mkdir, sweep_owned_files, sweep_tree
from segment_pipeline.core.model import DataModel, load_model

PARTITION_FILE = "data.parquet"
ROW_GROUP_SIZE = 122880
#: Scratch files of ingestion (named with :func:`segment_pipeline.core.atomic.unique_tag`).
STAGING_DIR = "_staging"

#: The model-independent tables. ``raw_profiles``, ``raw_events`` and ``profiles`` have columns
#: derived from the declared data model (:meth:`segment_pipeline.core.model.DataModel.schemas`):
#: read a table's columns with :meth:`Warehouse.schema`.
MODEL_TABLES = ("raw_profiles", "raw_events", "profiles")
#: The incremental state of profiles and traits (:mod:`segment_pipeline.core.incremental`, which
#: writes and reads them with their own model-derived columns; ``docs/incremental.md``).
STATE_TABLES = ("event_rollups", "pending_events", "profile_state", "segment_rollups", "segment_pending", "segment_state")
#: Tables of the suppression lists (``core/privacy/suppression.py``: hashes only, and the rejected entries).
PRIVACY_TABLES = ("suppression", "quarantine_suppression")
SCHEMAS: dict[str, dict[str, str]] = {
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
    "identity_links": {  # the links each day's profile records give (core/links.py)
        "link": "VARCHAR",        # the identity link (model.identity.links), e.g. customer_id
        "value": "VARCHAR",       # the external id
        "email": "VARCHAR",       # the normalized email it is linked to
        "linked_at": "TIMESTAMP",  # the record time of the linking record
        "linked_on": "DATE",      # the landing day of the linking record
        "source_file": "VARCHAR",
        "source_line": "BIGINT",
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


#: Row order of each table's partition files: a unique key first, then tie-breakers, so that the
#: order (and so the bytes) never depends on how DuckDB scheduled the work.
SORT_KEYS: dict[str, tuple[str, ...]] = {
    "raw_profiles": ("source_file", "source_line", "email", "updated_at"),  # model tables: built-in keys
    "raw_events": ("source_file", "source_line", "event_id"),
    "quarantine_profiles": ("source_file", "source_line", "reason", "raw"),
    "quarantine_events": ("source_file", "source_line", "reason", "raw"),
    "profiles": ("identity_id", "email"),
    "identity_links": ("link", "value"),
    "memberships": ("segment_id", "identity_id", "email"),
    "membership_changes": ("segment_id", "change", "identity_id", "email"),
    "segment_stats": ("segment_id", "status"),
}
assert set(SORT_KEYS) == set(SCHEMAS) | set(MODEL_TABLES)
assert all(set(k) <= set(SCHEMAS[t]) for t, k in SORT_KEYS.items() if t in SCHEMAS)


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
    """Paths and readers/writers for the day-partitioned Parquet tables under ``root``.

    ``model`` is the declared data model the model-dependent tables follow (``MODEL_TABLES``); by
    default the model file of the settings (``SEGMENT_PIPELINE_MODEL``), read when first needed.
    """

    def __init__(self, root: str | os.PathLike[str], model: DataModel | None = None):
        self.root = Path(root).absolute()
        self._model = model

    @property
    def model(self) -> DataModel:
        if self._model is None:
            from segment_pipeline import settings

            self._model = load_model(settings.model_file())
        return self._model

    def schema(self, table: str) -> dict[str, str]:
        """Column -> DuckDB type of ``table``, in column order (model tables from the model)."""
        if table in MODEL_TABLES:
            return self.model.schemas()[table]
        try:
            return SCHEMAS[table]
        except KeyError:
            raise KeyError(f"unknown warehouse table {table!r}; known: {sorted([*SCHEMAS, *MODEL_TABLES])}") from None

    def __repr__(self) -> str:
        return f"Warehouse({str(self.root)!r})"

    # -- paths ---------------------------------------------------------------------------
    def table_dir(self, table: str) -> Path:
        if table not in SCHEMAS and table not in MODEL_TABLES and table not in STATE_TABLES \
                and table not in PRIVACY_TABLES:
            raise KeyError(f"unknown warehouse table {table!r}; known: {sorted([*SCHEMAS, *MODEL_TABLES])}")
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

    def empty_relation(self, table: str) -> str:
        cols = ", ".join(f"NULL::{typ} AS {sql_ident(name)}" for name, typ in self.schema(table).items())
        return f"(SELECT {cols}, NULL::DATE AS date LIMIT 0)"

    def partitions_lacking(
        self, con: duckdb.DuckDBPyConnection, table: str, columns: Iterable[str], *, upto: str | dt.date | None = None,
        since: str | dt.date | None = None,
    ) -> dict[dt.date, list[str]]:
        """Days (``since`` .. ``upto``) whose partition of ``table`` lacks some of ``columns``, with
        the missing ones: partitions written before the data model declared those columns. Reads
        only the files' Parquet footers."""
        wanted = list(dict.fromkeys(columns))
        days = [d for d in self.partition_dates(table)
                if (upto is None or d <= as_date(upto)) and (since is None or d >= as_date(since))]
        if not wanted or not days:
            return {}
        by_file = {str(self.partition_path(table, d)): d for d in days}
        files = ", ".join(sql_string(f) for f in by_file)
        have = dict(con.execute(f"SELECT file_name, list(name) FROM parquet_schema([{files}]) GROUP BY file_name").fetchall())
        out = {}
        for path, day in by_file.items():
            missing = [c for c in wanted if c not in set(have.get(path) or [])]
            if missing:
                out[day] = missing
        return dict(sorted(out.items()))

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
        written in schema order with the schema's types, rows ordered by ``SORT_KEYS[table]``
        (NULLs first), so the file's bytes depend only on the rows. The file is ``0600``.
        """
        target = self.partition_path(table, day)
        schema = self.schema(table)
        rel_cols = [d[0] for d in con.execute(f"DESCRIBE {select_sql}", params).fetchall()]
        if sorted(rel_cols) != sorted(schema):
            missing = sorted(set(schema) - set(rel_cols))
            extra = sorted(set(rel_cols) - set(schema))
            raise ValueError(f"{table}: query columns do not match the schema (missing {missing}, extra {extra})")
        projection = ", ".join(f"CAST({sql_ident(c)} AS {t}) AS {sql_ident(c)}" for c, t in schema.items())
        order = ", ".join(f"{sql_ident(c)} ASC NULLS FIRST" for c in SORT_KEYS[table])
        with atomic_path(target) as tmp:
            con.execute(
                f"COPY (SELECT {projection} FROM ({select_sql}) ORDER BY {order}) TO {sql_string(str(tmp))} "
                f"(FORMAT parquet, COMPRESSION zstd, ROW_GROUP_SIZE {ROW_GROUP_SIZE})",
                params,
            )
        return con.execute(
            f"SELECT count(*) FROM read_parquet({sql_string(str(target))})"
        ).fetchall()[0][0]

    def staging_dir(self) -> Path:
        """A private (``0700``) folder for ingestion's scratch files, created if missing (and made
        private if an older version created it with the umask's mode: it only ever holds scratch)."""
        staging = private_mkdir(self.root / STAGING_DIR)
        if staging.stat().st_mode & 0o077:
            os.chmod(staging, DIR_MODE)
        return staging

    def sweep(self) -> list[Path]:
        """Remove leftovers of killed writes anywhere under the root whose writer is gone (temporary
        partition files, ``_staging/`` scratch files, sync and API state temporaries); see
        :mod:`segment_pipeline.core.atomic` for how a live writer's files are recognised and kept."""
        return sweep_tree(self.root) + sweep_owned_files(self.root / STAGING_DIR)

    def delete_partition(self, table: str, day: str | dt.date) -> None:
        path = self.partition_path(table, day)
        if path.exists():
            path.unlink()


def sql_ident(name: str) -> str:
    """Quote a name as a SQL identifier (column names from the model or a landing file's header)."""
    return '"' + name.replace('"', '""') + '"'



def connect(
    memory_limit: str | None = None, threads: int | None = None, preserve_order: bool = False
) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection for streaming work over the warehouse.

    ``memory_limit`` defaults to ``SEGMENT_PIPELINE_DUCKDB_MEMORY`` (else 3GB): beyond it DuckDB
    spills to a temporary folder, so peak memory stays bounded whatever the data size. That folder
    holds personal data while it is used: it is ``<system temp>/segment_pipeline_duckdb-<uid>``,
    ``0700``. ``threads`` defaults to ``SEGMENT_PIPELINE_DUCKDB_THREADS`` (else all cores); the
    files written do not depend on it.
    ``preserve_order`` keeps rows in source order (needed where line numbers are derived from
    position); without it DuckDB may reorder freely, which streams larger-than-memory work better.
    """
    con = duckdb.connect(config={"preserve_insertion_order": preserve_order})
    limit = memory_limit or os.environ.get("SEGMENT_PIPELINE_DUCKDB_MEMORY") or "3GB"
    con.execute(f"SET memory_limit = {sql_string(limit)}")
    con.execute(f"SET temp_directory = {sql_string(str(spill_dir()))}")
    con.execute("SET TimeZone = 'UTC'")
    con.execute("SET enable_progress_bar = false")
    threads = threads or int(os.environ.get("SEGMENT_PIPELINE_DUCKDB_THREADS") or 0)
    if threads:
        con.execute(f"SET threads = {int(threads)}")
    return con


def spill_dir() -> Path:
    """DuckDB's spill folder: private to this user (``0700``), refused if someone else owns it."""
    spill = Path(tempfile.gettempdir()) / f"segment_pipeline_duckdb-{os.getuid()}"
    private_mkdir(spill)
    st = spill.lstat()
    if spill.is_symlink() or st.st_uid != os.getuid():
        raise PermissionError(f"{spill} is not a folder owned by this user; remove it or set TMPDIR")
    if st.st_mode & 0o077:
        os.chmod(spill, DIR_MODE)
    return spill
