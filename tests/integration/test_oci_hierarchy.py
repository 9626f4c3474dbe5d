"""Container images named ``oci://…`` across root → cluster → worker (issue 15): an
application service runs a registry image on workers of a cluster, through the root's
real API; and a cluster whose worker holds an image says so in its aggregate, so the
root sends a task naming that image there.

A real registry (Debian's docker-registry) with busybox pushed by skopeo, real managers
on a real Mosquitto, runc containers (the fixtures of test_hierarchy.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from test_hierarchy import (
    ECHO,
    Hierarchy,
    _all_running,
    _count,
    api,
    eventually,
    hierarchy,
    online_clusters,
    run,
)

from edgeplane.runtimes import ContainerRuntime
from edgeplane.runtimes.busybox import busybox_image
from edgeplane.worker import WorkerAgent
from oci_fixtures import busybox_containers_unavailable
from registry_fixtures import RegistryProcess, skopeo_push

__all__ = ["hierarchy"]  # the fixture, used by name

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.skipif(
        busybox_containers_unavailable() is not None, reason=str(busybox_containers_unavailable())
    ),
]


@pytest.fixture
def image(oci_registry: RegistryProcess, tmp_path: Path) -> str:
    """busybox pushed as ``busybox:1``; its ``oci://`` reference by tag."""
    layout = tmp_path / "layout"
    busybox_image(layout, tag="1")
    skopeo_push(layout, "1", oci_registry, "busybox")
    return f"oci://{oci_registry.address}/busybox:1"


def puller_of(agent: WorkerAgent) -> Any:
    runtime = agent.runtimes["container"]
    assert isinstance(runtime, ContainerRuntime)
    return runtime.puller


async def test_an_application_service_runs_a_registry_image_on_a_clusters_workers(
    hierarchy: Hierarchy, image: str
) -> None:
    root = await hierarchy.start_root()
    node = await hierarchy.add_cluster("a", workers=2)
    async with api(root) as http:
        await eventually(lambda: _count(http, 1))
        service = {
            "name": "box",
            "runtime": "container",
            "image": image,
            "command": ["sleep", "1000"],
            "limits": {"memory_mb": 64},
            "replicas": 2,
        }
        # a reference that breaks the grammar is refused naming the service's field
        bad = await http.post(
            "/applications",
            json={"name": "x", "services": [{**service, "image": "oci://h/Busybox:1"}]},
        )
        assert bad.status_code == 422, bad.text
        assert bad.json()["field"] == "services[0].image"

        created = await http.post("/applications", json={"name": "boxes", "services": [service]})
        assert created.status_code == 201, created.text
        app_id = created.json()["id"]
        running = await eventually(lambda: _all_running(http, app_id, 2), within=60)
        assert {i["cluster_id"] for i in running} == {"a"}
        workers = {i["worker_id"] for i in running}
        assert workers <= {"a-w0", "a-w1"}, running
        for instance in running:
            task = (await http.get(f"/tasks/{instance['task_id']}")).json()
            # pinned by the root at admission: every replica runs the same image
            assert task["image"].startswith(image + "@sha256:"), task
            assert task["runtime"] == "container" and task["state"] == "running"
        pulled = {a.id: puller_of(a).pulls for a in node.workers}
        assert all(pulled[w] == 1 for w in workers), pulled  # pulled by each worker it runs on

        deleted = await http.delete(f"/applications/{app_id}")
        assert deleted.status_code == 204

        async def ended() -> bool:
            tasks = (await http.get("/tasks", params={"limit": 100})).json()["items"]
            return bool(tasks) and all(t["state"] in ("cancelled", "failed") for t in tasks)

        await eventually(ended, within=30)


async def test_an_application_service_whose_tag_is_unknown_fails_naming_it(
    hierarchy: Hierarchy, image: str
) -> None:
    root = await hierarchy.start_root()
    await hierarchy.add_cluster("a", workers=1)
    missing = image.replace(":1", ":nope")
    async with api(root) as http:
        await eventually(lambda: _count(http, 1))
        service = {"name": "box", "runtime": "container", "image": missing,
                   "command": ["sleep", "1000"], "restart": "never"}  # fmt: skip
        created = await http.post("/applications", json={"name": "boxes", "services": [service]})
        assert created.status_code == 201, created.text
        app_id = created.json()["id"]

        async def failed() -> dict[str, Any] | None:
            tasks = (await http.get("/tasks", params={"limit": 100})).json()["items"]
            done = [t for t in tasks if t["state"] == "failed"]
            return done[0] if done else None

        task = await eventually(failed, within=60)
        assert task["reason"] == "artifact_not_found", task
        assert missing in task["error"]
        await http.delete(f"/applications/{app_id}")


async def test_the_root_prefers_the_cluster_whose_worker_holds_the_image(
    hierarchy: Hierarchy, image: str
) -> None:
    """Cluster ``b``'s worker holds the image; its aggregate at the root says so, and the
    root sends a container task naming it there although ``a`` (registered first, as
    roomy) would win the tie, as it does for a task naming nothing."""
    root = await hierarchy.start_root()
    await hierarchy.add_cluster("a", workers=1)
    node = await hierarchy.add_cluster("b", workers=1)
    layout = await puller_of(node.workers[0]).layout_for(image)
    hexdigest = layout.name
    async with api(root) as http:

        async def reported() -> bool:
            found = await online_clusters(http)
            return len(found) == 2 and hexdigest in found["b"]["aggregate"].get("artifacts", [])

        await eventually(reported)
        body = {"runtime": "container", "image": image, "command": ["echo", "hi"],
                "limits": {"timeout_s": 20, "memory_mb": 64}}  # fmt: skip
        task = await run(http, body)
        assert task["state"] == "completed", task
        assert task["cluster_id"] == "b", task
        assert task["image"] == f"{image}@sha256:{hexdigest}"
        plain = await run(http, ECHO)  # no image: the usual order
        assert plain["cluster_id"] == "a", plain
