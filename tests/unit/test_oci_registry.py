"""The registry client's wire rules on a mock transport: the bearer challenge flow,
HTTPS off loopback, secrets kept out of logs and errors, verification, pagination and
how answers map to errors. (The real registry: tests/integration/test_registry_*.py.)"""

from __future__ import annotations

import base64
import json
import logging
import re
from collections.abc import Callable

import httpx
import pytest

from edgeplane.artifacts.reference import parse
from edgeplane.artifacts.registry import OCI_INDEX, OCI_MANIFEST, Registry, sha256
from edgeplane.artifacts.registry_config import Credentials, RegistryConfig
from edgeplane.artifacts.registry_errors import (
    ArtifactNotFound,
    ArtifactTooBig,
    DigestMismatch,
    RegistryDenied,
    RegistryUnreachable,
)

SECRET = "s3cret-pass"
TOKEN = "tok-123-secret"
MANIFEST = json.dumps(
    {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": sha256(b"{}"), "size": 2},
        "layers": [],
    }
).encode()  # fmt: skip

Handler = Callable[[httpx.Request], httpx.Response]


def client(handler: Handler, **registries: Credentials) -> Registry:
    config = RegistryConfig(registries={k.replace("_", "."): v for k, v in registries.items()})
    return Registry(config, transport=httpx.MockTransport(handler))


def manifest_answer(body: bytes = MANIFEST, **headers: str) -> httpx.Response:
    return httpx.Response(
        200,
        content=body,
        headers={"content-type": OCI_MANIFEST, "docker-content-digest": sha256(body), **headers},
    )


async def test_bearer_challenge_gets_a_token_with_the_credentials(
    caplog: pytest.LogCaptureFixture,
) -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.url.host == "auth.example.com":
            expected = "Basic " + base64.b64encode(f"ci:{SECRET}".encode()).decode()
            assert request.headers["authorization"] == expected
            assert request.url.params["service"] == "reg"
            assert request.url.params["scope"] == "repository:demo/add:pull"
            return httpx.Response(200, json={"token": TOKEN})
        if request.headers.get("authorization") != f"Bearer {TOKEN}":
            return httpx.Response(
                401,
                headers={
                    "www-authenticate": 'Bearer realm="https://auth.example.com/token",'
                    'service="reg",scope="repository:demo/add:pull"'
                },
            )
        return manifest_answer()

    caplog.set_level(logging.DEBUG)
    creds = Credentials(username="ci", password=SECRET)
    async with client(handler, reg_example_com=creds) as registry:
        manifest = await registry.manifest(parse("oci://reg.example.com/demo/add:1"))
        await registry.manifest(parse("oci://reg.example.com/demo/add:1"))
    assert manifest.digest == sha256(MANIFEST)
    assert seen[0].url.scheme == "https"  # off loopback, never plain HTTP
    # One challenge, one token, then the token is reused for the same scope.
    assert [r.url.host for r in seen] == ["reg.example.com", "auth.example.com"] + [
        "reg.example.com"
    ] * 2
    assert SECRET not in caplog.text and TOKEN not in caplog.text
    assert SECRET not in repr(creds)


async def test_refused_token_and_plain_http_realm_are_denied() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.host == "auth.example.com":
            return httpx.Response(401)
        realm = (
            "http://auth.example.com/t"
            if "plain" in request.url.path
            else ("https://auth.example.com/t")
        )
        return httpx.Response(401, headers={"www-authenticate": f'Bearer realm="{realm}"'})

    creds = Credentials(username="ci", password=SECRET)
    async with client(handler, reg_example_com=creds) as registry:
        with pytest.raises(RegistryDenied, match="token service") as refused:
            await registry.resolve(parse("oci://reg.example.com/demo/add:1"))
        with pytest.raises(RegistryDenied, match="not https"):
            await registry.resolve(parse("oci://reg.example.com/plain/add:1"))
    assert SECRET not in str(refused.value)


async def test_basic_challenge_without_credentials_is_denied() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(401, headers={"www-authenticate": 'Basic realm="r"'})

    async with client(handler) as registry:
        with pytest.raises(RegistryDenied, match="username and password"):
            await registry.resolve(parse("oci://127.0.0.1:5000/demo/add:1"))


async def test_insecure_listed_registry_is_plain_http() -> None:
    schemes: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        schemes.append(request.url.scheme)
        return manifest_answer()

    async with client(handler, **{"10.0.0.5:5000": Credentials(insecure=True)}) as registry:
        await registry.resolve(parse("oci://10.0.0.5:5000/demo/add:1"))
        await registry.resolve(parse("oci://10.0.0.6:5000/demo/add:1"))
    assert schemes == ["http", "https"]


async def test_manifest_must_hash_to_the_digest_asked_for() -> None:
    other = MANIFEST + b" "
    async with client(lambda r: manifest_answer(other)) as registry:
        with pytest.raises(DigestMismatch):
            await registry.manifest(parse(f"oci://127.0.0.1:5000/a@{sha256(MANIFEST)}"))
    lying = manifest_answer(other, **{"docker-content-digest": sha256(MANIFEST)})
    async with client(lambda r: lying) as registry:
        with pytest.raises(DigestMismatch):
            await registry.manifest(parse("oci://127.0.0.1:5000/a:1"))


async def test_index_manifests_are_listed() -> None:
    index = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [
                {"mediaType": OCI_MANIFEST, "digest": sha256(MANIFEST), "size": len(MANIFEST),
                 "platform": {"os": "linux", "architecture": "arm64"}},
            ],
        }
    ).encode()  # fmt: skip
    async with client(lambda r: manifest_answer(index)) as registry:
        manifest = await registry.manifest(parse("oci://127.0.0.1:5000/a:1"))
    assert manifest.is_index
    assert manifest.manifests[0].platform == {"os": "linux", "architecture": "arm64"}


async def test_tags_follow_link_pages() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if "last" not in request.url.params:
            link = '</v2/a/tags/list?n=1000&last=b>; rel="next"'
            return httpx.Response(200, json={"tags": ["a", "b"]}, headers={"link": link})
        return httpx.Response(200, json={"tags": ["c"]})

    async with client(handler) as registry:
        assert await registry.tags(parse("oci://127.0.0.1:5000/a")) == ["a", "b", "c"]


@pytest.mark.parametrize(
    ("answer", "error"),
    [
        (httpx.Response(404, json={"errors": [{"code": "MANIFEST_UNKNOWN"}]}), ArtifactNotFound),
        (httpx.Response(404, json={"errors": [{"code": "NAME_UNKNOWN"}]}), ArtifactNotFound),
        (httpx.Response(503), RegistryUnreachable),
        (httpx.Response(429), RegistryUnreachable),
        (httpx.Response(403, json={"errors": [{"code": "DENIED"}]}), RegistryDenied),
    ],
)
async def test_answers_map_to_errors(answer: httpx.Response, error: type[Exception]) -> None:
    async with client(lambda r: answer) as registry:
        with pytest.raises(error, match=re.escape("127.0.0.1:5000")):
            await registry.manifest(parse("oci://127.0.0.1:5000/demo/add:9"))


async def test_connection_failure_is_unreachable() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    async with client(handler) as registry:
        with pytest.raises(RegistryUnreachable) as caught:
            await registry.resolve(parse("oci://127.0.0.1:5000/demo/add:1"))
    assert caught.value.transient


async def test_a_manifest_over_the_bound_is_refused() -> None:
    huge = b"{" + b" " * (4 * 1024 * 1024) + b"}"
    async with client(lambda r: manifest_answer(huge)) as registry:
        with pytest.raises(ArtifactTooBig):
            await registry.manifest(parse("oci://127.0.0.1:5000/a:1"))


async def test_resolve_falls_back_to_get_without_head() -> None:
    methods: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        methods.append(request.method)
        if request.method == "HEAD":
            return httpx.Response(405)
        return manifest_answer()

    async with client(handler) as registry:
        resolved = await registry.resolve(parse("oci://127.0.0.1:5000/a:1"))
    assert (resolved.digest, resolved.size) == (sha256(MANIFEST), len(MANIFEST))
    assert methods == ["HEAD", "GET"]
