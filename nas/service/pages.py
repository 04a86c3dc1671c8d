"""HTML pages: the searches, one search, one candidate. Thin: the data comes from the same
functions as the API (`nas.service.api`), the drawing from `nas.plots`, the live updates
from small polls in ``static/search.js``."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, HTMLResponse, Response

from nas import plots
from nas.errors import NotFoundError
from nas.service.api import load_candidate
from nas.service.lineage import derivation_rows, derivation_summary
from nas.service.measurements import history_by_profile, latency_out, measurement_label
from nas.service.templating import plotly_js_path
from nas.service.views import ACTIVE_STATUSES, candidate_out, search_out, search_url, summary_out

router = APIRouter(include_in_schema=False)


def render(request: Request, template: str, status_code: int = 200, **context: Any) -> HTMLResponse:
    html = request.app.state.templates.get_template(template).render(
        offline=False, token_required=request.app.state.token_required, **context)
    return HTMLResponse(html, status_code=status_code)


@router.get("/", response_class=HTMLResponse)
def searches_page(request: Request) -> HTMLResponse:
    summaries = [summary_out(s) for s in request.app.state.views.summaries()]
    return render(request, "index.html", searches=summaries,
                  active=any(s["status"] in ACTIVE_STATUSES for s in summaries))


@router.get("/partials/searches", response_class=HTMLResponse)
def searches_rows(request: Request) -> HTMLResponse:
    """The list's table body, re-fetched by the list page while a search runs."""
    summaries = [summary_out(s) for s in request.app.state.views.summaries()]
    response = render(request, "_search_rows.html", searches=summaries)
    response.headers["X-Active"] = str(int(any(s["status"] in ACTIVE_STATUSES for s in summaries)))
    return response


@router.get("/searches/{name}", response_class=HTMLResponse)
def search_page(name: str, request: Request) -> HTMLResponse:
    try:
        summary, record = request.app.state.views.search(name)
    except NotFoundError:
        launch = request.app.state.launcher.get(name) if request.app.state.launcher else None
        if launch is None:
            raise
        # Launched from the API, but its driver has not created the search yet (or failed).
        return render(request, "starting.html", name=name,
                      returncode=launch.returncode(), log=launch.log_tail(),
                      api_url=f"/api{search_url(name)}")
    # Only the search's record: the figures and the table come from the API, so this page
    # answers in milliseconds however many candidates the search has.
    search = search_out(summary, record)
    axes = list(plots.default_axes([o["metric"] for o in search["objectives"]]))
    return render(request, "search.html", search=search, name=name, axes=axes, data=None,
                  axis_choices=plots.axis_metrics(record), api_base=f"/api{search_url(name)}")


@router.get("/searches/{name}/thumbnail.svg")
def thumbnail(name: str, request: Request) -> Response:
    svg = request.app.state.views.get(name).thumbnail_svg()
    body = svg or '<svg xmlns="http://www.w3.org/2000/svg" width="120" height="48"></svg>'
    if 'xmlns=' not in body:
        body = body.replace("<svg ", '<svg xmlns="http://www.w3.org/2000/svg" ', 1)
    # The list page adds ?v=<updated_at>, so a changed front is a new URL: cache freely.
    return Response(body, media_type="image/svg+xml",
                    headers={"Cache-Control": "public, max-age=3600"})


@router.get("/candidates/{candidate_id}", response_class=HTMLResponse)
def candidate_page(candidate_id: int, request: Request) -> HTMLResponse:
    record, view = load_candidate(request, candidate_id)
    history = request.app.state.store.latency_history(candidate_id)
    candidate = candidate_out(record, view, history)
    earlier = {profile: [latency_out(lat) for lat in lats]
               for profile, lats in history_by_profile(history, record.latencies).items()}
    n_rungs = len(view.search.rung_tokens)  # one (the whole budget) without fidelity: nothing to show
    curve = plots.loss_curve_data(record.proxy, record.rungs if n_rungs > 1 else ())
    figure = plots.loss_curve_spec(curve) if curve.tokens or curve.rung_tokens else None
    arch = record.architecture
    derived = {"parameters": arch.n_params, "non-embedding parameters": arch.non_embedding_params,
               "unique blocks": arch.n_unique_blocks, "head dim": arch.head_dim,
               "FFN hidden": arch.ffn_hidden, "weights fp32 (MB)": arch.weight_bytes("fp32") / 1e6,
               "weights int8 (MB)": arch.weight_bytes("int8") / 1e6,
               "KV cache per token (bytes)": arch.kv_cache_bytes_per_token}
    return render(request, "candidate.html", c=candidate, n_rungs=n_rungs,
                  objectives=view.analysis.metrics, derived=derived, loss_figure=figure,
                  lineage=derivation_rows(record.derivation),
                  lineage_summary=derivation_summary(record.derivation), earlier=earlier,
                  measurement_label=measurement_label)


@router.get("/vendor/plotly.min.js")
def plotly_js() -> FileResponse:
    """plotly.js from the installed ``plotly`` package: no CDN, the pages work offline."""
    return FileResponse(plotly_js_path(), media_type="text/javascript",
                        headers={"Cache-Control": "public, max-age=86400"})
