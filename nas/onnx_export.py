"""Export a `NasLM` to two ONNX graphs (prefill and decode step) and prove they match PyTorch.

Graph I/O names and symbolic dims are documented in `nas.onnx_io` (``batch``, ``seq``, ``past``).

Exporter choice: the TorchScript exporter, because a search exports every candidate and it is
more than an order of magnitude faster than the dynamo (``torch.export``) exporter at these
sizes, with the same parity and graphs that run within ~10% of the dynamo ones in ONNX Runtime
(more shape-arithmetic nodes, same math; numbers in BENCHMARKS.md, "Measurements behind design
choices"). It is deprecated but still shipped in torch 2.13, and the project pins
``torch<2.14``. `EXPORTER` names the one in use.

TorchScript specifics handled after export (`_finish`):

* constant folding is off, because it would store a transposed copy of every ``Linear`` weight
  under a generated name and, with tied embeddings, the embedding twice. Instead `_finish`
  stores each weight once, transposed to the (in, out) layout MatMul reads, as ``<name>.T``
  (`_pretranspose_weights`): names still map to ``state_dict`` and dynamic int8 quantization,
  which only quantizes MatMuls whose weight is an initializer, covers every matmul;
* the exporter merges *distinct* parameters with equal values (e.g. all-ones norm weights of an
  untrained model) into one initializer plus ``Identity`` nodes; those are re-materialised so the
  initializers are exactly the unique parameters: their sizes sum to ``arch.n_params``;
* linear attention does not read ``position_ids``; the tracer drops unused inputs, so it is added
  back and both graph families have the same inputs;
* input/output shapes are rewritten from the architecture (clean symbolic names, static dims).

Parity tolerance: for every output, ``max|ort - torch| <= PARITY_RTOL * max(1, max|torch|)``
(1e-4 relative to the output's scale, far above the fp32 kernels' own differences). A mismatch,
shape difference or non-finite value raises `ExportError` naming the graph, output and diff.
"""

from __future__ import annotations

import copy
import io
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import Tensor, nn

from nas.architecture import Architecture
from nas.errors import ExportError
from nas.model import NasLM
from nas.onnx_io import METADATA_ARCHITECTURE, METADATA_GRAPH, OnnxGraphs, make_feeds

if TYPE_CHECKING:
    import onnxruntime as ort  # imported where sessions are made: not needed to export

__all__ = ["DEFAULT_OPSET", "EXPORTER", "OnnxGraphs", "PARITY_RTOL", "export_onnx"]

EXPORTER = "torchscript"
DEFAULT_OPSET = 18
PARITY_RTOL = 1e-4
PREFILL_FILE = "model.onnx"
DECODE_FILE = "decode.onnx"
_PREFIX = "model."  # the wrappers below hold the model as `self.model`


class _Prefill(nn.Module):
    def __init__(self, model: NasLM) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: Tensor) -> tuple[Tensor, ...]:
        logits, cache = self.model.prefill(input_ids)
        return (logits, *cache)


class _Decode(nn.Module):
    def __init__(self, model: NasLM) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: Tensor, position_ids: Tensor, *past: Tensor) -> tuple[Tensor, ...]:
        logits, cache = self.model.decode_step(input_ids, position_ids, past)
        return (logits, *cache)


def export_onnx(model: NasLM, arch: Architecture, out_dir: Path, check: bool = True,
                opset: int | None = None) -> OnnxGraphs:
    """Write ``model.onnx`` (prefill) and ``decode.onnx`` to ``out_dir``.

    With ``check`` (the default) the graphs pass ``onnx.checker`` and match PyTorch in ONNX
    Runtime on a prefill, a decode after that prefill (non-empty past) and a decode from a random
    past at another batch size; otherwise `ExportError` is raised. The model is not modified.
    """
    start = time.perf_counter()
    if model.arch != arch:
        raise ExportError(f"model was built for {model.arch.describe()}, not {arch.describe()}")
    weight = model.embed_tokens.weight
    if weight.device.type != "cpu" or weight.dtype != torch.float32:
        model = copy.deepcopy(model).to("cpu", torch.float32)  # deepcopy keeps ties and sharing
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = out_dir / PREFILL_FILE, out_dir / DECODE_FILE
    for path in paths:  # a failed export must not leave an earlier graph looking current
        path.unlink(missing_ok=True)
    opset = opset or DEFAULT_OPSET
    names = model.cache_names()
    was_training = model.training
    # Tiny matmuls gain nothing from a second thread, and on a shared 2-core machine OpenMP's
    # second thread waits for a busy core (several times slower; BENCHMARKS.md).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    model.eval()
    try:
        with torch.no_grad():
            # batch 2 and 3 past tokens: no size 0 or 1 the tracer could mistake for a constant.
            ids = torch.randint(0, arch.vocab_size, (2, 3), generator=torch.Generator().manual_seed(0))
            _, cache = model.prefill(ids)
            outputs = ["logits", *(f"present.{n}" for n in names)]
            prefill = _export(_Prefill(model), (ids,), ["input_ids"], outputs, opset, "prefill")
            decode = _export(_Decode(model), (ids[:, :1], torch.full((2, 1), 3), *cache),
                             ["input_ids", "position_ids", *(f"past.{n}" for n in names)], outputs,
                             opset, "decode")
        prefill = _finish(prefill, arch, "prefill", names)
        decode = _finish(decode, arch, "decode", names)
        if check:
            for graph, proto in (("prefill", prefill), ("decode", decode)):
                try:
                    onnx.checker.check_model(proto)
                except onnx.checker.ValidationError as err:
                    raise ExportError(f"{graph} graph fails onnx.checker: {err}") from err
        diffs = _parity(model, arch, prefill, decode) if check else {}
        # Written only once checked: a failed export leaves no graph that looks usable.
        onnx.save(prefill, paths[0])
        onnx.save(decode, paths[1])
    finally:
        model.train(was_training)
        torch.set_num_threads(threads)
    return OnnxGraphs(prefill=paths[0], decode=paths[1], max_abs_diff=diffs,
                      export_seconds=time.perf_counter() - start)


def _export(module: nn.Module, args: tuple[Tensor, ...], input_names: list[str],
            output_names: list[str], opset: int, graph: str) -> onnx.ModelProto:
    buffer = io.BytesIO()
    dynamic_axes = {name: {0: "batch"} for name in input_names}
    if graph == "prefill":
        dynamic_axes["input_ids"] = {0: "batch", 1: "seq"}
    for name, arg in zip(input_names, args):
        if name.endswith((".key", ".value")) and arg.dim() == 4:
            dynamic_axes[name] = {0: "batch", 2: "past"}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the legacy exporter's deprecation and tracer warnings
            torch.onnx.export(module, args, buffer, dynamo=False, opset_version=opset,
                              input_names=input_names, output_names=output_names,
                              dynamic_axes=dynamic_axes, do_constant_folding=False)
    except Exception as err:  # the exporter raises many types; all mean "could not export"
        raise ExportError(f"{graph} graph: torch.onnx.export failed: {type(err).__name__}: {err}") from err
    return onnx.load_model_from_string(buffer.getvalue())


def _io_shapes(arch: Architecture, graph: str, names: Sequence[str]
               ) -> tuple[list[tuple[str, int, list]], list[tuple[str, int, list]]]:
    """(name, element type, dims) of every input and output, in order."""
    i64, f32 = TensorProto.INT64, TensorProto.FLOAT
    kv, hd = arch.n_kv_head, arch.head_dim
    new = "seq" if graph == "prefill" else 1
    if arch.attention == "linear":
        cache_dims = {"state": ["batch", kv, hd, hd], "norm": ["batch", kv, hd]}
        past_dims, present_dims = cache_dims, cache_dims
    else:
        length = "seq" if graph == "prefill" else "past + 1"
        if arch.attention == "sliding_window":
            length = f"min({length}, {arch.window})"
        past_dims = {p: ["batch", kv, "past", hd] for p in ("key", "value")}
        present_dims = {p: ["batch", kv, length, hd] for p in ("key", "value")}
    outputs = [("logits", f32, ["batch", new, arch.vocab_size])]
    outputs += [(f"present.{n}", f32, present_dims[n.split(".")[1]]) for n in names]
    if graph == "prefill":
        return [("input_ids", i64, ["batch", "seq"])], outputs
    inputs = [("input_ids", i64, ["batch", 1]), ("position_ids", i64, ["batch", 1])]
    inputs += [(f"past.{n}", f32, past_dims[n.split(".")[1]]) for n in names]
    return inputs, outputs


def _finish(proto: onnx.ModelProto, arch: Architecture, graph: str, names: Sequence[str]) -> onnx.ModelProto:
    """Undo the TorchScript exporter's quirks (see the module docstring) and label the graph."""
    g = proto.graph
    # Parameter names as in state_dict: drop the wrapper's prefix everywhere a name appears.
    rename = {i.name: i.name[len(_PREFIX):] for i in g.initializer if i.name.startswith(_PREFIX)}
    rename.update({o: o[len(_PREFIX):] for n in g.node if n.op_type == "Identity"
                   for o in n.output if o.startswith(_PREFIX)})
    for init in g.initializer:
        init.name = rename.get(init.name, init.name)
    for node in g.node:
        node.input[:] = [rename.get(x, x) for x in node.input]
        node.output[:] = [rename.get(x, x) for x in node.output]
    # Identity(initializer) -> a parameter of its own: equal values, distinct parameters.
    initializers = {i.name: i for i in g.initializer}
    merged = set(rename.values()) - set(initializers)  # renamed Identity outputs
    kept = []
    for node in g.node:
        if node.op_type == "Identity" and node.input[0] in initializers and node.output[0] in merged:
            copy_ = TensorProto()
            copy_.CopyFrom(initializers[node.input[0]])
            copy_.name = node.output[0]
            g.initializer.append(copy_)
        else:
            kept.append(node)
    del g.node[:]
    g.node.extend(kept)
    _pretranspose_weights(g)
    # Declared I/O (adds linear attention's unused position_ids back).
    inputs, outputs = _io_shapes(arch, graph, names)
    del g.input[:]
    g.input.extend(helper.make_tensor_value_info(n, t, d) for n, t, d in inputs)
    del g.output[:]
    g.output.extend(helper.make_tensor_value_info(n, t, d) for n, t, d in outputs)
    helper.set_model_props(proto, {METADATA_ARCHITECTURE: arch.to_json(), METADATA_GRAPH: graph})
    return proto


def _pretranspose_weights(g: onnx.GraphProto) -> None:
    """Store each ``Linear`` weight W as ``<name>.T`` = W^T (in, out), the layout MatMul reads.

    The exporter writes ``MatMul(x, Transpose(W))``. ONNX Runtime folds that when it loads the
    graph, but ``onnxruntime.quantization.quantize_dynamic`` only quantizes a MatMul whose weight
    is an initializer: without this the int8 graphs silently keep every matmul in fp32. A tied
    embedding E stays one tensor, E^T: the lookup becomes ``Transpose(Gather(E^T, ids, axis=1))``.
    A weight used any other way is left as it is.
    """
    initializers = {i.name: i for i in g.initializer}
    ranks = {i.name: len(i.type.tensor_type.shape.dim) for i in g.input}
    uses: dict[str, list[onnx.NodeProto]] = {}
    for node in g.node:
        for name in node.input:
            if name in initializers:
                uses.setdefault(name, []).append(node)

    def is_transpose(node: onnx.NodeProto) -> bool:
        perm = [list(a.ints) for a in node.attribute if a.name == "perm"]
        return node.op_type == "Transpose" and perm == [[1, 0]]

    def is_lookup(node: onnx.NodeProto) -> bool:
        axis = [a.i for a in node.attribute if a.name == "axis"]
        return (node.op_type == "Gather" and node.input[0] != node.input[1] and axis in ([], [0])
                and ranks.get(node.input[1], 0) > 0)

    rename: dict[str, str] = {}
    dropped: set[int] = set()
    lookups: dict[int, str] = {}  # id(Gather node) -> the transposed table it now reads
    for name, nodes in uses.items():
        if len(initializers[name].dims) != 2 or not any(map(is_transpose, nodes)):
            continue
        if not all(is_transpose(n) or is_lookup(n) for n in nodes):
            continue
        weight = initializers[name]
        transposed = numpy_helper.from_array(np.ascontiguousarray(numpy_helper.to_array(weight).T),
                                             f"{name}.T")
        g.initializer.remove(weight)
        g.initializer.append(transposed)
        for node in nodes:
            if is_transpose(node):
                rename[node.output[0]] = transposed.name
                dropped.add(id(node))
            else:
                lookups[id(node)] = transposed.name
    nodes = []
    for node in g.node:
        if id(node) in dropped:
            continue
        node.input[:] = [rename.get(x, x) for x in node.input]
        if id(node) in lookups:
            out, rank = node.output[0], ranks[node.input[1]]
            gather = helper.make_node("Gather", [lookups[id(node)], node.input[1]], [f"{out}.T"],
                                      name=f"{node.name}.T", axis=1)  # (d, *ids.shape)
            nodes += [gather, helper.make_node("Transpose", [f"{out}.T"], [out], name=f"{node.name}.T_back",
                                               perm=[*range(1, rank + 1), 0])]  # (*ids.shape, d)
        else:
            nodes.append(node)
    del g.node[:]
    g.node.extend(nodes)


# ----- parity ---------------------------------------------------------------------------
def _session(proto: onnx.ModelProto, graph: str) -> ort.InferenceSession:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only
    try:
        return ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
    except Exception as err:  # onnxruntime raises its own exception types
        raise ExportError(f"{graph} graph: ONNX Runtime cannot load it: {err}") from err


def _run(session: ort.InferenceSession, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """One ONNX Runtime call (a seam for tests that perturb outputs)."""
    return session.run(None, feeds)


def _run_checked(graph: str, session: ort.InferenceSession,
                 feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    try:
        return _run(session, feeds)
    except Exception as err:
        shapes = ", ".join(f"{k}{list(v.shape)}" for k, v in feeds.items())
        raise ExportError(f"{graph} graph: ONNX Runtime failed on inputs {shapes}: {err}") from err


def _compare(graph: str, output_names: Sequence[str], got: Sequence[np.ndarray],
             want: Sequence[Tensor]) -> float:
    worst = 0.0
    for name, g, w in zip(output_names, got, want, strict=True):
        w = w.detach().numpy()
        if g.shape != w.shape:
            raise ExportError(f"{graph} graph: output {name} has shape {g.shape}, PyTorch gives {w.shape}")
        if not np.isfinite(w).all():
            raise ExportError(f"{graph} graph: PyTorch's {name} is not finite, so parity cannot be "
                              "checked (diverged weights? latency needs only the shape: export a "
                              "freshly built model)")
        if not np.isfinite(g).all():
            raise ExportError(f"{graph} graph: output {name} has non-finite values (PyTorch's are finite)")
        diff = float(np.abs(g - w).max()) if g.size else 0.0
        tol = PARITY_RTOL * max(1.0, float(np.abs(w).max()) if w.size else 0.0)
        if not diff <= tol:
            raise ExportError(f"{graph} graph: output {name} differs from PyTorch: "
                              f"max |onnx - torch| = {diff:.3g} > tolerance {tol:.3g}")
        worst = max(worst, diff)
    return worst


def _parity(model: NasLM, arch: Architecture, prefill: onnx.ModelProto,
            decode: onnx.ModelProto) -> dict[str, float]:
    """Prefill; decode after it (non-empty past); decode from a random past at another batch."""
    pre, dec = _session(prefill, "prefill"), _session(decode, "decode")
    out_names = [o.name for o in pre.get_outputs()]
    # Longer than the window, so the graphs must drop old positions exactly as PyTorch does.
    seq = min(arch.window + 2, 512) if arch.attention == "sliding_window" else 8
    feeds = make_feeds(pre.get_inputs(), batch=2, seq=seq + 1, past=0, vocab_size=arch.vocab_size, seed=1)
    ids = torch.from_numpy(feeds["input_ids"])
    diffs: dict[str, float] = {}
    with torch.no_grad():
        logits, cache = model.prefill(ids[:, :seq])
        got = _run_checked("prefill", pre, {"input_ids": feeds["input_ids"][:, :seq]})
        diffs["prefill"] = _compare("prefill", out_names, got, (logits, *cache))

        position = torch.full((2, 1), seq)
        want_logits, want_cache = model.decode_step(ids[:, seq:], position, cache)
        step = {"input_ids": feeds["input_ids"][:, seq:], "position_ids": position.numpy()}
        step.update({f"past.{n}": t.numpy() for n, t in zip(model.cache_names(), cache)})
        got = _run_checked("decode", dec, step)
        diffs["decode"] = _compare("decode", out_names, got, (want_logits, *want_cache))

        window = arch.window if arch.attention == "sliding_window" else None
        step = make_feeds(dec.get_inputs(), batch=3, seq=1, past=5, vocab_size=arch.vocab_size,
                          seed=2, max_past=window)
        past = tuple(torch.from_numpy(step[f"past.{n}"]) for n in model.cache_names())
        want_logits, want_cache = model.decode_step(torch.from_numpy(step["input_ids"]),
                                                    torch.from_numpy(step["position_ids"]), past)
        got = _run_checked("decode", dec, step)
        diffs["decode_random_past"] = _compare("decode", out_names, got, (want_logits, *want_cache))
    return diffs
