"""Request bodies rendered by DuckDB from the plan: same bytes/JSON as the per-row encoders, valid
against the vendor specs, cut on the row and byte budgets; and the pacing pieces they rely on."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import duckdb
import pytest

from segment_pipeline.core.esp import dotdigital as dd
from segment_pipeline.core.esp import klaviyo as kl
from segment_pipeline.core.sync.batching import plan_batches
from segment_pipeline_tests.fakes.base import SPECS_DIR, SpecValidator

HOSTILE = [
    ("a@shop.com", ["Loyal Customers"]),
    ('q"u,o@shop.com', ['Na"me, with comma', "line\nbreak", "ünïcødé 😀"]),
    ("back\\slash@shop.com", ["tab\there", "cr\rhere", "ctl\x01", "'; DROP TABLE x; --"]),
    ("cleared@shop.com", []),
    ("pipe@shop.com", ["a|b", "c"]),
]


def _plan(tmp_path: Path, rows: list[tuple[str, list[str]]], action: str = "upsert") -> Path:
    """A plan file as write_plan makes it (segments as DuckDB's own to_json text)."""
    path = tmp_path / "plan.parquet"
    con = duckdb.connect()
    con.execute("CREATE TABLE t (email VARCHAR, names VARCHAR[])")
    con.executemany("INSERT INTO t VALUES (?, ?)", [(e, n) for e, n in rows])
    con.execute(f"""COPY (SELECT '{action}' AS action, email, to_json(names)::VARCHAR AS segments, FALSE AS member
                    FROM t ORDER BY email) TO '{path}' (FORMAT parquet)""").fetchall()
    con.close()
    return path


def test_klaviyo_items_from_sql_match_the_python_encoder_and_the_spec(tmp_path):
    prop = 'nosto_"segment'
    (batch,) = plan_batches(_plan(tmp_path, HOSTILE), "upsert", kl.profile_item_sql(prop), max_rows=100)
    body = kl.import_body_joined(batch.payload[:-1], "LIST01")
    doc = json.loads(body)
    got = doc["data"]["attributes"]["profiles"]["data"]
    want = [json.loads(kl.profile_item(e, prop, names)) for e, names in sorted(HOSTILE)]
    assert got == want
    assert doc["data"]["relationships"]["lists"]["data"] == [{"type": "list", "id": "LIST01"}]
    spec = SpecValidator(SPECS_DIR / "klaviyo" / "bulk_import_profiles.json")
    assert spec.errors("ProfileImportJobCreateQuery", doc, items_at=("data", "attributes", "profiles", "data"),
                       item_schema="ProfileUpsertQueryResourceObject") == []
    assert batch.emails == sorted(e for e, _ in HOSTILE)


def test_dotdigital_lines_from_sql_are_byte_identical_to_the_csv_module(tmp_path):
    (batch,) = plan_batches(_plan(tmp_path, HOSTILE), "upsert", dd.contact_line_sql("|"), max_rows=100)
    rows = [(e, "|".join(names)) for e, names in sorted(HOSTILE)]
    assert dd.csv_header("NOSTOSEGMENT") + batch.payload == dd.contacts_csv(rows, "NOSTOSEGMENT")
    parsed = list(csv.reader(io.StringIO((dd.csv_header("F") + batch.payload).decode(), newline="")))
    assert parsed[1:] == [list(r) for r in rows]


def test_plan_batches_respect_rows_and_bytes_across_read_chunks(tmp_path):
    rows = [(f"user{i:05d}@example.com", ["Segment A"] if i % 2 else ["Segment A", "Segment B"]) for i in range(2000)]
    plan = _plan(tmp_path, rows)
    sql = kl.profile_item_sql("p")
    budget = 7_000
    batches = list(plan_batches(plan, "upsert", sql, max_rows=150, max_bytes=budget, read_rows=333))
    assert sum(len(b) for b in batches) == 2000
    assert [e for b in batches for e in b.emails] == sorted(e for e, _ in rows)  # order kept, nothing twice
    assert all(len(b) <= 150 and len(b.payload) <= budget for b in batches)
    assert all(len(b.payload) > budget - 100 or len(b) == 150 for b in batches[:-1])  # cut only when full
    for b in batches:
        items = json.loads(b"[" + b.payload[:-1] + b"]")
        assert [i["attributes"]["email"] for i in items] == b.emails
    by_rows = list(plan_batches(plan, "upsert", sql, max_rows=500, read_rows=128))
    assert [len(b) for b in by_rows] == [500] * 4
    assert list(plan_batches(plan, "clear", sql, max_rows=10)) == []
    with pytest.raises(ValueError, match="request limit"):
        list(plan_batches(plan, "upsert", sql, max_rows=10, max_bytes=20))


def test_sampled_spec_validation_still_checks_first_last_and_spread_items():
    spec = SpecValidator(SPECS_DIR / "klaviyo" / "bulk_import_profiles.json")
    good = {"type": "profile", "attributes": {"email": "a@b.co", "properties": {"p": ["x"]}}}
    bad = {"type": "profile", "attributes": {"email": 7}}
    kw = {"items_at": ("data", "attributes", "profiles", "data"), "item_schema": "ProfileUpsertQueryResourceObject"}

    def body(items):
        return {"data": {"type": "profile-bulk-import-job", "attributes": {"profiles": {"data": items}}}}

    for where in (0, 9_999, 5_000):  # first, last, on the sampling grid
        items = [good] * 10_000
        items[where] = bad
        assert spec.errors("ProfileImportJobCreateQuery", body(items), sample=100, **kw)
        assert spec.errors("ProfileImportJobCreateQuery", body(items), **kw)  # full check: anywhere
    items = [good] * 10_000
    items[5_001] = bad  # off the grid: only the full check sees it
    assert spec.errors("ProfileImportJobCreateQuery", body(items), **kw)
    assert spec.errors("ProfileImportJobCreateQuery", body([good] * 10_000), sample=100, **kw) == []
