"""Klaviyo sync against the stateful fake (real HTTP on loopback, real client, real state store)."""

from __future__ import annotations

import dataclasses
import json
import signal
from pathlib import Path

import pytest

from segment_pipeline.core.esp.http import EspAuthError, EspGiveUp, RetryPolicy
from segment_pipeline.core.esp.klaviyo import KlaviyoClient
from segment_pipeline.core.sync.runner import KlaviyoSettings, sync_klaviyo
from segment_pipeline.core.sync.state import StateStore
from segment_pipeline.core.warehouse import Warehouse
from segment_pipeline_tests.fakes.helpers import (
    FAST,
    KLAVIYO_KEY,
    kill_when,
    klaviyo_client,
    start_sync_child,
    write_memberships,
)
from segment_pipeline_tests.fakes.klaviyo import FakeKlaviyo

D1, D2, D3 = "2026-11-01", "2026-11-02", "2026-11-03"
SYNCED = {"loyal": "Loyal Customers", "nike": "Affinity: Nike"}
PROP = "nosto_segment"


@pytest.fixture
def fake():
    with FakeKlaviyo() as f:
        yield f


@pytest.fixture
def wh(tmp_path: Path) -> Warehouse:
    return Warehouse(tmp_path / "warehouse")


def _sync(wh: Warehouse, tmp_path: Path, day: str, client, synced=SYNCED, **settings):
    return sync_klaviyo(wh, day, synced, state_dir=tmp_path / "state", dry_run_root=tmp_path / "dry", client=client,
                        settings=KlaviyoSettings(**{"max_profiles_per_job": 50, "max_in_flight": 3, **settings}))


def _day1(wh: Warehouse, n: int = 120) -> None:
    rows = [("loyal", f"u{i}@shop.com") for i in range(n)]
    rows += [("nike", f"u{i}@shop.com") for i in range(0, n, 2)]
    rows += [("other", f"u{i}@shop.com") for i in range(0, n, 3)]  # not synced
    rows += [("other", "only-other@shop.com")]
    write_memberships(wh, D1, rows)


def _imported_profiles(fake: FakeKlaviyo) -> int:
    return sum(len(j["profiles"]) for j in fake.jobs.values())


def test_first_sync_sends_everyone_once_with_sorted_segment_names(fake, wh, tmp_path):
    _day1(wh)
    report = _sync(wh, tmp_path, D1, klaviyo_client(fake.url))
    (list_id,) = fake.lists_named("Nosto Customers")
    assert report.desired == 120 and report.upserted == 120 and report.added == 120
    assert fake.member_emails(list_id) == {f"u{i}@shop.com" for i in range(120)}
    assert fake.property_of("u0@shop.com", PROP) == ["Affinity: Nike", "Loyal Customers"]
    assert fake.property_of("u1@shop.com", PROP) == ["Loyal Customers"]
    assert fake.profile("only-other@shop.com") is None
    assert _imported_profiles(fake) == 120
    assert all(len(j["profiles"]) <= 50 for j in fake.jobs.values())
    assert fake.spec_violations == [] and fake.consent_attempts == []
    assert report.requests == fake.count() and report.requests > 0
    assert report.destination.endswith(f"list={list_id}|property={PROP}")


def test_incremental_sync_sends_only_changes_and_removes_leavers(fake, wh, tmp_path):
    _day1(wh)
    client = klaviyo_client(fake.url)
    _sync(wh, tmp_path, D1, client)
    sent_before = _imported_profiles(fake)
    rows = [("loyal", f"u{i}@shop.com") for i in range(10, 120)]  # u0..u9 leave everything
    rows += [("nike", f"u{i}@shop.com") for i in range(0, 120, 2)]  # u0,u2,.. still in nike
    rows += [("nike", "new@shop.com")]
    write_memberships(wh, D2, rows)
    report = _sync(wh, tmp_path, D2, client)
    (list_id,) = fake.lists_named("Nosto Customers")
    # changed: u0,u2,..,u8 -> only nike (5); u1,u3,..,u9 -> left (5 clears + 5 removals); new (1)
    assert (report.planned_upserts, report.planned_clears, report.planned_removals) == (6, 5, 5)
    assert _imported_profiles(fake) - sent_before == 11  # 6 upserts + 5 clears, nothing else
    assert fake.property_of("u2@shop.com", PROP) == ["Affinity: Nike"]
    assert fake.property_of("u3@shop.com", PROP) == []
    assert fake.profile("u3@shop.com") is not None  # profiles are never deleted
    members = fake.member_emails(list_id)
    assert "u3@shop.com" not in members and {"u2@shop.com", "new@shop.com"} <= members
    assert report.removed == 5 and report.added == 1
    # a repeated run sends nothing at all
    jobs = len(fake.jobs)
    again = _sync(wh, tmp_path, D2, client)
    assert len(fake.jobs) == jobs and again.upserted == again.cleared == again.removed == 0
    assert fake.lists_named("Nosto Customers") == [list_id]
    assert fake.count(family="remove_profiles_from_list") == 1


def test_segment_toggle_and_departure_from_source(fake, wh, tmp_path):
    _day1(wh, n=20)
    client = klaviyo_client(fake.url)
    _sync(wh, tmp_path, D1, client, synced={"loyal": "Loyal Customers"})
    assert fake.property_of("u0@shop.com", PROP) == ["Loyal Customers"]
    report = _sync(wh, tmp_path, D1, client)  # nike switched on: only nike members change
    assert report.upserted == 10
    assert fake.property_of("u0@shop.com", PROP) == ["Affinity: Nike", "Loyal Customers"]
    write_memberships(wh, D2, [])  # everyone deleted from the source
    report = _sync(wh, tmp_path, D2, client)
    (list_id,) = fake.lists_named("Nosto Customers")
    assert report.cleared == 20 and report.removed == 20 and fake.member_emails(list_id) == set()


def test_existing_profiles_keep_consent_and_other_properties(fake, wh, tmp_path):
    fake.seed_profile("u0@shop.com", {"favourite": "red", PROP: ["Stale"]}, consent="SUBSCRIBED")
    fake.seed_profile("u1@shop.com", {}, consent="UNSUBSCRIBED")
    _day1(wh, n=4)
    _sync(wh, tmp_path, D1, klaviyo_client(fake.url))
    p0, p1 = fake.profile("u0@shop.com"), fake.profile("u1@shop.com")
    assert p0["subscriptions"]["email"]["marketing"]["consent"] == "SUBSCRIBED"
    assert p1["subscriptions"]["email"]["marketing"]["consent"] == "UNSUBSCRIBED"
    assert fake.profile("u2@shop.com")["subscriptions"]["email"]["marketing"]["consent"] == "NEVER_SUBSCRIBED"
    assert p0["properties"] == {"favourite": "red", PROP: ["Affinity: Nike", "Loyal Customers"]}
    assert fake.consent_attempts == []
    assert len(fake.by_email) == 4  # no duplicate profiles


def test_rejected_rows_are_recorded_and_retried_without_blocking_others(fake, wh, tmp_path):
    rows = [("loyal", f"u{i}@shop.com") for i in range(30)] + [("loyal", "not-an-email"), ("loyal", "bounce@shop.com")]
    write_memberships(wh, D1, rows)
    fake.reject_emails.add("bounce@shop.com")
    client = klaviyo_client(fake.url)
    report = _sync(wh, tmp_path, D1, client)
    assert report.rejected == 2 and report.upserted == 30
    with StateStore(tmp_path / "state") as store:
        rejects = store.rejects(report.destination)
    assert set(rejects) == {"not-an-email", "bounce@shop.com"}
    assert "Invalid email" in rejects["bounce@shop.com"]
    fake.reject_emails.clear()
    again = _sync(wh, tmp_path, D1, client)
    assert again.planned_upserts == 2 and again.upserted == 1 and again.rejected == 1  # only the rejects again
    with StateStore(tmp_path / "state") as store:
        assert set(store.rejects(report.destination)) == {"not-an-email"}
    assert fake.property_of("bounce@shop.com", PROP) == ["Loyal Customers"]


def test_server_rate_limits_are_honoured_via_retry_after(fake, wh, tmp_path):
    _day1(wh, n=60)
    fake.set_limits("bulk_import_profiles", [(2, 1.0)])
    # the client is told the limits are far higher, so only the server's 429s can slow it down
    client = klaviyo_client(fake.url, limits={"bulk_import_profiles": [(1000, 1.0)]})
    report = _sync(wh, tmp_path, D1, client, max_profiles_per_job=10, max_in_flight=6)
    assert report.upserted == 60
    assert fake.count(family="bulk_import_profiles", status=429) > 0
    assert report.throttled == fake.count(status=429)
    accepted = sorted(r.received_at for r in fake.log if r.family == "bulk_import_profiles" and r.status == 202)
    assert len(accepted) == 6
    assert all(b - a >= 0.99 for a, b in zip(accepted, accepted[2:], strict=False))  # the server never counted 3 in 1 s


def test_client_paces_itself_under_documented_limits(fake, wh, tmp_path):
    _day1(wh, n=60)
    fake.set_limits("bulk_import_profiles", [(3, 1.0)])
    client = klaviyo_client(fake.url, limits={"bulk_import_profiles": [(3, 1.0)]})
    report = _sync(wh, tmp_path, D1, client, max_profiles_per_job=10, max_in_flight=6)
    assert report.upserted == 60 and fake.count(status=429) <= 1


def test_faults_are_retried_and_the_run_converges(fake, wh, tmp_path):
    _day1(wh, n=40)
    fake.inject("503", times=2, match="POST /api/profile-bulk-import-jobs")
    fake.inject("drop", times=1, match="GET /api/profile-bulk-import-jobs")
    fake.inject("delay", times=1, match="GET /api/profiles", delay=3.0)  # past the 2s read timeout below
    fake.inject("drop_after", times=1, match="POST /api/lists")  # created, but the answer is lost
    # a 2 s read timeout: on a busy machine another answer may take that long too, which only
    # means one more retry (every call retried here is idempotent or looked up before a retry)
    timeouts = dataclasses.replace(FAST, read_timeout=2.0)
    _day1_then = _sync(wh, tmp_path, D1, klaviyo_client(fake.url, policy=timeouts))
    assert _day1_then.upserted == 40 and _day1_then.retries >= 3
    assert len(fake.lists_named("Nosto Customers")) == 1  # the lost create was found, not repeated
    write_memberships(wh, D2, [("loyal", f"u{i}@shop.com") for i in range(5, 40)])
    report = _sync(wh, tmp_path, D2, klaviyo_client(fake.url))
    (list_id,) = fake.lists_named("Nosto Customers")
    assert report.removed == 5 and "u0@shop.com" not in fake.member_emails(list_id)


def test_gives_up_after_bounded_time_with_a_clear_error_and_no_secret(fake, wh, tmp_path):
    _day1(wh, n=10)
    fake.inject("503", times=10_000, match="POST /api/profile-bulk-import-jobs")
    client = klaviyo_client(fake.url, policy=RetryPolicy(max_elapsed=1.0, base_delay=0.05, max_delay=0.2))
    with pytest.raises(EspGiveUp) as info:
        _sync(wh, tmp_path, D1, client)
    msg = str(info.value)
    assert "gave up" in msg and "/api/profile-bulk-import-jobs" in msg and "HTTP 503" in msg
    assert KLAVIYO_KEY not in msg
    with StateStore(tmp_path / "state") as store:
        (run,) = store.runs()
    assert run["status"] == "failed" and KLAVIYO_KEY not in (run["error"] or "")


def test_wrong_key_is_rejected_without_leaking_it(fake, wh, tmp_path):
    _day1(wh, n=3)
    client = KlaviyoClient("pk_wrong_secret", base_url=fake.url)
    with pytest.raises(EspAuthError) as info:
        _sync(wh, tmp_path, D1, client)
    assert "401" in str(info.value) and "pk_wrong_secret" not in str(info.value)


def test_new_list_means_everyone_is_sent_again(fake, wh, tmp_path):
    _day1(wh, n=10)
    client = klaviyo_client(fake.url)
    _sync(wh, tmp_path, D1, client)
    report = _sync(wh, tmp_path, D1, client, list_name="Other List")
    assert report.upserted == 10 and fake.member_emails(fake.lists_named("Other List")[0]) == {
        f"u{i}@shop.com" for i in range(10)}


def test_dry_run_writes_payloads_and_counts_without_network(wh, tmp_path):
    _day1(wh, n=25)
    report = _sync(wh, tmp_path, D1, None, max_profiles_per_job=10)
    assert report.dry_run and report.requests == 0
    out = Path(report.payload_dir)
    files = sorted(p.name for p in out.iterdir())
    assert files == ["summary.json", "upsert-00001.json", "upsert-00002.json", "upsert-00003.json"]
    body = json.loads((out / "upsert-00001.json").read_text())
    assert body["data"]["type"] == "profile-bulk-import-job"
    assert body["data"]["attributes"]["profiles"]["data"][0]["attributes"] == {
        "email": "u0@shop.com", "properties": {PROP: ["Affinity: Nike", "Loyal Customers"]}}
    summary = json.loads((out / "summary.json").read_text())
    assert summary["upserted"] == 25 and summary["requests_planned"] == 3


def test_sigkill_mid_run_then_rerun_converges_without_duplicates(fake, wh, tmp_path):
    n = 1500
    write_memberships(wh, D1, [("loyal", f"u{i}@shop.com") for i in range(n)])
    fake.advance_on_poll = False
    fake.queue_seconds, fake.seconds_per_profile = 0.05, 0.0005  # a 100-profile job takes ~0.1s
    state = tmp_path / "state"
    proc = start_sync_child("klaviyo", fake.url, wh.root, state, D1, SYNCED)
    kill_when(fake, proc, lambda: fake.count(family="bulk_import_profiles", status=202) >= 6, "the child's imports")
    assert proc.returncode == -signal.SIGKILL
    with StateStore(state) as store:
        confirmed_before = len(store.mirror_rows(store.get_meta("last_dest")))
    assert 0 < confirmed_before < n
    report = _sync(wh, tmp_path, D1, klaviyo_client(fake.url), max_profiles_per_job=100)
    assert report.planned_upserts == n - confirmed_before  # progress was kept per confirmed batch
    (list_id,) = fake.lists_named("Nosto Customers")
    assert fake.member_emails(list_id) == {f"u{i}@shop.com" for i in range(n)}
    assert len(fake.by_email) == n
    assert all(fake.property_of(f"u{i}@shop.com", PROP) == ["Loyal Customers"] for i in range(n))
    assert _sync(wh, tmp_path, D1, klaviyo_client(fake.url)).planned_upserts == 0
