"""The spine end to end in one process: REST → manager → MQTT → workers → results.

Runs the real stack (`running_stack`, what `edgeplane up` runs) against a real Mosquitto
(nodelay instance started by the fixture) and the embedded broker, with SQLite and
PostgreSQL stores.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

import wasm_fixtures
from edgeplane.errors import Conflict
from edgeplane.model import Task, TaskSpec
from edgeplane.protocol import Assignment, StartTasks, encode
from edgeplane.roles.up import Stack
from edgeplane.roles.worker import build_worker
from edgeplane.worker import WorkerAgent
from stack_fixtures import start_stack


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


ADD = b64(wasm_fixtures.add_wasm())


@pytest.fixture
async def sqlite_stack(
    tmp_path: Path, fast_broker_url: str, unique_domain: str
) -> AsyncIterator[tuple[Stack, httpx.AsyncClient]]:
    async for pair in start_stack(
        tmp_path, fast_broker_url, f"sqlite:///{tmp_path / 'db.sqlite'}", unique_domain
    ):
        yield pair


@contextlib.asynccontextmanager
async def joined(stack: Stack, tmp_path: Path, site: str, **settings: Any) -> AsyncIterator[None]:
    """One more worker, ``{site}-1`` labelled ``site={site}``, in the stack's cluster."""
    worker = build_worker(
        stack.control.settings.model_copy(update=settings),
        broker_url=stack.broker_url,
        worker_id=f"{site}-1",
        data_dir=tmp_path / site,
        labels={"site": site},
    )
    await worker.start()
    try:
        await asyncio.wait_for(worker.registered.wait(), 20)  # the manager knows it
        yield
    finally:
        await worker.stop()


async def run(http: httpx.AsyncClient, body: dict[str, Any], wait: float = 20) -> dict[str, Any]:
    created = await http.post("/tasks", json={"start": True, **body})
    assert created.status_code == 201, created.text
    task_id = created.json()["id"]
    done = await http.get(f"/tasks/{task_id}", params={"wait": wait})
    assert done.status_code == 200
    result: dict[str, Any] = done.json()
    return result


async def test_wasm_function_task(sqlite_stack: tuple[Stack, httpx.AsyncClient]) -> None:
    _, http = sqlite_stack
    task = await run(http, {"name": "add", "file": ADD, "inputs": [2, 3]})
    assert task["state"] == "completed", task
    assert task["results"] == [5]
    assert task["attempt"] == 1
    assert task["worker_id"].startswith("local-")
    results = (await http.get(f"/tasks/{task['id']}/results")).json()
    assert results["results"] == [5]


async def test_run_and_result_in_one_request(
    sqlite_stack: tuple[Stack, httpx.AsyncClient],
) -> None:
    _, http = sqlite_stack
    body = {"name": "add", "file": ADD, "inputs": [2, 3], "start": True}
    done = await http.post("/tasks", json=body, params={"wait": 20})
    assert done.status_code == 201, done.text
    assert (done.json()["state"], done.json()["results"]) == ("completed", [5])
    # a task that does not end in time comes back as it is
    sleeper = {"name": "sleep", "runtime": "host", "command": ["sleep", "5"], "start": True}
    running = await http.post("/tasks", json=sleeper, params={"wait": 0.2})
    assert running.status_code == 201, running.text
    assert running.json()["state"] in ("scheduled", "running")
    await http.post(f"/tasks/{running.json()['id']}/stop")
    # a schedule has no result to wait for
    cron = await http.post("/tasks", json={**body, "schedule": "* * * * *"}, params={"wait": 1})
    assert (cron.status_code, cron.json()["field"]) == (422, "wait")


async def test_a_task_placed_before_its_insert_failed_holds_no_slot(
    sqlite_stack: tuple[Stack, httpx.AsyncClient],
) -> None:
    """``submit`` places new tasks before storing them when nothing waits; a refused
    insert (here: ids already taken) must leave the tasks that own them alone and give
    the reservations back."""
    stack, http = sqlite_stack
    manager = stack.control.manager
    spec = TaskSpec(name="add", file=ADD, inputs=[2, 3], start=True)
    (first,) = await manager.submit([spec], ids=["live-id"])
    assert first.state == "scheduled"  # placed at once and stored that way
    with pytest.raises(Conflict):  # a task the manager tracks
        await manager.submit([spec], ids=["live-id"])
    # a row the manager does not hold in memory: placed, then refused by the store
    await manager.store.add_tasks([Task(id="stored-id", name="old", state="completed")])
    with pytest.raises(Conflict):
        await manager.submit([spec], ids=["stored-id"])
    done = await http.get("/tasks/live-id", params={"wait": 20})
    assert (done.json()["state"], done.json()["results"]) == ("completed", [5])
    assert (await http.get("/tasks/stored-id")).json()["name"] == "old"
    entries = manager.registry.entries()
    assert sum(len(entry.tasks) for entry in entries) == 0


async def test_wasi_and_host_tasks(sqlite_stack: tuple[Stack, httpx.AsyncClient]) -> None:
    _, http = sqlite_stack
    wasi = await run(
        http,
        {
            "name": "hello",
            "mode": "wasi",
            "file": b64(wasm_fixtures.wasi_hello_wasm()),
            "cli_args": ["a"],
            "env": {"WHO": "x"},
        },
    )
    assert wasi["state"] in ("completed", "failed"), wasi
    assert "exit_code" in wasi["results"]
    host = await run(
        http, {"name": "echo", "runtime": "host", "command": ["sh", "-c", "echo hi; echo e >&2"]}
    )
    assert host["state"] == "completed", host
    assert host["results"]["stdout"] == "hi\n"
    logs = (await http.get(f"/tasks/{host['id']}/logs")).json()
    assert logs["stderr"] == "e\n"


async def test_batch_runs_every_task_once(sqlite_stack: tuple[Stack, httpx.AsyncClient]) -> None:
    stack, http = sqlite_stack
    body = {
        "tasks": [{"name": "add", "file": ADD, "inputs": [i, i], "start": True} for i in range(200)]
    }
    created = await http.post("/tasks/batch", json=body)
    assert created.status_code == 201, created.text
    items = created.json()["items"]
    assert [t["inputs"] for t in items] == [[i, i] for i in range(200)]
    finished = await asyncio.gather(
        *(http.get(f"/tasks/{t['id']}", params={"wait": 30}) for t in items)
    )
    assert [r.json()["results"] for r in finished] == [[2 * i] for i in range(200)]
    assert {r.json()["attempt"] for r in finished} == {1}
    page = (await http.get("/tasks", params={"state": "completed", "limit": 10})).json()
    assert page["total"] == 200 and len(page["items"]) == 10
    assert sum(w.stats.started for w in stack.workers) == 200
    assert {w.id for w in stack.workers if w.stats.started} == {"local-1", "local-2"}
    async with httpx.AsyncClient(base_url=stack.control.url) as anonymous:
        metrics = (await anonymous.get("/metrics")).text
    assert 'edgeplane_tasks_finished_total{state="completed"} 200.0' in metrics


async def test_commands_reach_a_worker_in_seq_order(
    sqlite_stack: tuple[Stack, httpx.AsyncClient], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A task placed by its own request (A) whose insert is slow, and one placed after it
    (B). The worker reports the highest seq it has seen; had B's command gone out first
    with a higher seq than A's, the heartbeats after B would make the manager take A
    (still on its way) for lost, and A would run twice. The journal's one writer keeps B
    behind A's insert, so their commands leave in order."""
    stack, http = sqlite_stack
    manager = stack.control.manager
    apply = manager.store.apply
    release, holding = asyncio.Event(), asyncio.Event()

    async def slow_first_insert(batch: Any) -> None:
        if batch.new_tasks and not holding.is_set():
            holding.set()
            await release.wait()
        await apply(batch)

    monkeypatch.setattr(manager.store, "apply", slow_first_insert)
    body = {"name": "add", "file": ADD, "inputs": [1, 1], "start": True, "worker_id": "local-1"}
    first = asyncio.create_task(http.post("/tasks", json=body, params={"wait": 30}))
    await asyncio.wait_for(holding.wait(), 10)
    second = asyncio.create_task(
        http.post("/tasks", json={**body, "inputs": [2, 2]}, params={"wait": 30})
    )
    while manager.journal.stats.rounds < 1 or not manager.journal._queue:  # noqa: ASYNC110
        await asyncio.sleep(0.01)  # B is queued behind A's insert (no event tells)
    release.set()
    done, later = (await first).json(), (await second).json()
    assert (done["state"], done["attempt"], done["results"]) == ("completed", 1, [2])
    assert (later["state"], later["attempt"], later["results"]) == ("completed", 1, [4])
    assert sum(w.stats.started for w in stack.workers) == 2


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"name": "add", "file": "%%%not-base64", "inputs": [1, 2]}, "file"),
        ({"name": "add", "runtime": "quantum", "file": ADD}, "runtime"),
        ({"name": "add", "file": b64(b"\0asm garbage")}, "file"),
        ({"name": "nope", "file": ADD, "inputs": [1, 2]}, "name"),
        ({"name": "add", "file": ADD, "inputs": [1]}, "inputs"),
        ({"name": "add", "file": ADD, "inputs": ["x", 2]}, "inputs"),
        (
            {"name": "add", "file": ADD, "inputs": [1, 2], "limits": {"timeout_s": -1}},
            "limits.timeout_s",
        ),
        ({"name": "add", "file": ADD, "inputs": [1, 2], "priority": 101}, "priority"),
        ({"name": "sh", "runtime": "host"}, "command"),
    ],
)
async def test_bad_tasks_are_rejected_and_not_stored(
    sqlite_stack: tuple[Stack, httpx.AsyncClient], body: dict[str, Any], field: str
) -> None:
    _, http = sqlite_stack
    response = await http.post("/tasks", json=body)
    assert response.status_code == 422, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    problem = response.json()
    assert problem["field"] == field
    assert {"type", "title", "status", "detail"} <= set(problem)
    assert (await http.get("/tasks")).json()["total"] == 0


async def test_bad_batch_stores_nothing(sqlite_stack: tuple[Stack, httpx.AsyncClient]) -> None:
    _, http = sqlite_stack
    good = {"name": "add", "file": ADD, "inputs": [1, 2]}
    response = await http.post("/tasks/batch", json={"tasks": [good, {**good, "inputs": [1]}]})
    assert response.status_code == 422
    assert response.json()["field"] == "tasks[1].inputs"
    assert (await http.get("/tasks")).json()["total"] == 0


async def test_auth_and_not_found(sqlite_stack: tuple[Stack, httpx.AsyncClient]) -> None:
    stack, http = sqlite_stack
    async with httpx.AsyncClient(base_url=stack.control.url) as anonymous:
        assert (await anonymous.get("/api/v1/tasks")).status_code == 401
        wrong = await anonymous.get("/api/v1/tasks", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401
        assert wrong.headers["content-type"].startswith("application/problem+json")
        assert (await anonymous.get("/healthz")).json()["status"] == "ok"
        assert "edgeplane_tasks_dispatched" in (await anonymous.get("/metrics")).text
    missing = await http.get("/tasks/does-not-exist")
    assert missing.status_code == 404
    assert missing.json()["status"] == 404
    assert (await http.get("/workers/nobody")).status_code == 404
    oversize = await http.post("/tasks", content=b"x" * (65 * 2**20))
    assert oversize.status_code == 413


async def test_pending_until_a_fitting_worker_joins(
    sqlite_stack: tuple[Stack, httpx.AsyncClient], tmp_path: Path
) -> None:
    stack, http = sqlite_stack
    created = await http.post(
        "/tasks",
        json={
            "name": "add",
            "file": ADD,
            "inputs": [1, 1],
            "start": True,
            "constraints": {"labels": {"site": "far"}},
        },
    )
    task_id = created.json()["id"]
    waiting = (await http.get(f"/tasks/{task_id}", params={"wait": 0.5})).json()
    assert waiting["state"] == "pending"
    assert "site=far" in waiting["reason"]
    async with joined(stack, tmp_path, "far"):
        done = (await http.get(f"/tasks/{task_id}", params={"wait": 20})).json()
        assert done["state"] == "completed"
        assert done["worker_id"] == "far-1"


async def test_a_worker_queues_its_prefetch_and_runs_its_slots(
    sqlite_stack: tuple[Stack, httpx.AsyncClient], tmp_path: Path
) -> None:
    """One slot, prefetch 3: the manager sends it three tasks at once; they run one after
    the other, and one stopped while it waits ends without ever starting."""
    stack, http = sqlite_stack
    async with joined(stack, tmp_path, "queue", slots=1, prefetch=3):
        body = {
            "runtime": "host",
            "command": ["sleep", "0.3"],
            "start": True,
            "constraints": {"labels": {"site": "queue"}},
        }
        created = (await http.post("/tasks/batch", json={"tasks": [body] * 4})).json()
        ids = [t["id"] for t in created["items"]]
        # three fit (1 slot x 3) and are placed at once, the fourth waits at the manager
        assert [t["worker_id"] for t in created["items"]] == ["queue-1"] * 3 + [None]
        stopped = await http.post(f"/tasks/{ids[2]}/stop")
        assert stopped.status_code == 200
        done = [(await http.get(f"/tasks/{i}", params={"wait": 20})).json() for i in ids]
        assert [t["state"] for t in done] == ["completed", "completed", "cancelled", "completed"]
        assert done[2]["started_at"] is None  # never started
        # one slot: each `sleep 0.3` starts only once the one before it ended
        starts = sorted(t["started_at"] for t in done if t["started_at"])
        assert all(b - a > 0.25 for a, b in itertools.pairwise(starts))


async def test_stop_a_running_host_task(sqlite_stack: tuple[Stack, httpx.AsyncClient]) -> None:
    _, http = sqlite_stack
    created = await http.post(
        "/tasks",
        json={"name": "sleep", "runtime": "host", "command": ["sleep", "30"], "start": True},
    )
    task_id = created.json()["id"]
    for _ in range(100):
        if (await http.get(f"/tasks/{task_id}")).json()["state"] == "running":
            break
        await asyncio.sleep(0.05)
    stopped = await http.post(f"/tasks/{task_id}/stop")
    assert stopped.json()["state"] == "cancelled"
    again = await http.post(f"/tasks/{task_id}/stop")
    assert again.json()["state"] == "cancelled"


async def test_create_patch_start_delete(sqlite_stack: tuple[Stack, httpx.AsyncClient]) -> None:
    _, http = sqlite_stack
    created = (
        await http.post("/tasks", json={"name": "add", "file": ADD, "inputs": [1, 1]})
    ).json()
    assert created["state"] == "pending" and created["started"] is False
    patched = await http.patch(f"/tasks/{created['id']}", json={"inputs": [20, 22]})
    assert patched.json()["inputs"] == [20, 22]
    await http.post(f"/tasks/{created['id']}/start")
    done = (await http.get(f"/tasks/{created['id']}", params={"wait": 20})).json()
    assert done["results"] == [42]
    conflict = await http.patch(f"/tasks/{created['id']}", json={"inputs": [1, 1]})
    assert conflict.status_code == 409
    assert (await http.delete(f"/tasks/{created['id']}")).status_code == 204
    assert (await http.get(f"/tasks/{created['id']}")).status_code == 404


async def test_failed_task_reports_the_reason(
    sqlite_stack: tuple[Stack, httpx.AsyncClient],
) -> None:
    _, http = sqlite_stack
    trap = await run(http, {"name": "trap", "file": b64(wasm_fixtures.trap_wasm())})
    assert trap["state"] == "failed"
    assert "unreachable" in trap["error"]
    spin = await run(
        http, {"name": "spin", "file": b64(wasm_fixtures.spin_wasm()), "limits": {"timeout_s": 0.3}}
    )
    assert spin["state"] == "failed"
    assert "timeout" in spin["error"]


async def test_workers_listed_and_drained(sqlite_stack: tuple[Stack, httpx.AsyncClient]) -> None:
    _, http = sqlite_stack
    page = (await http.get("/workers")).json()
    assert page["total"] == 2
    worker = page["items"][0]
    assert worker["state"] == "online"
    assert "wasm" in worker["capabilities"]["runtimes"]
    assert worker["capabilities"]["cpus"] >= 1
    drained = (await http.post(f"/workers/{worker['id']}/drain")).json()
    assert drained["state"] == "draining"
    for i in range(4):
        task = await run(http, {"name": "add", "file": ADD, "inputs": [i, 1]})
        assert task["worker_id"] != worker["id"]
    undrained = (await http.post(f"/workers/{worker['id']}/undrain")).json()
    assert undrained["state"] == "online"
    assert (await http.get(f"/workers/{worker['id']}")).json()["state"] == "online"


@pytest.mark.parametrize("backend", ["postgres", "system-mosquitto", "embedded-broker"])
async def test_other_backends(
    tmp_path: Path,
    backend: str,
    fast_broker_url: str,
    mosquitto_url: str,
    unique_domain: str,
    postgres_url: str,
) -> None:
    """PostgreSQL store; the machine's stock Mosquitto on 1883; the broker `up` embeds."""
    sqlite = f"sqlite:///{tmp_path / 'db.sqlite'}"
    broker, store = {
        "postgres": (fast_broker_url, postgres_url),
        "system-mosquitto": (mosquitto_url, sqlite),
        "embedded-broker": ("", sqlite),
    }[backend]
    async for stack, http in start_stack(tmp_path, broker, store, unique_domain):
        task = await run(http, {"name": "add", "file": ADD, "inputs": [40, 2]})
        assert task["results"] == [42]
        assert stack.broker_url.startswith("mqtt://")


async def test_bad_mqtt_messages_are_counted_not_fatal(
    sqlite_stack: tuple[Stack, httpx.AsyncClient], unique_domain: str
) -> None:
    stack, http = sqlite_stack
    manager = stack.control.manager
    worker = stack.workers[0]
    topics = manager.topics
    garbage = [
        (topics.events("local-1"), b"not json"),
        (topics.alive("local-1"), b'{"v": 9, "type": "alive", "body": {}}'),
        (topics.hello("local-1"), b'{"v": 1, "type": "hello", "body": {"worker_id": 3}}'),
        (topics.events("local-1"), b'{"v": 1, "type": "teleport", "body": {}}'),
        (topics.cmd("local-1"), b"\xff\xfe"),
        # (as from the leader: a command of an older term would be refused before reading)
        (
            topics.cmd("local-1"),
            b'{"v": 1, "type": "task.start", "term": %d, "body": {"tasks": [{}]}}' % manager.term,
        ),
    ]
    for topic, payload in garbage:
        await manager.link.publish(topic, payload)
    await manager.link.flush()
    for _ in range(100):
        if manager.stats.bad_messages >= 4 and worker.stats.bad_messages >= 2:
            break
        await asyncio.sleep(0.05)
    assert manager.stats.bad_messages >= 4
    assert worker.stats.bad_messages >= 2
    task = await run(http, {"name": "add", "file": ADD, "inputs": [1, 2]})
    assert task["results"] == [3]


async def sent_by_hand(
    stack: Stack, http: httpx.AsyncClient, make: Callable[[str], StartTasks]
) -> WorkerAgent:
    """Run a task, then send its worker ``make(task id)`` as the manager would: the
    worker, whose attempts started must not have changed by it."""
    task = await run(http, {"name": "add", "file": ADD, "inputs": [2, 2]})
    worker = next(w for w in stack.workers if w.id == task["worker_id"])
    started = worker.stats.started
    payload = encode("task.start", make(task["id"]), term=stack.control.manager.term)
    await stack.control.manager.link.publish(worker.topics.cmd(worker.id), payload)
    await stack.control.manager.link.flush()
    for _ in range(40):
        if worker.stats.duplicates or worker.stats.foreign_commands:
            break
        await asyncio.sleep(0.05)
    assert worker.stats.started == started
    return worker


async def test_a_redelivered_start_runs_once(sqlite_stack: tuple[Stack, httpx.AsyncClient]) -> None:
    def again(task_id: str) -> StartTasks:
        return StartTasks(
            tasks=[Assignment(task_id=task_id, attempt=1, runtime="wasm", entrypoint="add")]
        )

    worker = await sent_by_hand(*sqlite_stack, again)
    assert worker.stats.duplicates == 1


async def test_a_start_for_another_session_of_the_worker_id_is_left_alone_and_counted(
    sqlite_stack: tuple[Stack, httpx.AsyncClient],
) -> None:
    """What a restarted worker's older process would have been sent: not this one's."""

    def other(_: str) -> StartTasks:
        return StartTasks(
            session="an-older-process",
            tasks=[Assignment(task_id="t-foreign", attempt=1, runtime="wasm", entrypoint="add")],
        )

    worker = await sent_by_hand(*sqlite_stack, other)
    assert (worker.stats.foreign_commands, worker.stats.duplicates) == (1, 0)


async def test_host_tasks_need_allow_host(
    tmp_path: Path, fast_broker_url: str, unique_domain: str
) -> None:
    sqlite = f"sqlite:///{tmp_path / 'db.sqlite'}"
    async for stack, http in start_stack(
        tmp_path, fast_broker_url, sqlite, unique_domain, allow_host=False
    ):
        assert all("host" not in w.runtimes for w in stack.workers)
        created = await http.post(
            "/tasks", json={"name": "sh", "runtime": "host", "command": ["true"], "start": True}
        )
        task = (await http.get(f"/tasks/{created.json()['id']}", params={"wait": 0.5})).json()
        assert task["state"] == "pending"
        assert task["reason"] == "no worker offers runtime 'host'"
