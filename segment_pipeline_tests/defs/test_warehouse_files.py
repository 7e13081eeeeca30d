"""Files a real run writes: byte-identical when a day is re-run, owner-only whatever the umask.

The sample pipeline (ingestion, profiles, memberships, the daily feed, a Klaviyo dry-run sync) runs
for two days under umask 000 (the most permissive), then the same two days again with DuckDB on
one thread instead of several; every warehouse partition and feed file must have the same bytes,
and every file must be 0600 and every folder the run created 0700.
"""

from __future__ import annotations

import datetime as dt
import gzip
import hashlib
import json
import os
import stat
import zipfile
from pathlib import Path

import dagster as dg
import pytest
from dagster_aws.s3 import S3Resource

from segment_pipeline.core.api_identity import IdentityIndex
from segment_pipeline.core.exports import csv_range
from segment_pipeline.core.exports import segment_export as chunked
from segment_pipeline.core.exports.storage import LocalExportStorage
from segment_pipeline.core.feed_auth import CredentialStore
from segment_pipeline.core.warehouse import Warehouse, connect, spill_dir
from segment_pipeline.defs.exports.assets import segment_feed_daily
from segment_pipeline.defs.exports.resources import ExportsResource
from segment_pipeline.defs.syncs.assets import klaviyo_sync
from segment_pipeline.defs.syncs.resources import KlaviyoResource
from segment_pipeline_tests.defs.test_pipeline import TABLES, pipeline_assets, range_tags, resources

FIRST, LAST = "2026-11-01", "2026-11-02"
DAYS = (dt.date(2026, 11, 1), dt.date(2026, 11, 2))


def run_days(root: Path, exports: Path, threads: int) -> None:
    """Materialize the sample's two days (raw .. feed) and a Klaviyo dry run, under umask 000."""
    res = {**resources(root / "warehouse"),
           "exports": ExportsResource(local_dir=str(exports), s3=S3Resource()),
           "klaviyo": KlaviyoResource()}
    old_umask = os.umask(0)
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("SEGMENT_PIPELINE_DUCKDB_THREADS", str(threads))
            result = dg.materialize([*pipeline_assets(), segment_feed_daily], resources=res,
                                    tags=range_tags(FIRST, LAST))
            assert result.success
            assert dg.materialize([klaviyo_sync], resources=res, selection=[klaviyo_sync]).success
    finally:
        os.umask(old_umask)


def digests(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def reruns(tmp_path_factory):
    base = tmp_path_factory.mktemp("reruns")
    run_days(base, base / "exports", threads=4)
    wh = Warehouse(base / "warehouse")
    first = {"warehouse": digests(wh.root), "feed": digests(base / "exports" / "daily")}
    run_days(base, base / "exports", threads=1)  # the same days again, in place, on one thread
    second = {"warehouse": digests(wh.root), "feed": digests(base / "exports" / "daily")}
    return base, wh, first, second


def test_rerun_of_a_day_writes_byte_identical_partitions_and_feed(reruns):
    _base, wh, first, second = reruns
    partitions = {f"{t}/date={d}/data.parquet" for t in TABLES for d in DAYS}
    assert partitions <= set(first["warehouse"])  # every table, both days, was written
    for name in sorted(partitions):
        assert first["warehouse"][name] == second["warehouse"][name], f"{name} differs after the re-run"
    feed_files = {f"nosto_segments/{d}.json" for d in DAYS}
    assert feed_files <= set(first["feed"])
    for name in feed_files:
        assert first["feed"][name] == second["feed"][name], f"feed {name} differs after the re-run"
    # the feed's lines are sorted by email (the order that makes the bytes reproducible)
    lines = (_base / "exports" / "daily" / f"nosto_segments/{LAST}.json").read_text().splitlines()
    emails = [line.split('"email":', 1)[1].split(",", 1)[0] for line in lines]
    assert len(lines) > 100 and emails == sorted(emails)


def test_segment_and_csv_exports_are_reproducible(reruns, tmp_path):
    _base, wh, _first, _second = reruns
    request = chunked.SegmentExportRequest.parse(
        {"segment_id": "prospects", "fields_to_export": ["email", "first_name", "purchases", "custom_events"],
         "output_format": "zip"})
    prefix = chunked.new_object_prefix(1793761200)
    contents = []
    for threads, root in ((4, tmp_path / "a"), (1, tmp_path / "b"), (2, tmp_path / "c")):
        con = connect(threads=threads)
        storage = LocalExportStorage(root)
        # a and b: the same export written twice (same object prefix); c: a new export of the same day
        result = chunked.export_segment(con, wh, storage, request, as_of=LAST, chunk_size=100,
                                        object_prefix=prefix if threads != 2 else chunked.new_object_prefix(1793761300))
        csv = csv_range.write_segment_csv(con, wh, storage, "prospects", DAYS[0], DAYS[1])
        assert result.members > 100 and len(result.files) > 1
        export_dir = storage.path(result.prefix)
        contents.append((
            [(p.name, p.read_bytes()) for p in sorted(export_dir.iterdir())],
            [_unzip(p) for p in sorted(export_dir.iterdir(), key=lambda p: _chunk_index(result, p))],
            storage.path(csv.key).read_bytes(),
        ))
    (files_a, lines_a, csv_a), (files_b, lines_b, csv_b), (files_c, lines_c, csv_c) = contents
    assert files_a == files_b  # byte-identical chunk files, names included
    assert lines_a == lines_b == lines_c  # same lines in the same chunks for a new export of the day
    assert csv_a == csv_b == csv_c
    # items are grouped per name (one custom_events item per event type, one purchase per product)
    users = [json.loads(line) for chunk in lines_a for line in chunk.splitlines()]
    assert any(len(u.get("custom_events", [])) > 1 for u in users)
    for user in users:
        for field in ("purchases", "custom_events"):
            names = [item["name"] for item in user.get(field, [])]
            assert names == sorted(set(names)), (user["email"], field, names)


def _chunk_index(result: chunked.SegmentExportResult, path: Path) -> int:
    return [f.key.rsplit("/", 1)[1] for f in result.files].index(path.name)


def _unzip(path: Path) -> bytes:
    if path.suffix == ".gz":
        return gzip.decompress(path.read_bytes())
    with zipfile.ZipFile(path) as zf:
        (name,) = zf.namelist()
        return zf.read(name)


def _modes(root: Path) -> tuple[dict[str, int], dict[str, int]]:
    files, dirs = {}, {}
    for dirpath, dirnames, filenames in os.walk(root):
        for d in dirnames:
            dirs[os.path.join(dirpath, d)] = stat.S_IMODE(os.lstat(os.path.join(dirpath, d)).st_mode)
        for f in filenames:
            files[os.path.join(dirpath, f)] = stat.S_IMODE(os.lstat(os.path.join(dirpath, f)).st_mode)
    return files, dirs


def test_files_of_a_real_run_are_owner_only_whatever_the_umask(reruns):
    base, wh, _first, _second = reruns
    files, dirs = _modes(base)
    rel = {Path(p).relative_to(base).as_posix() for p in files}
    # personal data of every kind the run wrote: partitions, the feed, sync state, dry-run payloads
    assert f"warehouse/raw_profiles/date={FIRST}/data.parquet" in rel
    assert f"warehouse/quarantine_events/date={LAST}/data.parquet" in rel
    assert f"exports/daily/nosto_segments/{LAST}.json" in rel
    assert "warehouse/sync_state/klaviyo/state.duckdb" in rel
    assert any(r.startswith("warehouse/sync_dry_run/klaviyo/") for r in rel)
    assert Path(base / "warehouse" / "_staging").is_dir()
    loose = {p: oct(m) for p, m in files.items() if m != 0o600}
    assert not loose, f"files not 0600 after a run under umask 000: {loose}"
    open_dirs = {p: oct(m) for p, m in dirs.items() if m != 0o700}
    assert not open_dirs, f"folders not 0700 after a run under umask 000: {open_dirs}"
    assert not [p for p in files if "/.tmp-" in p], "temporary files left behind"
    # DuckDB's spill folder (personal data while a query spills) is this user's only
    spill = spill_dir()
    assert stat.S_IMODE(spill.stat().st_mode) == 0o700 and spill.stat().st_uid == os.getuid()


def test_identity_index_and_credentials_are_owner_only(reruns, tmp_path):
    _base, wh, _first, _second = reruns
    old_umask = os.umask(0)
    try:
        index = IdentityIndex(wh, tmp_path / "api_state" / "identity_index")
        path = index.index_path(DAYS[1])
        store = CredentialStore(tmp_path / "api_state")
        store.create_feed_token()
    finally:
        os.umask(old_umask)
    assert index.lookup(index_first_email(wh), DAYS[1]) is not None
    files, dirs = _modes(tmp_path / "api_state")
    assert str(path) in files and str(store.path) in files
    assert {oct(m) for m in files.values()} == {"0o600"}, files
    assert {oct(m) for m in dirs.values()} == {"0o700"}, dirs
    assert stat.S_IMODE((tmp_path / "api_state").stat().st_mode) == 0o700


def index_first_email(wh: Warehouse) -> str:
    con = connect()
    return con.execute(f"SELECT min(email) FROM {wh.scan('profiles', days=[DAYS[1]])}").fetchall()[0][0]
