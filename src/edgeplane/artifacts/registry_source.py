"""The proxy's blob source for artifacts in OCI registries: what a worker with no route
to the registry asks the proxy for (``artifact.fetch`` with an ``oci://`` ``source``).

Each blob and manifest is pulled from the registry once however many workers ask at the
same time (one pull in flight per digest; the proxy's memory cache serves the next
requests), verified against its digest and bounded by the proxy's maximum. A tag
(``kind: resolve``) is asked of the registry on each request: it may move, and the
worker pins what it got by hashing it.

Registry errors become what the proxy tells the worker: unknown → not found; over the
maximum → too large; unreachable (no route, timeout, 5xx) → unavailable, which the worker
turns into a ``registry_unreachable`` attempt worth retrying later.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections import Counter

import httpx

from edgeplane.artifacts import reference
from edgeplane.artifacts.registry import Registry
from edgeplane.artifacts.registry_config import RegistryConfig
from edgeplane.errors import EdgeplaneError

log = logging.getLogger(__name__)


class RegistrySource:
    """Pulls blobs, manifests and tags' manifests for the proxy, with one client."""

    def __init__(
        self,
        config: RegistryConfig | None = None,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.config = config or RegistryConfig()
        #: for unit tests (an ``httpx.MockTransport``)
        self._transport = transport
        self._client: Registry | None = None
        self._inflight: dict[tuple[str, str, str], asyncio.Future[bytes]] = {}
        #: what was asked of registries, by "kind digest" (tests check "once")
        self.pulls: Counter[str] = Counter()

    async def open(self, digest: str, source: str, kind: str, limit: int) -> bytes:
        """The bytes; raises the registry's errors (``registry_errors``)."""
        key = (source, digest, kind)
        running = self._inflight.get(key)
        if running is None:
            running = asyncio.ensure_future(self._pull(digest, source, kind, limit))
            self._inflight[key] = running
            running.add_done_callback(lambda _: self._inflight.pop(key, None))
        return await asyncio.shield(running)

    async def _pull(self, digest: str, source: str, kind: str, limit: int) -> bytes:
        ref = reference.parse(source, field="source")
        client = self._registry()
        self.pulls[f"{kind} {digest}"] += 1
        if kind == "resolve":
            if hashlib.sha256(source.encode()).hexdigest() != digest:
                raise EdgeplaneError(f"resolve key does not name {source}", field="digest")
            return (await client.manifest(ref)).raw
        pinned = ref.with_digest(f"sha256:{digest}")
        if kind == "manifest":
            return (await client.manifest(pinned)).raw  # verified against the digest
        return await client.blob_up_to(pinned, f"sha256:{digest}", limit)

    def _registry(self) -> Registry:
        if self._client is None:
            self._client = Registry(self.config, transport=self._transport)
        return self._client

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None
