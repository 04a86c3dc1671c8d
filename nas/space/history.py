"""``sampler: {name: tpe, history: N}``: the sampler conditions on the N latest finished trials.

Multivariate TPE with ``group=True`` splits every finished trial into good and bad once per
group of co-occurring parameters (15 groups in ``tiny``), each ask, so its cost grows with the
study: in memory, 28 ms at 100 finished trials and 82 ms at 1,000 on this VM, so past a few
thousand trials the sampler, not the storage, caps how fast one driver hands out candidates
(BENCHMARKS.md, "Many workers through one driver"). ``history`` bounds that: the sampler sees
every running trial (constant liar keeps parallel asks apart) and only the ``history``
finished trials with the highest numbers, so an ask costs the same at 10,000 trials as at
``history``. The price is memory: a region explored long ago and left is forgotten, which
is why it is off by default and meant for searches of thousands of candidates.

The window is a view of the study (`_RecentStudy`) handed to the sampler in place of the
study; the sampler's bookkeeping (``before_trial``, ``after_trial``) gets the real study.
"""

from __future__ import annotations

from collections.abc import Container, Sequence
from typing import Any

import optuna
from optuna.distributions import BaseDistribution
from optuna.samplers import BaseSampler
from optuna.trial import FrozenTrial, TrialState


def latest(trials: Sequence[FrozenTrial], history: int) -> list[FrozenTrial]:
    """The unfinished trials among the newest ones and the ``history`` newest finished ones,
    in number order; reads from the end, so it costs O(history + in flight), not O(n)."""
    kept: list[FrozenTrial] = []
    finished = 0
    for trial in reversed(trials):
        if trial.state.is_finished():
            if finished == history:
                break
            finished += 1
        kept.append(trial)
    kept.reverse()
    return kept


class _RecentStudy:
    """A study whose trials are `latest` of the real one's; everything else is the study's."""

    def __init__(self, study: optuna.Study, history: int) -> None:
        self._study = study
        self._history = history

    def __getattr__(self, name: str) -> Any:
        return getattr(self._study, name)

    def _get_trials(self, deepcopy: bool = True, states: Container[TrialState] | None = None,
                    use_cache: bool = False) -> list[FrozenTrial]:
        trials = self._study._get_trials(deepcopy=deepcopy, states=states, use_cache=use_cache)  # noqa: SLF001
        return latest(trials, self._history)

    def get_trials(self, deepcopy: bool = True,
                   states: Container[TrialState] | None = None) -> list[FrozenTrial]:
        return latest(self._study.get_trials(deepcopy=deepcopy, states=states), self._history)

    @property
    def trials(self) -> list[FrozenTrial]:
        return self.get_trials()


class RecentHistorySampler(BaseSampler):
    """``inner`` conditioned on the ``history`` latest finished trials (module docstring)."""

    def __init__(self, inner: BaseSampler, history: int) -> None:
        if history < 1:
            raise ValueError(f"history={history!r} must be at least 1")
        self.inner = inner
        self.history = history

    def _view(self, study: optuna.Study) -> Any:
        return _RecentStudy(study, self.history)

    def infer_relative_search_space(self, study: optuna.Study,
                                    trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return self.inner.infer_relative_search_space(self._view(study), trial)

    def sample_relative(self, study: optuna.Study, trial: FrozenTrial,
                        search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        return self.inner.sample_relative(self._view(study), trial, search_space)

    def sample_independent(self, study: optuna.Study, trial: FrozenTrial, param_name: str,
                           param_distribution: BaseDistribution) -> Any:
        return self.inner.sample_independent(self._view(study), trial, param_name, param_distribution)

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self.inner.before_trial(study, trial)

    def after_trial(self, study: optuna.Study, trial: FrozenTrial, state: TrialState,
                    values: Sequence[float] | None) -> None:
        self.inner.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self.inner.reseed_rng()
