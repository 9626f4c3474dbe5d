"""Spread and anti-affinity through the real API: a root over two clusters of two workers
each (real managers, workers and Mosquitto; ``test_hierarchy.py``'s world).

- tasks submitted one at a time split evenly over equal clusters, then workers (before,
  all of them went to the cluster that looked best in its last aggregate);
- an application's replicas land on distinct workers across both clusters;
- ``anti_affinity: required`` keeps the extra replica pending with the rule as its
  reason, replaces a replica whose worker is lost only where none runs, and still
  rolls an update when every worker runs a replica.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from test_hierarchy import SLEEPER, Hierarchy, _count, _instances, api, eventually

pytest_plugins = ["broker_fixtures"]
pytestmark = pytest.mark.timeout(120)


@pytest.fixture
async def hierarchy(
    tmp_path: Path, fast_broker_url: str, unique_domain: str
) -> AsyncIterator[Hierarchy]:
    world = Hierarchy(tmp=tmp_path, broker=fast_broker_url, domain=unique_domain)
    try:
        yield world
    finally:
        await world.close()


async def _running(http: httpx.AsyncClient, app_id: str, n: int) -> list[dict[str, Any]]:
    found = await _instances(http, app_id)
    running = [i for i in found if i["state"] == "running" and i["worker_id"]]
    return running if len(running) == n else []


def _web(replicas: int, *, command: list[str] | None = None, **placement: str) -> dict[str, Any]:
    service: dict[str, Any] = {"name": "web", **SLEEPER, "replicas": replicas}
    if command is not None:
        service["command"] = command
    if placement:
        service["placement"] = placement
    return {"name": "shop", "services": [service]}


async def _two_by_two(hierarchy: Hierarchy) -> None:
    await hierarchy.add_cluster("a", workers=2)
    await hierarchy.add_cluster("b", workers=2)


async def test_tasks_submitted_one_at_a_time_split_over_clusters_then_workers(
    hierarchy: Hierarchy,
) -> None:
    root = await hierarchy.start_root()
    await _two_by_two(hierarchy)
    async with api(root) as http:
        await eventually(lambda: _count(http, 2))
        ids = []
        for _ in range(8):  # one request each: the aggregates do not move in between
            created = await http.post("/tasks", json={**SLEEPER, "start": True})
            assert created.status_code == 201, created.text
            ids.append(created.json()["id"])

        async def all_running() -> list[dict[str, Any]]:
            tasks = [(await http.get(f"/tasks/{i}")).json() for i in ids]
            return tasks if all(t["state"] == "running" for t in tasks) else []

        tasks = await eventually(all_running, within=40)
        assert Counter(t["cluster_id"] for t in tasks) == {"a": 4, "b": 4}
        assert sorted(Counter(t["worker_id"] for t in tasks).values()) == [2, 2, 2, 2]


async def test_replicas_land_on_distinct_workers_across_clusters(hierarchy: Hierarchy) -> None:
    root = await hierarchy.start_root()
    await _two_by_two(hierarchy)
    async with api(root) as http:
        await eventually(lambda: _count(http, 2))
        created = await http.post("/applications", json=_web(4))
        assert created.status_code == 201, created.text
        app_id = created.json()["id"]
        running = await eventually(lambda: _running(http, app_id, 4), within=40)
        assert len({i["worker_id"] for i in running}) == 4
        assert Counter(i["cluster_id"] for i in running) == {"a": 2, "b": 2}
        shown = (await http.get(f"/applications/{app_id}")).json()
        assert shown["spec"]["services"][0]["placement"] == {
            "spread": "worker",
            "anti_affinity": "preferred",
        }


async def test_bad_placement_is_refused_naming_the_field(hierarchy: Hierarchy) -> None:
    root = await hierarchy.start_root()
    async with api(root) as http:
        for placement, field in (
            ({"spread": "rack"}, "services[0].placement.spread"),
            (
                {"spread": "none", "anti_affinity": "required"},
                "services[0].placement.anti_affinity",
            ),
            ({"distinct_hosts": True}, "services[0].placement.distinct_hosts"),
        ):
            body = _web(2)
            body["services"][0]["placement"] = placement
            refused = await http.post("/applications", json=body)
            assert refused.status_code == 422, refused.text
            assert refused.headers["content-type"].startswith("application/problem+json")
            assert refused.json()["field"] == field
        spread = _web(1)
        spread["services"][0]["constraints"] = {"spread": {"group": "x"}}
        refused = await http.post("/applications", json=spread)
        assert refused.status_code == 422
        assert refused.json()["field"] == "services[0].constraints"
        assert (await http.get("/applications")).json()["total"] == 0


async def test_required_anti_affinity_waits_replaces_and_rolls(hierarchy: Hierarchy) -> None:
    root = await hierarchy.start_root()
    await _two_by_two(hierarchy)
    async with api(root) as http:
        await eventually(lambda: _count(http, 2))
        created = await http.post("/applications", json=_web(5, anti_affinity="required"))
        assert created.status_code == 201, created.text
        app_id = created.json()["id"]

        async def four_and_one_kept_out() -> list[dict[str, Any]]:
            found = await _instances(http, app_id)
            running = [i for i in found if i["state"] == "running"]
            waiting = [i for i in found if i["state"] == "pending" and i["reason"]]
            return found if len(running) == 4 and len(waiting) == 1 else []

        found = await eventually(four_and_one_kept_out, within=40)
        running = [i for i in found if i["state"] == "running"]
        assert len({i["worker_id"] for i in running}) == 4
        (waiting,) = [i for i in found if i["state"] == "pending"]
        assert waiting["reason"].startswith("anti-affinity required (spread over workers)")
        assert f"'{app_id}/web'" in waiting["reason"]

        # four replicas on four workers: a rolling update has no spare worker, and the
        # reconciler makes room index by index instead of waiting forever
        put = await http.put(
            f"/applications/{app_id}",
            json=_web(4, command=["sleep", "61"], anti_affinity="required"),
        )
        assert put.status_code == 200, put.text

        async def rolled() -> list[dict[str, Any]]:
            doc = (await http.get(f"/applications/{app_id}")).json()
            (service,) = doc["services"]
            current = [i for i in service["instances"] if i["revision"] == service["revision"]]
            running = [i for i in current if i["state"] == "running"]
            return running if len(running) == 4 and len(service["instances"]) == 4 else []

        after = await eventually(rolled, within=60)
        assert len({i["worker_id"] for i in after}) == 4

        # a worker is lost: its replica's replacement has nowhere to go but a new worker
        lost = after[0]["worker_id"]
        cluster = lost.split("-w")[0]
        agents = hierarchy.clusters[cluster].workers
        agent = next(w for w in agents if w.id == lost)
        agents.remove(agent)
        await agent.stop()

        async def replacement_kept_out() -> dict[str, Any] | None:
            for i in await _instances(http, app_id):
                reason = i["reason"] or ""
                if i["state"] == "pending" and reason.startswith("anti-affinity required"):
                    return i
            return None

        await eventually(replacement_kept_out, within=40)
        await hierarchy.add_worker(cluster, f"{cluster}-w9", {})
        final = await eventually(lambda: _running(http, app_id, 4), within=40)
        workers = [i["worker_id"] for i in final]
        assert len(set(workers)) == 4 and f"{cluster}-w9" in workers and lost not in workers
