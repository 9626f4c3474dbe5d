"""What a worker tells its manager about itself at registration (the capability handshake).

Every probe takes the filesystem root (and the engine probe a PATH) so tests can point it at a
fake tree. ``detect`` runs at every (re)connect, so probes only stat and list directories: no
subprocess is started (``nvidia-smi`` is looked up on PATH, never run). What cannot change
while the process lives (arch, os, TEE hardware) is probed once per root; devices,
accelerators and engines are probed every time because sensors are hot-plugged, NVIDIA nodes
appear when the driver first loads and an engine may be installed while the worker runs.
"""

from __future__ import annotations

import contextlib
import functools
import ipaddress
import logging
import os
import platform
import shutil
import socket
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import psutil

from edgeplane.model import Capabilities, Location, Usage

log = logging.getLogger(__name__)

ROOT = Path("/")

#: Sensor and device nodes (relative to the root), reported as the paths a container maps.
_DEVICE_GLOBS = (
    "dev/ttyUSB*",
    "dev/ttyACM*",
    "dev/i2c-*",
    "dev/spidev*",
    "dev/gpiochip*",
    "dev/video*",
    "sys/bus/w1/devices/28-*",  # family 28: DS18B20 1-wire temperature sensors
)
#: Sound is reported as the directory ``/dev/snd`` (what a container maps), and only when it
#: holds a card: ``/dev/snd`` with just ``seq``/``timer`` exists on machines with no sound.
_SOUND, _SOUND_CARD = "dev/snd", "controlC*"

#: Accelerator kind -> device nodes that reveal it.
_ACCELERATOR_GLOBS = {
    "nvidia": ("dev/nvidia[0-9]*",),
    "gpu": ("dev/dri/renderD*",),  # any GPU usable for compute/media (DRM render node)
    "edgetpu": ("dev/apex_*",),  # Coral PCIe/M.2 Edge TPU
    "npu": ("dev/accel/accel*", "dev/accel[0-9]*"),  # Linux compute-accelerator subsystem
}
#: Found on PATH, the NVIDIA driver is installed even before its device nodes exist.
_NVIDIA_TOOL = "nvidia-smi"

#: Container and unikernel engines looked up on PATH.
ENGINES = (
    "runc",
    "crun",
    "docker",
    "podman",
    "ops",
    "kraft",
    "firecracker",
    "qemu-system-x86_64",
    "qemu-system-aarch64",
)

#: TEE kind -> device nodes that reveal it.
_TEE_DEVICES = {
    "sgx": ("dev/sgx_enclave", "dev/sgx/enclave"),
    "sev": ("dev/sev", "dev/sev-guest"),
    "tdx": ("dev/tdx_guest", "dev/tdx-guest"),
    "trustzone": ("dev/tee0",),  # OP-TEE client device
}
#: A KVM host that can launch SEV guests says so here (``Y``, or ``1`` on older kernels).
_SEV_PARAMETER = "sys/module/kvm_amd/parameters/sev"


def _matches(root: Path, patterns: Iterable[str]) -> list[str]:
    """Paths under ``root`` matching ``patterns``, named as the machine sees them."""
    return [str(ROOT / hit.relative_to(root)) for pattern in patterns for hit in root.glob(pattern)]


def detect_devices(root: Path = ROOT) -> list[str]:
    found = _matches(root, _DEVICE_GLOBS)
    if any((root / _SOUND).glob(_SOUND_CARD)):
        found.append(str(ROOT / _SOUND))
    return sorted(found)


def detect_accelerators(root: Path = ROOT, path: str | None = None) -> list[str]:
    """Accelerator kinds present; ``path`` is a PATH string (default: the environment's)."""
    found = {kind for kind, patterns in _ACCELERATOR_GLOBS.items() if _matches(root, patterns)}
    if shutil.which(_NVIDIA_TOOL, path=path):
        found.add("nvidia")
    return sorted(found)


def detect_engines(path: str | None = None) -> list[str]:
    """Engines executable from ``path`` (a PATH string; default: the environment's)."""
    return sorted(name for name in ENGINES if shutil.which(name, path=path))


def detect_tee(root: Path = ROOT) -> list[str]:
    found = {
        kind for kind, paths in _TEE_DEVICES.items() if any((root / p).exists() for p in paths)
    }
    with contextlib.suppress(OSError):
        if (root / _SEV_PARAMETER).read_text().strip() in {"Y", "1"}:
            found.add("sev")
    return sorted(found)


def location_from(labels: Mapping[str, str]) -> Location | None:
    """The worker's place from its ``lat``/``lon`` labels; a bad pair is logged, not fatal,
    because ``detect`` runs on every reconnect and must not stop the worker registering."""
    lat, lon = labels.get("lat"), labels.get("lon")
    if lat is None and lon is None:
        return None
    if lat is not None and lon is not None:
        with contextlib.suppress(ValueError):
            return Location(lat=float(lat), lon=float(lon))
    log.warning("labels lat/lon are not a location", extra={"lat": lat, "lon": lon})
    return None


def reachable(addresses: Iterable[str]) -> list[str]:
    """The addresses a manager could reach us at: no loopback, link-local or unspecified
    ones (a link-local scope names our interface, meaningless elsewhere); IPv4 first."""
    found: set[ipaddress.IPv4Address | ipaddress.IPv6Address] = set()
    for text in addresses:
        try:
            ip = ipaddress.ip_address(text)
        except ValueError:
            continue
        if not (ip.is_loopback or ip.is_link_local or ip.is_unspecified):
            found.add(ip)
    return [str(ip) for ip in sorted(found, key=lambda ip: (ip.version, ip.packed))]


#: an address no one answers at (TEST-NET-3): the route to it is the default route
_FAR = ("203.0.113.1", 9)


def address() -> str:
    """The address other machines reach this one at: the one its default route leaves
    from (a UDP socket "connected" there sends nothing), else its first reachable address
    (IPv4 first, see :func:`reachable`), else ``127.0.0.1`` (loopback only). Not the
    first address in numeric order: that may be a bridge of its own (the chute bridge's
    ``10.77.0.1``) or a container engine's."""
    with contextlib.suppress(OSError), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect(_FAR)
        found = reachable([probe.getsockname()[0]])
        if found:
            return found[0]
    addresses = _addresses()
    return addresses[0] if addresses else "127.0.0.1"


def _addresses() -> list[str]:
    families = (socket.AF_INET, socket.AF_INET6)
    return reachable(
        a.address for addrs in psutil.net_if_addrs().values() for a in addrs if a.family in families
    )


def _cpus() -> int:
    """Cores this process may run on (a cpuset or container narrows them), else all."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


@dataclass(frozen=True)
class _Fixed:
    """Facts that cannot change while the process lives."""

    arch: str
    os: str
    tee: tuple[str, ...]


@functools.cache
def _fixed(root: Path) -> _Fixed:
    return _Fixed(platform.machine(), platform.system().lower(), tuple(detect_tee(root)))


def detect(
    *,
    runtimes: Iterable[str],
    labels: Mapping[str, str],
    slots: int,
    data_dir: Path,
    prefetch: int = 1,
    root: Path = ROOT,
    path: str | None = None,
    host_user: str | None = None,
    bridge: bool = False,
) -> Capabilities:
    """Everything the manager needs to place work here; ``runtimes`` are the enabled ones
    (what this worker can run), ``engines`` whatever is installed, used or not; ``bridge``
    whether it can give container tasks a bridge network."""
    fixed = _fixed(root)
    disk_root = data_dir if data_dir.exists() else ROOT
    return Capabilities(
        hostname=socket.gethostname(),
        addresses=_addresses(),
        arch=fixed.arch,
        os=fixed.os,
        cpus=_cpus(),
        memory_mb=psutil.virtual_memory().total // 2**20,
        disk_mb=shutil.disk_usage(disk_root).free // 2**20,
        runtimes=sorted(runtimes),
        labels=dict(labels),
        tee=list(fixed.tee),
        accelerators=detect_accelerators(root, path),
        devices=detect_devices(root),
        engines=detect_engines(path),
        location=location_from(labels),
        slots=slots,
        prefetch=prefetch,
        host_user=host_user,
        bridge=bridge,
    )


def usage(process: psutil.Process) -> Usage:
    memory = psutil.virtual_memory()
    return Usage(
        cpu_percent=psutil.cpu_percent(interval=None),
        memory_used_mb=(memory.total - memory.available) // 2**20,
        memory_free_mb=memory.available // 2**20,
        rss_mb=round(process.memory_info().rss / 2**20, 1),
    )
