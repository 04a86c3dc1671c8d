"""`create_app(store)`: the FastAPI application behind ``nas serve``.

Routes live in routers (`nas.service.api` for JSON, `nas.service.pages` for HTML); adding
one is one ``include_router`` line below. Shared state hangs off ``app.state``: the store,
the `ViewCache`, the `Launcher` and the template environment.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from nas.errors import ConfigError, NasError, NotFoundError, StoreError
from nas.service import api, api_docs, compare_page, export_api, launch_page, pages
from nas.service.auth import GuardMiddleware
from nas.service.launcher import Conflict, Launcher, child_db_url, is_memory_store
from nas.service.templating import STATIC_DIR, environment
from nas.service.views import ViewCache

API_DESCRIPTION = """Browse hardware-aware architecture searches: their Pareto fronts and
candidates, start searches and stop them. Candidates carry their latency and memory per
hardware profile (every workload quantity, the machine that measured it, earlier measurements);
a re-timed front carries 95% intervals and the pairs whose order they do not resolve
(`/api/searches/{name}/retimes`). Requests that change anything (POST) need
`Authorization: Bearer <token>` when the server was started with a token."""


def create_app(store, token: str | None = None, *, allowed_hosts: Sequence[str] | None = None,
               launcher: Launcher | None = None, workdir: Path | None = None) -> FastAPI:
    """The app over ``store``. ``token`` guards every write; ``allowed_hosts`` (set by
    ``nas serve`` on loopback) rejects other Host headers; ``launcher`` defaults to one that
    starts ``python -m nas search`` processes on the same database."""
    from nas import __version__

    app = FastAPI(title="nas", version=__version__, description=API_DESCRIPTION,
                  docs_url=None, redoc_url=None, openapi_url="/api/openapi.json")
    app.state.store = store
    app.state.views = ViewCache(store)
    app.state.launcher = launcher or (None if is_memory_store(store)
                                      else Launcher(child_db_url(store), workdir))
    app.state.templates = environment()
    app.state.token_required = token is not None
    app.state.token = token  # the form of the "New search" page checks it itself

    app.include_router(api.router)
    app.include_router(pages.router)
    app.include_router(launch_page.router)  # /new: start a search from a form
    app.include_router(compare_page.router)  # /compare: fronts of several searches
    app.include_router(export_api.router)
    app.include_router(api_docs.router)  # /api/docs with Swagger UI served locally
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    app.add_middleware(GuardMiddleware, token=token, allowed_hosts=allowed_hosts)
    _add_error_handlers(app)
    return app


def _wants_html(request: Request) -> bool:
    """Errors outside ``/api`` are pages (for a browser, curl's ``*/*`` or no Accept at all),
    unless the client asks for JSON and not HTML; ``/api/...`` always answers JSON."""
    if request.url.path.startswith("/api/"):
        return False
    accept = request.headers.get("accept", "")
    return "text/html" in accept or "application/json" not in accept


def _error(request: Request, status: int, message: str,
           headers: Mapping[str, str] | None = None) -> Response:
    if _wants_html(request):
        html = request.app.state.templates.get_template("error.html").render(
            status=status, message=message, path=request.url.path, offline=False,
            token_required=request.app.state.token_required)
        return HTMLResponse(html, status_code=status, headers=headers)
    return JSONResponse({"detail": message}, status_code=status, headers=headers)


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, err: StarletteHTTPException) -> Response:
        # No route matched (``/nope``), a wrong method...: a page outside /api, FastAPI's JSON in it.
        if not _wants_html(request) or not isinstance(err.detail, str):
            return await http_exception_handler(request, err)
        message = f"there is no page at {request.url.path}" if err.status_code == 404 \
            else err.detail
        return _error(request, err.status_code, message, headers=err.headers)

    @app.exception_handler(NotFoundError)
    async def not_found(request: Request, err: NotFoundError) -> Response:
        return _error(request, 404, str(err))

    @app.exception_handler(ConfigError)
    async def bad_config(request: Request, err: ConfigError) -> Response:  # noqa: ARG001 - FastAPI's exception-handler signature
        # The same shape as FastAPI's own 422s, so clients read one format.
        loc = ["body", *(err.field.split(".") if err.field else [])]
        return JSONResponse({"detail": [{"loc": loc, "msg": str(err), "type": "value_error"}]},
                            status_code=422)

    @app.exception_handler(Conflict)
    async def conflict(request: Request, err: Conflict) -> Response:
        return _error(request, 409, str(err))

    @app.exception_handler(StoreError)
    async def store_error(request: Request, err: StoreError) -> Response:
        return _error(request, 503, f"database unavailable: {err}")

    @app.exception_handler(NasError)
    async def nas_error(request: Request, err: NasError) -> Response:
        return _error(request, 400, str(err))

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, err: RequestValidationError) -> Response:
        errors = [{k: v for k, v in e.items() if k in ("loc", "msg", "type")} for e in err.errors()]
        if _wants_html(request):
            fields = "; ".join(f"{'.'.join(map(str, e['loc'][1:]))}: {e['msg']}" for e in errors)
            return _error(request, 422, f"invalid request: {fields}")
        return JSONResponse({"detail": errors}, status_code=422)
