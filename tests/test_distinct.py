"""A trial budget counts distinct architectures: resume, extension and repeat draws.

Real searches (Ray locally, real training and timing) on spaces whose candidates train in a
second or two.
"""

from __future__ import annotations

import dataclasses
import threading
from pathlib import Path

import optuna
import pytest

from harness import assert_optuna_agrees
from nas.hardware import load_profiles
from nas.search import REPEAT_ATTR, SearchDriver, SearchRequest
from nas.search.executor import RayExecutor
from nas.space import load_space, make_sampler, trial_seed
from nas.store import Store

DATA = Path(__file__).parent / "data"
PROFILES = load_profiles([DATA / "e2e-1t.yaml"])
pytestmark = pytest.mark.slow


def _hashes(store: Store, name: str) -> list[str]:
    return [r.arch_hash for r in store.candidates(name) if r.state in ("complete", "failed")]


def test_stopped_then_resumed_search_draws_new_architectures(tmp_path):
    """Ctrl-C after the first trial, then resume: 4 distinct architectures, not 2 twice."""
    db = f"sqlite:///{tmp_path / 'nas.db'}"
    store = Store(db)
    request = SearchRequest(space=load_space(DATA / "e2e.yaml"), name="r", profiles=PROFILES,
                            trials=4, db_url=db, workers=1, retime=False)
    stop = threading.Event()

    def stop_after_first(progress) -> None:
        if progress.done >= 1:
            stop.set()

    first = SearchDriver(request, store, on_progress=stop_after_first, stop_event=stop).run()
    assert first.status == "stopped"
    done_before = len(_hashes(store, "r"))
    assert 1 <= done_before < 4
    outcome = SearchDriver(request, store).run()
    assert outcome.status == "finished"
    hashes = _hashes(store, "r")
    assert len(hashes) == 4 and len(set(hashes)) == 4, hashes
    # A finished search with enough distinct results has a hypervolume.
    assert outcome.hypervolume is not None
    assert_optuna_agrees(store, "r")

    # Extending the finished search by one evaluates one new architecture.
    extended = SearchDriver(dataclasses.replace(request, trials=5), store).run()
    assert extended.status == "finished"
    hashes = _hashes(store, "r")
    assert len(hashes) == 5 and len(set(hashes)) == 5, hashes


def test_budget_larger_than_the_space_evaluates_each_architecture_once(tmp_path, monkeypatch):
    db = f"sqlite:///{tmp_path / 'nas.db'}"
    store = Store(db)
    # No closing re-timing: repeats are checked against the values Optuna was told, which a
    # re-timing would replace in the store (tests/test_retime.py covers that).
    request = SearchRequest(space=load_space(DATA / "three-archs.yaml"), name="t", profiles=PROFILES,
                            trials=5, db_url=db, workers=1, retime=False)
    assert request.space_size == 3 and request.effective_trials == 3
    assert "holds only 3 distinct architecture(s)" in request.trials_note()
    outcome = SearchDriver(request, store).run()
    assert outcome.status == "finished"
    records = store.candidates("t")
    assert sorted(r.architecture.attention for r in records) == ["linear", "sliding_window", "softmax"]
    assert store.get_search("t").trials == 3
    # Every repeat draw was told its original's result, so the sampler learned from it.
    study = optuna.load_study(study_name="nas:t", storage=store.optuna_storage())
    by_trial = {r.trial_number: r for r in records}
    repeats = [t for t in study.trials if REPEAT_ATTR in t.user_attrs]
    for t in repeats:
        original = by_trial[t.user_attrs[REPEAT_ATTR]]
        if original.state == "complete":
            assert t.state == optuna.trial.TrialState.COMPLETE
            assert t.values == request.space.objective_values(original.metrics)
    assert_optuna_agrees(store, "t")
    # Resuming a search that has every architecture of its space trains nothing: not even Ray starts.
    monkeypatch.setattr(RayExecutor, "start", lambda self: pytest.fail("Ray started"))
    again = SearchDriver(request, store).run()
    assert again.status == "finished" and len(store.candidates("t")) == 3


def test_a_resumed_sampler_continues_its_stream_instead_of_replaying_it():
    """Trial n is drawn with a seed of its own: a restart before it draws what an
    uninterrupted run would, and never the first draws of the stream again."""
    space = load_space(DATA / "e2e.yaml")
    seeds = [trial_seed(space.seed, n) for n in range(50)]
    assert len(set(seeds)) == 50
    assert trial_seed(space.seed, 3) == trial_seed(space.seed, 3)

    def draw(n: int):
        sampler = make_sampler(space, trial_seed(space.seed, n))
        study = optuna.create_study(directions=space.directions(), sampler=sampler)
        return space.suggest(study.ask())

    assert draw(0) != draw(1) or draw(1) != draw(2)  # not one fixed replay
    assert draw(7) == draw(7)


def test_space_size_is_counted_exactly():
    three = load_space(DATA / "three-archs.yaml")
    assert len(three.distinct_architectures()) == 3
    e2e = load_space(DATA / "e2e.yaml")
    listed = e2e.distinct_architectures()
    assert len({a.hash for a in listed}) == len(listed)
    assert all(e2e.contains(a) and not e2e.check_static(a) for a in listed)
    assert load_space("slm").distinct_architectures() is None  # too many combinations to list
