"""The spine benchmark: latency, throughput and footprint of ``edgeplane up``, from outside.

``up`` runs as a subprocess exactly as a user starts it, and every figure is taken through
the real Python client over HTTP, so the numbers include the API, the store, the broker
and the workers. Nothing here asserts on time: this is a measurement, not a test. Every
wait is bounded; a phase that runs out of time is reported as not finished.

    python -m bench.spine [--tasks 10000] [--latency 2000] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import secrets
import shlex
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import httpx
import psutil
import wasmtime
from rich.console import Console
from rich.table import Table

from edgeplane import Client, __version__
from edgeplane.client import BATCH_LIMIT
from edgeplane.errors import EdgeplaneError, NotFound

DESCRIPTION = "Latency, throughput and footprint of `edgeplane up`, measured from outside."
NOOP_WAT = '(module (func (export "noop")))'
EDGEPLANE = [sys.executable, "-m", "edgeplane"]
READY_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 15.0
#: Longest single wait for one task in the latency phase.
TASK_TIMEOUT_S = 10.0
#: How often the throughput phase asks for the number of finished tasks. The clock stops
#: at the last task's ``finished_at``, not at the poll that saw it, so polling more often
#: buys no precision; it only loads the process measured: every /metrics answer counts
#: the tasks in flight, and at 10 polls a second that was 5 % of the manager's CPU.
POLL_S = 0.5
#: The manager's counter of ended tasks, as its /metrics page names it.
FINISHED = "edgeplane_tasks_finished_total{"
#: Idle settling time before an RSS reading.
SETTLE_S = 3.0
MB = 2**20

Status = Literal["finished", "partial", "not finished"]


@dataclass
class Phase:
    """One section of the report: its figures, and whether it ran to the end."""

    name: str
    status: Status = "not finished"
    figures: dict[str, float | int | str] = field(default_factory=dict)
    note: str = ""


@dataclass
class Run:
    """Everything the report shows, also what ``--json`` writes."""

    command: str
    up_command: str
    machine: dict[str, Any]
    phases: list[Phase] = field(default_factory=list)


# --- processes ----------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def clean_env(token: str) -> dict[str, str]:
    """This shell's environment without EDGEPLANE_* settings that would change the run."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGEPLANE_")}
    env["EDGEPLANE_ADMIN_TOKEN"] = token
    return env


@contextmanager
def process(argv: list[str], env: dict[str, str], log_dir: Path, name: str) -> Iterator[Child]:
    """A child whose output goes to files (a full pipe would stall it), always stopped."""
    out = (log_dir / f"{name}.out").open("wb")
    err = (log_dir / f"{name}.err").open("wb")
    proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=err)
    child = Child(proc, log_dir / f"{name}.out", log_dir / f"{name}.err")
    try:
        yield child
    finally:
        child.stop()
        out.close()
        err.close()


@dataclass
class Child:
    proc: subprocess.Popen[bytes]
    stdout_path: Path
    stderr_path: Path

    @property
    def ps(self) -> psutil.Process:
        return psutil.Process(self.proc.pid)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stdout(self) -> str:
        return self.stdout_path.read_text(errors="replace")

    def stderr_tail(self, lines: int = 20) -> str:
        return "\n".join(self.stderr_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        """SIGTERM, then SIGKILL for it and any descendant left (e.g. its Mosquitto)."""
        if not self.alive():
            return
        try:
            descendants = self.ps.children(recursive=True)
        except psutil.NoSuchProcess:
            descendants = []
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        _, lingering = psutil.wait_procs(descendants, timeout=STOP_TIMEOUT_S)
        for proc in lingering:
            with suppress(psutil.NoSuchProcess):  # ended meanwhile
                proc.kill()


def tree_cpu_s(root: psutil.Process) -> float:
    """User + system CPU seconds of ``root`` and every live descendant, including the
    children they already reaped (a host task's short-lived process counts too)."""
    total = 0.0
    with suppress(psutil.NoSuchProcess):  # ended meanwhile
        for proc in [root, *root.children(recursive=True)]:
            with suppress(psutil.NoSuchProcess):  # ended meanwhile
                times = proc.cpu_times()
                total += times.user + times.system + times.children_user + times.children_system
    return total


def cpu_s(procs: Iterable[psutil.Process]) -> float:
    """CPU seconds of several process trees: a system is often more than one process."""
    return sum(tree_cpu_s(proc) for proc in procs)


def wasm_noop() -> dict[str, Any]:
    """The no-op task every phase runs: a wasm function that does nothing."""
    return {"name": "noop", "file": bytes(wasmtime.wat2wasm(NOOP_WAT))}


def rss_mb(proc: psutil.Process) -> float:
    return round(proc.memory_info().rss / MB, 1)


def _verify(ca: Path | None) -> ssl.SSLContext | bool:
    """What httpx verifies an ``https`` server with: ``ca`` (a ``certs init`` CA), or the
    system's trust store."""
    return ssl.create_default_context(cafile=str(ca)) if ca else True


def wait_ready(url: str, up: Child, deadline: float, ca: Path | None = None) -> str:
    """Block until ``/healthz`` says the broker is connected; return the broker URL printed."""
    broker = ""
    healthy = False
    while time.monotonic() < deadline:
        if not up.alive():
            raise EdgeplaneError(f"`edgeplane up` exited early:\n{up.stderr_tail()}")
        if not healthy:
            try:
                healthy = bool(
                    httpx.get(f"{url}/healthz", timeout=1, verify=_verify(ca)).json().get("broker")
                )
            except (httpx.HTTPError, ValueError):
                healthy = False
        if not broker:
            for line in up.stdout().splitlines():
                if line.startswith("  broker:"):
                    broker = line.split(":", 1)[1].strip()
        if healthy and broker:
            return broker
        time.sleep(0.1)
    raise EdgeplaneError(f"`edgeplane up` not ready after {READY_TIMEOUT_S:g}s")


# --- figures ------------------------------------------------------------------------------


def percentile(ordered: Sequence[float], q: int) -> float:
    """Nearest-rank percentile of already sorted values."""
    rank = max(1, -(-len(ordered) * q // 100))  # integer ceil: no float rounding
    return ordered[min(len(ordered), rank) - 1]


def ms(seconds: float) -> float:
    return round(seconds * 1000, 2)


def measure_latency(
    client: Client,
    spec: Mapping[str, Any],
    n: int,
    warmup: int,
    budget_s: float,
    procs: Sequence[psutil.Process],
) -> Phase:
    """One task at a time, each run and waited for in one request (``Client.run``:
    ``POST /tasks?wait=``, as ``edgeplane task run`` does).

    ``spec`` is the task (``Client.submit`` keywords); CPU is that of the ``procs`` trees.
    """
    phase = Phase("latency")
    deadline = time.monotonic() + budget_s
    samples: list[float] = []
    failed = ran = 0
    cpu_before = cpu_s(procs)
    for i in range(warmup + n):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            phase.note = f"budget of {budget_s:g}s spent"
            break
        if i == warmup:
            cpu_before = cpu_s(procs)
        began = time.perf_counter()
        try:
            done = client.run(**spec, timeout=min(TASK_TIMEOUT_S, remaining))
        except EdgeplaneError as exc:
            phase.note = f"stopped at task {i + 1}: {exc}"
            break
        took = time.perf_counter() - began
        ran += 1
        if done.state != "completed":
            failed += 1
        elif i >= warmup:
            samples.append(took)
    used_s = cpu_s(procs) - cpu_before
    phase.figures["tasks measured"] = len(samples)
    phase.figures["warm-up tasks"] = min(ran, warmup)
    if failed:
        phase.figures["tasks not completed"] = failed
    if samples:
        ordered = sorted(samples)
        for q in (50, 95, 99):
            phase.figures[f"p{q} ms"] = ms(percentile(ordered, q))
        phase.figures["max ms"] = ms(ordered[-1])
        phase.figures["mean ms"] = ms(sum(ordered) / len(ordered))
        phase.figures["CPU ms per task"] = ms(used_s / len(samples))
    phase.status = _status(len(samples), n)
    return phase


def _status(done: int, wanted: int) -> Status:
    if done >= wanted:
        return "finished"
    return "partial" if done else "not finished"


def _finished(client: Client) -> dict[str, int]:
    """Tasks the manager saw end, by state, from its ``edgeplane_tasks_finished`` counter.

    Reading the counter costs the manager the same at 1,000 stored tasks as at 60,000;
    ``GET /tasks?state=…`` counts rows, which grew with every run and slowed the later
    runs of the very process being measured.
    """
    text = client.metrics()
    counts = {}
    for line in text.splitlines():
        if line.startswith(FINISHED):  # edgeplane_tasks_finished_total{state="completed"} 9.0
            state = line.split('"')[1]
            counts[state] = int(float(line.rsplit(" ", 1)[1]))
    return counts


def measure_throughput(
    client: Client,
    spec: Mapping[str, Any],
    n: int,
    budget_s: float,
    procs: Sequence[psutil.Process],
) -> Phase:
    """``n`` tasks (``spec``) through ``POST /tasks/batch``, then count finished ones until
    all are; CPU is that of the ``procs`` trees.

    Counting (the manager's counter of ended tasks, see :func:`_finished`) costs one
    request per poll interval, against one long-poll per task: it is the cheaper wait.
    """
    phase = Phase("throughput")
    deadline = time.monotonic() + budget_s
    base = _finished(client)
    base_completed = base.get("completed", 0)
    # where this run's tasks start among the stored completed ones (read once)
    stored_before = client.list_tasks(state="completed", limit=1).total
    submitted: set[str] = set()
    cpu_before = cpu_s(procs)
    bench_cpu_before = time.process_time()
    first_submit = time.time()
    for start in range(0, n, BATCH_LIMIT):
        if time.monotonic() > deadline:
            phase.note = f"budget of {budget_s:g}s spent while submitting"
            break
        chunk = [spec] * min(BATCH_LIMIT, n - start)
        submitted.update(task.id for task in client.submit_many(chunk))
    submit_s = time.time() - first_submit
    phase.figures["tasks submitted"] = len(submitted)
    if submitted:
        phase.figures["submit-only tasks/s"] = round(len(submitted) / submit_s, 1)
    completed = failed = 0
    while time.monotonic() < deadline:
        now = _finished(client)
        completed = now.get("completed", 0) - base_completed
        failed = sum(now.values()) - sum(base.values()) - completed
        if completed + failed >= len(submitted):
            break
        time.sleep(POLL_S)
    else:
        phase.note = phase.note or f"budget of {budget_s:g}s spent while waiting"
    seen_done = time.time()
    used_s = cpu_s(procs) - cpu_before
    bench_cpu_s = time.process_time() - bench_cpu_before
    phase.figures["tasks completed"] = completed
    if failed:
        phase.figures["tasks failed"] = failed
    if completed + failed >= len(submitted) and completed:
        last_finish = _last_finish(client, submitted, deadline, stored_before) or seen_done
        phase.figures["wall s, first submit → last done"] = round(last_finish - first_submit, 3)
        phase.figures["tasks/s"] = round(completed / (last_finish - first_submit), 1)
    phase.figures["CPU s"] = round(used_s, 2)
    if completed and used_s > 0:
        phase.figures["tasks per CPU-second"] = round(completed / used_s, 1)
    phase.figures["bench client CPU s"] = round(bench_cpu_s, 2)
    phase.status = _status(completed, n) if len(submitted) == n else "partial"
    return phase


def _last_finish(client: Client, ids: set[str], deadline: float, offset: int) -> float | None:
    """The latest ``finished_at`` among ``ids`` (read after the clock stopped).

    Completed tasks are listed oldest first, and the ``offset`` completed before ``ids``
    were created all come first: skipping them keeps a long-lived stack's read short.
    """
    latest: float | None = None
    while time.monotonic() < deadline + 30:
        page = client.list_tasks(state="completed", limit=1000, offset=offset)
        for task in page.items:
            if task.id in ids and task.finished_at is not None:
                latest = task.finished_at if latest is None else max(latest, task.finished_at)
        offset += len(page.items)
        if not page.items or offset >= page.total:
            return latest
    return None


def measure_up_idle(up: Child, label: str) -> Phase:
    phase = Phase(label)
    time.sleep(SETTLE_S)
    ps = up.ps
    phase.figures["`up` process RSS MB"] = rss_mb(ps)
    for child in ps.children(recursive=True):
        with suppress(psutil.NoSuchProcess):  # ended meanwhile
            phase.figures[f"child {child.name()} RSS MB"] = rss_mb(child)
    phase.status = "finished"
    return phase


def join_token(url: str, admin_token: str, worker_id: str, ca: Path | None = None) -> str:
    """A join token for ``worker_id``: `up`'s own broker admits only joined workers."""
    answer = httpx.post(
        f"{url}/api/v1/join-tokens",
        json={"worker_id": worker_id, "ttl_s": 600},
        headers={"Authorization": f"Bearer {admin_token}"},
        timeout=30,
        verify=_verify(ca),
    )
    answer.raise_for_status()
    token: str = answer.json()["token"]
    return token


def measure_worker(
    client: Client, broker: str, env: dict[str, str], work_dir: Path, budget_s: float, url: str
) -> Phase:
    """RSS of a standalone worker process, idle, 3 s after it shows online. It joins the
    broker `up` locks down with a join token (docs/broker-security.md)."""
    phase = Phase("worker footprint")
    worker_id = f"bench-idle-{secrets.token_hex(3)}"
    argv = [
        *EDGEPLANE,
        "worker",
        "--manager",
        broker,
        "--join",
        join_token(url, env["EDGEPLANE_ADMIN_TOKEN"], worker_id),
        "--worker-id",
        worker_id,
        "--data-dir",
        str(work_dir / "worker"),
    ]
    deadline = time.monotonic() + budget_s
    with process(argv, env, work_dir, "worker") as worker:
        if not poll(lambda: online(client, worker_id), deadline, worker):
            phase.note = f"worker not online in {budget_s:g}s: {worker.stderr_tail(3)}"
            return phase
        time.sleep(SETTLE_S)
        phase.figures["worker RSS MB"] = rss_mb(worker.ps)
        with suppress(psutil.NoSuchProcess):  # ended meanwhile
            phase.figures["worker USS MB"] = round(worker.ps.memory_full_info().uss / MB, 1)
        phase.status = "finished"
    # Wait until it is marked offline so it takes no tasks from the next phases.
    if not poll(lambda: not online(client, worker_id), time.monotonic() + 15, None):
        phase.note = "worker still listed online after it stopped"
    return phase


def online(client: Client, worker_id: str) -> bool:
    try:
        return client.worker(worker_id).state == "online"
    except NotFound:
        return False


def poll(check: Callable[[], bool], deadline: float, child: Child | None) -> bool:
    """Whether ``check`` came true before ``deadline`` (False at once if ``child`` died)."""
    while time.monotonic() < deadline:
        if check():
            return True
        if child is not None and not child.alive():
            return False
        time.sleep(0.1)
    return False


# --- report -------------------------------------------------------------------------------


def source_revision() -> str:
    """The checkout measured: figures mean little without the code they came from."""
    try:
        head = subprocess.run(
            ["git", "describe", "--always", "--dirty"],
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head.stdout.strip()


def machine() -> dict[str, Any]:
    return {
        "edgeplane": f"{__version__} ({source_revision()})",
        "nproc": os.cpu_count(),
        "memory_mb": psutil.virtual_memory().total // MB,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": platform.processor() or platform.machine(),
        # Other load on the box skews every figure: keep it next to them.
        "loadavg_1m_at_start": round(os.getloadavg()[0], 2),
    }


def machine_line(m: dict[str, Any]) -> str:
    """The machine a run measured, as the benches print it under their tables."""
    return (
        f"machine: {m['nproc']} cpus, {m['memory_mb']} MB, Python {m['python']}, {m['platform']}"
        f", load average (1 min) {m['loadavg_1m_at_start']} at start,"
        f" {m.get('loadavg_1m_at_end', '?')} at end; edgeplane {m['edgeplane']}"
    )


def phase_table(title: str, phases: Sequence[Phase]) -> Table:
    """One row per figure, the phase's name and status on its first row."""
    table = Table(title=title, show_lines=False)
    table.add_column("phase")
    table.add_column("figure")
    table.add_column("value", justify="right")
    table.add_column("status")
    for phase in phases:
        first = True
        for name, value in phase.figures.items():
            table.add_row(
                phase.name if first else "", name, str(value), phase.status if first else ""
            )
            first = False
        if first:
            table.add_row(phase.name, "-", "-", phase.status)
        if phase.note:
            table.add_row("", "note", phase.note, "")
    return table


def render(run: Run, console: Console) -> None:
    console.print(phase_table("edgeplane spine benchmark", run.phases))
    m = run.machine
    console.print(
        f"machine: {m['nproc']} cpus, {m['memory_mb']} MB, Python {m['python']}, {m['platform']}"
        f", load average (1 min) {m['loadavg_1m_at_start']} at start,"
        f" {m.get('loadavg_1m_at_end', '?')} at end"
    )
    console.print(f"edgeplane: {m['edgeplane']}")
    console.print(f"command: {run.command}")
    console.print(f"up:      {run.up_command}")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.spine", description=DESCRIPTION)
    parser.add_argument("--tasks", type=int, default=10_000, help="throughput tasks")
    parser.add_argument("--latency", type=int, default=2000, help="latency samples")
    parser.add_argument("--warmup", type=int, default=100, help="latency warm-up tasks")
    parser.add_argument("--workers", type=int, default=2, help="workers inside `up`")
    parser.add_argument("--latency-budget", type=float, default=90.0, metavar="S")
    parser.add_argument("--throughput-budget", type=float, default=180.0, metavar="S")
    parser.add_argument("--json", type=Path, default=None, metavar="FILE", help="write results")
    parser.add_argument(
        "--monitoring",
        default=None,
        metavar="P1,P2",
        help="instead of one throughput phase, one per monitoring profile given (e.g. "
        "standard,off), alternating --rounds times on the same `up`",
    )
    parser.add_argument("--rounds", type=int, default=2, help="rounds of --monitoring")
    parser.add_argument(
        "--otel-endpoint",
        default="",
        metavar="URL",
        help="run `up` with traces exported to this OTLP/HTTP collector (docs/metrics.md)",
    )
    return parser.parse_args(argv)


def run(args: argparse.Namespace, command: str, console: Console, work_dir: Path) -> Run:
    token = secrets.token_urlsafe(16)
    env = clean_env(token)
    port = free_port()
    up_argv = [
        *EDGEPLANE,
        "up",
        "--data-dir",
        str(work_dir / "up"),
        "--port",
        str(port),
        "--workers",
        str(args.workers),
    ]
    if args.otel_endpoint:
        up_argv += ["--otel-endpoint", args.otel_endpoint]
    result = Run(
        command=command,
        up_command=shlex.join(["python", *up_argv[1:]]),
        machine=machine(),
    )
    url = f"http://127.0.0.1:{port}"
    noop = wasm_noop()
    with process(up_argv, env, work_dir, "up") as up, Client(url, token, timeout=30) as client:
        broker = wait_ready(url, up, time.monotonic() + READY_TIMEOUT_S)
        console.print(f"up ready at {url}, broker {broker}")
        steps: list[tuple[str, Callable[[], Phase]]] = [
            ("`up` idle (fresh)", lambda: measure_up_idle(up, "`up` idle (fresh)")),
            ("worker footprint", lambda: measure_worker(client, broker, env, work_dir, 30.0, url)),
            (
                "latency",
                lambda: measure_latency(
                    client, noop, args.latency, args.warmup, args.latency_budget, [up.ps]
                ),
            ),
            *throughput_steps(args, client, noop, up),
            ("`up` idle (after load)", lambda: measure_up_idle(up, "`up` idle (after load)")),
        ]
        for name, step in steps:
            console.print(f"{name} …")
            result.phases.append(_guarded(name, step))
    result.machine["loadavg_1m_at_end"] = round(os.getloadavg()[0], 2)
    return result


def throughput_steps(
    args: argparse.Namespace, client: Client, noop: dict[str, Any], up: Child
) -> list[tuple[str, Callable[[], Phase]]]:
    """The throughput phase; with ``--monitoring``, one per profile and round, in turns,
    the order reversed every other round (so a drift of the machine or the store's growth
    falls on every profile alike)."""
    if not args.monitoring:
        return [
            (
                "throughput",
                lambda: measure_throughput(
                    client, noop, args.tasks, args.throughput_budget, [up.ps]
                ),
            )
        ]
    steps: list[tuple[str, Callable[[], Phase]]] = []
    profiles = args.monitoring.split(",")
    for turn in range(args.rounds):
        for profile in profiles if turn % 2 == 0 else profiles[::-1]:
            name = f"throughput, monitoring {profile}, round {turn + 1}"
            spec = {**noop, "monitoring": profile}

            def step(spec: dict[str, Any] = spec, name: str = name) -> Phase:
                phase = measure_throughput(
                    client, spec, args.tasks, args.throughput_budget, [up.ps]
                )
                phase.name = name
                return phase

            steps.append((name, step))
    return steps


def _guarded(name: str, step: Callable[[], Phase]) -> Phase:
    """A phase that raised is reported as not finished, and the next phases still run."""
    try:
        return step()
    except (EdgeplaneError, httpx.HTTPError, psutil.Error) as exc:
        return Phase(name, note=f"{type(exc).__name__}: {exc}")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    given = sys.argv[1:] if argv is None else list(argv)
    command = shlex.join(["python", "-m", "bench.spine", *given])
    console = Console()
    with tempfile.TemporaryDirectory(prefix="edgeplane-bench-") as tmp:
        try:
            result = run(args, command, console, Path(tmp))
        except EdgeplaneError as exc:
            console.print(f"[red]benchmark aborted:[/red] {exc}")
            return 1
    render(result, console)
    if args.json is not None:
        args.json.write_text(json.dumps(asdict(result), indent=2) + "\n")
        console.print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
