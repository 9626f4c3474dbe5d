"""A training task's three calls, answered without FastAPI's per-request machinery.

A long-lived client (``client_tasks: persistent``) makes one call a round after its
first, its update (``POST .../rounds/{n}/updates?then=assignment``) answered with its next
round and the model once there is one; its first round it asks for (``GET
.../assignment``). A per-round client downloads the model (``GET .../model``) and posts
its update. With the digits example that is most of what the coordinator's process does: a
py-spy profile of it under ``bench/fl.py`` put 30 % of its samples in FastAPI's and
Starlette's handling of these calls (routing through every route, solving the query
parameters' dependencies, the request object, the response's serialisation), as much as
the coordinator's own work for them (docs/benchmarks.md). This plain ASGI layer answers
them directly with the same coordinator calls, like :mod:`edgeplane.api.fastpath` does
for tasks. It sits inside the body limit and the token check (``edgeplane.api.app``),
which lets these calls through on a client credential without a lookup.

It only takes requests it is sure about: a client credential, the path's exact shape and
every query parameter well formed and in range. Anything else goes on to FastAPI
unchanged (so every 422 is FastAPI's, naming the field); the routes stay declared there,
which describes them in OpenAPI and answers them when this layer steps aside.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl

import orjson
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from edgeplane.api.asgi import answer, header, read_body
from edgeplane.api.audit import note
from edgeplane.api.fl import MAX_WAIT_S, PREFIX, RAW, then_next
from edgeplane.api.responses import JSON
from edgeplane.fl import tokens
from edgeplane.security.roles import API

if TYPE_CHECKING:  # numpy is the fl extra's
    from edgeplane.fl.coordinator import Coordinator

EXPERIMENTS = f"{API}{PREFIX}/"
#: the update route as FastAPI names it, for its audit record
UPDATE_ROUTE = f"{API}{PREFIX}/{{experiment_id}}/rounds/{{round_no}}/updates"
#: the largest round, attempt and version a query may name (as the routes' bounds)
MAX_ROUND = 1_000_000
MAX_ATTEMPT = 1_000
#: a call this layer answers: given ``receive``, it makes the answer
_Handler = Callable[[Receive], Awaitable[Response]]


class FlFastPath:
    def __init__(self, app: ASGIApp, fl: Coordinator | None) -> None:
        self.app = app
        self.fl = fl

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and self.fl is not None:
            path: str = scope["path"]
            if path.startswith(EXPERIMENTS):
                handler = self._route(self.fl, scope, path[len(EXPERIMENTS) :])
                if handler is not None:
                    await answer(scope, receive, send, handler(receive))
                    return
        await self.app(scope, receive, send)

    def _route(self, fl: Coordinator, scope: Scope, rest: str) -> _Handler | None:
        """The handler of a call this layer is sure about, or None."""
        token = _token(scope)
        if token is None:
            return None
        query = _query(scope)
        if query is None:
            return None
        parts = rest.split("/")
        method: str = scope["method"]
        if method == "GET" and len(parts) == 2 and parts[0]:
            exp_id, what = parts
            if what == "assignment":
                return _assignment(fl, exp_id, token, query)
            if what == "model":
                return _model(fl, exp_id, token, query)
        elif (
            method == "POST"
            and len(parts) == 4
            and parts[0]
            and parts[1] == "rounds"
            and parts[3] == "updates"
        ):
            round_no = _int(parts[2], MAX_ROUND)
            if round_no is not None:
                return _update(fl, scope, parts[0], round_no, token, query)
        return None


def _assignment(fl: Coordinator, exp_id: str, token: str, query: dict[str, str]) -> _Handler | None:
    if set(query) - {"round", "attempt", "wait", "model"}:
        return None
    round_no = _int(query.get("round", "0"), MAX_ROUND)
    attempt = _int(query.get("attempt", "0"), MAX_ATTEMPT)
    wait = _float(query.get("wait", "20"), MAX_WAIT_S)
    inline = query.get("model", "uri")
    if round_no is None or attempt is None or wait is None or inline not in ("uri", "inline"):
        return None

    async def answer(receive: Receive) -> Response:
        found = await fl.assignment(
            exp_id, token, (round_no, attempt), wait, inline=inline == "inline"
        )
        return Response(orjson.dumps(found), media_type=JSON)

    return answer


def _model(fl: Coordinator, exp_id: str, token: str, query: dict[str, str]) -> _Handler | None:
    if set(query) - {"version"}:
        return None
    version = None
    if "version" in query:
        version = _int(query["version"], MAX_ROUND)
        if version is None:
            return None

    async def answer(receive: Receive) -> Response:
        v, body = await fl.client_model(exp_id, token, version)
        return Response(body, media_type=RAW, headers={"X-Model-Version": str(v)})

    return answer


def _update(
    fl: Coordinator,
    scope: Scope,
    exp_id: str,
    round_no: int,
    token: str,
    query: dict[str, str],
) -> _Handler | None:
    if set(query) - {"attempt", "then", "wait", "model"}:
        return None
    attempt = None
    if "attempt" in query:
        attempt = _int(query["attempt"], MAX_ATTEMPT)
        if attempt is None:
            return None
    then = query.get("then", "none")
    wait = _float(query.get("wait", "20"), MAX_WAIT_S)
    inline = query.get("model", "uri")
    if then not in ("none", "assignment") or wait is None or inline not in ("uri", "inline"):
        return None
    # what the audit record would otherwise read from FastAPI's route
    note(scope, route=UPDATE_ROUTE, resource_id=exp_id)

    async def answer(receive: Receive) -> Response:
        body = await read_body(receive)
        content_type = header(scope, b"content-type") or RAW
        found = await fl.offer(exp_id, round_no, token, body, content_type, attempt=attempt)
        if then == "none" or attempt is None:
            return Response(orjson.dumps(found), status_code=202, media_type=JSON)
        after = (round_no, attempt)
        return then_next(fl, exp_id, token, after, wait, inline == "inline", found)

    return answer


def _token(scope: Scope) -> str | None:
    authorization = header(scope, b"authorization")
    if not tokens.is_client_token(authorization):
        return None
    assert authorization is not None  # is_client_token: not None
    return authorization.removeprefix("Bearer ")


def _query(scope: Scope) -> dict[str, str] | None:
    """The query's parameters, or None when one is repeated (FastAPI judges those)."""
    found: dict[str, str] = {}
    for key, value in parse_qsl(scope["query_string"].decode("latin-1"), keep_blank_values=True):
        if key in found:
            return None
        found[key] = value
    return found


def _int(text: str, most: int) -> int | None:
    """A plain decimal integer in 0..``most``, else None (FastAPI judges it)."""
    if not text.isascii() or not text.isdigit() or len(text) > 19:
        return None
    value = int(text)
    return value if value <= most else None


def _float(text: str, most: float) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) and 0 <= value <= most else None
