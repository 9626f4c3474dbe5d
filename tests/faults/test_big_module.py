"""A 5 MB module submitted while a worker heartbeats every 0.5 s: compiling it must not hold
the control plane's event loop, or the manager would miss the heartbeats, declare the
healthy worker lost and run its task a second time (issue 12, point 3).

The control plane runs in the test's process (as `edgeplane up` runs it); the worker is a
real `edgeplane worker` process on the machine's Mosquitto, running a host task that
records each start in a file and runs until the test lets it end.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

import wasm_fixtures
from edgeplane.roles.up import Stack
from faults.procs import HEARTBEAT_S, Lab
from stack_fixtures import start_stack

pytestmark = pytest.mark.timeout(180)

MODULE_SIZE = 5 * 1024 * 1024


async def until(condition: Any, what: str, timeout_s: float = 60) -> Any:
    """Poll an async condition until it returns something truthy."""
    for _ in range(int(timeout_s / 0.05)):
        found = await condition()
        if found:
            return found
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
async def manager_and_worker(
    lab: Lab, mosquitto_url: str
) -> AsyncIterator[tuple[Stack, httpx.AsyncClient]]:
    lab.worker("w1", broker=mosquitto_url).start()  # beats every HEARTBEAT_S (0.5 s)
    async for pair in start_stack(
        lab.root / "manager", mosquitto_url, lab.store, lab.domain,
        workers=0, heartbeat_s=HEARTBEAT_S,
    ):  # fmt: skip
        yield pair


async def test_a_big_module_does_not_cost_a_worker(
    manager_and_worker: tuple[Stack, httpx.AsyncClient], tmp_path: Path
) -> None:
    stack, http = manager_and_worker
    manager = stack.control.manager

    async def worker_online() -> bool:
        entry = manager.registry.get("w1")
        return entry is not None and entry.online

    await until(worker_online, "the worker to register")
    runs, go = tmp_path / "runs", tmp_path / "go"
    script = f"echo ran >> {runs}; while [ ! -e {go} ]; do sleep 0.05; done"
    created = await http.post(
        "/tasks",
        json={"name": "host", "runtime": "host", "command": ["sh", "-c", script], "start": True},
    )
    assert created.status_code == 201, created.text
    host_id = created.json()["id"]

    async def host_running() -> bool:
        return (await http.get(f"/tasks/{host_id}")).json()["state"] == "running"

    await until(host_running, "the host task to run")

    module = wasm_fixtures.big_wasm(MODULE_SIZE)
    assert len(module) >= MODULE_SIZE
    big = await http.post(
        "/tasks",
        json={"name": "f0", "file": base64.b64encode(module).decode(), "start": True},
        params={"wait": 60},
    )
    assert big.status_code == 201, big.text
    assert (big.json()["state"], big.json()["results"]) == (
        "completed",
        [wasm_fixtures.big_wasm_result()],
    ), big.json()

    go.touch()
    host = (await http.get(f"/tasks/{host_id}", params={"wait": 30})).json()
    assert host["state"] == "completed", host
    assert host["attempt"] == 1
    assert runs.read_text().splitlines() == ["ran"]  # it ran once
    assert manager.stats.lost_workers == 0
    assert await worker_online()
