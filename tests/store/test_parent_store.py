"""A search's parent and its candidates' derivations in the store (issue 15), on SQLite and
PostgreSQL: migration 0005 upgrades a database written at 0004 without losing a row, and both
round-trip exactly as the driver hands them over."""

from __future__ import annotations

import dataclasses
from datetime import datetime, timezone

import pytest
from alembic import command
from alembic.script import ScriptDirectory
from sqlalchemy import MetaData, create_engine, insert, inspect, select, text

from nas.architecture import Architecture
from nas.derivation import Derivation
from nas.errors import StoreError
from nas.parent import ParentRef
from nas.results import RungLoss
from nas.store import Store
from nas.store.migrate import alembic_config, current_revision
from nas.store.tables import Candidate, Metric

from .factories import result

HEAD = "0006_measurements"
PARENT_ARCH = Architecture(n_layer=4, d_model=64, n_head=4, n_kv_head=2)
CHILD = Architecture(n_layer=2, d_model=32, n_head=2, n_kv_head=1)
PARENT = ParentRef(fingerprint="3f2a9c1b00d4e5f6", directory="/models/parent", architecture=PARENT_ARCH,
                   weights=b"", importance={}, depth="importance").record()
DERIVATION = Derivation(
    parent="3f2a9c1b00d4e5f6", depth="importance", blocks=((0,), (3,)), n_layer=(4, 2),
    d_model=(64, 32), n_head=(4, 2), n_kv_head=(2, 1), head_dim=(16, 16), ffn=(176, 88),
    kv_pooling=2, attention=("softmax", "softmax"), tie_embeddings=(True, True),
    params=(PARENT_ARCH.n_params, CHILD.n_params)).to_dict()


def create(store: Store, name: str = "p1", parent: dict | None = PARENT):
    return store.create_search(
        name, space={"parent": "/models/parent"}, space_hash="space-1",
        profiles=[{"name": "cpu"}], objectives=[("val_loss", "minimize")], constraints=[],
        data={"corpus": ["stdlib"]}, budget={"tokens": 1000}, trials=4, study_name=f"study-{name}",
        parent=parent)


def distilled(arch: Architecture = CHILD, derivation: dict | None = DERIVATION):
    """A distilled candidate's result: val_kl in its metrics and proxy, its derivation."""
    base = result(arch)
    proxy = dataclasses.replace(base.proxy, val_kl=0.125)
    return dataclasses.replace(base, proxy=proxy, metrics={**base.metrics, "val_kl": 0.125},
                               derivation=derivation, rung=RungLoss(0, 1024, 3.0, 0.1))


def test_the_head_is_the_latest_migration(store):
    assert ScriptDirectory.from_config(alembic_config()).get_current_head() == HEAD
    with store.engine.connect() as conn:
        assert current_revision(conn) == HEAD
        columns = {t: {c["name"]: c for c in inspect(conn).get_columns(t)}
                   for t in ("nas_searches", "nas_candidates")}
    assert columns["nas_searches"]["parent"]["nullable"]
    assert columns["nas_candidates"]["derivation"]["nullable"]


def test_parent_and_derivation_round_trip(store):
    created = create(store)
    assert created.parent == PARENT and store.get_search("p1").parent == PARENT
    assert PARENT["architecture"] == PARENT_ARCH.to_dict() and PARENT["params"] == PARENT_ARCH.n_params
    store.start_candidate("p1", 0, CHILD)
    done = store.finish_candidate("p1", 0, distilled())
    assert done.derivation == DERIVATION
    assert Derivation.from_dict(done.derivation) == Derivation.from_dict(DERIVATION)  # lossless
    assert done.metrics["val_kl"] == 0.125 and done.proxy["val_kl"] == 0.125
    # Every reader gets it: by id, by trial, in full lists; lists for tables and fronts
    # (``with_proxy=False``) skip it, as they skip the loss curves.
    assert store.candidate(done.id) == done == store.candidate_by_trial("p1", 0)
    assert [c.derivation for c in store.candidates("p1")] == [DERIVATION]
    assert [c.derivation for c in store.candidates("p1", with_proxy=False)] == [None]
    # A candidate trained from scratch, and a search without a parent, have neither.
    scratch = store.finish_candidate("p1", 1, result(CHILD))
    assert scratch.derivation is None and "val_kl" not in scratch.metrics
    assert scratch.proxy["val_kl"] is None
    assert create(store, "plain", parent=None).parent is None


def test_repeating_finish_candidate_changes_nothing(store):
    create(store)
    store.start_candidate("p1", 0, CHILD)
    first = store.finish_candidate("p1", 0, distilled())

    def stored() -> list[tuple]:
        with store.engine.connect() as conn:
            candidates = conn.execute(select(Candidate.id, Candidate.state, Candidate.derivation,
                                             Candidate.proxy, Candidate.attempts)).all()
            metrics = conn.execute(select(Metric.name, Metric.value).order_by(Metric.name)).all()
        return [*map(tuple, candidates), *map(tuple, metrics)]

    before = stored()
    again = store.finish_candidate("p1", 0, distilled())
    assert stored() == before
    assert dataclasses.replace(again, finished_at=first.finished_at) == first
    # The result is the whole truth: one without a derivation clears it; a re-run starts clean.
    assert store.finish_candidate("p1", 0, distilled(derivation=None)).derivation is None
    store.finish_candidate("p1", 0, dataclasses.replace(distilled(), state="failed"))
    store.start_candidate("p1", 0, CHILD)
    assert store.candidate_by_trial("p1", 0).derivation is None


def test_a_retried_create_must_name_the_same_parent(store):
    create(store)
    assert create(store).parent == PARENT  # a retry: the same search
    moved = {**PARENT, "path": "/elsewhere/parent"}
    assert create(store, parent=moved).parent == PARENT  # same fingerprint: the same parent
    for other in ({**PARENT, "fingerprint": "0000000000000000"}, None):
        with pytest.raises(StoreError, match="another parent"):
            create(store, parent=other)
    create(store, "plain", parent=None)
    with pytest.raises(StoreError, match="another parent .*none vs 3f2a9c1b00d4e5f6"):
        create(store, "plain")


# ----- migration from 0004 ----------------------------------------------------------------
def _database_at_0004(url: str) -> int:
    """A database as nas wrote it before 0005: the migrations up to 0004, then a finished
    search with a complete candidate, its metric and its rung, inserted through the tables as
    they were then (reflected, so nothing of today's models leaks in). Returns its id."""
    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            command.upgrade(alembic_config(conn), "0004_rungs")
        now = datetime(2026, 12, 2, tzinfo=timezone.utc)
        with engine.begin() as conn:
            tables = MetaData()
            tables.reflect(conn, only=["nas_searches", "nas_candidates", "nas_metrics", "nas_rungs"])
            assert "parent" not in tables.tables["nas_searches"].c
            search_id = conn.scalar(insert(tables.tables["nas_searches"]).returning(
                tables.tables["nas_searches"].c.id), {
                "name": "old", "space": {"n_layer": [2]}, "space_hash": "h",
                "profiles": [{"name": "cpu"}], "objectives": [["val_loss", "minimize"]],
                "constraints": [], "data": {"corpus": ["stdlib"]}, "budget": {"tokens": 1000},
                "trials": 2, "status": "finished", "study_name": "study-old",
                "reference_point": [4.0], "error": "", "created_at": now, "started_at": now,
                "finished_at": now, "updated_at": now, "heartbeat_at": now,
                "fidelity": {"min_tokens": 512, "eta": 2, "rung_tokens": [512, 1024]}})
            candidate_id = conn.scalar(insert(tables.tables["nas_candidates"]).returning(
                tables.tables["nas_candidates"].c.id), {
                "search_id": search_id, "trial_number": 0, "architecture": CHILD.to_dict(),
                "arch_hash": CHILD.hash, "state": "complete", "error": "", "attempts": 1,
                "timings": {"total": 1.0}, "proxy": {"val_loss": 3.0, "curve": [[0, 5.0]]},
                "node": "n", "started_at": now, "finished_at": now})
            conn.execute(insert(tables.tables["nas_metrics"]),
                         [{"candidate_id": candidate_id, "name": "val_loss", "value": 3.0}])
            conn.execute(insert(tables.tables["nas_rungs"]), [{
                "candidate_id": candidate_id, "rung": 0, "tokens": 512, "val_loss": 3.5, "seconds": 0.2,
                "created_at": now}])
    finally:
        engine.dispose()
    return candidate_id


def test_0005_upgrades_a_0004_database_without_losing_rows(db_url):
    old_id = _database_at_0004(db_url)
    with Store(db_url) as store:  # opening upgrades to head
        with store.engine.connect() as conn:
            assert current_revision(conn) == HEAD
        search = store.get_search("old")
        assert (search.parent, search.status, search.reference_point) == (None, "finished", (4.0,))
        assert search.fidelity == {"min_tokens": 512, "eta": 2, "rung_tokens": [512, 1024]}
        (old,) = store.candidates("old")
        assert (old.id, old.architecture, old.derivation) == (old_id, CHILD, None)
        assert old.metrics == {"val_loss": 3.0}
        assert old.proxy == {"val_loss": 3.0, "curve": [[0, 5.0]]}
        assert old.rungs == (RungLoss(0, 512, 3.5, 0.2),)
        # The upgraded database takes the new values, and the old search goes on.
        create(store)
        store.finish_candidate("p1", 0, distilled())
        store.finish_candidate("old", 1, distilled())
        assert store.candidate_by_trial("old", 1).derivation == DERIVATION
        # Down again, past 0004 too, without losing a candidate: a SQLite batch copy of
        # nas_searches would drop the old table, and its ON DELETE CASCADE every candidate.
        with store.engine.begin() as conn:
            command.downgrade(alembic_config(conn), "0003_infeasible_state")
            assert "derivation" not in {c["name"] for c in inspect(conn).get_columns("nas_candidates")}
            assert {"parent", "fidelity"}.isdisjoint(
                c["name"] for c in inspect(conn).get_columns("nas_searches"))
            kept = conn.execute(text("SELECT id FROM nas_candidates ORDER BY id")).scalars().all()
            assert old_id in kept and len(kept) == 3
            assert conn.scalar(text("SELECT count(*) FROM nas_metrics")) > 1
            assert current_revision(conn) == "0003_infeasible_state"
