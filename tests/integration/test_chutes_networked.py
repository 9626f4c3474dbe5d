"""Chutes on the node's real network and resource policy (``network.py``,
``resources.py``) through the Edge API's node: a port mapping reaches the chute from the
node, names resolve between chutes, and a delete or a failed install leaves no lease,
namespace or disk behind."""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from chute_fixtures import chute_image, names, require_chute_host
from edgeplane.chutes import manifest
from edgeplane.chutes.edgeapi import ChuteApi
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


def web(
    name: str, port: int, command: str = HTTPD, version: str = "1", **extra: Any
) -> manifest.Manifest:
    return manifest.parse(
        {
            "name": name,
            "version": version,
            "services": [
                {
                    "name": "web",
                    "image": "busybox",
                    "command": ["sh", "-c", command],
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


async def test_an_update_on_the_same_port_moves_the_mapping_to_the_new_version(
    node: Node,
) -> None:
    net = node.network
    assert isinstance(net, ChuteNetwork)
    port = free_port()
    change = await asyncio.wait_for(node.changes.wait((await node.install(web("up", port))).id), 30)
    assert change.state == "done", change
    old_address = (await node.status("up"))["services"][0]["address"]

    newer = web("up", port, HTTPD.replace("hi from", "v2 from"), version="2")
    change = await asyncio.wait_for(node.changes.wait((await node.update(newer)).id), 30)
    assert change.state == "done", change
    status = await node.status("up")
    assert status["version"] == "2"
    assert status["state"] == "running"
    new_address = status["services"][0]["address"]
    assert new_address is not None and new_address != old_address
    # one generation left, holding the mapping; the old one's namespace is gone
    leases = net.net.leases()
    assert [(lease.address, lease.active) for lease in leases] == [(new_address, True)]
    assert [p.node_port for p in leases[0].ports] == [port]
    async with httpx.AsyncClient(timeout=5) as http:
        answer = await http.get(f"http://127.0.0.1:{port}/")
        assert answer.text == "v2 from web\n"


async def test_an_update_that_never_gets_healthy_leaves_the_old_mapping(node: Node) -> None:
    net = node.network
    assert isinstance(net, ChuteNetwork)
    port = free_port()
    change = await asyncio.wait_for(
        node.changes.wait((await node.install(web("keep", port))).id), 30
    )
    assert change.state == "done", change
    before = net.net.leases()

    broken = web("keep", port, "sleep 600", version="2")
    change = await asyncio.wait_for(node.changes.wait((await node.update(broken)).id), 60)
    assert change.state == "rolled_back", change
    assert net.net.leases() == before
    async with httpx.AsyncClient(timeout=5) as http:
        answer = await http.get(f"http://127.0.0.1:{port}/")
        assert answer.text == "hi from web\n"


async def in_chute(node: Node, name: str, script: str) -> subprocess.CompletedProcess[str]:
    cid = (await node.status(name))["services"][0]["container"]
    assert node.runc is not None
    argv = [node.runc, "--root", str(node.state_dir), "exec", cid, "sh", "-c", script]
    return await asyncio.to_thread(subprocess.run, argv, capture_output=True, text=True)


async def test_a_chute_reads_its_own_status_config_and_node_info_from_inside(node: Node) -> None:
    net = node.network
    assert isinstance(net, ChuteNetwork)
    await asyncio.to_thread(net.net.ensure_bridge)
    api = ChuteApi(node, net.net.gateway, free_port())
    await api.start()
    try:
        for name in ("me", "other"):
            change = await asyncio.wait_for(
                node.changes.wait((await node.install(web(name, free_port()))).id), 30
            )
            assert change.state == "done", change
        url = f"http://{net.net.gateway}:{api.port}/api/v1"
        # static busybox wget may crash on -T: the timeout applet bounds it instead
        get = 'timeout 10 wget -qO- --header "Authorization: Bearer {token}" ' + url + "{path}"
        mode = await in_chute(node, "me", "stat -c %a /run/chute/token")
        assert mode.stdout.strip() == "400", mode
        said = await in_chute(node, "me", get.format(token="$(cat /run/chute/token)", path="/self"))
        assert said.returncode == 0, said.stderr
        mine = json.loads(said.stdout)
        assert mine["name"] == "me" and mine["state"] == "running"
        assert mine["config"] == {}
        said = await in_chute(node, "me", get.format(token="$(cat /run/chute/token)", path="/info"))
        assert said.returncode == 0 and "me" in said.stdout, said
        # another chute's token shows that chute, never this one; a wrong token nothing
        said = await in_chute(
            node, "other", get.format(token="$(cat /run/chute/token)", path="/self")
        )
        assert json.loads(said.stdout)["name"] == "other"
        said = await in_chute(node, "me", get.format(token="nope", path="/self"))
        assert said.returncode != 0 and said.stdout == ""
        # ...and another chute's token, from this chute, is refused: a token is good only
        # from its own chute's addresses
        theirs = (node.root / "installed" / "other" / "config" / "token").read_text()
        said = await in_chute(node, "me", get.format(token=theirs, path="/self"))
        assert said.returncode != 0 and said.stdout == ""
    finally:
        await api.stop()
