"""The model registry: every global model version and accepted update, content addressed
in the store, so every manager on it can serve each version and resume a round.

A blob's bytes (the raw ``f32`` encoding, ``updates.encode_raw``) are stored once by their
``sha256:`` digest (``Store.put_fl_blob``), however many versions, updates or experiments
share them; which digest is version N of an experiment, or worker W's update in a round,
is the index the coordinator keeps in the experiment's document.

Two things beside the store:

* a cache in memory of the blobs read or written as model versions (``keep``), at most
  :data:`CACHE_BYTES`: a round reads its global version once per client (``MODEL_URI``)
  and once per update (checked against it), 2k reads of the same bytes;
* the blob directory managers before the store held them kept (``DATA_DIR/fl/blobs``):
  read when the store lacks a digest, and copied into the store in the background when
  the coordinator starts (:meth:`Blobs.start`), so experiments of a manager upgraded in
  place keep their versions, on it and, once copied, on every other manager.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
from collections import OrderedDict
from collections.abc import AsyncIterator, Collection, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Protocol

from edgeplane.errors import EdgeplaneError, NotFound
from edgeplane.fl import updates
from edgeplane.store.base import MAX_FL_BLOB, MAX_FL_BLOB_BATCH, fl_blob_digest

log = logging.getLogger(__name__)

#: The cache of model versions in memory. 16 versions of the large-model benchmark's 1M
#: parameters (4 MB each); a round holds one version, its next one, and the version an
#: update is checked against, so 3 models of up to 21 MB stay cached.
CACHE_BYTES = 64 * 2**20
#: Blobs hashed off the event loop past this size (hashlib lets go of the GIL): 4 MB is
#: ~8 ms of sha256 the loop would otherwise not serve requests in.
HASH_IN_THREAD = 1 * 2**20
#: the most bytes of blobs deleted in one transaction (``Blobs.delete``)
DELETE_BATCH_BYTES = 1 * 2**20
#: the most update sizes remembered for ``Blobs.delete``
MAX_SIZES_KNOWN = 100_000


class BlobStore(Protocol):
    """What the registry needs of the store (``edgeplane.store.base.Store``'s)."""

    async def put_fl_blob(self, digest: str, data: bytes) -> None: ...
    async def get_fl_blob(self, digest: str) -> bytes | None: ...
    async def missing_fl_blobs(self, digests: Sequence[str]) -> set[str]: ...
    async def delete_fl_blobs(self, digests: Sequence[str]) -> int: ...


def digest_of(data: bytes) -> str:
    return f"sha256:{hashlib.sha256(data).hexdigest()}"


class Blobs:
    def __init__(
        self, store: BlobStore, legacy: Path | None = None, *, cache_bytes: int = CACHE_BYTES
    ) -> None:
        """``legacy``: the blob directory of managers before the store held the blobs
        (``<legacy>/sha256/<hex>``), read and never written; None: there is none."""
        self.store = store
        self.legacy = None if legacy is None else legacy / "sha256"
        self.cache_bytes = cache_bytes
        self._cache: OrderedDict[str, bytes] = OrderedDict()
        self._cached = 0
        self._import: asyncio.Task[int] | None = None
        #: a put and a prune's delete of one digest, one at a time; and the digests put
        #: since a prune read the references (``pruning``): it deletes none of them
        self._gate = asyncio.Lock()
        self._fresh: set[str] | None = None
        #: the size of each update this process put (``delete`` batches the small ones)
        self._sizes: dict[str, int] = {}

    async def put(self, data: bytes, *, keep: bool = False) -> str:
        """Store ``data`` (a no-op when it is stored); its content address. ``keep``: a
        model version, held in the cache for the clients that read it next."""
        ref = await self._digest(data)
        async with self._gate:  # not between a prune's check of this digest and its delete
            if self._fresh is not None:
                self._fresh.add(ref)
            if ref not in self._cache:  # cached: stored already
                await self.store.put_fl_blob(ref, data)
        if keep:
            self._remember(ref, data)
        else:
            self._sized(ref, data)
        return ref

    async def claim(self, data: bytes) -> tuple[str, bytes | None]:
        """An update's content address, and its bytes for the caller to store with the
        write that references it (``Store.save_fl_experiment``'s ``blobs``; None: stored
        already). A prune running leaves it alone (as :meth:`put`); one starting later
        reads that write's reference: the caller holds the lock both take."""
        ref = await self._digest(data)
        async with self._gate:
            if self._fresh is not None:
                self._fresh.add(ref)
        self._sized(ref, data)
        return ref, None if ref in self._cache else data

    async def store_claimed(self, ref: str, data: bytes) -> None:
        """Store a :meth:`claim`'s bytes on their own (the caller's write that references
        them is not the first it makes)."""
        async with self._gate:
            await self.store.put_fl_blob(ref, data)

    async def _digest(self, data: bytes) -> str:
        if len(data) > HASH_IN_THREAD:
            return await asyncio.to_thread(digest_of, data)
        return digest_of(data)

    def _sized(self, ref: str, data: bytes) -> None:
        if len(self._sizes) >= MAX_SIZES_KNOWN:  # a bound, not a need: unknown is
            self._sizes.clear()  # deleted alone
        self._sizes[ref] = len(data)

    async def get(self, ref: str, *, keep: bool = True) -> bytes:
        """The bytes of ``ref``; NotFound naming ``digest`` when no store (nor the old
        blob directory) has them. ``keep``: cache what was read (False for an update,
        read once when its round closes)."""
        try:
            fl_blob_digest(ref)
        except EdgeplaneError:
            raise NotFound(f"no model blob {ref[:80]!r}", field="digest") from None
        data = self._cache.get(ref)
        if data is not None:
            self._cache.move_to_end(ref)
            return data
        data = await self.store.get_fl_blob(ref)
        if data is None:
            data = await self._from_legacy(ref)
        if data is None:
            raise NotFound(f"no model blob {ref!r}", field="digest")
        if keep:
            self._remember(ref, data)
        return data

    async def size(self, ref: str) -> int | None:
        """The blob's size in bytes; None if there is none. Read (and kept) whole: it is a
        model version a round hands out, read by its clients next."""
        try:
            return len(await self.get(ref))
        except NotFound:
            return None

    async def each(self, refs: Iterable[str]) -> AsyncIterator[updates.Arrays]:
        """The arrays of each of ``refs`` (stored updates), read and decoded one at a time
        as the caller asks: only the one being read is held (``aggregate.fedavg``)."""
        for ref in refs:
            yield updates.decode(await self.get(ref, keep=False)).arrays

    @contextlib.asynccontextmanager
    async def pruning(self) -> AsyncIterator[None]:
        """While a prune runs: from before it reads the references (the caller's, under
        the lock its puts and their referencing writes take) to its last delete, every
        digest put is left to the next prune (``delete``)."""
        self._fresh = set()
        try:
            yield
        finally:
            self._fresh = None

    async def delete(self, refs: Iterable[str]) -> int:
        """Delete ``refs`` from the store (the caller's ``prune`` rule says none is
        referenced), but none put since the prune began (``pruning``); from the cache
        too: a cached digest counts as stored (``put``). At most ``DELETE_BATCH_BYTES``
        a transaction, a put waiting for at most one: 50 updates of 4 MB took 1.5 to
        2.1 s to delete at once on SQLite (it reads each blob's chain of overflow pages
        to free them), and a transaction per small update was most of a prune's cost."""
        deleted = 0
        for batch in _batches(set(refs), self._sizes):
            async with self._gate:
                gone = [r for r in batch if self._fresh is None or r not in self._fresh]
                for ref in gone:
                    self._sizes.pop(ref, None)
                    data = self._cache.pop(ref, None)
                    if data is not None:
                        self._cached -= len(data)
                if gone:
                    deleted += await self.store.delete_fl_blobs(gone)
        return deleted

    def _remember(self, ref: str, data: bytes) -> None:
        if len(data) > self.cache_bytes:
            return
        if ref in self._cache:
            self._cache.move_to_end(ref)
            return
        self._cache[ref] = data
        self._cached += len(data)
        while self._cached > self.cache_bytes:
            _, dropped = self._cache.popitem(last=False)
            self._cached -= len(dropped)

    # the blob directory of earlier managers

    async def _from_legacy(self, ref: str) -> bytes | None:
        """``ref`` from the old blob directory, copied into the store on the way (None:
        not there, or its bytes are not what the name says)."""
        if self.legacy is None:
            return None
        data = await asyncio.to_thread(_read_verified, self.legacy, ref)
        if data is not None:
            await self.store.put_fl_blob(ref, data)
        return data

    def start(self) -> None:
        """Copy the old blob directory into the store, in the background (what fails is
        logged, and read from the directory when asked for: nothing here stops a start)."""
        if self.legacy is not None and self._import is None:
            self._import = asyncio.create_task(self.import_legacy(), name="fl-blobs-import")

    async def stop(self) -> None:
        if self._import is not None:
            self._import.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._import
            self._import = None

    async def import_legacy(self) -> int:
        """Copy every blob of the old directory the store lacks into it; how many. A file
        whose bytes do not hash to its name is left out (and logged)."""
        if self.legacy is None:
            return 0
        legacy = self.legacy
        try:
            names = await asyncio.to_thread(_digests_in, legacy)
            copied = 0
            for at in range(0, len(names), MAX_FL_BLOB_BATCH):
                batch = [f"sha256:{n}" for n in names[at : at + MAX_FL_BLOB_BATCH]]
                for ref in sorted(await self.store.missing_fl_blobs(batch)):
                    data = await asyncio.to_thread(_read_verified, legacy, ref)
                    if data is None:
                        log.warning(
                            "a federated learning blob of the data directory is damaged: "
                            "left out of the store",
                            extra={"path": str(legacy / ref.removeprefix("sha256:"))},
                        )
                        continue
                    await self.store.put_fl_blob(ref, data)
                    copied += 1
        except (OSError, EdgeplaneError) as exc:
            detail = exc.detail if isinstance(exc, EdgeplaneError) else str(exc)
            log.warning(
                "the federated learning blobs of the data directory were not all copied "
                "into the store (read from the directory meanwhile; tried again at the "
                "next start)",
                extra={"path": str(legacy), "error": detail},
            )
            return 0
        if names:
            log.info(
                "federated learning blobs of the data directory are in the store",
                extra={"path": str(legacy), "blobs": len(names), "copied": copied},
            )
        return copied


def _batches(refs: Collection[str], sizes: Mapping[str, int]) -> Iterator[list[str]]:
    """Each of ``refs`` once: those of known size in runs adding up to at most
    ``DELETE_BATCH_BYTES`` (and ``MAX_FL_BLOB_BATCH``), then each of unknown size alone."""
    known = sorted((ref, sizes[ref]) for ref in refs if ref in sizes)
    unknown = sorted(ref for ref in refs if ref not in sizes)  # both now: the caller
    batch: list[str] = []  # forgets the sizes of what it deleted
    total = 0
    for ref, size in known:
        if batch and (total + size > DELETE_BATCH_BYTES or len(batch) >= MAX_FL_BLOB_BATCH):
            yield batch
            batch, total = [], 0
        batch.append(ref)
        total += size
    if batch:
        yield batch
    for ref in unknown:
        yield [ref]


def _digests_in(directory: Path) -> list[str]:
    """The hex digests named by the files of ``directory`` (none: it does not exist)."""
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    hexes = frozenset("0123456789abcdef")
    return sorted(n for n in names if len(n) == 64 and hexes.issuperset(n))


def _read_verified(directory: Path, ref: str) -> bytes | None:
    """The file of ``ref`` in ``directory`` if its bytes hash to ``ref``; else None."""
    path = directory / ref.removeprefix("sha256:")
    try:
        if path.stat().st_size > MAX_FL_BLOB:
            return None
        data = path.read_bytes()
    except OSError:
        return None
    return data if digest_of(data) == ref else None
