"""Apply one OCI image layer (a tar stream, gzip or not) onto a root directory.

The rules are the OCI image spec's (``image-spec/layer.md``): entries are added in order, a
``.wh.NAME`` entry deletes ``NAME`` from the layers below and ``.wh..wh..opq`` empties its
directory of what the layers below put there. Nothing may land outside the root: a path
with ``..``, or whose parent resolves outside the root (an absolute symlink such as
``lib -> /usr/lib`` written through), fails the layer; an existing symlink at an entry's
own path is replaced, never written through. Device nodes are not created (a container
gets its ``/dev`` from the runtime), they are skipped and counted.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Protocol

from edgeplane.errors import TaskFailure

WHITEOUT = ".wh."
OPAQUE = ".wh..wh..opq"


class Readable(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


@dataclass(frozen=True)
class Applied:
    """What one layer did (for logs and tests)."""

    entries: int
    removed: int
    skipped_devices: int


def entry_path(name: str) -> PurePosixPath:
    """A tar entry's path relative to the root ('' for the root itself); ``..`` is refused."""
    parts = [part for part in PurePosixPath(name).parts if part not in ("/", ".", "")]
    if ".." in parts:
        raise TaskFailure(f"layer entry {name!r} escapes the root filesystem", field="image")
    return PurePosixPath(*parts)


def _inside(root: Path, path: Path) -> Path:
    """``path``'s parent resolved (symlinks followed) must stay in ``root``."""
    resolved = Path(os.path.realpath(path.parent)) / path.name
    if resolved != root and not resolved.is_relative_to(root):
        raise TaskFailure(
            f"layer entry {str(path.relative_to(root))!r} resolves outside the root filesystem",
            field="image",
        )
    return resolved


def _remove(path: Path) -> bool:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
        return True
    if os.path.lexists(path):
        path.unlink()
        return True
    return False


def apply_layer(stream: Readable, root: Path) -> Applied:
    """Apply the tar layer read from ``stream`` onto ``root`` (an existing directory)."""
    import tarfile  # only when an image is unpacked: at import it costs every worker 0.4 MB

    root = Path(os.path.realpath(root))
    added: set[Path] = set()
    entries = removed = devices = 0
    try:
        # Streamed (read only, never seeks): typeshed's file protocol asks for more.
        with tarfile.open(fileobj=stream, mode="r|*") as tar:  # type: ignore[call-overload]
            for member in tar:
                rel = entry_path(member.name)
                if not rel.parts:
                    continue  # the root directory itself
                target = _inside(root, root / rel)
                if rel.name == OPAQUE:
                    lower = target.parent.iterdir() if target.parent.is_dir() else ()
                    for child in list(lower):
                        if child not in added:
                            removed += _remove(child)
                    continue
                if rel.name.startswith(WHITEOUT):
                    removed += _remove(target.parent / rel.name[len(WHITEOUT) :])
                    continue
                if member.ischr() or member.isblk():
                    devices += 1
                    continue
                if not (member.isdir() and target.is_dir() and not target.is_symlink()):
                    _remove(target)  # never write through what a lower layer left here
                linkname = member.linkname
                if member.islnk():
                    source = _inside(root, root / entry_path(member.linkname))
                    linkname = str(source.relative_to(root))
                tar.extract(
                    member.replace(name=str(rel), linkname=linkname, deep=False),
                    root,
                    numeric_owner=True,
                    filter="fully_trusted",  # the checks above are ours; keep modes and owners
                )
                added.add(target)
                entries += 1
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise TaskFailure(f"cannot unpack layer: {exc}", field="image") from None
    return Applied(entries, removed, devices)
