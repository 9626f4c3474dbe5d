"""Federated learning: edgeplane beside Flower, same model, data, rounds and clients, one run.

Two parts, each run on edgeplane and then on Flower, back to back:

1. **digits**: the example of docs/fl.md (softmax regression in numpy on scikit-learn's
   bundled digits, IID shards, FedAvg, ``lr`` 0.5, 5 local epochs) with ``--clients``
   clients for ``--rounds`` rounds. edgeplane: ``edgeplane up --workers 0`` (API, manager,
   coordinator, SQLite, its Mosquitto) and one ``edgeplane worker`` process per client;
   the experiment goes through ``POST /api/v1/fl/experiments``; the client is a host
   task, ``python -m edgeplane.fl.client``, run in each of ``--client-tasks``' modes:
   ``persistent`` (one long-lived client task per worker for the whole experiment, the
   example's setting) and ``per_round`` (a new task per client and round). Flower:
   ``flwr.server.start_server`` (FedAvg) and one ``flwr.client.start_client`` process per
   client (``bench.fl_flower``), whose ``fit`` calls the same ``edgeplane.fl.model.train``
   on the same shard (``edgeplane.fl.datastore.shard``) with the same hyperparameters and
   seed, and whose server scores every round on the same held-out set with the same code.
   edgeplane runs
   a 1-round warm-up experiment first (its coordinator loads the digits at its first
   round; Flower's server does at its start), left out of the figures.
2. **large model**: ``--big-params`` parameters (the digits model plus one array of
   zeros) and ``--big-clients`` simulated clients that send the global model back with
   noise (no training), for the coordinator's peak memory. edgeplane: that many
   ``edgeplane worker`` processes, the client a host task (``bench.fl_noise_client``,
   in each mode),
   the model given as the experiment's ``initial_model``. Flower: one process of that
   many client threads (``bench.fl_flower noise``), each its own gRPC connection. Neither
   scores that model (edgeplane's coordinator scores only the digits model itself).

Each coordinator records three moments per round: when it handed out the round
(edgeplane: ``ready_at``, when every selected client had it: the round stored, with
long-lived clients that waited for it; the first ask of those started for it, their
process's start left out as Flower's clients connect before its round 1. Else
``opened_at``, its training tasks submitted. Flower: ``configure_fit`` returned, once its
clients were connected), when the last update was in
(``last_update_at``; ``aggregate_fit`` called) and when the new version was stored
(``closed_at``: edgeplane scores it next, in the write that opens the next round;
Flower: ``evaluate`` returned). From
them, for both alike:

- **time per round**: first round handed out → last round closed, over the rounds; and
  after the first round (first closed → last closed, over the rounds but one: a
  long-lived client's process starts in round 1, Flower's clients before round 1);
- **coordinator turnaround per round**: last update in → the next round handed out (the
  last round: → closed): aggregation, scoring, storing and opening the next round, the
  time the coordinator
  alone holds the experiment up;
- **coordinator CPU per round**: the coordinator process's CPU (psutil, user + system)
  from before the experiment to after it, over the rounds: the ``up`` process for
  edgeplane (its Mosquitto is a child, shown apart), the server process for Flower;
- **peak RSS**: the kernel's high-water mark of that process (``VmHWM``), and its RSS
  just before the experiment.

Flower is installed for the benchmark only, into a venv of its own (``bench/.venv-flower``,
``ensure_flower``): flwr 1.42 pins FastAPI, Starlette, uvicorn, rich and cryptography
below the versions edgeplane runs on, so installing it beside edgeplane would downgrade
edgeplane's own dependencies. Nothing here asserts on time; every wait is bounded.

    python -m bench.fl [--quick] [--rounds 10] [--clients 4] [--big-clients 50]
                       [--big-params 1000000] [--big-rounds 2]
                       [--client-tasks persistent,per_round] [--json FILE]
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import secrets
import shlex
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import psutil
from rich.console import Console
from rich.table import Table

from bench.spine import (
    EDGEPLANE,
    READY_TIMEOUT_S,
    Child,
    clean_env,
    free_port,
    join_token,
    machine,
    machine_line,
    online,
    process,
    wait_ready,
)
from edgeplane import Client, __version__, safeyaml
from edgeplane.errors import EdgeplaneError

DESCRIPTION = __doc__.split("\n\n")[0] if __doc__ else ""
ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "src"
RESULTS = ROOT / "bench" / "results"
EXAMPLE = ROOT / "examples" / "fl" / "digits.yaml"
FLOWER_VERSION = "1.42.0"
FLOWER_PACKAGES = [f"flwr=={FLOWER_VERSION}", "scikit-learn"]
FLOWER_VENV = ROOT / "bench" / ".venv-flower"
PIP_TIMEOUT_S = 900.0
MB = 2**20
#: How often a wait checks its condition (workers online, Flower's events file).
POLL_S = 0.2
#: How often the experiment is read while it runs: the coordinator's own timestamps are
#: the figures, so this only ends the wait; each read is a GET the coordinator process
#: serves (its CPU is counted), so it is rare.
EXPERIMENT_POLL_S = 1.0
#: Workers started at once: 50 Python processes starting together on 2 cores would each
#: wait on the others; a few at a time come online as fast and keep the box responsive.
START_BATCH = 8
EXPERIMENT_BUDGET_S = 900.0


@dataclass(frozen=True)
class Plan:
    rounds: int
    clients: int
    big_clients: int
    big_params: int
    big_rounds: int
    #: edgeplane's client task modes to run (``client_tasks``), each beside Flower
    client_tasks: tuple[str, ...] = ("persistent", "per_round")


FULL = Plan(rounds=10, clients=4, big_clients=50, big_params=1_000_000, big_rounds=2)
QUICK = Plan(rounds=3, clients=4, big_clients=10, big_params=1_000_000, big_rounds=1)
MODES = ("persistent", "per_round")


@dataclass
class Run:
    """One system's run of one part: what its coordinator recorded, and its process."""

    system: str
    version: str
    part: str
    rounds: int
    clients: int
    #: edgeplane's ``client_tasks`` (empty for Flower)
    mode: str = ""
    processes: list[str] = field(default_factory=list)
    #: round -> epoch seconds, as the coordinator recorded them
    opened: dict[int, float] = field(default_factory=dict)
    last_update: dict[int, float] = field(default_factory=dict)
    closed: dict[int, float] = field(default_factory=dict)
    #: round -> the global model's metrics on the held-out set
    metrics: dict[int, dict[str, float]] = field(default_factory=dict)
    cpu_s: float | None = None
    rss_before_mb: float | None = None
    peak_rss_mb: float | None = None
    #: what else was measured (edgeplane: the split of a round by its tasks' timestamps)
    extra: dict[str, float] = field(default_factory=dict)
    #: edgeplane, when round 1 was ready after it was handed out: its client tasks'
    #: submission (``opened_at``), for the time per round with their start in it
    submitted: float | None = None
    status: str = "not finished"
    notes: list[str] = field(default_factory=list)

    def figures(self) -> dict[str, float]:
        """The report's figures from the recorded moments (missing ones left out)."""
        out: dict[str, float] = {}
        r = self.rounds
        if r in self.metrics:
            out["accuracy"] = self.metrics[r].get("accuracy", float("nan"))
            out["loss"] = self.metrics[r].get("loss", float("nan"))
        if 1 in self.opened and r in self.closed:
            out["s per round"] = (self.closed[r] - self.opened[1]) / r
        if self.submitted is not None and r in self.closed:
            out["s per round from submit"] = (self.closed[r] - self.submitted) / r
        if r > 1 and 1 in self.closed and r in self.closed:
            out["s per round after 1"] = (self.closed[r] - self.closed[1]) / (r - 1)
        turnaround, aggregate, handout, clients = [], [], [], []
        for n in range(1, r + 1):
            if n not in self.last_update or n not in self.closed:
                continue
            aggregate.append(self.closed[n] - self.last_update[n])
            end = self.opened.get(n + 1, self.closed[n]) if n < r else self.closed[n]
            turnaround.append(end - self.last_update[n])
            if n < r and n + 1 in self.opened:
                handout.append(self.opened[n + 1] - self.closed[n])
            if n in self.opened:
                clients.append(self.last_update[n] - self.opened[n])
        for name, values in (
            ("turnaround ms", turnaround),
            ("aggregate ms", aggregate),
            ("handout ms", handout),
            ("clients ms", clients),
        ):
            if values:
                out[name] = statistics.median(values) * 1000
        if turnaround:
            out["turnaround max ms"] = max(turnaround) * 1000
        if self.cpu_s is not None:
            out["cpu s per round"] = self.cpu_s / r
        if self.peak_rss_mb is not None:
            out["peak rss mb"] = self.peak_rss_mb
        if self.rss_before_mb is not None:
            out["rss before mb"] = self.rss_before_mb
        if self.peak_rss_mb is not None and self.rss_before_mb is not None:
            out["rss added mb"] = self.peak_rss_mb - self.rss_before_mb
        out.update(self.extra)
        return out


@dataclass
class Report:
    command: str
    plan: Plan
    machine: dict[str, Any]
    runs: list[Run] = field(default_factory=list)


# --- processes ----------------------------------------------------------------------------


def peak_rss_mb(proc: psutil.Process) -> float:
    """The kernel's high-water mark of the process's resident set (``VmHWM``)."""
    for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024, 1)
    raise EdgeplaneError(f"no VmHWM for process {proc.pid}")


def own_cpu_s(proc: psutil.Process) -> float:
    times = proc.cpu_times()
    return float(times.user + times.system)


def rss_mb(proc: psutil.Process) -> float:
    return round(proc.memory_info().rss / MB, 1)


def wait_for(
    check: Callable[[], bool], deadline: float, what: str, *alive: Child, every: float = POLL_S
) -> None:
    """Poll ``check`` until it holds; fail at the deadline or when a child died."""
    while time.monotonic() < deadline:
        if check():
            return
        for child in alive:
            if not child.alive():
                raise EdgeplaneError(f"{what}: a process exited:\n{child.stderr_tail(8)}")
        time.sleep(every)
    raise EdgeplaneError(f"{what}: not within the time allowed")


def listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def shown(argv: Sequence[str]) -> str:
    return shlex.join(["python", *argv[1:]])


# --- edgeplane ----------------------------------------------------------------------------


def experiment(
    plan: Plan,
    *,
    big: bool,
    rounds: int,
    clients: int,
    python: str = sys.executable,
    mode: str = "persistent",
) -> dict[str, Any]:
    """The digits example as the repo ships it, with this run's rounds and clients; the
    large-model run's client is ``bench.fl_noise_client`` instead."""
    spec: dict[str, Any] = safeyaml.load(EXAMPLE.read_text())
    spec["name"] = "bench-big" if big else "bench-digits"
    module = "bench.fl_noise_client" if big else "edgeplane.fl.client"
    spec["workload"]["command"] = [python, "-m", module]
    # this tree's code for the clients too, as for `up` and the workers
    spec["workload"]["env"] = {"PYTHONPATH": f"{SRC}{os.pathsep}{ROOT}", "PATH": os.environ["PATH"]}
    spec["rounds"] = rounds
    spec["clients_per_round"] = clients
    spec["min_clients"] = clients
    spec["round_timeout_s"] = 600
    spec["on_short"] = "fail"
    spec["client_tasks"] = mode
    return spec


def big_model(params: int) -> str:
    """The digits model plus an array of zeros to ``params`` parameters, as an
    experiment's ``initial_model.data`` (base64 of the raw ``f32`` encoding, docs/fl.md).
    The coordinator scores only the digits model itself: this one it does not score, and
    neither does Flower's server in this run (``bench.fl_flower``)."""
    import numpy as np

    from edgeplane.fl import model, updates

    arrays = {**model.initial(), "extra": np.zeros(max(params - 650, 0), np.float32)}
    return base64.b64encode(updates.encode_raw(arrays)).decode()


@contextmanager
def edgeplane_up(work_dir: Path) -> Iterator[tuple[Child, Client, str, str, dict[str, str]]]:
    """``edgeplane up --workers 0`` on a fresh data dir: (process, client, url, broker, env)."""
    token = secrets.token_urlsafe(16)
    env = clean_env(token)
    env["PYTHONPATH"] = os.pathsep.join([str(SRC), str(ROOT)])
    port = free_port()
    argv = [*EDGEPLANE, "up", "--data-dir", str(work_dir / "up"), "--port", str(port)]
    argv += ["--workers", "0"]
    url = f"http://127.0.0.1:{port}"
    with ExitStack() as stack:
        up = stack.enter_context(process(argv, env, work_dir, "up"))
        client = stack.enter_context(Client(url, token, timeout=30))
        broker = wait_ready(url, up, time.monotonic() + READY_TIMEOUT_S)
        yield up, client, url, broker, env


def start_workers(
    stack: ExitStack,
    ids: Sequence[str],
    *,
    up: Child,
    client: Client,
    url: str,
    broker: str,
    env: dict[str, str],
    work_dir: Path,
) -> list[str]:
    """An ``edgeplane worker`` process per id, joined to ``up``'s broker, each online;
    the commands (join tokens left out)."""
    commands: list[str] = []
    token = env["EDGEPLANE_ADMIN_TOKEN"]
    for at in range(0, len(ids), START_BATCH):
        batch = ids[at : at + START_BATCH]
        children = []
        for worker_id in batch:
            join = join_token(url, token, worker_id)
            argv = [*EDGEPLANE, "worker", "--manager", broker, "--worker-id", worker_id]
            argv += ["--join", join, "--data-dir", str(work_dir / worker_id), "--allow-host"]
            if os.geteuid() == 0:
                # the default user for host tasks under root is nobody, who cannot read
                # this interpreter when it lives under /root (pyenv): as the e2e tests do
                argv += ["--host-user", "root"]
            children.append(stack.enter_context(process(argv, env, work_dir, worker_id)))
            commands.append(shown(argv).replace(join, "JOIN_TOKEN"))
        deadline = time.monotonic() + READY_TIMEOUT_S * 4
        for worker_id, child in zip(batch, children, strict=True):
            wait_for(partial(online, client, worker_id), deadline, f"{worker_id} online", child, up)
    return commands


def run_edgeplane(plan: Plan, work_dir: Path, *, big: bool, console: Console, mode: str) -> Run:
    rounds = plan.big_rounds if big else plan.rounds
    clients = plan.big_clients if big else plan.clients
    part = "large model" if big else "digits"
    run = Run("edgeplane", __version__, part, rounds, clients, mode=mode)
    spec = experiment(plan, big=big, rounds=rounds, clients=clients, mode=mode)
    if big:
        spec["workload"]["env"]["FL_BENCH_SAMPLES"] = "100"
    with ExitStack() as stack:
        up, client, url, broker, env = stack.enter_context(edgeplane_up(work_dir))
        run.processes = [shown([*EDGEPLANE, "up", "--workers", "0", "…"])]
        http = stack.enter_context(
            httpx.Client(
                base_url=f"{url}/api/v1",
                headers={"Authorization": f"Bearer {env['EDGEPLANE_ADMIN_TOKEN']}"},
                timeout=60,
            )
        )
        if big:
            spec["initial_model"] = {"data": big_model(plan.big_params)}
        console.print(f"  edgeplane: starting {clients} workers …")
        ids = [f"fl-{i:03d}" for i in range(1, clients + 1)]
        started = partial(
            start_workers, stack, up=up, client=client, url=url, broker=broker, env=env
        )
        commands = started(ids[:START_BATCH], work_dir=work_dir)
        # warm-up: one round of the digits example first, on the workers started so far.
        # The coordinator loads the digits
        # (scikit-learn's import: ~80 MB, and a CPU-second or more here) at its first
        # shard or score; Flower's server loads them before it serves, outside its
        # measured window: edgeplane's load is kept out of its window too
        few = min(clients, START_BATCH)
        warm = experiment(plan, big=False, rounds=1, clients=few)
        warm["name"] = "bench-warmup"
        console.print(f"  edgeplane: a 1-round warm-up experiment on {few} workers …")
        wait_for(
            partial(ended, http, create(http, warm)),
            time.monotonic() + EXPERIMENT_BUDGET_S,
            "the warm-up experiment",
            up,
            every=EXPERIMENT_POLL_S,
        )
        run.notes.append("after a 1-round warm-up experiment (its figures left out)")
        commands += started(ids[START_BATCH:], work_dir=work_dir)
        run.processes += commands[:1] + ([f"… {clients} workers in all"] if clients > 1 else [])
        ps = up.ps
        run.rss_before_mb = rss_mb(ps)
        cpu_before = own_cpu_s(ps)
        mosquitto = [c for c in ps.children(recursive=True)]
        mosquitto_before = sum(own_cpu_s(c) for c in mosquitto)
        exp_id = create(http, spec)
        console.print(f"  edgeplane: experiment {exp_id}, {rounds} rounds x {clients} clients …")
        wait_for(
            partial(ended, http, exp_id),
            time.monotonic() + EXPERIMENT_BUDGET_S,
            "the experiment",
            up,
            every=EXPERIMENT_POLL_S,
        )
        run.cpu_s = own_cpu_s(ps) - cpu_before
        run.peak_rss_mb = peak_rss_mb(ps)
        got: dict[str, Any] = http.get(f"/fl/experiments/{exp_id}").json()
        with suppress(psutil.Error):  # its broker, apart: not the coordinator's own
            run.extra["mosquitto cpu s per round"] = (
                sum(own_cpu_s(c) for c in mosquitto) - mosquitto_before
            ) / rounds
        if got["state"] != "completed":
            run.notes.append(f"experiment {got['state']}: {got.get('reason')}")
        for record in got["rounds"]:
            if record["state"] != "closed":
                run.notes.append(
                    f"round {record['round']} attempt {record['attempt']}: {record['state']}"
                )
                continue
            n = record["round"]
            run.opened[n] = record.get("ready_at") or record["opened_at"]
            if n == 1 and record.get("ready_at"):  # shown too: with its clients' start
                run.submitted = record["opened_at"]
            run.last_update[n] = record["last_update_at"]
            run.closed[n] = record["closed_at"]
            run.metrics[n] = record["metrics"]
        if mode == "per_round":  # a long-lived client's task spans every round
            run.extra.update(task_split(client, got))
        run.status = "finished" if got["state"] == "completed" else "partial"
    return run


def create(http: httpx.Client, spec: dict[str, Any]) -> str:
    """``POST /api/v1/fl/experiments``: the new experiment's id."""
    created = http.post("/fl/experiments", json=spec)
    created.raise_for_status()
    exp_id: str = created.json()["id"]
    return exp_id


def ended(http: httpx.Client, exp_id: str) -> bool:
    return bool(http.get(f"/fl/experiments/{exp_id}").json()["state"] != "running")


def task_split(client: Client, exp: dict[str, Any]) -> dict[str, float]:
    """Medians over the rounds' training tasks, from their own timestamps: handed out →
    started on the worker (the task machinery: store, schedule, MQTT, the worker's start
    of the process) and started → finished (the client process: imports, fetches,
    training, the update's POST)."""
    dispatch, client_run = [], []
    for record in exp["rounds"]:
        opened = record.get("opened_at")
        for task_id in record.get("tasks", {}).values():
            task = client.get(task_id)
            if opened and task.started_at:
                dispatch.append(task.started_at - opened)
            if task.started_at and task.finished_at:
                client_run.append(task.finished_at - task.started_at)
    out: dict[str, float] = {}
    if dispatch:
        out["task start ms"] = statistics.median(dispatch) * 1000
    if client_run:
        out["task run ms"] = statistics.median(client_run) * 1000
    return out


# --- Flower -------------------------------------------------------------------------------


def flower_python() -> Path:
    return FLOWER_VENV / "bin" / "python"


def ensure_flower(console: Console) -> str:
    """Flower in its own venv (installed once, for the benchmark only); its version."""
    py = flower_python()
    probe = [str(py), "-c", "import flwr, sklearn; print(flwr.__version__)"]
    if py.exists():
        found = subprocess.run(probe, capture_output=True, text=True, timeout=120)
        if found.returncode == 0 and found.stdout.strip() == FLOWER_VERSION:
            return FLOWER_VERSION
    if not py.exists():
        subprocess.run([sys.executable, "-m", "venv", str(FLOWER_VENV)], check=True, timeout=120)
    argv = [str(py), "-m", "pip", "install", "-q", *FLOWER_PACKAGES]
    console.print(f"installing Flower for the benchmark: {shlex.join(argv)}", style="yellow")
    subprocess.run(argv, check=True, timeout=PIP_TIMEOUT_S)
    found = subprocess.run(probe, capture_output=True, text=True, timeout=120, check=True)
    return found.stdout.strip()


def events(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        with suppress(ValueError):  # a line being written
            out.append(json.loads(line))
    return out


def run_flower(plan: Plan, work_dir: Path, version: str, *, big: bool, console: Console) -> Run:
    rounds = plan.big_rounds if big else plan.rounds
    clients = plan.big_clients if big else plan.clients
    run = Run("flower", version, "large model" if big else "digits", rounds, clients)
    spec = experiment(plan, big=big, rounds=rounds, clients=clients)
    py = str(flower_python())
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(SRC)])
    env["FLWR_TELEMETRY_ENABLED"] = "0"  # nothing leaves the machine
    port = free_port()
    log = work_dir / "flower-events.jsonl"
    server_argv = [py, "-m", "bench.fl_flower", "server", "--port", str(port)]
    server_argv += ["--clients", str(clients), "--rounds", str(rounds), "--events", str(log)]
    server_argv += ["--hyperparams", json.dumps(spec["hyperparams"])]
    server_argv += ["--seed", str(spec["data"]["seed"])]
    if big:
        server_argv += ["--params", str(plan.big_params)]
    if big:
        client_argvs = [[py, "-m", "bench.fl_flower", "noise", "--port", str(port)]]
        client_argvs[0] += ["--count", str(clients), "--samples", "100"]
    else:
        client_argvs = [
            [
                *[py, "-m", "bench.fl_flower", "client", "--port", str(port), "--index", str(i)],
                *["--clients", str(clients), "--split", spec["data"]["split"]],
                *["--seed", str(spec["data"]["seed"])],
            ]
            for i in range(clients)
        ]
    run.processes = [shown(server_argv), shown(client_argvs[0])]
    if len(client_argvs) > 1:
        run.processes.append(f"… {len(client_argvs)} client processes in all")
    with ExitStack() as stack:
        server = stack.enter_context(held(server_argv, env, work_dir, "flower-server"))
        wait_for(lambda: listening(port), time.monotonic() + 120, "Flower's server", server)
        ps = server.ps
        run.rss_before_mb = rss_mb(ps)
        cpu_before = own_cpu_s(ps)
        console.print(f"  flower: {rounds} rounds x {clients} clients …")
        for i, argv in enumerate(client_argvs):
            stack.enter_context(process(argv, env, work_dir, f"flower-client-{i}"))

        def done() -> bool:
            return any(e["event"] == "done" for e in events(log))

        wait_for(done, time.monotonic() + EXPERIMENT_BUDGET_S, "Flower's rounds", server)
        run.cpu_s = own_cpu_s(ps) - cpu_before
        run.peak_rss_mb = peak_rss_mb(ps)
    for event in events(log):
        n = int(event["round"])
        if event["event"] == "opened":
            run.opened[n] = event["t"]
        elif event["event"] == "last_update":
            run.last_update[n] = event["t"]
            if event.get("failures"):
                run.notes.append(f"round {n}: {event['failures']} clients failed")
        elif event["event"] == "closed":
            run.closed[n] = event["t"]
            run.metrics[n] = {k: float(event[k]) for k in ("accuracy", "loss") if k in event}
    run.status = "finished" if len(run.closed) == rounds else "partial"
    return run


@contextmanager
def held(argv: list[str], env: dict[str, str], log_dir: Path, name: str) -> Iterator[Child]:
    """A child whose stdin stays open until it is stopped (Flower's server waits on it
    after its last round, so its peak RSS and CPU can still be read)."""
    out = (log_dir / f"{name}.out").open("wb")
    err = (log_dir / f"{name}.err").open("wb")
    proc = subprocess.Popen(argv, env=env, stdin=subprocess.PIPE, stdout=out, stderr=err)
    child = Child(proc, log_dir / f"{name}.out", log_dir / f"{name}.err")
    try:
        yield child
    finally:
        with suppress(OSError):  # it ended already
            if proc.stdin is not None:
                proc.stdin.close()
        with suppress(subprocess.TimeoutExpired):  # stopped below
            proc.wait(10)
        child.stop()
        out.close()
        err.close()


# --- report -------------------------------------------------------------------------------

ROWS: list[tuple[str, str, str]] = [
    # (figure, label, format)
    ("accuracy", "test accuracy after the last round", "pct"),
    ("loss", "test loss after the last round", "f3"),
    ("s per round", "time per round, s (first out → last closed, ÷ rounds)", "f2"),
    ("s per round after 1", "  after round 1 (first closed → last closed, ÷ rounds - 1)", "f2"),
    (
        "s per round from submit",
        "  from round 1's client tasks submitted (their start in it)",
        "f2",
    ),
    ("turnaround ms", "coordinator turnaround per round, ms, median", "f1"),
    ("turnaround max ms", "  max", "f1"),
    ("aggregate ms", "  last update → new version stored (Flower: and scored)", "f1"),
    ("handout ms", "  → next round handed out", "f1"),
    ("clients ms", "round out → last update in, ms, median", "f1"),
    ("task start ms", "  of which: task handed out → started on its worker", "f1"),
    ("task run ms", "  of which: client task process, started → finished", "f1"),
    ("cpu s per round", "coordinator process CPU per round, s", "f3"),
    ("mosquitto cpu s per round", "  its Mosquitto's CPU per round, s", "f3"),
    ("rss before mb", "coordinator RSS before the experiment, MB", "f1"),
    ("peak rss mb", "coordinator peak RSS (VmHWM), MB", "f1"),
    ("rss added mb", "  peak - before, MB", "f1"),
]


def _cell(value: float | None, fmt: str) -> str:
    if value is None:
        return "-"
    if fmt == "pct":
        return f"{value * 100:.2f} %"
    return f"{value:,.{fmt[1:]}f}"


def _compare(ours: float | None, theirs: float | None, fmt: str) -> str:
    if ours is None or theirs is None:
        return "-"
    if fmt == "pct":
        return f"{(ours - theirs) * 100:+.2f} points"
    return f"{ours / theirs:.2f}x" if theirs else "-"


def table(title: str, runs: Sequence[Run], skip: frozenset[str] = frozenset()) -> Table:
    """A column per run, and one per edgeplane run ÷ Flower's (when Flower ran)."""
    out = Table(title=title, caption="ratio < 1: edgeplane is faster or smaller")
    out.add_column("figure")
    for run in runs:
        out.add_column(f"{run.system} {run.mode}\n{run.version}".strip(), justify="right")
    flower = next((i for i, run in enumerate(runs) if run.system == "flower"), None)
    ours = [i for i, run in enumerate(runs) if run.system != "flower"] if flower is not None else []
    for i in ours:
        out.add_column(f"{runs[i].mode}\n÷ flower", justify="right")
    figures = [run.figures() for run in runs]
    for key, label, fmt in ROWS:
        if key in skip:
            continue
        values = [f.get(key) for f in figures]
        if all(v is None for v in values):
            continue
        cells = [_cell(v, fmt) for v in values]
        if flower is not None:
            cells += [_compare(values[i], values[flower], fmt) for i in ours]
        out.add_row(label, *cells)
    out.add_row("status", *(run.status for run in runs), *([""] * len(ours)))
    return out


def render(report: Report, console: Console) -> None:
    plan = report.plan
    for part, rounds, clients in (
        ("digits", plan.rounds, plan.clients),
        ("large model", plan.big_rounds, plan.big_clients),
    ):
        runs = [r for r in report.runs if r.part == part]
        if not runs:
            continue
        what = (
            "softmax regression, 650 parameters"
            if part == "digits"
            else (f"{plan.big_params:,} parameters, simulated clients")
        )
        # the simulated clients send noise: the model's score says nothing there
        skip = frozenset({"accuracy", "loss"}) if part == "large model" else frozenset()
        console.print(table(f"{part}: {what}, {rounds} rounds x {clients} clients", runs, skip))
        if part == "large model":
            console.print(
                "  the clients are simulated differently (edgeplane: a process per client;"
                " Flower: threads of one process): compare the coordinator's rows, not the"
                " time per round"
            )
    for run in report.runs:
        console.print(f"[bold]{run.system}[/bold] {run.version} {run.mode}, {run.part}")
        for command in run.processes:
            console.print(f"  runs: {command}")
        for note in run.notes:
            console.print(f"  note: {note}")
    console.print(machine_line(report.machine))
    console.print(f"command: {report.command}")


# --- main ---------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.fl", description=DESCRIPTION)
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"{QUICK.rounds} rounds; the large model with {QUICK.big_clients} clients, "
        f"{QUICK.big_rounds} round: for development only",
    )
    parser.add_argument("--rounds", type=int, default=None, help="digits rounds")
    parser.add_argument("--clients", type=int, default=None, help="digits clients")
    parser.add_argument("--big-clients", type=int, default=None, help="large-model clients")
    parser.add_argument("--big-params", type=int, default=None, help="large-model parameters")
    parser.add_argument("--big-rounds", type=int, default=None, help="large-model rounds")
    parser.add_argument(
        "--parts", default="digits,big", help="digits, big, or both (comma-separated)"
    )
    parser.add_argument(
        "--client-tasks",
        default=",".join(MODES),
        help="edgeplane's client task modes to run: persistent, per_round, or both",
    )
    parser.add_argument("--json", type=Path, default=None, metavar="FILE", help="results")
    args = parser.parse_args(argv)
    base = QUICK if args.quick else FULL
    modes = tuple(m.strip() for m in args.client_tasks.split(",") if m.strip())
    if not modes or set(modes) - set(MODES):
        parser.error("--client-tasks: persistent, per_round, or both (comma-separated)")
    args.plan = Plan(
        client_tasks=modes,
        rounds=args.rounds or base.rounds,
        clients=args.clients or base.clients,
        big_clients=args.big_clients or base.big_clients,
        big_params=args.big_params or base.big_params,
        big_rounds=args.big_rounds or base.big_rounds,
    )
    parts = {p.strip() for p in args.parts.split(",") if p.strip()}
    if not parts or parts - {"digits", "big"}:
        parser.error("--parts: digits, big, or both")
    args.parts = parts
    if min(args.plan.rounds, args.plan.clients, args.plan.big_clients, args.plan.big_rounds) < 1:
        parser.error("rounds and clients must be at least 1")
    args.json = args.json or RESULTS / ("fl-quick.json" if args.quick else "fl.json")
    return args


def guarded(system: str, part: str, step: Callable[[], Run], mode: str = "") -> Run:
    """A run that failed is reported as not finished; the others still run."""
    try:
        return step()
    except Exception as exc:  # any failure, ours or Flower's, ends only its own column
        return Run(system, "?", part, 0, 0, mode, notes=[f"{type(exc).__name__}: {exc}"])


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    given = sys.argv[1:] if argv is None else list(argv)
    console = Console() if sys.stdout.isatty() else Console(width=140)
    version = ensure_flower(console)  # first: a failed install should fail now
    report = Report(shlex.join(["python", "-m", "bench.fl", *given]), args.plan, machine())
    plan = args.plan
    with tempfile.TemporaryDirectory(prefix="edgeplane-fl-bench-") as tmp:
        for big in (False, True):
            if ("big" if big else "digits") not in args.parts:
                continue
            part = "large model" if big else "digits"
            for system in [*(f"edgeplane {m}" for m in plan.client_tasks), "flower"]:
                console.print(f"{part}: {system} …")
                work = Path(tmp) / f"{system.replace(' ', '-')}-{'big' if big else 'digits'}"
                work.mkdir()
                name, _, mode = system.partition(" ")
                step = (
                    partial(run_edgeplane, plan, work, big=big, console=console, mode=mode)
                    if name == "edgeplane"
                    else partial(run_flower, plan, work, version, big=big, console=console)
                )
                report.runs.append(guarded(name, part, step, mode))
    report.machine["loadavg_1m_at_end"] = round(os.getloadavg()[0], 2)
    render(report, console)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(asdict(report), indent=2) + "\n")
    console.print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
