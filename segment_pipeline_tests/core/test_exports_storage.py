"""Storage: atomic publication, key safety (hostile segment ids), locks — locally and on moto S3."""

from __future__ import annotations

import json
import time
import urllib.parse

import pytest

from segment_pipeline.core.exports.keys import UnsafeKeyError, check_key, encode_segment, join_key, tag_value
from segment_pipeline.core.exports.locks import ExportInProgressError, global_slot, segment_lock
from segment_pipeline.core.exports.storage import LocalExportStorage, S3ExportStorage
from segment_pipeline_tests.fakes.s3 import moto_s3_server

HOSTILE = ["../x", "..", ".", "a/b", "a b", "ünïcødé 🎯", "..\\..\\x", "/etc/passwd", "%2e%2e", "x\ny", "~root"]


@pytest.fixture(scope="module")
def moto():
    with moto_s3_server() as server:
        yield server


@pytest.fixture(params=["local", "s3"])
def storage(request, tmp_path, moto):
    if request.param == "local":
        return LocalExportStorage(tmp_path / "exports")
    return S3ExportStorage(moto.client(), moto.new_bucket(), prefix="team/exports")


@pytest.mark.parametrize("segment_id", HOSTILE)
def test_hostile_segment_ids_become_exactly_one_safe_segment(segment_id):
    encoded = encode_segment(segment_id)
    assert "/" not in encoded and "\\" not in encoded and encoded not in (".", "..")
    assert not encoded.startswith(".")
    assert check_key(join_key("segment-export", encoded, "2026-11-03")).count("/") == 2
    assert urllib.parse.unquote(encoded) == segment_id  # reversible, hence injective


@pytest.mark.parametrize("segment_id", ["", "   ", "a\x00b", "x" * 300])
def test_unusable_segment_ids_are_rejected_with_the_id(segment_id):
    with pytest.raises(UnsafeKeyError, match="segment_id"):
        encode_segment(segment_id)


@pytest.mark.parametrize("key", ["../x", "a/../b", "/abs", "a//b", "a/./b", "a\\b", "", "a/"])
def test_raw_unsafe_keys_are_refused(key, tmp_path):
    with pytest.raises(UnsafeKeyError):
        check_key(key)
    with pytest.raises(UnsafeKeyError):
        LocalExportStorage(tmp_path).put_bytes(key, b"x")


def test_tag_values_are_dagster_safe_and_stable():
    assert tag_value("seg_1.a-b") == "seg_1.a-b"
    for hostile in HOSTILE:
        value = tag_value(hostile)
        assert value.startswith("sha-") and len(value) <= 63 and value == tag_value(hostile)
    assert tag_value("a b") != tag_value("a_b")


@pytest.mark.parametrize("segment_id", HOSTILE)
def test_hostile_ids_stay_inside_root_and_prefix(storage, segment_id, tmp_path):
    key = join_key("segment-export", encode_segment(segment_id), "f.json")
    storage.put_bytes(key, b"data")
    assert storage.get_bytes(key) == b"data"
    if isinstance(storage, LocalExportStorage):
        written = [p for p in tmp_path.rglob("*") if p.is_file()]
        assert written and all(p.resolve().is_relative_to(storage.root.resolve()) for p in written)
        assert len(written[0].relative_to(storage.root).parts) == 3
    else:
        keys = storage.list_keys("segment-export")
        assert keys == [key]
        raw = storage.client.list_objects_v2(Bucket=storage.bucket)["Contents"]
        assert [o["Key"] for o in raw] == [f"team/exports/{key}"]


def test_writer_publishes_only_on_success(storage):
    with storage.writer("daily/x/2026-11-03.json") as tmp:
        tmp.write_bytes(b"complete\n")
    with pytest.raises(RuntimeError), storage.writer("daily/x/2026-11-04.json") as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("crash mid-write")
    assert storage.list_keys("daily") == ["daily/x/2026-11-03.json"]
    assert storage.get_bytes("daily/x/2026-11-03.json") == b"complete\n"


def test_rewriting_a_key_replaces_it(storage):
    storage.put_bytes("daily/x/latest", b"1")
    with storage.writer("daily/x/latest") as tmp:
        tmp.write_bytes(b"2")
    assert storage.get_bytes("daily/x/latest") == b"2"


def test_failed_batch_leaves_nothing_visible(storage):
    with pytest.raises(RuntimeError), storage.batch("segment-export/s/2026-11-03/run") as batch:
        with batch.writer("a.zip") as tmp:
            tmp.write_bytes(b"one")
        raise RuntimeError("crash between files")
    assert storage.list_keys("segment-export") == []
    with storage.batch("segment-export/s/2026-11-03/run") as batch:
        for name in ("a.zip", "b.zip"):
            with batch.writer(name) as tmp:
                tmp.write_bytes(name.encode())
    assert storage.list_keys("segment-export") == [
        "segment-export/s/2026-11-03/run/a.zip",
        "segment-export/s/2026-11-03/run/b.zip",
    ]


def test_create_exclusive_is_exclusive(storage):
    assert storage.create_exclusive("_locks/k.lock", b"first")
    assert not storage.create_exclusive("_locks/k.lock", b"second")
    assert storage.get_bytes("_locks/k.lock") == b"first"


def test_segment_lock_fails_fast_naming_the_segment_and_releases(storage):
    with segment_lock(storage, "segment-export", "seg%201", "seg 1", owner="run-a", stale_after=3600):
        with pytest.raises(ExportInProgressError, match=r"segment 'seg 1'.*held by run-a"), segment_lock(
            storage, "segment-export", "seg%201", "seg 1", owner="run-b", stale_after=3600
        ):
            pass
        with segment_lock(storage, "segment-export", "other", "other", owner="run-c", stale_after=3600):
            pass
    with segment_lock(storage, "segment-export", "seg%201", "seg 1", owner="run-b", stale_after=3600):
        pass
    assert storage.list_keys("_locks") == []


def test_stale_lock_is_broken(storage):
    old = json.dumps({"owner": "crashed-run", "created_at": time.time() - 7200}).encode()
    assert storage.create_exclusive("_locks/segment-export/s.lock", old)
    with segment_lock(storage, "segment-export", "s", "s", owner="new-run", stale_after=3600):
        assert b"new-run" in storage.get_bytes("_locks/segment-export/s.lock")


def test_global_slots_cap_concurrent_exports(storage):
    with global_slot(storage, "segment-export", 2, owner="a", stale_after=3600) as first, global_slot(
        storage, "segment-export", 2, owner="b", stale_after=3600
    ) as second:
        assert {first, second} == {0, 1}
        with pytest.raises(ExportInProgressError, match="2 segment-export exports are already running"), global_slot(
            storage, "segment-export", 2, owner="c", stale_after=3600
        ):
            pass
