"""``nas report NAME -o report.html``: one self-contained HTML file of a search.

The search page of ``nas serve`` rendered with its data embedded: the same template,
figures (`nas.plots`), table and script, plus plotly.js inline. Nothing is fetched when it
opens: no server, no network. Clicking a point finds the candidate in the table; a search
with rungs shows their counts, and its hypervolume can be drawn against training tokens. A
re-timed front shows its re-timings, and its latencies with their 95% intervals and the pairs
whose order is not resolved, as the page does.

Every Pareto plot it can switch to is embedded, so it embeds a bounded set: the pairs of the
first objectives, and each measured workload metric against the first objective.
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

from nas import plots
from nas.errors import ConfigError
from nas.service.templating import environment
from nas.service.views import ViewCache, search_out

if TYPE_CHECKING:
    from nas.store import Store

MAX_PAIR_OBJECTIVES = 4  # axis choices embedded for the first 4 objectives: at most 12 plots
MAX_MEASURED_AXES = 12  # and at most 12 measured metrics (x) against the first objective (y)


def render_report(store: Store, name: str) -> str:
    """The report's HTML (NotFoundError for an unknown search)."""
    from plotly.offline import get_plotlyjs

    view = ViewCache(store, size=1, background=False).get(name)
    analysis = view.analysis
    axes = list(plots.default_axes(analysis.metrics))
    first = analysis.metrics[:MAX_PAIR_OBJECTIVES]
    pairs = [(x, y) for x, y in plots.objective_pairs(analysis) if x in first and y in first]
    choices = plots.axis_metrics(analysis.search)
    if analysis.metrics:
        # Only metrics some complete candidate has: an empty plot is not worth its bytes.
        present = {m for r in analysis.complete for m in r.metrics}
        measured = [m for m in choices if m not in analysis.metrics and m in present]
        pairs += [(m, analysis.metrics[0]) for m in measured[:MAX_MEASURED_AXES]]
    figures = view.figures(axes, parts=("pareto3d", "hypervolume", "parallel", "rungs", "retimes"))
    figures["pareto"] = {f"{x}|{y}": view.pareto_figure((x, y)) for x, y in pairs}
    data = {"figures": figures, "candidates": view.rows()}
    return environment().get_template("search.html").render(
        offline=True, token_required=False, name=name,
        search={**search_out(view.summary, view.search), **view.rung_summary()},
        axes=axes, axis_choices=choices, data=data, api_base="", plotly_js=get_plotlyjs(),
        written=datetime.now(timezone.utc))


def check_writable(path: str | Path) -> Path:
    """``path`` if a report can be written there; a one-line ConfigError naming it otherwise.

    Called before rendering, which takes seconds: a typo in ``-o`` fails at once.
    """
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"is a directory; name the HTML file to write, e.g. "
                          f"{path / 'report.html'}", source=str(path), field="-o", value=str(path))
    parent = path.parent
    if not parent.exists():
        raise ConfigError(f"cannot write the report: directory {parent} does not exist",
                          source=str(path), field="-o", value=str(path))
    if not parent.is_dir():
        raise ConfigError(f"cannot write the report: {parent} is not a directory",
                          source=str(path), field="-o", value=str(path))
    return path


def write_report(store: Store, name: str, path: str | Path) -> Path:
    """Write the report of search ``name`` to ``path`` (its directory must exist)."""
    path = check_writable(path)
    html = render_report(store, name)
    try:
        path.write_text(html, encoding="utf-8")
    except OSError as err:  # permissions, a full disk...
        raise ConfigError(f"cannot write the report: {err.strerror}", source=str(path), field="-o",
                          value=str(path)) from None
    return path
