"""Re-timing a front together (`nas.retime`, ``nas retime``): real exports, real ONNX Runtime
timing, a real store.

The stored searches here hold real architectures whose stored latencies were chosen so that
timing them for real must change the front: a 1-layer model stored as slow enters it, a 3-layer
one stored as the fastest leaves it. The end-to-end test runs a real tiny search on real Ray
(the end-of-search re-timing included), then the CLI in a subprocess.
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from nas.architecture import Architecture
from nas.fronts import load_front
from nas.hardware import HardwareProfile, load_profiles
from nas.machine import local_machine
from nas.results import CandidateResult, LatencyStats, MachineInfo, ProfileLatency, ProxyResult
from nas.retime import RetimeRefused, choose_members, plan_retime, retime, unresolved_pairs
from nas.store import Store

DATA = Path(__file__).parent / "data"
PROFILE = HardwareProfile(name="t1", intra_op_threads=1, batch=1, prompt_len=8, past_len=8,
                          warmup=1, repeats=5, rounds=3)
ELSEWHERE = MachineInfo(cpu_model="Imaginary CPU 9000", cores=64, flags=("avx512f",),
                        onnxruntime="0.0.1", onnx="0.0.1", hostname="far")
METRIC = "latency:t1:decode_ms"


def arch(n_layer: int, d_model: int) -> Architecture:
    return Architecture(n_layer=n_layer, d_model=d_model, n_head=2, n_kv_head=1, max_seq_len=32)


# trial: (architecture, val_loss, stored decode ms). Stored front: Z (fastest), M, L (best
# loss); S is behind M and L, W far behind. Timed for real, fewer layers are faster: S then
# beats Z on both objectives (Z leaves, S enters), M and L stay.
S, M, Z, L, W = arch(1, 16), arch(2, 32), arch(3, 32), arch(4, 64), arch(2, 16)
STORED = {0: (S, 3.0, 10.0), 1: (M, 2.9, 0.001), 2: (Z, 3.1, 0.0001), 3: (L, 2.5, 1.0),
          4: (W, 4.0, 50.0)}


def stored_latency(decode_ms: float, machine: MachineInfo | None) -> ProfileLatency:
    stats = LatencyStats(median_ms=decode_ms, p90_ms=decode_ms, cv=0.01, n=15)
    return ProfileLatency(profile="t1", profile_hash=PROFILE.hash, prefill=stats, decode=stats,
                          node="somewhere", machine=machine)


def make_search(store: Store, *, machines: dict[int, MachineInfo | None]) -> dict[int, int]:
    """The stored search "r" (trial -> candidate id); each trial's latency from ``machines``."""
    store.create_search("r", space={"seed": 0}, space_hash="h", profiles=[PROFILE.to_dict()],
                        objectives=[("val_loss", "minimize"), (METRIC, "minimize")], constraints=[],
                        data={"corpus": ["stdlib"]}, budget={"tokens": 1000}, trials=5,
                        study_name="study-r")
    ids = {}
    for trial, (a, loss, decode_ms) in STORED.items():
        lat = stored_latency(decode_ms, machines.get(trial, local_machine()))
        ids[trial] = store.finish_candidate("r", trial, CandidateResult(
            architecture=a, state="complete", metrics={"val_loss": loss, **lat.metrics()},
            proxy=ProxyResult(val_loss=loss, curve=(), tokens=1000, tokens_per_s=1e4, seconds=0.1),
            latencies=(lat,), timings={"total": 1.0}, weights=None, node="n")).id
    return ids


@pytest.fixture
def store(tmp_path):
    with Store(f"sqlite:///{tmp_path / 'nas.db'}") as opened:
        yield opened


def test_members_are_the_front_and_its_next_layer(store):
    ids = make_search(store, machines={})
    analysis = load_front(store, "r")
    assert analysis.front_ids == {ids[1], ids[2], ids[3]}
    assert [r.id for r in choose_members(analysis)] == [ids[t] for t in (0, 1, 2, 3)]
    assert [r.id for r in choose_members(analysis, neighbours=False)] == [ids[t] for t in (1, 2, 3)]
    assert [r.id for r in choose_members(analysis, all_candidates=True)] == sorted(ids.values())
    assert [r.id for r in plan_retime(store, "r").outsiders] == [ids[4]]


@pytest.mark.parametrize("elsewhere", [ELSEWHERE, None], ids=["another-machine", "unknown-machine"])
def test_mixing_machines_is_refused_naming_both(store, elsewhere):
    ids = make_search(store, machines={4: elsewhere})  # W, outside the members, timed elsewhere
    here = local_machine().summary
    theirs = "Imaginary CPU 9000, 64 cores" if elsewhere else "an unknown machine"
    with pytest.raises(RetimeRefused, match="would mix machines") as refused:
        retime(store, "r")
    message = str(refused.value)
    assert here in message and theirs in message and "trial(s) 4 " in message
    assert "nas retime r --all" in message
    assert store.retimes("r") == [] and len(store.latency_history(ids[0])) == 1  # nothing written
    # With every candidate re-timed, no stored number from the other machine is compared.
    done = retime(store, "r", all_candidates=True)
    assert set(done.members) == set(ids.values()) and done.machine.hash == local_machine().hash
    assert store.candidate(ids[4]).latencies[0].machine.hash == local_machine().hash


def test_a_retime_adds_a_measurement_keeps_the_old_one_and_records_the_front_change(store):
    ids = make_search(store, machines={})
    before = {t: store.candidate(i) for t, i in ids.items()}
    steps: list[tuple[str, int, int]] = []
    record = retime(store, "r", seed=3, progress=lambda *step: steps.append(step))

    assert record.number == 1 and record.profiles == ("t1",) and record.rounds == 3
    assert record.members == tuple(ids[t] for t in (0, 1, 2, 3))
    assert record.front_before == tuple(sorted(ids[t] for t in (1, 2, 3)))
    assert (record.entered, record.left) == ((ids[0],), (ids[2],))  # S in, Z out
    assert set(record.front_after) == load_front(store, "r").front_ids  # what every reader sees now
    assert store.list_searches()[0].front_size == len(record.front_after)  # the snapshot follows
    assert steps[0][0].startswith("exporting") and steps[-1] == ("timed", 1, 1)
    for trial in (0, 1, 2, 3):
        old, new = store.latency_history(ids[trial])
        assert old == before[trial].latencies[0]  # kept exactly as the search stored it
        assert (old.measurement, new.measurement) == (0, 1)
        assert new.machine == local_machine() and new.decode.ci_low_ms <= new.decode.median_ms
        assert new.decode.median_ms <= new.decode.ci_high_ms
        now = store.candidate(ids[trial])
        assert now.latencies == (new,) and now.metrics[METRIC] == new.decode.median_ms
        assert now.metrics["val_loss"] == before[trial].metrics["val_loss"]
    # W was not re-timed: one measurement, its metric untouched.
    assert store.latency_history(ids[4]) == list(before[4].latencies)
    assert store.candidate(ids[4]).metrics == before[4].metrics
    # Unresolved pairs are exactly those whose stored 95% intervals overlap.
    latest = {i: [store.latency_history(i)[-1]] for i in record.members}
    assert list(record.unresolved) == unresolved_pairs(latest, [METRIC])
    for a in record.members:
        for b in record.members:
            if a < b:
                x, y = latest[a][0].decode, latest[b][0].decode
                overlap = x.ci_low_ms <= y.ci_high_ms and y.ci_low_ms <= x.ci_high_ms
                assert ((a, b, METRIC) in record.unresolved) == overlap
    # A second re-timing is number 2; the first one's measurements stay beside it.
    again = retime(store, "r", rounds=2)
    assert again.number == 2 and again.rounds == 2
    assert [lat.measurement for lat in store.latency_history(ids[0])] == [0, 1, 2]
    assert store.retimes("r") == [record, again]


def test_unknown_intervals_count_as_unresolved():
    plain = stored_latency(1.0, None)
    wide = dataclasses.replace(plain, decode=dataclasses.replace(plain.decode, ci_low_ms=0.9, ci_high_ms=1.1))
    far = dataclasses.replace(plain, decode=dataclasses.replace(plain.decode, median_ms=2.0,
                                                                ci_low_ms=1.9, ci_high_ms=2.1))
    near = dataclasses.replace(far, decode=dataclasses.replace(far.decode, ci_low_ms=1.05))
    assert unresolved_pairs({1: [wide], 2: [far]}, [METRIC]) == []
    assert unresolved_pairs({1: [wide], 2: [near]}, [METRIC]) == [(1, 2, METRIC)]
    assert unresolved_pairs({1: [plain], 2: [far]}, [METRIC]) == [(1, 2, METRIC)]


# ----- end to end: a real search on real Ray, then the CLI --------------------------------
@pytest.mark.slow
def test_a_search_retimes_its_front_and_nas_retime_does_it_again(tmp_path):
    from nas.search import SearchDriver, SearchRequest
    from nas.space import load_space

    db = f"sqlite:///{tmp_path / 'nas.db'}"
    store = Store(db)
    request = SearchRequest(space=load_space(DATA / "e2e.yaml"), name="e2e",
                            profiles=load_profiles([DATA / "e2e-1t.yaml"]), trials=4, db_url=db)
    outcome = SearchDriver(request, store).run()
    assert outcome.status == "finished"
    complete = store.candidates("e2e", states=["complete"])
    records = store.retimes("e2e")
    if not records:  # nothing to order (metrics unchanged, so this is the front it saw)
        assert len(choose_members(load_front(store, "e2e"))) < 2
    else:
        (first,) = records
        assert first.machine.hash == local_machine().hash
        for member in first.members:
            assert [lat.measurement for lat in store.latency_history(member)] == [0, 1]
        assert {r.id for r in outcome.front} == set(first.front_after)
    searched = {r.id: store.latency_history(r.id) for r in complete}

    result = subprocess.run([sys.executable, "-m", "nas", "retime", "e2e", "--all", "--rounds", "2",
                             "--db", db, "--no-progress"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    last = store.retimes("e2e")[-1]
    assert last.number == len(records) + 1 and set(last.members) == {r.id for r in complete}
    assert f"{len(complete)} candidates together" in result.stdout
    assert local_machine().summary in result.stdout
    assert f"overlap on an objective): {len(last.unresolved)}" in result.stdout
    for r in complete:
        history = store.latency_history(r.id)
        assert history[:-1] == searched[r.id] and history[-1].measurement == last.number
        assert store.candidate(r.id).metrics["latency:e2e-1t:decode_ms"] == history[-1].decode.median_ms
    # A search that does not exist, or a running one, is refused with its reason.
    missing = subprocess.run([sys.executable, "-m", "nas", "retime", "nope", "--db", db],
                             capture_output=True, text=True, timeout=120)
    assert missing.returncode == 2 and "no search named 'nope'" in missing.stderr
    store.set_status("e2e", "running")
    running = subprocess.run([sys.executable, "-m", "nas", "retime", "e2e", "--db", db],
                             capture_output=True, text=True, timeout=120)
    assert running.returncode == 2 and "is running" in running.stderr
