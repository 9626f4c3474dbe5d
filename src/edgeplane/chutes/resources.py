"""A chute's resource policy and how each part of it is enforced.

- ``cpu_shares`` (default 1024) → runc ``linux.resources.cpu.shares``: ``cpu.shares`` on
  cgroup v1, converted by runc to ``cpu.weight`` on cgroup v2. Shares only matter under
  contention: two busy chutes with 512 and 1024 on one core get 1/3 and 2/3 of it.
- ``memory_mb`` → ``linux.resources.memory.limit``; the kernel OOM-kills past it, and
  :func:`oom_kills` reads the count (``memory.events`` on v2, ``memory.oom_control`` on v1).
- ``pids`` → ``pids.max``.
- ``disk_mb`` (default 1024) → the chute's writable dir is an ext4 image of that size,
  loop-mounted (:class:`DiskVolume`). Not tmpfs: tmpfs lives in RAM (charged to the
  writer's memory limit) and is gone on reboot, while a chute's data must survive both.
- ``bandwidth_kbit`` → ``tc`` token bucket filters on the chute's veth pair:
  ``ingress`` (traffic into the chute) on the host side's egress, ``egress`` (traffic out
  of the chute) on the chute side's egress, inside its namespace. Each side shapes what it
  sends, so no ifb device or policer is needed, and the chute (no CAP_NET_ADMIN) cannot
  lift its own limit.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from edgeplane.chutes.network import NetworkError, run
from edgeplane.errors import Unavailable
from edgeplane.model import Limits
from edgeplane.runtimes.bundle import resources
from edgeplane.runtimes.cgroups import CGROUP_ROOT, cgroup_version

#: tc's token bucket lets at most this long a queue build up before dropping
TBF_LATENCY = "50ms"
#: where a chute's size-limited writable dir is mounted in each of its services
DATA_MOUNT = "/data"


class Bandwidth(BaseModel):
    model_config = ConfigDict(extra="forbid")

    egress: int | None = Field(default=None, ge=8, le=10_000_000)
    ingress: int | None = Field(default=None, ge=8, le=10_000_000)


class Resources(BaseModel):
    """``resources:`` of a chute manifest."""

    model_config = ConfigDict(extra="forbid")

    cpu_shares: int = Field(default=1024, ge=2, le=262_144)
    memory_mb: int | None = Field(default=None, ge=4, le=1_048_576)
    pids: int | None = Field(default=None, ge=1, le=4_194_304)
    disk_mb: int = Field(default=1024, ge=8, le=16_777_216)
    bandwidth_kbit: Bandwidth = Field(default_factory=Bandwidth)

    def limits(self) -> Limits:
        """The cgroup part, as the container runtime takes it."""
        return Limits(cpu_shares=self.cpu_shares, memory_mb=self.memory_mb, pids=self.pids)


# --- cgroups ------------------------------------------------------------------------------


def _cgroup_file(controller: str, cgroup: str, name: str) -> Path:
    relative = cgroup.strip("/")
    if cgroup_version() == 2:
        return CGROUP_ROOT / relative / name
    return CGROUP_ROOT / controller / relative / name


def _keyed(path: Path) -> dict[str, int]:
    found: dict[str, int] = {}
    for line in path.read_text().splitlines():
        key, _, value = line.partition(" ")
        with contextlib.suppress(ValueError):
            found[key] = int(value)
    return found


def oom_kills(cgroup: str) -> int:
    """How many processes the kernel OOM-killed in ``cgroup`` (e.g. ``/edgeplane/<id>``)."""
    if cgroup_version() == 2:
        return _keyed(_cgroup_file("memory", cgroup, "memory.events")).get("oom_kill", 0)
    return _keyed(_cgroup_file("memory", cgroup, "memory.oom_control")).get("oom_kill", 0)


def cpu_usage_ns(cgroup: str) -> int:
    """CPU time used by ``cgroup`` so far, in nanoseconds."""
    if cgroup_version() == 2:
        return _keyed(_cgroup_file("cpu", cgroup, "cpu.stat"))["usage_usec"] * 1000
    return int(_cgroup_file("cpuacct", cgroup, "cpuacct.usage").read_text())


# --- disk ---------------------------------------------------------------------------------


def _mounted(path: Path) -> bool:
    target = str(path.resolve())
    with open("/proc/self/mountinfo") as mounts:
        return any(line.split()[4] == target for line in mounts)


class DiskVolume:
    """A size-limited writable dir: ``image`` (a sparse ext4 file) mounted at ``mountpoint``."""

    def __init__(self, image: Path, mountpoint: Path, size_mb: int) -> None:
        self.image = image
        self.mountpoint = mountpoint
        self.size_mb = size_mb

    def ensure(self) -> Path:
        """Create (first time) and mount the volume; returns the mountpoint."""
        if not self.image.exists():
            self.image.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.image.with_suffix(".new")
            with open(tmp, "wb") as handle:
                handle.truncate(self.size_mb * 1024 * 1024)
            try:
                # no reserved blocks: the chute gets all of disk_mb
                run(["mkfs.ext4", "-q", "-F", "-m", "0", "-E", "nodiscard", str(tmp)])
            except (NetworkError, Unavailable) as exc:
                tmp.unlink(missing_ok=True)
                raise Unavailable(f"cannot create the chute's disk: {exc.detail}") from None
            tmp.replace(self.image)
        self.mountpoint.mkdir(parents=True, exist_ok=True)
        if not _mounted(self.mountpoint):
            try:
                run(["mount", "-o", "loop,nodev,nosuid", str(self.image), str(self.mountpoint)])
            except NetworkError as exc:
                raise Unavailable(f"cannot mount the chute's disk: {exc.detail}") from None
        return self.mountpoint

    def release(self) -> None:
        """Unmount (the data stays in the image); a no-op when not mounted."""
        if self.mountpoint.exists() and _mounted(self.mountpoint):
            run(["umount", str(self.mountpoint)])

    def remove(self) -> None:
        """Unmount and delete the data."""
        self.release()
        with contextlib.suppress(FileNotFoundError):
            os.rmdir(self.mountpoint)
        self.image.unlink(missing_ok=True)


# --- bandwidth ----------------------------------------------------------------------------


def _tbf(kbit: int) -> list[str]:
    # A burst of ~50 ms at the rate (at least two full frames): enough that a busy node's
    # timer jitter does not lose tokens (10 ms measured 10 % under the rate while other
    # work ran), small enough to add at most ~2 % over a few seconds.
    burst = max(3200, kbit * 1000 // 8 // 20)
    return ["tbf", "rate", f"{kbit}kbit", "burst", str(burst), "latency", TBF_LATENCY]


def shape(netns: str, veth: str, bandwidth: Bandwidth) -> None:
    """Apply (or lift) the chute's bandwidth limits on its veth pair."""
    if bandwidth.ingress is not None:
        run(["tc", "qdisc", "replace", "dev", veth, "root", *_tbf(bandwidth.ingress)])
    else:
        run(["tc", "qdisc", "del", "dev", veth, "root"], check=False)
    inside = ["tc", "-n", netns, "qdisc"]
    if bandwidth.egress is not None:
        run([*inside, "replace", "dev", "eth0", "root", *_tbf(bandwidth.egress)])
    else:
        run([*inside, "del", "dev", "eth0", "root"], check=False)


class ChuteEnforcer:
    """The parts of a chute's policy that live in its runc config (``node.py``'s
    ``Enforcer``): cgroup limits, its disk (``disk_mb``) at :data:`DATA_MOUNT`, and its
    names (the network's hosts file) at ``/etc/hosts``. Bandwidth is set on the veth once
    the service runs (:class:`~edgeplane.chutes.network.ChuteNetwork`). ``hosts_dir`` is
    the node network's (``NodeNetwork.hosts_dir``); None: no names."""

    def __init__(self, data_dir: Path, hosts_dir: Path | None = None) -> None:
        self.disks = data_dir / "disks"
        self.hosts_dir = hosts_dir

    def volume(self, chute: str, size_mb: int) -> DiskVolume:
        return DiskVolume(self.disks / f"{chute}.img", self.disks / chute, size_mb)

    def apply(self, config: dict[str, Any], manifest: Any, service: Any) -> None:
        policy = Resources.model_validate(manifest.resources.model_dump())
        config["linux"]["resources"] = resources(policy.limits())
        mount = self.volume(manifest.name, policy.disk_mb).ensure()
        options = ["rbind", "nosuid", "nodev", "rw"]
        config["mounts"].append(
            {"destination": DATA_MOUNT, "type": "bind", "source": str(mount), "options": options}
        )
        if self.hosts_dir is not None:
            hosts = self.hosts_dir / manifest.name
            if not hosts.exists():
                hosts.parent.mkdir(parents=True, exist_ok=True)
                hosts.write_text("127.0.0.1\tlocalhost\n")
            config["mounts"].append(
                {
                    "destination": "/etc/hosts",
                    "type": "bind",
                    "source": str(hosts),
                    "options": ["rbind", "nosuid", "nodev", "ro"],
                }
            )

    def release(self, chute: str) -> None:
        """The chute stopped: unmount its disk (the data stays)."""
        self.volume(chute, 0).release()

    def remove(self, chute: str) -> None:
        """The chute is deleted: its disk and data go."""
        self.volume(chute, 0).remove()
