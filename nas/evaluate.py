"""Evaluate one candidate: proxy-train, export to ONNX, measure latency per profile.

A search evaluates shape first (`export_shape`: the untrained model's ONNX graphs, which
`measure_profile` times), because latency depends on shape, not weights; only a candidate
that meets every constraint needing no training is then trained (`train_and_export` with
``export=False``). `evaluate` (``nas evaluate``) trains, exports and times in one process.

These are the bodies of the Ray tasks, kept as plain functions of plain values so
they run the same in a worker on another node, in a test, or in `nas evaluate`.
Training and timing are separate steps so the driver can run them on different
cores (see `nas.affinity`) or on different nodes (profiles with a `ray_resource`).
Workers never open the database: they return bytes and records to the driver.
"""

from __future__ import annotations

import dataclasses
import socket
import tempfile
import time
import traceback
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from nas.architecture import Architecture, static_metrics
from nas.hardware import HardwareProfile
from nas.results import CandidateResult, ProfileLatency, ProxyResult, RungLoss
from nas.specs import ProxyBudget

if TYPE_CHECKING:
    from nas.data import TokenData
    from nas.gpu_share import GpuShare
    from nas.parent import ParentRef


@dataclass(frozen=True)
class ShapeOutput:
    """The shape step's graphs: the untrained (seeded) model exported and parity-checked."""

    prefill_onnx: bytes | None = None
    decode_onnx: bytes | None = None
    timings: dict[str, float] = dataclasses.field(default_factory=dict)  # seconds: export
    node: str = ""
    error: str = ""

    @property
    def ok(self) -> bool:
        return not self.error


@dataclass(frozen=True)
class TrainOutput:
    """What the training step hands to the timing step and to the driver."""

    proxy: ProxyResult | None
    prefill_onnx: bytes | None = None
    decode_onnx: bytes | None = None
    weights: bytes | None = None
    timings: dict[str, float] = dataclasses.field(default_factory=dict)
    node: str = ""
    error: str = ""
    checkpoint: bytes | None = None  # training stopped at a rung: what the next one resumes

    @property
    def ok(self) -> bool:
        return not self.error


# How allocators say they ran out: Python, PyTorch's CPU allocator, CUDA.
_OOM_MARKERS = ("can't allocate memory", "not enough memory", "out of memory")


def describe_exception(err: BaseException) -> str:
    """One line a user can act on, plus where it happened for unexpected errors.

    Running out of memory is named as such ("out of memory: ..."): it is a property of the
    candidate (too big for the worker), not a bug, and users filter failures by it.
    """
    from nas.errors import NasError

    text = f"{type(err).__name__}: {err}"
    if isinstance(err, NasError):
        return str(err)
    frames = traceback.extract_tb(err.__traceback__)
    if frames:
        last = frames[-1]
        text += f" (at {Path(last.filename).name}:{last.lineno})"
    if isinstance(err, MemoryError) or any(m in str(err).lower() for m in _OOM_MARKERS):
        text = f"out of memory: {text}"
    return text


def export_shape(arch: Architecture, *, seed: int = 0, threads: int | None = None,
                 cores: Sequence[int] | None = None) -> ShapeOutput:
    """The shape step: build ``arch`` untrained (seeded) and export both ONNX graphs,
    parity-checked, for timing. Never raises; ``cores`` as in `train_and_export`."""
    from nas.affinity import pinned

    started = time.perf_counter()
    node = socket.gethostname()
    try:
        with pinned(cores):
            from nas.model import build_model
            from nas.onnx_export import export_onnx
            from nas.proxy import cpu_threads, default_threads

            with cpu_threads(threads or default_threads()), \
                    tempfile.TemporaryDirectory(prefix="nas-onnx-") as tmp:
                graphs = export_onnx(build_model(arch, seed=seed).eval(), arch, Path(tmp))
                prefill, decode = graphs.prefill.read_bytes(), graphs.decode.read_bytes()
        return ShapeOutput(prefill, decode, timings={"export": time.perf_counter() - started}, node=node)
    except (Exception, MemoryError) as err:  # noqa: BLE001 - a failed candidate must not stop the search
        return ShapeOutput(timings={"export": time.perf_counter() - started}, node=node,
                           error=describe_exception(err))


def train_and_export(arch: Architecture, budget: ProxyBudget, data: TokenData, *, seed: int = 0,
                     threads: int | None = None, cores: Sequence[int] | None = None,
                     progress: Callable[[int, int, float], None] | None = None,
                     export: bool = True, stop_at: int | None = None,
                     resume: bytes | None = None, parent: ParentRef | None = None,
                     gpu_share: GpuShare | None = None) -> TrainOutput:
    """Proxy-train ``arch`` and export both ONNX graphs (parity-checked). Never raises.

    ``cores``: pin every thread there for this call only. The previous affinity is restored
    on return, so a Ray worker reused for a timing task does not time on training cores.
    ``export=False``: train only (the search timed the shape step's graphs already).
    ``stop_at``/``resume``: one rung of successive halving (`nas.proxy.train`); a run that
    stopped before the budget's end returns its checkpoint instead of weights.
    ``parent``: start from weights derived from the parent (`nas.derive`; the first rung only:
    later rungs resume their checkpoint) and distil from it at every rung.
    ``gpu_share``: the fraction of a GPU this task holds (`nas.gpu_share`): a candidate whose
    floor does not fit is refused before training, and the allocator is capped at the share.
    """
    from nas.affinity import pinned

    with pinned(cores):
        if gpu_share is not None:
            teacher_params = (parent.architecture.n_params
                              if parent is not None and parent.teacher_cache is None else 0)
            refusal = gpu_share.refusal(arch, budget, teacher_params=teacher_params)
            if refusal is not None:
                return TrainOutput(None, timings={"train": 0.0}, node=socket.gethostname(), error=refusal)
            gpu_share.apply()
        output = _train_and_export(arch, budget, data, seed=seed, threads=threads, progress=progress,
                                   export=export, stop_at=stop_at, resume=resume, parent=parent)
        if gpu_share is not None and output.error.startswith("out of memory"):
            output = dataclasses.replace(output, error=f"{gpu_share.describe_oom()}: {output.error}")
        return output


def _train_and_export(arch: Architecture, budget: ProxyBudget, data: TokenData, *, seed: int,
                      threads: int | None,
                      progress: Callable[[int, int, float], None] | None,
                      export: bool = True, stop_at: int | None = None,
                      resume: bytes | None = None, parent: ParentRef | None = None) -> TrainOutput:
    started = time.perf_counter()
    node = socket.gethostname()
    try:
        from nas.onnx_export import export_onnx
        from nas.proxy import train, weights_to_bytes

        start, distill = None, {}
        if parent is not None:
            from nas.parent import derived_start, teacher

            distill = teacher(parent)
            if resume is None:
                start, _derivation = derived_start(parent, arch)
        trained = train(arch, budget, data, seed=seed, threads=threads, progress=progress,
                        stop_at=stop_at, resume=resume, model=start, **distill)
        proxy = trained.result
        trained_at = time.perf_counter()
        if proxy.status == "diverged":
            return TrainOutput(proxy, timings={"train": trained_at - started}, node=node,
                               error=f"training diverged: {proxy.reason}" if proxy.reason
                               else "training diverged")
        if trained.checkpoint is not None:
            return TrainOutput(proxy=proxy, checkpoint=trained.checkpoint,
                               timings={"train": trained_at - started}, node=node)
        if not export:
            return TrainOutput(proxy=proxy, weights=weights_to_bytes(trained.model),
                               timings={"train": trained_at - started}, node=node)
        with tempfile.TemporaryDirectory(prefix="nas-onnx-") as tmp:
            graphs = export_onnx(trained.model, arch, Path(tmp))
            prefill, decode = graphs.prefill.read_bytes(), graphs.decode.read_bytes()
        exported_at = time.perf_counter()
        return TrainOutput(
            proxy=proxy, prefill_onnx=prefill, decode_onnx=decode,
            weights=weights_to_bytes(trained.model),
            timings={"train": trained_at - started, "export": exported_at - trained_at},
            node=node)
    except (Exception, MemoryError) as err:  # noqa: BLE001 - a failed candidate must not stop the search
        return TrainOutput(None, timings={"train": time.perf_counter() - started}, node=node,
                           error=describe_exception(err))


def measure_profile(prefill_onnx: bytes, decode_onnx: bytes, profile: HardwareProfile, *,
                    cores: Sequence[int] | None = None, node: str = "") -> ProfileLatency:
    """Time both graphs on one profile, pinned to ``cores``."""
    from nas.latency import GraphPair, measure

    with tempfile.TemporaryDirectory(prefix="nas-latency-") as tmp:
        graphs = GraphPair(Path(tmp, "model.onnx"), Path(tmp, "decode.onnx"))
        graphs.prefill.write_bytes(prefill_onnx)
        graphs.decode.write_bytes(decode_onnx)
        result = measure(graphs, profile, cpus=set(cores) if cores else None)
    return dataclasses.replace(result, node=node or result.node or socket.gethostname())


def assemble(arch: Architecture, train: TrainOutput, latencies: Sequence[ProfileLatency],
             measure_seconds: float = 0.0, shape: ShapeOutput | None = None) -> CandidateResult:
    """Combine the training and timing outputs (and the shape step's) into the stored record."""
    timings = {**(shape.timings if shape is not None else {}), **train.timings}
    timings["latency"] = measure_seconds
    timings["total"] = sum(timings.values())
    if not train.ok:
        return CandidateResult(arch, "failed", metrics=static_metrics(arch), proxy=train.proxy,
                               error=train.error, timings=timings, node=train.node)
    assert train.proxy is not None  # ok implies a proxy result
    metrics = shape_metrics(arch, latencies)
    metrics["val_loss"] = train.proxy.val_loss
    metrics["tokens_per_s"] = train.proxy.tokens_per_s
    if train.proxy.val_kl is not None:  # distilled from a parent: how far from it
        metrics["val_kl"] = train.proxy.val_kl
    return CandidateResult(arch, "complete", metrics=metrics, proxy=train.proxy,
                           latencies=tuple(latencies), timings=timings, weights=train.weights,
                           node=train.node)


def shape_metrics(arch: Architecture, latencies: Iterable[ProfileLatency]) -> dict[str, float]:
    """Every metric known before training: size from the shape, latency per profile."""
    metrics = static_metrics(arch)
    for latency in latencies:
        metrics.update(latency.metrics())
    return metrics


def pruned(arch: Architecture, train: TrainOutput, latencies: Sequence[ProfileLatency],
           timings: dict[str, float], rung: RungLoss, reason: str) -> CandidateResult:
    """The record of a candidate successive halving stopped at ``rung``: its shape metrics and
    latencies, the rung's proxy result (loss, curve) and why; no weights (`nas.search.rungs`)."""
    return CandidateResult(arch, "pruned", metrics=shape_metrics(arch, latencies), proxy=train.proxy,
                           latencies=tuple(latencies), error=reason, timings=timings, node=train.node,
                           rung=rung)


def infeasible(arch: Architecture, shape: ShapeOutput | None, latencies: Sequence[ProfileLatency],
               measure_seconds: float, violations: Sequence[str]) -> CandidateResult:
    """The record of a candidate whose shape step broke ``violations``: never trained, so it
    has its static metrics and latencies, no weights, proxy result or training time."""
    timings = dict(shape.timings) if shape is not None else {}
    timings["latency"] = measure_seconds
    timings["total"] = sum(timings.values())
    return CandidateResult(arch, "infeasible", metrics=shape_metrics(arch, latencies),
                           latencies=tuple(latencies),
                           error="violates " + "; ".join(violations), timings=timings,
                           node=shape.node if shape is not None else "")


def evaluate(arch: Architecture, budget: ProxyBudget, data: TokenData,
             profiles: Sequence[HardwareProfile], *,
             seed: int = 0, threads: int | None = None,
             progress: Callable[[int, int, float], None] | None = None) -> CandidateResult:
    """The whole evaluation in this process (``nas evaluate``): train, export, time."""
    trained = train_and_export(arch, budget, data, seed=seed, threads=threads, progress=progress)
    latencies: list[ProfileLatency] = []
    started = time.perf_counter()
    if trained.ok:
        assert trained.prefill_onnx is not None and trained.decode_onnx is not None
        try:
            for profile in profiles:
                latencies.append(measure_profile(trained.prefill_onnx, trained.decode_onnx, profile))
        except Exception as err:  # noqa: BLE001 - reported as a failed candidate
            trained = dataclasses.replace(trained, error=describe_exception(err))
    return assemble(arch, trained, latencies, time.perf_counter() - started)
