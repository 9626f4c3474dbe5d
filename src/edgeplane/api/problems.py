"""The one place errors become RFC 9457 problem+json. No stack trace ever reaches a client."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict
from starlette.exceptions import HTTPException
from starlette.routing import Match

from edgeplane.errors import Busy, EdgeplaneError, TooManyRequests

log = logging.getLogger(__name__)

PROBLEM = "application/problem+json"


class FieldProblem(BaseModel):
    field: str
    message: str


class Problem(BaseModel):
    """An RFC 9457 problem document; ``field`` names the offending input."""

    model_config = ConfigDict(extra="allow")

    type: str = "about:blank"
    title: str
    status: int
    detail: str
    field: str | None = None
    #: 422: every field that failed, the first one also in ``field``
    errors: list[FieldProblem] | None = None
    #: a short code of why, when the error has one (a refused FL update: docs/fl.md)
    reason: str | None = None


def _documented(description: str, **headers: str) -> dict[str, Any]:
    answer: dict[str, Any] = {
        "description": description,
        "content": {PROBLEM: {"schema": {"$ref": "#/components/schemas/Problem"}}},
    }
    if headers:
        answer["headers"] = {
            name: {"description": text, "schema": {"type": "string"}}
            for name, text in headers.items()
        }
    return answer


#: The problems any request may meet before or around its route: for OpenAPI.
COMMON: dict[int | str, dict[str, Any]] = {
    405: _documented("Method not allowed here", Allow="the methods this path takes"),
    413: _documented("Body over the limit (Settings.max_body_mb)"),
}
#: A login refused for too many failures.
TOO_MANY: dict[int | str, dict[str, Any]] = {
    429: _documented(
        "Too many failed logins for this user or address",
        **{"Retry-After": "seconds until an attempt is taken again"},
    ),
}
#: The problems of every route under /api/v1 (token, lookups, input, state, store).
API: dict[int | str, dict[str, Any]] = {
    **COMMON,
    401: _documented("No valid bearer token", **{"WWW-Authenticate": "Bearer"}),
    403: _documented("The token's role or scopes do not allow this"),
    404: _documented("No such resource"),
    409: _documented("The resource's state does not allow this"),
    422: _documented("Invalid input; field names it"),
    503: _documented(
        "A dependency (store, broker) cannot be reached right now, or too many answers are "
        "held open (long polls: Retry-After)",
        **{"Retry-After": "with too many answers held open: seconds until asking again"},
    ),
}


def add_schema(schema: dict[str, Any]) -> None:
    """Put :class:`Problem` into an OpenAPI document's components (the responses above
    refer to it)."""
    defs = Problem.model_json_schema(ref_template="#/components/schemas/{model}")
    schemas = schema.setdefault("components", {}).setdefault("schemas", {})
    schemas.update(defs.pop("$defs", {}))
    schemas["Problem"] = defs


def problem(
    status: int,
    title: str,
    detail: str,
    headers: Mapping[str, str] | None = None,
    **extra: Any,
) -> JSONResponse:
    body = {"type": "about:blank", "title": title, "status": status, "detail": detail, **extra}
    return JSONResponse(body, status_code=status, media_type=PROBLEM, headers=dict(headers or {}))


def _field(loc: tuple[Any, ...] | list[Any]) -> str:
    """``("body", "tasks", 3, "limits", "fuel")`` → ``tasks[3].limits.fuel``."""
    parts = list(loc[1:] if loc and loc[0] in ("body", "query", "path", "header") else loc)
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or str(loc[0] if loc else "body")


def _message(error: Any) -> str:
    message = str(error.get("msg", ""))
    reason = (error.get("ctx") or {}).get("error")
    if error.get("type") == "json_invalid" and reason:
        return f"{message}: {reason}"
    return message


_METHODS = ("DELETE", "GET", "PATCH", "POST", "PUT")


def _allowed(request: Request) -> str:
    """Every method the request's path takes. Starlette's own ``Allow`` names only the
    first route of the path (``/tasks``: POST, not GET); asked route by route through
    ``matches`` alone, as routers nest routes in their own ways."""
    routes = request.app.router.routes
    allowed = [
        method
        for method in _METHODS
        if any(
            route.matches({**request.scope, "method": method})[0] is Match.FULL for route in routes
        )
    ]
    return ", ".join(allowed)


def from_error(exc: EdgeplaneError) -> JSONResponse:
    extra: dict[str, Any] = {"field": exc.field} if exc.field else {}
    if exc.reason:
        extra["reason"] = exc.reason
    response = problem(exc.status, exc.title, exc.detail, **extra)
    if exc.status == 401:
        response.headers["WWW-Authenticate"] = "Bearer"
    if isinstance(exc, TooManyRequests | Busy):
        response.headers["Retry-After"] = str(max(1, math.ceil(exc.retry_after)))
    return response


def install(app: FastAPI) -> None:
    @app.exception_handler(EdgeplaneError)
    async def _edgeplane(_: Request, exc: EdgeplaneError) -> JSONResponse:
        return from_error(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [
            {
                # a body that is not JSON: its loc is the offset where reading stopped
                "field": "body" if e.get("type") == "json_invalid" else _field(e.get("loc", ())),
                "message": _message(e),
            }
            for e in exc.errors()
        ]
        first = errors[0] if errors else {"field": "body", "message": "invalid"}
        return problem(
            422,
            "Invalid input",
            f"{first['field']}: {first['message']}",
            field=first["field"],
            errors=errors,
        )

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException) -> JSONResponse:
        headers = dict(exc.headers or {})
        if exc.status_code == 405:
            headers["Allow"] = _allowed(request)
        return problem(exc.status_code, str(exc.detail), str(exc.detail), headers=headers)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error", extra={"path": request.url.path})
        return problem(500, "Internal error", "the server hit an unexpected error; see its log")
