"""The fakes still enforce everything when served from their own process (as the benchmark runs them)."""

from __future__ import annotations

from pathlib import Path

import requests

from segment_pipeline.core.sync.runner import (
    DotdigitalSettings,
    KlaviyoSettings,
    sync_dotdigital,
    sync_klaviyo,
)
from segment_pipeline.core.warehouse import Warehouse
from segment_pipeline_tests.fakes.helpers import (
    KLAVIYO_KEY,
    FakeProcess,
    dotdigital_client,
    klaviyo_client,
    write_memberships,
)

HEADERS = {"Authorization": f"Klaviyo-API-Key {KLAVIYO_KEY}", "revision": "2026-07-15"}


def test_klaviyo_fake_process_enforces_limits_auth_and_spec():
    # 2 a minute: the third request is over the limit however slowly the machine sends the three
    with FakeProcess("klaviyo", limits={"get_lists": [(2, 60.0)]}) as fake, requests.Session() as s:
        answers = [s.get(f"{fake.url}/api/lists", headers=HEADERS) for _ in range(3)]
        assert [a.status_code for a in answers] == [200, 200, 429]
        assert int(answers[2].headers["Retry-After"]) >= 1
        assert s.get(f"{fake.url}/api/lists", headers={**HEADERS, "Authorization": "Klaviyo-API-Key nope"}
                     ).status_code == 401
        bad = s.post(f"{fake.url}/api/profile-bulk-import-jobs", data=b'{"data":{"type":"profile-bulk-import-job",'
                     b'"attributes":{"profiles":{"data":[{"type":"profile","attributes":{"email":7}}]}}}}',
                     headers={**HEADERS, "Content-Type": "application/vnd.api+json"})
        assert bad.status_code == 400
        stats = fake.stats()
        assert stats["statuses"].count(429) == 1 and len(stats["violations"]) >= 1


def test_syncs_against_fakes_in_their_own_process(tmp_path: Path):
    wh = Warehouse(tmp_path / "warehouse")
    write_memberships(wh, "2026-11-01", [("loyal", f"u{i}@shop.com") for i in range(250)])
    synced = {"loyal": "Loyal Customers"}
    with FakeProcess("klaviyo", validate_sample=5) as fake:
        report = sync_klaviyo(wh, "2026-11-01", synced, state_dir=tmp_path / "k", dry_run_root=tmp_path / "dry",
                              client=klaviyo_client(fake.url),
                              settings=KlaviyoSettings(max_profiles_per_job=40, max_in_flight=4))
        stats = fake.stats()
    assert report.upserted == 250 and report.batches == 7
    assert stats["contacts"] == 250 and stats["violations"] == [] and stats["consent_attempts"] == []
    assert report.requests == stats["requests"]
    with FakeProcess("dotdigital", limits={"import": [(2, 1.0)]}, max_active_imports=1) as fake:
        # the client is told a far higher limit: only the fake's 429s hold it back
        report = sync_dotdigital(wh, "2026-11-01", synced, state_dir=tmp_path / "d", dry_run_root=tmp_path / "dry",
                                 client=dotdigital_client(fake.url, limits={"import": [(100, 1.0)]}),
                                 settings=DotdigitalSettings(contacts_per_import=50, max_in_flight=3))
        stats = fake.stats()
    assert report.upserted == 250 and stats["contacts"] == 250 and stats["violations"] == []
    imports = [st for st, fam in zip(stats["statuses"], stats["families"], strict=True) if fam == "import"]
    assert imports.count(202) == 5 and report.throttled == stats["statuses"].count(429) > 0
