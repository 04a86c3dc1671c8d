"""A search's candidates as every reader sees them: objectives, feasibility, front and knee.

`analyze` is the one place that turns stored records into a front, so ``nas show``,
``nas pareto``, ``nas serve`` and ``nas report`` can never disagree about which candidates
are on it. It takes records, not a store (`load_front` is the one-line convenience), and
imports no torch. `rung_counts` and `tokens_spent` are the successive-halving side of the same
records: how many candidates reached each rung, how many stopped there, and what it all cost.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from nas import pareto
from nas.errors import ConfigError
from nas.objectives import Constraint, Objective, is_feasible

if TYPE_CHECKING:
    from nas.store import CandidateRecord, SearchRecord, Store


@dataclass(frozen=True, eq=False)
class FrontAnalysis:
    """Every candidate of one search and where the complete ones stand.

    Arrays are aligned with ``complete`` (the points of the plots): ``values[i]`` holds
    ``complete[i]``'s objectives (NaN where a metric is missing, which `nas.pareto` ranks worst).
    """

    search: SearchRecord
    objectives: tuple[Objective, ...]
    candidates: tuple[CandidateRecord, ...]  # every candidate, by trial number
    complete: tuple[CandidateRecord, ...]  # the complete ones, by trial number
    values: np.ndarray  # (len(complete), len(objectives)) float
    feasible: np.ndarray  # (len(complete),) bool: meets every constraint
    on_front: np.ndarray  # (len(complete),) bool: feasible and non-dominated
    front: tuple[CandidateRecord, ...]  # the front, sorted by the first objective
    knee_id: int | None
    hypervolume: float  # of the front, w.r.t. ``reference``; 0.0 when there is none
    reference: tuple[float, ...] | None  # the search's fixed reference, else one derived now
    warnings: tuple[str, ...] = field(default=())  # shown to the user, never fatal

    @property
    def metrics(self) -> list[str]:
        return [o.metric for o in self.objectives]

    @property
    def directions(self) -> list[str]:
        return [o.direction for o in self.objectives]

    @property
    def infeasible(self) -> tuple[CandidateRecord, ...]:
        """Candidates whose shape step broke a constraint: never trained (no ``val_loss``), so
        never ranked, but counted among ``candidates``."""
        return tuple(r for r in self.candidates if r.state == "infeasible")

    @property
    def front_ids(self) -> frozenset[int]:
        return frozenset(r.id for r in self.front)

    @property
    def pruned(self) -> tuple[CandidateRecord, ...]:
        """Candidates successive halving stopped at a rung: kept with their rung losses, never ranked."""
        return tuple(r for r in self.candidates if r.state == "pruned")

    def rung_counts(self) -> tuple[RungCount, ...]:
        return rung_counts(self.search, self.candidates)

    def tokens_spent(self) -> int | None:
        return tokens_spent(self.candidates)


class RungCount(NamedTuple):
    """One rung of a search: its size and how many candidates got there and stopped there."""

    rung: int  # 0 = the first (smallest) rung; people read rung + 1 ("rung 1 of 3")
    tokens: int  # training tokens a candidate has seen at the end of this rung
    reached: int  # candidates whose loss at this rung is stored (running ones included)
    pruned: int  # of those, the ones successive halving stopped here

    @property
    def went_on(self) -> int:
        """Reached it and were not stopped here: promoted (or, at the last rung, complete;
        a candidate training the next rung counts as gone on)."""
        return self.reached - self.pruned


def rung_counts(search: SearchRecord, records: Sequence[CandidateRecord]) -> tuple[RungCount, ...]:
    """Per rung of ``search`` (one rung, the whole budget, without fidelity): how many of
    ``records`` reached it and how many were pruned there (a pruned candidate's last rung)."""
    reached: Counter[int] = Counter()
    pruned: Counter[int] = Counter()
    for r in records:
        reached.update(x.rung for x in r.rungs)
        if r.state == "pruned" and r.rungs:
            pruned[r.rungs[-1].rung] += 1
    planned = search.rung_tokens
    seen = {x.rung: x.tokens for r in records for x in r.rungs}
    n = max(len(planned), max(reached, default=-1) + 1)
    return tuple(RungCount(k, planned[k] if k < len(planned) else seen[k], reached[k], pruned[k])
                 for k in range(n))


def tokens_spent(records: Sequence[CandidateRecord]) -> int | None:
    """Training tokens spent on ``records``: every rung of every candidate, as the driver counts
    them for its snapshots (`CandidateRecord.tokens`). None when that is not known: a complete
    candidate stored before rungs were (its tokens are only in the proxy result readers skip)."""
    if any(r.state == "complete" and not r.tokens for r in records):
        return None
    return sum(r.tokens for r in records)


def analyze(search: SearchRecord, records: Sequence[CandidateRecord]) -> FrontAnalysis:
    """The front of ``search`` among ``records`` (any states; only complete ones are ranked:
    an ``infeasible`` candidate was never trained and is only counted, see `FrontAnalysis.infeasible`).

    Feasibility comes from the search's own stored constraints, so a constraint means the
    same here as it did to the driver. A stored constraint this code can no longer read is
    reported in ``warnings`` and every candidate counts as feasible, rather than hiding it.
    """
    objectives = tuple(Objective.parse((m, d)) for m, d in search.objectives)
    metrics = [o.metric for o in objectives]
    complete = tuple(r for r in records if r.state == "complete")
    values = np.array([[r.metrics.get(m, math.nan) for m in metrics] for r in complete],
                      dtype=float).reshape(len(complete), len(metrics))
    feasible, warnings = _feasibility(search, complete)
    if not complete:
        empty = np.zeros(0, dtype=bool)
        return FrontAnalysis(search, objectives, tuple(records), (), values, empty, empty, (),
                             None, 0.0, search.reference_point, warnings)
    # A trial that drew an architecture already evaluated reuses its result; rank only the
    # first, or the front would list the same model twice.
    first = np.array(first_of_each_architecture(complete), dtype=int)
    summary = pareto.summarize(values[first], objectives, feasible=feasible[first],
                               reference=search.reference_point)
    on_front = np.zeros(len(complete), dtype=bool)
    front_idx = first[np.asarray(summary.front, dtype=int)]
    on_front[front_idx] = True
    # By the first objective's value, ascending (NaN last), as `nas show` has always listed it.
    front = [complete[i] for i in front_idx[np.argsort(values[front_idx, 0], kind="stable")]]
    knee = complete[first[summary.knee]].id if summary.knee is not None else None
    return FrontAnalysis(search, objectives, tuple(records), complete, values, feasible, on_front,
                         tuple(front), knee, summary.hypervolume, summary.reference, warnings)


def first_of_each_architecture(records: Sequence[CandidateRecord]) -> list[int]:
    seen: set[str] = set()
    first = []
    for i, record in enumerate(records):
        if record.arch_hash not in seen:
            seen.add(record.arch_hash)
            first.append(i)
    return first


def load_front(store: Store, name: str) -> FrontAnalysis:
    """`analyze` over everything the store holds for search ``name`` (NotFoundError if none)."""
    search = store.get_search(name)
    return analyze(search, store.candidates(name, with_proxy=False))


def _feasibility(search: SearchRecord,
                 complete: Sequence[CandidateRecord]) -> tuple[np.ndarray, tuple[str, ...]]:
    """Each complete candidate against the search's stored constraints (their canonical text,
    parsed by `nas.objectives`). A stored bound this code can no longer read is a warning and
    every candidate counts as feasible, rather than hiding the search."""
    if not search.constraints:
        return np.ones(len(complete), dtype=bool), ()
    try:
        constraints = [Constraint.parse(text) for text in search.constraints]
    except ConfigError as err:
        return (np.ones(len(complete), dtype=bool),
                (f"constraints not checked: a stored constraint of search {search.name} cannot "
                 f"be read ({err.value!r} {err})",))
    # A complete candidate lacking a constrained metric is not known to violate it.
    return np.array([is_feasible(constraints, r.metrics, partial=True) for r in complete],
                    dtype=bool), ()
