"""/api/v1/workers/{id}/chutes… and /changes/{id}: a worker's chutes managed through the
manager, with the shapes of the node's Edge API (docs/chutes.md). Each call goes to the
worker over MQTT (``manager/chutes.py``); the worker answers with its Edge API.

Who may call: the policy's (``security/roles.py``): an admin, or the worker's owner.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse

from edgeplane.api.audit import note
from edgeplane.api.deps import CallerDep, ManagerDep
from edgeplane.chutes import manifest as manifests
from edgeplane.chutes.bodies import read_body
from edgeplane.chutes.catalog import parse_ref
from edgeplane.errors import EdgeplaneError, Invalid
from edgeplane.manager import Manager
from edgeplane.store import TokenRecord

router = APIRouter(prefix="/workers", tags=["chutes"])

#: how often the progress stream asks the worker for the change
STREAM_POLL_S = 0.5
_ENDED = ("done", "failed", "rolled_back")


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


@router.get("/{worker_id}/chutes/{name}/logs", response_class=PlainTextResponse)
async def logs(
    worker_id: str, name: str, manager: ManagerDep, service: str | None = None
) -> PlainTextResponse:
    """A service's last output (``follow`` is the node's own: not through the manager)."""
    query = {"service": _name(service)} if service else {}
    found = await manager.chutes.call(worker_id, "GET", f"/chutes/{_name(name)}/logs", query=query)
    return PlainTextResponse(found if isinstance(found, str) else json.dumps(found))


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
            await asyncio.sleep(STREAM_POLL_S)
            try:
                view = await manager.chutes.call(worker_id, "GET", path)
            except EdgeplaneError as exc:  # offline now: say so, the change goes on there
                yield f"event: error\ndata: {json.dumps({'detail': exc.detail})}\n\n"
                return

    return StreamingResponse(events(), media_type="text/event-stream")
