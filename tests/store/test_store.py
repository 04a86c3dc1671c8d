"""Every Store method, on SQLite and on PostgreSQL (see the `db_url` fixture)."""

from __future__ import annotations

import math
from datetime import datetime, timedelta, timezone

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import event, func, insert, inspect, select, text

from nas.architecture import Architecture
from nas.errors import NotFoundError, StoreError
from nas.results import CandidateResult
from nas.store import Store
from nas.store.migrate import VERSION_TABLE, include_name
from nas.store.records import STALE_AFTER_SECONDS
from nas.store.tables import Base, Candidate, Latency, Metric, Search, Weights

from .factories import latency, result

ARCH = Architecture(n_layer=2, d_model=64)
OTHER = Architecture(n_layer=4, d_model=64)


def count(store: Store, table: type[Base]) -> int:
    with store.engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(table)).scalar_one()


class TestStore:
    # ----- searches -------------------------------------------------------------------
    def test_create_get_find_search(self, store, new_search):
        created = new_search("s1")
        assert created.status == "running" and created.trials == 10
        assert created.objectives == (("val_loss", "minimize"), ("latency:cpu:decode_ms", "minimize"))
        assert created.profiles == ({"name": "cpu", "intra_op_threads": 1},)
        assert created.constraints == ("params <= 2e6",)
        assert created.created_at.tzinfo == timezone.utc and created.reference_point is None
        assert store.get_search("s1") == created
        assert store.find_search("nope") is None
        # A retried create returns the same search; another space under the name is refused.
        assert new_search("s1").id == created.id
        with pytest.raises(StoreError, match="already exists"):
            new_search("s1", space_hash="space-2")
        new_search("s2")
        with pytest.raises(NotFoundError, match=r"no search named 'nope' \(existing: s1, s2\)"):
            store.get_search("nope")

    def test_a_stale_heartbeat_reads_as_driver_lost(self, store, new_search):
        new_search("s1")
        store.start_candidate("s1", 0, ARCH)
        live = store.list_searches()[0]
        assert (live.status, live.n_running, live.n_interrupted) == ("running", 1, 0)
        # The driver dies: its last beat ages past the limit while the row still says running.
        stale = datetime.now(timezone.utc) - timedelta(seconds=STALE_AFTER_SECONDS + 5)
        with store.engine.begin() as conn:
            conn.execute(Search.__table__.update().values(heartbeat_at=stale))
        assert store.get_search("s1").status == "driver lost"
        lost = store.list_searches()[0]
        assert (lost.status, lost.n_running, lost.n_interrupted) == ("driver lost", 0, 1)
        # A driver that died while stopping is lost too, not "stopping" forever.
        store.set_status("s1", "stopping")
        with store.engine.begin() as conn:
            conn.execute(Search.__table__.update().values(heartbeat_at=stale))
        assert store.get_search("s1").status == "driver lost"
        store.heartbeat("s1")  # a resumed driver beats again
        assert store.get_search("s1").status == "stopping"
        # A stopped search's left-running trial is interrupted, never "running".
        store.set_status("s1", "stopped")
        stopped = store.list_searches()[0]
        assert (stopped.status, stopped.n_running, stopped.n_interrupted) == ("stopped", 0, 1)

    def test_set_status_and_update_search(self, store, new_search):
        new_search("s1")
        store.set_status("s1", "failed", error="boom")
        failed = store.get_search("s1")
        assert (failed.status, failed.error) == ("failed", "boom") and failed.finished_at is not None
        store.set_status("s1", "running")
        resumed = store.get_search("s1")
        assert resumed.finished_at is None and resumed.error == ""
        assert resumed.started_at == failed.started_at  # the first start is kept
        store.set_status("s1", "finished")
        assert store.get_search("s1").status == "finished"
        with pytest.raises(ValueError, match="status='done'"):
            store.set_status("s1", "done")
        updated = store.update_search("s1", trials=20, reference_point=[5.0, 10])
        assert updated.trials == 20 and updated.reference_point == (5.0, 10.0)
        assert store.update_search("s1", trials=30).reference_point == (5.0, 10.0)
        with pytest.raises(NotFoundError):
            store.set_status("nope", "running")

    def test_list_searches_counts_and_latest_snapshot(self, store, new_search):
        assert store.list_searches() == []
        new_search("s1", trials=5)
        new_search("s2")
        for trial, state in enumerate(["complete", "complete", "failed", "pruned"]):
            store.start_candidate("s1", trial, ARCH)
            store.finish_candidate("s1", trial, result(ARCH, state))
        store.start_candidate("s1", 4, OTHER)
        store.add_pareto_snapshot("s1", 1, 0.5, [1])
        store.add_pareto_snapshot("s1", 2, 0.75, [1, 2])
        s1, s2 = store.list_searches()
        assert (s1.name, s1.trials, s1.n_complete, s1.n_failed, s1.n_pruned, s1.n_running) == \
            ("s1", 5, 2, 1, 1, 1)
        assert (s1.front_size, s1.hypervolume) == (2, 0.75)
        assert (s2.name, s2.n_complete, s2.front_size, s2.hypervolume) == ("s2", 0, 0, None)
        assert s1.updated_at >= s1.created_at

    def test_list_searches_counts_infeasible(self, store, new_search):
        new_search("s1", trials=3)
        store.start_candidate("s1", 0, ARCH)
        store.finish_candidate("s1", 0, result(ARCH))
        store.start_candidate("s1", 1, OTHER)
        never_trained = CandidateResult(
            OTHER, "infeasible", metrics={"params": float(OTHER.n_params), **latency().metrics()},
            latencies=(latency(),), error="violates latency:cpu:decode_ms <= 0.1 (measured 0.5)",
            timings={"export": 0.5, "latency": 1.0, "total": 1.5})
        stored = store.finish_candidate("s1", 1, never_trained)
        assert (stored.state, stored.has_weights, stored.proxy, stored.latencies) == \
            ("infeasible", False, {}, (latency(),))
        (s1,) = store.list_searches()
        assert (s1.n_complete, s1.n_infeasible, s1.n_failed, s1.n_running) == (1, 1, 0, 0)
        assert [c.trial_number for c in store.candidates("s1", states=["infeasible"])] == [1]

    def test_shape_latencies_survive_a_rerun_of_the_same_architecture(self, store, new_search):
        """A crash after the shape step: the re-run finds its latencies in the cache."""
        new_search("s1")
        store.start_candidate("s1", 0, ARCH)
        store.record_shape("s1", 0, [latency()])
        store.record_shape("s1", 0, [latency()])  # repeatable
        assert count(store, Latency) == 1
        store.start_candidate("s1", 0, ARCH)  # the re-run after a crash
        assert store.cached_latency(ARCH.hash, "ph-cpu") == latency()
        store.start_candidate("s1", 0, OTHER)  # another shape under that number: not its latency
        assert store.cached_latency(ARCH.hash, "ph-cpu") is None
        store.finish_candidate("s1", 0, result(OTHER))
        with pytest.raises(StoreError, match="not running"):
            store.record_shape("s1", 0, [latency()])

    # ----- candidates -----------------------------------------------------------------
    def test_candidate_lifecycle(self, store, new_search):
        new_search("s1")
        cid = store.start_candidate("s1", 0, ARCH)
        running = store.candidate_by_trial("s1", 0)
        assert (running.id, running.state, running.attempts, running.metrics) == (cid, "running", 1, {})
        assert store.running_trials("s1") == [0]

        done = store.finish_candidate("s1", 0, result(ARCH, val_loss=3.25))
        assert done.id == cid and done.state == "complete" and done.search == "s1"
        assert done.architecture == ARCH and done.arch_hash == ARCH.hash
        assert done.metrics["val_loss"] == 3.25 and done.metrics["latency:cpu:decode_ms"] == 0.5
        assert done.latencies == (latency(),)
        assert done.proxy["curve"] == [[0, 5.5], [512, 4.0], [1024, 3.25]]
        assert done.timings["total"] == 3.0 and done.node == "node-a" and done.has_weights
        assert done.finished_at is not None and done.finished_at >= done.started_at
        assert store.candidate(cid) == done == store.candidate_by_trial("s1", 0)
        assert store.weights(cid) == b"safetensors-bytes"
        assert store.running_trials("s1") == []

        store.start_candidate("s1", 1, OTHER)
        store.fail_candidate("s1", 1, "RuntimeError: out of memory")
        assert [c.trial_number for c in store.candidates("s1")] == [0, 1]
        assert [c.trial_number for c in store.candidates("s1", states=["failed"])] == [1]
        assert store.candidates("s1", states=[]) == []
        with pytest.raises(ValueError, match="done"):
            store.candidates("s1", states=["done"])

    def test_missing_things_raise_not_found(self, store, new_search):
        new_search("s1")
        store.start_candidate("s1", 0, ARCH)
        with pytest.raises(NotFoundError, match="no candidate with id 999"):
            store.candidate(999)
        with pytest.raises(NotFoundError, match="has no trial 7"):
            store.candidate_by_trial("s1", 7)
        with pytest.raises(NotFoundError, match="no weights"):
            store.weights(store.candidate_by_trial("s1", 0).id)
        with pytest.raises(NotFoundError, match="no search named 'x'"):
            store.candidates("x")

    def test_finish_is_idempotent(self, store, new_search):
        new_search("s1")
        store.start_candidate("s1", 0, ARCH)
        first = store.finish_candidate("s1", 0, result(ARCH))
        counts = [count(store, t) for t in (Candidate, Metric, Latency, Weights)]
        again = store.finish_candidate("s1", 0, result(ARCH))
        assert [count(store, t) for t in (Candidate, Metric, Latency, Weights)] == counts == [1, 4, 1, 1]
        assert again.metrics == first.metrics and again.latencies == first.latencies
        # A result without weights replaces the stored ones too: the result is the whole truth.
        assert not store.finish_candidate("s1", 0, result(ARCH, weights=None)).has_weights

    def test_finish_without_start_creates_the_row(self, store, new_search):
        new_search("s1")
        pruned = CandidateResult(architecture=OTHER, state="pruned", error="params > 2e6")
        record = store.finish_candidate("s1", 3, pruned)
        assert (record.trial_number, record.state, record.error, record.attempts) == \
            (3, "pruned", "params > 2e6", 1)
        assert record.proxy == {} and record.latencies == () and not record.has_weights
        with pytest.raises(ValueError, match="running"):
            store.finish_candidate("s1", 4, CandidateResult(ARCH, state="running"))  # type: ignore[arg-type]

    def test_resume_resets_a_running_candidate(self, store, new_search):
        new_search("s1")
        cid = store.start_candidate("s1", 0, ARCH)
        # The driver crashed; on resume it re-runs the trials left running.
        assert store.running_trials("s1") == [0]
        assert store.start_candidate("s1", 0, ARCH) == cid
        assert store.candidate(cid).attempts == 2
        # A failed trial that is re-run loses its partial results.
        store.finish_candidate("s1", 0, result(ARCH, "failed"))
        assert store.start_candidate("s1", 0, ARCH) == cid
        rerun = store.candidate(cid)
        assert (rerun.state, rerun.attempts, rerun.metrics, rerun.latencies, rerun.has_weights) == \
            ("running", 3, {}, (), False)
        store.finish_candidate("s1", 0, result(ARCH))
        with pytest.raises(StoreError, match="already complete"):
            store.start_candidate("s1", 0, ARCH)
        assert count(store, Candidate) == 1

    def test_fail_candidate(self, store, new_search):
        new_search("s1")
        store.start_candidate("s1", 0, ARCH)
        store.fail_candidate("s1", 0, "diverged", state="pruned")
        pruned = store.candidate_by_trial("s1", 0)
        assert (pruned.state, pruned.error) == ("pruned", "diverged") and pruned.finished_at
        store.fail_candidate("s1", 0, "diverged", state="pruned")  # idempotent
        with pytest.raises(NotFoundError):
            store.fail_candidate("s1", 5, "x")
        with pytest.raises(ValueError):
            store.fail_candidate("s1", 0, "x", state="complete")
        store.start_candidate("s1", 1, ARCH)
        store.finish_candidate("s1", 1, result(ARCH))
        with pytest.raises(StoreError, match="complete"):
            store.fail_candidate("s1", 1, "late failure")
        assert store.candidate_by_trial("s1", 1).state == "complete"

    def test_cached_latency_across_searches(self, store, new_search):
        new_search("s1")
        new_search("s2")
        assert store.cached_latency(ARCH.hash, "ph-cpu") is None
        store.finish_candidate("s1", 0, result(ARCH, decode_ms=0.5))
        store.finish_candidate("s2", 0, result(ARCH, decode_ms=0.4))
        assert store.cached_latency(ARCH.hash, "ph-cpu") == latency(decode_ms=0.4)  # the latest
        assert store.cached_latency(ARCH.hash, "ph-other") is None
        assert store.cached_latency(OTHER.hash, "ph-cpu") is None

    def test_non_finite_values_round_trip(self, store, new_search):
        new_search("s1")
        diverged = CandidateResult(
            architecture=ARCH, state="failed", metrics={"val_loss": math.inf, "ppl": math.nan},
            latencies=(latency(),), timings={"train": 0.1},
            proxy=result(ARCH, val_loss=math.nan).proxy, error="diverged")
        record = store.finish_candidate("s1", 0, diverged)
        assert record.metrics["val_loss"] == math.inf and math.isnan(record.metrics["ppl"])
        assert math.isnan(record.proxy["val_loss"]) and math.isnan(record.proxy["curve"][-1][1])
        store.update_search("s1", reference_point=[math.inf, 1.0])
        assert store.get_search("s1").reference_point == (math.inf, 1.0)

    def test_pareto_snapshots(self, store, new_search):
        new_search("s1")
        assert store.pareto_snapshots("s1") == []
        store.add_pareto_snapshot("s1", 2, 0.5, [1, 2])
        store.add_pareto_snapshot("s1", 1, None, [1])  # before the reference point is fixed
        store.add_pareto_snapshot("s1", 2, 0.6, [2])  # replaces, e.g. a retried write
        snapshots = store.pareto_snapshots("s1")
        assert [(s.n_complete, s.hypervolume, s.front_ids) for s in snapshots] == \
            [(1, None, (1,)), (2, 0.6, (2,))]
        assert snapshots[0].created_at.tzinfo == timezone.utc

    def test_weights_are_only_read_when_asked(self, store, new_search):
        new_search("s1")
        payload = bytes(range(256)) * 64
        cid = store.finish_candidate("s1", 0, result(ARCH, weights=payload)).id
        assert store.weights(cid) == payload
        statements: list[str] = []

        def record(conn, cursor, statement, *args):
            statements.append(statement)

        event.listen(store.engine, "before_cursor_execute", record)
        try:
            assert store.candidates("s1")[0].has_weights
        finally:
            event.remove(store.engine, "before_cursor_execute", record)
        assert not any("nas_weights.bytes" in s for s in statements)
        assert len(statements) <= 7  # search lookup + five queries, however many candidates

    def test_bulk_read_of_10000_candidates(self, store, new_search):
        search_id = new_search("big").id
        now = datetime.now(timezone.utc)
        archs = [ARCH.to_dict(), OTHER.to_dict()]
        n = 10_000
        with store.engine.begin() as conn:
            conn.execute(insert(Candidate), [
                {"id": i + 1, "search_id": search_id, "trial_number": i, "architecture": archs[i % 2],
                 "arch_hash": "h", "state": "complete" if i % 10 else "failed", "error": "",
                 "attempts": 1, "timings": {"total": 1.0}, "proxy": {"val_loss": 3.0},
                 "node": "n", "started_at": now, "finished_at": now} for i in range(n)])
            conn.execute(insert(Metric), [
                {"candidate_id": i + 1, "name": name, "value": float(i)}
                for i in range(n) for name in ("val_loss", "params", "latency:cpu:decode_ms")])
            conn.execute(insert(Latency), [
                {"candidate_id": i + 1, "profile": "cpu", "profile_hash": "p", "arch_hash": "h",
                 "prefill_median_ms": 1.0, "prefill_p90_ms": 1.0, "prefill_cv": 0.0, "prefill_n": 5,
                 "decode_median_ms": 1.0, "decode_p90_ms": 1.0, "decode_cv": 0.0, "decode_n": 5,
                 "node": "n", "measured_at": now} for i in range(n)])
        everything = store.candidates("big")
        assert len(everything) == n and everything[-1].trial_number == n - 1
        assert everything[1234].metrics["params"] == 1234.0 and len(everything[1234].latencies) == 1
        assert len(store.candidates("big", states=["complete"])) == n - n // 10
        summary = store.list_searches()[0]
        assert (summary.n_complete, summary.n_failed) == (n - n // 10, n // 10)

    # ----- schema -------------------------------------------------------------------
    def test_migrations_match_the_models(self, store):
        with store.engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={
                "compare_type": True, "include_name": include_name})
            assert compare_metadata(context, Base.metadata) == []

    def test_candidate_state_check_is_migrated(self, store, new_search):
        """Migration 0003 widens the state CHECK: ``infeasible`` is stored, a typo is refused."""
        new_search("s1")
        store.start_candidate("s1", 0, ARCH)
        with store.engine.begin() as conn:
            conn.execute(text("UPDATE nas_candidates SET state = 'infeasible'"))
        with pytest.raises(Exception, match="(?i)check"), store.engine.begin() as conn:
            conn.execute(text("UPDATE nas_candidates SET state = 'bogus'"))
        with store.engine.connect() as conn:
            checks = inspect(conn).get_check_constraints("nas_candidates")
        assert any("infeasible" in c["sqltext"] for c in checks), checks

    def test_newer_schema_is_refused(self, store, db_url):
        with store.engine.begin() as conn:
            conn.execute(text(f"UPDATE {VERSION_TABLE} SET version_num = '9999_future'"))
        store.close()
        with pytest.raises(StoreError, match=r"9999_future.*newer than this version of nas"):
            Store(db_url)

    def test_reopen_keeps_data(self, store, new_search, db_url):
        new_search("s1")
        store.close()
        with Store(db_url) as again:
            assert again.get_search("s1").name == "s1"

    def test_optuna_shares_the_database(self, store, new_search, db_url):
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        new_search("s1")
        storage = store.optuna_storage()
        study = optuna.create_study(storage=storage, study_name="study-s1",
                                    directions=["minimize", "minimize"])
        trial = study.ask()
        trial.suggest_int("n_layer", 2, 4)
        study.tell(trial, [3.0, 0.5])
        storage.engine.dispose()
        with Store(db_url) as again:  # reopening after Optuna created its tables
            assert again.get_search("s1").study_name == "study-s1"
            tables = set(inspect(again.engine).get_table_names())
        assert {"alembic_version", VERSION_TABLE, "studies", "trials", "nas_searches"} <= tables
        storage = store.optuna_storage()
        loaded = optuna.load_study(study_name="study-s1", storage=storage)
        assert [t.values for t in loaded.trials] == [[3.0, 0.5]]
        storage.engine.dispose()

    def test_optuna_first_then_store(self, db_url):
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        optuna.storages.RDBStorage(db_url).engine.dispose()
        with Store(db_url) as store:
            assert store.list_searches() == []
            with store.engine.connect() as conn:
                assert conn.scalar(text(f"SELECT count(*) FROM {VERSION_TABLE}")) == 1

    def test_timestamps_are_utc(self, store, new_search):
        created = new_search("s1").created_at
        assert created.utcoffset() == timedelta(0)
        assert abs(datetime.now(timezone.utc) - created) < timedelta(minutes=5)
        with store.engine.connect() as conn:
            raw = conn.scalar(select(Search.created_at))
        assert raw == created
