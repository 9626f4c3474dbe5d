"""Container tasks naming ``image: oci://…``, pulled by the worker from a real registry
(Debian's docker-registry, busybox pushed by skopeo in OCI form) and run with runc, through
the API of a real stack: pulled once and shared, unknown tags, a registry that is down, a
tampered blob."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from edgeplane.artifacts import reference
from edgeplane.artifacts.registry import Registry
from edgeplane.roles.up import Stack
from edgeplane.runtimes import ContainerRuntime
from edgeplane.runtimes.busybox import busybox_image
from oci_fixtures import busybox_containers_unavailable
from registry_fixtures import RegistryProcess, skopeo_push
from stack_fixtures import start_stack

pytestmark = [
    pytest.mark.timeout(90),
    pytest.mark.skipif(
        busybox_containers_unavailable() is not None, reason=str(busybox_containers_unavailable())
    ),
]

WAIT_S = 30


@pytest.fixture
def pushed(oci_registry: RegistryProcess, tmp_path: Path) -> str:
    """busybox pushed as ``busybox:1``; returns its ``oci://`` reference."""
    layout = tmp_path / "layout"
    busybox_image(layout, tag="1")
    skopeo_push(layout, "1", oci_registry, "busybox")
    return f"oci://{oci_registry.address}/busybox:1"


async def stack_of(
    tmp_path: Path, broker: str, domain: str, **overrides: Any
) -> AsyncIterator[tuple[Stack, httpx.AsyncClient]]:
    store = f"sqlite:///{tmp_path / 'db.sqlite'}"
    async for pair in start_stack(
        tmp_path / "stack", broker, store, domain, workers=1, allow_host=False, **overrides
    ):
        yield pair


@pytest.fixture
async def stack(
    tmp_path: Path, fast_broker_url: str, unique_domain: str
) -> AsyncIterator[tuple[Stack, httpx.AsyncClient]]:
    async for pair in stack_of(tmp_path, fast_broker_url, unique_domain):
        yield pair


def container_runtime(stack: Stack) -> ContainerRuntime:
    runtime = stack.workers[0].runtimes["container"]
    assert isinstance(runtime, ContainerRuntime)
    return runtime


def body(image: str, **more: Any) -> dict[str, Any]:
    return {
        "name": "hi",
        "runtime": "container",
        "image": image,
        "command": ["echo", "hi"],
        "limits": {"timeout_s": 20, "memory_mb": 64},
        "start": True,
        **more,
    }


async def run(http: httpx.AsyncClient, image: str, **more: Any) -> dict[str, Any]:
    answer = await http.post("/tasks", json=body(image, **more), params={"wait": WAIT_S})
    assert answer.status_code == 201, answer.text
    task: dict[str, Any] = answer.json()
    return task


async def test_pulled_once_then_shared_by_tag_and_digest(
    stack: tuple[Stack, httpx.AsyncClient], pushed: str, oci_registry: RegistryProcess
) -> None:
    running, http = stack
    runtime = container_runtime(running)
    # Two tasks at once want the image: one pull.
    first, second = await asyncio.gather(run(http, pushed), run(http, pushed))
    for task in (first, second):
        assert task["state"] == "completed", task
        assert task["results"] == {"stdout": "hi\n", "exit_code": 0}
    assert runtime.puller.pulls == 1
    async with Registry() as client:
        digest = (await client.resolve(reference.parse(pushed))).digest
    layouts = [p.name for p in runtime.puller.directory.iterdir()]
    assert layouts == [digest.removeprefix("sha256:")]  # no temporary dir left either

    # Again by tag, by digest, and by another tag of the same digest: nothing pulled.
    layout = Path(runtime.puller.directory.parent.parent / "relayout")
    busybox_image(layout, tag="other")
    skopeo_push(layout, "other", oci_registry, "busybox")
    by_digest = f"oci://{oci_registry.address}/busybox@{digest}"
    for image in (pushed, by_digest, pushed.replace(":1", ":other")):
        task = await run(http, image)
        assert task["state"] == "completed", task
        assert task["results"]["stdout"] == "hi\n"
    assert runtime.puller.pulls == 1


async def test_unknown_tag_or_repository_fails_artifact_not_found(
    stack: tuple[Stack, httpx.AsyncClient], pushed: str
) -> None:
    _, http = stack
    missing = pushed.replace(":1", ":nope")
    task = await run(http, missing, retries=2)
    assert task["state"] == "failed", task
    assert task["reason"] == "artifact_not_found"
    assert missing in task["error"]
    assert task["attempt"] == 1  # not retried: another try would not find it either
    nowhere = pushed.replace("/busybox:", "/nosuchrepo:")
    task = await run(http, nowhere, retries=2)
    assert (task["state"], task["reason"]) == ("failed", "artifact_not_found"), task
    assert nowhere in task["error"] and task["attempt"] == 1


async def test_bad_references_are_refused_naming_image(
    stack: tuple[Stack, httpx.AsyncClient],
) -> None:
    _, http = stack
    for bad in ("oci://127.0.0.1:5000", "oci://127.0.0.1:5000/Busybox:1", "oci://h/b:-x"):
        answer = await http.post("/tasks", json=body(bad))
        assert answer.status_code == 422, answer.text
        assert answer.json()["field"] == "image"


async def test_registry_down_waits_pending_then_fails(
    tmp_path: Path,
    fast_broker_url: str,
    unique_domain: str,
    pushed: str,
    oci_registry: RegistryProcess,
) -> None:
    oci_registry.stop()
    async for _, http in stack_of(tmp_path, fast_broker_url, unique_domain, retry_backoff_s=1.0):
        created = await http.post("/tasks", json=body(pushed, retries=1))
        assert created.status_code == 201, created.text
        task_id = created.json()["id"]
        seen: list[str] = []
        deadline = time.monotonic() + WAIT_S
        while time.monotonic() < deadline:
            task = (await http.get(f"/tasks/{task_id}")).json()
            if task["state"] == "pending" and task["reason"]:
                seen.append(task["reason"])
            if task["state"] == "failed":
                break
            await asyncio.sleep(0.05)
        assert any(r.startswith("retrying after registry_unreachable") for r in seen), seen
        assert task["state"] == "failed", task
        assert task["reason"] == "registry_unreachable"
        assert task["attempt"] == 2
        assert oci_registry.address in task["error"]


async def test_tampered_blob_is_never_run(
    stack: tuple[Stack, httpx.AsyncClient], pushed: str, oci_registry: RegistryProcess
) -> None:
    running, http = stack
    runtime = container_runtime(running)
    async with Registry() as client:
        manifest = await client.manifest(reference.parse(pushed))
    stored = oci_registry.blob_file(manifest.layers[0].digest)
    data = bytearray(stored.read_bytes())
    data[-1] ^= 0xFF  # same size, other bytes
    stored.write_bytes(bytes(data))

    task = await run(http, pushed, retries=2)
    assert task["state"] == "failed", task
    assert task["reason"] == "digest_mismatch"
    assert manifest.layers[0].digest in task["error"]
    assert task["exit_code"] is None and task["results"] is None
    # Nothing kept: no image under its digest, no half-written one, nothing unpacked.
    assert not runtime.puller.directory.exists() or list(runtime.puller.directory.iterdir()) == []
    assert not runtime.images.cache_dir.exists() or list(runtime.images.cache_dir.iterdir()) == []
