"""Container test images, built offline: busybox from the machine's static binary, and
images of hand-made layers (whiteouts, tags) written as real OCI image layouts."""

from __future__ import annotations

from pathlib import Path

from edgeplane.runtimes.busybox import (
    BUSYBOX_CONFIG,
    Entry,
    busybox_containers_unavailable,
    busybox_image,
    busybox_layer,
    tar_layer,
    write_image,
)

__all__ = [
    "BUSYBOX_CONFIG",
    "Entry",
    "busybox_containers_unavailable",
    "busybox_layer",
    "tar_layer",
    "write_image",
]


def images_with_busybox(images: Path) -> Path:
    """An image dir holding ``busybox`` (tag ``latest``); returns the dir."""
    busybox_image(images / "busybox")
    return images
