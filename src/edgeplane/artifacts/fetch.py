"""A worker's side of delivery: ask the proxy for a blob, reassemble and verify it.

:meth:`Fetcher.fetch` publishes a request on the worker's ``fetch`` topic and waits;
:meth:`Fetcher.on_chunk` is handed every message of its ``chunks`` topic. Nothing is
returned before the whole blob hashes to the digest the (signed) start command named:

- a chunk nobody asked for (no fetch of its digest under way, or another request's
  nonce: a flood, or a stale round) is refused and counted, costing a header's parse;
- a chunk over the maximum size, or one that contradicts the assembly (a duplicate with
  other bytes), or a complete blob with the wrong digest: the assembly is dropped
  (counted) and the blob asked for again under a new nonce, at most ``rounds`` times;
- chunks lost: when the last chunk came with gaps, or nothing came for ``retry_s``, the
  missing ones are asked for again; after ``rounds`` silent waits the fetch fails
  (the task fails transiently and the manager places it again).

An assembly ends with its fetch (delivered, or given up); in any case one left without a
new chunk for ``ttl_s`` (default 5 minutes) is dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from edgeplane import clock as clocks
from edgeplane.artifacts import chunks
from edgeplane.artifacts.blobs import TooLarge
from edgeplane.artifacts.chunks import Assemblies, BadChunk, DigestMismatch
from edgeplane.errors import Invalid
from edgeplane.protocol import encode
from edgeplane.protocol.messages import MAX_MISSING, FetchArtifact

log = logging.getLogger(__name__)

Publish = Callable[[bytes], Awaitable[None]]
#: a blob up to this size is verified on the event loop; bigger ones in a thread
INLINE_VERIFY_BYTES = 64 * 1024


@dataclass
class FetchStats:
    fetched: int = 0
    requests: int = 0
    chunks: int = 0
    duplicates: int = 0
    #: chunks nobody asked for (no fetch under way, or another request's): refused
    unsolicited: int = 0
    #: messages that are not well-formed chunks
    bad: int = 0
    #: assemblies dropped for a contradicting chunk or a wrong digest (then re-fetched)
    rejected: int = 0
    #: artifacts refused for being over the maximum size
    too_large: int = 0
    #: assemblies dropped by the TTL
    expired: int = 0


@dataclass
class _Pending:
    digest: str
    request: bytes
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    complete: bool = False
    restart: bool = False
    gaps: bool = False
    error: Exception | None = None
    future: asyncio.Future[bytes] | None = None
    #: where the proxy gets it (FetchArtifact.source / kind)
    source: str | None = None
    kind: str = "blob"


class Fetcher:
    def __init__(
        self,
        publish: Publish,
        *,
        max_bytes: int,
        clock: clocks.Clock | None = None,
        retry_s: float = 5.0,
        rounds: int = 4,
        ttl_s: float = 300.0,
    ) -> None:
        self._publish = publish
        self.max_bytes = max_bytes
        self.clock: clocks.Clock = clock or clocks.SystemClock()
        self.retry_s = retry_s
        self.rounds = rounds
        self.assemblies = Assemblies(ttl_s)
        self.stats = FetchStats()
        self._pending: dict[str, _Pending] = {}

    async def fetch(self, digest: str, *, source: str | None = None, kind: str = "blob") -> bytes:
        """The verified bytes of ``digest`` from the proxy. Concurrent fetches of one
        digest share one delivery. :class:`Invalid` (``artifact_…`` reasons, or
        ``registry_unreachable`` when the proxy cannot reach ``source`` now) when it
        cannot be had. ``source`` and ``kind``: see :class:`FetchArtifact`; for
        ``resolve`` the bytes are the manifest a tag names, not checked against
        ``digest`` (which only keys the request)."""
        pending = self._pending.get(digest)
        if pending is None:
            pending = _Pending(digest, secrets.token_bytes(chunks.REQUEST_BYTES))
            pending.source, pending.kind = source, kind
            pending.future = asyncio.ensure_future(self._fetch(pending))
            self._pending[digest] = pending
            pending.future.add_done_callback(lambda _: self._done(pending))
        assert pending.future is not None
        return await asyncio.shield(pending.future)

    def _done(self, pending: _Pending) -> None:
        if self._pending.get(pending.digest) is pending:
            del self._pending[pending.digest]
        self.assemblies.drop(pending.digest)
        future = pending.future
        if future is not None and not future.cancelled():
            future.exception()  # retrieved: a fetch nobody awaits any more is no error

    async def _fetch(self, pending: _Pending) -> bytes:
        digest = pending.digest
        silent = restarts = held = 0
        await self._ask(pending, [])
        while True:
            try:
                await asyncio.wait_for(pending.wake.wait(), self.retry_s)
            except TimeoutError:
                assembly = self.assemblies.get(digest)
                now_held = 0 if assembly is None else len(assembly.chunks)
                if now_held > held:  # still arriving: a big blob on a slow link
                    held = now_held
                    silent = 0
                    continue
                silent += 1
                self._expire()
                if silent >= self.rounds:
                    raise Invalid(
                        f"artifact_unavailable: {digest} did not arrive from the proxy",
                        field="artifact",
                        reason="artifact_unavailable",
                    ) from None
                await self._ask(pending, self._missing(digest))
                continue
            pending.wake.clear()
            silent = 0
            if pending.error is not None:
                raise pending.error
            if pending.complete:
                pending.complete = False
                try:
                    data = await self._verify(digest, check=pending.kind != "resolve")
                except (DigestMismatch, BadChunk):
                    self.stats.rejected += 1
                    log.warning(
                        "artifact delivery rejected: digest mismatch", extra={"digest": digest}
                    )
                    pending.restart = True
                else:
                    self.stats.fetched += 1
                    return data
            if pending.restart:
                pending.restart = pending.gaps = False
                restarts += 1
                if restarts >= self.rounds:
                    raise Invalid(
                        f"artifact_rejected: every delivery of {digest} failed verification",
                        field="artifact",
                        reason="digest_mismatch",
                    )
                self.assemblies.drop(digest)
                # a new nonce: chunks of the spoiled round still on their way are refused
                pending.request = secrets.token_bytes(chunks.REQUEST_BYTES)
                held = 0
                await self._ask(pending, [])
            elif pending.gaps:
                pending.gaps = False
                await self._ask(pending, self._missing(digest))

    async def _verify(self, digest: str, *, check: bool = True) -> bytes:
        assembly = self.assemblies.get(digest)
        if assembly is None:
            raise BadChunk("assembly gone", field="chunk")
        self.assemblies.drop(digest)
        if assembly.size > INLINE_VERIFY_BYTES:
            return await asyncio.to_thread(lambda: assembly.verify(check=check))
        return assembly.verify(check=check)

    def _missing(self, digest: str) -> list[int]:
        assembly = self.assemblies.get(digest)
        return [] if assembly is None else assembly.missing()

    def _expire(self) -> None:
        self.stats.expired += len(self.assemblies.expire(self.clock.monotonic()))

    async def _ask(self, pending: _Pending, missing: list[int]) -> None:
        self.stats.requests += 1
        body = FetchArtifact(
            digest=pending.digest,
            request=pending.request.hex(),
            missing=missing[:MAX_MISSING],
            source=pending.source,
            kind=pending.kind,
        )
        await self._publish(encode("artifact.fetch", body))

    def on_chunk(self, payload: bytes) -> None:
        """One message of the worker's ``chunks`` topic (never raises)."""
        try:
            frame = chunks.decode(payload)
        except BadChunk as exc:
            self.stats.bad += 1
            log.warning("bad chunk", extra={"error": exc.detail})
            return
        pending = self._pending.get(frame.digest)
        if pending is None or frame.request != pending.request:
            self.stats.unsolicited += 1
            return
        if pending.error is not None:  # failing already: the rest of the delivery is moot
            return
        if frame.status == chunks.NOT_FOUND:
            pending.error = Invalid(
                f"artifact_not_found: {frame.digest}",
                field="artifact",
                reason="artifact_not_found",
            )
        elif frame.status == chunks.UNAVAILABLE:
            pending.error = Invalid(
                f"registry_unreachable: the proxy cannot reach {pending.source} now",
                field="artifact",
                reason="registry_unreachable",
            )
        elif frame.status == chunks.TOO_LARGE or frame.size > self.max_bytes:
            self.stats.too_large += 1
            pending.error = TooLarge(
                f"artifact_too_large: {frame.digest} is {frame.size} bytes "
                f"(this worker takes {self.max_bytes})",
                field="artifact",
                reason="artifact_too_large",
            )
        else:
            self._add(pending, frame)
            return
        pending.wake.set()

    def _add(self, pending: _Pending, frame: chunks.Frame) -> None:
        try:
            assembly = self.assemblies.add(frame, self.clock.monotonic())
        except BadChunk as exc:
            self.stats.rejected += 1
            log.warning(
                "artifact delivery rejected", extra={"digest": frame.digest, "error": exc.detail}
            )
            pending.restart = True
            pending.wake.set()
            return
        if assembly.duplicates:  # the same chunk again (a re-request crossed it): no news
            self.stats.duplicates += assembly.duplicates
            assembly.duplicates = 0
            return
        self.stats.chunks += 1
        if assembly.complete:
            pending.complete = True
            pending.wake.set()
        elif frame.index == frame.total - 1:
            # the proxy sends in order: the last chunk with gaps before it means lost ones
            pending.gaps = True
            pending.wake.set()

    async def close(self) -> None:
        for pending in list(self._pending.values()):
            if pending.future is not None:
                pending.future.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await pending.future
