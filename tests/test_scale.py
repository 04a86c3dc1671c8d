"""The driver with many candidates in flight: the real driver, Optuna, store and local Ray, with
training and timing simulated by `fake_tasks` (short sleeps, synthetic records).

- a search of a few hundred candidates, 64 in flight, finishes with the store and Optuna agreeing;
- the SQL statements the driver issues per finished candidate stay flat from the first window to
  the last (counted with SQLAlchemy's ``before_cursor_execute``), and it reads all candidates a
  fixed number of times, not once per result;
- fractional ``--gpus-per-trial`` reaches Ray as given (logical GPUs on a local Ray);
- on a two-node cluster, training never lands on the node that holds a profile's ``ray_resource``.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fake_tasks import fake_tasks

from harness import DATA, EDGE_PROFILE, PROFILE, RayCluster, assert_optuna_agrees
from nas.fronts import analyze
from nas.hardware import load_profiles
from nas.search import SearchDriver, SearchRequest
from nas.space.parse import parse_space
from nas.store import Store, writes

PROFILES = tuple(load_profiles([PROFILE]))


def big_space(sampler: str = "random", fidelity: bool = False) -> Any:
    """Thousands of distinct tiny architectures (the e2e budget), so hundreds of trials stay distinct."""
    spec: dict[str, Any] = {
        "name": "scale", "seed": 0, "sampler": sampler, "profiles": ["e2e-1t"],
        "objectives": {"val_loss": "min", "latency:e2e-1t:decode_ms": "min"},
        "constraints": ["params <= 2e6"],
        "budget": {"tokens": 4096, "batch_size": 8, "seq_len": 32, "val_tokens": 2048},
        "data": {"corpus": "stdlib", "tokenizer": "byte"},
        "architecture": {"n_layer": {"range": [1, 8]}, "d_model": {"choices": [16, 32, 48, 64, 96, 128]},
                         "n_head": {"choices": [1, 2, 4]}, "n_kv_head": {"choices": [1, 2]},
                         "ffn_mult": {"choices": [2.0, 3.0, 4.0]},
                         "attention": {"choices": ["softmax", "sliding_window", "linear"]}, "window": 8,
                         "sharing": {"choices": ["none", "all"]},
                         "tie_embeddings": {"choices": [True, False]},
                         "max_seq_len": 64}}
    if fidelity:
        spec["fidelity"] = {"min_tokens": 512, "eta": 3}
    return parse_space(spec, "test_scale", "scale")


def request(space: Any, db: str, trials: int, **kwargs: Any) -> SearchRequest:
    options: dict[str, Any] = {"profiles": PROFILES, "timing": "overlap", "retime": False, "workers": 64}
    return SearchRequest(space, "scale", trials=trials, db_url=db, **{**options, **kwargs})


@pytest.fixture
def local_ray() -> Iterator[Any]:
    """A local Ray with a GPU Ray believes in (logical) and the driver's own resources."""
    import ray

    ray.init(num_cpus=4, num_gpus=1, include_dashboard=False, log_to_driver=False, configure_logging=False,
             resources={"nas_train": 8.0, "nas_measure": 1.0})
    yield ray
    ray.shutdown()


def test_hundreds_in_flight_finish_and_agree_with_optuna(tmp_path):
    db = f"sqlite:///{tmp_path / 'nas.db'}"
    with Store(db) as store:
        outcome = SearchDriver(request(big_space(fidelity=True), db, 300), store,
                               tasks=fake_tasks(train_s=(0.05, 0.3))).run()
        assert outcome.status == "finished"
        records = store.candidates("scale")
        assert len(records) == 300 and not [r for r in records if r.state == "running"]
        assert {r.state for r in records} >= {"complete", "pruned"}
        assert_optuna_agrees(store, "scale")
        # The in-memory front is the one every reader computes from the store.
        analysis = analyze(store.get_search("scale"), records)
        assert {r.id for r in outcome.front} == analysis.front_ids
        assert outcome.hypervolume == pytest.approx(analysis.hypervolume)
        snapshots = store.pareto_snapshots("scale")
        last = snapshots[-1]
        assert last.n_complete == len({r.arch_hash for r in analysis.complete})
        assert set(last.front_ids) == analysis.front_ids
        assert last.tokens == sum(r.tokens for r in records)
        # A snapshot whenever the front changed: every front member's arrival is recorded.
        assert len(snapshots) < last.n_complete


def test_statements_per_candidate_do_not_grow(tmp_path):
    """Per finished candidate, the first window and the last issue the same number of SQL
    statements (to within noise), and the whole store is read only at start and end."""
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    db = f"sqlite:///{tmp_path / 'nas.db'}"
    marks: list[int] = []  # statements issued when each candidate finished
    counter = {"statements": 0, "full_reads": 0}

    def count(*_args: Any) -> None:
        counter["statements"] += 1

    original_finish, original_candidates = writes.finish_candidate, Store.candidates

    def finish(*args: Any, **kwargs: Any) -> Any:  # the driver's batched write of a result
        record = original_finish(*args, **kwargs)
        marks.append(counter["statements"])
        return record

    def candidates(self: Store, *args: Any, **kwargs: Any) -> Any:
        counter["full_reads"] += 1
        return original_candidates(self, *args, **kwargs)

    n, window = 400, 80
    event.listen(Engine, "before_cursor_execute", count)
    try:
        with pytest.MonkeyPatch.context() as patch, Store(db) as store:
            patch.setattr(writes, "finish_candidate", finish)
            patch.setattr(Store, "candidates", candidates)
            outcome = SearchDriver(request(big_space(), db, n, workers=16), store,
                                   tasks=fake_tasks(train_s=(0.001, 0.01))).run()
    finally:
        event.remove(Engine, "before_cursor_execute", count)
    assert outcome.status == "finished" and len(marks) == n
    first = (marks[2 * window - 1] - marks[window - 1]) / window  # after the start-up window
    last = (marks[n - 1] - marks[n - window - 1]) / window
    print(f"statements per candidate: {first:.1f} (candidates {window}-{2 * window}), "
          f"{last:.1f} (the last {window} of {n}); full reads {counter['full_reads']}")
    assert last <= first * 1.15 + 1, (first, last)
    assert counter["full_reads"] <= 6, counter  # start, resume repair, end: never per result


def test_fractional_gpus_reach_ray_as_given(tmp_path, local_ray):
    db = f"sqlite:///{tmp_path / 'nas.db'}"
    with Store(db) as store:
        outcome = SearchDriver(request(big_space(), db, 12, workers=8, gpus_per_trial=0.25), store,
                               tasks=fake_tasks(train_s=(0.4, 0.6), actors=0)).run()
        assert outcome.status == "finished"
        timings = [r.timings for r in store.candidates("scale") if r.state == "complete"]
    assert len(timings) == 12
    assert {t["gpus"] for t in timings} == {0.25}  # what Ray assigned each training task
    events = sorted([(t["started"], 1) for t in timings] + [(t["ended"], -1) for t in timings])
    running, most = 0, 0
    for _, step in events:
        running += step
        most = max(most, running)
    assert 2 <= most <= 4  # several share the one GPU, never more than 1 / 0.25 at once


@pytest.mark.cluster
@pytest.mark.slow
def test_training_never_lands_on_a_timing_node(tmp_path):
    """Head (2 CPUs) plus a node holding ``edge_test`` (a profile's ``ray_resource``): every
    candidate trains on the head, while its edge-1t latency is taken on the edge node."""
    db = f"sqlite:///{tmp_path / 'nas.db'}"
    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        import fake_tasks, test_scale
        from nas.hardware import load_profiles
        from nas.search import SearchDriver
        from nas.store import Store
        profiles = tuple(load_profiles([{str(PROFILE)!r}, {str(EDGE_PROFILE)!r}]))
        req = test_scale.request(test_scale.big_space(), {db!r}, 16, workers=4, profiles=profiles,
                                 ray_address=sys.argv[1])
        with Store({db!r}) as store:
            print(SearchDriver(req, store, tasks=fake_tasks.fake_tasks((0.05, 0.2), actors=0)).run().status)
    """)
    with RayCluster() as cluster:
        cluster.start_head(num_cpus=2)
        cluster.add_node(num_cpus=1, resources={"edge_test": 1})
        nodes = cluster.wait_for_nodes(2)
        edge = next(n for n in nodes if n.resources.get("edge_test"))
        head = next(n for n in nodes if n is not edge)
        result = subprocess.run([sys.executable, "-c", script, cluster.address], env=cluster.env,
                                capture_output=True, text=True, timeout=240, cwd=DATA.parent.parent)
        assert result.returncode == 0, result.stderr[-3000:]
        assert result.stdout.strip().endswith("finished"), result.stdout
    with Store(db) as store:
        records = store.candidates("scale")
    assert len(records) == 16 and all(r.state == "complete" for r in records), [r.error for r in records]
    assert {r.node for r in records} == {head.id}  # trained on the head only
    for record in records:
        by_profile = {lat.profile: lat.node for lat in record.latencies}
        assert by_profile["edge-1t"] == edge.id
