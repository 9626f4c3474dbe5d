"""SIGTERM of a worker running host tasks that ignore SIGTERM (``systemctl stop``, Ctrl-C),
with a real manager and the tasks' own processes (docs/architecture.md, "Worker
crashes"): the worker stops every task at once, so leaving takes one grace period
however many tasks run, and it takes no task the manager sends while it leaves (the
manager places it again once the worker said it left).

Before, it stopped its tasks one after another (a grace period each), and it ran a task
that came meanwhile, which then ran a second time elsewhere; the worker waited 5 s for it
before its runtime killed it (integration/test_spread.py's 10 s teardowns).
"""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest

from edgeplane.runtimes.supervised import GRACE_S
from edgeplane.transport import free_port
from faults.procs import Api, Lab, wait_until

pytestmark = [pytest.mark.mosquitto, pytest.mark.timeout(120)]

TASKS = 6


def _stubborn(files: Path, label: int) -> dict[str, Any]:
    """A host task that notes when it got SIGTERM and goes on: SIGKILL ends it."""
    script = (
        f'trap "date +%s.%N >> {files}/term-{label}" TERM; '
        f"echo {label} >> {files}/lines; "
        "while :; do sleep 0.05; done"
    )
    return {"runtime": "host", "command": ["sh", "-c", script], "retries": 1, "start": True}


def _task(api: Api, task_id: str) -> dict[str, Any]:
    found: dict[str, Any] = api.http.get(f"/tasks/{task_id}").json()
    return found


def _lines(files: Path) -> list[str]:
    path = files / "lines"
    return path.read_text().split() if path.exists() else []


def test_a_leaving_worker_stops_its_tasks_at_once_and_runs_no_new_one(lab: Lab) -> None:
    # Beats of 2 s: the worker is paused below for a moment, which must not be long
    # enough for the manager to think it lost (3 missed beats).
    lab.heartbeat_s = 2.0
    files = lab.root / "files"
    files.mkdir()
    port = free_port()
    manager = lab.manager(port).start()
    api = lab.api(port)
    api.wait_healthy(manager)
    w1 = lab.worker("w1", slots=TASKS + 1).start()
    api.wait_workers(["w1"], watch=[manager, w1])
    ids = api.submit([_stubborn(files, label) for label in range(TASKS)])
    wait_until(lambda: len(_lines(files)) == TASKS, "every command to start", watch=[w1])

    assert w1.proc is not None
    w1.proc.send_signal(signal.SIGTERM)
    terms = [files / f"term-{label}" for label in range(TASKS)]
    wait_until(lambda: all(t.exists() for t in terms), "every task to get SIGTERM")
    # Every task got its SIGTERM together: one after another, each waited for the
    # previous one's grace period (SIGKILL after GRACE_S).
    first = [float(t.read_text().split()[0]) for t in terms]
    assert max(first) - min(first) < GRACE_S, first

    # Leaving (its tasks in their grace period), it is sent a new task: paused, so that
    # the command waits for it and arrives before it says it left.
    w1.pause()
    try:
        (late,) = api.submit([{**_stubborn(files, TASKS), "name": "late"}])
        wait_until(
            lambda: (t := _task(api, late))["state"] == "scheduled" and t["worker_id"] == "w1",
            "the manager to send the new task to w1",
        )
    finally:
        w1.resume()
    try:
        code = w1.proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"w1 did not exit:\n{w1.tail()}") from None
    assert code == 0, w1.tail()
    assert _lines(files).count(str(TASKS)) == 0  # w1 did not run it

    w2 = lab.worker("w2", slots=TASKS + 1).start()
    api.wait_workers(["w2"], watch=[manager, w2])

    def all_on_w2() -> list[dict[str, Any]]:
        tasks = [_task(api, task_id) for task_id in [*ids, late]]
        ok = all((t["state"], t["worker_id"], t["attempt"]) == ("running", "w2", 2) for t in tasks)
        return tasks if ok else []

    wait_until(all_on_w2, "every task to run again on w2", watch=[w2])
    wait_until(lambda: len(_lines(files)) == 2 * TASKS + 1, "every command to start on w2")
    assert sorted(_lines(files)) == sorted([str(n) for n in range(TASKS)] * 2 + [str(TASKS)])
