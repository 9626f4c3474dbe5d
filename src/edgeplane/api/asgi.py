"""Small pieces of plain ASGI shared by the fast paths (``fastpath.py``,
``fl_fastpath.py``) and the audit trail: a request header, the whole body, a body given
again to the app behind, and an answer that turns an :class:`EdgeplaneError` into its
problem+json."""

from __future__ import annotations

from collections.abc import Awaitable

from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

from edgeplane.api.problems import from_error
from edgeplane.errors import EdgeplaneError


def header(scope: Scope, name: bytes) -> str | None:
    """The first value of request header ``name`` (lower case), or None."""
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value).decode("latin-1")
    return None


async def read_body(receive: Receive) -> bytes:
    """The request's whole body (what came before the client went away)."""
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] != "http.request":  # the client went away
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


def replay(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that gives the body once more, then what the client sends next."""
    replayed = False

    async def again() -> Message:
        nonlocal replayed
        if replayed:
            return await receive()
        replayed = True
        return {"type": "http.request", "body": body, "more_body": False}

    return again


async def answer(scope: Scope, receive: Receive, send: Send, made: Awaitable[Response]) -> None:
    """Send the response ``made`` gives, or the problem+json of the error it raised."""
    try:
        response = await made
    except EdgeplaneError as exc:
        response = from_error(exc)
    await response(scope, receive, send)
