"""/api/v1/workers/{id}/chutes… and /changes/{id}: a worker's chutes managed through the
manager, with the shapes of the node's Edge API (docs/chutes.md). Each call goes to the
worker over MQTT (``manager/chutes.py``); the worker answers with its Edge API. At a root
the call goes to the cluster that holds the worker (``manager/chute_forward.py``).

Who may call: the policy's (``security/roles.py``): an admin, or the worker's owner (at a
cluster's manager, which knows the owners).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse

from edgeplane.api.audit import note
from edgeplane.api.deps import CallerDep, ManagerDep
from edgeplane.api.follow import event
from edgeplane.api.usage import Points, Since, Until, UsageSeries
from edgeplane.chutes import manifest as manifests
from edgeplane.chutes.bodies import read_body
from edgeplane.chutes.catalog import parse_ref
from edgeplane.errors import EdgeplaneError, Invalid, Unavailable
from edgeplane.manager import Manager
from edgeplane.manager.chutes import LogFollow
from edgeplane.manager.series import DEFAULT_POINTS
from edgeplane.store import TokenRecord

router = APIRouter(prefix="/workers", tags=["chutes"])

#: how often the progress stream asks the worker for the change
STREAM_POLL_S = 0.5
_ENDED = ("done", "failed", "rolled_back")
#: seconds a worker sends a chute's output per request; asked again at half of it
FOLLOW_S = 30.0
#: seconds one log stream lasts at most (a client follows on with a new request)
MAX_STREAM_S = 3600.0
#: seconds between checks that the worker is still there (and comments that keep
#: proxies from closing a quiet stream)
TICK_S = 1.0


def _name(name: str) -> str:
    if not manifests.valid_name(name):
        raise Invalid(f"{name!r} is not a chute name", field="name")
    return name


def _change_id(change_id: str) -> str:
    if not (0 < len(change_id) <= 64 and all(c.isalnum() or c in "-_." for c in change_id)):
        raise Invalid(f"{change_id!r} is not a change id", field="change_id")
    return change_id


def _accepted(answer: Any) -> JSONResponse:
    return JSONResponse(answer, status_code=202)


async def _manifest(
    request: Request, manager: Manager, caller: TokenRecord
) -> tuple[Any, manifests.Manifest, dict[str, str]]:
    """The body's manifest (checked: 422 names the field), and the query telling the
    worker where it came from. A body ``{"store": "NAME[@VERSION]"}`` names a chute in
    the store, resolved here as the caller sees the store (docs/chutes.md)."""
    body = await read_body(request)
    if not (isinstance(body, dict) and "store" in body):
        return body, manifests.parse(body), {}
    extra = sorted(str(key) for key in body if key != "store")
    if extra:
        raise Invalid(f"{extra[0]}: unknown field beside store", field=extra[0])
    found = await manager.chute_store.resolve(caller, parse_ref(body["store"]), field="store")
    version = found.version
    note(request.scope, detail=f"from the store: {found.ref} ({version.digest})")
    return found.manifest, manifests.parse(found.manifest), {"store": found.ref}


@router.post("/{worker_id}/chutes", status_code=202)
async def install(
    worker_id: str, request: Request, manager: ManagerDep, caller: CallerDep
) -> JSONResponse:
    """Install a manifest on the worker (checked here first: 422 names the field), or
    ``{"store": "NAME@VERSION"}`` (``NAME``: its latest version) from the chute store."""
    body, _, query = await _manifest(request, manager, caller)
    answer = await manager.chutes.call(worker_id, "POST", "/chutes", body=body, query=query)
    return _accepted(answer)


@router.get("/{worker_id}/chutes")
async def listing(worker_id: str, manager: ManagerDep) -> Any:
    """The worker's chutes (docs/chutes.md, "Through the control plane")."""
    return await manager.chutes.call(worker_id, "GET", "/chutes")


@router.get("/{worker_id}/chutes/{name}")
async def show(worker_id: str, name: str, manager: ManagerDep) -> Any:
    """One chute: version, state, services, resources, last change."""
    return await manager.chutes.call(worker_id, "GET", f"/chutes/{_name(name)}")


@router.put("/{worker_id}/chutes/{name}", status_code=202)
async def update(
    worker_id: str, name: str, request: Request, manager: ManagerDep, caller: CallerDep
) -> JSONResponse:
    """Update a chute to the manifest in the body (or ``{"store": "NAME@VERSION"}``): the
    new version replaces the old once healthy."""
    body, found, query = await _manifest(request, manager, caller)
    if found.name != _name(name):
        raise Invalid(f"the manifest is of {found.name!r}, not {name!r}", field="name")
    path = f"/chutes/{name}"
    return _accepted(await manager.chutes.call(worker_id, "PUT", path, body=body, query=query))


@router.delete("/{worker_id}/chutes/{name}", status_code=202)
async def delete(worker_id: str, name: str, manager: ManagerDep) -> JSONResponse:
    """Stop and remove a chute."""
    return _accepted(await manager.chutes.call(worker_id, "DELETE", f"/chutes/{_name(name)}"))


@router.post("/{worker_id}/chutes/{name}/{action}", status_code=202)
async def act(worker_id: str, name: str, action: str, manager: ManagerDep) -> JSONResponse:
    """Start, stop or restart a chute."""
    if action not in ("start", "stop", "restart"):
        raise Invalid(f"unknown action {action!r}: start, stop or restart", field="action")
    path = f"/chutes/{_name(name)}/{action}"
    return _accepted(await manager.chutes.call(worker_id, "POST", path))


@router.get(
    "/{worker_id}/chutes/{name}/logs",
    response_class=PlainTextResponse,
    response_model=None,
    responses={200: {"content": {"text/event-stream": {}}}},
)
async def logs(
    worker_id: str,
    name: str,
    manager: ManagerDep,
    service: str | None = None,
    follow: bool = False,
) -> PlainTextResponse | StreamingResponse:
    """A service's last output; with ``follow`` a ``text/event-stream`` of what it prints
    from now on (``log`` events), until the chute is deleted (``end``) or the client goes."""
    chute = _name(name)
    wanted = _name(service) if service else None
    if not follow:
        query = {"service": wanted} if wanted else {}
        found = await manager.chutes.call(worker_id, "GET", f"/chutes/{chute}/logs", query=query)
        return PlainTextResponse(found if isinstance(found, str) else json.dumps(found))
    # a 404 or 503 before the stream starts
    shown = await manager.chutes.call(worker_id, "GET", f"/chutes/{chute}")
    if isinstance(shown, dict) and shown.get("stale"):
        raise Unavailable(
            f"worker {worker_id} cannot be reached now: its chutes' output cannot be followed",
            field="id",
        )
    follower = manager.chutes.open_follow(worker_id)
    try:
        await manager.chutes.ask_logs(follower, chute, wanted, FOLLOW_S)
    except BaseException:
        manager.chutes.close_follow(follower, chute)
        raise
    return StreamingResponse(
        follow_chute_logs(manager, follower, chute, wanted), media_type="text/event-stream"
    )


async def follow_chute_logs(
    manager: Manager, follower: LogFollow, chute: str, service: str | None
) -> AsyncIterator[bytes]:
    """Events: ``log`` (the text, one ``data:`` line per line), ``gap`` (``{"lost": N}``:
    the reader was slow) and a last ``end`` (``{"reason": …}``)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + MAX_STREAM_S
    renew_at, check_at = loop.time() + FOLLOW_S / 2, loop.time() + TICK_S
    lost = 0
    calls = manager.chutes
    try:
        yield b": following\n\n"
        while True:
            if calls.closing:
                yield event("end", json.dumps({"reason": "the server is stopping"}))
                return
            if loop.time() >= renew_at:  # (renewed while output flows, too)
                await calls.ask_logs(follower, chute, service, FOLLOW_S)
                renew_at = loop.time() + FOLLOW_S / 2
            chunk = None
            with contextlib.suppress(TimeoutError):
                chunk = await asyncio.wait_for(follower.queue.get(), TICK_S)
            if follower.lost > lost:
                yield event("gap", json.dumps({"lost": follower.lost - lost}))
                lost = follower.lost
            if chunk is not None:
                if chunk.data:
                    yield event("log", chunk.data)
                if chunk.end:
                    yield event("end", json.dumps({"reason": chunk.reason or "ended"}))
                    return
            if loop.time() < check_at:
                continue
            check_at = loop.time() + TICK_S
            reason = None
            if follower.ended is not None and follower.queue.empty():
                reason = follower.ended  # its end was dropped from a full queue
            elif not calls.reachable(follower.worker_id):
                reason = f"worker {follower.worker_id} went offline"
            elif loop.time() > deadline:
                reason = f"the stream lasted {MAX_STREAM_S:g} s: follow again"
            if reason is not None:
                yield event("end", json.dumps({"reason": reason}))
                return
            if chunk is None:
                yield b": tick\n\n"
    finally:
        calls.close_follow(follower, chute)


@router.get("/{worker_id}/chutes/{name}/metrics", response_model=UsageSeries)
async def metrics(
    worker_id: str,
    name: str,
    manager: ManagerDep,
    service: str | None = None,
    since: Since = None,
    until: Until = None,
    points: Points = DEFAULT_POINTS,
) -> Any:
    """A chute service's usage samples (its cgroup: cpu, memory, processes, io), as its
    worker sent them by the chute's monitoring profile (docs/metrics.md); ``service``
    defaults to the chute's first. Kept by the worker's manager, so read while the worker
    is offline too; through the root, from the cluster that holds the worker."""
    if since is not None and until is not None and since > until:
        raise Invalid("since must not be after until", field="since")
    query = {"points": str(points)}
    if service:
        if not manifests.valid_name(service):
            raise Invalid(f"{service!r} is not a service name", field="service")
        query["service"] = service
    for key, value in (("since", since), ("until", until)):
        if value is not None:
            query[key] = repr(value)
    path = f"/chutes/{_name(name)}/metrics"
    return await manager.chutes.call(worker_id, "GET", path, query=query)


@router.get("/{worker_id}/chutes/{name}/config")
async def get_config(worker_id: str, name: str, manager: ManagerDep) -> Any:
    """A chute's config, an object of scalars."""
    return await manager.chutes.call(worker_id, "GET", f"/chutes/{_name(name)}/config")


@router.put("/{worker_id}/chutes/{name}/config", status_code=202)
async def set_config(
    worker_id: str, name: str, request: Request, manager: ManagerDep
) -> JSONResponse:
    """Replace a chute's config (the services see it at /run/chute/config.json)."""
    body = await read_body(request)
    path = f"/chutes/{_name(name)}/config"
    return _accepted(await manager.chutes.call(worker_id, "PUT", path, body=body))


@router.get("/{worker_id}/changes/{change_id}")
async def change(worker_id: str, change_id: str, manager: ManagerDep) -> Any:
    """A change on the worker: state, steps and log."""
    return await manager.chutes.call(worker_id, "GET", f"/changes/{_change_id(change_id)}")


@router.get("/{worker_id}/changes/{change_id}/stream")
async def stream(worker_id: str, change_id: str, manager: ManagerDep) -> StreamingResponse:
    """Server-sent ``change`` events, as the node's: the change now and after every
    transition until it ends (the manager asks the worker; a 404 comes before the stream)."""
    path = f"/changes/{_change_id(change_id)}"
    first = await manager.chutes.call(worker_id, "GET", path)

    async def events() -> AsyncIterator[str]:
        view, last = first, None
        while True:
            if view != last:
                yield f"event: change\ndata: {json.dumps(view)}\n\n"
                last = view
            if not isinstance(view, dict) or view.get("state") in _ENDED:
                return
            if manager.chutes.closing:  # the change goes on on the node: ask again later
                yield f"event: error\ndata: {json.dumps({'detail': 'the server is stopping'})}\n\n"
                return
            await asyncio.sleep(STREAM_POLL_S)
            try:
                view = await manager.chutes.call(worker_id, "GET", path)
            except EdgeplaneError as exc:  # offline now: say so, the change goes on there
                yield f"event: error\ndata: {json.dumps({'detail': exc.detail})}\n\n"
                return

    return StreamingResponse(events(), media_type="text/event-stream")
