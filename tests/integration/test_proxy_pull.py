"""Artifacts from a registry through the proxy (issue 15): a wasm task naming
``oci://…`` is pinned to its manifest digest at admission and its module reaches the
worker as chunks from the proxy, the worker never speaking to the registry; unknown
references are refused at admission naming the field."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from test_artifact_delivery import stack_settings, worker_for

from edgeplane.artifacts import reference
from edgeplane.artifacts.registry import Registry
from edgeplane.errors import Invalid
from edgeplane.model import TaskSpec
from edgeplane.roles.up import running_stack
from edgeplane.runtimes.busybox import busybox_image
from oci_fixtures import busybox_containers_unavailable
from port_fixtures import hold_port
from registry_fixtures import RegistryProcess, skopeo_push
from stack_fixtures import start_stack
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

        finally:
            await worker.stop()


async def test_registry_down_at_admission_waits_pending_then_runs_or_fails(
    tmp_path: Path, unique_domain: str
) -> None:
    """Issue 15: the registry down when the task comes in → stored pending with the
    reason, resolved again with backoff; the registry back → pinned and run; never back
    → failed ``registry_unreachable``."""
    registry = RegistryProcess(tmp_path / "registry").start()
    try:
        await push_add(registry, tmp_path)
    finally:
        registry.stop(keep_address=True)  # down: refused, and nobody else's meanwhile
    image = f"oci://{registry.address}/demo/add:1"
    nowhere = hold_port()  # never up, and never another test's server
    never = f"oci://127.0.0.1:{nowhere.getsockname()[1]}/demo/add:1"
    settings = stack_settings(tmp_path, unique_domain).model_copy(update={"retry_backoff_s": 0.2})
    async with running_stack(settings) as stack:
        control = stack.control
        worker = worker_for(stack, settings, tmp_path / "w1", "w1")
        await worker.start()
        try:
            await asyncio.wait_for(worker.registered.wait(), 20)
            spec = TaskSpec(name="add", image_url=image, inputs=[2, 3], start=True)
            task = (await control.manager.submit([spec]))[0]
            assert task.state == "pending" and task.image_url == image, task
            assert (task.reason or "").startswith("registry_unreachable: "), task
            seen = await control.manager.get(task.id)
            assert seen.state == "pending", seen
            assert (seen.reason or "").startswith("registry_unreachable"), seen
            lost = (await control.manager.submit([spec.model_copy(update={"image_url": never})]))[0]

            registry.start()  # same address, same storage
            done = await control.manager.wait(task.id, 40)
            assert (done.state, done.results) == ("completed", [5]), done
            assert (done.image_url or "").startswith(f"{image}@sha256:"), done

            failed = await control.manager.wait(lost.id, 40)
            assert (failed.state, failed.reason) == ("failed", "registry_unreachable"), failed
            assert failed.error, failed
        finally:
            await worker.stop()
            registry.stop()
            registry.release()
            nowhere.close()


@pytest.mark.skipif(
    busybox_containers_unavailable() is not None, reason=str(busybox_containers_unavailable())
)
async def test_a_container_image_comes_through_the_proxy_once(
    oci_registry: RegistryProcess, tmp_path: Path, fast_broker_url: str, unique_domain: str
) -> None:
    layout = tmp_path / "layout"
    busybox_image(layout, tag="1")
    skopeo_push(layout, "1", oci_registry, "busybox")
    image = f"oci://{oci_registry.address}/busybox:1"
    store = f"sqlite:///{tmp_path / 'db.sqlite'}"
    async for running, http in start_stack(
        tmp_path / "stack", fast_broker_url, store, unique_domain,
        workers=2, allow_host=False, pull="proxy",
    ):  # fmt: skip
        body = {
            "name": "hi",
            "runtime": "container",
            "image": image,
            "command": ["echo", "hi"],
            "limits": {"timeout_s": 20, "memory_mb": 64},
            "start": True,
        }
        for worker in running.workers:  # each worker once, pinned
            answer = await http.post(
                "/tasks", json={**body, "worker_id": worker.id}, params={"wait": 30}
            )
            assert answer.status_code == 201, answer.text
            task = answer.json()
            assert task["state"] == "completed", task
            assert task["results"]["stdout"] == "hi\n"
            assert task["image"].startswith(f"{image}@sha256:")  # pinned at admission
        pullers = [w.runtimes["container"].puller for w in running.workers]  # type: ignore[attr-defined]
        # `up`'s workers share one image dir: the first pull serves both
        assert sorted(p.proxied for p in pullers) == [0, 1]
        proxy = running.control.proxy
        assert proxy is not None and proxy.registries is not None
        blobs = {k: n for k, n in proxy.registries.pulls.items() if k.startswith("blob ")}
        assert blobs and set(blobs.values()) == {1}, proxy.registries.pulls  # once each
        assert proxy.disk is not None  # kept for a restarted proxy as well
        assert all(proxy.disk.has(key.split()[1]) for key in blobs)

        missing = image.replace(":1", ":nope")
        answer = await http.post("/tasks", json={**body, "image": missing}, params={"wait": 30})
        task = answer.json()
        assert (task["state"], task["reason"]) == ("failed", "artifact_not_found"), task
        assert missing in task["error"]


@pytest.mark.skipif(
    busybox_containers_unavailable() is not None, reason=str(busybox_containers_unavailable())
)
async def test_registry_down_behind_the_proxy_waits_pending_then_fails(
    oci_registry: RegistryProcess, tmp_path: Path, fast_broker_url: str, unique_domain: str
) -> None:
    image = f"oci://{oci_registry.address}/busybox:1"
    oci_registry.stop()
    store = f"sqlite:///{tmp_path / 'db.sqlite'}"
    async for running, http in start_stack(
        tmp_path / "stack", fast_broker_url, store, unique_domain,
        workers=1, allow_host=False, pull="proxy", retry_backoff_s=1.0,
    ):  # fmt: skip
        body = {"name": "hi", "runtime": "container", "image": image, "command": ["true"],
                "retries": 1, "start": True}  # fmt: skip
        created = await http.post("/tasks", json=body)
        assert created.status_code == 201, created.text
        assert created.json()["image"] == image  # not pinned: the registry did not answer
        task_id = created.json()["id"]
        seen: list[str] = []
        async with asyncio.timeout(45):
            while True:
                task = (await http.get(f"/tasks/{task_id}")).json()
                if task["state"] == "pending" and task["reason"]:
                    seen.append(task["reason"])
                if task["state"] == "failed":
                    break
                await asyncio.sleep(0.05)
        assert any(r.startswith("retrying after registry_unreachable") for r in seen), seen
        assert (task["reason"], task["attempt"]) == ("registry_unreachable", 2), task
        assert oci_registry.address in task["error"]
        proxy = running.control.proxy
        assert proxy is not None and proxy.stats.unavailable >= 2


async def test_workflow_and_job_tasks_take_an_oci_reference(
    oci_registry: RegistryProcess, tmp_path: Path, fast_broker_url: str, unique_domain: str
) -> None:
    """A workflow task and a job task naming ``image_url: oci://…`` run like a task."""
    await push_add(oci_registry, tmp_path)
    image = f"oci://{oci_registry.address}/demo/add:1"
    store = f"sqlite:///{tmp_path / 'db.sqlite'}"
    async for _, http in start_stack(tmp_path / "stack", fast_broker_url, store, unique_domain):
        step = {"export": "add", "image_url": image}
        for path, body in (
            ("/workflows", {"name": "wf", "tasks": [{"name": "a", **step, "inputs": [1, 2]}]}),
            ("/jobs", {"mode": "sequential", "tasks": [{"name": "b", **step, "inputs": [3, 4]}]}),
        ):
            created = await http.post(path, json=body)
            assert created.status_code == 201, created.text
            run_id = created.json()["id"]
            done = (await http.get(f"{path}/{run_id}", params={"wait": 30})).json()
            assert done["state"] == "completed", done
            (task,) = done["tasks"]
            assert task["image_url"].startswith(f"{image}@sha256:"), task
