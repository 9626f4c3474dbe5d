"""/api/v1/applications: descriptors in JSON or YAML (``Content-Type: application/yaml``)."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, Request, Response
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError

from edgeplane import safeyaml
from edgeplane.api.deps import CallerDep
from edgeplane.api.params import Limit, Offset
from edgeplane.api.routing import JsonRoute
from edgeplane.errors import Invalid
from edgeplane.model import Application, ApplicationSpec, ApplicationView, Page
from edgeplane.root import Applications
from edgeplane.root.applications import status_of
from edgeplane.security import projects
from edgeplane.store import TokenRecord

router = APIRouter(prefix="/applications", tags=["applications"], route_class=JsonRoute)

_DESCRIPTOR = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/ApplicationSpec"}},
            "application/yaml": {"schema": {"$ref": "#/components/schemas/ApplicationSpec"}},
        },
    }
}


def view(app: Application) -> ApplicationView:
    return ApplicationView(
        id=app.id,
        name=app.name,
        state=app.state,
        generation=app.generation,
        services=status_of(app),
        spec=app.spec,
        created_at=app.created_at,
        updated_at=app.updated_at,
    )


async def _applications(request: Request) -> Applications:
    found: Applications = request.app.state.applications
    return found


AppsDep = Annotated[Applications, Depends(_applications)]


async def _descriptor(request: Request) -> ApplicationSpec:
    """The body as an :class:`ApplicationSpec`; YAML or JSON by content type."""
    raw = await request.body()
    if "yaml" in request.headers.get("content-type", "application/json"):
        # Bounded (safeyaml: 1 MiB, aliases, depth), and on a thread: a MiB of YAML is
        # about a second of parsing, which the loop must not wait for.
        data: Any = await asyncio.to_thread(safeyaml.load, raw, "body")
    else:
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise Invalid(f"body is not valid JSON: {exc}", field="body") from None
    try:
        return ApplicationSpec.model_validate(data)
    except ValidationError as exc:
        raise RequestValidationError(
            [{**e, "loc": ("body", *e["loc"])} for e in exc.errors(include_url=False)]
        ) from None


@router.post("", status_code=201, response_model=ApplicationView, openapi_extra=_DESCRIPTOR)
async def create(request: Request, apps: AppsDep, caller: CallerDep) -> ApplicationView:
    spec = await _descriptor(request)
    projects.check_new(caller, spec.project)
    return view(await apps.create(spec))


@router.get("", response_model=Page[ApplicationView])
async def list_(
    apps: AppsDep,
    caller: CallerDep,
    limit: Limit = 100,
    offset: Offset = 0,
) -> Page[ApplicationView]:
    # The root keeps every application in memory (``Applications.all``): filtered there,
    # no store query to narrow.
    found = [app for app in apps.all() if projects.sees(caller, app.project)]
    return Page[ApplicationView](
        items=[view(a) for a in found[offset : offset + limit]], total=len(found)
    )


@router.get("/{app_id}", response_model=ApplicationView)
async def get(app_id: str, apps: AppsDep, caller: CallerDep) -> ApplicationView:
    return view(_owned(apps, caller, app_id))


def _owned(apps: Applications, caller: TokenRecord, app_id: str) -> Application:
    app = apps.get(app_id)
    projects.check(caller, app.project, "application", app_id)
    return app


@router.put("/{app_id}", response_model=ApplicationView, openapi_extra=_DESCRIPTOR)
async def replace(
    app_id: str, request: Request, apps: AppsDep, caller: CallerDep
) -> ApplicationView:
    spec = await _descriptor(request)  # a bad body is 422 whoever asks, before any lookup
    _owned(apps, caller, app_id)
    return view(await apps.replace(app_id, spec))


@router.delete("/{app_id}", status_code=204)
async def delete(app_id: str, apps: AppsDep, caller: CallerDep) -> Response:
    _owned(apps, caller, app_id)
    await apps.delete(app_id)
    return Response(status_code=204)
