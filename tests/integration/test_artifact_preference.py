"""Scheduling prefers the worker that already holds a task's module, while it has room.

Two in-process workers of one slot each (prefetch 1); the module is put in the blob store
of the second (the round-robin ring would start with the first). Its heartbeat reports
it; the first task goes to it, and the second, finding it full, to the other worker:
the preference never makes a task wait.
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
from stack_fixtures import start_stack

SPIN = wasm_fixtures.spin_wasm()
DIGEST = wasm_fixtures.digest(SPIN)


@pytest.fixture
async def stack(
    tmp_path: Path, fast_broker_url: str, unique_domain: str
) -> AsyncIterator[tuple[Stack, httpx.AsyncClient]]:
    sqlite = f"sqlite:///{tmp_path / 'db.sqlite'}"
    async for pair in start_stack(
        tmp_path, fast_broker_url, sqlite, unique_domain, slots=1, prefetch=1
    ):
        yield pair


async def until(condition: Any, what: str, timeout_s: float = 30) -> Any:
    for _ in range(int(timeout_s / 0.05)):
        found = await condition()
        if found:
            return found
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


async def test_tasks_go_to_the_holder_while_it_has_room(
    stack: tuple[Stack, httpx.AsyncClient],
) -> None:
    up, http = stack
    manager = up.control.manager
    first, holder = up.workers
    holder.artifacts.blobs.put(DIGEST, SPIN)

    async def reported() -> bool:
        entry = manager.registry.get(holder.id)
        return entry is not None and DIGEST in entry.held

    await until(reported, "the holder to report the module")
    body = {"name": "spin", "export": "spin", "file": base64.b64encode(SPIN).decode()}

    async def running_on(task_id: str) -> str | None:
        task = (await http.get(f"/tasks/{task_id}")).json()
        return task.get("worker_id") if task["state"] == "running" else None

    created = await http.post("/tasks", json={**body, "start": True})
    assert created.status_code == 201, created.text
    one = created.json()["id"]
    assert await until(lambda: running_on(one), "the first task to run") == holder.id

    created = await http.post("/tasks", json={**body, "start": True})
    assert created.status_code == 201, created.text
    two = created.json()["id"]
    assert await until(lambda: running_on(two), "the second task to run") == first.id

    for task_id in (one, two):
        await http.post(f"/tasks/{task_id}/cancel")
