"""An async OCI distribution client (httpx): resolve a tag to a digest, fetch manifests
and blobs verified against their sha256 while they stream, push a wasm module as an OCI
artifact, list tags.

Everything fetched is checked before it is kept: a manifest against the digest asked for
(or the one the registry states), a blob against its digest and the size bound, hashed
as it streams into a temporary file that is only renamed into place once it matches.

Auth follows the distribution spec: a request answered 401 with ``WWW-Authenticate:
Basic`` is sent again with the configured username and password; ``Bearer
realm=…,service=…,scope=…`` makes the client ask the realm for a token (with the
credentials when there are some, anonymously otherwise) and send it. Credentials and
tokens never reach a log line or an error message.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import re
import secrets
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from edgeplane.artifacts.reference import Reference, plain_http_allowed
from edgeplane.artifacts.registry_config import Credentials, RegistryConfig
from edgeplane.artifacts.registry_errors import (
    ArtifactNotFound,
    ArtifactTooBig,
    DigestMismatch,
    Invalid,
    RegistryDenied,
    RegistryProtocolError,
    RegistryUnreachable,
)

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
MANIFEST_TYPES = (OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST)
INDEX_TYPES = (OCI_INDEX, DOCKER_LIST)
#: wasm-to-oci's media types (built on ORAS), which wasmCloud, Krustlet and hauler read.
WASM_CONFIG = "application/vnd.wasm.config.v1+json"
WASM_LAYER = "application/vnd.wasm.content.layer.v1+wasm"
#: What a wasm layer may also be called: the CNCF wasm OCI artifact layout's layer type.
WASM_LAYERS = (WASM_LAYER, "application/wasm")
#: The registry's own limit on a manifest (distribution refuses larger ones).
MAX_MANIFEST_BYTES = 4 * 1024 * 1024
#: Tags listed at most (pages of PAGE_TAGS).
MAX_TAGS = 10_000
PAGE_TAGS = 1000
CHUNK = 64 * 1024
TIMEOUT = httpx.Timeout(30.0, connect=10.0)
_DIGEST = re.compile(r"sha256:[a-f0-9]{64}")

Progress = Callable[[int], None]


@dataclass(frozen=True)
class Descriptor:
    media_type: str
    digest: str
    size: int
    annotations: Mapping[str, str] = field(default_factory=dict)
    platform: Mapping[str, Any] | None = None

    @classmethod
    def parse(cls, data: Any, where: str) -> Descriptor:
        if not isinstance(data, dict):
            raise RegistryProtocolError(f"{where}: a descriptor must be an object")
        digest, size = data.get("digest"), data.get("size")
        if not isinstance(digest, str) or not _DIGEST.fullmatch(digest):
            raise RegistryProtocolError(f"{where}: descriptor digest is not sha256")
        if not isinstance(size, int) or size < 0:
            raise RegistryProtocolError(f"{where}: descriptor size is not a count of bytes")
        annotations = data.get("annotations") or {}
        platform = data.get("platform")
        return cls(
            media_type=str(data.get("mediaType", "")),
            digest=digest,
            size=size,
            annotations=annotations if isinstance(annotations, dict) else {},
            platform=platform if isinstance(platform, dict) else None,
        )


@dataclass(frozen=True)
class Manifest:
    """A manifest or an index as fetched and verified: ``raw`` hashes to ``digest``."""

    reference: Reference
    media_type: str
    digest: str
    raw: bytes
    config: Descriptor | None
    layers: tuple[Descriptor, ...]
    #: an index's manifests (one per platform)
    manifests: tuple[Descriptor, ...]
    artifact_type: str | None = None

    @property
    def size(self) -> int:
        return len(self.raw)

    @property
    def is_index(self) -> bool:
        return self.media_type in INDEX_TYPES


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class Registry:
    """One client for every registry a process talks to; use as ``async with``.

    ``transport`` is for unit tests (an ``httpx.MockTransport``)."""

    def __init__(
        self,
        config: RegistryConfig | None = None,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        timeout: httpx.Timeout = TIMEOUT,
    ) -> None:
        self.config = config or RegistryConfig()
        self._http = httpx.AsyncClient(
            transport=transport, timeout=timeout, follow_redirects=True, trust_env=False
        )
        #: Authorization header per (registry, scope) the registry last asked for
        self._tokens: dict[tuple[str, str], str] = {}
        #: the scope last granted per registry, tried first on the next request
        self._last_auth: dict[str, str] = {}

    async def __aenter__(self) -> Registry:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    # --- reading ---------------------------------------------------------------------

    async def resolve(self, ref: Reference) -> Descriptor:
        """The manifest descriptor a tag (or digest) names now: digest, size, media type.
        HEAD first (cheap, and not counted against Docker Hub's pull limit); a GET when
        the registry does not state the digest."""
        url = self._url(ref, f"manifests/{ref.ref}")
        async with self._request(ref, "HEAD", url, headers=_accept()) as response:
            if response.status_code != 405:  # a registry without HEAD: the GET below
                await self._check(ref, response)
            digest = response.headers.get("docker-content-digest", "")
            media_type = _media_type(response)
            length = response.headers.get("content-length", "")
        if _DIGEST.fullmatch(digest) and length.isdigit():
            if ref.digest and digest != ref.digest:
                raise DigestMismatch(f"{ref}: the registry answered for {digest}")
            return Descriptor(media_type, digest, int(length))
        manifest = await self.manifest(ref)
        return Descriptor(manifest.media_type, manifest.digest, manifest.size)

    async def manifest(self, ref: Reference) -> Manifest:
        """The manifest (or index) ``ref`` names, verified: against ``ref.digest`` when
        given, else against the digest the registry states for the tag."""
        url = self._url(ref, f"manifests/{ref.ref}")
        async with self._request(ref, "GET", url, headers=_accept()) as response:
            await self._check(ref, response)
            stated = response.headers.get("docker-content-digest", "")
            media_type = _media_type(response)
            raw = await _read_bounded(response, MAX_MANIFEST_BYTES, f"{ref} manifest")
        digest = sha256(raw)
        expected = ref.digest or (stated if _DIGEST.fullmatch(stated) else digest)
        if digest != expected:
            raise DigestMismatch(f"{ref}: manifest hashes to {digest}, expected {expected}")
        return _parse_manifest(ref.with_digest(digest), raw, media_type)

    async def tags(self, ref: Reference) -> list[str]:
        """The repository's tags, following ``Link`` pages, at most :data:`MAX_TAGS`."""
        found: list[str] = []
        url: str | None = self._url(ref, f"tags/list?n={PAGE_TAGS}")
        while url is not None and len(found) < MAX_TAGS:
            async with self._request(ref, "GET", url) as response:
                await self._check(ref.repo_only(), response)
                raw = await _read_bounded(response, MAX_MANIFEST_BYTES, f"{ref} tags")
                link = response.headers.get("link", "")
            try:
                tags = json.loads(raw).get("tags") or []
            except (ValueError, AttributeError):
                raise RegistryProtocolError(f"{ref.repo_only()}: tag list is not JSON") from None
            found += [t for t in tags if isinstance(t, str)]
            url = _next_page(url, link)
        return found[:MAX_TAGS]

    async def fetch_blob(
        self,
        ref: Reference,
        blob: Descriptor,
        dest: Path,
        *,
        progress: Progress | None = None,
    ) -> Path:
        """Download ``blob`` of ``ref``'s repository to ``dest``, hashed while it streams:
        at most min(its size, the configured maximum) bytes, renamed into place only when
        it matches its digest. On any failure nothing is left at ``dest``."""
        limit = self._limit(ref, blob)
        partial = dest.with_name(f".{dest.name}.partial-{secrets.token_hex(6)}")
        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            with partial.open("wb") as out:
                async for chunk in self._blob_chunks(ref, blob, limit):
                    out.write(chunk)
                    if progress is not None:
                        progress(len(chunk))
            partial.replace(dest)
        finally:
            partial.unlink(missing_ok=True)
        return dest

    async def blob_bytes(self, ref: Reference, blob: Descriptor) -> bytes:
        """A small blob (a config) in memory, verified like :meth:`fetch_blob`."""
        parts = [chunk async for chunk in self._blob_chunks(ref, blob, self._limit(ref, blob))]
        return b"".join(parts)

    async def blob_up_to(self, ref: Reference, digest: str, limit: int) -> bytes:
        """A blob whose size is not known beforehand (asked for by digest alone), in
        memory: at most ``limit`` bytes (:class:`ArtifactTooBig` past it), verified."""
        url = self._url(ref, f"blobs/{digest}")
        hasher = hashlib.sha256()
        parts: list[bytes] = []
        seen = 0
        async with self._request(ref, "GET", url) as response:
            await self._check(ref.with_digest(digest), response)
            async for chunk in response.aiter_bytes(CHUNK):
                seen += len(chunk)
                if seen > limit:
                    raise ArtifactTooBig(f"{ref}: blob {digest} is over {limit} bytes")
                hasher.update(chunk)
                parts.append(chunk)
        if "sha256:" + hasher.hexdigest() != digest:
            raise DigestMismatch(f"{ref}: blob {digest} does not hash to its digest")
        return b"".join(parts)

    async def pull_wasm(self, ref: Reference, dest: Path) -> Manifest:
        """The wasm module ``ref`` names (one wasm layer) saved to ``dest``, verified."""
        manifest = await self.manifest(ref)
        layer = wasm_layer(manifest)
        await self.fetch_blob(manifest.reference, layer, dest)
        return manifest

    # --- writing ---------------------------------------------------------------------

    async def push_wasm(
        self, ref: Reference, module: Path, *, progress: Progress | None = None
    ) -> Manifest:
        """Push ``module`` as an OCI artifact (wasm-to-oci's media types) tagged
        ``ref.tag`` (default ``latest``); returns the pushed manifest (its digest)."""
        if ref.digest:
            raise Invalid(f"{ref}: push to a tag, not a digest", field="reference")
        size = (await asyncio.to_thread(module.stat)).st_size
        if size > self.config.max_bytes:
            raise ArtifactTooBig(
                f"{module.name} is {size} bytes, over the {self.config.max_bytes}-byte maximum"
            )
        layer = Descriptor(WASM_LAYER, await asyncio.to_thread(_file_digest, module), size,
                           {"org.opencontainers.image.title": module.name})  # fmt: skip
        config_raw = b"{}"
        config = Descriptor(WASM_CONFIG, sha256(config_raw), len(config_raw))
        await self._push_blob(ref, config, lambda: _chunks_of(config_raw), None)
        await self._push_blob(ref, layer, lambda: _file_chunks(module), progress)
        document = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": _descriptor_json(config),
            "layers": [_descriptor_json(layer)],
        }
        raw = json.dumps(document, separators=(",", ":")).encode()
        tag = ref.tag or "latest"
        url = self._url(ref, f"manifests/{tag}")
        headers = {"content-type": OCI_MANIFEST}
        async with self._request(ref, "PUT", url, headers=headers, content=raw) as response:
            await self._check(ref, response, writing=True)
            stated = response.headers.get("docker-content-digest", "")
        digest = sha256(raw)
        if _DIGEST.fullmatch(stated) and stated != digest:
            raise DigestMismatch(f"{ref}: registry stored the manifest as {stated}, not {digest}")
        pushed = Reference(ref.registry, ref.repository, tag, digest)
        return _parse_manifest(pushed, raw, OCI_MANIFEST)

    async def _push_blob(
        self,
        ref: Reference,
        blob: Descriptor,
        chunks: Callable[[], AsyncIterator[bytes]],
        progress: Progress | None,
    ) -> None:
        """Monolithic upload (POST then PUT ?digest=), skipped when the blob is there."""
        exists = self._url(ref, f"blobs/{blob.digest}")
        async with self._request(ref, "HEAD", exists, scope_action="pull,push") as response:
            if response.status_code == 200:
                if progress is not None:
                    progress(blob.size)
                return
        start = self._url(ref, "blobs/uploads/")
        async with self._request(ref, "POST", start, scope_action="pull,push") as response:
            await self._check(ref, response, writing=True)
            location = response.headers.get("location")
        if not location:
            raise RegistryProtocolError(f"{ref}: upload started without a Location")
        target = httpx.URL(start).join(location).copy_add_param("digest", blob.digest)

        async def body() -> AsyncIterator[bytes]:
            async for chunk in chunks():
                yield chunk
                if progress is not None:
                    progress(len(chunk))

        headers = {"content-type": "application/octet-stream", "content-length": str(blob.size)}
        async with self._request(
            ref, "PUT", str(target), headers=headers, content=body, scope_action="pull,push"
        ) as response:
            await self._check(ref, response, writing=True)

    # --- the wire --------------------------------------------------------------------

    def _url(self, ref: Reference, tail: str) -> str:
        scheme = "http" if plain_http_allowed(ref, self.config.insecure) else "https"
        return f"{scheme}://{ref.registry}/v2/{ref.repository}/{tail}"

    def _limit(self, ref: Reference, blob: Descriptor) -> int:
        if blob.size > self.config.max_bytes:
            raise ArtifactTooBig(
                f"{ref}: blob {blob.digest} is {blob.size} bytes, "
                f"over the {self.config.max_bytes}-byte maximum"
            )
        return blob.size

    async def _blob_chunks(
        self, ref: Reference, blob: Descriptor, limit: int
    ) -> AsyncIterator[bytes]:
        url = self._url(ref, f"blobs/{blob.digest}")
        hasher = hashlib.sha256()
        seen = 0
        async with self._request(ref, "GET", url) as response:
            await self._check(ref.with_digest(blob.digest), response)
            async for chunk in response.aiter_bytes(CHUNK):
                seen += len(chunk)
                if seen > limit:
                    raise DigestMismatch(f"{ref}: blob {blob.digest} runs past its {limit} bytes")
                hasher.update(chunk)
                yield chunk
        got = "sha256:" + hasher.hexdigest()
        if seen != blob.size or got != blob.digest:
            raise DigestMismatch(
                f"{ref}: blob {blob.digest} arrived as {got} ({seen} of {blob.size} bytes)"
            )

    @contextlib.asynccontextmanager
    async def _request(
        self,
        ref: Reference,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        content: bytes | Callable[[], AsyncIterator[bytes]] | None = None,
        scope_action: str = "pull",
    ) -> AsyncIterator[httpx.Response]:
        """One request, answered 401 at most once with the credentials the registry's
        challenge asks for; network failures become :class:`RegistryUnreachable`."""
        creds = self.config.credentials(ref.registry)
        scope = f"repository:{ref.repository}:{scope_action}"
        response = None
        try:
            for attempt in range(2):
                sent = dict(headers or {})
                auth = self._authorization(ref.registry, scope, creds)
                if auth:
                    sent["authorization"] = auth
                body = content() if callable(content) else content
                request = self._http.build_request(method, url, headers=sent, content=body)
                response = await self._http.send(request, stream=True)
                if response.status_code != 401 or attempt == 1:
                    break
                challenge = response.headers.get("www-authenticate", "")
                await response.aclose()
                await self._answer(ref, challenge, scope, creds)
            assert response is not None
            try:
                yield response
            finally:
                await response.aclose()
        except httpx.TransportError as exc:
            raise RegistryUnreachable(
                f"registry {ref.registry} unreachable: {type(exc).__name__}"
                + (f" ({exc})" if str(exc) else "")
            ) from None

    def _authorization(self, registry: str, scope: str, creds: Credentials) -> str | None:
        if header := self._tokens.get((registry, scope)):
            return header
        if creds.token is not None:
            return f"Bearer {creds.token.get_secret_value()}"
        if last := self._last_auth.get(registry):
            return last
        return None

    async def _answer(self, ref: Reference, challenge: str, scope: str, creds: Credentials) -> None:
        """Get what the challenge asks for and remember it for this registry and scope."""
        kind, params = parse_challenge(challenge)
        if kind == "basic":
            if creds.basic is None:
                raise RegistryDenied(f"registry {ref.registry} asks for a username and password")
            header = _basic(*creds.basic)
        elif kind == "bearer" and params.get("realm"):
            header = f"Bearer {await self._token(ref, params, scope, creds)}"
        else:
            raise RegistryDenied(f"registry {ref.registry} refused access (no usable challenge)")
        self._tokens[(ref.registry, scope)] = header
        self._last_auth[ref.registry] = header

    async def _token(
        self, ref: Reference, params: dict[str, str], scope: str, creds: Credentials
    ) -> str:
        realm = httpx.URL(params["realm"])
        if realm.scheme != "https" and not plain_http_allowed(
            Reference(realm.netloc.decode(), "x"), self.config.insecure
        ):
            # Credentials go to the realm: never over plain HTTP off loopback.
            raise RegistryDenied(f"registry {ref.registry}: token realm is not https")
        # The scope this client needs (pull,push for a push) and the one the registry
        # asked for: a push then needs one token, not one per action.
        scopes = [scope] + [s for s in params.get("scope", "").split(" ") if s and s != scope]
        query: dict[str, str | list[str]] = {"scope": scopes}
        if service := params.get("service"):
            query["service"] = service
        auth = httpx.BasicAuth(*creds.basic) if creds.basic else None
        try:
            response = await self._http.get(realm, params=query, auth=auth)
        except httpx.TransportError as exc:
            raise RegistryUnreachable(
                f"token service of {ref.registry} unreachable: {type(exc).__name__}"
            ) from None
        if response.status_code in (401, 403):
            if creds.basic is None:
                raise RegistryDenied(
                    f"registry {ref.registry} asks for credentials (its token service "
                    "refused an anonymous token)"
                )
            raise RegistryDenied(
                f"registry {ref.registry}: credentials refused by its token service"
            )
        if response.status_code != 200:
            raise RegistryUnreachable(
                f"token service of {ref.registry} answered {response.status_code}"
            )
        try:
            body = response.json()
            token = body.get("token") or body.get("access_token")
        except (ValueError, AttributeError):
            token = None
        if not isinstance(token, str) or not token:
            raise RegistryProtocolError(f"token service of {ref.registry} sent no token")
        return token

    async def _check(
        self, ref: Reference, response: httpx.Response, *, writing: bool = False
    ) -> None:
        status = response.status_code
        if status < 300:
            return
        try:
            code = _error_code(await _read_bounded(response, 64 * 1024, "error"))
        except ArtifactTooBig:
            code = ""
        if status == 404 or code in ("NAME_UNKNOWN", "MANIFEST_UNKNOWN", "BLOB_UNKNOWN"):
            what = {"NAME_UNKNOWN": "repository", "BLOB_UNKNOWN": "blob"}.get(code, "artifact")
            raise ArtifactNotFound(f"{ref}: {what} not found in registry {ref.registry}")
        if status in (401, 403) or code in ("UNAUTHORIZED", "DENIED"):
            need = "push to" if writing else "read"
            raise RegistryDenied(
                f"registry {ref.registry} refused to let us {need} {ref.repo_only()}"
            )
        if status == 429 or status >= 500:
            raise RegistryUnreachable(f"registry {ref.registry} answered {status}")
        raise RegistryProtocolError(
            f"registry {ref.registry} answered {status}{f' {code}' if code else ''} for {ref}"
        )


def _error_code(body: bytes) -> str:
    """The distribution error code of an error answer (``{"errors": [{"code": …}]}``)."""
    try:
        errors = json.loads(body).get("errors") or []
        return str(errors[0].get("code", "")) if errors else ""
    except (ValueError, AttributeError, IndexError, TypeError):
        return ""


def _basic(username: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()


def parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    """``Bearer realm="…",service="…",scope="…"`` → ("bearer", {…})."""
    kind, _, rest = header.strip().partition(" ")
    params = {key.lower(): value for key, value in re.findall(r'([A-Za-z]+)="([^"]*)"', rest)}
    return kind.lower(), params


def wasm_layer(manifest: Manifest) -> Descriptor:
    """The one wasm layer of an artifact, or :class:`ArtifactNotFound` saying why not."""
    if manifest.is_index:
        raise ArtifactNotFound(f"{manifest.reference} is an index of images, not a wasm module")
    layers = [layer for layer in manifest.layers if layer.media_type in WASM_LAYERS]
    if len(layers) != 1:
        raise ArtifactNotFound(
            f"{manifest.reference} holds no single wasm layer ({', '.join(WASM_LAYERS)})"
        )
    return layers[0]


def parse_manifest(ref: Reference, raw: bytes, stated_type: str = "") -> Manifest:
    """A manifest (or index) from its bytes, checked elsewhere (``raw`` is hashed by the
    caller: a worker fed by the proxy)."""
    return _parse_manifest(ref, raw, stated_type)


def _parse_manifest(ref: Reference, raw: bytes, stated_type: str) -> Manifest:
    try:
        document = json.loads(raw)
    except ValueError:
        raise RegistryProtocolError(f"{ref}: manifest is not JSON") from None
    if not isinstance(document, dict):
        raise RegistryProtocolError(f"{ref}: manifest is not a JSON object")
    media_type = str(document.get("mediaType") or stated_type or OCI_MANIFEST)
    where = str(ref)
    config = document.get("config")
    layers = document.get("layers") or []
    manifests = document.get("manifests") or []
    if not isinstance(layers, list) or not isinstance(manifests, list):
        raise RegistryProtocolError(f"{ref}: layers and manifests must be lists")
    artifact_type = document.get("artifactType")
    parsed_config = Descriptor.parse(config, where) if config is not None else None
    return Manifest(
        reference=ref,
        media_type=media_type,
        digest=sha256(raw),
        raw=raw,
        config=parsed_config,
        layers=tuple(Descriptor.parse(layer, where) for layer in layers),
        manifests=tuple(Descriptor.parse(entry, where) for entry in manifests),
        artifact_type=(
            artifact_type
            if isinstance(artifact_type, str)
            else parsed_config.media_type
            if parsed_config
            else None
        ),
    )


def _accept() -> dict[str, str]:
    return {"accept": ", ".join(MANIFEST_TYPES)}


def _media_type(response: httpx.Response) -> str:
    value: str = response.headers.get("content-type", "")
    return value.split(";")[0].strip()


async def _read_bounded(response: httpx.Response, limit: int, what: str) -> bytes:
    parts: list[bytes] = []
    seen = 0
    async for chunk in response.aiter_bytes(CHUNK):
        seen += len(chunk)
        if seen > limit:
            raise ArtifactTooBig(f"{what} is over {limit} bytes")
        parts.append(chunk)
    return b"".join(parts)


def _next_page(current: str, link: str) -> str | None:
    """The ``Link: </v2/…?last=x&n=…>; rel="next"`` page, resolved against ``current``."""
    match = re.match(r'\s*<([^>]+)>\s*;\s*rel="?next"?', link)
    return str(httpx.URL(current).join(match.group(1))) if match else None


def _descriptor_json(blob: Descriptor) -> dict[str, Any]:
    data: dict[str, Any] = {"mediaType": blob.media_type, "digest": blob.digest, "size": blob.size}
    if blob.annotations:
        data["annotations"] = dict(blob.annotations)
    return data


def _file_digest(path: Path) -> str:
    hasher = hashlib.sha256()
    with path.open("rb") as source:
        while chunk := source.read(1 << 20):
            hasher.update(chunk)
    return "sha256:" + hasher.hexdigest()


async def _file_chunks(path: Path) -> AsyncIterator[bytes]:
    with path.open("rb") as source:
        while chunk := await asyncio.to_thread(source.read, 1 << 20):
            yield chunk


async def _chunks_of(data: bytes) -> AsyncIterator[bytes]:
    yield data
