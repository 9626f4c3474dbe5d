"""What a standby process serves while another process of its cluster leads.

A standby holds no state of its own to answer from, so it sends every API call to the
leader: ``307 Temporary Redirect`` (method and body kept) to the leader's advertised URL,
with ``X-Edgeplane-Leader`` naming it; while no process leads (an election is under
way) ``503`` problem+json with ``Retry-After``. ``/healthz`` answers ``503`` with
``{"status": "standby", "leader": …}`` so a load balancer or a Kubernetes readiness probe
sends traffic to the leader only; ``/metrics`` says ``edgeplane_leader 0``.

The edgeplane client does not follow these redirects blindly (a redirect to another
origin would drop its token): it walks its own list of URLs (``EDGEPLANE_URL=a,b``) and
moves to the one the standby names when that one is in its list.
"""

from __future__ import annotations

from collections.abc import Callable

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Route

from edgeplane.api.problems import problem
from edgeplane.store import Lease
from edgeplane.wire import LEADER_HEADER, ROLE_HEADER

_METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]


def standby_app(leader: Callable[[], Lease | None], own_url: str) -> Starlette:
    """``leader`` returns the lease as last seen (None: nobody leads)."""

    def current() -> str:
        lease = leader()
        if lease is None or not lease.url or lease.url.rstrip("/") == own_url.rstrip("/"):
            return ""
        return lease.url.rstrip("/")

    def headers(url: str) -> dict[str, str]:
        return {ROLE_HEADER: "standby", LEADER_HEADER: url}

    async def healthz(_request: Request) -> Response:
        url = current()
        lease = leader()
        body = {"status": "standby", "leader": url or None, "term": lease.term if lease else 0}
        return JSONResponse(body, status_code=503, headers=headers(url))

    async def metrics(_request: Request) -> Response:
        return PlainTextResponse("edgeplane_leader 0\n", headers=headers(current()))

    async def elsewhere(request: Request) -> Response:
        url = current()
        if not url:
            return problem(
                503,
                "No leader",
                "this process stands by and no process of its cluster leads right now "
                "(an election is under way); try again shortly",
                headers={"Retry-After": "1", **headers("")},
            )
        target = url + request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse(target, status_code=307, headers=headers(url))

    return Starlette(
        routes=[
            Route("/healthz", healthz, methods=["GET"]),
            Route("/metrics", metrics, methods=["GET"]),
            Route("/{path:path}", elsewhere, methods=_METHODS),
        ]
    )
