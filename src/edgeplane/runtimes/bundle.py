"""An OCI runtime bundle's ``config.json`` for one container attempt (pure: no I/O).

The defaults are ``runc spec``'s (runtime spec 1.0): namespaces pid, ipc, uts, mount and
network, the usual masked and read-only paths, the small capability set, ``noNewPrivileges``.
Choices of ours on top: the root filesystem is the image's shared rootfs, **read-only**,
with a fresh tmpfs at ``/tmp`` so a task can write scratch files but never change the
image for the next one; the network namespace is a new, empty one (loopback only) unless
``netns`` names one to join — a chute's, set up by ``edgeplane.chutes.network`` with a veth
on the node's bridge — and then ``hosts_file`` (the chute's names) is bind-mounted
read-only at ``/etc/hosts``; ``binds`` add read-write dirs (a chute's size-limited disk).
``limits`` become cgroup settings: memory_mb → ``memory.limit``, cpu_shares →
``cpu.shares``, pids → ``pids.limit``, and ``cpus`` pins to a cpuset; the cgroup is
``/edgeplane/<container id>``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from edgeplane.errors import TaskFailure
from edgeplane.model import Limits
from edgeplane.runtimes.images import Image

OCI_VERSION = "1.0.2"
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
CAPABILITIES = ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"]
TMP_SIZE = "65536k"
_MIB = 1024 * 1024
_UNSAFE = re.compile(r"[^A-Za-z0-9_.+-]")
_USER = re.compile(r"(\d+)(?::(\d+))?")
_CPUS = re.compile(r"\d+(-\d+)?(,\d+(-\d+)?)*")

MOUNTS: list[dict[str, Any]] = [
    {"destination": "/proc", "type": "proc", "source": "proc"},
    {
        "destination": "/dev",
        "type": "tmpfs",
        "source": "tmpfs",
        "options": ["nosuid", "strictatime", "mode=755", "size=65536k"],
    },
    {
        "destination": "/dev/pts",
        "type": "devpts",
        "source": "devpts",
        "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"],
    },
    {
        "destination": "/dev/shm",
        "type": "tmpfs",
        "source": "shm",
        "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
    },
    {
        "destination": "/dev/mqueue",
        "type": "mqueue",
        "source": "mqueue",
        "options": ["nosuid", "noexec", "nodev"],
    },
    {
        "destination": "/sys",
        "type": "sysfs",
        "source": "sysfs",
        "options": ["nosuid", "noexec", "nodev", "ro"],
    },
    {
        "destination": "/sys/fs/cgroup",
        "type": "cgroup",
        "source": "cgroup",
        "options": ["nosuid", "noexec", "nodev", "relatime", "ro"],
    },
    {
        "destination": "/tmp",
        "type": "tmpfs",
        "source": "tmpfs",
        "options": ["nosuid", "nodev", "mode=1777", f"size={TMP_SIZE}"],
    },
]
MASKED_PATHS = [
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/sys/firmware",
    "/proc/scsi",
]
READONLY_PATHS = ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]


def container_id(task_id: str, attempt: int, token: str) -> str:
    """``ep-<task>-<attempt>-<token>`` in runc's id charset; the token keeps two workers on
    one machine (or a retried attempt number) from ever sharing an id or a cgroup."""
    return f"ep-{_UNSAFE.sub('_', task_id)[:64]}-{attempt}-{token}"


def process_args(command: Sequence[str] | None, image: Image) -> list[str]:
    """The task's command, else the image's Entrypoint + Cmd (Docker's rule)."""
    args = list(command) if command else [*image.entrypoint, *image.cmd]
    if not args:
        raise TaskFailure(
            f"image {image.ref!r} has no Cmd or Entrypoint: give the task a command",
            field="command",
        )
    return args


def process_env(image: Image, env: Mapping[str, str]) -> list[str]:
    """The image's Env with the task's ``env`` over it; a PATH when neither has one."""
    merged: dict[str, str] = {}
    for item in image.env:
        key, _, value = item.partition("=")
        merged[key] = value
    merged.update(env)
    if "PATH" not in merged:
        merged["PATH"] = DEFAULT_PATH
    return [f"{key}={value}" for key, value in merged.items()]


def process_user(image: Image) -> dict[str, int]:
    """The image's numeric ``User`` (``uid[:gid]``); root when it names none."""
    if not image.user:
        return {"uid": 0, "gid": 0}
    found = _USER.fullmatch(image.user)
    if found is None:
        raise TaskFailure(
            f"image {image.ref!r} runs as user {image.user!r}: only numeric uid[:gid] is supported",
            field="image",
        )
    uid = int(found.group(1))
    return {"uid": uid, "gid": int(found.group(2) or uid)}


def resources(limits: Limits, cpus: str | None = None) -> dict[str, Any]:
    """``linux.resources`` from a task's limits (devices: deny all but runc's defaults)."""
    found: dict[str, Any] = {"devices": [{"allow": False, "access": "rwm"}]}
    if limits.memory_mb is not None:
        found["memory"] = {"limit": limits.memory_mb * _MIB}
    cpu: dict[str, Any] = {}
    if limits.cpu_shares is not None:
        cpu["shares"] = limits.cpu_shares
    if cpus is not None:
        if not _CPUS.fullmatch(cpus):
            raise TaskFailure(f"cpus {cpus!r}: a cpuset such as '0' or '0-1,3'", field="cpus")
        cpu["cpus"] = cpus
    if cpu:
        found["cpu"] = cpu
    if limits.pids is not None:
        found["pids"] = {"limit": limits.pids}
    return found


def runtime_config(
    *,
    cid: str,
    rootfs: Path,
    image: Image,
    command: Sequence[str] | None,
    env: Mapping[str, str],
    limits: Limits,
    netns: str | None = None,
    hosts_file: str | None = None,
    binds: Mapping[str, str] | None = None,
    cpus: str | None = None,
    accounted: Sequence[tuple[int, int]] = (),
) -> dict[str, Any]:
    """The whole ``config.json`` of one attempt. ``accounted``: disks (major, minor)
    given a rule that limits nothing, so cgroup v1 counts their io (``cgroups.py``)."""
    network: dict[str, str] = {"type": "network"}
    if netns is not None:
        network["path"] = netns
    mounts = [dict(mount) for mount in MOUNTS]
    if hosts_file is not None:
        mounts.append(_bind("/etc/hosts", hosts_file, readonly=True))
    for destination, source in sorted((binds or {}).items()):
        mounts.append(_bind(destination, source, readonly=False))
    found = resources(limits, cpus)
    if accounted:
        rules = [{"major": major, "minor": minor, "rate": 0} for major, minor in accounted]
        found["blockIO"] = {"throttleReadBpsDevice": rules}
    return {
        "ociVersion": OCI_VERSION,
        "process": {
            "terminal": False,
            "user": process_user(image),
            "args": process_args(command, image),
            "env": process_env(image, env),
            "cwd": image.workdir or "/",
            "capabilities": {
                kind: list(CAPABILITIES)
                for kind in ("bounding", "effective", "permitted", "ambient")
            },
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
            "noNewPrivileges": True,
        },
        "root": {"path": str(rootfs), "readonly": True},
        "hostname": cid[:63],
        "mounts": mounts,
        "linux": {
            "cgroupsPath": f"/edgeplane/{cid}",
            "resources": found,
            "namespaces": [
                {"type": "pid"},
                network,
                *({"type": kind} for kind in ("ipc", "uts", "mount")),
            ],
            "maskedPaths": list(MASKED_PATHS),
            "readonlyPaths": list(READONLY_PATHS),
        },
    }


def _bind(destination: str, source: str, *, readonly: bool) -> dict[str, Any]:
    if not destination.startswith("/") or ".." in destination.split("/"):
        raise TaskFailure(f"mount point {destination!r}: an absolute path", field="binds")
    options = ["rbind", "nosuid", "nodev", "ro" if readonly else "rw"]
    return {"destination": destination, "type": "bind", "source": source, "options": options}
