"""One real ``dagster dev -w workspace.yaml`` for the end-to-end tests (started once per session).

It runs on a free loopback port with a temporary DAGSTER_HOME holding the checked-in
``dagster.yaml`` template, and its own landing zone (a copy of three sample days), warehouse and
export folder, so the landing sensor, the daemon and the UI work exactly as a user's would. The
server's log is kept with the test artifacts.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import requests

from segment_pipeline import settings
from segment_pipeline_tests.conftest import on_an_xdist_worker
from segment_pipeline_tests.landing import copy_sample_days
from segment_pipeline_tests.waiting import HANG_TIMEOUT, child_env, on_a_free_port, wait_for

PROJECT_ROOT = Path(settings.PROJECT_ROOT)
LANDED_DAYS = ["2026-11-01", "2026-11-02", "2026-11-03"]
RUN_TIMEOUT = HANG_TIMEOUT  # how long to wait for a run before calling it a hang, not a speed claim
START_TIMEOUT = HANG_TIMEOUT


def artifacts_dir() -> Path:
    path = Path(os.environ.get("SEGMENT_PIPELINE_TEST_ARTIFACTS") or PROJECT_ROOT / "segment_pipeline_tests" / "artifacts")
    path.mkdir(parents=True, exist_ok=True)
    return path


class DagsterDev:
    """A ``dagster dev`` / ``dg dev`` process group we started, and how to talk to it."""

    def __init__(self, cmd: list[str], cwd: Path, env: dict[str, str], log_path: Path, port: int):
        self.cmd, self.cwd, self.env, self.log_path, self.port = cmd, cwd, env, log_path, port
        self.url = f"http://127.0.0.1:{port}"
        self.proc: subprocess.Popen | None = None

    def start(self) -> DagsterDev:
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(self.cmd, cwd=self.cwd, env=self.env, stdout=self._log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        return self

    def log_tail(self, lines: int = 60) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def graphql(self, query: str, variables: dict | None = None) -> dict:
        response = requests.post(f"{self.url}/graphql", json={"query": query, "variables": variables or {}},
                                 timeout=HANG_TIMEOUT)
        response.raise_for_status()
        body = response.json()
        if body.get("errors"):
            raise AssertionError(f"GraphQL errors: {body['errors']}")
        return body["data"]

    def _ready(self) -> bool:
        if self.proc.poll() is not None:
            raise RuntimeError(f"{self.cmd[0]} exited with {self.proc.returncode}:\n{self.log_tail()}")
        try:
            if requests.get(f"{self.url}/server_info", timeout=5).status_code != 200:
                return False
            data = self.graphql(READY_QUERY)
        except (requests.RequestException, AssertionError):
            return False
        locations = {e["name"]: e for e in data["workspaceOrError"].get("locationEntries", [])}
        loaded = locations.get("segment_pipeline", {}).get("loadStatus") == "LOADED"
        daemons = {d["daemonType"]: d["healthy"] for d in data["instance"]["daemonHealth"]["allDaemonStatuses"]}
        return loaded and all(daemons.get(d) for d in REQUIRED_DAEMONS)

    def wait_until_ready(self) -> DagsterDev:
        wait_for("webserver, code location and daemons", self._ready, START_TIMEOUT, self.log_tail, interval=2)
        if self.proc.poll() is not None:  # what answered was not ours
            raise RuntimeError(f"{self.cmd[0]} exited with {self.proc.returncode}:\n{self.log_tail()}")
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGINT)  # Ctrl-C to the session we started: dagster dev and its children
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=30)
        if self.proc is not None:
            self._log.close()


def start_dagster_dev(make_cmd: Callable[[int], list[str]], cwd: Path, env: dict[str, str],
                      log_path: Path) -> DagsterDev:
    """Start ``make_cmd(port)`` on a free port (another one if that was taken meanwhile) and
    wait until it is ready."""
    def start(port: int) -> DagsterDev:
        server = DagsterDev(make_cmd(port), cwd, env, log_path, port).start()
        try:
            return server.wait_until_ready()
        except BaseException:
            server.stop()
            raise

    return on_a_free_port(start)


def pytest_collection_modifyitems(items):
    """End-to-end tests that start their own server run before the shared one starts, so two
    Dagster deployments never compete for the CPU (everything else keeps its order). In one
    process they run last; with ``-n N`` (``segment_pipeline_tests/conftest.py``) they are one unit
    of work, sent to a worker first as the longest one, while the other worker runs the rest."""
    last = not on_an_xdist_worker()

    def key(item):
        e2e = "segment_pipeline_tests/e2e/" in item.nodeid
        return (e2e == last, e2e and "dev_server" in getattr(item, "fixturenames", ()))

    items.sort(key=key)


READY_QUERY = """
{ workspaceOrError { ... on Workspace { locationEntries { name loadStatus } } }
  instance { daemonHealth { allDaemonStatuses { daemonType healthy } } } }
"""
REQUIRED_DAEMONS = ("SENSOR", "SCHEDULER", "BACKFILL", "QUEUED_RUN_COORDINATOR", "ASSET", "FRESHNESS_DAEMON")


def server_env(root: Path, landing: Path) -> dict[str, str]:
    """A clean environment: temporary instance and data folders, no webhook, no ESP credentials."""
    home = root / "dagster_home"
    home.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(settings.INSTANCE_TEMPLATE, home / "dagster.yaml")
    env = {k: v for k, v in child_env().items()
           if not k.startswith(("SEGMENT_PIPELINE_", "KLAVIYO", "DOTDIGITAL", "DAGSTER_"))}
    env.update({
        "DAGSTER_HOME": str(home),
        "SEGMENT_PIPELINE_LANDING": str(landing),
        "SEGMENT_PIPELINE_WAREHOUSE": str(root / "warehouse"),
        "SEGMENT_PIPELINE_EXPORT_DIR": str(root / "exports"),
        "SEGMENT_PIPELINE_LANDING_SENSOR_INTERVAL": "5",
        "SEGMENT_PIPELINE_LANDING_SETTLE_SECONDS": "2",
        "FRESHNESS_DAEMON_INTERVAL_SECONDS": "5",
        "PYTHONUNBUFFERED": "1",
    })
    return env


@pytest.fixture(scope="session")
def dev_server(tmp_path_factory):
    """``dagster dev -w workspace.yaml`` with the landing sensor watching three sample days."""
    root = tmp_path_factory.mktemp("dagster_dev")
    landing = root / "landing"
    copy_sample_days(landing, LANDED_DAYS)

    def cmd(port: int) -> list[str]:
        return [sys.executable, "-m", "dagster", "dev", "-w", str(PROJECT_ROOT / "workspace.yaml"),
                "-h", "127.0.0.1", "-p", str(port)]

    log_path = artifacts_dir() / "dagster_dev.log"
    server = start_dagster_dev(cmd, root, server_env(root, landing), log_path)
    server.root, server.landing = root, landing
    try:
        yield server
    finally:
        server.stop()
        print(f"\ndagster dev log: {log_path}")


RUNS_QUERY = """
query($filter: RunsFilter) { runsOrError(filter: $filter) { ... on Runs { results { runId status tags { key value } } } } }
"""


def runs_with_tag(server: DagsterDev, key: str, value: str) -> list[dict]:
    data = server.graphql(RUNS_QUERY, {"filter": {"tags": [{"key": key, "value": value}]}})
    runs = data["runsOrError"]["results"]
    for run in runs:
        run["tags"] = {t["key"]: t["value"] for t in run["tags"]}
    return runs


def wait_for_run(server: DagsterDev, run_id: str) -> str:
    query = "query($id: ID!) { runOrError(runId: $id) { ... on Run { status } } }"

    def finished():
        status = server.graphql(query, {"id": run_id})["runOrError"].get("status")
        return status if status in ("SUCCESS", "FAILURE", "CANCELED") else None

    return wait_for(f"run {run_id}", finished, RUN_TIMEOUT, server.log_tail, interval=2)


@pytest.fixture(scope="session")
def first_sensor_run(dev_server) -> dict:
    """The landing sensor's first run (the three landed days), finished."""
    (run,) = wait_for("the landing sensor's first run",
                      lambda: runs_with_tag(dev_server, "segment_pipeline/landing_days", ",".join(LANDED_DAYS)),
                      RUN_TIMEOUT, dev_server.log_tail, interval=2)
    run["final_status"] = wait_for_run(dev_server, run["runId"])
    return run
