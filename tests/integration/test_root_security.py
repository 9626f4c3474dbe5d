"""Clusters' identities on the root's own broker (docs/broker-security.md, "Clusters
joining a root"), against the Mosquitto ``edgeplane root`` starts with its generated
password and ACL files.

The root is a real control plane with its own locked-down Mosquitto; each cluster is a
real manager whose own broker (and its workers) is the shared test broker, so only the
root's broker is the one under test. Refusals by the broker are shown against a barrier,
as in test_broker_security.py: the forger's allowed message arrives after the refused
ones would have.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from test_broker_security import WAIT_S, Probe, answer, refused, started, until

from edgeplane.config import Settings
from edgeplane.errors import Invalid
from edgeplane.protocol import (
    Alive,
    Assignment,
    StartTasks,
    TaskEvent,
    TaskEvents,
    encode,
)
from edgeplane.protocol.signing import sign
from edgeplane.roles.control import ControlPlane, broker_auth, start_broker
from edgeplane.roles.worker import build_worker
from edgeplane.security import joining
from edgeplane.security.broker_auth import ROOT_USER, BrokerAuth, Credentials
from edgeplane.worker import WorkerAgent

pytest_plugins = ["broker_fixtures"]
pytestmark = pytest.mark.skipif(
    __import__("shutil").which("mosquitto") is None, reason="mosquitto is not installed"
)

TOKEN = "test-admin-token"
HEARTBEAT_S = 0.3
SLEEP = {"runtime": "host", "command": ["sleep", "60"], "start": True}


@dataclass
class World:
    tmp: Path
    shared: str
    domain: str
    root: ControlPlane
    auth: BrokerAuth
    http: httpx.AsyncClient
    clusters: dict[str, tuple[ControlPlane, list[WorkerAgent]]] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return self.root.broker_url

    def settings(self, cluster_id: str, **values: Any) -> Settings:
        data = self.tmp / cluster_id
        base: dict[str, Any] = {
            "data_dir": data,
            "store": f"sqlite:///{data / 'cluster.db'}",
            "broker": self.shared,
            "domain": self.domain,
            "cluster_id": cluster_id,
            "root": self.url,
            "port": 0,
            "admin_token": TOKEN,
            "heartbeat_s": HEARTBEAT_S,
            "allow_host": True,
            "aggregate_interval_s": 0.5,
        }
        base.update(values)
        return Settings(**base)

    async def token(self, **body: Any) -> dict[str, Any]:
        created = await self.http.post("/join-tokens", json=body)
        assert created.status_code == 201, created.text
        shown: dict[str, Any] = created.json()
        return shown

    async def start_cluster(
        self, cluster_id: str, *, workers: int = 1, serve_api: bool = False, **values: Any
    ) -> ControlPlane:
        settings = self.settings(cluster_id, **values)
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        control = ControlPlane(settings, self.shared, serve_api=serve_api)
        agents: list[WorkerAgent] = []
        self.clusters[cluster_id] = (control, agents)
        await control.start()
        for n in range(workers):
            agent = build_worker(
                control.settings,
                broker_url=self.shared,
                worker_id=f"{cluster_id}-w{n}",
                data_dir=settings.data_dir / "workers" / str(n),
            )
            await agent.start()
            agents.append(agent)
        return control

    async def stop_cluster(self, cluster_id: str) -> None:
        control, agents = self.clusters.pop(cluster_id)
        for agent in agents:
            await agent.stop()
        await control.stop()

    async def online(self, cluster_id: str) -> bool:
        found = await self.http.get(f"/clusters/{cluster_id}")
        return found.status_code == 200 and found.json()["state"] == "online"


@pytest.fixture
async def world(tmp_path: Path, fast_broker_url: str, unique_domain: str) -> AsyncIterator[World]:
    """``edgeplane root`` with no ``--broker``: its own locked-down Mosquitto."""
    settings = Settings(
        data_dir=tmp_path / "root",
        broker="",
        store="memory://",
        port=0,
        heartbeat_s=HEARTBEAT_S,
        domain=unique_domain,
        admin_token=TOKEN,
    )
    async with contextlib.AsyncExitStack() as stack:
        auth = broker_auth(settings, root=True)
        assert auth is not None
        url = await start_broker(stack, settings, auth)
        root = ControlPlane(settings, url, root=True, auth=auth)
        await root.start()
        stack.push_async_callback(root.stop)
        http = await stack.enter_async_context(
            httpx.AsyncClient(
                base_url=root.url + "/api/v1",
                headers={"Authorization": f"Bearer {TOKEN}"},
                timeout=30,
            )
        )
        found = World(tmp_path, fast_broker_url, unique_domain, root, auth, http)
        try:
            yield found
        finally:
            for cluster_id in list(found.clusters):
                await found.stop_cluster(cluster_id)


async def test_joined_cluster_runs_tasks_in_their_project_and_keeps_its_identity(
    world: World,
) -> None:
    shown = await world.token(cluster_id="a", labels={"zone": "z1", "tier": "t"})
    assert shown["cluster_id"] == "a" and shown["worker_id"] is None
    control = await world.start_cluster("a", join_token=shown["token"], labels={"tier": "own"})
    kept = control.settings.data_dir / "uplink" / joining.CREDENTIALS_FILE
    assert kept.stat().st_mode & 0o777 == 0o600
    await until(lambda: world.online("a"))
    seen = (await world.http.get("/clusters/a")).json()
    assert seen["labels"] == {"zone": "z1", "tier": "own"}  # the token's, under its own
    listed = (await world.http.get("/join-tokens")).json()
    assert listed[0]["clusters"] == ["a"] and listed[0]["workers"] == []

    created = await world.http.post(
        "/tasks",
        json={"runtime": "host", "command": ["echo", "hi"], "start": True, "project": "p1"},
    )
    assert created.status_code == 201, created.text
    task_id = created.json()["id"]
    done = (await world.http.get(f"/tasks/{task_id}", params={"wait": WAIT_S})).json()
    assert done["state"] == "completed" and done["cluster_id"] == "a", done
    here = await control.store.get_task(task_id)  # the cluster's own store
    assert here is not None and here.project == "p1"

    # Restarted without a token: it logs in with the identity it kept.
    await world.stop_cluster("a")

    async def offline() -> bool:
        return not await world.online("a")

    await until(offline)
    again = await world.start_cluster("a")
    assert again.uplink is not None and again.uplink.identity is not None
    await until(lambda: world.online("a"))


async def test_a_token_made_for_one_cluster_is_refused_to_another(world: World) -> None:
    shown = await world.token(cluster_id="a")
    with pytest.raises(Invalid, match="for cluster a"):
        await world.start_cluster("b", join_token=shown["token"], workers=0)
    world.clusters.pop("b")
    assert not world.auth.has_member("b") and not world.auth.has_member("a")
    wrong = await world.http.post("/join-tokens", json={"worker_id": "w"})
    assert wrong.status_code == 422 and "cluster_id" in wrong.text


async def test_an_anonymous_cluster_cannot_hello_the_root(world: World) -> None:
    watcher = await started(Probe(world.url, "watcher", ["#"], world.auth.manager))
    try:
        control = await world.start_cluster("rogue", workers=0)
        assert control.uplink is not None
        topics = world.auth.topics
        barrier = topics.join(control.uplink.link.client_id)  # the one topic it may write
        await control.uplink.link.publish(barrier, b"{}")
        seen = await watcher.until(barrier)
        assert topics.hello("rogue") not in seen, seen
        assert world.root.manager.workers() == []
        # Nor can an anonymous client named `hello` pass its join topic off as the hello
        # of a cluster called `join` (the root's join topics are one level deeper).
        sly = await started(Probe(world.url, "hello", []))
        await sly.link.publish(f"{topics.prefix}/join/hello", b'{"v":1,"type":"hello"}')
        await sly.link.publish(topics.join("hello"), b"{}")
        seen = await watcher.until(topics.join("hello"))
        assert f"{topics.prefix}/join/hello" not in seen, seen
        await sly.link.stop()
        assert world.root.manager.workers() == []
        assert ROOT_USER in world.auth.password_text()
    finally:
        await watcher.link.stop()


async def test_a_cluster_reads_only_its_own_commands_and_writes_only_its_leaves(
    world: World,
) -> None:
    auth, topics = world.auth, world.auth.topics
    a, b = auth.add_member("a"), auth.add_member("b")
    watcher = await started(Probe(world.url, "watcher", ["#"], auth.manager))
    spy = await started(
        Probe(world.url, "a-spy", [topics.cmd("b"), topics.welcome("b"), topics.cmd("a")], a)
    )
    try:
        await watcher.link.publish(topics.cmd("b"), b"for b")
        await watcher.link.publish(topics.welcome("b"), b"for b")
        await watcher.link.publish(topics.cmd("a"), b"for a")
        assert await spy.until(topics.cmd("a")) == [topics.cmd("a")]
        await watcher.until(topics.cmd("a"))
        before = len(watcher.got)
        forged_end = TaskEvents(events=[TaskEvent(task_id="t", attempt=1, state="completed")])
        forged = {
            topics.events("b"): encode("task.events", forged_end),
            topics.alive("b"): encode("alive", Alive(online=False, session="s")),
            topics.hello("b"): b'{"v":1,"type":"hello","body":{}}',
            topics.aggregate("b"): b"{}",
            topics.cmd("b"): encode("task.start", StartTasks(tasks=[])),
            topics.cmd("a"): encode("task.start", StartTasks(tasks=[])),
            topics.join_answer("x"): b"{}",
        }
        for topic, payload in forged.items():
            await spy.link.publish(topic, payload)
        await spy.link.publish(topics.aggregate("a"), b"{}")  # its own leaf: the barrier
        seen = (await watcher.until(topics.aggregate("a")))[before:]
        assert seen == [topics.aggregate("a")], seen
        assert b.username == "b"  # B's identity exists: the refusals are the ACL's
    finally:
        await spy.link.stop()
        await watcher.link.stop()


@pytest.mark.parametrize("how", ["cluster", "token"])
async def test_a_revoked_cluster_is_cut_off_at_once(world: World, how: str) -> None:
    shown = await world.token(cluster_id="doomed")
    control = await world.start_cluster("doomed", join_token=shown["token"], workers=0)
    uplink = control.uplink
    assert uplink is not None and uplink.identity is not None
    await until(lambda: world.online("doomed"))
    credentials = Credentials(
        uplink.identity.username, uplink.identity.password, uplink.identity.mac_key
    )
    assert not await refused(world.url, credentials)
    path = "/clusters/doomed" if how == "cluster" else f"/join-tokens/{shown['id']}"
    assert (await world.http.delete(path)).status_code == 204
    await until(lambda: answer(not uplink.link.connected.is_set()))  # the broker's reload
    assert await refused(world.url, credentials)
    assert not world.auth.has_member("doomed")

    async def gone_or_offline() -> bool:  # deleted, or lost as a silent cluster is
        return not await world.online("doomed")

    await until(gone_or_offline)


async def test_a_forged_root_command_is_refused_by_the_cluster(
    world: World, tmp_path: Path
) -> None:
    """A broker that let a stranger publish on a cluster's ``cmd`` (simulated with the
    root's own identity) still cannot make the cluster run anything."""
    shown = await world.token(cluster_id="c")
    control = await world.start_cluster("c", join_token=shown["token"], serve_api=True)
    uplink = control.uplink
    assert uplink is not None
    await until(lambda: world.online("c"))
    intruder = await started(Probe(world.url, "intruder", [], world.auth.manager))
    try:
        marker = tmp_path / "ran"
        start = StartTasks(
            tasks=[
                Assignment(
                    task_id="forged",
                    attempt=1,
                    runtime="host",
                    command=["sh", "-c", f"touch {marker}"],
                )
            ]
        )
        message = encode("task.start", start)
        topic = world.auth.topics.cmd("c")
        await intruder.link.publish(topic, message)  # no MAC
        await intruder.link.publish(topic, sign(b"k" * 32, message))  # another key
        await until(lambda: answer(uplink.unsigned >= 2))
        assert await control.store.get_task("forged") is None and not marker.exists()
        done = await world.http.post("/tasks", json={**SLEEP, "command": ["true"]})
        task_id = done.json()["id"]
        task = (await world.http.get(f"/tasks/{task_id}", params={"wait": WAIT_S})).json()
        assert task["state"] == "completed", task  # the root's signed commands still run
        assert uplink.unsigned == 2
        metrics = (await world.http.get(control.url + "/metrics")).text  # the cluster's
        assert "edgeplane_uplink_unsigned_total 2.0" in metrics
    finally:
        await intruder.link.stop()


async def test_events_about_another_clusters_task_are_refused_and_counted(
    world: World,
) -> None:
    shown = await world.token(cluster_id="holder")
    await world.start_cluster("holder", join_token=shown["token"])
    await until(lambda: world.online("holder"))
    forger = await started(Probe(world.url, "forger", [], world.auth.add_member("forger")))
    try:
        created = await world.http.post("/tasks", json=SLEEP)
        task_id = created.json()["id"]

        async def running() -> bool:
            return bool((await world.http.get(f"/tasks/{task_id}")).json()["state"] == "running")

        await until(running)
        attempt = (await world.http.get(f"/tasks/{task_id}")).json()["attempt"]
        forged = TaskEvent(task_id=task_id, attempt=attempt, state="completed", results=[666])
        payload = encode("task.events", TaskEvents(events=[forged]))
        await forger.link.publish(world.auth.topics.events("forger"), payload)
        manager = world.root.manager
        await until(lambda: answer(manager.stats.foreign_events >= 1))
        task = (await world.http.get(f"/tasks/{task_id}")).json()
        assert task["state"] == "running" and task["cluster_id"] == "holder"
        metrics = (await world.http.get(world.root.url + "/metrics")).text
        assert "edgeplane_foreign_events_total 1.0" in metrics
        await world.http.post(f"/tasks/{task_id}/stop")
    finally:
        await forger.link.stop()
