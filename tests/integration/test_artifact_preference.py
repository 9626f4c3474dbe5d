"""Scheduling prefers the worker that already holds a task's module or container image,
while it has room.

Two in-process workers of one slot each (prefetch 1); the module is put in the blob store
of the second (the round-robin ring would start with the first). Its heartbeat reports
it; the first task goes to it, and the second, finding it full, to the other worker:
the preference never makes a task wait.

For container images: busybox pushed by skopeo to a real registry; a first task pinned to
the second worker pulls it there; that worker reports the image's manifest digest, and
a second task naming the image by tag (pinned to that digest at admission) goes to it,
where round-robin alone would have gone on to the first worker.
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
from edgeplane.runtimes import ContainerRuntime
from edgeplane.runtimes.busybox import busybox_image
from oci_fixtures import busybox_containers_unavailable
from registry_fixtures import RegistryProcess, skopeo_push
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


@pytest.mark.skipif(
    busybox_containers_unavailable() is not None, reason=str(busybox_containers_unavailable())
)
async def test_a_container_task_goes_to_the_worker_holding_its_image(
    stack: tuple[Stack, httpx.AsyncClient], oci_registry: RegistryProcess, tmp_path: Path
) -> None:
    up, http = stack
    manager = up.control.manager
    first, holder = up.workers
    layout = tmp_path / "layout"
    busybox_image(layout, tag="1")
    skopeo_push(layout, "1", oci_registry, "busybox")
    image = f"oci://{oci_registry.address}/busybox:1"
    body = {
        "name": "hi",
        "runtime": "container",
        "image": image,
        "command": ["echo", "hi"],
        "limits": {"timeout_s": 20, "memory_mb": 64},
        "start": True,
    }

    async def run(**more: Any) -> dict[str, Any]:
        created = await http.post("/tasks", json={**body, **more}, params={"wait": 30})
        assert created.status_code == 201, created.text
        task: dict[str, Any] = created.json()
        assert task["state"] == "completed", task
        return task

    pulled = await run(worker_id=holder.id)
    assert pulled["worker_id"] == holder.id
    hexdigest = pulled["image"].rpartition("@sha256:")[2]  # pinned at admission
    assert len(hexdigest) == 64, pulled["image"]
    runtime = holder.runtimes["container"]
    assert isinstance(runtime, ContainerRuntime) and runtime.puller.pulls == 1
    assert hexdigest in holder.held_artifacts()

    async def reported() -> bool:
        entry = manager.registry.get(holder.id)
        return entry is not None and hexdigest in entry.held

    await until(reported, "the holder to report the image")
    again = await run()  # by tag, unpinned: round-robin would go on to the first worker
    assert again["worker_id"] == holder.id, again
    assert runtime.puller.pulls == 1  # nothing moved
    other = first.runtimes["container"]
    assert isinstance(other, ContainerRuntime) and other.puller.pulls == 0
