"""Successive halving: rung placement, the promotion rule against a brute-force reference, and
checkpoint continuation that is bitwise the same as training without a break."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from nas.architecture import Architecture
from nas.data import prepare
from nas.fidelity import Fidelity, rung_steps, rung_tokens
from nas.fidelity import promotes as _promotes
from nas.pareto import GrowingFronts
from nas.proxy import train
from nas.specs import DataSpec, ProxyBudget


# ----- rungs -----------------------------------------------------------------------------
def test_rungs_divide_the_budget_by_eta_and_end_on_whole_steps():
    budget = ProxyBudget(tokens=500_000, batch_size=16, seq_len=64)  # 1,024 tokens a step
    assert rung_tokens(Fidelity(31_250, 4), budget) == (30_720, 124_928, 499_712)
    assert rung_steps(Fidelity(31_250, 4), budget) == (30, 122, 488)
    assert rung_steps(Fidelity(50_000, 3), budget) == (54, 162, 488)
    assert rung_steps(None, budget) == (budget.steps,)  # no fidelity: one rung, the whole budget


# ----- the promotion rule against a brute-force reference --------------------------------
def promotes(arrival, earlier, eta: int, directions) -> bool:
    """`nas.fidelity.promotes` with the earlier arrivals given as a list, in arrival order."""
    fronts = GrowingFronts(directions)
    for trial, values in enumerate(earlier):
        fronts.add(trial, values)
    return _promotes(fronts.add(len(earlier), arrival), len(earlier) + 1, eta)


def _dominates(a: np.ndarray, b: np.ndarray) -> bool:
    return bool(np.all(a <= b) and np.any(a < b))


def _reference_promotes(arrival, earlier, eta: int) -> bool:
    """The rule written out from its definition, all objectives minimised: peel fronts one by
    one, give each point of a front its crowding distance (gap between the nearest distinct
    values below and above, over the range; inf at either end), count who ranks strictly above."""
    points = [np.asarray(p, dtype=float) for p in [*earlier, arrival]]
    n, me = len(points), len(points) - 1
    remaining, front_of = set(range(n)), {}
    level = 0
    while remaining:
        front = {i for i in remaining if not any(_dominates(points[j], points[i]) for j in remaining)}
        for i in front:
            front_of[i] = level
        remaining -= front
        level += 1
    mine = [i for i in range(n) if front_of[i] == front_of[me]]
    crowd = {i: 0.0 for i in mine}
    for k in range(len(arrival)):
        values = sorted({points[i][k] for i in mine})
        lo, hi = values[0], values[-1]
        for i in mine:
            v = points[i][k]
            if v in (lo, hi):
                crowd[i] = math.inf
            elif crowd[i] != math.inf:
                below = max(x for x in values if x < v)
                above = min(x for x in values if x > v)
                crowd[i] += (above - below) / (hi - lo)
    ahead = sum(1 for i in range(n) if front_of[i] < front_of[me])
    ahead += sum(1 for i in mine if crowd[i] > crowd[me])
    return ahead < max(1, n // eta)


def _synthetic_arrivals(rng: np.random.Generator, n: int, objectives: int, ties: bool) -> list[list[float]]:
    """Rung losses of learning curves a + b * t**-c at a rung, with exact latencies (and sizes):
    on a coarse grid when ``ties`` so that equal values and equal points occur often."""
    t = 4.0
    a, b, c = rng.uniform(1, 2, n), rng.uniform(0.5, 3, n), rng.uniform(0.2, 1, n)
    loss = a + b * t ** -c
    columns = [loss] + [rng.uniform(0.1, 5, n) for _ in range(objectives - 1)]
    if ties:
        columns = [np.round(col * 2) / 2 for col in columns]
    return [list(map(float, row)) for row in zip(*columns)]


@pytest.mark.parametrize("objectives", [1, 2, 3])
@pytest.mark.parametrize("ties", [False, True])
def test_promotion_matches_a_brute_force_reference_in_any_arrival_order(objectives, ties):
    rng = np.random.default_rng(objectives * 10 + ties)
    for eta in (2, 3, 4):
        points = _synthetic_arrivals(rng, 14, objectives, ties)
        for order in (rng.permutation(len(points)) for _ in range(6)):
            arrived = [points[i] for i in order]
            for k in range(len(arrived)):
                got = promotes(arrived[k], arrived[:k], eta, ["min"] * objectives)
                assert got == _reference_promotes(arrived[k], arrived[:k], eta), (eta, order, k)


def test_promotion_edge_cases():
    both = ["min", "min"]
    assert promotes([1, 1], [], 4, both)  # the first arrival always goes on
    assert not promotes([2, 2], [[1, 1]], 4, both)  # dominated, and only one may go on
    assert promotes([1, 2], [[2, 1]], 4, both)  # a trade-off: both ends of the front go on
    assert promotes([1, 1], [[1, 1]] * 7, 4, both)  # equal points tie: none ranks above another
    # directions are honoured: a maximised objective ranks the larger value first
    assert promotes([0.9], [[0.5], [0.1], [0.2]], 2, ["max"])
    assert not promotes([0.1], [[0.5], [0.9], [0.2]], 2, ["max"])
    # of eta * k arrivals exactly k go on when there are no ties (one objective, all distinct)
    values = [[float(v)] for v in np.random.default_rng(0).permutation(16)]
    ranks = sorted(v[0] for v in values)
    assert all(promotes(v, [w for w in values if w is not v], 4, ["min"]) == (v[0] in ranks[:4])
               for v in values)


# ----- continuation --------------------------------------------------------------------
@pytest.fixture(scope="module")
def stdlib():
    return prepare(DataSpec())


def test_continuing_a_checkpoint_is_bitwise_training_without_a_break(stdlib):
    budget = ProxyBudget(tokens=48 * 512, batch_size=8, seq_len=64, val_tokens=2048)
    arch = Architecture(n_layer=2, d_model=32, n_head=2, n_kv_head=1, vocab_size=256, max_seq_len=64,
                        tie_embeddings=True, sharing="all")
    straight = train(arch, budget, stdlib, seed=5, threads=1)
    first = train(arch, budget, stdlib, seed=5, threads=1, stop_at=6)
    second = train(arch, budget, stdlib, seed=5, threads=1, stop_at=24, resume=first.checkpoint)
    last = train(arch, budget, stdlib, seed=5, threads=1, resume=second.checkpoint)
    assert first.checkpoint and second.checkpoint and last.checkpoint is None
    assert (first.result.tokens, second.result.tokens, last.result.tokens) == (6 * 512, 24 * 512, 48 * 512)
    for (name, a), (_, b) in zip(straight.model.state_dict().items(), last.model.state_dict().items()):
        assert torch.equal(a, b), name
    assert last.result.val_loss == straight.result.val_loss
    assert last.result.curve == straight.result.curve  # the losses before the break travel along
    # a rung's loss is the raw loss at that step of the whole budget's schedule
    assert math.isfinite(first.result.val_loss) and first.result.val_loss > last.result.val_loss


def test_a_checkpoint_cannot_be_continued_backwards_or_beyond_the_budget(stdlib):
    budget = ProxyBudget(tokens=16 * 512, batch_size=8, seq_len=64, val_tokens=2048)
    arch = Architecture(n_layer=1, d_model=16, n_head=1, vocab_size=256, max_seq_len=64)
    first = train(arch, budget, stdlib, seed=0, threads=1, stop_at=8)
    with pytest.raises(ValueError, match="not before stop_at=4"):
        train(arch, budget, stdlib, seed=0, threads=1, stop_at=4, resume=first.checkpoint)
    with pytest.raises(ValueError, match="within the budget's 1..16 steps"):
        train(arch, budget, stdlib, seed=0, threads=1, stop_at=17)
    with pytest.raises(ValueError, match="not a training checkpoint"):
        import io

        buffer = io.BytesIO()
        torch.save({"step": 1}, buffer)
        train(arch, budget, stdlib, seed=0, threads=1, resume=buffer.getvalue())


@pytest.mark.parametrize("objectives", [2, 3])
def test_promotion_matches_the_reference_on_a_larger_rung(objectives):
    """Enough arrivals that the dominator shortcut and the pruned sort both take effect."""
    rng = np.random.default_rng(7 + objectives)
    points = _synthetic_arrivals(rng, 80, objectives, ties=True)
    for eta in (2, 4):
        for k in range(len(points)):
            got = promotes(points[k], points[:k], eta, ["min"] * objectives)
            assert got == _reference_promotes(points[k], points[:k], eta), (eta, k)


def test_a_rungs_arrivals_hold_each_trial_once_as_they_grow():
    arrivals = GrowingFronts(["min", "min"])
    assert len(arrivals) == 0
    for trial in range(40):  # past the first buffer's 16 rows
        arrivals.add(trial, [float(trial % 7), float(trial // 7)])
    arrivals.add(5, [100.0, 100.0])  # trial 5 re-run: its new values replace the old
    assert len(arrivals) == 40 and 5 in arrivals
    ranks = arrivals.ranks()
    assert ranks[5] == max(ranks.values())  # worst now, dominated by every other point
    assert ranks[0] == 0 and ranks[12] == 6  # (5, 1) after (0, 0) .. (4, 0), (4, 1)
    arrivals.discard(5)
    assert len(arrivals) == 39 and 5 not in arrivals
