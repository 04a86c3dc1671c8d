"""One candidate's loss curve, and the inline SVG thumbnail of a search's front."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from nas.plots.base import DOMINATED_COLOR, FRONT_COLOR, INFEASIBLE_COLOR, figure_spec
from nas.plots.front import staircase

if TYPE_CHECKING:
    from nas.fronts import FrontAnalysis
    from nas.results import RungLoss

_THUMBNAIL_MAX_POINTS = 300  # a list page with many 10,000-candidate searches stays light


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


