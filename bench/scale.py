"""The scale benchmark: one manager, thousands of simulated workers, a real Mosquitto.

For each worker count a fresh Mosquitto (``set_tcp_nodelay true``) and a fresh
``edgeplane manager`` (SQLite store) run as child processes, exactly as deployed. The
workers are light fakes, several thousand per process, each with its own MQTT connection
(client id, clean session, last will = ``alive online=False``) speaking the real protocol
through the real codec: subscribe to ``welcome`` and ``cmd``, ``hello`` with real
capabilities, wait for ``welcome``, then ``alive`` every heartbeat with their session,
each fake at its own random phase of the period. paho-mqtt is driven by one asyncio loop
per process through paho's external-loop hooks, so a fake costs a socket and a few objects.

Figures, per worker count:

- **registration**: every fake connects (a bounded number of handshakes in flight per
  process), time until the last ``welcome``, and the hello → welcome round trip. Fakes not
  registered within ``--register-budget-s`` give up (a clean DISCONNECT: no will), and the
  rest of the run measures the workers that did register;
- **heartbeats**, after a settling period, over ``--duration-s``: the manager's CPU (psutil
  CPU time / wall time), RSS, and the **heartbeat processing lag**: how far behind the
  manager's view is. Each fake reports its beat number in ``usage.rss_mb`` (a fake has no
  RSS worth reporting) and logs when it sent each beat; ``GET /workers/{id}`` returns
  ``last_seen`` (the manager's wall clock when it handled an ``alive``) together with that
  usage, so ``last_seen - sent_at[beat]`` is the exact lag of the beat the manager last
  handled: broker transit + the manager's inbox queue + parsing. A sample of workers is
  read every heartbeat during the window; every worker once at its end;
- **lost workers**: some fakes drop their TCP connection with a reset (the broker then
  publishes their last will), others freeze with the connection open (a hung host: no
  will until the broker's keepalive runs out, so only missed heartbeats reveal it). The
  time to detection is read from the manager's log (its ``worker offline`` line) and from
  the API (polled), from the kill and, for a freeze, from the last alive sent;
- **placement through the API**: 300 ``POST /tasks`` one at a time (each answers with the
  task already placed on one of the workers) and one batch of 1,000, against this many
  workers; the pure scheduler alone is in ``bench.placement``.

Fakes, Mosquitto and the manager share the machine's cores: the fakes' CPU is reported
next to the manager's. Nothing here asserts on time: this is a measurement, not a test.

    python -m bench.scale [--workers 1000,5000,10000] [--heartbeat-s 5] [--duration-s 60]
                          [--quick] [--json bench/results/scale.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import multiprocessing
import os
import random
import re
import resource
import shlex
import socket
import struct
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack, suppress
from dataclasses import asdict, dataclass, field
from enum import Enum
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

import httpx
import paho.mqtt.client as mqtt
import psutil
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from rich.console import Console

from bench.spine import (
    Child,
    Phase,
    clean_env,
    machine,
    ms,
    percentile,
    phase_table,
    process,
    rss_mb,
    wasm_noop,
)
from edgeplane import Client
from edgeplane.clock import new_id
from edgeplane.errors import EdgeplaneError, Invalid
from edgeplane.model import Worker
from edgeplane.protocol import (
    AckEvents,
    Alive,
    Hello,
    Reregister,
    StartTasks,
    TaskEvent,
    TaskEvents,
    Topics,
    Welcome,
    decode,
    encode,
)
from edgeplane.protocol import parse_body as parse_message
from edgeplane.transport.broker import MosquittoProcess, free_port
from edgeplane.worker import capabilities

DESCRIPTION = "One manager, thousands of simulated workers heartbeating on a real Mosquitto."
DEFAULT_JSON = Path(__file__).parent / "results" / "scale.json"
HIERARCHY_JSON = Path(__file__).parent / "results" / "scale-hierarchy.json"
HIERARCHY_WORKERS = 10_000
DEFAULT_WORKERS = (1000, 5000, 10_000)
QUICK_WORKERS = (200,)
QUICK_DURATION_S = 15.0
EDGEPLANE = [sys.executable, "-m", "edgeplane"]
HOST = "127.0.0.1"
DOMAIN = "edgeplane"
CLUSTER = "local"
#: What the real worker's MQTT link uses.
KEEPALIVE_S = 30
#: Fakes per process: a process's file descriptors and one core's worth of Python.
FAKES_PER_PROCESS = 2500
#: MQTT handshakes (connect → welcome) in flight per fake process.
CONNECT_WINDOW = 50
#: How often each fake's paho client gets its housekeeping call (keepalive pings).
MISC_EVERY_S = 2.0
#: Workers whose lag is read every heartbeat during the window (each a ``GET``).
LAG_SAMPLE = 50
#: Fakes lost per mode (last will, frozen) after the window.
LOST_PER_MODE = 5
#: The manager's default: offline after this many missed heartbeats.
MISSED_BEATS = 3
API_POLL_S = 0.05
READY_TIMEOUT_S = 60.0
REPLY_TIMEOUT_S = 60.0
#: Targets from the scale issue, at 10,000 workers.
TARGET_CPU_PERCENT = 100.0
TARGET_RSS_MB = 500.0
TARGET_DETECT_BEATS = 3
MB = 2**20
MANAGER_URL = re.compile(r"serving (http://\S+)")
FALSE_OFFLINE = "beating workers marked offline in the window (log)"


# --- the fakes (run in child processes) ---------------------------------------------------


@dataclass(frozen=True)
class FleetSpec:
    """What one fake process needs: which workers it plays and where the broker is."""

    worker_ids: tuple[str, ...]
    port: int
    window: int
    seed: int
    cluster: str = CLUSTER
    #: answer every ``task.start`` with the tasks completed (one ``task.events``), as a
    #: worker running no-ops would; else the tasks stay ``scheduled``
    complete: bool = False


class FakeState(Enum):
    IDLE = "idle"
    CONNECTING = "connecting"
    LIVE = "live"
    FAILED = "failed"
    DROPPED = "dropped"
    KILLED = "killed"
    FROZEN = "frozen"
    #: not registered when the registration budget ran out; left cleanly (no will)
    ABANDONED = "abandoned"


class Fake:
    """One simulated worker: its connection, session and the send time of every beat."""

    __slots__ = (
        "alive",
        "beat",
        "client",
        "hello",
        "id",
        "next_at",
        "sent",
        "session",
        "state",
        "t_hello",
        "t_welcome",
        "timer",
    )

    def __init__(self, worker_id: str, session: str, hello: dict[str, Any]) -> None:
        self.id = worker_id
        self.session = session
        self.hello = hello
        self.alive = Alive(session=session).model_dump(mode="json")
        self.client: mqtt.Client | None = None
        self.state = FakeState.IDLE
        self.beat = 0
        self.sent: list[float] = []
        self.t_hello = 0.0
        self.t_welcome = 0.0
        self.next_at = 0.0
        self.timer: asyncio.TimerHandle | None = None


class Fleet:
    """The fakes of one process on one asyncio loop, through paho's external-loop hooks
    (what aiomqtt does, minus its per-client tasks, which 2,500 clients cannot afford)."""

    def __init__(self, spec: FleetSpec, conn: Connection, loop: asyncio.AbstractEventLoop):
        self.spec = spec
        self.conn = conn
        self.loop = loop
        self.topics = Topics(DOMAIN, spec.cluster)
        self.rng = random.Random(spec.seed)
        self.window = asyncio.Semaphore(spec.window)
        self.done = asyncio.Event()
        self.period = 5.0
        self.errors: list[str] = []
        self.reregisters = 0
        self.unexpected = 0
        #: task traffic: task.start commands and the tasks in them, task.events sent,
        #: task.ack received
        self.traffic = {"starts": 0, "tasks": 0, "events": 0, "acks": 0}
        self.t_register = 0.0
        self.registering: asyncio.Task[None] | None = None
        self.usage = capabilities.usage(psutil.Process()).model_dump(mode="json")
        with tempfile.TemporaryDirectory(prefix="edgeplane-scale-") as tmp:
            caps = capabilities.detect(runtimes=["wasm"], labels={}, slots=8, data_dir=Path(tmp))
        self.fakes: dict[str, Fake] = {}
        for n, worker_id in enumerate(spec.worker_ids):
            session = new_id()
            mine = caps.model_copy(update={"hostname": worker_id, "labels": {"site": "abc"[n % 3]}})
            hello = Hello(worker_id=worker_id, session=session, capabilities=mine)
            self.fakes[worker_id] = Fake(worker_id, session, hello.model_dump(mode="json"))

    # --- paho's hooks into this loop
    def _socket_open(self, client: mqtt.Client, fake: Fake, sock: Any) -> None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # as MqttLink does
        self.loop.add_reader(sock, client.loop_read)

    def _socket_close(self, client: mqtt.Client, fake: Fake, sock: Any) -> None:
        self.loop.remove_reader(sock)

    def _register_write(self, client: mqtt.Client, fake: Fake, sock: Any) -> None:
        self.loop.add_writer(sock, client.loop_write)

    def _unregister_write(self, client: mqtt.Client, fake: Fake, sock: Any) -> None:
        self.loop.remove_writer(sock)

    # --- the protocol
    def _client(self, fake: Fake) -> mqtt.Client:
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"edgeplane-worker-{DOMAIN}-{self.spec.cluster}-{fake.id}",
            clean_session=True,
            userdata=fake,
        )
        will = Alive(online=False, session=fake.session)
        client.will_set(self.topics.alive(fake.id), encode("alive", will), qos=1)
        client.on_socket_open = self._socket_open
        client.on_socket_close = self._socket_close
        client.on_socket_register_write = self._register_write
        client.on_socket_unregister_write = self._unregister_write
        client.on_connect = self._connected
        client.on_subscribe = self._subscribed
        client.on_message = self._message
        client.on_disconnect = self._disconnected
        return client

    def _connect(self, fake: Fake) -> None:
        fake.client = self._client(fake)
        fake.state = FakeState.CONNECTING
        try:
            fake.client.connect(HOST, self.spec.port, keepalive=KEEPALIVE_S)
        except OSError as exc:
            self._fail(fake, f"connect: {exc}")

    def _fail(self, fake: Fake, error: str) -> None:
        if fake.state is FakeState.CONNECTING:
            self.window.release()
        fake.state = FakeState.FAILED
        if len(self.errors) < 5:
            self.errors.append(f"{fake.id}: {error}")

    def _connected(
        self,
        client: mqtt.Client,
        fake: Fake,
        flags: mqtt.ConnectFlags,
        code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if code.is_failure:
            self._fail(fake, f"connack: {code}")
            return
        client.subscribe([(self.topics.welcome(fake.id), 1), (self.topics.cmd(fake.id), 1)])

    def _subscribed(
        self,
        client: mqtt.Client,
        fake: Fake,
        mid: int,
        codes: list[ReasonCode],
        properties: Properties | None,
    ) -> None:
        # Like the real agent: hello once subscribed, so the welcome cannot be missed.
        fake.t_hello = time.time()
        self._send_hello(fake)

    def _send_hello(self, fake: Fake) -> None:
        assert fake.client is not None
        fake.client.publish(self.topics.hello(fake.id), encode("hello", fake.hello), qos=1)

    def _message(self, client: mqtt.Client, fake: Fake, message: mqtt.MQTTMessage) -> None:
        try:
            envelope = decode(message.payload)
            body = parse_message(envelope.type, envelope.body)
        except Invalid:
            self.unexpected += 1
            return
        if isinstance(body, Welcome) and body.session == fake.session:
            if fake.state is FakeState.CONNECTING:
                fake.t_welcome = time.time()
                fake.state = FakeState.LIVE
                self.period = body.heartbeat_s
                self.window.release()
                # Each fake at its own phase: a fleet does not beat in lockstep.
                fake.next_at = self.loop.time() + self.rng.uniform(0, self.period)
                fake.timer = self.loop.call_at(fake.next_at, self._beat, fake)
        elif isinstance(body, Reregister):
            self.reregisters += 1
            self._send_hello(fake)
        elif isinstance(body, StartTasks):
            self.traffic["starts"] += 1
            self.traffic["tasks"] += len(body.tasks)
            if self.spec.complete and body.tasks:
                self._complete(fake, body)
        elif isinstance(body, AckEvents):
            self.traffic["acks"] += 1
        else:
            self.unexpected += 1

    def _complete(self, fake: Fake, start: StartTasks) -> None:
        """Every task of the command completed at once, in one message (a real worker
        batches the events of tasks that end together)."""
        assert fake.client is not None
        now = time.time()
        done = [
            TaskEvent(task_id=t.task_id, attempt=t.attempt, state="completed", ts=now,
                      started_at=now)
            for t in start.tasks
        ]  # fmt: skip
        payload = encode("task.events", TaskEvents(events=done))
        fake.client.publish(self.topics.events(fake.id), payload, qos=1)
        self.traffic["events"] += 1

    def _disconnected(
        self,
        client: mqtt.Client,
        fake: Fake,
        flags: mqtt.DisconnectFlags,
        code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if fake.state is FakeState.CONNECTING:
            self._fail(fake, f"disconnected while registering: {code}")
        elif fake.state is FakeState.LIVE:
            fake.state = FakeState.DROPPED
            if len(self.errors) < 5:
                self.errors.append(f"{fake.id}: dropped: {code}")

    def _beat(self, fake: Fake) -> None:
        fake.timer = None
        if fake.state is not FakeState.LIVE or fake.client is None:
            return
        fake.beat += 1
        usage = {**self.usage, "rss_mb": float(fake.beat)}  # the beat number: see the top
        payload = encode("alive", {**fake.alive, "usage": usage})
        # Taken before the publish: paho writes it on a later loop turn, so the lag measured
        # includes this process's own delay and is never flattered by it.
        fake.sent.append(time.time())
        # QoS 0, as the real agent sends it (no PUBACK per heartbeat).
        fake.client.publish(self.topics.alive(fake.id), payload, qos=0)
        fake.next_at += self.period
        fake.timer = self.loop.call_at(fake.next_at, self._beat, fake)

    async def _housekeeping(self) -> None:
        process = psutil.Process()
        last_usage = 0.0
        while True:
            await asyncio.sleep(MISC_EVERY_S)
            for fake in self.fakes.values():
                if fake.state is FakeState.LIVE and fake.client is not None:
                    fake.client.loop_misc()
            if time.monotonic() - last_usage >= self.period:
                self.usage = capabilities.usage(process).model_dump(mode="json")
                last_usage = time.monotonic()

    async def _register_all(self) -> None:
        for fake in self.fakes.values():
            await self.window.acquire()
            self._connect(fake)

    # --- what the parent asks
    def _kill(self, ids: Sequence[str], frozen: bool) -> dict[str, tuple[float, float | None]]:
        """Reset the connection (the broker sends the will) or freeze the fake (a hung
        host: the connection stays open, nothing more is sent or read)."""
        killed: dict[str, tuple[float, float | None]] = {}
        for worker_id in ids:
            fake = self.fakes[worker_id]
            if fake.state is not FakeState.LIVE or fake.client is None:
                continue
            if fake.timer is not None:
                fake.timer.cancel()
            at = time.time()
            self._detach(fake, reset=not frozen)
            fake.state = FakeState.FROZEN if frozen else FakeState.KILLED
            killed[worker_id] = (at, fake.sent[-1] if fake.sent else None)
        return killed

    def _detach(self, fake: Fake, *, reset: bool) -> None:
        sock = fake.client.socket() if fake.client is not None else None
        if not isinstance(sock, socket.socket) or sock.fileno() < 0:
            return
        self.loop.remove_reader(sock)
        self.loop.remove_writer(sock)
        if reset:  # SO_LINGER 0: close sends a TCP reset, as when a process is killed
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.close()

    def _halt(self) -> int:
        """Stop registering: the fakes not yet welcomed leave with a clean DISCONNECT, so
        the broker sends no will and the manager sees no loss."""
        if self.registering is not None:
            self.registering.cancel()
        halted = 0
        for fake in self.fakes.values():
            if fake.state in (FakeState.IDLE, FakeState.CONNECTING):
                was, fake.state = fake.state, FakeState.ABANDONED
                if was is FakeState.CONNECTING and fake.client is not None:
                    fake.client.disconnect()
                halted += 1
        return halted

    def _status(self) -> dict[str, Any]:
        counts = {state.value: 0 for state in FakeState}
        for fake in self.fakes.values():
            counts[fake.state.value] += 1
        return {
            "states": counts,
            "errors": self.errors,
            "reregisters": self.reregisters,
            "unexpected": self.unexpected,
            "traffic": self.traffic,
        }

    def _registration(self) -> dict[str, Any]:
        welcomed = [f for f in self.fakes.values() if f.t_welcome]
        return {
            "rtts": [f.t_welcome - f.t_hello for f in welcomed],
            "last_welcome": max((f.t_welcome for f in welcomed), default=0.0),
        }

    def _on_command(self) -> None:
        try:
            kind, *args = self.conn.recv()
        except EOFError:  # the parent is gone
            self.done.set()
            return
        reply: Any
        if kind == "register":
            self.t_register = time.time()
            self.registering = self.loop.create_task(self._register_all())
            reply = self.t_register
        elif kind == "status":
            reply = self._status()
        elif kind == "registration":
            reply = self._registration()
        elif kind == "live":
            reply = [f.id for f in self.fakes.values() if f.state is FakeState.LIVE]
        elif kind == "sent":
            reply = {f.id: f.sent for f in self.fakes.values()}
        elif kind == "kill":
            reply = self._kill(args[0], frozen=args[1])
        elif kind == "halt":
            reply = self._halt()
        else:  # "stop"
            for fake in self.fakes.values():
                if fake.timer is not None:
                    fake.timer.cancel()
                if fake.state in (FakeState.LIVE, FakeState.FROZEN, FakeState.CONNECTING):
                    self._detach(fake, reset=True)
                    fake.state = FakeState.KILLED
            self.done.set()
            reply = "stopped"
        self.conn.send(reply)

    async def serve(self) -> None:
        self.loop.add_reader(self.conn.fileno(), self._on_command)
        housekeeping = self.loop.create_task(self._housekeeping())
        self.conn.send("ready")
        await self.done.wait()
        housekeeping.cancel()


def fleet_main(spec: FleetSpec, conn: Connection) -> None:
    """Entry point of a fake process."""

    async def serve() -> None:
        await Fleet(spec, conn, asyncio.get_running_loop()).serve()

    asyncio.run(serve())


# --- the parent ---------------------------------------------------------------------------


@dataclass
class FleetProcess:
    process: BaseProcess
    conn: Connection
    ids: tuple[str, ...]


class Fleets:
    """The fake processes, asked the same question at once and answered in turn."""

    def __init__(self, members: list[FleetProcess]) -> None:
        self.members = members

    @classmethod
    def start(
        cls,
        worker_ids: Sequence[str],
        per_process: int,
        port: int,
        seed: int,
        *,
        cluster: str = CLUSTER,
        complete: bool = False,
    ) -> Fleets:
        ctx = multiprocessing.get_context("spawn")  # no inherited threads or loops
        count = max(1, math.ceil(len(worker_ids) / per_process))
        members = []
        for index in range(count):
            ids = tuple(worker_ids[index::count])
            spec = FleetSpec(ids, port, CONNECT_WINDOW, seed + index, cluster, complete)
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=fleet_main, args=(spec, child), daemon=True)
            proc.start()
            child.close()
            members.append(FleetProcess(proc, parent, ids))
        fleets = cls(members)
        fleets.replies(timeout=READY_TIMEOUT_S)  # "ready" from each
        return fleets

    def ask(self, *message: Any, timeout: float = REPLY_TIMEOUT_S) -> list[Any]:
        for member in self.members:
            member.conn.send(message)
        return self.replies(timeout)

    def ask_one(self, member: FleetProcess, *message: Any) -> Any:
        member.conn.send(message)
        if not member.conn.poll(REPLY_TIMEOUT_S):
            raise EdgeplaneError(f"fake process {member.process.pid} did not answer")
        return member.conn.recv()

    def replies(self, timeout: float) -> list[Any]:
        answers = []
        deadline = time.monotonic() + timeout
        for member in self.members:
            if not member.conn.poll(max(0.0, deadline - time.monotonic())):
                raise EdgeplaneError(f"fake process {member.process.pid} did not answer")
            answers.append(member.conn.recv())
        return answers

    def processes(self) -> list[psutil.Process]:
        return [psutil.Process(m.process.pid) for m in self.members if m.process.pid]

    def stop(self) -> None:
        with suppress(EdgeplaneError, OSError):  # already gone
            self.ask("stop", timeout=10)
        for member in self.members:
            member.process.join(5)
            if member.process.is_alive():
                member.process.kill()
                member.process.join()
            member.conn.close()


@dataclass
class CountReport:
    workers: int
    fake_processes: int
    phases: list[Phase] = field(default_factory=list)


@dataclass
class Report:
    command: str
    manager_command: str
    machine: dict[str, Any]
    settings: dict[str, Any]
    counts: list[CountReport] = field(default_factory=list)


@dataclass(frozen=True)
class Options:
    heartbeat_s: float
    duration_s: float
    settle_s: float
    lost: int
    lag_sample: int
    per_process: int
    seed: int
    #: None: 60 s + 20 ms per worker (50 registrations/s)
    register_budget_s: float | None


@dataclass
class Cluster:
    """What one worker count runs against: its broker, manager and fakes."""

    broker: MosquittoProcess
    manager: Child
    client: Client
    fleets: Fleets
    worker_ids: list[str]
    rng: random.Random
    #: set by the heartbeat phase: workers the API shows online, the largest lag seen
    online: list[str] = field(default_factory=list)
    lag_s: float = 0.0


def cpu_s(procs: Sequence[psutil.Process]) -> float:
    total = 0.0
    for proc in procs:
        with suppress(psutil.NoSuchProcess):  # ended meanwhile
            times = proc.cpu_times()
            total += times.user + times.system
    return total


def wait_manager(child: Child, deadline: float, printed: re.Pattern[str] = MANAGER_URL) -> str:
    """The manager's (or root's) API URL, as ``printed`` finds it, once its broker link
    is up."""
    while time.monotonic() < deadline:
        if not child.alive():
            raise EdgeplaneError(f"the process exited early:\n{child.stderr_tail()}")
        found = printed.search(child.stdout())
        if found:
            with suppress(httpx.HTTPError, ValueError):  # not serving yet
                if httpx.get(f"{found.group(1)}/healthz", timeout=1).json().get("broker"):
                    return found.group(1)
        time.sleep(0.1)
    raise EdgeplaneError(f"{child.stdout_path.stem} was not ready within {READY_TIMEOUT_S:g}s")


def manager_argv(broker_url: str, data_dir: Path, heartbeat_s: float) -> list[str]:
    return [
        *EDGEPLANE,
        "manager",
        "--broker",
        broker_url,
        "--store",
        f"sqlite:///{data_dir / 'edgeplane.db'}",
        "--heartbeat-s",
        f"{heartbeat_s:g}",
        "--port",
        "0",
        "--data-dir",
        str(data_dir),
    ]


def offline_log(path: Path) -> list[tuple[str, float]]:
    """Every ``worker offline`` line of the manager: (worker id, its wall clock, 1 ms)."""
    events = []
    for line in path.read_text(errors="replace").splitlines():
        if '"worker offline"' not in line:
            continue
        with suppress(ValueError):  # not one of its JSON lines
            entry = json.loads(line)
            worker_id = entry.get("worker_id")
            if entry.get("msg") == "worker offline" and isinstance(worker_id, str):
                events.append((worker_id, float(entry["ts"])))
    return events


def first_after(events: Sequence[tuple[str, float]], worker_id: str, since: float) -> float | None:
    return min((ts for w, ts in events if w == worker_id and ts >= since), default=None)


def spread(
    samples: Sequence[float],
    unit: Callable[[float], float],
    suffix: str,
    quantiles: Sequence[int] = (50, 95, 99),
) -> dict[str, Any]:
    """Percentiles and max of ``samples`` in ``unit``; empty when there are none."""
    if not samples:
        return {}
    ordered = sorted(samples)
    figures: dict[str, Any] = {f"p{q} {suffix}": unit(percentile(ordered, q)) for q in quantiles}
    figures[f"max {suffix}"] = unit(ordered[-1])
    return figures


def seconds(value: float) -> float:
    return round(value, 2)


def lags(observations: Sequence[Worker], sent: dict[str, list[float]]) -> list[float]:
    """``last_seen`` minus the send time of the beat it reports (see the module doc)."""
    out = []
    for worker in observations:
        beat = round(worker.usage.rss_mb)
        times = sent.get(worker.id)
        if times is not None and 1 <= beat <= len(times):
            out.append(worker.last_seen - times[beat - 1])
    return out


def all_workers(client: Client) -> list[Worker]:
    items: list[Worker] = []
    while True:
        page = client.workers(limit=1000, offset=len(items))
        items.extend(page.items)
        if not page.items or len(items) >= page.total:
            return items


def wait_stable(client: Client, deadline: float) -> None:
    """Until the manager's worker count stops changing: hellos queued before a halt
    would otherwise be handled during the heartbeat window."""
    last = -1
    while time.monotonic() < deadline:
        total = client.workers(limit=1).total
        if total == last:
            return
        last = total
        time.sleep(2)


def measure_registration(cluster: Cluster, budget_s: float, console: Console) -> Phase:
    phase = Phase("registration")
    n = len(cluster.worker_ids)
    manager = cluster.manager.ps
    cpu_before = cpu_s([manager])
    started = min(cluster.fleets.ask("register"))
    deadline = time.monotonic() + budget_s
    states: dict[str, int] = {}
    statuses: list[dict[str, Any]] = []
    last_print = time.monotonic()
    while time.monotonic() < deadline:
        statuses = cluster.fleets.ask("status")
        states = {k: sum(s["states"][k] for s in statuses) for k in statuses[0]["states"]}
        if states["connecting"] == 0 and states["idle"] == 0:
            break
        if time.monotonic() - last_print > 5:
            console.print(f"  registered {states['live']}/{n}")
            last_print = time.monotonic()
        time.sleep(0.25)
    else:
        abandoned = sum(cluster.fleets.ask("halt"))
        phase.note = f"budget of {budget_s:g}s spent: {abandoned} fakes stopped registering"
        wait_stable(cluster.client, time.monotonic() + READY_TIMEOUT_S)
    registration = cluster.fleets.ask("registration")
    rtts = [r for reply in registration for r in reply["rtts"]]
    last = max(reply["last_welcome"] for reply in registration)
    phase.figures["fake processes"] = len(cluster.fleets.members)
    phase.figures["handshakes in flight per process"] = CONNECT_WINDOW
    phase.figures["registered"] = f"{len(rtts)}/{n}"
    if states.get("failed") or states.get("dropped"):
        phase.figures["connections failed / dropped"] = f"{states['failed']} / {states['dropped']}"
        errors = [e for s in statuses for e in s["errors"]][:3]
        phase.note = "; ".join(filter(None, [phase.note, *errors]))
    if rtts:
        phase.figures["wall s, first connect → last welcome"] = seconds(last - started)
        phase.figures["registrations/s"] = round(len(rtts) / max(last - started, 1e-9), 1)
        phase.figures.update(spread(rtts, ms, "hello → welcome ms"))
    registration_cpu = cpu_s([manager]) - cpu_before
    phase.figures["manager CPU s"] = seconds(registration_cpu)
    if rtts:
        phase.figures["manager CPU ms per registration"] = ms(registration_cpu / len(rtts))
    phase.figures["manager RSS MB after"] = rss_mb(manager)
    phase.figures["workers listed by the API"] = cluster.client.workers(limit=1).total
    phase.status = "finished" if len(rtts) == n else ("partial" if rtts else "not finished")
    return phase


def measure_heartbeats(cluster: Cluster, options: Options) -> Phase:
    """Manager CPU and RSS over the window, with the lag of a sample of workers."""
    phase = Phase("heartbeats")
    manager = cluster.manager.ps
    broker = psutil.Process(cluster.broker.pid or 0)
    fakes = cluster.fleets.processes()
    time.sleep(options.settle_s)
    ids = [worker_id for reply in cluster.fleets.ask("live") for worker_id in reply]
    psutil.cpu_percent(None)  # starts the machine-wide counter
    t0 = time.time()
    cpu0 = [cpu_s([manager]), cpu_s([broker]), cpu_s(fakes)]
    rss_max = rss_mb(manager)
    samples: list[Worker] = []
    next_sample = t0 + min(1.0, options.heartbeat_s / 2)
    end = t0 + options.duration_s
    while (now := time.time()) < end:
        rss_max = max(rss_max, rss_mb(manager))
        if now >= next_sample:
            for worker_id in cluster.rng.sample(ids, min(options.lag_sample, len(ids))):
                samples.append(cluster.client.worker(worker_id))
            next_sample += options.heartbeat_s
        time.sleep(max(0.0, min(1.0, end - time.time())))
    wall = time.time() - t0
    cpu1 = [cpu_s([manager]), cpu_s([broker]), cpu_s(fakes)]
    busy = psutil.cpu_percent(None)
    rss_max = max(rss_max, rss_mb(manager))
    everyone = all_workers(cluster.client)
    sent: dict[str, list[float]] = {}
    for reply in cluster.fleets.ask("sent"):
        sent.update(reply)
    alives = sum(1 for times in sent.values() for at in times if t0 <= at < t0 + wall)
    manager_cpu = cpu1[0] - cpu0[0]
    f = phase.figures
    f["settle s, window s"] = f"{options.settle_s:g}, {wall:.1f}"
    f["alive messages/s (sent)"] = round(alives / wall, 1)
    f["manager CPU % of one core"] = round(100 * manager_cpu / wall, 1)
    if alives:
        f["manager CPU µs per alive (all its work)"] = round(1e6 * manager_cpu / alives, 1)
    f["manager RSS MB (max in window)"] = rss_max
    sampled = lags(samples, sent)
    f["lag samples (during window)"] = len(sampled)
    f.update(spread(sampled, ms, "lag ms"))
    final = lags(everyone, sent)
    f["lag, every worker at the end: n"] = len(final)
    f.update({k.replace("lag", "lag (end)"): v for k, v in spread(final, ms, "lag ms").items()})
    statuses = cluster.fleets.ask("status")
    beating = {w for w, times in sent.items() if times}
    online = [w.id for w in everyone if w.state == "online" and w.id in beating]
    f["online at the end (API) / fakes beating"] = f"{len(online)}/{len(beating)}"
    f["connections dropped by the broker"] = sum(s["states"]["dropped"] for s in statuses)
    f["reregister requests / unexpected messages"] = (
        f"{sum(s['reregisters'] for s in statuses)} / {sum(s['unexpected'] for s in statuses)}"
    )
    # Nothing was lost yet: a beating worker marked offline so far was a false alarm.
    false = [(w, ts) for w, ts in offline_log(cluster.manager.stderr_path) if w in beating]
    f["beating workers marked offline before the window (log)"] = len(
        {w for w, ts in false if ts < t0}
    )
    f[FALSE_OFFLINE] = len({w for w, ts in false if ts >= t0})
    f["mosquitto CPU % of one core"] = round(100 * (cpu1[1] - cpu0[1]) / wall, 1)
    f["mosquitto RSS MB"] = rss_mb(broker)
    f["fakes CPU % of one core (all)"] = round(100 * (cpu1[2] - cpu0[2]) / wall, 1)
    f["fakes RSS MB (all)"] = round(sum(rss_mb(p) for p in fakes), 1)
    f["machine CPU busy % (all cores)"] = busy
    f["API reads/s by the lag sampler"] = round(len(samples) / wall, 1)
    cluster.online = online
    cluster.lag_s = max(final, default=0.0)
    phase.status = "finished" if sampled and final else "partial"
    return phase


def measure_loss(cluster: Cluster, options: Options) -> list[Phase]:
    """Kill some fakes with a TCP reset (last will) and freeze others (missed beats).

    Only workers the API showed online are chosen, and a detection counts only after the
    kill: an overloaded manager may have marked a worker offline before (a false alarm).
    """
    hb = options.heartbeat_s
    pool = cluster.online or cluster.worker_ids
    chosen = cluster.rng.sample(pool, min(2 * options.lost, len(pool)))
    modes = {"last will": chosen[: len(chosen) // 2], "frozen": chosen[len(chosen) // 2 :]}
    killed: dict[str, dict[str, tuple[float, float | None]]] = {}
    for mode, ids in modes.items():
        killed[mode] = {}
        for member in cluster.fleets.members:
            mine = [i for i in ids if i in member.ids]
            if mine:
                killed[mode].update(cluster.fleets.ask_one(member, "kill", mine, mode == "frozen"))
    waiting = {i for kills in killed.values() for i in kills}
    api_at: dict[str, float] = {}
    # Detection takes the missed beats plus however far behind the manager already is.
    budget_s = hb * (MISSED_BEATS + 3) + min(cluster.lag_s, 120.0)
    deadline = time.monotonic() + budget_s
    while waiting and time.monotonic() < deadline:
        for worker_id in sorted(waiting):
            if cluster.client.worker(worker_id).state == "offline":
                api_at[worker_id] = time.time()
                waiting.discard(worker_id)
        time.sleep(API_POLL_S)
    events = offline_log(cluster.manager.stderr_path)
    phases = []
    for mode, kills in killed.items():
        phase = Phase(f"lost worker ({mode})")
        f = phase.figures
        f["workers lost"] = len(kills)
        logged = {i: first_after(events, i, at) for i, (at, _) in kills.items()}
        from_kill = [ts - kills[i][0] for i, ts in logged.items() if ts is not None]
        from_kill_api = [api_at[i] - at for i, (at, _) in kills.items() if i in api_at]
        if mode == "last will":
            f.update(spread(from_kill, ms, "kill → offline (log) ms", (50,)))
            if from_kill_api:
                f["max kill → offline (API) ms"] = ms(max(from_kill_api))
        else:
            from_alive = [
                ts - last
                for i, ts in logged.items()
                if ts is not None and (last := kills[i][1]) is not None
            ]
            f.update(spread(from_kill, seconds, "kill → offline (log) s", (50,)))
            f.update(spread(from_alive, seconds, "last alive → offline (log) s", (50,)))
            if from_alive:
                f["max last alive → offline, heartbeats"] = round(max(from_alive) / hb, 2)
            if from_kill_api:
                f["max kill → offline (API) s"] = seconds(max(from_kill_api))
                f["max kill → offline (API), heartbeats"] = round(max(from_kill_api) / hb, 2)
        found = len([i for i in kills if i in api_at])
        phase.status = (
            "finished" if found == len(kills) else ("partial" if found else "not finished")
        )
        if found < len(kills):
            phase.note = f"{len(kills) - found} still shown online after {budget_s:.0f}s"
        phases.append(phase)
    return phases


#: Tasks placed one at a time through the API, then in one batch, per worker count.
API_PLACEMENTS = 300
API_BATCH = 1000


def measure_api_placement(cluster: Cluster) -> Phase:
    """Placement through the API against this many workers. With nothing waiting, the
    manager places a new task before storing it, so a ``POST /tasks`` answers with the
    task already on a worker: its round trip is admission, placement, the insert and
    HTTP. The fakes never run what they are sent (it stays ``scheduled``)."""
    phase = Phase("placement through the API")
    spec = {**wasm_noop(), "start": True}
    took: list[float] = []
    placed = 0
    for _ in range(API_PLACEMENTS):
        began = time.perf_counter()
        task = cluster.client.create_task(spec)
        took.append(time.perf_counter() - began)
        placed += task.worker_id is not None
    ordered = sorted(took)
    phase.figures["one task: POST /tasks p50 ms"] = ms(percentile(ordered, 50))
    phase.figures["one task: POST /tasks p99 ms"] = ms(percentile(ordered, 99))
    phase.figures["one task: placed in the answer"] = f"{placed}/{API_PLACEMENTS}"
    began = time.perf_counter()
    batch = cluster.client.submit_many([spec] * API_BATCH)
    per_task = (time.perf_counter() - began) / API_BATCH
    phase.figures[f"batch of {API_BATCH:,}: µs per task"] = round(per_task * 1e6, 1)
    in_answer = sum(task.worker_id is not None for task in batch)
    phase.figures["batch: placed in the answer"] = f"{in_answer}/{API_BATCH}"
    phase.status = "finished"
    return phase


def judge_targets(phases: Sequence[Phase], heartbeat_s: float) -> Phase:
    """The issue's targets (set for 10,000 workers) against this count's figures."""
    phase = Phase("targets", status="finished")
    figures = {name: value for p in phases for name, value in p.figures.items()}

    def verdict(ok: bool) -> str:
        return "met" if ok else "missed"

    cpu = figures.get("manager CPU % of one core")
    if isinstance(cpu, float):
        phase.figures[f"manager < {TARGET_CPU_PERCENT:g}% of a core"] = (
            f"{cpu}% {verdict(cpu < TARGET_CPU_PERCENT)}"
        )
    rss = figures.get("manager RSS MB (max in window)")
    if isinstance(rss, float):
        phase.figures[f"manager RSS < {TARGET_RSS_MB:g} MB"] = (
            f"{rss} MB {verdict(rss < TARGET_RSS_MB)}"
        )
    beats = figures.get("max kill → offline (API), heartbeats")
    if isinstance(beats, float):
        phase.figures[
            f"frozen worker offline ≤ {TARGET_DETECT_BEATS} heartbeats after the kill"
        ] = f"{beats} {verdict(beats <= TARGET_DETECT_BEATS)}"
    false = figures.get(FALSE_OFFLINE)
    if isinstance(false, int):
        phase.figures["no false offline in the window"] = f"{false} {verdict(false == 0)}"
    will = figures.get("max kill → offline (API) ms")
    if isinstance(will, float):
        phase.figures["killed worker offline within one heartbeat (last will)"] = (
            f"{will} ms {verdict(will < 1000 * heartbeat_s)}"
        )
    return phase


def guarded(name: str, step: Callable[[], list[Phase]]) -> list[Phase]:
    """A step that raised is reported as not finished; the next steps still run."""
    try:
        return step()
    except (EdgeplaneError, httpx.HTTPError, psutil.Error, OSError) as exc:
        return [Phase(name, note=f"{type(exc).__name__}: {exc}")]


def run_count(n: int, options: Options, work_dir: Path, console: Console) -> CountReport:
    data = work_dir / f"workers-{n}"
    data.mkdir(parents=True)
    token = new_id()
    worker_ids = [f"w{i:05d}" for i in range(n)]
    with ExitStack() as stack:
        broker = MosquittoProcess(data / "broker", free_port())
        broker.start()
        stack.callback(broker.stop)
        fleets = Fleets.start(worker_ids, options.per_process, broker.port, options.seed)
        stack.callback(fleets.stop)
        report = CountReport(workers=n, fake_processes=len(fleets.members))
        argv = manager_argv(broker.url, data / "manager", options.heartbeat_s)
        manager = stack.enter_context(process(argv, clean_env(token), data, "manager"))
        url = wait_manager(manager, time.monotonic() + READY_TIMEOUT_S)
        client = stack.enter_context(Client(url, token, timeout=30))
        cluster = Cluster(broker, manager, client, fleets, worker_ids, random.Random(options.seed))
        console.print(f"{n} workers: manager at {url}, broker {broker.url}, registering …")
        budget = options.register_budget_s or 60 + n / 50
        report.phases += guarded(
            "registration", lambda: [measure_registration(cluster, budget, console)]
        )
        console.print(f"{n} workers: settling {options.settle_s:g}s, measuring …")
        report.phases += guarded("heartbeats", lambda: [measure_heartbeats(cluster, options)])
        console.print(f"{n} workers: losing {2 * options.lost} workers …")
        report.phases += guarded("lost worker", lambda: measure_loss(cluster, options))
        console.print(f"{n} workers: placing through the API …")
        report.phases += guarded(
            "placement through the API", lambda: [measure_api_placement(cluster)]
        )
        report.phases.append(judge_targets(report.phases, options.heartbeat_s))
        console.print(f"{n} workers: stopping …")
    return report


def render(report: Report, console: Console) -> None:
    for count in report.counts:
        title = (
            f"edgeplane scale{' (root + 2 clusters)' if report.settings.get('hierarchy') else ''}:"
            f" {count.workers} workers, heartbeat "
            f"{report.settings['heartbeat_s']:g}s ({count.fake_processes} fake processes)"
        )
        console.print(phase_table(title, count.phases))
    m = report.machine
    console.print(
        f"machine: {m['nproc']} cpus, {m['memory_mb']} MB, Python {m['python']}, {m['platform']}"
        f", open files limit {m['nofile']}, load average (1 min) {m['loadavg_1m_at_start']} at"
        f" start, {m.get('loadavg_1m_at_end', '?')} at end"
    )
    console.print(f"edgeplane: {m['edgeplane']}")
    console.print(f"command: {report.command}")
    console.print(f"processes: {report.manager_command}")


def worker_counts(text: str) -> list[int]:
    try:
        counts = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of integers: {text!r}") from None
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError("worker counts must be positive")
    return counts


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.scale", description=DESCRIPTION)
    parser.add_argument(
        "--workers", type=worker_counts, default=None, help="comma-separated counts"
    )
    parser.add_argument("--heartbeat-s", type=float, default=5.0, metavar="S")
    parser.add_argument("--duration-s", type=float, default=None, metavar="S", help="window")
    parser.add_argument("--settle-s", type=float, default=None, metavar="S")
    parser.add_argument("--lost", type=int, default=LOST_PER_MODE, help="fakes lost per mode")
    parser.add_argument("--lag-sample", type=int, default=LAG_SAMPLE, metavar="N")
    parser.add_argument("--per-process", type=int, default=FAKES_PER_PROCESS, metavar="N")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--register-budget-s",
        type=float,
        default=None,
        metavar="S",
        help="default 60 + workers/50; fakes not registered by then stop trying",
    )
    parser.add_argument(
        "--quick", action="store_true", help=f"{QUICK_WORKERS[0]} workers, {QUICK_DURATION_S:g}s"
    )
    parser.add_argument(
        "--hierarchy",
        action="store_true",
        help="one root and 2 cluster managers on PostgreSQL, the workers split across them"
        f" (default {HIERARCHY_WORKERS:,} workers; bench/hierarchy.py)",
    )
    parser.add_argument(
        "--tasks", type=int, default=None, metavar="N", help="--hierarchy: tasks in the batch"
    )
    parser.add_argument(
        "--postgres",
        default=None,
        metavar="URL",
        help="--hierarchy: the database (created if missing; a schema per process)",
    )
    parser.add_argument(
        "--keep",
        type=Path,
        default=None,
        metavar="DIR",
        help="run in DIR and keep the processes' logs and data there (default: a temp dir)",
    )
    parser.add_argument("--json", type=Path, default=None, metavar="FILE")
    return parser.parse_args(argv)


def raise_open_files_limit() -> int:
    """Mosquitto holds one descriptor per worker and inherits this process's limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        soft = hard
    return soft


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    given = sys.argv[1:] if argv is None else list(argv)
    quick = args.quick
    if args.hierarchy:
        default_counts: Sequence[int] = QUICK_WORKERS if quick else (HIERARCHY_WORKERS,)
    else:
        default_counts = QUICK_WORKERS if quick else DEFAULT_WORKERS
    counts = args.workers or list(default_counts)
    duration = args.duration_s or (QUICK_DURATION_S if quick else 60.0)
    options = Options(
        heartbeat_s=args.heartbeat_s,
        duration_s=duration,
        settle_s=args.settle_s
        if args.settle_s is not None
        else args.heartbeat_s * (1 if quick else 2),
        lost=min(args.lost, 3) if quick else args.lost,
        lag_sample=args.lag_sample,
        per_process=args.per_process,
        seed=args.seed,
        register_budget_s=args.register_budget_s,
    )
    console = Console() if sys.stdout.isatty() else Console(width=132)
    nofile = raise_open_files_limit()
    if args.hierarchy:
        from bench import hierarchy

        tasks = args.tasks or (hierarchy.QUICK_TASK_BATCH if quick else hierarchy.TASK_BATCH)
        postgres = args.postgres or hierarchy.DEFAULT_POSTGRES
        shown = hierarchy.commands(args.heartbeat_s, postgres)
    else:
        shown = shlex.join(
            ["python", *manager_argv("mqtt://127.0.0.1:PORT", Path("DIR"), args.heartbeat_s)[1:]]
        )
    report = Report(
        command=shlex.join(["python", "-m", "bench.scale", *given]),
        manager_command=shown,
        machine={**machine(), "nofile": nofile},
        settings={
            **asdict(options),
            "workers": counts,
            "connect_window": CONNECT_WINDOW,
            "hierarchy": args.hierarchy,
        },
    )
    for n in counts:
        if n + 100 > nofile:
            console.print(f"[yellow]{n} workers need more than {nofile} open files[/yellow]")
        with ExitStack() as kept:
            if args.keep is None:
                tmp = kept.enter_context(tempfile.TemporaryDirectory(prefix="edgeplane-scale-"))
            else:
                tmp = str(args.keep / f"workers-{n}")
                Path(tmp).mkdir(parents=True)
            try:
                if args.hierarchy:
                    found = hierarchy.run_hierarchy(n, options, tasks, postgres, Path(tmp), console)
                else:
                    found = run_count(n, options, Path(tmp), console)
                report.counts.append(found)
            except EdgeplaneError as exc:
                console.print(f"[red]{n} workers aborted:[/red] {exc}")
                report.counts.append(
                    CountReport(n, 0, [Phase("setup", note=f"{type(exc).__name__}: {exc}")])
                )
    report.machine["loadavg_1m_at_end"] = round(os.getloadavg()[0], 2)
    render(report, console)
    out = args.json or (HIERARCHY_JSON if args.hierarchy else DEFAULT_JSON)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(asdict(report), indent=2) + "\n")
    console.print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
