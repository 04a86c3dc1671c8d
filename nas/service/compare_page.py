"""Compare searches: the fronts of two or more searches overlaid on one Pareto plot.

``/compare?names=a,b`` (or ``names=a&names=b``, as the list page's checkboxes send it).
Fronts come from each search's `FrontAnalysis` (`nas.fronts.analyze`, through the
`ViewCache`), so a front here is the same front as on the search's own page. Searches can be
compared when they share their objectives (the same metrics, each with the same direction,
in any order); the largest such group is plotted and every other search is named with why
not. On top of the plot, a table puts numbers on it: each front's hypervolume against one
reference point common to the group, and how many of its points are on the combined front.

The figure is built from plain data (`compare_data`, then `compare_spec`), as `nas.plots` does.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse

from nas import pareto, plots
from nas.fronts import FrontAnalysis
from nas.objectives import Objective
from nas.service.views import search_url

router = APIRouter(include_in_schema=False)
PATH = "/compare"
# One colour and one marker shape per search, so fronts stay apart in grey print too.
PALETTE = ("#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#db2777", "#4d7c0f")
SYMBOLS = ("circle", "square", "diamond", "triangle-up", "cross", "x", "star", "pentagon")
MAX_SEARCHES = len(PALETTE)


def signature(analysis: FrontAnalysis) -> frozenset[tuple[str, str]]:
    """What must match for two fronts to share a plot: each objective and its direction."""
    return frozenset((o.metric, o.direction) for o in analysis.objectives)


def describe_objectives(a: FrontAnalysis, b: FrontAnalysis) -> tuple[str, str]:
    """The two objective lists as the user reads them; directions only where they differ."""
    same_metrics = set(a.metrics) == set(b.metrics)

    def text(x: FrontAnalysis) -> str:
        return ", ".join(f"{o.metric} ({o.direction})" if same_metrics else o.metric
                         for o in x.objectives) or "none"

    return text(a), text(b)


def cannot_compare(a: FrontAnalysis, b: FrontAnalysis) -> str:
    left, right = describe_objectives(a, b)
    return (f"{a.search.name} and {b.search.name} do not share objectives: {left} vs {right}")


@dataclass(frozen=True)
class Comparison:
    """Which of the requested searches share a plot, why the others do not, and the numbers."""

    objectives: tuple[Objective, ...]  # of the compared group, in its first search's order
    compared: tuple[FrontAnalysis, ...]
    excluded: tuple[str, ...]  # one "x and y do not share objectives: ..." per left-out search
    reference: tuple[float, ...] | None  # common to the group: the nadir of all their fronts
    rows: tuple[dict[str, Any], ...]  # per compared search, for the table

    @property
    def metrics(self) -> list[str]:
        return [o.metric for o in self.objectives]

    @property
    def axis_metrics(self) -> list[str]:
        """What the plot's axes may show: the shared objectives, then the metrics every compared
        search's profiles measure (`nas.plots.axis_metrics`), e.g. a workload's decode_ms@2048."""
        shared = [m for m in plots.axis_metrics(self.compared[0].search) if m not in self.metrics] \
            if self.compared else []
        for a in self.compared[1:]:
            theirs = set(plots.axis_metrics(a.search))
            shared = [m for m in shared if m in theirs]
        return self.metrics + shared

    @property
    def plottable(self) -> bool:
        return len(self.compared) >= 2 and len(self.objectives) >= 2


def front_values(analysis: FrontAnalysis, metrics: Sequence[str]) -> np.ndarray:
    """The front's objective values, columns in ``metrics`` order."""
    index = {m: i for i, m in enumerate(analysis.metrics)}
    by_id = {r.id: i for i, r in enumerate(analysis.complete)}
    rows = [by_id[r.id] for r in analysis.front]
    return analysis.values[np.ix_(rows, [index[m] for m in metrics])] if rows \
        else np.zeros((0, len(metrics)))


def compare(analyses: Sequence[FrontAnalysis]) -> Comparison:
    """Group ``analyses`` by objectives; the largest group (the first search's on a tie) is
    compared, the rest excluded with the reason."""
    groups: dict[frozenset[tuple[str, str]], list[FrontAnalysis]] = {}
    for a in analyses:
        groups.setdefault(signature(a), []).append(a)
    chosen = max(groups.values(), key=len)  # max keeps the first of equal lengths
    lead = chosen[0]
    excluded = tuple(cannot_compare(lead, a) for a in analyses if signature(a) != signature(lead))
    metrics = lead.metrics
    directions = lead.directions
    fronts = [front_values(a, metrics) for a in chosen]
    union = np.vstack(fronts) if fronts else np.zeros((0, len(metrics)))
    finite = union[np.all(np.isfinite(union), axis=1)]
    reference = tuple(pareto.reference_point(finite, directions).tolist()) if len(finite) else None
    combined = np.zeros(len(union), dtype=bool)
    if len(union):
        combined[pareto.pareto_front(union, directions)] = True
    rows, start = [], 0
    for a, values in zip(chosen, fronts):
        ok = np.all(np.isfinite(values), axis=1)
        hv = pareto.hypervolume(values[ok], directions, reference) \
            if reference is not None and ok.any() else None
        on_combined = int(combined[start:start + len(values)].sum())
        start += len(values)
        rows.append({"name": a.search.name, "url": search_url(a.search.name),
                     "status": a.search.status, "complete": len(a.complete),
                     "front_size": len(a.front), "hypervolume": hv, "on_combined": on_combined,
                     "corpus": ", ".join(map(str, a.search.data.get("corpus", []))),
                     "tokenizer": a.search.data.get("tokenizer", ""),
                     "profiles": ", ".join(p.get("name", "") for p in a.search.profiles)})
    return Comparison(lead.objectives, tuple(chosen), excluded, reference, tuple(rows))


# ----- the figure, from plain data ----------------------------------------------------------
class FrontTrace(NamedTuple):
    """One search's front placed on two axes, with the step line of its 2-D front."""

    search: str
    ids: list[int]
    coords: tuple[list[float], list[float]]
    hover: list[str]
    step: tuple[list[float], list[float]]


class CompareData(NamedTuple):
    axes: tuple[plots.Axis, plots.Axis]
    fronts: tuple[FrontTrace, ...]


def compare_data(comparison: Comparison, axes: Sequence[str]) -> CompareData:
    """Each compared search's front on ``axes`` (two of `Comparison.axis_metrics`). With more
    than two objectives, or a measured metric on an axis, a front is projected, and its step
    line is the front of the search's feasible points in these two axes, as on the search page."""
    x, y = axes
    axis = (plots.Axis(x, plots.metric_direction(x, comparison.objectives)),
            plots.Axis(y, plots.metric_direction(y, comparison.objectives)))
    fronts = []
    for a in comparison.compared:
        data = plots.pareto_data(a, (x, y))
        front = next(g for g in data.groups if g.group == "front")
        hover = [h.replace("<br>", f" · {a.search.name}<br>", 1) for h in front.hover]
        fronts.append(FrontTrace(a.search.name, front.ids, (front.coords[0], front.coords[1]),
                                 hover, data.step))
    return CompareData(axis, tuple(fronts))


def compare_spec(data: CompareData) -> dict[str, Any]:
    """Plotly JSON: per search a marker trace (its front) and a dotted step line, one legend
    entry for both; ``customdata`` holds candidate ids, so a click opens the candidate."""
    traces: list[dict[str, Any]] = []
    for k, f in enumerate(data.fronts):
        color, symbol = PALETTE[k % len(PALETTE)], SYMBOLS[k % len(SYMBOLS)]
        if f.step[0]:
            traces.append({"type": "scatter", "mode": "lines", "x": f.step[0], "y": f.step[1],
                           "name": f"{f.search} (step)", "legendgroup": f.search,
                           "showlegend": False, "hoverinfo": "skip",
                           "line": {"color": color, "width": 1.5, "dash": "dot"}})
        traces.append({"type": "scatter", "mode": "markers", "meta": f.search,
                       "name": f"{f.search} ({len(f.ids)} on its front)", "legendgroup": f.search,
                       "x": f.coords[0], "y": f.coords[1], "customdata": f.ids, "text": f.hover,
                       "hovertemplate": "%{text}<extra></extra>",
                       "marker": {"color": color, "symbol": symbol, "size": 10, "opacity": 0.9,
                                  "line": {"width": 0.5, "color": "white"}}})
    layout = {"height": 480, "hovermode": "closest", "clickmode": "event",
              "xaxis": {"title": {"text": data.axes[0].title}, "zeroline": False},
              "yaxis": {"title": {"text": data.axes[1].title}, "zeroline": False},
              "legend": {"orientation": "h", "y": 1.02, "yanchor": "bottom", "x": 0}}
    return plots.figure_spec(traces, layout)  # the template and fonts of every other figure


# ----- the page -----------------------------------------------------------------------------
def requested_names(names: Sequence[str]) -> list[str]:
    """``names=a,b`` and ``names=a&names=b`` alike, blanks and repeats dropped, order kept."""
    out: list[str] = []
    for item in names:
        for name in item.split(","):
            if name.strip() and name.strip() not in out:
                out.append(name.strip())
    return out


@router.get(PATH, response_class=HTMLResponse)
def compare_page(request: Request, names: list[str] = Query(default=[]),  # noqa: B008
                 x: str | None = None, y: str | None = None) -> HTMLResponse:
    """The overlay of the fronts of ``names``; with fewer than two, a list to pick from.
    An unknown name is a 404 (as on the search page); searches that cannot share a plot say
    why (422 when nothing is left to plot)."""
    from nas.service.pages import render
    from nas.service.views import summary_out

    views = request.app.state.views
    chosen = requested_names(names)
    summaries = [summary_out(s) for s in views.summaries()]
    context: dict[str, Any] = {"searches": summaries, "chosen": chosen, "comparison": None,
                               "figure": None, "problems": [], "axes": None, "path": PATH,
                               "palette": PALETTE}
    if len(chosen) < 2:
        if chosen:
            context["problems"] = [f"pick at least two searches to compare (got only {chosen[0]})"]
        return render(request, "compare.html", status_code=422 if chosen else 200, **context)
    if len(chosen) > MAX_SEARCHES:
        context["problems"] = [(f"pick at most {MAX_SEARCHES} searches to compare "
                                f"(got {len(chosen)}: {', '.join(chosen)})")]
        return render(request, "compare.html", status_code=422, **context)
    comparison = compare([views.get(name).analysis for name in chosen])
    problems = list(comparison.excluded)
    context["comparison"] = comparison
    if not comparison.plottable:
        if len(comparison.compared) >= 2:
            problems.append("these searches have one objective: their fronts are one point "
                            "each, compared in the table")
        context["problems"] = problems
        return render(request, "compare.html",
                      status_code=200 if len(comparison.compared) >= 2 else 422, **context)
    choices = comparison.axis_metrics
    default = plots.default_axes(comparison.metrics)
    axes = [x or default[0], y or default[1]]
    for key, value in zip(("x", "y"), axes):
        if value not in choices:
            problems.append(f"{key}={value!r} is not an objective these searches share, nor a "
                            f"metric all their profiles measure ({', '.join(choices)}); showing "
                            f"{default[0]} across")
            axes = list(default)
    if axes[0] == axes[1]:
        problems.append("x and y must be different metrics; showing the default axes")
        axes = list(default)
    context.update(problems=problems, axes=axes, axis_choices=choices,
                   figure=compare_spec(compare_data(comparison, axes)))
    return render(request, "compare.html", **context)
