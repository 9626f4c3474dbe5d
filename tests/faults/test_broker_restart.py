"""The broker restarted during dispatch: every role reconnects by itself and every task
ends once. A broker restart is the manager's own disconnection, not a worker loss: no task
may fail ``worker_lost`` or run a second time."""

from __future__ import annotations

import time

import pytest

from faults.procs import Lab, check_exactly_once, check_lines, host_tasks

pytestmark = [pytest.mark.mosquitto, pytest.mark.timeout(120)]

TASKS = 300
#: How long the broker stays down: the issue's 3.5 s, more than twice the liveness window
#: (3 beats of 0.5 s). This is the fault's length, not a wait for anything.
OUTAGE_S = 3.5


def test_broker_restart_during_dispatch(lab: Lab) -> None:
    manager, workers, api = lab.manager_and_workers()
    out = lab.root / "out.txt"
    names = [f"t{n:04d}" for n in range(TASKS)]
    accepted = api.submit(host_tasks(names, out, sleep_s=0.05))
    watch = [manager, *workers]
    api.wait_ended(TASKS // 5, watch=watch)

    lab.broker.stop()
    time.sleep(OUTAGE_S)
    lab.broker.start()

    api.wait_healthy(manager)
    api.wait_ended(TASKS, watch=watch)
    tasks = api.tasks()
    expected = {name: {"stdout": f"{name}\n", "exit_code": 0} for name in names}
    check_exactly_once(tasks, accepted, expected)
    check_lines(out, names)
    assert api.metric("edgeplane_workers_lost_total") == 0
