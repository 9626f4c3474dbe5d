"""Task samples against known resource use, on the real stack and through
``GET /api/v1/tasks/{id}/metrics`` (docs/metrics.md): a wasm call that grows its memory and
keeps running shows its fuel rising and the memory it grew; a host task that writes 20 MB
and a container that reads 20 MB from its image show those bytes in their io counters."""

from __future__ import annotations

import asyncio
import base64
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import wasmtime

from edgeplane.roles.up import Stack
from edgeplane.runtimes.busybox import BUSYBOX_CONFIG, Entry, busybox_layer, tar_layer, write_image
from edgeplane.runtimes.cgroups import io_controller
from oci_fixtures import busybox_containers_unavailable
from stack_fixtures import start_stack

pytestmark = pytest.mark.timeout(90)

WAIT_S = 40
FAST = {"interval_s": 0.2, "history": 100}
MIB = 2**20
#: the kernel's per-process io counters (CONFIG_TASK_IO_ACCOUNTING)
TASK_IO = os.path.exists("/proc/self/io")
PAGE = 65536
#: grows its memory by ``pages`` 64 KiB pages, then loops forever, calling a function on
#: every turn (wasmtime brings the store's fuel count up to date at calls: docs/metrics.md)
GROW_SPIN = """
(module
  (memory (export "memory") 1)
  (func $step (param i32) (result i32) (i32.add (local.get 0) (i32.const 1)))
  (func (export "grow_spin") (param $pages i32) (local $i i32)
    (drop (memory.grow (local.get $pages)))
    (loop $forever
      (local.set $i (call $step (local.get $i)))
      (br $forever))))
"""


@pytest.fixture
async def stack(
    tmp_path: Path, fast_broker_url: str, unique_domain: str
) -> AsyncIterator[tuple[Stack, httpx.AsyncClient]]:
    async for pair in start_stack(tmp_path, fast_broker_url, "memory://", unique_domain, workers=1):
        yield pair


async def samples_until(
    http: httpx.AsyncClient, task_id: str, done: Callable[[list[dict[str, float]]], bool]
) -> list[dict[str, float]]:
    """The task's sample values, polled until ``done`` says they show what is awaited."""
    values: list[dict[str, float]] = []
    try:
        async with asyncio.timeout(WAIT_S):
            while True:
                response = await http.get(f"/tasks/{task_id}/metrics")
                assert response.status_code == 200, response.text
                values = [s["values"] for s in response.json()["samples"]]
                if values and done(values):
                    return values
                await asyncio.sleep(0.1)
    except TimeoutError:
        raise AssertionError(f"samples of {task_id} never showed it: {values[-3:]}") from None


async def ended(http: httpx.AsyncClient, task_id: str) -> dict[str, Any]:
    async with asyncio.timeout(WAIT_S):
        while True:
            task = (await http.get(f"/tasks/{task_id}")).json()
            if task["state"] in ("cancelled", "completed", "failed"):
                return dict(task)
            await asyncio.sleep(0.1)


async def stop_and_wait(http: httpx.AsyncClient, task_id: str) -> dict[str, Any]:
    assert (await http.post(f"/tasks/{task_id}/stop")).status_code in (200, 202)
    return await ended(http, task_id)


async def test_wasm_samples_show_fuel_rising_and_the_memory_grown(
    stack: tuple[Stack, httpx.AsyncClient],
) -> None:
    _, http = stack
    module = base64.b64encode(wasmtime.wat2wasm(GROW_SPIN)).decode()
    grown = 160  # pages: 10 MiB on top of the one it starts with
    body = {
        "runtime": "wasm",
        "file": module,
        "export": "grow_spin",
        "inputs": [grown],
        "monitoring": FAST,
        "start": True,
    }
    created = await http.post("/tasks", json=body)
    assert created.status_code == 201, created.text
    task_id = created.json()["id"]

    def fuel_rose_three_times(values: list[dict[str, float]]) -> bool:
        fuel = [v["fuel_used"] for v in values if "fuel_used" in v]
        return len(fuel) >= 4 and len(set(fuel)) >= 4

    values = await samples_until(http, task_id, fuel_rose_three_times)
    fuel = [v["fuel_used"] for v in values if "fuel_used" in v]
    assert fuel == sorted(fuel) and fuel[0] > 0, fuel
    memory = [v["memory_bytes"] for v in values if "memory_bytes" in v]
    assert memory and all(m == (1 + grown) * PAGE for m in memory), memory
    assert (await stop_and_wait(http, task_id))["state"] == "cancelled"


async def test_host_task_samples_count_the_bytes_it_writes(
    stack: tuple[Stack, httpx.AsyncClient], tmp_path: Path
) -> None:
    """20 MB written with O_DIRECT (so they reach the disk whatever the page cache does)
    by a child of the task's shell, which the kernel adds to the shell's counts once it
    reaped it."""
    if not TASK_IO:
        pytest.fail("no /proc/PID/io here: the kernel lacks task io accounting")
    _, http = stack
    stop = tmp_path / "stop"
    script = (
        "dd if=/dev/zero of=written bs=1M count=20 oflag=direct 2>/dev/null; "
        f"while [ ! -e {stop} ]; do sleep 0.05; done"
    )
    body = {"runtime": "host", "command": ["sh", "-c", script], "monitoring": FAST}
    created = await http.post("/tasks", json={**body, "start": True})
    assert created.status_code == 201, created.text
    task_id = created.json()["id"]
    values = await samples_until(
        http, task_id, lambda vs: vs[-1].get("io_write_bytes", 0) >= 20 * MIB
    )
    written = values[-1]["io_write_bytes"]
    # the task's own files (the shell reading nothing, dd's 20 MB): nothing else of note
    assert 20 * MIB <= written < 21 * MIB, written
    writes = [v["io_write_bytes"] for v in values]
    assert writes == sorted(writes)  # a counter: never back
    stop.touch()
    assert (await ended(http, task_id))["state"] == "completed"


@pytest.fixture
def big_image(tmp_path: Path) -> Path:
    """An image dir holding ``bigfile``: busybox plus a 20 MiB ``/data.bin``."""
    images = tmp_path / "images"
    layer = tar_layer([Entry("data.bin", bytes(20 * MIB))])
    write_image(images / "bigfile", [busybox_layer(), layer], dict(BUSYBOX_CONFIG))
    return images


@pytest.mark.skipif(
    busybox_containers_unavailable() is not None, reason=str(busybox_containers_unavailable())
)
async def test_container_samples_count_its_reads_and_memory(
    tmp_path: Path, big_image: Path, fast_broker_url: str, unique_domain: str
) -> None:
    """The container reads its image's 20 MiB file with O_DIRECT (from the disk, not the
    page cache) and fills 40 MiB of its tmpfs /tmp (memory charged to its cgroup)."""
    missing = io_controller()
    if missing is not None:
        pytest.fail(f"containers' io cannot be counted on this machine: {missing}")
    script = (
        "dd if=/data.bin of=/dev/null bs=1M iflag=direct 2>/dev/null && "
        "dd if=/dev/zero of=/tmp/fill bs=1M count=40 2>/dev/null && sleep 60"
    )
    body = {
        "runtime": "container",
        "image": "bigfile",
        "command": ["sh", "-c", script],
        "monitoring": FAST,
        "start": True,
    }
    async for _, http in start_stack(
        tmp_path / "up",
        fast_broker_url,
        "memory://",
        unique_domain,
        workers=1,
        images_dir=big_image,
    ):
        created = await http.post("/tasks", json=body)
        assert created.status_code == 201, created.text
        task_id = created.json()["id"]
        values = await samples_until(
            http,
            task_id,
            lambda vs: (
                vs[-1].get("io_read_bytes", 0) >= 20 * MIB and vs[-1].get("memory_mb", 0) >= 40
            ),
        )
        last = values[-1]
        # its reads: the file, and what busybox itself needed from the disk
        assert 20 * MIB <= last["io_read_bytes"] < 24 * MIB, last
        assert 40 <= last["memory_mb"] < 48, last
        assert (await stop_and_wait(http, task_id))["state"] == "cancelled"
