"""Container test images, built offline: busybox from the machine's static binary, and
images of hand-made layers (whiteouts, tags) written as real OCI image layouts."""

from __future__ import annotations

import os
from pathlib import Path

from edgeplane.errors import Unavailable
from edgeplane.runtimes.busybox import (
    BUSYBOX_CONFIG,
    Entry,
    busybox_image,
    busybox_layer,
    find_busybox,
    tar_layer,
    write_image,
)
from edgeplane.runtimes.container import find_runc

__all__ = ["BUSYBOX_CONFIG", "Entry", "busybox_layer", "tar_layer", "write_image"]


def container_skip_reason() -> str | None:
    """Why real containers cannot run here, or None when they can."""
    if find_runc() is None:
        return "runc is not installed (scripts/system-deps.sh installs it)"
    if os.geteuid() != 0:
        return "container tasks need root (rootless runc is out of scope)"
    try:
        find_busybox()
    except Unavailable:
        return "no static busybox to build a test image from (busybox-static)"
    return None


def images_with_busybox(images: Path) -> Path:
    """An image dir holding ``busybox`` (tag ``latest``); returns the dir."""
    busybox_image(images / "busybox")
    return images
