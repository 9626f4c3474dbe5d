"""The registry client against a real registry (Debian's docker-registry): wasm modules
pushed and pulled back by tag and by digest, a busybox image pushed by skopeo in OCI form,
basic auth, unknown tags and a tampered blob."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import pytest

from edgeplane.artifacts import reference, registry_config
from edgeplane.artifacts.registry import (
    OCI_MANIFEST,
    WASM_CONFIG,
    WASM_LAYER,
    Registry,
    wasm_layer,
)
from edgeplane.artifacts.registry_config import Credentials, RegistryConfig
from edgeplane.artifacts.registry_errors import (
    ArtifactNotFound,
    ArtifactTooBig,
    DigestMismatch,
    RegistryDenied,
    RegistryUnreachable,
)
from edgeplane.errors import Unavailable
from edgeplane.runtimes.busybox import busybox_image, find_busybox
from edgeplane.transport import free_port
from registry_fixtures import RegistryProcess, TokenService, skopeo_push
from wasm_fixtures import add_wasm

pytestmark = pytest.mark.timeout(60)


def ref(registry: RegistryProcess, rest: str) -> reference.Reference:
    return reference.parse(f"oci://{registry.address}/{rest}")


@pytest.fixture
def module(tmp_path: Path) -> Path:
    path = tmp_path / "add.wasm"
    path.write_bytes(add_wasm())
    return path


async def test_push_then_pull_by_tag_and_by_digest(
    oci_registry: RegistryProcess, module: Path, tmp_path: Path
) -> None:
    async with Registry() as client:
        pushed = await client.push_wasm(ref(oci_registry, "demo/add:1"), module)
        assert pushed.media_type == OCI_MANIFEST
        assert pushed.config is not None and pushed.config.media_type == WASM_CONFIG
        assert [layer.media_type for layer in pushed.layers] == [WASM_LAYER]

        resolved = await client.resolve(ref(oci_registry, "demo/add:1"))
        assert resolved.digest == pushed.digest
        assert resolved.media_type == OCI_MANIFEST

        by_tag = await client.pull_wasm(ref(oci_registry, "demo/add:1"), tmp_path / "tag.wasm")
        by_digest = await client.pull_wasm(
            ref(oci_registry, f"demo/add@{pushed.digest}"), tmp_path / "digest.wasm"
        )
        assert by_tag.digest == by_digest.digest == pushed.digest
        assert (tmp_path / "tag.wasm").read_bytes() == add_wasm()
        assert (tmp_path / "digest.wasm").read_bytes() == add_wasm()

        # Pushing the same module again stores nothing new and names the same manifest.
        again = await client.push_wasm(ref(oci_registry, "demo/add:2"), module)
        assert again.digest == pushed.digest
        assert sorted(await client.tags(ref(oci_registry, "demo/add"))) == ["1", "2"]


async def test_skopeo_pushed_busybox_is_read_as_oci(
    oci_registry: RegistryProcess, tmp_path: Path
) -> None:
    # The image is built from the static busybox alone: no runc or root needed.
    try:
        find_busybox()
    except Unavailable as exc:
        pytest.skip(exc.detail)
    layout = tmp_path / "layout"
    local_digest = busybox_image(layout, tag="1.36")
    skopeo_push(layout, "1.36", oci_registry, "library/busybox")

    async with Registry() as client:
        image = ref(oci_registry, "library/busybox:1.36")
        resolved = await client.resolve(image)
        assert resolved.digest == local_digest  # kept in OCI form, byte for byte
        assert resolved.media_type == OCI_MANIFEST
        manifest = await client.manifest(image)
        assert manifest.digest == local_digest
        assert manifest.config is not None
        assert len(manifest.layers) == 1
        layer = manifest.layers[0]
        path = await client.fetch_blob(image, layer, tmp_path / "layer")
        assert "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest() == layer.digest
        with pytest.raises(ArtifactNotFound, match="wasm"):
            wasm_layer(manifest)


async def test_unknown_tag_and_repository_are_artifact_not_found(
    oci_registry: RegistryProcess, module: Path
) -> None:
    async with Registry() as client:
        await client.push_wasm(ref(oci_registry, "demo/add:1"), module)
        with pytest.raises(ArtifactNotFound, match="demo/add:nope") as tag:
            await client.resolve(ref(oci_registry, "demo/add:nope"))
        assert tag.value.reason == "artifact_not_found"
        with pytest.raises(ArtifactNotFound, match="demo/add:nope"):
            await client.manifest(ref(oci_registry, "demo/add:nope"))
        with pytest.raises(ArtifactNotFound, match="no/such"):
            await client.tags(ref(oci_registry, "no/such"))


async def test_tampered_blob_is_a_digest_mismatch_and_nothing_is_kept(
    oci_registry: RegistryProcess, module: Path, tmp_path: Path
) -> None:
    async with Registry() as client:
        pushed = await client.push_wasm(ref(oci_registry, "demo/add:1"), module)
        layer = wasm_layer(pushed)
        stored = oci_registry.blob_file(layer.digest)
        data = bytearray(stored.read_bytes())
        data[-1] ^= 0xFF  # same size, other bytes
        stored.write_bytes(bytes(data))

        dest = tmp_path / "out" / "add.wasm"
        with pytest.raises(DigestMismatch, match=layer.digest) as caught:
            await client.pull_wasm(ref(oci_registry, "demo/add:1"), dest)
        assert caught.value.reason == "digest_mismatch"
        assert list(dest.parent.iterdir()) == []  # neither the file nor a partial one


async def test_over_the_maximum_is_refused(
    oci_registry: RegistryProcess, module: Path, tmp_path: Path
) -> None:
    async with Registry() as client:
        await client.push_wasm(ref(oci_registry, "demo/add:1"), module)
    tiny = RegistryConfig(max_artifact_mb=16 / (1024 * 1024))  # 16 bytes
    async with Registry(tiny) as client:
        with pytest.raises(ArtifactTooBig):
            await client.pull_wasm(ref(oci_registry, "demo/add:1"), tmp_path / "x.wasm")
        with pytest.raises(ArtifactTooBig):
            await client.push_wasm(ref(oci_registry, "demo/add:2"), module)
    assert not (tmp_path / "x.wasm").exists()


async def test_basic_auth_with_and_without_credentials(
    auth_registry: RegistryProcess, module: Path, tmp_path: Path
) -> None:
    assert auth_registry.credentials is not None
    user, password = auth_registry.credentials
    target = ref(auth_registry, "private/add:1")
    async with Registry() as anonymous:
        with pytest.raises(RegistryDenied):
            await anonymous.push_wasm(target, module)
    wrong = RegistryConfig(
        registries={auth_registry.address: Credentials(username=user, password="wrong")}
    )
    async with Registry(wrong) as client:
        with pytest.raises(RegistryDenied) as denied:
            await client.resolve(target)
        assert "wrong" not in str(denied.value)
    good = RegistryConfig(
        registries={auth_registry.address: Credentials(username=user, password=password)}
    )
    async with Registry(good) as client:
        pushed = await client.push_wasm(target, module)
        pulled = await client.pull_wasm(target, tmp_path / "add.wasm")
    assert pulled.digest == pushed.digest
    assert (tmp_path / "add.wasm").read_bytes() == add_wasm()
    async with Registry() as anonymous:
        with pytest.raises(RegistryDenied):
            await anonymous.resolve(target)


async def test_registry_down_is_unreachable_and_transient() -> None:
    async with Registry() as client:
        with pytest.raises(RegistryUnreachable) as caught:
            await client.resolve(reference.parse(f"oci://127.0.0.1:{free_port()}/demo/add:1"))
    assert caught.value.transient
    assert caught.value.reason == "registry_unreachable"


async def test_bearer_tokens_from_the_registrys_token_service(
    token_registry: tuple[RegistryProcess, TokenService], module: Path, tmp_path: Path
) -> None:
    registry, service = token_registry
    user, password = service.credentials
    target = ref(registry, "private/add:1")
    async with Registry() as anonymous:
        with pytest.raises(RegistryDenied, match="asks for credentials"):
            await anonymous.resolve(target)
    good = RegistryConfig(
        registries={registry.address: Credentials(username=user, password=password)}
    )
    async with Registry(good) as client:
        pushed = await client.push_wasm(target, module)
        pulled = await client.pull_wasm(target, tmp_path / "add.wasm")
    assert pulled.digest == pushed.digest
    assert (tmp_path / "add.wasm").read_bytes() == add_wasm()
    # One token for the push (pull,push, asked for up front) serves the pull after it.
    assert len(service.requests) == 1
    assert service.requests[0][0] == "repository:private/add:pull,push"


async def test_a_bearer_token_from_the_registry_config_is_sent_as_it_is(
    token_registry: tuple[RegistryProcess, TokenService],
    module: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """``token:`` in registries.yaml: sent as the bearer token, the token service never
    asked, and the token in no log line nor error."""
    registry, service = token_registry
    token = service.token(["repository:private/add:pull,push"])
    config_file = tmp_path / "registries.yaml"
    config_file.write_text(f"registries:\n  {registry.address}:\n    token: {token}\n")
    config_file.chmod(0o600)
    caplog.set_level(logging.DEBUG)
    target = ref(registry, "private/add:1")
    async with Registry(registry_config.load(config_file)) as client:
        pushed = await client.push_wasm(target, module)
        pulled = await client.pull_wasm(target, tmp_path / "add.wasm")
        assert pulled.digest == pushed.digest
        # a token for another repository is refused: named, without the token
        with pytest.raises(RegistryDenied) as denied:
            await client.resolve(ref(registry, "other/add:1"))
    assert service.requests == []
    assert token not in caplog.text and token not in denied.value.detail
