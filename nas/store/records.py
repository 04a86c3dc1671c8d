"""What the store hands out: plain frozen dataclasses, never ORM rows.

Readers (the service, reports, export) hold these after the session that produced them
is closed, so nothing lazy-loads behind their back and nothing is shared between threads.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from nas.architecture import Architecture
from nas.results import MachineInfo, ProfileLatency, RungLoss
from nas.states import DRIVER_LOST, LIVE_STATUSES

HEARTBEAT_SECONDS = 5.0  # how often a live driver writes its heartbeat
# A driver's heartbeat older than this means it is gone (killed, machine lost). Generous: a
# database outage the driver waits out, or clocks a little apart on a cluster, must not read
# as a lost driver.
STALE_AFTER_SECONDS = 60.0


def shown_status(status: str, heartbeat_at: datetime | None, now: datetime | None = None) -> str:
    """The status readers see: a running or stopping search whose driver stopped beating is
    ``driver lost`` (resume it with ``nas search``), whatever the last stored status says."""
    if status not in LIVE_STATUSES:
        return status
    now = now or datetime.now(timezone.utc)
    if heartbeat_at is None or (now - heartbeat_at).total_seconds() > STALE_AFTER_SECONDS:
        return DRIVER_LOST
    return status


@dataclass(frozen=True, slots=True)
class SearchRecord:
    """A search as started: its inputs, budget and where it stands."""

    id: int
    name: str
    space: dict[str, Any]  # snapshot of the search space
    space_hash: str
    profiles: tuple[dict[str, Any], ...]  # hardware profile dicts
    objectives: tuple[tuple[str, str], ...]  # (metric, "minimize" | "maximize")
    constraints: tuple[str, ...]
    data: dict[str, Any]  # DataSpec.to_dict()
    budget: dict[str, Any]  # ProxyBudget.to_dict()
    trials: int  # trials budget
    # running | stopping (stop requested) | stopped | finished | failed | driver lost (a running
    # or stopping search whose driver's heartbeat went stale; see `shown_status`)
    status: str
    study_name: str  # the Optuna study in the same database
    reference_point: tuple[float, ...] | None  # hypervolume reference, fixed once
    error: str
    created_at: datetime  # all timestamps are aware, UTC
    started_at: datetime | None
    finished_at: datetime | None
    updated_at: datetime  # last write to the search or any of its candidates
    heartbeat_at: datetime | None = None  # last sign of life of its driver
    fidelity: dict[str, Any] | None = None  # {min_tokens, eta, rung_tokens}; None: one rung
    # The parent its candidates derive from (`nas.parent.ParentRef.record`: path, fingerprint,
    # depth, architecture, params); None: a search from scratch.
    parent: dict[str, Any] | None = None

    @property
    def rung_tokens(self) -> tuple[int, ...]:
        """Training tokens at the end of each rung (one rung, the whole budget, without fidelity)."""
        if self.fidelity:
            return tuple(int(t) for t in self.fidelity["rung_tokens"])
        per_step = int(self.budget.get("batch_size", 1)) * int(self.budget.get("seq_len", 1))
        return (max(1, int(self.budget.get("tokens", 0)) // per_step) * per_step,)


@dataclass(frozen=True, slots=True)
class SearchSummary:
    """One line of `Store.list_searches`: counts and the latest Pareto snapshot."""

    name: str
    status: str
    trials: int
    n_complete: int
    n_failed: int
    n_pruned: int
    n_running: int  # in flight under a live driver
    front_size: int  # 0 before the first snapshot
    hypervolume: float | None  # None before the first snapshot
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None
    # Left running by a driver that stopped or died: re-run under the same trial number when
    # the search is resumed, never counted as running.
    n_interrupted: int = 0
    n_infeasible: int = 0  # broke a constraint in the shape step: stored, never trained


@dataclass(frozen=True, slots=True)
class CandidateRecord:
    """One trial of a search with everything it produced (weights excepted: `Store.weights`)."""

    id: int
    search: str  # search name
    trial_number: int
    architecture: Architecture
    arch_hash: str
    state: str  # running | complete | failed | pruned | infeasible
    error: str
    attempts: int  # > 1 when the trial was re-run after a crash
    metrics: dict[str, float]
    latencies: tuple[ProfileLatency, ...]
    proxy: dict[str, Any]  # ProxyResult as JSON ({} when there is none)
    timings: dict[str, float]  # seconds: train, export, latency, total
    node: str
    started_at: datetime
    finished_at: datetime | None
    has_weights: bool
    rungs: tuple[RungLoss, ...] = ()  # the loss at every rung it reached, first rung first
    # How it was derived from the search's parent (`nas.derivation.Derivation.to_dict`); None
    # without a parent, and in lists read with ``with_proxy=False`` (`Store.candidates`).
    derivation: dict[str, Any] | None = None

    @property
    def tokens(self) -> int:
        """Training tokens spent on it: its last rung's, or its proxy run's."""
        if self.rungs:
            return self.rungs[-1].tokens
        return int(self.proxy.get("tokens", 0) or 0) if self.proxy else 0


@dataclass(frozen=True, slots=True)
class SnapshotRecord:
    """The Pareto front after ``n_complete`` finished candidates."""

    n_complete: int
    hypervolume: float | None  # None before the reference point was fixed
    front_ids: tuple[int, ...]  # candidate ids
    created_at: datetime
    tokens: int | None = None  # training tokens spent by then; None before rungs were stored


@dataclass(frozen=True, slots=True)
class RetimeRecord:
    """One re-timing of a search's front (``nas retime``, or the end of a search): the members
    were timed together in one process, interleaved in rounds, and the front recomputed from
    the new values. The measurements it wrote have ``ProfileLatency.measurement == number``;
    the ones they replace are kept (`Store.latency_history`)."""

    number: int  # 1, 2, ... within its search
    search: str
    created_at: datetime
    machine: MachineInfo | None
    profiles: tuple[str, ...]
    members: tuple[int, ...]  # candidate ids timed together: the front and its nearest neighbours
    front_before: tuple[int, ...]
    front_after: tuple[int, ...]
    # (candidate a, candidate b, metric): pairs whose 95% intervals overlap on an objective,
    # so their order on it is not resolved by this measurement.
    unresolved: tuple[tuple[int, int, str], ...]
    rounds: int
    seconds: float

    @property
    def entered(self) -> tuple[int, ...]:
        return tuple(sorted(set(self.front_after) - set(self.front_before)))

    @property
    def left(self) -> tuple[int, ...]:
        return tuple(sorted(set(self.front_before) - set(self.front_after)))
