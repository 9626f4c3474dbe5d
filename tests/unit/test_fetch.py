"""The worker's fetcher (artifacts/fetch.py) against a proxy played in the test: what it
asks for, and what it does with what comes back."""

from __future__ import annotations

import asyncio
import hashlib

import pytest

from edgeplane.artifacts import chunks
from edgeplane.artifacts.fetch import Fetcher
from edgeplane.errors import Invalid
from edgeplane.protocol import decode, parse_body
from edgeplane.protocol.messages import FetchArtifact

BLOB = bytes(range(256)) * 40
DIGEST = hashlib.sha256(BLOB).hexdigest()


class Asked:
    def __init__(self) -> None:
        self.requests: list[FetchArtifact] = []
        self.arrived = asyncio.Event()

    async def publish(self, payload: bytes) -> None:
        body = parse_body("artifact.fetch", decode(payload).body)
        assert isinstance(body, FetchArtifact)
        self.requests.append(body)
        self.arrived.set()

    async def next(self) -> FetchArtifact:
        await asyncio.wait_for(self.arrived.wait(), 5)
        self.arrived.clear()
        return self.requests[-1]


def answer(fetcher: Fetcher, body: FetchArtifact, data: bytes = BLOB) -> None:
    request = bytes.fromhex(body.request)
    for raw in chunks.frames(body.digest, data, request=request, chunk_size=1000):
        fetcher.on_chunk(raw)


async def test_concurrent_fetches_of_one_digest_share_one_delivery() -> None:
    asked = Asked()
    fetcher = Fetcher(asked.publish, max_bytes=1 << 20, retry_s=5)
    both = asyncio.gather(fetcher.fetch(DIGEST), fetcher.fetch(DIGEST))
    body = await asked.next()
    answer(fetcher, body)
    assert await both == [BLOB, BLOB]
    assert len(asked.requests) == 1 and fetcher.stats.fetched == 1
    answer(fetcher, body)  # late copies: nobody is asking any more
    assert fetcher.stats.unsolicited == chunks.count_chunks(len(BLOB), 1000)


async def test_a_header_over_the_maximum_is_refused_before_anything_is_held() -> None:
    asked = Asked()
    fetcher = Fetcher(asked.publish, max_bytes=len(BLOB) - 1, retry_s=5)
    job = asyncio.ensure_future(fetcher.fetch(DIGEST))
    answer(fetcher, await asked.next())
    with pytest.raises(Invalid, match="artifact_too_large"):
        await job
    assert fetcher.stats.too_large == 1 and len(fetcher.assemblies) == 0


async def test_the_proxys_not_found_fails_the_fetch_naming_the_digest() -> None:
    asked = Asked()
    fetcher = Fetcher(asked.publish, max_bytes=1 << 20, retry_s=5)
    job = asyncio.ensure_future(fetcher.fetch(DIGEST))
    body = await asked.next()
    frame = chunks.Frame(
        DIGEST, 0, 0, 0, request=bytes.fromhex(body.request), status=chunks.NOT_FOUND
    )
    fetcher.on_chunk(chunks.encode(frame))
    with pytest.raises(Invalid, match=f"artifact_not_found: {DIGEST}"):
        await job


async def test_silence_is_asked_again_then_given_up() -> None:
    asked = Asked()
    fetcher = Fetcher(asked.publish, max_bytes=1 << 20, retry_s=0.05, rounds=3)
    with pytest.raises(Invalid, match="artifact_unavailable"):
        await fetcher.fetch(DIGEST)
    assert len(asked.requests) == 3  # the first, then one per silent wait but the last
    assert not fetcher.assemblies.get(DIGEST)


async def test_spoiled_deliveries_are_given_up_after_the_rounds() -> None:
    asked = Asked()
    fetcher = Fetcher(asked.publish, max_bytes=1 << 20, retry_s=5, rounds=2)
    job = asyncio.ensure_future(fetcher.fetch(DIGEST))
    other = bytes(reversed(BLOB))
    answer(fetcher, await asked.next(), other)
    answer(fetcher, await asked.next(), other)
    with pytest.raises(Invalid, match="artifact_rejected"):
        await job
    assert fetcher.stats.rejected == 2 and fetcher.stats.fetched == 0


def test_garbage_on_the_chunks_topic_is_counted() -> None:
    fetcher = Fetcher(Asked().publish, max_bytes=1 << 20)
    fetcher.on_chunk(b"not a chunk")
    fetcher.on_chunk(b"EPCK" + bytes(100))
    assert fetcher.stats.bad == 2


async def test_a_registry_the_proxy_cannot_reach_fails_the_fetch_as_worth_a_retry() -> None:
    asked = Asked()
    fetcher = Fetcher(asked.publish, max_bytes=1 << 20, retry_s=5)
    source = "oci://reg.local:5000/busybox"
    job = asyncio.ensure_future(fetcher.fetch(DIGEST, source=source, kind="manifest"))
    body = await asked.next()
    assert (body.source, body.kind) == (source, "manifest")
    frame = chunks.Frame(
        DIGEST, 0, 0, 0, request=bytes.fromhex(body.request), status=chunks.UNAVAILABLE
    )
    fetcher.on_chunk(chunks.encode(frame))
    with pytest.raises(Invalid) as failed:
        await job
    assert failed.value.reason == "registry_unreachable" and source in failed.value.detail


async def test_a_tags_manifest_is_taken_as_sent_and_blobs_still_verified() -> None:
    """``resolve``: the digest only keys the request (the worker hashes what it gets);
    every other kind is checked against its digest."""
    asked = Asked()
    fetcher = Fetcher(asked.publish, max_bytes=1 << 20, retry_s=5)
    source = "oci://reg.local:5000/busybox:1"
    key = hashlib.sha256(source.encode()).hexdigest()
    job = asyncio.ensure_future(fetcher.fetch(key, source=source, kind="resolve"))
    answer(fetcher, await asked.next(), BLOB)
    assert await job == BLOB

    spoiled = asyncio.ensure_future(fetcher.fetch(key, source=source.removesuffix(":1")))
    answer(fetcher, await asked.next(), BLOB)  # does not hash to ``key``: asked again
    again = await asked.next()
    assert again.missing == [] and fetcher.stats.rejected == 1
    spoiled.cancel()
    await fetcher.close()
