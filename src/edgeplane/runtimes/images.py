"""Container images: OCI image layouts in a directory, unpacked once into a rootfs cache.

An image is a directory ``<images>/<name>`` in the OCI image layout (``oci-layout``,
``index.json``, ``blobs/sha256/…``), as ``skopeo copy docker://busybox
oci:<images>/busybox:latest`` or ``buildah push`` write it. ``name:tag`` (tag ``latest`` by
default) picks the manifest whose ``org.opencontainers.image.ref.name`` annotation is the
tag; an index with one untagged manifest serves any tag. A nested index (a multi-platform
image) is followed to the manifest for this machine's architecture. Images named
``oci://…`` are pulled into layouts of their own (``pull.py``) and resolved the same way.

Every blob is checked against its sha256 digest as it is read. The layers are applied in
order (``layers.py``) into a temporary directory renamed to ``<cache>/<manifest hex>`` at
the end, so a crash never leaves half a rootfs under the name tasks use; tasks then share
that rootfs read-only.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import platform
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from edgeplane.errors import TaskFailure
from edgeplane.imageref import DEFAULT_TAG, NAME_RULE, split_ref
from edgeplane.runtimes.layers import apply_layer

log = logging.getLogger(__name__)

REF_NAME = "org.opencontainers.image.ref.name"
_DIGEST = re.compile(r"sha256:([0-9a-f]{64})")
_INDEX_TYPES = {
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
}
LAYER_TYPES = {
    "application/vnd.oci.image.layer.v1.tar",
    "application/vnd.oci.image.layer.v1.tar+gzip",
    "application/vnd.docker.image.rootfs.diff.tar",
    "application/vnd.docker.image.rootfs.diff.tar.gzip",
}
#: Where the runtime mounts things: made in every rootfs so runc never has to.
MOUNT_POINTS = ("proc", "dev", "sys", "tmp")
_ARCH = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "i686": "386"}
_CHUNK = 1 << 20


def oci_architecture() -> str:
    """This machine's architecture as OCI names it (``amd64``, ``arm64``, …)."""
    return _ARCH.get(platform.machine(), platform.machine())


@dataclass(frozen=True)
class Image:
    """A resolved image: its manifest digest and the config defaults a task starts from."""

    ref: str
    layout: Path
    digest: str
    layers: tuple[tuple[str, str], ...]  # (digest, media type), bottom first
    env: tuple[str, ...] = ()
    entrypoint: tuple[str, ...] = ()
    cmd: tuple[str, ...] = ()
    workdir: str = ""
    user: str = ""


def _fail(ref: str, why: str) -> TaskFailure:
    return TaskFailure(f"image {ref!r}: {why}", field="image")


class _Hashed:
    """A file read through sha256, so a layer is verified in the same pass that unpacks it."""

    def __init__(self, file: IO[bytes]) -> None:
        self.file = file
        self.sha = hashlib.sha256()

    def read(self, size: int = -1) -> bytes:
        data = self.file.read(size)
        self.sha.update(data)
        return data

    def drain(self) -> str:
        while self.read(_CHUNK):
            pass
        return self.sha.hexdigest()


class ImageStore:
    """Images of one directory and the rootfs cache they unpack to."""

    def __init__(self, images_dir: Path, cache_dir: Path) -> None:
        self.images_dir = images_dir
        self.cache_dir = cache_dir
        self._locks: dict[str, asyncio.Lock] = {}

    def names(self) -> list[str]:
        """Image names present (directories holding an ``oci-layout`` file)."""
        try:
            found = [p.name for p in self.images_dir.iterdir() if (p / "oci-layout").is_file()]
        except OSError:
            return []
        return sorted(found)

    def resolve(self, ref: str) -> Image:
        """Follow index → manifest → config of ``ref``; raises :class:`TaskFailure`."""
        parsed = split_ref(ref)
        if parsed is None:
            raise TaskFailure(f"image {ref!r} is not allowed: {NAME_RULE}", field="image")
        name, tag = parsed
        layout = self.images_dir / name
        if not (layout / "oci-layout").is_file():
            raise _fail(ref, f"no such image in {self.images_dir}")
        return self.resolve_layout(ref, layout, tag)

    def resolve_layout(self, ref: str, layout: Path, tag: str = DEFAULT_TAG) -> Image:
        """:meth:`resolve` of the layout at ``layout`` (a pulled one: ``pull.py``)."""
        try:
            index = json.loads((layout / "index.json").read_bytes())
        except (OSError, ValueError) as exc:
            raise _fail(ref, f"unreadable index.json: {exc}") from None
        descriptor = self._pick(ref, layout, index, tag)
        manifest = self._json(ref, layout, descriptor)
        config = self._json(ref, layout, manifest.get("config") or {}).get("config") or {}
        layers = []
        for layer in manifest.get("layers") or []:
            media = str(layer.get("mediaType", ""))
            if media not in LAYER_TYPES:
                raise _fail(ref, f"unsupported layer type {media!r} (tar or tar+gzip only)")
            layers.append((self._digest(ref, layer), media))
        return Image(
            ref=ref,
            layout=layout,
            digest=self._digest(ref, descriptor),
            layers=tuple(layers),
            env=tuple(config.get("Env") or ()),
            entrypoint=tuple(config.get("Entrypoint") or ()),
            cmd=tuple(config.get("Cmd") or ()),
            workdir=str(config.get("WorkingDir") or ""),
            user=str(config.get("User") or ""),
        )

    async def rootfs(self, image: Image) -> Path:
        """The image's unpacked rootfs, unpacking it (in a thread) the first time."""
        final = self.cache_dir / image.digest.removeprefix("sha256:")
        if final.is_dir():
            return final
        lock = self._locks.setdefault(image.digest, asyncio.Lock())
        async with lock:
            if not final.is_dir():
                await asyncio.to_thread(self.unpack, image, final)
        return final

    def unpack(self, image: Image, final: Path) -> None:
        """Apply every layer into a temporary dir, then rename it to ``final``."""
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        for stale in self.cache_dir.glob(f".{final.name}-*"):  # a crash mid-unpack
            shutil.rmtree(stale, ignore_errors=True)
        work = Path(tempfile.mkdtemp(prefix=f".{final.name}-", dir=self.cache_dir))
        try:
            os.chmod(work, 0o755)
            entries = devices = 0
            for digest, _ in image.layers:
                with self._blob(image.ref, image.layout, digest).open("rb") as file:
                    hashed = _Hashed(file)
                    applied = apply_layer(hashed, work)
                    if hashed.drain() != digest.removeprefix("sha256:"):
                        raise _fail(image.ref, f"layer {digest} does not match its digest")
                entries += applied.entries
                devices += applied.skipped_devices
            for point in MOUNT_POINTS:
                (work / point).mkdir(exist_ok=True)
            try:
                work.rename(final)
            except OSError:
                if not final.is_dir():  # another process got there first: fine
                    raise
            extra = {"image": image.ref, "digest": image.digest, "entries": entries}
            log.info("image unpacked", extra={**extra, "skipped_devices": devices})
        finally:
            shutil.rmtree(work, ignore_errors=True)

    # --- internals ----------------------------------------------------------------------

    def _pick(self, ref: str, layout: Path, index: dict[str, Any], tag: str) -> dict[str, Any]:
        manifests = [m for m in index.get("manifests") or [] if isinstance(m, dict)]
        tagged = [m for m in manifests if (m.get("annotations") or {}).get(REF_NAME) == tag]
        if (
            not tagged
            and len(manifests) == 1
            and REF_NAME not in (manifests[0].get("annotations") or {})
        ):
            tagged = manifests
        if not tagged:
            raise _fail(ref, f"no manifest tagged {tag!r}")
        found = tagged[0]
        if found.get("mediaType") in _INDEX_TYPES:  # a multi-platform image
            nested = self._json(ref, layout, found).get("manifests") or []
            arch = oci_architecture()
            fits = [m for m in nested if (m.get("platform") or {}).get("architecture") == arch]
            if not fits:
                raise _fail(ref, f"no manifest for architecture {arch}")
            found = fits[0]
        return found

    def _digest(self, ref: str, descriptor: dict[str, Any]) -> str:
        digest = str(descriptor.get("digest", ""))
        if not _DIGEST.fullmatch(digest):
            raise _fail(ref, f"unsupported or malformed digest {digest!r}")
        return digest

    def _blob(self, ref: str, layout: Path, digest: str) -> Path:
        path = layout / "blobs" / "sha256" / digest.removeprefix("sha256:")
        if not path.is_file():
            raise _fail(ref, f"blob {digest} is missing")
        return path

    def _json(self, ref: str, layout: Path, descriptor: dict[str, Any]) -> dict[str, Any]:
        digest = self._digest(ref, descriptor)
        data = self._blob(ref, layout, digest).read_bytes()
        if hashlib.sha256(data).hexdigest() != digest.removeprefix("sha256:"):
            raise _fail(ref, f"blob {digest} does not match its digest")
        try:
            loaded = json.loads(data)
        except ValueError:
            raise _fail(ref, f"blob {digest} is not JSON") from None
        if not isinstance(loaded, dict):
            raise _fail(ref, f"blob {digest} is not a JSON object")
        return loaded
