"""One trial between its ask and its single store write, as the driver tracks it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from nas.architecture import Architecture
from nas.results import ProfileLatency

if TYPE_CHECKING:
    from optuna.trial import Trial

    from nas.evaluate import ShapeOutput, TrainOutput


@dataclass
class InFlight:
    """One trial between submission and its single store write."""

    number: int
    arch: Architecture
    trial: Trial | None = None  # the live trial asked by this run; None: re-run after a crash
    shape_ref: Any = None  # the shape step (untrained export); None when every profile was cached
    shape: ShapeOutput | None = None  # once it arrived
    measure_refs: dict[Any, str] = field(default_factory=dict)  # ref -> profile name
    latencies: dict[str, ProfileLatency] = field(default_factory=dict)
    measure_started: float = 0.0
    measure_seconds: float = 0.0
    ready_to_train: bool = False  # feasible after its shape step; trains when timing allows
    train_ref: Any = None
    train: TrainOutput | None = None  # once it arrived
    rung: int = 0  # the rung it trains to (`nas.search.rungs`)
    checkpoint: bytes | None = None  # the previous rung's, which this one continues from
    train_seconds: float = 0.0  # over the rungs before this one
    followers: list[Trial] = field(default_factory=list)  # repeat draws of it, told when it ends

    @property
    def shaping(self) -> bool:
        return self.shape_ref is not None and self.shape is None

    @property
    def pending(self) -> list[Any]:
        """The Ray refs still awaited: the shape step, then each profile's timing, then training."""
        if self.shaping:
            return [self.shape_ref]
        if self.measure_refs:
            return list(self.measure_refs)
        return [self.train_ref] if self.train_ref is not None and self.train is None else []
