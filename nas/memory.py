"""Measured peak memory of running a profile's workload: ``memory:<profile>:peak_mb``.

`peak_memory_mb(prefill, decode, profile)` starts a fresh Python process (``python -m
nas.memory``) that imports ONNX Runtime and numpy, makes one trivial session (ONNX Runtime's
one-off set-up in a process, ~10 MB on the CPU, is the runtime's, not the candidate's), reads its
resident set as the baseline, creates both sessions with the profile's options
(`nas.workloads.session_options`, pinned like the timing threads), runs the workload twice (one
whole reply when the profile has ``new_tokens``, the prompt alone otherwise, then one decode at
each context the profile times, ``past_len`` and each of ``decode_contexts``, one at a time; why
twice: `run_workload`), then reads its peak resident set.
``peak_mb`` = (peak - baseline) / 1e6: the weights as the sessions hold them (prepacked copies
included), the caches, activations and ONNX Runtime's arena: what a deployment of these graphs
needs beyond the runtime itself. MB are 1e6 bytes, as in ``weights_mb``.

Why a child: a long-lived worker's resident set cannot be read honestly. Memory a previous
candidate freed stays mapped in the allocator and is reused, so its growth would read near zero,
and its peak is the worst candidate so far. A fresh process starts from the runtime alone.

How the peak is read, in order of preference: Linux ``VmHWM`` (``/proc/self/status``) after
resetting it to the current resident set at the baseline (``/proc/self/clear_refs``, so the
imports' transient peak is not counted); ``VmHWM`` without the reset where the kernel refuses it;
``resource.getrusage(RUSAGE_SELF).ru_maxrss`` where there is no ``/proc`` (the imports' peak
then stays in, which can only overstate the baseline, i.e. understate growth slightly). The
child's JSON names the method used.

The caches the child feeds are made as float32 directly (`_feeds`), not through
`nas.onnx_io.make_feeds`, whose float64 random draws would add a transient twice the cache's
size to the peak; values do not change memory.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import subprocess
import sys
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from nas.errors import NasError
from nas.hardware import HardwareProfile

_STDERR_TAIL = 2000  # characters of the child's stderr an error quotes
# y = x + x on one float (IR 7, opset 13), serialized: the child's first session, made before the
# baseline, because ONNX Runtime's first session in a process pays ~10 MB of one-off set-up
# (environment, kernel registries) that is the runtime's, not the candidate's. Embedded rather
# than built, so a measuring node needs no `onnx` package.
_WARMUP_MODEL = base64.b64decode(
    "CAcSA25hczo6Cg4KAXgKAXgSAXkiA0FkZBIGd2FybXVwWg8KAXgSCgoICAESBAoCCAFiDwoBeRIKCggIARIECgIIAUIECgAQDQ==")


class MemoryMeasurementError(NasError):
    """The child that measures a workload's peak memory failed; names the profile and its stderr."""


def peak_memory_mb(prefill: Path, decode: Path, profile: HardwareProfile,
                   cpus: set[int] | None = None, *, cache_dir: Path | None = None,
                   timeout: float = 900.0) -> float:
    """Peak resident-set growth (MB) of running ``profile``'s workload on these graphs.

    For an int8 profile the graphs are quantized first (`nas.latency.quantized`, cached by
    content: `measure` has already done it), so the child runs what was timed. ``cpus``: the
    child runs on those cores only, its pool threads pinned as in timing.
    """
    return measure_peak(prefill, decode, profile, cpus, cache_dir=cache_dir, timeout=timeout)["peak_mb"]


def measure_peak(prefill: Path, decode: Path, profile: HardwareProfile,
                 cpus: set[int] | None = None, *, cache_dir: Path | None = None,
                 timeout: float = 900.0) -> dict[str, Any]:
    """The child's whole report: ``peak_mb``, ``baseline_mb``, ``runtime_mb`` (the first session's
    one-off set-up, left in the baseline), ``method`` (module docstring) and ``phases`` (the
    peak's growth after each part of the workload, `run_workload`)."""
    if profile.precision == "int8":
        from nas.latency import quantized

        prefill, decode = quantized(Path(prefill), cache_dir), quantized(Path(decode), cache_dir)
    command = [sys.executable, "-m", "nas.memory", "--prefill", str(prefill), "--decode", str(decode),
               "--profile", json.dumps(profile.to_dict())]
    if cpus:
        command += ["--cpus", ",".join(str(c) for c in sorted(cpus))]
    # The child imports this package from where this process did (an uninstalled checkout too).
    root = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (root, os.environ.get("PYTHONPATH", "")) if p)}
    where = f"hardware profile {profile.name!r}: measuring peak memory of {prefill} and {decode}"
    try:
        proc = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        raise MemoryMeasurementError(f"{where}: the child process took more than {timeout:g} s") from None
    if proc.returncode != 0:
        tail = proc.stderr.strip()[-_STDERR_TAIL:] or "(no output)"
        raise MemoryMeasurementError(f"{where}: the child process failed (exit {proc.returncode}):\n{tail}")
    try:
        return json.loads(proc.stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        raise MemoryMeasurementError(f"{where}: the child printed no result: {proc.stdout[-500:]!r}, "
                                     f"stderr {proc.stderr[-_STDERR_TAIL:]!r}") from None


# ----- the child -----------------------------------------------------------------------------
def _status_bytes(key: str) -> int | None:
    """``VmRSS``/``VmHWM`` of this process in bytes; None without /proc."""
    try:
        text = Path("/proc/self/status").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024  # kB
    return None


def _maxrss_bytes() -> int:
    import resource

    scale = 1 if sys.platform == "darwin" else 1024  # bytes on macOS, kB elsewhere
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def _reset_peak() -> bool:
    """Reset VmHWM to the current resident set (Linux >= 4.0); False where refused."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _feeds(session: Any, batch: int, seq: int, past: int) -> dict[str, np.ndarray]:
    """`nas.onnx_io.session_feeds`' shapes, made without temporaries: ids 0 (valid for every
    vocabulary), positions ``past``, caches a constant 0.05 (positive, for linear attention)."""
    from nas.onnx_io import graph_metadata

    arch = graph_metadata(session)["architecture"] or {}
    window = arch.get("window") if arch.get("attention") == "sliding_window" else None
    sizes = {"batch": batch, "seq": seq, "past": past if window is None else min(past, window)}
    feeds = {}
    for arg in session.get_inputs():
        shape = tuple(d if isinstance(d, int) else sizes[d] for d in arg.shape)
        if arg.name == "input_ids":
            feeds[arg.name] = np.zeros(shape, dtype=np.int64)
        elif arg.name == "position_ids":
            feeds[arg.name] = np.full(shape, past, dtype=np.int64)
        else:
            feeds[arg.name] = np.full(shape, 0.05, dtype=np.float32)
    return feeds


def _run_once(session: Any, feeds: dict[str, np.ndarray]) -> None:
    """One run with inputs read in place and outputs left in ONNX Runtime: no numpy copies."""
    import onnxruntime as ort

    binding = session.io_binding()
    values = [ort.OrtValue.ortvalue_from_numpy(array) for array in feeds.values()]
    for name, value in zip(feeds, values):
        binding.bind_ortvalue_input(name, value)
    for out in session.get_outputs():
        binding.bind_output(out.name, "cpu")
    session.run_with_iobinding(binding)


def run_workload(prefill: Path, decode: Path, profile: HardwareProfile,
                 cores: Sequence[int] | None = None) -> dict[str, Any]:
    """In this (fresh) process: baseline, sessions, the workload twice, peak (module docstring).

    Each part runs twice because ONNX Runtime plans a memory pattern on the first run of a
    shape and allocates it as one block from the second run on, while its arena keeps the first
    run's chunks: one run would understate what a deployment, which runs again and again, holds
    (by ~25 MB of 90 for a 512-token reply; a third run adds nothing). With ``new_tokens`` the
    reply is the prompt's run (its prefill); then one decode per context, one cache at a time.
    ``phases``: the peak's growth after each part, to see what the memory is for.
    """
    from nas.workloads import Reply, contexts, make_session

    # In the baseline: the runtime, its first-session set-up and the provider's initialisation.
    before = _status_bytes("VmRSS")
    warmup = make_session(_WARMUP_MODEL, profile, cores)
    warmup.run(None, {"x": np.ones(1, dtype=np.float32)})
    after = _status_bytes("VmRSS")
    runtime_mb = (after - before) / 1e6 if before is not None and after is not None else None
    if _reset_peak():
        method = "VmHWM"
    elif _status_bytes("VmHWM") is not None:
        method = "VmHWM (not reset)"
    else:
        method = "ru_maxrss"
    baseline = _maxrss_bytes() if method == "ru_maxrss" else _status_bytes("VmRSS")
    assert baseline is not None

    def grown() -> float:
        peak = _maxrss_bytes() if method == "ru_maxrss" else _status_bytes("VmHWM")
        return max((peak or 0) - baseline, 0) / 1e6

    phases: dict[str, float] = {}
    pre = make_session(prefill, profile, cores)
    dec = make_session(decode, profile, cores)
    phases["sessions"] = grown()
    if profile.new_tokens is not None:
        reply = Reply(pre, dec, profile.batch, profile.prompt_len, profile.new_tokens)
        for _ in range(2):
            reply.run(time.perf_counter_ns)
        del reply
        phases["reply"] = grown()
    else:
        feeds = _feeds(pre, profile.batch, profile.prompt_len, 0)
        for _ in range(2):
            _run_once(pre, feeds)
        phases["prefill"] = grown()
    for suffix, past in contexts(profile).items():
        feeds = _feeds(dec, profile.batch, 1, past)
        for _ in range(2):
            _run_once(dec, feeds)
        del feeds  # one cache at a time, as a deployment holds it
        phases[suffix] = grown()
    return {"peak_mb": grown(), "baseline_mb": baseline / 1e6, "runtime_mb": runtime_mb,
            "method": method, "phases": phases}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m nas.memory", description=__doc__.splitlines()[0])
    parser.add_argument("--prefill", type=Path, required=True)
    parser.add_argument("--decode", type=Path, required=True)
    parser.add_argument("--profile", required=True, help="HardwareProfile.to_dict() as JSON")
    parser.add_argument("--cpus", default="", help="comma-separated cores to run on")
    args = parser.parse_args(argv)
    try:
        cores = [int(c) for c in args.cpus.split(",") if c.strip()] or None
        if cores and hasattr(os, "sched_setaffinity"):
            os.sched_setaffinity(0, set(cores))
        profile = HardwareProfile.from_dict(json.loads(args.profile), source="--profile")
        result = run_workload(args.prefill, args.decode, profile, cores)
    except Exception:  # noqa: BLE001 - the parent reports the traceback with the profile's name
        traceback.print_exc()
        return 1
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
