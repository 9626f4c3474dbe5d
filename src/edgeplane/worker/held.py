"""What a worker says it holds: the digests the scheduler prefers it for (a soft
preference, docs/artifacts.md). Two kinds share the bounded report: wasm modules (the
sha256 of their bytes, its blob store) and container images (the manifest digest an
``oci://`` reference is pinned to, its image puller)."""

from __future__ import annotations

from collections.abc import Sequence

from edgeplane.protocol.messages import HELD_ARTIFACTS


def report(modules: Sequence[str], images: Sequence[str], limit: int = HELD_ARTIFACTS) -> list[str]:
    """At most ``limit`` digests: the most recently used images and modules (each list
    most recent first). Each kind has half the room; what one kind does not use goes to
    the other, so a worker running only containers reports ``limit`` images."""
    take_images = min(len(images), max(limit // 2, limit - len(modules)))
    take_modules = min(len(modules), limit - take_images)
    return list(dict.fromkeys([*images[:take_images], *modules[:take_modules]]))
