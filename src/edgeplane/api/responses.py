"""Responses serialised once, on the hot paths.

FastAPI turns a returned model into a dict, validates that dict against the route's
``response_model`` and only then serialises it: three passes over every task document.
Routes that return documents the manager built itself return them through
:func:`document` instead; their ``response_model`` still describes them in OpenAPI.
"""

from __future__ import annotations

from fastapi import Response
from pydantic import BaseModel

JSON = "application/json"


def document(model: BaseModel, status_code: int = 200) -> Response:
    return Response(model.model_dump_json(), status_code=status_code, media_type=JSON)
