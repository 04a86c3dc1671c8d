"""Shared benchmark helpers: describe the machine, and a fp32 matmul reference speed.

These machines are shared and drift, so a benchmark reports a speed as a ratio against a
reference measured in the same run, ideally right next to each measurement
(`matmul_flops` is cheap enough to call before and after every item).

    from bench.common import machine_info, format_machine, matmul_flops
    print(format_machine(machine_info(threads=2)))
    ref = matmul_flops(threads=2)  # fp32 FLOP/s of torch.mm on this machine, now
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `python bench/x.py` from the repository root finds `nas`
    sys.path.insert(0, str(ROOT))

_CPU_FLAGS_OF_INTEREST = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16",
                          "amx_tile")


def available_cores() -> int:
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _cpuinfo() -> tuple[str, list[str]]:
    model: str = platform.processor() or platform.machine()
    flags: list[str] = []
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return model, flags
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name" and value.strip():
            model = value.strip()
        elif key.strip() == "flags":
            present = set(value.split())
            flags = [f for f in _CPU_FLAGS_OF_INTEREST if f in present]
            break
    return model, flags


def machine_info(threads: int | None = None) -> dict[str, Any]:
    """What a benchmark result depends on: CPU, cores, threads, library versions, date, load."""
    import torch

    try:
        import onnxruntime

        ort = onnxruntime.__version__
    except ImportError:
        ort = "not installed"
    model, flags = _cpuinfo()
    return {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "host": platform.node(),
        "cpu": model,
        "cpu_flags": flags,
        "cores": os.cpu_count(),
        "cores_available": available_cores(),
        "threads": threads if threads is not None else torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "onnxruntime": ort,
        # libgomp's spin-waiting decides how training threads behave on a shared machine.
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "default"),
        "loadavg_1m": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
    }


def format_machine(info: dict[str, Any]) -> str:
    """A few markdown lines describing the machine (for stdout and BENCHMARKS.md)."""
    flags = " ".join(info["cpu_flags"]) or "-"
    return "\n".join([
        f"- machine: {info['cpu']} ({info['cores']} cores, {info['cores_available']} available; "
        f"flags: {flags}); host {info['host']}",
        f"- software: Python {info['python']}, torch {info['torch']} "
        f"({info['torch_cpu_capability']}), onnxruntime {info['onnxruntime']}",
        f"- run: {info['date']}, {info['threads']} threads (OMP_WAIT_POLICY "
        f"{info['omp_wait_policy']}), load average (1 min) at start {info['loadavg_1m']}",
    ])


def timed_rounds(fn: Callable[[], object], rounds: int = 5, min_round_s: float = 0.05) -> list[float]:
    """Seconds per call of ``fn`` in each of ``rounds`` rounds (calls repeated to fill a round)."""
    fn()  # warm-up: first calls allocate and pick kernels
    start = time.perf_counter()
    fn()
    once = max(time.perf_counter() - start, 1e-6)
    reps = max(1, int(min_round_s / once))
    out = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(reps):
            fn()
        out.append((time.perf_counter() - start) / reps)
    return out


def matmul_flops(threads: int | None = None, n: int = 1024, rounds: int = 5,
                 dtype: str = "float32") -> float:
    """Median FLOP/s of ``torch.mm`` on (n x n) matrices with ``threads`` intra-op threads.

    The machine's own reference speed: a training throughput divided by it is comparable
    across runs and machines. The previous thread count is restored afterwards.
    """
    import torch

    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        gen = torch.Generator().manual_seed(0)
        kind = getattr(torch, dtype)
        a = torch.randn(n, n, generator=gen).to(kind)
        b = torch.randn(n, n, generator=gen).to(kind)
        out = torch.empty(n, n, dtype=kind)
        seconds = timed_rounds(lambda: torch.mm(a, b, out=out), rounds=rounds)
    finally:
        torch.set_num_threads(previous)
    return 2 * n**3 / statistics.median(seconds)


def markdown_table(headers: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(" --- " for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)
