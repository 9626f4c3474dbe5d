"""``GET /api/v1/events``: committed changes as Server-Sent Events, for the dashboard.

Authenticated like every ``/api/v1`` call (``Authorization: Bearer``; the dashboard reads
the stream with ``fetch``, which can send it, so no token ever travels in a URL). Each
open stream watches the journal's :class:`~edgeplane.manager.changes.Changes`; one that
falls behind is dropped and ends with an ``overflow`` event. The stream ends when the
caller's token expires. Format: docs/dashboard.md.
"""

from __future__ import annotations

import asyncio
import functools
import json
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from edgeplane.api.applications import view as application_view
from edgeplane.api.deps import CallerDep, ManagerDep
from edgeplane.manager.changes import Change
from edgeplane.security import projects

router = APIRouter(tags=["events"])

#: Seconds between comments that keep proxies from closing an idle stream.
KEEPALIVE_S = 15.0
#: A task's fields the stream carries (results, output and specs stay behind their GETs).
TASK_FIELDS = frozenset(
    {
        "id",
        "project",
        "name",
        "state",
        "reason",
        "runtime",
        "worker_id",
        "cluster_id",
        "job_id",
        "workflow_id",
        "schedule_id",
        "attempt",
        "error",
        "exit_code",
        "created_at",
        "updated_at",
        "started_at",
        "finished_at",
    }
)


def _data(kind: str, doc: Any) -> bytes:
    """The document as compact JSON (pydantic's own encoder: a third of ``json.dumps``
    of a dumped dict)."""
    if kind == "task":
        return bytes(doc.model_dump_json(include=TASK_FIELDS).encode())
    if kind == "application":
        doc = application_view(doc)
    return bytes(doc.model_dump_json().encode())


def _frame(event: str, data: dict[str, Any]) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


def frames(changes: list[Change], seen: tuple[str, ...] | None) -> bytes:
    """One committed round as SSE frames, without what a caller seeing the projects
    ``seen`` (None: all) may not see."""
    out: list[bytes] = []
    for kind, doc_id, doc in changes:
        if doc is None:
            # a deletion names no project: only those who see every project hear of it
            if seen is None:
                out.append(_frame("deleted", {"kind": kind, "id": doc_id}))
            continue
        project = getattr(doc, "project", None)
        if seen is not None and project is not None and project not in seen:
            continue
        out += (b"event: ", kind.encode(), b"\ndata: ", _data(kind, doc), b"\n\n")
    return b"".join(out)


@router.get(
    "/events",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}}},
)
async def events(request: Request, manager: ManagerDep, caller: CallerDep) -> StreamingResponse:
    """Every change to tasks, workers, workflows, jobs, schedules and applications as it
    commits, as Server-Sent Events (``event:`` the kind, ``data:`` the document)."""
    changes = manager.journal.changes
    watcher = changes.watch()
    seen = projects.visible(caller)
    clock = manager.clock
    expires = caller.expires_at

    async def stream() -> AsyncIterator[bytes]:
        try:
            yield _frame("hello", {"watchers": len(changes)})
            while True:
                wait = KEEPALIVE_S
                if expires is not None:
                    left = expires - clock.now()
                    if left <= 0:
                        yield _frame("expired", {})
                        return
                    wait = min(wait, left)
                try:
                    round_ = await asyncio.wait_for(watcher.next(), wait)
                except TimeoutError:
                    if await request.is_disconnected():
                        return
                    yield b": keepalive\n\n"
                    continue
                if round_ is None:  # dropped (too slow), or the server is stopping
                    if watcher.dropped:
                        yield _frame("overflow", {})
                    return
                # made once for every stream of callers who see the same projects
                body = round_.once(seen, functools.partial(frames, round_.changes, seen))
                if body:
                    yield body
        finally:
            changes.unwatch(watcher)

    headers = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}
    return StreamingResponse(stream(), media_type="text/event-stream", headers=headers)
