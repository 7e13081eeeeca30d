"""Leftovers of killed writes: a real SIGKILL mid-write, then the next write (or a sweep) cleans up,
but never a temporary file of a writer that is still alive."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import duckdb
import pytest

from segment_pipeline.core import atomic
from segment_pipeline.core.atomic import (
    TMP_PREFIX,
    atomic_path,
    atomic_write_bytes,
    sweep_temporaries,
    unique_tag,
)
from segment_pipeline.core.exports.storage import LocalExportStorage
from segment_pipeline.core.warehouse import Warehouse
from segment_pipeline_tests.fakes.helpers import write_memberships

REPO = Path(__file__).resolve().parents[2]
DAY = "2026-11-03"

#: A child that starts writing the memberships partition of DAY and blocks mid-write: its rows come
#: from a named pipe that nobody ever writes to.
WRITER = textwrap.dedent("""
    import sys
    from segment_pipeline.core.warehouse import Warehouse, connect
    wh, fifo = Warehouse(sys.argv[1]), sys.argv[2]
    con = connect(threads=1)
    wh.write_partition(con, "memberships", sys.argv[3],
                       "SELECT 'seg' AS segment_id, a AS identity_id, a AS email "
                       f"FROM read_csv('{fifo}', columns = {{'a': 'VARCHAR'}}, auto_detect = false, header = false)")
""")


def wait_for(predicate, what: str, timeout: float = 120.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def start_writer(wh: Warehouse, tmp_path: Path) -> subprocess.Popen:
    fifo = tmp_path / f"rows-{time.monotonic_ns()}.csv"
    os.mkfifo(fifo)
    before = set(leftovers(wh))
    child = subprocess.Popen([sys.executable, "-c", WRITER, str(wh.root), str(fifo), DAY],
                             env={**os.environ, "PYTHONPATH": str(REPO)})
    wait_for(lambda: set(leftovers(wh)) - before or child.poll() is not None, "the child to start writing")
    assert child.poll() is None, "the writer child died before writing"
    return child


def leftovers(wh: Warehouse) -> list[Path]:
    return sorted(wh.partition_path("memberships", DAY).parent.glob(f"{TMP_PREFIX}*"))


def kill(child: subprocess.Popen) -> None:
    os.kill(child.pid, signal.SIGKILL)
    child.wait()


def test_sigkilled_partition_write_is_cleaned_by_the_next_write_but_a_live_one_is_kept(tmp_path):
    wh = Warehouse(tmp_path / "warehouse")
    write_memberships(wh, DAY, [("old", "a@x.io")])
    child = start_writer(wh, tmp_path)
    try:
        (live,) = leftovers(wh)
        assert live.name.startswith(".tmp-data.parquet.")
        # a successful write of the same partition while the child still writes: its file is kept
        write_memberships(wh, DAY, [("vip", "b@x.io")])
        assert leftovers(wh) == [live]
        assert Warehouse(wh.root).sweep() == [] and leftovers(wh) == [live]
    finally:
        kill(child)
    assert leftovers(wh) == [live]  # exactly what a killed write leaves ...
    # ... and the published partition is the last complete one
    con = duckdb.connect()
    assert con.execute(f"SELECT segment_id FROM {wh.scan('memberships', days=[DAY])}").fetchall() == [("vip",)]
    write_memberships(wh, DAY, [("vip", "c@x.io")])  # the next successful write removes it
    assert leftovers(wh) == []


def test_sweep_at_start_removes_a_killed_writers_leftovers(tmp_path):
    wh = Warehouse(tmp_path / "warehouse")
    child = start_writer(wh, tmp_path)
    kill(child)
    (left,) = leftovers(wh)
    staging = wh.staging_dir()
    dead_scratch = staging / f"events-{DAY}-{dead_tag()}-lines-0.parquet"
    dead_scratch.write_bytes(b"x")
    live_scratch = staging / f"events-{DAY}-{unique_tag()}.parquet"  # ours: a live ingestion
    live_scratch.write_bytes(b"x")
    removed = wh.sweep()
    assert set(removed) == {left, dead_scratch}
    assert not left.exists() and not dead_scratch.exists() and live_scratch.exists()


def dead_tag() -> str:
    """The ``unique_tag`` of a process of this host that has exited."""
    out = subprocess.run([sys.executable, "-c", "from segment_pipeline.core.atomic import unique_tag; "
                          "print(unique_tag())"], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    return out.stdout.strip()


def foreign_tag() -> str:
    """A tag written on another host sharing the folder (its owner cannot be checked)."""
    return unique_tag().replace(atomic._HOST, "0badc0de" if atomic._HOST != "0badc0de" else "00000000", 1)


def test_owner_checks(tmp_path):
    assert atomic.owner_alive(f"x.{unique_tag()}") is True
    assert atomic.owner_alive(f"x.{dead_tag()}") is False
    host, pid, start = atomic.owner_tag().split("-")
    # our pid, but a process that started at another time: the pid was reused, the owner is gone
    assert atomic.owner_alive(f"x.{host}-{pid}-{int(start) + 1}.{'0' * 16}") is False
    assert atomic.owner_alive(f"x.{foreign_tag()}") is None
    assert atomic.owner_alive("x.no-owner-here") is None


def test_unknown_owners_are_removed_only_when_old(tmp_path):
    target = tmp_path / "feed.json"
    fresh = tmp_path / f".tmp-feed.json.{foreign_tag()}"
    old = tmp_path / f".tmp-feed.json.{foreign_tag()}"
    legacy = tmp_path / ".tmp-feed.json.3f2a9c"  # an older version's name, without owner
    for path in (fresh, old, legacy):
        path.write_bytes(b"partial")
    day_ago = time.time() - atomic.TEMP_MAX_AGE_SECONDS - 60
    os.utime(old, (day_ago, day_ago))
    os.utime(legacy, (day_ago, day_ago))
    atomic_write_bytes(target, b"complete")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["feed.json", fresh.name])


def test_interrupted_directory_replacement_is_rolled_back_not_lost(tmp_path):
    target = tmp_path / "export"
    # killed between "move the old folder aside" and "move the new one in": only ...old is left
    old = tmp_path / f".tmp-export.{dead_tag()}.old"
    old.mkdir()
    (old / "part-1.json").write_text("previous")
    assert sweep_temporaries(tmp_path) == []
    assert (target / "part-1.json").read_text() == "previous" and not old.exists()


def test_killed_export_file_write_is_swept(tmp_path):
    storage = LocalExportStorage(tmp_path / "exports")
    ready = tmp_path / "ready"
    code = textwrap.dedent(f"""
        import time
        from pathlib import Path
        from segment_pipeline.core.exports.storage import LocalExportStorage
        storage = LocalExportStorage({str(storage.root)!r})
        with storage.writer("daily/nosto_segments/{DAY}.json") as tmp:
            tmp.write_bytes(b'{{"email":"a@x.io"}}\\n')
            Path({str(ready)!r}).touch()
            time.sleep(3600)
    """)
    child = subprocess.Popen([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        wait_for(lambda: ready.exists() or child.poll() is not None, "the export writer")
        assert storage.sweep() == []  # alive: kept
    finally:
        kill(child)
    assert storage.list_temporaries("daily")
    assert storage.list_keys("daily") == []
    storage.put_bytes(f"daily/nosto_segments/{DAY}.json", b"")  # the next write of that key
    assert not storage.list_temporaries("daily")


@pytest.mark.parametrize("umask", [0o000, 0o022, 0o077])
def test_published_files_are_owner_only_whatever_the_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        with atomic_path(tmp_path / "new" / "deeper" / "file.bin") as tmp:
            assert (tmp.parent.stat().st_mode & 0o777) == 0o700  # written inside a private folder
            tmp.write_bytes(b"personal data")
        with atomic_path(tmp_path / "new" / "folder", directory=True) as folder:
            (folder / "a.json").write_text("{}")
    finally:
        os.umask(old)
    assert (tmp_path / "new" / "deeper" / "file.bin").stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "new" / "folder" / "a.json").stat().st_mode & 0o777 == 0o600
    for folder in ("new", "new/deeper", "new/folder"):
        assert (tmp_path / folder).stat().st_mode & 0o777 == 0o700, folder
