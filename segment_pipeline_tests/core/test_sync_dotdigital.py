"""dotdigital sync against the stateful fake (real HTTP on loopback, real client, real state store)."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from segment_pipeline.core.esp.dotdigital import DotdigitalClient
from segment_pipeline.core.esp.http import EspAuthError
from segment_pipeline.core.sync.runner import DotdigitalSettings, sync_dotdigital
from segment_pipeline.core.sync.state import StateStore
from segment_pipeline.core.warehouse import Warehouse
from segment_pipeline_tests.fakes.dotdigital import FakeDotdigital
from segment_pipeline_tests.fakes.helpers import (
    DD_PASSWORD,
    dotdigital_client,
    kill_when,
    start_sync_child,
    write_memberships,
)
from segment_pipeline_tests.waiting import HANG_TIMEOUT

D1, D2 = "2026-11-01", "2026-11-02"
SYNCED = {"loyal": "Loyal Customers", "nike": "Affinity: Nike, Adidas"}  # a comma: CSV quoting matters
FIELD = "NOSTOSEGMENT"


@pytest.fixture
def fake():
    with FakeDotdigital() as f:
        yield f


@pytest.fixture
def wh(tmp_path: Path) -> Warehouse:
    return Warehouse(tmp_path / "warehouse")


def _sync(wh, tmp_path, day, client, synced=SYNCED, **settings):
    return sync_dotdigital(wh, day, synced, state_dir=tmp_path / "state", dry_run_root=tmp_path / "dry",
                           client=client,
                           settings=DotdigitalSettings(**{"contacts_per_import": 40, "max_in_flight": 2, **settings}))


def _rows(n: int) -> list[tuple[str, str]]:
    return [("loyal", f"u{i}@shop.com") for i in range(n)] + [("nike", f"u{i}@shop.com") for i in range(0, n, 2)]


def _imported_rows(fake: FakeDotdigital) -> int:
    return sum(len(i["rows"]) - 1 for i in fake.imports.values())


def test_first_sync_creates_field_and_book_once_and_imports_everyone(fake, wh, tmp_path):
    write_memberships(wh, D1, _rows(100))
    report = _sync(wh, tmp_path, D1, dotdigital_client(fake.url))
    (book,) = fake.books_named("Nosto Customers")
    assert report.upserted == 100 and report.added == 100
    assert fake.field_value("u0@shop.com", FIELD) == "Affinity: Nike, Adidas|Loyal Customers"
    assert fake.field_value("u1@shop.com", FIELD) == "Loyal Customers"
    assert fake.book_members(book) == {f"u{i}@shop.com" for i in range(100)}
    assert fake.contacts["u5@shop.com"]["optInType"] == "Unknown"
    assert fake.data_fields[FIELD]["type"] == "String"
    assert fake.spec_violations == [] and fake.consent_attempts == []
    assert all(len(i["rows"]) - 1 <= 40 and i["merge"] == "OnlyOverwriteIfNotEmpty" for i in fake.imports.values())
    again = _sync(wh, tmp_path, D1, dotdigital_client(fake.url))
    assert again.upserted == 0 and len(fake.imports) == 3
    assert fake.create_calls == {"data-fields": 1, "address-books": 1}


def test_existing_contacts_keep_consent_opt_in_and_other_data(fake, wh, tmp_path):
    fake.seed_contact("u0@shop.com", {"FIRSTNAME": "Ann", FIELD: "Stale"}, opt_in="Double")
    write_memberships(wh, D1, _rows(4))
    _sync(wh, tmp_path, D1, dotdigital_client(fake.url))
    c = fake.contacts["u0@shop.com"]
    assert c["optInType"] == "Double" and c["consent"] == [{"key": "TEXT", "value": "yes please"}]
    assert c["dataFields"] == {"FIRSTNAME": "Ann", FIELD: "Affinity: Nike, Adidas|Loyal Customers"}
    assert fake.consent_attempts == [] and len(fake.contacts) == 4


def test_incremental_sync_sends_changes_and_clears_leavers(fake, wh, tmp_path):
    fake.seed_contact("u1@shop.com", {"FIRSTNAME": "Bob"})
    write_memberships(wh, D1, _rows(100))
    client = dotdigital_client(fake.url)
    _sync(wh, tmp_path, D1, client)
    before = _imported_rows(fake)
    rows = [("loyal", f"u{i}@shop.com") for i in range(10, 100)] + [("nike", f"u{i}@shop.com") for i in range(0, 100, 2)]
    write_memberships(wh, D2, rows)
    report = _sync(wh, tmp_path, D2, client)
    assert (report.upserted, report.cleared) == (5, 5)
    assert _imported_rows(fake) - before == 10
    assert fake.field_value("u2@shop.com", FIELD) == "Affinity: Nike, Adidas"
    assert fake.field_value("u1@shop.com", FIELD) is None
    assert fake.field_value("u1@shop.com", "FIRSTNAME") == "Bob"  # the clear touched only our field
    clear_imports = [i for i in fake.imports.values() if i["merge"] == "Overwrite"]
    assert len(clear_imports) == 1 and clear_imports[0]["rows"][0] == ["Email", FIELD]


def test_rejected_rows_recorded_and_retried(fake, wh, tmp_path):
    write_memberships(wh, D1, _rows(20) + [("loyal", "broken@@shop")])
    fake.reject_emails.add("u3@shop.com")
    client = dotdigital_client(fake.url)
    report = _sync(wh, tmp_path, D1, client)
    assert report.rejected == 2 and report.upserted == 19
    with StateStore(tmp_path / "state") as store:
        assert set(store.rejects(report.destination)) == {"u3@shop.com", "broken@@shop"}
    fake.reject_emails.clear()
    again = _sync(wh, tmp_path, D1, client)
    assert again.planned_upserts == 2 and again.upserted == 1
    assert fake.field_value("u3@shop.com", FIELD) == "Loyal Customers"


def test_import_rate_limit_and_concurrency_are_honoured(fake, wh, tmp_path):
    write_memberships(wh, D1, _rows(100))
    fake.set_limits("import", [(2, 1.0)])
    fake.max_active_imports = 1
    # the first import stays active until the client has been refused once, however the machine
    # schedules the client's three concurrent imports
    fake.advance_on_poll = False

    def finish_imports_after_a_refusal() -> None:
        fake.wait_for(lambda: fake.count(family="import", status=429) >= 1, timeout=HANG_TIMEOUT)
        fake.advance_on_poll = True

    threading.Thread(target=finish_imports_after_a_refusal, daemon=True).start()
    client = dotdigital_client(fake.url, limits={"import": [(100, 1.0)]})
    report = _sync(wh, tmp_path, D1, client, contacts_per_import=20, max_in_flight=3)
    assert report.upserted == 100 and report.throttled > 0
    assert fake.count(family="import", status=202) == 5


def test_faults_are_retried(fake, wh, tmp_path):
    write_memberships(wh, D1, _rows(50))
    fake.inject("500", times=2, match="/contacts/import/")
    fake.inject("drop_after", times=1, match="POST /v2/address-books")
    fake.inject("drop", times=1, match="POST /v2/data-fields")
    report = _sync(wh, tmp_path, D1, dotdigital_client(fake.url))
    assert report.upserted == 50 and report.retries >= 2
    assert len(fake.books_named("Nosto Customers")) == 1 and fake.create_calls["data-fields"] == 1


def test_wrong_password_fails_cleanly(fake, wh, tmp_path):
    write_memberships(wh, D1, _rows(2))
    client = DotdigitalClient("apiuser-fake@apiconnector.com", "wrong-" + DD_PASSWORD, base_url=fake.url)
    with pytest.raises(EspAuthError) as info:
        _sync(wh, tmp_path, D1, client)
    assert DD_PASSWORD not in str(info.value)


def test_dry_run_writes_csv_payloads(wh, tmp_path):
    write_memberships(wh, D1, _rows(50))
    report = _sync(wh, tmp_path, D1, None)
    out = Path(report.payload_dir)
    assert sorted(p.name for p in out.iterdir()) == [
        "summary.json", "upsert-00001-OnlyOverwriteIfNotEmpty.csv", "upsert-00002-OnlyOverwriteIfNotEmpty.csv"]
    first = (out / "upsert-00001-OnlyOverwriteIfNotEmpty.csv").read_text().splitlines()
    assert first[0] == f"Email,{FIELD}" and first[1] == 'u0@shop.com,"Affinity: Nike, Adidas|Loyal Customers"'
    assert json.loads((out / "summary.json").read_text())["upserted"] == 50


def test_sigkill_mid_run_then_rerun_converges(fake, wh, tmp_path):
    n = 1200
    write_memberships(wh, D1, [("loyal", f"u{i}@shop.com") for i in range(n)])
    fake.advance_on_poll = False
    fake.seconds_per_contact = 0.001  # a 100-contact import takes ~0.1s
    state = tmp_path / "state"
    proc = start_sync_child("dotdigital", fake.url, wh.root, state, D1, SYNCED)
    kill_when(fake, proc, lambda: fake.count(family="import", status=202) >= 5, "the child's imports")
    with StateStore(state) as store:
        confirmed = len(store.mirror_rows(store.get_meta("last_dest")))
    assert 0 < confirmed < n
    report = _sync(wh, tmp_path, D1, dotdigital_client(fake.url), contacts_per_import=100)
    assert report.planned_upserts == n - confirmed
    assert len(fake.contacts) == n and fake.create_calls == {"data-fields": 1, "address-books": 1}
    assert all(fake.field_value(f"u{i}@shop.com", FIELD) == "Loyal Customers" for i in range(n))
