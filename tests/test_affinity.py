"""Core pins are undone when their task ends, and the core plan is the node's, not the pin's.

Ray reuses worker processes: a timing task may run in the very worker that trained a moment
ago. The Ray test runs the search's real tasks in one worker of a one-CPU local cluster and
reads the affinity the timing task ran under.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from nas import affinity
from nas.affinity import node_cores, parse_cpu_list, pinned, plan_cores, thread_affinities

ROOT = Path(__file__).resolve().parents[1]
PROFILE = ROOT / "tests" / "data" / "e2e-1t.yaml"
needs_two_cores = pytest.mark.skipif(
    not hasattr(os, "sched_setaffinity") or len(node_cores()) < 2,
    reason="needs CPU affinity and at least two cores to split")


def test_parse_cpu_list() -> None:
    assert parse_cpu_list("0-3,8,10-11\n") == {0, 1, 2, 3, 8, 10, 11}
    assert parse_cpu_list("5") == {5}


@needs_two_cores
def test_pinned_restores_every_threads_previous_affinity() -> None:
    first, last = node_cores()[0], node_cores()[-1]
    stop = threading.Event()
    ready = threading.Event()
    own: dict[str, int] = {}

    def worker() -> None:  # a thread with its own, narrower affinity: it must get it back
        own["tid"] = threading.get_native_id()
        os.sched_setaffinity(0, {last})
        ready.set()
        stop.wait()

    started_before = threading.Thread(target=worker)
    started_before.start()
    ready.wait()
    before = thread_affinities()
    inside: dict[str, int] = {}
    started_inside = threading.Thread(target=lambda: (inside.setdefault("tid", threading.get_native_id()),
                                                      stop.wait()))
    try:
        with pinned([first]):
            assert all(cores == {first} for cores in thread_affinities().values())
            started_inside.start()  # inherits the pin
            while "tid" not in inside:
                pass
        after = thread_affinities()
        for tid, cores in before.items():
            assert after[tid] == cores, tid
        assert after[own["tid"]] == {last}
        assert after[inside["tid"]] == set(node_cores())  # what it would have inherited
    finally:
        stop.set()
        started_before.join()
        started_inside.join()


@needs_two_cores
def test_pinned_restores_after_an_exception() -> None:
    before = thread_affinities()
    with pytest.raises(RuntimeError), pinned([node_cores()[0]]):
        raise RuntimeError("a failed task")
    after = thread_affinities()
    # Threads of earlier tests' libraries may exit meanwhile (the likely cause of its rare failures
    # under load): every thread that lived through the block has its affinity back, this one too.
    lived = before.keys() & after.keys()
    assert threading.get_native_id() in lived
    assert {tid: after[tid] for tid in lived} == {tid: before[tid] for tid in lived}


@needs_two_cores
def test_the_plan_is_the_nodes_even_while_pinned() -> None:
    cores = node_cores()
    unpinned = plan_cores(1)
    with pinned(unpinned.train_cores):
        assert affinity.available_cores() == list(unpinned.train_cores)
        assert plan_cores(1) == unpinned
    assert unpinned.measure_cores == (cores[-1],) and not unpinned.exclusive


def test_node_cores_follow_a_narrower_cgroup_cpuset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cpuset = tmp_path / "cpuset.cpus.effective"
    cpuset.write_text(f"{node_cores()[0]}\n")
    monkeypatch.setattr(affinity, "_CPUSET_FILES", (cpuset,))
    assert node_cores() == [affinity._BASELINE[0]]
    cpuset.write_text("100000-100001\n")  # nothing in common: the cpuset is not ours to trust
    assert node_cores() == list(affinity._BASELINE)


def test_train_and_export_leaves_no_pin_behind(monkeypatch: pytest.MonkeyPatch) -> None:
    """Even when training fails (here: at once), the process gets its affinity back."""
    from nas import evaluate

    seen: list[list[int]] = []

    def fails(*args: object, **kwargs: object) -> None:
        seen.append(affinity.available_cores())
        raise RuntimeError("boom")

    monkeypatch.setattr("nas.proxy.train", fails)
    before = thread_affinities()
    output = evaluate.train_and_export(None, None, None, cores=[node_cores()[0]])  # type: ignore[arg-type]
    assert not output.ok and "RuntimeError: boom" in output.error
    assert seen == [[node_cores()[0]]] if hasattr(os, "sched_setaffinity") else seen
    assert thread_affinities() == before


# ----- the search's real Ray tasks in one reused worker -----------------------------------------
@pytest.fixture
def one_worker_ray() -> Iterator[object]:
    ray = pytest.importorskip("ray")
    if ray.is_initialized():
        pytest.skip("Ray is already running in this process")
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        yield ray
    finally:
        ray.shutdown()


@needs_two_cores
def test_timing_in_a_reused_worker_runs_on_the_timing_cores(one_worker_ray: object, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    ray = one_worker_ray
    from nas.architecture import Architecture
    from nas.data import prepare
    from nas.hardware import load_profile
    from nas.search.executor import ray_tasks
    from nas.specs import DataSpec, ProxyBudget

    monkeypatch.setenv("NAS_CACHE_DIR", str(tmp_path / "cache"))
    corpus = tmp_path / "corpus.txt"
    corpus.write_text((ROOT / "nas" / "architecture.py").read_text())
    data = prepare(DataSpec(corpus=(str(corpus),)))
    arch = Architecture(n_layer=1, d_model=16, n_head=2, ffn_mult=2.0, max_seq_len=64)
    budget = ProxyBudget(tokens=512, batch_size=2, seq_len=16, val_tokens=256)
    profile = load_profile(PROFILE)
    plan = plan_cores(profile.intra_op_threads)

    @ray.remote  # type: ignore[attr-defined]
    def spy_on_timing_pins() -> tuple[int, bool]:
        """Record, in this worker, the affinity of every thread inside each timing pin."""
        import sys

        import nas.affinity

        real = nas.affinity.pinned
        seen: list[list[int]] = []

        @contextlib.contextmanager
        def spy(cores):  # type: ignore[no-untyped-def]
            with real(cores):
                seen.append(sorted(set().union(*nas.affinity.thread_affinities().values())))
                yield

        nas.affinity.pinned = spy  # type: ignore[assignment]
        nas.affinity.seen_by_spy = seen  # type: ignore[attr-defined]
        return os.getpid(), "nas.proxy" in sys.modules  # True: this worker ran the training

    @ray.remote  # type: ignore[attr-defined]
    def report() -> tuple[int, list[list[int]], list[int]]:
        import nas.affinity

        return os.getpid(), nas.affinity.seen_by_spy, nas.affinity.available_cores()  # type: ignore[attr-defined]

    tasks = ray_tasks(ray)
    trained = ray.get(tasks.train.remote(arch, budget, data, 0, 1, profile.intra_op_threads))  # type: ignore[attr-defined]
    assert trained.ok, trained.error
    # The shape step exports the graphs, pinned to the training cores like training itself.
    shaped = ray.get(tasks.shape.remote(arch, 0, 1, profile.intra_op_threads))  # type: ignore[attr-defined]
    assert shaped.ok, shaped.error
    spy_pid, trained_here = ray.get(spy_on_timing_pins.remote())  # type: ignore[attr-defined]
    latency = ray.get(tasks.measure.remote(shaped.prefill_onnx, shaped.decode_onnx, profile,  # type: ignore[attr-defined]
                                           profile.intra_op_threads))
    pid, seen, after = ray.get(report.remote())  # type: ignore[attr-defined]
    assert trained_here and pid == spy_pid, "Ray did not reuse the worker; the test would prove nothing"
    assert latency.decode.n == profile.rounds * profile.repeats
    assert seen and all(cores == list(plan.measure_cores) for cores in seen), seen
    assert not set(plan.measure_cores) & set(plan.train_cores)
    assert after == node_cores()  # the timing pin was undone too
