"""Real searches with successive halving (Ray locally, real export, timing and training).

- a search with rungs: pruned and complete candidates as the stored arrivals decide, promoted
  candidates continue their checkpoint (the final weights are bitwise those of training
  without a break), no checkpoint outlives its candidate, Optuna agrees with the store;
- ``--no-fidelity``: one rung per candidate, and a resume that asks otherwise is refused;
- ``kill -9`` of the driver mid-rung, then resume: no finished rung is trained again, the
  interrupted candidate continues from its checkpoint.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch
import yaml

from harness import DATA, PROFILE, assert_optuna_agrees, kill_session, search_args, start, wait_for
from nas.data import prepare
from nas.errors import SearchError
from nas.hardware import load_profiles
from nas.proxy import train, weights_from_bytes
from nas.search import SearchDriver, SearchRequest
from nas.search.rungs import RungLadder
from nas.space import load_space
from nas.store import Store

pytestmark = pytest.mark.slow
PROFILES = tuple(load_profiles([PROFILE]))


def _space(tmp_path: Path, fidelity: dict | None, **budget: int) -> Path:
    spec = yaml.safe_load((DATA / "e2e.yaml").read_text())
    spec["budget"].update(budget)
    if fidelity is not None:
        spec["fidelity"] = fidelity
    path = tmp_path / "rungs.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def _assert_decisions_replay(store: Store, name: str, ladder: RungLadder) -> None:
    """Each stored arrival, decided again in stored order, gives the state the store holds."""
    records = {r.trial_number: r for r in store.candidates(name)}
    from nas.evaluate import shape_metrics

    for trial, rung in store.rung_arrivals(name):
        record = records[trial]
        reached = {r.rung for r in record.rungs}
        if ladder.is_last(rung.rung):
            assert record.state == "complete" and record.has_weights, record
            continue
        decision = ladder.decide(trial, rung, shape_metrics(record.architecture, record.latencies))
        assert decision.promoted == (rung.rung + 1 in reached or record.state == "running"), (trial, rung)
        if not decision.promoted:
            assert record.state == "pruned" and record.error == decision.reason


def _assert_straight_training(store: Store, name: str, space_path: Path) -> int:
    """Complete candidates that went through more than one rung hold the weights of training
    straight to the end (continuation is bitwise on CPU with one thread); how many were checked."""
    space = load_space(space_path)
    data = prepare(space.data)
    checked = 0
    for record in store.candidates(name, states=["complete"]):
        if len(record.rungs) < 2:
            continue
        stored = weights_from_bytes(record.architecture, store.weights(record.id))
        straight = train(record.architecture, space.budget, data, seed=space.seed, threads=1).model
        for (key, a), (_, b) in zip(straight.state_dict().items(), stored.state_dict().items()):
            assert torch.equal(a, b), (record.trial_number, key)
        checked += 1
    return checked


def test_a_search_with_rungs_prunes_promotes_and_continues(tmp_path):
    space_path = _space(tmp_path, {"min_tokens": 1024, "eta": 2})
    space = load_space(space_path)
    db = f"sqlite:///{tmp_path / 'nas.db'}"
    store = Store(db)
    request = SearchRequest(space=space, name="r", profiles=PROFILES, trials=8, db_url=db, workers=2,
                            retime=False)
    outcome = SearchDriver(request, store).run()
    assert outcome.status == "finished" and outcome.n_pruned >= 1 and outcome.n_complete >= 1

    ladder = RungLadder(space, space.fidelity)
    assert ladder.tokens == (1024, 2048, 4096)
    assert store.get_search("r").fidelity == {"min_tokens": 1024, "eta": 2, "rung_tokens": [1024, 2048, 4096]}
    records = store.candidates("r")
    assert {r.state for r in records} <= {"complete", "pruned"}
    for r in records:
        assert [x.rung for x in r.rungs] == list(range(len(r.rungs)))
        assert [x.tokens for x in r.rungs] == list(ladder.tokens[:len(r.rungs)])
        assert [lat.profile for lat in r.latencies] == ["e2e-1t"]
        if r.state == "complete":
            assert len(r.rungs) == 3 and r.has_weights and r.metrics["val_loss"] == r.rungs[-1].val_loss
        else:  # pruned: its rung losses and latency, the reason, no weights and no final loss
            assert len(r.rungs) < 3 and not r.has_weights and "val_loss" not in r.metrics
            assert r.error.startswith(f"pruned at rung {len(r.rungs)} of 3")
    assert store.checkpoint_bytes("r") == 0  # every checkpoint went with its candidate
    assert outcome.tokens == sum(r.rungs[-1].tokens for r in records)
    snapshots = store.pareto_snapshots("r")
    assert snapshots and all(s.tokens for s in snapshots)
    assert [s.tokens for s in snapshots] == sorted(s.tokens for s in snapshots)
    _assert_decisions_replay(store, "r", RungLadder(space, space.fidelity))
    assert_optuna_agrees(store, "r")
    assert _assert_straight_training(store, "r", space_path) >= 1


def test_no_fidelity_trains_the_whole_budget_and_a_resume_keeps_how_it_started(tmp_path):
    space = load_space(_space(tmp_path, {"min_tokens": 1024, "eta": 2}))
    db = f"sqlite:///{tmp_path / 'nas.db'}"
    store = Store(db)
    request = SearchRequest(space=space, name="full", profiles=PROFILES, trials=3, db_url=db,
                            workers=2, no_fidelity=True, retime=False)
    outcome = SearchDriver(request, store).run()
    assert outcome.status == "finished" and outcome.n_complete == 3 and outcome.n_pruned == 0
    assert store.get_search("full").fidelity is None
    for r in store.candidates("full"):
        assert [(x.rung, x.tokens) for x in r.rungs] == [(0, 4096)] and r.has_weights

    before = [(r.trial_number, r.state, r.rungs) for r in store.candidates("full")]
    extended = SearchRequest(space=space, name="full", profiles=PROFILES, trials=5, db_url=db,
                             workers=2, retime=False)
    with pytest.raises(SearchError, match="started without rungs .* add --no-fidelity"):
        SearchDriver(extended, store).run()
    assert [(r.trial_number, r.state, r.rungs) for r in store.candidates("full")] == before


def test_kill_9_mid_rung_then_resume_retrains_no_finished_rung(tmp_path):
    # Rungs of 4,096 / 16,384 / 65,536 tokens: the later rungs take seconds, long enough to
    # kill the driver while a promoted candidate trains from its checkpoint.
    space_path = _space(tmp_path, {"min_tokens": 4096, "eta": 4}, tokens=65536)
    db = f"sqlite:///{tmp_path / 'nas.db'}"
    args = search_args("k", db, trials=5, space=space_path, extra=["--workers", "1"])
    proc = start(args)
    store = Store(db)
    try:
        def checkpointed() -> bool:
            found = store.find_search("k")
            return found is not None and store.checkpoint_bytes("k") > 0

        wait_for(checkpointed, timeout=240, what="a promoted candidate training from its checkpoint")
        time.sleep(0.3)  # inside the next rung's training
    finally:
        kill_session(proc)
    running = [r for r in store.candidates("k") if r.state == "running"]
    assert running, "the driver was killed after its last candidate ended"
    before = {(trial, rung.rung): rung for trial, rung in store.rung_arrivals("k")}
    ids_before = _rung_ids(store, "k")
    interrupted = {r.trial_number: store.checkpoint("k", r.trial_number) for r in running}
    assert any(v is not None for v in interrupted.values())

    resumed = start(args)
    out, err = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, err
    after = {(trial, rung.rung): rung for trial, rung in store.rung_arrivals("k")}
    assert before.items() <= after.items()  # every finished rung kept, loss and all
    assert ids_before.items() <= _rung_ids(store, "k").items()  # and never written again
    for trial, stored in interrupted.items():
        record = store.candidate_by_trial("k", trial)
        assert record.attempts == 2 and record.state in ("complete", "pruned")
        if stored is not None:
            assert len(record.rungs) > stored[0] + 1  # it went on past its checkpoint's rung
    assert store.checkpoint_bytes("k") == 0
    assert_optuna_agrees(store, "k", lost_asks=True)
    assert _assert_straight_training(store, "k", space_path) >= 1


def _rung_ids(store: Store, name: str) -> dict[tuple[int, int], int]:
    """(trial, rung) -> the row id, which a rewritten rung would change."""
    from sqlalchemy import select

    from nas.store.tables import Candidate, Rung, Search

    with store.engine.connect() as conn:
        rows = conn.execute(select(Candidate.trial_number, Rung.rung, Rung.id)
                            .join(Candidate, Candidate.id == Rung.candidate_id)
                            .join(Search, Search.id == Candidate.search_id).where(Search.name == name))
        return {(t, r): i for t, r, i in rows}
