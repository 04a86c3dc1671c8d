"""nas.fronts and nas.plots: the data behind every figure, checked directly, and the figures
checked to be valid Plotly."""

from __future__ import annotations

import math
import re
from datetime import datetime, timedelta, timezone

import numpy as np
import plotly.graph_objects as go
import pytest

from nas import plots
from nas.fronts import analyze, load_front
from nas.store import SnapshotRecord, Store
from tests.service.factories import (
    FRONT_TRIALS,
    INFEASIBLE_TRIAL,
    LATENCY,
    RUNG_COUNTS,
    RUNG_TOKENS_SPENT,
    make_rung_search,
    make_search,
)


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Store:
    with Store(f"sqlite:///{tmp_path_factory.mktemp('plots') / 'nas.db'}") as s:
        make_search(s, "two")
        make_search(s, "three", three_objectives=True)
        make_rung_search(s, "rungs")
        yield s


@pytest.fixture(scope="module")
def two(store):
    return load_front(store, "two")


def trials(analysis, ids):
    by_id = {r.id: r.trial_number for r in analysis.candidates}
    return sorted(by_id[i] for i in ids)


# ----- fronts ------------------------------------------------------------------------------
def test_analyze_ranks_complete_candidates_only(two):
    assert [o.metric for o in two.objectives] == ["val_loss", LATENCY]
    assert len(two.candidates) == 7 and len(two.complete) == 6  # one failed
    assert two.values.shape == (6, 2)
    assert two.feasible.tolist() == [True] * 5 + [False]  # trial 5 breaks params <= 1.5e6
    assert [r.trial_number for r in two.front] == [2, 1, 0]  # by val_loss, ascending
    assert two.on_front.tolist() == [True, True, True, False, False, False]
    knee = next(r for r in two.candidates if r.id == two.knee_id)
    assert knee.trial_number == 1
    assert two.reference == (3.5, 0.5)  # the search's fixed reference, not a derived one


def test_cli_front_uses_the_shared_analysis(store, two):
    from nas.cli import _front

    search, objectives, front, knee = _front(store, "two")
    assert objectives == two.metrics and [r.id for r in front] == [r.id for r in two.front]
    assert knee == two.knee_id


def test_analyze_without_candidates(store):
    empty = analyze(store.get_search("two"), [])
    assert empty.front == () and empty.knee_id is None and empty.hypervolume == 0.0


def test_unreadable_stored_constraint_is_a_warning_not_a_failure(store, two):
    import dataclasses

    broken = dataclasses.replace(two.search, constraints=("params < nonsense",))
    analysis = analyze(broken, two.candidates)
    assert analysis.feasible.all() and analysis.warnings
    assert "constraints not checked" in analysis.warnings[0]


# ----- Pareto scatter ----------------------------------------------------------------------
def test_pareto_data_groups_every_complete_candidate_once(two):
    data = plots.pareto_data(two, [LATENCY, "val_loss"])
    groups = {g.group: g for g in data.groups}
    assert [g.group for g in data.groups] == ["front", "dominated", "infeasible"]
    assert data.n_points == 6 and data.hidden_ids == []
    assert trials(two, groups["front"].ids) == FRONT_TRIALS
    assert trials(two, groups["dominated"].ids) == [3, 4]
    assert trials(two, groups["infeasible"].ids) == [INFEASIBLE_TRIAL]
    front = groups["front"]
    assert front.coords[0] == [0.10, 0.20, 0.40] and front.coords[1] == [3.0, 2.8, 2.6]
    assert front.knee == [False, True, False]
    assert "trial 1" in front.hover[1] and "knee" in front.hover[1]
    assert "candidate" not in front.hover[1]  # one numbering for people: the trial, as the CLI
    assert "L2 d48" in front.hover[1] and "val_loss: 2.8" in front.hover[1]


def test_pareto_step_line_is_the_staircase_of_the_feasible_front(two):
    data = plots.pareto_data(two, [LATENCY, "val_loss"])
    # Across then down: (0.1, 3.0) -> (0.2, 3.0) -> (0.2, 2.8) -> (0.4, 2.8) -> (0.4, 2.6).
    assert data.step == ([0.1, 0.2, 0.2, 0.4, 0.4], [3.0, 3.0, 2.8, 2.8, 2.6])


@pytest.mark.parametrize("directions, expected", [
    (["min", "min"], ([1.0, 2.0, 2.0], [2.0, 2.0, 1.0])),
    (["max", "min"], ([2.0, 1.0, 1.0], [1.0, 1.0, 0.0])),  # bigger x is better: start right
    (["min", "max"], ([1.0, 2.0, 2.0], [2.0, 2.0, 3.0])),  # bigger y is better: step up
])
def test_staircase_for_any_directions(directions, expected):
    points = {("min", "min"): [[1, 2], [2, 1], [3, 3]],
              ("max", "min"): [[2, 1], [1, 0], [0, 2]],
              ("min", "max"): [[1, 2], [2, 3], [3, 1]]}[tuple(directions)]
    assert plots.staircase(points, directions) == expected


def test_staircase_of_nothing():
    assert plots.staircase([], ["min", "min"]) == ([], [])


def test_pareto_data_rejects_unknown_or_repeated_axes(two):
    with pytest.raises(ValueError, match="not an objective"):
        plots.pareto_data(two, ["params", "val_loss"])
    with pytest.raises(ValueError, match="distinct"):
        plots.pareto_data(two, ["val_loss", "val_loss"])


def test_three_objectives_give_a_3d_view_and_projected_steps(store):
    three = load_front(store, "three")
    data = plots.pareto_data(three, three.metrics)
    assert len(data.axes) == 3 and data.step == ([], [])
    assert data.n_points == 6
    spec = plots.pareto_spec(data)
    assert {t["type"] for t in spec["data"]} == {"scatter3d"}
    assert spec["layout"]["scene"]["annotations"][0]["text"] == "knee"
    # In two of three axes the step line is that projection's own front.
    flat = plots.pareto_data(three, ["params", "val_loss"])
    assert flat.step[0] and len(flat.groups[0].ids) == len(three.front)
    assert plots.objective_pairs(three) == [(x, y) for x in three.metrics for y in three.metrics
                                            if x != y]


def test_non_finite_values_are_not_drawn(store, two):
    import dataclasses

    broken = dataclasses.replace(two.complete[3], metrics={**two.complete[3].metrics,
                                                           "val_loss": math.nan})
    records = [broken if r.id == broken.id else r for r in two.candidates]
    data = plots.pareto_data(analyze(two.search, records), [LATENCY, "val_loss"])
    assert data.hidden_ids == [broken.id] and data.n_points == 5


def test_pareto_spec_is_valid_plotly_with_ids_in_customdata(two):
    spec = plots.pareto_spec(plots.pareto_data(two, [LATENCY, "val_loss"]))
    fig = plots.to_figure(spec)  # validates every property
    markers = [t for t in spec["data"] if t["mode"] == "markers"]
    assert sorted(i for t in markers for i in t["customdata"]) == sorted(r.id for r in two.complete)
    steps = [t for t in spec["data"] if t["mode"] == "lines"]
    assert len(steps) == 1 and steps[0]["hoverinfo"] == "skip"  # never swallows a click
    assert {t["meta"]: t["marker"]["opacity"] for t in markers} == {
        "front": 1.0, "dominated": 0.45, "infeasible": 0.4}
    assert spec["layout"]["annotations"][0]["text"] == "knee"
    assert spec["layout"]["xaxis"]["title"]["text"].startswith(LATENCY)
    assert isinstance(fig, go.Figure)
    spec = plots.pareto_spec(plots.pareto_data(two, ["val_loss", LATENCY]))
    assert isinstance(plots.to_figure(spec), go.Figure)


# ----- hypervolume, parallel coordinates, loss curve, thumbnail ------------------------------
def test_hypervolume_data_fills_snapshots_taken_before_the_reference(two, store):
    data = plots.hypervolume_data(store.pareto_snapshots("two"), two)
    assert data.n_complete == [1, 2, 3, 4, 5, 6]
    assert data.front_size == [1, 2, 3, 3, 3, 3]
    # Recorded from the third snapshot on; the first two are computed with the same reference.
    assert data.hypervolume[2:] == pytest.approx([0.3, 0.4, 0.5, 0.6])
    assert data.hypervolume[0] == pytest.approx((3.5 - 3.0) * (0.5 - 0.1))
    assert data.hypervolume[1] == pytest.approx(0.2 + 0.21 - 0.15)  # two boxes minus overlap
    # The one date format of pages and report (nas.dates), in the hover text too.
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d UTC", t) for t in data.times)
    plots.to_figure(plots.hypervolume_spec(data))


def test_hypervolume_data_skips_what_it_cannot_compute(two):
    import dataclasses

    now = datetime.now(timezone.utc)
    snaps = [SnapshotRecord(1, None, (two.complete[0].id,), now),
             SnapshotRecord(2, 0.5, (two.complete[0].id,), now + timedelta(seconds=1))]
    without_reference = dataclasses.replace(two, reference=None)
    assert plots.hypervolume_data(snaps, without_reference).n_complete == [2]


def test_parallel_data_maps_categoricals_and_drops_constants(two):
    data = plots.parallel_data(two)
    dims = {d.label: d for d in data.dimensions}
    assert "vocab_size" not in dims and "max_seq_len" not in dims and "sharing" not in dims
    assert list(dims)[-2:] == ["val_loss", LATENCY]
    attention = dims["attention"]
    assert attention.ticktext == ["linear", "softmax"] and attention.tickvals == [0.0, 1.0]
    assert dims["tie_embeddings"].ticktext == ["tied", "untied"]
    assert dims["n_layer"].tickvals == [1.0, 2.0, 3.0, 4.0]  # few integers: one tick each
    # Front rows last (drawn on top), aligned with the ids.
    assert data.on_front == [0, 0, 0, 1, 1, 1]
    assert trials(two, data.ids[3:]) == FRONT_TRIALS
    k = data.ids.index(two.knee_id)
    assert dims["val_loss"].values[k] == 2.8
    plots.to_figure(plots.parallel_spec(data))


def test_parallel_axis_labels_are_short_enough_not_to_overlap(two):
    """Axis titles are centred over their axes, so each is a few short lines, not rotated
    (a rotated long title ran into its neighbours; checked with a browser screenshot)."""
    assert plots.axis_label("latency:cpu-1t:decode_ms") == "decode ms<br>cpu-1t"
    assert plots.axis_label("latency:cpu-1t-int8:prefill_ms") == "prefill ms<br>cpu-1t-int8"
    assert plots.axis_label("tie_embeddings") == "tie<br>embeddings"
    assert plots.axis_label("non_embedding_params") == "non<br>embedding<br>params"
    assert plots.axis_label("n_kv_head") == "n_kv_head" and plots.axis_label("val_loss") == "val_loss"
    trace = plots.parallel_spec(plots.parallel_data(two))["data"][0]
    labels = [d["label"] for d in trace["dimensions"]]
    assert "decode ms<br>cpu-1t" in labels and "tie<br>embeddings" in labels
    assert all(len(line) <= 11 for label in labels for line in label.split("<br>"))
    assert trace["labelangle"] == 0


def test_loss_curve_data():
    curve = plots.loss_curve_data({"val_loss": 2.5, "status": "ok",
                                   "curve": [[0, 5.0], [100, math.inf], [200, 3.0]]})
    assert curve == plots.LossCurve([0, 200], [5.0, 3.0], 2.5, "ok")
    assert plots.loss_curve_data({}) == plots.LossCurve([], [], None, "")
    spec = plots.loss_curve_spec(curve)
    assert spec["layout"]["shapes"][0]["y0"] == 2.5
    plots.to_figure(spec)


# ----- successive halving -------------------------------------------------------------------
def test_rung_counts_and_tokens_spent(store):
    from nas.fronts import rung_counts, tokens_spent

    rungs = load_front(store, "rungs")
    assert [tuple(c) for c in rungs.rung_counts()] == RUNG_COUNTS
    assert [c.went_on for c in rungs.rung_counts()] == [4, 3, 3]
    assert rungs.tokens_spent() == RUNG_TOKENS_SPENT and len(rungs.pruned) == 3
    assert [r.trial_number for r in rungs.front] == [4, 1, 0]  # pruned ones are never ranked
    # Without fidelity: one rung, the whole budget; candidates stored before rungs were reach
    # no stored rung, and the tokens they cost are unknown rather than 0.
    two = load_front(store, "two")
    assert [tuple(c) for c in two.rung_counts()] == [(0, 2048, 0, 0)]
    assert two.tokens_spent() is None
    assert [tuple(c) for c in rung_counts(rungs.search, [])] == [(k, t, 0, 0) for k, t, _, _ in RUNG_COUNTS]
    assert tokens_spent([]) == 0


def test_hypervolume_against_training_tokens(store):
    rungs = load_front(store, "rungs")
    data = plots.hypervolume_data(store.pareto_snapshots("rungs"), rungs)
    assert data.n_complete == [1, 2, 3] and list(data.tokens) == [2048, 4096, 7680] and data.has_tokens
    spec = plots.hypervolume_spec(data)
    plots.to_figure(spec)  # the buttons are valid Plotly
    candidates, tokens = spec["layout"]["updatemenus"][0]["buttons"]
    assert candidates["args"][0]["x"] == [data.n_complete] and tokens["args"][0]["x"] == [[2048, 4096, 7680]]
    assert "training tokens" in tokens["args"][0]["hovertemplate"][0]
    assert spec["layout"]["xaxis"]["title"]["text"] == "complete candidates"  # as before, at first
    old = plots.hypervolume_data(store.pareto_snapshots("two"), load_front(store, "two"))
    assert not old.has_tokens and "updatemenus" not in plots.hypervolume_spec(old)["layout"]


def test_loss_curve_with_rung_losses(store):
    record = store.candidate_by_trial("rungs", 3)
    curve = plots.loss_curve_data(record.proxy, record.rungs)
    assert curve.rung_tokens == (512, 1024) and curve.rung_loss == pytest.approx((3.9, 3.7))
    spec = plots.loss_curve_spec(curve)
    assert [t["meta"] for t in spec["data"]] == ["train", "rungs"] and spec["layout"]["showlegend"]
    plots.to_figure(spec)
    assert len(plots.loss_curve_spec(plots.loss_curve_data(record.proxy))["data"]) == 1


def test_thumbnail_keeps_the_plot_orientation(two):
    thumb = plots.thumbnail_data(two, width=100, height=40, pad=0)
    assert thumb is not None and thumb.width == 100
    # Front staircase in pixels: x = latency, y = val_loss, lower-left better (y grows down).
    xs = [p[0] for p in thumb.front]
    assert xs == sorted(xs) and thumb.front[0][0] == pytest.approx(100 * (0.10 - 0.05) / 0.35, abs=0.1)
    assert len(thumb.points) == 3  # dominated and infeasible ones
    svg = plots.thumbnail_svg(thumb)
    assert svg.startswith("<svg") and svg.count("<circle") == 3 + len(thumb.front[::2])
    assert plots.thumbnail_svg(None) == ""


def test_thumbnail_thins_out_big_searches(two):
    import dataclasses

    n = 2000
    rng = np.random.default_rng(0)
    big = dataclasses.replace(two, complete=two.complete[:1] * n, values=rng.random((n, 2)),
                              on_front=np.zeros(n, dtype=bool), feasible=np.ones(n, dtype=bool))
    assert len(plots.thumbnail_data(big).points) == 300
