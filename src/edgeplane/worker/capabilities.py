"""What a worker tells its manager about itself at registration (the capability handshake)."""

from __future__ import annotations

import os
import platform
import shutil
import socket
from collections.abc import Iterable, Mapping
from pathlib import Path

import psutil

from edgeplane.model import Capabilities, Usage

#: Device nodes that reveal a trusted execution environment.
_TEE_DEVICES = {
    "sgx": ("/dev/sgx_enclave", "/dev/sgx/enclave"),
    "sev": ("/dev/sev-guest", "/dev/sev"),
    "tdx": ("/dev/tdx_guest", "/dev/tdx-guest"),
}
_ACCELERATOR_GLOBS = {"nvidia-gpu": "nvidia[0-9]*", "dri": "dri/renderD*", "tpu": "accel*"}


def detect_tee(root: Path = Path("/")) -> list[str]:
    return sorted(
        kind
        for kind, paths in _TEE_DEVICES.items()
        if any((root / p.lstrip("/")).exists() for p in paths)
    )


def detect_accelerators(dev: Path = Path("/dev")) -> list[str]:
    return sorted(kind for kind, pattern in _ACCELERATOR_GLOBS.items() if any(dev.glob(pattern)))


def _addresses() -> list[str]:
    found: list[str] = []
    for name, addrs in psutil.net_if_addrs().items():
        if name == "lo":
            continue
        found.extend(a.address for a in addrs if a.family in (socket.AF_INET, socket.AF_INET6))
    return found


def detect(
    *, runtimes: Iterable[str], labels: Mapping[str, str], slots: int, data_dir: Path
) -> Capabilities:
    disk_root = data_dir if data_dir.exists() else Path("/")
    return Capabilities(
        hostname=socket.gethostname(),
        addresses=_addresses(),
        arch=platform.machine(),
        os=platform.system().lower(),
        cpus=os.cpu_count() or 1,
        memory_mb=psutil.virtual_memory().total // 2**20,
        disk_mb=shutil.disk_usage(disk_root).free // 2**20,
        runtimes=sorted(runtimes),
        labels=dict(labels),
        tee=detect_tee(),
        accelerators=detect_accelerators(),
        slots=slots,
    )


def usage(process: psutil.Process) -> Usage:
    memory = psutil.virtual_memory()
    return Usage(
        cpu_percent=psutil.cpu_percent(interval=None),
        memory_used_mb=(memory.total - memory.available) // 2**20,
        memory_free_mb=memory.available // 2**20,
        rss_mb=round(process.memory_info().rss / 2**20, 1),
    )
