"""Binary chunks of a blob, and their reassembly: pure (no I/O, time from a clock).

A frame is a fixed header and the chunk's bytes, not JSON or base64, so what crosses
the broker is the blob's size plus ~60 bytes a chunk (a 256 KiB chunk: 1.0002x)::

    magic "EPCK" | version u8 | status u8 | digest 32 B (sha256) | request 8 B
    | index u32 | total u32 | size u64 | payload

``size`` is the whole blob's, ``total`` its number of chunks. A blob of ``size`` bytes
cut for a chunk limit ``C`` has ``total = ceil(size / C)`` chunks, all
``ceil(size / total)`` bytes long but the last (an even split): a receiver knows every
chunk's exact length from the header alone, so a truncated or padded chunk is refused
on arrival and an assembly never holds more than ``size`` bytes. ``request`` echoes the
worker's request (a nonce), so chunks nobody asked for are told apart.

Nothing received is trusted before the whole blob hashes to its digest
(:meth:`Assembly.verify`); a chunk that contradicts one already held (a duplicate with
other bytes, another total or size) spoils the assembly, which is then fetched again.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from edgeplane.errors import Invalid

MAGIC = b"EPCK"
VERSION = 1
#: The largest chunk the proxy sends. Mosquitto takes far bigger messages; this bounds
#: what one lost message costs and what a worker holds beside the finished blob.
CHUNK_SIZE = 256 * 1024
#: status of a frame: a chunk, or the proxy's answer that it cannot serve the digest
#: (unknown; over its maximum; its registry cannot be reached now, worth a retry later)
OK, NOT_FOUND, TOO_LARGE, UNAVAILABLE = 0, 1, 2, 3
STATUSES = frozenset({OK, NOT_FOUND, TOO_LARGE, UNAVAILABLE})
REQUEST_BYTES = 8
_HEADER = struct.Struct(">4sBB32s8sIIQ")
HEADER_SIZE = _HEADER.size


class BadChunk(Invalid):
    """A frame that cannot be read, or that contradicts what the assembly holds."""


class DigestMismatch(Invalid):
    """Every chunk arrived but the blob does not hash to its digest."""


@dataclass(frozen=True)
class Frame:
    digest: str
    index: int
    total: int
    size: int
    payload: bytes = b""
    request: bytes = bytes(REQUEST_BYTES)
    status: int = OK


def chunk_length(size: int, total: int) -> int:
    """The length of every chunk but the last (see the module docstring)."""
    return -(-size // total) if total else 0


def count_chunks(size: int, chunk_size: int = CHUNK_SIZE) -> int:
    """How many chunks a blob of ``size`` bytes is cut into (an empty blob: one)."""
    return max(1, -(-size // chunk_size))


def expected_length(index: int, total: int, size: int) -> int:
    length = chunk_length(size, total)
    return size - length * (total - 1) if index == total - 1 else length


def consistent(total: int, size: int) -> bool:
    """Whether ``total`` chunks can hold ``size`` bytes in an even split (every chunk
    non-empty but the one of an empty blob)."""
    if total < 1:
        return False
    if size == 0:
        return total == 1
    return total <= size and (total - 1) * chunk_length(size, total) < size


def span(index: int, total: int, size: int) -> tuple[int, int]:
    """Where chunk ``index`` lies in the blob: ``(start, end)``."""
    start = index * chunk_length(size, total)
    return start, start + expected_length(index, total, size)


def encode(frame: Frame) -> bytes:
    header = _HEADER.pack(
        MAGIC,
        VERSION,
        frame.status,
        bytes.fromhex(frame.digest),
        frame.request,
        frame.index,
        frame.total,
        frame.size,
    )
    return header + frame.payload


def decode(data: bytes | bytearray | memoryview) -> Frame:
    """Read a frame; :class:`BadChunk` for anything that is not a well-formed one (its
    payload must be exactly as long as its header says)."""
    if len(data) < HEADER_SIZE:
        raise BadChunk("chunk shorter than its header", field="chunk")
    magic, version, status, digest, request, index, total, size = _HEADER.unpack_from(data)
    if magic != MAGIC or version != VERSION:
        raise BadChunk("not an edgeplane chunk (magic or version)", field="chunk")
    if status not in STATUSES:
        raise BadChunk(f"unknown chunk status {status}", field="chunk")
    payload = bytes(data[HEADER_SIZE:])
    if status != OK:
        return Frame(digest.hex(), 0, 0, size, b"", request, status)
    if not consistent(total, size) or index >= total:
        raise BadChunk(f"chunk {index} of {total} cannot hold {size} bytes", field="chunk")
    if len(payload) != expected_length(index, total, size):
        raise BadChunk(
            f"chunk {index} is {len(payload)} bytes, not {expected_length(index, total, size)}",
            field="chunk",
        )
    return Frame(digest.hex(), index, total, size, payload, request, status)


def frames(
    digest: str,
    data: bytes,
    *,
    request: bytes = bytes(REQUEST_BYTES),
    chunk_size: int = CHUNK_SIZE,
    indices: Iterable[int] | None = None,
) -> Iterator[bytes]:
    """The encoded frames of ``data`` (those of ``indices`` only, when given), built one
    at a time: a big blob is never held twice."""
    size = len(data)
    total = count_chunks(size, chunk_size)
    view = memoryview(data)
    wanted = range(total) if indices is None else indices
    for index in wanted:
        if not 0 <= index < total:
            continue  # a re-request naming chunks that do not exist: nothing to send
        start, end = span(index, total, size)
        frame = Frame(digest, index, total, size, bytes(view[start:end]), request)
        yield encode(frame)


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass
class Assembly:
    """The chunks of one blob received so far."""

    digest: str
    total: int
    size: int
    #: clock time of the last chunk that added something (the TTL counts from it)
    updated: float
    chunks: dict[int, bytes] = field(default_factory=dict)
    duplicates: int = 0

    @property
    def complete(self) -> bool:
        return len(self.chunks) == self.total

    def missing(self) -> list[int]:
        return [i for i in range(self.total) if i not in self.chunks]

    def add(self, frame: Frame, now: float) -> bool:
        """Keep ``frame``'s chunk; True when it was new. The same chunk again is counted
        and ignored; one that contradicts the assembly raises :class:`BadChunk` (the
        caller drops the assembly: which of the two was right cannot be told)."""
        if frame.digest != self.digest:
            raise BadChunk("chunk of another blob", field="chunk")
        if (frame.total, frame.size) != (self.total, self.size):
            raise BadChunk(
                f"chunk says {frame.total} chunks of {frame.size} bytes, the blob's first "
                f"said {self.total} of {self.size}",
                field="chunk",
            )
        held = self.chunks.get(frame.index)
        if held is not None:
            if held != frame.payload:
                raise BadChunk(f"chunk {frame.index} came twice with other bytes", field="chunk")
            self.duplicates += 1
            return False
        self.chunks[frame.index] = frame.payload
        self.updated = now
        return True

    def verify(self, *, check: bool = True) -> bytes:
        """The blob, once complete, if it hashes to its digest; else :class:`DigestMismatch`.
        ``check=False`` for an answer that is not content-addressed (a tag's manifest)."""
        if not self.complete:
            raise BadChunk(f"{len(self.missing())} chunk(s) missing", field="chunk")
        data = b"".join(self.chunks[i] for i in range(self.total))
        if check and sha256_hex(data) != self.digest:
            raise DigestMismatch(f"blob does not match its digest {self.digest}", field="chunk")
        return data


class Assemblies:
    """The blobs being received, by digest, each dropped after ``ttl_s`` without a new
    chunk (:meth:`expire`, with the caller's clock time: nothing here reads a clock)."""

    def __init__(self, ttl_s: float = 300.0) -> None:
        self.ttl_s = ttl_s
        self._open: dict[str, Assembly] = {}

    def __contains__(self, digest: object) -> bool:
        return digest in self._open

    def __len__(self) -> int:
        return len(self._open)

    def get(self, digest: str) -> Assembly | None:
        return self._open.get(digest)

    def add(self, frame: Frame, now: float) -> Assembly:
        """Add ``frame`` to its blob's assembly (opened by its first chunk). A chunk that
        contradicts the assembly drops it and raises :class:`BadChunk`."""
        assembly = self._open.get(frame.digest)
        if assembly is None:
            assembly = Assembly(frame.digest, frame.total, frame.size, now)
            self._open[frame.digest] = assembly
        try:
            assembly.add(frame, now)
        except BadChunk:
            del self._open[frame.digest]
            raise
        return assembly

    def drop(self, digest: str) -> None:
        self._open.pop(digest, None)

    def expire(self, now: float) -> list[str]:
        """Drop the assemblies that got no new chunk for ``ttl_s``; return their digests."""
        gone = [d for d, a in self._open.items() if now - a.updated >= self.ttl_s]
        for digest in gone:
            del self._open[digest]
        return gone
