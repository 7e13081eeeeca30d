"""The diff: desired state vs. the destination mirror -> a plan of upserts, clears and removals.

The plan is written to a Parquet file (DuckDB does the join, streaming), then read back in record
batches by the batching engine, so nothing the size of the audience is ever held in Python.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from segment_pipeline.core.atomic import FILE_MODE, private_mkdir
from segment_pipeline.core.sync.state import StateStore
from segment_pipeline.core.warehouse import sql_string

UPSERT, CLEAR, REMOVE = "upsert", "clear", "remove"


@dataclass(frozen=True)
class PlanCounts:
    desired: int
    upserts: int
    clears: int
    removals: int


def write_plan(store: StateStore, dest: str, desired_sql: str, params: list[object], plan_path: Path,
               track_list: bool) -> PlanCounts:
    """Write ``action, email, segments, member`` rows to ``plan_path``; return the counts.

    * ``upsert``: email is desired with segments different from the mirror (or, with
      ``track_list``, not yet confirmed as a list member); ``segments`` is the desired JSON list.
    * ``clear``: email is no longer desired but the destination still carries a non-empty list.
    * ``remove`` (``track_list`` only): email is no longer desired but still a list member.

    ``member`` is whether the mirror has the email as a list member already (for "added" counts).
    """
    private_mkdir(plan_path.parent)
    track = "TRUE" if track_list else "FALSE"
    sql = f"""
        WITH d AS ({desired_sql}),
        m AS (SELECT email, segments, in_list FROM mirror WHERE dest = ?),
        j AS (
            SELECT coalesce(d.email, m.email) AS email, d.segments AS want, m.segments AS have,
                   coalesce(m.in_list, FALSE) AS member
            FROM d FULL OUTER JOIN m ON d.email = m.email)
        SELECT '{UPSERT}' AS action, email, want AS segments, member FROM j
            WHERE want IS NOT NULL AND (have IS DISTINCT FROM want OR ({track} AND NOT member))
        UNION ALL
        SELECT '{CLEAR}', email, '[]', member FROM j WHERE want IS NULL AND have <> '[]'
        UNION ALL
        SELECT '{REMOVE}', email, '[]', member FROM j WHERE want IS NULL AND {track} AND member
    """
    store.con.execute(
        f"COPY ({sql} ORDER BY action, email) TO {sql_string(str(plan_path))} (FORMAT parquet, COMPRESSION zstd)",
        [*params, dest],
    ).fetchall()
    os.chmod(plan_path, FILE_MODE)  # in a 0700 folder from its creation; the file itself 0600 too
    desired = store.con.execute(f"SELECT count(*) FROM ({desired_sql})", params).fetchall()[0][0]
    counts = dict(store.con.execute(
        f"SELECT action, count(*) FROM read_parquet({sql_string(str(plan_path))}) GROUP BY action").fetchall())
    return PlanCounts(desired, counts.get(UPSERT, 0), counts.get(CLEAR, 0), counts.get(REMOVE, 0))
