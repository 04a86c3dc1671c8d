"""Inputs for our ONNX graphs, built from their declared shapes (numpy only: no torch import).

Graph I/O contract (written by `nas.onnx_export`):

* prefill ``model.onnx``: ``input_ids`` int64 ``[batch, seq]`` -> ``logits`` ``[batch, seq, V]``
  and ``present.{i}.key``/``.value`` (softmax, sliding window) or ``.state``/``.norm`` (linear).
* decode ``decode.onnx``: ``input_ids`` ``[batch, 1]``, ``position_ids`` ``[batch, 1]`` (absolute
  position of the new token) and ``past.{i}.*`` -> ``logits`` ``[batch, 1, V]`` and ``present.{i}.*``.
  Key/value caches are ``[batch, n_kv_head, past, head_dim]`` (sliding window: ``past`` is at
  most the window); linear attention's state ``[batch, n_kv_head, head_dim, head_dim]`` and norm
  ``[batch, n_kv_head, head_dim]`` have no sequence dim.

Symbolic input dims have exactly these names (`DIM_NAMES`): ``batch``, ``seq`` and ``past``.
Outputs' sequence dims are labelled with expressions (``past + 1``, ``min(seq, 32)``) for reading.
The graphs also carry ``nas.architecture`` (JSON) and ``nas.graph`` (``prefill``/``decode``) as
ONNX metadata, so `session_feeds` can pick a valid vocabulary range and the sliding window length
without being told.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

DIM_NAMES: tuple[str, ...] = ("batch", "seq", "past")
METADATA_ARCHITECTURE = "nas.architecture"
METADATA_GRAPH = "nas.graph"

_DTYPES: dict[str, type[np.generic]] = {
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
}


@dataclass(frozen=True)
class OnnxGraphs:
    """What `nas.onnx_export.export_onnx` wrote (defined here so ONNX Runtime-only code, such as
    latency measurement, can use it without importing torch)."""

    prefill: Path  # model.onnx
    decode: Path  # decode.onnx
    max_abs_diff: dict[str, float]  # parity vs PyTorch per check ("prefill", "decode", ...); {} if unchecked
    export_seconds: float  # export + checker + parity


class InputLike(Protocol):
    """What `onnxruntime.InferenceSession.get_inputs()` returns per input (a NodeArg)."""

    name: str
    shape: Sequence[int | str | None]
    type: str


def make_feeds(inputs: Iterable[InputLike], batch: int, seq: int, past: int,
               vocab_size: int | None = None, seed: int = 0,
               max_past: int | None = None) -> dict[str, np.ndarray]:
    """One array per declared input, deterministic for a given ``seed``.

    ``input_ids`` get token ids in ``[0, vocab_size)`` (all 0 when ``vocab_size`` is None, the
    only id valid for every vocabulary); ``position_ids`` are all ``past`` (the new token follows
    ``past`` cached ones); caches get small positive floats in ``[0, 0.1)`` (positive so linear
    attention's normaliser stays away from zero). Symbolic dims resolve ``batch`` -> batch,
    ``seq`` -> seq, ``past`` -> ``min(past, max_past)``: a sliding-window cache never holds more
    than the window, while the position still says ``past``.
    """
    rng = np.random.default_rng(seed)
    kept = past if max_past is None else min(past, max_past)
    sizes = {"batch": batch, "seq": seq, "past": kept}
    feeds: dict[str, np.ndarray] = {}
    for arg in inputs:
        dtype = _DTYPES.get(arg.type)
        if dtype is None:
            raise ValueError(f"input {arg.name!r} has unsupported type {arg.type}")
        shape = tuple(_resolve(arg.name, dim, sizes) for dim in arg.shape)
        if arg.name == "input_ids":
            feeds[arg.name] = rng.integers(0, vocab_size or 1, size=shape).astype(dtype)
        elif arg.name == "position_ids":
            feeds[arg.name] = np.full(shape, past, dtype=dtype)
        else:
            feeds[arg.name] = rng.uniform(0.0, 0.1, size=shape).astype(dtype)
    return feeds


def _resolve(name: str, dim: int | str | None, sizes: Mapping[str, int]) -> int:
    if isinstance(dim, int):
        return dim
    if dim in sizes:
        return sizes[dim]
    raise ValueError(f"input {name!r} has symbolic dim {dim!r}; expected an integer or one of "
                     f"{', '.join(DIM_NAMES)}")


def graph_metadata(session: Any) -> dict[str, Any]:
    """``{"graph": "prefill"|"decode"|None, "architecture": dict|None}`` from an ORT session."""
    meta = session.get_modelmeta().custom_metadata_map
    arch = meta.get(METADATA_ARCHITECTURE)
    return {"graph": meta.get(METADATA_GRAPH), "architecture": json.loads(arch) if arch else None}


def session_feeds(session: Any, batch: int, seq: int, past: int, seed: int = 0) -> dict[str, np.ndarray]:
    """`make_feeds` for an ONNX Runtime session of one of our graphs, using its metadata for the
    vocabulary size and, for sliding-window attention, the window that bounds the cache."""
    arch = graph_metadata(session)["architecture"] or {}
    window = arch.get("window") if arch.get("attention") == "sliding_window" else None
    return make_feeds(session.get_inputs(), batch, seq, past, vocab_size=arch.get("vocab_size"),
                      seed=seed, max_past=window)
