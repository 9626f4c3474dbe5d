"""The dashboard: a page, a stylesheet and a script (package data, no build step) that
call the REST API and follow ``GET /api/v1/events`` in the browser (docs/dashboard.md).

Loading the files needs no token: the page asks for one and sends it on every API call.
The Content-Security-Policy allows scripts and styles from these files only (nothing
inline) and calls to this origin, so nothing injected into the page could run or read the
stored token.
"""

from __future__ import annotations

from functools import cache
from importlib.resources import files

from fastapi import APIRouter
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from edgeplane.errors import NotFound

router = APIRouter(include_in_schema=False)

PATH = "/dashboard"
ASSETS = f"{PATH}/assets"
#: The files the page loads, by name, with their media types: nothing else is served.
TYPES = {
    "app.js": "text/javascript; charset=utf-8",
    "app.css": "text/css; charset=utf-8",
}
POLICY = (
    "default-src 'none'; connect-src 'self'; img-src data:; "
    "script-src 'self'; style-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
HEADERS = {
    "Content-Security-Policy": POLICY,
    "Cache-Control": "no-cache",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
}


@cache
def read(name: str) -> str:
    """A file of the page, read once from the package."""
    return files("edgeplane.api").joinpath(f"dashboard/{name}").read_text(encoding="utf-8")


@router.get("/")
async def index() -> RedirectResponse:
    return RedirectResponse(PATH)


@router.get(PATH)
async def dashboard() -> HTMLResponse:
    return HTMLResponse(read("index.html"), headers=HEADERS)


@router.get(ASSETS + "/{name}")
async def asset(name: str) -> Response:
    media_type = TYPES.get(name)
    if media_type is None:
        raise NotFound(f"no dashboard file {name!r}", field="name")
    return Response(read(name), media_type=media_type, headers=HEADERS)
