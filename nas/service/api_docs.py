"""``/api/docs``: Swagger UI served from the installed ``swagger-ui-bundle-v2`` package.

FastAPI's own docs page loads Swagger UI from a CDN, so offline (or behind a strict proxy) it
is a blank page. This is FastAPI's "self-hosting JavaScript and CSS for docs" recipe: the app
is created with ``docs_url=None`` and this router serves the page and its three assets, as
the pages serve plotly.js. The bundle is Swagger UI 5, the first major version that renders
the OpenAPI 3.1 schemas FastAPI writes. ReDoc stays off (``redoc_url=None``): one docs page.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse

from nas.errors import NotFoundError

DOCS_URL = "/api/docs"
ASSET_PREFIX = "/vendor/swagger-ui"
# Only what the page loads; the bundle's other files (index.html, source maps) stay private.
ASSETS = {"swagger-ui-bundle.js": "text/javascript", "swagger-ui.css": "text/css",
          "favicon-32x32.png": "image/png"}

router = APIRouter(include_in_schema=False)


@lru_cache(maxsize=1)
def swagger_ui_dir() -> Path:
    """Swagger UI's files inside the installed bundle (a hard dependency of ``nas``)."""
    import swagger_ui_bundle

    return Path(str(swagger_ui_bundle.swagger_ui_path))


@router.get(DOCS_URL, response_class=HTMLResponse)
def swagger_ui(request: Request) -> HTMLResponse:
    """The interactive API reference; every URL on it is this server's own."""
    return get_swagger_ui_html(
        openapi_url=request.app.openapi_url, title=f"{request.app.title} API",
        swagger_js_url=f"{ASSET_PREFIX}/swagger-ui-bundle.js",
        swagger_css_url=f"{ASSET_PREFIX}/swagger-ui.css",
        swagger_favicon_url=f"{ASSET_PREFIX}/favicon-32x32.png", oauth2_redirect_url=None,
        # validatorUrl null: no badge fetched from validator.swagger.io.
        swagger_ui_parameters={"validatorUrl": None})


@router.get(ASSET_PREFIX + "/{name}")
def swagger_asset(name: str) -> FileResponse:
    if name not in ASSETS:
        raise NotFoundError(f"no Swagger UI asset {name!r} (served: {', '.join(ASSETS)})")
    return FileResponse(swagger_ui_dir() / name, media_type=ASSETS[name],
                        headers={"Cache-Control": "public, max-age=86400"})
