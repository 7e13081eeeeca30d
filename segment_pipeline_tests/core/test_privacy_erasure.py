"""Deletion requests propagated to every destination (issue 15, part 3), against the stateful fakes:
real HTTP on loopback, the production clients and adapters, the real ledger and sync mirrors."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path
from urllib.parse import quote

import pytest

from segment_pipeline.core.esp.http import RetryPolicy
from segment_pipeline.core.privacy.erasure import mirror_lock, mirror_tables, propagate
from segment_pipeline.core.privacy.ledger import Ledger
from segment_pipeline.core.sync.destinations.braze import BrazeDestination, BrazeSettings
from segment_pipeline.core.sync.destinations.dotdigital import DotdigitalDestination, DotdigitalSettings
from segment_pipeline.core.sync.destinations.klaviyo import KlaviyoDestination, KlaviyoSettings
from segment_pipeline.core.sync.destinations.meta import MetaDestination, MetaSettings
from segment_pipeline.core.sync.hashing import meta_email_hash
from segment_pipeline.core.sync.runner import sync
from segment_pipeline.core.sync.state import StateStore, Target
from segment_pipeline.core.warehouse import Warehouse
from segment_pipeline_tests.fakes.braze import FakeBraze, braze_client
from segment_pipeline_tests.fakes.dotdigital import FakeDotdigital
from segment_pipeline_tests.fakes.erasure_child import destinations as child_destinations
from segment_pipeline_tests.fakes.helpers import (
    META_ACCOUNT,
    META_TOKEN,
    dotdigital_client,
    kill_when,
    klaviyo_client,
    meta_client,
    write_memberships,
)
from segment_pipeline_tests.fakes.klaviyo import FakeKlaviyo
from segment_pipeline_tests.fakes.meta import FakeMeta
from segment_pipeline_tests.waiting import child_env

DAY = "2026-11-01"
SYNCED = {"loyal": "Loyal Customers"}
GONE, STAY = "gone@shop.com", "stay@shop.com"
KD = ("klaviyo", "dotdigital")
#: a retry budget short enough that a persistent fault fails the call within the test
SHORT = RetryPolicy(max_elapsed=1.0, base_delay=0.01, max_delay=0.05, connect_timeout=10.0, read_timeout=10.0)


@pytest.fixture
def fakes():
    with FakeKlaviyo() as k, FakeDotdigital() as d, FakeBraze() as b, \
            FakeMeta(access_token=META_TOKEN, ad_account_id=META_ACCOUNT) as m:
        yield {"klaviyo": k, "dotdigital": d, "braze": b, "meta": m}


@pytest.fixture
def wh(tmp_path: Path) -> Warehouse:
    return Warehouse(tmp_path / "warehouse")


def _clients(fakes, **policy):
    return {"klaviyo": klaviyo_client(fakes["klaviyo"].url, **policy),
            "dotdigital": dotdigital_client(fakes["dotdigital"].url, **policy),
            "braze": braze_client(fakes["braze"].url, **policy),
            "meta": meta_client(fakes["meta"].url, **policy)}


def _destinations(fakes, klaviyo_wait: float = 5.0, only: tuple[str, ...] = (), **policy):
    c = _clients(fakes, **policy)
    k = KlaviyoDestination(c["klaviyo"], KlaviyoSettings())
    k.erase_wait_seconds = klaviyo_wait
    out = {"klaviyo": k, "dotdigital": DotdigitalDestination(c["dotdigital"], DotdigitalSettings()),
           "braze": BrazeDestination(c["braze"], BrazeSettings()), "meta": MetaDestination(c["meta"], MetaSettings())}
    return {n: d for n, d in out.items() if not only or n in only}


def _sync_all(wh: Warehouse, fakes, emails, only: tuple[str, ...] = ()) -> None:
    """A real sync of every destination, so each fake holds the contacts and each mirror has them."""
    write_memberships(wh, DAY, [("loyal", e) for e in emails])
    settings = {"klaviyo": KlaviyoSettings(), "dotdigital": DotdigitalSettings(), "braze": BrazeSettings(),
                "meta": MetaSettings()}
    for name, client in _clients(fakes).items():
        if only and name not in only:
            continue
        report = sync(name, wh, DAY, SYNCED, state_dir=wh.root / "sync_state" / name,
                      dry_run_root=wh.root / "sync_dry_run", client=client, settings=settings[name])
        assert report.status == "ok" and report.rejected == 0, (name, report)


def _forget(wh: Warehouse, *emails: str) -> list[str]:
    """A deletion request whose warehouse part is done (that part is the forget engineer's, tested there)."""
    ledger = Ledger(wh.root)
    ids = [r.request_id for r in ledger.request(list(emails), "cli")]
    for i in ids:
        ledger.warehouse_done(i)
    return ids


def _status(wh: Warehouse, request_id: str) -> dict[str, dict]:
    return {r["destination"]: r for r in Ledger(wh.root).status(request_id) if r["destination"]}


def _mirror_emails(wh: Warehouse, name: str) -> set[str]:
    return _mirror_emails_at(wh.root / "sync_state" / name)


def _bytes_under(folder: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file())


def test_a_request_reaches_every_destination_and_each_confirms(fakes, wh):
    """... and an address no ESP held is confirmed by its lookup without a deletion call (Meta cannot be
    asked who is in an audience: its hash goes into the same removal call)."""
    others = [f"u{i}@shop.com" for i in range(5)]
    _sync_all(wh, fakes, [GONE, STAY, *others])
    k, d, b, m = fakes["klaviyo"], fakes["dotdigital"], fakes["braze"], fakes["meta"]
    (audience,) = m.audience_named("Loyal Customers")
    assert k.profile(GONE) and d.contact(GONE) and b.users_with_email(GONE) == 1
    assert meta_email_hash(GONE) in m.members("Loyal Customers")
    assert all(GONE in _mirror_emails(wh, n) for n in fakes)
    rid, never = _forget(wh, " Gone@Shop.com ", "never@shop.com")
    lines: list[str] = []

    report = propagate(wh.root, _destinations(fakes), log=lines.append)

    # each vendor received its own deletion call, and no longer holds the contact
    assert k.deletions_for(GONE) == 1 and len(k.deletion_requests) == 1
    assert k.profile(GONE) is None and k.profile(STAY) is not None
    assert [c["email"] for c in d.deletion_calls] == [GONE] and d.contact(GONE) is None and d.contact(STAY)
    assert len(b.deletion_calls) == 1 and b.users_with_email(GONE) == 0 and b.users_with_email(STAY) == 1
    hashes = sorted([meta_email_hash(GONE), meta_email_hash("never@shop.com")])
    assert [(a, sorted(h)) for a, h in m.removals] == [(audience, hashes)]  # one call, every synced audience
    assert meta_email_hash(GONE) not in m.members("Loyal Customers")
    assert meta_email_hash(STAY) in m.members("Loyal Customers")
    assert all(f.spec_violations == [] for f in fakes.values())
    # the ledger shows asked, done and confirmed per destination, and the request settled
    status = _status(wh, rid)
    assert sorted(status) == ["braze", "dotdigital", "klaviyo", "meta"]
    assert all(s["asked_at"] and s["done_at"] and s["confirmed_at"] and s["attempts"] == 1 for s in status.values())
    assert all(s["confirmed_at"] for s in _status(wh, never).values()) and len(_status(wh, never)) == 4
    assert report.settled == 2 and report.open_requests == 0 and report.ok
    assert Ledger(wh.root).pending(rid) is None
    # every mirror lost the address (and only it), and no byte of it survives in the state files
    for name in fakes:
        emails = _mirror_emails(wh, name)
        assert GONE not in emails and STAY in emails, name
        assert report.destinations[name].mirror_rows_removed >= 1 and report.destinations[name].mirror_rewritten
        assert GONE.encode() not in _bytes_under(wh.root / "sync_state" / name), name
    # no address in logs, metadata or the ledger
    text = "\n".join(lines) + repr(report.metadata()) + repr(Ledger(wh.root).status())
    assert GONE not in text and "gone%40" not in text.lower()
    assert GONE.encode() not in _bytes_under(wh.root / "privacy")

    # a later pass asks nobody again
    before = (len(k.deletion_requests), len(d.deletion_calls), len(b.deletion_calls), m.count(method="DELETE"))
    again = propagate(wh.root, _destinations(fakes))
    assert (len(k.deletion_requests), len(d.deletion_calls), len(b.deletion_calls), m.count(method="DELETE")) == before
    assert again.settled == 0 and again.open_requests == 0
    # the next sync does not bring the contact back: the mirror and the vendors agree it is gone
    write_memberships(wh, "2026-11-02", [("loyal", e) for e in [STAY, *others]])
    for name, client in _clients(fakes).items():
        sync(name, wh, "2026-11-02", SYNCED, state_dir=wh.root / "sync_state" / name,
             dry_run_root=wh.root / "sync_dry_run", client=client)
    assert k.profile(GONE) is None and d.contact(GONE) is None and b.users_with_email(GONE) == 0


def test_faults_and_throttling_leave_the_request_pending_and_the_next_pass_confirms(fakes, wh):
    _sync_all(wh, fakes, [GONE, STAY, "third@shop.com"], only=KD)
    k, d = fakes["klaviyo"], fakes["dotdigital"]
    rid_gone, rid_third = _forget(wh, GONE, "third@shop.com")
    d.inject("500", times=10_000, match="DELETE /v2/contacts")  # dotdigital fails beyond the retry budget
    k.set_limits("request_profile_deletion", [(1, 60.0)])  # Klaviyo takes one deletion, then answers 429

    first = propagate(wh.root, _destinations(fakes, only=KD, policy=SHORT))

    dd = _status(wh, rid_gone)["dotdigital"]
    assert dd["asked_at"] and dd["confirmed_at"] is None and "HTTP 500" in dd["last_error"]
    assert d.contact(GONE) is not None and first.destinations["dotdigital"].failed == 2
    kl = [_status(wh, r)["klaviyo"] for r in (rid_gone, rid_third)]
    assert sum(1 for s in kl if s["confirmed_at"]) == 1 and k.count(status=429) >= 1
    (throttled,) = [s for s in kl if not s["confirmed_at"]]
    assert "429" in throttled["last_error"] and throttled["attempts"] == 1
    assert first.settled == 0 and first.open_requests == 2 and not first.ok
    assert GONE in _mirror_emails(wh, "dotdigital")  # not confirmed there: the mirror keeps it
    assert all(GONE not in (s["last_error"] or "") for r in (rid_gone, rid_third) for s in _status(wh, r).values())

    with d.lock:
        d.faults.clear()
    k.set_limits("request_profile_deletion", [(3, 1.0), (60, 60.0)])
    second = propagate(wh.root, _destinations(fakes, only=KD, policy=SHORT))

    for rid in (rid_gone, rid_third):
        status = _status(wh, rid)
        assert all(s["confirmed_at"] for s in status.values()), status
        assert status["dotdigital"]["attempts"] == 2
    assert d.contact(GONE) is None and k.profile(GONE) is None and second.settled == 2
    assert GONE not in _mirror_emails(wh, "dotdigital")
    assert sorted(k.deleted_emails) == sorted([GONE, "third@shop.com"])  # each deleted once


def test_a_deletion_klaviyo_has_not_carried_out_yet_is_done_and_confirmed_by_the_next_pass(fakes, wh):
    _sync_all(wh, fakes, [GONE, STAY], only=("klaviyo",))
    k = fakes["klaviyo"]
    k.deletion_seconds = 0.5  # Klaviyo deletes asynchronously
    (rid,) = _forget(wh, GONE)

    first = propagate(wh.root, _destinations(fakes, klaviyo_wait=0.0, only=("klaviyo",)))
    s = _status(wh, rid)["klaviyo"]
    assert s["done_at"] and s["confirmed_at"] is None and first.destinations["klaviyo"].done == 1
    assert GONE in _mirror_emails(wh, "klaviyo") and first.settled == 0

    assert k.wait_for(lambda: GONE in k.deleted_emails, timeout=60)
    second = propagate(wh.root, _destinations(fakes, klaviyo_wait=0.0, only=("klaviyo",)))
    s = _status(wh, rid)["klaviyo"]
    assert s["confirmed_at"] and s["attempts"] == 2 and k.deletions_for(GONE) == 1  # confirmed by the lookup
    assert second.settled == 1 and GONE not in _mirror_emails(wh, "klaviyo")


def test_a_pass_waits_while_a_sync_holds_the_mirror(fakes, wh):
    _sync_all(wh, fakes, [GONE, STAY], only=KD)
    (rid,) = _forget(wh, GONE)
    with mirror_lock(wh.root / "sync_state" / "dotdigital"):  # a dotdigital sync is running
        report = propagate(wh.root, _destinations(fakes, only=KD))
    assert report.destinations["dotdigital"].mirror_skipped and report.settled == 0
    assert _status(wh, rid).get("dotdigital") is None and fakes["dotdigital"].deletion_calls == []
    later = propagate(wh.root, _destinations(fakes, only=KD))
    assert later.settled == 1 and _status(wh, rid)["dotdigital"]["confirmed_at"]


def test_sigkill_mid_propagation_then_a_rerun_finishes_without_duplicates(fakes, wh):
    people = [f"p{i}@shop.com" for i in range(4)]
    _sync_all(wh, fakes, [*people, STAY], only=KD)
    k, d = fakes["klaviyo"], fakes["dotdigital"]
    ids = _forget(wh, *people)
    cmd = [sys.executable, "-m", "segment_pipeline_tests.fakes.erasure_child", str(wh.root), k.url, d.url]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, env=child_env())
    # killed after dotdigital (the first destination) deleted two contacts of the batch it was asked
    kill_when(d, proc, lambda: len(d.deletion_calls) >= 2, "two dotdigital deletions")
    assert proc.returncode == -9
    mid = [_status(wh, r).get("dotdigital") or {} for r in ids]
    assert all(s.get("asked_at") and not s.get("confirmed_at") for s in mid)
    assert k.deletion_requests == [] and sum(1 for x in people if d.contact(x) is None) == 2

    report = propagate(wh.root, child_destinations(k.url, d.url))

    assert report.settled == len(people) and report.open_requests == 0
    rows = [r for r in Ledger(wh.root).status() if r["destination"]]
    assert len(rows) == 2 * len(people)  # one row per request and destination: no duplicates
    assert all(r["confirmed_at"] for r in rows)
    deleted = [c["email"] for c in d.deletion_calls if c["status"] == 204]
    assert sorted(deleted) == sorted(people)  # each contact deleted exactly once
    assert all(k.deletions_for(p) == 1 for p in people) and all(d.contact(p) is None for p in people)
    for name in ("klaviyo", "dotdigital"):
        assert _mirror_emails(wh, name) == {STAY}
    digests = {hashlib.sha256(p.encode()).hexdigest() for p in people}
    assert {r["email_sha256"] for r in rows} == digests


def test_the_daily_asset_propagates_with_the_sync_resources_and_names_unconfigured_mirrors(fakes, wh):
    import dagster as dg

    from segment_pipeline.defs.privacy.erasure import privacy_erasure
    from segment_pipeline.defs.resources import WarehouseResource
    from segment_pipeline.defs.syncs.resources import RESOURCES
    from segment_pipeline_tests.fakes.helpers import DD_PASSWORD, DD_USER, KLAVIYO_KEY

    _sync_all(wh, fakes, [GONE, STAY], only=(*KD, "braze"))
    (rid,) = _forget(wh, GONE)
    resources = {"warehouse": WarehouseResource(root=str(wh.root)),
                 "klaviyo": RESOURCES["klaviyo"](api_key=KLAVIYO_KEY, base_url=fakes["klaviyo"].url),
                 "dotdigital": RESOURCES["dotdigital"](api_user=DD_USER, api_password=DD_PASSWORD,
                                                       base_url=fakes["dotdigital"].url),
                 "braze": RESOURCES["braze"](), "meta": RESOURCES["meta"]()}  # no credentials: not configured

    result = dg.materialize([privacy_erasure], resources=resources)

    (mat,) = result.asset_materializations_for_node("privacy_erasure")
    meta = {k: v.value for k, v in mat.metadata.items()}
    assert meta["klaviyo_confirmed"] == 1 and meta["dotdigital_confirmed"] == 1 and meta["destinations"] == \
        "dotdigital, klaviyo"
    assert meta["unconfigured_with_mirror"] == "braze"  # it synced the person: nothing here can erase there
    assert meta["braze_blocked_unconfigured"] == 1
    # the address stays pending (its only copy) until Braze can erase it too
    assert meta["open_requests"] == 1 and meta["settled"] == 0 and Ledger(wh.root).pending(rid) is not None
    assert GONE not in repr(meta) and fakes["klaviyo"].profile(GONE) is None and fakes["dotdigital"].contact(GONE) is None
    assert sorted(_status(wh, rid)) == ["dotdigital", "klaviyo"]


def test_cli_prints_the_ledger_by_hash_and_runs_a_pass_with_the_environment_credentials(fakes, wh, monkeypatch,
                                                                                          capsys):
    from segment_pipeline.cli import main
    from segment_pipeline.core.sync.destinations import DESTINATIONS
    from segment_pipeline_tests.fakes.helpers import KLAVIYO_KEY

    _sync_all(wh, fakes, [GONE, STAY], only=KD)
    (rid,) = _forget(wh, GONE)
    for cls in DESTINATIONS.values():
        for o in cls.options:
            monkeypatch.delenv(o.env, raising=False)
    monkeypatch.setenv("SEGMENT_PIPELINE_WAREHOUSE", str(wh.root))
    monkeypatch.setenv("KLAVIYO_API_KEY", KLAVIYO_KEY)
    monkeypatch.setenv("KLAVIYO_BASE_URL", fakes["klaviyo"].url)

    assert main(["erasure", "run"]) == 0
    assert main(["erasure", "status"]) == 0
    out = capsys.readouterr().out
    digest = hashlib.sha256(GONE.encode()).hexdigest()
    assert "klaviyo_confirmed: 1" in out and "unconfigured_with_mirror: dotdigital" in out
    (line,) = [x for x in out.splitlines() if x.startswith(rid)]
    assert digest[:16] in line and "klaviyo" in line and line.split()[-1] == "1"  # one attempt
    assert GONE not in out and fakes["klaviyo"].profile(GONE) is None
    assert main(["erasure", "status", "--json", "--request", rid]) == 0
    (row,) = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert row["destination"] == "klaviyo" and row["confirmed_at"] and row["email_sha256"] == digest


def test_issue_15_end_to_end_no_trace_under_the_roots_and_every_destination_confirmed(tmp_path, monkeypatch):
    """Issue 15, part 5: a person in three days of landing files, the quarantine, the feed, a
    per-segment export, Klaviyo and dotdigital; after ``forget`` and the next run (pipeline, erasure,
    syncs) no file under the warehouse and export roots holds the address (the hash only where the
    ledger and the tombstones need it), the fakes received the deletion calls, the ledger shows
    each destination confirmed and the request settled."""
    from segment_pipeline.cli import main as cli
    from segment_pipeline.core.exports.segment_export import SegmentExportRequest, export_segment
    from segment_pipeline.core.exports.storage import LocalExportStorage
    from segment_pipeline.core.warehouse import connect
    from segment_pipeline_tests.core.test_privacy_forget import (
        DAYS,
        NORM,
        PERSON,
        materialize,
        traces,
        write_landing,
    )

    landing, root, exports = tmp_path / "landing", tmp_path / "warehouse", tmp_path / "exports"
    write_landing(landing)
    materialize(root, landing, exports)
    wh = Warehouse(root)
    con = connect()
    export_segment(con, wh, LocalExportStorage(exports), SegmentExportRequest("geo_germany", ("email",), "gzip"),
                   chunk_size=5)
    con.close()
    synced = {"geo_germany": "Germany"}
    with FakeKlaviyo() as k, FakeDotdigital() as d:
        def sync_both() -> None:
            for name, client in (("klaviyo", klaviyo_client(k.url)), ("dotdigital", dotdigital_client(d.url))):
                report = sync(name, wh, DAYS[-1], synced, state_dir=root / "sync_state" / name,
                              dry_run_root=root / "sync_dry_run", client=client)
                assert report.status == "ok"

        sync_both()
        assert k.profile(NORM) is not None and d.contact(NORM) is not None
        before = traces(root, exports)
        for where in ("raw_profiles/", "quarantine_profiles/", "daily/nosto_segments/", "segment-export/geo_germany/",
                      "sync_state/klaviyo/", "sync_state/dotdigital/"):
            assert any(f.startswith(where) for f in before), (where, before)

        monkeypatch.setenv("SEGMENT_PIPELINE_WAREHOUSE", str(root))
        monkeypatch.setenv("SEGMENT_PIPELINE_EXPORT_DIR", str(exports))
        monkeypatch.setenv("SEGMENT_PIPELINE_API_STATE", str(tmp_path / "api_state"))
        monkeypatch.delenv("SEGMENT_PIPELINE_EXPORT_BUCKET", raising=False)
        assert cli(["forget", PERSON]) == 0
        # the next run: the daily pipeline (the tombstone keeps the person out), the erasure, the syncs
        materialize(root, landing, exports)
        report = propagate(root, child_destinations(k.url, d.url))
        sync_both()

        assert k.deletions_for(NORM) == 1 and k.profile(NORM) is None
        assert [c["email"] for c in d.deletion_calls] == [NORM] and d.contact(NORM) is None
        (request,) = Ledger(root).requests(open_only=False)
        status = _status(wh, request.request_id)
        assert sorted(status) == ["dotdigital", "klaviyo"] and all(s["confirmed_at"] for s in status.values())
        assert report.settled == 1 and Ledger(root).pending(request.request_id) is None
        assert traces(root, exports, allow_hash_in=("privacy/", "quarantine_", "identity_links/")) == []
        assert k.profile(NORM) is None and d.contact(NORM) is None  # the syncs after it sent nobody back


def test_ledger_mark_many_is_mark_for_a_batch(tmp_path):
    ledger = Ledger(tmp_path)
    a, b = (r.request_id for r in ledger.request(["a@x.io", "b@x.io"], "cli"))
    ledger.mark_many([a, b], "klaviyo", "asked")
    ledger.mark_many([a, b], "klaviyo", "asked")
    ledger.mark_many([a], "klaviyo", "failed", "HTTP 500")
    ledger.mark_many([b], "klaviyo", "confirmed")
    first = {r["request_id"]: r for r in ledger.status()}
    ledger.mark_many([b], "klaviyo", "confirmed")  # the first time is kept
    rows = {r["request_id"]: r for r in ledger.status()}
    assert rows[a]["attempts"] == rows[b]["attempts"] == 2 and rows[a]["last_error"] == "HTTP 500"
    assert rows[a]["confirmed_at"] is None and rows[b]["confirmed_at"] == first[b]["confirmed_at"]
    with pytest.raises(KeyError, match="no deletion request"):
        ledger.mark_many([a, "del-unknown"], "klaviyo", "done")
    with pytest.raises(ValueError, match="unknown state"):
        ledger.mark_many([a], "klaviyo", "gone")  # type: ignore[arg-type]


def test_a_failed_lookup_whose_path_holds_the_address_is_recorded_without_it(tmp_path):
    with FakeDotdigital() as d:
        d.seed_contact("o'brien+shop@shop.com")
        ledger = Ledger(tmp_path)
        (req,) = ledger.request(["O'Brien+Shop@shop.com"], "cli")
        ledger.warehouse_done(req.request_id)
        d.inject("500", times=10_000, match="GET /v2/contacts/")
        lines: list[str] = []
        report = propagate(tmp_path, {"dotdigital": DotdigitalDestination(dotdigital_client(d.url, policy=SHORT),
                                                                          DotdigitalSettings())}, log=lines.append)
        (row,) = ledger.status(req.request_id)
        assert row["confirmed_at"] is None and "GET /v2/contacts/<address>" in row["last_error"]
        assert "HTTP 500" in row["last_error"] and report.destinations["dotdigital"].failed == 1
        text = (row["last_error"] + "\n".join(lines) + repr(report.metadata())).lower()
        assert "o'brien" not in text and "brien%2bshop" not in text and "brien+shop" not in text


def test_a_request_waits_for_its_warehouse_scrub_before_any_destination_is_asked(fakes, wh):
    _sync_all(wh, fakes, [GONE, STAY], only=("dotdigital",))
    ledger = Ledger(wh.root)
    (req,) = ledger.request([GONE], "cli")  # forget was killed before it scrubbed the warehouse
    first = propagate(wh.root, _destinations(fakes, only=("dotdigital",)))
    assert first.destinations["dotdigital"].waiting_for_warehouse == 1 and first.destinations["dotdigital"].asked == 0
    assert fakes["dotdigital"].deletion_calls == [] and first.open_requests == 1
    ledger.warehouse_done(req.request_id)
    second = propagate(wh.root, _destinations(fakes, only=("dotdigital",)))
    assert second.destinations["dotdigital"].confirmed == 1 and second.settled == 1


def test_a_mirror_rewrite_cut_short_is_redone_and_stale_plans_go(tmp_path):
    from segment_pipeline.core.privacy.erasure import REWRITE_MARK, scrub_mirror

    state = tmp_path / "sync_state" / "klaviyo"
    with StateStore(state) as store:
        store.confirm(Target.of("klaviyo", "http://k", ("list", "L"), ("property", "p")), [GONE, STAY],
                      ['["A"]', '["B"]'])
    (state / "plans").mkdir()
    (state / "plans" / "killed-run.parquet").write_bytes(b"PAR1" + GONE.encode())  # a killed sync's plan
    assert scrub_mirror(state, set()).stale_plans_removed == 1 and not list((state / "plans").iterdir())
    # a pass killed after deleting rows and before its rename left the mark: the next pass rewrites
    (state / REWRITE_MARK).touch()
    done = scrub_mirror(state, set())
    assert done.rewritten and done.rows_removed == 0 and not (state / REWRITE_MARK).exists()
    done = scrub_mirror(state, {hashlib.sha256(GONE.encode()).hexdigest()})
    assert done.rows_removed == 2 and done.rewritten and _mirror_emails_at(state) == {STAY}
    assert scrub_mirror(state, {hashlib.sha256(GONE.encode()).hexdigest()}) == type(done)(0, False, 0)


def _mirror_emails_at(state: Path) -> set[str]:
    with StateStore(state) as store:
        return {r[0] for t in mirror_tables(store.con)
                for r in store.con.execute(f"SELECT email FROM {t}").fetchall()}


def test_a_forgotten_address_is_in_no_sync_request_or_dry_run_payload_before_its_erasure(fakes, wh):
    """Review item 4: between ``forget`` and the erasure's confirmation, a sync names the address in no
    request of any action (a clear would make Klaviyo's bulk import re-create the deleted profile), nor a
    dry run in its payload files; the mirror keeps its rows for the erasure, and the plan counts them."""
    newcomer, leaver = "new@shop.com", "leaver@shop.com"
    _sync_all(wh, fakes, [GONE, STAY, leaver], only=("klaviyo",))
    k = fakes["klaviyo"]
    k.keep_bodies = True
    Ledger(wh.root).request([GONE, newcomer], "cli")  # tombstoned; no erasure pass yet
    day2 = "2026-11-02"
    # GONE and leaver left (a clear and a list removal each); newcomer (tombstoned) is still a member
    write_memberships(wh, day2, [("loyal", STAY), ("loyal", newcomer)])

    report = sync("klaviyo", wh, day2, SYNCED, state_dir=wh.root / "sync_state" / "klaviyo",
                  dry_run_root=wh.root / "sync_dry_run", client=klaviyo_client(k.url), settings=KlaviyoSettings())

    assert report.status == "ok" and report.forgotten == 2 and report.plan["forgotten"] == 2
    assert report.planned_clears == 1 and report.planned_removals == 1  # the leaver only
    assert report.planned_upserts == 0 and report.desired == 1
    sent = b"".join(body + path.encode() for _m, path, body in k.bodies)
    assert leaver.encode() in sent  # the check sees addresses where they travel
    for forgotten in (GONE, newcomer):
        assert forgotten.encode() not in sent and quote(forgotten, safe="").encode() not in sent
    assert k.profile(newcomer) is None and k.spec_violations == []
    assert GONE in _mirror_emails(wh, "klaviyo")  # erasure's to remove, once Klaviyo confirmed

    # a dry run (no credentials) writes no payload naming them either, whatever the action
    write_memberships(wh, "2026-11-03", [("loyal", GONE), ("loyal", newcomer)])
    dry = sync("klaviyo", wh, "2026-11-03", SYNCED, state_dir=wh.root / "sync_state" / "klaviyo",
               dry_run_root=wh.root / "sync_dry_run", client=None, settings=KlaviyoSettings())
    assert dry.dry_run and dry.forgotten == 2 and dry.planned_upserts == 0
    payloads = _bytes_under(wh.root / "sync_dry_run")
    assert STAY.encode() in payloads  # STAY leaves: its clear is in the payload
    assert GONE.encode() not in payloads and newcomer.encode() not in payloads
