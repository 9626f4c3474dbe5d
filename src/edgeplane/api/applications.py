"""/api/v1/applications: descriptors in JSON or YAML (``Content-Type: application/yaml``)."""

from __future__ import annotations

from typing import Annotated, Any

import orjson
import yaml
from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError

from edgeplane.errors import Invalid
from edgeplane.model import Application, ApplicationSpec, ApplicationView, Page
from edgeplane.root import Applications
from edgeplane.root.applications import status_of

router = APIRouter(prefix="/applications", tags=["applications"])

_DESCRIPTOR = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/ApplicationSpec"}},
            "application/yaml": {"schema": {"$ref": "#/components/schemas/ApplicationSpec"}},
        },
    }
}


def _view(app: Application) -> ApplicationView:
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
    kind = request.headers.get("content-type", "application/json")
    try:
        data: Any = yaml.safe_load(raw) if "yaml" in kind else orjson.loads(raw)
    except (yaml.YAMLError, orjson.JSONDecodeError) as exc:
        raise Invalid(
            f"body is not valid {'YAML' if 'yaml' in kind else 'JSON'}: {exc}", field="body"
        ) from None
    try:
        return ApplicationSpec.model_validate(data)
    except ValidationError as exc:
        raise RequestValidationError(
            [{**e, "loc": ("body", *e["loc"])} for e in exc.errors(include_url=False)]
        ) from None


@router.post("", status_code=201, response_model=ApplicationView, openapi_extra=_DESCRIPTOR)
async def create(request: Request, apps: AppsDep) -> ApplicationView:
    return _view(await apps.create(await _descriptor(request)))


@router.get("", response_model=Page[ApplicationView])
async def list_(
    apps: AppsDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> Page[ApplicationView]:
    found = apps.all()
    return Page[ApplicationView](
        items=[_view(a) for a in found[offset : offset + limit]], total=len(found)
    )


@router.get("/{app_id}", response_model=ApplicationView)
async def get(app_id: str, apps: AppsDep) -> ApplicationView:
    return _view(apps.get(app_id))


@router.put("/{app_id}", response_model=ApplicationView, openapi_extra=_DESCRIPTOR)
async def replace(app_id: str, request: Request, apps: AppsDep) -> ApplicationView:
    return _view(await apps.replace(app_id, await _descriptor(request)))


@router.delete("/{app_id}", status_code=204)
async def delete(app_id: str, apps: AppsDep) -> Response:
    await apps.delete(app_id)
    return Response(status_code=204)
