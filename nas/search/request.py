"""What a search is asked to do, and what it reports: inputs, budget, progress and outcome.

The CLI and the web API both build a `SearchRequest`; everything here is plain data and
cheap to import (no Ray, no Optuna), so `nas search` can print its notes before any heavy
start-up.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from nas.architecture import Architecture
from nas.errors import ConfigError
from nas.fidelity import Fidelity, rung_tokens
from nas.hardware import HardwareProfile
from nas.space import SearchSpace
from nas.specs import DataSpec

if TYPE_CHECKING:
    from nas.store import CandidateRecord, SearchRecord

TIMING_POLICIES = ("exclusive", "overlap")


@dataclass(frozen=True)
class SearchRequest:
    """Everything `nas search` needs; the CLI and the web API both build one."""

    space: SearchSpace
    name: str
    profiles: tuple[HardwareProfile, ...]
    trials: int
    db_url: str = "sqlite:///nas.db"
    data: DataSpec | None = None  # None: the space's own data section
    workers: int | None = None  # training tasks in flight; None: one per training core
    ray_address: str | None = None
    train_threads: int = 1
    gpus_per_trial: float = 0.0
    max_retries: int = 2  # re-runs of a trial whose worker process died
    timing: str = "exclusive"  # or "overlap": time on reserved cores while training runs
    no_fidelity: bool = False  # --no-fidelity: every candidate gets the whole budget
    retime: bool = True  # --no-retime: leave the front as timed during the search (`nas.retime`)

    def __post_init__(self) -> None:
        if self.timing not in TIMING_POLICIES:
            raise ConfigError(f"timing={self.timing!r} must be one of {', '.join(TIMING_POLICIES)}",
                              field="timing", value=self.timing)

    @property
    def fidelity(self) -> Fidelity | None:
        """The successive-halving rungs this run asks for (None: one rung, the whole budget)."""
        return None if self.no_fidelity else self.space.fidelity

    @property
    def fidelity_record(self) -> dict[str, object] | None:
        """What the search row keeps of the rungs; a resume must ask for the same."""
        if self.fidelity is None:
            return None
        return {**self.fidelity.to_dict(), "rung_tokens": list(rung_tokens(self.fidelity, self.space.budget))}

    def resume_refusal(self, existing: SearchRecord) -> str | None:
        """Why this request may not resume the stored search of its name, or None."""
        name = self.name
        if existing.space_hash != self.space.hash:
            return (f"search {name!r} already exists with a different search space "
                    f"(stored space hash {existing.space_hash}, given {self.space.hash}); "
                    "use another --name, or the same space to resume it")
        stored_profiles = sorted(p.get("name", "") for p in existing.profiles)
        if stored_profiles != sorted(p.name for p in self.profiles):
            return (f"search {name!r} already exists with profiles {stored_profiles}; "
                    f"resume it with the same profiles or use another --name")
        if existing.data != self.data_spec.to_dict():
            return (f"search {name!r} already exists with data {existing.data}; "
                    "resume it with the same data or use another --name")
        stored = existing.fidelity
        if stored == self.fidelity_record:
            return None
        if stored is None:
            return (f"search {name!r} was started without rungs (--no-fidelity, or a space without "
                    "fidelity) and resumes only that way: add --no-fidelity, or use another --name")
        return (f"search {name!r} was started with successive halving (rungs at "
                f"{', '.join(f'{t:,}' for t in stored['rung_tokens'])} tokens, eta {stored['eta']}) "
                "and resumes only under those settings: drop --no-fidelity, or use another --name")

    @property
    def data_spec(self) -> DataSpec:
        return self.data or self.space.data

    @property
    def measure_threads(self) -> int:
        """Cores the timing set needs: the widest profile decides, as every profile times there."""
        return max((p.intra_op_threads for p in self.profiles), default=1)

    def oversubscription(self, cores: list[int] | None = None) -> str | None:
        """A note when ``--workers`` x ``--threads`` exceeds this machine's training cores.

        Trainings then share cores: each candidate trains slower and the search is rarely
        faster (BENCHMARKS.md), so the user is told what fits instead of being refused.
        """
        if not self.workers or self.ray_address:
            return None
        from nas.affinity import plan_cores

        plan = plan_cores(self.measure_threads, cores)
        train_cores = len(plan.train_cores)
        if self.workers * self.train_threads <= train_cores:
            return None
        return (f"--workers {self.workers} x --threads {self.train_threads} is more than the "
                f"{train_cores} training core(s) here ({plan.describe()}): trainings will share "
                f"cores, which slows each candidate and rarely speeds up the search; "
                f"--workers {max(1, train_cores // self.train_threads)} fits.")

    @functools.cached_property
    def distinct_architectures(self) -> tuple[Architecture, ...] | None:
        """The space's architectures that meet its shape-only constraints; None: too many to list.

        Cached: the walk is the slow part of a small space's start-up and the budget, the
        trials note and the driver's unseen-architecture picks all need it.
        """
        found = self.space.distinct_architectures()
        return None if found is None else tuple(found)

    @property
    def space_size(self) -> int | None:
        found = self.distinct_architectures
        return None if found is None else len(found)

    @property
    def effective_trials(self) -> int:
        """The budget in distinct architectures: ``trials``, or the space's size if smaller.

        A repeat draw costs nothing, so a budget larger than the space would never finish.
        """
        size = self.space_size
        return self.trials if size is None else max(1, min(self.trials, size))

    def trials_note(self) -> str | None:
        """Said once when the space is smaller than the budget."""
        if self.effective_trials >= self.trials:
            return None
        return (f"space {self.space.name!r} holds only {self.space_size} distinct architecture(s) "
                f"that meet its shape-only constraints: --trials {self.trials} evaluates "
                f"{self.effective_trials}")


@dataclass
class SearchOutcome:
    """How a run of the driver ended; the CLI prints it and picks its exit status from it."""

    name: str
    status: str  # finished | stopped
    n_complete: int
    n_failed: int
    front: list[CandidateRecord]
    hypervolume: float | None  # None until the search's reference point is fixed
    seconds: float
    n_infeasible: int = 0  # broke a constraint in the shape step: never trained
    n_pruned: int = 0  # stopped at a rung by successive halving
    tokens: int = 0  # training tokens spent, every rung of every candidate


@dataclass
class Progress:
    """What the progress display shows; updated by the driver."""

    total: int
    done: int = 0
    failed: int = 0
    infeasible: int = 0  # of done: broke a constraint in the shape step, never trained
    pruned: int = 0  # of done: stopped at a rung by successive halving
    tokens: int = 0  # training tokens spent so far, every rung of every candidate
    running: int = 0
    front: int = 0
    hypervolume: float | None = None
    message: str = ""


def resolve_profiles(space: SearchSpace,
                     profiles: Sequence[HardwareProfile] | None) -> tuple[HardwareProfile, ...]:
    """The profiles to measure; every profile an objective or constraint names must be among them.

    Checked where the request is built, so a missing profile is refused before anything starts.
    """
    from nas.hardware import check_available, load_profiles
    from nas.objectives import latency_profile

    chosen = tuple(profiles) if profiles else tuple(load_profiles(",".join(space.profiles)))
    names = {p.name for p in chosen}
    for metric in space.metric_names():
        profile = latency_profile(metric)  # latency:, throughput: and memory: metrics
        if profile is not None and profile not in names:
            raise ConfigError(
                f"metric {metric!r} needs profile {profile!r}, which is not among the measured "
                f"profiles ({', '.join(sorted(names))})", source=space.source, field="profiles",
                value=sorted(names))
    space.check_profiles(chosen)  # every candidate holds the context each profile times
    for profile in chosen:
        check_available(profile)
    return chosen
