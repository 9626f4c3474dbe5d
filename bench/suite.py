"""edgeplane against Celery and Dramatiq, in one run, on one machine, at one moment.

Figures from different runs differ by more than the systems do on a shared 2-core box, so
this one command measures all of them back to back with the same method: 2 worker
processes each, a no-op task, 1,000 warm-up tasks, then 5 runs of 10,000 (median and
min-max) and 2,000 tasks one at a time for latency (``--quick``: far fewer). CPU is
summed over every process a system needs: for edgeplane the ``up --workers 0`` process
(API, manager, SQLite), its Mosquitto and the two ``edgeplane worker`` processes; for a
peer its worker processes and Redis.
Nothing here asserts on time; every wait is bounded.

The wasm stack also runs "open" (no identities, ACL or signatures: an anonymous broker
given with ``--broker``) once per broker of ``bench.brokers`` (``--brokers``; default:
every one installed here), so what each broker changes is measured in the same run.

    python -m bench.suite [--quick] [--brokers mosquitto,nats] [--json FILE] [--chart FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, ExitStack, contextmanager, suppress
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psutil
from rich.console import Console
from rich.table import Table

from bench import chart
from bench.brokers import LAUNCHERS, BrokerUnavailable, Launcher
from bench.peers import (
    DRAMATIQ_THREADS,
    LATENCY_WARMUP,
    REDIS_URL,
    SESSIONS,
    WORKER_PROCESSES,
    Peer,
    Session,
    ensure_peers,
    latency,
    redis_client,
    throughput,
)
from bench.spine import (
    EDGEPLANE,
    READY_TIMEOUT_S,
    Child,
    clean_env,
    free_port,
    join_token,
    machine,
    machine_line,
    measure_latency,
    measure_throughput,
    online,
    poll,
    process,
    wait_ready,
    wasm_noop,
)
from edgeplane import Client, __version__
from edgeplane.errors import EdgeplaneError

DESCRIPTION = __doc__.split("\n\n")[0] if __doc__ else ""
ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
HOST_NOOP: dict[str, Any] = {"name": "true", "runtime": "host", "command": ["true"]}
#: The figures a throughput run keeps, and what spine and peers call them.
EDGEPLANE_RUN = {
    "tasks/s": "tasks/s",
    "tasks per CPU-s": "tasks per CPU-second",
    "CPU s": "CPU s",
    "wall s": "wall s, first submit → last done",
    "submit-only tasks/s": "submit-only tasks/s",
    "tasks done": "tasks completed",
}
PEER_RUN = {key: key for key in EDGEPLANE_RUN}
#: Summarised over repetitions as median, min and max.
SUMMARISED = ("tasks/s", "tasks per CPU-s", "CPU s", "submit-only tasks/s")
LATENCY_FIGURES = ("p50 ms", "p95 ms", "p99 ms", "max ms")


@dataclass(frozen=True)
class Plan:
    """How much each system is asked to do; the same for all of them."""

    tasks: int
    repetitions: int
    warmup: int
    latency: int
    latency_warmup: int
    throughput_budget_s: float
    latency_budget_s: float


FULL = Plan(10_000, 5, 1000, 2000, LATENCY_WARMUP, 180.0, 180.0)
QUICK = Plan(1000, 1, 200, 200, LATENCY_WARMUP, 60.0, 60.0)


@dataclass
class System:
    """One column of the report."""

    name: str
    version: str
    #: ``edgeplane`` or ``peer``: ratios are edgeplane over each peer.
    kind: str
    processes: list[str] = field(default_factory=list)
    cpu_counted: str = ""
    throughput_method: str = ""
    latency_method: str = ""
    runs: list[dict[str, float]] = field(default_factory=list)
    #: figure -> {"median", "min", "max"} over the runs that finished
    throughput: dict[str, dict[str, float]] = field(default_factory=dict)
    latency: dict[str, float] = field(default_factory=dict)
    status: str = "not finished"
    notes: list[str] = field(default_factory=list)


@dataclass
class Suite:
    command: str
    plan: Plan
    machine: dict[str, Any]
    worker_processes: int = WORKER_PROCESSES
    systems: list[System] = field(default_factory=list)


# --- edgeplane ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Edgeplane:
    client: Client
    children: list[Child]
    commands: list[str]
    #: processes outside the children whose CPU is the stack's too (the open broker)
    extra: list[psutil.Process]


def _shown(argv: Sequence[str]) -> str:
    return shlex.join(["python", *(_without_password(arg) for arg in argv[1:])])


def _without_password(arg: str) -> str:
    """A broker URL (or a comma-separated list of them) as printed: no password."""
    if "://" not in arg or "@" not in arg:
        return arg
    parts = []
    for part in arg.split(","):
        url = urlsplit(part)
        if url.password is not None:
            part = part.replace(f":{url.password}@", ":PASSWORD@", 1)
        parts.append(part)
    return ",".join(parts)


#: How the stack is secured. ``acl`` is what ``up`` does by default: its own Mosquitto
#: with a password and ACL file, workers that joined with a token, signed commands, plain
#: on loopback. ``tls`` adds HTTPS and MQTTS with a CA from ``certs init``. ``open`` is
#: none of it: an anonymous Mosquitto given with ``--broker`` (no identities, no ACL, no
#: signatures), the cost baseline security is measured against (docs/benchmarks.md).
SECURITY = ("acl", "tls", "open")


def broker_processes(directory: Path, url: str) -> list[psutil.Process]:
    """The processes of a broker a launcher started in ``directory``: the one listening
    on its URL's port and any whose command line names the directory (a broker of
    several processes, or of several nodes), without those whose ancestor is already
    counted (CPU is read per process tree)."""
    ports = {urlsplit(node).port for node in url.split(",")}  # a cluster: every node
    found: dict[int, psutil.Process] = {}
    for conn in psutil.net_connections(kind="tcp"):
        listening = conn.status == psutil.CONN_LISTEN and isinstance(conn.laddr, tuple)
        if listening and conn.laddr and conn.laddr[1] in ports and conn.pid:
            with suppress(psutil.Error):  # ended meanwhile
                found[conn.pid] = psutil.Process(conn.pid)
    for proc in psutil.process_iter(["cmdline"]):
        if any(str(directory) in arg for arg in proc.info["cmdline"] or []):
            found[proc.pid] = proc
    tops = []
    for proc in found.values():
        with suppress(psutil.Error):
            if not any(parent.pid in found for parent in proc.parents()):
                tops.append(proc)
    return tops


@contextmanager
def edgeplane_stack(
    work_dir: Path, security: str = "acl", launcher: Launcher | None = None
) -> Iterator[Edgeplane]:
    """``up --workers 0`` (API, manager, store, embedded Mosquitto with TCP_NODELAY) and
    two ``edgeplane worker`` processes on its broker, as separate machines would join;
    ``security`` is one of :data:`SECURITY`. ``open`` runs on the broker ``launcher``
    starts (``bench.brokers``), anonymous, given to ``up`` with ``--broker``."""
    token = secrets.token_urlsafe(16)
    env = clean_env(token)
    port = free_port()
    data_dir = work_dir / "up"
    ca: Path | None = None
    up_argv = [*EDGEPLANE, "up", "--data-dir", str(data_dir), "--port", str(port)]
    up_argv += ["--workers", "0"]
    extra: list[psutil.Process] = []
    broker_url = ""
    with ExitStack() as stack:
        if security == "tls":
            init = [*EDGEPLANE, "certs", "init", "--data-dir", str(data_dir)]
            subprocess.run(init, env=env, check=True, capture_output=True, timeout=60)
            certs = data_dir / "certs"
            ca = certs / "ca.pem"
            up_argv += ["--tls-cert", str(certs / "server.pem"), "--tls-key"]
            up_argv += [str(certs / "server.key")]
        elif security == "open":
            if launcher is None:
                raise EdgeplaneError("an open stack needs a broker launcher")
            broker_dir = work_dir / "broker"
            broker_dir.mkdir()
            broker_url = stack.enter_context(launcher(broker_dir))
            up_argv += ["--broker", broker_url]
            extra += broker_processes(broker_dir, broker_url)
        url = f"{'https' if ca else 'http'}://127.0.0.1:{port}"
        up = stack.enter_context(process(up_argv, env, work_dir, "up"))
        client = stack.enter_context(Client(url, token, timeout=30, ca=ca))
        broker = wait_ready(url, up, time.monotonic() + READY_TIMEOUT_S, ca=ca)
        if security == "open":
            # up prints its broker without credentials (and one node): open workers take
            # the launcher's URL, as a deployment's would (RabbitMQ has no anonymous user)
            broker = broker_url
        commands = [_shown(up_argv)]
        workers: dict[str, Child] = {}
        for n in range(1, WORKER_PROCESSES + 1):
            worker_id = f"bench-worker-{n}"
            argv = [*EDGEPLANE, "worker", "--manager", broker, "--worker-id", worker_id]
            join = "" if security == "open" else join_token(url, token, worker_id, ca)
            if join:
                argv += ["--join", join]
            if ca:
                argv += ["--ca", str(ca)]
            argv += ["--data-dir", str(work_dir / worker_id), "--allow-host"]
            workers[worker_id] = stack.enter_context(process(argv, env, work_dir, worker_id))
            shown = _shown(argv)
            commands.append(shown.replace(join, "JOIN_TOKEN") if join else shown)  # no secret
        deadline = time.monotonic() + READY_TIMEOUT_S
        for worker_id, child in workers.items():
            if not poll(partial(online, client, worker_id), deadline, child):
                raise EdgeplaneError(f"{worker_id} not online:\n{child.stderr_tail(5)}")
        yield Edgeplane(client, [up, *workers.values()], commands, extra)


def run_edgeplane(
    name: str,
    spec: Mapping[str, Any],
    plan: Plan,
    work_dir: Path,
    security: str = "acl",
    broker: str = "",
) -> System:
    """Warm-up, the throughput runs, then latency, on one fresh stack."""
    system = System(name, __version__, "edgeplane")
    system.cpu_counted = (
        "`up` process tree (API, manager, SQLite, Mosquitto) + both worker process trees"
        " (with the host tasks' processes they reaped)"
    )
    system.throughput_method = (
        "Client.submit_many (POST /tasks/batch, 1000 a call), then read the manager's"
        " edgeplane_tasks_finished counter (/metrics) every 0.5 s; clock to the last"
        " finished_at"
    )
    system.latency_method = "Client.run (POST /tasks?wait=: created and waited for in one request)"
    if security == "open":
        system.cpu_counted += f" + the anonymous {broker} given with --broker"
    with edgeplane_stack(work_dir, security, LAUNCHERS.get(broker)) as ep:
        system.processes = ep.commands
        procs = [child.ps for child in ep.children] + ep.extra
        warm = measure_throughput(ep.client, spec, plan.warmup, plan.throughput_budget_s, procs)
        if warm.status != "finished":
            system.notes.append(f"warm-up {warm.status}: {warm.note}")
            return system
        for _ in range(plan.repetitions):
            phase = measure_throughput(ep.client, spec, plan.tasks, plan.throughput_budget_s, procs)
            system.runs.append(_kept(phase.figures, EDGEPLANE_RUN))
            if failed := phase.figures.get("tasks failed"):
                system.notes.append(f"throughput: {failed} tasks failed")
            if phase.note:
                system.notes.append(f"throughput: {phase.note}")
        phase = measure_latency(
            ep.client, spec, plan.latency, plan.latency_warmup, plan.latency_budget_s, procs
        )
        system.latency = _kept(phase.figures, {k: k for k in LATENCY_FIGURES})
        system.latency["samples"] = float(phase.figures.get("tasks measured", 0))
        if failed := phase.figures.get("tasks not completed"):
            system.notes.append(f"latency: {failed} tasks not completed")
        if phase.note:
            system.notes.append(f"latency: {phase.note}")
    return system


# --- peers --------------------------------------------------------------------------------


def redis_server() -> psutil.Process | None:
    """The ``redis-server`` the peers use (found by its port), whose CPU is theirs too."""
    port = urlsplit(REDIS_URL).port or 6379
    candidates = [
        p for p in psutil.process_iter(["name", "cmdline"]) if p.info["name"] == "redis-server"
    ]
    for proc in candidates:
        if any(f":{port}" in arg for arg in proc.info["cmdline"] or []):
            return proc
    return candidates[0] if len(candidates) == 1 else None


def run_peer(
    session: Callable[[Path], AbstractContextManager[Session]],
    plan: Plan,
    module_dir: Path,
    *,
    redis: psutil.Process | None,
) -> System:
    with session(module_dir) as started:
        peer = started.peer
        system = System(peer.name, peer.version, "peer", processes=[peer.worker_command])
        system.throughput_method = peer.throughput_method
        system.latency_method = peer.latency_method
        system.cpu_counted = "worker process tree + redis-server"
        if started.helpers:
            system.cpu_counted = "worker process tree + Flower + redis-server"
        procs = [started.child.ps, *(helper.ps for helper in started.helpers)]
        if redis is None:
            system.notes.append("redis-server not found: its CPU is not counted")
            system.cpu_counted = "worker process tree"
        else:
            procs.append(redis)
        warm = started.submit(plan.warmup)(time.monotonic() + plan.throughput_budget_s)
        if warm < plan.warmup:
            system.notes.append(f"warm-up: {warm}/{plan.warmup} done")
            return system
        for _ in range(plan.repetitions):
            run = Peer(peer.name)
            throughput(run, plan.tasks, started.submit, procs, plan.throughput_budget_s)
            system.runs.append(_kept(run.figures, PEER_RUN))
            system.notes += run.notes
        one = Peer(peer.name)
        latency(one, started.round_trip, plan.latency, plan.latency_budget_s)
        system.latency = _kept(one.figures, {k: k for k in LATENCY_FIGURES})
        system.latency["samples"] = float(one.figures.get("latency samples", 0))
        system.notes += one.notes
    return system


# --- figures ------------------------------------------------------------------------------


def _kept(figures: Mapping[str, float | int | str], names: Mapping[str, str]) -> dict[str, float]:
    """The numeric figures named in ``names`` (ours -> theirs), under our names."""
    return {
        ours: float(value)
        for ours, theirs in names.items()
        if isinstance(value := figures.get(theirs), int | float)
    }


def summarise(system: System, plan: Plan) -> None:
    """Median and min-max over the runs that finished, and the column's status."""
    finished = [run for run in system.runs if "tasks/s" in run]
    for name in SUMMARISED:
        values = [run[name] for run in finished if name in run]
        if values:
            system.throughput[name] = {
                "median": statistics.median(values),
                "min": min(values),
                "max": max(values),
            }
    complete = len(finished) == plan.repetitions and system.latency.get("samples") == plan.latency
    if complete:
        system.status = "finished"
    elif finished or system.latency.get("samples"):
        system.status = "partial"


def guarded(name: str, kind: str, step: Callable[[], System]) -> System:
    """A system that failed is reported as not finished; the others still run."""
    try:
        return step()
    except BrokerUnavailable:
        raise  # not a failure: the caller leaves the broker out, or says it is missing
    except Exception as exc:  # any failure, ours or a peer's, ends only its own column
        return System(name, "?", kind, notes=[f"{type(exc).__name__}: {exc}"])


# --- report -------------------------------------------------------------------------------


def _fmt(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:,.0f}" if value >= 100 else f"{value:,.2f}"


def _ratio(ours: float | None, theirs: float | None) -> str:
    return f"{ours / theirs:.2f}x" if ours is not None and theirs else "-"


def _pairs(systems: Sequence[System]) -> list[tuple[System, System]]:
    """The headline (the first edgeplane column, wasm) against each peer: with host and
    four peers every pairing would not fit a terminal."""
    ours = [s for s in systems if s.kind == "edgeplane"][:1]
    peers = [s for s in systems if s.kind == "peer"]
    return [(a, b) for a in ours for b in peers]


def _table(
    title: str,
    caption: str,
    systems: Sequence[System],
    rows: Sequence[tuple[str, Callable[[System], float | None], Callable[[System], str] | None]],
) -> Table:
    """Systems side by side, then edgeplane ÷ each peer for the rows that have a ratio."""
    table = Table(title=title, caption=caption)
    table.add_column("figure")
    for system in systems:
        table.add_column(f"{system.name}\n{system.version}", justify="right")
    pairs = _pairs(systems)
    for ours, theirs in pairs:
        table.add_column(f"{ours.name}\n÷ {theirs.name}", justify="right")
    for label, value, shown in rows:
        cells = [shown(s) if shown else _fmt(value(s)) for s in systems]
        ratios = ["-" if shown else _ratio(value(a), value(b)) for a, b in pairs]
        table.add_row(label, *cells, *ratios)
    table.add_row("status", *(s.status for s in systems), *("" for _ in pairs))
    return table


def _stat(figure: str, stat: str) -> Callable[[System], float | None]:
    return lambda s: s.throughput.get(figure, {}).get(stat)


def _spread(figure: str) -> Callable[[System], str]:
    def shown(s: System) -> str:
        got = s.throughput.get(figure)
        return f"{_fmt(got['min'])}-{_fmt(got['max'])}" if got else "-"

    return shown


def render(suite: Suite, console: Console) -> None:
    plan = suite.plan
    runs = f"{plan.repetitions} x {plan.tasks:,} no-op tasks after {plan.warmup:,} warm-up"
    throughput_rows: list[
        tuple[str, Callable[[System], float | None], Callable[[System], str] | None]
    ] = [
        ("tasks/s, median", _stat("tasks/s", "median"), None),
        ("  min-max", _stat("tasks/s", "median"), _spread("tasks/s")),
        ("tasks per CPU-s, median", _stat("tasks per CPU-s", "median"), None),
        ("  min-max", _stat("tasks per CPU-s", "median"), _spread("tasks per CPU-s")),
        ("CPU s per run, median", _stat("CPU s", "median"), None),
        ("submit-only tasks/s, median", _stat("submit-only tasks/s", "median"), None),
        (
            "runs finished",
            lambda s: None,
            lambda s: f"{sum('tasks/s' in r for r in s.runs)}/{plan.repetitions}",
        ),
    ]
    console.print(
        _table(
            f"Dispatch throughput: {runs}",
            "ratio > 1: edgeplane does more (tasks/s, tasks per CPU-s) or spends more (CPU s)",
            suite.systems,
            throughput_rows,
        )
    )

    def lat(name: str) -> Callable[[System], float | None]:
        return lambda s: s.latency.get(name)

    latency_rows: list[
        tuple[str, Callable[[System], float | None], Callable[[System], str] | None]
    ] = [(name, lat(name), None) for name in LATENCY_FIGURES]
    latency_rows.append(("samples", lat("samples"), lambda s: _fmt(s.latency.get("samples"))))
    console.print(
        _table(
            f"Latency, submit → result one at a time: {plan.latency:,} samples"
            f" after {plan.latency_warmup} warm-up",
            "ratio < 1: edgeplane is faster",
            suite.systems,
            latency_rows,
        )
    )
    for system in suite.systems:
        console.print(f"[bold]{system.name}[/bold] {system.version}")
        for command in system.processes:
            console.print(f"  runs:       {command}")
        console.print(f"  throughput: {system.throughput_method}")
        console.print(f"  latency:    {system.latency_method}")
        console.print(f"  CPU:        {system.cpu_counted}")
        for note in system.notes:
            console.print(f"  note: {note}")
    console.print(machine_line(suite.machine))
    console.print(f"command: {suite.command}")


# --- main ---------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.suite", description=DESCRIPTION)
    parser.add_argument(
        "--quick",
        action="store_true",
        help="1,000 tasks, 1 repetition, 200 latency samples: for development only",
    )
    parser.add_argument(
        "--brokers",
        type=broker_names,
        default=None,
        metavar="NAME,NAME",
        help=f"brokers the open wasm stack runs on, one column each ({', '.join(LAUNCHERS)};"
        " default: every one installed here)",
    )
    parser.add_argument("--json", type=Path, default=None, metavar="FILE", help="results")
    parser.add_argument("--chart", type=Path, default=None, metavar="FILE", help="PNG")
    args = parser.parse_args(argv)
    # A quick run's figures are not to be trusted: keep them away from the published chart.
    stem = "suite-quick" if args.quick else "suite"
    args.json = args.json or RESULTS / f"{stem}.json"
    args.chart = args.chart or (RESULTS / f"{stem}.png" if args.quick else chart.DEFAULT_OUT)
    return args


def broker_names(text: str) -> list[str]:
    names = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [name for name in names if name not in LAUNCHERS]
    if not names or unknown:
        raise argparse.ArgumentTypeError(
            f"unknown broker {', '.join(unknown) or text!r}: choose from {', '.join(LAUNCHERS)}"
        )
    return names


def broker_variant(broker: str) -> str:
    """The column of the open wasm stack on ``broker``; on Mosquitto it keeps the name it
    had before there were several brokers, so earlier runs compare."""
    return "edgeplane wasm open" if broker == "mosquitto" else f"edgeplane wasm {broker}"


def run(
    plan: Plan, work_dir: Path, console: Console, brokers: Sequence[str] | None = None
) -> list[System]:
    """Each system in turn, on its own fresh processes; Redis db 15 is flushed around them.

    The open wasm stack runs once per broker in ``brokers`` (a column each, missing ones
    reported); None: on every broker of ``bench.brokers`` installed here (the others left
    out)."""
    redis = redis_client()
    redis.flushdb()
    redis_proc = redis_server()
    wasm = wasm_noop()
    # The headline column first (the ratios are its); then what security costs, the same
    # wasm task on a stack with TLS added, and on one with none of it (SECURITY).
    # The same open stack on each broker after it: what the broker alone changes.
    variants = [
        ("edgeplane wasm", wasm, "acl", ""),
        ("edgeplane host", HOST_NOOP, "acl", ""),
        ("edgeplane wasm TLS", wasm, "tls", ""),
        *((broker_variant(b), wasm, "open", b) for b in (brokers or list(LAUNCHERS))),
    ]
    steps: list[tuple[str, str, Callable[[Path], System]]] = [
        (
            name,
            "edgeplane",
            partial(run_edgeplane, name, spec, plan, security=security, broker=broker),
        )
        for name, spec, security, broker in variants
    ]
    steps += [
        (name, "peer", partial(run_peer, session, plan, redis=redis_proc))
        for name, session in SESSIONS.items()
    ]
    systems = []
    try:
        for name, kind, step in steps:
            console.print(f"{name} …")
            work = work_dir / name.replace(" ", "-")
            work.mkdir()
            try:
                systems.append(guarded(name, kind, partial(step, work)))
            except BrokerUnavailable as exc:
                console.print(f"  {exc}: {'not finished' if brokers else 'left out'}")
                if brokers:  # asked for by name: a column says it could not run
                    systems.append(System(name, "?", kind, notes=[str(exc)]))
    finally:
        redis.flushdb()
        redis.close()
    for system in systems:
        summarise(system, plan)
    return systems


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    given = sys.argv[1:] if argv is None else list(argv)
    plan = QUICK if args.quick else FULL
    # Side by side with ratios is wide: keep it whole in a log or a pipe (rich's default
    # there is 80 columns); a terminal gets its own width.
    console = Console() if sys.stdout.isatty() else Console(width=160)
    # Installed first: a missing package should fail now, not after the measurements.
    ensure_peers()
    chart.ensure_matplotlib()
    suite = Suite(shlex.join(["python", "-m", "bench.suite", *given]), plan, machine())
    console.print(
        f"workers: {WORKER_PROCESSES} processes per system (Dramatiq: {DRAMATIQ_THREADS}"
        f" threads each); load average {suite.machine['loadavg_1m_at_start']}"
    )
    with tempfile.TemporaryDirectory(prefix="edgeplane-suite-") as tmp:
        suite.systems = run(plan, Path(tmp), console, args.brokers)
    suite.machine["loadavg_1m_at_end"] = round(os.getloadavg()[0], 2)
    render(suite, console)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(asdict(suite), indent=2) + "\n")
    console.print(f"wrote {args.json}")
    console.print(f"wrote {chart.draw(asdict(suite), args.chart)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
