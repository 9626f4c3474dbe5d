"""Wasm modules named ``oci://HOST[:PORT]/REPO[:TAG][@sha256:…]`` (a task's ``image_url``,
or ``image`` on a wasm task), pulled by the control plane when it admits the task.

Why at admission: the tag is resolved to a manifest digest once, there, and the task is
stored pinned to it (``image_url`` becomes ``…:TAG@sha256:…``): every attempt on every
worker runs the same bytes even if the tag moves later. The module is then a blob like an
inline ``file``: checked against the export the task calls (a 422 at once, not a failed
run), stored once by its sha256 in the control plane's store, and named by that digest in
start commands; the cluster's proxy serves it to workers over MQTT (docs/artifacts.md), so
workers need no route to the registry. A root admits the same way and sends the bytes to
the cluster it picks, as for inline modules.

Failures, each naming the field: an unknown repository, tag or digest, a manifest that
holds no wasm module, credentials refused, an artifact over the maximum → 422 with the
registry's reason (``artifact_not_found``, …); the registry unreachable → 503
``registry_unreachable`` (nothing stored; the client may try again).
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass

import httpx

from edgeplane.artifacts import reference, registry_config
from edgeplane.artifacts.reference import Reference
from edgeplane.artifacts.registry import Registry, wasm_layer
from edgeplane.artifacts.registry_config import RegistryConfig
from edgeplane.artifacts.registry_errors import RegistryUnreachable
from edgeplane.errors import EdgeplaneError, Invalid, Unavailable

log = logging.getLogger(__name__)

#: modules pulled by manifest digest, so a tag admitted again costs one HEAD request
#: (at most this many bytes kept)
CACHE_BYTES = 64 * 1024 * 1024
#: pinning a container image's tag is best effort: a slow registry must not hold the API
PIN_TIMEOUT = httpx.Timeout(5.0, connect=2.0)


@dataclass(frozen=True)
class Pulled:
    #: the reference pinned to its manifest digest (what the task stores)
    pinned: str
    data: bytes


_cache: OrderedDict[str, bytes] = OrderedDict()
#: the control plane's registry settings, set when it starts (:func:`configure`)
_config: RegistryConfig | None = None


def configure(settings: RegistryConfig) -> None:
    """Use ``settings`` (the control plane's ``--registries`` file) from now on."""
    global _config
    _config = settings


def config() -> RegistryConfig:
    """The control plane's registry settings: as configured at its start, else
    ``EDGEPLANE_REGISTRIES``, else ``DATA_DIR/registries.yaml`` when there."""
    if _config is not None:
        return _config
    return registry_config.load(registry_config.default_file())


async def pull(text: str, *, field: str, settings: RegistryConfig | None = None) -> Pulled:
    """The module ``text`` names and the reference pinned to its manifest digest.
    Raises :class:`Invalid` (4xx) or :class:`Unavailable` (503) naming ``field``."""
    ref = reference.parse(text, field=field)
    try:
        async with Registry(settings or config()) as client:
            return await _pull(client, ref)
    except RegistryUnreachable as exc:
        raise Unavailable(_named(ref, exc.detail), field=field, reason=exc.reason) from None
    except Invalid:
        raise
    except EdgeplaneError as exc:
        raise Invalid(
            f"{exc.reason}: {_named(ref, exc.detail)}", field=field, reason=exc.reason
        ) from None


async def _pull(client: Registry, ref: Reference) -> Pulled:
    digest = ref.digest or (await client.resolve(ref)).digest
    pinned = ref.with_digest(digest)
    data = _cache.get(digest)
    if data is None:
        manifest = await client.manifest(pinned)  # verified against the digest
        data = await client.blob_bytes(pinned, wasm_layer(manifest))  # verified, bounded
        _cache[digest] = data
        while sum(len(kept) for kept in _cache.values()) > CACHE_BYTES:
            _cache.popitem(last=False)
        log.info("wasm module pulled", extra={"image": str(pinned), "bytes": len(data)})
    else:
        _cache.move_to_end(digest)
    return Pulled(str(pinned), data)


async def pin_images(images: Iterable[str]) -> dict[str, str]:
    """Container images named ``oci://…:TAG``, each pinned to the manifest digest its tag
    names now (``…:TAG@sha256:…``), so every attempt on every worker runs the same image
    even if the tag moves. Best effort: an image whose tag cannot be resolved now (the
    registry down or slow, an unknown tag) is left out and resolved where it is pulled,
    where its task fails or waits with the registry's reason (docs/artifacts.md)."""
    wanted = {text for text in images if reference.is_oci(text)}
    refs = [(text, reference.parse(text, field="image")) for text in wanted]
    refs = [(text, ref) for text, ref in refs if ref.digest is None]
    if not refs:
        return {}
    async with Registry(config(), timeout=PIN_TIMEOUT) as client:
        found = await asyncio.gather(
            *(client.resolve(ref) for _, ref in refs), return_exceptions=True
        )
    pinned = {}
    for (text, ref), answer in zip(refs, found, strict=True):
        if isinstance(answer, BaseException):
            if not isinstance(answer, EdgeplaneError):
                raise answer
            log.info("image not pinned at admission", extra={"image": text, "error": answer.detail})
            continue
        pinned[text] = str(ref.with_digest(answer.digest))
    return pinned


def _named(ref: Reference, detail: str) -> str:
    return detail if str(ref.repo_only()) in detail else f"{ref}: {detail}"
