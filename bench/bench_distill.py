"""Distillation cost in the proxy trainer: the parent run in the worker vs a top-k cache vs none.

    python -m bench.bench_distill            # markdown, ~3-5 minutes on one thread
    python -m bench.bench_distill --json     # the same numbers as JSON
    python -m bench.bench_distill --smoke    # seconds: tiny models, one step

A ~19M-parameter parent (slm-like: 10 layers, d_model 384, GQA 6/2, SwiGLU 2.75, vocabulary
8192) and a ~9M student (6 layers, d_model 320, 5/1 heads) at slm.yaml's batch (32 x 256), one
thread, the real `nas.proxy.train`. Three modes, interleaved in ``--rounds`` rounds of
``--steps`` optimizer steps each so the machine's drift hits them alike: ``none`` (cross-entropy
only), ``teacher`` (the parent's forward on every batch, in the worker) and ``cache`` (the
parent's top-``k`` logits from a `TeacherCache` built once before). Steps/s is the median over
rounds of steps / training seconds (`ProxyResult.tokens_per_s`: the training loop only), also
as a ratio to ``none`` measured in the same round. The cache's build time per step (the
parent's forward + top-k, paid once per (parent, data, budget, seed) and shared by every
candidate of a search) and its size in MB per million training tokens are reported too.

Memory: each mode also runs for one step in a fresh subprocess that reports its peak RSS
(``resource.getrusage``: the process-wide maximum, hence one process per mode). The cache's
process holds no parent: it reads a cache another process built, as a worker would. The
parent's fp32 weights are 4 bytes per parameter. The token stream is synthetic (uniform over the
vocabulary): speed and memory do not depend on the text. The torch matmul FLOP/s on one
thread is printed before and after as the machine's reference speed.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import (
    add_smoke_flag,
    append_jsonl,
    format_machine,
    machine_info,
    markdown_table,
    matmul_flops,
    results_dir,
    start_smoke,
)
from nas.architecture import Architecture
from nas.data import TokenData
from nas.specs import ProxyBudget

MODES = ("none", "teacher", "cache")
_SLM = dict(ffn_mult=2.75, vocab_size=8192, max_seq_len=256)
PARENT = Architecture(n_layer=10, d_model=384, n_head=6, n_kv_head=2, **_SLM)
STUDENT = Architecture(n_layer=6, d_model=320, n_head=5, n_kv_head=1, **_SLM)
SMOKE_PARENT = Architecture(n_layer=2, d_model=64, n_head=4, n_kv_head=2, vocab_size=512,
                            max_seq_len=32)
SMOKE_STUDENT = Architecture(n_layer=1, d_model=32, n_head=2, n_kv_head=1, vocab_size=512,
                             max_seq_len=32)


def setup(smoke: bool, steps: int) -> tuple[Architecture, Architecture, ProxyBudget, TokenData]:
    parent, student = (SMOKE_PARENT, SMOKE_STUDENT) if smoke else (PARENT, STUDENT)
    b, t = (4, 32) if smoke else (32, 256)
    budget = ProxyBudget(tokens=steps * b * t, batch_size=b, seq_len=t, val_tokens=b * t)
    rng = np.random.default_rng(0)
    vocab = parent.vocab_size
    data = TokenData(rng.integers(0, vocab, 200 * b * t, dtype=np.int64).astype(np.uint16),
                     rng.integers(0, vocab, 4 * b * t, dtype=np.int64).astype(np.uint16),
                     vocab, "synthetic", f"uniform random tokens over {vocab}", "bench-distill")
    return parent, student, budget, data


def _parent_model(arch: Architecture):
    from nas.model import build_model

    return build_model(arch, seed=1).eval()


def run_once(mode: str, student: Architecture, budget: ProxyBudget, data: TokenData,
             teacher: Any, cache: Any) -> dict[str, float]:
    from nas.proxy import train

    result = train(student, budget, data, device="cpu", threads=1,
                   teacher=teacher if mode == "teacher" else None,
                   teacher_cache=cache if mode == "cache" else None).result
    train_s = result.tokens / result.tokens_per_s
    return {"steps_per_s": budget.steps / train_s, "train_s": train_s,
            "score_s": result.seconds - train_s}


def _rss_mb() -> tuple[float, float]:
    """(current, peak) resident set of this process in MB.

    The peak is the kernel's VmHWM, this address space's own high-water mark. getrusage's
    ru_maxrss is not used where /proc is there: on Linux it keeps the larger of the parent's
    mark at fork/exec, so a child started by a big process reports the parent's size.
    """
    try:
        status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines()
                      if ":" in line)
        return int(status["VmRSS"].split()[0]) / 1024, int(status["VmHWM"].split()[0]) / 1024
    except (OSError, KeyError, ValueError):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
        return peak, peak


def measure_rss(mode: str, smoke: bool, k: int, cache_path: Path) -> dict[str, Any]:
    """Child process: one step of ``mode`` (``build``: build the cache, write it to
    ``cache_path``); its peak RSS in MB, and its RSS before any model existed. The cache mode
    reads the cache written by the build child, as a worker would: no parent in it."""
    from nas.distill import TeacherCache, build_teacher_cache

    parent_arch, student, budget, data = setup(smoke, steps=1)
    before, _ = _rss_mb()
    if mode == "build":
        cache = build_teacher_cache(_parent_model(parent_arch), budget, data, k=k, device="cpu",
                                    threads=1)
        cache_path.write_bytes(cache.to_bytes())
    else:
        teacher = _parent_model(parent_arch) if mode == "teacher" else None
        cache = TeacherCache.from_bytes(cache_path.read_bytes()) if mode == "cache" else None
        run_once(mode, student, budget, data, teacher, cache)
    _, peak = _rss_mb()
    return {"mode": mode, "peak_rss_mb": peak, "rss_before_mb": before}


def rss_by_mode(smoke: bool, k: int) -> dict[str, dict[str, Any]]:
    """One fresh process per mode, one after another: a peak never goes down. ``smoke`` runs
    them in this process instead (seconds, not four torch imports): numbers meaningless."""
    out: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "cache.pt"
        for mode in ("build",) + MODES:
            if smoke:
                row = measure_rss(mode, smoke, k, path)
            else:
                stdout = subprocess.run(
                    [sys.executable, "-m", "bench.bench_distill", "--rss-child", mode, "--k", str(k),
                     "--cache-path", str(path)], check=True, stdout=subprocess.PIPE, text=True,
                    env={**os.environ, "OMP_NUM_THREADS": "1"}).stdout
                row = json.loads(stdout.strip().splitlines()[-1])
            out[row.pop("mode")] = row
    return out


def run(smoke: bool, steps: int, rounds: int, k: int, memory: bool = True,
        timing: bool = True) -> dict[str, Any]:
    import torch

    from nas.distill import build_teacher_cache

    torch.set_num_threads(1)
    rss = rss_by_mode(smoke, k) if memory else {}
    if not timing:
        return {"rss": rss, "smoke": smoke}
    parent_arch, student, budget, data = setup(smoke, steps)
    teacher = _parent_model(parent_arch)
    flops_before = matmul_flops(threads=1, n=256 if smoke else 1024)
    started = time.perf_counter()
    cache = build_teacher_cache(teacher, budget, data, k=k, device="cpu", threads=1)
    build_s = time.perf_counter() - started
    rows: dict[str, list[dict[str, float]]] = {m: [] for m in MODES}
    warm = dataclasses.replace(budget, tokens=budget.batch_size * budget.seq_len)
    run_once("none", student, warm, data, teacher, cache)  # first-call costs, untimed
    for _ in range(rounds):
        for mode in MODES:
            rows[mode].append(run_once(mode, student, budget, data, teacher, cache))
    flops_after = matmul_flops(threads=1, n=256 if smoke else 1024)
    ratios = {m: statistics.median(r["steps_per_s"] / n["steps_per_s"]
                                   for r, n in zip(rows[m], rows["none"])) for m in MODES}
    return {
        "parent": parent_arch.to_dict(), "student": student.to_dict(),
        "parent_params": parent_arch.n_params, "student_params": student.n_params,
        "batch_size": budget.batch_size, "seq_len": budget.seq_len, "steps": steps,
        "rounds": rounds, "k": k, "threads": 1,
        "steps_per_s": {m: statistics.median(r["steps_per_s"] for r in rows[m]) for m in MODES},
        "ratio_to_none": ratios,
        "score_s": {m: statistics.median(r["score_s"] for r in rows[m]) for m in MODES},
        "cache_build_s_per_step": build_s / budget.steps,
        "cache_mb_per_million_tokens": cache.mb_per_million_tokens(),
        "parent_weights_mb": parent_arch.n_params * 4 / 1e6,
        "matmul_gflops_1t": [flops_before / 1e9, flops_after / 1e9],
        "cache_steps_mb": cache.nbytes / 1e6,
        "rss": rss, "smoke": smoke,
    }


def report(info: dict[str, Any], res: dict[str, Any]) -> str:
    lines = ["# Distillation cost: in-worker teacher vs top-k cache vs none\n", format_machine(info),
             f"- parent {PARENT.n_params / 1e6:.1f}M params ({PARENT.n_params * 4 / 1e6:.0f} MB fp32), "
             f"student {STUDENT.n_params / 1e6:.1f}M, vocabulary {PARENT.vocab_size}, batch 32 x 256, "
             "1 thread" + (" (smoke: tiny models instead)" if res.get("smoke") else "")]
    if "steps_per_s" in res:
        lines.append(f"- median of {res['rounds']} interleaved rounds of {res['steps']} steps; "
                     f"matmul reference {res['matmul_gflops_1t'][0]:.0f} -> "
                     f"{res['matmul_gflops_1t'][1]:.0f} GFLOP/s\n")
        table = [[m, f"{res['steps_per_s'][m]:.3g}", f"{res['ratio_to_none'][m]:.2f}",
                  f"{res['score_s'][m]:.2f}"] for m in MODES]
        lines.append(markdown_table(["mode", "steps/s", "vs none (same round)", "scoring s"], table))
        lines.append(f"\ncache: built at {res['cache_build_s_per_step']:.2f} s per step (once per "
                     f"parent, data, budget and seed); k={res['k']} with fp16 values: "
                     f"{res['cache_mb_per_million_tokens']:.0f} MB per million training tokens")
    if res["rss"]:
        base = res["rss"]["none"]["peak_rss_mb"]
        table = [[m, f"{r['rss_before_mb']:.0f}", f"{r['peak_rss_mb']:.0f}",
                  f"{r['peak_rss_mb'] - base:+.0f}"] for m, r in res["rss"].items()]
        lines.append("\nPeak RSS of one step, one fresh process per mode (VmHWM):\n")
        lines.append(markdown_table(["process", "RSS before models MB", "peak MB", "vs none MB"], table))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=2, help="optimizer steps per timed run")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds of the three modes")
    parser.add_argument("--k", type=int, default=32, help="top-k of the cache")
    parser.add_argument("--json", action="store_true", help="print JSON instead of markdown")
    parser.add_argument("--only", choices=["memory", "timing"], help="run one half only")
    parser.add_argument("--rss-child", choices=("build",) + MODES, help=argparse.SUPPRESS)
    parser.add_argument("--cache-path", type=Path, help=argparse.SUPPRESS)
    add_smoke_flag(parser)
    args = parser.parse_args(argv)
    if args.rss_child:
        print(json.dumps(measure_rss(args.rss_child, args.smoke, args.k, args.cache_path)))
        return 0
    if args.smoke:
        start_smoke()
        args.steps, args.rounds = 1, 1
    info = machine_info(threads=1)
    res = run(args.smoke, args.steps, args.rounds, args.k, memory=args.only != "timing",
              timing=args.only != "memory")
    append_jsonl(results_dir("distill") / "bench_distill.jsonl", {"machine": info, **res})
    print(json.dumps({"machine": info, **res}, indent=2) if args.json else report(info, res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
