"""A node's chute network: one bridge, one subnet, a namespace per chute service generation.

Each generation of a chute service (an update runs the new one beside the old) gets its
own network namespace (``ip netns``) joined to the node's
bridge by a veth pair, an address leased from the node's subnet, a default route via the
bridge (the node) and outbound NAT. Port mappings turn a node port into the chute's
address and port (DNAT in PREROUTING for traffic from outside, in OUTPUT for the node's
own connections, masquerade for hairpin and for the node's loopback). Of the generations
of one service, one is *active*: it holds the port mappings and the names; an update's
new generation takes them over in one nft transaction once healthy (``take_over``).
Every rule lives in
one nftables table of our own (``table ip edgeplane``): the whole table is rewritten at
once from the leases (``nft -f`` is atomic), so it never drifts from them and no other
table is ever touched.

Names: each chute gets its own hosts file (bind-mounted at ``/etc/hosts``) listing every
service on the node as ``<service>.<chute>``, each chute's first service also as
``<chute>``, and the chute's own services by bare name. Files are rewritten in place (not
replaced) when chutes come and go, because a bind mount holds the inode it was given.

Leases (address, ports, names of the netns and veth) are kept in ``network.json`` under the
node's data dir, so a worker restart re-attaches chutes with the same addresses. All of it
is synchronous (``ip``, ``nft``, ``tc`` each take milliseconds): callers in asyncio code use
``asyncio.to_thread``, and a lock keeps the calls of several threads (the chute node's,
the container runtime's) one at a time.

Container tasks with ``network: bridge`` (docs/services.md) are attached the same way,
under the reserved chute name ``task`` and without names (:class:`TaskNetwork`): each
published port gets a node port picked from a range, so replicas never collide.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import ipaddress
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import psutil
from pydantic import BaseModel, ConfigDict, Field

from edgeplane.errors import Conflict, EdgeplaneError, Invalid, Unavailable

DEFAULT_BRIDGE = "ep-br0"
DEFAULT_SUBNET = "10.77.0.0/24"
DEFAULT_TABLE = "edgeplane"
NETNS_DIR = Path("/var/run/netns")
#: Linux interface names are at most 15 characters (IFNAMSIZ - 1)
IFNAME_MAX = 15
_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
_IFNAME = re.compile(r"[A-Za-z0-9_.-]{1,15}")
_TABLE = re.compile(r"[A-Za-z0-9_]{1,64}")
Protocol = Literal["tcp", "udp"]


class NetworkError(EdgeplaneError):
    """An ``ip``/``nft``/``tc`` command failed: the node cannot do what was asked."""

    status = 500
    title = "Network setup failed"


class PortMap(BaseModel):
    """A node port forwarded to a port of the chute service."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    node_port: int = Field(ge=1, le=65535)
    port: int = Field(ge=1, le=65535)
    protocol: Protocol = "tcp"


class Lease(BaseModel):
    """What one attached service holds; persisted in ``network.json``."""

    model_config = ConfigDict(extra="ignore")

    chute: str
    service: str
    #: the chute generation ("" in leases written before generations had their own)
    gen: str = ""
    #: the generation that holds the service's port mappings and names
    active: bool = True
    address: str
    netns: str
    veth: str
    ports: list[PortMap] = Field(default_factory=list)
    #: listed in the hosts files (a task container's lease is not)
    named: bool = True


@dataclass(frozen=True)
class Attachment:
    """Where a service's container joins the network (the runc spec's netns path)."""

    netns_path: str
    address: str
    gateway: str
    veth: str
    hosts_path: Path


def lease_key(chute: str, service: str, gen: str = "") -> str:
    return f"{chute}/{service}/{gen}" if gen else f"{chute}/{service}"


def run(argv: Sequence[str], *, stdin: str | None = None, check: bool = True) -> str:
    """Run an ``ip``/``nft``/``tc`` command; its stderr becomes the error's detail."""
    try:
        done = subprocess.run(
            list(argv), input=stdin, capture_output=True, text=True, timeout=30, check=False
        )
    except FileNotFoundError:
        raise Unavailable(
            f"{argv[0]} is not installed (scripts/system-deps.sh installs iproute2 and nftables)"
        ) from None
    if check and done.returncode != 0:
        raise NetworkError(f"{' '.join(argv[:4])}… failed: {done.stderr.strip()}")
    return done.stdout


def bridge_unavailable() -> str | None:
    """Why this machine cannot attach containers to a bridge network; None when it can
    (root, ``ip`` and ``nft``)."""
    if os.geteuid() != 0:
        return "not root"
    for tool in ("ip", "nft"):
        if shutil.which(tool) is None and not os.access(f"/usr/sbin/{tool}", os.X_OK):
            return f"{tool} is not installed (scripts/system-deps.sh)"
    return None


def check_name(value: str, field: str) -> str:
    if not _NAME.fullmatch(value):
        raise Invalid(f"{field} {value!r}: lowercase letters, digits and '-' only", field=field)
    return value


def port_free(port: PortMap) -> bool:
    """Whether a process on the node could bind ``port`` (nothing listens there now)."""
    kind = socket.SOCK_STREAM if port.protocol == "tcp" else socket.SOCK_DGRAM
    with socket.socket(socket.AF_INET, kind) as probe:
        try:
            probe.bind(("0.0.0.0", port.node_port))
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                return False
            raise
    return True


class NodeNetwork:
    """The chute network of one node; ``data_dir`` keeps leases and hosts files."""

    def __init__(
        self,
        data_dir: Path,
        *,
        bridge: str = DEFAULT_BRIDGE,
        subnet: str = DEFAULT_SUBNET,
        table: str = DEFAULT_TABLE,
    ) -> None:
        if not _IFNAME.fullmatch(bridge):
            raise Invalid(f"bridge name {bridge!r}: 1 to {IFNAME_MAX} characters", field="bridge")
        if not _TABLE.fullmatch(table):
            raise Invalid(f"nft table name {table!r}: letters, digits, '_'", field="table")
        try:
            self.subnet = ipaddress.IPv4Network(subnet)
        except ValueError as exc:
            raise Invalid(f"subnet {subnet!r}: {exc}", field="subnet") from None
        if self.subnet.num_addresses < 4:
            raise Invalid(f"subnet {subnet!r} is too small", field="subnet")
        self.dir = data_dir
        self.bridge = bridge
        self.table = table
        self.gateway = str(next(self.subnet.hosts()))
        self.state_path = data_dir / "network.json"
        self.hosts_dir = data_dir / "hosts"
        #: held by every call that reads or changes the leases (reentrant: ``attach``
        #: calls ``detach`` when it fails, a caller may hold it across calls)
        self.lock = threading.RLock()
        self._leases = self._load()

    def unusable(self, sys_net: Path = Path("/sys/class/net")) -> str | None:
        """Why this bridge cannot serve (None: it can), found without changing anything:
        its name taken by an interface that is not a bridge, or its subnet holding an
        address of another interface (the node's routes would send the tasks' traffic
        the wrong way). ``sys_net`` is for tests."""
        device = sys_net / self.bridge
        if device.exists() and not (device / "bridge").is_dir():
            return f"interface {self.bridge} exists and is not a bridge (EDGEPLANE_BRIDGE)"
        for nic, addresses in psutil.net_if_addrs().items():
            if nic == self.bridge:
                continue
            for address in addresses:
                if address.family != socket.AF_INET:
                    continue
                with contextlib.suppress(ValueError):
                    if ipaddress.IPv4Address(address.address) in self.subnet:
                        return (
                            f"subnet {self.subnet} of bridge {self.bridge} holds {nic}'s address "
                            f"{address.address} (EDGEPLANE_BRIDGE_SUBNET)"
                        )
        return None

    # --- the interface the node uses ----------------------------------------------------

    def leases(self) -> list[Lease]:
        with self.lock:
            return list(self._leases.values())

    def free_ports(self, protocols: Sequence[Protocol], low: int, high: int) -> list[int]:
        """A node port in ``low..high`` for each of ``protocols``: none mapped by a lease
        and none a process on the node listens on, each a different one; the scan starts
        at a random port, so a port given up is not handed out again at once. Hold
        :attr:`lock` until the ports are attached, or another caller may pick them too."""
        with self.lock:
            taken = {
                (p.protocol, p.node_port) for lease in self._leases.values() for p in lease.ports
            }
            span = high - low + 1
            start = secrets.randbelow(span)
            picked: list[int] = []
            for protocol in protocols:
                for step in range(span):
                    port = low + (start + step) % span
                    slot = (protocol, port)
                    if slot in taken or port in picked:
                        continue
                    if not port_free(PortMap(node_port=port, port=1, protocol=protocol)):
                        continue
                    picked.append(port)
                    taken.add(slot)
                    start = (start + step + 1) % span
                    break
                else:
                    raise Unavailable(f"no free node port left in {low}-{high} ({protocol})")
            return picked

    def attach(
        self,
        chute: str,
        service: str,
        ports: Sequence[PortMap] = (),
        *,
        gen: str = "",
        named: bool = True,
    ) -> Attachment:
        with self.lock:
            return self._attach(chute, service, ports, gen=gen, named=named)

    def _attach(
        self, chute: str, service: str, ports: Sequence[PortMap], *, gen: str, named: bool
    ) -> Attachment:
        """Give ``chute``/``service`` (generation ``gen``) its namespace, veth, address and
        port mappings.

        Idempotent: attaching what is attached (after a worker restart) re-creates whatever
        is missing with the same address. A node port that is taken (by a process on the
        node or another chute) is refused before anything is changed; one held by another
        generation of the same service is taken over from it (see ``take_over``)."""
        check_name(chute, "chute")
        check_name(service, "service")
        if gen:
            check_name(gen, "generation")
        key = lease_key(chute, service, gen)
        ports = list(ports)
        self._check_ports(key, ports)
        self.ensure_bridge()
        lease = self._leases.get(key)
        if lease is None:
            lease = Lease(
                chute=chute,
                service=service,
                gen=gen,
                # the first generation of a service is active; a later one once it takes over
                active=not self._siblings(chute, service, gen),
                address=self._free_address(),
                netns=f"ep-{chute}.{service}" + (f".{gen}" if gen else ""),
                veth="ve" + hashlib.sha256(key.encode()).hexdigest()[:11],
                ports=[],
                named=named,
            )
        self._leases[key] = lease
        self._save()
        try:
            self._plumb(lease)
            if ports or lease.ports:
                self._move_ports(key, ports)
            self._apply_rules()
            self._write_hosts()
        except EdgeplaneError:
            self.detach(chute, service, gen=gen)
            raise
        return self.attachment(self._leases[key])

    def take_over(self, chute: str, service: str, gen: str, ports: Sequence[PortMap]) -> None:
        """Make generation ``gen`` the service's active one: its port mappings and names
        move from the other generations in one nft transaction (``nft -f`` is atomic)."""
        with self.lock:
            self._take_over(chute, service, gen, ports)

    def _take_over(self, chute: str, service: str, gen: str, ports: Sequence[PortMap]) -> None:
        key = lease_key(chute, service, gen)
        if key not in self._leases:
            raise NetworkError(f"{chute}/{service} generation {gen} is not attached")
        ports = list(ports)
        self._check_ports(key, ports)
        self._move_ports(key, ports)
        self._apply_rules()
        self._write_hosts()

    def lease(self, chute: str, service: str, gen: str = "") -> Lease | None:
        with self.lock:
            return self._leases.get(lease_key(chute, service, gen))

    def _siblings(self, chute: str, service: str, gen: str) -> list[str]:
        """Keys of the other generations of ``chute``/``service``."""
        mine = lease_key(chute, service, gen)
        return [
            key
            for key, lease in self._leases.items()
            if key != mine and (lease.chute, lease.service) == (chute, service)
        ]

    def _move_ports(self, key: str, ports: list[PortMap]) -> None:
        mine = self._leases[key]
        slots = {(p.protocol, p.node_port) for p in ports}
        for other in self._siblings(mine.chute, mine.service, mine.gen):
            lease = self._leases[other]
            kept = [p for p in lease.ports if (p.protocol, p.node_port) not in slots]
            self._leases[other] = lease.model_copy(update={"ports": kept, "active": False})
        self._leases[key] = mine.model_copy(update={"ports": ports, "active": True})
        self._save()

    def detach(self, chute: str, service: str, *, gen: str = "") -> None:
        """Remove the generation's netns, veth, lease, port rules; a no-op when gone."""
        with self.lock:
            self._detach(chute, service, gen)

    def _detach(self, chute: str, service: str, gen: str) -> None:
        key = lease_key(chute, service, gen)
        lease = self._leases.pop(key, None)
        netns = lease.netns if lease else f"ep-{chute}.{service}" + (f".{gen}" if gen else "")
        veth = lease.veth if lease else "ve" + hashlib.sha256(key.encode()).hexdigest()[:11]
        run(["ip", "link", "del", veth], check=False)
        run(["ip", "netns", "del", netns], check=False)
        if lease is not None and lease.active:
            # the names stay with the service: another generation (an undone update's old
            # one) becomes the active one
            for other in self._siblings(chute, service, gen)[:1]:
                self._leases[other] = self._leases[other].model_copy(update={"active": True})
        self._save()
        if self._bridge_exists():
            self._apply_rules()
        if not any(other.chute == chute for other in self._leases.values()):
            with contextlib.suppress(FileNotFoundError):
                (self.hosts_dir / chute).unlink()
        self._write_hosts()

    def hosts(self, chute: str) -> str:
        """The hosts file ``chute`` sees: every service on the node, by name."""
        lines = ["127.0.0.1\tlocalhost"]
        firsts: dict[str, str] = {}
        active = [lease for lease in self._leases.values() if lease.active and lease.named]
        for lease in sorted(active, key=lambda item: (item.chute, item.service)):
            names = [f"{lease.service}.{lease.chute}"]
            if lease.chute not in firsts:
                firsts[lease.chute] = lease.address
                names.append(lease.chute)
            if lease.chute == chute:
                names.append(lease.service)
            lines.append(f"{lease.address}\t{' '.join(dict.fromkeys(names))}")
        return "\n".join(lines) + "\n"

    def attachment(self, lease: Lease) -> Attachment:
        return Attachment(
            netns_path=str(NETNS_DIR / lease.netns),
            address=lease.address,
            gateway=self.gateway,
            veth=lease.veth,
            hosts_path=self.hosts_dir / lease.chute,
        )

    def teardown(self) -> None:
        """Detach everything and remove the bridge and the nft table (node uninstall)."""
        with self.lock:
            for lease in self.leases():
                self.detach(lease.chute, lease.service, gen=lease.gen)
            run(["nft", "delete", "table", "ip", self.table], check=False)
            run(["ip", "link", "del", self.bridge], check=False)
            shutil.rmtree(self.hosts_dir, ignore_errors=True)
            with contextlib.suppress(FileNotFoundError):
                self.state_path.unlink()

    # --- plumbing -----------------------------------------------------------------------

    def ensure_bridge(self) -> None:
        """The bridge with the gateway address, forwarding on, our nft table."""
        with self.lock:
            self._ensure_bridge()

    def _ensure_bridge(self) -> None:
        if not self._bridge_exists():
            run(["ip", "link", "add", self.bridge, "type", "bridge"])
        prefix = self.subnet.prefixlen
        have = run(["ip", "-4", "-o", "addr", "show", "dev", self.bridge])
        if f"{self.gateway}/{prefix}" not in have:
            run(["ip", "addr", "add", f"{self.gateway}/{prefix}", "dev", self.bridge])
        run(["ip", "link", "set", self.bridge, "up"])
        Path("/proc/sys/net/ipv4/ip_forward").write_text("1\n")
        # The node's own connections to 127.0.0.1:<node port> are DNATed to a chute: the
        # kernel only routes a 127/8 source out of an interface with route_localnet on.
        Path(f"/proc/sys/net/ipv4/conf/{self.bridge}/route_localnet").write_text("1\n")
        self._apply_rules()

    def _bridge_exists(self) -> bool:
        return Path(f"/sys/class/net/{self.bridge}").exists()

    def _plumb(self, lease: Lease) -> None:
        if not (NETNS_DIR / lease.netns).exists():
            run(["ip", "netns", "add", lease.netns])
        inside = run(["ip", "-n", lease.netns, "-o", "link", "show"])
        if ": eth0" not in inside:
            run(["ip", "link", "del", lease.veth], check=False)
            peer = "vp" + lease.veth[2:]
            run(["ip", "link", "add", lease.veth, "type", "veth", "peer", "name", peer])
            run(["ip", "link", "set", peer, "netns", lease.netns])
            run(["ip", "-n", lease.netns, "link", "set", peer, "name", "eth0"])
        run(["ip", "link", "set", lease.veth, "master", self.bridge])
        # A chute reaching itself through its own node port: with br_netfilter the DNAT
        # happens on the bridge and the packet must go back out the port it came in by.
        run(["ip", "link", "set", lease.veth, "type", "bridge_slave", "hairpin", "on"])
        run(["ip", "link", "set", lease.veth, "up"])
        prefix = self.subnet.prefixlen
        addrs = run(["ip", "-n", lease.netns, "-4", "-o", "addr", "show", "dev", "eth0"])
        if f"{lease.address}/{prefix}" not in addrs:
            run(
                ["ip", "-n", lease.netns, "addr", "add", f"{lease.address}/{prefix}", "dev", "eth0"]
            )
        run(["ip", "-n", lease.netns, "link", "set", "lo", "up"])
        run(["ip", "-n", lease.netns, "link", "set", "eth0", "up"])
        run(["ip", "-n", lease.netns, "route", "replace", "default", "via", self.gateway])

    def _apply_rules(self) -> None:
        """Rewrite our whole nft table from the leases, atomically."""
        run(["nft", "-f", "-"], stdin=self.ruleset())

    def ruleset(self) -> str:
        """Our table as an ``nft -f`` script (delete-and-recreate in one transaction)."""
        subnet = str(self.subnet)
        dnat: list[str] = []
        for lease in sorted(self._leases.values(), key=lambda item: item.netns):
            for port in lease.ports:
                dnat.append(
                    f"fib daddr type local {port.protocol} dport {port.node_port} "
                    f"dnat to {lease.address}:{port.port}"
                )
        rules = "\n    ".join(dnat)
        table = f"table ip {self.table}"
        return f"""{table} {{}}
delete {table}
{table} {{
  chain prerouting {{
    type nat hook prerouting priority dstnat; policy accept;
    {rules}
  }}
  chain output {{
    type nat hook output priority -100; policy accept;
    {rules}
  }}
  chain postrouting {{
    type nat hook postrouting priority srcnat; policy accept;
    ip saddr {subnet} oifname != "{self.bridge}" masquerade
    ct status dnat oifname "{self.bridge}" ip saddr {subnet} masquerade
    ip saddr 127.0.0.0/8 oifname "{self.bridge}" masquerade
  }}
}}
"""

    def _check_ports(self, key: str, ports: Sequence[PortMap]) -> None:
        service_key = "/".join(key.split("/")[:2])
        seen: set[tuple[str, int]] = set()
        for port in ports:
            slot = (port.protocol, port.node_port)
            if slot in seen:
                raise Invalid(
                    f"node port {port.node_port}/{port.protocol} mapped twice", field="ports"
                )
            seen.add(slot)
            mine = self._leases.get(key)
            for other_key, other in self._leases.items():
                if f"{other.chute}/{other.service}" == service_key:
                    continue  # another generation of this service: taken over from it
                if other_key != key and any((p.protocol, p.node_port) == slot for p in other.ports):
                    holder = (
                        f"container {other.service!r}"
                        if not other.named
                        else f"chute {other.chute!r} service {other.service!r}"
                    )
                    raise Conflict(
                        f"node port {port.node_port}/{port.protocol} is taken by {holder}",
                        field="ports",
                    )
            if mine is not None and port in mine.ports:
                continue  # our own mapping, already in place
            if not port_free(port):
                raise Conflict(
                    f"node port {port.node_port}/{port.protocol} is taken on the node",
                    field="ports",
                )

    def _free_address(self) -> str:
        taken = {lease.address for lease in self._leases.values()} | {self.gateway}
        for host in self.subnet.hosts():
            if str(host) not in taken:
                return str(host)
        raise Unavailable(f"subnet {self.subnet} has no free address left")

    def _write_hosts(self) -> None:
        self.hosts_dir.mkdir(parents=True, exist_ok=True)
        for chute in {lease.chute for lease in self._leases.values() if lease.named}:
            path = self.hosts_dir / chute
            # In place (r+ / truncate), not by rename: a running container's bind mount of
            # /etc/hosts holds this inode and would never see a replaced file.
            fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
            with os.fdopen(fd, "w") as handle:
                handle.truncate(0)
                handle.write(self.hosts(chute))

    def _load(self) -> dict[str, Lease]:
        try:
            raw: Any = json.loads(self.state_path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise Unavailable(f"cannot read {self.state_path}: {exc}") from None
        leases = [Lease.model_validate(item) for item in raw.get("leases", [])]
        return {lease_key(lease.chute, lease.service, lease.gen): lease for lease in leases}

    def _save(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        body = {
            "subnet": str(self.subnet),
            "leases": [lease.model_dump() for lease in self.leases()],
        }
        tmp = self.state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(body, indent=1))
        tmp.replace(self.state_path)


class ChuteNetwork:
    """:class:`NodeNetwork` as the chute node drives it (``node.py``'s ``Network``).

    ``prepare`` (before the container exists) leases the generation's address and creates
    its namespace; ``attach`` (once it runs) adds its chute's bandwidth limits and, when
    ``mapped``, the service's port mappings, refusing a taken port; ``switch`` moves an
    update's port mappings to the new generation; ``detach`` undoes it all. Manifests are
    taken by shape (``service.ports`` of ``host``/``chute``/``protocol``,
    ``manifest.resources.bandwidth_kbit``) so this module does not depend on theirs."""

    def __init__(self, net: NodeNetwork) -> None:
        self.net = net

    async def prepare(self, chute: str, service: str, gen: str = "") -> str | None:
        found = await asyncio.to_thread(
            self.net.attach, chute, service, self._ports(chute, service, gen), gen=gen
        )
        return found.netns_path

    async def attach(
        self, manifest: Any, service: Any, pid: int, gen: str = "", *, mapped: bool = True
    ) -> str | None:
        from edgeplane.chutes.resources import Bandwidth, shape

        ports = self._wanted(service) if mapped else self._ports(manifest.name, service.name, gen)
        found = await asyncio.to_thread(
            self.net.attach, manifest.name, service.name, ports, gen=gen
        )
        limits = Bandwidth.model_validate(manifest.resources.bandwidth_kbit.model_dump())
        netns = Path(found.netns_path).name
        await asyncio.to_thread(shape, netns, found.veth, limits)
        return found.address

    async def switch(self, manifest: Any, gen: str) -> None:
        for service in manifest.services:
            await asyncio.to_thread(
                self.net.take_over, manifest.name, service.name, gen, self._wanted(service)
            )

    async def address(self, chute: str, service: str, gen: str = "") -> str | None:
        lease = self.net.lease(chute, service, gen)
        return None if lease is None else lease.address

    async def detach(self, chute: str, service: str, gen: str = "") -> None:
        await asyncio.to_thread(self.net.detach, chute, service, gen=gen)

    def addresses(self, chute: str) -> set[str]:
        return {lease.address for lease in self.net.leases() if lease.chute == chute}

    @staticmethod
    def _wanted(service: Any) -> list[PortMap]:
        return [
            PortMap(node_port=port.host, port=port.chute, protocol=port.protocol)
            for port in service.ports
        ]

    def _ports(self, chute: str, service: str, gen: str) -> list[PortMap]:
        # a re-prepare (worker restart, resumed change) keeps the mappings it had
        lease = self.net.lease(chute, service, gen)
        return [] if lease is None else list(lease.ports)


#: the lease "chute" of container tasks (docs/services.md); their leases have no names
TASK_CHUTE = "task"
#: the node ports a worker publishes tasks' ports on by default (``--service-ports``):
#: below Linux's default ephemeral range (32768-60999), so no outgoing connection of
#: the node holds one
DEFAULT_SERVICE_PORTS = (20000, 32000)


@dataclass(frozen=True)
class TaskAttachment:
    """Where a task's container joins the network, and its published ports' node ports."""

    netns_path: str
    address: str
    #: the node port of each port asked for, in the same order
    node_ports: list[int]


class TaskNetwork:
    """:class:`NodeNetwork` as the container runtime drives it for container tasks with
    ``network: bridge``: each attempt gets a namespace on the node's bridge (an address,
    outbound NAT) and each of its published ports a node port picked from
    ``port_range`` that no lease maps and no process listens on, picked and mapped under
    the network's lock: two replicas publishing the same port never collide."""

    def __init__(
        self, net: NodeNetwork, port_range: tuple[int, int] = DEFAULT_SERVICE_PORTS
    ) -> None:
        low, high = port_range
        if not 1 <= low <= high <= 65535:
            raise Invalid(f"port range {low}-{high}: 1 <= LOW <= HIGH <= 65535", field="ports")
        self.net = net
        self.low, self.high = low, high

    @staticmethod
    def name(container: str) -> str:
        """The lease name of a container id (``check_name``'s charset, at most 63)."""
        clean = re.sub(r"[^a-z0-9-]+", "-", container.lower()).strip("-") or "c"
        if len(clean) > 63:
            digest = hashlib.sha256(container.encode()).hexdigest()[:12]
            clean = f"{clean[:50].rstrip('-')}-{digest}"
        return clean

    def attach(self, name: str, ports: Sequence[tuple[int, Protocol]]) -> TaskAttachment:
        """Attach container ``name`` with ``ports`` ((container port, protocol) pairs)
        published. Idempotent: a lease already there keeps its node ports."""
        with self.net.lock:
            lease = self.net.lease(TASK_CHUTE, name)
            if lease is not None and [(p.port, p.protocol) for p in lease.ports] == list(ports):
                maps = list(lease.ports)
            else:
                picked = self.net.free_ports([proto for _, proto in ports], self.low, self.high)
                maps = [
                    PortMap(node_port=node, port=port, protocol=proto)
                    for node, (port, proto) in zip(picked, ports, strict=True)
                ]
            found = self.net.attach(TASK_CHUTE, name, maps, named=False)
        return TaskAttachment(found.netns_path, found.address, [p.node_port for p in maps])

    def detach(self, name: str) -> None:
        """Release what ``attach`` made (idempotent)."""
        self.net.detach(TASK_CHUTE, name)
