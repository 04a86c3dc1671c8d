"""Real inference latency of a candidate's ONNX graphs on one hardware profile.

`measure(graphs, profile, cpus=None) -> ProfileLatency` times the prefill graph (one forward of
``batch x prompt_len`` tokens) and the decode graph (one new token with ``past_len`` tokens
cached; a sliding window caches at most ``window``) and reports each as `LatencyStats` in ms.
For a profile with a workload (`HardwareProfile.has_workload`) it also times decode at each of
``decode_contexts`` (``decode_ms@<c>``) and whole replies (``ttft_ms``, ``generate_ms``, and
``tokens_per_s`` from them; what a reply runs is in `nas.workloads`), and reads the workload's
peak memory in a fresh child process (`nas.memory`) beside the closed-form estimate. It is pure
apart from the int8 cache: latency caching by (architecture hash, profile hash) is the driver's
job, keyed by `HardwareProfile.hash`. `measure_together` times several candidates interleaved
in one process, for re-timing a front.

How a measurement is taken, and why (these machines drift, see DESIGN.md):

* Sessions: the profile's session options (`nas.workloads.session_options`; by default
  ``intra_op_num_threads`` = the profile's threads, ``inter_op_num_threads`` = 1, sequential
  execution, all graph optimisations, ONNX Runtime's spinning); inputs bound once through IO
  binding, so a timed call is the graph run, not numpy conversion. Garbage collection is off
  while timing.
* ``cpus``: every thread of the process is restricted to those cores for the whole call
  (`nas.affinity.pinned`) and restored afterwards; within them the calling thread takes the
  first core and ONNX Runtime's pool threads one core each (``session.intra_op_thread_affinities``,
  whose processor ids start at 1). Verified by reading every thread's affinity in the tests.
* Rounds: each of ``rounds`` rounds times each graph call in its own block: ``warmup`` untimed
  runs, then ``repeats`` back-to-back timed runs. Interleaving graphs run by run evicts each
  other's weights and times a slower decode than back-to-back decoding (the deployment case).
  A reply is a block of its own too: one untimed warm-up reply, then ``generate_repeats``
  timed ones, so ``n`` is ``rounds * generate_repeats`` for ``ttft_ms`` and ``generate_ms``.
* Clock: with one thread, the thread's CPU time (the graph runs entirely on the calling thread,
  so this is what it would take on a core of its own; time spent preempted by other processes
  is not counted), which removes most of the across-process spread under load. With a pool,
  wall time. Replies use the same clocks.
* Preemption: a run during which any thread of this process was involuntarily switched out, or
  the run right after (its caches were evicted), is retried (`getrusage` ``ru_nivcsw``), at
  most ``repeats`` extra runs per block; then kept, so ``n`` is always ``rounds * repeats``.
  Replies follow the rule only with a pool (wall clock: a preempted reply timed the other
  process). With one thread they are kept: the CPU-time clock already leaves out the time off
  the core, a reply of ~100 graph runs amortises one cache refill, and on a loaded machine
  nearly every reply sees a switch, so retrying would mostly double the reply's cost.
* Statistics: ``median_ms`` is the median of the round medians (one disturbed round cannot move
  it); ``p90_ms`` is pooled over all kept runs; ``cv`` is robust, 1.4826 * MAD / median of the
  pooled runs (a classic SD is dominated by the rare 2-10x outlier runs a shared machine gives).
  ``tokens_per_s`` is ``batch * new_tokens`` over the median reply. `measure_together` adds a
  bootstrap 95% interval of the median (rounds resampled).
* int8: `onnxruntime.quantization.quantize_dynamic` (int8 weights, dynamic uint8 activations)
  into ``$NAS_CACHE_DIR/int8`` (default ``~/.cache/nas/int8``), keyed by the sha256 of the
  input file and the ONNX Runtime version, written atomically; the quantized graph is timed.

Not done, on purpose: dividing each measurement by a fixed reference graph timed alongside
(to cancel machine drift). It helped little on a shared machine, cannot see memory-hierarchy
contention, and turning the ratio back into milliseconds needs state across measurements, so
`measure` reports plain milliseconds and stays pure. ``python -m bench.bench_latency_stability`` keeps
the comparison (`time_samples` takes its graph as ``reference``); the numbers behind these
choices are in BENCHMARKS.md ("Measurements behind design choices"). Re-timing a front
together (`measure_together`) is the drift remedy that works: drift then hits all members alike.
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
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple, Protocol, TypeVar

import numpy as np

try:
    import resource
except ImportError:  # Windows: no preemption counter, nothing is retried
    resource = None  # type: ignore[assignment]

from nas.errors import ConfigError
from nas.hardware import HardwareProfile, check_available
from nas.results import LatencyStats, ProfileLatency
from nas.workloads import Reply, Workload, make_session, open_workload, runner

K = TypeVar("K", bound=Hashable)
BOOTSTRAP_RESAMPLES = 2000


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
    """Raw timings in ms, shape (rounds, repeats) per graph; a caller's reference graph if given.

    ``workload``: the profile's other quantities by metric suffix (``decode_ms@<c>``, ``ttft_ms``,
    ``generate_ms``; replies are (rounds, generate_repeats)).
    """

    prefill: np.ndarray
    decode: np.ndarray
    reference: np.ndarray | None = None
    retried: int = 0  # runs repeated because a thread of this process was preempted
    workload: dict[str, np.ndarray] = field(default_factory=dict)


def summarize(samples: np.ndarray | list[list[float]], bootstrap: int = 0, *,
              seed: int = 0) -> LatencyStats:
    """Median of round medians, pooled p90, robust CV = 1.4826 * MAD / median (pooled).

    ``bootstrap`` > 0: also a 95% percentile interval of the median of round medians, from that
    many resamples of the rounds with replacement (seeded by ``seed``). Rounds, not runs, are
    resampled: runs within a round share the machine's state of the moment, so they are not
    independent, and the interval must show drift between rounds.
    """
    rounds = np.atleast_2d(np.asarray(samples, dtype=float))  # (rounds, repeats)
    pooled = rounds.ravel()
    pooled_median = float(np.median(pooled))
    mad = float(np.median(np.abs(pooled - pooled_median)))
    medians = np.median(rounds, axis=1)
    low = high = None
    if bootstrap > 0:
        picks = np.random.default_rng(seed).integers(0, len(medians), size=(bootstrap, len(medians)))
        resampled = np.median(medians[picks], axis=1)
        low, high = (float(v) for v in np.percentile(resampled, [2.5, 97.5]))
    return LatencyStats(
        median_ms=float(np.median(medians)),
        p90_ms=float(np.percentile(pooled, 90)),
        cv=1.4826 * mad / pooled_median if pooled_median > 0 else 0.0,
        n=int(pooled.size),
        ci_low_ms=low,
        ci_high_ms=high,
    )


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


def _clock(single_thread: bool) -> Callable[[], int]:
    return time.thread_time_ns if single_thread else time.perf_counter_ns


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
    clock = _clock(single_thread)
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


def _time_replies(reply: Reply, repeats: int, single_thread: bool
                  ) -> tuple[np.ndarray, np.ndarray, int]:
    """One untimed warm-up reply, then ``repeats`` timed ones: (ttft ms, generate ms, retried).

    Retried like `_time_block`'s runs only with a thread pool (module docstring: with one
    thread the CPU-time clock already leaves out preemptions, and replies are long).
    """
    clock = _clock(single_thread)
    reply.run(clock)
    first, whole = np.empty(repeats), np.empty(repeats)
    kept = retried = 0
    last = _preemptions()
    while kept < repeats:
        ttft, total = reply.run(clock)
        now = _preemptions()
        clean, last = now == last, now
        if not single_thread and not clean and retried < repeats:
            retried += 1
            continue
        first[kept], whole[kept] = ttft / 1e6, total / 1e6
        kept += 1
    return first, whole, retried


def _time_round(workload: Workload, profile: HardwareProfile, out: dict[str, np.ndarray],
                r: int) -> int:
    """One round of one candidate: each quantity in its own block, written to ``out[...][r]``."""
    single = profile.intra_op_threads == 1
    retried = 0
    for name, run in workload.blocks.items():
        out[name][r], extra = _time_block(run, profile.warmup, profile.repeats, single)
        retried += extra
    if workload.reply is not None:
        out["ttft_ms"][r], out["generate_ms"][r], extra = _time_replies(
            workload.reply, profile.generate_repeats, single)
        retried += extra
    return retried


def _time(workloads: Mapping[K, Workload], profile: HardwareProfile,
          orders: Sequence[Sequence[K]]) -> tuple[dict[K, dict[str, np.ndarray]], int]:
    """Round r visits the candidates in ``orders[r]``; each times all its quantities in blocks.

    Blocks rather than run-by-run interleaving: alternating graphs evicts each other's
    weights from cache and times a slower decode than back-to-back decoding (the
    deployment case). Rounds still interleave the graphs (and the candidates), so slow
    drift reaches all of them.
    """
    rounds = len(orders)
    out: dict[K, dict[str, np.ndarray]] = {}
    for key, workload in workloads.items():
        out[key] = {name: np.empty((rounds, profile.repeats)) for name in workload.blocks}
        if workload.reply is not None:
            for name in ("ttft_ms", "generate_ms"):
                out[key][name] = np.empty((rounds, profile.generate_repeats))
    retried = 0
    with _quiet_gc():
        for r, order in enumerate(orders):
            for key in order:
                retried += _time_round(workloads[key], profile, out[key], r)
    return out, retried


def round_orders(keys: Sequence[K], rounds: int, seed: int = 0) -> list[list[K]]:
    """A fresh random order of ``keys`` for each of ``rounds`` rounds (seeded: reproducible)."""
    rng = np.random.default_rng(seed)
    return [[keys[i] for i in rng.permutation(len(keys))] for _ in range(rounds)]


# ----- measuring ---------------------------------------------------------------------------
@contextlib.contextmanager
def _measuring(profile: HardwareProfile, cpus: set[int] | None) -> Iterator[list[int] | None]:
    """Check the provider and pin every thread to ``cpus`` (the caller's to the first one)."""
    check_available(profile)
    cores = sorted(cpus) if cpus else None
    if cores is not None and len(cores) < profile.intra_op_threads:
        raise ConfigError(f"cpus={cores} has fewer cores than intra_op_threads="
                          f"{profile.intra_op_threads}", field="cpus", value=cores)
    from nas.affinity import pinned

    # Everything, int8 quantization included, stays on the given cores: they are the ones
    # reserved for measuring, the others may be training.
    with pinned(cores):
        if cores and hasattr(os, "sched_setaffinity"):
            os.sched_setaffinity(0, {cores[0]})  # restored with every other thread by `pinned`
        yield cores


def _graph_files(graphs: HasGraphs, profile: HardwareProfile,
                 cache_dir: Path | None) -> tuple[Path, Path]:
    prefill, decode = Path(graphs.prefill), Path(graphs.decode)
    if profile.precision == "int8":
        prefill, decode = quantized(prefill, cache_dir), quantized(decode, cache_dir)
    return prefill, decode


def time_samples(graphs: HasGraphs, profile: HardwareProfile, cpus: set[int] | None = None,
                 *, reference: bytes | None = None, cache_dir: Path | None = None) -> Samples:
    """Raw timings (ms) of everything the profile times, as `measure` takes them.

    ``reference``: a serialized graph with one input row, timed in the same rounds and never
    quantized, so a benchmark can see how much of a candidate's spread is machine drift.
    """
    from nas.onnx_io import session_feeds

    with _measuring(profile, cpus) as cores:
        workload = open_workload(*_graph_files(graphs, profile, cache_dir), profile, cores)
        if reference is not None:
            session = make_session(reference, profile, cores)
            workload.blocks["reference"] = runner(session, session_feeds(session, 1, 1, 0))
        timings, retried = _time({0: workload}, profile, [[0]] * profile.rounds)
    out = timings[0]
    rest = {k: v for k, v in out.items() if k not in ("prefill_ms", "decode_ms", "reference")}
    return Samples(out["prefill_ms"], out["decode_ms"], out.get("reference"), retried, rest)


def _result(profile: HardwareProfile, timings: Mapping[str, np.ndarray], *, bootstrap: int = 0,
            seed: int = 0, peak_mb: float | None = None,
            estimate_mb: float | None = None) -> ProfileLatency:
    from nas.machine import local_machine

    stats = {name: summarize(values, bootstrap, seed=seed) for name, values in timings.items()}
    workload = tuple((name, stats[name]) for name in
                     (*(f"decode_ms@{c}" for c in profile.decode_contexts), "ttft_ms", "generate_ms")
                     if name in stats)
    tokens_per_s = None
    if "generate_ms" in stats and profile.new_tokens is not None:
        tokens_per_s = profile.batch * profile.new_tokens / (stats["generate_ms"].median_ms / 1e3)
    return ProfileLatency(profile=profile.name, profile_hash=profile.hash,
                          prefill=stats["prefill_ms"], decode=stats["decode_ms"],
                          node=socket.gethostname(), workload=workload, tokens_per_s=tokens_per_s,
                          peak_mb=peak_mb, estimate_mb=estimate_mb, machine=local_machine())


def estimate_mb(workload: Workload, profile: HardwareProfile) -> float | None:
    """`HardwareProfile.memory_estimate_bytes` in MB for the graphs' architecture (None when the
    graphs carry no architecture metadata)."""
    from nas.architecture import Architecture

    arch = workload.architecture
    return profile.memory_estimate_bytes(Architecture.from_dict(arch)) / 1e6 if arch else None


def measure(graphs: HasGraphs, profile: HardwareProfile, cpus: set[int] | None = None, *,
            cache_dir: Path | None = None) -> ProfileLatency:
    """Latency (and a workload's memory) of a candidate's graphs on ``profile``; pure apart from
    the int8 cache.

    ``graphs``: anything with ``.prefill``/``.decode`` paths (`nas.onnx_export.OnnxGraphs`,
    `GraphPair`). ``cpus``: cores to pin the timing threads (and the memory child) to,
    restored afterwards. ``node`` is this host's name; a driver that knows better (a Ray node
    id) replaces it with `dataclasses.replace`.
    """
    with _measuring(profile, cpus) as cores:
        prefill, decode = _graph_files(graphs, profile, cache_dir)
        workload = open_workload(prefill, decode, profile, cores)
        timings, _ = _time({0: workload}, profile, [[0]] * profile.rounds)
        peak = estimate = None
        if profile.has_workload:
            from nas.memory import peak_memory_mb

            estimate = estimate_mb(workload, profile)
            del workload  # freed before the child loads its own copy: one model in memory at a time
            # The originals: it quantizes them itself (a cache hit now) for an int8 profile.
            peak = peak_memory_mb(Path(graphs.prefill), Path(graphs.decode), profile,
                                  cpus=set(cores) if cores else None, cache_dir=cache_dir)
    return _result(profile, timings[0], peak_mb=peak, estimate_mb=estimate)


def measure_together(graphs: Mapping[K, HasGraphs], profile: HardwareProfile,
                     cpus: set[int] | None = None, *, rounds: int | None = None, seed: int = 0,
                     cache_dir: Path | None = None) -> dict[K, ProfileLatency]:
    """Re-time several candidates together, so drift hits all of them alike.

    Every member's sessions are created up front in this process; then each of ``rounds``
    rounds (default ``profile.rounds``) visits the members in a fresh random order
    (`round_orders`, seeded by ``seed``), and each member times every quantity the profile
    defines in its own blocks, as `measure` does. Each `LatencyStats` carries a bootstrap 95%
    interval of its median (`summarize`); ``tokens_per_s`` follows from the re-timed replies.
    Memory is not re-measured (``peak_mb``/``estimate_mb`` are None): it does not drift.
    ``measurement`` is left 0: the caller numbers the re-timing.
    """
    rounds = profile.rounds if rounds is None else rounds
    if not isinstance(rounds, int) or isinstance(rounds, bool) or rounds < 1:
        raise ConfigError(f"rounds={rounds!r} must be an integer >= 1", field="rounds", value=rounds)
    keys = list(graphs)
    with _measuring(profile, cpus) as cores:
        workloads = {key: open_workload(*_graph_files(graphs[key], profile, cache_dir), profile, cores)
                     for key in keys}
        timings, _ = _time(workloads, profile, round_orders(keys, rounds, seed))
    return {key: _result(profile, timings[key], bootstrap=BOOTSTRAP_RESAMPLES, seed=seed)
            for key in keys}


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
