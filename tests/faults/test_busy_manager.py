"""A manager whose event loop cannot run for longer than the liveness window (a busy
manager: SIGSTOP stands for a loop blocked by inline work) does not declare its healthy
workers lost: their heartbeats wait unread in its socket meanwhile, and it measures its
own lag. No task fails ``worker_lost`` or runs a second time."""

from __future__ import annotations

import time

import pytest

from faults.procs import HEARTBEAT_S, Lab, check_exactly_once, check_lines, host_tasks, wait_until

pytestmark = [pytest.mark.mosquitto, pytest.mark.timeout(90)]

#: How long the manager is stopped: twice the liveness window (3 beats). The fault's
#: length, not a wait for anything.
STALL_S = 6 * HEARTBEAT_S


def test_a_stalled_manager_loses_no_worker(lab: Lab) -> None:
    manager, workers, api = lab.manager_and_workers()
    out = lab.root / "out.txt"
    # a slot each on both workers, running all through the stall; then tasks queued
    long, short = [f"long{n}" for n in range(8)], [f"short{n:02d}" for n in range(24)]
    accepted = api.submit(host_tasks(long, out, sleep_s=STALL_S + 1))
    wait_until(lambda: api.count("running") == 8, "eight tasks to run", watch=[manager])
    accepted += api.submit(host_tasks(short, out))
    names = long + short

    manager.pause()
    try:
        time.sleep(STALL_S)
    finally:
        manager.resume()

    api.wait_ended(len(names), watch=[manager, *workers])
    expected = {name: {"stdout": f"{name}\n", "exit_code": 0} for name in names}
    check_exactly_once(api.tasks(), accepted, expected)
    check_lines(out, names)
    assert api.metric("edgeplane_workers_lost_total") == 0
