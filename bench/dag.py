"""The DAG benchmark: what the workflow engine adds per dependency edge, in one process.

Starts the whole stack in-process (``running_stack``: embedded Mosquitto, SQLite, two
workers) and runs the same number of no-op wasm tasks twice on it: once as a plain
``POST /tasks/batch`` with no dependencies (the baseline), once as one fan-out/fan-in
workflow ``root → m0..m{width-1} → sink``. The difference over the edge count
(``2 * width``) is the manager's overhead per edge. Nothing here asserts on time; every
wait is bounded by one overall budget and a phase that runs out is reported as not
finished.

    python -m bench.dag [--width 998] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import secrets
import shlex
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import wasmtime
from rich.console import Console
from rich.table import Table

from bench.spine import Phase
from edgeplane.config import Settings
from edgeplane.roles.up import running_stack

NOOP = base64.b64encode(wasmtime.wat2wasm('(module (func (export "noop")))')).decode()
#: Longest a single long-poll blocks (the API caps ``?wait=`` at 60 s).
LONG_POLL_S = 30.0
#: How often the baseline counts completed tasks.
POLL_S = 0.05
WORKERS_TIMEOUT_S = 30.0


@dataclass
class Report:
    command: str
    width: int
    tasks: int
    edges: int
    phases: list[Phase] = field(default_factory=list)


class Budget:
    """One deadline for the whole run, so the benchmark never hangs."""

    def __init__(self, seconds: float) -> None:
        self.deadline = time.monotonic() + seconds

    def left(self) -> float:
        return max(0.0, self.deadline - time.monotonic())


def noop(name: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "export": "noop", "file": NOOP, **extra}


def fan_workflow(width: int) -> dict[str, Any]:
    middle = [f"m{i}" for i in range(width)]
    return {
        "name": "fan",
        "tasks": [
            noop("root"),
            *(noop(name, depends_on=["root"]) for name in middle),
            noop("sink", depends_on=middle),
        ],
    }


async def completed_count(http: httpx.AsyncClient) -> int:
    response = await http.get("/tasks", params={"state": "completed", "limit": 1})
    response.raise_for_status()
    total: int = response.json()["total"]
    return total


async def wait_for_workers(http: httpx.AsyncClient, count: int, budget: Budget) -> None:
    async with asyncio.timeout(min(WORKERS_TIMEOUT_S, budget.left())):
        while True:
            items = (await http.get("/workers")).json()["items"]
            if sum(1 for w in items if w["state"] == "online") >= count:
                return
            await asyncio.sleep(0.1)


async def warm_up(http: httpx.AsyncClient) -> None:
    """One task end to end, so the first measured task pays no start-up cost."""
    created = await http.post("/tasks", json={**noop("warm"), "start": True})
    created.raise_for_status()
    await http.get(f"/tasks/{created.json()['id']}", params={"wait": LONG_POLL_S})


async def baseline(http: httpx.AsyncClient, tasks: int, budget: Budget, phase: Phase) -> float:
    """``tasks`` independent tasks in one batch; seconds until all are completed."""
    before = await completed_count(http)
    body = {"tasks": [{**noop(f"b{i}"), "start": True} for i in range(tasks)]}
    started = time.perf_counter()
    created = await http.post("/tasks/batch", json=body)
    posted = time.perf_counter() - started
    created.raise_for_status()
    phase.figures["POST /tasks/batch (s)"] = round(posted, 4)
    done = 0
    try:
        async with asyncio.timeout(budget.left()):
            while done < tasks:
                await asyncio.sleep(POLL_S)
                done = await completed_count(http) - before
    except TimeoutError:
        phase.figures["completed"] = done
        phase.note = "budget ran out"
        raise
    total = time.perf_counter() - started
    phase.figures["completed"] = done
    phase.figures["total (s)"] = round(total, 4)
    phase.figures["tasks/s"] = round(tasks / total, 1)
    phase.status = "finished"
    return total


async def workflow(http: httpx.AsyncClient, width: int, budget: Budget, phase: Phase) -> float:
    """The fan-out/fan-in workflow; seconds from POST until the long-poll sees it ended."""
    body = fan_workflow(width)
    started = time.perf_counter()
    created = await http.post("/workflows", json=body)
    posted = time.perf_counter() - started
    created.raise_for_status()
    phase.figures["POST /workflows (s)"] = round(posted, 4)
    run_id = created.json()["id"]
    run: dict[str, Any] = created.json()
    try:
        async with asyncio.timeout(budget.left()):
            while run["state"] not in ("completed", "failed", "cancelled"):
                response = await http.get(f"/workflows/{run_id}", params={"wait": LONG_POLL_S})
                response.raise_for_status()
                run = response.json()
    except TimeoutError:
        phase.note = "budget ran out"
        raise
    finally:
        states: dict[str, int] = {}
        for task in run.get("tasks", []):
            states[task["state"]] = states.get(task["state"], 0) + 1
        phase.figures["task states"] = ", ".join(f"{k} {v}" for k, v in sorted(states.items()))
    total = time.perf_counter() - started
    phase.figures["state"] = run["state"]
    phase.figures["total (s)"] = round(total, 4)
    if run.get("finished_at") and run.get("created_at"):
        phase.figures["server created→finished (s)"] = round(
            run["finished_at"] - run["created_at"], 4
        )
    phase.figures["tasks/s"] = round((width + 2) / total, 1)
    if run["state"] != "completed":
        phase.note = f"workflow ended {run['state']}"
        return total
    phase.status = "finished"
    return total


async def measure(width: int, budget_s: float, report: Report) -> None:
    budget = Budget(budget_s)
    token = secrets.token_urlsafe(16)
    with tempfile.TemporaryDirectory(prefix="edgeplane-dag-") as tmp:
        data_dir = Path(tmp)
        settings = Settings(
            data_dir=data_dir,
            broker="",
            store=f"sqlite:///{data_dir / 'edgeplane.db'}",
            port=0,
            workers=2,
            admin_token=token,
            heartbeat_s=5,
        )
        async with (
            running_stack(settings) as stack,
            httpx.AsyncClient(
                base_url=stack.control.url + "/api/v1",
                headers={"Authorization": f"Bearer {token}"},
                timeout=LONG_POLL_S + 30,
            ) as http,
        ):
            await wait_for_workers(http, settings.workers, budget)
            await warm_up(http)
            base = Phase("batch, no dependencies")
            flow = Phase("fan-out/fan-in workflow")
            report.phases += [base, flow]
            try:
                base_s = await baseline(http, report.tasks, budget, base)
                flow_s = await workflow(http, width, budget, flow)
            except TimeoutError:
                return
            if flow.status == "finished":
                report.phases.append(
                    Phase(
                        "per dependency edge",
                        "finished",
                        {
                            "overhead (ms/edge)": round((flow_s - base_s) / report.edges * 1e3, 4),
                            "workflow - batch (s)": round(flow_s - base_s, 4),
                        },
                    )
                )


def show(report: Report, console: Console) -> None:
    table = Table(title=f"edgeplane DAG: {report.tasks} tasks, {report.edges} edges")
    table.add_column("phase")
    table.add_column("figure")
    table.add_column("value", justify="right")
    for phase in report.phases:
        rows = list(phase.figures.items()) or [("-", "-")]
        for n, (name, value) in enumerate(rows):
            table.add_row(phase.name if n == 0 else "", name, str(value))
        table.add_row("", "status", phase.status + (f" ({phase.note})" if phase.note else ""))
        table.add_section()
    console.print(table)
    console.print(f"command: {report.command}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.dag", description=__doc__)
    parser.add_argument("--width", type=int, default=998, help="middle tasks (total = width+2)")
    parser.add_argument("--budget", type=float, default=300.0, help="give up after (s)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    if args.width < 1:
        parser.error("--width must be at least 1")
    report = Report(
        command=shlex.join(
            ["python", "-m", "bench.dag", *(sys.argv[1:] if argv is None else argv)]
        ),
        width=args.width,
        tasks=args.width + 2,
        edges=2 * args.width,
    )
    asyncio.run(measure(args.width, args.budget, report))
    show(report, Console())
    if args.json:
        args.json.write_text(json.dumps(asdict(report), indent=2) + "\n")


if __name__ == "__main__":
    main()
