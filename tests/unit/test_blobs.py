"""The worker's content-addressed, size-bounded blob store (artifacts/blobs.py)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from edgeplane.artifacts.blobs import BlobStore, TooLarge
from edgeplane.errors import Invalid


def blob(n: int, fill: int = 1) -> tuple[str, bytes]:
    data = bytes([fill]) * n
    return hashlib.sha256(data).hexdigest(), data


def test_put_has_open_and_a_restart_finds_it(tmp_path: Path) -> None:
    store = BlobStore(tmp_path, max_bytes=1000)
    digest, data = blob(10)
    path = store.put(digest, data)
    assert path == tmp_path / digest and path.read_bytes() == data
    assert store.has(digest) and store.open(digest) == data and store.used == 10
    again = BlobStore(tmp_path, max_bytes=1000)
    assert digest in again and again.open(digest) == data


def test_bytes_that_do_not_match_the_digest_are_refused(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)
    digest, _ = blob(10)
    with pytest.raises(Invalid, match="does not match"):
        store.put(digest, b"other")
    with pytest.raises(Invalid, match="sha256"):
        store.put("../etc/passwd", b"x")
    assert list(tmp_path.iterdir()) == []


def test_least_recently_used_are_evicted_to_stay_in_bounds(tmp_path: Path) -> None:
    store = BlobStore(tmp_path, max_bytes=30)
    a, b, c = blob(10, 1), blob(10, 2), blob(10, 3)
    for digest, data in (a, b, c):
        store.put(digest, data)
    assert store.open(a[0]) == a[1]  # a is now the most recent: b goes first
    d = blob(15, 4)
    store.put(*d)
    assert not store.has(b[0]) and not store.has(c[0])
    assert store.has(a[0]) and store.has(d[0]) and store.used == 25
    assert store.stats.evicted == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([a[0], d[0]])


def test_a_blob_bigger_than_the_store_is_refused_and_counted(tmp_path: Path) -> None:
    store = BlobStore(tmp_path, max_bytes=5)
    kept = blob(5)
    store.put(*kept)
    with pytest.raises(TooLarge):
        store.put(*blob(6, 2))
    assert store.stats.refused == 1 and store.has(kept[0])


def test_a_corrupt_entry_is_dropped_and_reported_missing(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)
    digest, data = blob(100)
    store.put(digest, data)
    (tmp_path / digest).write_bytes(b"\0" + data[1:])
    assert store.open(digest) is None
    assert store.stats.corrupt == 1 and not store.has(digest)
    assert not (tmp_path / digest).exists()
    store.put(digest, data)  # fetched again
    assert store.open(digest) == data


def test_a_restart_drops_interrupted_writes_keeps_the_lru_order_and_the_bound(
    tmp_path: Path,
) -> None:
    store = BlobStore(tmp_path, max_bytes=100)
    old, new = blob(40, 1), blob(40, 2)
    store.put(*old)
    store.put(*new)
    os.utime(tmp_path / old[0], (1, 1))
    (tmp_path / f"{old[0]}.123.tmp").write_bytes(b"half")
    (tmp_path / "not-a-blob").write_bytes(b"left alone")
    smaller = BlobStore(tmp_path, max_bytes=50)
    assert smaller.has(new[0]) and not smaller.has(old[0]) and smaller.used == 40
    assert not (tmp_path / f"{old[0]}.123.tmp").exists()
    assert (tmp_path / "not-a-blob").exists()


async def test_a_workers_modules_kept_by_an_earlier_version_are_adopted(tmp_path: Path) -> None:
    from edgeplane.worker.agent import ArtifactCache

    digest, data = blob(64)
    (tmp_path / f"{digest}.wasm").write_bytes(data)
    (tmp_path / "notes.wasm").write_bytes(b"not a module of ours")
    cache = ArtifactCache(tmp_path)
    assert await cache.load(digest) == data
    assert not (tmp_path / f"{digest}.wasm").exists()
    assert (tmp_path / "notes.wasm").exists()
