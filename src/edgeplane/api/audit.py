"""The audit log: every mutating call under /api/v1 recorded (:class:`AuditCalls`), and
``GET /api/v1/audit`` to read it (admin only; docs/security.md)."""

from __future__ import annotations

from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Query, Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from edgeplane.api.asgi import header
from edgeplane.api.deps import CALLER
from edgeplane.api.routing import JsonRoute
from edgeplane.errors import Invalid
from edgeplane.limits import MAX_LIMIT, MAX_NAME
from edgeplane.manager.audit import AuditTrail
from edgeplane.model.audit import ANONYMOUS, AuditPage, AuditQuery, AuditRecord, clip
from edgeplane.security.roles import API
from edgeplane.store import TokenRecord

MUTATING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
#: Where a route leaves what it knows of the call for its record (:func:`note`).
NOTE = "edgeplane.audit"
#: The resource kind of each collection under /api/v1.
_KINDS = {
    "tasks": "task",
    "jobs": "job",
    "workflows": "workflow",
    "schedules": "schedule",
    "applications": "application",
    "workers": "worker",
    "clusters": "cluster",
    "join-tokens": "join-token",
    "users": "user",
    "tokens": "token",
    "auth": "session",
    "audit": "audit",
    "store": "store-chute",
}
#: A created resource's answer is read for its id only up to this size.
_CREATED_MAX = 1 << 20


def note(scope: Scope, **fields: str | None) -> None:
    """Tell the call's audit record what the route knows (``actor``, ``token_id``,
    ``route``, ``resource_id``, ``project``, ``detail``): no lookup is made for it
    otherwise."""
    scope.setdefault("state", {}).setdefault(NOTE, {}).update(fields)


class AuditCalls:
    """Records every POST, PUT, PATCH and DELETE under /api/v1 once answered, refused ones
    (401, 403, 413, 503...) included: who, from where, what, and the status.

    The outermost layer, so it sees every answer, the body limit's and the token check's
    too. It adds no I/O to a call: the record goes to :class:`AuditTrail`'s buffer. It
    never reads the request's body; of a ``201`` answer it reads only the created
    resource's ``id`` (or ``name``) and ``project``, and not at all when the route noted
    them (the fast task path does)."""

    def __init__(self, app: ASGIApp, trail: AuditTrail) -> None:
        self.app = app
        self.trail = trail

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope["method"] not in MUTATING
            or not scope["path"].startswith(API + "/")
        ):
            await self.app(scope, receive, send)
            return
        at = self.trail.now()
        #: None until an answer starts (a client gone before it has no status)
        status: int | None = None
        created: list[bytes] = []

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            elif (
                status == 201
                and message["type"] == "http.response.body"
                and sum(map(len, created)) < _CREATED_MAX
            ):
                created.append(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, receive, sending)
        except BaseException:
            status = status or 500  # what the server answers when the app raises
            raise
        finally:
            self.trail.record(_record(scope, at, status, created))


def _record(scope: Scope, at: float, status: int | None, created: list[bytes]) -> AuditRecord:
    state = scope.get("state", {})
    noted: dict[str, str | None] = state.get(NOTE, {})
    caller: TokenRecord | None = state.get(CALLER)
    template = noted.get("route") or _template(scope.get("route"))
    path: str = scope["path"]
    parts = (template or path)[len(API) + 1 :].split("/")
    kind = _KINDS.get(parts[0])
    resource_id = noted.get("resource_id")
    if resource_id is None and template is not None:
        params: dict[str, Any] = scope.get("path_params") or {}
        resource_id = next((str(v) for v in params.values()), None)
    project = noted.get("project")
    if created and (resource_id is None or project is None):
        found = _created(b"".join(created))
        resource_id = resource_id or found.get("id")
        project = project or found.get("project")
    client = scope.get("client")
    actor = noted.get("actor") or (caller.user if caller else ANONYMOUS)
    return AuditRecord(
        at=at,
        actor=clip(actor) or ANONYMOUS,
        token_id=noted.get("token_id") or (caller.id if caller else None),
        client=clip(client[0]) if client else None,
        action=scope["method"],
        path=clip(path),
        route=clip(template),
        resource=kind,
        resource_id=clip(resource_id),
        project=clip(project),
        status=status,
        request_id=clip(header(scope, b"x-request-id")),
        detail=clip(noted.get("detail")),
    )


def _template(route: object) -> str | None:
    """The matched route's template under /api/v1. A route of an included router knows
    its path below the include's prefix, which is /api/v1 for every API router
    (``create_app``)."""
    path = getattr(route, "path_format", None)
    if not isinstance(path, str):
        return None
    return path if path.startswith(API + "/") else API + path


def _created(body: bytes) -> dict[str, str]:
    """The ``id`` (else ``name``) and ``project`` of a created resource's answer."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return {}
    if not isinstance(doc, dict):
        return {}
    found = {}
    for key, value in (("id", doc.get("id") or doc.get("name")), ("project", doc.get("project"))):
        if isinstance(value, str):
            found[key] = value
    return found


router = APIRouter(prefix="/audit", tags=["audit"], route_class=JsonRoute)

Text = Annotated[str | None, Query(max_length=MAX_NAME)]


@router.get("", response_model=AuditPage)
async def list_audit(
    request: Request,
    actor: Text = None,
    action: Annotated[
        str | None, Query(max_length=64, description="HTTP method or identity change")
    ] = None,
    method: Annotated[str | None, Query(max_length=16, description="same as action")] = None,
    resource: Annotated[
        str | None, Query(max_length=2 * MAX_NAME, description="a kind, or kind/id")
    ] = None,
    since: Annotated[float | None, Query(ge=0, allow_inf_nan=False)] = None,
    until: Annotated[float | None, Query(ge=0, allow_inf_nan=False)] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT, description="records in the page")] = 100,
    cursor: Annotated[
        int | None, Query(ge=1, le=2**63 - 1, description="`next` of the page before")
    ] = None,
) -> AuditPage:
    """Records of mutating calls and broker identity changes, newest first (admin only)."""
    # an HTTP method in any case; an identity change as written
    if action is not None and action.upper() in MUTATING:
        action = action.upper()
    if method is not None:
        method = method.upper()
        if action is not None and action != method:
            raise Invalid("give action or method, not two different ones", field="method")
    wanted = action if action is not None else method
    trail: AuditTrail = request.app.state.manager.audit
    query = AuditQuery(
        actor=actor,
        action=wanted,
        resource=resource,
        since=since,
        until=until,
        before=cursor,
        limit=limit + 1,
    )
    found = await trail.read(query)
    items = found[:limit]
    more = len(found) > limit
    return AuditPage(items=items, next=items[-1].id if more and items else None)
