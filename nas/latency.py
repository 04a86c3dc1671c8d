"""Real inference latency of a candidate's ONNX graphs on one hardware profile.

`measure(graphs, profile, cpus=None) -> ProfileLatency` times the prefill graph (one forward of
``batch x prompt_len`` tokens) and the decode graph (one new token with ``past_len`` tokens
cached; a sliding window caches at most ``window``) and reports each as `LatencyStats` in ms.
It is pure apart from the int8 cache: latency caching by (architecture hash, profile hash) is
the driver's job, keyed by `HardwareProfile.hash`.

How a measurement is taken, and why (these machines drift, see DESIGN.md):

* Sessions: ``intra_op_num_threads`` = the profile's threads, ``inter_op_num_threads`` = 1,
  sequential execution, all graph optimisations; inputs bound once through IO binding, so a
  timed call is the graph run, not numpy conversion. Garbage collection is off while timing.
* ``cpus``: every thread of the process is restricted to those cores for the whole call
  (`nas.affinity.pinned`) and restored afterwards; within them the calling thread takes the
  first core and ONNX Runtime's pool threads one core each (``session.intra_op_thread_affinities``,
  whose processor ids start at 1). Verified by reading every thread's affinity in the tests.
* Rounds: each of ``rounds`` rounds times each graph in its own block: ``warmup`` untimed runs,
  then ``repeats`` back-to-back timed runs. Interleaving graphs run by run evicts each other's
  weights and times a slower decode than back-to-back decoding (the deployment case).
* Clock: with one thread, the thread's CPU time (the graph runs entirely on the calling thread,
  so this is what it would take on a core of its own; time spent preempted by other processes
  is not counted), which removes most of the across-process spread under load. With a pool,
  wall time.
* Preemption: a run during which any thread of this process was involuntarily switched out, or
  the run right after (its caches were evicted), is retried (`getrusage` ``ru_nivcsw``), at
  most ``repeats`` extra runs per block; then kept, so ``n`` is always ``rounds * repeats``.
* Statistics: ``median_ms`` is the median of the round medians (one disturbed round cannot move
  it); ``p90_ms`` is pooled over all kept runs; ``cv`` is robust, 1.4826 * MAD / median of the
  pooled runs (a classic SD is dominated by the rare 2-10x outlier runs a shared machine gives).
* int8: `onnxruntime.quantization.quantize_dynamic` (int8 weights, dynamic uint8 activations)
  into ``$NAS_CACHE_DIR/int8`` (default ``~/.cache/nas/int8``), keyed by the sha256 of the
  input file and the ONNX Runtime version, written atomically; the quantized graph is timed.

Not done, on purpose: dividing each measurement by a fixed reference graph timed alongside
(to cancel machine drift). It helped little on a shared machine, cannot see memory-hierarchy
contention, and turning the ratio back into milliseconds needs state across measurements, so
`measure` reports plain milliseconds and stays pure. ``python -m bench.bench_latency_stability`` keeps
the comparison (`time_samples` takes its graph as ``reference``); the numbers behind these
choices are in BENCHMARKS.md ("Measurements behind design choices").
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import logging
import os
import socket
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple, Protocol

import numpy as np

try:
    import resource
except ImportError:  # Windows: no preemption counter, nothing is retried
    resource = None  # type: ignore[assignment]

from nas.errors import ConfigError
from nas.hardware import HardwareProfile, check_available
from nas.results import LatencyStats, ProfileLatency

if TYPE_CHECKING:
    import onnxruntime


class HasGraphs(Protocol):
    """Anything with prefill and decode graph paths, e.g. `nas.onnx_export.OnnxGraphs`."""

    @property
    def prefill(self) -> Path: ...

    @property
    def decode(self) -> Path: ...


class GraphPair(NamedTuple):
    """Graph paths for callers without an `OnnxGraphs` (benchmarks, tools)."""

    prefill: Path
    decode: Path


@dataclass(frozen=True)
class Samples:
    """Raw timings in ms, shape (rounds, repeats) per graph; a caller's reference graph if given."""

    prefill: np.ndarray
    decode: np.ndarray
    reference: np.ndarray | None = None
    retried: int = 0  # runs repeated because a thread of this process was preempted


def summarize(samples: np.ndarray | list[list[float]]) -> LatencyStats:
    """Median of round medians, pooled p90, robust CV = 1.4826 * MAD / median (pooled)."""
    rounds = np.atleast_2d(np.asarray(samples, dtype=float))  # (rounds, repeats)
    pooled = rounds.ravel()
    pooled_median = float(np.median(pooled))
    mad = float(np.median(np.abs(pooled - pooled_median)))
    return LatencyStats(
        median_ms=float(np.median(np.median(rounds, axis=1))),
        p90_ms=float(np.percentile(pooled, 90)),
        cv=1.4826 * mad / pooled_median if pooled_median > 0 else 0.0,
        n=int(pooled.size),
    )


# ----- sessions and feeds -----------------------------------------------------------------
def _session(model: str | bytes, profile: HardwareProfile,
             cores: list[int] | None = None) -> onnxruntime.InferenceSession:
    """A session with the profile's threads; with ``cores``, pool thread i runs on ``cores[i+1]``.

    ONNX Runtime pins only its pool threads (the caller's thread is the first of the
    ``intra_op_threads``; `time_samples` pins that one to ``cores[0]``), so each of our
    threads gets a core of its own and none migrates mid-run.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = profile.intra_op_threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    if cores and profile.intra_op_threads > 1:
        # Processor ids in this string start at 1.
        workers = cores[1:profile.intra_op_threads]
        options.add_session_config_entry("session.intra_op_thread_affinities",
                                         ";".join(str(c + 1) for c in workers))
    return ort.InferenceSession(model, options, providers=[profile.provider])


def _runner(session: onnxruntime.InferenceSession, feeds: dict[str, np.ndarray]) -> Callable[[], None]:
    """A zero-argument call that runs the graph once.

    IO binding copies the inputs into ONNX Runtime once, so the timed call is the graph
    run plus output allocation, not numpy conversion in Python.
    """
    binding = session.io_binding()
    for name, value in feeds.items():
        binding.bind_cpu_input(name, value)
    for out in session.get_outputs():
        binding.bind_output(out.name, "cpu")

    def run() -> None:
        session.run_with_iobinding(binding)

    return run


# ----- timing ------------------------------------------------------------------------------
@contextlib.contextmanager
def _quiet_gc() -> Iterator[None]:
    enabled = gc.isenabled()
    gc.collect()
    gc.disable()  # a collection inside a timed run would be charged to the graph
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _preemptions() -> int:
    """Involuntary context switches of this process so far (all threads); 0 where unknown."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_nivcsw if resource else 0


def _time_block(run: Callable[[], None], warmup: int, repeats: int,
                single_thread: bool) -> tuple[np.ndarray, int]:
    """``warmup`` untimed runs, then ``repeats`` timed runs (ms) and how many were retried.

    A run counts only if no thread of this process was preempted since the previous run
    ended: a preempted run timed the other process, and the run after a preemption starts
    with caches the other process has evicted. Such runs are retried, up to ``repeats``
    extra runs per block; after that they are kept, so ``n`` stays exact and time bounded.
    With one intra-op thread the whole graph runs on this thread, so its CPU time is the
    clock: a kept preempted run then still excludes the time it was off the core.
    """
    for _ in range(warmup):
        run()
    out = np.empty(repeats)
    clock = time.thread_time_ns if single_thread else time.perf_counter_ns
    kept = retried = 0
    last = _preemptions()
    while kept < repeats:
        start = clock()
        run()
        elapsed = clock() - start
        now = _preemptions()
        clean, last = now == last, now
        if not clean and retried < repeats:
            retried += 1
            continue
        out[kept] = elapsed / 1e6
        kept += 1
    return out, retried


def _time(runs: dict[str, Callable[[], None]], profile: HardwareProfile) -> tuple[dict[str, np.ndarray], int]:
    """Per round, each graph in its own block: warm-up then back-to-back timed runs.

    Blocks rather than run-by-run interleaving: alternating graphs evicts each other's
    weights from cache and times a slower decode than back-to-back decoding (the
    deployment case). Rounds still interleave the graphs, so slow drift reaches all of them.
    """
    out = {name: np.empty((profile.rounds, profile.repeats)) for name in runs}
    retried = 0
    single = profile.intra_op_threads == 1
    with _quiet_gc():
        for r in range(profile.rounds):
            for name, run in runs.items():
                out[name][r], extra = _time_block(run, profile.warmup, profile.repeats, single)
                retried += extra
    return out, retried


def time_samples(graphs: HasGraphs, profile: HardwareProfile, cpus: set[int] | None = None,
                 *, reference: bytes | None = None, cache_dir: Path | None = None) -> Samples:
    """Raw timings (ms) of prefill and decode, as `measure` takes them.

    ``reference``: a serialized graph with one input row, timed in the same rounds and never
    quantized, so a benchmark can see how much of a candidate's spread is machine drift.
    """
    check_available(profile)
    cores = sorted(cpus) if cpus else None
    if cores is not None and len(cores) < profile.intra_op_threads:
        raise ConfigError(f"cpus={cores} has fewer cores than intra_op_threads="
                          f"{profile.intra_op_threads}", field="cpus", value=cores)
    from nas.affinity import pinned
    from nas.onnx_io import session_feeds

    # Everything, int8 quantization included, stays on the given cores: they are the ones
    # reserved for measuring, the others may be training.
    with pinned(cores):
        if cores and hasattr(os, "sched_setaffinity"):
            os.sched_setaffinity(0, {cores[0]})  # restored with every other thread by `pinned`
        prefill, decode = Path(graphs.prefill), Path(graphs.decode)
        if profile.precision == "int8":
            prefill, decode = quantized(prefill, cache_dir), quantized(decode, cache_dir)
        shapes = {"prefill": (str(prefill), profile.prompt_len, 0),
                  "decode": (str(decode), 1, profile.past_len)}
        runs = {}
        for name, (model, seq, past) in shapes.items():
            session = _session(model, profile, cores)
            runs[name] = _runner(session, session_feeds(session, profile.batch, seq, past))
        if reference is not None:
            session = _session(reference, profile, cores)
            runs["reference"] = _runner(session, session_feeds(session, 1, 1, 0))
        timings, retried = _time(runs, profile)
    return Samples(timings["prefill"], timings["decode"], timings.get("reference"), retried)


def measure(graphs: HasGraphs, profile: HardwareProfile, cpus: set[int] | None = None, *,
            cache_dir: Path | None = None) -> ProfileLatency:
    """Latency of a candidate's prefill and decode graphs on ``profile``; pure apart from the int8 cache.

    ``graphs``: anything with ``.prefill``/``.decode`` paths (`nas.onnx_export.OnnxGraphs`,
    `GraphPair`). ``cpus``: cores to pin the timing threads to (restored afterwards). ``node``
    is this host's name; a driver that knows better (a Ray node id) replaces it with
    `dataclasses.replace`.
    """
    samples = time_samples(graphs, profile, cpus, cache_dir=cache_dir)
    return ProfileLatency(profile=profile.name, profile_hash=profile.hash,
                          prefill=summarize(samples.prefill), decode=summarize(samples.decode),
                          node=socket.gethostname())


# ----- int8 --------------------------------------------------------------------------------
def default_cache_dir() -> Path:
    return Path(os.environ.get("NAS_CACHE_DIR", Path.home() / ".cache" / "nas")) / "int8"


def quantized(path: Path, cache_dir: Path | None = None) -> Path:
    """Dynamically quantized (int8 weights) copy of ``path``, cached by content hash."""
    import onnxruntime
    from onnxruntime.quantization import QuantType, quantize_dynamic

    digest = hashlib.sha256(Path(path).read_bytes())
    digest.update(f"ort={onnxruntime.__version__};QInt8".encode())
    cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
    target = cache_dir / f"{digest.hexdigest()[:24]}.onnx"
    if target.exists():
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    # Write beside the target and rename: concurrent workers never see a half-written file.
    fd, tmp = tempfile.mkstemp(suffix=".onnx", dir=cache_dir)
    os.close(fd)
    try:
        with _without_preprocess_hint():
            quantize_dynamic(path, tmp, weight_type=QuantType.QInt8)
        os.replace(tmp, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    return target


class _PreprocessHint(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "pre-processing before quantization" not in record.getMessage()


@contextlib.contextmanager
def _without_preprocess_hint() -> Iterator[None]:
    """Silence quantize_dynamic's root-logger advice to pre-process: shape inference adds
    nothing for MatMul weights, and the line would repeat for every candidate."""
    root, hint = logging.getLogger(), _PreprocessHint()
    root.addFilter(hint)
    try:
        yield
    finally:
        root.removeFilter(hint)
