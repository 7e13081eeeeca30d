"""`dg dev` from the project folder: webserver and daemon up, with the code location from pyproject."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from segment_pipeline_tests.e2e.conftest import PROJECT_ROOT, artifacts_dir, server_env, start_dagster_dev

pytestmark = pytest.mark.e2e


def dg_executable() -> str:
    candidate = Path(sys.executable).parent / "dg"
    if not candidate.exists():
        pytest.skip(f"no dg next to {sys.executable} (dagster-dg-cli is a project dependency: pip install -e .)")
    return str(candidate)


def test_dg_dev_serves_the_code_location_with_its_daemon(tmp_path):
    landing = tmp_path / "landing"  # an empty landing zone: nothing to run, only to serve
    landing.mkdir()
    dg = dg_executable()
    # started and ready: code location "segment_pipeline" LOADED, all daemons healthy
    server = start_dagster_dev(lambda port: [dg, "dev", "--host", "127.0.0.1", "--port", str(port)], PROJECT_ROOT,
                               server_env(tmp_path, landing), artifacts_dir() / "dg_dev.log")
    try:
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
