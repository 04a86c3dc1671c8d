"""nas.pareto against brute force and against Optuna's own implementations."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from nas.errors import ConfigError
from nas.objectives import Objective
from nas.pareto import (
    GrowingFronts,
    ParetoSummary,
    hypervolume,
    knee_point,
    non_dominated_sort,
    pareto_front,
    reference_point,
    summarize,
)

optuna = pytest.importorskip("optuna")
optuna.logging.set_verbosity(optuna.logging.WARNING)


# ----- brute-force references ------------------------------------------------------------
def _losses(values, directions):
    signs = [1.0 if d == "min" else -1.0 for d in directions]
    out = []
    for row in values:
        out.append([math.inf if math.isnan(v) else v * s for v, s in zip(row, signs)])
    return out


def _dom(a, b):
    return all(x <= y for x, y in zip(a, b)) and any(x < y for x, y in zip(a, b))


def dominates(a, b, directions):
    """Whether point ``a`` dominates point ``b`` (Optuna's rule, NaN worst)."""
    la, lb = _losses([a, b], directions)
    return _dom(la, lb)


def total_violation(constraints):
    """Per row, the sum of the positive constraint values (Optuna's penalty; NaN infinite)."""
    c = np.asarray(constraints, dtype=float).reshape(len(constraints), -1)
    return np.clip(np.where(np.isnan(c), np.inf, c), 0.0, None).sum(axis=1)


def hypervolume_history(values, directions, reference, feasible):
    """Hypervolume of the feasible points among the first k, for k = 1..n (how a front grew)."""
    values, feasible = np.asarray(values, dtype=float), np.asarray(feasible, dtype=bool)
    return [hypervolume(values[:k][feasible[:k]], directions, reference)
            for k in range(1, len(values) + 1)]


def _peel(loss, idx):
    fronts, rest = [], list(idx)
    while rest:
        front = [i for i in rest if not any(_dom(loss[j], loss[i]) for j in rest)]
        fronts.append(sorted(front))
        rest = [i for i in rest if i not in front]
    return fronts


def brute_sort(values, directions, feasible=None, violation=None):
    loss = _losses(values, directions)
    n = len(loss)
    if feasible is None:
        feasible = [True] * n if violation is None else [v <= 0 for v in violation]
    fronts = _peel(loss, [i for i in range(n) if feasible[i]])
    infeasible = [i for i in range(n) if not feasible[i]]
    if violation is None:
        fronts += _peel(loss, infeasible)
    else:
        for level in sorted({violation[i] for i in infeasible}):
            fronts.append(sorted(i for i in infeasible if violation[i] == level))
    return fronts


def brute_hypervolume(values, directions, reference):
    """Exact by coordinate compression: sum the grid cells whose lower corner is dominated."""
    loss = np.array(_losses(values, directions))
    signs = np.array([1.0 if d == "min" else -1.0 for d in directions])
    ref = np.asarray(reference, dtype=float) * signs
    loss = loss[np.all(loss < ref, axis=1)]
    if len(loss) == 0:
        return 0.0
    axes = [np.unique(np.append(loss[:, k], ref[k])) for k in range(loss.shape[1])]
    total = 0.0
    for cell in itertools.product(*[range(len(a) - 1) for a in axes]):
        corner = np.array([axes[k][c] for k, c in enumerate(cell)])
        if np.any(np.all(loss <= corner, axis=1)):
            total += float(np.prod([axes[k][c + 1] - axes[k][c] for k, c in enumerate(cell)]))
    return total


def inclusion_exclusion_2d(points, reference):
    """Union of boxes [p, ref] by inclusion-exclusion (all minimised)."""
    pts = [p for p in points if p[0] < reference[0] and p[1] < reference[1]]
    total = 0.0
    for r in range(1, len(pts) + 1):
        for subset in itertools.combinations(pts, r):
            corner = np.max(subset, axis=0)
            total += (-1) ** (r + 1) * (reference[0] - corner[0]) * (reference[1] - corner[1])
    return total


def random_case(seed, n, m, ties=True, nan=False):
    rng = np.random.default_rng(seed)
    # With ties: few distinct levels, so many ties and exact duplicates.
    values = rng.integers(0, 4, size=(n, m)).astype(float) if ties else rng.random((n, m))
    if nan:
        values[rng.random((n, m)) < 0.03] = np.nan
    directions = [("min", "max")[int(b)] for b in rng.integers(0, 2, size=m)]
    return values, directions, rng


# ----- sorting ---------------------------------------------------------------------------
@pytest.mark.parametrize("m", [1, 2, 3, 4])
@pytest.mark.parametrize("seed", range(6))
def test_non_dominated_sort_matches_brute_force(m, seed):
    values, directions, rng = random_case(seed, n=60, m=m, ties=seed % 2 == 0, nan=seed == 5)
    values[7] = values[3]  # an exact duplicate in every case
    assert non_dominated_sort(values, directions) == brute_sort(values.tolist(), directions)


@pytest.mark.parametrize("m", [2, 3])
@pytest.mark.parametrize("seed", range(4))
def test_infeasible_points_rank_last(m, seed):
    values, directions, rng = random_case(seed, n=50, m=m)
    violation = np.where(rng.random(50) < 0.4, rng.integers(1, 4, size=50).astype(float), 0.0)
    feasible = violation <= 0
    expected = brute_sort(values.tolist(), directions, feasible.tolist(), violation.tolist())
    assert non_dominated_sort(values, directions, violation=violation) == expected
    assert non_dominated_sort(values, directions, feasible, violation) == expected
    # Without violation amounts, infeasible points are sorted by their objectives.
    assert non_dominated_sort(values, directions, feasible) == brute_sort(
        values.tolist(), directions, feasible.tolist())
    fronts = non_dominated_sort(values, directions, feasible)
    n_feasible_fronts = len(brute_sort(values[feasible].tolist(), directions))
    assert all(feasible[i] for f in fronts[:n_feasible_fronts] for i in f)
    assert pareto_front(values, directions, feasible) == expected[0]


def test_pareto_front_edge_cases():
    assert pareto_front([], ["min", "max"]) == []
    assert non_dominated_sort(np.empty((0, 3)), ["min"] * 3) == []
    assert pareto_front([[1, 2], [0, 5]], ["min", "min"], feasible=[False, False]) == []
    assert pareto_front([[1.0, 2.0]] * 3, ["min", "min"]) == [0, 1, 2]  # duplicates share it
    assert pareto_front([[1, 1], [2, 2]], ["max", "max"]) == [1]
    assert dominates([1, 5], [2, 5], ["min", "max"]) and not dominates([1, 5], [1, 5], ["min"] * 2)
    with pytest.raises(ValueError):
        pareto_front([[1, 2, 3]], ["min", "min"])
    with pytest.raises(ConfigError):
        pareto_front([[1, 2]], ["min", "up"])


def test_two_objective_sort_scales_to_100k_points():
    rng = np.random.default_rng(0)
    values = rng.random((100_000, 2))
    fronts = non_dominated_sort(values, ["min", "min"])
    assert sum(len(f) for f in fronts) == len(values)
    # First front by an independent vectorised 2-D rule: strictly below every earlier point.
    order = np.lexsort((values[:, 1], values[:, 0]))
    best_before = np.minimum.accumulate(np.concatenate([[np.inf], values[order, 1][:-1]]))
    assert fronts[0] == sorted(order[values[order, 1] < best_before].tolist())


# ----- against Optuna --------------------------------------------------------------------
def _study(values, directions, constraints=None):
    study = optuna.create_study(
        directions=[Objective("x", d).optuna_direction for d in directions])
    study.add_trials([
        optuna.trial.create_trial(
            values=row.tolist(),
            constraints=None if constraints is None else {
                f"c{k}": float(c) for k, c in enumerate(constraints[i])})
        for i, row in enumerate(values)])
    return study


@pytest.mark.parametrize("m", [2, 3, 4])
@pytest.mark.parametrize("seed", range(3))
def test_front_equals_optuna_best_trials(m, seed):
    values, directions, rng = random_case(seed, n=80, m=m, ties=seed != 1)
    study = _study(values, directions)
    assert sorted(t.number for t in study.best_trials) == pareto_front(values, directions)

    constraints = rng.normal(size=(80, 2)) - 0.5  # <= 0 is feasible, Optuna's convention
    study = _study(values, directions, constraints)
    violation = total_violation(constraints)
    ours = pareto_front(values, directions, violation=violation)
    assert sorted(t.number for t in study.best_trials) == ours
    assert ours == pareto_front(values, directions, feasible=np.all(constraints <= 0, axis=1))


@pytest.mark.parametrize("m", [2, 3])
def test_ranks_equal_optuna_constrained_nondomination_rank(m):
    multi = pytest.importorskip("optuna.study._multi_objective")
    values, directions, rng = random_case(11, n=70, m=m)
    penalty = np.where(rng.random(70) < 0.3, rng.integers(1, 5, size=70).astype(float), 0.0)
    loss = values * np.array([1.0 if d == "min" else -1.0 for d in directions])
    ranks = multi._fast_non_domination_rank(loss, penalty=penalty)
    expected = [sorted(np.flatnonzero(ranks == r).tolist()) for r in range(ranks.max() + 1)]
    assert non_dominated_sort(values, directions, violation=penalty) == expected


@pytest.mark.parametrize("m", [2, 3, 4, 5])
@pytest.mark.parametrize("seed", range(3))
def test_hypervolume_equals_optuna(m, seed):
    hv_module = pytest.importorskip("optuna._hypervolume")
    values, directions, _ = random_case(seed, n=40 if m < 5 else 25, m=m, ties=seed == 0)
    reference = reference_point(values, directions, margin=0.05)
    signs = np.array([1.0 if d == "min" else -1.0 for d in directions])
    theirs = hv_module.compute_hypervolume(values * signs, reference * signs)
    assert hypervolume(values, directions, reference) == pytest.approx(theirs, rel=1e-9)


# ----- hypervolume -------------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(8))
def test_hypervolume_2d_brute_force(seed):
    values, directions, rng = random_case(seed, n=9, m=2, ties=seed % 2 == 0)
    values = values + rng.random(values.shape) * (seed % 3 == 0)
    reference = [2.5 if d == "min" else 0.5 for d in directions]
    ours = hypervolume(values, directions, reference)
    assert ours == pytest.approx(brute_hypervolume(values, directions, reference), abs=1e-12)
    loss = values * np.array([1.0 if d == "min" else -1.0 for d in directions])
    ref = [r * (1.0 if d == "min" else -1.0) for r, d in zip(reference, directions)]
    assert ours == pytest.approx(inclusion_exclusion_2d(loss.tolist(), ref), abs=1e-12)


@pytest.mark.parametrize("m,n", [(3, 12), (3, 30), (4, 9)])
@pytest.mark.parametrize("seed", range(4))
def test_hypervolume_nd_brute_force(m, n, seed):
    values, directions, rng = random_case(seed, n=n, m=m, ties=seed % 2 == 0)
    values = values + 0.5 * rng.random(values.shape) * (seed >= 2)
    reference = [3.5 if d == "min" else 0.2 for d in directions]
    assert hypervolume(values, directions, reference) == pytest.approx(
        brute_hypervolume(values, directions, reference), rel=1e-12, abs=1e-12)


def test_hypervolume_3d_monte_carlo():
    rng = np.random.default_rng(3)
    pts = rng.random((25, 3))
    ours = hypervolume(pts, ["min"] * 3, [1, 1, 1])
    samples = rng.random((200_000, 3))
    covered = np.zeros(len(samples), dtype=bool)
    for p in pts:
        covered |= np.all(samples >= p, axis=1)
    assert ours == pytest.approx(covered.mean(), abs=0.005)


def test_hypervolume_ignores_points_outside_reference():
    directions = ["min", "max"]
    assert hypervolume([[1.0, 5.0]], directions, [3.0, 1.0]) == 8.0
    # On the reference in one objective, or worse than it: no volume.
    assert hypervolume([[3.0, 5.0], [1.0, 0.5], [np.nan, 9.0]], directions, [3.0, 1.0]) == 0.0
    assert hypervolume([[3.0, 5.0], [1.0, 5.0]], directions, [3.0, 1.0]) == 8.0
    assert hypervolume([], directions, [3.0, 1.0]) == 0.0
    assert hypervolume([[0, 0, 0, 0]], ["min"] * 4, [1, 2, 3, 4]) == 24.0
    with pytest.raises(ValueError):
        hypervolume([[1.0, 2.0]], directions, [np.inf, 0.0])


def test_reference_point_pushes_nadir_out_by_margin():
    values = np.array([[1.0, 10.0], [3.0, 30.0], [2.0, 20.0]])
    ref = reference_point(values, ["min", "max"], margin=0.1)
    np.testing.assert_allclose(ref, [3.2, 8.0])  # worst + 10% of the range, per direction
    assert hypervolume(values, ["min", "max"], ref) > 0
    # Zero range: pushed by margin * |nadir|, or by margin when the nadir is 0.
    np.testing.assert_allclose(reference_point([[2.0, 0.0]], ["min", "min"], 0.5), [3.0, 0.5])
    with pytest.raises(ValueError):
        reference_point([[np.nan, 1.0]], ["min", "min"])


def test_hypervolume_history_grows_to_the_final_value():
    values, directions, rng = random_case(4, n=40, m=3, ties=False)
    feasible = rng.random(40) < 0.8
    ref = reference_point(values, directions)
    history = hypervolume_history(values, directions, ref, feasible=feasible)
    assert len(history) == 40 and all(b >= a for a, b in zip(history, history[1:]))
    assert history[-1] == pytest.approx(hypervolume(values[feasible], directions, ref))
    assert history[9] == pytest.approx(hypervolume(values[:10][feasible[:10]], directions, ref))


# ----- knee and summary -------------------------------------------------------------------
def test_knee_point_2d_is_farthest_from_the_chord():
    front = [[0.0, 1.0], [0.1, 0.3], [0.5, 0.1], [1.0, 0.0], [0.9, 0.9]]  # last one dominated
    assert knee_point(front, ["min", "min"]) == 1
    flipped = [[x, -y] for x, y in front]
    assert knee_point(flipped, ["min", "max"]) == 1
    assert knee_point([[2.0, 2.0]], ["min", "min"]) == 0
    assert knee_point([[1.0], [0.5], [2.0]], ["min"]) == 1
    with pytest.raises(ValueError):
        knee_point([[1.0, 1.0]], ["min", "min"], feasible=[False])


def test_knee_point_3d_is_closest_to_utopia():
    pts = [[0.0, 1.0, 1.0], [1.0, 0.0, 1.0], [1.0, 1.0, 0.0], [0.4, 0.4, 0.4], [0.2, 0.9, 0.5]]
    assert knee_point(pts, ["min"] * 3) == 3


def test_summarize():
    values, directions, rng = random_case(2, n=30, m=2, ties=False)
    feasible = rng.random(30) < 0.7
    s = summarize(values, directions, feasible)
    assert isinstance(s, ParetoSummary)
    assert s.front == pareto_front(values, directions, feasible)
    assert s.knee in s.front
    assert s.hypervolume == pytest.approx(hypervolume(values[feasible], directions, s.reference))
    fixed = summarize(values, directions, feasible, reference=s.reference)
    assert fixed == s
    empty = summarize(values, directions, np.zeros(30, dtype=bool))
    assert empty == ParetoSummary([], 0.0, None, None)


def test_objective_parsing():
    assert Objective.parse("latency:cpu-1t:decode_ms:min") == Objective("latency:cpu-1t:decode_ms")
    assert Objective.parse({"val_loss": "max"}).direction == "max"
    assert Objective.parse({"metric": "params", "direction": "minimize"}).direction == "min"
    assert Objective.parse(("params", "max")).sign == -1.0
    assert str(Objective("val_loss")) == "val_loss:min"
    for bad in ["val_loss", "val_loss:up", {"a": "min", "b": "max"}, 3]:
        with pytest.raises(ConfigError):
            Objective.parse(bad)


@pytest.mark.parametrize("directions", [["min"], ["min", "min"], ["min", "max", "min"]])
def test_growing_fronts_keep_the_ranks_of_a_full_sort(directions):
    """Every add (new, re-added with new values) and discard leaves the ranks a fresh sort gives,
    with ties, equal points and NaN; an add's standing is where the point landed."""
    rng = np.random.default_rng(len(directions))
    values = np.round(rng.uniform(0, 3, (120, len(directions))) * 2) / 2  # ties and equal points
    values[3, 0] = np.nan  # NaN ranks last, as in the sort
    fronts, held = GrowingFronts(directions), {}
    for step in range(220):
        key = int(rng.integers(0, 90))
        if step % 9 == 8:
            fronts.discard(key)
            held.pop(key, None)
        else:
            row = values[int(rng.integers(0, len(values)))]
            standing = None if key in held else fronts.add(key, row)
            fronts.add(key, row)  # the same values again: replaced, nothing moves
            held[key] = row
        keys = sorted(held)
        want = {keys[i]: r for r, front in enumerate(non_dominated_sort([held[k] for k in keys], directions))
                for i in front}
        assert fronts.ranks() == want, step
        if step % 9 != 8 and standing is not None:  # a new key: its standing came true
            mine = want[key]
            assert standing.better == sum(1 for k, r in want.items() if r < mine)
            assert len(standing.peers) == sum(1 for r in want.values() if r == mine)


@pytest.mark.parametrize("order", ["worst first", "best first", "shuffled"])
def test_growing_fronts_keep_deep_fronts_exact(order):
    """Correlated objectives make many shallow fronts: an arrival near the best end moves every
    front below it, each by exactly one (the case the front-by-front push-down relies on)."""
    rng = np.random.default_rng(7)
    base = rng.uniform(0, 1, 300)
    values = np.stack([base + rng.normal(0, 0.02, 300), base + rng.normal(0, 0.02, 300)], axis=1)
    keys = {"worst first": np.argsort(-base), "best first": np.argsort(base),
            "shuffled": rng.permutation(300)}[order]
    fronts, held = GrowingFronts(["min", "min"]), []
    for key in keys:
        fronts.add(int(key), values[key])
        held.append(int(key))
    want = {held[i]: r for r, front in enumerate(non_dominated_sort(values[held], ["min", "min"]))
            for i in front}
    assert fronts.ranks() == want
    assert max(want.values()) > 20  # deep enough that arrivals move many fronts
