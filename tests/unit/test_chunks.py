"""Chunk frames and reassembly (artifacts/chunks.py): properties over any blob and any
chunk size, and the ways a delivery goes wrong (lost, duplicated, forged, truncated)."""

from __future__ import annotations

import hashlib
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgeplane.artifacts import chunks
from edgeplane.artifacts.chunks import Assemblies, BadChunk, DigestMismatch, Frame

blobs = st.binary(min_size=0, max_size=4096)
sizes = st.integers(min_value=1, max_value=700)


def digest_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def assemble(encoded: list[bytes], now: float = 0.0) -> Assemblies:
    assemblies = Assemblies()
    for raw in encoded:
        assemblies.add(chunks.decode(raw), now)
    return assemblies


@settings(max_examples=200, deadline=None)
@given(blobs, sizes, st.randoms(use_true_random=False))
def test_any_blob_reassembles_in_any_order(
    data: bytes, chunk_size: int, rnd: random.Random
) -> None:
    digest = digest_of(data)
    encoded = list(chunks.frames(digest, data, chunk_size=chunk_size))
    assert len(encoded) == chunks.count_chunks(len(data), chunk_size)
    assert all(len(raw) - chunks.HEADER_SIZE <= chunk_size for raw in encoded)
    rnd.shuffle(encoded)
    assembly = assemble(encoded).get(digest)
    assert assembly is not None and assembly.complete and assembly.missing() == []
    assert assembly.verify() == data


@settings(deadline=None)
@given(st.integers(min_value=0, max_value=10**7), st.integers(min_value=1, max_value=10**6))
def test_the_even_split_is_consistent(size: int, chunk_size: int) -> None:
    chunk_size = max(chunk_size, size // 1000)  # at most ~1,000 chunks to check
    total = chunks.count_chunks(size, chunk_size)
    assert chunks.consistent(total, size)
    lengths = [chunks.expected_length(i, total, size) for i in range(total)]
    assert sum(lengths) == size
    assert max(lengths) <= chunk_size
    assert size == 0 or min(lengths) > 0


@settings(deadline=None)
@given(blobs, sizes, st.data())
def test_lost_chunks_are_the_missing_ones_and_a_rerequest_completes(
    data: bytes, chunk_size: int, draw: st.DataObject
) -> None:
    digest = digest_of(data)
    encoded = list(chunks.frames(digest, data, chunk_size=chunk_size))
    kept = draw.draw(st.lists(st.booleans(), min_size=len(encoded), max_size=len(encoded)))
    if all(kept):
        kept[0] = False
    assemblies = assemble([raw for raw, k in zip(encoded, kept, strict=True) if k])
    if not any(kept):  # nothing came: no assembly was opened
        assert digest not in assemblies
        return
    assembly = assemblies.get(digest)
    assert assembly is not None and not assembly.complete
    lost = [i for i, k in enumerate(kept) if not k]
    assert assembly.missing() == lost
    for raw in chunks.frames(digest, data, chunk_size=chunk_size, indices=assembly.missing()):
        assemblies.add(chunks.decode(raw), 1.0)
    assert assembly.verify() == data


@settings(deadline=None)
@given(blobs.filter(len), sizes)
def test_a_duplicate_is_ignored_but_one_with_other_bytes_spoils_the_assembly(
    data: bytes, chunk_size: int
) -> None:
    digest = digest_of(data)
    first = chunks.decode(next(chunks.frames(digest, data, chunk_size=chunk_size)))
    assemblies = Assemblies()
    assemblies.add(first, 0)
    assemblies.add(first, 0)
    assembly = assemblies.get(digest)
    assert assembly is not None and assembly.duplicates == 1
    forged = Frame(digest, 0, first.total, first.size, bytes(b ^ 1 for b in first.payload))
    with pytest.raises(BadChunk):
        assemblies.add(forged, 0)
    assert digest not in assemblies


@settings(deadline=None)
@given(blobs.filter(len), sizes, st.integers(min_value=0, max_value=4095), st.integers(0, 7))
def test_a_changed_byte_is_caught_by_the_digest(
    data: bytes, chunk_size: int, where: int, bit: int
) -> None:
    digest = digest_of(data)
    spoiled = bytearray(data)
    spoiled[where % len(data)] ^= 1 << bit
    encoded = list(chunks.frames(digest, bytes(spoiled), chunk_size=chunk_size))
    assembly = assemble(encoded).get(digest)
    assert assembly is not None and assembly.complete
    with pytest.raises(DigestMismatch):
        assembly.verify()


@settings(deadline=None)
@given(blobs.filter(len), sizes, st.integers(min_value=1, max_value=64))
def test_a_truncated_or_padded_frame_is_refused(data: bytes, chunk_size: int, cut: int) -> None:
    raw = next(chunks.frames(digest_of(data), data, chunk_size=chunk_size))
    with pytest.raises(BadChunk):
        chunks.decode(raw[: max(0, len(raw) - cut)])
    with pytest.raises(BadChunk):
        chunks.decode(raw + b"\0" * cut)


@settings(deadline=None)
@given(st.binary(max_size=200))
def test_garbage_never_decodes_to_more_than_a_frame_or_bad_chunk(raw: bytes) -> None:
    try:
        frame = chunks.decode(raw)
    except BadChunk:
        return
    assert frame.status != chunks.OK or len(frame.payload) == chunks.expected_length(
        frame.index, frame.total, frame.size
    )


def test_a_header_that_cannot_hold_its_size_is_refused() -> None:
    digest = digest_of(b"x")
    for total, size in [(0, 0), (2, 0), (3, 2), (4, 5)]:
        raw = chunks.encode(Frame(digest, 0, total, size, b""))
        with pytest.raises(BadChunk):
            chunks.decode(raw)
    raw = chunks.encode(Frame(digest, 2, 2, 10, b"x" * 5))
    with pytest.raises(BadChunk, match="cannot hold"):
        chunks.decode(raw)


def test_a_chunk_with_another_total_spoils_the_assembly() -> None:
    data = b"a" * 100
    digest = digest_of(data)
    assemblies = assemble(list(chunks.frames(digest, data, chunk_size=60))[:1])
    other = next(chunks.frames(digest, data, chunk_size=30, indices=[1]))
    with pytest.raises(BadChunk, match="first said"):
        assemblies.add(chunks.decode(other), 0)
    assert digest not in assemblies


def test_assemblies_expire_after_the_ttl_without_a_new_chunk() -> None:
    data = bytes(range(256)) * 4
    digest = digest_of(data)
    encoded = list(chunks.frames(digest, data, chunk_size=100))
    assemblies = Assemblies(ttl_s=300)
    assemblies.add(chunks.decode(encoded[0]), 1000.0)
    assemblies.add(chunks.decode(encoded[1]), 1200.0)
    assemblies.add(chunks.decode(encoded[1]), 1450.0)  # a duplicate is no progress
    assert assemblies.expire(1499.0) == []
    assert assemblies.expire(1500.0) == [digest]
    assert len(assemblies) == 0
    assert Assemblies().ttl_s == 300  # the default: 5 minutes, as in Propeller


def test_status_frames_carry_no_payload() -> None:
    digest = digest_of(b"gone")
    raw = chunks.encode(Frame(digest, 0, 0, 0, status=chunks.NOT_FOUND, request=b"r" * 8))
    frame = chunks.decode(raw)
    assert (frame.status, frame.digest, frame.request) == (chunks.NOT_FOUND, digest, b"r" * 8)
    with pytest.raises(BadChunk, match="status"):
        chunks.decode(raw[:5] + b"\x09" + raw[6:])


def test_the_overhead_on_a_big_blob_is_far_below_base64s() -> None:
    data = bytes(5 * 1024 * 1024)
    sent = sum(len(raw) for raw in chunks.frames(digest_of(data), data))
    assert sent / len(data) < 1.001
