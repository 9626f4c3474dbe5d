"""The FastAPI application: routers under /api/v1, auth, problem+json, health, metrics."""

from __future__ import annotations

from fastapi import Depends, FastAPI, Response
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from starlette.types import ASGIApp, Receive, Scope, Send

from edgeplane import __version__
from edgeplane.api import applications, clusters, dashboard, problems, runs, tasks, workers
from edgeplane.api.deps import caller
from edgeplane.api.fastpath import TaskFastPath
from edgeplane.api.metrics import ManagerCollector
from edgeplane.manager import Manager
from edgeplane.manager.schedules import Schedules
from edgeplane.manager.workflows import Workflows
from edgeplane.root import Applications
from edgeplane.security import TokenChecker


class BodyLimit:
    """Refuses bodies over the limit from their Content-Length, before reading them.

    A plain ASGI middleware: Starlette's BaseHTTPMiddleware costs about a millisecond a
    request, which is most of the API's own latency.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            for name, value in scope["headers"]:
                if name == b"content-length" and value.isdigit() and int(value) > self.max_bytes:
                    limit = self.max_bytes / 2**20
                    response = problems.problem(
                        413, "Payload too large", f"body is over {limit:g} MB", field="body"
                    )
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
) -> FastAPI:
    app = FastAPI(
        title="edgeplane",
        version=__version__,
        description="One orchestrator for the edge: tasks on fleets of small machines.",
    )
    app.state.manager = manager
    app.state.tokens = tokens
    app.state.workflows = workflows
    app.state.schedules = schedules
    app.state.applications = apps
    problems.install(app)
    # Added first, so it sits inside the body limit (middleware added later wraps it).
    app.add_middleware(TaskFastPath, manager=manager, tokens=tokens)
    app.add_middleware(BodyLimit, max_bytes=int(max_body_mb * 2**20))

    secured = [Depends(caller)]
    app.include_router(tasks.router, prefix="/api/v1", dependencies=secured)
    if not manager.root:  # only aggregates reach the root, never per-worker detail
        app.include_router(workers.router, prefix="/api/v1", dependencies=secured)
    for router in (
        runs.jobs,
        runs.workflows,
        runs.schedules,
        clusters.router,
        applications.router,
    ):
        app.include_router(router, prefix="/api/v1", dependencies=secured)
    app.include_router(dashboard.router)  # the page itself needs no token; its API calls do

    registry = CollectorRegistry()
    registry.register(ManagerCollector(manager))

    @app.get(
        "/healthz",
        tags=["health"],
        responses={503: {"description": "The store cannot be written right now"}},
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

    @app.get("/metrics", tags=["health"], response_class=PlainTextResponse)
    async def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return app
