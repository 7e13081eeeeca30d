"""POST /users/export/segment, GET on its prefix and the signed downloads, over real HTTP, with the
export queued as a real Dagster run in the temporary DAGSTER_HOME instance and started by a real
``dagster-daemon`` in its own process (the API never executes runs)."""

from __future__ import annotations

import contextlib
import io
import json
import threading
import time
import urllib.parse
import zipfile
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import dagster as dg
import httpx
import pytest

from segment_pipeline.api.app import create_app
from segment_pipeline.api.config import ApiSettings
from segment_pipeline.core.api_exports import GLOBAL_TAG, PREFIX_TAG, SEGMENT_TAG
from segment_pipeline.core.exports.segment_export import SUPPORTED_FIELDS
from segment_pipeline.core.feed_auth import UrlSigner
from segment_pipeline_tests.api.conftest import SIGNING_KEY, serve_app
from segment_pipeline_tests.waiting import HANG_TIMEOUT, wait_for

FIELDS = ["email", "first_name", "braze_id"]


class GatedReceiver:
    """A callback endpoint that holds every POST until ``open`` is set (keeps an export running)."""

    def __init__(self):
        self.open = threading.Event()
        self.received: list[dict] = []
        self.url = ""


@contextlib.contextmanager
def gated_receiver() -> Iterator[GatedReceiver]:
    state = GatedReceiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            state.open.wait()  # set by the test, or when the receiver closes
            state.received.append(json.loads(body))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.url = f"http://127.0.0.1:{server.server_address[1]}/hook?secret=s3cr3t"
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield state
    finally:
        state.open.set()
        server.shutdown()
        server.server_close()


def bearer(env) -> dict[str, str]:
    return {"Authorization": f"Bearer {env.api_key}"}


def wait_done(client: httpx.Client, env, object_prefix: str) -> dict:
    """The export's status once it is complete, failed or canceled (as the API reports it)."""
    seen = set()
    last: dict = {}

    def finished() -> dict | None:
        body = last["body"] = client.get(f"/users/export/segment/{object_prefix}", headers=bearer(env)).json()
        seen.add(body["status"])
        return body if body["status"] in ("complete", "failed", "canceled") else None

    body = wait_for(f"export {object_prefix} to finish", finished, on_timeout=lambda: str(last), interval=0.1)
    body["_seen"] = seen
    return body


def wait_run_finished(object_prefix: str) -> dg.DagsterRunStatus:
    """The status of the export's Dagster run once it has ended. The export is complete once its
    manifest exists; its run ends a moment later (after the callback, when there is one), and
    only then is its global slot free."""
    instance = dg.DagsterInstance.get()

    def finished() -> dg.DagsterRunStatus | None:
        runs = instance.get_runs(filters=dg.RunsFilter(tags={PREFIX_TAG: object_prefix}))
        return runs[0].status if runs and runs[0].is_finished else None

    return wait_for(f"the Dagster run of export {object_prefix} to end", finished)


def test_export_runs_as_dagster_run_and_lists_signed_files(env, daemon, client):
    with gated_receiver() as hook:
        hook.open.set()
        r = client.post(
            "/users/export/segment", headers=bearer(env),
            json={"segment_id": "vip", "fields_to_export": FIELDS, "callback_endpoint": hook.url},
        )
        assert r.status_code == 201, r.text
        body = r.json()
        assert body["message"] == "success"
        prefix = body["object_prefix"]
        assert body["url"] == f"{client.base_url}/users/export/segment/{prefix}"
        assert r.headers["location"] == body["url"]
        done = wait_done(client, env, prefix)
        assert done["status"] == "complete", done
        assert done["members"] == 2 and done["expected_files"] == 1 and len(done["files"]) == 1
        assert done["urls_expire_at"] > time.time() + 3 * 3600
        # the callback fired with the status URL (the file URLs need no key, the status URL does)
        wait_for("the callback", lambda: hook.received)
        assert hook.received == [{"success": True, "url": body["url"]}]
        assert wait_run_finished(prefix) == dg.DagsterRunStatus.SUCCESS

    f = done["files"][0]
    assert f["name"].endswith(".zip") and f["lines"] == 2
    download = httpx.get(f["url"])
    assert download.status_code == 200 and download.headers["content-type"] == "application/zip"
    with zipfile.ZipFile(io.BytesIO(download.content)) as zf:
        rows = [json.loads(line) for line in zf.read(zf.namelist()[0]).decode().splitlines()]
    assert sorted(r["email"] for r in rows) == ["ann@example.com", "jane@example.com"]
    assert set(rows[0]) <= set(FIELDS)

    assert wait_run_finished(prefix) == dg.DagsterRunStatus.SUCCESS  # the run ends a moment after its callback
    instance = dg.DagsterInstance.get()
    runs = instance.get_runs(filters=dg.RunsFilter(tags={PREFIX_TAG: prefix}))
    assert len(runs) == 1 and runs[0].status == dg.DagsterRunStatus.SUCCESS
    assert runs[0].job_name == "segment_export_job"
    assert ".dagster/grpc_info" in runs[0].tags  # launched by the daemon's run launcher, not in the API
    assert runs[0].tags[SEGMENT_TAG] == "vip" and runs[0].tags[GLOBAL_TAG] == "true"
    assert runs[0].run_config["ops"]["segment_export"]["config"]["object_prefix"] == prefix

    # signed URLs: tampered, expired, or re-pointed at another key are refused
    parsed = urllib.parse.urlsplit(f["url"])
    query = dict(urllib.parse.parse_qsl(parsed.query))
    base = f"{parsed.scheme}://{parsed.netloc}"
    tampered = httpx.get(f"{base}{parsed.path}", params={**query, "sig": query["sig"][:-2] + "AA"})
    assert tampered.status_code == 403
    assert httpx.get(f"{base}{parsed.path}", params={**query, "expires": int(query["expires"]) + 1}).status_code == 403
    signer = UrlSigner(SIGNING_KEY.encode(), ttl_seconds=60)
    key = urllib.parse.unquote(parsed.path).removeprefix("/downloads/")
    expires, sig = signer.sign("/downloads/" + key, now=time.time() - 3600)
    expired = httpx.get(f"{base}{parsed.path}", params={"expires": expires, "sig": sig})
    assert expired.status_code == 403 and "expired" in expired.json()["message"]
    daily = "daily/nosto_segments/latest"
    expires, sig = signer.sign("/downloads/" + daily)
    assert httpx.get(f"{base}/downloads/{daily}", params={"expires": expires, "sig": sig}).status_code == 403
    sneaky = "segment-export/vip/../../daily/nosto_segments/latest"
    expires, sig = signer.sign("/downloads/" + sneaky)
    r = httpx.get(f"{base}/downloads/{urllib.parse.quote(sneaky, safe='')}", params={"expires": expires, "sig": sig})
    assert r.status_code == 404  # '..' never names a key, whatever the signature
    r = httpx.get(f"{base}/downloads/{urllib.parse.quote(sneaky)}", params={"expires": expires, "sig": sig})
    assert r.status_code in (403, 404)  # the client normalizes the dots away: another key, bad signature


def test_two_requests_for_one_segment_at_once_one_wins_409(env, daemon, client):
    with gated_receiver() as hook:
        barrier = threading.Barrier(2)
        answers: list[httpx.Response] = []

        def request() -> None:
            with httpx.Client(base_url=str(client.base_url), timeout=HANG_TIMEOUT) as c:
                barrier.wait()
                answers.append(c.post(
                    "/users/export/segment", headers=bearer(env),
                    json={"segment_id": "vip", "fields_to_export": FIELDS, "callback_endpoint": hook.url},
                ))

        threads = [threading.Thread(target=request) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        statuses = sorted(a.status_code for a in answers)
        assert statuses == [201, 409], [a.text for a in answers]
        winner = next(a for a in answers if a.status_code == 201).json()["object_prefix"]
        loser = next(a for a in answers if a.status_code == 409).json()
        assert "already running" in loser["message"] and "vip" in loser["message"]
        # still running (its callback is held): a third request is refused too, another segment is not
        third = client.post("/users/export/segment", headers=bearer(env),
                            json={"segment_id": "vip", "fields_to_export": FIELDS})
        assert third.status_code == 409 and third.json()["object_prefix"] == winner
        other = client.post("/users/export/segment", headers=bearer(env),
                            json={"segment_id": "nike", "fields_to_export": ["email"], "output_format": "gzip"})
        assert other.status_code == 201
        hook.open.set()
        assert wait_done(client, env, winner)["status"] == "complete"
        assert wait_done(client, env, other.json()["object_prefix"])["files"][0]["name"].endswith(".gz")
        # both runs hold a global slot until they end (a moment after their files are complete)
        assert wait_run_finished(winner) == wait_run_finished(other.json()["object_prefix"]) == dg.DagsterRunStatus.SUCCESS
    again = client.post("/users/export/segment", headers=bearer(env), json={"segment_id": "vip", "fields_to_export": FIELDS})
    assert again.status_code == 201
    assert wait_done(client, env, again.json()["object_prefix"])["status"] == "complete"
    assert wait_run_finished(again.json()["object_prefix"]) == dg.DagsterRunStatus.SUCCESS
    assert len(dg.DagsterInstance.get().get_runs(filters=dg.RunsFilter(tags={SEGMENT_TAG: "vip"}))) == 2


def _foreign_run(segment_tag: str) -> None:
    """A segment export run started outside the API (e.g. from the Dagster UI), still running."""
    from dagster._core.storage.dagster_run import DagsterRun

    dg.DagsterInstance.get().add_run(
        DagsterRun(job_name="segment_export_job", run_id=f"ui-{segment_tag}-run", status=dg.DagsterRunStatus.STARTED,
                   tags={SEGMENT_TAG: segment_tag, GLOBAL_TAG: "true"})
    )


def test_running_export_started_elsewhere_and_global_cap(env, daemon, monkeypatch):
    monkeypatch.setenv("SEGMENT_PIPELINE_EXPORT_MAX_CONCURRENT", "2")
    _foreign_run("vip")
    with serve_app(create_app(ApiSettings.from_env())) as url, httpx.Client(base_url=url, timeout=HANG_TIMEOUT) as c, \
            gated_receiver() as hook:
        r = c.post("/users/export/segment", headers=bearer(env), json={"segment_id": "vip", "fields_to_export": FIELDS})
        assert r.status_code == 409 and "outside this API" in r.json()["message"]
        first = c.post("/users/export/segment", headers=bearer(env),
                       json={"segment_id": "nike", "fields_to_export": FIELDS, "callback_endpoint": hook.url})
        assert first.status_code == 201  # 1 foreign + 1 = cap of 2
        capped = c.post("/users/export/segment", headers=bearer(env),
                        json={"segment_id": "../x", "fields_to_export": FIELDS})
        assert capped.status_code == 429 and capped.headers["retry-after"] == "60"
        assert "2 segment exports are already running" in capped.json()["message"]
        hook.open.set()
        assert wait_done(c, env, first.json()["object_prefix"])["status"] == "complete"
        assert wait_run_finished(first.json()["object_prefix"]) == dg.DagsterRunStatus.SUCCESS
        hostile = c.post("/users/export/segment", headers=bearer(env),
                         json={"segment_id": "../x", "fields_to_export": ["email"]})
        assert hostile.status_code == 201
        done = wait_done(c, env, hostile.json()["object_prefix"])
        assert done["status"] == "complete" and done["segment_id"] == "../x"
        assert httpx.get(done["files"][0]["url"]).status_code == 200
        assert wait_run_finished(hostile.json()["object_prefix"]) == dg.DagsterRunStatus.SUCCESS


@pytest.mark.parametrize(
    ("body", "status", "needle"),
    [
        ({"segment_id": "nope", "fields_to_export": ["email"]}, 404, "does not exist"),
        ({"segment_id": "vip", "fields_to_export": ["email", "shoe_size"]}, 400, "valid fields"),
        ({"segment_id": "vip"}, 400, "fields_to_export is required"),
        ({"segment_id": "vip", "fields_to_export": ["email"], "output_format": "rar"}, 400, "output_format"),
        ({"segment_id": "vip", "fields_to_export": ["email"], "callback_endpoint": "ftp://x"}, 400, "callback"),
        ({"segment_id": "vip", "fields_to_export": ["email"], "extra": 1}, 400, "unknown request field"),
        ({"segment_id": "", "fields_to_export": ["email"]}, 400, "segment_id"),
        (["not", "an", "object"], 400, "JSON object"),
    ],
)
def test_bad_export_requests(env, client, body, status, needle):
    r = client.post("/users/export/segment", headers=bearer(env), json=body)
    assert r.status_code == status, r.text
    assert needle in r.json()["message"]
    if "valid fields" in needle:
        assert r.json()["valid_fields"] == list(SUPPORTED_FIELDS)


def test_malformed_oversized_and_unauthenticated_export_requests(env, client):
    h = {**bearer(env), "Content-Type": "application/json"}
    r = client.post("/users/export/segment", headers=h, content=b'{"segment_id": "vip", ')
    assert r.status_code == 400 and "malformed JSON" in r.json()["message"]
    assert client.post("/users/export/segment", headers=h, content=b"\xff\xfe").status_code == 400
    assert client.post("/users/export/segment", headers=h, content=b"[" * 100_00 + b"]" * 100_00).status_code in (400, 413)
    big = b'{"segment_id": "' + b"a" * 70_000 + b'", "fields_to_export": ["email"]}'
    assert client.post("/users/export/segment", headers=h, content=big).status_code == 413

    def chunks():
        for _ in range(100):
            yield b" " * 1024

    assert client.post("/users/export/segment", headers=h, content=chunks()).status_code == 413  # no Content-Length
    form = client.post("/users/export/segment", headers={**bearer(env), "Content-Type": "text/plain"}, content=b"{}")
    assert form.status_code == 415
    assert client.post("/users/export/segment", json={"segment_id": "vip"}).status_code == 401
    feed_token = client.post("/users/export/segment", headers={"Authorization": f"Bearer {env.feed_token}"},
                             json={"segment_id": "vip", "fields_to_export": ["email"]})
    assert feed_token.status_code == 401 and feed_token.headers["www-authenticate"].startswith("Bearer")
    basic = client.post("/users/export/segment", auth=("nosto", env.feed_token),
                        json={"segment_id": "vip", "fields_to_export": ["email"]})
    assert basic.status_code == 401


def test_status_of_unknown_or_malformed_prefixes(env, client):
    h = bearer(env)
    assert client.get("/users/export/segment/00000000-0000-4000-8000-000000000000-1700000000", headers=h).status_code == 404
    for bad in ("nope", "..%2F..%2Fcredentials", "%2E%2E", "00000000-0000-4000-8000-000000000000-1/../x"):
        r = client.get(f"/users/export/segment/{bad}", headers=h)
        assert r.status_code in (400, 404), (bad, r.status_code)
        assert "credentials" not in r.text or "object_prefix" in r.text
    assert client.get("/users/export/segment/00000000-0000-4000-8000-000000000000-1").status_code == 401
