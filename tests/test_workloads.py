"""Workload profiles on real exported graphs: replies, long-context decode, session options,
measured peak memory and re-timing together. Tiny architectures, small profiles; timings are
only compared where the gap is structural (8x more decode steps), never to a threshold."""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from nas import latency
from nas.architecture import Architecture
from nas.errors import ConfigError, ProviderError
from nas.hardware import HardwareProfile
from nas.latency import measure, measure_together, round_orders, summarize
from nas.machine import local_machine
from nas.memory import MemoryMeasurementError, measure_peak, peak_memory_mb
from nas.model import build_model
from nas.onnx_export import export_onnx
from nas.workloads import SPINNING_KEY, Reply, make_session, open_workload
from tests.tiny_models import KINDS, SHARINGS, one_thread, tiny  # noqa: F401 - fixture

# Every workload quantity, at sizes that take milliseconds.
WORKLOAD = HardwareProfile(name="wl", prompt_len=8, past_len=8, decode_contexts=(12, 24), new_tokens=6,
                           warmup=1, repeats=3, rounds=2, generate_repeats=2)


def export(arch: Architecture, out: Path):
    torch.manual_seed(0)
    return export_onnx(build_model(arch), arch, out / arch.hash, check=False)


@pytest.fixture(scope="module")
def graphs_by_kind(tmp_path_factory):
    out = tmp_path_factory.mktemp("kinds")
    return {kind: export(tiny(kind), out) for kind in KINDS}


@pytest.mark.parametrize("sharing", SHARINGS)
@pytest.mark.parametrize("kind", KINDS)
def test_workload_metrics_exist_and_are_positive(kind, sharing, tmp_path):
    arch = tiny(kind, sharing, n_layer=4)  # 4 layers: repeat:2 differs from all
    result = measure(export(arch, tmp_path), WORKLOAD)
    metrics = result.metrics()
    assert list(metrics) == list(WORKLOAD.metric_names())
    assert all(value > 0 for value in metrics.values()), metrics
    stats = result.stats()
    for name in ("prefill_ms", "decode_ms", "decode_ms@12", "decode_ms@24"):
        assert stats[name].n == WORKLOAD.rounds * WORKLOAD.repeats
    for name in ("ttft_ms", "generate_ms"):
        assert stats[name].n == WORKLOAD.rounds * WORKLOAD.generate_repeats
        assert stats[name].ci_low_ms is None  # intervals come with re-timing only
    assert stats["ttft_ms"].median_ms < stats["generate_ms"].median_ms
    assert result.tokens_per_s == pytest.approx(
        WORKLOAD.batch * WORKLOAD.new_tokens / (stats["generate_ms"].median_ms / 1e3))
    assert result.estimate_mb == pytest.approx(WORKLOAD.memory_estimate_bytes(arch) / 1e6)
    assert result.machine == local_machine() and result.machine.cores >= 1


def test_profile_without_workload_keeps_todays_result(graphs_by_kind):
    profile = HardwareProfile(name="plain", warmup=1, repeats=3, rounds=2, prompt_len=8, past_len=8)
    result = measure(graphs_by_kind["softmax"], profile)
    assert list(result.metrics()) == list(profile.metric_names()) == [
        "latency:plain:prefill_ms", "latency:plain:decode_ms"]
    assert result.workload == () and result.peak_mb is None and result.estimate_mb is None
    assert result.machine == local_machine()


def test_int8_workload_times_and_measures_the_same_quantized_graphs(graphs_by_kind, tmp_path):
    profile = dataclasses.replace(WORKLOAD, precision="int8", decode_contexts=(12,))
    result = measure(graphs_by_kind["sliding_window"], profile, cache_dir=tmp_path)
    assert result.peak_mb > 0 and result.estimate_mb == pytest.approx(
        profile.memory_estimate_bytes(tiny("sliding_window")) / 1e6)
    # One quantized copy per graph: the memory child ran the timed files, not a re-quantized copy.
    assert len(list(tmp_path.glob("*.onnx"))) == 2


def _greedy(graphs, batch: int, prompt_len: int, new_tokens: int) -> np.ndarray:
    """The reply the plain way: session.run with numpy in and out."""
    profile = HardwareProfile(name="ref")
    pre, dec = make_session(graphs.prefill, profile), make_session(graphs.decode, profile)
    reply = Reply(pre, dec, batch, prompt_len, new_tokens)  # only for its prompt
    names = [o.name for o in pre.get_outputs()][1:]
    logits, *cache = pre.run(None, {"input_ids": reply._prompt})
    tokens = [logits[:, -1].argmax(-1)]
    for step in range(1, new_tokens):
        feeds = {"input_ids": tokens[-1][:, None].astype(np.int64),
                 "position_ids": np.full((batch, 1), prompt_len + step - 1, dtype=np.int64)}
        feeds.update({n.replace("present.", "past."): v for n, v in zip(names, cache)})
        logits, *cache = dec.run(None, feeds)
        tokens.append(logits[:, 0].argmax(-1))
    return np.stack(tokens, axis=1)


@pytest.mark.parametrize("kind", KINDS)
def test_reply_generates_what_a_plain_greedy_loop_does(graphs_by_kind, kind):
    # Past the sliding window (3) and with a batch: presents fed back as OrtValues, outputs
    # rebound each step, ids and positions updated in place give the same tokens.
    graphs = graphs_by_kind[kind]
    profile = HardwareProfile(name="ref")
    reply = Reply(make_session(graphs.prefill, profile), make_session(graphs.decode, profile),
                  batch=2, prompt_len=5, new_tokens=9)
    for _ in range(2):  # a second reply on the same bindings is the same reply
        first, whole = reply.run(time.perf_counter_ns)
        assert 0 < first < whole
        np.testing.assert_array_equal(reply.tokens, _greedy(graphs, 2, 5, 9))


def test_generate_ms_grows_with_new_tokens(graphs_by_kind):
    base = dataclasses.replace(WORKLOAD, decode_contexts=(), rounds=3, generate_repeats=3)
    short, long = (latency.time_samples(graphs_by_kind["softmax"],
                                        dataclasses.replace(base, new_tokens=n)).workload
                   for n in (4, 32))
    # 31 decode steps against 3 after the same prompt: far more than 2x, on any machine.
    assert np.median(long["generate_ms"]) > 2 * np.median(short["generate_ms"])
    assert np.median(long["ttft_ms"]) < 2 * np.median(long["generate_ms"])


# ----- memory ------------------------------------------------------------------------------
# A cache of several MB: 4 layers x 2 (k, v) x 128 wide x 4 bytes = 4 kB a token, so 1 MB at one
# window (256 tokens) and 4 MB at four. Two processes running identical shapes differ by page
# granularity and allocator chunks, nearly all of it in creating the sessions (15.6-16.6 MB
# between children here), so the test compares what the long-context decode adds on top of the
# short decode before it; TOLERANCE_MB covers what is left and is well below softmax's growth
# (past and present of 3 MB more each, >= 6 MB).
WINDOW = 256
TOLERANCE_MB = 1.0


@pytest.mark.parametrize("kind", ["sliding_window", "softmax"])
def test_sliding_window_decode_memory_does_not_grow_past_the_window(kind, tmp_path):
    arch = Architecture(n_layer=4, d_model=128, n_head=4, vocab_size=64, max_seq_len=4 * WINDOW + 8,
                        attention=kind, window=WINDOW if kind == "sliding_window" else None)
    graphs = export(arch, tmp_path)
    peaks = [_long_decode_mb(graphs, c) for c in (WINDOW, 4 * WINDOW)]
    growth = peaks[1] - peaks[0]
    if kind == "sliding_window":
        assert growth <= TOLERANCE_MB, peaks
    else:
        assert growth > 4 * TOLERANCE_MB, peaks  # the test can fail: a growing cache is seen


def _long_decode_mb(graphs, context: int) -> float:
    """How much the decode at ``context`` raises the peak above the short decode's."""
    profile = HardwareProfile(name="mem", prompt_len=8, past_len=8, decode_contexts=(context,))
    phases = measure_peak(graphs.prefill, graphs.decode, profile)["phases"]
    return phases[f"decode_ms@{context}"] - phases["decode_ms"]


def test_peak_memory_child_reports_its_method_and_covers_the_weights(tmp_path):
    arch = Architecture(n_layer=2, d_model=128, n_head=4, vocab_size=2048, max_seq_len=64)
    graphs = export(arch, tmp_path)
    profile = HardwareProfile(name="mem", prompt_len=16, past_len=16, new_tokens=8)
    report = measure_peak(graphs.prefill, graphs.decode, profile, cpus={min(local_cores())})
    assert report["method"] == "VmHWM"  # Linux: peak reset at the baseline
    # The sessions hold at least the fp32 weights.
    assert report["peak_mb"] >= arch.weight_bytes() / 1e6
    assert report["runtime_mb"] is not None and report["runtime_mb"] > 0


def local_cores() -> set[int]:
    return os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else {0}


def test_memory_child_errors_name_the_profile_and_quote_its_stderr(tmp_path):
    bad = tmp_path / "model.onnx"
    bad.write_bytes(b"not an onnx graph")
    with pytest.raises(MemoryMeasurementError) as info:
        peak_memory_mb(bad, bad, dataclasses.replace(WORKLOAD, name="phone"))
    message = str(info.value)
    assert "hardware profile 'phone'" in message and str(bad) in message
    assert "Traceback" in message and "onnxruntime" in message.lower()


# ----- session options ---------------------------------------------------------------------
def test_default_session_options_are_todays(graphs_by_kind):
    session = make_session(graphs_by_kind["softmax"].prefill, HardwareProfile(name="d"))
    options = session.get_session_options()
    assert options.intra_op_num_threads == 1 and options.inter_op_num_threads == 1
    assert options.execution_mode == ort.ExecutionMode.ORT_SEQUENTIAL
    assert options.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    with pytest.raises(RuntimeError, match="does not have configuration"):
        options.get_session_config_entry(SPINNING_KEY)  # ORT's own default is left alone


@pytest.mark.parametrize("level, mode, spinning, threads", [
    ("disable", "parallel", False, 2), ("basic", "sequential", True, 1), ("extended", "sequential", None, 2)])
def test_profile_session_options_reach_the_session(graphs_by_kind, level, mode, spinning, threads):
    profile = dataclasses.replace(WORKLOAD, graph_optimization=level, execution_mode=mode,
                                  allow_spinning=spinning, intra_op_threads=threads)
    workload = open_workload(graphs_by_kind["linear"].prefill, graphs_by_kind["linear"].decode, profile)
    for session in (workload.prefill, workload.decode):
        options = session.get_session_options()
        assert options.graph_optimization_level == getattr(
            ort.GraphOptimizationLevel, {"disable": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC",
                                         "extended": "ORT_ENABLE_EXTENDED"}[level])
        assert options.execution_mode == getattr(
            ort.ExecutionMode, "ORT_PARALLEL" if mode == "parallel" else "ORT_SEQUENTIAL")
        assert options.intra_op_num_threads == threads
        assert options.inter_op_num_threads == (threads if mode == "parallel" else 1)
        if spinning is None:
            with pytest.raises(RuntimeError):
                options.get_session_config_entry(SPINNING_KEY)
        else:
            assert options.get_session_config_entry(SPINNING_KEY) == ("1" if spinning else "0")
    # And the graphs still run under them.
    assert measure(graphs_by_kind["linear"], dataclasses.replace(profile, decode_contexts=())).peak_mb > 0


def test_parallel_execution_with_one_thread_is_an_error():
    # ONNX Runtime would quietly run it sequentially: a profile must not say what is not timed.
    with pytest.raises(ConfigError, match="execution_mode='parallel' needs intra_op_threads >= 2"):
        dataclasses.replace(WORKLOAD, execution_mode="parallel")


def test_provider_the_runtime_lacks_names_the_available_ones(graphs_by_kind):
    profile = dataclasses.replace(WORKLOAD, provider="NoSuchExecutionProvider")
    for call in (lambda: measure(graphs_by_kind["softmax"], profile),
                 lambda: measure_together(graphs_by_kind, profile)):
        with pytest.raises(ProviderError) as info:
            call()
        message = str(info.value)
        assert "NoSuchExecutionProvider" in message and info.value.field == "provider"
        assert all(name in message for name in ort.get_available_providers()), message


# ----- re-timing together ------------------------------------------------------------------
def test_measure_together_times_every_member_with_intervals(graphs_by_kind, monkeypatch):
    seen: list[list[str]] = []
    real_time = latency._time

    def spy(workloads, profile, orders):
        seen.extend(list(order) for order in orders)
        return real_time(workloads, profile, orders)

    monkeypatch.setattr(latency, "_time", spy)
    rounds = 4
    results = measure_together(graphs_by_kind, WORKLOAD, rounds=rounds, seed=3)
    assert set(results) == set(KINDS)
    # Every round visits every member once, in an order drawn afresh each round (seeded).
    assert len(seen) == rounds and all(sorted(order) == sorted(KINDS) for order in seen)
    assert len({tuple(order) for order in seen}) > 1
    assert seen == round_orders(list(graphs_by_kind), rounds, seed=3)
    for result in results.values():
        assert list(result.metrics()) == [m for m in WORKLOAD.metric_names() if not m.startswith("memory:")]
        assert result.peak_mb is None and result.estimate_mb is None and result.machine == local_machine()
        for name, stats in result.stats().items():
            repeats = WORKLOAD.generate_repeats if name in ("ttft_ms", "generate_ms") else WORKLOAD.repeats
            assert stats.n == rounds * repeats
            assert stats.ci_low_ms <= stats.median_ms <= stats.ci_high_ms, (name, stats)
        assert result.tokens_per_s == pytest.approx(
            WORKLOAD.new_tokens / (result.stats()["generate_ms"].median_ms / 1e3))


def test_round_orders_are_seeded_permutations():
    keys = list(range(6))
    orders = round_orders(keys, 5, seed=1)
    assert all(sorted(order) == keys for order in orders) and len({tuple(o) for o in orders}) > 1
    assert orders == round_orders(keys, 5, seed=1) != round_orders(keys, 5, seed=2)


def test_bootstrap_interval_is_of_the_median_of_round_medians():
    rng = np.random.default_rng(0)
    samples = 1.0 + rng.normal(0, 0.05, size=(8, 10)) + np.linspace(0, 0.2, 8)[:, None]  # drift
    stats = summarize(samples, bootstrap=2000, seed=0)
    assert stats == dataclasses.replace(summarize(samples), ci_low_ms=stats.ci_low_ms,
                                        ci_high_ms=stats.ci_high_ms)
    medians = np.median(samples, axis=1)
    assert medians.min() <= stats.ci_low_ms < stats.median_ms < stats.ci_high_ms <= medians.max()
    assert summarize(samples, bootstrap=2000, seed=0) == stats  # seeded
    flat = summarize(np.ones((5, 4)), bootstrap=100)
    assert flat.ci_low_ms == flat.median_ms == flat.ci_high_ms == 1.0
    assert summarize(samples).ci_low_ms is None
