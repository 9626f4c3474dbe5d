"""Root → clusters → workers on a real Mosquitto: registration, aggregates, two-level
placement with reject/fallback, applications kept at their replica count across clusters.

Every cluster is a real manager (its own SQLite store) with real workers; the root is a
real control plane with the REST API. They share one broker under a unique domain: the
root's topics (``{d}/clusters/…``) and each cluster's (``{d}/{c}/workers/…``) do not meet.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

import wasm_fixtures
from edgeplane.config import Settings
from edgeplane.model import Aggregate, CapacityGroup, FreeStats, Limits, TaskSpec
from edgeplane.protocol import Topics, encode
from edgeplane.roles.control import ControlPlane
from edgeplane.roles.worker import build_worker
from edgeplane.transport import MqttLink
from edgeplane.worker import WorkerAgent

pytest_plugins = ["broker_fixtures"]

TOKEN = "test-admin-token"
HEARTBEAT_S = 0.3


@dataclass
class ClusterNode:
    control: ControlPlane
    workers: list[WorkerAgent] = field(default_factory=list)


@dataclass
class Hierarchy:
    tmp: Path
    broker: str
    domain: str
    root: ControlPlane | None = None
    clusters: dict[str, ClusterNode] = field(default_factory=dict)

    def settings(self, **values: Any) -> Settings:
        base: dict[str, Any] = {
            "broker": self.broker,
            "domain": self.domain,
            "port": 0,
            "admin_token": TOKEN,
            "heartbeat_s": HEARTBEAT_S,
            "allow_host": True,
            "host_user": "root",  # host tasks here wait on files in the test's 0700 dir
            "retry_backoff_s": 0.05,
            "aggregate_interval_s": 0.5,
        }
        base.update(values)
        return Settings(**base)

    async def start_root(self, **values: Any) -> ControlPlane:
        data = self.tmp / "root"
        settings = self.settings(data_dir=data, store=f"sqlite:///{data / 'root.db'}", **values)
        data.mkdir(parents=True, exist_ok=True)
        self.root = ControlPlane(settings, self.broker, root=True)
        await self.root.start()
        return self.root

    async def add_cluster(
        self,
        cluster_id: str,
        *,
        workers: int = 2,
        labels: dict[str, str] | None = None,
        location: str = "",
        worker_labels: dict[str, str] | None = None,
    ) -> ClusterNode:
        data = self.tmp / cluster_id
        data.mkdir(parents=True, exist_ok=True)
        settings = self.settings(
            data_dir=data,
            store=f"sqlite:///{data / 'cluster.db'}",
            cluster_id=cluster_id,
            root=self.broker,
            labels=labels or {},
            location=location,
        )
        control = ControlPlane(settings, self.broker, serve_api=False)
        await control.start()
        node = ClusterNode(control=control)
        self.clusters[cluster_id] = node
        for n in range(workers):
            await self.add_worker(cluster_id, f"{cluster_id}-w{n}", worker_labels or {})
        return node

    async def add_worker(
        self, cluster_id: str, worker_id: str, labels: dict[str, str]
    ) -> WorkerAgent:
        node = self.clusters[cluster_id]
        agent = build_worker(
            node.control.settings,
            broker_url=self.broker,
            worker_id=worker_id,
            data_dir=self.tmp / cluster_id / "workers" / worker_id,
            labels=labels,
        )
        await agent.start()
        node.workers.append(agent)
        return agent

    async def restart_manager(
        self, cluster_id: str, between: Callable[[], Awaitable[None]]
    ) -> None:
        """Stop a cluster's manager (its workers go on), run ``between``, start it again on
        the same store, as after a crash and restart of `edgeplane manager`."""
        node = self.clusters[cluster_id]
        await node.control.stop()
        await between()
        node.control = ControlPlane(node.control.settings, self.broker, serve_api=False)
        await node.control.start()

    async def stop_cluster(self, cluster_id: str) -> None:
        node = self.clusters.pop(cluster_id)
        for agent in node.workers:
            await agent.stop()
        await node.control.stop()

    async def close(self) -> None:
        for cluster_id in list(self.clusters):
            await self.stop_cluster(cluster_id)
        if self.root is not None:
            await self.root.stop()


@pytest.fixture
async def hierarchy(
    tmp_path: Path, fast_broker_url: str, unique_domain: str
) -> AsyncIterator[Hierarchy]:
    world = Hierarchy(tmp=tmp_path, broker=fast_broker_url, domain=unique_domain)
    try:
        yield world
    finally:
        await world.close()


@contextlib.asynccontextmanager
async def api(root: ControlPlane) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        base_url=root.url + "/api/v1", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30
    ) as http:
        yield http


async def eventually(check: Callable[[], Awaitable[Any]], within: float = 20) -> Any:
    """Poll ``check`` until it returns something truthy; its last value on success."""
    deadline = asyncio.get_running_loop().time() + within
    while True:
        value = await check()
        if value:
            return value
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"condition not met within {within} s (last: {value!r})")
        await asyncio.sleep(0.05)


async def online_clusters(http: httpx.AsyncClient) -> dict[str, dict[str, Any]]:
    page = (await http.get("/clusters")).json()
    return {c["id"]: c for c in page["items"] if c["state"] == "online" and c["aggregate"]}


async def run(http: httpx.AsyncClient, body: dict[str, Any]) -> dict[str, Any]:
    created = await http.post("/tasks", json={"start": True, **body})
    assert created.status_code == 201, created.text
    done = await http.get(f"/tasks/{created.json()['id']}", params={"wait": 20})
    task: dict[str, Any] = done.json()
    return task


ECHO = {"runtime": "host", "command": ["sh", "-c", "echo hi"]}


async def test_clusters_register_and_report_aggregates(hierarchy: Hierarchy) -> None:
    root = await hierarchy.start_root()
    await hierarchy.add_cluster("berlin", labels={"region": "eu"}, location="52.52,13.40")
    await hierarchy.add_cluster("lyon", workers=1, location="45.76,4.84")
    async with api(root) as http:

        async def both() -> dict[str, dict[str, Any]] | None:
            found = await online_clusters(http)
            ready = len(found) == 2 and found["berlin"]["aggregate"]["workers"] == 2
            return found if ready and found["lyon"]["aggregate"]["workers"] == 1 else None

        clusters = await eventually(both)
        berlin = clusters["berlin"]
        assert berlin["labels"] == {"region": "eu"}
        assert berlin["location"] == {"lat": 52.52, "lon": 13.40}
        assert berlin["broker_url"] == hierarchy.broker
        groups = berlin["aggregate"]["groups"]
        assert {g["runtime"] for g in groups} >= {"wasm", "host"}
        assert all(g["workers"] == 2 for g in groups)
        # only aggregates reach the root: it has no per-worker listing
        assert (await http.get("/workers")).status_code == 404
        one = await http.get("/clusters/lyon")
        assert one.status_code == 200 and one.json()["id"] == "lyon"
        assert (await http.get("/clusters/nowhere")).status_code == 404

        await hierarchy.stop_cluster("lyon")

        async def lyon_offline() -> bool:
            return bool((await http.get("/clusters/lyon")).json()["state"] == "offline")

        await eventually(lyon_offline)


async def test_two_level_placement(hierarchy: Hierarchy) -> None:
    root = await hierarchy.start_root()
    await hierarchy.add_cluster("a", location="52.52,13.40", worker_labels={"site": "a"})
    await hierarchy.add_cluster("b", location="45.76,4.84", worker_labels={"site": "b"})
    async with api(root) as http:
        await eventually(lambda: _count(http, 2))
        task = await run(http, ECHO)
        assert task["state"] == "completed", task
        assert task["cluster_id"] in ("a", "b")
        assert task["worker_id"].startswith(task["cluster_id"] + "-w")
        assert task["stdout"] == "hi\n"
        assert task["placements"][0]["outcome"] == "placed"

        pinned = await run(http, {**ECHO, "cluster_id": "b"})
        assert pinned["cluster_id"] == "b", pinned

        labelled = await run(http, {**ECHO, "constraints": {"labels": {"site": "a"}}})
        assert labelled["cluster_id"] == "a", labelled
        assert labelled["worker_id"].startswith("a-w")

        near_lyon = {"geo": {"lat": 45.7, "lon": 4.9, "radius_km": 50}}
        geo = await run(http, {**ECHO, "constraints": near_lyon})
        assert geo["cluster_id"] == "b", geo

        # a spread batch uses both clusters
        batch = await http.post("/tasks/batch", json={"tasks": [{**ECHO, "start": True}] * 8})
        ids = [t["id"] for t in batch.json()["items"]]
        done = [(await http.get(f"/tasks/{i}", params={"wait": 20})).json() for i in ids]
        assert {t["state"] for t in done} == {"completed"}
        assert {t["cluster_id"] for t in done} == {"a", "b"}


async def test_root_prefers_the_cluster_holding_the_module(hierarchy: Hierarchy) -> None:
    """Cluster ``b``'s worker holds the module; its aggregate says so, and the root sends
    the task there although ``a`` (registered first, as roomy) would win the tie."""
    module = wasm_fixtures.math_wasm()
    digest = wasm_fixtures.digest(module)
    root = await hierarchy.start_root()
    await hierarchy.add_cluster("a", workers=1)
    node = await hierarchy.add_cluster("b", workers=1)
    node.workers[0].artifacts.blobs.put(digest, module)
    async with api(root) as http:

        async def reported() -> bool:
            found = await online_clusters(http)
            return len(found) == 2 and digest in found["b"]["aggregate"].get("artifacts", [])

        await eventually(reported)
        body = {"name": "add", "file": base64.b64encode(module).decode(), "inputs": [2, 3]}
        task = await run(http, body)
        assert task["state"] == "completed", task
        assert task["cluster_id"] == "b", task
        plain = await run(http, ECHO)  # no module: the usual order
        assert plain["cluster_id"] == "a", plain


async def _count(http: httpx.AsyncClient, n: int) -> bool:
    """``n`` clusters online, each with all its workers in its aggregate."""
    found = await online_clusters(http)
    return len(found) == n and all(c["aggregate"]["workers"] >= 1 for c in found.values())


async def test_no_cluster_fits_waits_then_runs_when_capacity_appears(
    hierarchy: Hierarchy,
) -> None:
    root = await hierarchy.start_root()
    await hierarchy.add_cluster("a")
    async with api(root) as http:
        await eventually(lambda: _count(http, 1))
        created = await http.post(
            "/tasks", json={**ECHO, "start": True, "constraints": {"labels": {"gpu": "yes"}}}
        )
        assert created.status_code == 201
        task_id = created.json()["id"]

        async def waiting() -> dict[str, Any] | None:
            task: dict[str, Any] = (await http.get(f"/tasks/{task_id}")).json()
            return task if task["reason"] else None

        task = await eventually(waiting)
        assert task["state"] == "pending"
        assert "gpu=yes" in task["reason"], task["reason"]

        await hierarchy.add_worker("a", "a-gpu", {"gpu": "yes"})
        done = (await http.get(f"/tasks/{task_id}", params={"wait": 20})).json()
        assert done["state"] == "completed", done
        assert done["worker_id"] == "a-gpu"


def site_b_lie(workers: int) -> Aggregate:
    """An aggregate claiming ``workers`` free `site=b` host workers (8 cpu, 1000 MB each),
    in the real wire format, as a cluster whose state changed after it would tell."""
    return Aggregate(
        workers=workers,
        free_slots=10 * workers,
        groups=[
            CapacityGroup(
                runtime="host",
                labels={"site": "b"},
                workers=workers,
                free_slots=10 * workers,
                cpu=FreeStats(count=workers, sum=8 * workers, mean=8, max=8),
                memory_mb=FreeStats(count=workers, sum=1000 * workers, mean=1000, max=1000),
            )
        ],
        max_free_cpu=8,
        max_free_memory_mb=1000,
    )


async def test_cluster_rejects_and_root_falls_back(hierarchy: Hierarchy) -> None:
    """A stale aggregate claims a cluster has `site=b` workers: it rejects, and the root
    places the task on the next candidate, recording both attempts."""
    root = await hierarchy.start_root()
    await hierarchy.add_cluster("stale", worker_labels={"site": "a"})
    await hierarchy.add_cluster("good", workers=1, worker_labels={"site": "b"})
    async with api(root) as http:
        await eventually(lambda: _count(http, 2))
        # Make "stale" look best for site=b: a lie in the real wire format, as a cluster
        # whose state changed after its last aggregate would tell.
        lie = site_b_lie(50)
        topics = Topics.for_root(hierarchy.domain)
        stale = hierarchy.clusters["stale"]
        assert stale.control.uplink is not None
        stale.control.uplink.interval_s = 3600  # keep the lie standing for this test
        async with _link(hierarchy.broker) as link:
            await link.publish(topics.aggregate("stale"), encode("aggregate", lie))
            await asyncio.sleep(0.3)
            task = await run(http, {**ECHO, "constraints": {"labels": {"site": "b"}}})
        assert task["state"] == "completed", task
        assert task["cluster_id"] == "good"
        outcomes = [(p["cluster_id"], p["outcome"]) for p in task["placements"]]
        assert outcomes[:3] == [("stale", "placed"), ("stale", "rejected"), ("good", "placed")]
        assert "site=b" in (task["placements"][1]["reason"] or "")
        assert task["attempt"] == 1  # a rejection uses up no retry
        assert stale.control.uplink.rejected >= 1


async def test_a_label_of_the_cluster_itself_is_met_by_its_workers(hierarchy: Hierarchy) -> None:
    """`region=eu` is the cluster's label (its manager's --label), not its workers': the
    root places by it, and the cluster runs the task instead of rejecting it."""
    root = await hierarchy.start_root()
    await hierarchy.add_cluster("eu", labels={"region": "eu"})
    await hierarchy.add_cluster("us", labels={"region": "us"})
    async with api(root) as http:
        await eventually(lambda: _count(http, 2))
        task = await run(http, {**ECHO, "constraints": {"labels": {"region": "eu"}}})
        assert task["state"] == "completed", task
        assert task["cluster_id"] == "eu" and task["attempt"] == 1
        assert [p["outcome"] for p in task["placements"]] == ["placed"]


async def test_a_task_offered_again_after_a_rejection_is_judged_again(
    hierarchy: Hierarchy,
) -> None:
    """A rejection keeps the attempt number; the cluster must judge the task again when
    it is offered again, never drop it as a duplicate (it then went `worker_lost`)."""
    root = await hierarchy.start_root()
    await hierarchy.add_cluster("stale", worker_labels={"site": "a"})
    async with api(root) as http:
        await eventually(lambda: _count(http, 1))
        lie = site_b_lie(5)
        topics = Topics.for_root(hierarchy.domain)
        stale = hierarchy.clusters["stale"]
        assert stale.control.uplink is not None
        stale.control.uplink.interval_s = 3600
        async with _link(hierarchy.broker) as link:
            await link.publish(topics.aggregate("stale"), encode("aggregate", lie))

            async def believed() -> bool:
                found = await online_clusters(http)
                return found["stale"]["aggregate"]["workers"] == 5

            await eventually(believed)
            body = {**ECHO, "start": True, "constraints": {"labels": {"site": "b"}}}
            task_id = (await http.post("/tasks", json=body)).json()["id"]

            async def rejections(n: int) -> dict[str, Any] | None:
                task: dict[str, Any] = (await http.get(f"/tasks/{task_id}")).json()
                done = [p for p in task["placements"] if p["outcome"] == "rejected"]
                return task if len(done) >= n and task["state"] == "pending" else None

            await eventually(lambda: rejections(1))
            # A new aggregate clears the rejection: the task is offered to it again.
            await link.publish(topics.aggregate("stale"), encode("aggregate", lie))
            task = await eventually(lambda: rejections(2))
        assert task["state"] == "pending" and task["error"] is None, task
        assert "rejected by stale" in task["reason"]
        assert stale.control.uplink.rejected >= 2


@pytest.mark.parametrize("back", ["within the grace", "after the grace"])
async def test_root_and_cluster_agree_when_a_cluster_manager_restarts(
    hierarchy: Hierarchy, tmp_path: Path, back: str
) -> None:
    """A cluster's manager goes away while its worker runs a task, which ends meanwhile.
    Back within the grace period, the root kept the task with it (no second attempt, even
    with retries); back after it, the root had failed the task `worker_lost` (no retries),
    and the cluster's report of what really happened replaces that."""
    within = back == "within the grace"
    root = await hierarchy.start_root(lost_grace_s=60.0 if within else 0.2)
    await hierarchy.add_cluster("a", workers=1)
    go = tmp_path / "go"
    waiter = f"while [ ! -f {go} ]; do sleep 0.02; done; echo done"
    body = {"runtime": "host", "command": ["sh", "-c", waiter], "retries": 2 if within else 0}
    async with api(root) as http:
        await eventually(lambda: _count(http, 1))
        task_id = (await http.post("/tasks", json={**body, "start": True})).json()["id"]

        async def state(wanted: str) -> dict[str, Any] | None:
            task: dict[str, Any] = (await http.get(f"/tasks/{task_id}")).json()
            return task if task["state"] == wanted else None

        await eventually(lambda: state("running"))

        async def away() -> None:
            async def offline() -> bool:
                page = (await http.get("/clusters")).json()
                return any(c["id"] == "a" and c["state"] == "offline" for c in page["items"])

            await eventually(offline)
            if within:
                assert await state("running"), "the root gave up on the task during the grace"
            else:
                lost = await eventually(lambda: state("failed"))
                assert lost["error"] == "worker_lost"
            go.touch()  # the task ends while its cluster's manager is away

        await hierarchy.restart_manager("a", away)
        done = await eventually(lambda: state("completed"))
    assert done["stdout"] == "done\n" and done["attempt"] == 1, done
    local, total = await hierarchy.clusters["a"].control.manager.list_tasks()
    assert total == 1 and local[0].state == "completed"  # it ran once, in one attempt


@contextlib.asynccontextmanager
async def _link(broker: str) -> AsyncIterator[MqttLink]:
    async def ignore(topic: str, payload: bytes) -> None:
        return None

    link = MqttLink(broker, client_id="test-fake-cluster", subscriptions=[], on_message=ignore)
    await link.start()
    try:
        yield link
    finally:
        await link.stop()


SLEEPER = {"runtime": "host", "command": ["sleep", "60"]}


def _app(replicas: int = 2, command: list[str] | None = None) -> dict[str, Any]:
    return {
        "name": "shop",
        "services": [
            {
                "name": "web",
                **SLEEPER,
                "replicas": replicas,
                "command": command or SLEEPER["command"],
            },
            {"name": "db", **SLEEPER, "replicas": 1, "restart": "on-failure"},
        ],
    }


async def _instances(http: httpx.AsyncClient, app_id: str) -> list[dict[str, Any]]:
    doc = (await http.get(f"/applications/{app_id}")).json()
    return [i for s in doc["services"] for i in s["instances"]]


async def _all_running(http: httpx.AsyncClient, app_id: str, n: int) -> list[dict[str, Any]]:
    found = await _instances(http, app_id)
    running = [i for i in found if i["state"] == "running"]
    return running if len(running) == n and len(found) == n else []


async def test_application_lifecycle(hierarchy: Hierarchy) -> None:
    root = await hierarchy.start_root()
    await hierarchy.add_cluster("a")
    await hierarchy.add_cluster("b")
    async with api(root) as http:
        await eventually(lambda: _count(http, 2))
        bad = await http.post(
            "/applications",
            json={
                "name": "x",
                "services": [{"name": "a", **SLEEPER}, {"name": "b", "replicas": -1}],
            },
        )
        assert bad.status_code == 422
        assert bad.json()["field"] == "services[1].replicas"

        created = await http.post("/applications", json=_app())
        assert created.status_code == 201, created.text
        app_id = created.json()["id"]
        running = await eventually(lambda: _all_running(http, app_id, 3))
        assert {i["cluster_id"] for i in running} <= {"a", "b"}
        assert all(i["worker_id"] and i["restarts"] == 0 for i in running)

        # rolling update of "web": new instances come up before the old ones go
        old = {i["id"] for i in running if i["service"] == "web"}
        put = await http.put(f"/applications/{app_id}", json=_app(command=["sleep", "61"]))
        assert put.status_code == 200, put.text

        async def rolled() -> list[dict[str, Any]]:
            found = await _all_running(http, app_id, 3)
            web = [i for i in found if i["service"] == "web"]
            return found if web and not old & {i["id"] for i in web} else []

        after = await eventually(rolled, within=30)
        db_before = [i["id"] for i in running if i["service"] == "db"]
        assert [i["id"] for i in after if i["service"] == "db"] == db_before  # untouched

        # YAML descriptors work too; scaling down stops the surplus
        yaml_body = (
            "name: shop\nservices:\n"
            "  - {name: web, runtime: host, command: [sleep, '61'], replicas: 1}\n"
        )
        scaled = await http.put(
            f"/applications/{app_id}",
            content=yaml_body,
            headers={"Content-Type": "application/yaml"},
        )
        assert scaled.status_code == 200, scaled.text
        await eventually(lambda: _all_running(http, app_id, 1))

        deleted = await http.delete(f"/applications/{app_id}")
        assert deleted.status_code == 204
        assert (await http.get(f"/applications/{app_id}")).status_code == 404
        tasks = (await http.get("/tasks", params={"limit": 100})).json()["items"]
        assert tasks and all(t["state"] in ("cancelled", "failed", "completed") for t in tasks)


async def test_lost_cluster_instances_replaced_and_surplus_stopped(
    hierarchy: Hierarchy,
) -> None:
    root = await hierarchy.start_root()
    await hierarchy.add_cluster("a")
    await hierarchy.add_cluster("b")
    async with api(root) as http:
        await eventually(lambda: _count(http, 2))
        app_id = (await http.post("/applications", json=_app(replicas=3))).json()["id"]
        running = await eventually(lambda: _all_running(http, app_id, 4))
        victim = running[0]["cluster_id"]
        survivor = "b" if victim == "a" else "a"
        node = hierarchy.clusters[victim]
        uplink = node.control.uplink
        assert uplink is not None
        # The cluster's link to the root dies silently (no offline message): the root
        # notices by missed heartbeats and moves its instances; its workers keep running.
        await uplink.stop_silently()

        async def moved() -> list[dict[str, Any]]:
            found = await _all_running(http, app_id, 4)
            return found if found and {i["cluster_id"] for i in found} == {survivor} else []

        await eventually(moved, within=30)
        cluster = (await http.get(f"/clusters/{victim}")).json()
        assert cluster["state"] == "offline"

        # It comes back: what it still runs of the app is surplus and gets stopped.
        local = node.control.manager

        async def still_running_there() -> bool:
            counts = local.task_counts()
            return counts.get("running", 0) > 0

        assert await still_running_there()
        await uplink.start()
        await eventually(lambda: _count(http, 2))

        async def surplus_gone() -> bool:
            return not await still_running_there()

        await eventually(surplus_gone)
        final = await _all_running(http, app_id, 4)
        assert final and len({i["id"] for i in final}) == 4


async def test_impossible_service_waits_with_a_reason(hierarchy: Hierarchy) -> None:
    root = await hierarchy.start_root()
    await hierarchy.add_cluster("a")
    async with api(root) as http:
        await eventually(lambda: _count(http, 1))
        body = {
            "name": "picky",
            "services": [
                {"name": "s", **SLEEPER, "constraints": {"labels": {"site": "mars"}}},
                {"name": "t", **SLEEPER, "constraints": {"clusters": ["nowhere"]}},
            ],
        }
        created = await http.post("/applications", json=body)
        assert created.status_code == 201, created.text
        app_id = created.json()["id"]

        async def explained() -> list[dict[str, Any]]:
            found = await _instances(http, app_id)
            return found if len(found) == 2 and all(i["reason"] for i in found) else []

        instances = {i["service"]: i for i in await eventually(explained)}
        assert instances["s"]["state"] == "pending"
        assert "site=mars" in instances["s"]["reason"]
        assert "nowhere" in instances["t"]["reason"]


async def test_applications_on_a_cluster_without_root(hierarchy: Hierarchy) -> None:
    """`edgeplane up` without --clusters: the manager serves the API, applications
    place instances on its workers, and /clusters describes the cluster itself."""
    node = await hierarchy.add_cluster("solo", labels={"site": "lab"})
    # a cluster control plane that serves its own API (root-less, like `edgeplane up`)
    control = ControlPlane(
        node.control.settings.model_copy(update={"root": "", "cluster_id": "solo2"}),
        hierarchy.broker,
    )
    del node
    await control.start()
    try:
        await hierarchy.add_cluster("unused", workers=0)
        for n in range(2):
            agent = build_worker(
                control.settings,
                broker_url=hierarchy.broker,
                worker_id=f"solo2-w{n}",
                data_dir=hierarchy.tmp / f"solo2-w{n}",
            )
            await agent.start()
            hierarchy.clusters["unused"].workers.append(agent)
        async with api(control) as http:
            clusters = (await http.get("/clusters")).json()["items"]
            assert [c["id"] for c in clusters] == ["solo2"]
            created = await http.post("/applications", json=_app(replicas=2))
            app_id = created.json()["id"]
            running = await eventually(lambda: _all_running(http, app_id, 3))
            assert {i["worker_id"] for i in running} <= {"solo2-w0", "solo2-w1"}
            assert all(i["cluster_id"] == "solo2" for i in running)
            one = (await http.get("/clusters/solo2")).json()
            assert one["aggregate"]["workers"] == 2
    finally:
        await hierarchy.stop_cluster("unused")
        await control.stop()


async def test_services_that_could_never_start_are_refused(hierarchy: Hierarchy) -> None:
    root = await hierarchy.start_root()
    async with api(root) as http:
        body = {
            "name": "x",
            "services": [
                {"name": "ok", **SLEEPER},
                {"name": "box", "runtime": "container"},  # no image
            ],
        }
        refused = await http.post("/applications", json=body)
        assert refused.status_code == 422, refused.text
        assert refused.json()["field"] == "services[1].image"
        assert (await http.get("/applications")).json()["total"] == 0


async def test_a_cluster_fails_one_bad_assignment_and_runs_the_others(
    hierarchy: Hierarchy,
) -> None:
    root = await hierarchy.start_root()
    await hierarchy.add_cluster("a")
    async with api(root) as http:
        await eventually(lambda: _count(http, 1))
    specs = [TaskSpec.model_validate({**ECHO, "start": True}) for _ in range(4)]
    # what the API refuses, but a task stored before limits had ranges still carries
    specs[1] = specs[1].model_copy(update={"limits": Limits.model_construct(pids=2**64)})
    tasks = await root.manager.submit(specs)
    ended = [await root.manager.wait(task.id, 20) for task in tasks]
    bad = ended.pop(1)
    assert bad.state == "failed", bad
    assert bad.error is not None and "limits.pids" in bad.error, bad.error
    assert [t.state for t in ended] == ["completed"] * 3, ended
