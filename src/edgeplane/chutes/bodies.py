"""A chute call's body: JSON, or YAML sent as ``application/yaml`` (the Edge API's and the
manager's chute routes read it alike)."""

from __future__ import annotations

import json
from typing import Any

from fastapi import Request

from edgeplane import safeyaml
from edgeplane.errors import Invalid

MAX_BODY = 1 << 20


async def read_body(request: Request) -> Any:
    """A JSON body, or YAML sent as ``application/yaml`` (also the manager's chute routes)."""
    raw = await request.body()
    if len(raw) > MAX_BODY:
        raise Invalid(f"the body is over {MAX_BODY} bytes", field="body")
    kind = request.headers.get("content-type", "application/json").split(";")[0].strip()
    if kind in ("application/yaml", "application/x-yaml", "text/yaml"):
        return safeyaml.load(raw, "body")
    try:
        return json.loads(raw)
    except ValueError:
        raise Invalid(
            "the body is not JSON (send YAML as application/yaml)", field="body"
        ) from None
