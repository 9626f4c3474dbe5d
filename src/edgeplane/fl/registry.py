"""The model registry: every global model version, content addressed in a blob directory.

A version's bytes (the raw ``f32`` encoding, ``updates.encode_raw``) live once under
``blobs/sha256/<digest>``, however many versions or experiments share them; which digest
is version N of an experiment is the index the coordinator keeps with its state.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from edgeplane.errors import NotFound


class Blobs:
    def __init__(self, root: Path) -> None:
        self.root = root / "sha256"

    def put(self, data: bytes) -> str:
        digest = hashlib.sha256(data).hexdigest()
        path = self.root / digest
        if not path.exists():
            self.root.mkdir(parents=True, exist_ok=True)
            # written whole, then renamed: a reader never sees half a model
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_bytes(data)
            tmp.replace(path)
        return f"sha256:{digest}"

    def get(self, ref: str) -> bytes:
        try:
            return self._path(ref).read_bytes()
        except FileNotFoundError:
            raise NotFound(f"no model blob {ref!r}", field="digest") from None

    def size(self, ref: str) -> int | None:
        """The blob's size in bytes; None if there is none."""
        try:
            return self._path(ref).stat().st_size
        except FileNotFoundError:
            return None

    def _path(self, ref: str) -> Path:
        algo, _, digest = ref.partition(":")
        if (
            algo != "sha256"
            or len(digest) != 64
            or not all(c in "0123456789abcdef" for c in digest)
        ):
            raise NotFound(f"no model blob {ref!r}", field="digest")
        return self.root / digest
