"""The proxy's registry source (artifacts/registry_source.py) against a scripted registry:
one pull per digest however many workers ask at once, verified and bounded; and the
proxy's own load of a registry blob, shared by the workers asking meanwhile."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

import httpx
import pytest

from edgeplane.artifacts.blobs import BlobStore
from edgeplane.artifacts.proxy import Proxy, StoreSource
from edgeplane.artifacts.registry_errors import (
    ArtifactNotFound,
    ArtifactTooBig,
    RegistryUnreachable,
)
from edgeplane.artifacts.registry_source import RegistrySource
from edgeplane.protocol import Topics
from edgeplane.protocol.messages import FetchArtifact

BLOB = b"layer bytes" * 100
DIGEST = hashlib.sha256(BLOB).hexdigest()
SOURCE = "oci://127.0.0.1:5000/busybox"


def source_with(answers: dict[str, bytes], seen: list[str]) -> RegistrySource:
    async def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.path)
        await asyncio.sleep(0.01)  # the second request arrives while the first is in flight
        body = answers.get(request.url.path)
        return httpx.Response(200, content=body) if body is not None else httpx.Response(404)

    return RegistrySource(transport=httpx.MockTransport(handler))


async def test_concurrent_requests_for_a_blob_pull_it_once() -> None:
    seen: list[str] = []
    source = source_with({f"/v2/busybox/blobs/sha256:{DIGEST}": BLOB}, seen)
    both = await asyncio.gather(*(source.open(DIGEST, SOURCE, "blob", 1 << 20) for _ in range(2)))
    assert both == [BLOB, BLOB] and len(seen) == 1
    assert source.pulls == {f"blob {DIGEST}": 1}
    await source.close()


async def test_wrong_bytes_unknown_blobs_and_big_ones_are_refused() -> None:
    seen: list[str] = []
    other = hashlib.sha256(b"x").hexdigest()
    source = source_with({f"/v2/busybox/blobs/sha256:{other}": BLOB}, seen)
    with pytest.raises(Exception, match="does not hash"):
        await source.open(other, SOURCE, "blob", 1 << 20)
    with pytest.raises(ArtifactNotFound):
        await source.open(DIGEST, SOURCE, "blob", 1 << 20)
    source = source_with({f"/v2/busybox/blobs/sha256:{DIGEST}": BLOB}, seen)
    with pytest.raises(ArtifactTooBig):
        await source.open(DIGEST, SOURCE, "blob", len(BLOB) - 1)
    await source.close()


async def test_a_registry_that_does_not_answer_is_unreachable() -> None:
    async def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("no route to host")

    source = RegistrySource(transport=httpx.MockTransport(handler))
    with pytest.raises(RegistryUnreachable):
        await source.open(DIGEST, SOURCE, "blob", 1 << 20)
    await source.close()


class GatedSource(RegistrySource):
    """A registry source whose pulls wait for ``gate``: counts how many were started."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()
        self.started = 0

    async def open(self, digest: str, source: str, kind: str, limit: int) -> bytes:
        self.started += 1
        await self.gate.wait()
        return BLOB


async def test_the_proxy_loads_a_blob_once_for_workers_asking_meanwhile(tmp_path: Path) -> None:
    """Workers asking for a blob while the proxy is still loading it (pulling, hashing,
    writing it to disk) share that load: the registry is asked once."""
    registries = GatedSource()
    proxy = Proxy(
        StoreSource(None),  # type: ignore[arg-type]  # never asked: every request has a source
        "mqtt://127.0.0.1:1",  # never connected
        Topics("d"),
        registries=registries,
        disk=BlobStore(tmp_path / "blobs"),
    )
    fetch = FetchArtifact(digest=DIGEST, request="00" * 8, source=SOURCE)
    first = asyncio.create_task(proxy._blob(fetch))
    async with asyncio.timeout(10):
        while registries.started == 0:  # noqa: ASYNC110 -- its disk miss runs in a thread
            await asyncio.sleep(0.01)
    second = asyncio.create_task(proxy._blob(fetch))
    await asyncio.sleep(0)  # it runs up to its first wait: the load under way
    registries.gate.set()
    assert await asyncio.gather(first, second) == [BLOB, BLOB]
    assert registries.started == 1
    assert proxy.disk is not None and proxy.disk.has(DIGEST)
    # afterwards from memory: no registry at all
    assert await proxy._blob(fetch) == BLOB and registries.started == 1
