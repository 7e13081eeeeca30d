"""Export locks whose holder died (issue 10, point 12): a lock held by a SIGKILLed process on this
host is taken over at once, not after the 6-hour stale timeout; a live holder, or a holder on
another host, keeps it. Holders are real processes."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from segment_pipeline.core.exports.locks import (
    ExportInProgressError,
    dead_lock_holders,
    global_slot,
    holder_identity,
    process_start,
    read_lock,
    segment_lock,
    slot_key,
    try_acquire,
)
from segment_pipeline.core.exports.storage import LocalExportStorage

SIX_HOURS = 6 * 3600
KEY = "_locks/segment-export/vip.lock"
linux_only = pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="pid start times come from /proc")


@pytest.fixture
def storage(tmp_path) -> LocalExportStorage:
    return LocalExportStorage(tmp_path / "exports")


def hold_in_subprocess(storage: LocalExportStorage, owner: str, segment: str = "vip") -> subprocess.Popen:
    """A real process that takes the segment lock of ``segment`` and one global slot, then waits."""
    code = textwrap.dedent(f"""
        import sys, time
        from segment_pipeline.core.exports.locks import global_slot, segment_lock
        from segment_pipeline.core.exports.storage import LocalExportStorage
        storage = LocalExportStorage({str(storage.root)!r})
        with segment_lock(storage, "segment-export", {segment!r}, {segment!r}, owner={owner!r},
                          stale_after={SIX_HOURS}):
            with global_slot(storage, "segment-export", 2, owner={owner!r}, stale_after={SIX_HOURS}):
                print("held", flush=True)
                time.sleep(3600)
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def wait_until_zombie_or_gone(pid: int) -> None:
    for _ in range(1000):
        started = process_start(pid)
        if started is None or started[1] == "Z":
            return
        time.sleep(0.01)
    raise AssertionError(f"pid {pid} still running after SIGKILL")


@linux_only
def test_lock_and_slot_of_a_sigkilled_export_are_taken_over_at_once(storage):
    proc = hold_in_subprocess(storage, "run dead-run")
    try:
        # while it lives, it holds both: nobody takes them over
        with pytest.raises(ExportInProgressError, match="held by run dead-run"), segment_lock(
                storage, "segment-export", "vip", "vip", owner="run next", stale_after=SIX_HOURS):
            pass
        assert read_lock(storage, KEY, stale_after=SIX_HOURS).state == "held"
        os.kill(proc.pid, signal.SIGKILL)
        wait_until_zombie_or_gone(proc.pid)
        # dead but not yet reaped (a zombie) already counts as dead
        assert read_lock(storage, KEY, stale_after=SIX_HOURS).state == "dead"
    finally:
        proc.kill()
        proc.wait()
    found = read_lock(storage, KEY, stale_after=SIX_HOURS)
    assert found.state == "dead" and found.owner == "run dead-run"
    assert f"pid {proc.pid} on {socket.gethostname()} is gone" in found.why
    assert dead_lock_holders(storage, "segment-export", stale_after=SIX_HOURS) == {"run dead-run": found.why}

    taken: list = []
    with segment_lock(storage, "segment-export", "vip", "vip", owner="run next", stale_after=SIX_HOURS,
                      on_takeover=taken.append), global_slot(
            storage, "segment-export", 1, owner="run next", stale_after=SIX_HOURS, on_takeover=taken.append) as slot:
        assert slot == 0  # the dead run's slot 0 is free again: a limit of 1 still admits us
        assert json.loads(storage.get_bytes(KEY))["owner"] == "run next"
        assert json.loads(storage.get_bytes(slot_key("segment-export", 0)))["owner"] == "run next"
    assert [f.owner for f in taken] == ["run dead-run", "run dead-run"]
    assert all(f.state == "dead" for f in taken)
    assert storage.list_keys("_locks") == []  # released, and no takeover marker left behind


@linux_only
def test_a_reused_pid_is_a_dead_holder(storage):
    me = holder_identity()
    assert me["pid_start"] == process_start(os.getpid())[0]
    # the lock names our pid, but a process with another start time held it: the pid was reused
    reused = {**me, "owner": "run old", "created_at": time.time(), "pid_start": str(int(me["pid_start"]) - 1)}
    storage.create_exclusive(KEY, json.dumps(reused).encode())
    found = read_lock(storage, KEY, stale_after=SIX_HOURS)
    assert found.state == "dead" and "now belongs to another process" in found.why
    token, why = try_acquire(storage, KEY, owner="run new", stale_after=SIX_HOURS)
    assert token is not None, why


def test_a_live_holder_keeps_its_lock_and_another_host_waits_for_the_stale_timeout(storage):
    alive = {**holder_identity(), "owner": "run alive", "created_at": time.time()}
    storage.create_exclusive(KEY, json.dumps(alive).encode())
    assert try_acquire(storage, KEY, owner="run new", stale_after=SIX_HOURS) == (
        None, f"held by run alive since {time.strftime('%Y-%m-%dT%H:%M:%S', time.gmtime(alive['created_at']))}+00:00")
    storage.delete(KEY)

    # a pid that does not exist here, but on another host: it cannot be judged, so only time frees it
    elsewhere = {"owner": "run remote", "host": socket.gethostname() + "-other", "pid": 2**22 + 17,
                 "created_at": time.time() - 60}
    storage.create_exclusive(KEY, json.dumps(elsewhere).encode())
    assert read_lock(storage, KEY, stale_after=SIX_HOURS).state == "held"
    token, why = try_acquire(storage, KEY, owner="run new", stale_after=SIX_HOURS)
    assert token is None and "held by run remote" in why
    assert read_lock(storage, KEY, stale_after=30).state == "stale"
    token, _ = try_acquire(storage, KEY, owner="run new", stale_after=30)
    assert token is not None


@linux_only
def test_two_takers_of_one_dead_lock_never_both_win(storage):
    for round_ in range(20):
        dead = {**holder_identity(), "owner": "run dead", "created_at": time.time(), "pid_start": "1"}
        storage.create_exclusive(KEY, json.dumps(dead).encode())
        barrier = threading.Barrier(4)
        tokens: list = []

        def take(i: int, barrier: threading.Barrier = barrier, tokens: list = tokens) -> None:
            barrier.wait()
            token, _ = try_acquire(storage, KEY, owner=f"run taker-{i}", stale_after=SIX_HOURS)
            if token is not None:
                tokens.append(token)

        threads = [threading.Thread(target=take, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(tokens) == 1, (round_, tokens)
        assert storage.get_bytes(KEY) == tokens[0]
        storage.delete(KEY)
