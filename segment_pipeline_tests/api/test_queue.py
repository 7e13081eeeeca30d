"""Segment exports are queued, never run in the API process (issue 10, point 19), and slots are freed
by runs that never started or whose process died (points 19 and 12).

Everything is real: `segment-pipeline serve` or the app on uvicorn, the Dagster instance of the
test's DAGSTER_HOME, a real `dagster-daemon` where runs must execute, and real processes holding
export locks that are SIGKILLed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import dagster as dg
import httpx
import pytest
from dagster._core.storage.dagster_run import DagsterRun

from segment_pipeline.api.app import create_app
from segment_pipeline.api.config import ApiSettings
from segment_pipeline.api.launch import QueueLauncher
from segment_pipeline.core.api_exports import (
    GLOBAL_TAG,
    NOT_STARTED_GRACE_SECONDS,
    PREFIX_TAG,
    SEGMENT_TAG,
    ExportService,
)
from segment_pipeline.core.api_requests import RequestError
from segment_pipeline.core.exports.segment_export import SegmentExportRequest, new_object_prefix
from segment_pipeline_tests.api.conftest import serve_app
from segment_pipeline_tests.api.test_exports_api import bearer, wait_done, wait_run_finished
from segment_pipeline_tests.core.test_export_locks import hold_in_subprocess, wait_until_zombie_or_gone
from segment_pipeline_tests.waiting import child_env, free_port

SEGMENTS = ["vip", "nike", "../x"]


def run_of(object_prefix: str) -> DagsterRun:
    (run,) = dg.DagsterInstance.get().get_runs(filters=dg.RunsFilter(tags={PREFIX_TAG: object_prefix}))
    return run


def export(client: httpx.Client, env, segment_id: str) -> httpx.Response:
    return client.post("/users/export/segment", headers=bearer(env),
                       json={"segment_id": segment_id, "fields_to_export": ["email"]})


class Pinger:
    """GET /healthz back to back from its own thread; records (sent, answered, status) of each."""

    def __init__(self, url: str):
        self.url, self.samples, self.stop = url, [], threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(timeout=120) as c:
            while not self.stop.is_set():
                sent = time.monotonic()
                try:
                    status = c.get(self.url + "/healthz").status_code
                except httpx.TransportError as exc:
                    status = repr(exc)
                self.samples.append((sent, time.monotonic(), status))
                time.sleep(0.02)

    def __enter__(self) -> Pinger:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join(150)


def test_three_concurrent_exports_are_queued_and_healthz_answers_throughout(env, daemon, tmp_path, monkeypatch):
    """The issue's freeze: concurrent exports of different segments, `segment-pipeline serve` in its
    own process, the daemon running them. /healthz is asked back to back the whole time."""
    monkeypatch.setenv("SEGMENT_PIPELINE_EXPORT_MAX_CONCURRENT", "3")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with open(tmp_path / "serve.log", "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "segment_pipeline.cli", "serve", "--host", "127.0.0.1", "--port", str(port),
             "--log-level", "warning"],
            env=child_env(), stdout=log, stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 240
        while True:
            try:
                if httpx.get(url + "/healthz", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "serve.log").read_text()
            time.sleep(0.05)
        with Pinger(url) as pinger, httpx.Client(base_url=url, timeout=120) as client:
            barrier = threading.Barrier(len(SEGMENTS))
            answers: dict[str, httpx.Response] = {}

            def request(segment_id: str) -> None:
                with httpx.Client(base_url=url, timeout=120) as c:
                    barrier.wait()
                    answers[segment_id] = export(c, env, segment_id)

            started = time.monotonic()
            threads = [threading.Thread(target=request, args=(s,)) for s in SEGMENTS]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            assert {s: a.status_code for s, a in answers.items()} == dict.fromkeys(SEGMENTS, 201), {
                s: a.text for s, a in answers.items()}
            done = {s: wait_done(client, env, a.json()["object_prefix"])
                    for s, a in answers.items()}
            finished = time.monotonic()
        assert {s: d["status"] for s, d in done.items()} == dict.fromkeys(SEGMENTS, "complete"), done
        # healthz answered every time, many times while the exports were submitted and ran, and no answer
        # waited behind an export: the slowest took a small part of the time the exports took (a server
        # blocked by a run, as in the issue, would answer after the run or never)
        assert all(status == 200 for *_, status in pinger.samples), [s for s in pinger.samples if s[2] != 200]
        during = [(a - s) for s, a, _ in pinger.samples if s >= started and a <= finished]
        print(f"healthz: {len(during)} answers in {finished - started:.1f} s of exports, slowest {max(during):.3f} s")
        assert len(during) >= 10, (len(during), finished - started)
        assert max(during) < (finished - started) / 4, (max(during), finished - started)
        # each export ran as its own Dagster run, launched by the daemon's run launcher
        for d in done.values():
            assert wait_run_finished(d["object_prefix"]) == dg.DagsterRunStatus.SUCCESS  # it ends after its manifest
            assert ".dagster/grpc_info" in run_of(d["object_prefix"]).tags
        # SIGTERM stops the server (nothing of a run lives in it); uvicorn shuts down gracefully and then
        # re-raises the signal, so the exit status is "terminated by SIGTERM"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(120) in (0, -signal.SIGTERM)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_runs_that_never_start_free_their_slot(env, monkeypatch):
    """No daemon: runs stay queued. A queued run canceled or deleted frees the one slot at once."""
    monkeypatch.setenv("SEGMENT_PIPELINE_EXPORT_MAX_CONCURRENT", "1")
    instance = dg.DagsterInstance.get()
    with serve_app(create_app(ApiSettings.from_env())) as url, httpx.Client(base_url=url, timeout=120) as c:
        first = export(c, env, "vip")
        assert first.status_code == 201, first.text
        status = c.get(f"/users/export/segment/{first.json()['object_prefix']}", headers=bearer(env)).json()
        assert status["status"] == "queued" and "no Dagster daemon is running" in status["message"]
        run = run_of(first.json()["object_prefix"])
        assert run.status == dg.DagsterRunStatus.QUEUED  # in the run queue, not executed here
        assert export(c, env, "nike").status_code == 429

        assert instance.run_coordinator.cancel_run(run.run_id)  # "Terminate" on a queued run in the UI
        assert wait_done(c, env, first.json()["object_prefix"])["status"] == "canceled"
        second = export(c, env, "nike")
        assert second.status_code == 201, second.text

        instance.delete_run(run_of(second.json()["object_prefix"]).run_id)  # deleted from the queue
        gone = wait_done(c, env, second.json()["object_prefix"])
        assert gone["status"] == "failed" and "deleted" in gone["message"]
        assert export(c, env, "../x").status_code == 201


def test_a_run_created_but_never_submitted_stops_counting_after_the_grace(env):
    """E.g. the API process died between creating a run and queueing it: it stays NOT_STARTED forever."""
    instance = dg.DagsterInstance.get()
    prefix = new_object_prefix()
    instance.add_run(DagsterRun(job_name="segment_export_job", run_id="never-submitted",
                                status=dg.DagsterRunStatus.NOT_STARTED,
                                tags={SEGMENT_TAG: "vip", GLOBAL_TAG: "true", PREFIX_TAG: prefix}))
    request = SegmentExportRequest.parse({"segment_id": "nike", "fields_to_export": ["email"]})
    now = ExportService(env.storage, env.warehouse, env.state, QueueLauncher(), max_concurrent=1)
    with pytest.raises(RequestError) as refused:
        now.submit(request, "test")  # just created: it may still be queued any moment, so it counts
    assert refused.value.status == 429
    later = ExportService(env.storage, env.warehouse, env.state, QueueLauncher(), max_concurrent=1,
                          clock=lambda: time.time() + NOT_STARTED_GRACE_SECONDS + 1)
    record = later.submit(request, "test")
    assert instance.get_run_by_id(record.run_id).status == dg.DagsterRunStatus.QUEUED
    assert later.launcher.run_status("never-submitted") == (
        "FAILURE", "the run was created but never submitted to the run queue")
    now.launcher.close()
    later.launcher.close()


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="pid start times come from /proc")
def test_a_killed_export_is_failed_and_frees_its_segment_and_slot(env, monkeypatch):
    """Point 12 through the API: the daemon started the run, its process took the segment lock and a
    slot and was SIGKILLed. Its export is reported failed and the next request is admitted at once."""
    monkeypatch.setenv("SEGMENT_PIPELINE_EXPORT_MAX_CONCURRENT", "2")
    instance = dg.DagsterInstance.get()
    # a run started outside the API (the Dagster UI) whose process was killed as well
    instance.add_run(DagsterRun(job_name="segment_export_job", run_id="ui-nike-run",
                                status=dg.DagsterRunStatus.STARTED, tags={SEGMENT_TAG: "nike", GLOBAL_TAG: "true"}))
    with serve_app(create_app(ApiSettings.from_env())) as url, httpx.Client(base_url=url, timeout=120) as c:
        first = export(c, env, "vip")
        assert first.status_code == 201, first.text
        prefix = first.json()["object_prefix"]
        run = run_of(prefix)
        # what the daemon and the run do: the run starts, its process takes the lock and a slot
        instance.report_dagster_event(
            dg.DagsterEvent(dg.DagsterEventType.RUN_START.value, job_name=run.job_name), run.run_id)
        killed = []
        for owner, segment in ((f"run {run.run_id}", "vip"), ("run ui-nike-run", "nike")):
            holder = hold_in_subprocess(env.storage, owner, segment)
            killed.append(holder.pid)
            os.kill(holder.pid, signal.SIGKILL)
            wait_until_zombie_or_gone(holder.pid)
            holder.wait()
        assert instance.get_run_by_id(run.run_id).status == dg.DagsterRunStatus.STARTED

        status = c.get(f"/users/export/segment/{prefix}", headers=bearer(env)).json()
        assert status["status"] == "failed", status
        assert "died before finishing" in status["message"] and f"pid {killed[0]}" in status["message"]
        assert instance.get_run_by_id(run.run_id).status == dg.DagsterRunStatus.FAILURE
        again = export(c, env, "vip")
        assert again.status_code == 201, again.text  # the segment is free again, no 409
        # the UI run's process died too: its segment is admitted, within the cap of 2
        other = export(c, env, "nike")
        assert other.status_code == 201, other.text
        assert instance.get_run_by_id("ui-nike-run").status == dg.DagsterRunStatus.FAILURE
        # and the failure stays what the API reports
        assert c.get(f"/users/export/segment/{prefix}", headers=bearer(env)).json()["status"] == "failed"


def test_without_an_instance_to_queue_to_exports_answer_503_saying_why(env, monkeypatch):
    monkeypatch.delenv("DAGSTER_HOME")
    with serve_app(create_app(ApiSettings.from_env())) as url, httpx.Client(base_url=url, timeout=120) as c:
        r = export(c, env, "vip")
        assert r.status_code == 503 and "DAGSTER_HOME is not set" in r.json()["message"]
        assert c.get("/healthz").status_code == 200
        assert c.get("/segments/export", auth=("nosto", env.feed_token)).status_code == 200  # the feed is unaffected
