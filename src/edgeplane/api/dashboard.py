"""The dashboard: one static page (package data) that polls the REST API in the browser.

Loading the page needs no token: the page asks for one and sends it on every API call.
The Content-Security-Policy allows only the page's own inline script and style (by hash)
and calls to this origin, so nothing injected into it could read the stored token.
"""

from __future__ import annotations

import base64
import hashlib
import re
from dataclasses import dataclass
from functools import cache
from importlib.resources import files

from fastapi import APIRouter
from fastapi.responses import HTMLResponse, RedirectResponse

router = APIRouter(include_in_schema=False)

PATH = "/dashboard"


@dataclass(frozen=True)
class Page:
    html: str
    csp: str


def _hashes(html: str, tag: str) -> str:
    blocks = re.findall(rf"<{tag}>(.*?)</{tag}>", html, flags=re.DOTALL)
    digests = (base64.b64encode(hashlib.sha256(b.encode()).digest()).decode() for b in blocks)
    return " ".join(f"'sha256-{d}'" for d in digests)


@cache
def page() -> Page:
    """The page and its policy, read once from the package."""
    html = files("edgeplane.api").joinpath("dashboard/index.html").read_text(encoding="utf-8")
    csp = (
        "default-src 'none'; connect-src 'self'; img-src data:; "
        f"script-src {_hashes(html, 'script')}; style-src {_hashes(html, 'style')}; "
        "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    )
    return Page(html=html, csp=csp)


@router.get("/")
async def index() -> RedirectResponse:
    return RedirectResponse(PATH)


@router.get(PATH)
async def dashboard() -> HTMLResponse:
    found = page()
    headers = {
        "Content-Security-Policy": found.csp,
        "Cache-Control": "no-cache",
        "Referrer-Policy": "no-referrer",
    }
    return HTMLResponse(found.html, headers=headers)
