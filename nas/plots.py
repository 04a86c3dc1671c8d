"""Plotly figures of a search, drawn from plain data.

Every figure takes two steps: a *data* function (`pareto_data`, `hypervolume_data`,
`parallel_data`, `loss_curve_data`, `thumbnail_data`) returns a NamedTuple that tests check
directly, and a *spec* function turns it into Plotly's figure JSON, which the pages hand to
plotly.js as it is (`to_figure` turns a spec into a validated `go.Figure`). Nothing here reads
the database: callers pass a `nas.fronts.FrontAnalysis`, snapshot records or a candidate's
proxy dict.

Figures carry each candidate's id in ``customdata``, which is how the pages turn a click on
a marker into the candidate's URL.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from nas import pareto
from nas.dates import format_when
from nas.util import format_value

if TYPE_CHECKING:
    import plotly.graph_objects as go

    from nas.fronts import FrontAnalysis
    from nas.results import RungLoss
    from nas.store import CandidateRecord, SearchRecord, SnapshotRecord

FRONT_COLOR = "#2563eb"
DOMINATED_COLOR = "#94a3b8"
INFEASIBLE_COLOR = "#f97316"
GROUPS = ("front", "dominated", "infeasible")
_GROUP_STYLE = {  # dominated and infeasible points are faded so the front stands out
    "front": {"name": "Pareto front", "color": FRONT_COLOR, "opacity": 1.0, "symbol": "circle"},
    "dominated": {"name": "dominated", "color": DOMINATED_COLOR, "opacity": 0.45, "symbol": "circle"},
    "infeasible": {"name": "infeasible (violates a constraint)", "color": INFEASIBLE_COLOR,
                   "opacity": 0.4, "symbol": "x"},
}
# Architecture fields that are choices, not quantities: drawn with their names as tick labels.
_CATEGORICAL = ("attention", "window", "sharing", "tie_embeddings")
_MAX_INT_TICKS = 12  # integer fields with at most this many values are labelled value by value
_LABEL_WIDTH = 10  # characters per line of a parallel-coordinates axis label
_THUMBNAIL_MAX_POINTS = 300  # a list page with many 10,000-candidate searches stays light
_LAYOUT = {"margin": {"l": 60, "r": 20, "t": 30, "b": 50},
           "font": {"family": "system-ui, -apple-system, Segoe UI, Roboto, sans-serif", "size": 12},
           "hoverlabel": {"align": "left"}}


# ----- shared ------------------------------------------------------------------------------
class Axis(NamedTuple):
    metric: str
    direction: str  # "min" | "max"

    @property
    def title(self) -> str:
        return f"{self.metric} ({'lower' if self.direction == 'min' else 'higher'} is better)"


def hover_text(record: CandidateRecord, metrics: Sequence[str], status: str = "") -> str:
    """What hovering a candidate shows: trial, architecture and metrics (Plotly's HTML subset).
    People read trial numbers everywhere (pages, CLI, report); the id stays in ``customdata``."""
    arch = record.architecture
    lines = [f"<b>trial {record.trial_number}</b>{' · ' + status if status else ''}",
             arch.describe(), f"params {arch.n_params:,}"]
    lines += [f"{m}: {format_value(record.metrics[m])}{_interval(record, m)}" for m in metrics
              if m in record.metrics]
    return "<br>".join(lines)


def _interval(record: CandidateRecord, metric: str) -> str:
    """`` [low, high]``: a re-timed latency's 95% interval, for hover text; "" otherwise."""
    kind, _, rest = metric.partition(":")
    if kind != "latency" or not record.latencies:
        return ""
    profile, _, quantity = rest.partition(":")
    for lat in record.latencies:
        if lat.profile == profile:
            s = lat.stats().get(quantity)
            if s is not None and s.ci_low_ms is not None and s.ci_high_ms is not None:
                return f" [{format_value(s.ci_low_ms)}, {format_value(s.ci_high_ms)}]"
    return ""


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
        layout["margin"] = {**_LAYOUT["margin"], "t": 40}
        layout["updatemenus"] = [{
            # Top left, clear of Plotly's modebar (top right).
            "type": "buttons", "direction": "right", "showactive": True, "active": 0, "x": 0,
            "xanchor": "left", "y": 1.02, "yanchor": "bottom", "pad": {"r": 0, "t": 0}, "font": {"size": 11},
            "buttons": [{"label": f"x: {title}", "method": "update", "name": x,
                         "args": [{"x": [xs[x]], "hovertemplate": [hover]}, {"xaxis.title.text": title}]}
                        for x, (title, hover) in _HV_X.items()]}]
    return figure_spec([trace], layout)


# ----- parallel coordinates ----------------------------------------------------------------
class Dimension(NamedTuple):
    label: str
    values: list[float]
    tickvals: list[float] | None = None  # where labelled ticks go (None: Plotly's own)
    ticktext: list[str] | None = None


class ParallelData(NamedTuple):
    ids: list[int]
    dimensions: tuple[Dimension, ...]  # architecture fields that vary, then the objectives
    on_front: list[int]  # 1 for front candidates (drawn in the front colour), else 0


def parallel_data(analysis: FrontAnalysis) -> ParallelData:
    """Architecture fields against objectives for complete candidates with finite objectives.

    Fields that never vary are left out (they carry no information); categorical fields
    (attention, window, sharing, tied) become 0, 1, 2... with their values as tick labels, and
    integer fields with few values get exactly those values as ticks. Rows are ordered front
    last, so front lines are drawn on top.
    """
    finite = (np.all(np.isfinite(analysis.values), axis=1) if len(analysis.complete)
              else np.zeros(0, dtype=bool))
    idx = np.flatnonzero(finite)
    idx = idx[np.argsort(analysis.on_front[idx], kind="stable")]
    records = [analysis.complete[i] for i in idx]
    # getattr, not dataclasses.asdict: 10,000 deep copies are most of this function's time.
    names = [f.name for f in dataclasses.fields(records[0].architecture)] if records else []
    arch_dicts = [{n: getattr(r.architecture, n) for n in names} for r in records]
    dims = []
    for name in names:
        column = [a[name] for a in arch_dicts]
        distinct = {repr(v) for v in column}
        if len(records) > 1 and len(distinct) == 1:
            continue
        if name in _CATEGORICAL:
            labels = sorted({_category(v) for v in column}, key=_category_key)
            code = {label: k for k, label in enumerate(labels)}
            dims.append(Dimension(name, [float(code[_category(v)]) for v in column],
                                  [float(k) for k in range(len(labels))], labels))
        elif all(isinstance(v, int) for v in column) and len(distinct) <= _MAX_INT_TICKS:
            ticks = sorted(set(column))
            dims.append(Dimension(name, [float(v) for v in column], [float(t) for t in ticks],
                                  [str(t) for t in ticks]))
        else:
            dims.append(Dimension(name, [float(v) for v in column]))
    for k, metric in enumerate(analysis.metrics):
        dims.append(Dimension(metric, analysis.values[idx, k].tolist()))
    return ParallelData([r.id for r in records], tuple(dims),
                        [int(v) for v in analysis.on_front[idx]])


def _category(value: Any) -> str:
    if isinstance(value, bool):
        return "tied" if value else "untied"
    return "none" if value is None else str(value)


def _category_key(label: str) -> tuple[int, float | str]:
    try:  # windows sort as numbers (16 < 32 < 128), names alphabetically
        return (0, float(label))
    except ValueError:
        return (1, label)


def axis_label(name: str, width: int = _LABEL_WIDTH) -> str:
    """A parallel-coordinates axis title short enough not to run into its neighbours.

    Axes sit side by side, so a label is broken into lines of about ``width`` characters
    (``<br>``, which Plotly draws as lines): a latency metric becomes what and where
    (``latency:cpu-1t:decode_ms`` -> ``decode ms`` / ``cpu-1t``), other names break at
    underscores (``tie_embeddings`` -> ``tie`` / ``embeddings``)."""
    parts = name.split(":")
    if len(parts) == 3 and parts[0] == "latency":
        return f"{parts[2].replace('_', ' ')}<br>{parts[1]}"
    lines: list[str] = []
    for word in name.split("_"):
        if lines and len(lines[-1]) + 1 + len(word) <= width:
            lines[-1] += "_" + word
        else:
            lines.append(word)
    return "<br>".join(lines)


def parallel_spec(data: ParallelData) -> dict[str, Any]:
    dims = []
    for d in data.dimensions:
        dim: dict[str, Any] = {"label": axis_label(d.label), "values": d.values}
        if d.tickvals is not None:
            lo, hi = min(d.tickvals), max(d.tickvals)
            pad = 0.15 * (hi - lo) if hi > lo else 0.5  # keep end labels off the frame
            dim.update(tickvals=d.tickvals, ticktext=d.ticktext, range=[lo - pad, hi + pad])
        dims.append(dim)
    trace = {"type": "parcoords", "dimensions": dims,
             "line": {"color": data.on_front, "cmin": 0, "cmax": 1,
                      "colorscale": [[0, "rgba(148,163,184,0.35)"], [1, FRONT_COLOR]]},
             # The padded range's end values would read like data: drawn transparent.
             "labelangle": 0, "labelfont": {"size": 11}, "tickfont": {"size": 10},
             "rangefont": {"color": "rgba(0,0,0,0)"}}
    # Labels are centred over their axes and at most a few short lines (`axis_label`):
    # the margins hold half a label at each end and three lines on top.
    return figure_spec([trace], {"height": 400, "margin": {"l": 50, "r": 50, "t": 70, "b": 20}})


# ----- one candidate -----------------------------------------------------------------------
class LossCurve(NamedTuple):
    tokens: list[int]
    loss: list[float]  # training loss (non-finite points dropped)
    val_loss: float | None  # final validation loss, if finite
    status: str  # the proxy run's status: ok | diverged | timeout
    rung_tokens: Sequence[int] = ()  # successive halving: the validation loss at each rung's end
    rung_loss: Sequence[float] = ()


def loss_curve_data(proxy: Mapping[str, Any], rungs: Sequence[RungLoss] = ()) -> LossCurve:
    """The proxy run's training curve from a candidate's stored ``proxy`` dict ({} if none),
    and its validation loss at the end of every rung it reached (finite ones)."""
    curve = [(int(t), float(v)) for t, v in proxy.get("curve", ()) if math.isfinite(float(v))]
    val = proxy.get("val_loss")
    at_rungs = [(r.tokens, float(r.val_loss)) for r in rungs
                if r.val_loss is not None and math.isfinite(r.val_loss)]
    return LossCurve([t for t, _ in curve], [v for _, v in curve],
                     float(val) if isinstance(val, (int, float)) and math.isfinite(val) else None,
                     str(proxy.get("status", "")), tuple(t for t, _ in at_rungs),
                     tuple(v for _, v in at_rungs))


def loss_curve_spec(data: LossCurve) -> dict[str, Any]:
    traces = [{"type": "scatter", "x": data.tokens, "y": data.loss, "mode": "lines",
               "name": "training loss", "meta": "train", "line": {"color": FRONT_COLOR},
               "hovertemplate": "%{x:,} tokens<br>loss %{y:.4f}<extra></extra>"}]
    if data.rung_tokens:
        traces.append({"type": "scatter", "x": list(data.rung_tokens), "y": list(data.rung_loss),
                       "mode": "lines+markers", "name": "validation loss at each rung", "meta": "rungs",
                       "line": {"color": INFEASIBLE_COLOR, "width": 1.5}, "marker": {"size": 8},
                       "hovertemplate": "rung end, %{x:,} tokens<br>val_loss %{y:.4f}<extra></extra>"})
    layout: dict[str, Any] = {"height": 300, "showlegend": len(traces) > 1,
                              "legend": {"orientation": "h", "y": 1.02, "yanchor": "bottom", "x": 0},
                              "xaxis": {"title": {"text": "training tokens"}},
                              "yaxis": {"title": {"text": "loss (nats/token)"}}}
    if data.val_loss is not None:
        layout["shapes"] = [{"type": "line", "xref": "paper", "x0": 0, "x1": 1, "yref": "y",
                             "y0": data.val_loss, "y1": data.val_loss,
                             "line": {"color": INFEASIBLE_COLOR, "dash": "dash"}}]
        layout["annotations"] = [{"xref": "paper", "x": 1, "xanchor": "right", "yref": "y",
                                  "y": data.val_loss, "yanchor": "bottom", "showarrow": False,
                                  "text": f"validation {data.val_loss:.4f}"}]
    return figure_spec(traces, layout)


# ----- thumbnail (an inline SVG: a list of searches draws one per row, no Plotly needed) ------
class Thumbnail(NamedTuple):
    width: int
    height: int
    points: list[tuple[float, float]]  # pixel coordinates, better towards the lower left
    front: list[tuple[float, float]]  # the staircase through the front, in pixels


def thumbnail_data(analysis: FrontAnalysis, width: int = 120, height: int = 48,
                   pad: float = 4.0) -> Thumbnail | None:
    """The default axes of the Pareto plot (second objective across, first up) as losses, so
    lower-left is better; None without two objectives or a finite point. At most a few
    hundred non-front points are kept, evenly spaced."""
    if len(analysis.metrics) < 2 or not len(analysis.complete):
        return None
    signs = np.array([analysis.objectives[1].sign, analysis.objectives[0].sign])
    loss = analysis.values[:, [1, 0]] * signs
    ok = np.all(np.isfinite(loss), axis=1)
    if not ok.any():
        return None
    lo, hi = loss[ok].min(axis=0), loss[ok].max(axis=0)
    span = np.where(hi > lo, hi - lo, 1.0)

    def px(p: Sequence[float]) -> tuple[float, float]:
        x = pad + (p[0] - lo[0]) / span[0] * (width - 2 * pad)
        y = height - pad - (p[1] - lo[1]) / span[1] * (height - 2 * pad)
        return (round(float(x), 1), round(float(y), 1))

    others = np.flatnonzero(ok & ~analysis.on_front)
    if others.size > _THUMBNAIL_MAX_POINTS:
        others = others[np.linspace(0, others.size - 1, _THUMBNAIL_MAX_POINTS).astype(int)]
    front_loss = loss[ok & analysis.on_front]
    xs, ys = staircase(front_loss, ["min", "min"])
    return Thumbnail(width, height, [px(loss[i]) for i in others], [px(p) for p in zip(xs, ys)])


def thumbnail_svg(data: Thumbnail | None) -> str:
    """A small standalone ``<svg>`` (only numbers are interpolated: safe to inline)."""
    if data is None:
        return ""
    dots = "".join(f'<circle cx="{x}" cy="{y}" r="1.6"/>' for x, y in data.points)
    line = " ".join(f"{x},{y}" for x, y in data.front)
    front_dots = "".join(f'<circle cx="{x}" cy="{y}" r="2.2"/>' for x, y in data.front[::2])
    return (f'<svg class="thumb" width="{data.width}" height="{data.height}" '
            f'viewBox="0 0 {data.width} {data.height}" role="img" aria-label="Pareto front">'
            f'<g fill="{DOMINATED_COLOR}" fill-opacity="0.6">{dots}</g>'
            f'<polyline points="{line}" fill="none" stroke="{FRONT_COLOR}" stroke-width="1.3"/>'
            f'<g fill="{FRONT_COLOR}">{front_dots}</g></svg>')


# ----- Plotly, the last step --------------------------------------------------------------
def to_figure(spec: dict[str, Any]) -> go.Figure:
    """A validated Plotly figure of any ``*_spec``: an unknown property or a bad value raises here.

    The pages skip this on purpose (see `_spec`); it is how a notebook, or a test, gets a
    checked `go.Figure` of the same spec.
    """
    import plotly.graph_objects as go

    return go.Figure(spec)


@functools.lru_cache(maxsize=1)
def _template() -> dict[str, Any]:
    import plotly.io as pio

    return pio.templates["plotly_white"].to_plotly_json()


def figure_spec(traces: list[dict[str, Any]], layout: dict[str, Any]) -> dict[str, Any]:
    """A figure as Plotly's JSON (``{"data": [...], "layout": {...}}``), ready for
    ``Plotly.react``. The pages send these as they are: building a `go.Figure` validates and
    deep-copies every value, most of the time a 10,000-candidate page would take. `to_figure`
    (and the tests) validate them."""
    return {"data": traces, "layout": {"template": _template(), **_LAYOUT, **layout}}
