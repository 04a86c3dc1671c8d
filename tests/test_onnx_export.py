"""ONNX export: checker, parity with PyTorch for every attention kind and sharing mode, dynamic
shapes, de-duplicated initializers, and parity failures that raise instead of passing silently."""

from __future__ import annotations

import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

import nas.onnx_export as onnx_export
from nas.architecture import Architecture
from nas.errors import ExportError
from nas.model import NasLM, build_model
from nas.onnx_export import PARITY_RTOL, export_onnx
from nas.onnx_io import DIM_NAMES, graph_metadata, make_feeds, session_feeds
from tests.tiny_models import KINDS, SHARINGS, one_thread, tiny  # noqa: F401 - fixture


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Export each architecture once per module: (arch) -> (model, graphs)."""
    done: dict[Architecture, tuple[NasLM, onnx_export.OnnxGraphs]] = {}

    def get(arch: Architecture):
        if arch not in done:
            model = build_model(arch, seed=1)
            done[arch] = model, export_onnx(model, arch, tmp_path_factory.mktemp("onnx"))
        return done[arch]

    return get


def session(path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def assert_close(got: np.ndarray, want: torch.Tensor) -> None:
    want = want.numpy()
    assert got.shape == want.shape
    assert np.abs(got - want).max() <= PARITY_RTOL * max(1.0, np.abs(want).max())


# ----- parity and structure ------------------------------------------------------------------
@pytest.mark.parametrize("sharing", SHARINGS)
@pytest.mark.parametrize("kind", KINDS)
def test_parity_checker_and_unique_initializers(exported, kind, sharing):
    arch = tiny(kind, sharing, n_layer=4 if sharing == "repeat:2" else 2)
    model, graphs = exported(arch)
    assert set(graphs.max_abs_diff) == {"prefill", "decode", "decode_random_past"}
    assert all(0 <= d < 1e-4 for d in graphs.max_abs_diff.values())
    assert graphs.export_seconds > 0
    expected_names = {n for n, _ in model.named_parameters()}  # shared/tied weights listed once
    for path in (graphs.prefill, graphs.decode):
        proto = onnx.load(path)
        onnx.checker.check_model(proto)
        # Linear weights are stored transposed, as MatMul reads them, under `<name>.T`.
        names = [i.name.removesuffix(".T") for i in proto.graph.initializer]
        assert len(names) == len(set(names))
        assert set(names) == expected_names
        assert sum(int(np.prod(i.dims)) for i in proto.graph.initializer) == arch.n_params


@pytest.mark.parametrize("arch", [tiny(tie_embeddings=False, n_kv_head=1),
                                  tiny("linear", "all", n_layer=3, n_kv_head=4)],
                         ids=lambda a: a.describe())
def test_initializers_count_each_parameter_once(exported, arch):
    _, graphs = exported(arch)
    for path in (graphs.prefill, graphs.decode):
        proto = onnx.load(path)
        assert sum(int(np.prod(i.dims)) for i in proto.graph.initializer) == arch.n_params


@pytest.mark.parametrize("arch", [tiny("sliding_window"), tiny("linear", "all", tie_embeddings=False)],
                         ids=lambda a: a.describe())
def test_dynamic_int8_quantization_covers_every_matmul(exported, arch, tmp_path):
    """quantize_dynamic only quantizes a MatMul whose weight is an initializer: all must be."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    model, graphs = exported(arch)
    target = tmp_path / "decode.int8.onnx"
    quantize_dynamic(graphs.decode, target, weight_type=QuantType.QInt8)
    proto = onnx.load(target)
    float_matrices = [i.name for i in proto.graph.initializer
                      if i.data_type == onnx.TensorProto.FLOAT and len(i.dims) == 2]
    assert float_matrices == []
    ops = [n.op_type for n in proto.graph.node]
    assert ops.count("MatMulInteger") == 7 * arch.n_layer + 1  # q k v o gate up down, lm_head
    feeds = session_feeds(session(target), batch=2, seq=1, past=6)
    logits = session(target).run(None, feeds)[0]
    assert logits.shape == (2, 1, arch.vocab_size) and np.isfinite(logits).all()


@pytest.mark.parametrize("kind", KINDS)
def test_graph_io_contract(exported, kind):
    arch = tiny(kind)
    _, graphs = exported(arch)
    hd, kv = arch.head_dim, arch.n_kv_head
    parts = ("state", "norm") if kind == "linear" else ("key", "value")
    cache = [f"{i}.{p}" for i in range(arch.n_layer) for p in parts]
    pre, dec = session(graphs.prefill), session(graphs.decode)
    assert [(i.name, i.shape) for i in pre.get_inputs()] == [("input_ids", ["batch", "seq"])]
    assert [o.name for o in pre.get_outputs()] == ["logits", *(f"present.{c}" for c in cache)]
    assert pre.get_outputs()[0].shape == ["batch", "seq", arch.vocab_size]
    dec_inputs = {i.name: i.shape for i in dec.get_inputs()}
    assert list(dec_inputs) == ["input_ids", "position_ids", *(f"past.{c}" for c in cache)]
    assert dec_inputs["input_ids"] == dec_inputs["position_ids"] == ["batch", 1]
    if kind == "linear":
        assert dec_inputs["past.0.state"] == ["batch", kv, hd, hd]
        assert dec_inputs["past.0.norm"] == ["batch", kv, hd]
    else:
        assert dec_inputs["past.0.key"] == dec_inputs["past.0.value"] == ["batch", kv, "past", hd]
    assert [o.name for o in dec.get_outputs()] == [o.name for o in pre.get_outputs()]
    assert graph_metadata(dec) == {"graph": "decode", "architecture": arch.to_dict()}
    assert graph_metadata(pre)["graph"] == "prefill"


@pytest.mark.parametrize("kind", KINDS)
def test_dynamic_batch_sequence_and_past(exported, kind):
    arch = tiny(kind)
    model, graphs = exported(arch)
    pre, dec = session(graphs.prefill), session(graphs.decode)
    names = model.cache_names()
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        # seq 0 decodes from an empty cache; 5 and 11 exceed the window, so caches are trimmed.
        for batch, seq in ((2, 0), (1, 1), (1, 5), (3, 11)):
            ids = torch.randint(0, arch.vocab_size, (batch, seq + 1), generator=g)
            if seq:
                logits, cache = model.prefill(ids[:, :seq])
                got = pre.run(None, {"input_ids": ids[:, :seq].numpy()})
                for out, want in zip(got, (logits, *cache)):
                    assert_close(out, want)
            else:
                cache = model.empty_cache(batch)
            position = torch.full((batch, 1), seq)
            want_logits, want_cache = model.decode_step(ids[:, seq:], position, cache)
            feeds = {"input_ids": ids[:, seq:].numpy(), "position_ids": position.numpy()}
            feeds.update({f"past.{n}": t.numpy() for n, t in zip(names, cache)})
            for out, want in zip(dec.run(None, feeds), (want_logits, *want_cache)):
                assert_close(out, want)


# ----- failures are errors, not numbers --------------------------------------------------------
def test_broken_parity_raises_naming_graph_output_and_diff(monkeypatch, tmp_path):
    arch = tiny()
    real_run = onnx_export._run

    def perturbed(session, feeds):
        outputs = real_run(session, feeds)
        return [outputs[0] + 1e-2, *outputs[1:]]

    monkeypatch.setattr(onnx_export, "_run", perturbed)
    with pytest.raises(ExportError, match=r"prefill graph: output logits differs from PyTorch: "
                                          r"max \|onnx - torch\| = 0\.01 > tolerance 0\.0001"):
        export_onnx(build_model(arch), arch, tmp_path)


def test_broken_decode_cache_is_caught(monkeypatch, tmp_path):
    arch = tiny("sliding_window")
    real_run = onnx_export._run

    def perturbed(session, feeds):
        outputs = real_run(session, feeds)
        if "position_ids" in feeds:
            outputs[-1] = outputs[-1] * 1.5
        return outputs

    monkeypatch.setattr(onnx_export, "_run", perturbed)
    with pytest.raises(ExportError, match=r"decode graph: output present\.1\.value differs"):
        export_onnx(build_model(arch), arch, tmp_path)


def test_exporter_failure_is_an_export_error(monkeypatch, tmp_path):
    def boom(*args, **kwargs):
        raise RuntimeError("unsupported operator")

    monkeypatch.setattr(torch.onnx, "export", boom)
    with pytest.raises(ExportError, match="prefill graph: torch.onnx.export failed: RuntimeError"):
        export_onnx(build_model(tiny()), tiny(), tmp_path)


def test_architecture_mismatch_is_refused(tmp_path):
    with pytest.raises(ExportError, match="model was built for"):
        export_onnx(build_model(tiny()), tiny(n_layer=4), tmp_path)


def test_export_restores_training_mode_and_threads(tmp_path):
    model = build_model(tiny("linear")).train()
    threads = torch.get_num_threads()
    graphs = export_onnx(model, model.arch, tmp_path, check=False)
    assert model.training and torch.get_num_threads() == threads
    assert graphs.max_abs_diff == {} and graphs.prefill.exists() and graphs.decode.exists()


def test_a_float64_model_is_exported_from_a_float32_copy(tmp_path):
    arch = tiny(sharing="all")
    model = build_model(arch).double()
    graphs = export_onnx(model, arch, tmp_path)
    assert model.embed_tokens.weight.dtype == torch.float64  # the caller's model is untouched
    proto = onnx.load(graphs.decode)  # the copy kept the tie and the sharing
    assert sum(int(np.prod(i.dims)) for i in proto.graph.initializer) == arch.n_params
    assert {i.data_type for i in proto.graph.initializer} == {onnx.TensorProto.FLOAT}


# ----- onnx_io -------------------------------------------------------------------------------
def arg(name: str, shape: list, type_: str = "tensor(float)") -> SimpleNamespace:
    return SimpleNamespace(name=name, shape=shape, type=type_)


def test_make_feeds_resolves_symbolic_dims():
    inputs = [arg("input_ids", ["batch", 1], "tensor(int64)"),
              arg("position_ids", ["batch", 1], "tensor(int64)"),
              arg("past.0.key", ["batch", 2, "past", 8]), arg("past.0.state", ["batch", 2, 8, 8])]
    feeds = make_feeds(inputs, batch=3, seq=1, past=40, vocab_size=50, seed=0, max_past=16)
    assert feeds["input_ids"].dtype == np.int64 and feeds["input_ids"].shape == (3, 1)
    assert feeds["input_ids"].min() >= 0 and feeds["input_ids"].max() < 50
    assert (feeds["position_ids"] == 40).all()
    assert feeds["past.0.key"].shape == (3, 2, 16, 8) and feeds["past.0.key"].dtype == np.float32
    assert feeds["past.0.state"].shape == (3, 2, 8, 8)
    assert feeds["past.0.state"].min() >= 0 and feeds["past.0.state"].max() < 0.1
    again = make_feeds(inputs, batch=3, seq=1, past=40, vocab_size=50, seed=0, max_past=16)
    assert all(np.array_equal(feeds[k], again[k]) for k in feeds)
    prefill = make_feeds([arg("input_ids", ["batch", "seq"], "tensor(int64)")], batch=2, seq=7, past=0)
    assert prefill["input_ids"].shape == (2, 7) and not prefill["input_ids"].any()


def test_make_feeds_rejects_unknown_dims():
    with pytest.raises(ValueError, match=r"dim 'tokens'; expected an integer or one of batch, seq, past"):
        make_feeds([arg("x", ["batch", "tokens"])], batch=1, seq=1, past=0)
    assert DIM_NAMES == ("batch", "seq", "past")


def test_session_feeds_uses_graph_metadata(exported):
    arch = tiny("sliding_window", window=4, vocab_size=40)
    _, graphs = exported(arch)
    dec = session(graphs.decode)
    feeds = session_feeds(dec, batch=2, seq=1, past=100)
    assert feeds["past.0.key"].shape == (2, arch.n_kv_head, 4, arch.head_dim)
    assert (feeds["position_ids"] == 100).all()
    logits = dec.run(None, feeds)[0]
    assert logits.shape == (2, 1, 40) and np.isfinite(logits).all()
    pre = session(graphs.prefill)
    assert pre.run(None, session_feeds(pre, batch=1, seq=9, past=0))[0].shape == (1, 9, 40)


def test_onnx_io_does_not_import_torch():
    code = "import sys, nas.onnx_io; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
