"""The dashboard benchmark: how soon its pages show a fleet's data, and what open
dashboards cost the server under load.

Two parts, each on fresh processes; nothing here asserts on time.

- **paint**: a manager (``edgeplane manager``, SQLite) on its own Mosquitto with
  ``--workers`` simulated workers (``bench.scale``'s fakes, which complete every task
  they are given at once) and ``--tasks`` no-op wasm tasks run through them, plus
  ``--pending`` tasks no worker can run. Then Debian's chromium (headless, driven by
  playwright) opens each page of the dashboard ``--repeat`` times in a fresh tab, and
  reports, from the navigation's start: the first contentful paint (the page's frame),
  **content shown** (the first animation frame at which the page's data is in the DOM:
  the overview's cards, a row of the workers' or tasks' table), and the API calls the
  page made (count, slowest, bytes).
- **load**: ``edgeplane up --workers 2`` as ``bench.spine`` starts it, and ``bench.spine``'s
  throughput phase (``--load-tasks`` no-op wasm tasks through ``POST /tasks/batch``) in
  rounds with 0 and with ``--dashboards`` open dashboards (tabs on ``/dashboard``, each
  following ``/api/v1/events``), alternating, in one run; and the same with no load
  (``--idle-s``). The server's CPU is that of the ``up`` process tree; the browser's is
  reported beside it (it shares the machine's cores).

    python -m bench.dashboard [--tasks 10000] [--workers 100] [--dashboards 10]
                              [--parts paint,load] [--json bench/results/dashboard.json]

Needs playwright (the ``test`` extras) and Debian's ``/usr/bin/chromium``, as the browser
tests do; the browser is never downloaded.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shlex
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil
from rich.console import Console

from bench.scale import Fleets, all_workers, manager_argv, wait_manager
from bench.spine import (
    EDGEPLANE,
    READY_TIMEOUT_S,
    Phase,
    _finished,
    clean_env,
    cpu_s,
    free_port,
    machine,
    measure_throughput,
    ms,
    phase_table,
    process,
    wait_ready,
    wasm_noop,
)
from edgeplane import Client
from edgeplane.errors import EdgeplaneError
from edgeplane.transport.broker import MosquittoProcess

DESCRIPTION = "Dashboard first paint with a big store, and the server's CPU per open dashboard."
CHROMIUM = "/usr/bin/chromium"
#: The pages measured, and what shows that each has its data: a JS expression true once
#: the page's content is in the DOM.
PAGES = {
    "overview": "document.querySelector('#view .card-num') !== null",
    "workers": "document.querySelector('#view tbody tr') !== null",
    "tasks": "document.querySelector('#view tbody tr[data-id]') !== null",
}
#: Longest a page may take to show its data before the run calls it not shown.
SHOWN_TIMEOUT_MS = 60_000
HEARTBEAT_S = 5.0
SEED_BUDGET_S = 600.0


@dataclass
class Report:
    command: str
    machine: dict[str, Any]
    phases: list[Phase] = field(default_factory=list)


# --- the browser --------------------------------------------------------------------------


@contextmanager
def chromium() -> Iterator[Any]:
    """A headless chromium (Debian's) through playwright's synchronous API."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as exc:
        raise EdgeplaneError("playwright is missing: pip install -e '.[test]'") from exc
    if not Path(CHROMIUM).exists():
        raise EdgeplaneError(f"{CHROMIUM} is missing: apt-get install chromium")
    with sync_playwright() as driver:
        browser = driver.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=["--no-sandbox"]
        )
        try:
            yield browser
        finally:
            browser.close()


def browser_procs() -> list[psutil.Process]:
    """This process's chromium processes (under playwright's driver)."""
    found = []
    for child in psutil.Process().children(recursive=True):
        with suppress(psutil.Error):
            if "chrom" in child.name():
                found.append(child)
    return found


def browser_cpu() -> dict[int, float]:
    """CPU seconds of each chromium process now, by pid."""
    found = {}
    for proc in browser_procs():
        with suppress(psutil.Error):
            times = proc.cpu_times()
            found[proc.pid] = times.user + times.system
    return found


def browser_cpu_since(before: dict[int, float]) -> float:
    """CPU seconds the browser used since ``before`` (processes that ended meanwhile,
    the tabs of a closed context, are left out rather than counted negative)."""
    return sum(cpu - before.get(pid, 0.0) for pid, cpu in browser_cpu().items())


def goto(page: Any, url: str, wait_until: str = "load") -> None:
    """``page.goto``, again when chromium aborted it because the machine's network
    changed (other software adding interfaces: seen on the shared bench machine)."""
    for attempt in range(5):
        try:
            page.goto(url, wait_until=wait_until)
            return
        except Exception as exc:  # playwright's Error
            if "ERR_NETWORK_CHANGED" not in str(exc) or attempt == 4:
                raise
            time.sleep(0.2)


def logged_in(browser: Any, url: str, token: str) -> Any:
    """A browser context whose dashboard has the token (in its localStorage)."""
    context = browser.new_context()
    page = context.new_page()
    goto(page, f"{url}/dashboard#token={token}")
    page.wait_for_function(
        "() => document.getElementById('status').textContent === 'live'",
        timeout=SHOWN_TIMEOUT_MS,
    )
    page.close()
    return context


@dataclass
class Paint:
    fcp_ms: float | None
    shown_ms: float | None
    calls: int
    slowest_call_ms: float
    slowest_call: str
    kb: float


def paint(context: Any, url: str, name: str) -> Paint:
    """One fresh tab on the page ``name``: when it painted, when its data showed."""
    page = context.new_page()
    try:
        goto(page, f"{url}/dashboard#{name}", wait_until="commit")
        shown: float | None
        try:
            handle = page.wait_for_function(
                f"() => ({PAGES[name]}) ? performance.now() : null",
                polling="raf",
                timeout=SHOWN_TIMEOUT_MS,
            )
            shown = float(handle.json_value())
        except Exception:  # playwright's TimeoutError: the page never showed its data
            shown = None
        fcp = page.evaluate(
            "() => (performance.getEntriesByName('first-contentful-paint')[0] || {}).startTime"
            " ?? null"
        )
        calls = page.evaluate(
            "() => performance.getEntriesByType('resource')"
            ".filter((e) => e.name.includes('/api/v1/') && !e.name.includes('/api/v1/events'))"
            ".map((e) => [e.name, e.duration, e.transferSize])"
        )
    finally:
        page.close()
    slowest = max(calls, key=lambda c: c[1], default=["", 0.0, 0])
    return Paint(
        fcp_ms=None if fcp is None else round(float(fcp), 1),
        shown_ms=None if shown is None else round(shown, 1),
        calls=len(calls),
        slowest_call_ms=round(float(slowest[1]), 1),
        slowest_call=str(slowest[0]).split("/api/v1", 1)[-1],
        kb=round(sum(float(c[2]) for c in calls) / 1024, 1),
    )


def paint_phase(context: Any, url: str, name: str, repeat: int) -> Phase:
    phase = Phase(f"page {name}")
    runs = [paint(context, url, name) for _ in range(repeat)]
    shown = [r.shown_ms for r in runs if r.shown_ms is not None]
    fcps = [r.fcp_ms for r in runs if r.fcp_ms is not None]
    if fcps:
        phase.figures["first contentful paint ms, median"] = round(statistics.median(fcps), 1)
    if shown:
        phase.figures["content shown ms, median"] = round(statistics.median(shown), 1)
        phase.figures["content shown ms, max"] = max(shown)
    last = runs[-1]
    phase.figures["API calls"] = last.calls
    phase.figures["slowest call ms"] = last.slowest_call_ms
    phase.figures["slowest call"] = last.slowest_call
    phase.figures["API KB"] = last.kb
    phase.figures["tabs"] = f"{len(shown)}/{repeat} showed their data"
    phase.status = "finished" if len(shown) == repeat else ("partial" if shown else "not finished")
    return phase


# --- part 1: first paint with a big store -------------------------------------------------


def seed(client: Client, n: int, pending: int, budget_s: float) -> Phase:
    """``n`` no-op wasm tasks run by the fakes, and ``pending`` that no worker can run."""
    phase = Phase("seed the store")
    deadline = time.monotonic() + budget_s
    began = time.monotonic()
    noop = wasm_noop()
    base = sum(_finished(client).values())
    for start in range(0, n, 1000):
        client.submit_many([noop] * min(1000, n - start))
    done = 0
    while time.monotonic() < deadline:
        done = sum(_finished(client).values()) - base
        if done >= n:
            break
        time.sleep(0.5)
    waiting = {"runtime": "container", "image": "nowhere", "name": "pending"}
    for start in range(0, pending, 1000):
        client.submit_many([waiting] * min(1000, pending - start))
    phase.figures["tasks ended"] = done
    phase.figures["tasks pending"] = pending
    phase.figures["tasks in the store"] = client.list_tasks(limit=1).total
    phase.figures["workers online"] = sum(1 for w in all_workers(client) if w.state == "online")
    phase.figures["seed s"] = round(time.monotonic() - began, 1)
    phase.status = "finished" if done >= n else "partial"
    return phase


def run_paint(args: argparse.Namespace, work_dir: Path, console: Console) -> list[Phase]:
    token = secrets.token_urlsafe(16)
    worker_ids = [f"w{i:04d}" for i in range(args.workers)]
    phases: list[Phase] = []
    with ExitStack() as stack:
        broker = MosquittoProcess(work_dir / "broker", free_port())
        broker.start()
        stack.callback(broker.stop)
        fleets = Fleets.start(worker_ids, 2500, broker.port, 1, complete=True)
        stack.callback(fleets.stop)
        argv = manager_argv(broker.url, work_dir / "manager", HEARTBEAT_S)
        manager = stack.enter_context(process(argv, clean_env(token), work_dir, "manager"))
        url = wait_manager(manager, time.monotonic() + READY_TIMEOUT_S)
        client = stack.enter_context(Client(url, token, timeout=60))
        fleets.ask("register")
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if sum(1 for w in all_workers(client) if w.state == "online") >= args.workers:
                break
            time.sleep(0.5)
        console.print(f"paint: {args.workers} workers online at {url}; seeding {args.tasks} …")
        phases.append(seed(client, args.tasks, args.pending, SEED_BUDGET_S))
        with chromium() as browser:
            context = logged_in(browser, url, token)
            for name in PAGES:
                console.print(f"paint: page {name} …")
                phases.append(paint_phase(context, url, name, args.repeat))
    return phases


# --- part 2: open dashboards under load ---------------------------------------------------


@contextmanager
def dashboards(browser: Any, url: str, token: str, n: int) -> Iterator[list[Any]]:
    """``n`` dashboards on their landing page, each following the event stream, each in
    a browser context of its own: as ``n`` operators. (Tabs of one context share its 6
    HTTP/1.1 connections to a host, and every open dashboard holds one.)"""
    contexts = []
    try:
        for _ in range(n):
            context = logged_in(browser, url, token)
            contexts.append(context)
            page = context.new_page()
            goto(page, f"{url}/dashboard")
            page.wait_for_function(
                "() => document.getElementById('status').textContent === 'live'",
                timeout=SHOWN_TIMEOUT_MS,
            )
        yield contexts
    finally:
        for context in contexts:
            with suppress(Exception):  # already gone with its browser
                context.close()


def loaded_round(
    client: Client, noop: dict[str, Any], args: argparse.Namespace, up: Any, open_: int, turn: int
) -> Phase:
    before = browser_cpu()
    phase = measure_throughput(client, noop, args.load_tasks, args.load_budget, [up.ps])
    phase.name = f"load, {open_} dashboards, round {turn}"
    phase.figures["browser CPU s"] = round(browser_cpu_since(before), 2)
    completed = phase.figures.get("tasks completed", 0)
    if isinstance(completed, int) and completed:
        used = phase.figures.get("CPU s", 0.0)
        phase.figures["server CPU ms per task"] = ms(float(used) / completed)
    return phase


def idle_round(up: Any, open_: int, idle_s: float) -> Phase:
    phase = Phase(f"idle, {open_} dashboards")
    server_before, browser_before = cpu_s([up.ps]), browser_cpu()
    time.sleep(idle_s)
    server = cpu_s([up.ps]) - server_before
    phase.figures["wall s"] = idle_s
    phase.figures["server CPU %"] = round(100 * server / idle_s, 2)
    phase.figures["browser CPU %"] = round(100 * browser_cpu_since(browser_before) / idle_s, 2)
    phase.status = "finished"
    return phase


def run_load(args: argparse.Namespace, work_dir: Path, console: Console) -> list[Phase]:
    token = secrets.token_urlsafe(16)
    env = clean_env(token)
    port = free_port()
    up_argv = [*EDGEPLANE, "up", "--data-dir", str(work_dir / "up"), "--port", str(port)]
    up_argv += ["--workers", "2"]
    url = f"http://127.0.0.1:{port}"
    noop = wasm_noop()
    phases: list[Phase] = []
    with (
        process(up_argv, env, work_dir, "up") as up,
        Client(url, token, timeout=60) as client,
        chromium() as browser,
    ):
        wait_ready(url, up, time.monotonic() + READY_TIMEOUT_S)
        console.print("load: warming up …")
        measure_throughput(client, noop, min(2000, args.load_tasks), args.load_budget, [up.ps])
        for open_ in (0, args.dashboards):
            with dashboards(browser, url, token, open_):
                console.print(f"load: idle with {open_} dashboards …")
                phases.append(idle_round(up, open_, args.idle_s))
        for turn in range(1, args.rounds + 1):
            for open_ in (0, args.dashboards):
                with dashboards(browser, url, token, open_):
                    console.print(f"load: round {turn}, {open_} dashboards …")
                    phases.append(loaded_round(client, noop, args, up, open_, turn))
    return phases


# --- the run ------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.dashboard", description=DESCRIPTION)
    parser.add_argument("--parts", default="paint,load", help="paint, load or both")
    parser.add_argument("--tasks", type=int, default=10_000, help="tasks in the store (paint)")
    parser.add_argument("--pending", type=int, default=100, help="tasks left pending (paint)")
    parser.add_argument("--workers", type=int, default=100, help="simulated workers (paint)")
    parser.add_argument("--repeat", type=int, default=5, help="tabs opened per page (paint)")
    parser.add_argument("--dashboards", type=int, default=10, help="open dashboards (load)")
    parser.add_argument("--load-tasks", type=int, default=10_000, help="tasks per load round")
    parser.add_argument("--load-budget", type=float, default=180.0, metavar="S")
    parser.add_argument("--rounds", type=int, default=2, help="load rounds per setting")
    parser.add_argument("--idle-s", type=float, default=20.0, help="idle window (load)")
    parser.add_argument("--json", type=Path, default=None, metavar="FILE", help="write results")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    given = sys.argv[1:] if argv is None else list(argv)
    report = Report(shlex.join(["python", "-m", "bench.dashboard", *given]), machine())
    console = Console()
    parts: dict[str, Callable[[argparse.Namespace, Path, Console], list[Phase]]] = {
        "paint": run_paint,
        "load": run_load,
    }
    for name in args.parts.split(","):
        with tempfile.TemporaryDirectory(prefix=f"edgeplane-bench-{name}-") as tmp:
            try:
                report.phases += parts[name](args, Path(tmp), console)
            except (EdgeplaneError, OSError) as exc:
                report.phases.append(Phase(name, note=f"{type(exc).__name__}: {exc}"))
    report.machine["loadavg_1m_at_end"] = round(os.getloadavg()[0], 2)
    console.print(phase_table("edgeplane dashboard benchmark", report.phases))
    m = report.machine
    console.print(
        f"machine: {m['nproc']} cpus, load average {m['loadavg_1m_at_start']} at start, "
        f"{m['loadavg_1m_at_end']} at end; edgeplane {m['edgeplane']}"
    )
    console.print(f"command: {report.command}")
    if args.json is not None:
        args.json.write_text(json.dumps(asdict(report), indent=2) + "\n")
        console.print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
