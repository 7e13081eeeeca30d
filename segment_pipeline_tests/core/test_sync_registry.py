"""The destination interface and registry: every registered destination gets its resource, asset,
schedule and segment toggle from the registry alone, and a third destination written only against
:class:`~segment_pipeline.core.sync.engine.Destination` (the docs/syncs.md skeleton) syncs through
the same engine: plan, diff, batching, per-row rejects and their retry, dry run, run history.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import dagster as dg

from segment_pipeline.core.esp.http import HttpStats
from segment_pipeline.core.segments import INTEGRATIONS
from segment_pipeline.core.sync.destinations import DESTINATIONS
from segment_pipeline.core.sync.diff import ValueFit
from segment_pipeline.core.sync.engine import Capabilities, Destination, Limits, Option, Outcome, run_sync
from segment_pipeline.core.sync.state import StateStore, Target
from segment_pipeline.core.warehouse import Warehouse
from segment_pipeline.defs.resources import SegmentCatalogResource, WarehouseResource
from segment_pipeline.defs.syncs.assets import SYNC_ASSETS, SYNC_SCHEDULES, sync_asset
from segment_pipeline.defs.syncs.resources import RESOURCES, resource_class, sync_resources
from segment_pipeline_tests.fakes.helpers import write_memberships


def test_every_registered_destination_is_wired_from_the_registry():
    assert set(DESTINATIONS) == {"klaviyo", "dotdigital", "braze", "meta"} == set(INTEGRATIONS) - {"google_customer_match"}
    resources = sync_resources().resources
    for name, d in DESTINATIONS.items():
        assert SYNC_ASSETS[name].key == dg.AssetKey(f"{name}_sync")
        assert SYNC_SCHEDULES[name].name == f"{name}_sync_schedule"
        assert type(resources[name]) is RESOURCES[name]
        assert set(RESOURCES[name].model_fields) == {o.name for o in d.options}
        assert RESOURCES[name]().client() is None  # no secret: dry run
        caps, lim = d.capabilities, d(None, d.settings_from(d.option_values())).limits()
        assert (caps.property_upsert or caps.audience_per_segment) and lim.records_per_request > 0 and lim.bytes_per_request > lim.request_overhead


# -- a third destination, written against the interface only --------------------------------
class MemoryClient:
    """Stands in for an HTTP client: holds what it was told; ``refuse`` emails are named as refused."""

    base_url = "memory://account"

    def __init__(self) -> None:
        self.stats = HttpStats()
        self.values: dict[str, str] = {}
        self.refuse: set[str] = set()
        self.requests: list[list[dict[str, Any]]] = []

    def close(self) -> None:
        pass


class MemoryDestination(Destination):
    name = "memory"
    title = "Memory"
    description = "A test destination: a property holding the names joined by ', ' (at most 40 characters)."
    capabilities = Capabilities(property_upsert=True, list_add=False, list_remove=False)
    options = (Option("token", "MEMORY_TOKEN", secret=True), Option("field", "MEMORY_FIELD", "segments"))
    cron_env, cron, freshness_hours = "MEMORY_SYNC_CRON", "0 7 * * *", 26
    CLIENTS: dict[str, MemoryClient] = {}

    @classmethod
    def client_from(cls, options: Mapping[str, Any]) -> Any:
        return cls.CLIENTS.get(options["token"])

    @classmethod
    def settings_from(cls, options: Mapping[str, Any]) -> str:
        return options["field"]

    def limits(self) -> Limits:
        return Limits(records_per_request=3, bytes_per_request=10_000, in_flight=2,
                      value=ValueFit(40, ", ".join,
                                     "length(array_to_string(from_json(segments, '[\"VARCHAR\"]'), ', '))"))

    def connect(self) -> Target:
        return Target.of(self.name, self.client.base_url, ("list", "-"), ("field", self.settings))

    def dry_connect(self) -> None:
        self.container_ref = "-"

    def record_sql(self, action: str) -> str:
        return "json_object('email', email, 'names', json(segments))::VARCHAR || chr(10)"

    def build_request(self, action: str, payload: bytes) -> bytes:
        return payload

    def submit(self, action: str, body: bytes) -> list[dict[str, Any]]:
        rows = [json.loads(line) for line in body.decode().splitlines()]
        self.client.requests.append(rows)
        return rows

    def wait(self, handle: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return handle

    def outcome(self, rows: list[dict[str, Any]]) -> Outcome:
        refused = {}
        for r in rows:
            if r["email"] in self.client.refuse:
                refused[r["email"]] = "refused by the test"
            else:
                self.client.values[r["email"]] = ", ".join(r["names"])
        return Outcome(refused, counted=2 * len(refused))  # counters double-count, as dotdigital's do

    def dry_run_name(self, action: str, index: int) -> str:
        return f"{action}-{index:05d}.ndjson"


def test_a_third_destination_syncs_through_the_engine(tmp_path: Path):
    wh = Warehouse(tmp_path / "wh")
    synced = {"a": "Alpha", "b": "Beta", "c": "Gamma with a much longer name here"}
    write_memberships(wh, "2026-11-01", [("a", f"u{i}@x.io") for i in range(7)] + [("b", "u1@x.io"), ("c", "u1@x.io")])
    write_memberships(wh, "2026-11-02", [("a", f"u{i}@x.io") for i in range(1, 7)])
    client = MemoryClient()
    client.refuse.add("u5@x.io")
    kw = {"state_dir": tmp_path / "state", "dry_run_root": tmp_path / "dry"}

    dry = run_sync(MemoryDestination(None, "segments"), wh, "2026-11-01", synced, **kw)
    assert dry.dry_run and dry.upserted == 7 and len(list(Path(dry.payload_dir).glob("upsert-*.ndjson"))) == 3

    first = run_sync(MemoryDestination(client, "segments"), wh, "2026-11-01", synced, **kw)
    assert (first.upserted, first.rejected, first.truncated, first.report_mismatches) == (6, 1, 1, 1)
    assert all(len(rows) <= 3 for rows in client.requests)
    assert client.values["u1@x.io"] == "Alpha, Beta"  # "Alpha, Beta, Gamma ..." is over 40 characters
    client.refuse.clear()
    second = run_sync(MemoryDestination(client, "segments"), wh, "2026-11-02", synced, **kw)
    assert (second.planned_upserts, second.planned_clears, second.planned_removals) == (2, 1, 0)  # u5 retried, u1 changed
    assert client.values["u0@x.io"] == "" and client.values["u1@x.io"] == "Alpha" and client.values["u5@x.io"] == "Alpha"
    with StateStore(tmp_path / "state") as store:
        assert [r["status"] for r in store.runs()] == ["ok", "ok"] and store.rejects(second.destination) == {}


def test_a_third_destination_gets_its_resource_and_asset_from_the_factories(tmp_path: Path):
    wh = Warehouse(tmp_path / "wh")
    write_memberships(wh, "2026-11-01", [("vip", "a@x.io")])
    catalog = tmp_path / "segments.yaml"
    catalog.write_text("segments:\n  - id: vip\n    name: VIP\n    rule: {field: order_count, op: '>=', value: 3}\n")
    client = MemoryClient()
    MemoryDestination.CLIENTS["t0ken"] = client
    resource = resource_class(MemoryDestination)(token="t0ken")
    asset = sync_asset(MemoryDestination)
    synced_all = {"vip": "VIP"}
    result = dg.materialize([asset], resources={"warehouse": WarehouseResource(root=str(wh.root)), "memory": resource,
                                                "segment_catalog": SegmentCatalogResource(path=str(catalog))})
    (mat,) = result.asset_materializations_for_node("memory_sync")
    assert mat.metadata["desired"].value == 0  # the catalog has no memory toggle: nothing synced
    report = run_sync(MemoryDestination(resource.client(), resource.settings()), wh, "2026-11-01", synced_all,
                      state_dir=tmp_path / "s2", dry_run_root=tmp_path / "dry")
    assert report.upserted == 1 and client.values == {"a@x.io": "VIP"}
