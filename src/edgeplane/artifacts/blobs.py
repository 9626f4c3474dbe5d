"""A content-addressed, size-bounded blob store on disk: what a worker keeps of the
artifacts delivered to it.

One file per blob, named by its sha256 (``<dir>/<hex>``), written to a temporary file
and renamed (a reader never sees half a blob; a crash leaves at most a ``.tmp``, removed
at the next start). The store holds at most ``max_bytes``: putting a blob evicts the
least recently used ones first, and a blob bigger than the whole store is refused.
Every read hashes what it read: a file that no longer matches its name (a bad disk, a
hand edit) is dropped and reported missing, so it is fetched again, never run.

Thread-safe (the worker reads and writes big blobs in threads): one lock around the
index and the files' changes.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from edgeplane.errors import Invalid

log = logging.getLogger(__name__)

DIGEST = re.compile(r"[0-9a-f]{64}")
#: the default bound of a worker's store (``--artifact-cache-mb``)
DEFAULT_MAX_BYTES = 1024 * 1024 * 1024


class TooLarge(Invalid):
    """A blob bigger than the store may hold."""


def check_digest(digest: str) -> str:
    if DIGEST.fullmatch(digest) is None:
        raise Invalid(f"artifact digest {digest!r} is not sha256 hex", field="artifact")
    return digest


@dataclass
class BlobStats:
    stored: int = 0
    evicted: int = 0
    #: files found not to match their digest (dropped)
    corrupt: int = 0
    #: blobs refused for being bigger than the store
    refused: int = 0


class BlobStore:
    def __init__(self, directory: Path, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self.stats = BlobStats()
        #: digest → size, least recently used first
        self._sizes: OrderedDict[str, int] = OrderedDict()
        self._used = 0
        self._lock = threading.RLock()
        self._scan()

    @property
    def used(self) -> int:
        """Bytes held."""
        return self._used

    def __contains__(self, digest: object) -> bool:
        return digest in self._sizes

    def has(self, digest: str) -> bool:
        return digest in self._sizes

    def recent(self, count: int) -> list[str]:
        """The ``count`` most recently used digests held, most recent first."""
        with self._lock:
            found: list[str] = []
            for digest in reversed(self._sizes):
                if len(found) >= count:
                    break
                found.append(digest)
            return found

    def path(self, digest: str) -> Path:
        return self.directory / check_digest(digest)

    def put(self, digest: str, data: bytes) -> Path:
        """Keep ``data`` under ``digest`` (its sha256, checked); evict the least recently
        used blobs to make room. :class:`TooLarge` when it cannot fit at all."""
        path = self.path(digest)
        if hashlib.sha256(data).hexdigest() != digest:
            raise Invalid(f"blob does not match its digest {digest}", field="artifact")
        with self._lock:
            return self._put(path, digest, data)

    def _put(self, path: Path, digest: str, data: bytes) -> Path:
        if digest in self._sizes:
            self._touch(digest)
            return path
        size = len(data)
        if size > self.max_bytes:
            self.stats.refused += 1
            raise TooLarge(
                f"artifact {digest} is {size} bytes, more than the cache's {self.max_bytes}",
                field="artifact",
            )
        self._make_room(size)
        self.directory.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{digest}.{os.getpid()}.tmp")
        try:
            with open(tmp, "wb") as handle:
                handle.write(data)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
        self._sizes[digest] = size
        self._used += size
        self.stats.stored += 1
        return path

    def open(self, digest: str) -> bytes | None:
        """The blob's bytes, checked against its digest; None when not held (or found
        corrupt, and dropped)."""
        if digest not in self._sizes:
            return None
        path = self.path(digest)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            with self._lock:
                if digest in self._sizes:
                    self._forget(digest)
            return None
        intact = hashlib.sha256(data).hexdigest() == digest
        with self._lock:
            if not intact:
                self.stats.corrupt += 1
                log.warning("a cached artifact is corrupt: dropped", extra={"digest": digest})
                self.evict(digest)
                return None
            if digest in self._sizes:
                self._touch(digest)
        return data

    def evict(self, digest: str) -> bool:
        """Remove the blob; True when it was held."""
        with self._lock:
            if digest not in self._sizes:
                return False
            with contextlib.suppress(FileNotFoundError):
                self.path(digest).unlink()
            self._forget(digest)
            return True

    def _forget(self, digest: str) -> None:
        self._used -= self._sizes.pop(digest)

    def _touch(self, digest: str) -> None:
        self._sizes.move_to_end(digest)
        # the order survives a restart through the files' mtimes (see _scan)
        with contextlib.suppress(OSError):
            os.utime(self.path(digest))

    def _make_room(self, size: int) -> None:
        while self._sizes and self._used + size > self.max_bytes:
            oldest = next(iter(self._sizes))
            self.evict(oldest)
            self.stats.evicted += 1

    def _scan(self) -> None:
        """Index what an earlier process left: blobs by mtime (least recent first);
        temporary files of interrupted writes removed; over the bound, the oldest go."""
        try:
            entries = list(os.scandir(self.directory))
        except FileNotFoundError:
            return
        found: list[tuple[float, str, int]] = []
        for entry in entries:
            if entry.name.endswith(".tmp"):
                with contextlib.suppress(OSError):
                    os.unlink(entry.path)
            elif DIGEST.fullmatch(entry.name) and entry.is_file():
                stat = entry.stat()
                found.append((stat.st_mtime, entry.name, stat.st_size))
        for _, digest, size in sorted(found):
            self._sizes[digest] = size
            self._used += size
        self._make_room(0)
