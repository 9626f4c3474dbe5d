"""/api/v1/store/chutes: the chute store (docs/chutes.md, "The chute store").

Publish a manifest (JSON, or YAML as ``application/yaml``) by its name and version; list
the chutes, show one with its versions, read a version's manifest, delete a version.
Who may call: a chute belongs to a project (docs/security.md): its viewers read it, its
operators publish and delete; another project's chute is "not found".
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, Response

from edgeplane.api.audit import note
from edgeplane.api.deps import CallerDep, ManagerDep
from edgeplane.api.params import Limit, Offset
from edgeplane.api.responses import document
from edgeplane.chutes.bodies import read_body
from edgeplane.chutes.catalog import (
    PublishedVersion,
    StoreChute,
    StoreChuteSummary,
    StoreManifest,
)
from edgeplane.model import Page

router = APIRouter(prefix="/store/chutes", tags=["store"])

_MANIFEST = {
    "requestBody": {
        "required": True,
        "description": "A chute manifest (chute.yaml, docs/chutes.md).",
        "content": {
            "application/json": {"schema": {"type": "object"}},
            "application/yaml": {"schema": {"type": "object"}},
        },
    }
}
ProjectQuery = Annotated[
    str | None,
    Query(
        min_length=1,
        max_length=63,
        pattern=r"^[a-z0-9][a-z0-9_.-]*$",
        description="the chute's project (default: its own if it exists, else default)",
    ),
]


@router.post(
    "",
    status_code=201,
    response_model=PublishedVersion,
    responses={200: {"model": PublishedVersion, "description": "Published already, the same"}},
    openapi_extra=_MANIFEST,
)
async def publish(
    request: Request, manager: ManagerDep, caller: CallerDep, project: ProjectQuery = None
) -> Response:
    """Publish a manifest as ``name@version``: 201 when new, 200 when that version is
    published already with the same content, 409 when with other content."""
    body = await read_body(request)
    found, written = await manager.chute_store.publish(caller, body, project)
    note(request.scope, resource_id=f"{found.name}@{found.version}", project=found.project)
    return document(found, 201 if written else 200)


@router.get("", response_model=Page[StoreChuteSummary])
async def listing(
    manager: ManagerDep, caller: CallerDep, limit: Limit = 100, offset: Offset = 0
) -> Response:
    """The chutes in the store (those of the caller's projects), by name."""
    return document(await manager.chute_store.listing(caller, limit=limit, offset=offset))


@router.get("/{name}", response_model=StoreChute)
async def show(name: str, manager: ManagerDep, caller: CallerDep) -> Response:
    """A chute: its project, latest version and every version, newest first."""
    return document(await manager.chute_store.show(caller, name))


@router.get("/{name}/versions/{version}", response_model=StoreManifest)
async def version(name: str, version: str, manager: ManagerDep, caller: CallerDep) -> Response:
    """A published version and its manifest."""
    return document(await manager.chute_store.version(caller, name, version))


@router.delete("/{name}/versions/{version}", status_code=204)
async def delete(
    name: str, version: str, request: Request, manager: ManagerDep, caller: CallerDep
) -> Response:
    """Delete a version: it can no longer be read or installed, and ``name@version`` is
    never published again with other content."""
    note(request.scope, resource_id=f"{name}@{version}")
    await manager.chute_store.delete(caller, name, version)
    return Response(status_code=204)
