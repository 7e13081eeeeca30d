"""Test helpers shared by the sync tests: memberships fixtures and a sync child process.

``python -m segment_pipeline_tests.fakes.helpers <integration> <base_url> <warehouse> <state> <day> <synced-json>``
runs one real sync (our production code path) against a fake, so a test can SIGKILL it mid-run.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable, Iterable
from pathlib import Path

import duckdb

from segment_pipeline.core.esp.dotdigital import DotdigitalClient
from segment_pipeline.core.esp.http import RetryPolicy
from segment_pipeline.core.esp.klaviyo import KlaviyoClient
from segment_pipeline.core.esp.meta import MetaClient
from segment_pipeline.core.sync.destinations.meta import MetaSettings
from segment_pipeline.core.sync.runner import (
    DotdigitalSettings,
    KlaviyoSettings,
    sync,
    sync_dotdigital,
    sync_klaviyo,
)
from segment_pipeline.core.warehouse import Warehouse
from segment_pipeline_tests.fakes.base import FakeService
from segment_pipeline_tests.fakes.braze import CHILD_RUN as BRAZE_CHILD_RUN
from segment_pipeline_tests.waiting import HANG_TIMEOUT, child_env

KLAVIYO_KEY = "pk_test_fake"
DD_USER, DD_PASSWORD = "apiuser-fake@apiconnector.com", "fake-password"
META_TOKEN, META_ACCOUNT = "meta-test-token", "1234567890"
#: Short backoffs so retries do not slow the tests; the time bounds only catch hangs (a busy
#: machine may take seconds to answer): a test about timeouts sets its own policy.
FAST = RetryPolicy(max_elapsed=120.0, base_delay=0.02, max_delay=0.2, connect_timeout=10.0, read_timeout=10.0)


def write_memberships(wh: Warehouse, day: str, rows: Iterable[tuple[str, str]]) -> int:
    """Write ``(segment_id, email)`` rows as the memberships partition of ``day``."""
    rows = list(rows)
    con = duckdb.connect()
    try:
        con.execute("CREATE TABLE m (segment_id VARCHAR, email VARCHAR)")
        if rows:
            con.executemany("INSERT INTO m VALUES (?, ?)", rows)
        return wh.write_partition(con, "memberships", day,
                                  "SELECT segment_id, substr(md5(email), 1, 16) AS identity_id, email FROM m")
    finally:
        con.close()


def klaviyo_client(url: str, **kw: object) -> KlaviyoClient:
    kw.setdefault("policy", FAST)
    return KlaviyoClient(KLAVIYO_KEY, base_url=url, poll_initial=0.01, poll_max=0.05, **kw)  # type: ignore[arg-type]


def meta_client(url: str, **kw: object) -> MetaClient:
    kw.setdefault("policy", FAST)
    return MetaClient(META_TOKEN, META_ACCOUNT, base_url=url, **kw)  # type: ignore[arg-type]


def sync_meta(warehouse: Warehouse, day: str, synced: dict[str, str], **kw: object):
    return sync("meta", warehouse, day, synced, **kw)  # type: ignore[arg-type]


def dotdigital_client(url: str, **kw: object) -> DotdigitalClient:
    kw.setdefault("policy", FAST)
    return DotdigitalClient(DD_USER, DD_PASSWORD, base_url=url, poll_initial=0.01, poll_max=0.05, **kw)  # type: ignore[arg-type]


#: Per integration: its client for a fake's URL, its settings for a batch size and concurrency,
#: its sync entry point (adding a destination adds one entry, and one to ``FAKE_CLASSES``).
CHILD_RUNS = {
    "klaviyo": (klaviyo_client, lambda batch, n: KlaviyoSettings(max_profiles_per_job=batch, max_in_flight=n),
                sync_klaviyo),
    "dotdigital": (dotdigital_client, lambda batch, n: DotdigitalSettings(contacts_per_import=batch, max_in_flight=n,
                                                                          max_active_imports=n), sync_dotdigital),
    "braze": BRAZE_CHILD_RUN,
    "meta": (meta_client, lambda batch, n: MetaSettings(records_per_call=batch, max_in_flight=n), sync_meta),
}
FAKE_CLASSES = {"klaviyo": "segment_pipeline_tests.fakes.klaviyo:FakeKlaviyo",
                "dotdigital": "segment_pipeline_tests.fakes.dotdigital:FakeDotdigital",
                "braze": "segment_pipeline_tests.fakes.braze:FakeBraze",
                "meta": "segment_pipeline_tests.fakes.meta:FakeMeta"}


def run(integration: str, url: str, wh_root: str, state: str, day: str, synced: dict[str, str],
        batch: int = 100, in_flight: int = 2):
    make_client, make_settings, sync = CHILD_RUNS[integration]
    return sync(Warehouse(wh_root), day, synced, state_dir=Path(state), dry_run_root=Path(state) / "dry",
                client=make_client(url), settings=make_settings(batch, in_flight))


def start_sync_child(integration: str, url: str, wh_root: str | Path, state: str | Path, day: str,
                     synced: dict[str, str]) -> subprocess.Popen:
    """:func:`run` in a child process (this module's ``__main__``), so a test can SIGKILL it mid-run."""
    cmd = [sys.executable, "-m", "segment_pipeline_tests.fakes.helpers", integration, url, str(wh_root), str(state),
           day, json.dumps(synced)]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, env=child_env())


def kill_when(fake: FakeService, proc: subprocess.Popen, predicate: Callable[[], bool], what: str) -> None:
    """SIGKILL ``proc`` once ``predicate()`` holds on ``fake``'s state, with the fake frozen from
    that moment until the process is dead (its lock is held, so no request of the child is
    answered and no background job finishes): the child is killed exactly there, however the
    machine schedules the two processes."""
    try:
        with fake.lock:
            assert fake.wait_for(predicate, timeout=HANG_TIMEOUT), f"gave up waiting for {what}"
            proc.kill()
            proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


if __name__ == "__main__":
    integration, url, wh_root, state, day, synced = sys.argv[1:7]
    report = run(integration, url, wh_root, state, day, json.loads(synced))
    print(json.dumps(report.counts()))


# -- a fake in its own process ----------------------------------------------------------------
def _serve_fake(kind: str, kwargs: dict, conn) -> None:  # pragma: no cover - runs in the child
    import importlib

    module, _, name = FAKE_CLASSES[kind].partition(":")
    cls = getattr(importlib.import_module(module), name)
    fake = cls(**kwargs)
    fake.freeze_heap = True  # the child runs nothing but the fake
    fake.start()
    conn.send(fake.url)
    while conn.recv() == "stats":
        with fake.lock:
            conn.send({"requests": len(fake.log), "statuses": [r.status for r in fake.log],
                       "families": [r.family for r in fake.log], "violations": list(fake.spec_violations),
                       "consent_attempts": list(fake.consent_attempts),
                       "contacts": len(getattr(fake, "contacts", getattr(fake, "by_email", {})))})
    fake.stop()


class FakeProcess:
    """A fake (``"klaviyo"`` or ``"dotdigital"``) served from a spawned process, as the benchmark
    runs it: it does not share the test's GIL. ``stats()`` reports what the fake saw."""

    def __init__(self, kind: str, **kwargs: object):
        import multiprocessing as mp

        self._conn, child = mp.Pipe()
        self._proc = mp.get_context("spawn").Process(target=_serve_fake, args=(kind, kwargs, child), daemon=True)
        self._proc.start()
        if not self._conn.poll(HANG_TIMEOUT):
            self._proc.kill()
            raise RuntimeError(f"the {kind} fake did not start")
        self.url: str = self._conn.recv()

    def stats(self) -> dict:
        self._conn.send("stats")
        return self._conn.recv()

    def close(self) -> None:
        if self._proc.is_alive():
            self._conn.send("stop")
            self._proc.join(10)
        if self._proc.is_alive():
            self._proc.kill()

    def __enter__(self) -> FakeProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
