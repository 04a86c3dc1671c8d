"""The JSON API under ``/api``: thin routes over `ViewCache`, the store and the `Launcher`.

Errors: an unknown search or candidate is 404 ``{"detail": message}``; a malformed request
is 422 in FastAPI's format (``detail[].loc`` names the field); a request that clashes with
the search's state is 409; writes without the server's token are 401 (`nas.service.auth`).
Data about a search's candidates may trail it by one rebuild (see `ViewCache`); it says
which ``version`` it shows.

Measurements (`nas.service.measurements`): a candidate's ``latencies`` are the ones in force,
one per profile, with every timed quantity of its workload, throughput, measured peak memory
beside the estimate, the machine that took it and its number (0: the search's, k: the k-th
re-timing); ``latency_history`` keeps every earlier one. A re-timed value carries its 95%
interval (``intervals`` in every candidate list) and the pairs its order is not resolved
against (``unresolved``); ``/searches/{name}/retimes`` lists the re-timings themselves.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, get_args

from fastapi import APIRouter, HTTPException, Query, Request, Response, status

from nas import plots
from nas.errors import NotFoundError
from nas.service.launcher import Conflict
from nas.service.schemas import (
    CandidateBrief,
    CandidateOut,
    CandidateState,
    ErrorOut,
    FrontOut,
    HypervolumePointOut,
    LaunchIn,
    LaunchOut,
    RetimeOut,
    SearchOut,
    SearchSummaryOut,
    StopOut,
)
from nas.service.views import (
    SearchView,
    ViewCache,
    candidate_out,
    json_bytes,
    knee_trial,
    search_out,
    search_url,
    summary_out,
)
from nas.states import DRIVER_LOST, LIVE_STATUSES

router = APIRouter(prefix="/api", tags=["searches"])
NOT_FOUND = {404: {"model": ErrorOut, "description": "no such search or candidate"}}
FigurePart = Literal["pareto", "pareto3d", "hypervolume", "parallel", "rungs", "retimes"]
ALL_PARTS: tuple[str, ...] = get_args(FigurePart)


def _views(request: Request) -> ViewCache:
    return request.app.state.views


def invalid(where: str, field: str, message: str) -> HTTPException:
    """A 422 shaped like FastAPI's own validation errors."""
    return HTTPException(422,
                         [{"loc": [where, field], "msg": message, "type": "value_error"}])


# ----- searches ------------------------------------------------------------------------------
@router.get("/searches", response_model=list[SearchSummaryOut])
def list_searches(request: Request) -> list[dict[str, Any]]:
    """Every search, oldest first, with counts and its latest front size and hypervolume."""
    return [summary_out(s) for s in _views(request).summaries()]


@router.get("/searches/{name}", response_model=SearchOut, responses=NOT_FOUND)
def read_search(name: str, request: Request) -> dict[str, Any]:
    """One search: pages poll this, and redraw when its ``version`` differs from the one their
    figures showed. Its counts and ``version`` are always current; ``rungs`` and
    ``tokens_spent`` come from its candidates as last read (they may trail by one rebuild)."""
    views = _views(request)
    try:
        summary, record = views.search(name)
    except NotFoundError:
        launcher = request.app.state.launcher
        launch = launcher.get(name) if launcher is not None else None
        if launch is None:
            raise
        code = launch.returncode()
        raise NotFoundError(
            f"search {name!r} does not exist yet: its process (pid {launch.pid}) is starting"
            if code is None else f"search {name!r} was launched but its process exited with "
            f"code {code} before creating it; its page shows the output") from None
    return {**search_out(summary, record), **views.get(name).rung_summary()}


@router.get("/searches/{name}/hypervolume", response_model=list[HypervolumePointOut],
            responses=NOT_FOUND)
def read_hypervolume(name: str, request: Request) -> list[dict[str, Any]]:
    """The hypervolume of the front after each finished candidate, oldest first, with the
    training tokens spent by then: plot it against either."""
    return _views(request).get(name).hypervolume_history()


@router.get("/searches/{name}/front", response_model=FrontOut, responses=NOT_FOUND)
def read_front(name: str, request: Request) -> dict[str, Any]:
    """The feasible non-dominated candidates, by the first objective, and the knee; with the
    latest re-timing, whose intervals and unresolved pairs the candidates carry."""
    view = _views(request).get(name)
    a = view.analysis
    by_id = {row["id"]: row for row in view.rows()}
    retimes = view.retimes_out()
    return {"search": name,
            "objectives": [{"metric": o.metric, "direction": o.direction} for o in a.objectives],
            "reference_point": list(a.reference) if a.reference is not None else None,
            "hypervolume": a.hypervolume, "knee_id": a.knee_id, "knee_trial": knee_trial(a),
            "candidates": [by_id[r.id] for r in a.front],
            "retime": retimes[-1] if retimes else None}


@router.get("/searches/{name}/retimes", response_model=list[RetimeOut], responses=NOT_FOUND)
def list_retimes(name: str, request: Request) -> list[dict[str, Any]]:
    """Every re-timing of the search's front (at its end, and each ``nas retime``), oldest
    first: who was timed together on which machine, who entered or left the front, and the
    pairs whose order the 95% intervals do not resolve."""
    return _views(request).get(name).retimes_out()


@router.get("/searches/{name}/candidates", response_model=list[CandidateBrief], responses=NOT_FOUND)
def list_candidates(
    name: str, request: Request, response: Response,
    state: Annotated[list[CandidateState] | None, Query(description="repeat to allow several")] = None,
    on_front: bool | None = None,
    limit: Annotated[int | None, Query(ge=1, le=100_000)] = None,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> list[dict[str, Any]]:
    """Candidates by trial number; the total before ``limit``/``offset`` is in ``X-Total-Count``."""
    view = _views(request).get(name)
    rows = view.rows()
    response.headers["X-Search-Version"] = view.version  # may trail the search by a rebuild
    if state:
        rows = [r for r in rows if r["state"] in state]
    if on_front is not None:
        rows = [r for r in rows if r["on_front"] == on_front]
    response.headers["X-Total-Count"] = str(len(rows))
    return rows[offset:offset + limit if limit is not None else None]


@router.get("/searches/{name}/figures", responses=NOT_FOUND)
def read_figures(
    name: str, request: Request,
    x: Annotated[str | None, Query(max_length=200, description="metric on the x axis: an "
                                   "objective or one the profiles measure (axis_metrics)")] = None,
    y: Annotated[str | None, Query(max_length=200, description="metric on the y axis")] = None,
    part: Annotated[list[FigurePart] | None, Query(description="default: all")] = None,
) -> Response:
    """The search page's Plotly figures (``{"data": [...], "layout": {...}}`` each). The
    Pareto plot's axes may be any of ``axis_metrics``: the objectives, then every metric the
    search's profiles measure (e.g. ``latency:cpu-1t-long:decode_ms@2048``,
    ``memory:cpu-1t-long:peak_mb``). Part ``rungs`` adds the rung counts and ``tokens_spent``,
    part ``retimes`` the re-timings, of the same version."""
    view = _views(request).get(name)
    metrics = view.analysis.metrics
    choices = plots.axis_metrics(view.search)
    default_x, default_y = plots.default_axes(metrics)
    axes = [x or default_x, y or default_y]
    for field, value in zip(("x", "y"), axes):
        if value not in choices:
            raise invalid("query", field, f"{value!r} is not an objective of search {name!r}, nor "
                                          f"a metric its profiles measure ({', '.join(choices)})")
    if len(metrics) >= 2 and axes[0] == axes[1]:
        raise invalid("query", "y", "x and y must be different metrics")
    figures = view.figures(axes, parts=part or ALL_PARTS)
    return Response(json_bytes(figures), media_type="application/json")


# ----- candidates ----------------------------------------------------------------------------
def load_candidate(request: Request, candidate_id: int) -> tuple[Any, SearchView]:
    record = request.app.state.store.candidate(candidate_id)
    return record, _views(request).get(record.search)


@router.get("/candidates/{candidate_id}", response_model=CandidateOut, responses=NOT_FOUND)
def read_candidate(candidate_id: int, request: Request) -> dict[str, Any]:
    """Everything one candidate produced: architecture, metrics, latency and memory per profile
    (the measurement in force, and every earlier one in ``latency_history``), proxy run."""
    record, view = load_candidate(request, candidate_id)
    return candidate_out(record, view, request.app.state.store.latency_history(candidate_id))


# ----- writes --------------------------------------------------------------------------------
@router.post("/searches", status_code=status.HTTP_202_ACCEPTED, response_model=LaunchOut,
             responses={401: {"model": ErrorOut}, 409: {"model": ErrorOut}})
def launch_search(body: LaunchIn, request: Request) -> dict[str, Any]:
    """Start a search in the background (the same driver as ``nas search``).

    It runs as its own process; its page shows it as starting until the driver has created it.
    """
    launcher = request.app.state.launcher
    if launcher is None:
        raise Conflict("this server's database is in memory: a search process cannot share "
                       "it; serve a database file to launch searches")
    argv = launcher.check(name=body.name, space=body.space, space_yaml=body.space_yaml,
                          profiles=body.profiles, trials=body.trials,
                          store=request.app.state.store, no_fidelity=body.no_fidelity)
    launch = launcher.launch(body.name, argv)
    return {"name": body.name, "status": "starting", "pid": launch.pid,
            "url": search_url(body.name), "api_url": f"/api{search_url(body.name)}"}


@router.post("/searches/{name}/stop", status_code=status.HTTP_202_ACCEPTED, response_model=StopOut,
             responses={**NOT_FOUND, 401: {"model": ErrorOut}, 409: {"model": ErrorOut}})
def stop_search(name: str, request: Request) -> dict[str, Any]:
    """Ask a running search to stop. Its driver, in whatever process, sees ``stopping`` in the
    store, cancels running trials and marks it ``stopped``; it can be resumed later."""
    store = request.app.state.store
    search = store.find_search(name)
    if search is None:
        store.get_search(name)  # NotFoundError listing the existing names
        raise NotFoundError(f"no search named {name!r}")
    if search.status == DRIVER_LOST:  # no driver will ever see "stopping": record the stop
        store.set_status(name, "stopped")
        return {"name": name, "status": "stopped"}
    if search.status not in LIVE_STATUSES:
        raise Conflict(f"search {name!r} is {search.status}: there is nothing to stop")
    if search.status == "running":
        store.set_status(name, "stopping")
    return {"name": name, "status": "stopping"}
