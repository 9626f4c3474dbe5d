"""The artifact proxy: serves blobs to workers over MQTT as binary chunks.

A worker that lacks an artifact publishes a :class:`FetchArtifact` on its ``fetch``
topic; the proxy reads the blob from its :class:`BlobSource` (the control plane's store
for inline modules; a registry client can be another source) and publishes its chunks
(``chunks.py``) on that worker's ``chunks`` topic. Each chunk is published once per
request, at QoS 1; what a worker still lacks it asks for again, naming the chunks.

Memory is bounded: a few recently served blobs are kept (``cache_bytes``), and a serve
waits for the broker to take each window of chunks before it builds the next, so a
50 MB blob for 50 workers is not 2.5 GB queued. One worker gets one serve of a digest at
a time (a repeated request meanwhile is dropped and counted), and at most
``concurrency`` serves run together.

The proxy trusts nothing a worker says beyond the digest it names, and the worker
trusts nothing the proxy sends before it hashes (``fetch.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from edgeplane.artifacts import chunks
from edgeplane.artifacts.blobs import BlobStore
from edgeplane.artifacts.registry_errors import ArtifactTooBig, RegistryUnreachable
from edgeplane.artifacts.registry_source import RegistrySource
from edgeplane.errors import EdgeplaneError, Invalid
from edgeplane.protocol import Topics, decode, parse_body
from edgeplane.protocol.messages import FetchArtifact
from edgeplane.transport import MqttLink, unique_client_id

log = logging.getLogger(__name__)

#: chunks published before the serve waits for the broker to take them (4 MiB)
WINDOW = 16
DEFAULT_CACHE_BYTES = 256 * 1024 * 1024
DEFAULT_MAX_BYTES = 512 * 1024 * 1024
#: a blob up to this size is hashed on the event loop (tens of µs); bigger ones in a thread
INLINE_HASH_BYTES = 64 * 1024


class BlobSource(Protocol):
    """Where the proxy gets blobs: the bytes of ``digest`` (sha256 hex), None when unknown."""

    async def open(self, digest: str) -> bytes | None: ...


class ArtifactStore(Protocol):
    async def get_artifact(self, digest: str) -> bytes | None: ...


class StoreSource:
    """The control plane's store: the inline modules the API stored by digest."""

    def __init__(self, store: ArtifactStore) -> None:
        self.store = store

    async def open(self, digest: str) -> bytes | None:
        return await self.store.get_artifact(digest)


@dataclass
class ProxyStats:
    requests: int = 0
    #: requests for a digest this worker is being served already (dropped)
    coalesced: int = 0
    bad_requests: int = 0
    served: int = 0
    chunks: int = 0
    bytes: int = 0
    not_found: int = 0
    #: blobs over ``max_bytes`` (refused)
    too_large: int = 0
    #: requests for a registry's blob the proxy could not reach now
    unavailable: int = 0


class Proxy:
    def __init__(
        self,
        source: BlobSource,
        broker_url: str,
        topics: Topics,
        *,
        username: str | None = None,
        password: str | None = None,
        ca: Path | None = None,
        max_bytes: int = DEFAULT_MAX_BYTES,
        cache_bytes: int = DEFAULT_CACHE_BYTES,
        chunk_size: int = chunks.CHUNK_SIZE,
        concurrency: int = 4,
        registries: RegistrySource | None = None,
        disk: BlobStore | None = None,
    ) -> None:
        self.source = source
        #: blobs of ``oci://`` sources (None: such requests are answered "not found")
        self.registries = registries
        #: where blobs pulled from registries are kept, so a restarted proxy does not
        #: pull them again (the store holds the modules already)
        self.disk = disk
        self.topics = topics
        self.max_bytes = max_bytes
        self.cache_bytes = cache_bytes
        self.chunk_size = chunk_size
        self.stats = ProxyStats()
        self._cache: OrderedDict[str, bytes] = OrderedDict()
        self._cached = 0
        self._serving: set[tuple[str, str]] = set()
        #: (source, digest, kind) → the load running for it: workers asking for one blob
        #: at once share it, until it is in the memory cache
        self._loading: dict[tuple[str | None, str, str], asyncio.Future[bytes | None]] = {}
        self._slots = asyncio.Semaphore(concurrency)
        self._jobs: set[asyncio.Task[None]] = set()
        self.link = MqttLink(
            broker_url,
            client_id=unique_client_id(f"edgeplane-proxy-{topics.domain}-{topics.cluster}"),
            subscriptions=[topics.all_members("fetch")],
            on_message=self._on_message,
            ca=ca,
            username=username,
            password=password,
        )

    async def start(self) -> None:
        await self.link.start()

    async def stop(self) -> None:
        loads = list(self._loading.values())
        for job in self._jobs:
            job.cancel()
        for load in loads:
            load.cancel()
        for job in list(self._jobs):
            with contextlib.suppress(asyncio.CancelledError):
                await job
        await asyncio.gather(*loads, return_exceptions=True)
        await self.link.stop()
        if self.registries is not None:
            await self.registries.close()

    async def _on_message(self, topic: str, payload: bytes) -> None:
        member = self.topics.member_of(topic)
        try:
            if member is None or member[1] != "fetch":
                raise Invalid(f"not a fetch topic: {topic}", field="topic")
            envelope = decode(payload)
            body = parse_body(envelope.type, envelope.body)
            if not isinstance(body, FetchArtifact):
                raise Invalid(f"unexpected {envelope.type} on a fetch topic", field="type")
        except Invalid as exc:
            self.stats.bad_requests += 1
            log.warning("bad artifact request", extra={"topic": topic, "error": exc.detail})
            return
        self.stats.requests += 1
        key = (member[0], body.digest)
        if key in self._serving:
            self.stats.coalesced += 1
            return
        self._serving.add(key)
        job = asyncio.create_task(self._serve(member[0], body), name=f"proxy-{body.digest[:12]}")
        self._jobs.add(job)
        job.add_done_callback(self._jobs.discard)

    async def _serve(self, worker_id: str, fetch: FetchArtifact) -> None:
        topic = self.topics.chunks(worker_id)
        request = bytes.fromhex(fetch.request)
        try:
            async with self._slots:
                try:
                    data = await self._blob(fetch)
                except (RegistryUnreachable, ArtifactTooBig) as exc:
                    unreachable = isinstance(exc, RegistryUnreachable)
                    if unreachable:
                        self.stats.unavailable += 1
                    else:
                        self.stats.too_large += 1
                    log.warning(
                        "registry blob not served",
                        extra={"source": fetch.source, "error": exc.detail},
                    )
                    status = chunks.UNAVAILABLE if unreachable else chunks.TOO_LARGE
                    frame = chunks.Frame(fetch.digest, 0, 0, 0, request=request, status=status)
                    await self.link.publish(topic, chunks.encode(frame))
                    return
                if data is None or len(data) > self.max_bytes:
                    status = chunks.NOT_FOUND if data is None else chunks.TOO_LARGE
                    if data is None:
                        self.stats.not_found += 1
                    else:
                        self.stats.too_large += 1
                    size = 0 if data is None else len(data)
                    frame = chunks.Frame(fetch.digest, 0, 0, size, request=request, status=status)
                    await self.link.publish(topic, chunks.encode(frame))
                    log.warning(
                        "artifact not served: %s",
                        "unknown" if data is None else f"{size} bytes, over the maximum",
                        extra={"digest": fetch.digest, "worker": worker_id},
                    )
                    return
                await self._send(topic, fetch, data, request)
        except Exception:  # one bad serve must not take the proxy down
            log.exception("artifact serve failed", extra={"digest": fetch.digest})
        finally:
            self._serving.discard((worker_id, fetch.digest))

    async def _send(self, topic: str, fetch: FetchArtifact, data: bytes, request: bytes) -> None:
        indices = fetch.missing or None
        frames = chunks.frames(
            fetch.digest, data, request=request, chunk_size=self.chunk_size, indices=indices
        )
        for sent, raw in enumerate(frames, start=1):
            await self.link.publish(topic, raw)
            self.stats.chunks += 1
            self.stats.bytes += len(raw)
            if sent % WINDOW == 0:
                await self.link.flush()
        self.stats.served += 1

    async def _open(self, fetch: FetchArtifact) -> bytes | None:
        """From the store, or for an ``oci://`` source from its registry (None: unknown;
        over the maximum: ``max_bytes + 1`` bytes' worth of nothing to refuse)."""
        if fetch.source is None:
            return await self.source.open(fetch.digest)
        if self.registries is None:
            return None
        try:
            return await self.registries.open(
                fetch.digest, fetch.source, fetch.kind, self.max_bytes
            )
        except (ArtifactTooBig, RegistryUnreachable):
            raise
        except EdgeplaneError as exc:  # unknown, denied, a mismatch: nothing to serve
            log.warning(
                "registry blob not served", extra={"source": fetch.source, "error": exc.detail}
            )
            return None

    async def _blob(self, fetch: FetchArtifact) -> bytes | None:
        digest = fetch.digest
        if fetch.kind == "resolve":  # what a tag names now: never cached, not hashed
            return await self._open(fetch)
        data = self._cache.get(digest)
        if data is not None:
            self._cache.move_to_end(digest)
            return data
        # One load per blob however many workers ask meanwhile: the registry source shares
        # its pull only while the download runs, and a second worker asking while the
        # first one's blob was hashed and written to disk pulled it again.
        key = (fetch.source, digest, fetch.kind)
        loading = self._loading.get(key)
        if loading is None:
            loading = asyncio.ensure_future(self._load(fetch))
            self._loading[key] = loading
            loading.add_done_callback(lambda done: self._loaded(key, done))
        return await asyncio.shield(loading)

    def _loaded(self, key: tuple[str | None, str, str], done: asyncio.Future[bytes | None]) -> None:
        self._loading.pop(key, None)
        if not done.cancelled():
            done.exception()  # retrieved: the requests that waited for it have ended

    async def _load(self, fetch: FetchArtifact) -> bytes | None:
        digest = fetch.digest
        disk = self.disk if fetch.source is not None else None
        if disk is not None:
            data = await asyncio.to_thread(disk.open, digest)  # hashed as it is read
            if data is not None:
                self._remember(digest, data)
                return data
        data = await self._open(fetch)
        if data is not None and len(data) > self.max_bytes:
            return data  # refused by the caller, never hashed nor cached
        found: str | None = None
        if data is not None and len(data) > INLINE_HASH_BYTES:
            found = await asyncio.to_thread(chunks.sha256_hex, data)
        elif data is not None:
            found = chunks.sha256_hex(data)
        if data is None or found != digest:
            # a source that answers with other bytes serves nothing (the worker would
            # refuse them anyway)
            if data is not None:
                log.error("blob source returned bytes of another digest", extra={"digest": digest})
            return None
        if disk is not None:
            try:
                await asyncio.to_thread(disk.put, digest, data)
            except (EdgeplaneError, OSError) as exc:  # served all the same
                log.warning("blob not kept on disk", extra={"digest": digest, "error": str(exc)})
        self._remember(digest, data)
        return data

    def _remember(self, digest: str, data: bytes) -> None:
        if len(data) <= self.cache_bytes and digest not in self._cache:
            self._cache[digest] = data
            self._cached += len(data)
            while self._cached > self.cache_bytes:
                _, old = self._cache.popitem(last=False)
                self._cached -= len(old)
