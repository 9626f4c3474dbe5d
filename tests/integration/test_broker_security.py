"""Broker identities, ACLs and signed commands, against the Mosquitto ``edgeplane up``
starts with its generated password and ACL files (docs/broker-security.md).

Each refusal by the broker is shown against a barrier: the forger publishes the forged
messages and then one it may send, on the same connection; the manager's identity
(subscribed to everything) sees the allowed one, so it would have seen the forged ones
before it had the broker let them through (one publisher's messages keep their order).
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiomqtt
import httpx
import pytest

import wasm_fixtures
from edgeplane.config import Settings
from edgeplane.errors import Invalid
from edgeplane.protocol import (
    Alive,
    Assignment,
    StartTasks,
    TaskEvent,
    TaskEvents,
    Topics,
    encode,
)
from edgeplane.protocol.signing import sign
from edgeplane.roles.up import Stack, running_stack
from edgeplane.roles.worker import build_worker
from edgeplane.security import joining
from edgeplane.security.broker_auth import BrokerAuth, Credentials
from edgeplane.transport import MqttLink, parse_broker_url
from edgeplane.worker import WorkerAgent

pytestmark = pytest.mark.skipif(
    __import__("shutil").which("mosquitto") is None, reason="mosquitto is not installed"
)

TOKEN = "test-admin-token"
WAIT_S = 20.0
ADD = base64.b64encode(wasm_fixtures.add_wasm()).decode()


class Probe:
    """A raw MQTT client that records what it receives."""

    def __init__(
        self,
        url: str,
        client_id: str,
        subscriptions: list[str],
        credentials: Credentials | None = None,
    ) -> None:
        self.got: list[tuple[str, bytes]] = []
        self._changed = asyncio.Event()
        self.link = MqttLink(
            url,
            client_id=client_id,
            subscriptions=subscriptions,
            on_message=self._on_message,
            username=None if credentials is None else credentials.username,
            password=None if credentials is None else credentials.password,
        )

    async def _on_message(self, topic: str, payload: bytes) -> None:
        self.got.append((topic, payload))
        self._changed.set()

    def topics(self) -> list[str]:
        return [topic for topic, _ in self.got]

    async def until(self, topic: str) -> list[str]:
        """Wait until ``topic`` arrived; every topic received until then."""
        async with asyncio.timeout(WAIT_S):
            while topic not in self.topics():
                self._changed.clear()
                await self._changed.wait()
        return self.topics()


@pytest.fixture
async def secured(
    tmp_path: Path, unique_domain: str
) -> AsyncIterator[tuple[Stack, httpx.AsyncClient, BrokerAuth]]:
    """``up`` with no ``--broker``: its own locked-down Mosquitto, no local workers."""
    settings = Settings(
        data_dir=tmp_path / "up",
        broker="",
        store="memory://",
        port=0,
        workers=0,
        heartbeat_s=0.3,
        domain=unique_domain,
        admin_token=TOKEN,
        allow_host=True,
        host_user="root",  # a forged task that ran could write its marker in tmp_path
    )
    async with (
        running_stack(settings) as stack,
        httpx.AsyncClient(
            base_url=stack.control.url + "/api/v1",
            headers={"Authorization": f"Bearer {TOKEN}"},
            timeout=30,
        ) as http,
    ):
        auth = stack.control.auth
        assert auth is not None
        yield stack, http, auth


async def until(condition: Callable[[], Awaitable[bool]]) -> None:
    async with asyncio.timeout(WAIT_S):
        while not await condition():  # noqa: ASYNC110 -- counters and states have no event
            await asyncio.sleep(0.02)


async def answer(value: bool) -> bool:
    return value


async def started(probe: Probe) -> Probe:
    await probe.link.start()
    return probe


async def join_worker(
    stack: Stack, http: httpx.AsyncClient, tmp_path: Path, worker_id: str, **body: Any
) -> WorkerAgent:
    created = await http.post("/join-tokens", json={"worker_id": worker_id, **body})
    assert created.status_code == 201, created.text
    topics = Topics(stack.control.settings.domain, stack.control.settings.cluster_id)
    identity = await joining.join(stack.broker_url, topics, created.json()["token"], "ignored")
    assert identity.member_id == worker_id
    worker = build_worker(
        stack.control.settings,
        broker_url=stack.broker_url,
        worker_id=identity.member_id,
        data_dir=tmp_path / worker_id,
        identity=identity,
    )
    await worker.start()
    await asyncio.wait_for(worker.registered.wait(), WAIT_S)
    return worker


async def test_joined_worker_runs_tasks_and_keeps_its_identity(
    secured: tuple[Stack, httpx.AsyncClient, BrokerAuth], tmp_path: Path
) -> None:
    stack, http, _ = secured
    created = await http.post("/join-tokens", json={"labels": {"site": "a"}, "ttl_s": 60})
    assert created.status_code == 201, created.text
    shown = created.json()
    listed = (await http.get("/join-tokens")).json()
    assert [t["id"] for t in listed] == [shown["id"]]
    assert "token" not in listed[0] and "secret_hash" not in listed[0]  # shown once
    topics = Topics(stack.control.settings.domain, stack.control.settings.cluster_id)
    identity = await joining.join(stack.broker_url, topics, shown["token"], "edge-1")
    path = joining.save(tmp_path / "w", identity)
    assert path.stat().st_mode & 0o777 == 0o600
    kept = joining.load(tmp_path / "w")
    assert kept == identity and kept.labels == {"site": "a"}
    worker = build_worker(
        stack.control.settings,
        broker_url=stack.broker_url,
        worker_id=kept.member_id,
        data_dir=tmp_path / "w",
        labels=kept.labels,
        identity=kept,
    )
    await worker.start()
    try:
        done = await http.post(
            "/tasks", json={"name": "add", "file": ADD, "inputs": [2, 3], "start": True}
        )
        task = (await http.get(f"/tasks/{done.json()['id']}", params={"wait": WAIT_S})).json()
        assert task["state"] == "completed" and task["results"] == [5], task
        assert task["worker_id"] == "edge-1"
    finally:
        await worker.stop()


async def test_join_refused_without_a_valid_token(
    secured: tuple[Stack, httpx.AsyncClient, BrokerAuth],
) -> None:
    stack, http, _ = secured
    topics = Topics(stack.control.settings.domain, stack.control.settings.cluster_id)
    with pytest.raises(Invalid):
        await joining.join(stack.broker_url, topics, "epj_nope_nope", "rogue-1")
    expired = (await http.post("/join-tokens", json={"ttl_s": 1e-9})).json()
    with pytest.raises(Invalid, match="expired"):
        await joining.join(stack.broker_url, topics, expired["token"], "rogue-1")
    revoked = (await http.post("/join-tokens", json={})).json()
    assert (await http.delete(f"/join-tokens/{revoked['id']}")).status_code == 204
    with pytest.raises(Invalid):
        await joining.join(stack.broker_url, topics, revoked["token"], "rogue-1")
    assert stack.control.joins is not None and stack.control.joins.stats.refused == 3
    assert stack.control.joins.stats.joined == 0
    log = (await http.get("/audit", params={"action": "worker.join_refused"})).json()["items"]
    assert [r["actor"] for r in log] == ["anonymous"] * 3
    assert "expired" in log[1]["detail"]
    assert not any(secret in str(log) for secret in (expired["token"], revoked["token"]))


async def test_anonymous_client_cannot_act_as_a_worker(
    secured: tuple[Stack, httpx.AsyncClient, BrokerAuth], tmp_path: Path
) -> None:
    """The attack of the issue: an anonymous worker's ``hello`` was listed online and got
    tasks. Here a real worker without an identity says hello and beats; none of it passes."""
    stack, http, auth = secured
    url, topics = stack.broker_url, auth.topics
    watcher = await started(Probe(url, "watcher", ["#"], auth.manager))
    rogue = build_worker(
        stack.control.settings, broker_url=url, worker_id="rogue-1", data_dir=tmp_path / "r"
    )
    await rogue.start()  # returns once connected and its hello is queued
    try:
        barrier = topics.join(rogue.link.client_id)  # the one topic it may write
        await rogue.link.publish(barrier, b"{}")
        seen = await watcher.until(barrier)
        assert topics.hello("rogue-1") not in seen, seen
        assert [w.id for w in stack.control.manager.workers()] == []
        assert not rogue.registered.is_set()
        created = await http.post(
            "/tasks", json={"name": "add", "file": ADD, "inputs": [2, 3], "start": True}
        )
        assert (await http.get(f"/tasks/{created.json()['id']}")).json()["state"] == "pending"
    finally:
        await rogue.stop()
        await watcher.link.stop()


async def test_worker_reads_only_its_own_commands_and_writes_only_its_leaves(
    secured: tuple[Stack, httpx.AsyncClient, BrokerAuth],
) -> None:
    stack, _, auth = secured
    url, topics = stack.broker_url, auth.topics
    a, b = auth.add_member("a"), auth.add_member("b")
    watcher = await started(Probe(url, "watcher", ["#"], auth.manager))
    spy = await started(
        Probe(url, "a-spy", [topics.cmd("b"), topics.welcome("b"), topics.cmd("a")], a)
    )
    try:
        # A cannot read B's commands.
        manager = watcher.link
        await manager.publish(topics.cmd("b"), b"for b")
        await manager.publish(topics.welcome("b"), b"for b")
        await manager.publish(topics.cmd("a"), b"for a")
        assert await spy.until(topics.cmd("a")) == [topics.cmd("a")]
        # A cannot publish B's events, alive or hello, nor any command, nor a join answer.
        forged_end = TaskEvents(events=[TaskEvent(task_id="t", attempt=1, state="completed")])
        forged = {
            topics.events("b"): encode("task.events", forged_end),
            topics.alive("b"): encode("alive", Alive(online=False, session="s")),
            topics.hello("b"): b'{"v":1,"type":"hello","body":{}}',
            topics.cmd("b"): encode("task.start", StartTasks(tasks=[])),
            topics.cmd("a"): encode("task.start", StartTasks(tasks=[])),
            topics.join_answer("x"): b"{}",
        }
        await watcher.until(topics.cmd("a"))  # the manager's own publishes, above
        before = len(watcher.got)
        for topic, payload in forged.items():
            await spy.link.publish(topic, payload)
        await spy.link.publish(topics.metrics("a"), b"{}")  # its own leaf: the barrier
        seen = (await watcher.until(topics.metrics("a")))[before:]
        # The manager's liveness probe to itself (membership.py) may pass meanwhile.
        seen = [topic for topic in seen if topic != topics.probe]
        assert seen == [topics.metrics("a")], seen
        assert b.username == "b"  # B's identity exists: the refusals are the ACL's
    finally:
        await spy.link.stop()
        await watcher.link.stop()


async def test_unsigned_or_badly_signed_commands_are_refused_and_counted(
    secured: tuple[Stack, httpx.AsyncClient, BrokerAuth], tmp_path: Path
) -> None:
    """A broker that let a stranger publish on a worker's ``cmd`` (simulated with the
    manager's own broker identity) still cannot make the worker run anything."""
    stack, http, auth = secured
    worker = await join_worker(stack, http, tmp_path, "w1")
    watcher = await started(Probe(stack.broker_url, "intruder", [], auth.manager))
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
        await watcher.link.publish(auth.topics.cmd("w1"), message)  # no MAC
        await watcher.link.publish(auth.topics.cmd("w1"), sign(b"k" * 32, message))  # wrong key
        await until(lambda: answer(worker.stats.unsigned >= 2))
        assert worker.stats.started == 0 and not marker.exists()
        # The manager's own, signed commands still run.
        done = await http.post(
            "/tasks", json={"name": "add", "file": ADD, "inputs": [1, 2], "start": True}
        )
        task = (await http.get(f"/tasks/{done.json()['id']}", params={"wait": WAIT_S})).json()
        assert task["results"] == [3], task
        assert worker.stats.unsigned == 2
    finally:
        await watcher.link.stop()
        await worker.stop()


async def test_events_about_another_workers_task_are_refused_and_counted(
    secured: tuple[Stack, httpx.AsyncClient, BrokerAuth], tmp_path: Path
) -> None:
    """A worker may publish on its own ``events`` leaf only, and what it says there about
    a task another worker holds is refused (the issue's forged completion)."""
    stack, http, auth = secured
    worker = await join_worker(stack, http, tmp_path, "holder")
    forger = await started(Probe(stack.broker_url, "forger", [], auth.add_member("forger")))
    try:
        created = await http.post(
            "/tasks", json={"runtime": "host", "command": ["sleep", "60"], "start": True}
        )
        assert created.status_code == 201, created.text
        task_id = created.json()["id"]

        async def running() -> bool:
            return bool((await http.get(f"/tasks/{task_id}")).json()["state"] == "running")

        await until(running)
        attempt = (await http.get(f"/tasks/{task_id}")).json()["attempt"]
        forged = TaskEvent(task_id=task_id, attempt=attempt, state="completed", results=[666])
        payload = encode("task.events", TaskEvents(events=[forged]))
        await forger.link.publish(auth.topics.events("forger"), payload)
        manager = stack.control.manager
        await until(lambda: answer(manager.stats.foreign_events >= 1))
        task = (await http.get(f"/tasks/{task_id}")).json()
        assert task["state"] == "running" and task["worker_id"] == "holder"
        await http.post(f"/tasks/{task_id}/stop")
    finally:
        await forger.link.stop()
        await worker.stop()


async def refused(url: str, credentials: Credentials) -> bool:
    """Whether the broker refuses a new connection with ``credentials``."""
    address = parse_broker_url(url)
    try:
        async with aiomqtt.Client(
            address.host,
            address.port,
            username=credentials.username,
            password=credentials.password,
            identifier="check",
        ):
            return False
    except aiomqtt.MqttError:
        return True


@pytest.mark.parametrize("how", ["worker", "token"])
async def test_revoked_worker_is_cut_off_at_once(
    secured: tuple[Stack, httpx.AsyncClient, BrokerAuth], tmp_path: Path, how: str
) -> None:
    stack, http, auth = secured
    created = (await http.post("/join-tokens", json={"worker_id": "doomed"})).json()
    identity = await joining.join(stack.broker_url, auth.topics, created["token"], "doomed")
    worker = build_worker(
        stack.control.settings,
        broker_url=stack.broker_url,
        worker_id="doomed",
        data_dir=tmp_path / "doomed",
        identity=identity,
    )
    await worker.start()
    try:
        await asyncio.wait_for(worker.registered.wait(), WAIT_S)
        credentials = Credentials(identity.username, identity.password, identity.mac_key)
        assert not await refused(stack.broker_url, credentials)
        path = "/workers/doomed" if how == "worker" else f"/join-tokens/{created['id']}"
        assert (await http.delete(path)).status_code == 204
        # disconnected by the broker's reload
        await until(lambda: answer(not worker.link.connected.is_set()))
        assert await refused(stack.broker_url, credentials)
        assert not auth.has_member("doomed")
    finally:
        await worker.stop()
    # the audit log: who made the token, the worker joining with it, who cut it off
    log = (await http.get("/audit", params={"resource": "worker/doomed"})).json()["items"]
    changes = [(r["action"], r["actor"], r["detail"]) for r in log if r["status"] is None]
    why = None if how == "worker" else f"join token {created['id']} deleted"
    assert changes == [
        ("worker.revoked", "admin", why),
        ("worker.joined", "system", f"join token {created['id']}"),
    ]
    made = (await http.get("/audit", params={"action": "join_token.created"})).json()["items"]
    assert [(r["resource_id"], r["actor"]) for r in made] == [(created["id"], "admin")]
    deleted = (await http.get("/audit", params={"action": "join_token.deleted"})).json()
    expected = [] if how == "worker" else [(created["id"], "admin")]
    assert [(r["resource_id"], r["actor"]) for r in deleted["items"]] == expected
    assert created["token"] not in str(log)


async def test_join_tokens_need_a_broker_edgeplane_started(
    tmp_path: Path, fast_broker_url: str, unique_domain: str
) -> None:
    """On an external broker (the shared anonymous one) edgeplane manages no identities:
    tasks still run (other suites), and join tokens are refused with 409."""
    settings = Settings(
        data_dir=tmp_path,
        broker=fast_broker_url,
        store="memory://",
        port=0,
        workers=0,
        domain=unique_domain,
        admin_token=TOKEN,
    )
    async with (
        running_stack(settings) as stack,
        httpx.AsyncClient(
            base_url=stack.control.url + "/api/v1", headers={"Authorization": f"Bearer {TOKEN}"}
        ) as http,
    ):
        assert stack.control.auth is None
        answer = await http.post("/join-tokens", json={})
        assert answer.status_code == 409, answer.text
        assert answer.headers["content-type"].startswith("application/problem+json")


async def test_a_join_tokens_owner_owns_the_worker_that_joins_with_it(
    secured: tuple[Stack, httpx.AsyncClient, BrokerAuth], tmp_path: Path
) -> None:
    stack, http, auth = secured
    password = "correct horse battery"
    for name in ("ann", "bob"):
        made = await http.post(
            "/users", json={"username": name, "password": password, "role": "viewer"}
        )
        assert made.status_code == 201, made.text
    ghost = await http.post("/join-tokens", json={"owner": "ghost"})
    assert ghost.status_code == 404 and ghost.json()["field"] == "owner", ghost.text
    both = await http.post("/join-tokens", json={"ttl_s": 60, "expires_in_s": 60})
    assert both.status_code == 422 and both.json()["field"] == "ttl_s", both.text
    for name in ("ttl_s", "expires_in_s"):  # one field, two names
        made = (await http.post("/join-tokens", json={name: 60})).json()
        assert made["id"] and made["token"], made
        assert made["expires_at"] == pytest.approx(made["created_at"] + 60)
        assert (await http.delete(f"/join-tokens/{made['id']}")).status_code == 204
    hers = await join_worker(stack, http, tmp_path, "edge-ann", owner="ann", expires_in_s=60)
    plain = await join_worker(stack, http, tmp_path, "edge-none", expires_in_s=60)
    try:
        shown = {t["worker_id"]: t["owner"] for t in (await http.get("/join-tokens")).json()}
        assert shown == {"edge-ann": "ann", "edge-none": None}
        worker = (await http.get("/workers/edge-ann")).json()
        assert worker["owner"] == "ann", worker
        assert (await http.get("/workers/edge-none")).json()["owner"] is None

        async def bearer(name: str) -> dict[str, str]:
            login = {"username": name, "password": password}
            pair = await http.post("/auth/login", json=login)
            assert pair.status_code == 200, pair.text
            assert pair.json()["token_type"] == "bearer" and pair.json()["expires_in"] > 0
            return {"Authorization": f"Bearer {pair.json()['access_token']}"}

        ann, bob = await bearer("ann"), await bearer("bob")
        assert (await http.post("/workers/edge-ann/drain", headers=bob)).status_code == 403
        assert (await http.post("/workers/edge-none/drain", headers=ann)).status_code == 403
        drained = await http.post("/workers/edge-ann/drain", headers=ann)
        assert drained.status_code == 200 and drained.json()["state"] == "draining"
        # her delete revokes the identity too, as an admin's does
        assert (await http.delete("/workers/edge-ann", headers=ann)).status_code == 204
        await until(lambda: answer(not hers.link.connected.is_set()))
        assert not auth.has_member("edge-ann") and auth.has_member("edge-none")
    finally:
        await hers.stop()
        await plain.stop()


async def test_a_manager_has_no_clusters_to_join_or_delete(
    secured: tuple[Stack, httpx.AsyncClient, BrokerAuth],
) -> None:
    """``cluster_id`` tokens and ``DELETE /clusters`` are a root's (test_root_security.py)."""
    _, http, auth = secured
    wrong = await http.post("/join-tokens", json={"cluster_id": "c"})
    assert wrong.status_code == 422 and "worker_id" in wrong.text, wrong.text
    assert auth.tokens() == []
    gone = await http.delete("/clusters/local")
    assert gone.status_code == 409, gone.text
