"""A wasm task cannot take the memory or the event loop of the process that runs it, even
when that process is `edgeplane up` and also runs the control plane: tasks that give no
limits get the worker's defaults (issue 12, point 8), and limits out of range are a 422
naming the field.

The stack is what `edgeplane up` runs (`running_stack`: API, manager, an in-process worker)
in the test's own event loop, so the loop the probe watches is the control plane's.
"""

from __future__ import annotations

import asyncio
import base64
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import wasmtime

import wasm_fixtures
from edgeplane.modules import process_cache
from edgeplane.roles.up import Stack
from edgeplane.runtimes import WasmRuntime
from stack_fixtures import start_stack

pytestmark = pytest.mark.timeout(120)

MATH = base64.b64encode(wasm_fixtures.math_wasm()).decode()
#: the operator's default timeout for wasm tasks in this stack (``--wasm-timeout-s``)
DEFAULT_TIMEOUT_S = 2.0


class LagProbe:
    """Records how late the loop wakes a sleeper: the longest the loop was held."""

    def __init__(self) -> None:
        self.max_lag_s = 0.0
        self._job: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            before = loop.time()
            await asyncio.sleep(0.005)
            self.max_lag_s = max(self.max_lag_s, loop.time() - before - 0.005)

    def __enter__(self) -> LagProbe:
        self._job = asyncio.get_running_loop().create_task(self._run())
        return self

    def __exit__(self, *_: object) -> None:
        assert self._job is not None
        self._job.cancel()


@pytest.fixture
async def up(
    tmp_path: Path, mosquitto_url: str, unique_domain: str
) -> AsyncIterator[tuple[Stack, httpx.AsyncClient]]:
    store = f"sqlite:///{tmp_path / 'db.sqlite'}"
    async for stack, http in start_stack(
        tmp_path, mosquitto_url, store, unique_domain,
        workers=1, heartbeat_s=0.5, wasm_timeout_s=DEFAULT_TIMEOUT_S,
    ):  # fmt: skip
        await asyncio.wait_for(stack.workers[0].registered.wait(), 20)
        yield stack, http


async def run(http: httpx.AsyncClient, body: dict[str, Any]) -> dict[str, Any]:
    done = await http.post("/tasks", json={"start": True, **body}, params={"wait": 30})
    assert done.status_code == 201, done.text
    task: dict[str, Any] = done.json()
    return task


async def test_a_spinning_task_ends_and_the_api_answers_meanwhile(
    up: tuple[Stack, httpx.AsyncClient],
) -> None:
    stack, http = up
    with LagProbe() as probe:
        created = await http.post("/tasks", json={"name": "spin", "file": MATH, "start": True})
        assert created.status_code == 201, created.text
        task_id = created.json()["id"]
        answered: list[int] = []  # /healthz statuses while the task was seen running
        state = "scheduled"
        for _ in range(2000):
            state = (await http.get(f"/tasks/{task_id}")).json()["state"]
            if state not in ("scheduled", "running"):
                break
            if state == "running":
                answered.append((await http.get(f"{stack.control.url}/healthz")).status_code)
            await asyncio.sleep(0.02)
    task = (await http.get(f"/tasks/{task_id}")).json()
    lag = f"max loop lag {probe.max_lag_s * 1000:.1f} ms"
    assert task["state"] == "failed", (task, lag)
    assert task["error"].startswith(f"timeout after {DEFAULT_TIMEOUT_S}s (the worker's default")
    # It answered while the task spun: the spin does not hold the loop. (How often is the
    # machine's business: idle, 5 or more times in the 2 s; CI at load 10-15 with the
    # test's own loop lagging 1.5-2 s, 1 to 3 times.)
    assert answered and set(answered) == {200}, (answered, lag)
    assert set(answered) == {200}, lag
    assert stack.control.manager.stats.lost_workers == 0, lag
    print(lag)  # for whoever runs this with -s


async def test_a_task_cannot_take_4_gib(up: tuple[Stack, httpx.AsyncClient]) -> None:
    _, http = up
    big = base64.b64encode(wasm_fixtures.memory_wasm(65536)).decode()  # starts at 4 GiB
    task = await run(http, {"name": "noop", "file": big})
    assert task["state"] == "failed", task
    assert task["error"].startswith("memory limit 64 MB exceeded (the worker's default"), task
    grown = await run(http, {"name": "grow", "file": MATH, "inputs": [65535]})
    assert grown["results"] == [-1], grown  # memory.grow to 4 GiB fails, as wasm says
    # a task that asks for more memory gets it
    asked = await run(
        http, {"name": "grow", "file": MATH, "inputs": [1100], "limits": {"memory_mb": 80}}
    )
    assert asked["results"] == [1], asked
    # ... up to the operator's cap: asking for 4 GiB outright fails, naming the flag
    greedy = await run(
        http, {"name": "grow", "file": MATH, "inputs": [1], "limits": {"memory_mb": 4096}}
    )
    assert greedy["state"] == "failed", greedy
    assert "--wasm-max-memory-mb" in greedy["error"] and "4096" in greedy["error"], greedy


async def test_admission_and_the_worker_share_compiled_modules(
    up: tuple[Stack, httpx.AsyncClient],
) -> None:
    stack, http = up
    runtime = stack.workers[0].runtimes["wasm"]
    assert isinstance(runtime, WasmRuntime)
    caches = {id(cache): cache for cache in (process_cache(), runtime.modules)}
    export = f"f{uuid.uuid4().hex}"  # a module this process has never seen
    module = bytes(
        wasmtime.wat2wasm(f'(module (func (export "{export}") (result i32) i32.const 7))')
    )
    before = sum(cache.compiles for cache in caches.values())
    task = await run(http, {"name": export, "file": base64.b64encode(module).decode()})
    assert task["results"] == [7], task
    # compiled at admission, found compiled by the worker
    assert sum(cache.compiles for cache in caches.values()) == before + 1


@pytest.mark.parametrize(
    ("limits", "field"),
    [
        ({"fuel": 2**64}, "limits.fuel"),
        ({"memory_mb": 2**53}, "limits.memory_mb"),
        ({"timeout_s": 1e30}, "limits.timeout_s"),
        ({"cpu_shares": 2**40}, "limits.cpu_shares"),
        ({"pids": 2**63}, "limits.pids"),
    ],
)
async def test_limits_out_of_range_are_a_422_naming_the_field(
    up: tuple[Stack, httpx.AsyncClient], limits: dict[str, Any], field: str
) -> None:
    _, http = up
    body = {"name": "add", "file": MATH, "inputs": [1, 2], "limits": limits}
    one = await http.post("/tasks", json=body)
    assert one.status_code == 422, one.text
    assert one.json()["field"] == field
    batch = await http.post("/tasks/batch", json={"tasks": [{**body, "limits": {}}, body]})
    assert batch.status_code == 422, batch.text
    assert batch.json()["field"] == f"tasks[1].{field}"
    created = await http.post("/tasks", json={**body, "limits": {}})
    patch = await http.patch(f"/tasks/{created.json()['id']}", json={"limits": limits})
    assert patch.status_code == 422, patch.text
    assert patch.json()["field"] == field
