"""`nas.fronts.analyze`: the front every reader shows, computed once from stored records."""

from __future__ import annotations

import dataclasses

from nas.fronts import load_front
from nas.store import Store
from tests.service.factories import FRONT_TRIALS, arch, make_search, result


def test_front_and_knee_of_a_known_search(tmp_path):
    store = Store(f"sqlite:///{tmp_path / 'nas.db'}")
    make_search(store, "demo")
    analysis = load_front(store, "demo")
    assert sorted(r.trial_number for r in analysis.front) == FRONT_TRIALS
    assert analysis.knee_id in analysis.front_ids


def test_a_repeated_architecture_is_listed_once(tmp_path):
    store = Store(f"sqlite:///{tmp_path / 'nas.db'}")
    make_search(store, "demo")
    # Trial 20 drew trial 1's architecture (a front member) and reused its result.
    repeat = dataclasses.replace(result(1, 2.8, 0.20, 60_000), node="same architecture as trial 1")
    store.start_candidate("demo", 20, arch(1))
    store.finish_candidate("demo", 20, repeat)
    analysis = load_front(store, "demo")
    trials = [r.trial_number for r in analysis.front]
    assert sorted(trials) == FRONT_TRIALS  # 1 once, not 20 beside it
    assert len({r.arch_hash for r in analysis.front}) == len(analysis.front)
