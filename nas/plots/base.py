"""What every figure shares: colours, axes, hover text and the last step to Plotly's JSON."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

from nas.util import format_value

if TYPE_CHECKING:
    import plotly.graph_objects as go

    from nas.store import CandidateRecord

FRONT_COLOR = "#2563eb"
DOMINATED_COLOR = "#94a3b8"
INFEASIBLE_COLOR = "#f97316"
GROUPS = ("front", "dominated", "infeasible")
LAYOUT = {"margin": {"l": 60, "r": 20, "t": 30, "b": 50},
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
    return {"data": traces, "layout": {"template": _template(), **LAYOUT, **layout}}
