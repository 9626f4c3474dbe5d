"""Bad input never breaks the core (issue 12, point 8), on a real control plane: each input
that once did, as a regression test. Real stack (store, manager, API over uvicorn, a worker,
Mosquitto), SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import base64
import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

import wasm_fixtures
from edgeplane.limits import MAX_OFFSET
from edgeplane.model import Task
from edgeplane.roles.up import Stack
from edgeplane.store import open_store
from edgeplane.transport import free_port
from faults.procs import Lab
from stack_fixtures import start_stack
from yaml_fixtures import LAUGHS

pytestmark = pytest.mark.timeout(120)

ADD = base64.b64encode(wasm_fixtures.add_wasm()).decode()
LISTS = ["/tasks", "/jobs", "/workflows", "/schedules", "/workers", "/clusters", "/applications"]


def nested(depth: int) -> dict[str, Any]:
    doc: dict[str, Any] = {}
    for _ in range(depth - 1):
        doc = {"a": doc}
    return doc


@pytest.fixture
async def sqlite_stack(
    tmp_path: Path, fast_broker_url: str, unique_domain: str
) -> AsyncIterator[tuple[Stack, httpx.AsyncClient]]:
    store = f"sqlite:///{tmp_path / 'db.sqlite'}"
    async for pair in start_stack(tmp_path, fast_broker_url, store, unique_domain, workers=1):
        yield pair


@pytest.fixture
async def pg_stack(
    tmp_path: Path, fast_broker_url: str, unique_domain: str, postgres_url: str
) -> AsyncIterator[tuple[Stack, httpx.AsyncClient]]:
    async for pair in start_stack(
        tmp_path, fast_broker_url, postgres_url, unique_domain, workers=1
    ):
        yield pair


def problem_of(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    doc: dict[str, Any] = response.json()
    return doc


async def created(http: httpx.AsyncClient, **body: Any) -> dict[str, Any]:
    answer = await http.post("/tasks", json={"name": "add", "file": ADD, "inputs": [2, 3], **body})
    assert answer.status_code == 201, answer.text
    doc: dict[str, Any] = answer.json()
    return doc


# --- PATCH with null --------------------------------------------------------------------------


async def test_a_null_in_a_patch_is_refused_naming_it_and_work_goes_on(
    sqlite_stack: tuple[Stack, httpx.AsyncClient],
) -> None:
    """Once, ``{"priority": null}`` was accepted, the write hit NOT NULL and the journal
    retried it forever: nothing committed any more."""
    _, http = sqlite_stack
    task = await created(http)
    for field in ("name", "inputs", "cli_args", "env", "limits", "retries", "priority", "metadata"):
        refused = await http.patch(f"/tasks/{task['id']}", json={field: None})
        assert problem_of(refused, 422)["field"] == field
    patched = await http.patch(f"/tasks/{task['id']}", json={"priority": 7, "inputs": [4, 5]})
    assert patched.status_code == 200, patched.text
    assert (await http.post(f"/tasks/{task['id']}/start")).status_code == 200
    done = (await http.get(f"/tasks/{task['id']}", params={"wait": 20})).json()
    assert (done["state"], done["results"], done["priority"]) == ("completed", [9], 7)


# --- JSON bounds ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/tasks", {"name": "add", "file": ADD, "metadata": nested(200)}, "metadata"),
        ("/tasks", {"name": "add", "file": ADD, "inputs": [nested(40)]}, "inputs"),
        ("/tasks", {"name": "add", "file": ADD, "retries": 1e30}, "retries"),
        ("/tasks", {"name": "add", "file": ADD, "retries": 2**62}, "retries"),
        ("/tasks/batch", {"tasks": [{"file": ADD, "metadata": nested(200)}]}, "tasks[0].metadata"),
        ("/jobs", {"tasks": [{"file": ADD}], "metadata": nested(200)}, "metadata"),
        ("/workflows", {"tasks": [{"env": {"A": "\x00"}}]}, "tasks[0].env.A"),
    ],
)
async def test_json_past_its_bounds_is_a_422_naming_the_field(
    sqlite_stack: tuple[Stack, httpx.AsyncClient], path: str, body: dict[str, Any], field: str
) -> None:
    _, http = sqlite_stack
    assert problem_of(await http.post(path, json=body), 422)["field"] == field
    assert (await http.get("/tasks")).json()["total"] == 0


async def test_json_nested_past_any_parser_is_a_422_not_a_400(
    sqlite_stack: tuple[Stack, httpx.AsyncClient],
) -> None:
    _, http = sqlite_stack
    deep = b'{"tasks": [' + b"[" * 100_000 + b"]" * 100_000 + b"]}"
    headers = {"content-type": "application/json"}
    for path in ("/tasks", "/jobs"):
        answer = await http.post(path, content=deep, headers=headers)
        assert problem_of(answer, 422)["field"] == "body"
    nan = await http.post("/jobs", content=b'{"tasks": [{"inputs": [NaN]}]}', headers=headers)
    assert problem_of(nan, 422)["field"] == "body"


# --- documents an older version stored --------------------------------------------------------


async def older_rows(data_dir: Path) -> None:
    """A store in ``data_dir`` with rows today's API refuses: metadata 200 deep (one task
    not started, one started and waiting) and a ``name`` of null (an old PATCH)."""
    url = f"sqlite:///{data_dir / 'edgeplane.db'}"
    store = open_store(url)
    await store.open()  # migrated, as the older version left it
    await store.close()
    now = time.time()
    deep = Task(id="deep", runtime="host", command=["true"], metadata=nested(200), created_at=now)
    waiting = deep.model_copy(update={"id": "deep-started", "started": True})
    nulled = orjson.loads(Task(id="nulled", runtime="host", command=["true"]).model_dump_json())
    nulled["name"] = None
    rows = {t.id: t.model_dump_json() for t in (deep, waiting)} | {"nulled": orjson.dumps(nulled)}
    with sqlite3.connect(data_dir / "edgeplane.db") as db:
        for task_id, doc in rows.items():
            db.execute(
                "INSERT INTO tasks (id, state, job_id, workflow_id, created_at, priority, doc) "
                "VALUES (?, 'pending', NULL, NULL, ?, 50, ?)",
                (task_id, now, doc),
            )


def test_documents_an_older_version_stored_never_stop_edgeplane_up(lab: Lab) -> None:
    """``edgeplane up`` once exited at start over one such row, and the task could not be
    read, listed, patched or deleted (500) until it was removed by hand."""
    data = lab.root / "data"
    data.mkdir()
    asyncio.run(older_rows(data))
    port = free_port()
    # its own store (in --data-dir) and its own Mosquitto (no --broker)
    up = lab.role(
        "up", ["up", "--data-dir", str(data), "--port", str(port), "--workers", "1", "--allow-host"]
    ).start()
    api = lab.api(port)
    api.wait_healthy(up)  # or its output says why it exited
    http = api.http
    # the started one was recovered and ran
    ran = http.get("/tasks/deep-started", params={"wait": 30}).json()
    assert ran["state"] == "completed", (ran["error"], ran["stderr"], ran["reason"])
    deep = http.get("/tasks/deep")
    assert deep.status_code == 200 and deep.json()["metadata"] == nested(200)
    nulled = http.get("/tasks/nulled")
    assert nulled.status_code == 200 and nulled.json()["name"] == ""
    listed = http.get("/tasks").json()
    assert {t["id"] for t in listed["items"]} == {"deep", "deep-started", "nulled"}
    patched = http.patch("/tasks/deep", json={"priority": 3})
    assert patched.status_code == 200 and patched.json()["metadata"] == nested(200)
    assert http.patch("/tasks/nulled", json={"name": "x"}).json()["name"] == "x"
    for task_id in ("deep", "deep-started", "nulled"):
        assert http.delete(f"/tasks/{task_id}").status_code == 204
    assert http.get("/tasks").json()["total"] == 0


# --- numbers and characters the stores refuse -------------------------------------------------


async def check_offsets_and_nul(http: httpx.AsyncClient) -> None:
    for path in LISTS:
        for offset in (2**63, 2**64, MAX_OFFSET + 1):
            answer = await http.get(path, params={"offset": offset})
            assert problem_of(answer, 422)["field"] == "offset", path
        assert (await http.get(path, params={"offset": MAX_OFFSET})).status_code == 200
    for path in ("/tasks/a%00b", "/tasks/a%00b/results", "/jobs/x%00", "/workflows/x%00"):
        assert problem_of(await http.get(path), 404)["status"] == 404, path
    for path in ("/tasks/a%00b", "/schedules/x%00", "/applications/x%00", "/workers/x%00"):
        assert (await http.delete(path)).status_code == 404, path
    assert (await http.post("/tasks/a%00b/start")).status_code == 404
    refused = await http.get("/tasks", params={"job_id": "a\x00b"})
    assert problem_of(refused, 422)["field"] == "job_id"


async def test_offsets_and_nul_bytes_are_4xx_on_sqlite(
    sqlite_stack: tuple[Stack, httpx.AsyncClient],
) -> None:
    await check_offsets_and_nul(sqlite_stack[1])


@pytest.mark.postgres
async def test_offsets_and_nul_bytes_are_4xx_on_postgresql(
    pg_stack: tuple[Stack, httpx.AsyncClient],
) -> None:
    """PostgreSQL refuses NUL in text and offsets past 2^63: both once answered 500."""
    await check_offsets_and_nul(pg_stack[1])


# --- state transitions ------------------------------------------------------------------------


async def test_a_cancelled_task_cannot_be_started_again(
    sqlite_stack: tuple[Stack, httpx.AsyncClient],
) -> None:
    """It once ran to ``completed`` after all."""
    _, http = sqlite_stack
    task = await created(http)
    assert (await http.post(f"/tasks/{task['id']}/stop")).json()["state"] == "cancelled"
    refused = problem_of(await http.post(f"/tasks/{task['id']}/start"), 409)
    assert refused["field"] == "id"
    problem_of(await http.patch(f"/tasks/{task['id']}", json={"priority": 1}), 409)
    assert (await http.get(f"/tasks/{task['id']}")).json()["state"] == "cancelled"
    done = await created(http, start=True)
    finished = (await http.get(f"/tasks/{done['id']}", params={"wait": 20})).json()
    assert finished["state"] == "completed"
    problem_of(await http.post(f"/tasks/{done['id']}/start"), 409)


# --- YAML -------------------------------------------------------------------------------------


async def test_a_billion_laughs_descriptor_is_refused(
    sqlite_stack: tuple[Stack, httpx.AsyncClient],
) -> None:
    """556 bytes of nested aliases once took 89 s and 1.9 GB, and stalled /healthz 63 s."""
    _, http = sqlite_stack
    headers = {"content-type": "application/yaml"}
    for method in ("POST", "PUT"):
        path = "/applications" if method == "POST" else "/applications/some-id"
        answer = await http.request(method, path, content=LAUGHS.encode(), headers=headers)
        doc = problem_of(answer, 422)
        assert doc["field"] == "body" and "aliases are expanded" in doc["detail"]
