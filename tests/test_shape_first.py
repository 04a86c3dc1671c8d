"""Latency and size first: the shape step decides every constraint that needs no training.

Real searches (Ray locally, real ONNX export and timing, real training) on the e2e space with
a latency constraint added: one so tight that every candidate breaks it (stored `infeasible`,
never trained, PRUNED in Optuna with the measured constraint values) and one so loose that
none does (trained, completed with the shape step's latencies, a cached shape not timed again).
"""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
import yaml

from harness import assert_optuna_agrees
from nas.architecture import Architecture, static_metrics
from nas.hardware import load_profiles
from nas.objectives import Constraint, shape_violations
from nas.search import REPEAT_ATTR, SearchDriver, SearchRequest
from nas.search.executor import RayExecutor
from nas.space import load_space
from nas.store import Store

DATA = Path(__file__).parent / "data"
PROFILES = load_profiles([DATA / "e2e-1t.yaml"])
TIGHT = "latency:e2e-1t:decode_ms <= 1e-06"  # no graph decodes in a nanosecond
LOOSE = "latency:e2e-1t:decode_ms <= 10000"  # every e2e graph decodes in far less than 10 s


def _space(tmp_path: Path, name: str, constraint: str) -> Path:
    spec = yaml.safe_load((DATA / "e2e.yaml").read_text())
    spec["constraints"] = [*spec["constraints"], constraint]
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def test_shape_violations_name_the_constraint_and_the_measured_value():
    arch = Architecture(n_layer=2, d_model=64)
    metrics = {**static_metrics(arch), "latency:cpu:decode_ms": 0.0812}
    constraints = [Constraint.parse("latency:cpu:decode_ms <= 0.05"), Constraint.parse("val_loss <= 1"),
                   Constraint.parse("latency:cpu:prefill_ms <= 1")]
    # val_loss is decided after training; a metric not measured is not known to be broken.
    assert shape_violations(constraints, metrics) == ["latency:cpu:decode_ms <= 0.05 (measured 0.0812)"]
    assert shape_violations(constraints[1:], {**metrics, "val_loss": 9.0}) == []
    assert Constraint.parse("val_loss <= 1").needs_training
    assert not Constraint.parse("params <= 1").needs_training


@pytest.mark.slow
def test_a_violator_is_timed_untrained_and_never_trained(tmp_path, monkeypatch):
    db = f"sqlite:///{tmp_path / 'nas.db'}"
    store = Store(db)
    tight = load_space(_space(tmp_path, "tight", TIGHT))
    request = SearchRequest(space=tight, name="tight", profiles=PROFILES, trials=3, db_url=db,
                            workers=1, retime=False)
    outcome = SearchDriver(request, store).run()
    assert outcome.status == "finished"
    assert (outcome.n_complete, outcome.n_failed, outcome.n_infeasible) == (0, 0, 3)

    records = store.candidates("tight")
    assert len(records) == 3 and len({r.arch_hash for r in records}) == 3  # each counts once
    for r in records:
        assert r.state == "infeasible", (r.state, r.error)
        # Measured on the untrained model: latencies, static metrics, the reason with its value.
        assert [lat.profile for lat in r.latencies] == ["e2e-1t"]
        decode = r.latencies[0].decode.median_ms
        assert decode > 0 and r.metrics["latency:e2e-1t:decode_ms"] == decode
        assert r.metrics["params"] == r.architecture.n_params
        assert r.error == f"violates {TIGHT} (measured {decode:.4g})"
        # Never trained: no loss, no weights, no loss curve, no training time.
        assert "val_loss" not in r.metrics and not r.has_weights and not r.proxy
        assert "train" not in r.timings and r.timings["export"] > 0

    # Optuna holds each as PRUNED with the constraint values, so the sampler learns the region.
    study = optuna.load_study(study_name="nas:tight", storage=store.optuna_storage())
    by_number = {t.number: t for t in study.trials}
    for r in records:
        trial = by_number[r.trial_number]
        assert trial.state == optuna.trial.TrialState.PRUNED
        assert trial.constraints == request.space.constraint_dict(r.metrics, partial=True)
        assert trial.constraints[TIGHT] > 0 and trial.constraints["params <= 200000"] <= 0
    assert_optuna_agrees(store, "tight")

    (summary,) = store.list_searches()
    assert (summary.n_infeasible, summary.n_complete, summary.front_size) == (3, 0, 0)
    from nas.fronts import load_front

    analysis = load_front(store, "tight")
    assert analysis.front == () and len(analysis.infeasible) == 3

    # Resume: the infeasible candidates are evaluated, so nothing is re-run (Ray never starts).
    monkeypatch.setattr(RayExecutor, "start", lambda self: pytest.fail("Ray started"))
    again = SearchDriver(request, store).run()
    assert again.status == "finished" and store.candidates("tight") == records
    monkeypatch.undo()

    # A feasible candidate trains, completed with the shape step's latencies; the shape timed
    # by the first search (same seed, so the same first draw) is taken from the cache.
    loose = load_space(_space(tmp_path, "loose", LOOSE))
    ok = SearchDriver(SearchRequest(space=loose, name="loose", profiles=PROFILES, trials=1, db_url=db,
                                    workers=1, retime=False), store).run()
    assert ok.status == "finished"
    (done,) = store.candidates("loose")
    assert done.state == "complete", done.error
    assert done.has_weights and done.timings["train"] > 0 and done.metrics["val_loss"] > 0
    first = store.candidate_by_trial("tight", 0)
    assert done.architecture == first.architecture
    assert done.latencies == first.latencies  # not timed again
    assert "export" not in done.timings  # the cached shape was not even exported
    assert_optuna_agrees(store, "loose")


@pytest.mark.slow
def test_a_repeat_draw_of_an_infeasible_architecture_is_told_pruned_with_its_constraints(tmp_path):
    """Three architectures, a budget of five: the sampler draws some again; each repeat is told
    its original's PRUNED and constraint values, and nothing is timed or stored for it."""
    spec = yaml.safe_load((DATA / "three-archs.yaml").read_text())
    spec["constraints"] = [*(spec.get("constraints") or []), TIGHT]
    path = tmp_path / "three.yaml"
    path.write_text(yaml.safe_dump(spec))
    db = f"sqlite:///{tmp_path / 'nas.db'}"
    store = Store(db)
    request = SearchRequest(space=load_space(path), name="t", profiles=PROFILES, trials=5, db_url=db,
                            workers=1, retime=False)
    assert SearchDriver(request, store).run().status == "finished"
    records = {r.trial_number: r for r in store.candidates("t")}
    assert len(records) == 3 and {r.state for r in records.values()} == {"infeasible"}
    study = optuna.load_study(study_name="nas:t", storage=store.optuna_storage())
    repeats = [t for t in study.trials if REPEAT_ATTR in t.user_attrs]
    assert repeats, "the sampler drew no architecture twice"
    for t in repeats:
        original = records[t.user_attrs[REPEAT_ATTR]]
        assert t.state == optuna.trial.TrialState.PRUNED, (t.number, original.trial_number)
        assert t.constraints == request.space.constraint_dict(original.metrics, partial=True)
    assert_optuna_agrees(store, "t")
