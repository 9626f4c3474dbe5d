"""Container images named ``oci://HOST[:PORT]/REPO[:TAG][@sha256:…]``, pulled from the
registry by the worker itself (``--pull direct``) or through the cluster's artifact proxy
over MQTT (``--pull proxy``: the worker needs no route to the registry), or direct while
the registry answers and through the proxy when it does not (``--pull auto``).

A pulled image is an OCI image layout ``<images>/.oci/<manifest hex>``, content-addressed
by the digest the reference resolves to: a tag that moved names another digest and is
pulled again, two tags of one digest share one layout, and a reference by digest that is
held needs no registry at all. The dot keeps it apart from the images users copy in
(``NAME[:TAG]`` never starts with one). Manifest, config and layers are verified against
their sha256 as they stream (``artifacts/registry.py``) into a temporary directory renamed
into place once complete, so a crash never leaves half an image under the name tasks use.
Tasks that want the same image at once pull it once.

The puller keeps the order in which its layouts were last used (:meth:`ImagePuller.recent`:
the worker reports the most recent ones, so the scheduler prefers it for tasks naming
them). Each use sets the layout's modification time, so the order survives a restart.

Through the proxy the same blobs are asked for by digest (``artifacts/fetch.py``: each
verified against its digest before it is kept); a tag is resolved by the proxy, and the
manifest it answers is hashed here to name the layout. The layout is written exactly as
a direct pull writes it.

Every failure becomes a :class:`~edgeplane.errors.TaskFailure` whose ``reason`` is the
registry error's: ``artifact_not_found``, ``registry_denied``, ``artifact_too_big``,
``digest_mismatch`` (after one more try: a blob damaged on the way comes right the second
time), and ``registry_unreachable``, the one worth retrying later (transient).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import time
from collections import OrderedDict
from collections.abc import Awaitable
from pathlib import Path
from typing import Literal, Protocol

import httpx

from edgeplane.artifacts import reference
from edgeplane.artifacts.reference import Reference
from edgeplane.artifacts.registry import (
    OCI_INDEX,
    Descriptor,
    Manifest,
    Registry,
    parse_manifest,
)
from edgeplane.artifacts.registry_config import RegistryConfig
from edgeplane.artifacts.registry_errors import (
    ArtifactNotFound,
    ArtifactTooBig,
    DigestMismatch,
    RegistryUnreachable,
)
from edgeplane.errors import EdgeplaneError, TaskFailure, TransientTaskFailure
from edgeplane.runtimes.images import LAYER_TYPES, oci_architecture

log = logging.getLogger(__name__)

#: Under the image dir: a name no ``NAME[:TAG]`` image can have.
PULLED_DIR = ".oci"
#: ``auto``: after the registry did not answer, go through the proxy this long before
#: trying the registry again (a worker with no route would wait on it at every start)
DIRECT_RETRY_S = 60.0

PullMode = Literal["direct", "proxy", "auto"]

_LAYOUT_NAME = re.compile(r"[0-9a-f]{64}")


class ProxyFetch(Protocol):
    """The worker's fetcher (``Fetcher.fetch``): bytes of ``digest`` from the proxy."""

    def __call__(
        self, digest: str, *, source: str | None = ..., kind: str = ...
    ) -> Awaitable[bytes]: ...


class ImagePuller:
    """Pulls ``oci://`` images into ``directory`` with one registry client (made on first
    use, in the worker's loop; :meth:`close` ends it). ``transport`` is for unit tests."""

    def __init__(
        self,
        directory: Path,
        config: RegistryConfig | None = None,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.directory = directory
        self.config = config or RegistryConfig()
        #: for unit tests (an ``httpx.MockTransport``)
        self._transport = transport
        self._client: Registry | None = None
        self._locks: dict[str, asyncio.Lock] = {}
        #: images downloaded by this process (not the ones found on disk)
        self.pulls = 0
        #: of those, through the proxy
        self.proxied = 0
        self.mode: PullMode = "direct"
        self._proxy: ProxyFetch | None = None
        #: auto: registry → monotonic time until which it is reached through the proxy
        self._unreachable: dict[str, float] = {}
        #: manifest hex of the layouts held, least recently used first (None: not read
        #: from the directory yet)
        self._used: OrderedDict[str, None] | None = None

    def use_proxy(self, fetch: ProxyFetch, mode: PullMode) -> None:
        """Pull through the proxy (``proxy``), or when the registry does not answer
        (``auto``); ``direct`` never."""
        self._proxy, self.mode = fetch, mode

    def layout(self, digest: str) -> Path:
        return self.directory / digest.removeprefix("sha256:")

    async def layout_for(self, text: str) -> Path:
        """The OCI layout of image ``text``, pulled when not held. Raises
        :class:`TaskFailure` (with the registry's reason) when it cannot be had."""
        try:
            ref = reference.parse(text, field="image")
        except EdgeplaneError as exc:
            raise TaskFailure(exc.detail, field="image") from None
        try:
            try:
                layout = await self._layout_for(ref)
            except DigestMismatch as exc:
                log.warning(
                    "image digest mismatch, fetching once more",
                    extra={"image": str(ref), "error": exc.detail},
                )
                layout = await self._layout_for(ref)
        except RegistryUnreachable as exc:
            raise TransientTaskFailure(
                _named(ref, exc.detail), field="image", reason=exc.reason
            ) from None
        except EdgeplaneError as exc:
            raise TaskFailure(_named(ref, exc.detail), field="image", reason=exc.reason) from None
        self._use(layout)
        return layout

    def recent(self, count: int) -> list[str]:
        """The manifest digests (hex) of the ``count`` layouts used most recently, most
        recent first; a layout removed by hand meanwhile is left out (and forgotten)."""
        used = self._order()
        found: list[str] = []
        gone: list[str] = []
        for name in reversed(used):
            if len(found) >= count:
                break
            (found if (self.directory / name).is_dir() else gone).append(name)
        for name in gone:
            del used[name]
        return found

    def _order(self) -> OrderedDict[str, None]:
        """The layouts held, least recently used first: read once from the directory (by
        modification time), then kept as they are used."""
        if self._used is None:
            try:
                held = [
                    (entry.stat().st_mtime_ns, entry.name)
                    for entry in os.scandir(self.directory)
                    if _LAYOUT_NAME.fullmatch(entry.name) and entry.is_dir()
                ]
            except OSError:  # no image pulled yet
                held = []
            self._used = OrderedDict((name, None) for _, name in sorted(held))
        return self._used

    def _use(self, layout: Path) -> None:
        used = self._order()
        used[layout.name] = None
        used.move_to_end(layout.name)
        try:
            os.utime(layout)  # the order survives a restart
        except OSError as exc:  # the image is there, only its recency is lost
            log.debug("cannot touch %s: %s", layout, exc)

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    # --- internals ----------------------------------------------------------------------

    async def _layout_for(self, ref: Reference) -> Path:
        if self._proxy is not None and self.mode != "direct":
            if self.mode == "proxy" or self._unreachable.get(ref.registry, 0) > time.monotonic():
                return await self._via_proxy(ref)
            try:
                return await self._direct(ref)
            except RegistryUnreachable as exc:
                log.info(
                    "registry unreachable, pulling through the proxy",
                    extra={"image": str(ref), "error": exc.detail},
                )
                self._unreachable[ref.registry] = time.monotonic() + DIRECT_RETRY_S
                return await self._via_proxy(ref)
        return await self._direct(ref)

    async def _direct(self, ref: Reference) -> Path:
        digest = ref.digest
        if digest is None:  # a tag: what it names now (one HEAD request)
            digest = (await self._registry().resolve(ref)).digest
        final = self.layout(digest)
        if final.is_dir():
            return final
        lock = self._locks.setdefault(digest, asyncio.Lock())
        async with lock:
            if not final.is_dir():
                await self._pull(ref.with_digest(digest), final)
        return final

    async def _via_proxy(self, ref: Reference) -> Path:
        assert self._proxy is not None
        fetch = self._proxy
        repo = str(ref.repo_only())
        top_raw: bytes | None = None
        digest = ref.digest
        if digest is None:  # the proxy asks the registry what the tag names now
            text = str(ref)
            key = hashlib.sha256(text.encode()).hexdigest()
            top_raw = await _proxied(ref, fetch(key, source=text, kind="resolve"))
            digest = "sha256:" + hashlib.sha256(top_raw).hexdigest()
        final = self.layout(digest)
        if final.is_dir():
            return final
        lock = self._locks.setdefault(digest, asyncio.Lock())
        async with lock:
            if final.is_dir():
                return final
            pinned = ref.with_digest(digest)
            if top_raw is None:
                top_raw = await _proxied(pinned, fetch(_hex(digest), source=repo, kind="manifest"))
            top = parse_manifest(pinned, top_raw)
            manifest = top
            if top.is_index:
                entry = _platform_entry(top)
                raw = await _proxied(
                    pinned, fetch(_hex(entry.digest), source=repo, kind="manifest")
                )
                manifest = parse_manifest(pinned.with_digest(entry.digest), raw)
            blobs = self._blobs_of(pinned, manifest)
            work = await asyncio.to_thread(self._workspace, final)
            try:
                store = work / "blobs" / "sha256"
                for blob in blobs:
                    data = await _proxied(pinned, fetch(_hex(blob.digest), source=repo))
                    if len(data) != blob.size:
                        raise DigestMismatch(
                            f"{pinned}: blob {blob.digest} is not {blob.size} bytes"
                        )
                    await asyncio.to_thread((store / _hex(blob.digest)).write_bytes, data)
                await asyncio.to_thread(_finish, work, final, top, manifest)
            finally:
                await asyncio.to_thread(shutil.rmtree, work, True)
        self.pulls += 1
        self.proxied += 1
        log.info("image pulled through the proxy", extra={"image": str(pinned)})
        return final

    def _blobs_of(self, ref: Reference, manifest: Manifest) -> list[Descriptor]:
        """Config and layers of a container image manifest, checked as a direct pull does."""
        config = manifest.config
        if config is None:
            raise ArtifactNotFound(f"{ref} is not a container image (its manifest has no config)")
        for layer in manifest.layers:
            if layer.media_type not in LAYER_TYPES:
                raise ArtifactNotFound(
                    f"{ref} is not a container image: layer type {layer.media_type!r}"
                )
        blobs = _unique([config, *manifest.layers])
        total = sum(blob.size for blob in blobs)
        if total > self.config.max_bytes:
            raise ArtifactTooBig(
                f"{ref} is {total} bytes, over the {self.config.max_bytes}-byte maximum"
            )
        return blobs

    def _registry(self) -> Registry:
        if self._client is None:
            self._client = Registry(self.config, transport=self._transport)
        return self._client

    async def _pull(self, ref: Reference, final: Path) -> None:
        client = self._registry()
        top = await client.manifest(ref)  # verified against ref.digest
        manifest = await self._platform(client, top)
        blobs = self._blobs_of(ref, manifest)
        total = sum(blob.size for blob in blobs)
        work = await asyncio.to_thread(self._workspace, final)
        try:
            store = work / "blobs" / "sha256"
            for blob in blobs:
                dest = store / blob.digest.removeprefix("sha256:")
                await client.fetch_blob(ref, blob, dest)
            await asyncio.to_thread(_finish, work, final, top, manifest)
        finally:
            await asyncio.to_thread(shutil.rmtree, work, True)
        self.pulls += 1
        log.info("image pulled", extra={"image": str(ref), "digest": ref.digest, "bytes": total})

    async def _platform(self, client: Registry, top: Manifest) -> Manifest:
        """``top`` itself, or for an index (a multi-platform image) the manifest of this
        machine's architecture."""
        if not top.is_index:
            return top
        entry = _platform_entry(top)
        return await client.manifest(top.reference.with_digest(entry.digest))

    def _workspace(self, final: Path) -> Path:
        """A fresh temporary directory beside ``final`` (renamed to it when complete)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        for stale in self.directory.glob(f".{final.name}-*"):  # a crash mid-pull
            shutil.rmtree(stale, ignore_errors=True)
        work = Path(tempfile.mkdtemp(prefix=f".{final.name}-", dir=self.directory))
        (work / "blobs" / "sha256").mkdir(parents=True)
        return work


def _platform_entry(index: Manifest) -> Descriptor:
    """The entry of this machine's architecture in an index (a multi-platform image)."""
    arch = oci_architecture()
    for entry in index.manifests:
        platform = entry.platform or {}
        if platform.get("architecture") == arch and platform.get("os", "linux") == "linux":
            return entry
    raise ArtifactNotFound(f"{index.reference} has no image for linux/{arch}")


def _hex(digest: str) -> str:
    return digest.removeprefix("sha256:")


async def _proxied(ref: Reference, pending: Awaitable[bytes]) -> bytes:
    """What the proxy sent, its failures as the registry errors a direct pull raises."""
    try:
        return await pending
    except EdgeplaneError as exc:
        reason = exc.reason or "artifact_unavailable"
        detail = f"{ref}: {exc.detail}"
        if reason == "registry_unreachable":
            raise RegistryUnreachable(detail) from None
        if reason == "artifact_not_found":
            raise ArtifactNotFound(detail) from None
        if reason == "artifact_too_large":
            raise ArtifactTooBig(detail) from None
        if reason == "artifact_unavailable":  # the proxy did not answer: worth a retry
            raise RegistryUnreachable(f"{detail} (through the proxy)") from None
        raise DigestMismatch(detail) from None


def _finish(work: Path, final: Path, top: Manifest, manifest: Manifest) -> None:
    """Write the manifests and the layout's index into ``work`` and rename it ``final``."""
    store = work / "blobs" / "sha256"
    for document in (top, manifest):
        (store / document.digest.removeprefix("sha256:")).write_bytes(document.raw)
    (work / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
    # One untagged entry: it serves the name whatever its tag (images.py), and an index
    # at the top is followed to this machine's manifest there as well.
    entry = {"mediaType": top.media_type, "digest": top.digest, "size": top.size}
    index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [entry]}
    (work / "index.json").write_text(json.dumps(index))
    work.chmod(0o755)
    try:
        work.rename(final)
    except OSError:
        if not final.is_dir():  # another process got there first: fine
            raise


def _unique(blobs: list[Descriptor]) -> list[Descriptor]:
    seen: dict[str, Descriptor] = {}
    for blob in blobs:
        seen.setdefault(blob.digest, blob)
    return list(seen.values())


def _named(ref: Reference, detail: str) -> str:
    """The detail, saying which image when it does not already."""
    return detail if str(ref) in detail else f"image {ref}: {detail}"
