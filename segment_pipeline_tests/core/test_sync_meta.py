"""Meta custom audiences against the stateful fake (real HTTP on loopback, real client, real state).

One audience per synced segment; members are SHA-256 hashes of normalized emails, never emails.
"""

from __future__ import annotations

import json
from pathlib import Path

import dagster as dg
import duckdb
import pytest

from segment_pipeline.core.esp.http import EspError
from segment_pipeline.core.esp.meta import MetaClient
from segment_pipeline.core.sync.destinations.meta import MetaSettings
from segment_pipeline.core.sync.hashing import (
    google_email_hash,
    google_email_hash_sql,
    meta_email_hash,
    meta_email_hash_sql,
    normalize_email_google,
    normalize_email_meta,
)
from segment_pipeline.core.sync.runner import sync
from segment_pipeline.core.sync.state import StateStore
from segment_pipeline.core.warehouse import Warehouse
from segment_pipeline_tests.fakes.helpers import (
    FAST,
    META_ACCOUNT,
    META_TOKEN,
    meta_client,
    write_memberships,
)
from segment_pipeline_tests.fakes.meta import FakeMeta

D1, D2 = "2026-11-01", "2026-11-02"
SYNCED = {"loyal": "Loyal Customers", "nike": "Affinity: Nike"}


@pytest.fixture
def fake():
    with FakeMeta(access_token=META_TOKEN, ad_account_id=META_ACCOUNT) as f:
        yield f


@pytest.fixture
def wh(tmp_path: Path) -> Warehouse:
    return Warehouse(tmp_path / "warehouse")


def _sync(wh: Warehouse, tmp_path: Path, day: str, client, synced=SYNCED, batch: int = 40, in_flight: int = 3):
    return sync("meta", wh, day, synced, state_dir=tmp_path / "state", dry_run_root=tmp_path / "dry", client=client,
                settings=MetaSettings(records_per_call=batch, max_in_flight=in_flight))


def _rows(n: int, day_shift: int = 0) -> list[tuple[str, str]]:
    rows = [("loyal", f"u{i}@shop.com") for i in range(day_shift, n + day_shift)]
    rows += [("nike", f"u{i}@shop.com") for i in range(0, n, 2)]
    rows += [("other", f"u{i}@shop.com") for i in range(0, n, 3)]  # not synced
    return rows


def _hashes(emails) -> set[str]:
    return {meta_email_hash(e) for e in emails}


def _users_calls(fake: FakeMeta) -> int:
    with fake.lock:
        return sum(1 for r in fake.log if r.path.endswith("/users") and r.status == 200)


# -- hashing: the platforms' published examples ---------------------------------------------------
def test_hashes_match_the_platforms_published_examples():
    # Meta, Conversions API customer information parameters (same EMAIL rule as custom audiences):
    # "Input: John_Smith@gmail.com / Normalized format: john_smith@gmail.com / Expected SHA256 output: 62a14e44..."
    assert normalize_email_meta(" John_Smith@gmail.com ") == "john_smith@gmail.com"
    assert meta_email_hash("John_Smith@gmail.com") == "62a14e44f765419d10fea99367361a727c12365e2520f32218d505ed9aa0f62f"
    assert normalize_email_meta("jo.hn+x@gmail.com") == "jo.hn+x@gmail.com"  # Meta keeps gmail dots and +
    # Google Data Manager quickstart (hex-encoded hashes of its sample emails)
    assert google_email_hash("dana@example.com") == "07e2f1394b0ea80e2adca010ea8318df697001a005ba7452720edda4b0ce57b3"
    assert google_email_hash(" DanaM@example.com") == "1df6b43bc68dd38eca94e6a65b4f466ae537b796c81a526918b40ac4a7b906c7"
    # Google "Format user data": gmail/googlemail lose dots and the +suffix, other domains keep both
    assert normalize_email_google("cloudy.sanfrancisco+shopping@gmail.com") == "cloudysanfrancisco@gmail.com"
    assert normalize_email_google("user.name+NYC@Example.com") == "user.name+nyc@example.com"
    assert normalize_email_google(" A.b +c@GoogleMail.com ") == "ab@googlemail.com"
    # the DuckDB expressions the sync and the export use give the same hashes as the Python rules
    samples = [" John_Smith@gmail.com ", "cloudy.sanfrancisco+shopping@gmail.com", "user.name+NYC@Example.com",
               "DanaM@example.com", "\tx.y+z@googlemail.com\n", "no-at-sign", "a@b@gmail.com", "x y@ex.com"]
    con = duckdb.connect()
    con.execute("CREATE TABLE t (email VARCHAR)")
    con.executemany("INSERT INTO t VALUES (?)", [[s] for s in samples])
    for email, m, g in con.execute(f"SELECT email, {meta_email_hash_sql()}, {google_email_hash_sql()} FROM t").fetchall():
        assert (m, g) == (meta_email_hash(email), google_email_hash(email)), email


# -- sync ------------------------------------------------------------------------------------------
def test_first_sync_creates_one_audience_per_segment_and_adds_hashed_members(fake, wh, tmp_path):
    write_memberships(wh, D1, _rows(120))
    report = _sync(wh, tmp_path, D1, meta_client(fake.url))
    assert fake.audience_named("Loyal Customers") and fake.audience_named("Affinity: Nike")
    assert len(fake.audiences) == 2  # "other" is not synced
    assert fake.members("Loyal Customers") == _hashes(f"u{i}@shop.com" for i in range(120))
    assert fake.members("Affinity: Nike") == _hashes(f"u{i}@shop.com" for i in range(0, 120, 2))
    assert fake.matched("Loyal Customers") == 120
    assert report.desired == 180 and report.upserted == report.added == 180 and report.status == "ok"
    assert fake.raw_email_bodies == 0, "a raw email reached Meta"
    assert fake.spec_violations == []
    assert all(r.body_bytes <= 40 * 67 + 200 for r in fake.log if r.path.endswith("/users"))
    assert report.requests == fake.count() and report.destination.count("|audience=") == 2


def test_a_change_adds_and_removes_only_the_changes_and_a_rerun_sends_nothing(fake, wh, tmp_path):
    write_memberships(wh, D1, _rows(200))
    client = meta_client(fake.url)
    _sync(wh, tmp_path, D1, client)
    calls = _users_calls(fake)
    # day 2: u0..u2 left "loyal", u200..u202 joined (1.5% of loyal); nike unchanged
    write_memberships(wh, D2, _rows(200, day_shift=3))
    r2 = _sync(wh, tmp_path, D2, client)
    assert (r2.upserted, r2.removed, r2.cleared) == (3, 3, 0)
    assert fake.members("Loyal Customers") == _hashes(f"u{i}@shop.com" for i in range(3, 203))
    assert fake.members("Affinity: Nike") == _hashes(f"u{i}@shop.com" for i in range(0, 200, 2))
    assert _users_calls(fake) == calls + 2  # one add, one remove, for the one audience that changed
    deletes = [r for r in fake.log if r.method == "DELETE"]
    assert len(deletes) == 1 and deletes[0].status == 200
    # the same day again: nothing to send
    before = _users_calls(fake)
    r3 = _sync(wh, tmp_path, D2, client)
    assert (r3.upserted, r3.removed, r3.desired) == (0, 0, 300) and _users_calls(fake) == before
    assert fake.raw_email_bodies == 0 and fake.spec_violations == []
    # the mirror is per audience, membership only, recorded after Meta answered
    with StateStore(tmp_path / "state") as st:
        (aid,) = fake.audience_named("Loyal Customers")
        rows = st.mirror_rows(f"meta|{client.account_url}|audience={aid}|members={aid}")
        assert {e for e, (_names, member) in rows.items() if member} == {f"u{i}@shop.com" for i in range(3, 203)}
        assert st.mirror_count(f"meta|{client.account_url}|audience={aid}|members={aid}") == 0  # no values kept


def test_rate_limit_is_paced_client_side_and_throttling_is_honoured(wh, tmp_path):
    write_memberships(wh, D1, _rows(80))
    # the fake allows 10 calls per second; a client paced to the same limit is never throttled
    with FakeMeta(access_token=META_TOKEN, ad_account_id=META_ACCOUNT, calls_per_hour=10, window=1.0) as fake:
        paced = MetaClient(META_TOKEN, META_ACCOUNT, base_url=fake.url, policy=FAST, calls_per_hour=10,
                           window_seconds=1.0)
        report = _sync(wh, tmp_path / "a", D1, paced, batch=20, in_flight=4)
        assert report.throttled == 0 and report.status == "ok"
        assert fake.members("Loyal Customers") == _hashes(f"u{i}@shop.com" for i in range(80))
    # a client that ignores the limit is throttled with Meta's error code and still completes
    # (2 calls per 0.5 s: the eager client's 4 concurrent users calls always exceed it); Meta
    # throttles with a 400 or a 403: a 403 carrying a throttling code is no credentials error
    for status in (400, 403):
        with FakeMeta(access_token=META_TOKEN, ad_account_id=META_ACCOUNT, calls_per_hour=2, window=0.5,
                      throttle_status=status) as fake:
            eager = MetaClient(META_TOKEN, META_ACCOUNT, base_url=fake.url, policy=FAST, calls_per_hour=1000,
                               window_seconds=1.0)
            report = _sync(wh, tmp_path / f"b{status}", D1, eager, batch=20, in_flight=4)
            assert report.throttled > 0 and report.status == "ok"
            assert fake.count(status=status) == report.throttled
            assert fake.members("Loyal Customers") == _hashes(f"u{i}@shop.com" for i in range(80))
            assert fake.members("Affinity: Nike") == _hashes(f"u{i}@shop.com" for i in range(0, 80, 2))


def test_faults_are_retried_and_a_bad_token_fails_at_once_without_showing_it(fake, wh, tmp_path):
    write_memberships(wh, D1, _rows(60))
    fake.inject("503", times=2, match="/users")
    fake.inject("drop", times=1, match="DELETE")  # no delete in a first sync: stays armed, harmless
    report = _sync(wh, tmp_path, D1, meta_client(fake.url))
    assert report.retries >= 2 and report.status == "ok"
    assert fake.members("Loyal Customers") == _hashes(f"u{i}@shop.com" for i in range(60))
    bad = MetaClient("not-the-token", META_ACCOUNT, base_url=fake.url, policy=FAST)
    with pytest.raises(EspError) as err:
        _sync(wh, tmp_path / "other", D1, bad)
    assert "not-the-token" not in str(err.value) and "code 190" in str(err.value)


def test_dry_run_writes_hashed_payloads_per_audience_and_no_email(wh, tmp_path):
    write_memberships(wh, D1, _rows(30))
    report = _sync(wh, tmp_path, D1, None)
    assert report.dry_run and report.upserted == 45
    files = sorted((tmp_path / "dry" / "meta").rglob("add-*.json"))
    assert len(files) == 2  # one per audience (45 records, batches of 40 -> 30 + 15 in two audiences)
    for f in files:
        assert b"@" not in f.read_bytes()
    loyal = next(f for f in files if f.parent.parent.name == "loyal")
    assert f'"{meta_email_hash("u0@shop.com")}"'.encode() in loyal.read_bytes()


def test_an_existing_audience_is_found_across_pages_and_not_created_twice(fake):
    with fake.lock:
        for i in range(1203):
            aid = str(9_000_000 + i)
            fake.audiences[aid] = {"id": aid, "name": f"Old {i}", "subtype": "CUSTOM", "members": set()}
    client = meta_client(fake.url)
    assert client.find_audience("Old 1202") == "9001202"  # on the third page of 500
    assert client.ensure_audience("Old 7") == "9000007" and len(fake.audiences) == 1203
    assert client.ensure_audience("New") != "9000007" and len(fake.audience_named("New")) == 1
    assert client.ensure_audience("New") == fake.audience_named("New")[0]


def test_the_meta_sync_asset_runs_from_its_resource_without_showing_the_token(fake, wh, tmp_path):
    from segment_pipeline.defs.resources import SegmentCatalogResource, WarehouseResource
    from segment_pipeline.defs.syncs.assets import SYNC_ASSETS
    from segment_pipeline.defs.syncs.resources import RESOURCES

    write_memberships(wh, D1, _rows(20))
    catalog = tmp_path / "segments.yaml"
    catalog.write_text("""segments:
  - id: loyal
    name: Loyal Customers
    rule: {field: order_count, op: ">=", value: 3}
    sync: {meta: true}
  - id: nike
    name: "Affinity: Nike"
    rule: {field: order_count, op: ">=", value: 1}
    sync: {klaviyo: true}
""", encoding="utf-8")
    resource = RESOURCES["meta"](access_token=META_TOKEN, ad_account_id=f"act_{META_ACCOUNT}", base_url=fake.url,
                                 audience_prefix="Shop - ")
    result = dg.materialize([SYNC_ASSETS["meta"]], resources={
        "warehouse": WarehouseResource(root=str(wh.root)), "meta": resource,
        "segment_catalog": SegmentCatalogResource(path=str(catalog))})
    assert result.success
    (mat,) = result.asset_materializations_for_node("meta_sync")
    meta = {k: v.value for k, v in mat.metadata.items()}
    assert meta["upserted"] == 20 and meta["dry_run"] is False and META_TOKEN not in json.dumps(meta, default=str)
    assert fake.members("Shop - Loyal Customers") == _hashes(f"u{i}@shop.com" for i in range(20))
    assert fake.audience_named("Shop - Affinity: Nike") == []  # toggled for Klaviyo only


def test_a_dry_run_after_a_real_run_writes_the_removals_it_would_send(fake, wh, tmp_path):
    write_memberships(wh, D1, _rows(30))
    _sync(wh, tmp_path, D1, meta_client(fake.url))
    write_memberships(wh, D2, _rows(30, day_shift=2))  # u0, u1 left "loyal"; u30, u31 joined
    report = _sync(wh, tmp_path, D2, None)
    assert report.dry_run and (report.upserted, report.removed) == (2, 2)
    (removal,) = (tmp_path / "dry" / "meta" / "loyal").rglob("remove-*.json")
    body = removal.read_bytes()
    assert b"@" not in body and json.loads(body)["payload"]["data"] == [meta_email_hash("u0@shop.com"),
                                                                        meta_email_hash("u1@shop.com")]
    assert fake.members("Loyal Customers") == _hashes(f"u{i}@shop.com" for i in range(30))  # nothing sent
