"""The protocol on every broker edgeplane supports (docs/brokers.md): the same three
scenes, with real processes (a manager and workers dialling the broker), on each launcher
of ``bench.brokers.LAUNCHERS``:

- tasks: wasm calls and host commands, each ends exactly once with its result;
- a workflow: results passed along a DAG, a branch skipped by ``run_if``;
- a worker loss: kill -9 of the worker running a task; the manager sees it offline and,
  once the grace period is over, runs the task again on the other worker.

Nothing here is broker-specific: a broker that breaks one of them breaks edgeplane.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import wasmtime
from bench.brokers import LAUNCHERS, BrokerUnavailable

from edgeplane.examples import EXAMPLES
from edgeplane.transport import free_port
from faults.procs import Api, Lab, Role, check_exactly_once, check_lines, host_tasks, wait_until

pytestmark = [pytest.mark.timeout(180)]

ADD = base64.b64encode(wasmtime.wat2wasm(EXAMPLES["add.wasm"])).decode()


@pytest.fixture(scope="module", params=sorted(LAUNCHERS))
def broker(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """The broker (one node or a cluster), started once for the module's scenes."""
    name: str = request.param
    try:
        with LAUNCHERS[name](tmp_path_factory.mktemp(name)) as url:
            yield url
    except BrokerUnavailable as missing:
        pytest.skip(f"{name}: {missing}")


@pytest.fixture
def on_broker(lab: Lab, broker: str) -> Lab:
    lab.external_broker = broker
    return lab


def test_tasks(on_broker: Lab) -> None:
    manager, workers, api = on_broker.manager_and_workers()
    out = on_broker.root / "out.txt"
    commands = [f"h{n:03d}" for n in range(100)]
    calls = {f"w{n:03d}": n for n in range(100)}
    specs = host_tasks(commands, out) + [
        {"name": name, "export": "add", "file": ADD, "inputs": [n, 1], "start": True}
        for name, n in calls.items()
    ]
    accepted = api.submit(specs)
    api.wait_ended(len(specs), watch=[manager, *workers])

    expected: dict[str, Any] = {name: {"stdout": f"{name}\n", "exit_code": 0} for name in commands}
    expected.update({name: [n + 1] for name, n in calls.items()})
    check_exactly_once(api.tasks(), accepted, expected)
    check_lines(out, commands)


def test_workflow(on_broker: Lab) -> None:
    manager, workers, api = on_broker.manager_and_workers()

    def add(name: str, *inputs: int, **extra: Any) -> dict[str, Any]:
        return {"name": name, "export": "add", "file": ADD, "inputs": list(inputs), **extra}

    body = {
        "name": "dag",
        "tasks": [
            add("sum", 2, 3),
            # inputs [10] + the first result of "sum"
            add("plus", 10, depends_on=["sum"], inputs_from={"task": "sum", "index": 0}),
            add("on-failure", 0, 0, depends_on=["plus"], run_if="failure"),
            {
                "name": "echo",
                "runtime": "host",
                "command": ["echo", "done"],
                "depends_on": ["plus"],
            },
        ],
    }
    created = api.http.post("/workflows", json=body)
    assert created.status_code == 201, created.text
    run_id = created.json()["id"]
    run = wait_until(
        lambda: (
            (doc := api.http.get(f"/workflows/{run_id}").json())
            and doc["state"] not in ("pending", "running")
            and doc
        ),
        "the workflow to end",
        watch=[manager, *workers],
    )
    by_name = {t["name"]: t for t in run["tasks"]}
    assert run["state"] == "completed", {n: t["state"] for n, t in by_name.items()}
    assert by_name["plus"]["results"] == [15]
    assert by_name["on-failure"]["state"] == "skipped"
    assert by_name["echo"]["stdout"] == "done\n"


def test_worker_loss(on_broker: Lab, tmp_path: Path) -> None:
    lab = on_broker
    port = free_port()
    manager = lab.manager(port, "--lost-grace-s", "1").start()
    api = lab.api(port)
    api.wait_healthy(manager)
    w1 = lab.worker("w1").start()
    api.wait_workers(["w1"], watch=[manager, w1])

    # The first attempt waits for a file the test writes only when it ends (a host task
    # outlives a kill -9 of its worker, by design: its own process group, which a restarted
    # worker takes back); any later attempt ends at once.
    lines, hold = tmp_path / "lines", tmp_path / "never"
    try:
        _lose_a_worker(lab, api, manager, w1, lines, hold)
    finally:
        hold.touch()  # the first attempt, left behind on the killed worker, ends


def _lose_a_worker(lab: Lab, api: Api, manager: Role, w1: Role, lines: Path, hold: Path) -> None:
    script = (
        f'echo x >> {lines}; [ "$(wc -l < {lines})" -gt 1 ] && exit 0; '
        f"while [ ! -e {hold} ]; do sleep 0.05; done"
    )
    created = api.http.post(
        "/tasks",
        json={"runtime": "host", "command": ["sh", "-c", script], "retries": 1, "start": True},
    )
    assert created.status_code == 201, created.text
    task_id = created.json()["id"]
    wait_until(
        lambda: lines.exists() and api.http.get(f"/tasks/{task_id}").json()["state"] == "running",
        "the first attempt to run on w1",
        watch=[manager, w1],
    )

    w1.kill9()
    w2 = lab.worker("w2").start()
    wait_until(
        lambda: (api.worker("w1") or {}).get("state") == "offline",
        "the manager to see w1 offline",
        watch=[manager, w2],
    )
    done = wait_until(
        lambda: (doc := api.http.get(f"/tasks/{task_id}").json())["finished_at"] and doc,
        "the task to run again on w2 and end",
        watch=[manager, w2],
    )
    assert (done["state"], done["attempt"], done["worker_id"]) == ("completed", 2, "w2"), done
    assert lines.read_text().count("x") == 2
