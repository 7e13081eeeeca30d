"""The segment API submitting exports to a real `dagster dev` over GraphQL
(`SEGMENT_PIPELINE_DAGSTER_URL`): the run goes through that instance's run queue, its daemon runs
it, and the API reports the published files (issue 10, point 19)."""

from __future__ import annotations

import httpx
import pytest

from segment_pipeline.api.app import create_app
from segment_pipeline.api.config import ApiSettings
from segment_pipeline.core.api_exports import PREFIX_TAG
from segment_pipeline.core.feed_auth import CredentialStore
from segment_pipeline_tests.api.conftest import serve_app
from segment_pipeline_tests.e2e.conftest import RUN_TIMEOUT, runs_with_tag, wait_for, wait_for_run

pytestmark = pytest.mark.e2e


def test_api_exports_through_the_webserver_graphql(dev_server, first_sensor_run, tmp_path, monkeypatch):
    assert first_sensor_run["final_status"] == "SUCCESS"
    state = tmp_path / "api_state"
    monkeypatch.setenv("SEGMENT_PIPELINE_WAREHOUSE", str(dev_server.root / "warehouse"))
    monkeypatch.setenv("SEGMENT_PIPELINE_EXPORT_DIR", str(dev_server.root / "exports"))
    monkeypatch.setenv("SEGMENT_PIPELINE_API_STATE", str(state))
    monkeypatch.setenv("SEGMENT_PIPELINE_API_SIGNING_KEY", "s" * 40)
    monkeypatch.setenv("SEGMENT_PIPELINE_DAGSTER_URL", dev_server.url)
    _, api_key = CredentialStore(state).create_api_key("e2e")
    headers = {"Authorization": f"Bearer {api_key}"}
    with serve_app(create_app(ApiSettings.from_env())) as url, httpx.Client(base_url=url, timeout=120) as c:
        r = c.post("/users/export/segment", headers=headers,
                   json={"segment_id": "geo_germany", "fields_to_export": ["email", "country"]})
        assert r.status_code == 201, r.text
        prefix = r.json()["object_prefix"]
        # the run is in the webserver's instance, tagged for the queue's export limits
        (run,) = runs_with_tag(dev_server, PREFIX_TAG, prefix)
        assert run["tags"]["segment_export/segment_id"] == "geo_germany" and run["tags"]["segment_export/all"] == "true"
        assert wait_for_run(dev_server, run["runId"]) == "SUCCESS"

        def complete():
            body = c.get(f"/users/export/segment/{prefix}", headers=headers).json()
            return body if body["status"] in ("complete", "failed", "canceled") else None

        done = wait_for(f"export {prefix}", complete, RUN_TIMEOUT, dev_server.log_tail, interval=1)
        assert done["status"] == "complete", done
        assert done["members"] > 0 and len(done["files"]) == done["expected_files"] >= 1
        assert httpx.get(done["files"][0]["url"], timeout=60).status_code == 200
        # a second request while nothing runs is admitted again (the finished run counts no more)
        again = c.post("/users/export/segment", headers=headers,
                       json={"segment_id": "geo_germany", "fields_to_export": ["email"]})
        assert again.status_code == 201, again.text
        (second,) = runs_with_tag(dev_server, PREFIX_TAG, again.json()["object_prefix"])
        assert wait_for_run(dev_server, second["runId"]) == "SUCCESS"
