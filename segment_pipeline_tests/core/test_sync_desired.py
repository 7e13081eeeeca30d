"""The desired state's canonical segment lists: the bitmask fold gives exactly what the plain
per-email ``to_json(list_sort(list_distinct(list(name))))`` gives (the mirror stores that text,
so any difference would resend everyone)."""

from __future__ import annotations

import json

import duckdb
import pytest

from segment_pipeline.core.sync.desired import desired_sql
from segment_pipeline.core.warehouse import Warehouse
from segment_pipeline_tests.fakes.helpers import write_memberships

DAY = "2026-11-01"


def _plain(wh: Warehouse, synced: dict[str, str]) -> dict[str, str]:
    items = sorted(synced.items())
    con = duckdb.connect()
    rows = con.execute(f"""
        SELECT m.email, to_json(list_sort(list_distinct(list(s.n))))::VARCHAR
        FROM {wh.scan('memberships', days=[DAY])} m
        JOIN (VALUES {", ".join("(?, ?)" for _ in items)}) s(id, n) ON s.id = m.segment_id
        WHERE m.email IS NOT NULL AND m.email <> '' GROUP BY m.email""", [x for p in items for x in p]).fetchall()
    return dict(rows)


def _desired(wh: Warehouse, synced: dict[str, str]) -> dict[str, str]:
    sql, params = desired_sql(wh, DAY, synced)
    return dict(duckdb.connect().execute(sql, params).fetchall())


@pytest.mark.parametrize("n_segments", [3, 64, 65, 150])
def test_bitmask_fold_equals_the_plain_lists(tmp_path, n_segments):
    wh = Warehouse(tmp_path / "wh")
    synced = {f"seg{i:03d}": f"Segment {i:03d}" for i in range(n_segments)}
    # names that sort differently raw and JSON-escaped, and two ids sharing one name
    synced.update({"q": 'Quote "q"', "b": "Back\\slash", "u": "Ünïcode ✓", "twin1": "Twin", "twin2": "Twin"})
    ids = sorted(synced)
    rows = [(ids[(i * 7 + k * 13) % len(ids)], f"user{i}@x.io") for i in range(400) for k in range(1 + i % 4)]
    rows += [("twin1", "t@x.io"), ("twin2", "t@x.io"), ("unsynced", "t@x.io"), ("seg000", "")]
    rows += [(ids[-1], "last@x.io"), (ids[0], "last@x.io")]  # first and last bit of the widest word
    write_memberships(wh, DAY, rows)
    got, want = _desired(wh, synced), _plain(wh, synced)
    assert got == want
    assert json.loads(got["t@x.io"]) == ["Twin"]
    assert "" not in got


def test_no_synced_segments_means_nobody(tmp_path):
    wh = Warehouse(tmp_path / "wh")
    write_memberships(wh, DAY, [("a", "a@x.io")])
    assert _desired(wh, {}) == {}
