"""The search package's parts without Ray or training: executor resource options, the timing
policy, the study's tells (constraints through Optuna's public Trial API) and its repair."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pytest

from nas.architecture import static_metrics
from nas.hardware import load_profiles
from nas.search import SearchDriver, SearchRequest
from nas.search.executor import RayExecutor
from nas.search.inflight import InFlight
from nas.search.study import REPEAT_ATTR, Finished, SearchStudy
from nas.space import load_space
from nas.store import Store

DATA = Path(__file__).parent / "data"
SPACE = DATA / "e2e.yaml"
PROFILE = DATA / "e2e-1t.yaml"


def _request(**kwargs: Any) -> SearchRequest:
    options = {"space": load_space(SPACE), "name": "p", "profiles": tuple(load_profiles([PROFILE])),
               "trials": 2, **kwargs}
    return SearchRequest(**options)


@pytest.mark.parametrize("timing, takes_training_slots", [("exclusive", True), ("overlap", False)])
def test_timing_policy_decides_whether_timing_waits_for_training(timing, takes_training_slots):
    request = _request(timing=timing)
    driver = SearchDriver(request, store=None)
    driver.executor.train_slots = 3
    profile = request.profiles[0]
    options = driver.executor.measure_options(profile)
    assert options["resources"]["nas_measure"] == 1.0
    assert options["resources"].get("nas_train") == (3.0 if takes_training_slots else None)
    # While a timing task is pending, exclusive timing holds new training back.
    entry = InFlight(0, request.space.sample_random(np.random.default_rng(0)))
    entry.measure_refs["ref"] = profile.name
    driver.inflight[0] = entry
    assert driver._timing_waits() is takes_training_slots


def test_resource_options_locally_and_on_a_cluster():
    local = RayExecutor(_request(max_retries=4, gpus_per_trial=0.5))
    assert local.train_options() == {"max_retries": 4, "num_gpus": 0.5, "num_cpus": 0,
                                     "resources": {"nas_train": 1.0}}
    cluster = RayExecutor(_request(ray_address="10.0.0.5:6379", train_threads=2))
    assert not cluster.local and not cluster.timing_holds_training
    assert cluster.train_options() == {"max_retries": 2, "num_gpus": 0.0, "num_cpus": 2}
    profile = cluster.request.profiles[0]
    cluster.max_node_cpus = 8
    assert cluster.measure_options(profile) == {"max_retries": 2, "num_cpus": profile.intra_op_threads}
    cluster.cluster_has_measure = True
    assert cluster.measure_options(profile) == {"max_retries": 2, "num_cpus": 0,
                                                "resources": {"nas_measure": 1.0}}
    device = dataclasses.replace(profile, ray_resource="edge_arm")
    cluster.device_cpus[device.name] = 1
    assert cluster.measure_options(device) == {"max_retries": 2, "num_cpus": 1,
                                               "resources": {"edge_arm": 1.0}}


def test_the_core_plan_is_made_once_per_run(monkeypatch):
    import nas.affinity

    calls = []
    real = nas.affinity.plan_cores
    monkeypatch.setattr(nas.affinity, "plan_cores", lambda *a: calls.append(a) or real(*a))
    executor = RayExecutor(_request())
    for _ in range(3):
        executor.max_in_flight()
        executor.measure_options(executor.request.profiles[0])
    assert len(calls) == 1


def test_a_profile_bound_to_a_ray_resource_needs_a_cluster():
    from nas.errors import ConfigError

    request = _request()
    bound = dataclasses.replace(request.profiles[0], ray_resource="edge_arm")
    with pytest.raises(ConfigError, match="needs a cluster: pass --ray-address"):
        RayExecutor(dataclasses.replace(request, profiles=(bound,))).check_placement()


@pytest.fixture()
def study(tmp_path) -> SearchStudy:
    store = Store(f"sqlite:///{tmp_path / 'nas.db'}")
    return SearchStudy.open(load_space(SPACE), store, "s")


def _constraints(study: SearchStudy, number: int) -> dict[str, float]:
    return study.optuna_study.get_trials(deepcopy=False)[number].constraints


def test_tells_record_constraints_and_are_safe_to_repeat(study):
    space = study.space
    assert space.constraint_texts(), "the e2e space has constraints to record"
    trial, arch = study.ask()
    metrics = {**static_metrics(arch), "val_loss": 3.0, "latency:e2e-1t:decode_ms": 0.1,
               "latency:e2e-1t:prefill_ms": 0.2}
    study.tell_complete(trial, metrics)
    study.tell_complete(trial, metrics)  # a retry after a lost acknowledgement
    frozen = study.optuna_study.trials[0]
    assert frozen.state == optuna.trial.TrialState.COMPLETE
    assert frozen.values == space.objective_values(metrics)
    assert frozen.constraints == space.constraint_dict(metrics)

    rejected, arch = study.ask()
    study.tell_rejected(rejected, arch)
    assert study.optuna_study.trials[1].state == optuna.trial.TrialState.PRUNED
    assert _constraints(study, 1) == space.constraint_dict(static_metrics(arch), partial=True)

    repeat, _ = study.ask()
    study.mark_repeat(repeat, 0)
    study.tell_like(repeat, Finished(0, "complete", metrics))
    assert study.optuna_study.trials[2].user_attrs[REPEAT_ATTR] == 0
    assert study.optuna_study.trials[2].values == frozen.values
    assert study.next_number == 3


def test_repair_tells_what_an_earlier_process_left_running(study, tmp_path):
    """Asked by a driver that died: the store decides, by trial number, through a reopened Trial."""
    space = study.space
    kept, arch = study.ask()
    lost, _ = study.ask()
    still, _ = study.ask()
    metrics = {**static_metrics(arch), "val_loss": 3.0, "latency:e2e-1t:decode_ms": 0.1,
               "latency:e2e-1t:prefill_ms": 0.2}
    record = type("Record", (), {"state": "complete", "metrics": metrics})
    running = type("Record", (), {"state": "running", "metrics": {}})
    resumed = SearchStudy.open(space, study.store, "s")  # a new process: no live trials
    assert resumed.next_number == 3
    resumed.repair({kept.number: record, still.number: running})
    states = [t.state for t in resumed.optuna_study.get_trials(deepcopy=False)]
    assert states == [optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.FAIL,
                      optuna.trial.TrialState.RUNNING]
    assert _constraints(resumed, kept.number) == space.constraint_dict(metrics)
    assert lost.number == 1
