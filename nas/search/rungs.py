"""The driver's successive-halving ladder: where each rung ends and who goes on.

It holds, per rung, the objective values of every candidate that arrived there, with their
non-dominated fronts kept up to date (`nas.pareto.GrowingFronts`; rebuilt from the store on
resume, so a resumed driver decides as the first one would), and decides with
`nas.fidelity.promotes`. Only ``val_loss`` is provisional: it is the rung's loss; latency and
size come from the shape step.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from nas.fidelity import Fidelity, promotes, rung_steps
from nas.pareto import GrowingFronts
from nas.results import RungLoss
from nas.space import SearchSpace


@dataclass(frozen=True)
class Decision:
    promoted: bool
    reason: str  # why not, for a pruned candidate's stored error


class RungLadder:
    """Rungs of one search (one rung, the whole budget, without fidelity)."""

    def __init__(self, space: SearchSpace, fidelity: Fidelity | None) -> None:
        self.space = space
        self.fidelity = fidelity
        self.steps = rung_steps(fidelity, space.budget)
        per_step = space.budget.batch_size * space.budget.seq_len
        self.tokens = tuple(s * per_step for s in self.steps)
        self._arrived: dict[int, GrowingFronts] = {}  # rung -> its arrivals

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
                self._rung(rung.rung).add(trial, self.values(metrics, rung.val_loss))

    def arrived(self, rung: int) -> int:
        return len(self._rung(rung))

    def _rung(self, rung: int) -> GrowingFronts:
        if rung not in self._arrived:
            self._arrived[rung] = GrowingFronts(self.space.directions())
        return self._arrived[rung]

    def decide(self, trial: int, rung: RungLoss, shape_metrics: Mapping[str, float]) -> Decision:
        """Whether ``trial``, arriving at a rung before the last, goes on; recorded as arrived."""
        assert self.fidelity is not None and not self.is_last(rung.rung)
        arrived = self._rung(rung.rung)  # a re-run replaces its row: decided against the others
        standing = arrived.add(trial, self.values(shape_metrics, rung.val_loss))
        n = len(arrived)
        promoted = promotes(standing, n, self.fidelity.eta)
        reason = "" if promoted else (
            f"pruned at rung {rung.rung + 1} of {len(self.steps)} ({rung.tokens:,} tokens, "
            f"val_loss {rung.val_loss:.4f}): not in the top 1/{self.fidelity.eta} of the {n} "
            f"candidates that reached it, by non-dominated rank and crowding")
        return Decision(promoted, reason)
