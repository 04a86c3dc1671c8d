"""Pareto fronts, hypervolume and knee points: plain arrays in, plain data out.

Conventions shared by every function here:

* ``values`` is an ``(n, m)`` array: n points, m objectives (lists of lists are fine).
* ``directions`` gives one ``"min"`` or ``"max"`` per column (an `Objective`, or Optuna's
  ``"minimize"``/``"maximize"``, is accepted too). Internally every column becomes a *loss*
  (lower is better) by negating the ``max`` columns.
* NaN counts as the worst possible value (+inf loss), so a broken measurement can never
  land on a front by accident.
* Dominance is Optuna's: ``a`` dominates ``b`` when it is no worse in every objective and
  better in at least one. Equal points do not dominate each other and share a front.
* Indices returned are positions in ``values``; within a front they are ascending.

No Optuna, no torch: the service and the plots call this on data read from the store.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

from nas.errors import ConfigError
from nas.objectives import DIRECTION_ALIASES, Objective

# Rows compared at once in the O(m n^2) paths: bounds temporary memory to ~32 MB.
_CHUNK_ELEMENTS = 1 << 22

DirectionsLike = Sequence["str | Objective"]


class ParetoSummary(NamedTuple):
    """What a page or report shows about one set of points."""

    front: list[int]  # indices of the feasible non-dominated points, ascending
    hypervolume: float  # of the front, w.r.t. ``reference``; 0.0 without feasible points
    reference: tuple[float, ...] | None  # in the metrics' own units and directions
    knee: int | None  # index of the knee point (see `knee_point`), None if the front is empty


# ----- input normalisation ---------------------------------------------------------------
def _signs(directions: DirectionsLike) -> np.ndarray:
    signs = []
    for d in directions:
        if isinstance(d, Objective):
            signs.append(d.sign)
            continue
        key = DIRECTION_ALIASES.get(d.lower()) if isinstance(d, str) else None
        if key is None:
            raise ConfigError(f"direction={d!r} must be 'min' or 'max'", field="directions", value=d)
        signs.append(1.0 if key == "min" else -1.0)
    if not signs:
        raise ValueError("at least one objective direction is needed")
    return np.asarray(signs, dtype=float)


def _loss(values: Any, directions: DirectionsLike) -> np.ndarray:
    """``values`` as an (n, m) float array where lower is better and NaN is +inf."""
    signs = _signs(directions)
    arr = np.asarray(values, dtype=float)
    if arr.size == 0:
        arr = arr.reshape(0, len(signs))
    if arr.ndim != 2 or arr.shape[1] != len(signs):
        raise ValueError(f"values has shape {arr.shape}; expected (n, {len(signs)}) for "
                         f"{len(signs)} directions")
    loss = arr * signs
    loss[np.isnan(loss)] = np.inf
    return loss


def _feasibility(n: int, feasible: Any, violation: Any) -> tuple[np.ndarray, np.ndarray | None]:
    viol = None
    if violation is not None:
        viol = np.asarray(violation, dtype=float).reshape(-1)
        if viol.shape != (n,):
            raise ValueError(f"violation has {viol.shape[0]} entries for {n} points")
        viol = np.where(np.isnan(viol), np.inf, viol)
    if feasible is not None:
        feas = np.asarray(feasible, dtype=bool).reshape(-1)
        if feas.shape != (n,):
            raise ValueError(f"feasible has {feas.shape[0]} entries for {n} points")
    elif viol is not None:
        feas = viol <= 0
    else:
        feas = np.ones(n, dtype=bool)
    return feas, viol


# ----- non-dominated sorting -------------------------------------------------------------
def _fronts_1d(loss: np.ndarray) -> list[np.ndarray]:
    _, inverse = np.unique(loss[:, 0], return_inverse=True)
    return _group_by_rank(inverse.reshape(-1))


def _fronts_2d(loss: np.ndarray) -> list[np.ndarray]:
    """O(n log n): lexicographic sort, then place each point with a binary search.

    Points are visited by (f1, f2). For an earlier point q and the current p (so q.f1 <= p.f1),
    q dominates p exactly when (q.f2, q.f1) < (p.f2, p.f1) as tuples. The last point placed in
    each front has that front's smallest such key, and those keys increase from front to front,
    so the front of p is the first one whose key is not below p's: `bisect_left`.
    """
    n = loss.shape[0]
    order = np.lexsort((loss[:, 1], loss[:, 0]))
    tails: list[tuple[float, float]] = []
    ranks = np.empty(n, dtype=np.int64)
    sorted_rank = []
    for f1, f2 in zip(loss[order, 0].tolist(), loss[order, 1].tolist()):
        key = (f2, f1)
        k = bisect.bisect_left(tails, key)
        if k == len(tails):
            tails.append(key)
        else:
            tails[k] = key
        sorted_rank.append(k)
    ranks[order] = sorted_rank
    return _group_by_rank(ranks)


def _dominance_matrix(loss: np.ndarray) -> np.ndarray:
    """``D[i, j]``: point i dominates point j. O(m n^2) time, n^2 bytes."""
    n, m = loss.shape
    dom = np.empty((n, n), dtype=bool)
    step = max(1, _CHUNK_ELEMENTS // max(1, n * m))
    for start in range(0, n, step):
        block = loss[start:start + step, None, :]
        dom[start:start + step] = (np.all(block <= loss[None], axis=2)
                                   & np.any(block < loss[None], axis=2))
    return dom


def _fronts_nd(loss: np.ndarray) -> list[np.ndarray]:
    """Deb's fast non-dominated sort, vectorised: count dominators, peel zero-count points."""
    dom = _dominance_matrix(loss)
    count = dom.sum(axis=0)
    fronts = []
    current = np.flatnonzero(count == 0)
    while current.size:
        fronts.append(current)
        # Earlier fronts are never dominated by later points, so -1 never returns to 0.
        count[current] = -1
        count -= dom[current].sum(axis=0)
        current = np.flatnonzero(count == 0)
    return fronts


def _group_by_rank(ranks: np.ndarray) -> list[np.ndarray]:
    order = np.argsort(ranks, kind="stable")
    counts = np.bincount(ranks)
    return [part for part in np.split(order, np.cumsum(counts)[:-1]) if part.size]


def _fronts(loss: np.ndarray) -> list[np.ndarray]:
    if loss.shape[0] == 0:
        return []
    m = loss.shape[1]
    if m == 1:
        return _fronts_1d(loss)
    if m == 2:
        return _fronts_2d(loss)
    return _fronts_nd(loss)


def _first_front_mask(loss: np.ndarray) -> np.ndarray:
    """Non-dominated points of ``loss`` (duplicates of a front point are on it too)."""
    n, m = loss.shape
    if n == 0:
        return np.zeros(0, dtype=bool)
    if m <= 2:
        mask = np.zeros(n, dtype=bool)
        mask[_fronts(loss)[0]] = True
        return mask
    return ~_dominated_by_any(loss, loss)


def _dominated_by_any(dominators: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Mask over ``points`` (loss rows): dominated by at least one of ``dominators``. Chunked
    over the dominators, so no len(dominators) x len(points) x m array is ever whole."""
    n, m = points.shape
    hit = np.zeros(n, dtype=bool)
    step = max(1, _CHUNK_ELEMENTS // max(1, n * m))
    for start in range(0, dominators.shape[0], step):
        block = dominators[start:start + step, None, :]
        hit |= (np.all(block <= points[None], axis=2) & np.any(block < points[None], axis=2)).any(axis=0)
    return hit


def non_dominated_sort(values: Any, directions: DirectionsLike, feasible: Any = None,
                       violation: Any = None) -> list[list[int]]:
    """All fronts, best first, as lists of indices into ``values``.

    Feasible points are always ranked before infeasible ones. ``feasible`` (bool per point)
    wins when given; otherwise ``violation <= 0`` decides, and with neither every point is
    feasible. Infeasible points come after all feasible fronts: grouped by equal total
    ``violation``, smallest first (Optuna's constrained ranking), or, without ``violation``,
    non-dominated-sorted among themselves by their objectives.

    Time: one objective O(n log n); two objectives O(n log n) (sort and sweep); three or more
    O(m n^2) with an n x n boolean matrix.
    """
    loss = _loss(values, directions)
    feas, viol = _feasibility(loss.shape[0], feasible, violation)
    idx_f = np.flatnonzero(feas)
    idx_i = np.flatnonzero(~feas)
    fronts = [idx_f[f] for f in _fronts(loss[idx_f])]
    if idx_i.size:
        if viol is not None:
            _, inverse = np.unique(viol[idx_i], return_inverse=True)
            groups = _group_by_rank(inverse.reshape(-1))
        else:
            groups = _fronts(loss[idx_i])
        fronts += [idx_i[g] for g in groups]
    return [sorted(int(i) for i in f) for f in fronts]


def pareto_front(values: Any, directions: DirectionsLike, feasible: Any = None,
                 violation: Any = None) -> list[int]:
    """Indices of the feasible non-dominated points; ``[]`` when no point is feasible
    (as Optuna's ``study.best_trials``)."""
    loss = _loss(values, directions)
    feas, _ = _feasibility(loss.shape[0], feasible, violation)
    idx = np.flatnonzero(feas)
    return [int(i) for i in idx[_first_front_mask(loss[idx])]]


def dominance_of(values: Any, point: Sequence[float], directions: DirectionsLike,
                 ) -> tuple[np.ndarray, np.ndarray]:
    """(rows of ``values`` that dominate ``point``, rows ``point`` dominates), as boolean masks:
    one vectorised pass, O(n), where a full `non_dominated_sort` is O(n log n) or worse. Every
    row dominating the point is in a better front; every row it dominates is in a worse one."""
    loss = _loss(values, directions)
    mine = _loss([point], directions)[0]
    above = np.all(loss <= mine, axis=1) & np.any(loss < mine, axis=1)
    below = np.all(loss >= mine, axis=1) & np.any(loss > mine, axis=1)
    return above, below


class Standing(NamedTuple):
    """Where a point landed among the points a `GrowingFronts` held before it."""

    better: int  # points in strictly better fronts
    peers: np.ndarray  # loss rows of the front it joined, its own row last


class GrowingFronts:
    """Non-dominated ranks of a set of points that grows one point at a time, kept exact.

    A point's front (0 = best) is the length of the longest chain of points dominating it,
    so adding a point ``x`` fixes its own rank from its dominators' ranks in one O(m n) pass,
    and can only push down points that ``x`` dominates (every other point's dominators are
    not dominated by ``x``), each by one front at most (`_push_down`). A search's rung asks
    where each arrival stands among thousands (`nas.fidelity.promotes`): sorting them all
    again for every arrival grew with n (BENCHMARKS.md, "Many workers through one driver").
    Columns are stored apart, so each comparison is a contiguous pass. Points are keyed (a
    trial number); adding a key again replaces its point, and removing one sorts the rest
    again (rare: a re-run after a crash). Loss rows as everywhere here: lower is better, NaN
    is +inf.
    """

    def __init__(self, directions: DirectionsLike) -> None:
        self.directions = list(directions)
        self._columns = np.empty((len(_signs(self.directions)), 16))  # (m, capacity)
        self._rank = np.zeros(16, dtype=np.int64)
        self._keys: list[int] = []
        self._row: dict[int, int] = {}

    def __len__(self) -> int:
        return len(self._keys)

    def __contains__(self, key: int) -> bool:
        return key in self._row

    def ranks(self) -> dict[int, int]:
        """Each key's front, 0 the best."""
        return {key: int(self._rank[row]) for key, row in self._row.items()}

    def add(self, key: int, values: Sequence[float]) -> Standing:
        """Hold ``values`` under ``key``; where it landed among the points held before it."""
        self.discard(key)
        x = _loss(np.asarray(values, dtype=float).reshape(1, -1), self.directions)[0]
        n = len(self)
        above, below = self._versus(x)
        rank = self._rank[:n]
        mine = int(rank[above].max()) + 1 if above.any() else 0
        # Points ``x`` dominates land in worse fronts (pushed below), whatever their rank was.
        peers = np.concatenate([self._columns[:, :n][:, ~below & (rank == mine)].T, x[None]])
        standing = Standing(int(np.count_nonzero(~below & (rank < mine))), peers)
        self._push_down(np.flatnonzero(below), mine)
        if n == self._rank.size:
            self._columns = np.concatenate([self._columns, np.empty_like(self._columns)], axis=1)
            self._rank = np.concatenate([self._rank, np.zeros_like(self._rank)])
        self._columns[:, n], self._rank[n] = x, mine
        self._row[key] = n
        self._keys.append(key)
        return standing

    def discard(self, key: int) -> None:
        row = self._row.pop(key, None)
        if row is None:
            return
        n = len(self._keys)
        self._columns[:, row:n - 1] = self._columns[:, row + 1:n].copy()
        del self._keys[row]
        self._row = {k: i for i, k in enumerate(self._keys)}
        self._rank[:n - 1] = 0
        for r, front in enumerate(_fronts(self._columns[:, :n - 1].T)):
            self._rank[front] = r

    def _versus(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(held points dominating ``x``, held points ``x`` dominates), as boolean masks."""
        n = len(self)
        no_worse, better = np.ones(n, dtype=bool), np.zeros(n, dtype=bool)
        no_better, worse = np.ones(n, dtype=bool), np.zeros(n, dtype=bool)
        for column, value in zip(self._columns[:, :n], x):
            lower, higher = column < value, column > value
            no_worse &= ~higher
            better |= lower
            no_better &= ~lower
            worse |= higher
        return no_worse & better, no_better & worse

    def _push_down(self, dominated: np.ndarray, mine: int) -> None:
        """Move the points the new one dominates (``dominated``) down where they now belong.

        One new point raises a rank by at most one (a chain holds it once; drop it and an old
        chain is left), so a dominated point ``p`` moves down exactly when the new point (for
        ``p`` in front ``mine``) or a point that moved down from the front just above ``p``'s
        dominates it. Fronts are therefore settled one at a time from ``mine`` down, each
        compared only with the points that moved from the front above it, and the walk stops
        at the first front where nothing moves.
        """
        old = self._rank[dominated]
        moved = dominated[old == mine]
        lowered = [moved]
        level = mine + 1
        while moved.size:
            candidates = dominated[old == level]
            if not candidates.size:
                break
            moved = candidates[_dominated_by_any(self._columns[:, moved].T, self._columns[:, candidates].T)]
            lowered.append(moved)
            level += 1
        self._rank[np.concatenate(lowered)] += 1


def crowding_distance(values: Any, directions: DirectionsLike) -> np.ndarray:
    """NSGA-II's crowding distance of each point of one front: how much room it has.

    Summed over objectives: the gap between its nearest distinct neighbours below and above,
    over the objective's range; a point at either end of an objective is infinitely crowded
    out (``inf``), as is every point of a one- or two-point front. Neighbours are the nearest
    *distinct* values, so equal points get equal distances whatever order they come in.
    """
    loss = _loss(values, directions)
    n, m = loss.shape
    distance = np.zeros(n)
    for j in range(m):
        column = loss[:, j]
        lo, hi = column.min(initial=np.inf), column.max(initial=-np.inf)
        levels = np.unique(column)
        rank = np.searchsorted(levels, column)
        at_end = (column == lo) | (column == hi)
        inner = ~at_end
        if hi > lo and inner.any():
            gap = levels[rank[inner] + 1] - levels[rank[inner] - 1]
            distance[inner] += gap / (hi - lo)
        distance[at_end] = np.inf
    return distance


# ----- hypervolume -----------------------------------------------------------------------
def _hv2d(points: np.ndarray, ref: np.ndarray) -> float:
    """Area dominated by ``points`` (all strictly inside ``ref``), dominated ones allowed."""
    order = np.lexsort((points[:, 1], points[:, 0]))
    x = points[order, 0]
    y = np.minimum.accumulate(points[order, 1])  # covered from y up to ref[1] on [x_i, x_i+1)
    x_next = np.append(x[1:], ref[0])
    return float(np.dot(x_next - x, ref[1] - y))


def _hv(points: np.ndarray, ref: np.ndarray) -> float:
    """Exact hypervolume by slicing (HSO): sweep the last objective; each slab between
    consecutive values is a prism over the (m-1)-D hypervolume of the points below it."""
    m = points.shape[1]
    if points.shape[0] == 0:
        return 0.0
    if m == 1:
        return float(ref[0] - points[:, 0].min())
    if m == 2:
        return _hv2d(points, ref)
    points = points[np.argsort(points[:, -1], kind="stable")]
    z = points[:, -1]
    widths = np.append(z[1:], ref[-1]) - z
    total = 0.0
    for i in np.flatnonzero(widths > 0):
        prefix = points[:i + 1, :-1]
        if m > 3:  # pruning dominated points keeps the deeper recursion small
            prefix = np.unique(prefix[_first_front_mask(prefix)], axis=0)
        total += float(widths[i]) * _hv(prefix, ref[:-1])
    return total


def hypervolume(values: Any, directions: DirectionsLike, reference: Sequence[float]) -> float:
    """Exact volume of objective space dominated by ``values`` and bounded by ``reference``.

    ``reference`` is in the metrics' own units and directions (e.g. the *largest* latency and
    the *smallest* accuracy worth counting). Points not strictly better than the reference in
    every objective contribute nothing. Two objectives: O(n log n) sweep; three: O(n^2 log n)
    slicing; more: recursive slicing over the non-dominated points (fine for fronts of a few
    hundred points).
    """
    signs = _signs(directions)
    ref = np.asarray(reference, dtype=float).reshape(-1)
    if ref.shape != signs.shape:
        raise ValueError(f"reference has {ref.size} values for {signs.size} objectives")
    if not np.all(np.isfinite(ref)):
        raise ValueError(f"reference={ref.tolist()} must be finite")
    ref = ref * signs
    loss = _loss(values, directions)
    inside = loss[np.all(loss < ref, axis=1)]
    if inside.shape[0] == 0:
        return 0.0
    front = np.unique(inside[_first_front_mask(inside)], axis=0)
    return _hv(front, ref)


def reference_point(values: Any, directions: DirectionsLike, margin: float = 0.1) -> np.ndarray:
    """The nadir (worst value per objective) of the finite rows of ``values``, pushed outwards
    by ``margin`` times that objective's range, so that every given point counts.

    When an objective has zero range the push is ``margin * |nadir|`` (or ``margin`` when the
    nadir is 0). The result is in the metrics' own units and directions. A search computes it
    once (from its first feasible results) and keeps it, so hypervolumes over time compare.
    """
    if margin < 0:
        raise ValueError(f"margin={margin} must be >= 0")
    signs = _signs(directions)
    loss = _loss(values, directions)
    loss = loss[np.all(np.isfinite(loss), axis=1)]
    if loss.shape[0] == 0:
        raise ValueError("reference_point needs at least one point with finite values")
    nadir = loss.max(axis=0)
    span = nadir - loss.min(axis=0)
    flat = np.where(nadir != 0, np.abs(nadir), 1.0)
    push = margin * np.where(span > 0, span, flat)
    return (nadir + push) * signs


def knee_point(values: Any, directions: DirectionsLike, feasible: Any = None,
               violation: Any = None) -> int:
    """Index of the knee of the feasible front: the best compromise.

    The front is min-max normalised per objective (lower is better, 0 = best on the front).
    Two objectives: the point farthest from the chord through the two extremes, on the
    utopia side (after normalisation the chord is x + y = 1, so this is the smallest x + y).
    Three or more: the point closest (Euclidean) to the utopia point (all zeros). One
    objective: the best point. Ties go to the point nearer utopia, then the lower index.
    """
    loss = _loss(values, directions)
    front = pareto_front(values, directions, feasible, violation)
    if not front:
        raise ValueError("knee_point needs at least one feasible point")
    pts = loss[front]
    if not np.all(np.isfinite(pts)):
        finite = np.all(np.isfinite(pts), axis=1)
        if finite.any():
            front = [i for i, ok in zip(front, finite) if ok]
            pts = pts[finite]
    lo, hi = pts.min(axis=0), pts.max(axis=0)
    span = hi - lo
    norm = np.where(span > 0, (pts - lo) / np.where(span > 0, span, 1.0), 0.0)
    utopia_dist = np.sqrt((norm ** 2).sum(axis=1))
    primary = norm.sum(axis=1) if pts.shape[1] == 2 else utopia_dist
    best = np.lexsort((np.arange(len(front)), utopia_dist, primary))[0]
    return int(front[best])


def summarize(values: Any, directions: DirectionsLike, feasible: Any = None,
              reference: Sequence[float] | None = None, violation: Any = None,
              margin: float = 0.1) -> ParetoSummary:
    """Front, hypervolume, reference and knee in one call.

    Without ``reference`` one is derived from the feasible points with `reference_point`;
    pass the search's recorded reference to compare hypervolumes over time.
    """
    loss = _loss(values, directions)
    feas, _ = _feasibility(loss.shape[0], feasible, violation)
    front = pareto_front(values, directions, feas)
    if reference is None:
        finite = feas & np.all(np.isfinite(loss), axis=1)
        if not finite.any():
            return ParetoSummary(front, 0.0, None, knee_point(values, directions, feas)
                                 if front else None)
        reference = tuple(reference_point(np.asarray(values, dtype=float)[finite], directions,
                                          margin).tolist())
    ref = tuple(float(r) for r in reference)
    hv = hypervolume(np.asarray(values, dtype=float)[front] if front else [], directions, ref)
    knee = knee_point(values, directions, feas) if front else None
    return ParetoSummary(front, hv, ref, knee)
