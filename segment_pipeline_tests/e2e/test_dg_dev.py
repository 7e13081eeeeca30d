"""`dg dev` from the project folder: webserver and daemon up, with the code location from pyproject."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from segment_pipeline_tests.e2e.conftest import PROJECT_ROOT, DagsterDev, artifacts_dir, free_port, server_env

pytestmark = pytest.mark.e2e


def dg_executable() -> str:
    candidate = Path(sys.executable).parent / "dg"
    if not candidate.exists():
        pytest.skip(f"no dg next to {sys.executable} (dagster-dg-cli is a project dependency: pip install -e .)")
    return str(candidate)


def test_dg_dev_serves_the_code_location_with_its_daemon(tmp_path):
    landing = tmp_path / "landing"  # an empty landing zone: nothing to run, only to serve
    landing.mkdir()
    port = free_port()
    server = DagsterDev([dg_executable(), "dev", "--host", "127.0.0.1", "--port", str(port)], PROJECT_ROOT,
                        server_env(tmp_path, landing), artifacts_dir() / "dg_dev.log", port)
    server.start()
    try:
        server.wait_until_ready()  # code location "segment_pipeline" LOADED, all daemons healthy
        nodes = server.graphql("{ assetNodes { assetKey { path } } }")["assetNodes"]
        keys = {"/".join(n["assetKey"]["path"]) for n in nodes}
        assert {"raw_profiles", "profiles", "memberships", "segment_feed_daily", "klaviyo_sync"} <= keys
        assert any(k.startswith("segment/") for k in keys)
        instance = server.graphql("{ instance { runQueuingSupported runQueueConfig { maxConcurrentRuns } } }")
        assert instance["instance"]["runQueuingSupported"]  # the template's queued run coordinator
        assert instance["instance"]["runQueueConfig"]["maxConcurrentRuns"] == 4
        # started from the project folder with DAGSTER_HOME elsewhere: no root dagster.yaml to warn about
        assert "will not be used" not in server.log_path.read_text(errors="replace")
    finally:
        server.stop()
