"""``sampler: {history: N}``: the sampler conditions on the N latest finished trials only."""

from __future__ import annotations

import warnings

import numpy as np
import optuna
import pytest
from optuna.trial import TrialState

from nas.errors import ConfigError
from nas.space import load_space
from nas.space.adapter import make_sampler
from nas.space.history import RecentHistorySampler, latest
from nas.space.parse import parse_space

optuna.logging.set_verbosity(optuna.logging.WARNING)


def _space(**sampler: object):
    tiny = load_space("tiny")
    return parse_space({**tiny.to_dict(), "sampler": {"name": "tpe", **sampler}}, "t.yaml", "tiny")


def _fill(study: optuna.Study, space, n: int, running: int = 0) -> None:
    rng = np.random.default_rng(0)
    for k in range(n + running):
        study.sampler = make_sampler(space, seed=k)
        trial = study.ask()
        space.suggest(trial)
        if k < n:
            study.tell(trial, [float(rng.random()) for _ in space.directions()])


def test_latest_keeps_the_running_trials_and_the_newest_finished():
    study = optuna.create_study()
    for k in range(10):
        trial = study.ask()
        trial.suggest_int("x", 0, 9)
        if k not in (3, 8):  # 3 and 8 stay running
            study.tell(trial, float(k))
    kept = latest(study.get_trials(deepcopy=False), 4)
    assert [t.number for t in kept] == [5, 6, 7, 8, 9]  # four finished, and 8 running among them
    assert [t.state for t in kept].count(TrialState.RUNNING) == 1
    assert len(latest(study.get_trials(deepcopy=False), 100)) == 10


def test_the_sampler_sees_only_its_history(monkeypatch):
    space = _space(history=20)
    sampler = make_sampler(space)
    assert isinstance(sampler, RecentHistorySampler) and sampler.history == 20
    assert isinstance(sampler.inner, optuna.samplers.TPESampler)
    study = optuna.create_study(directions=space.directions())
    _fill(study, space, 60, running=3)
    seen: list[int] = []
    inner_sample = optuna.samplers.TPESampler.sample_relative

    def spy(self, view, trial, search_space):
        finished = view._get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        seen.append(len(finished))
        assert min(t.number for t in finished) >= 40  # the 20 newest of 60
        return inner_sample(self, view, trial, search_space)

    monkeypatch.setattr(optuna.samplers.TPESampler, "sample_relative", spy)
    study.sampler = make_sampler(space, seed=99)
    trial = study.ask()
    arch = space.suggest(trial)
    assert seen and set(seen) == {20}
    assert arch == space.suggest(optuna.trial.FixedTrial(trial.params))


def test_the_same_seed_and_history_give_the_same_draws():
    space = _space(history=15)

    def draws() -> list[dict]:
        study = optuna.create_study(directions=space.directions())
        _fill(study, space, 40)
        return [t.params for t in study.get_trials()]

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert draws() == draws()


@pytest.mark.parametrize("bad", [0, -3, 2.5, "all", True])
def test_a_bad_history_names_the_file_field_and_value(bad):
    with pytest.raises(ConfigError, match=rf"t.yaml.*sampler.history.*{bad!r}|sampler.history={bad!r}"):
        _space(history=bad)
