"""Test helpers: write warehouse partitions directly, in the shape the data model gives a table.

For tests of stages that read ``profiles`` and ``raw_events`` (segment rules, memberships)
without running ingestion and the profile build: rows are dicts of column -> value (columns the
row leaves out are NULL; a column the table does not have is an error), written with
:meth:`Warehouse.write_partition` like the pipeline writes them.
"""

from __future__ import annotations

import datetime as dt

import duckdb

from segment_pipeline.core.warehouse import Warehouse


def _quoted(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def write_rows(warehouse: Warehouse, table: str, day: str | dt.date, rows: list[dict]) -> int:
    """Write ``rows`` as the ``table`` partition of ``day``; return the row count.

    ``profiles`` rows get ``identity_id`` and ``random_bucket`` from their email as the pipeline
    computes them (``md5(email)[1:16]``, ``md5_number(email) % 10000``) unless given.
    """
    schema = warehouse.schema(table)
    unknown = sorted({c for r in rows for c in r} - set(schema))
    if unknown:
        raise KeyError(f"{table} has no column(s) {unknown}; columns: {list(schema)}")
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    con.execute("CREATE TEMP TABLE t (" + ", ".join(f"{_quoted(c)} {t}" for c, t in schema.items()) + ")")
    if rows:
        marks = ", ".join("?" for _ in schema)
        con.executemany(f"INSERT INTO t VALUES ({marks})", [[r.get(c) for c in schema] for r in rows])
    select = "SELECT * FROM t"
    if table == "profiles":
        select = ("SELECT * REPLACE (coalesce(identity_id, md5(email)[1:16]) AS identity_id,"
                  " coalesce(random_bucket, (md5_number(email) % 10000)::INTEGER) AS random_bucket) FROM t")
    return warehouse.write_partition(con, table, day, select)
