"""Chutes on the node's real network and resource policy (``network.py``,
``resources.py``) through the Edge API's node: a port mapping reaches the chute from the
node, names resolve between chutes, and a delete or a failed install leaves no lease,
namespace or disk behind."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from chute_fixtures import chute_image, names, require_chute_host
from edgeplane.chutes import manifest
from edgeplane.chutes.network import ChuteNetwork, NodeNetwork
from edgeplane.chutes.node import Node
from edgeplane.chutes.resources import ChuteEnforcer
from edgeplane.transport import free_port

pytestmark = pytest.mark.timeout(120)

HTTPD = (
    "mkdir -p /tmp/w && echo hi from $HOSTNAME > /tmp/w/index.html && httpd -f -p 8080 -h /tmp/w"
)


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[Node]:
    require_chute_host()
    images = chute_image(tmp_path / "images")
    bridge, subnet, table = names()
    net = NodeNetwork(tmp_path / "net", bridge=bridge, subnet=subnet, table=table)
    found = Node(
        tmp_path / "worker",
        images,
        network=ChuteNetwork(net),
        enforcer=ChuteEnforcer(tmp_path / "worker" / "chutes", hosts_dir=net.hosts_dir),
        grace_s=0.3,
        settle_s=0.5,
        healthy_within_s=10,
    )
    await found.start()
    try:
        yield found
    finally:
        for name in found.names():
            await asyncio.wait_for(found.changes.wait((await found.act(name, "delete")).id), 30)
        await found.close()
        await asyncio.to_thread(net.teardown)


def web(name: str, port: int, **extra: Any) -> manifest.Manifest:
    return manifest.parse(
        {
            "name": name,
            "version": "1",
            "services": [
                {
                    "name": "web",
                    "image": "busybox",
                    "command": ["sh", "-c", HTTPD],
                    "ports": [{"host": port, "chute": 8080}],
                    "healthcheck": {"http": {"port": 8080}, "interval_s": 0.1},
                }
            ],
            "resources": {"disk_mb": 16, "memory_mb": 64},
            **extra,
        }
    )


async def test_a_port_mapping_reaches_the_chute_and_delete_cleans_up(node: Node) -> None:
    net = node.network
    assert isinstance(net, ChuteNetwork)
    port = free_port()
    change = await asyncio.wait_for(
        node.changes.wait((await node.install(web("one", port))).id), 30
    )
    assert change.state == "done", change
    status = await node.status("one")
    assert status["state"] == "running"
    address = status["services"][0]["address"]
    assert address is not None and address == net.net.leases()[0].address
    assert (node.root / "disks" / "one.img").exists()  # disk_mb: the chute's own volume
    async with httpx.AsyncClient(timeout=5) as http:
        answer = await http.get(f"http://127.0.0.1:{port}/")
        assert answer.text == "hi from web\n"
        answer = await http.get(f"http://{address}:8080/")
        assert answer.status_code == 200

    change = await asyncio.wait_for(node.changes.wait((await node.act("one", "delete")).id), 30)
    assert change.state == "done", change
    assert net.net.leases() == []
    assert not (node.root / "disks" / "one.img").exists()


async def test_a_failed_install_leaves_no_network_behind(node: Node) -> None:
    net = node.network
    assert isinstance(net, ChuteNetwork)
    broken = manifest.parse(
        {
            "name": "broken",
            "version": "1",
            "services": [{"name": "web", "image": "busybox", "command": ["sh", "-c", "exit 1"]}],
            "resources": {"disk_mb": 16},
        }
    )
    change = await asyncio.wait_for(node.changes.wait((await node.install(broken)).id), 30)
    assert change.state == "rolled_back", change
    assert net.net.leases() == []
    assert node.names() == []
    assert not (node.root / "disks" / "broken.img").exists()
