"""Takeover: how long a cluster runs no new task after its leading manager is killed.

Two ``edgeplane manager`` processes of one cluster on one PostgreSQL schema and one
Mosquitto (started here), and one ``edgeplane worker``. Each trial kill -9's the leader
and submits a task through the client given both URLs (it walks to whichever leads), then
measures from the kill to the task's ``started_at`` on the worker (the new leader has
dispatched it). The killed manager is started again as the standby for the next trial.
Nothing here asserts on time; every wait is bounded.

There is no peer figure: Celery and Dramatiq have no leader to lose (their broker is the
single point, and a Redis failover is Redis's own measurement).

    python -m bench.takeover [--trials 10] [--heartbeat-s 5] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import secrets
import shlex
import statistics
import sys
import tempfile
import time
import uuid
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.table import Table

from bench.spine import EDGEPLANE, Child, clean_env, free_port, machine, process
from edgeplane import Client
from edgeplane.errors import EdgeplaneError
from edgeplane.transport.broker import MosquittoProcess

PG = "postgresql://postgres@127.0.0.1:5432/test"
READY_S = 60.0
TRIAL_S = 120.0


@dataclass
class Report:
    command: str
    heartbeat_s: float
    trials: list[float] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    machine: dict[str, Any] = field(default_factory=dict)


def _role(url: str) -> str:
    try:
        answer = httpx.get(f"{url}/healthz", timeout=2)
    except httpx.HTTPError:
        return "down"
    if answer.status_code == 200:
        return "leader"
    return "standby" if answer.headers.get("x-edgeplane-role") == "standby" else "down"


def _wait(check: Any, what: str, seconds: float) -> Any:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.02)
    raise EdgeplaneError(f"timed out waiting for {what}")


def run(trials: int, heartbeat_s: float, work: Path, console: Console) -> Report:
    report = Report(shlex.join(["python", "-m", "bench.takeover", *sys.argv[1:]]), heartbeat_s)
    token = secrets.token_urlsafe(24)
    env = clean_env(token) | {"EDGEPLANE_DOMAIN": f"t{uuid.uuid4().hex[:8]}"}
    store = f"{PG}?schema=bench_takeover_{uuid.uuid4().hex[:8]}"
    with ExitStack() as stack:
        broker = MosquittoProcess(work / "mosquitto", free_port())
        (work / "mosquitto").mkdir()
        broker_url = broker.start()
        stack.callback(broker.stop)
        ports = {"a": free_port(), "b": free_port()}
        urls = {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}

        def manager(name: str) -> Child:
            argv = [*EDGEPLANE, "manager", "--broker", broker_url, "--store", store,
                    "--port", str(ports[name]), "--data-dir", str(work / name),
                    "--heartbeat-s", str(heartbeat_s)]  # fmt: skip
            return stack.enter_context(process(argv, env, work, f"{name}-{time.time_ns()}"))

        managers = {"a": manager("a")}
        _wait(lambda: _role(urls["a"]) == "leader", "the first manager to lead", READY_S)
        managers["b"] = manager("b")
        _wait(lambda: _role(urls["b"]) == "standby", "the second to stand by", READY_S)
        worker = [*EDGEPLANE, "worker", "--manager", broker_url, "--worker-id", "bench-w",
                  "--data-dir", str(work / "w"), "--allow-host", "--no-containers"]  # fmt: skip
        stack.enter_context(process(worker, env, work, "worker"))
        client = stack.enter_context(Client(f"{urls['a']},{urls['b']}", token, timeout=10))
        _wait(lambda: client.workers().total, "the worker", READY_S)
        # Trial 0 is not counted: killed at once, the first leader may not have stored the
        # worker yet (it batches member documents for 0.2 s), and the new one then waits
        # for the worker's next heartbeat instead of asking it at once.
        for n in range(trials + 1):
            leader = next(name for name in urls if _role(urls[name]) == "leader")
            standby = "b" if leader == "a" else "a"
            managers[leader].proc.kill()
            killed = time.time()
            managers[leader].proc.wait()

            def started() -> float | None:
                try:
                    task = client.run(name="t", runtime="host", command=["true"], timeout=5)
                except EdgeplaneError:
                    return None
                return task.started_at

            began = _wait(started, f"a task dispatched by {standby}", TRIAL_S)
            if n:
                report.trials.append(began - killed)
            shown = f"trial {n}" if n else "warm-up"
            console.print(f"{shown}: {began - killed:.2f} s ({leader} killed, {standby} led)")
            managers[leader] = manager(leader)
            _wait(lambda: _role(urls[leader]) == "standby", f"{leader} to stand by", READY_S)  # noqa: B023
    report.machine = machine()
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.takeover", description=__doc__)
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--heartbeat-s", type=float, default=5.0)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    console = Console()
    with tempfile.TemporaryDirectory(prefix="edgeplane-takeover-") as tmp:
        report = run(args.trials, args.heartbeat_s, Path(tmp), console)
    table = Table(
        title=f"Takeover, leader kill -9 → first task started ({len(report.trials)} trials)"
    )
    for column in ("heartbeat s", "lease s", "median s", "min s", "max s"):
        table.add_column(column, justify="right")
    got = report.trials
    table.add_row(
        f"{args.heartbeat_s:g}",
        f"{args.heartbeat_s:g}",
        f"{statistics.median(got):.2f}",
        f"{min(got):.2f}",
        f"{max(got):.2f}",
    )
    console.print(table)
    console.print(f"command: {report.command}")
    if args.json:
        args.json.write_text(json.dumps(asdict(report), indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
