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


from nas.plots.base import (
    DOMINATED_COLOR,
    FRONT_COLOR,
    GROUPS,
    INFEASIBLE_COLOR,
    Axis,
    figure_spec,
    hover_text,
    to_figure,
)
from nas.plots.candidate import (
    LossCurve,
    Thumbnail,
    loss_curve_data,
    loss_curve_spec,
    thumbnail_data,
    thumbnail_svg,
)
from nas.plots.front import (
    HypervolumeData,
    ParetoData,
    PointGroup,
    axis_metrics,
    default_axes,
    hypervolume_data,
    hypervolume_spec,
    metric_direction,
    objective_pairs,
    pareto_data,
    pareto_spec,
    staircase,
)
from nas.plots.parallel import Dimension, ParallelData, axis_label, parallel_data, parallel_spec

__all__ = ["DOMINATED_COLOR", "FRONT_COLOR", "GROUPS", "INFEASIBLE_COLOR", "Axis", "Dimension",
           "HypervolumeData", "LossCurve", "ParallelData", "ParetoData", "PointGroup", "Thumbnail",
           "axis_label", "axis_metrics", "default_axes", "figure_spec", "hover_text", "hypervolume_data",
           "hypervolume_spec", "loss_curve_data", "loss_curve_spec", "metric_direction", "objective_pairs",
           "pareto_data", "pareto_spec", "parallel_data", "parallel_spec", "staircase", "thumbnail_data",
           "thumbnail_svg", "to_figure"]
