"""Fixtures for the segment API tests: a real warehouse + published feed, real credentials, the
app served by a real uvicorn on a free loopback port (in a thread, or a subprocess when the test
measures the server process), and a real ``dagster-daemon`` that starts the runs the API queues
(the API itself never runs them).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import uvicorn

from segment_pipeline import settings as project_settings
from segment_pipeline.api.app import create_app
from segment_pipeline.api.config import ApiSettings
from segment_pipeline.core.exports.daily_feed import write_daily_feed
from segment_pipeline.core.exports.storage import LocalExportStorage
from segment_pipeline.core.feed_auth import CredentialStore
from segment_pipeline.core.warehouse import Warehouse, connect
from segment_pipeline_tests.core.test_exports_warehouse_fixtures import DAY, profile, write_day
from segment_pipeline_tests.waiting import HANG_TIMEOUT, child_env, on_a_free_port, stop_process, wait_for

NEXT = DAY + dt.timedelta(days=1)
SIGNING_KEY = "k" * 40


@dataclass
class Env:
    root: Path
    warehouse: Warehouse
    storage: LocalExportStorage
    state: Path
    feed_token: str
    feed_token_id: str
    api_key: str
    api_key_id: str


def publish(wh: Warehouse, storage: LocalExportStorage, *days: dt.date) -> None:
    con = connect()
    for day in days:
        write_daily_feed(con, wh, storage, day)


@pytest.fixture
def env(tmp_path, monkeypatch) -> Env:
    wh = Warehouse(tmp_path / "warehouse")
    storage = LocalExportStorage(tmp_path / "exports")
    state = tmp_path / "api_state"
    monkeypatch.setenv("SEGMENT_PIPELINE_WAREHOUSE", str(wh.root))
    monkeypatch.setenv("SEGMENT_PIPELINE_EXPORT_DIR", str(storage.root))
    monkeypatch.setenv("SEGMENT_PIPELINE_API_STATE", str(state))
    monkeypatch.setenv("SEGMENT_PIPELINE_API_SIGNING_KEY", SIGNING_KEY)
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster_home"))
    monkeypatch.setenv("SEGMENT_PIPELINE_API_RECHECK_SECONDS", "0")  # see a re-run day at once
    # what a daemon started for this test loads: an empty landing zone (the landing sensor has nothing
    # to do) and a daily cron that does not tick during a test
    monkeypatch.setenv("SEGMENT_PIPELINE_LANDING", str(tmp_path / "landing"))
    monkeypatch.setenv("SEGMENT_PIPELINE_DAILY_CRON", "0 0 1 1 *")
    # always set (tests change the value): the API loads the code location's definitions once per test
    # process, and a resource read from a variable that a later test unsets would no longer resolve
    monkeypatch.setenv("SEGMENT_PIPELINE_EXPORT_MAX_CONCURRENT", "2")
    (tmp_path / "landing").mkdir()
    (tmp_path / "dagster_home").mkdir()
    # the instance settings a deployment starts from (run queue, export tag concurrency limits)
    (tmp_path / "dagster_home" / "dagster.yaml").write_bytes(project_settings.INSTANCE_TEMPLATE.read_bytes())
    write_day(
        wh, DAY, [profile("jane@example.com"), profile("joe@example.com")],
        {"vip": "VIP", "nike": "Nike fans"}, {"vip": ["jane@example.com"]},
    )
    write_day(
        wh, NEXT, [profile("jane@example.com"), profile("joe@example.com"), profile("ann@example.com")],
        {"vip": "VIP", "nike": "Nike fans", "../x": "Hostile 'name', ü"},
        {"vip": ["jane@example.com", "ann@example.com"], "nike": ["jane@example.com"], "../x": ["joe@example.com"]},
    )
    publish(wh, storage, DAY, NEXT)
    store = CredentialStore(state)
    feed, feed_token = store.create_feed_token("nosto")
    key, api_key = store.create_api_key("partner")
    return Env(tmp_path, wh, storage, state, feed_token, feed.id, api_key, key.id)


@contextlib.contextmanager
def serve_app(app) -> Iterator[str]:
    """Serve ``app`` with uvicorn on a free loopback port in a thread; yields the base URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        if not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


@pytest.fixture
def settings(env) -> ApiSettings:
    return ApiSettings.from_env()


@pytest.fixture
def server(env, settings) -> Iterator[str]:
    with serve_app(create_app(settings)) as url:
        yield url


@pytest.fixture
def client(server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server, timeout=HANG_TIMEOUT) as c:
        yield c


@contextlib.contextmanager
def serve_subprocess(extra_env: dict[str, str] | None = None) -> Iterator[tuple[str, subprocess.Popen]]:
    """``segment-pipeline serve`` as its own process (environment inherited) on a free port,
    once it answers ``/healthz``; yields (url, process). Its output goes to a file (a pipe nobody
    reads would block a chatty server)."""
    env = child_env(extra_env)
    with tempfile.TemporaryFile() as log:

        def output() -> str:
            log.seek(0)
            return log.read().decode(errors="replace")

        def start(port: int) -> tuple[str, subprocess.Popen]:
            log.seek(0)
            log.truncate()
            url = f"http://127.0.0.1:{port}"
            proc = subprocess.Popen(
                [sys.executable, "-m", "segment_pipeline.cli", "serve", "--host", "127.0.0.1", "--port", str(port),
                 "--log-level", "warning"],
                env=env, stdout=log, stderr=subprocess.STDOUT,
            )

            def up() -> str | None:
                if proc.poll() is not None:
                    return "exited"
                try:
                    healthy = httpx.get(url + "/healthz", timeout=10).status_code == 200
                except httpx.TransportError:
                    return None
                return "up" if healthy and proc.poll() is None else None  # still ours once it answered

            try:
                state = wait_for(f"segment-pipeline serve on {url}", up, on_timeout=output, interval=0.1)
            except BaseException:
                stop_process(proc)
                raise
            if state != "up":
                stop_process(proc)
                raise RuntimeError(f"server exited: {output()}")
            return url, proc

        url, proc = on_a_free_port(start)
        try:
            yield url, proc
        finally:
            stop_process(proc, grace=10)


@contextlib.contextmanager
def run_daemon(log_path: Path) -> Iterator[subprocess.Popen]:
    """``dagster-daemon run`` on this test's instance and environment, as a deployment runs it: it
    dequeues the runs the API submitted and launches each in its own process. Stopped with Ctrl-C
    (SIGINT to the process group it leads) at the end."""
    import dagster as dg
    from dagster._daemon.controller import get_daemon_statuses

    with dg.DagsterInstance.get():  # create the instance's SQLite storage first: two processes
        pass  # creating it at the same moment race on its schema migrations
    log = log_path.open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "dagster._daemon", "run", "-w", str(Path(project_settings.PROJECT_ROOT) / "workspace.yaml")],
        env=child_env({"PYTHONUNBUFFERED": "1"}), stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        with dg.DagsterInstance.get() as instance:
            deadline = time.monotonic() + HANG_TIMEOUT  # turns a hang into a failure, not a speed claim
            while not get_daemon_statuses(instance, ["QUEUED_RUN_COORDINATOR"], ignore_errors=True)[
                    "QUEUED_RUN_COORDINATOR"].healthy:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"dagster-daemon did not start:\n{log_path.read_text(errors='replace')[-3000:]}")
                time.sleep(0.5)
        yield proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        log.close()


@pytest.fixture
def daemon(env) -> Iterator[subprocess.Popen]:
    with run_daemon(env.root / "dagster-daemon.log") as proc:
        yield proc
