"""Chute networking with real Linux: a bridge, network namespaces, veth pairs, nftables
NAT and port mappings, names through per-chute hosts files; runc busybox containers."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import socket
import subprocess
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

from chute_fixtures import Node, network, node, require_chute_host, run_in, until
from edgeplane.chutes.network import ChuteNetwork, NodeNetwork, PortMap, run
from edgeplane.errors import Conflict
from edgeplane.runtimes import Handle
from edgeplane.transport import free_port

pytestmark = pytest.mark.timeout(60)

HTTPD = (
    "mkdir -p /tmp/www && echo hi-{name} > /tmp/www/index.html && exec httpd -f -p 80 -h /tmp/www"
)


def httpd(name: str) -> list[str]:
    return ["sh", "-c", HTTPD.format(name=name)]


@pytest.fixture
async def chutes(tmp_path: Path) -> AsyncIterator[Node]:
    async with node(tmp_path) as found:
        yield found


@pytest.fixture
def net(tmp_path: Path) -> Iterator[NodeNetwork]:
    require_chute_host()
    with network(tmp_path / "net") as found:
        yield found


def node_address() -> str:
    """The node's address on its uplink (not loopback, not ours)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect(("192.0.2.254", 9))  # no packet is sent: it only picks a route
        return str(probe.getsockname()[0])


def get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=3) as answer:
        return str(answer.read().decode())


async def fetched(chutes: Node, handle: Handle, url: str) -> str:
    # busybox's wget -T crashes (static build): timeout bounds it instead
    argv = ["busybox", "timeout", "5", "busybox", "wget", "-q", "-O-", url]
    code, out = await run_in(chutes, handle, *argv)
    return out if code == 0 else ""


def netns_list() -> str:
    return subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout


async def test_chutes_reach_each_other_by_address_and_name(chutes: Node) -> None:
    alpha, at_alpha = await chutes.service("alpha", "web", httpd("alpha"))
    beta, at_beta = await chutes.service("beta", "web", httpd("beta"))
    assert at_alpha.address != at_beta.address

    async def alpha_up() -> bool:
        return await fetched(chutes, beta, f"http://{at_alpha.address}/") == "hi-alpha\n"

    await until(alpha_up, "beta reaching alpha's httpd by address")
    assert await fetched(chutes, beta, "http://alpha/") == "hi-alpha\n"
    assert await fetched(chutes, beta, "http://web.alpha/") == "hi-alpha\n"
    assert await fetched(chutes, alpha, "http://beta/") == "hi-beta\n"
    # a chute's own services by bare name
    assert await fetched(chutes, alpha, "http://web/") == "hi-alpha\n"
    # a chute that comes later is in everyone's hosts file, running containers included
    await chutes.service("gamma", "web", httpd("gamma"))

    async def gamma_named() -> bool:
        return await fetched(chutes, alpha, "http://gamma/") == "hi-gamma\n"

    await until(gamma_named, "alpha reaching gamma by name")


@contextlib.contextmanager
def outside_host(tmp_path: Path) -> Iterator[str]:
    """A namespace standing for a host beyond the node: reachable from the node over a
    veth, with no route back to the chute subnet (so only NAT makes replies arrive)."""
    tag = secrets.token_hex(3)
    ns, veth = f"eptout{tag}", f"epto{tag}"
    base = 4 * secrets.randbelow(60)
    here, there = f"198.51.100.{base + 1}", f"198.51.100.{base + 2}"
    www = tmp_path / "outside"
    www.mkdir()
    (www / "index.html").write_text("hi-outside\n")
    steps = [
        ["ip", "netns", "add", ns],
        ["ip", "link", "add", veth, "type", "veth", "peer", "name", f"{veth}p"],
        ["ip", "link", "set", f"{veth}p", "netns", ns],
        ["ip", "addr", "add", f"{here}/30", "dev", veth],
        ["ip", "link", "set", veth, "up"],
        ["ip", "-n", ns, "addr", "add", f"{there}/30", "dev", f"{veth}p"],
        ["ip", "-n", ns, "link", "set", f"{veth}p", "up"],
    ]
    server = None
    try:
        for step in steps:
            subprocess.run(step, check=True, capture_output=True)
        server = subprocess.Popen(
            ["ip", "netns", "exec", ns, "busybox", "httpd", "-f", "-p", "8080", "-h", str(www)]
        )
        yield there
    finally:
        if server is not None:
            server.kill()
            server.wait()
        subprocess.run(["ip", "link", "del", veth], capture_output=True)
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


async def test_outbound_nat(chutes: Node, tmp_path: Path) -> None:
    with outside_host(tmp_path) as there:
        inside, _ = await chutes.service("alpha", "web", ["sleep", "600"])

        async def reached() -> bool:
            return await fetched(chutes, inside, f"http://{there}:8080/") == "hi-outside\n"

        await until(reached, "a chute reaching a host beyond the node through NAT")


async def test_port_mapping_from_node_outside_and_hairpin(chutes: Node) -> None:
    port = free_port()
    web, _ = await chutes.service(
        "alpha", "web", httpd("alpha"), ports=[PortMap(node_port=port, port=80)]
    )
    other, _ = await chutes.service("beta", "web", ["sleep", "600"])
    address = node_address()

    async def mapped() -> bool:
        try:
            return await asyncio.to_thread(get, f"http://{address}:{port}/") == "hi-alpha\n"
        except OSError:
            return False

    await until(mapped, "the node port reaching the chute's httpd")
    assert await asyncio.to_thread(get, f"http://127.0.0.1:{port}/") == "hi-alpha\n"
    # hairpin: a chute through the node's port to a chute on the same bridge, and the
    # chute itself through its own mapping
    for client in (other, web):

        async def hairpin(client: Handle = client) -> bool:
            return await fetched(chutes, client, f"http://{address}:{port}/") == "hi-alpha\n"

        await until(hairpin, "a chute reaching a node port mapped to a chute")


def test_taken_port_is_refused_before_any_change(net: NodeNetwork) -> None:
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(Conflict, match=f"node port {port}/tcp is taken on the node"):
            net.attach("alpha", "web", [PortMap(node_port=port, port=80)])
    assert net.leases() == []
    assert "ep-alpha.web" not in netns_list()
    free = free_port()
    net.attach("alpha", "web", [PortMap(node_port=free, port=80)])
    with pytest.raises(Conflict, match="taken by chute 'alpha'"):
        net.attach("beta", "web", [PortMap(node_port=free, port=8080)])
    assert [lease.chute for lease in net.leases()] == ["alpha"]
    assert "ep-beta.web" not in netns_list()
    # a different protocol on the same number is another port
    net.attach("beta", "web", [PortMap(node_port=free, port=53, protocol="udp")])


def test_leases_survive_a_restart_and_teardown_leaves_nothing(net: NodeNetwork) -> None:
    port = free_port()
    first = net.attach("alpha", "web", [PortMap(node_port=port, port=80)])
    second = net.attach("beta", "db")
    again = NodeNetwork(net.dir, bridge=net.bridge, subnet=str(net.subnet), table=net.table)
    assert [lease.address for lease in again.leases()] == [first.address, second.address]
    assert again.attach("alpha", "web", [PortMap(node_port=port, port=80)]) == first
    table = subprocess.run(
        ["nft", "list", "table", "ip", net.table], capture_output=True, text=True, check=True
    ).stdout
    assert f"dnat to {first.address}:80" in table

    for _ in range(2):  # idempotent
        again.detach("alpha", "web")
        again.detach("beta", "db")
    assert "ep-alpha.web" not in netns_list() and "ep-beta.db" not in netns_list()
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    assert first.veth not in links and second.veth not in links
    table = subprocess.run(
        ["nft", "list", "table", "ip", net.table], capture_output=True, text=True, check=True
    ).stdout
    assert "dnat to" not in table
    assert again.leases() == [] and not first.hosts_path.exists()
    again.teardown()
    gone = subprocess.run(["nft", "list", "table", "ip", net.table], capture_output=True)
    assert gone.returncode != 0
    assert not Path(f"/sys/class/net/{net.bridge}").exists()


async def test_the_node_adapter_prepares_attaches_and_detaches(net: NodeNetwork) -> None:
    """What ``node.py`` calls, with manifests by shape (host/chute ports, bandwidth)."""
    port = free_port()
    service = SimpleNamespace(
        name="web", ports=[SimpleNamespace(host=port, chute=80, protocol="tcp")]
    )
    bandwidth = SimpleNamespace(model_dump=lambda: {"egress": 4000, "ingress": None})
    manifest = SimpleNamespace(name="alpha", resources=SimpleNamespace(bandwidth_kbit=bandwidth))
    adapter = ChuteNetwork(net)
    netns = await adapter.prepare("alpha", "web", "g1")
    assert netns == "/var/run/netns/ep-alpha.web.g1" and "ep-alpha.web.g1" in netns_list()
    address = await adapter.attach(manifest, service, 0, "g1")
    assert address == net.leases()[0].address
    assert net.leases()[0].ports == [PortMap(node_port=port, port=80)]
    qdisc = await asyncio.to_thread(
        run, ["tc", "-n", "ep-alpha.web.g1", "qdisc", "show", "dev", "eth0"]
    )
    assert "tbf" in qdisc and "4Mbit" in qdisc
    # a re-prepare (worker restart) keeps the mappings
    assert await adapter.prepare("alpha", "web", "g1") == netns
    assert net.leases()[0].ports == [PortMap(node_port=port, port=80)]
    await adapter.detach("alpha", "web", "g1")
    await adapter.detach("alpha", "web", "g1")
    assert net.leases() == [] and "ep-alpha.web.g1" not in netns_list()


def test_two_generations_of_a_service_have_their_own_namespace_and_hand_over_ports(
    net: NodeNetwork,
) -> None:
    port = free_port()
    mapping = [PortMap(node_port=port, port=80)]
    old = net.attach("alpha", "web", mapping, gen="a1")
    new = net.attach("alpha", "web", gen="b2")
    assert new.netns_path != old.netns_path and new.address != old.address
    assert "ep-alpha.web.a1" in netns_list() and "ep-alpha.web.b2" in netns_list()
    # the old generation keeps the names and the mapping until the new one takes over
    assert f"{old.address}\tweb.alpha alpha web" in net.hosts("alpha")
    assert f"dnat to {old.address}:80" in net.ruleset()
    net.take_over("alpha", "web", "b2", mapping)
    rules = net.ruleset()
    assert f"dnat to {new.address}:80" in rules and f"dnat to {old.address}:80" not in rules
    assert f"{new.address}\tweb.alpha alpha web" in net.hosts("alpha")
    assert old.address not in net.hosts("alpha")
    # handing back (an undone update) restores the old generation
    net.take_over("alpha", "web", "a1", mapping)
    assert f"dnat to {old.address}:80" in net.ruleset()
    net.detach("alpha", "web", gen="b2")
    net.detach("alpha", "web", gen="a1")
    assert net.leases() == []
