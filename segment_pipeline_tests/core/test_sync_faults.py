"""Issue 13's three sync faults, each as a kind, against the stateful fakes (real HTTP, real state).

* list switch: the mirror keys property values by the property/field (the whole profile) and list
  membership by the list/book, so switching list, book, property or field name and back converges;
* report counters: a batch whose counters exceed the rows the destination names is confirmed per
  row, never held back whole;
* value limits: values over a destination's limit keep whole names up to it, recorded and counted.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from segment_pipeline.core.sync.destinations.dotdigital import MAX_FIELD_CHARS
from segment_pipeline.core.sync.runner import (
    DotdigitalSettings,
    KlaviyoSettings,
    sync_dotdigital,
    sync_klaviyo,
)
from segment_pipeline.core.sync.state import StateStore, Target
from segment_pipeline.core.warehouse import Warehouse
from segment_pipeline_tests.fakes.dotdigital import FakeDotdigital
from segment_pipeline_tests.fakes.helpers import dotdigital_client, klaviyo_client, write_memberships
from segment_pipeline_tests.fakes.klaviyo import FakeKlaviyo

DAY_A, DAY_B = "2026-11-01", "2026-11-02"
SYNCED = {"s1": "S1", "s2": "S2"}


@pytest.fixture
def wh(tmp_path: Path) -> Warehouse:
    w = Warehouse(tmp_path / "warehouse")
    # day A: x@ and y@ in S1; day B: x@ only in S2, y@ in nothing, z@ in S2
    write_memberships(w, DAY_A, [("s1", "x@shop.com"), ("s1", "y@shop.com")])
    write_memberships(w, DAY_B, [("s2", "x@shop.com"), ("s2", "z@shop.com")])
    return w


def _kl(wh, tmp_path, day, client, **settings):
    return sync_klaviyo(wh, day, SYNCED, state_dir=tmp_path / "state", dry_run_root=tmp_path / "dry", client=client,
                        settings=KlaviyoSettings(**{"max_profiles_per_job": 50, "max_in_flight": 2, **settings}))


def _dd(wh, tmp_path, day, client, synced=SYNCED, **settings):
    return sync_dotdigital(wh, day, synced, state_dir=tmp_path / "state", dry_run_root=tmp_path / "dry",
                           client=client,
                           settings=DotdigitalSettings(**{"contacts_per_import": 50, "max_in_flight": 2, **settings}))


# -- list switch ------------------------------------------------------------------------------
def test_klaviyo_list_switch_and_back_converges(wh, tmp_path):
    with FakeKlaviyo() as fake:
        client = klaviyo_client(fake.url)
        assert _kl(wh, tmp_path, DAY_A, client, list_name="L1").status == "ok"
        b = _kl(wh, tmp_path, DAY_B, client, list_name="L2")
        assert fake.property_of("x@shop.com", "nosto_segment") == ["S2"]
        assert fake.property_of("y@shop.com", "nosto_segment") == []  # cleared: the property is the profile's
        assert b.cleared == 1
        again = _kl(wh, tmp_path, DAY_A, client, list_name="L1")
        assert again.status == "ok" and again.upserted == 2  # x@ (holds S2) and y@ (cleared) sent again
        assert fake.property_of("x@shop.com", "nosto_segment") == ["S1"]
        assert fake.property_of("y@shop.com", "nosto_segment") == ["S1"]
        assert fake.property_of("z@shop.com", "nosto_segment") == []
        (l1,) = fake.lists_named("L1")
        (l2,) = fake.lists_named("L2")
        assert fake.member_emails(l1) == {"x@shop.com", "y@shop.com"}
        assert fake.member_emails(l2) == {"x@shop.com", "z@shop.com"}  # the old list is left as it was
        assert _kl(wh, tmp_path, DAY_A, client, list_name="L1").planned_upserts == 0  # converged
        _assert_one_member_row_each(tmp_path)


def test_klaviyo_property_rename_and_back_converges(wh, tmp_path):
    with FakeKlaviyo() as fake:
        client = klaviyo_client(fake.url)
        _kl(wh, tmp_path, DAY_A, client, property_name="p1")
        renamed = _kl(wh, tmp_path, DAY_B, client, property_name="p2")
        assert renamed.upserted == 2 and renamed.added == 1  # same list: only z@ is new to it
        assert fake.property_of("x@shop.com", "p2") == ["S2"]
        (l1,) = fake.lists_named("Nosto Customers")
        assert fake.member_emails(l1) == {"x@shop.com", "z@shop.com"}  # y@ left the audience
        back = _kl(wh, tmp_path, DAY_A, client, property_name="p1")
        assert fake.property_of("x@shop.com", "p1") == ["S1"] and fake.property_of("y@shop.com", "p1") == ["S1"]
        assert back.planned_upserts == 1  # y@ back into the list; x@'s p1 already holds S1
        assert fake.member_emails(l1) == {"x@shop.com", "y@shop.com"}


def test_dotdigital_book_switch_and_back_converges(wh, tmp_path):
    with FakeDotdigital() as fake:
        client = dotdigital_client(fake.url)
        _dd(wh, tmp_path, DAY_A, client, address_book="B1")
        _dd(wh, tmp_path, DAY_B, client, address_book="B2")
        assert fake.field_value("x@shop.com", "NOSTOSEGMENT") == "S2"
        assert fake.field_value("y@shop.com", "NOSTOSEGMENT") is None
        again = _dd(wh, tmp_path, DAY_A, client, address_book="B1")
        assert again.status == "ok"
        assert fake.field_value("x@shop.com", "NOSTOSEGMENT") == "S1"
        assert fake.field_value("y@shop.com", "NOSTOSEGMENT") == "S1"
        (b1,) = fake.books_named("B1")
        (b2,) = fake.books_named("B2")
        assert {"x@shop.com", "y@shop.com"} <= fake.book_members(b1)
        assert {"x@shop.com", "z@shop.com"} <= fake.book_members(b2)
        assert _dd(wh, tmp_path, DAY_A, client, address_book="B1").planned_upserts == 0
        # a new book gets everyone desired, even those whose field already holds the right value
        b3 = _dd(wh, tmp_path, DAY_A, client, address_book="B3")
        (b3_id,) = fake.books_named("B3")
        assert b3.upserted == 2 and fake.book_members(b3_id) == {"x@shop.com", "y@shop.com"}
        assert fake.spec_violations == []
        _assert_one_member_row_each(tmp_path)


def _assert_one_member_row_each(tmp_path: Path) -> None:
    with StateStore(tmp_path / "state") as store:
        total, distinct = store.con.execute(
            "SELECT count(*), count(DISTINCT (container, email)) FROM members").fetchall()[0]
    assert total == distinct > 0


def test_dotdigital_field_rename_and_back_converges(wh, tmp_path):
    with FakeDotdigital() as fake:
        client = dotdigital_client(fake.url)
        _dd(wh, tmp_path, DAY_A, client, data_field="SEGA")
        _dd(wh, tmp_path, DAY_B, client, data_field="SEGB")
        assert fake.field_value("x@shop.com", "SEGB") == "S2"
        back = _dd(wh, tmp_path, DAY_A, client, data_field="SEGA")
        assert back.status == "ok"
        assert fake.field_value("x@shop.com", "SEGA") == "S1" and fake.field_value("y@shop.com", "SEGA") == "S1"


# -- report counters ---------------------------------------------------------------------------
def test_dotdigital_counters_above_the_faults_rows_confirm_per_row(tmp_path):
    wh = Warehouse(tmp_path / "warehouse")
    write_memberships(wh, DAY_A, [("s1", f"u{i}@shop.com") for i in range(40)])
    with FakeDotdigital() as fake:
        fake.suppressed_emails["u7@shop.com"] = "unsubscribed"  # counted twice, one faults row
        client = dotdigital_client(fake.url)
        first = _dd(wh, tmp_path, DAY_A, client)
        (imp,) = fake.imports.values()
        assert imp["report"]["unsubscribed"] + imp["report"]["suppressedContacts"] == 2
        assert first.upserted == 39 and first.rejected == 1 and first.report_mismatches == 1
        assert first.unconfirmed == 0
        with StateStore(tmp_path / "state") as store:
            assert list(store.rejects(first.destination)) == ["u7@shop.com"]
            assert "suppressed" in store.rejects(first.destination)["u7@shop.com"]
        again = _dd(wh, tmp_path, DAY_A, client)
        assert again.planned_upserts == 1  # only the refused row is retried, not the whole batch
        assert len(fake.imports) == 2 and len(list(fake.imports.values())[1]["rows"]) == 2  # header + u7


def test_klaviyo_failed_count_above_named_errors_confirms_per_row(tmp_path):
    """The same rule for Klaviyo: ``failed_count`` over the named import errors does not hold the job back."""
    wh = Warehouse(tmp_path / "warehouse")
    write_memberships(wh, DAY_A, [("s1", f"u{i}@shop.com") for i in range(30)])
    with FakeKlaviyo() as fake:
        fake.reject_emails.add("u3@shop.com")
        fake.extra_failed_count = 2  # counters say 3 failed; the errors name 1
        report = _kl(wh, tmp_path, DAY_A, klaviyo_client(fake.url))
        assert report.upserted == 29 and report.rejected == 1 and report.report_mismatches == 1


# -- value limits ------------------------------------------------------------------------------
def test_dotdigital_values_over_255_characters_keep_whole_names(tmp_path):
    wh = Warehouse(tmp_path / "warehouse")
    names = {f"seg{i:02d}": f"Segment number {i:02d} with a long descriptive name" for i in range(12)}
    rows = [(sid, "many@shop.com") for sid in names] + [("seg00", "one@shop.com")]
    write_memberships(wh, DAY_A, rows)
    full = "|".join(sorted(names.values()))
    assert len(full) > MAX_FIELD_CHARS  # 12 x 46 + 11 = 563 characters
    with FakeDotdigital() as fake:
        client = dotdigital_client(fake.url)
        report = _dd(wh, tmp_path, DAY_A, client, synced=names)
        value = fake.field_value("many@shop.com", "NOSTOSEGMENT")
        kept = sorted(names.values())[:5]  # 5 x 46 + 4 separators = 234 <= 255; a 6th would make 281
        assert value == "|".join(kept) and len(value) <= MAX_FIELD_CHARS
        assert fake.field_value("one@shop.com", "NOSTOSEGMENT") == names["seg00"]
        assert report.truncated == 1 and report.upserted == 2 and report.rejected == 0
        assert "1 values over the 255-character limit" in report.notes[0]
        assert repr(sorted(names.values())[5]) + " (1)" in report.notes[0]  # which names were dropped, no emails
        assert fake.spec_violations == []
        with StateStore(tmp_path / "state") as store:
            (got,) = store.truncations(report.destination).items()
        assert got == ("many@shop.com", (kept, sorted(names.values())[5:]))
        again = _dd(wh, tmp_path, DAY_A, client, synced=names)
        assert again.planned_upserts == 0 and again.truncated == 1  # the fitted value is what it holds


def test_dry_run_counts_truncation_too(tmp_path):
    wh = Warehouse(tmp_path / "warehouse")
    names = {f"seg{i:02d}": "N" * 100 + str(i) for i in range(4)}
    write_memberships(wh, DAY_A, [(sid, "many@shop.com") for sid in names])
    report = _dd(wh, tmp_path, DAY_A, None, synced=names)
    assert report.dry_run and report.truncated == 1
    (csv_file,) = Path(report.payload_dir).glob("upsert-*.csv")
    line = csv_file.read_text().splitlines()[1]
    assert line == "many@shop.com," + "|".join(sorted(names.values())[:2])


def test_state_written_before_the_split_is_migrated(tmp_path):
    import duckdb

    state = tmp_path / "state"
    state.mkdir()
    con = duckdb.connect(str(state / "state.duckdb"))
    con.execute("""CREATE TABLE mirror (dest VARCHAR, email VARCHAR, segments VARCHAR, in_list BOOLEAN,
                   updated_at TIMESTAMP, PRIMARY KEY (dest, email))""")
    kl_dest, dd_dest = "klaviyo|http://k|list=L1|property=a|b", "dotdigital|http://d|book=7|field=NOSTOSEGMENT"
    con.execute("INSERT INTO mirror VALUES (?, 'x@shop.com', '[\"S1\"]', TRUE, now()), "
                "(?, 'y@shop.com', '[]', TRUE, now()), (?, 'c@shop.com', '[\"S2\"]', FALSE, now()), "
                "(?, 'd@shop.com', '[]', FALSE, now())", [kl_dest, kl_dest, dd_dest, dd_dest])
    con.close()
    with StateStore(state) as store:
        assert store.mirror_rows(kl_dest) == {"x@shop.com": (["S1"], True), "y@shop.com": ([], True)}
        # a dotdigital row with a value came from an import into the book: a member
        assert store.mirror_rows(dd_dest) == {"c@shop.com": (["S2"], True), "d@shop.com": ([], False)}
    with StateStore(state) as store:  # opening again is a no-op
        assert len(store.mirror_rows(kl_dest)) == 2
        store.set_in_list(Target.parse(kl_dest), ["x@shop.com", "z@shop.com", "z@shop.com"], True)
        assert store.con.execute("SELECT count(*) FROM members").fetchall()[0][0] == 4  # x, y, c + z once
