"""Test helpers: write warehouse partitions directly, in the shape the data model gives a table.

For tests of stages that read ``profiles`` and ``raw_events`` (segment rules, memberships)
without running ingestion and the profile build: rows are dicts of column -> value (columns the
row leaves out are NULL; a column the table does not have is an error), written with
:meth:`Warehouse.write_partition` like the pipeline writes them.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import tempfile
from typing import Any

import duckdb

from segment_pipeline.core.warehouse import Warehouse, connect, sql_string


def _json_default(value: Any) -> Any:
    if isinstance(value, (dt.date, dt.datetime)):
        return value.isoformat()
    return str(value)


def write_rows(warehouse: Warehouse, table: str, day: str | dt.date, rows: list[dict],
               con: duckdb.DuckDBPyConnection | None = None) -> int:
    """Write ``rows`` as the ``table`` partition of ``day``; return the row count.

    Values are converted to the column types by DuckDB (ISO text for dates and timestamps, lists
    for ``list[string]``). ``profiles`` rows get ``identity_id`` and ``random_bucket`` from their
    email as the pipeline computes them (``md5(email)[1:16]``, ``md5_number(email) % 10000``) unless given.
    """
    schema = warehouse.schema(table)
    unknown = sorted({c for r in rows for c in r} - set(schema))
    if unknown:
        raise KeyError(f"{table} has no column(s) {unknown}; columns: {list(schema)}")
    con = con or connect()
    con.execute("SET TimeZone = 'UTC'")
    fd, path = tempfile.mkstemp(suffix=".ndjson")
    try:
        with os.fdopen(fd, "w") as fh:
            for row in rows:
                fh.write(json.dumps(row, default=_json_default) + "\n")
        columns = "{" + ", ".join(f"{sql_string(c)}: {sql_string(t)}" for c, t in schema.items()) + "}"
        select = (f"SELECT * FROM read_json({sql_string(path)}, format = 'newline_delimited', columns = {columns})"
                  if rows else f"SELECT * EXCLUDE (date) FROM {warehouse.empty_relation(table)}")
        if table == "profiles":
            select = ("SELECT * REPLACE (coalesce(identity_id, md5(email)[1:16]) AS identity_id,"
                      f" coalesce(random_bucket, (md5_number(email) % 10000)::INTEGER) AS random_bucket) FROM ({select})")
        return warehouse.write_partition(con, table, day, select)
    finally:
        os.unlink(path)
