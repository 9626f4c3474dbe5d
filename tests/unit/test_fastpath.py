"""The API's fast path for the two per-task requests: what it answers itself and what it
leaves to FastAPI, with the body intact; behind the token check, which refuses a caller
before any body is read. (End to end, every API test goes through both.)"""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from starlette.types import Message, Receive, Scope, Send

from edgeplane.api.app import Authenticate
from edgeplane.api.fastpath import TaskFastPath
from edgeplane.errors import NotFound
from edgeplane.manager.holds import Holds
from edgeplane.model import Task, TaskSpec
from edgeplane.security import TokenChecker
from edgeplane.security.tokens import digest
from edgeplane.store import MemoryStore, TokenRecord

SECRET = "ep_secret"
AUTH = (b"authorization", f"Bearer {SECRET}".encode())
JSON = (b"content-type", b"application/json")
SPEC = {"name": "add", "command": ["true"], "runtime": "host"}


class Manager:
    """Stands in for the manager: records what it was asked."""

    def __init__(self) -> None:
        self.submitted: list[TaskSpec] = []
        self.waited: list[tuple[str, float]] = []
        self.holds = Holds()

    async def submit(self, specs: list[TaskSpec], batch: bool = True) -> list[Task]:
        self.submitted += specs
        return [Task(id="t1", name=specs[0].name, state="scheduled", started=True)]

    async def wait(self, task_id: str, wait_s: float) -> Task:
        self.waited.append((task_id, wait_s))
        if task_id != "t1":
            raise NotFound(f"task {task_id} not found", field="id")
        return Task(id="t1", name="add", state="completed", started=True)


class Downstream:
    """FastAPI's place: records the requests handed on, and the body they arrive with."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        message = await receive()
        self.bodies.append(message.get("body", b""))
        await send({"type": "http.response.start", "status": 299, "headers": []})
        await send({"type": "http.response.body", "body": b""})


#: Messages each call's ``receive`` handed out (the body's chunks).
RECEIVED: list[Message] = []


async def call(
    layer: Authenticate,
    method: str,
    path: str,
    body: bytes = b"",
    query: bytes = b"",
    headers: tuple[tuple[bytes, bytes], ...] = (AUTH, JSON),
) -> tuple[int, dict[str, str], Any]:
    scope = {
        "type": "http",
        "method": method,
        "path": path,
        "query_string": query,
        "headers": list(headers),
    }
    pending = [{"type": "http.request", "body": body[:3], "more_body": True}]
    pending.append({"type": "http.request", "body": body[3:], "more_body": False})
    sent: list[Message] = []

    async def receive() -> Message:
        message = pending.pop(0) if pending else {"type": "http.disconnect"}
        RECEIVED.append(message)
        return message

    async def send(message: Message) -> None:
        sent.append(message)

    await layer(scope, receive, send)
    start, end = sent[0], sent[-1]
    head = {k.decode(): v.decode() for k, v in start.get("headers", [])}
    content = end.get("body", b"")
    return start["status"], head, orjson.loads(content) if content else None


@pytest.fixture
async def parts() -> tuple[Authenticate, Manager, Downstream]:
    store = MemoryStore()
    await store.save_token(
        TokenRecord(id="t", user="u", role="admin", secret_hash=digest(SECRET), created_at=0.0)
    )
    manager, downstream = Manager(), Downstream()
    fast = TaskFastPath(downstream, manager=manager)  # type: ignore[arg-type]
    RECEIVED.clear()
    return (
        Authenticate(fast, tokens=TokenChecker(store), max_bytes=2**20, owner_of=lambda _: None),
        manager,
        downstream,
    )


async def test_a_good_create_is_answered_here(
    parts: tuple[Authenticate, Manager, Downstream],
) -> None:
    layer, manager, downstream = parts
    status, head, body = await call(layer, "POST", "/api/v1/tasks", orjson.dumps(SPEC), b"wait=5")
    assert (status, head["content-type"], body["id"]) == (201, "application/json", "t1")
    assert body["state"] == "completed"
    assert manager.submitted[0].command == ["true"]
    assert manager.waited == [("t1", 5.0)]
    assert downstream.bodies == []


async def test_a_get_is_answered_here_and_errors_are_problems(
    parts: tuple[Authenticate, Manager, Downstream],
) -> None:
    layer, manager, downstream = parts
    status, _, body = await call(layer, "GET", "/api/v1/tasks/t1", query=b"wait=2.5")
    assert (status, body["state"]) == (200, "completed")
    status, head, body = await call(layer, "GET", "/api/v1/tasks/nope")
    assert (status, head["content-type"], body["field"]) == (404, "application/problem+json", "id")
    assert manager.waited == [("t1", 2.5), ("nope", 0.0)]
    assert downstream.bodies == []


@pytest.mark.parametrize("headers", [(JSON,), ((b"authorization", b"Bearer wrong"), JSON)])
async def test_a_bad_token_is_refused_before_the_body_is_read(
    parts: tuple[Authenticate, Manager, Downstream], headers: tuple[tuple[bytes, bytes], ...]
) -> None:
    layer, manager, _ = parts
    status, head, body = await call(
        layer, "POST", "/api/v1/tasks", orjson.dumps(SPEC), headers=headers
    )
    assert (status, head["www-authenticate"], body["status"]) == (401, "Bearer", 401)
    assert manager.submitted == []
    assert RECEIVED == []  # none of the body was read


async def test_every_api_route_needs_a_token_and_others_do_not(
    parts: tuple[Authenticate, Manager, Downstream],
) -> None:
    layer, _, downstream = parts
    status, _, _ = await call(layer, "GET", "/api/v1/workers", headers=())
    assert status == 401
    status, _, _ = await call(layer, "GET", "/healthz", headers=())
    assert (status, len(downstream.bodies)) == (299, 1)


@pytest.mark.parametrize(
    ("body", "query", "headers"),
    [
        (b"{not json", b"", (AUTH, JSON)),
        (orjson.dumps({**SPEC, "priority": 101}), b"", (AUTH, JSON)),
        (orjson.dumps({**SPEC, "schedule": "* * * * *"}), b"", (AUTH, JSON)),
        (orjson.dumps(SPEC), b"wait=61", (AUTH, JSON)),
        (orjson.dumps(SPEC), b"wait=nan", (AUTH, JSON)),
        (orjson.dumps(SPEC), b"wait=soon", (AUTH, JSON)),
        (orjson.dumps(SPEC), b"", (AUTH, (b"content-type", b"text/plain"))),
    ],
)
async def test_everything_else_goes_to_fastapi_with_its_body(
    parts: tuple[Authenticate, Manager, Downstream],
    body: bytes,
    query: bytes,
    headers: tuple[tuple[bytes, bytes], ...],
) -> None:
    layer, manager, downstream = parts
    status, _, _ = await call(layer, "POST", "/api/v1/tasks", body, query, headers)
    assert status == 299
    assert downstream.bodies == [body]
    assert manager.submitted == []


@pytest.mark.parametrize(
    ("method", "path", "query"),
    [
        ("GET", "/api/v1/tasks/t1", b"wait=-1"),
        ("GET", "/api/v1/tasks/t1/results", b""),
        ("GET", "/api/v1/tasks", b""),
        ("POST", "/api/v1/tasks/batch", b""),
        ("DELETE", "/api/v1/tasks/t1", b""),
    ],
)
async def test_other_routes_pass_through(
    parts: tuple[Authenticate, Manager, Downstream], method: str, path: str, query: bytes
) -> None:
    layer, manager, downstream = parts
    status, _, _ = await call(layer, method, path, query=query)
    assert (status, len(downstream.bodies)) == (299, 1)
    assert manager.waited == []
