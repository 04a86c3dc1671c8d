"""The Pareto scatter (with its staircase) and the hypervolume over time."""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from nas import pareto
from nas.dates import format_when
from nas.plots.base import (
    DOMINATED_COLOR,
    FRONT_COLOR,
    GROUPS,
    INFEASIBLE_COLOR,
    LAYOUT,
    Axis,
    figure_spec,
    hover_text,
)

if TYPE_CHECKING:
    from nas.fronts import FrontAnalysis
    from nas.store import SearchRecord, SnapshotRecord

_GROUP_STYLE = {  # dominated and infeasible points are faded so the front stands out
    "front": {"name": "Pareto front", "color": FRONT_COLOR, "opacity": 1.0, "symbol": "circle"},
    "dominated": {"name": "dominated", "color": DOMINATED_COLOR, "opacity": 0.45, "symbol": "circle"},
    "infeasible": {"name": "infeasible (violates a constraint)", "color": INFEASIBLE_COLOR,
                   "opacity": 0.4, "symbol": "x"},
}


# ----- Pareto scatter ----------------------------------------------------------------------
class PointGroup(NamedTuple):
    """The candidates of one kind (front, dominated or infeasible) as plotted."""

    group: str
    ids: list[int]
    coords: list[list[float]]  # one list per axis
    hover: list[str]
    knee: list[bool]  # per point: is it the search's knee


class ParetoData(NamedTuple):
    axes: tuple[Axis, ...]  # two (scatter with a step line) or three (3-D)
    groups: tuple[PointGroup, ...]  # front, dominated, infeasible: every drawn point once
    step: tuple[list[float], list[float]]  # staircase through the 2-D front of these axes
    knee_id: int | None
    hidden_ids: list[int]  # complete candidates with a non-finite value on an axis

    @property
    def n_points(self) -> int:
        return sum(len(g.ids) for g in self.groups)


def metric_direction(metric: str, objectives: Sequence[Any] = ()) -> str:
    """Which way is better on ``metric``: its objective's direction where it is one, else
    higher for a throughput and lower for everything else (times, memory, size, loss)."""
    for o in objectives:
        if o.metric == metric:
            return o.direction
    return "max" if metric.startswith("throughput:") else "min"


def axis_metrics(search: SearchRecord) -> list[str]:
    """The metrics a Pareto plot of ``search`` may put on an axis: its objectives, then every
    metric its hardware profiles measure (prefill and decode, and a workload profile's
    decode_ms@<context>, ttft_ms, generate_ms, tokens_per_s, peak_mb, estimate_mb).

    Read from the search's stored profiles, not its candidates, so a page lists them without
    reading 10,000 candidates. A stored profile this code cannot load gives its two timings.
    """
    from nas.errors import NasError
    from nas.hardware import HardwareProfile

    out = [m for m, _ in search.objectives]
    for data in search.profiles:
        try:
            names: Sequence[str] = HardwareProfile.from_dict(data).metric_names()
        except (NasError, TypeError, KeyError, ValueError):
            name = data.get("name", "")
            names = (f"latency:{name}:prefill_ms", f"latency:{name}:decode_ms") if name else ()
        out += [m for m in names if m not in out]
    return out


def objective_pairs(analysis: FrontAnalysis) -> list[tuple[str, str]]:
    """Every ordered pair of distinct objectives: the axes a page may show."""
    metrics = analysis.metrics
    return [(x, y) for x in metrics for y in metrics if x != y]


def default_axes(metrics: Sequence[str]) -> tuple[str, str]:
    """x, y of the Pareto plot at first: the second objective (latency, typically) across,
    the first (quality) up."""
    return (metrics[1], metrics[0]) if len(metrics) >= 2 else (metrics[0], metrics[0])


def pareto_data(analysis: FrontAnalysis, axes: Sequence[str]) -> ParetoData:
    """Every complete candidate placed on ``axes`` (two or three of `axis_metrics`: objectives
    or metrics the search's profiles measure, e.g. ``latency:cpu-1t-long:decode_ms@2048``).

    Groups: ``front`` is the search's front over *all* its objectives (feasible and
    non-dominated); ``dominated`` and ``infeasible`` are faded. The step line is the front of
    the feasible points *in these two axes* (a measured metric that is no objective taken
    lower-is-better, throughput higher): for a two-objective search on its objectives the same
    points as ``front``, otherwise a projection that shows the trade-off the axes show.
    """
    if len(axes) not in (2, 3) or len(set(axes)) != len(axes):
        raise ValueError(f"axes={list(axes)} must be two or three distinct metrics")
    index = {m: i for i, m in enumerate(analysis.metrics)}
    choices = axis_metrics(analysis.search)
    unknown = [a for a in axes if a not in index and a not in choices]
    if unknown:
        raise ValueError(f"axis {unknown[0]!r} is not an objective of search "
                         f"{analysis.search.name!r}, nor a metric its profiles measure "
                         f"({', '.join(choices)})")
    axis_info = tuple(Axis(a, metric_direction(a, analysis.objectives)) for a in axes)
    values = np.array([analysis.values[:, index[a]] if a in index
                       else [r.metrics.get(a, math.nan) for r in analysis.complete] for a in axes],
                      dtype=float).reshape(len(axes), len(analysis.complete)).T
    finite = np.all(np.isfinite(values), axis=1)
    status = np.where(analysis.on_front, "front",
                      np.where(analysis.feasible, "dominated", "infeasible"))
    metrics = analysis.metrics + [a for a in axes if a not in index]  # hover: what is drawn too
    groups = []
    for group in GROUPS:
        idx = np.flatnonzero(finite & (status == group))
        records = [analysis.complete[i] for i in idx]
        label = {"front": "on the front", "dominated": "dominated", "infeasible": "infeasible"}[group]
        groups.append(PointGroup(
            group=group, ids=[r.id for r in records],
            coords=[values[idx, k].tolist() for k in range(len(axes))],
            hover=[hover_text(r, metrics, label + (", knee" if r.id == analysis.knee_id else ""))
                   for r in records],
            knee=[r.id == analysis.knee_id for r in records]))
    step: tuple[list[float], list[float]] = ([], [])
    if len(axes) == 2:
        ok = finite & analysis.feasible
        step = staircase(values[ok], [a.direction for a in axis_info])
    hidden = [analysis.complete[i].id for i in np.flatnonzero(~finite)]
    return ParetoData(axis_info, tuple(groups), step, analysis.knee_id, hidden)


def staircase(points: Any, directions: Sequence[str]) -> tuple[list[float], list[float]]:
    """Vertices of the boundary of the region the 2-D front of ``points`` dominates.

    Worked in loss space (both minimised): the front sorted by x, each point joined to the
    next by a horizontal then a vertical segment. Negating back keeps segments axis-parallel,
    so the same vertices are right for any mix of min and max.
    """
    pts = np.asarray(points, dtype=float).reshape(-1, 2)
    if pts.shape[0] == 0:
        return [], []
    signs = np.array([1.0 if pareto.Objective("m", d).direction == "min" else -1.0
                      for d in directions])
    front = np.unique(pts[pareto.pareto_front(pts, directions)] * signs, axis=0)  # sorted by x
    xs: list[float] = []
    ys: list[float] = []
    for k, (x, y) in enumerate(front.tolist()):
        if k:
            xs.append(x)
            ys.append(ys[-1])
        xs.append(x)
        ys.append(y)
    return [float(v * signs[0]) for v in xs], [float(v * signs[1]) for v in ys]


def pareto_spec(data: ParetoData) -> dict[str, Any]:
    three_d = len(data.axes) == 3
    traces: list[dict[str, Any]] = []
    if not three_d and data.step[0]:
        traces.append({"type": "scatter", "x": data.step[0], "y": data.step[1], "mode": "lines",
                       "name": "front (step)", "hoverinfo": "skip", "showlegend": False,
                       "line": {"color": FRONT_COLOR, "width": 1.5, "dash": "dot"}})
    knee_at = None
    for group in data.groups:
        style = _GROUP_STYLE[group.group]
        # One marker per candidate (tests and users count them); the knee gets an arrow.
        trace = {"type": "scatter3d" if three_d else "scatter", "mode": "markers",
                 "name": f"{style['name']} ({len(group.ids)})", "meta": group.group,
                 "x": group.coords[0], "y": group.coords[1], "customdata": group.ids,
                 "text": group.hover, "hovertemplate": "%{text}<extra></extra>",
                 "visible": True if group.ids else "legendonly",
                 "marker": {"color": style["color"], "opacity": style["opacity"],
                            "size": 5 if three_d else 9, "symbol": style["symbol"],
                            "line": {"width": 0.5, "color": "white"}}}
        if three_d:
            trace["z"] = group.coords[2]
        traces.append(trace)
        if True in group.knee:
            k = group.knee.index(True)
            knee_at = [c[k] for c in group.coords]
    knee = [] if knee_at is None else [{
        "text": "knee", "showarrow": True, "arrowhead": 2, "arrowsize": 0.8, "ax": 28, "ay": -28,
        "arrowcolor": "#0f172a", "font": {"size": 11, "color": "#0f172a"},
        "bgcolor": "rgba(255,255,255,0.8)", **dict(zip("xyz", knee_at))}]
    titles = [{"title": {"text": a.title}, "zeroline": False} for a in data.axes]
    layout: dict[str, Any] = {"height": 460, "clickmode": "event", "hovermode": "closest",
                              "legend": {"orientation": "h", "y": 1.02, "yanchor": "bottom", "x": 0}}
    if three_d:
        layout.update(scene={"xaxis": titles[0], "yaxis": titles[1], "zaxis": titles[2],
                             "annotations": knee, "camera": {"eye": {"x": 1.6, "y": 1.6, "z": 0.9}}},
                      margin={"l": 0, "r": 0, "t": 30, "b": 0}, height=560)
    else:
        layout.update(xaxis=titles[0], yaxis=titles[1], annotations=knee)
    return figure_spec(traces, layout)


# ----- hypervolume over time ---------------------------------------------------------------
class HypervolumeData(NamedTuple):
    n_complete: list[int]  # x: candidates finished when the snapshot was taken
    hypervolume: list[float]
    front_size: list[int]
    times: list[str]  # when each snapshot was taken, as `nas.dates.format_when` writes it
    # x, the other way: training tokens spent by then (None in snapshots older than rungs)
    tokens: Sequence[int | None] = ()
    created_at: Sequence[datetime] = ()

    @property
    def has_tokens(self) -> bool:
        return any(t is not None for t in self.tokens)


def hypervolume_data(snapshots: Sequence[SnapshotRecord], analysis: FrontAnalysis) -> HypervolumeData:
    """The recorded hypervolume after each finished candidate.

    The driver records none until its reference point is fixed (a few feasible results in);
    those early snapshots are filled in from their front ids against the same reference, so
    the curve starts at the first candidate instead of jumping in later.
    """
    by_id = {r.id: i for i, r in enumerate(analysis.complete)}
    kept: list[tuple[SnapshotRecord, float]] = []
    for snap in snapshots:
        hv = snap.hypervolume
        if hv is None and analysis.reference is not None:
            rows = [by_id[i] for i in snap.front_ids if i in by_id]
            hv = pareto.hypervolume(analysis.values[rows] if rows else [], analysis.objectives,
                                    analysis.reference)
        if hv is not None:
            kept.append((snap, float(hv)))
    return HypervolumeData([s.n_complete for s, _ in kept], [hv for _, hv in kept],
                           [len(s.front_ids) for s, _ in kept], [format_when(s.created_at) for s, _ in kept],
                           [s.tokens for s, _ in kept], [s.created_at for s, _ in kept])


_HV_TAIL = "<br>hypervolume %{y:.4g}<br>front of %{customdata[0]}<br>%{customdata[1]}<extra></extra>"
_HV_X = {"candidates": ("complete candidates", "after %{x} candidates" + _HV_TAIL),  # (title, hover)
         "tokens": ("training tokens spent", "after %{x:,} training tokens" + _HV_TAIL)}


def hypervolume_spec(data: HypervolumeData) -> dict[str, Any]:
    """Hypervolume against complete candidates; where the snapshots know the training tokens
    spent, two buttons redraw it against those (what successive halving saves)."""
    trace = {"type": "scatter", "x": data.n_complete, "y": data.hypervolume,
             "mode": "lines+markers", "line": {"shape": "hv", "color": FRONT_COLOR},
             "marker": {"size": 5}, "customdata": [list(p) for p in zip(data.front_size, data.times)],
             "hovertemplate": _HV_X["candidates"][1]}
    layout: dict[str, Any] = {"height": 300, "showlegend": False,
                              "xaxis": {"title": {"text": _HV_X["candidates"][0]}, "rangemode": "tozero"},
                              "yaxis": {"title": {"text": "hypervolume"}}}
    if data.has_tokens:
        xs = {"candidates": data.n_complete, "tokens": list(data.tokens)}
        layout["margin"] = {**LAYOUT["margin"], "t": 40}
        layout["updatemenus"] = [{
            # Top left, clear of Plotly's modebar (top right).
            "type": "buttons", "direction": "right", "showactive": True, "active": 0, "x": 0,
            "xanchor": "left", "y": 1.02, "yanchor": "bottom", "pad": {"r": 0, "t": 0}, "font": {"size": 11},
            "buttons": [{"label": f"x: {title}", "method": "update", "name": x,
                         "args": [{"x": [xs[x]], "hovertemplate": [hover]}, {"xaxis.title.text": title}]}
                        for x, (title, hover) in _HV_X.items()]}]
    return figure_spec([trace], layout)


