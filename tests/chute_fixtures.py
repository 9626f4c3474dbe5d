"""Chute services for tests: real runc containers (busybox) in a real node network.

Each test gets its own bridge, subnet and nft table (random names), so tests never meet
each other's rules, and everything is torn down in ``finally`` whatever happens. A missing
tool or kernel feature fails the test with a message saying what to install.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from edgeplane.chutes.network import Attachment, NodeNetwork, PortMap
from edgeplane.chutes.resources import Resources
from edgeplane.runtimes import ContainerRuntime, RunSpec
from edgeplane.runtimes.base import Handle
from edgeplane.runtimes.busybox import busybox_containers_unavailable, busybox_layer, tar_layer
from oci_fixtures import BUSYBOX_CONFIG, Entry, write_image

TOOLS = {"ip": "iproute2", "nft": "nftables", "tc": "iproute2", "mkfs.ext4": "e2fsprogs"}


def require_chute_host() -> None:
    """Fail (not skip) when this machine cannot run chutes: the issue requires real ones."""
    why = busybox_containers_unavailable()
    if why is not None:
        pytest.fail(f"chute tests need runc containers: {why}")
    for tool, package in TOOLS.items():
        if shutil.which(tool) is None and not os.access(f"/usr/sbin/{tool}", os.X_OK):
            pytest.fail(f"{tool} is missing: install {package} (scripts/system-deps.sh)")
    if not Path("/dev/loop-control").exists():
        pytest.fail("no /dev/loop-control: the kernel has no loop devices (disk_mb needs them)")


def chute_image(images: Path) -> Path:
    """busybox plus an ``/etc`` holding ``hosts`` (the bind-mount target of a chute's names)."""
    etc = tar_layer([Entry("etc"), Entry("etc/hosts", b"127.0.0.1 localhost\n")])
    write_image(images / "busybox", [busybox_layer(), etc], dict(BUSYBOX_CONFIG))
    return images


@dataclass
class Node:
    """One node's network and container runtime, and what a test started on them."""

    net: NodeNetwork
    runtime: ContainerRuntime
    handles: list[Handle] = field(default_factory=list)

    async def service(
        self,
        chute: str,
        service: str,
        command: list[str],
        *,
        ports: Sequence[PortMap] = (),
        resources: Resources | None = None,
        binds: dict[str, str] | None = None,
        cpus: str | None = None,
    ) -> tuple[Handle, Attachment]:
        found = await asyncio.to_thread(self.net.attach, chute, service, ports)
        spec = RunSpec(
            task_id=f"{chute}-{service}",
            attempt=1,
            runtime="container",
            image="busybox",
            command=command,
            daemon=True,
            netns=found.netns_path,
            hosts_file=str(found.hosts_path),
            binds=binds or {},
            cpus=cpus,
            limits=(resources or Resources()).limits(),
        )
        handle = await self.runtime.start(spec, None)
        self.handles.append(handle)
        return handle, found

    async def close(self) -> None:
        for handle in self.handles:
            with contextlib.suppress(Exception):
                await self.runtime.stop(handle)
            with contextlib.suppress(Exception):
                await self.runtime.release(handle)
        await self.runtime.close()
        await asyncio.to_thread(self.net.teardown)


def names() -> tuple[str, str, str]:
    """A bridge, a subnet and a table of this test's own."""
    tag = secrets.token_hex(3)
    third = 100 + secrets.randbelow(150)
    return f"eptb{tag}", f"10.77.{third}.0/24", f"edgeplane_t{tag}"


@contextlib.contextmanager
def network(data: Path) -> Iterator[NodeNetwork]:
    bridge, subnet, table = names()
    net = NodeNetwork(data, bridge=bridge, subnet=subnet, table=table)
    try:
        yield net
    finally:
        net.teardown()


@contextlib.asynccontextmanager
async def node(tmp_path: Path) -> AsyncIterator[Node]:
    require_chute_host()
    images = chute_image(tmp_path / "images")
    bridge, subnet, table = names()
    net = NodeNetwork(tmp_path / "net", bridge=bridge, subnet=subnet, table=table)
    found = Node(net, ContainerRuntime(tmp_path / "worker", images, grace_s=0.3))
    try:
        yield found
    finally:
        await found.close()


async def until(condition: Callable[[], Awaitable[bool]], what: str, within: float = 20) -> None:
    """Poll an async ``condition`` until it is true; fail naming ``what``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not await condition():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def run_in(node_: Node, handle: Handle, *argv: str, within: float = 20) -> tuple[int, str]:
    """``runc exec`` in the service's container: its namespaces, its /etc/hosts."""
    runtime = node_.runtime
    assert runtime.runc is not None
    cid = str(handle.state["container"])
    process = await asyncio.create_subprocess_exec(
        runtime.runc,
        "--root",
        str(runtime.state_dir),
        "exec",
        cid,
        *argv,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(process.communicate(), within)
    return process.returncode or 0, out.decode(errors="replace")


def cgroup_of(handle: Handle) -> str:
    return f"/edgeplane/{handle.state['container']}"
