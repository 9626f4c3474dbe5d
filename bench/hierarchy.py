"""``bench.scale --hierarchy``: one root, two cluster managers, thousands of simulated workers.

The capacity model's figures (docs/operations.md, "Capacity"), measured as it would be
deployed on one site's machines:

- ``edgeplane root`` with its own embedded, locked-down Mosquitto (the clusters join it
  with a token, as in production), and two ``edgeplane manager --root … --join TOKEN``,
  each with **its own broker** (a cluster's workers talk to their cluster's broker only;
  a broker shared by both clusters would be one more thing both depend on, and is what
  ``bench.scale`` without ``--hierarchy`` already measures for one manager). The cluster
  brokers are Mosquittos this harness starts (open, like ``bench.scale``'s: the fakes do
  not join) with ``sys_interval 1``, so their ``$SYS`` counters give messages and bytes
  per second;
- every process on **PostgreSQL**, each in a schema of its own, in a database of the
  harness's own (``--postgres``, default ``edgeplane_scale`` on 127.0.0.1:5432, created
  if missing): ``pg_stat_database`` counts commits per database only, so a database
  nobody else writes to is the only way to count the commits of these processes;
- the workers are ``bench.scale``'s fakes, half on each cluster, answering every
  ``task.start`` with the tasks completed (one ``task.events``), as a worker running
  no-ops would.

Phases: registration (until every fake is welcomed, then until the root's aggregates
count them all); heartbeats over ``--duration-s`` (each process's CPU and RSS, the
brokers' messages and bytes per worker per second, the store's commits and rows per
second, heartbeat lag from a sample of workers, as in ``bench.scale``); then one batch of
tasks through the **root** API (``POST /tasks/batch``, 1,000 per call), until the root
counts them all completed: tasks per second, and per task the MQTT messages at the
cluster brokers and the store's commits and rows (each a delta over the batch, less the
heartbeat rate over the same seconds).
"""

from __future__ import annotations

import asyncio
import json
import random
import re
import shlex
import subprocess
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx
import paho.mqtt.client as mqtt
import psutil
from paho.mqtt.enums import CallbackAPIVersion
from rich.console import Console

from bench.scale import (
    EDGEPLANE,
    READY_TIMEOUT_S,
    CountReport,
    Fleets,
    Options,
    cpu_s,
    lags,
    offline_log,
    seconds,
    spread,
    wait_manager,
)
from bench.spine import Child, Phase, clean_env, ms, percentile, process, rss_mb, wasm_noop
from edgeplane import Client
from edgeplane.clock import new_id
from edgeplane.errors import EdgeplaneError, NotFound
from edgeplane.lifeline import die_with_parent
from edgeplane.model import Worker
from edgeplane.transport.broker import MosquittoProcess, free_port, mosquitto_config

CLUSTERS = ("site-a", "site-b")
DEFAULT_POSTGRES = "postgresql://postgres@127.0.0.1:5432/edgeplane_scale"
ROOT_URL = re.compile(r"API:\s+(https?://\S+)/api/v1")
#: Tasks placed through the root in one batch (``--tasks``), and with ``--quick``.
TASK_BATCH = 10_000
QUICK_TASK_BATCH = 1_000
#: The cluster's aggregate period (the manager's default is 5 s): the root learns about
#: new workers that much later.
AGGREGATE_S = 1.0
BATCH_BUDGET_S = 600.0
#: PostgreSQL 15's backends report their counts at most once a second: wait this long
#: before reading them after a phase
STATS_FLUSH_S = 2.5
#: A batch whose every task ended, with nothing more counted for this long, is over.
STANDSTILL_S = 10.0
#: Workers per cluster whose heartbeat lag is read every second during the batch.
BATCH_LAG_SAMPLE = 5
FINISHED = "edgeplane_tasks_finished_total"
#: ``$SYS`` counters read from each cluster broker (cumulative since it started).
SYS_COUNTERS = (
    "messages/received",
    "messages/sent",
    "publish/messages/received",
    "publish/messages/sent",
    "bytes/received",
    "bytes/sent",
)


# --- brokers that count -------------------------------------------------------------------


class CountedMosquitto(MosquittoProcess):
    """Mosquitto as ``bench.scale`` runs it, publishing its ``$SYS`` tree every second."""

    def spawn(self) -> None:
        # MosquittoProcess.spawn with one line more in the config
        self.data_dir.mkdir(parents=True, exist_ok=True)
        config = mosquitto_config(self.port, self.auth, self.host, self.tls)
        self.config_path.write_text(config + "sys_interval 1\n")
        self._log = self.log_path.open("ab")
        self._proc = subprocess.Popen(
            [self.executable, "-c", str(self.config_path)],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=self._log,
            start_new_session=True,
            preexec_fn=die_with_parent(),
        )
        self.pid_path.write_text(f"{self._proc.pid}\n")


@dataclass
class Tick:
    """One ``$SYS`` publication: the broker's uptime and its counters then."""

    uptime: float
    counters: dict[str, float]
    #: the ``$SYS`` messages this reader was sent so far, and their bytes: the broker's
    #: ``sent`` counters include them, and they are taken off
    own: tuple[int, int] = (0, 0)


class SysCounter:
    """Reads a broker's ``$SYS/broker/…`` counters as it publishes them (every second).

    Mosquitto publishes ``uptime`` first in each round and a counter only when it changed,
    so a round is complete once the next one starts; :meth:`last` is the latest complete
    round (counters carried over from earlier rounds)."""

    def __init__(self, port: int) -> None:
        self.ticks: list[Tick] = []
        self._current: Tick | None = None
        self._own = (0, 0)
        self._lock = threading.Lock()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-sys-{new_id()}")
        self.client.on_connect = lambda c, *_: c.subscribe("$SYS/broker/#")
        self.client.on_message = self._message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def _message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        # a PUBLISH packet: fixed header (2), topic length (2), topic, payload
        size = 4 + len(message.topic.encode()) + len(message.payload)
        self._own = (self._own[0] + 1, self._own[1] + size)
        name = message.topic.removeprefix("$SYS/broker/")
        try:
            value = float(message.payload.split()[0])
        except (ValueError, IndexError):
            return
        with self._lock:
            if name == "uptime":
                if self._current is not None:
                    self.ticks.append(self._current)
                before = self._current.counters if self._current else {}
                self._current = Tick(value, dict(before), self._own)
            elif self._current is not None and name in SYS_COUNTERS:
                self._current.counters[name] = value

    def last(self) -> Tick | None:
        with self._lock:
            return self.ticks[-1] if self.ticks else None

    def next_tick(self, timeout: float = 5.0) -> Tick:
        """The first complete round after now."""
        seen = self.last()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            tick = self.last()
            if tick is not None and (seen is None or tick.uptime > seen.uptime):
                if seen is not None or len(self.ticks) > 1:
                    return tick
                seen = tick
            time.sleep(0.05)
        raise EdgeplaneError("the broker published no $SYS round")

    def stop(self) -> None:
        self.client.loop_stop()
        with suppress(OSError):
            self.client.disconnect()


def sys_deltas(first: Tick, last: Tick) -> tuple[float, dict[str, float]]:
    """Broker uptime between two rounds and each counter's increase, less what the
    broker sent this reader."""
    deltas = {
        name: last.counters.get(name, 0.0) - first.counters.get(name, 0.0) for name in SYS_COUNTERS
    }
    messages, size = last.own[0] - first.own[0], last.own[1] - first.own[1]
    for name in ("messages/sent", "publish/messages/sent"):
        deltas[name] -= messages
    deltas["bytes/sent"] -= size
    return last.uptime - first.uptime, deltas


def sys_rates(first: Tick, last: Tick) -> dict[str, float]:
    """Each counter's increase per second of broker uptime between two rounds."""
    span, deltas = sys_deltas(first, last)
    return {name: value / max(span, 1e-9) for name, value in deltas.items()}


# --- the store ----------------------------------------------------------------------------


def server_url(url: str) -> str:
    """The URL without its query (``?schema=``): what asyncpg connects to."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))


async def _ensure_database(url: str) -> None:
    parts = urlsplit(url)
    name = parts.path.lstrip("/")
    if not re.fullmatch(r"[a-z_][a-z0-9_]*", name):
        raise EdgeplaneError(f"unexpected database name {name!r}")
    admin = urlunsplit((parts.scheme, parts.netloc, "/postgres", "", ""))
    conn = await asyncpg.connect(admin)
    try:
        found = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
        if found is None:
            await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()


async def _drop_schemas(url: str, schemas: Sequence[str]) -> None:
    conn = await asyncpg.connect(url)
    try:
        for schema in schemas:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()


@dataclass
class StoreSnapshot:
    at: float
    commits: float
    rollbacks: float
    #: per schema: rows inserted, updated, deleted
    rows: dict[str, dict[str, float]]
    backends_cpu_s: float


async def _snapshot(url: str, schemas: Sequence[str]) -> StoreSnapshot:
    conn = await asyncpg.connect(url)
    try:
        db = await conn.fetchrow(
            "SELECT xact_commit, xact_rollback FROM pg_stat_database"
            " WHERE datname = current_database()"
        )
        found = await conn.fetch(
            "SELECT schemaname, sum(n_tup_ins) AS ins, sum(n_tup_upd) AS upd,"
            " sum(n_tup_del) AS del FROM pg_stat_user_tables"
            " WHERE schemaname = ANY($1::text[]) GROUP BY schemaname",
            list(schemas),
        )
        pids = await conn.fetch(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
            " AND pid <> pg_backend_pid()"
        )
    finally:
        await conn.close()
    rows = {s: {"ins": 0.0, "upd": 0.0, "del": 0.0} for s in schemas}
    for record in found:
        rows[record["schemaname"]] = {k: float(record[k] or 0) for k in ("ins", "upd", "del")}
    backends = [p for r in pids if (p := _proc(r["pid"])) is not None]
    return StoreSnapshot(
        time.time(), float(db["xact_commit"]), float(db["xact_rollback"]), rows, cpu_s(backends)
    )


def _proc(pid: int) -> psutil.Process | None:
    try:
        return psutil.Process(pid)
    except psutil.Error:
        return None


class Store:
    """The PostgreSQL database the processes share, each in its own schema."""

    def __init__(self, url: str, run_id: str) -> None:
        self.url = server_url(url)
        self.schemas = {
            name: f"scale_{run_id}_{name.replace('-', '_')}" for name in ("root", *CLUSTERS)
        }

    def store_url(self, name: str) -> str:
        return f"{self.url}?schema={self.schemas[name]}"

    def prepare(self) -> None:
        asyncio.run(_ensure_database(self.url))

    def snapshot(self) -> StoreSnapshot:
        """Statistics after a flush: a backend reports its counts when idle, at most
        once a second (PostgreSQL 15), so a read right after a burst would miss some."""
        return asyncio.run(_snapshot(self.url, list(self.schemas.values())))

    def drop(self) -> None:
        with suppress(OSError, asyncpg.PostgresError):  # best effort: the figures are out
            asyncio.run(_drop_schemas(self.url, list(self.schemas.values())))


def store_figures(
    a: StoreSnapshot, b: StoreSnapshot, schemas: dict[str, str]
) -> tuple[float, float, dict[str, float]]:
    """Commits, backend CPU seconds and rows written (inserted + updated + deleted) per
    process between two snapshots."""
    rows = {}
    for name, schema in schemas.items():
        rows[name] = sum(b.rows[schema][k] - a.rows[schema][k] for k in ("ins", "upd", "del"))
    return b.commits - a.commits, b.backends_cpu_s - a.backends_cpu_s, rows


# --- the processes ------------------------------------------------------------------------


@dataclass
class Site:
    """One cluster: its broker, manager, API client and fakes."""

    name: str
    broker: CountedMosquitto
    counter: SysCounter
    manager: Child
    client: Client
    fleets: Fleets
    worker_ids: list[str]


@dataclass
class Tree:
    root: Child
    root_client: Client
    store: Store
    sites: list[Site]
    rng: random.Random
    #: CPU seconds per process, read together
    processes: dict[str, list[psutil.Process]] = field(default_factory=dict)

    @property
    def fleets(self) -> Fleets:
        return Fleets([m for s in self.sites for m in s.fleets.members])

    def cpu(self) -> dict[str, float]:
        return {name: cpu_s(procs) for name, procs in self.processes.items()}

    def rss(self) -> dict[str, float]:
        return {name: sum(rss_mb(p) for p in procs) for name, procs in self.processes.items()}


def root_argv(data_dir: Path, store_url: str, heartbeat_s: float, port: str) -> list[str]:
    return [
        *EDGEPLANE,
        "root",
        "--store",
        store_url,
        "--heartbeat-s",
        f"{heartbeat_s:g}",
        "--port",
        port,
        "--data-dir",
        str(data_dir),
    ]


def cluster_argv(
    name: str,
    broker_url: str,
    root_broker: str,
    store_url: str,
    data_dir: Path,
    hb: float,
    port: str,
) -> list[str]:
    return [
        *EDGEPLANE,
        "manager",
        "--cluster-id",
        name,
        "--broker",
        broker_url,
        "--root",
        root_broker,
        "--store",
        store_url,
        "--heartbeat-s",
        f"{hb:g}",
        "--aggregate-interval-s",
        f"{AGGREGATE_S:g}",
        "--port",
        port,
        "--data-dir",
        str(data_dir),
    ]


def root_broker_url(data_dir: Path) -> str:
    port = (data_dir / "broker" / "port").read_text().strip()
    return f"mqtt://127.0.0.1:{port}"


def join_token(root_url: str, admin_token: str, cluster_id: str) -> str:
    """A token the cluster joins the root with (used once, as an operator would)."""
    answer = httpx.post(
        f"{root_url}/api/v1/join-tokens",
        json={"cluster_id": cluster_id, "ttl_s": 600},
        headers={"Authorization": f"Bearer {admin_token}"},
        timeout=30,
    )
    answer.raise_for_status()
    token: str = answer.json()["token"]
    return token


@contextmanager
def tree(
    n: int, options: Options, postgres: str, work_dir: Path, console: Console
) -> Iterator[Tree]:
    token = new_id()
    env = clean_env(token)
    store = Store(postgres, new_id()[:8].lower())
    store.prepare()
    with ExitStack() as stack:
        stack.callback(store.drop)
        root_dir = work_dir / "root"
        root_dir.mkdir(parents=True)
        # Fixed ports, as deployed: a leader deposed and elected again serves where it did.
        argv = root_argv(root_dir, store.store_url("root"), options.heartbeat_s, str(free_port()))
        root = stack.enter_context(process(argv, env, work_dir, "root"))
        root_url = wait_manager(root, time.monotonic() + READY_TIMEOUT_S, ROOT_URL)
        root_client = stack.enter_context(Client(root_url, token, timeout=60))
        root_broker = root_broker_url(root_dir)
        console.print(f"root at {root_url}, its broker {root_broker}")
        ids = [f"w{i:05d}" for i in range(n)]
        sites = []
        for index, name in enumerate(CLUSTERS):
            data = work_dir / name
            broker = CountedMosquitto(data / "broker", free_port())
            broker.start()
            stack.callback(broker.stop)
            counter = SysCounter(broker.port)
            stack.callback(counter.stop)
            mine = ids[index :: len(CLUSTERS)]
            fleets = Fleets.start(
                mine,
                options.per_process,
                broker.port,
                options.seed + 100 * index,
                cluster=name,
                complete=True,
            )
            stack.callback(fleets.stop)
            argv = cluster_argv(
                name,
                broker.url,
                root_broker,
                store.store_url(name),
                data,
                options.heartbeat_s,
                str(free_port()),
            )
            argv += ["--join", join_token(root_url, token, name)]
            manager = stack.enter_context(process(argv, env, work_dir, name))
            url = wait_manager(manager, time.monotonic() + READY_TIMEOUT_S)
            client = stack.enter_context(Client(url, token, timeout=60))
            console.print(
                f"cluster {name}: manager at {url}, broker {broker.url}, {len(mine)} fakes"
            )
            sites.append(Site(name, broker, counter, manager, client, fleets, mine))
        world = Tree(root, root_client, store, sites, random.Random(options.seed))
        world.processes = {
            "root": [root.ps],
            "root's broker": [c for c in root.ps.children() if c.name() == "mosquitto"],
            **{f"manager {s.name}": [s.manager.ps] for s in sites},
            **{f"broker {s.name}": [psutil.Process(s.broker.pid or 0)] for s in sites},
            "fakes": world.fleets.processes(),
        }
        yield world


# --- the phases ---------------------------------------------------------------------------


def _statuses(world: Tree) -> list[dict[str, Any]]:
    result: list[dict[str, Any]] = world.fleets.ask("status")
    return result


def _root_workers(world: Tree) -> dict[str, int]:
    out = {}
    for cluster in world.root_client.clusters(limit=100).items:
        if cluster.state == "online" and cluster.aggregate is not None:
            out[cluster.id] = cluster.aggregate.workers
    return out


def measure_registration(world: Tree, n: int, budget_s: float, console: Console) -> Phase:
    phase = Phase("registration (two clusters)")
    before = world.cpu()
    started = min(world.fleets.ask("register"))
    deadline = time.monotonic() + budget_s
    live = 0
    last_print = time.monotonic()
    while time.monotonic() < deadline:
        statuses = _statuses(world)
        states = {k: sum(s["states"][k] for s in statuses) for k in statuses[0]["states"]}
        live = states["live"]
        if states["connecting"] == 0 and states["idle"] == 0:
            break
        if time.monotonic() - last_print > 5:
            console.print(f"  registered {live}/{n}")
            last_print = time.monotonic()
        time.sleep(0.25)
    else:
        world.fleets.ask("halt")
        phase.note = f"budget of {budget_s:g}s spent"
    registration = world.fleets.ask("registration")
    rtts = [r for reply in registration for r in reply["rtts"]]
    last = max(reply["last_welcome"] for reply in registration)
    # The root hears of workers through each cluster's aggregate.
    seen: dict[str, int] = {}
    while time.monotonic() < deadline + READY_TIMEOUT_S:
        seen = _root_workers(world)
        if sum(seen.values()) >= len(rtts):
            break
        time.sleep(0.5)
    at_root = time.time()
    after = world.cpu()
    f = phase.figures
    f["registered"] = f"{len(rtts)}/{n}"
    if rtts:
        f["wall s, first connect → last welcome"] = seconds(last - started)
        f["registrations/s (both clusters)"] = round(len(rtts) / max(last - started, 1e-9), 1)
        f.update(spread(rtts, ms, "hello → welcome ms"))
    f["workers the root counts (aggregates)"] = ", ".join(
        f"{k} {v}" for k, v in sorted(seen.items())
    )
    f["wall s, first connect → root counts them all"] = seconds(at_root - started)
    for name in ("root", *(f"manager {s.name}" for s in world.sites)):
        f[f"{name} CPU s"] = seconds(after[name] - before[name])
    phase.status = "finished" if len(rtts) == n else ("partial" if rtts else "not finished")
    return phase


def measure_heartbeats(world: Tree, options: Options) -> tuple[Phase, dict[str, Any]]:
    """Steady state: every process's CPU and RSS, the brokers' and the store's rates."""
    phase = Phase("heartbeats (steady state)")
    time.sleep(options.settle_s)
    live = {s.name: [w for r in s.fleets.ask("live") for w in r] for s in world.sites}
    n_live = sum(len(v) for v in live.values())
    psutil.cpu_percent(None)
    first = {s.name: s.counter.next_tick() for s in world.sites}
    db0 = world.store.snapshot()
    cpu0 = world.cpu()
    t0 = time.time()
    rss_max = world.rss()
    samples: dict[str, list[Worker]] = {s.name: [] for s in world.sites}
    next_sample = t0 + min(1.0, options.heartbeat_s / 2)
    end = t0 + options.duration_s
    while (now := time.time()) < end:
        rss_now = world.rss()
        rss_max = {k: max(v, rss_now[k]) for k, v in rss_max.items()}
        if now >= next_sample:
            per_site = max(1, options.lag_sample // len(world.sites))
            for site in world.sites:
                for worker_id in world.rng.sample(
                    live[site.name], min(per_site, len(live[site.name]))
                ):
                    samples[site.name].append(site.client.worker(worker_id))
            next_sample += options.heartbeat_s
        time.sleep(max(0.0, min(1.0, end - time.time())))
    wall = time.time() - t0
    cpu1 = world.cpu()
    busy = psutil.cpu_percent(None)
    last = {s.name: s.counter.next_tick() for s in world.sites}
    time.sleep(STATS_FLUSH_S)
    db1 = world.store.snapshot()
    sent: dict[str, list[float]] = {}
    for reply in world.fleets.ask("sent"):
        sent.update(reply)
    alives = sum(1 for times in sent.values() for at in times if t0 <= at < t0 + wall)
    f = phase.figures
    f["workers beating"] = n_live
    f["settle s, window s"] = f"{options.settle_s:g}, {wall:.1f}"
    f["alive messages/s (sent by the fakes)"] = round(alives / wall, 1)
    f["alive per worker per s"] = round(alives / wall / max(n_live, 1), 4)
    for name, before in cpu0.items():
        f[f"{name} CPU % of one core"] = round(100 * (cpu1[name] - before) / wall, 1)
    for name, value in rss_max.items():
        if name != "fakes":
            f[f"{name} RSS MB (max)"] = round(value, 1)
    f["machine CPU busy % (all cores)"] = busy
    baseline: dict[str, Any] = {"sys": {}, "store": {}}
    for site in world.sites:
        rates = sys_rates(first[site.name], last[site.name])
        baseline["sys"][site.name] = rates
        workers = max(len(live[site.name]), 1)
        f[f"broker {site.name}: PUBLISH in / out per s"] = (
            f"{rates['publish/messages/received']:.0f} / {rates['publish/messages/sent']:.0f}"
        )
        f[f"broker {site.name}: packets in per worker per s"] = round(
            rates["messages/received"] / workers, 4
        )
        f[f"broker {site.name}: bytes in per worker per s"] = round(
            rates["bytes/received"] / workers, 1
        )
        f[f"broker {site.name}: bytes out per worker per s"] = round(
            rates["bytes/sent"] / workers, 1
        )
    commits, pg_cpu, rows = store_figures(db0, db1, world.store.schemas)
    db_wall = db1.at - db0.at
    baseline["store"] = {
        "commits": commits / db_wall,
        "rows": {k: v / db_wall for k, v in rows.items()},
    }
    f["store transactions/s (all processes, reads too)"] = round(commits / db_wall, 1)
    for name, count in rows.items():
        f[f"store rows written/s ({name})"] = round(count / db_wall, 1)
    f["PostgreSQL backends CPU % of one core"] = round(100 * pg_cpu / db_wall, 1)
    for site in world.sites:
        got = lags(samples[site.name], sent)
        f.update({f"{site.name} {k}": v for k, v in spread(got, ms, "lag ms").items()})
    phase.status = "finished"
    return phase, baseline


def _finished(client: Client) -> dict[str, int]:
    """The root's ``edgeplane_tasks_finished`` counter, by final state."""
    counts = {}
    for line in client.metrics().splitlines():
        if line.startswith(FINISHED):  # edgeplane_tasks_finished_total{state="completed"} 9.0
            counts[line.split('"')[1]] = int(float(line.rsplit(" ", 1)[1]))
    return counts


def _traffic(fleets: Fleets) -> dict[str, int]:
    """What the fakes of ``fleets`` were sent and sent back, so far."""
    totals = {"starts": 0, "tasks": 0, "events": 0, "acks": 0}
    for status in fleets.ask("status"):
        for key in totals:
            totals[key] += status["traffic"][key]
    return totals


def measure_batch(world: Tree, tasks: int, baseline: dict[str, Any]) -> Phase:
    """``tasks`` no-op wasm tasks through the root in one batch, until the root counts
    them completed."""
    phase = Phase(f"{tasks:,} tasks through the root")
    spec = {**wasm_noop(), "start": True}
    done0 = _finished(world.root_client)
    progress: list[tuple[float, int]] = []
    traffic0 = {site.name: _traffic(site.fleets) for site in world.sites}
    first = {s.name: s.counter.next_tick() for s in world.sites}
    db0 = world.store.snapshot()
    cpu0 = world.cpu()
    began = time.time()
    world.root_client.submit_many([spec] * tasks)
    submitted = time.time()
    deadline = time.monotonic() + BATCH_BUDGET_S
    done = 0
    by_state: dict[str, int] = {}
    still_since = time.monotonic()
    # How far behind each manager's view of its workers falls while the tasks go through:
    # a manager behind by more than the missed beats' span declares beating workers lost.
    observed: dict[str, list[Worker]] = {s.name: [] for s in world.sites}
    # only workers that registered: the others are not the manager's to show
    beating = {s.name: [w for r in s.fleets.ask("live") for w in r] for s in world.sites}
    next_sample = time.monotonic()
    while time.monotonic() < deadline:
        if time.monotonic() >= next_sample:
            for site in world.sites:
                pool = beating[site.name]
                for worker_id in world.rng.sample(pool, min(BATCH_LAG_SAMPLE, len(pool))):
                    with suppress(NotFound):  # deleted meanwhile: nothing to read
                        observed[site.name].append(site.client.worker(worker_id))
            next_sample += 1.0
        now = _finished(world.root_client)
        counted = {k: v - done0.get(k, 0) for k, v in now.items() if v - done0.get(k, 0)}
        if counted != by_state:
            still_since = time.monotonic()
        by_state = counted
        # A task the root counted failed (lost) may still end completed when its real end
        # arrives: wait for the completions, or for a standstill once every task ended.
        done = by_state.get("completed", 0)
        progress.append((time.time() - began, done))
        if done >= tasks:
            break
        ended_all = sum(by_state.values()) >= tasks
        if ended_all and time.monotonic() - still_since > STANDSTILL_S:
            break
        time.sleep(0.25)
    ended = time.time()
    cpu1 = world.cpu()
    last = {s.name: s.counter.next_tick() for s in world.sites}
    time.sleep(STATS_FLUSH_S)
    db1 = world.store.snapshot()
    per_site = {
        site.name: {k: v - traffic0[site.name][k] for k, v in _traffic(site.fleets).items()}
        for site in world.sites
    }
    traffic = {k: sum(t[k] for t in per_site.values()) for k in traffic0[world.sites[0].name]}
    wall = ended - began
    f = phase.figures
    f["ends counted by the root, by state"] = ", ".join(
        f"{k} {v}" for k, v in sorted(by_state.items())
    )
    # after the figures above: a count of rows costs the root more than its counter
    f["tasks run per cluster (by its workers)"] = ", ".join(
        f"{name} {t['tasks']}" for name, t in per_site.items()
    )
    f["tasks completed (root API)"] = world.root_client.list_tasks(state="completed", limit=1).total
    sent: dict[str, list[float]] = {}
    for reply in world.fleets.ask("sent"):
        sent.update(reply)
    for site in world.sites:
        got = lags(observed[site.name], sent)
        if got:
            f[f"{site.name}: heartbeat lag during the batch, p50 / max ms"] = (
                f"{ms(percentile(sorted(got), 50))} / {ms(max(got))}"
            )
    for site in world.sites:  # a worker lost meanwhile fails its tasks (then their real end)
        lost = {w for w, at in offline_log(site.manager.stderr_path) if at >= began}
        f[f"{site.name}: workers marked offline during the batch (log)"] = len(lost)
    failed = world.root_client.list_tasks(state="failed", limit=3).items
    if failed:  # why, in the task's own words
        phase.note = "; ".join(sorted({f"failed: {task.reason}" for task in failed}))
    for share in (0.5, 0.9):
        reached = next((at for at, n in progress if n >= share * tasks), None)
        if reached is not None:
            f[f"s until {share:.0%} finished"] = seconds(reached)
    f["submit: tasks/s (POST /tasks/batch, 1,000 per call)"] = round(tasks / (submitted - began), 1)
    f["end to end: tasks/s (first submit → root counts them completed)"] = round(done / wall, 1)
    for name, before in cpu0.items():
        f[f"{name} CPU % of one core"] = round(100 * (cpu1[name] - before) / wall, 1)
        if done:
            f[f"{name} CPU ms per task"] = round(1000 * (cpu1[name] - before) / done, 3)
    if done:
        f["worker side: task.start / task.events / task.ack messages per task"] = (
            f"{traffic['starts'] / done:.3f} / {traffic['events'] / done:.3f}"
            f" / {traffic['acks'] / done:.3f}"
        )
        publish_in = publish_out = packets = bytes_ = 0.0
        for site in world.sites:
            span, deltas = sys_deltas(first[site.name], last[site.name])
            rates = baseline["sys"][site.name]
            publish_in += (
                deltas["publish/messages/received"] - rates["publish/messages/received"] * span
            )
            publish_out += deltas["publish/messages/sent"] - rates["publish/messages/sent"] * span
            packets += (
                deltas["messages/received"] + deltas["messages/sent"]
                - (rates["messages/received"] + rates["messages/sent"]) * span
            )  # fmt: skip
            bytes_ += (
                deltas["bytes/received"] + deltas["bytes/sent"]
                - (rates["bytes/received"] + rates["bytes/sent"]) * span
            )  # fmt: skip
        f["cluster brokers: PUBLISH in / out per task (less heartbeats)"] = (
            f"{publish_in / done:.2f} / {publish_out / done:.2f}"
        )
        f["cluster brokers: MQTT packets in+out per task (less heartbeats)"] = round(
            packets / done, 2
        )
        f["cluster brokers: bytes in+out per task (less heartbeats)"] = round(bytes_ / done)
        commits, pg_cpu, rows = store_figures(db0, db1, world.store.schemas)
        db_wall = db1.at - db0.at
        commits -= baseline["store"]["commits"] * db_wall
        f["store transactions per task (all processes, less steady state)"] = round(
            commits / done, 2
        )
        for name, count in rows.items():
            count -= baseline["store"]["rows"][name] * db_wall
            # a cluster's per task it ran; the root's per task of the batch
            ran = per_site[name]["tasks"] if name in per_site else done
            if ran:
                f[f"store rows written per task ({name})"] = round(count / ran, 2)
        f["PostgreSQL backends CPU ms per task"] = round(1000 * pg_cpu / done, 3)
    phase.status = "finished" if done >= tasks else ("partial" if done else "not finished")
    return phase


#: Log lines (``msg``) that say a run was disturbed, counted per process.
INCIDENTS = (
    "worker offline",
    "tasks lost",
    "cluster offline",
    "no longer leading",
    "a lost task's real end reported",
)


def incidents(world: Tree) -> Phase:
    """What went wrong during the run, from each process's log: a loaded machine shows up
    here first (workers declared lost while beating, a leader deposed when it could not
    renew its lease in time)."""
    phase = Phase("incidents (logs, whole run)", status="finished")
    children = {"root": world.root, **{f"manager {s.name}": s.manager for s in world.sites}}
    for name, child in children.items():
        counts = dict.fromkeys(INCIDENTS, 0)
        for line in child.stderr_path.read_text(errors="replace").splitlines():
            with suppress(ValueError):  # not one of its JSON lines
                msg = json.loads(line).get("msg")
                if msg in counts:
                    counts[msg] += 1
        shown = ", ".join(f"{k} {v}" for k, v in counts.items() if v)
        phase.figures[name] = shown or "none"
    return phase


def guarded(name: str, step: Any) -> list[Phase]:
    try:
        result = step()
    except (EdgeplaneError, httpx.HTTPError, psutil.Error, OSError, asyncpg.PostgresError) as exc:
        return [Phase(name, note=f"{type(exc).__name__}: {exc}")]
    return result if isinstance(result, list) else [result]


def run_hierarchy(
    n: int, options: Options, tasks: int, postgres: str, work_dir: Path, console: Console
) -> CountReport:
    with tree(n, options, postgres, work_dir, console) as world:
        report = CountReport(workers=n, fake_processes=len(world.fleets.members))
        budget = options.register_budget_s or 60 + n / 50
        console.print(f"{n} workers over {len(CLUSTERS)} clusters: registering …")
        report.phases += guarded(
            "registration", lambda: measure_registration(world, n, budget, console)
        )
        console.print(f"settling {options.settle_s:g}s, measuring {options.duration_s:g}s …")
        baseline: dict[str, Any] = {}

        def heartbeats() -> Phase:
            phase, found = measure_heartbeats(world, options)
            baseline.update(found)
            return phase

        report.phases += guarded("heartbeats", heartbeats)
        if baseline:
            console.print(f"{tasks:,} tasks through the root …")
            report.phases += guarded("batch", lambda: measure_batch(world, tasks, baseline))
        report.phases += guarded("incidents", lambda: incidents(world))
        console.print("stopping …")
    return report


def commands(heartbeat_s: float, postgres: str) -> str:
    """The processes' command lines, as the report shows them (no token)."""
    url = server_url(postgres)
    root = root_argv(Path("DIR/root"), f"{url}?schema=S_ROOT", heartbeat_s, "FREE_PORT")
    cluster = cluster_argv(
        "site-a",
        "mqtt://127.0.0.1:PORT",
        "mqtt://127.0.0.1:ROOT_BROKER_PORT",
        f"{url}?schema=S_A",
        Path("DIR/site-a"),
        heartbeat_s,
        "FREE_PORT",
    )
    return " ; ".join(
        shlex.join(["python", *argv[1:]]) for argv in (root, [*cluster, "--join", "TOKEN"])
    )
