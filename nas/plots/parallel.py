"""Parallel coordinates: every complete candidate's architecture fields and objectives."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from nas.plots.base import FRONT_COLOR, figure_spec

if TYPE_CHECKING:
    from nas.fronts import FrontAnalysis

# Architecture fields that are choices, not quantities: drawn with their names as tick labels.
_CATEGORICAL = ("attention", "window", "sharing", "tie_embeddings")
_MAX_INT_TICKS = 12  # integer fields with at most this many values are labelled value by value
_LABEL_WIDTH = 10  # characters per line of a parallel-coordinates axis label


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


