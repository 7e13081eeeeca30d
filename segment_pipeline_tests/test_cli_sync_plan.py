"""``segment-pipeline sync plan <destination>``: what the next run would change, from the same
warehouse, mirror, segments, mappings and settings as the asset, without sending anything."""

from __future__ import annotations

from pathlib import Path

import pytest

from segment_pipeline.cli import main
from segment_pipeline.core.sync.destinations import KlaviyoDestination
from segment_pipeline.core.sync.runner import destination_mappings, sync
from segment_pipeline.core.sync.state import StateStore
from segment_pipeline.core.warehouse import Warehouse
from segment_pipeline_tests.core.test_sync_mappings import MODEL, write_profiles
from segment_pipeline_tests.fakes.helpers import KLAVIYO_KEY, klaviyo_client, write_memberships
from segment_pipeline_tests.fakes.klaviyo import FakeKlaviyo

D1, D2 = "2026-11-01", "2026-11-02"
PEOPLE = [f"u{i:02d}@shop.com" for i in range(20)]


@pytest.fixture
def project(tmp_path: Path, monkeypatch):
    (tmp_path / "model.yaml").write_text(
        "attributes: {first_name: string, points: integer}\n")
    (tmp_path / "segments.yaml").write_text(
        "segments:\n  - id: loyal\n    name: Loyal Customers\n    rule: {field: points, op: '>=', value: 0}\n"
        "    sync: {klaviyo: true}\n")
    (tmp_path / "destinations.yaml").write_text(
        "klaviyo:\n  mappings:\n    - {from: points, to: loyalty_points}\n    - {from: first_name, to: first_name}\n")
    for var, name in (("SEGMENT_PIPELINE_WAREHOUSE", "warehouse"), ("SEGMENT_PIPELINE_MODEL", "model.yaml"),
                      ("SEGMENT_PIPELINE_SEGMENTS", "segments.yaml"),
                      ("SEGMENT_PIPELINE_DESTINATIONS", "destinations.yaml")):
        monkeypatch.setenv(var, str(tmp_path / name))
    for var in ("SEGMENT_PIPELINE_SYNC_MAX_REMOVAL_SHARE", "KLAVIYO_API_KEY", "SEGMENT_PIPELINE_KLAVIYO_LIST"):
        monkeypatch.delenv(var, raising=False)
    return Warehouse(tmp_path / "warehouse", model=MODEL)


def _day(wh: Warehouse, day: str, people: list[str], points: dict[str, int] | None = None) -> None:
    write_memberships(wh, day, [("loyal", e) for e in people])
    write_profiles(wh, day, {e: {"first_name": e[:3].title(), "points": (points or {}).get(e, 1)} for e in PEOPLE})


def test_sync_plan_prints_changes_per_field_with_masked_sample_and_the_guard(project, capsys):
    wh = project
    state = wh.root / "sync_state" / "klaviyo"
    _day(wh, D1, PEOPLE)
    with FakeKlaviyo() as fake:
        d = KlaviyoDestination(None, KlaviyoDestination.settings_from(KlaviyoDestination.option_values()))
        maps = destination_mappings(d, wh.model)
        sync("klaviyo", wh, D1, {"loyal": "Loyal Customers"}, state_dir=state, dry_run_root=wh.root / "dry",
             client=klaviyo_client(fake.url), mappings=maps)
        jobs = len(fake.jobs)

        assert main(["sync", "plan", "klaviyo"]) == 0  # nothing changed since
        out = capsys.readouterr().out
        assert "contacts held now: 20; desired: 20" in out and "update: 0" in out and "removal guard: 20% -> passes" in out

        # a bad upstream day: 18 of 20 left every segment; one of the two left has new points
        _day(wh, D2, PEOPLE[:2], {"u00@shop.com": 50})
        assert main(["sync", "plan", "klaviyo", "--sample", "2"]) == 3
        captured = capsys.readouterr()
        out = captured.out
        assert "memberships of 2026-11-02" in out and f"klaviyo|{fake.url}|list=" in out
        assert "update: 1" in out and "clear:  18" in out and "remove: 18" in out
        assert "field loyalty_points (from points): set 1, clear 0" in out
        assert "field first_name (from first_name): set 0, clear 0" in out
        assert "sample loyalty_points set: u***@shop.com" in out
        assert "sample remove: u***@shop.com, u***@shop.com" in out
        assert "leaving (cleared, removed or losing a field): 18 (90.0% of the contacts held)" in out
        assert "STOPS unless confirmed" in out and "allow_large_removal: true" in captured.err
        assert "u02@shop.com" not in out  # emails only masked
        assert main(["sync", "plan", "klaviyo", "--allow-large-removal"]) == 0

        # planning sent nothing and changed no state
        assert len(fake.jobs) == jobs
        with StateStore(state) as store:
            assert len(store.runs()) == 1
            assert store.field_values(store.get_meta("last_dest") or "", "loyalty_points")["u00@shop.com"] == 1

def test_sync_run_stops_at_the_guard_and_allow_large_removal_lets_it_through(project, capsys, monkeypatch):
    wh = project
    _day(wh, D1, PEOPLE)
    with FakeKlaviyo() as fake:
        monkeypatch.setenv("KLAVIYO_API_KEY", KLAVIYO_KEY)
        monkeypatch.setenv("KLAVIYO_BASE_URL", fake.url)
        assert main(["sync", "run", "klaviyo"]) == 0
        assert '"upserted": 20' in capsys.readouterr().out
        (lid,) = fake.lists_named("Nosto Customers")
        _day(wh, D2, PEOPLE[:2], {"u00@shop.com": 50})  # a bad upstream day
        jobs = len(fake.jobs)
        assert main(["sync", "run", "klaviyo"]) == 3
        err = capsys.readouterr().err
        assert "18 of the 20 contacts the destination holds (90.0%), over the removal guard of 20%" in err
        assert "segment-pipeline sync run klaviyo --allow-large-removal" in err
        assert len(fake.jobs) == jobs and len(fake.member_emails(lid)) == 20
        assert main(["sync", "run", "klaviyo", "--allow-large-removal"]) == 0
        out = capsys.readouterr().out
        assert '"removed": 18' in out and '"fields_updated": 1' in out
        assert fake.member_emails(lid) == set(PEOPLE[:2])
        assert fake.property_of("u00@shop.com", "loyalty_points") == 50


def test_sync_plan_names_an_unknown_destination(project, capsys):
    assert main(["sync", "plan", "mailchimp"]) == 2
    assert "unknown sync destination 'mailchimp'" in capsys.readouterr().err
