"""A chute service's log file, kept to a bounded size.

A container writes its stdout and stderr straight into ``<service>.log`` through the fds
runc handed it (opened ``O_APPEND``), so the file cannot be renamed away from under it:
rotation copies the file to ``<service>.log.1`` (replacing the previous copy) and
truncates the live file, whose appending writers go on at its new end ("copytruncate").
Lines written between the copy and the truncate are lost; the window is one copy of at
most ``max_bytes``. At most ``max_bytes`` x 2 bytes per service (plus what is written
between two checks).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

#: the live file's size that triggers a rotation
MAX_BYTES = 10 << 20


def rotated(path: Path) -> Path:
    return path.with_name(path.name + ".1")


def rotate(path: Path, max_bytes: int = MAX_BYTES) -> bool:
    """Rotate ``path`` when it has reached ``max_bytes``; whether it did."""
    try:
        if path.stat().st_size < max_bytes:
            return False
    except FileNotFoundError:
        return False
    tmp = path.with_name(path.name + ".1.tmp")
    shutil.copyfile(path, tmp)
    # the copy replaces the old one atomically: a follower sees a new inode (``Follower``)
    tmp.replace(rotated(path))
    os.truncate(path, 0)
    return True


class Follower:
    """Reads what is appended to a log, across rotations: when the rotated copy changes,
    the rest of what was read is taken from the copy and the live file starts over."""

    def __init__(self, path: Path, start_tail: int = 8192) -> None:
        self.path = path
        self.offset = max(0, self._size(path) - start_tail)
        self.copy = self._identity()

    def read(self, limit: int = 65536) -> Iterator[bytes]:
        now = self._identity()
        if now != self.copy:
            self.copy = now
            try:
                with rotated(self.path).open("rb") as handle:
                    handle.seek(self.offset)
                    rest = handle.read()
            except FileNotFoundError:
                rest = b""
            if rest:
                yield rest
            self.offset = 0
        elif self._size(self.path) < self.offset:
            self.offset = 0  # truncated by hand: start over
        try:
            with self.path.open("rb") as handle:
                handle.seek(self.offset)
                data = handle.read(limit)
        except FileNotFoundError:
            return
        self.offset += len(data)
        if data:
            yield data

    def _identity(self) -> tuple[int, int] | None:
        try:
            found = rotated(self.path).stat()
        except FileNotFoundError:
            return None
        return found.st_ino, found.st_mtime_ns

    @staticmethod
    def _size(path: Path) -> int:
        try:
            return path.stat().st_size
        except FileNotFoundError:
            return 0
