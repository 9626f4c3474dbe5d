"""``/docs``: Swagger UI over ``/openapi.json``, its files served from the package
``swagger-ui-bundle`` (pinned in pyproject), not from a CDN, so the page works on a node
with no way out to the internet. Like ``/openapi.json`` it needs no token: it only shows
the contract; every call made from it carries the token typed into it.
"""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from swagger_ui_bundle import swagger_ui_path  # type: ignore[import-untyped]

#: Where Swagger UI's own files are served.
STATIC = "/docs/static"


def install(app: FastAPI) -> None:
    """Serve ``/docs`` and its files on ``app`` (made with ``docs_url=None``)."""
    app.mount(STATIC, StaticFiles(directory=str(swagger_ui_path)), name="swagger-ui")

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=app.openapi_url or "/openapi.json",
            title=f"{app.title} API",
            swagger_js_url=f"{STATIC}/swagger-ui-bundle.js",
            swagger_css_url=f"{STATIC}/swagger-ui.css",
            swagger_favicon_url=f"{STATIC}/favicon-32x32.png",
        )
