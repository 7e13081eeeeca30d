"""A look at the Dagster UI in a real browser (headless Chromium): the asset graph and a segment's
page with its member-count metadata. Screenshots are saved as test artifacts.

Chromium is Debian's ``chromium`` package (``.ci/system-packages`` installs it). The UI is a JS app:
the test drives Chromium over the DevTools protocol and waits until the page shows what it checks,
then takes the screenshot. Background networking is off: the machine may have no internet.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import select
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from segment_pipeline import settings
from segment_pipeline_tests.e2e.conftest import artifacts_dir

pytestmark = pytest.mark.e2e

SEGMENT = "geo_germany"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--hide-scrollbars", "--window-size=1600,1400"]
PAGE_TIMEOUT = 180  # upper bound for the UI to show what we wait for on a busy machine


def chromium_binary() -> str | None:
    for name in (os.environ.get("CHROMIUM_BIN"), "chromium", "chromium-browser", "google-chrome"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


class Browser:
    """Headless Chromium driven over the DevTools protocol on a pipe (``--remote-debugging-pipe``:
    JSON messages separated by NUL on fds 3/4), so the test waits for what the page shows instead
    of guessing a delay. Standard library only."""

    def __init__(self, binary: str, profile: Path):
        to_chrome_r, self._to_chrome = os.pipe()
        self._from_chrome, from_chrome_w = os.pipe()

        def wire_fds():  # in the child: the protocol pipe on fds 3 (commands in) and 4 (replies out)
            os.dup2(to_chrome_r, 3)
            os.dup2(from_chrome_w, 4)

        self.proc = subprocess.Popen(
            [binary, *FLAGS, f"--user-data-dir={profile}", "--remote-debugging-pipe", "about:blank"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            preexec_fn=wire_fds, close_fds=False,
        )
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        self._buffer, self._next_id, self.session = b"", 0, None

    def send(self, method: str, params: dict | None = None, session: str | None = None) -> dict:
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._to_chrome, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + PAGE_TIMEOUT
        while True:
            while b"\0" not in self._buffer:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"no DevTools reply to {method}")
                ready, _, _ = select.select([self._from_chrome], [], [], 5)
                if ready:
                    chunk = os.read(self._from_chrome, 1 << 20)
                    if not chunk:
                        raise RuntimeError("Chromium closed the DevTools pipe")
                    self._buffer += chunk
            raw, self._buffer = self._buffer.split(b"\0", 1)
            reply = json.loads(raw)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})

    def open(self, url: str) -> None:
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        self.session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        self.send("Page.enable", session=self.session)
        self.send("Page.navigate", {"url": url}, session=self.session)

    def text(self) -> str:
        result = self.send("Runtime.evaluate", {"expression": "document.body ? document.body.innerText : ''",
                                                "returnByValue": True}, session=self.session)
        return result.get("result", {}).get("value") or ""

    def wait_for_text(self, what: str, predicate) -> str:
        deadline = time.monotonic() + PAGE_TIMEOUT
        while True:
            text = self.text()
            if predicate(text):
                return text
            if time.monotonic() > deadline:
                raise AssertionError(f"the page never showed {what}; it shows:\n{text[:3000]}")
            time.sleep(0.5)

    def screenshot(self, path: Path) -> Path:
        data = self.send("Page.captureScreenshot", {"format": "png"}, session=self.session)["data"]
        path.write_bytes(base64.b64decode(data))
        print(f"\nscreenshot: {path}")
        return path

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.send("Browser.close")
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=30)
        os.close(self._to_chrome)
        os.close(self._from_chrome)


@pytest.fixture
def browser(tmp_path):
    binary = chromium_binary()
    if binary is None:
        pytest.skip("no Chromium on PATH (install Debian's `chromium`: .ci/system-packages does it as root)")
    b = Browser(binary, tmp_path / "chromium-profile")
    yield b
    b.close()


def latest_member_count(server) -> int:
    query = """{ assetNodeOrError(assetKey: {path: ["segment", "%s"]}) { ... on AssetNode {
        assetMaterializations(limit: 1) { partition metadataEntries { label ... on IntMetadataEntry { intValue } } } } } }"""
    (mat,) = server.graphql(query % SEGMENT)["assetNodeOrError"]["assetMaterializations"]
    return {e["label"]: e.get("intValue") for e in mat["metadataEntries"]}["member_count"]


def test_asset_graph_and_segment_page_in_chromium(dev_server, first_sensor_run, browser):
    assert first_sensor_run["final_status"] == "SUCCESS"
    shots = artifacts_dir()
    segment_ids = [s["id"] for s in yaml.safe_load((Path(settings.segments_file())).read_text())["segments"]]

    # the asset graph of the segments group: the dataset and the per-segment assets
    browser.open(f"{dev_server.url}/locations/segment_pipeline/asset-groups/segments/lineage")
    graph = browser.wait_for_text("the segments asset graph", lambda t: "memberships" in t and
                                  sum(s in t for s in segment_ids) >= 5)
    browser.screenshot(shots / "asset_graph_segments.png")
    assert "membership_changes" in graph or "memberships" in graph

    # one segment's page: its name and the member-count metadata of the latest materialization
    count = latest_member_count(dev_server)
    assert count > 0
    browser.open(f"{dev_server.url}/assets/segment/{SEGMENT}")
    # the page renders its sections as they load: wait for the metadata and the description
    page = browser.wait_for_text("the member_count metadata and the description",
                                 lambda t: re.search(rf"member_count\s.{{0,60}}?\b{count}\b", t, re.S) is not None
                                 and "geo-area Germany" in t)
    browser.screenshot(shots / f"asset_segment_{SEGMENT}.png")
    assert "geo-area Germany" in page  # the segment's name from the definitions file
    # the member preview: captioned, shown inline from its first row (not a dialog scrolled to its end)
    assert re.search(r"preview_rows\s+.{0,60}?(first 100 of [\d,]+ members|all \d+ members?), by email", page, re.S)
    assert "Show Markdown" not in page and "```" not in page and "**" not in page
    assert "Freshness" in page
