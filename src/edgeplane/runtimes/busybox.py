"""Write OCI image layouts without a registry: a busybox image from the machine's static
busybox, or any image from tar layers. Tests and ``bench/`` build their images here, and
an offline worker can get a first image the same way::

    python -m edgeplane.runtimes.busybox IMAGES_DIR/busybox
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import sys
import tarfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgeplane.errors import Unavailable
from edgeplane.runtimes.container import find_runc
from edgeplane.runtimes.images import REF_NAME, oci_architecture

LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"
#: Applets linked in ``/bin`` of the busybox image.
APPLETS = (
    "sh", "echo", "sleep", "cat", "true", "false", "ls", "env", "id", "pwd", "touch", "mkdir",
    "rm", "head", "tr", "wc", "printf", "hostname", "seq", "yes", "dd", "ps", "kill", "httpd",
)  # fmt: skip
BUSYBOX_CANDIDATES = ("/usr/bin/busybox", "/bin/busybox")


@dataclass(frozen=True)
class Entry:
    """One tar entry of a layer: a file (``data``), a directory or a symlink (``link``)."""

    path: str
    data: bytes | None = None
    link: str | None = None
    mode: int = 0o644

    def info(self) -> tarfile.TarInfo:
        info = tarfile.TarInfo(self.path)
        info.mtime = 0
        if self.link is not None:
            info.type, info.linkname, info.mode = tarfile.SYMTYPE, self.link, 0o777
        elif self.data is None:
            info.type, info.mode = tarfile.DIRTYPE, self.mode | 0o111
        else:
            info.size, info.mode = len(self.data), self.mode
        return info


def tar_layer(entries: Iterable[Entry], *, compress: bool = True) -> bytes:
    """A layer blob holding ``entries`` in order (gzip unless ``compress`` is False)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for entry in entries:
            tar.addfile(entry.info(), None if entry.data is None else io.BytesIO(entry.data))
    raw = buffer.getvalue()
    return gzip.compress(raw, mtime=0) if compress else raw


def _blob(layout: Path, data: bytes) -> dict[str, Any]:
    digest = hashlib.sha256(data).hexdigest()
    path = layout / "blobs" / "sha256" / digest
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return {"digest": f"sha256:{digest}", "size": len(data)}


def _gzipped(data: bytes) -> bool:
    return data[:2] == b"\x1f\x8b"


def write_image(
    layout: Path, layers: Sequence[bytes], config: dict[str, Any], *, tag: str | None = "latest"
) -> str:
    """Add an image to the OCI layout at ``layout`` (created if needed) tagged ``tag``
    (None: no ref annotation); ``layers`` are tar blobs, gzip or not, bottom first.
    Returns the manifest digest."""
    layout.mkdir(parents=True, exist_ok=True)
    (layout / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
    diff_ids = [
        "sha256:" + hashlib.sha256(gzip.decompress(d) if _gzipped(d) else d).hexdigest()
        for d in layers
    ]
    image_config = {
        "architecture": oci_architecture(),
        "os": "linux",
        "config": config,
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }
    config_blob = _blob(layout, json.dumps(image_config).encode())
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **config_blob},
        "layers": [
            {"mediaType": LAYER_GZIP if _gzipped(data) else LAYER_TAR, **_blob(layout, data)}
            for data in layers
        ],
    }
    descriptor: dict[str, Any] = {
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        **_blob(layout, json.dumps(manifest).encode()),
    }
    if tag is not None:
        descriptor["annotations"] = {REF_NAME: tag}
    index_path = layout / "index.json"
    index: dict[str, Any] = {"schemaVersion": 2, "manifests": []}
    if index_path.exists():
        index = json.loads(index_path.read_text())
    # An untagged image stands alone (it is what "one manifest, no ref" means).
    kept = [m for m in index["manifests"] if m.get("annotations", {}).get(REF_NAME) != tag]
    index["manifests"] = [*(kept if tag is not None else []), descriptor]
    index_path.write_text(json.dumps(index))
    return str(descriptor["digest"])


def find_busybox() -> Path:
    """A statically linked busybox (Debian's ``busybox-static``), or :class:`Unavailable`."""
    for candidate in (shutil.which("busybox"), *BUSYBOX_CANDIDATES):
        if candidate and os.access(candidate, os.X_OK):
            head = Path(candidate).read_bytes()[:4096]
            if b"ld-linux" not in head and b"/lib/ld" not in head:  # no ELF interpreter
                return Path(candidate)
    raise Unavailable("no static busybox found (install busybox-static)")


def busybox_layer(busybox: Path | None = None) -> bytes:
    """One gzip layer: ``bin/busybox`` and its applets as symlinks."""
    binary = (busybox or find_busybox()).read_bytes()
    entries = [Entry("bin"), Entry("bin/busybox", binary, mode=0o755)]
    entries += [Entry(f"bin/{applet}", link="busybox") for applet in APPLETS]
    return tar_layer(entries)


BUSYBOX_CONFIG: dict[str, Any] = {
    "Env": ["PATH=/bin", "IMAGE=busybox"],
    "Cmd": ["sh", "-c", "echo hello from busybox"],
    "WorkingDir": "/",
}


def busybox_image(layout: Path, *, tag: str = "latest", busybox: Path | None = None) -> str:
    """Write a busybox image to ``layout``; returns its manifest digest."""
    return write_image(layout, [busybox_layer(busybox)], dict(BUSYBOX_CONFIG), tag=tag)


def busybox_containers_unavailable() -> str | None:
    """Why busybox containers cannot run on this machine (runc, root, a static busybox),
    or None when they can: what the tests skip on and the benchmark reports."""
    if find_runc() is None:
        return "runc is not installed (scripts/system-deps.sh installs it)"
    if os.geteuid() != 0:
        return "container tasks need root (rootless runc is out of scope)"
    try:
        find_busybox()
    except Unavailable as exc:
        return exc.detail
    return None


def main(argv: Sequence[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m edgeplane.runtimes.busybox IMAGES_DIR/busybox", file=sys.stderr)
        return 2
    try:
        print(busybox_image(Path(argv[0])))
    except (Unavailable, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
