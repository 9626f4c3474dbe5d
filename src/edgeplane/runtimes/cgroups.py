"""What runc's cgroups need from the machine beside a container's config: which cgroup
version runs, and on cgroup v1 the disks whose io the kernel must be told to count.

Storage io of a container comes from its cgroup (``runc events --stats``: ``io.stat`` on
v2, ``blkio.throttle.io_service_bytes_recursive`` on v1). On cgroup v2 the ``io``
controller always counts. On v1, Linux 6.x counts a disk's io per cgroup only once
blk-throttle is set up on that disk's queue, which happens when some cgroup writes a rule
for it: measured on this project's test machine (Linux 6.18, hybrid hierarchy), a 20 MB
``dd oflag=direct`` in a fresh blkio cgroup counted 0 bytes, and 20 MB once any cgroup had
written ``MAJ:MIN 0`` (no limit) for the disk. So a container's config carries that rule,
which limits nothing, for the disks its files live on (:func:`accounted_disks`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from functools import cache
from pathlib import Path
from typing import Any

CGROUP_ROOT = Path("/sys/fs/cgroup")
_SYS_BLOCK = Path("/sys/dev/block")


@cache  # the machine's hierarchy does not change under a running process
def cgroup_version() -> int:
    """2 on a unified hierarchy, 1 on a legacy or hybrid one (runc uses v1 there)."""
    return 2 if (CGROUP_ROOT / "cgroup.controllers").exists() else 1


@cache
def io_controller() -> str | None:
    """Why containers' storage io cannot be counted here, or None when it can: the io
    controller on cgroup v2, the blkio controller with blk-throttle on v1."""
    if cgroup_version() == 2:
        found = (CGROUP_ROOT / "cgroup.controllers").read_text().split()
        return None if "io" in found else "the cgroup v2 'io' controller is not available"
    if not (CGROUP_ROOT / "blkio" / "blkio.throttle.io_service_bytes_recursive").exists():
        return "the cgroup v1 'blkio' controller (with blk-throttle) is not mounted"
    return None


@cache
def _whole_disk(device: int) -> tuple[int, int] | None:
    """The whole disk holding ``device`` (a partition's parent), None when it is no block
    device (tmpfs, overlay, btrfs' anonymous devices)."""
    node = _SYS_BLOCK / f"{os.major(device)}:{os.minor(device)}"
    try:
        if (node / "partition").exists():
            node = node.resolve().parent
        major, _, minor = (node / "dev").read_text().strip().partition(":")
        return int(major), int(minor)
    except (OSError, ValueError):
        return None


def accounted_disks(paths: Iterable[Path]) -> list[tuple[int, int]]:
    """The disks (major, minor) of ``paths`` whose io a container's config must ask the
    kernel to count (see the module docstring): none on cgroup v2, or without blkio."""
    if cgroup_version() == 2 or io_controller() is not None:
        return []
    found: set[tuple[int, int]] = set()
    for path in paths:
        try:
            disk = _whole_disk(os.stat(path).st_dev)
        except OSError:
            continue
        if disk is not None:
            found.add(disk)
    return sorted(found)


def io_bytes(stats: dict[str, Any]) -> tuple[float, float] | None:
    """(read, write) bytes summed over devices from the ``data`` of ``runc events
    --stats``; None when runc reported no io part at all."""
    blkio = stats.get("blkio")
    if not isinstance(blkio, dict):
        return None
    read = write = 0.0
    for entry in blkio.get("ioServiceBytesRecursive") or ():
        op = str(entry.get("op", "")).lower()
        if op == "read":
            read += float(entry.get("value", 0))
        elif op == "write":
            write += float(entry.get("value", 0))
    return read, write


#: (cpu ns used, monotonic s) of a container's previous sample: its cpu_percent's start
CpuMark = tuple[float, float]


def usage_sample(
    said: str, last: CpuMark | None, now: float
) -> tuple[dict[str, float], CpuMark] | None:
    """One usage sample of a container from what ``runc events --stats`` printed:
    ``cpu_percent`` since ``last`` (0 without one, like psutil's first), ``memory_mb``,
    ``processes`` and, when runc reports io, ``io_read_bytes``/``io_write_bytes``; and the
    mark for the next sample. None when the output is not runc's stats."""
    try:
        data = json.loads(said)["data"]
        cpu_ns = float(data["cpu"]["usage"]["total"])
        memory = float(data["memory"]["usage"]["usage"])
        pids = float(data.get("pids", {}).get("current", 0))
        io = io_bytes(data)
    except (ValueError, KeyError, TypeError, AttributeError):
        return None
    cpu_percent = 0.0
    if last is not None and now > last[1]:
        cpu_percent = (cpu_ns - last[0]) / 1e9 / (now - last[1]) * 100
    found = {"cpu_percent": cpu_percent, "memory_mb": memory / 2**20, "processes": pids}
    if io is not None:
        found["io_read_bytes"], found["io_write_bytes"] = io
    return found, (cpu_ns, now)
