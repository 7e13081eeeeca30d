"""Test helpers: write small landing files exactly as partners deliver them."""

from __future__ import annotations

import csv
import json
import os
import shutil
import time
from pathlib import Path

import duckdb

#: The shipped sample landing zone of this checkout.
SAMPLE_LANDING = Path(__file__).resolve().parent.parent / "data" / "landing"


def copy_sample_days(landing: Path, days: list[str]) -> None:
    """Copy the sample's ``profiles`` and ``events`` folders of ``days`` into ``landing``, dated an
    hour ago (settled, for the landing sensor)."""
    old = time.time() - 3600
    for kind in ("profiles", "events"):
        for day in days:
            target = landing / kind / f"date={day}"
            shutil.copytree(SAMPLE_LANDING / kind / f"date={day}", target)
            for path in [target, *target.iterdir()]:
                os.utime(path, (old, old))


def write_ndjson(landing: Path, kind: str, day: str, rows: list[dict | str], name: str | None = None) -> Path:
    """Write rows (dicts, or raw strings for malformed lines) as one NDJSON landing file."""
    path = Path(landing) / kind / f"date={day}" / (name or f"{kind}-{day}.ndjson")
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [r if isinstance(r, str) else json.dumps(r) for r in rows]
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def write_csv(landing: Path, kind: str, day: str, header: list[str], rows: list[list], name: str | None = None) -> Path:
    path = Path(landing) / kind / f"date={day}" / (name or f"{kind}-{day}.csv")
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def write_parquet(landing: Path, kind: str, day: str, rows: list[dict], name: str | None = None) -> Path:
    path = Path(landing) / kind / f"date={day}" / (name or f"{kind}-{day}.parquet")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".rows.json.tmp")
    tmp.write_text(json.dumps(rows), encoding="utf-8")
    con = duckdb.connect()
    con.execute("CREATE TABLE t AS SELECT * FROM read_json(?, format = 'array')", [str(tmp)])
    con.execute(f"COPY t TO '{path}' (FORMAT parquet)")
    tmp.unlink()
    return path


def profile(email: str, updated_at: str, **attrs) -> dict:
    return {"email": email, "updated_at": updated_at, **attrs}


def event(event_id: str, email: str, event_type: str, occurred_at: str, **attrs) -> dict:
    return {"event_id": event_id, "email": email, "event_type": event_type, "occurred_at": occurred_at, **attrs}


def run_pipeline(warehouse, landing: Path, catalog, days: list[str], refresh_static=()) -> dict:
    """Run ingestion, profiles and memberships for ``days`` (ascending) with the core functions."""
    from segment_pipeline.core.ingest import ingest_day
    from segment_pipeline.core.memberships import compute_memberships
    from segment_pipeline.core.profiles import build_profiles
    from segment_pipeline.core.warehouse import connect

    con = connect(preserve_order=True)
    reports = {}
    for day in days:
        for kind in ("profiles", "events"):
            ingest_day(con, warehouse, landing, kind, day)
        build_profiles(con, warehouse, day)
        reports[day] = compute_memberships(con, warehouse, catalog, day, refresh_static=refresh_static)
    return reports


def members(warehouse, day: str, segment_id: str) -> set[str]:
    con = duckdb.connect()
    rows = con.execute(
        f"SELECT email FROM {warehouse.scan('memberships', days=[day])} WHERE segment_id = ?", [segment_id]
    ).fetchall()
    return {r[0] for r in rows}
