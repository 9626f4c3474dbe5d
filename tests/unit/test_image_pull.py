"""Pulling ``oci://`` container images into the image dir, on a mock registry: one pull for
tasks that want the same image at once, a layout the image store reads, multi-platform
indexes, nothing half-written after a failure, and the reason each failure carries. (The
real registry and runc: tests/integration/test_container_oci.py.)"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest

from edgeplane.artifacts.registry import OCI_INDEX, OCI_MANIFEST, sha256
from edgeplane.artifacts.registry_config import RegistryConfig
from edgeplane.errors import TaskFailure
from edgeplane.runtimes.busybox import Entry, tar_layer
from edgeplane.runtimes.images import ImageStore, oci_architecture
from edgeplane.runtimes.pull import ImagePuller

LAYER_TYPE = "application/vnd.oci.image.layer.v1.tar+gzip"
CONFIG_TYPE = "application/vnd.oci.image.config.v1+json"


class FakeRegistry:
    """Serves one repository ``demo`` from memory and counts what was asked."""

    def __init__(self) -> None:
        self.blobs: dict[str, bytes] = {}
        self.manifests: dict[str, tuple[str, bytes]] = {}  # tag or digest -> (type, raw)
        self.requests: Counter[str] = Counter()
        self.down = False
        self.tampered: set[str] = set()
        #: every request, answered or not (a registry that is down counts them too)
        self.attempts = 0

    def blob(self, data: bytes, media_type: str) -> dict[str, Any]:
        self.blobs[sha256(data)] = data
        return {"mediaType": media_type, "digest": sha256(data), "size": len(data)}

    def manifest(self, document: dict[str, Any], *tags: str) -> str:
        raw = json.dumps(document).encode()
        for key in (sha256(raw), *tags):
            self.manifests[key] = (document["mediaType"], raw)
        return sha256(raw)

    def image(self, text: str, *tags: str) -> str:
        config = self.blob(json.dumps({"config": {"Env": [f"V={text}"]}}).encode(), CONFIG_TYPE)
        layer = self.blob(tar_layer([Entry("hello", text.encode())]), LAYER_TYPE)
        document = {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": config,
                    "layers": [layer]}  # fmt: skip
        return self.manifest(document, *tags)

    def handler(self, request: httpx.Request) -> httpx.Response:
        self.attempts += 1
        if self.down:
            raise httpx.ConnectError("connection refused")
        path = request.url.path
        self.requests[f"{request.method} {path}"] += 1
        kind, _, key = path.removeprefix("/v2/demo/").partition("/")
        if kind == "manifests" and key in self.manifests:
            media_type, raw = self.manifests[key]
            headers = {"content-type": media_type, "docker-content-digest": sha256(raw)}
            body = b"" if request.method == "HEAD" else raw
            headers["content-length"] = str(len(raw))
            return httpx.Response(200, content=body, headers=headers)
        if kind == "blobs" and key in self.blobs:
            data = self.blobs[key]
            if key in self.tampered:
                data = data[:-1] + bytes([data[-1] ^ 0xFF])
            return httpx.Response(200, content=data)
        code = "MANIFEST_UNKNOWN" if kind == "manifests" else "BLOB_UNKNOWN"
        return httpx.Response(404, json={"errors": [{"code": code}]})

    def blob_gets(self) -> int:
        return sum(n for key, n in self.requests.items() if key.startswith("GET /v2/demo/blobs"))


@pytest.fixture
def registry() -> FakeRegistry:
    return FakeRegistry()


@pytest.fixture
async def puller(tmp_path: Path, registry: FakeRegistry) -> Any:
    pulls = ImagePuller(
        tmp_path / "images" / ".oci", transport=httpx.MockTransport(registry.handler)
    )
    yield pulls
    await pulls.close()


REF = "oci://registry.test:5000/demo"


async def test_tasks_wanting_one_image_at_once_pull_it_once(
    puller: ImagePuller, registry: FakeRegistry, tmp_path: Path
) -> None:
    digest = registry.image("one", "1", "also")
    layouts = await asyncio.gather(*(puller.layout_for(f"{REF}:1") for _ in range(4)))
    assert set(layouts) == {puller.layout(digest)}
    assert puller.pulls == 1 and registry.blob_gets() == 2  # config and layer, once
    assert [p.name for p in puller.directory.iterdir()] == [digest.removeprefix("sha256:")]
    # Another tag of the same digest, and the digest itself: nothing pulled.
    assert await puller.layout_for(f"{REF}:also") == puller.layout(digest)
    assert await puller.layout_for(f"{REF}@{digest}") == puller.layout(digest)
    assert puller.pulls == 1
    # The layout is one the image store reads, whatever tag the task named.
    store = ImageStore(tmp_path / "images", tmp_path / "rootfs")
    image = store.resolve_layout(f"{REF}:1", puller.layout(digest))
    assert image.digest == digest and image.env == ("V=one",)
    assert store.names() == []  # pulled images are not among the named ones


async def test_a_tag_that_moved_is_pulled_again(
    puller: ImagePuller, registry: FakeRegistry
) -> None:
    first = registry.image("one", "latest")
    assert await puller.layout_for(REF) == puller.layout(first)
    second = registry.image("two", "latest")
    assert await puller.layout_for(REF) == puller.layout(second)
    assert puller.pulls == 2


async def test_an_index_is_followed_to_this_machines_manifest(
    puller: ImagePuller, registry: FakeRegistry, tmp_path: Path
) -> None:
    mine = registry.image("mine")
    other = registry.image("other")
    platforms = [
        ("s390x", other),
        (oci_architecture(), mine),
    ]
    entries = [
        {"mediaType": OCI_MANIFEST, "digest": digest, "size": len(registry.manifests[digest][1]),
         "platform": {"architecture": arch, "os": "linux"}}
        for arch, digest in platforms
    ]  # fmt: skip
    index = registry.manifest(
        {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries}, "multi"
    )
    layout = await puller.layout_for(f"{REF}:multi")
    assert layout == puller.layout(index)
    image = ImageStore(tmp_path / "images", tmp_path / "rootfs").resolve_layout("x", layout)
    assert image.digest == mine and image.env == ("V=mine",)


async def test_failures_carry_their_reason_and_leave_nothing(
    puller: ImagePuller, registry: FakeRegistry
) -> None:
    with pytest.raises(TaskFailure, match="demo:nope") as missing:
        await puller.layout_for(f"{REF}:nope")
    assert (missing.value.reason, missing.value.transient) == ("artifact_not_found", False)

    digest = registry.image("one", "1")
    layer = json.loads(registry.manifests[digest][1])["layers"][0]["digest"]
    registry.tampered.add(layer)
    with pytest.raises(TaskFailure, match=layer) as mismatch:
        await puller.layout_for(f"{REF}:1")
    assert (mismatch.value.reason, mismatch.value.transient) == ("digest_mismatch", False)
    assert registry.requests[f"GET /v2/demo/blobs/{layer}"] == 2  # fetched once more
    assert list(puller.directory.iterdir()) == []  # no image, no half-written one

    registry.down = True
    with pytest.raises(TaskFailure, match=r"registry\.test:5000") as down:
        await puller.layout_for(f"{REF}:1")
    assert (down.value.reason, down.value.transient) == ("registry_unreachable", True)


async def test_a_leftover_of_a_crashed_pull_is_cleared(
    puller: ImagePuller, registry: FakeRegistry
) -> None:
    digest = registry.image("one", "1")
    stale = puller.directory / f".{digest.removeprefix('sha256:')}-crashed"
    (stale / "blobs").mkdir(parents=True)
    await puller.layout_for(f"{REF}:1")
    assert not stale.exists()
    assert (puller.layout(digest) / "oci-layout").is_file()


class FakeProxy:
    """The worker's fetcher as ``pull.py`` sees it, answering from the registry's content
    (the proxy's own registry access) and counting what it was asked."""

    def __init__(self, registry: FakeRegistry) -> None:
        self.registry = registry
        self.asked: list[str] = []

    async def __call__(
        self, digest: str, *, source: str | None = None, kind: str = "blob"
    ) -> bytes:
        self.asked.append(kind)
        if kind == "resolve":
            assert source is not None
            return self.registry.manifests[source.rpartition(":")[2]][1]
        if kind == "manifest":
            return self.registry.manifests[f"sha256:{digest}"][1]
        return self.registry.blobs[f"sha256:{digest}"]


@pytest.mark.parametrize("mode", ["direct", "proxy", "auto"])
async def test_pull_modes_direct_proxy_and_auto(
    mode: str, tmp_path: Path, registry: FakeRegistry
) -> None:
    """--pull direct never asks the proxy; proxy never speaks to the registry; auto goes
    direct while the registry answers, through the proxy when it does not, and then
    straight through the proxy for a while (no wait on a registry it cannot reach)."""
    digest = registry.image("one", "1")
    puller = ImagePuller(tmp_path / "oci", transport=httpx.MockTransport(registry.handler))
    proxy = FakeProxy(registry)
    puller.use_proxy(proxy, mode)  # type: ignore[arg-type]
    try:
        if mode == "direct":
            registry.down = True
            with pytest.raises(TaskFailure) as down:
                await puller.layout_for(f"{REF}:1")
            assert down.value.reason == "registry_unreachable" and down.value.transient
            assert proxy.asked == [] and registry.attempts > 0
            registry.down = False
            assert await puller.layout_for(f"{REF}:1") == puller.layout(digest)
            assert proxy.asked == [] and puller.proxied == 0
        elif mode == "proxy":
            assert await puller.layout_for(f"{REF}:1") == puller.layout(digest)
            assert registry.attempts == 0  # the worker needs no route to the registry
            assert proxy.asked == ["resolve", "blob", "blob"] and puller.proxied == 1
        else:
            assert await puller.layout_for(f"{REF}:1") == puller.layout(digest)
            assert proxy.asked == [] and puller.proxied == 0  # the registry answered
            other = registry.image("two", "2")
            registry.down = True
            assert await puller.layout_for(f"{REF}:2") == puller.layout(other)
            assert puller.proxied == 1 and "resolve" in proxy.asked
            tried = registry.attempts
            third = registry.image("three", "3")
            assert await puller.layout_for(f"{REF}:3") == puller.layout(third)
            assert registry.attempts == tried  # straight through the proxy now
        image = ImageStore(tmp_path, tmp_path / "rootfs").resolve_layout("x", puller.layout(digest))
        assert image.env == ("V=one",)  # the same layout whichever way it came
    finally:
        await puller.close()


@pytest.mark.parametrize("mode", ["direct", "proxy"])
async def test_an_image_over_the_maximum_is_refused_before_its_layers_come(
    mode: str, tmp_path: Path, registry: FakeRegistry
) -> None:
    registry.image("one", "1")  # config and layer: a few hundred bytes
    config = RegistryConfig(max_artifact_mb=100 / (1024 * 1024))  # 100 bytes
    puller = ImagePuller(tmp_path / "oci", config, transport=httpx.MockTransport(registry.handler))
    proxy = FakeProxy(registry)
    puller.use_proxy(proxy, mode)  # type: ignore[arg-type]
    try:
        with pytest.raises(TaskFailure, match="100-byte maximum") as big:
            await puller.layout_for(f"{REF}:1")
        assert (big.value.reason, big.value.transient) == ("artifact_too_big", False)
        assert registry.blob_gets() == 0 and "blob" not in proxy.asked
        assert not puller.directory.exists() or list(puller.directory.iterdir()) == []
    finally:
        await puller.close()
