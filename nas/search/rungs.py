"""The driver's successive-halving ladder: where each rung ends and who goes on.

It holds, per rung, the objective values of every candidate that arrived there (rebuilt
from the store on resume, so a resumed driver decides as the first one would), and decides
with `nas.fidelity.promotes`. Only ``val_loss`` is provisional: it is the rung's loss;
latency and size come from the shape step.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from nas.fidelity import Fidelity, promotes, rung_steps
from nas.results import RungLoss
from nas.space import SearchSpace


@dataclass(frozen=True)
class Decision:
    promoted: bool
    reason: str  # why not, for a pruned candidate's stored error


class Arrivals:
    """One rung's arrivals as rows of an array that grows by doubling: a decision reads them
    without converting thousands of lists (BENCHMARKS.md, "Many workers through one driver").
    A trial that arrives again (re-run after a crash) replaces its row; the rule is order-free."""

    def __init__(self) -> None:
        self._values: np.ndarray | None = None
        self._alive = np.zeros(0, dtype=bool)
        self._row: dict[int, int] = {}  # trial -> its row
        self._used = 0

    def __len__(self) -> int:
        return len(self._row)

    def others(self, trial: int) -> np.ndarray:
        """Every arrival's values but ``trial``'s."""
        if self._values is None:
            return np.zeros((0, 0))
        alive = self._alive[:self._used].copy()
        row = self._row.get(trial)
        if row is not None:
            alive[row] = False
        return self._values[:self._used][alive]

    def add(self, trial: int, values: Sequence[float]) -> None:
        old = self._row.pop(trial, None)
        if old is not None:
            self._alive[old] = False
        if self._values is None:
            self._values = np.empty((16, len(values)))
            self._alive = np.zeros(16, dtype=bool)
        if self._used == len(self._values):
            self._values = np.concatenate([self._values, np.empty_like(self._values)])
            self._alive = np.concatenate([self._alive, np.zeros_like(self._alive)])
        self._values[self._used] = values
        self._alive[self._used] = True
        self._row[trial] = self._used
        self._used += 1


class RungLadder:
    """Rungs of one search (one rung, the whole budget, without fidelity)."""

    def __init__(self, space: SearchSpace, fidelity: Fidelity | None) -> None:
        self.space = space
        self.fidelity = fidelity
        self.steps = rung_steps(fidelity, space.budget)
        per_step = space.budget.batch_size * space.budget.seq_len
        self.tokens = tuple(s * per_step for s in self.steps)
        self._arrived: dict[int, Arrivals] = defaultdict(Arrivals)  # rung -> its arrivals

    def is_last(self, rung: int) -> bool:
        return rung >= len(self.steps) - 1

    def stop_at(self, rung: int) -> int | None:
        """The step training stops at for ``rung``; None for the last (the budget's end)."""
        return None if self.is_last(rung) else self.steps[rung]

    def values(self, shape_metrics: Mapping[str, float], val_loss: float) -> list[float]:
        return self.space.objective_values({**shape_metrics, "val_loss": val_loss})

    def replay(self, arrivals: Iterable[tuple[int, RungLoss]],
               shape_metrics: Mapping[int, Mapping[str, float]]) -> None:
        """Rebuild the arrivals from the store's (trial, rung loss) rows, oldest first."""
        self._arrived.clear()
        for trial, rung in arrivals:
            metrics = shape_metrics.get(trial)
            if metrics is not None and not self.is_last(rung.rung):
                self._arrived[rung.rung].add(trial, self.values(metrics, rung.val_loss))

    def arrived(self, rung: int) -> int:
        return len(self._arrived[rung])

    def decide(self, trial: int, rung: RungLoss, shape_metrics: Mapping[str, float]) -> Decision:
        """Whether ``trial``, arriving at a rung before the last, goes on; recorded as arrived."""
        assert self.fidelity is not None and not self.is_last(rung.rung)
        arrived = self._arrived[rung.rung]
        earlier = arrived.others(trial)  # a re-run is decided against the others, then arrives anew
        mine = self.values(shape_metrics, rung.val_loss)
        promoted = promotes(mine, earlier, self.fidelity.eta, self.space.directions())
        arrived.add(trial, mine)
        n = len(earlier) + 1
        reason = "" if promoted else (
            f"pruned at rung {rung.rung + 1} of {len(self.steps)} ({rung.tokens:,} tokens, "
            f"val_loss {rung.val_loss:.4f}): not in the top 1/{self.fidelity.eta} of the {n} "
            f"candidates that reached it, by non-dominated rank and crowding")
        return Decision(promoted, reason)
