"""The two requests every task makes, answered without FastAPI's per-request machinery.

``POST /api/v1/tasks`` (create; with ``?wait=`` create and wait: ``edgeplane task run``,
``Client.run``) and ``GET /api/v1/tasks/{id}`` (``Client.wait``, the dashboard) are on
the latency path of every task. FastAPI spends about 0.8 ms of CPU on each of them here
before and around the handler: routing through every route, solving dependencies,
validating the body field by field (py-spy, ``docs/benchmarks.md``). This plain ASGI layer
answers them directly, with the same validation (the :class:`TaskSpec` model in Python
mode, as FastAPI does) and the same handler code. It sits inside the body limit and the
token check (``edgeplane.api.app``): a body it reads is under the limit and its caller
has a valid token, whose projects it checks as the routes do.

It only takes requests it is sure about. Anything else goes on to FastAPI unchanged, the
body it read replayed: every malformed request (so every 422 is FastAPI's, naming the
field), schedules, other query parameters' forms. The routes stay declared in FastAPI,
which still describes them in OpenAPI and answers them when this layer steps aside.
"""

from __future__ import annotations

import math
from urllib.parse import parse_qsl

import orjson
from pydantic import ValidationError
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from edgeplane.api.asgi import answer, header, read_body, replay
from edgeplane.api.audit import note
from edgeplane.api.deps import CALLER
from edgeplane.api.responses import JSON, document
from edgeplane.api.tasks import create_one, owned
from edgeplane.errors import Unauthorized
from edgeplane.limits import MAX_WAIT_S
from edgeplane.manager import Manager
from edgeplane.model import TaskSpec, task_json
from edgeplane.security import projects
from edgeplane.store import TokenRecord

TASKS = "/api/v1/tasks"


class TaskFastPath:
    def __init__(self, app: ASGIApp, manager: Manager) -> None:
        self.app = app
        self.manager = manager

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path: str = scope["path"]
            method: str = scope["method"]
            if method == "POST" and path == TASKS:
                await self._create(scope, receive, send)
                return
            task_id = path[len(TASKS) + 1 :] if path.startswith(TASKS + "/") else ""
            # (``counts`` is a route, not a task: task ids are uuids)
            if method == "GET" and task_id and "/" not in task_id and task_id != "counts":
                await self._get(task_id, scope, receive, send)
                return
        await self.app(scope, receive, send)

    async def _create(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = await read_body(receive)
        spec = _spec(scope, body)
        wait = _wait(scope)
        if spec is None or spec.schedule is not None or wait is None:
            await self.app(scope, replay(body, receive), send)
            return
        await answer(scope, receive, send, self._created(scope, spec, wait))

    async def _get(self, task_id: str, scope: Scope, receive: Receive, send: Send) -> None:
        wait = _wait(scope)
        if wait is None:
            await self.app(scope, receive, send)
            return
        await answer(scope, receive, send, self._found(scope, task_id, wait))

    async def _created(self, scope: Scope, spec: TaskSpec, wait: float) -> Response:
        # what the audit record would otherwise read back from the answer
        note(scope, route=TASKS, project=spec.project)
        projects.check_new(_caller(scope), spec.project)
        task = await create_one(self.manager, spec, wait)
        note(scope, resource_id=task.id)
        # (its row's text when it is the version just stored: ``model/task_json.py``)
        return Response(task_json.shown(task), status_code=201, media_type=JSON)

    async def _found(self, scope: Scope, task_id: str, wait: float) -> Response:
        caller = _caller(scope)
        if projects.visible(caller) is not None:  # an admin sees all: no lookup
            await owned(self.manager, caller, task_id)
        return document(await self.manager.wait(task_id, wait))


def _caller(scope: Scope) -> TokenRecord:
    """The token ``Authenticate`` found; without one (this layer mounted alone) nothing
    is answered."""
    found: TokenRecord | None = scope.get("state", {}).get(CALLER)
    if found is None:
        raise Unauthorized("missing bearer token (Authorization: Bearer <token>)")
    return found


def _wait(scope: Scope) -> float | None:
    """``?wait=`` in seconds (0 when absent), or None when FastAPI should judge the query."""
    wait = 0.0
    for key, value in parse_qsl(scope["query_string"].decode("latin-1"), keep_blank_values=True):
        if key != "wait":
            continue
        try:
            wait = float(value)
        except ValueError:
            return None
        if not (math.isfinite(wait) and 0 <= wait <= MAX_WAIT_S):
            return None
    return wait


def _spec(scope: Scope, body: bytes) -> TaskSpec | None:
    """The body as FastAPI would take it (JSON, then the model in Python mode), or None."""
    content_type = header(scope, b"content-type") or ""
    if content_type.split(";", 1)[0].strip().lower() != "application/json":
        return None
    try:
        return TaskSpec.model_validate(orjson.loads(body))
    except (orjson.JSONDecodeError, ValidationError):
        return None
