"""Artifacts from a registry through the proxy (issue 15): a wasm task naming
``oci://…`` is pinned to its manifest digest at admission and its module reaches the
worker as chunks from the proxy, the worker never speaking to the registry; unknown
references are refused at admission naming the field."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from edgeplane.artifacts import reference
from edgeplane.artifacts.registry import Registry
from edgeplane.errors import Invalid, Unavailable
from edgeplane.model import TaskSpec
from edgeplane.roles.up import running_stack
from edgeplane.transport import free_port
from registry_fixtures import RegistryProcess
from test_artifact_delivery import stack_settings, worker_for
from wasm_fixtures import add_wasm

pytestmark = pytest.mark.timeout(90)


async def push_add(registry: RegistryProcess, tmp_path: Path, tag: str = "demo/add:1") -> str:
    module = tmp_path / "add.wasm"
    module.write_bytes(add_wasm())
    async with Registry() as client:
        pushed = await client.push_wasm(reference.parse(f"oci://{registry.address}/{tag}"), module)
    return pushed.digest


async def test_a_wasm_task_named_by_oci_reference_runs_through_the_proxy(
    oci_registry: RegistryProcess, tmp_path: Path, unique_domain: str
) -> None:
    digest = await push_add(oci_registry, tmp_path)
    image = f"oci://{oci_registry.address}/demo/add:1"
    settings = stack_settings(tmp_path, unique_domain)
    async with running_stack(settings) as stack:
        control = stack.control
        worker = worker_for(stack, settings, tmp_path / "w1", "w1")
        await worker.start()
        try:
            await asyncio.wait_for(worker.registered.wait(), 20)
            spec = TaskSpec(name="add", image_url=image, inputs=[2, 3], start=True)
            task = (await control.manager.submit([spec]))[0]
            assert task.image_url == f"{image}@{digest}"  # pinned at admission
            done = await control.manager.wait(task.id, 30)
            assert (done.state, done.results) == ("completed", [5]), done
            assert worker.fetcher.stats.fetched == 1

            with pytest.raises(Invalid) as unknown:
                await control.manager.submit(
                    [TaskSpec(name="add", image_url=f"{image[:-2]}:nope", start=True)]
                )
            assert (unknown.value.field or "").endswith("image_url")
            assert unknown.value.reason == "artifact_not_found"
            assert "demo/add" in unknown.value.detail

            down = f"oci://127.0.0.1:{free_port()}/demo/add:1"
            with pytest.raises(Unavailable) as unreachable:
                await control.manager.submit([TaskSpec(name="add", image_url=down, start=True)])
            assert (unreachable.value.field or "").endswith("image_url")
        finally:
            await worker.stop()
