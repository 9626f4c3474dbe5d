"""The model registry: blobs in the store, content addressed, a bounded cache of model
versions, and the blob directory of earlier managers read and copied into the store."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgeplane.errors import Invalid, NotFound, Unavailable
from edgeplane.fl import aggregate, model, updates
from edgeplane.fl.registry import Blobs
from edgeplane.store import MemoryStore
from edgeplane.store.base import MAX_FL_BLOB_BATCH


class CountingStore(MemoryStore):
    """A memory store that counts the blob reads and writes that reach it."""

    def __init__(self) -> None:
        super().__init__()
        self.reads = 0
        self.writes = 0

    async def put_fl_blob(self, digest: str, data: bytes) -> None:
        self.writes += 1
        await super().put_fl_blob(digest, data)

    async def get_fl_blob(self, digest: str) -> bytes | None:
        self.reads += 1
        return await super().get_fl_blob(digest)


def legacy_dir(root: Path, *blobs: bytes) -> Path:
    """A blob directory as managers before the store kept it: ``sha256/<hex>``."""
    (root / "sha256").mkdir(parents=True, exist_ok=True)
    for data in blobs:
        (root / "sha256" / hashlib.sha256(data).hexdigest()).write_bytes(data)
    return root


async def test_blobs_are_content_addressed_in_the_store() -> None:
    store = MemoryStore()
    body = updates.encode_raw(model.initial())
    ref = await Blobs(store).put(body)
    assert ref == "sha256:" + hashlib.sha256(body).hexdigest()
    assert await Blobs(store).put(body) == ref  # the same bytes: the same blob
    # another manager on the store (a Blobs of its own, nothing cached) reads it
    other = Blobs(store)
    assert updates.decode(await other.get(ref)).arrays["w"].shape == (64, 10)
    for bad in ("sha256:" + "0" * 64, "sha256:../../etc/passwd", "md5:x", "sha256:" + "A" * 64):
        with pytest.raises(NotFound) as caught:
            await other.get(bad)
        assert caught.value.field == "digest"


async def test_model_versions_are_cached_updates_are_not() -> None:
    store = CountingStore()
    blobs = Blobs(store, cache_bytes=3 * 1000)
    version = await blobs.put(b"v" * 1000, keep=True)
    update = await blobs.put(b"u" * 1000)
    assert store.writes == 2
    for _ in range(5):  # a round's clients and updates read the version: from memory
        assert await blobs.get(version) == b"v" * 1000
    assert store.reads == 0
    assert await blobs.put(b"v" * 1000, keep=True) == version and store.writes == 2
    got = [u async for u in blobs.each([])]
    assert got == []
    assert await blobs.get(update, keep=False) == b"u" * 1000
    assert await blobs.get(update, keep=False) == b"u" * 1000
    assert store.reads == 2  # an update read at a close is not kept


@settings(max_examples=30, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 9), st.integers(1, 400)), max_size=40))
async def test_the_cache_never_holds_more_than_its_bound(reads: list[tuple[int, int]]) -> None:
    store = MemoryStore()
    blobs = Blobs(store, cache_bytes=1000)
    sizes: dict[str, int] = {}
    for which, size in reads:
        data = bytes([which]) * size
        ref = await blobs.put(data, keep=True)
        sizes[ref] = size
        assert await blobs.get(ref) == data
        assert blobs._cached == sum(len(d) for d in blobs._cache.values()) <= 1000
        assert ref in blobs._cache  # the newest is always kept (each fits alone)


async def test_a_blob_over_the_bound_is_cached_nowhere_and_still_stored() -> None:
    store = CountingStore()
    blobs = Blobs(store, cache_bytes=10)
    ref = await blobs.put(b"x" * 11, keep=True)
    assert await blobs.get(ref) == b"x" * 11 and store.reads == 1
    assert not blobs._cache


async def test_fedavg_of_stored_updates_reads_one_at_a_time() -> None:
    rng = np.random.default_rng(1)
    ups = [{"w": rng.normal(size=(4, 3)).astype(np.float32)} for _ in range(5)]
    blobs = Blobs(MemoryStore())
    refs = [await blobs.put(updates.encode_raw(u)) for u in ups]
    weights = [1, 2, 3, 4, 5]
    got = await aggregate.combine_each("fedavg", blobs.each(refs), weights)
    np.testing.assert_allclose(got["w"], aggregate.fedavg(ups, weights)["w"], rtol=1e-6)
    median = await aggregate.combine_each("median", blobs.each(refs), weights)
    np.testing.assert_allclose(median["w"], aggregate.median(ups)["w"])
    with pytest.raises(Invalid):
        await aggregate.combine_each("fedavg", blobs.each(refs), weights[:-1])
    with pytest.raises(Invalid):
        await aggregate.combine_each("fedavg", blobs.each(refs[:-1]), weights)


async def test_the_old_blob_directory_is_read_and_copied_into_the_store(tmp_path: Path) -> None:
    old = updates.encode_raw(model.initial())
    legacy = legacy_dir(tmp_path / "blobs", old, b"another")
    ref = "sha256:" + hashlib.sha256(old).hexdigest()
    store = CountingStore()
    # read through: the store lacks it, the directory has it; copied on the way
    assert await Blobs(store, legacy).get(ref) == old
    assert await store.get_fl_blob(ref) == old
    # the background copy takes what is left; a second run copies nothing
    blobs = Blobs(store, legacy)
    assert await blobs.import_legacy() == 1
    assert await blobs.import_legacy() == 0
    assert await Blobs(store).get("sha256:" + hashlib.sha256(b"another").hexdigest())


async def test_a_damaged_old_blob_is_left_out_and_stops_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    legacy = legacy_dir(tmp_path / "blobs", b"good")
    bad = hashlib.sha256(b"what it was").hexdigest()
    (legacy / "sha256" / bad).write_bytes(b"what it became")
    (legacy / "sha256" / "notes.txt").write_text("not a blob")
    (legacy / "sha256" / f"{bad}.123.tmp").write_bytes(b"half written")
    store = MemoryStore()
    blobs = Blobs(store, legacy)
    with caplog.at_level(logging.WARNING):
        assert await blobs.import_legacy() == 1
    assert "damaged" in caplog.text
    with pytest.raises(NotFound):
        await blobs.get(f"sha256:{bad}")
    assert await store.missing_fl_blobs([f"sha256:{bad}"]) == {f"sha256:{bad}"}


async def test_a_copy_that_fails_is_logged_and_the_directory_still_read(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    legacy = legacy_dir(tmp_path / "blobs", b"kept")
    ref = "sha256:" + hashlib.sha256(b"kept").hexdigest()

    class Down(MemoryStore):
        async def missing_fl_blobs(self, digests: Sequence[str]) -> set[str]:
            raise Unavailable("the store is down")

    blobs = Blobs(Down(), legacy)
    with caplog.at_level(logging.WARNING):
        blobs.start()
        await blobs.stop()  # cancelled or done: either way nothing raised
        assert await blobs.import_legacy() == 0
    assert "not all copied" in caplog.text
    assert await blobs.get(ref) == b"kept"


async def test_no_directory_at_all_is_nothing_to_copy(tmp_path: Path) -> None:
    assert await Blobs(MemoryStore(), tmp_path / "never").import_legacy() == 0
    assert await Blobs(MemoryStore()).import_legacy() == 0


async def test_many_old_blobs_are_asked_about_in_bounded_batches(tmp_path: Path) -> None:
    many = [str(n).encode() for n in range(MAX_FL_BLOB_BATCH + 5)]
    legacy = legacy_dir(tmp_path / "blobs", *many)
    store = MemoryStore()
    assert await Blobs(store, legacy).import_legacy() == len(many)
    refs = ["sha256:" + hashlib.sha256(d).hexdigest() for d in many]
    assert await store.missing_fl_blobs(refs[:MAX_FL_BLOB_BATCH]) == set()


async def test_a_put_while_a_prune_runs_is_never_deleted_by_it() -> None:
    """The race a prune has with a put of the same digest (a new update or version
    byte-identical to a pruned update: the put is a no-op, the blob is stored): a digest
    put after the prune read the references is left to the next prune; the rest go,
    from the store and from the cache."""
    store = CountingStore()
    blobs = Blobs(store)
    again, garbage = b"an update that is put again", b"an update nothing references"
    again_ref = await blobs.put(again, keep=True)
    garbage_ref = await blobs.put(garbage, keep=True)
    async with blobs.pruning():
        # (the prune read every experiment here: neither was referenced)
        assert await blobs.put(again) == again_ref  # its reference is being written
        assert await blobs.delete([again_ref, garbage_ref]) == 1
    assert await store.get_fl_blob(again_ref) == again
    assert await store.get_fl_blob(garbage_ref) is None
    writes = store.writes
    await blobs.put(garbage)  # no longer cached as stored: written again
    assert store.writes == writes + 1
    assert await store.get_fl_blob(garbage_ref) == garbage
    async with blobs.pruning():  # the next prune, with nothing put meanwhile, deletes it
        assert await blobs.delete([garbage_ref]) == 1


@given(st.lists(st.tuples(st.integers(0, 30), st.integers(1, 2**21) | st.none()), max_size=80))
def test_deletes_are_batched_by_known_size(refs: list[tuple[int, int | None]]) -> None:
    """Every ref once; a batch of more than one holds only known sizes adding up to at
    most DELETE_BATCH_BYTES, and at most MAX_FL_BLOB_BATCH refs."""
    from edgeplane.fl.registry import DELETE_BATCH_BYTES, _batches

    names = [f"r{n:03d}-{i}" for i, (n, _) in enumerate(refs)]
    sizes = {name: size for name, (_, size) in zip(names, refs, strict=True) if size is not None}
    batches = list(_batches(names, sizes))
    assert sorted(ref for batch in batches for ref in batch) == sorted(names)
    for batch in batches:
        assert 0 < len(batch) <= MAX_FL_BLOB_BATCH
        if len(batch) > 1:
            assert all(ref in sizes for ref in batch)
            assert sum(sizes[ref] for ref in batch) <= DELETE_BATCH_BYTES


class DeleteCountingStore(MemoryStore):
    def __init__(self) -> None:
        super().__init__()
        self.deletes: list[int] = []

    async def delete_fl_blobs(self, digests: Sequence[str]) -> int:
        self.deletes.append(len(digests))
        return await super().delete_fl_blobs(digests)


async def test_a_rounds_small_updates_go_in_one_delete() -> None:
    store = DeleteCountingStore()
    blobs = Blobs(store)
    small = [await blobs.put(bytes([n]) * 3000) for n in range(8)]
    version = await blobs.put(b"a version" * 10, keep=True)
    assert await blobs.delete([*small, version]) == 9
    # the updates' sizes are known (put here): one transaction; a size not known alone
    assert sorted(store.deletes) == [1, 8]
    assert await store.missing_fl_blobs([*small, version]) == {*small, version}
