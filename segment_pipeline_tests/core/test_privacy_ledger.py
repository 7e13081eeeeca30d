"""The deletion ledger (core/privacy/ledger.py): requests, tombstones, destinations, settling."""

from __future__ import annotations

import hashlib
import multiprocessing
import stat

import duckdb
import pytest

from segment_pipeline.core.privacy.ledger import InvalidAddressError, Ledger, email_sha256

ADDR = "Jane.Doe@Example.com"
NORM = "jane.doe@example.com"
HASH = hashlib.sha256(NORM.encode()).hexdigest()


def test_request_normalises_hashes_and_is_idempotent(tmp_path):
    ledger = Ledger(tmp_path)
    (req,) = ledger.request([f"  {ADDR}\u200b"], source="cli")
    assert req.email_sha256 == HASH == email_sha256(ADDR)
    assert req.source == "cli" and req.request_id.startswith("del-")
    again = ledger.request([NORM, NORM.upper()], source="landing:deletions")
    assert [r.request_id for r in again] == [req.request_id]  # open request returned, not duplicated
    assert ledger.tombstoned() == [HASH]
    assert ledger.pending(req.request_id).email == NORM
    assert [p.request_id for p in ledger.warehouse_todo()] == [req.request_id]
    # hashes only in the database; the address only in the pending file, both owner-only
    assert NORM.encode() not in (tmp_path / "privacy" / "ledger.duckdb").read_bytes()
    for path in (tmp_path / "privacy").rglob("*"):
        if path.is_file():
            assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert stat.S_IMODE((tmp_path / "privacy").stat().st_mode) == 0o700


def test_invalid_address_is_refused_without_recording_anything(tmp_path):
    ledger = Ledger(tmp_path)
    with pytest.raises(InvalidAddressError, match=r"entry 2: email: no @"):
        ledger.request([NORM, "not-an-address"], source="cli")
    assert ledger.tombstoned() == [] and ledger.requests() == []


def test_tombstone_sql_and_lift(tmp_path):
    ledger = Ledger(tmp_path)
    ledger.request([ADDR, "b@example.org"], source="cli")
    con = duckdb.connect()
    got = sorted(r[0] for r in con.execute(f"SELECT email_sha256 FROM ({ledger.tombstone_sql()})").fetchall())
    assert got == ledger.tombstoned() == sorted([HASH, email_sha256("b@example.org")])
    assert ledger.lift(ADDR.upper()) is True
    assert ledger.lift(HASH) is False  # already lifted
    assert ledger.tombstoned() == [email_sha256("b@example.org")]
    got = [r[0] for r in con.execute(f"SELECT * FROM ({ledger.tombstone_sql()})").fetchall()]
    assert got == [email_sha256("b@example.org")]
    assert ledger.lift(email_sha256("b@example.org").upper()) is True  # by hash, any case
    assert con.execute(f"SELECT count(*) FROM ({ledger.tombstone_sql()})").fetchall()[0][0] == 0
    # asking again while the request is open restores the tombstone
    ledger.request([ADDR], source="cli")
    assert ledger.tombstoned() == [HASH]


def test_destinations_mark_status_and_settle(tmp_path):
    ledger = Ledger(tmp_path)
    (req,) = ledger.request([ADDR], source="cli")
    assert [p.email for p in ledger.destination_todo("klaviyo")] == [NORM]
    ledger.mark(req.request_id, "klaviyo", "asked")
    ledger.mark(req.request_id, "klaviyo", "failed", "HTTP 503")
    ledger.mark(req.request_id, "klaviyo", "asked")
    ledger.mark(req.request_id, "klaviyo", "done")
    assert ledger.settle(req.request_id, ["klaviyo"]) is False  # warehouse not done, not confirmed
    ledger.mark(req.request_id, "klaviyo", "confirmed")
    assert ledger.destination_todo("klaviyo") == []
    assert [p.request_id for p in ledger.destination_todo("dotdigital")] == [req.request_id]
    (row,) = ledger.status(req.request_id)
    assert row["destination"] == "klaviyo" and row["attempts"] == 2 and row["last_error"] == "HTTP 503"
    assert row["asked_at"] <= row["done_at"] <= row["confirmed_at"] and row["warehouse_done_at"] is None
    assert ledger.settle(req.request_id, ["klaviyo"]) is False  # warehouse not done
    ledger.warehouse_done(req.request_id)
    assert ledger.warehouse_todo() == []
    assert ledger.settle(req.request_id, ["klaviyo", "dotdigital"]) is False
    assert ledger.settle(req.request_id, ["klaviyo"]) is True
    assert ledger.pending(req.request_id) is None
    assert not any((tmp_path / "privacy" / "pending").iterdir())
    assert ledger.requests() == [] and ledger.tombstoned() == [HASH]  # the tombstone outlives the request
    (new,) = ledger.request([ADDR], source="cli")  # a settled request is not reused
    assert new.request_id != req.request_id
    with pytest.raises(KeyError, match="no deletion request"):
        ledger.mark("del-unknown", "klaviyo", "asked")
    with pytest.raises(ValueError, match="unknown state"):
        ledger.mark(new.request_id, "klaviyo", "gone")  # type: ignore[arg-type]


def _request_many(root: str, n: int) -> None:
    ledger = Ledger(root)
    for i in range(n):
        ledger.request([f"user{i}@example.com"], source="cli")


def test_processes_are_serialised(tmp_path):
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_request_many, args=(str(tmp_path), 5)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0]
    ledger = Ledger(tmp_path)
    assert len(ledger.tombstoned()) == 5 and len(ledger.requests()) == 5


def test_a_repeated_request_reopens_the_warehouse_step(tmp_path):
    ledger = Ledger(tmp_path)
    (req,) = ledger.request([ADDR], source="cli")
    ledger.warehouse_done(req.request_id)
    assert ledger.warehouse_todo() == []
    (again,) = ledger.request([NORM], source="landing:gdpr")  # the person came back and asked again
    assert again.request_id == req.request_id
    assert [p.request_id for p in ledger.warehouse_todo()] == [req.request_id]  # the next forget scrubs again
    (row,) = ledger.status(req.request_id)
    assert row["warehouse_done_at"] is None
