"""kill -9 of the control plane during 1,000 queued and running tasks, started again on
the same store (SQLite and PostgreSQL): every task ends exactly once with its result.

- ``edgeplane manager`` with separate worker processes: the workers keep running, so no
  task may run again (one line each in the file the host tasks append to, attempt 1);
- ``edgeplane up``: its in-process workers die with it, so what they ran is run again
  (the tasks are pure wasm calls with retries), but each task still ends once, right.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path

import pytest
import wasmtime

from edgeplane.transport import free_port
from faults.procs import Lab, check_exactly_once, check_lines, host_tasks

pytestmark = [pytest.mark.mosquitto, pytest.mark.timeout(150)]

TASKS = 1000
#: Ended tasks before the kill: the rest are queued at the manager, prefetched by the
#: workers, running, or reported and not yet acknowledged.
KILL_AFTER = 150

#: add(a, b) after counting to n: long enough that 1,000 calls are not over at once.
SLOW_ADD = """
(module
  (func (export "slow_add") (param $a i32) (param $b i32) (param $n i32) (result i32)
    (local $i i32)
    (block $done
      (loop $spin
        (br_if $done (i32.ge_u (local.get $i) (local.get $n)))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $spin)))
    (i32.add (local.get $a) (local.get $b))))
"""
SPIN = 200_000


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'store.db'}"
    else:
        yield request.getfixturevalue("postgres_url")


def test_manager_killed_during_1000_tasks(lab: Lab, store_url: str) -> None:
    manager, workers, api = lab.manager_and_workers()
    out = lab.root / "out.txt"
    names = [f"t{n:04d}" for n in range(TASKS)]
    accepted = api.submit(host_tasks(names, out))
    ended = api.wait_ended(KILL_AFTER, watch=[manager])

    manager.kill9()
    assert ended < TASKS, "every task ended before the kill: nothing was tested"
    manager.start()  # same port, same store
    api.wait_healthy(manager)
    api.wait_ended(TASKS, watch=[manager, *workers])

    expected = {name: {"stdout": f"{name}\n", "exit_code": 0} for name in names}
    check_exactly_once(api.tasks(), accepted, expected)
    check_lines(out, names)


def test_up_killed_during_1000_tasks(lab: Lab, store_url: str) -> None:
    port = free_port()
    # Two slots in all, so that most of the 1,000 still wait when `up` is killed.
    slow = {"EDGEPLANE_SLOTS": "1", "EDGEPLANE_PREFETCH": "2"}
    up = lab.up(port, **slow).start()
    api = lab.api(port)
    api.wait_healthy(up)
    api.wait_workers(["local-1", "local-2"], watch=[up])
    module = base64.b64encode(wasmtime.wat2wasm(SLOW_ADD)).decode()
    names = [f"t{n:04d}" for n in range(TASKS)]
    specs = [
        # retries: a call running in a worker of the killed process is lost with it
        {"name": name, "export": "slow_add", "file": module, "inputs": [n, n, SPIN],
         "retries": 3, "start": True}
        for n, name in enumerate(names)
    ]  # fmt: skip
    accepted = api.submit(specs)
    ended = api.wait_ended(KILL_AFTER, watch=[up])

    up.kill9()
    assert ended < TASKS, "every task ended before the kill: nothing was tested"
    up.start()  # same port, same store
    api.wait_healthy(up)
    api.wait_ended(TASKS, watch=[up])

    expected = {name: [2 * n] for n, name in enumerate(names)}
    check_exactly_once(api.tasks(), accepted, expected, attempts=lambda t: t["attempt"] <= 2)
