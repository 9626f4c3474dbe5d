"""Jobs, workflows and schedules through the REST API on a real stack (MQTT, SQLite)."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import wasmtime

import wasm_fixtures
from edgeplane.errors import Unavailable
from edgeplane.examples import EXAMPLES
from edgeplane.roles.up import Stack
from stack_fixtures import start_stack

MATH = base64.b64encode(wasmtime.wat2wasm(EXAMPLES["add.wasm"])).decode()
TRAP = base64.b64encode(wasm_fixtures.trap_wasm()).decode()


def add(name: str, *inputs: int, **extra: Any) -> dict[str, Any]:
    return {"name": name, "export": "add", "file": MATH, "inputs": list(inputs), **extra}


def trap(name: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "export": "trap", "file": TRAP, **extra}


@pytest.fixture
async def stack(
    tmp_path: Path, fast_broker_url: str, unique_domain: str
) -> AsyncIterator[tuple[Stack, httpx.AsyncClient]]:
    sqlite = f"sqlite:///{tmp_path / 'db.sqlite'}"
    async for pair in start_stack(tmp_path, fast_broker_url, sqlite, unique_domain):
        yield pair


async def finished(http: httpx.AsyncClient, path: str, body: dict[str, Any]) -> dict[str, Any]:
    created = await http.post(path, json=body)
    assert created.status_code == 201, created.text
    run_id = created.json()["id"]
    done: dict[str, Any] = (await http.get(f"{path}/{run_id}", params={"wait": 30})).json()
    return done


def states(run: dict[str, Any]) -> dict[str, str]:
    return {t["name"]: t["state"] for t in run["tasks"]}


async def test_sequential_job_stops_at_the_first_failure(
    stack: tuple[Stack, httpx.AsyncClient],
) -> None:
    _, http = stack
    job = await finished(
        http,
        "/jobs",
        {"name": "seq", "mode": "sequential", "tasks": [add("a", 1, 1), trap("b"), add("c", 2, 2)]},
    )
    assert job["state"] == "failed"
    assert states(job) == {"a": "completed", "b": "failed", "c": "skipped"}
    listed = (await http.get("/jobs")).json()
    assert listed["total"] == 1 and listed["items"][0]["id"] == job["id"]
    tasks = (await http.get("/tasks", params={"job_id": job["id"]})).json()
    assert tasks["total"] == 3


async def test_parallel_job_runs_everything(stack: tuple[Stack, httpx.AsyncClient]) -> None:
    _, http = stack
    job = await finished(
        http, "/jobs", {"mode": "parallel", "tasks": [add(f"t{i}", i, i) for i in range(6)]}
    )
    assert job["state"] == "completed"
    assert sorted(t["results"][0] for t in job["tasks"]) == [0, 2, 4, 6, 8, 10]


async def test_workflow_passes_results_and_follows_run_if(
    stack: tuple[Stack, httpx.AsyncClient],
) -> None:
    _, http = stack
    body = {
        "name": "dag",
        "tasks": [
            add("sum", 2, 3),
            {
                "name": "times",
                "export": "mul",
                "file": MATH,
                "inputs": [10],
                "depends_on": ["sum"],
                "inputs_from": {"task": "sum", "index": 0},
            },
            add("on-failure", 0, 0, depends_on=["times"], run_if="failure"),
            add("after", 1, 0, depends_on=["on-failure"]),
            add("always", 7, 0, depends_on=["times"], run_if="always"),
        ],
    }
    run = await finished(http, "/workflows", body)
    assert run["state"] == "completed", states(run)
    by_name = {t["name"]: t for t in run["tasks"]}
    assert by_name["times"]["results"] == [50]
    assert states(run) == {
        "sum": "completed",
        "times": "completed",
        "on-failure": "skipped",
        "after": "skipped",
        "always": "completed",
    }
    assert by_name["times"]["depends_on"] == [by_name["sum"]["id"]]


async def test_fail_fast_cancels_the_rest(stack: tuple[Stack, httpx.AsyncClient]) -> None:
    _, http = stack
    body = {
        "fail_fast": True,
        "tasks": [
            trap("bad"),
            {"name": "slow", "runtime": "host", "command": ["sleep", "20"]},
            add("later", 1, 1, depends_on=["slow"]),
        ],
    }
    run = await finished(http, "/workflows", body)
    assert run["state"] == "failed"
    assert states(run) == {"bad": "failed", "slow": "cancelled", "later": "cancelled"}


async def test_stop_a_workflow(stack: tuple[Stack, httpx.AsyncClient]) -> None:
    _, http = stack
    body = {
        "tasks": [
            {"name": "slow", "runtime": "host", "command": ["sleep", "20"]},
            add("next", 1, 1, depends_on=["slow"]),
        ]
    }
    created = (await http.post("/workflows", json=body)).json()
    stopped = (await http.post(f"/workflows/{created['id']}/stop")).json()
    assert stopped["state"] == "cancelled"
    assert set(states(stopped).values()) == {"cancelled"}, stopped["tasks"]


@pytest.mark.parametrize(
    ("body", "field", "words"),
    [
        ({"tasks": []}, "tasks", ""),
        (
            {"tasks": [add("a", 1, 1, depends_on=["b"]), add("b", 1, 1, depends_on=["a"])]},
            "tasks",
            "cycle",
        ),
        ({"tasks": [add("a", 1, 1, depends_on=["ghost"])]}, "tasks[0].depends_on", "ghost"),
        ({"tasks": [add("a", 1, 1), add("a", 2, 2)]}, "tasks[1].name", "a"),
        ({"tasks": [add("a", 1, 1, run_if="sometimes")]}, "tasks[0].run_if", ""),
        ({"tasks": [add("a", 1, 1)], "schedule": "61 * * * *"}, "schedule", ""),
        (
            {"tasks": [add("a", 1, 1)], "schedule": "@hourly", "timezone": "Mars/Base"},
            "timezone",
            "",
        ),
    ],
)
async def test_bad_workflows_are_rejected(
    stack: tuple[Stack, httpx.AsyncClient], body: dict[str, Any], field: str, words: str
) -> None:
    _, http = stack
    response = await http.post("/workflows", json=body)
    assert response.status_code == 422, response.text
    problem = response.json()
    assert problem["field"].startswith(field), problem
    assert words in problem["detail"]
    assert (await http.get("/workflows")).json()["total"] == 0
    assert (await http.get("/tasks")).json()["total"] == 0
    assert (await http.get("/schedules")).json()["total"] == 0


async def test_schedules_fire_each_slot_once(stack: tuple[Stack, httpx.AsyncClient]) -> None:
    stack_, http = stack
    created = await http.post(
        "/tasks", json={**add("tick", 1, 2), "schedule": "@hourly", "timezone": "Europe/Berlin"}
    )
    assert created.status_code == 201, created.text
    schedule = created.json()
    assert schedule["cron"] and schedule["next_run"] > 0
    job = await http.post(
        "/jobs", json={"mode": "parallel", "tasks": [add("j", 1, 1)], "schedule": "*/5 * * * *"}
    )
    assert job.status_code == 201 and "cron" in job.json()
    store = stack_.control.manager.store
    runner = stack_.control.schedules
    # Pretend the manager was down over the last slot: move next_run into the past.
    for sid in (schedule["id"], job.json()["id"]):
        stored = await store.get_schedule(sid)
        assert stored is not None
        clock_now = stack_.control.manager.clock.now()
        past = stored.next_run - 3600 * ((stored.next_run - clock_now) // 3600 + 2)
        await store.save_schedule(stored.model_copy(update={"next_run": past}))
    await runner.fire_due()
    await runner.fire_due()  # a second pass (or a second manager) fires nothing more
    fired = (await http.get("/tasks", params={"limit": 100})).json()
    scheduled = [t for t in fired["items"] if t.get("schedule_id") == schedule["id"]]
    assert len(scheduled) == 1
    assert scheduled[0]["id"].startswith(schedule["id"] + ":")
    done = (await http.get(f"/tasks/{scheduled[0]['id']}", params={"wait": 20})).json()
    assert done["results"] == [3]
    jobs = (await http.get("/jobs")).json()
    assert jobs["total"] == 1 and jobs["items"][0]["schedule_id"] == job.json()["id"]
    listed = (await http.get("/schedules")).json()
    assert listed["total"] == 2
    assert {s["runs"] for s in listed["items"]} == {1}
    assert (await http.delete(f"/schedules/{schedule['id']}")).status_code == 204
    assert (await http.delete(f"/schedules/{schedule['id']}")).status_code == 404


async def test_a_slot_due_while_the_store_is_down_fires_once_it_is_back(
    stack: tuple[Stack, httpx.AsyncClient],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The store refusing writes must neither lose a due slot (next_run moved past it) nor
    fire it twice; the API answers 503 meanwhile and /healthz says why."""
    stack_, http = stack
    created = await http.post("/tasks", json={**add("tick", 2, 2), "schedule": "@hourly"})
    schedule_id = created.json()["id"]
    manager = stack_.control.manager
    store = manager.store
    stored = await store.get_schedule(schedule_id)
    assert stored is not None and stored.next_run is not None
    await store.save_schedule(stored.model_copy(update={"next_run": stored.next_run - 7200}))

    async def down(*_: Any, **__: Any) -> None:
        raise Unavailable("store unreachable (test)")

    # The store's connection is cut: every write and ping fails as an unreachable one.
    monkeypatch.setattr(store, "apply", down)
    monkeypatch.setattr(store, "ping", down)
    manager.journal.write(workers=manager.workers()[:1])
    while manager.journal.down is None:  # noqa: ASYNC110 -- the journal has no event for it
        await asyncio.sleep(0.01)
    assert (await http.post("/tasks", json=add("x", 1, 1))).status_code == 503
    health = await http.get(stack_.control.url + "/healthz")
    assert health.status_code == 503 and health.json()["store"] is False
    firing = asyncio.create_task(stack_.control.schedules.fire_due())
    while "a scheduled run waits for the store" not in caplog.text:  # noqa: ASYNC110
        await asyncio.sleep(0.01)  # (the slot's start was refused; its save now waits)
    monkeypatch.undo()
    await firing
    await stack_.control.schedules.fire_due()
    await stack_.control.schedules.fire_due()
    tasks = (await http.get("/tasks", params={"limit": 100})).json()["items"]
    fired = [t for t in tasks if t.get("schedule_id") == schedule_id]
    assert len(fired) == 1, fired
    done = (await http.get(f"/tasks/{fired[0]['id']}", params={"wait": 20})).json()
    assert done["results"] == [4]
    assert (await http.get(stack_.control.url + "/healthz")).status_code == 200


async def test_a_job_whose_task_ends_while_the_store_is_down_completes_after(
    stack: tuple[Stack, httpx.AsyncClient], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The run's state follows the store: nothing sticks, and a waiter wakes once the
    store is back and the end is written."""
    stack_, http = stack
    go = tmp_path / "go"
    waiter = {
        "runtime": "host",
        "command": ["sh", "-c", f"while [ ! -f {go} ]; do sleep 0.02; done"],
    }
    created = await http.post("/jobs", json={"mode": "parallel", "tasks": [waiter]})
    job_id = created.json()["id"]
    manager = stack_.control.manager

    async def running() -> bool:
        job = (await http.get(f"/jobs/{job_id}")).json()
        return bool(job["tasks"][0]["state"] == "running")

    while not await running():  # noqa: ASYNC110 -- polled through the API
        await asyncio.sleep(0.02)

    async def down(*_: Any, **__: Any) -> None:
        raise Unavailable("store unreachable (test)")

    monkeypatch.setattr(manager.store, "apply", down)
    monkeypatch.setattr(manager.store, "ping", down)
    waiting = asyncio.create_task(http.get(f"/jobs/{job_id}", params={"wait": 30}))
    go.touch()  # the task ends: its result cannot be written
    while manager.journal.down is None:  # noqa: ASYNC110 -- the journal has no event for it
        await asyncio.sleep(0.01)
    assert (await http.get(f"/jobs/{job_id}")).json()["state"] == "running"
    assert not waiting.done()
    monkeypatch.undo()
    job = (await waiting).json()
    assert job["state"] == "completed" and job["tasks"][0]["state"] == "completed", job


async def test_daemon_moves_to_another_worker_and_runs_until_stopped(
    stack: tuple[Stack, httpx.AsyncClient],
) -> None:
    stack_, http = stack
    body = {
        "name": "daemon",
        "runtime": "host",
        "command": ["sleep", "300"],
        "daemon": True,
        "retries": -1,
        "start": True,
    }
    task_id = (await http.post("/tasks", json=body)).json()["id"]

    async def running(attempt: int) -> dict[str, Any]:
        for _ in range(200):
            task: dict[str, Any] = (await http.get(f"/tasks/{task_id}")).json()
            if task["state"] == "running" and task["attempt"] == attempt:
                return task
            await asyncio.sleep(0.05)
        raise AssertionError(f"task never running at attempt {attempt}: {task}")

    first = await running(1)
    victim = next(w for w in stack_.workers if w.id == first["worker_id"])
    await victim.stop()
    second = await running(2)
    assert second["worker_id"] != first["worker_id"]
    stopped = (await http.post(f"/tasks/{task_id}/stop")).json()
    assert stopped["state"] == "cancelled"


async def test_max_tasks_per_workflow_is_configured(
    tmp_path: Path, fast_broker_url: str, unique_domain: str
) -> None:
    sqlite = f"sqlite:///{tmp_path / 'db.sqlite'}"
    async for _, http in start_stack(
        tmp_path, fast_broker_url, sqlite, unique_domain, max_workflow_tasks=3
    ):
        body = {"mode": "parallel", "tasks": [add(f"t{i}", i, i) for i in range(4)]}
        response = await http.post("/jobs", json=body)
        assert response.status_code == 422
        assert response.json()["field"] == "tasks"
        assert "3" in response.json()["detail"]
