"""Latency measurement: structure of the result, pinning, int8 caching. Never asserts timings."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from nas import latency
from nas.errors import ConfigError, ProviderError
from nas.hardware import HardwareProfile
from nas.latency import GraphPair, measure, quantized, summarize

PROFILE = HardwareProfile(name="test", warmup=1, repeats=4, rounds=3)
WIDTH = 16


def _weight(name: str, shape: tuple[int, ...], seed: int) -> onnx.TensorProto:
    rng = np.random.default_rng(seed)
    return numpy_helper.from_array((rng.standard_normal(shape) * 0.1).astype(np.float32), name)


def _save(nodes, inputs, outputs, inits, path: Path) -> Path:
    model = helper.make_model(helper.make_graph(nodes, path.stem, inputs, outputs, inits),
                              opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


@pytest.fixture(scope="module")
def graphs(tmp_path_factory) -> GraphPair:
    """A two-MatMul 'decoder' with the real graphs' I/O names and symbolic dims."""
    out = tmp_path_factory.mktemp("graphs")
    inits = [_weight("emb", (32, WIDTH), 0), _weight("w0", (WIDTH, 64), 1), _weight("w1", (64, WIDTH), 2)]
    body = [helper.make_node("Gather", ["emb", "input_ids"], ["x"]),
            helper.make_node("MatMul", ["x", "w0"], ["h"]),
            helper.make_node("Relu", ["h"], ["a"]),
            helper.make_node("MatMul", ["a", "w1"], ["logits"])]

    def ids(seq):
        return helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", seq])

    def logits(seq):
        return helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", seq, WIDTH])

    prefill = _save(body, [ids("seq")], [logits("seq")], inits, out / "model.onnx")
    # decode: the cache grows by one position: present.0.key = concat(past.0.key, new key).
    shape = numpy_helper.from_array(np.array([0, 2, 1, WIDTH // 2], dtype=np.int64), "kv_shape")
    decode = _save(
        [*body, helper.make_node("Reshape", ["logits", "kv_shape"], ["new_key"]),
         helper.make_node("Concat", ["past.0.key", "new_key"], ["present.0.key"], axis=2)],
        [ids(1), helper.make_tensor_value_info("position_ids", TensorProto.INT64, ["batch", 1]),
         helper.make_tensor_value_info("past.0.key", TensorProto.FLOAT, ["batch", 2, "past", WIDTH // 2])],
        [logits(1), helper.make_tensor_value_info("present.0.key", TensorProto.FLOAT,
                                                  ["batch", 2, "total", WIDTH // 2])],
        [*inits, shape], out / "decode.onnx")
    return GraphPair(prefill, decode)


def _check(result, profile: HardwareProfile) -> None:
    assert result.profile == profile.name and result.profile_hash == profile.hash
    assert result.node
    for stats in (result.prefill, result.decode):
        assert stats.n == profile.rounds * profile.repeats
        assert stats.median_ms > 0
        assert stats.p90_ms >= stats.median_ms
        assert stats.cv >= 0


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_measure_returns_sane_stats(graphs, tmp_path, precision):
    profile = HardwareProfile(name=f"t-{precision}", precision=precision, warmup=1, repeats=4, rounds=3)
    _check(measure(graphs, profile, cache_dir=tmp_path), profile)


def test_two_threads(graphs):
    profile = HardwareProfile(name="t2", intra_op_threads=2, warmup=0, repeats=2, rounds=2)
    _check(measure(graphs, profile), profile)


def test_time_samples_with_reference_has_profile_shape(graphs, tmp_path):
    # A benchmark's drift reference: any fp32 graph with fixed input shapes.
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, WIDTH])]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 64])]
    reference = _save([helper.make_node("MatMul", ["x", "w0"], ["y"])], inputs, outputs,
                      [_weight("w0", (WIDTH, 64), 3)], tmp_path / "reference.onnx").read_bytes()
    samples = latency.time_samples(graphs, PROFILE, reference=reference)
    for array in (samples.prefill, samples.decode, samples.reference):
        assert array.shape == (PROFILE.rounds, PROFILE.repeats) and (array > 0).all()


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="needs Linux CPU affinity")
def test_cpus_pin_every_thread_while_timing_and_restore(graphs, monkeypatch):
    before = os.sched_getaffinity(0)
    core = min(before)
    seen: list[set[int]] = []
    real_time = latency._time

    def spy(*args):
        # Every thread, including ONNX Runtime's pool, runs on the requested core only.
        seen.extend(os.sched_getaffinity(int(t)) for t in os.listdir("/proc/self/task"))
        return real_time(*args)

    monkeypatch.setattr(latency, "_time", spy)
    measure(graphs, PROFILE, cpus={core})
    assert seen and all(mask == {core} for mask in seen)
    assert os.sched_getaffinity(0) == before


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity") or len(os.sched_getaffinity(0)) < 2,
                    reason="needs Linux CPU affinity and two cores")
def test_two_threads_get_a_core_each(graphs, monkeypatch):
    before = os.sched_getaffinity(0)
    first, second = sorted(before)[:2]
    masks: list[set[int]] = []
    real_time = latency._time

    def spy(*args):
        # ONNX Runtime's pool threads pin themselves when they start, which may be just after
        # the session is created: give them a moment.
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline:
            masks[:] = [os.sched_getaffinity(int(t)) for t in os.listdir("/proc/self/task")]
            if {second} in masks:
                break
            time.sleep(0.01)
        return real_time(*args)

    monkeypatch.setattr(latency, "_time", spy)
    profile = HardwareProfile(name="t2", intra_op_threads=2, warmup=0, repeats=2, rounds=1)
    _check(measure(graphs, profile, cpus={first, second}), profile)
    # The calling thread on the first core, ONNX Runtime's pool thread(s) on the second.
    assert {first} in masks and {second} in masks
    assert all(mask <= {first, second} for mask in masks)
    assert os.sched_getaffinity(0) == before


def test_fewer_cpus_than_threads_is_an_error(graphs):
    profile = HardwareProfile(name="t2", intra_op_threads=2)
    with pytest.raises(ConfigError, match="fewer cores than intra_op_threads=2"):
        measure(graphs, profile, cpus={0})


def test_unknown_provider_is_a_provider_error_naming_the_available_ones(graphs):
    import onnxruntime

    with pytest.raises(ProviderError) as info:
        measure(graphs, HardwareProfile(name="gpu", provider="NoSuchExecutionProvider"))
    assert "NoSuchExecutionProvider" in str(info.value) and "available: " in str(info.value)
    assert all(name in str(info.value) for name in onnxruntime.get_available_providers())


def test_int8_file_is_quantized_once_and_cached(graphs, tmp_path, monkeypatch):
    first = quantized(graphs.prefill, tmp_path)
    assert quantized(graphs.decode, tmp_path) != first  # keyed by content
    ops = {node.op_type for node in onnx.load(first).graph.node}
    assert ops & {"DynamicQuantizeMatMul", "MatMulInteger", "DynamicQuantizeLinear"}, ops
    import onnxruntime.quantization as q

    def fail(*args, **kwargs):
        raise AssertionError("quantized again despite the cache")

    monkeypatch.setattr(q, "quantize_dynamic", fail)
    assert quantized(graphs.prefill, tmp_path) == first
    assert not list(tmp_path.glob("tmp*"))  # no half-written leftovers


def test_summarize_is_median_of_round_medians_with_robust_cv():
    samples = np.array([[1.0, 2.0, 3.0], [2.0, 2.0, 100.0], [4.0, 5.0, 6.0]])
    stats = summarize(samples)
    assert stats.median_ms == 2.0  # round medians 2, 2, 5
    assert stats.n == 9
    assert stats.p90_ms == pytest.approx(np.percentile(samples, 90))
    assert stats.cv == pytest.approx(1.4826 * 1.0 / 3.0)  # pooled median 3, MAD 1


def test_preempted_runs_are_retried_but_n_stays_exact(monkeypatch):
    runs = 0
    preempted_after = (2, 3, 7)  # a context switch is counted during these runs

    def run():
        nonlocal runs
        runs += 1

    monkeypatch.setattr(latency, "_preemptions", lambda: sum(r <= runs for r in preempted_after))
    out, retried = latency._time_block(run, warmup=1, repeats=5, single_thread=False)
    assert out.shape == (5,) and retried == 3 and runs == 1 + 5 + 3
    # The retry budget is bounded: a process preempted all the time still returns n samples.
    monkeypatch.setattr(latency, "_preemptions", lambda: runs)
    out, retried = latency._time_block(run, warmup=0, repeats=4, single_thread=True)
    assert out.shape == (4,) and retried == 4


@pytest.mark.slow
def test_real_exported_model(tmp_path):
    pytest.importorskip("torch")
    from nas.architecture import Architecture
    from nas.model import build_model
    from nas.onnx_export import export_onnx

    results = []
    for arch in (Architecture(n_layer=1, d_model=32, n_head=2, n_kv_head=1),
                 Architecture(n_layer=2, d_model=32, n_head=2, n_kv_head=2, attention="sliding_window",
                              window=16),
                 Architecture(n_layer=1, d_model=32, n_head=2, n_kv_head=2, attention="linear")):
        graphs = export_onnx(build_model(arch), arch, tmp_path / arch.hash, check=False)
        for precision in ("fp32", "int8"):
            profile = HardwareProfile(name=precision, precision=precision, warmup=1, repeats=3, rounds=2)
            result = measure(graphs, profile, cache_dir=tmp_path / "int8")
            _check(result, profile)
            results.append(result)
    assert len(results) == 6
