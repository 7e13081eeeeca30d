"""``forget`` end to end (issue 15): a person in three days of landing files, the quarantine, the
profiles, the daily feed and a per-segment export is removed from every file under the warehouse
and export roots; re-runs of those days bring nothing back; a SIGKILL mid-forget is finished by the
next run; lifting the tombstone lets the person back."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import multiprocessing
import os
import signal
import threading
import time
import zipfile
from pathlib import Path

import dagster as dg
import duckdb
import pytest
from dagster_aws.s3 import S3Resource

from segment_pipeline.cli import main as cli
from segment_pipeline.core.exports.segment_export import (
    SegmentExportRequest,
    export_segment,
    verify_segment_export,
)
from segment_pipeline.core.exports.storage import LocalExportStorage
from segment_pipeline.core.ingest import ingest_day
from segment_pipeline.core.privacy.forget import forget, read_request_file
from segment_pipeline.core.privacy.ledger import Ledger
from segment_pipeline.core.privacy.scrub import (
    ScrubError,
    Targets,
    _load_targets,
    scrub_bytes,
    scrub_duckdb_file,
    scrub_parquet_file,
    scrub_tree,
)
from segment_pipeline.core.privacy.tombstones import DELETED_IDENTITY
from segment_pipeline.core.sources import Source
from segment_pipeline.core.warehouse import Warehouse, connect
from segment_pipeline.defs.exports.assets import segment_feed_daily
from segment_pipeline.defs.exports.resources import ExportsResource
from segment_pipeline.defs.resources import LandingZoneResource, SegmentCatalogResource, WarehouseResource
from segment_pipeline_tests.defs.test_pipeline import SEGMENTS, pipeline_assets, range_tags
from segment_pipeline_tests.landing import write_ndjson

DAYS = ["2026-11-01", "2026-11-02", "2026-11-03"]
PERSON = "Jane.Forget@Example.com"
NORM = PERSON.lower()
HASH = hashlib.sha256(NORM.encode()).hexdigest()
OTHERS = [f"person{i}@example.org" for i in range(12)]


def _profile(email: str, i: int, day: str, **extra) -> dict:
    return {"customer_id": f"C{i:05d}", "email": email, "first_name": "F", "last_name": "L", "gender": "female",
            "dob": "1990-01-01", "phone": "+49100", "country": "DE", "city": "Berlin", "language": "de",
            "time_zone": "Europe/Berlin", "loyalty_tier": "gold", "created_at": f"{day}T00:00:01Z",
            "updated_at": f"{day}T01:00:00Z", **extra}


def _event(email: str, i: int, day: str) -> dict:
    return {"event_id": f"ev-{day}-{i}", "email": email, "event_type": "product_view", "occurred_at": f"{day}T02:00:00Z",
            "product_id": "P1", "product_name": "Nike Cap", "brand": "Nike", "category": "accessories", "price": 20.0}


def write_landing(landing: Path) -> None:
    for n, day in enumerate(DAYS):
        people = [(PERSON if n != 1 else f"  {PERSON.upper()} ", 99999)] + [(e, i) for i, e in enumerate(OTHERS)]
        rows: list[dict | str] = [_profile(e, i, day) for e, i in people]
        if n == 0:  # a bad row of that person (quarantined with its text) and an unparsable line naming them
            rows.append(_profile(PERSON.upper(), 99999, day, dob="1990-13-45"))
            rows.append('{"email": "Jane.Forget@EXAMPLE.com", "first_name": ')
        write_ndjson(landing, "profiles", day, rows)
        write_ndjson(landing, "events", day, [_event(e.strip(), i, day) for e, i in people])


def materialize(root: Path, landing: Path, exports: Path, feed: bool = True) -> None:
    res = {"warehouse": WarehouseResource(root=str(root)), "landing": LandingZoneResource(root=str(landing)),
           "segment_catalog": SegmentCatalogResource(path=str(SEGMENTS)),
           "exports": ExportsResource(local_dir=str(exports), s3=S3Resource())}
    assets = [*pipeline_assets(), segment_feed_daily] if feed else pipeline_assets()[:2]
    result = dg.materialize(assets, resources=res, tags=range_tags(DAYS[0], DAYS[-1]),
                            instance=dg.DagsterInstance.ephemeral())
    assert result.success


def traces(*roots: Path, allow_hash_in: tuple[str, ...] = ()) -> list[str]:
    """Files under ``roots`` holding the person's address (any case) or its SHA-256 hex, read
    independently of the scrub: raw bytes, and decompressed/decoded content of gzip, zip and Parquet."""
    found = []
    con = duckdb.connect()
    for root in roots:
        for path in sorted(p for p in root.rglob("*") if p.is_file()):
            rel = path.relative_to(root).as_posix()
            contents = [path.read_bytes()]
            if path.suffix == ".gz":
                contents.append(gzip.decompress(contents[0]))
            if path.suffix == ".zip":
                with zipfile.ZipFile(path) as zf:
                    contents += [zf.read(n) for n in zf.namelist()]
            if path.suffix == ".parquet":
                try:
                    rows = con.execute(
                        f"SELECT lower(CAST(t AS VARCHAR)) FROM read_parquet('{path}', hive_partitioning = false) t "
                        "WHERE contains(lower(CAST(t AS VARCHAR)), ?) OR contains(lower(CAST(t AS VARCHAR)), ?)",
                        [NORM, HASH]).fetchall()
                except duckdb.Error:
                    if ".tmp-" not in rel:
                        raise
                    rows = []  # a write killed mid-way left an incomplete temporary file: raw bytes only
                contents += [r[0].encode() for r in rows]
            for data in contents:
                low = data.lower()
                if NORM.encode() in low or (HASH.encode() in low and not rel.startswith(allow_hash_in)):
                    found.append(rel)
                    break
    return found


def _killed_forget(root: str, exports: str) -> None:
    """Child: forget, killed (SIGKILL) while it writes a file, once two files were rewritten: a
    thread kills the process as soon as a temporary entry of a rewrite appears (at the latest when
    the next file starts)."""
    state = {"watching": False}

    def watch() -> None:
        while True:
            if any(Path(root).rglob(".tmp-*")):
                os.kill(os.getpid(), signal.SIGKILL)
            time.sleep(0.0005)

    def on_file(_path: object) -> None:
        rewritten = [p for p in Path(root).rglob("data.parquet") if p.stat().st_mtime > START]
        if len(rewritten) >= 3:
            os.kill(os.getpid(), signal.SIGKILL)
        if len(rewritten) >= 2 and not state["watching"]:
            state["watching"] = True
            threading.Thread(target=watch, daemon=True).start()

    forget(root, LocalExportStorage(exports), [PERSON], "cli", index_dirs=[], on_file=on_file)


START = 0.0


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    base = tmp_path_factory.mktemp("forget")
    landing, root, exports = base / "landing", base / "warehouse", base / "exports"
    write_landing(landing)
    materialize(root, landing, exports)
    wh = Warehouse(root)
    storage = LocalExportStorage(exports)
    con = connect()
    result = export_segment(con, wh, storage, SegmentExportRequest("geo_germany", ("email", "first_name"), "gzip"),
                            chunk_size=5)  # 13 members: three chunks, the person in the first
    con.close()
    return base, landing, wh, storage, result


def test_forget_removes_every_trace_survives_sigkill_and_keeps_the_person_out(world, monkeypatch):
    base, landing, wh, storage, export = world
    root, exports = wh.root, Path(storage.root)
    before = traces(root, exports)
    for expected in ["raw_profiles/date=2026-11-01", "raw_profiles/date=2026-11-03", "raw_events/date=2026-11-02",
                     "quarantine_profiles/date=2026-11-01", "profiles/date=2026-11-03", "memberships/",
                     "identity_links/", "daily/nosto_segments/2026-11-03.json", "segment-export/geo_germany/"]:
        assert any(f.startswith(expected) for f in before), (expected, before)

    # a forget killed (SIGKILL) while it rewrites the warehouse
    global START
    START = max(p.stat().st_mtime for p in root.rglob("data.parquet"))
    ctx = multiprocessing.get_context("fork")
    child = ctx.Process(target=_killed_forget, args=(str(root), str(exports)))
    child.start()
    child.join(300)
    assert child.exitcode == -signal.SIGKILL
    ledger = Ledger(root)
    (request,) = ledger.requests()
    assert ledger.warehouse_todo() and ledger.tombstoned() == [HASH]  # recorded, not done
    assert traces(root, exports, allow_hash_in=("privacy/",))  # some files still hold the person

    # the re-run (the CLI, no address: it finishes open requests) completes the job
    monkeypatch.setenv("SEGMENT_PIPELINE_WAREHOUSE", str(root))
    monkeypatch.setenv("SEGMENT_PIPELINE_EXPORT_DIR", str(exports))
    monkeypatch.setenv("SEGMENT_PIPELINE_API_STATE", str(base / "api_state"))
    monkeypatch.delenv("SEGMENT_PIPELINE_EXPORT_BUCKET", raising=False)
    assert cli(["forget"]) == 0
    assert ledger.warehouse_todo() == []
    assert ledger.status(request.request_id)[0]["warehouse_done_at"] is not None
    assert ledger.settle(request.request_id, []) is True  # no destination in this test: the address goes
    # the hash, never the address, stays in the identity links (review item 5: the tombstone needs them)
    assert traces(root, exports, allow_hash_in=("privacy/ledger.duckdb", "privacy/tombstones.parquet",
                                                "identity_links/")) == []
    assert not list(root.rglob(".tmp-*")) and not list(exports.rglob(".tmp-*"))  # the kill's leftovers swept
    assert NORM.encode() not in (root / "privacy" / "ledger.duckdb").read_bytes()
    assert not list((root / "privacy").rglob("*.json"))  # no pending address, no scrub journal left

    # what remains is consistent: the export's manifest and chunks, the feed's pointer
    check = verify_segment_export(storage, export.manifest_key, members=12, chunk_size=5)
    assert check.passed, check.problems
    latest = json.loads((exports / "daily" / "nosto_segments" / "latest").read_text())
    feed = exports / "daily" / "nosto_segments" / "2026-11-03.json"
    assert latest["lines"] == len(feed.read_text().splitlines()) == 12 and latest["bytes"] == feed.stat().st_size
    con = duckdb.connect()
    assert con.execute(f"SELECT count(*) FROM {wh.scan('raw_profiles')}").fetchall()[0][0] == 36
    # a second run finds nothing to do and rewrites nothing
    again = forget(root, storage, [], index_dirs=[])
    assert again.done == [] and again.report.files_rewritten == 0

    # re-runs of the three days bring nothing back: the rows are quarantined as deleted identity
    materialize(root, landing, exports, feed=False)
    # (the hash, never the address, is kept where the tombstone needs it: the quarantine, and the
    # identity links of the re-run days, which recognise later records carrying only the linked id)
    assert traces(root, exports, allow_hash_in=("privacy/", "quarantine_", "identity_links/")) == []
    q = wh.scan("quarantine_profiles")
    deleted = con.execute(f"SELECT date, raw FROM {q} WHERE reason = ? ORDER BY ALL", [DELETED_IDENTITY]).fetchall()
    assert len(deleted) == 5  # a valid row each day, the bad row, the unparsable line
    assert {raw for _d, raw in deleted} == {json.dumps({"email_sha256": HASH}, separators=(",", ":"))}
    events = con.execute(f"SELECT count(*) FROM {wh.scan('quarantine_events')} WHERE reason = ?",
                         [DELETED_IDENTITY]).fetchall()[0][0]
    assert events == 3
    assert con.execute(f"SELECT count(*) FROM {wh.scan('raw_profiles')} WHERE email = ?", [NORM]).fetchall()[0][0] == 0

    # lifting the tombstone lets the person back
    assert cli(["forget", "--lift", PERSON.upper()]) == 0
    assert ledger.tombstoned() == []
    ingest_day(con, wh, landing, "profiles", DAYS[2])
    assert con.execute(f"SELECT count(*) FROM {wh.scan('raw_profiles', days=[DAYS[2]])} WHERE email = ?",
                       [NORM]).fetchall()[0][0] == 1


def test_a_record_resolving_through_a_link_to_a_tombstoned_email_is_quarantined(tmp_path):
    landing, wh = tmp_path / "landing", Warehouse(tmp_path / "warehouse")
    Ledger(wh.root).request([PERSON], "cli")
    sources = {"profiles": Source(kind="profiles"), "events": Source(kind="events", required=["event_id"],
                                                                     event={"column": "event_type"})}
    day = DAYS[0]
    write_ndjson(landing, "profiles", day, [_profile(PERSON, 7, day), _profile(OTHERS[0], 1, day)])
    write_ndjson(landing, "events", day, [{**_event(PERSON, 1, day), "email": None, "customer_id": "C00007"},
                                          {**_event(OTHERS[0], 2, day), "email": None, "customer_id": "C00001"}])
    con = connect(preserve_order=True)
    p = ingest_day(con, wh, landing, "profiles", day, sources)
    e = ingest_day(con, wh, landing, "events", day, sources)
    assert (p.rows_valid, p.deleted_identity, e.rows_valid, e.deleted_identity) == (1, 1, 1, 1)
    links = con.execute(f"SELECT value, email FROM {wh.scan('identity_links')} ORDER BY 1").fetchall()
    assert links == [("C00001", OTHERS[0]), ("C00007", f"sha256:{HASH}")]  # the hash, never the address
    # a later day: an order carrying only the customer number is still the deleted identity
    later = DAYS[1]
    write_ndjson(landing, "events", later, [{**_event(PERSON, 3, later), "email": None, "customer_id": "C00007"}])
    e = ingest_day(con, wh, landing, "events", later, sources)
    assert (e.rows_valid, e.deleted_identity) == (0, 1)
    raw = con.execute(f"SELECT raw FROM {wh.scan('quarantine_events', days=[later])}").fetchall()
    assert raw == [(json.dumps({"email_sha256": HASH}, separators=(",", ":")),)]


def test_forget_keeps_the_persons_identity_links_as_the_hash(tmp_path):
    """Review item 5: a record ingested before the request linked C00007 to the person; after
    ``forget`` a record carrying only C00007 is still the deleted identity (not an unresolved one
    quarantined with its text)."""
    landing, wh = tmp_path / "landing", Warehouse(tmp_path / "warehouse")
    sources = {"profiles": Source(kind="profiles"), "events": Source(kind="events", required=["event_id"],
                                                                     event={"column": "event_type"})}
    day, later = DAYS[0], DAYS[1]
    write_ndjson(landing, "profiles", day, [_profile(PERSON, 7, day), _profile(OTHERS[0], 1, day)])
    con = connect(preserve_order=True)
    assert ingest_day(con, wh, landing, "profiles", day, sources).rows_valid == 2
    result = forget(wh.root, None, [PERSON], "cli", index_dirs=[])
    assert (result.report.rows_masked, len(result.done)) == (1, 1)
    links = con.execute(f"SELECT value, email FROM {wh.scan('identity_links')} ORDER BY 1").fetchall()
    assert links == [("C00001", OTHERS[0]), ("C00007", f"sha256:{HASH}")]
    left = traces(wh.root, allow_hash_in=("privacy/", "identity_links/"))
    assert [p for p in left if not p.startswith("privacy/pending/")] == []  # the address until settled
    write_ndjson(landing, "events", later, [{**_event(PERSON, 3, later), "email": None, "customer_id": "C00007"},
                                            {**_event(OTHERS[0], 4, later), "email": None, "customer_id": "C00001"}])
    e = ingest_day(con, wh, landing, "events", later, sources)
    assert (e.rows_valid, e.deleted_identity) == (1, 1)
    rows = con.execute(f"SELECT reason, raw FROM {wh.scan('quarantine_events', days=[later])}").fetchall()
    assert rows == [(DELETED_IDENTITY, json.dumps({"email_sha256": HASH}, separators=(",", ":")))]
    assert forget(wh.root, None, (), index_dirs=[]).report.files_rewritten == 0  # nothing left to do


def test_the_scrub_never_replaces_a_file_published_after_it_was_read(tmp_path):
    """Review item 2: a writer publishes F' while the scrub rewrites F; the scrub discards its
    rewrite of F and scrubs F' (the writer's rows are kept); a file that never stops changing fails."""
    wh = Warehouse(tmp_path / "warehouse")
    con = connect(preserve_order=True)

    def publish(emails: list[str]) -> None:
        values = ", ".join(f"('{e}')" for e in emails)
        wh.write_partition(con, "memberships", DAYS[0],
                           f"SELECT 'de' AS segment_id, md5(e) AS identity_id, e AS email FROM (VALUES {values}) v(e)")

    publish([NORM, OTHERS[0]])
    path = next((wh.root / "memberships").rglob("*.parquet"))
    calls = []

    def late_writer(_path: Path) -> None:
        calls.append(1)
        if len(calls) == 1:  # the re-run of the day lands between the scrub's read and its replace
            publish([NORM, OTHERS[0], OTHERS[1]])

    scrub_con = connect(preserve_order=True)
    _load_targets(scrub_con, Targets.of([PERSON]))
    removed, _size, _masked = scrub_parquet_file(scrub_con, path, before_replace=late_writer)
    assert (removed, len(calls)) == (1, 2)
    path = next((wh.root / "memberships").rglob("*.parquet"))
    got = con.execute(f"SELECT email FROM read_parquet('{path}') ORDER BY 1").fetchall()
    assert got == [(OTHERS[0],), (OTHERS[1],)]  # the late writer's row is there, the person is not

    publish([NORM, OTHERS[0]])
    path = next((wh.root / "memberships").rglob("*.parquet"))
    with pytest.raises(ScrubError, match="kept changing"):
        scrub_parquet_file(scrub_con, path, before_replace=lambda _p: publish([NORM, OTHERS[2]]))
    assert not list(wh.root.rglob(".tmp-*"))


def test_request_files_and_the_scrub_of_payload_kinds(tmp_path):
    csv_file = tmp_path / "requests.csv"
    csv_file.write_text("id,Email\n1, Jane.Forget@Example.com\n", encoding="utf-8")
    assert read_request_file(csv_file) == [" Jane.Forget@Example.com"]
    bad = tmp_path / "bad.ndjson"
    bad.write_text('{"email": "a@b.co"}\n{"email": "nope"}\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad.ndjson: line 2: email: no @"):
        read_request_file(bad)

    targets = Targets.of([PERSON])
    payload = json.dumps({"data": {"type": "profile-bulk-import-job", "attributes": {"profiles": {"data": [
        {"attributes": {"email": "OTHER@x.org"}}, {"attributes": {"email": PERSON}}]}}}}).encode()
    out, removed = scrub_bytes(payload, "klaviyo-1.json", targets)
    assert removed == 1 and b"other@x.org" in out.lower() and not targets.hit(out)
    meta = json.dumps({"payload": {"schema": ["EMAIL"], "data": [[HASH.upper()], ["ab" * 32]]}}).encode()
    out, removed = scrub_bytes(gzip.compress(meta), "meta.json.gz", targets)
    assert removed == 1 and not targets.hit(gzip.decompress(out))
    csv_out, removed = scrub_bytes(b"Email\n" + HASH.encode() + b"\nzz@x.org\n", "cm.csv", targets)
    assert (csv_out, removed) == (b"Email\nzz@x.org\n", 1)

    # text files found by walking the tree: lines with the person go, the rest stays byte for byte
    # (blank lines and a CRLF line included, whatever numbering the fast path uses)
    tree = tmp_path / "tree" / "sync_dry_run" / "dotdigital" / "run1"
    tree.mkdir(parents=True)
    (tree / "import.csv").write_bytes(b"Email,Name\r\n\nzz@x.org,Z\n" + PERSON.upper().encode() + b",J\n\nyy@x.org,Y")
    (tree / "notes.txt").write_bytes("caf\u00e9\n".encode("latin-1") + b"mailto:" + NORM.encode() + b"\nkeep\n")
    report = scrub_tree(tmp_path / "tree", targets)
    assert (tree / "import.csv").read_bytes() == b"Email,Name\r\n\nzz@x.org,Z\n\nyy@x.org,Y"
    assert (tree / "notes.txt").read_bytes() == "caf\u00e9\n".encode("latin-1") + b"keep\n"  # not UTF-8
    assert report.rows_removed == 2 and report.files_rewritten == 2

    db = tmp_path / "state.duckdb"
    con = duckdb.connect(str(db))
    con.execute("CREATE TABLE held (holder VARCHAR, email VARCHAR, PRIMARY KEY (holder, email))")
    con.execute("INSERT INTO held VALUES ('k', ?), ('k', 'keep@x.org')", [NORM])
    con.close()
    assert scrub_duckdb_file(db, targets)[0] == 1
    assert NORM.encode() not in db.read_bytes()
    con = duckdb.connect(str(db))
    assert con.execute("SELECT email FROM held").fetchall() == [("keep@x.org",)]
    con.close()


def test_deletion_requests_landing_source_runs_the_same_forget(tmp_path, monkeypatch):
    from segment_pipeline.core.landing_watch import source_folders
    from segment_pipeline.defs.privacy.deletion import deletion_requests

    landing, wh, exports = tmp_path / "landing", Warehouse(tmp_path / "warehouse"), tmp_path / "exports"
    sources = tmp_path / "sources.yaml"
    sources.write_text("sources:\n  profiles: {kind: profiles}\n  gdpr: {kind: deletion_requests}\n", encoding="utf-8")
    monkeypatch.setenv("SEGMENT_PIPELINE_SOURCES", str(sources))
    monkeypatch.setenv("SEGMENT_PIPELINE_API_STATE", str(tmp_path / "api_state"))
    assert source_folders() == ["profiles"]  # ingestion and its landing sensor leave the requests alone
    day = DAYS[1]
    write_ndjson(landing, "profiles", day, [_profile(PERSON, 1, day), _profile(OTHERS[0], 2, day)])
    con = connect(preserve_order=True)
    assert ingest_day(con, wh, landing, "profiles", day).rows_valid == 2
    folder = landing / "gdpr" / f"date={day}"
    folder.mkdir(parents=True)
    (folder / "requests.csv").write_text(f"email,requested\n{PERSON.upper()},{day}\n", encoding="utf-8")
    res = {"warehouse": WarehouseResource(root=str(wh.root)), "landing": LandingZoneResource(root=str(landing)),
           "exports": ExportsResource(local_dir=str(exports), s3=S3Resource())}
    result = dg.materialize([deletion_requests], resources=res, partition_key=day,
                            instance=dg.DagsterInstance.ephemeral())
    assert result.success
    meta = result.asset_materializations_for_node("deletion_requests")[0].metadata
    assert meta["requests_done"].value == 1 and meta["rows_removed"].value == 1  # raw_profiles
    assert meta["rows_masked"].value == 1  # the identity link, kept with the hash
    assert meta["requests_per_source"].value == {"gdpr": 1}
    (request,) = Ledger(wh.root).requests()
    assert request.source == "landing:gdpr" and request.email_sha256 == HASH
    assert con.execute(f"SELECT email FROM {wh.scan('raw_profiles')}").fetchall() == [(OTHERS[0],)]


def test_deletion_requests_keep_valid_rows_quarantine_bad_ones_and_read_late_files(tmp_path, monkeypatch):
    """Review item 7: a bad row does not hold back the valid requests of its file (they are
    recorded and applied; the row is quarantined with file, line and reason, never the value, and
    the check fails); a file that lands late in an earlier day's folder is read by the next run,
    and a file already read is not read again."""
    from segment_pipeline.defs.privacy.deletion import deletion_requests

    landing, wh, exports = tmp_path / "landing", Warehouse(tmp_path / "warehouse"), tmp_path / "exports"
    sources = tmp_path / "sources.yaml"
    sources.write_text("sources:\n  profiles: {kind: profiles}\n  gdpr: {kind: deletion_requests}\n", encoding="utf-8")
    monkeypatch.setenv("SEGMENT_PIPELINE_SOURCES", str(sources))
    monkeypatch.setenv("SEGMENT_PIPELINE_API_STATE", str(tmp_path / "api_state"))
    res = {"warehouse": WarehouseResource(root=str(wh.root)), "landing": LandingZoneResource(root=str(landing)),
           "exports": ExportsResource(local_dir=str(exports), s3=S3Resource())}

    def run(day: str) -> tuple[dict, bool]:
        result = dg.materialize([deletion_requests], resources=res, partition_key=day,
                                instance=dg.DagsterInstance.ephemeral())
        assert result.success
        meta = {k: v.value for k, v in result.asset_materializations_for_node("deletion_requests")[0].metadata.items()}
        (check,) = result.get_asset_check_evaluations()
        return meta, check.passed

    def deliver(day: str, lines: list[str]) -> None:
        folder = landing / "gdpr" / f"date={day}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "requests.ndjson").write_text("\n".join(lines) + "\n", encoding="utf-8")

    deliver(DAYS[1], [json.dumps({"email": PERSON}), json.dumps({"email": "not-an-address"}), "{oops"])
    meta, passed = run(DAYS[1])
    assert not passed and meta["request_rows_quarantined"] == 2 and meta["requests_per_source"] == {"gdpr": 1}
    assert meta["requests_done"] == 1
    ledger = Ledger(wh.root)
    assert [r.email_sha256 for r in ledger.requests()] == [HASH]
    rejects = ledger.rejects()
    assert [(r["source_file"], r["source_line"]) for r in rejects] == [(f"gdpr/date={DAYS[1]}/requests.ndjson", 2),
                                                                       (f"gdpr/date={DAYS[1]}/requests.ndjson", 3)]
    assert rejects[0]["reason"] == "email: no @" and rejects[1]["reason"].startswith("not JSON")
    assert b"not-an-address" not in (wh.root / "privacy" / "ledger.duckdb").read_bytes()

    deliver(DAYS[0], [json.dumps({"email": OTHERS[0]})])  # lands late, in an earlier day's folder
    meta, passed = run(DAYS[2])
    assert passed and meta["request_files_read"] == 1 and meta["requests_per_source"] == {"gdpr": 1}
    assert sorted(r.email_sha256 for r in ledger.requests()) == sorted(
        [HASH, hashlib.sha256(OTHERS[0].encode()).hexdigest()])
    meta, passed = run(DAYS[2])  # nothing new: no file read again
    assert passed and meta["request_files_read"] == 0 and meta["requests_done"] == 0


def _small_warehouse(tmp_path: Path) -> tuple[Warehouse, duckdb.DuckDBPyConnection]:
    """profiles, memberships (segment 'de': everyone) and segment_stats of DAYS[0] for the person and OTHERS."""
    wh = Warehouse(tmp_path / "warehouse")
    con = connect()
    day = DAYS[0]
    people = [NORM, *OTHERS]
    email = "e.email"
    values = ", ".join(f"('{e}')" for e in people)
    cols = ", ".join(
        {"identity_id": f"substr(md5({email}), 1, 16) AS identity_id", "email": f"{email} AS email"}.get(
            c, f'NULL::{t} AS "{c}"') for c, t in wh.schema("profiles").items())
    wh.write_partition(con, "profiles", day, f"SELECT {cols} FROM (VALUES {values}) e(email)")
    wh.write_partition(con, "memberships", day, f"SELECT 'de' AS segment_id, substr(md5({email}), 1, 16) AS identity_id, "
                                                f"{email} AS email FROM (VALUES {values}) e(email)")
    wh.write_partition(con, "segment_stats", day, "SELECT 'de' AS segment_id, 'Germany' AS segment_name, 'dynamic' AS "
                       "segment_type, 'refreshed' AS status, NULL::DATE AS frozen_on, 13 AS member_count, 0 AS added, "
                       "0 AS removed")
    return wh, con


def test_forget_rewrites_exports_on_s3(tmp_path, monkeypatch):
    from segment_pipeline.core.exports.daily_feed import read_latest, write_daily_feed
    from segment_pipeline.core.exports.storage import S3ExportStorage
    from segment_pipeline_tests.fakes.s3 import moto_s3_server

    wh, con = _small_warehouse(tmp_path)
    day = DAYS[0]
    with moto_s3_server() as moto:
        storage = S3ExportStorage(moto.client(), moto.new_bucket(), prefix="partner")
        write_daily_feed(con, wh, storage, day)
        export = export_segment(con, wh, storage, SegmentExportRequest("de", ("email",), "zip"), chunk_size=4)
        assert NORM.encode() in storage.get_bytes(f"daily/nosto_segments/{day}.json")
        result = forget(wh.root, storage, [PERSON], index_dirs=[])
        assert result.done and result.report.rows_removed >= 4  # profiles, memberships, feed line, export line
        feed = storage.get_bytes(f"daily/nosto_segments/{day}.json")
        assert NORM.encode() not in feed.lower() and len(feed.splitlines()) == 12
        assert read_latest(storage, "nosto_segments")["lines"] == 12
        check = verify_segment_export(storage, export.manifest_key, members=12, chunk_size=4)
        assert check.passed, check.problems
        for key in storage.list_keys("segment-export"):
            data = storage.get_bytes(key)
            if key.endswith(".zip"):
                with zipfile.ZipFile(io.BytesIO(data)) as zf:
                    data = b"".join(zf.read(n) for n in zf.namelist())
            assert NORM.encode() not in data.lower(), key
    con.close()


def test_forget_keeps_customer_match_manifests_consistent(tmp_path):
    from segment_pipeline.core.exports.customer_match import read_manifest, write_customer_match
    from segment_pipeline.core.sync.hashing import google_email_hash

    wh, con = _small_warehouse(tmp_path)
    storage = LocalExportStorage(tmp_path / "exports")
    write_customer_match(con, wh, storage, DAYS[0], {"de": "Germany"})
    (entry,) = read_manifest(storage, DAYS[0])["files"]
    assert (entry["rows"], entry["members"]) == (13, 13)
    forget(wh.root, storage, [PERSON], index_dirs=[])
    (entry,) = read_manifest(storage, DAYS[0])["files"]
    path = tmp_path / "exports" / "customer_match" / DAYS[0] / entry["file"]
    data = path.read_bytes()
    assert google_email_hash(NORM).encode() not in data and HASH.encode() not in data
    assert (entry["rows"], entry["members"], entry["bytes"]) == (12, 12, len(data))
    assert entry["sha256"] == hashlib.sha256(data).hexdigest()
    con.close()
