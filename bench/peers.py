"""Celery and Dramatiq on Redis, measured in the same run as ``bench.spine`` measures us.

A figure for edgeplane means little without the same no-op task pushed through the task
queues people would otherwise use, on the same machine, at the same moment. Each peer
runs its own worker CLI as a subprocess (two processes, as ``up`` runs two workers) on
Redis 127.0.0.1:6379 db 15, which is flushed before and after. Celery runs twice: bare,
and with task events and Flower following every task (what edgeplane's API and dashboard
always do). The peers are installed for the benchmark only (``pip install
'celery[redis]' 'dramatiq[redis]' flower`` when missing), never as dependencies of the
package. Nothing here asserts on time; every wait is
bounded, and a phase that runs out of time is reported as not finished.

    python -m bench.peers [--tasks 10000] [--latency 2000] [--json out.json]
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, ExitStack, contextmanager, suppress
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import psutil
from rich.console import Console
from rich.table import Table

from bench.spine import cpu_s, free_port, machine, ms, percentile

DESCRIPTION = __doc__.split("\n\n")[0] if __doc__ else ""
REDIS_URL = "redis://127.0.0.1:6379/15"
PEER_PACKAGES = ["celery[redis]", "dramatiq[redis]", "flower"]
QUEUE = "edgeplane-bench-peers"
#: Counter each Dramatiq throughput task increments; polled instead of per-task results.
COUNTER = "edgeplane-bench-peers:done"
WORKER_PROCESSES = 2
DRAMATIQ_THREADS = 8
THROUGHPUT_WARMUP = 1000
LATENCY_WARMUP = 50
READY_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 10.0
PIP_TIMEOUT_S = 600.0
#: How often the Dramatiq counter is read: also the resolution of its "last done" time.
POLL_S = 0.005

CELERY_MODULE = f"""\
from celery import Celery

app = Celery("peer_celery", broker={REDIS_URL!r}, backend={REDIS_URL!r})
app.conf.task_default_queue = {QUEUE!r}
app.conf.worker_hijack_root_logger = False


@app.task
def noop():
    return 0
"""

DRAMATIQ_MODULE = f"""\
import dramatiq
import redis
from dramatiq.brokers.redis import RedisBroker
from dramatiq.results import Results
from dramatiq.results.backends import RedisBackend

client = redis.Redis.from_url({REDIS_URL!r})
broker = RedisBroker(url={REDIS_URL!r})
broker.add_middleware(Results(backend=RedisBackend(client=client)))
dramatiq.set_broker(broker)


@dramatiq.actor(queue_name={QUEUE!r}, store_results=True)
def noop():
    return 0


@dramatiq.actor(queue_name={QUEUE!r})
def count():
    client.incr({COUNTER!r})
"""


class BenchError(Exception):
    """A peer could not be started or measured; its column says not finished."""


@dataclass
class Peer:
    """One column of the report, also what ``--json`` writes per peer."""

    name: str
    version: str = "?"
    worker_command: str = ""
    throughput_method: str = ""
    latency_method: str = ""
    status: str = "not finished"
    figures: dict[str, float | int | str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


@dataclass
class Run:
    command: str
    machine: dict[str, Any]
    peers: list[Peer] = field(default_factory=list)


# --- setup --------------------------------------------------------------------------------


def ensure_installed(modules: Sequence[str], packages: Sequence[str], why: str) -> None:
    """``pip install packages`` into this interpreter if any of ``modules`` is missing.

    What only the benchmarks need is installed by them, never by the package.
    """
    if all(importlib.util.find_spec(name) for name in modules):
        return
    argv = [sys.executable, "-m", "pip", "install", "-q", *packages]
    Console(stderr=True).print(f"installing {why}: {shlex.join(argv)}", style="yellow")
    subprocess.run(argv, check=True, timeout=PIP_TIMEOUT_S)
    importlib.invalidate_caches()


def ensure_peers() -> None:
    """Install the peers into this interpreter if either is missing (benchmark-only)."""
    modules = ("celery", "dramatiq", "redis", "flower")
    ensure_installed(modules, PEER_PACKAGES, "the peers for the benchmark")


def redis_client() -> Any:
    redis: Any = importlib.import_module("redis")
    return redis.Redis.from_url(REDIS_URL, socket_timeout=30)


def load(module_dir: Path, name: str, source: str) -> Any:
    """Write the tasks module the worker imports, and import it here too (client side)."""
    (module_dir / name).with_suffix(".py").write_text(source)
    if str(module_dir) not in sys.path:
        sys.path.insert(0, str(module_dir))
    return importlib.import_module(name)


@dataclass
class Worker:
    proc: subprocess.Popen[bytes]
    log: Path

    @property
    def ps(self) -> psutil.Process:
        return psutil.Process(self.proc.pid)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self, lines: int = 15) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


@contextmanager
def worker(argv: list[str], module_dir: Path, name: str) -> Iterator[Worker]:
    """The peer's worker CLI in its own session, so its whole process group can be ended."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(module_dir), env.get("PYTHONPATH")]))
    log = module_dir / f"{name}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            argv,
            env=env,
            cwd=module_dir,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            yield Worker(proc, log)
        finally:
            stop_group(proc)


def stop_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the group, then SIGKILL it and any descendant that left the group."""
    try:
        descendants = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        descendants = []
    with suppress(ProcessLookupError):  # already gone
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        with suppress(ProcessLookupError):  # ended meanwhile
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(STOP_TIMEOUT_S)
    _, lingering = psutil.wait_procs(descendants, timeout=STOP_TIMEOUT_S)
    for child in lingering:
        with suppress(psutil.NoSuchProcess):  # ended meanwhile
            child.kill()
    with suppress(ProcessLookupError):  # the usual case: nothing left in the group
        os.killpg(proc.pid, signal.SIGKILL)


def wait_ready(round_trip: Callable[[], None], child: Worker) -> None:
    """Retry one task round trip until it works: the worker then consumes the queue."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    last = ""
    while time.monotonic() < deadline:
        if not child.alive():
            raise BenchError(f"worker exited early:\n{child.log_tail()}")
        try:
            round_trip()
            return
        except Exception as exc:  # the peer's own timeout/connection errors
            last = f"{type(exc).__name__}: {exc}"
    raise BenchError(f"worker not ready after {READY_TIMEOUT_S:g}s ({last}):\n{child.log_tail()}")


# --- figures ------------------------------------------------------------------------------


def latency(peer: Peer, round_trip: Callable[[], None], n: int, budget_s: float) -> None:
    """One task at a time, submit to result in hand; percentiles over ``n`` after warm-up."""
    deadline = time.monotonic() + budget_s
    samples: list[float] = []
    for i in range(LATENCY_WARMUP + n):
        if time.monotonic() > deadline:
            peer.notes.append(f"latency: budget of {budget_s:g}s spent")
            break
        began = time.perf_counter()
        round_trip()
        if i >= LATENCY_WARMUP:
            samples.append(time.perf_counter() - began)
    peer.figures["latency samples"] = len(samples)
    if samples:
        ordered = sorted(samples)
        for q in (50, 95, 99):
            peer.figures[f"p{q} ms"] = ms(percentile(ordered, q))
        peer.figures["max ms"] = ms(ordered[-1])


def throughput(
    peer: Peer,
    n: int,
    submit: Callable[[int], Callable[[float], int]],
    procs: Sequence[psutil.Process],
    budget_s: float,
) -> bool:
    """``submit(n)`` sends ``n`` tasks and returns ``wait(deadline)`` → how many finished.

    The clock runs from the first submit to when ``wait`` saw the last one done, and the
    CPU is that of the ``procs`` trees over the same span (the client's is shown apart: on
    a small machine it competes with the workers).
    """
    deadline = time.monotonic() + budget_s
    cpu_before = cpu_s(procs)
    client_cpu_before = time.process_time()
    began = time.perf_counter()
    wait = submit(n)
    submitted_s = time.perf_counter() - began
    done = wait(deadline)
    wall_s = time.perf_counter() - began
    used_s = cpu_s(procs) - cpu_before
    client_cpu_s = time.process_time() - client_cpu_before
    peer.figures["tasks done"] = done
    peer.figures["submit-only tasks/s"] = round(n / submitted_s, 1)
    peer.figures["wall s"] = round(wall_s, 3)
    peer.figures["CPU s"] = round(used_s, 2)
    peer.figures["bench client CPU s"] = round(client_cpu_s, 2)
    if done < n:
        peer.notes.append(f"throughput: {done}/{n} done within {budget_s:g}s")
        return False
    peer.figures["tasks/s"] = round(n / wall_s, 1)
    if used_s > 0:
        peer.figures["tasks per CPU-s"] = round(n / used_s, 1)
    return True


# --- the peers ----------------------------------------------------------------------------


@dataclass
class Session:
    """A peer's worker, started and answering: what a benchmark drives.

    ``submit(n)`` sends ``n`` tasks and returns ``wait(deadline)`` → how many finished;
    ``round_trip()`` runs one task and waits for its result.
    """

    peer: Peer
    child: Worker
    round_trip: Callable[[], None]
    submit: Callable[[int], Callable[[float], int]]
    #: other processes the peer needs (Flower), whose CPU counts too
    helpers: list[Worker] = field(default_factory=list)


@contextmanager
def flower(module_dir: Path) -> Iterator[Worker]:
    """Flower on the Celery app, answering its health check: it follows every task
    through the worker's events, as edgeplane's API and dashboard follow every task."""
    port = free_port()
    argv = [sys.executable, "-m", "celery", "-A", "peer_celery", "flower"]
    argv += ["--address=127.0.0.1", f"--port={port}"]
    with worker(argv, module_dir, "flower") as child:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not _answers(f"http://127.0.0.1:{port}/healthcheck"):
            if not child.alive() or time.monotonic() > deadline:
                raise BenchError(f"flower not ready:\n{child.log_tail()}")
            time.sleep(0.2)
        yield child


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False


@contextmanager
def celery_session(module_dir: Path, *, monitored: bool = False) -> Iterator[Session]:
    """Celery's prefork worker; ``monitored`` adds task events (``-E``) and Flower."""
    celery: Any = importlib.import_module("celery")
    celery_result: Any = importlib.import_module("celery.result")
    celery_exceptions: Any = importlib.import_module("celery.exceptions")
    peer = Peer("celery", version=str(celery.__version__))
    if monitored:
        flower_version = importlib.import_module("flower").__version__
        peer = Peer("celery + flower", version=f"{celery.__version__} + {flower_version}")
    mod = load(module_dir, "peer_celery", CELERY_MODULE)
    noop = mod.noop
    argv = [sys.executable, "-m", "celery", "-A", "peer_celery", "worker"]
    argv += ["--concurrency", str(WORKER_PROCESSES), "--pool", "prefork", "-Q", QUEUE]
    argv += ["--without-gossip", "--without-mingle", "--without-heartbeat", "--loglevel", "WARNING"]
    argv += ["-E"] if monitored else []
    peer.worker_command = shlex.join(["celery", *argv[3:]])
    if monitored:
        peer.worker_command += " + celery -A peer_celery flower"
    peer.throughput_method = "noop.delay() N times, then ResultSet.join_native() (Redis backend)"
    peer.latency_method = "noop.delay().get()"

    def round_trip() -> None:
        noop.delay().get(timeout=30)

    def submit(n: int) -> Callable[[float], int]:
        results = [noop.delay() for _ in range(n)]

        def wait(deadline: float) -> int:
            rs = celery_result.ResultSet(results)
            with suppress(celery_exceptions.TimeoutError):  # counted below
                rs.join_native(timeout=max(1.0, deadline - time.monotonic()))
            return int(rs.completed_count())

        return wait

    try:
        with ExitStack() as stack:
            helpers = [stack.enter_context(flower(module_dir))] if monitored else []
            child = stack.enter_context(worker(argv, module_dir, "celery"))
            wait_ready(round_trip, child)
            yield Session(peer, child, round_trip, submit, helpers)
    finally:
        mod.app.close()


@contextmanager
def dramatiq_session(module_dir: Path) -> Iterator[Session]:
    dramatiq: Any = importlib.import_module("dramatiq")
    peer = Peer("dramatiq", version=str(dramatiq.__version__))
    mod = load(module_dir, "peer_dramatiq", DRAMATIQ_MODULE)
    argv = [sys.executable, "-m", "dramatiq", "peer_dramatiq"]
    argv += ["--processes", str(WORKER_PROCESSES), "--threads", str(DRAMATIQ_THREADS)]
    argv += ["--queues", QUEUE]
    peer.worker_command = shlex.join(["dramatiq", *argv[3:]])
    peer.throughput_method = "count.send() N times (task INCRs a Redis counter), poll the counter"
    peer.latency_method = "noop.send().get_result(block=True) (Redis results backend)"
    client = mod.client

    def round_trip() -> None:
        mod.noop.send().get_result(block=True, timeout=30_000)

    def submit(n: int) -> Callable[[float], int]:
        client.delete(COUNTER)
        for _ in range(n):
            mod.count.send()

        def wait(deadline: float) -> int:
            done = 0
            while time.monotonic() < deadline:
                done = int(client.get(COUNTER) or 0)
                if done >= n:
                    break
                time.sleep(POLL_S)
            return done

        return wait

    try:
        with worker(argv, module_dir, "dramatiq") as child:
            wait_ready(round_trip, child)
            yield Session(peer, child, round_trip, submit)
    finally:
        mod.broker.close()
        client.close()


def run_peer(
    session: Callable[[Path], AbstractContextManager[Session]],
    module_dir: Path,
    tasks: int,
    samples: int,
    budget_s: float,
) -> Peer:
    with session(module_dir) as started:
        measure(started, tasks, samples, budget_s)
    return started.peer


def measure(session: Session, tasks: int, samples: int, budget_s: float) -> None:
    """Warm-up, throughput, then latency on the same warm worker (CPU: the worker tree)."""
    peer = session.peer
    warm = session.submit(THROUGHPUT_WARMUP)(time.monotonic() + budget_s)
    if warm < THROUGHPUT_WARMUP:
        peer.notes.append(f"warm-up: {warm}/{THROUGHPUT_WARMUP} done within {budget_s:g}s")
        return
    procs = [session.child.ps, *(helper.ps for helper in session.helpers)]
    finished = throughput(peer, tasks, session.submit, procs, budget_s)
    latency(peer, session.round_trip, samples, budget_s)
    enough = peer.figures.get("latency samples") == samples
    peer.status = "finished" if finished and enough else "partial"


#: Each peer by name, in the order the reports show them.
SESSIONS: dict[str, Callable[[Path], AbstractContextManager[Session]]] = {
    "celery": celery_session,
    "celery + flower": partial(celery_session, monitored=True),
    "dramatiq": dramatiq_session,
}


def guarded(name: str, step: Callable[[], Peer]) -> Peer:
    """A peer that failed is reported as not finished; the other still runs."""
    try:
        return step()
    except Exception as exc:  # any failure inside a third-party peer ends only its column
        return Peer(name, notes=[f"{type(exc).__name__}: {exc}"])


# --- report -------------------------------------------------------------------------------

ROWS = [
    "tasks/s",
    "tasks per CPU-s",
    "p50 ms",
    "p95 ms",
    "p99 ms",
    "max ms",
    "latency samples",
    "tasks done",
    "wall s",
    "CPU s",
    "bench client CPU s",
    "submit-only tasks/s",
]


def render(run: Run, console: Console) -> None:
    table = Table(title="peer task queues on Redis (same run)")
    table.add_column("figure")
    for peer in run.peers:
        table.add_column(f"{peer.name} {peer.version}", justify="right")
    for row in ROWS:
        table.add_row(row, *(str(peer.figures.get(row, "-")) for peer in run.peers))
    table.add_row("status", *(peer.status for peer in run.peers))
    console.print(table)
    console.print("CPU s: each peer's worker process tree, Redis not included")
    for peer in run.peers:
        console.print(f"{peer.name}: worker `{peer.worker_command}`")
        console.print(f"  throughput: {peer.throughput_method}")
        console.print(f"  latency:    {peer.latency_method}")
        for note in peer.notes:
            console.print(f"  note: {note}")
    m = run.machine
    console.print(
        f"machine: {m['nproc']} cpus, {m['memory_mb']} MB, Python {m['python']}, {m['platform']}"
        f", load average (1 min) {m['loadavg_1m_at_start']} at start,"
        f" {m.get('loadavg_1m_at_end', '?')} at end"
    )
    console.print(f"command: {run.command}")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.peers", description=DESCRIPTION)
    parser.add_argument("--tasks", type=int, default=10_000, help="throughput tasks")
    parser.add_argument("--latency", type=int, default=2000, help="latency samples")
    parser.add_argument("--budget", type=float, default=180.0, metavar="S", help="per phase")
    parser.add_argument("--json", type=Path, default=None, metavar="FILE", help="write results")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    given = sys.argv[1:] if argv is None else list(argv)
    result = Run(command=shlex.join(["python", "-m", "bench.peers", *given]), machine=machine())
    console = Console()
    ensure_peers()
    redis = redis_client()
    redis.flushdb()
    try:
        with tempfile.TemporaryDirectory(prefix="edgeplane-peers-") as tmp:
            for name, session in SESSIONS.items():
                console.print(f"{name} …")
                step = partial(run_peer, session, Path(tmp), args.tasks, args.latency, args.budget)
                result.peers.append(guarded(name, step))
    finally:
        redis.flushdb()
        redis.close()
    result.machine["loadavg_1m_at_end"] = round(os.getloadavg()[0], 2)
    render(result, console)
    if args.json is not None:
        args.json.write_text(json.dumps(asdict(result), indent=2) + "\n")
        console.print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
