"""The FastAPI application: routers under /api/v1, auth, problem+json, health, metrics."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Depends, FastAPI, Response
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from edgeplane import __version__
from edgeplane.api import (
    apidocs,
    applications,
    audit,
    chute_store,
    chutes,
    clusters,
    dashboard,
    events,
    join_tokens,
    problems,
    runs,
    tasks,
    users,
    workers,
)
from edgeplane.api import fl as fl_api
from edgeplane.api.deps import CALLER, caller
from edgeplane.api.fastpath import TaskFastPath
from edgeplane.api.fl_fastpath import FlFastPath
from edgeplane.api.metrics import ManagerCollector
from edgeplane.errors import EdgeplaneError
from edgeplane.fl import tokens as fl_tokens
from edgeplane.manager import Manager
from edgeplane.manager.schedules import Schedules
from edgeplane.manager.uplink import Uplink
from edgeplane.manager.workflows import Workflows
from edgeplane.root import Applications
from edgeplane.security import TokenChecker
from edgeplane.security.accounts import Accounts
from edgeplane.security.broker_auth import BrokerAuth
from edgeplane.security.roles import API, PUBLIC, check

if TYPE_CHECKING:  # numpy is the fl extra's
    from edgeplane.fl.coordinator import Coordinator

#: Where a training task's own credential is taken (``edgeplane.api.fl.clients``)
FL_CLIENTS = f"{API}/fl/experiments/"


class BodyLimit:
    """Refuses bodies over the limit before they cost anything: at once from their
    Content-Length, else (chunked) counting bytes as they arrive and answering 413 as soon
    as the count passes the limit. The rest is never kept: uvicorn drops what arrives after
    the answer, and closes the connection when the rest may be endless (see
    :func:`_closing`).

    A plain ASGI middleware: Starlette's BaseHTTPMiddleware costs about a millisecond a
    request, which is most of the API's own latency.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope["headers"]:
            if name == b"content-length" and value.isdigit() and int(value) > self.max_bytes:
                await self._refuse(scope, receive, send)
                return
        received = 0
        over = False
        answered = False

        async def counted() -> Message:
            nonlocal received, over
            if over:
                raise _TooLarge
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    over = True
                    raise _TooLarge
            return message

        async def guarded(message: Message) -> None:
            nonlocal answered
            if over:  # whatever the app made of the interrupted read: the 413 is ours
                return
            answered = True
            await send(message)

        try:
            await self.app(scope, counted, guarded)
        except Exception:
            if not over:
                raise
        if over and not answered:
            await self._refuse(scope, receive, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        limit = self.max_bytes / 2**20
        headers = _closing(scope, self.max_bytes)
        response = problems.problem(
            413, "Payload too large", f"body is over {limit:g} MB", headers, field="body"
        )
        await response(scope, receive, send)


class _TooLarge(Exception):
    """Raised into the app by :class:`BodyLimit` when a body passes the limit."""


def _nobody(member_id: str) -> str | None:
    """Owners where none are known (a root's view of a cluster's workers)."""
    return None


def _closing(scope: Scope, max_bytes: int) -> dict[str, str]:
    """Headers of an answer given before the body was read: ``Connection: close`` when the
    body's length is unknown (chunked: it may never end) or declared past twice the limit,
    so the server stops reading it. A smaller declared body is left to uvicorn, which drops
    it as it arrives and keeps the connection: a client that sends its whole body before
    it reads (httpx) then still gets the answer, where a close would reset it."""
    for name, value in scope["headers"]:
        if name == b"transfer-encoding":
            return {"Connection": "close"}
        if name == b"content-length" and (not value.isdigit() or int(value) > 2 * max_bytes):
            return {"Connection": "close"}
    return {}


class Authenticate:
    """Checks the token of every ``/api/v1`` request, and that its role and scopes allow
    the call, or that it is its user's node's (``edgeplane.security.roles.check``; the
    owner of a node by ``owner_of``), before anything reads its body: a
    caller without a valid token costs a header lookup, never a body (FastAPI reads the
    body before it runs the route's dependencies, ``caller`` among them). Login and
    refresh (:data:`PUBLIC`) check their own credentials. The token found is left in the
    scope's state for the routes (``deps.caller``)."""

    def __init__(
        self,
        app: ASGIApp,
        tokens: TokenChecker,
        max_bytes: int,
        owner_of: Callable[[str], str | None],
    ) -> None:
        self.app = app
        self.tokens = tokens
        self.max_bytes = max_bytes
        self.owner_of = owner_of

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope["path"] if scope["type"] == "http" else ""
        if path.startswith(API) and path not in PUBLIC:
            authorization = None
            for name, value in scope["headers"]:
                if name == b"authorization":
                    authorization = bytes(value).decode("latin-1")
                    break
            if path.startswith(FL_CLIENTS) and fl_tokens.is_client_token(authorization):
                # a training task's credential: its routes check it (edgeplane.fl.tokens)
                await self.app(scope, receive, send)
                return
            try:
                record = await self.tokens.check(authorization)
                # before the check: a refused call's audit record names its caller
                scope.setdefault("state", {})[CALLER] = record
                check(
                    scope["method"],
                    path,
                    role=record.role,
                    scopes=record.scopes,
                    user=record.user,
                    owner_of=self.owner_of,
                )
            except EdgeplaneError as exc:
                response = problems.from_error(exc)
                response.headers.update(_closing(scope, self.max_bytes))
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def create_app(
    manager: Manager,
    tokens: TokenChecker,
    workflows: Workflows,
    schedules: Schedules,
    apps: Applications,
    *,
    max_body_mb: float = 64.0,
    accounts: Accounts | None = None,
    broker_auth: BrokerAuth | None = None,
    uplink: Uplink | None = None,
    fl: Coordinator | None = None,
) -> FastAPI:
    app = FastAPI(
        title="edgeplane",
        version=__version__,
        description="One orchestrator for the edge: tasks on fleets of small machines.",
        docs_url=None,  # apidocs serves /docs with Swagger UI's files from the package
    )
    apidocs.install(app)
    app.state.manager = manager
    app.state.tokens = tokens
    app.state.accounts = accounts or Accounts(manager.store, tokens, manager.clock)
    app.state.workflows = workflows
    app.state.schedules = schedules
    app.state.applications = apps
    #: federated learning's coordinator (None: the fl extra is not installed, or the root)
    app.state.fl = fl
    #: the identities of the broker edgeplane started (None: an external broker)
    app.state.broker_auth = broker_auth
    problems.install(app)
    # Middleware added later wraps what was added before: a request meets the audit log
    # (which records what the rest answers), the body limit, then the token check, then
    # the fast paths (FL clients', then tasks'), then FastAPI.
    app.add_middleware(TaskFastPath, manager=manager)
    app.add_middleware(FlFastPath, fl=fl)
    max_bytes = int(max_body_mb * 2**20)
    # At a root the members are clusters: a worker's owner is known by its cluster alone,
    # so there only the role decides (an admin manages a worker's chutes through the root).
    owner_of = _nobody if manager.root else manager.owner_of
    app.add_middleware(Authenticate, tokens=tokens, max_bytes=max_bytes, owner_of=owner_of)
    app.add_middleware(BodyLimit, max_bytes=max_bytes)
    app.add_middleware(audit.AuditCalls, trail=manager.audit)
    if manager.tracer is not None:  # outermost: its span is the whole request's
        from edgeplane.otel import TraceRequests

        app.add_middleware(TraceRequests, tracer=manager.tracer)

    def secured(router: APIRouter) -> None:
        app.include_router(
            router, prefix=API, dependencies=[Depends(caller)], responses=problems.API
        )

    secured(tasks.router)
    secured(events.router)  # the dashboard's live stream
    secured(join_tokens.router)  # workers join a manager, clusters a root
    if not manager.root:  # only aggregates reach the root, never per-worker detail
        secured(workers.router)
    # a root forwards them to the cluster that holds the worker (docs/chutes.md)
    secured(chutes.router)
    for router in (runs.jobs, runs.workflows, runs.schedules, clusters.router, applications.router):
        secured(router)
    secured(chute_store.router)  # at the root too: a catalogue, no per-worker detail
    for router in (users.users, users.tokens, audit.router, fl_api.users):
        secured(router)
    # a training task's own credential, or a user's (checked by the route)
    app.include_router(fl_api.clients, prefix=API, responses=problems.API)
    # no token: login and refresh check their own credentials (roles.PUBLIC)
    app.include_router(users.auth, prefix=API, responses=problems.API)
    app.include_router(dashboard.router)  # the page itself needs no token; its API calls do

    registry = CollectorRegistry()
    registry.register(ManagerCollector(manager, uplink, None if fl is None else fl.mqtt_updates))

    @app.get(
        "/healthz",
        tags=["health"],
        responses={
            **problems.COMMON,
            503: {"description": "The store cannot be written right now"},
        },
    )
    async def healthz() -> JSONResponse:
        """200 while the store can be written; 503 (with the reason) while it cannot."""
        down = manager.journal.down
        body: dict[str, object] = {
            "status": "ok" if down is None else "unavailable",
            "store": down is None,
            "broker": manager.link.connected.is_set(),
            "version": __version__,
        }
        if down is not None:
            body["detail"] = f"the store cannot be written: {down}"
        return JSONResponse(body, status_code=200 if down is None else 503)

    @app.get(
        "/metrics", tags=["health"], response_class=PlainTextResponse, responses=problems.COMMON
    )
    async def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    _document_problems(app)
    return app


def _document_problems(app: FastAPI) -> None:
    """OpenAPI with the :class:`~edgeplane.api.problems.Problem` schema the documented
    error responses refer to."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        fresh = app.openapi_schema is None
        schema = generate()  # FastAPI's: made once, then cached in app.openapi_schema
        if fresh:
            problems.add_schema(schema)
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
