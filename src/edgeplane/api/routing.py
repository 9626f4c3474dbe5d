"""The route class of every router: JSON bodies read by orjson.

FastAPI reads a JSON body with the standard library, which takes ``NaN`` and lone
surrogates that nothing downstream can store or send, and answers a body nested past
Python's recursion limit with a bare 400. orjson refuses all three as invalid JSON, which
FastAPI turns into a 422 problem naming the body; it is also what the fast path and the
stored documents use, so every JSON body is read one way.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

import orjson
from fastapi import Request, Response
from fastapi.routing import APIRoute


class _OrjsonRequest(Request):
    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            # orjson.JSONDecodeError is a json.JSONDecodeError: FastAPI's 422 for bad JSON
            self._json = orjson.loads(await self.body())
        return self._json


class JsonRoute(APIRoute):
    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            return await handler(_OrjsonRequest(request.scope, request.receive))

        return route
