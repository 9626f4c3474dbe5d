"""The proxy's registry source (artifacts/registry_source.py) against a scripted registry:
one pull per digest however many workers ask at once, verified and bounded."""

from __future__ import annotations

import asyncio
import hashlib

import httpx
import pytest

from edgeplane.artifacts.registry_errors import (
    ArtifactNotFound,
    ArtifactTooBig,
    RegistryUnreachable,
)
from edgeplane.artifacts.registry_source import RegistrySource

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
