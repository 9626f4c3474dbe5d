"""`kill -9` of a worker again and again while its host tasks end: every task ends once,
with its real result. A worker killed after an attempt ended but before its final event
was on disk once restarted to find the attempt's directory (its exit status) removed
already, and reported "how it ended is unknown" (11 times in 200 tasks): the runtime now
keeps it until the worker, its final event saved, releases the attempt. A kill between a
command's start and its handle's write ran 30-45 of 200 commands twice: the command now
waits until its handle is saved (each side effect line is checked to be there once)."""

from __future__ import annotations

import shutil

import pytest
from procs import Lab, check_exactly_once, check_lines, host_tasks, wait_until

from edgeplane.transport import free_port

pytestmark = [
    pytest.mark.timeout(300),
    pytest.mark.skipif(shutil.which("mosquitto") is None, reason="mosquitto is not installed"),
]

TASKS = 200
#: Tasks that end between two kills: each kill lands while tasks are ending.
EVERY = 8


def test_a_worker_killed_again_and_again_while_host_tasks_end(lab: Lab) -> None:
    port = free_port()
    # A long grace period: the restarted worker takes its tasks back, none is placed
    # again (a second attempt would run a command twice, which is not what is tested).
    manager = lab.manager(port, "--lost-grace-s", "300").start()
    api = lab.api(port)
    api.wait_healthy(manager)
    worker = lab.worker("w1", slots=16, prefetch=2).start()
    api.wait_workers(["w1"], watch=[manager, worker])
    out = lab.root / "lines"
    names = [f"t{n:03d}" for n in range(TASKS)]
    # Retries: a task the worker had only queued (prefetched) when it was killed, or
    # whose command was lost with it, is lost by the hello rule and placed again (a
    # transient failure); an attempt that ran and ended is never tried again, so a
    # "how it ended is unknown" (not transient) fails its task.
    specs = [{**spec, "retries": 50} for spec in host_tasks(names, out, sleep_s=0.02)]
    accepted = api.submit(specs)

    kills = 0
    ended = 0
    while ended < TASKS:
        target = min(TASKS, ended + EVERY)
        ended = wait_until(
            lambda target=target: (n := api.ended()) is not None and n >= target and n,
            f"{target} tasks to end",
            timeout=60,
            watch=[manager, worker],
        )
        if ended < TASKS:
            worker.kill9()  # while its tasks end: some just ended, their events unsaved
            kills += 1
            worker.start()

    assert kills >= 5, "too few kills to test anything"
    expected = {name: {"stdout": f"{name}\n", "exit_code": 0} for name in names}
    tasks = api.tasks()
    unknown = [t["name"] for t in tasks if "unknown" in (t["error"] or "")]
    assert unknown == [], f"{len(unknown)} tasks ended without their outcome"
    check_exactly_once(tasks, accepted, expected, attempts=lambda task: True)
    # Each command ran exactly once: a host attempt's command waits at its gate until
    # its handle is on disk, so a kill between its process's start and that write leaves
    # a shell that exits without running it (docs/architecture.md, "Worker crashes").
    check_lines(out, names)
