"""Braze sync against the stateful fake (real HTTP on loopback, our real client, real state store)."""

from __future__ import annotations

import json
import math
import signal
from pathlib import Path

import dagster as dg
import pytest

from segment_pipeline.core.esp.braze import BrazeClient
from segment_pipeline.core.esp.http import EspAuthError, rate_limit_wait
from segment_pipeline.core.sync.destinations.braze import BrazeDestination, BrazeSettings
from segment_pipeline.core.sync.runner import sync
from segment_pipeline.core.sync.state import StateStore
from segment_pipeline.core.warehouse import Warehouse
from segment_pipeline.defs.resources import SegmentCatalogResource, WarehouseResource
from segment_pipeline.defs.syncs.assets import sync_asset
from segment_pipeline.defs.syncs.resources import RESOURCES
from segment_pipeline_tests.fakes.braze import BRAZE_KEY, FAMILY, FakeBraze, braze_client
from segment_pipeline_tests.fakes.helpers import kill_when, start_sync_child, write_memberships

D1, D2 = "2026-11-01", "2026-11-02"
SYNCED = {"loyal": "Loyal Customers", "nike": "Affinity: Nike"}
ATTR = "nosto_segment"


@pytest.fixture
def fake():
    with FakeBraze() as f:
        yield f


@pytest.fixture
def wh(tmp_path: Path) -> Warehouse:
    return Warehouse(tmp_path / "warehouse")


def _sync(wh: Warehouse, tmp_path: Path, day: str, client, synced=SYNCED, **settings):
    return sync("braze", wh, day, synced, state_dir=tmp_path / "state", dry_run_root=tmp_path / "dry", client=client,
                settings=BrazeSettings(**{"objects_per_request": 20, "max_in_flight": 3, **settings}))


def _day1(wh: Warehouse, n: int = 100) -> None:
    rows = [("loyal", f"u{i}@shop.com") for i in range(n)]
    rows += [("nike", f"u{i}@shop.com") for i in range(0, n, 2)]
    rows += [("other", f"u{i}@shop.com") for i in range(0, n, 3)]  # not synced
    rows += [("other", "only-other@shop.com")]
    write_memberships(wh, D1, rows)


def _sent_since(fake: FakeBraze, start: int) -> list[dict]:
    with fake.lock:
        return list(fake.objects[start:])


def test_first_sync_sets_the_whole_array_by_email_without_duplicating_users(fake, wh, tmp_path):
    fake.seed_user("u0@shop.com", external_id="crm-0", attributes={"favourite": "red", ATTR: ["Stale"]})
    fake.seed_user("u0@shop.com", attributes={})  # an older email-only duplicate already in the workspace
    _day1(wh)
    report = _sync(wh, tmp_path, D1, braze_client(fake.url))
    assert report.status == "ok" and report.desired == 100 and report.upserted == 100 and report.rejected == 0
    # u0 resolves to the profile with an external_id: updated there, the stale name replaced
    assert fake.user_for("u0@shop.com")["external_id"] == "crm-0"
    assert fake.attribute_of("u0@shop.com", ATTR) == ["Affinity: Nike", "Loyal Customers"]
    assert fake.attribute_of("u0@shop.com", "favourite") == "red"
    assert fake.attribute_of("u1@shop.com", ATTR) == ["Loyal Customers"]
    assert fake.users_with_email("u0@shop.com") == 2  # the two it had; nobody new
    assert all(fake.users_with_email(f"u{i}@shop.com") == 1 for i in range(1, 100))
    assert fake.user_for("only-other@shop.com") is None
    objects = _sent_since(fake, 0)
    assert len(objects) == 100 and all(set(o) == {"email", ATTR} for o in objects)
    assert all(isinstance(o[ATTR], list) for o in objects)  # no confirmed value yet: the whole array
    assert fake.count(family=FAMILY, status=201) == math.ceil(100 / 20) == report.batches
    assert fake.spec_violations == [] and fake.consent_attempts == [] and fake.truncations == []
    assert report.requests == fake.count() and report.destination == f"braze|{fake.url}|identify=email|attribute={ATTR}"


def test_changes_are_sent_as_add_remove_deltas_and_leavers_are_cleared(fake, wh, tmp_path):
    _day1(wh)
    client = braze_client(fake.url)
    _sync(wh, tmp_path, D1, client)
    start = len(fake.objects)
    rows = [("loyal", f"u{i}@shop.com") for i in range(1, 100)]  # u0 leaves loyal
    rows += [("nike", f"u{i}@shop.com") for i in range(0, 100, 2) if i not in (2, 4)]  # u2, u4 leave nike
    rows += [("nike", "u1@shop.com"), ("nike", "new@shop.com")]  # u1 joins nike; a new user
    rows = [r for r in rows if r[1] != "u3@shop.com"]  # u3 in no synced segment any more
    write_memberships(wh, D2, rows)
    report = _sync(wh, tmp_path, D2, client)
    # changed: u0 (-loyal), u1 (+nike), u2 and u4 (-nike), new (+), u3 (cleared): 6 of 101
    assert (report.planned_upserts, report.planned_clears) == (5, 1)
    sent = {o["email"]: o[ATTR] for o in _sent_since(fake, start)}
    assert sent == {"u0@shop.com": {"remove": ["Loyal Customers"]}, "u1@shop.com": {"add": ["Affinity: Nike"]},
                    "u2@shop.com": {"remove": ["Affinity: Nike"]}, "u4@shop.com": {"remove": ["Affinity: Nike"]},
                    "new@shop.com": ["Affinity: Nike"], "u3@shop.com": None}
    assert fake.attribute_of("u0@shop.com", ATTR) == ["Affinity: Nike"]
    assert sorted(fake.attribute_of("u1@shop.com", ATTR)) == ["Affinity: Nike", "Loyal Customers"]
    assert fake.attribute_of("u2@shop.com", ATTR) == ["Loyal Customers"]  # the removed segment left the array
    assert fake.attribute_of("u3@shop.com", ATTR) is None and fake.user_for("u3@shop.com") is not None
    assert report.upserted == 5 and report.cleared == 1
    # a repeated run sends nothing at all
    requests = fake.count()
    again = _sync(wh, tmp_path, D2, client)
    assert fake.count() == requests and again.upserted == again.cleared == again.requests == 0


def test_a_one_percent_change_sends_only_the_changed(fake, wh, tmp_path):
    n = 1000
    write_memberships(wh, D1, [("loyal", f"u{i}@shop.com") for i in range(n)])
    client = braze_client(fake.url)
    _sync(wh, tmp_path, D1, client, objects_per_request=75)
    start = len(fake.objects)
    moved = {f"u{i}@shop.com" for i in range(0, n, 100)}  # 1%: into nike as well
    write_memberships(wh, D2, [("loyal", f"u{i}@shop.com") for i in range(n)] + [("nike", e) for e in sorted(moved)])
    report = _sync(wh, tmp_path, D2, client, objects_per_request=75)
    assert report.upserted == len(moved) == 10
    assert {o["email"] for o in _sent_since(fake, start)} == moved  # 1.000x sent/changed
    assert all(fake.attribute_of(e, ATTR) == ["Loyal Customers", "Affinity: Nike"] for e in moved)


def test_refused_objects_are_rejected_per_row_and_retried_next_run(fake, wh, tmp_path):
    rows = [("loyal", f"u{i}@shop.com") for i in range(30)] + [("loyal", "not-an-email"), ("loyal", "block@shop.com")]
    write_memberships(wh, D1, rows)
    fake.reject_emails.add("block@shop.com")
    client = braze_client(fake.url)
    report = _sync(wh, tmp_path, D1, client, objects_per_request=10)
    assert report.status == "ok" and report.rejected == 2 and report.upserted == 30 and report.unconfirmed == 0
    with StateStore(tmp_path / "state") as store:
        rejects = store.rejects(report.destination)
    assert set(rejects) == {"not-an-email", "block@shop.com"} and "blocklist" in rejects["block@shop.com"]
    assert fake.user_for("block@shop.com") is None
    fake.reject_emails.clear()
    again = _sync(wh, tmp_path, D1, client, objects_per_request=10)
    # only the two rejects are planned again: one is accepted now, the invalid address is refused again
    assert again.planned_upserts == 2 and again.upserted == 1 and again.rejected == 1
    assert fake.attribute_of("block@shop.com", ATTR) == ["Loyal Customers"]
    with StateStore(tmp_path / "state") as store:
        assert set(store.rejects(report.destination)) == {"not-an-email"}


def test_a_request_whose_every_object_is_refused_rejects_its_rows_not_the_run(fake, wh, tmp_path):
    write_memberships(wh, D1, [("loyal", "bad-1"), ("loyal", "bad-2"), ("loyal", "ok@shop.com")])
    report = _sync(wh, tmp_path, D1, braze_client(fake.url), objects_per_request=2)
    assert report.status == "ok" and report.rejected == 2 and report.upserted == 1
    assert fake.count(status=400) == 1  # Braze answers 400 "Valid data must be provided ..." with the indexes


def test_429_and_x_ratelimit_reset_are_honoured(fake, wh, tmp_path):
    _day1(wh, n=60)
    fake.set_limits(FAMILY, [(2, 1.0)])
    # the client is told the limit is far higher, so only the server's answers can slow it down
    client = braze_client(fake.url, limits={FAMILY: [(1000, 1.0)]})
    report = _sync(wh, tmp_path, D1, client, objects_per_request=10, max_in_flight=6)
    assert report.upserted == 60
    assert fake.count(family=FAMILY, status=429) > 0 and report.throttled == fake.count(status=429)
    # each 429 pauses every request until X-RateLimit-Reset (the fake sends no Retry-After): a few
    # per window from the requests already in flight, not a retry every few ms of backoff
    assert fake.count(status=429) <= 6 * 4
    accepted = [r for r in fake.log if r.family == FAMILY and r.status == 201]
    assert len(accepted) == 6
    assert all(fake.attribute_of(f"u{i}@shop.com", ATTR) for i in range(60))


def test_x_ratelimit_remaining_zero_pauses_before_any_429(fake, wh, tmp_path):
    _day1(wh, n=40)
    fake.set_limits(FAMILY, [(3, 1.0)])
    client = braze_client(fake.url, limits={FAMILY: []})  # no client-side pacing: only the headers
    report = _sync(wh, tmp_path, D1, client, objects_per_request=5, max_in_flight=1)
    assert report.upserted == 40 and fake.count(status=429) == 0
    assert client.http.limiter(FAMILY).waited_seconds > 0  # it waited for X-RateLimit-Reset


def test_arrays_over_the_maximum_length_keep_whole_names_and_are_counted(fake, wh, tmp_path):
    synced = {"a": "Alpha", "b": "Beta", "c": "Gamma"}
    write_memberships(wh, D1, [(s, "x@shop.com") for s in synced] + [("a", "y@shop.com")])
    report = _sync(wh, tmp_path, D1, braze_client(fake.url), synced=synced, max_array_length=2)
    assert report.truncated == 1 and "2-name limit" in report.notes[0]
    assert fake.attribute_of("x@shop.com", ATTR) == ["Alpha", "Beta"]
    assert fake.truncations == []  # nothing reached Braze over its limit (it would cut silently)
    again = _sync(wh, tmp_path, D1, braze_client(fake.url), synced=synced, max_array_length=2)
    assert again.planned_upserts == 0  # the fitted value is what the mirror holds


def test_never_sends_consent_and_keeps_the_users_subscription_state(fake, wh, tmp_path):
    fake.seed_user("u0@shop.com", external_id="c0", attributes={"email_subscribe": "opted_in",
                                                                 "push_subscribe": "unsubscribed"})
    _day1(wh, n=6)
    client = braze_client(fake.url)
    _sync(wh, tmp_path, D1, client)
    write_memberships(wh, D2, [("nike", "u0@shop.com")])
    _sync(wh, tmp_path, D2, client)
    user = fake.user_for("u0@shop.com")["attributes"]
    assert user["email_subscribe"] == "opted_in" and user["push_subscribe"] == "unsubscribed"
    assert fake.consent_attempts == []
    assert all(set(o) <= {"email", ATTR} for o in fake.objects)


def test_faults_are_retried_and_a_lost_answer_does_not_double_anything(fake, wh, tmp_path):
    _day1(wh, n=40)
    client = braze_client(fake.url)
    _sync(wh, tmp_path, D1, client)
    write_memberships(wh, D2, [("loyal", f"u{i}@shop.com") for i in range(40)]
                      + [("nike", "u1@shop.com"), ("nike", "new@shop.com")])
    fake.inject("503", times=2, match="POST /users/track")
    fake.inject("drop_after", times=1, match="POST /users/track")  # applied, but the answer is lost
    # one request at a time: the first (new@ sorts first) takes both 503s and the lost answer
    report = _sync(wh, tmp_path, D2, client, max_in_flight=1)
    assert report.status == "ok" and report.retries == 3 and report.upserted == 22  # 20 left nike, u1, new@
    # the lost answer's request had created new@; its retry found that profile instead of another
    assert fake.users_with_email("new@shop.com") == 1 and fake.attribute_of("new@shop.com", ATTR) == ["Affinity: Nike"]
    assert sorted(fake.attribute_of("u1@shop.com", ATTR)) == ["Affinity: Nike", "Loyal Customers"]
    assert fake.attribute_of("u0@shop.com", ATTR) == ["Loyal Customers"]
    assert all(fake.users_with_email(f"u{i}@shop.com") == 1 for i in range(40))


def test_sigkill_mid_run_then_rerun_converges_without_duplicates(fake, wh, tmp_path):
    n = 1500
    write_memberships(wh, D1, [("loyal", f"u{i}@shop.com") for i in range(n)] + [("nike", "u7@shop.com")])
    fake.set_limits(FAMILY, [(10, 1.0)])  # slow enough to be killed mid-run
    state = tmp_path / "state"
    proc = start_sync_child("braze", fake.url, wh.root, state, D1, SYNCED)
    kill_when(fake, proc, lambda: fake.count(family=FAMILY, status=201) >= 6, "the child's requests")
    assert proc.returncode == -signal.SIGKILL
    fake.set_limits(FAMILY, [(3000, 3.0)])
    report = _sync(wh, tmp_path, D1, braze_client(fake.url), objects_per_request=75)
    assert report.status == "ok" and 0 < report.planned_upserts <= n
    assert all(fake.users_with_email(f"u{i}@shop.com") == 1 for i in range(n))
    assert fake.attribute_of("u7@shop.com", ATTR) == ["Affinity: Nike", "Loyal Customers"]
    assert all(fake.attribute_of(f"u{i}@shop.com", ATTR) == ["Loyal Customers"] for i in range(0, n, 7) if i != 7)
    assert _sync(wh, tmp_path, D1, braze_client(fake.url)).planned_upserts == 0


def test_wrong_key_fails_without_leaking_it(fake, wh, tmp_path):
    _day1(wh, n=3)
    with pytest.raises(EspAuthError) as info:
        _sync(wh, tmp_path, D1, BrazeClient("wrong-secret-key", fake.url))
    assert "401" in str(info.value) and "wrong-secret-key" not in str(info.value)


def test_dry_run_writes_the_requests_it_would_send(wh, tmp_path):
    _day1(wh, n=25)
    report = _sync(wh, tmp_path, D1, None, objects_per_request=10)
    assert report.dry_run and report.requests == 0
    out = Path(report.payload_dir)
    assert sorted(p.name for p in out.iterdir()) == ["summary.json", "upsert-00001.json", "upsert-00002.json",
                                                     "upsert-00003.json"]
    body = json.loads((out / "upsert-00001.json").read_text())
    assert body["attributes"][0] == {"email": "u0@shop.com", ATTR: ["Affinity: Nike", "Loyal Customers"]}
    assert json.loads((out / "summary.json").read_text())["requests_planned"] == 3


def test_configuration_from_options_and_a_key_without_endpoint_is_a_clear_error():
    options = BrazeDestination.option_values({"api_key": "k"})
    assert options["attribute"] == ATTR and options["objects_per_request"] == 75
    with pytest.raises(ValueError, match="BRAZE_REST_ENDPOINT"):
        BrazeDestination.client_from(options)
    assert BrazeDestination.client_from(BrazeDestination.option_values()) is None  # no key: dry run
    with pytest.raises(ValueError, match="objects_per_request"):
        BrazeSettings(objects_per_request=76)


def test_the_dagster_asset_syncs_through_the_registry_resource(fake, wh, tmp_path):
    write_memberships(wh, D1, [("vip", "a@shop.com"), ("vip", "b@shop.com")])
    catalog = tmp_path / "segments.yaml"
    catalog.write_text("segments:\n  - id: vip\n    name: VIP\n    rule: {field: order_count, op: '>=', value: 3}\n"
                       "    sync: {braze: true}\n")
    resource = RESOURCES["braze"](api_key=BRAZE_KEY, rest_endpoint=fake.url)
    result = dg.materialize([sync_asset(BrazeDestination)], run_config={"ops": {"braze_sync": {"config": {"day": D1}}}},
                            resources={"warehouse": WarehouseResource(root=str(wh.root)), "braze": resource,
                                       "segment_catalog": SegmentCatalogResource(path=str(catalog))})
    (mat,) = result.asset_materializations_for_node("braze_sync")
    assert mat.metadata["upserted"].value == 2 and mat.metadata["status"].value == "ok"
    assert fake.attribute_of("a@shop.com", ATTR) == ["VIP"]
    assert BRAZE_KEY not in json.dumps({k: str(v.value) for k, v in mat.metadata.items()})


def test_rate_limit_wait_reads_retry_after_then_x_ratelimit_reset():
    import time

    assert rate_limit_wait({"Retry-After": "2"}, 9.0) == 2.0
    assert 4.0 < rate_limit_wait({"X-RateLimit-Reset": str(int(time.time()) + 5)}, 9.0) <= 5.0
    assert rate_limit_wait({"X-RateLimit-Reset": "1"}, 9.0) == 0.0  # in the past
    assert rate_limit_wait({"X-RateLimit-Reset": "soon"}, 9.0) == 9.0
    assert rate_limit_wait({}, 9.0) == 9.0


def test_the_fake_enforces_braze_shapes_limits_and_headers(fake):
    import requests

    fake.set_limits(FAMILY, [(4, 60.0)])
    url, auth = f"{fake.url}/users/track", {"Authorization": f"Bearer {BRAZE_KEY}"}
    with requests.Session() as s:
        ok = s.post(url, json={"attributes": [{"email": "a@x.io", ATTR: ["A"]}, {ATTR: ["B"]},
                                              {"email": "b@x.io", ATTR: {"push": ["C"]}}]}, headers=auth)
        assert ok.status_code == 201 and ok.json()["attributes_processed"] == 1
        assert [(e["index"], e["input_array"]) for e in ok.json()["errors"]] == [(1, "attributes"), (2, "attributes")]
        assert "is required" in ok.json()["errors"][0]["type"]
        assert {"X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset"} <= set(ok.headers)
        too_many = s.post(url, json={"attributes": [{"email": f"u{i}@x.io"} for i in range(76)]}, headers=auth)
        assert too_many.status_code == 400 and too_many.json()["message"] == "Max Input Length Exceeded"
        assert s.post(url, json={"attributes": []}, headers={"Authorization": "Bearer nope"}).status_code == 401
        s.post(url, json={"attributes": [{"email": "c@x.io", "email_subscribe": "opted_in"}]}, headers=auth)
        s.post(url, json={"attributes": [{"email": "d@x.io"}]}, headers=auth)
        over = s.post(url, json={"attributes": [{"email": "e@x.io"}]}, headers=auth)
        assert over.status_code == 429 and "Retry-After" not in over.headers
        assert over.headers["X-RateLimit-Remaining"] == "0" and float(over.headers["X-RateLimit-Reset"]) % 60 == 0
    assert fake.consent_attempts and fake.spec_violations  # the consent key; 76 objects
    assert fake.attribute_of("a@x.io", ATTR) == ["A"] and fake.user_for("b@x.io") is None
