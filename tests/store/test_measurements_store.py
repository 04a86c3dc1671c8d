"""Measurements that record their machine and workload, and re-timings of a front (issue 16),
on SQLite and PostgreSQL: every field of a `ProfileLatency` round-trips, a re-timing adds a
measurement beside the old one, and migration 0006 upgrades a 0005 database without losing a
row (and downgrades again)."""

from __future__ import annotations

import dataclasses
from datetime import datetime, timezone

import pytest
from alembic import command
from alembic.script import ScriptDirectory
from sqlalchemy import MetaData, create_engine, event, func, insert, inspect, select, text

from nas.architecture import Architecture
from nas.errors import StoreError
from nas.results import LatencyStats, MachineInfo, ProfileLatency
from nas.store import Store
from nas.store.migrate import alembic_config, current_revision
from nas.store.tables import Latency, Machine, Metric, Retime

from .factories import latency, result

HEAD = "0006_measurements"
ARCH = Architecture(n_layer=2, d_model=64)
OTHER = Architecture(n_layer=4, d_model=64)
HOST_A = MachineInfo(cpu_model="AMD EPYC 7B13", cores=2, flags=("avx2", "fma"),
                     onnxruntime="1.22.0", onnx="1.18.0", hostname="node-a")
HOST_B = dataclasses.replace(HOST_A, hostname="node-b")  # an identical node: the same machine
OTHER_CPU = dataclasses.replace(HOST_A, cpu_model="Intel Xeon 8481C", flags=("avx512_vnni",),
                                hostname="node-c")


def workload_latency(decode_ms: float = 0.5, *, machine: MachineInfo | None = HOST_A,
                     measurement: int = 0, ci: bool = False) -> ProfileLatency:
    """Every field of a ProfileLatency set: workload stats, throughput, memory, machine, CIs."""
    def stats(median: float) -> LatencyStats:
        return LatencyStats(median, median * 1.2, 0.04, 30,
                            median * 0.97 if ci else None, median * 1.03 if ci else None)

    return ProfileLatency(
        profile="cpu", profile_hash="ph-cpu", prefill=stats(2.0), decode=stats(decode_ms),
        node="ray-node-1", workload=(("decode_ms@2048", stats(4 * decode_ms)), ("ttft_ms", stats(9.0)),
                                     ("generate_ms", stats(70.0))),
        tokens_per_s=1828.5, peak_mb=41.25, estimate_mb=38.0, machine=machine, measurement=measurement)


def finish(store: Store, search: str, trial: int, arch: Architecture, lat: ProfileLatency):
    base = result(arch)
    return store.finish_candidate(search, trial, dataclasses.replace(
        base, latencies=(lat,), metrics={**base.metrics, **latency().metrics(), **lat.metrics()}))


def test_the_head_is_0006(store):
    assert ScriptDirectory.from_config(alembic_config()).get_current_head() == HEAD
    with store.engine.connect() as conn:
        assert current_revision(conn) == HEAD
        columns = {c["name"]: c for c in inspect(conn).get_columns("nas_latencies")}
        key = inspect(conn).get_pk_constraint("nas_latencies")["constrained_columns"]
        tables = set(inspect(conn).get_table_names())
    assert columns["workload"]["nullable"] and columns["machine_hash"]["nullable"]
    assert not columns["measurement"]["nullable"]
    assert key == ["candidate_id", "profile", "measurement"]
    assert {"nas_machines", "nas_retimes"} <= tables


def test_every_field_of_a_measurement_round_trips(store, new_search):
    new_search("s1")
    lat = workload_latency(ci=True)
    store.start_candidate("s1", 0, ARCH)
    store.record_shape("s1", 0, [lat])
    assert store.latency_history(store.candidate_by_trial("s1", 0).id) == [lat]
    done = finish(store, "s1", 0, ARCH, lat)
    assert done.latencies == (lat,) and store.candidate(done.id).latencies == (lat,)
    assert store.latency_history(done.id) == [lat]
    assert done.metrics["memory:cpu:peak_mb"] == 41.25
    assert done.metrics["latency:cpu:decode_ms@2048"] == 2.0
    # The machine is stored once per kind, whatever host reported it; each row keeps its host.
    finish(store, "s1", 1, OTHER, workload_latency(machine=HOST_B))
    with store.engine.connect() as conn:
        assert conn.scalar(select(func.count()).select_from(Machine)) == 1
        info = conn.scalar(select(Machine.info))
    assert "hostname" not in info and MachineInfo.from_dict({**info, "hostname": "node-a"}) == HOST_A
    assert store.candidate_by_trial("s1", 1).latencies[0].machine == HOST_B
    # A plain measurement (no workload, no machine) stores none of it: NULL, not an empty dict.
    plain = finish(store, "s1", 2, Architecture(n_layer=3, d_model=64), latency())
    assert plain.latencies == (latency(),)
    with store.engine.connect() as conn:
        assert conn.scalar(select(Latency.workload).where(Latency.candidate_id == plain.id)) is None


def test_a_reused_measurement_is_stored_as_the_searchs_own(store, new_search):
    """A cached measurement from a re-timing (measurement 2) is measurement 0 of the next search."""
    new_search("s1")
    cid = finish(store, "s1", 0, ARCH, workload_latency(measurement=2)).id
    assert [lat.measurement for lat in store.latency_history(cid)] == [0]


def test_cached_latency_stays_on_its_machine(store, new_search):
    new_search("s1")
    finish(store, "s1", 0, ARCH, workload_latency(0.5, machine=HOST_A))
    finish(store, "s1", 1, ARCH, workload_latency(0.7, machine=OTHER_CPU))
    finish(store, "s1", 2, ARCH, latency(decode_ms=0.9))  # a row of unknown machine
    assert store.cached_latency(ARCH.hash, "ph-cpu") == latency(decode_ms=0.9)  # any: the latest
    assert store.cached_latency(ARCH.hash, "ph-cpu", HOST_B.hash).decode.median_ms == 0.5
    assert store.cached_latency(ARCH.hash, "ph-cpu", OTHER_CPU.hash).decode.median_ms == 0.7
    assert store.cached_latency(ARCH.hash, "ph-cpu", "0" * 16) is None


def _retime(store: Store, ids: list[int], decode_ms: float, **kw):
    return store.record_retime(
        "s1", latencies={i: [workload_latency(decode_ms, ci=True)] for i in ids}, machine=HOST_A,
        profiles=["cpu"], members=ids, rounds=5, seconds=1.5,
        **{"front_before": ids, "front_after": ids, "unresolved": [], **kw})


def test_a_retime_adds_a_measurement_and_keeps_the_old_one(store, new_search):
    new_search("s1")
    a = finish(store, "s1", 0, ARCH, workload_latency(0.5)).id
    b = finish(store, "s1", 1, OTHER, workload_latency(0.8)).id
    first = _retime(store, [a, b], 0.6, front_after=[a], unresolved=[(a, b, "latency:cpu:decode_ms")])
    assert (first.number, first.search, first.members) == (1, "s1", (a, b))
    assert first.machine == dataclasses.replace(HOST_A, hostname="")  # the kind; rows keep their host
    assert (first.entered, first.left, first.unresolved) == ((), (b,), ((a, b, "latency:cpu:decode_ms"),))
    history = store.latency_history(a)
    assert [(lat.measurement, lat.decode.median_ms) for lat in history] == [(0, 0.5), (1, 0.6)]
    assert history[0] == workload_latency(0.5)  # untouched
    assert history[1].decode.ci_low_ms == pytest.approx(0.6 * 0.97)
    # The record in force is the latest, and the metrics fronts read follow it; memory stays.
    record = store.candidate(a)
    assert record.latencies == (history[1],)
    assert record.metrics["latency:cpu:decode_ms"] == 0.6
    assert record.metrics["latency:cpu:decode_ms@2048"] == pytest.approx(2.4)
    assert record.metrics["val_loss"] == 3.0
    second = _retime(store, [b], 0.4, front_before=[a], front_after=[a, b])
    assert (second.number, second.entered, second.left) == (2, (b,), ())
    assert [lat.measurement for lat in store.latency_history(b)] == [0, 1, 2]
    assert store.candidate(b).latencies[0].measurement == 2
    assert store.candidate(a).latencies[0].measurement == 1
    assert store.retimes("s1") == [first, second]
    with pytest.raises(StoreError, match=r"no candidates with ids \[999\]"):
        _retime(store, [a, 999], 0.5)
    assert len(store.retimes("s1")) == 2  # the refused one wrote nothing
    assert [lat.measurement for lat in store.latency_history(a)] == [0, 1]


def test_reading_candidates_with_history_is_still_five_queries(store, new_search):
    new_search("s1")
    ids = [finish(store, "s1", i, Architecture(n_layer=i + 1, d_model=64), workload_latency()).id
           for i in range(4)]
    _retime(store, ids, 0.6)
    _retime(store, ids[:2], 0.7)
    statements: list[str] = []

    def record(conn, cursor, statement, *args):
        statements.append(statement)

    event.listen(store.engine, "before_cursor_execute", record)
    try:
        records = store.candidates("s1")
    finally:
        event.remove(store.engine, "before_cursor_execute", record)
    assert len(statements) <= 7
    assert [r.latencies[0].measurement for r in records] == [2, 2, 1, 1]


def test_deleting_a_search_deletes_its_retimes(store, new_search):
    new_search("s1")
    a = finish(store, "s1", 0, ARCH, workload_latency()).id
    _retime(store, [a], 0.6)
    store.delete_search("s1")
    with store.engine.connect() as conn:
        assert conn.scalar(select(func.count()).select_from(Retime)) == 0
        assert conn.scalar(select(func.count()).select_from(Latency)) == 0
        assert conn.scalar(select(func.count()).select_from(Machine)) == 1  # machines outlive searches


# ----- migration from 0005 ----------------------------------------------------------------
def _database_at_0005(url: str) -> int:
    """A database as nas wrote it before 0006: a finished search, a complete candidate with a
    metric and a latency row, through the tables as they were (reflected). Returns its id."""
    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            command.upgrade(alembic_config(conn), "0005_parent")
        now = datetime(2026, 12, 3, tzinfo=timezone.utc)
        with engine.begin() as conn:
            tables = MetaData()
            tables.reflect(conn, only=["nas_searches", "nas_candidates", "nas_metrics", "nas_latencies"])
            searches, candidates = tables.tables["nas_searches"], tables.tables["nas_candidates"]
            assert "measurement" not in tables.tables["nas_latencies"].c
            search_id = conn.scalar(insert(searches).returning(searches.c.id), {
                "name": "s1", "space": {"n_layer": [2]}, "space_hash": "h",
                "profiles": [{"name": "cpu"}], "objectives": [["val_loss", "minimize"],
                                                              ["latency:cpu:decode_ms", "minimize"]],
                "constraints": [], "data": {"corpus": ["stdlib"]}, "budget": {"tokens": 1000},
                "trials": 2, "status": "finished", "study_name": "study-s1", "reference_point": None,
                "error": "", "created_at": now, "started_at": now, "finished_at": now,
                "updated_at": now, "heartbeat_at": now})
            candidate_id = conn.scalar(insert(candidates).returning(candidates.c.id), {
                "search_id": search_id, "trial_number": 0, "architecture": ARCH.to_dict(),
                "arch_hash": ARCH.hash, "state": "complete", "error": "", "attempts": 1,
                "timings": {"total": 1.0}, "proxy": {"val_loss": 3.0}, "node": "n",
                "started_at": now, "finished_at": now})
            conn.execute(insert(tables.tables["nas_metrics"]), [
                {"candidate_id": candidate_id, "name": "val_loss", "value": 3.0},
                {"candidate_id": candidate_id, "name": "latency:cpu:decode_ms", "value": 0.5}])
            conn.execute(insert(tables.tables["nas_latencies"]), [{
                "candidate_id": candidate_id, "profile": "cpu", "profile_hash": "ph-cpu",
                "arch_hash": ARCH.hash, "prefill_median_ms": 2.0, "prefill_p90_ms": 2.5,
                "prefill_cv": 0.05, "prefill_n": 20, "decode_median_ms": 0.5, "decode_p90_ms": 0.6,
                "decode_cv": 0.1, "decode_n": 20, "node": "node-a", "measured_at": now}])
    finally:
        engine.dispose()
    return candidate_id


def test_0006_upgrades_a_0005_database_without_losing_rows(db_url):
    old_id = _database_at_0005(db_url)
    with Store(db_url) as store:  # opening upgrades to head
        with store.engine.connect() as conn:
            assert current_revision(conn) == HEAD
        (old,) = store.candidates("s1")
        assert old.id == old_id and old.metrics == {"val_loss": 3.0, "latency:cpu:decode_ms": 0.5}
        # The old row is the search's measurement, of an unknown machine.
        assert old.latencies == (latency(),) and old.latencies[0].machine is None
        assert store.latency_history(old_id) == [latency()]
        assert store.cached_latency(ARCH.hash, "ph-cpu", HOST_A.hash) is None  # never reused as A's
        # The upgraded database takes re-timings and new candidates.
        store.record_retime("s1", latencies={old_id: [workload_latency(0.4, ci=True)]}, machine=HOST_A,
                            profiles=["cpu"], members=[old_id], front_before=[old_id],
                            front_after=[old_id], unresolved=[], rounds=3, seconds=0.5)
        finish(store, "s1", 1, OTHER, workload_latency())
        assert [lat.measurement for lat in store.latency_history(old_id)] == [0, 1]
        # Down to 0005: every candidate stays, each with its latest measurement (the one its
        # metrics carry); the re-timing records go.
        with store.engine.begin() as conn:
            command.downgrade(alembic_config(conn), "0005_parent")
            assert current_revision(conn) == "0005_parent"
            assert {"measurement", "workload", "machine_hash"}.isdisjoint(
                c["name"] for c in inspect(conn).get_columns("nas_latencies"))
            assert {"nas_machines", "nas_retimes"}.isdisjoint(inspect(conn).get_table_names())
            assert conn.execute(text("SELECT count(*) FROM nas_candidates")).scalar() == 2
            kept = conn.execute(text("SELECT candidate_id, decode_median_ms FROM nas_latencies "
                                     "ORDER BY candidate_id")).all()
            assert [tuple(r) for r in kept][0] == (old_id, 0.4)
            assert len(kept) == 2
            assert conn.execute(select(func.count()).select_from(Metric)).scalar() > 2
        # And up again.
        with store.engine.begin() as conn:
            command.upgrade(alembic_config(conn), "head")
        assert store.candidate(old_id).latencies[0].decode.median_ms == 0.4
