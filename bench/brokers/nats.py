"""A 3-node NATS cluster serving MQTT on local ports (nats-server 2.9, JetStream on).

Each node runs ``deploy/brokers/nats/nats.conf`` (the file docs/brokers.md shows), its
ports and store given through the environment as an operator would give them; nothing
here writes a config of its own, so what the tests run is what the docs tell people to
run. ``launch`` yields the nodes' MQTT URLs comma-separated (``mqtt://a:1,mqtt://b:2``):
edgeplane's links take such a list and move to the next node when theirs goes away.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from bench.brokers.base import BrokerUnavailable
from edgeplane.errors import Unavailable
from edgeplane.lifeline import die_with_parent
from edgeplane.transport import free_port

CONFIG = Path(__file__).resolve().parents[2] / "deploy" / "brokers" / "nats" / "nats.conf"
NODES = 3
HOST = "127.0.0.1"
#: a cold 3-node cluster elects its JetStream meta leader in ~1 s here, and the first
#: MQTT connect creates the MQTT streams (replicated 3 times) before it is answered
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 5.0
LOG_TAIL_BYTES = 4000
#: what a node logs when a port picked free was taken before it bound it
PORT_TAKEN = "address already in use"


def executable() -> str:
    """The nats-server to run: on PATH, else Debian's /usr/sbin one."""
    found = shutil.which("nats-server") or shutil.which("nats-server", path="/usr/sbin")
    if found is None:
        raise BrokerUnavailable("nats-server is not installed (scripts/system-deps.sh installs it)")
    return found


@dataclass
class Node:
    """One nats-server of the cluster, in its own process group."""

    name: str
    directory: Path
    port: int = field(default_factory=free_port)
    cluster_port: int = field(default_factory=free_port)
    mqtt_port: int = field(default_factory=free_port)
    monitor_port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    _log: IO[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mqtt://{HOST}:{self.mqtt_port}"

    @property
    def route(self) -> str:
        return f"nats://{HOST}:{self.cluster_port}"

    @property
    def log_path(self) -> Path:
        return self.directory / "nats.log"

    def spawn(self, routes: list[str]) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        env = {
            **os.environ,
            "NATS_NAME": self.name,
            "NATS_HOST": HOST,
            "NATS_PORT": str(self.port),
            "NATS_MONITOR_PORT": str(self.monitor_port),
            "NATS_CLUSTER_PORT": str(self.cluster_port),
            "NATS_MQTT_PORT": str(self.mqtt_port),
            "NATS_STORE": str(self.directory / "store"),
            **{f"NATS_ROUTE_{i}": route for i, route in enumerate(routes, 1)},
        }
        self._log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [executable(), "-c", str(CONFIG)],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=self._log,
            env=env,
            start_new_session=True,
            preexec_fn=die_with_parent(),
        )

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL: the node vanishes without a word to its clients or peers."""
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        """SIGTERM (nats-server shuts down cleanly), SIGKILL if it lingers."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        elif proc is not None:
            proc.wait()
        if self._log is not None:
            self._log.close()
            self._log = None

    def log_tail(self) -> str:
        try:
            return self.log_path.read_bytes()[-LOG_TAIL_BYTES:].decode(errors="replace")
        except OSError:
            return ""

    def _monitor(self, path: str) -> dict[str, object] | None:
        """A monitoring endpoint's JSON (None while the node does not answer)."""
        url = f"http://{HOST}:{self.monitor_port}/{path}"
        try:
            with urllib.request.urlopen(url, timeout=1) as answer:
                found = json.load(answer)
        except (OSError, ValueError):
            return None
        return found if isinstance(found, dict) else None

    def jetstream_leader(self) -> str | None:
        """The JetStream meta leader this node knows of (its /jsz), else None."""
        meta = (self._monitor("jsz") or {}).get("meta_cluster")
        leader = meta.get("leader") if isinstance(meta, dict) else None
        return leader if isinstance(leader, str) and leader else None

    def clients(self) -> int | None:
        """How many clients (MQTT ones included) are connected to this node (/connz)."""
        count = (self._monitor("connz") or {}).get("num_connections")
        return count if isinstance(count, int) else None

    def mqtt_connects(self) -> bool:
        """Whether the node answers an MQTT 3.1.1 CONNECT with CONNACK "accepted" (NATS
        answers only once JetStream holds the account's MQTT streams)."""
        return mqtt_connects(HOST, self.mqtt_port)


def mqtt_connects(host: str, port: int, timeout_s: float = 5.0) -> bool:
    """Whether ``host:port`` accepts an MQTT 3.1.1 CONNECT (a raw one: no client library
    needed, and nothing left behind but a clean session it disconnects)."""
    client_id = f"ready-{os.getpid()}-{port}".encode()  # short: one length byte below
    variable = b"\x00\x04MQTT\x04\x02\x00\x0a"  # level 4 (3.1.1), clean session, 10 s
    body = variable + struct.pack("!H", len(client_id)) + client_id
    connect = bytes([0x10, len(body)]) + body
    try:
        with socket.create_connection((host, port), timeout=timeout_s) as sock:
            sock.sendall(connect)
            answer = b""
            while len(answer) < 4:
                chunk = sock.recv(4 - len(answer))
                if not chunk:
                    return False
                answer += chunk
            accepted = answer == b"\x20\x02\x00\x00"
            if accepted:
                sock.sendall(b"\xe0\x00")  # DISCONNECT
            return accepted
    except OSError:
        return False


class NatsCluster:
    """Three nats-server nodes routed to each other, each serving MQTT."""

    def __init__(self, directory: Path, nodes: int = NODES) -> None:
        self.nodes = [Node(f"n{i}", directory / f"n{i}") for i in range(1, nodes + 1)]

    @property
    def url(self) -> str:
        """Every node's MQTT URL, comma-separated: what ``--broker`` takes."""
        return ",".join(node.url for node in self.nodes)

    def start(self) -> str:
        routes = [node.route for node in self.nodes]
        try:
            for node in self.nodes:
                node.spawn(routes)
            self.ready()
        except BaseException:
            self.stop()
            raise
        return self.url

    def ready(self, timeout_s: float = START_TIMEOUT_S) -> None:
        """Wait until every node knows a JetStream meta leader and takes an MQTT
        connection; ``Unavailable`` with the nodes' log tails otherwise (at once when a
        node exited: a port taken, say)."""
        deadline = time.monotonic() + timeout_s
        waiting = list(self.nodes)
        while waiting:
            for node in self.nodes:
                if not node.alive():
                    self._fail(f"{node.name} exited with code {node.proc and node.proc.poll()}")
                if PORT_TAKEN in node.log_tail():  # a listener that failed: it runs on
                    self._fail(f"{node.name} could not listen on one of its ports")
            node = waiting[0]
            if node.jetstream_leader() is not None and node.mqtt_connects():
                waiting.pop(0)
                continue
            if time.monotonic() > deadline:
                self._fail(f"{node.name} has no JetStream leader or refuses MQTT")
            time.sleep(0.05)

    def _fail(self, reason: str) -> None:
        tails = "\n".join(f"--- {n.name}:\n{n.log_tail()}" for n in self.nodes)
        raise Unavailable(f"NATS cluster not ready: {reason}\n{tails}")

    def stop(self) -> None:
        for node in self.nodes:
            if node.proc is not None and node.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(node.proc.pid, signal.SIGTERM)
        for node in self.nodes:
            node.stop()


#: starts tried when a port picked free was taken before the node bound it
PORT_RACES = 3


@contextlib.contextmanager
def cluster(directory: Path) -> Iterator[NatsCluster]:
    """A started cluster, stopped on the way out whatever happens inside."""
    for attempt in range(PORT_RACES):
        nodes = NatsCluster(directory / f"try{attempt}" if attempt else directory)
        try:
            nodes.start()
            break
        except Unavailable as failed:
            # free_port() only says a port was free: another process may bind it first
            if PORT_TAKEN not in failed.detail or attempt + 1 == PORT_RACES:
                raise
    try:
        yield nodes
    finally:
        nodes.stop()


@contextlib.contextmanager
def launch(directory: Path) -> Iterator[str]:
    """The broker URL of a fresh 3-node cluster (every node's, comma-separated)."""
    with cluster(directory) as nodes:
        yield nodes.url
