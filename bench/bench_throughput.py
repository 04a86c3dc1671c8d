"""Proxy-training throughput against the machine's own fp32 matmul speed.

    python bench/bench_throughput.py            # markdown table, ~1-2 minutes
    python bench/bench_throughput.py --json     # the same numbers as JSON
    python bench/bench_throughput.py --sweep    # batch size x seq len x threads, 1M and 10M models

For each candidate (~0.1M to ~10M parameters, byte vocabulary, stdlib corpus) the real
`nas.proxy.train` runs for ``--seconds`` (its ``max_seconds`` cap); tokens/s is the median over
its progress reports (about every 16 steps or 0.5 s; the first interval, with kernel set-up,
left out), which a burst of load from another process moves less than the mean (also in the
JSON, as ``tokens_per_s_mean``). Achieved FLOP/s is
``arch.training_flops_per_token(seq_len) * tokens/s`` (matmul FLOPs only: 3x forward), divided
by the fp32 ``torch.mm`` FLOP/s measured with the same thread count right before and after that
candidate (their mean), so drift of this shared machine divides out. With bf16 autocast the
fraction can exceed 1: the reference is fp32 on purpose, the question being how much of the
CPU's fp32 matmul speed training gets.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import (
    available_cores,
    format_machine,
    machine_info,
    markdown_table,
    matmul_flops,
)
from nas.architecture import Architecture
from nas.data import TokenData, prepare
from nas.specs import DataSpec, ProxyBudget

CANDIDATES: list[tuple[str, dict[str, Any]]] = [
    ("0.1M", dict(n_layer=2, d_model=64, n_head=4, n_kv_head=4)),
    ("0.6M", dict(n_layer=4, d_model=96, n_head=4, n_kv_head=4)),
    ("1M", dict(n_layer=4, d_model=128, n_head=4, n_kv_head=4)),
    ("3.5M", dict(n_layer=6, d_model=192, n_head=6, n_kv_head=6)),
    ("10M", dict(n_layer=4, d_model=384, n_head=6, n_kv_head=6)),
]
SWEEP_SHAPES = [(16, 64), (32, 64), (32, 128), (64, 128)]


def measure(name: str, arch: Architecture, data: TokenData, *, batch_size: int, seq_len: int,
            threads: int, bf16: bool, seconds: float) -> dict[str, Any]:
    from nas.proxy import train

    budget = ProxyBudget(tokens=200_000_000, batch_size=batch_size, seq_len=seq_len,
                         max_seconds=seconds, val_tokens=batch_size * seq_len)
    marks: list[tuple[float, int]] = []  # (time, steps done) at each progress report

    def on_progress(step: int, total: int, loss: float) -> None:
        marks.append((time.perf_counter(), step))

    os.environ["NAS_CPU_BF16"] = "1" if bf16 else "0"
    ref_before = matmul_flops(threads)
    result = train(arch, budget, data, device="cpu", threads=threads, progress=on_progress).result
    ref_after = matmul_flops(threads)
    reference = (ref_before + ref_after) / 2
    # Median over report intervals, the first (kernel set-up) left out: a burst of load from
    # another process on this shared machine moves the median far less than the mean.
    rates = [(s1 - s0) * batch_size * seq_len / (t1 - t0)
             for (t0, s0), (t1, s1) in zip(marks[1:-1], marks[2:]) if t1 > t0]
    tokens_per_s = statistics.median(rates) if len(rates) >= 3 else result.tokens_per_s
    achieved = arch.training_flops_per_token(seq_len) * tokens_per_s
    return {
        "candidate": name, "arch": arch.describe(), "params": arch.n_params,
        "precision": "bf16" if bf16 else "fp32", "threads": threads,
        "batch_size": batch_size, "seq_len": seq_len, "tokens": result.tokens,
        "tokens_per_s": tokens_per_s, "tokens_per_s_mean": result.tokens_per_s,
        "train_flops_per_s": achieved, "matmul_flops_per_s": reference,
        "matmul_drift": abs(ref_after - ref_before) / reference,
        "fraction": achieved / reference, "status": result.status,
    }


def _rows(results: list[dict[str, Any]]) -> list[list[Any]]:
    return [[r["candidate"], f"{r['params'] / 1e6:.2f}M", r["precision"], r["threads"],
             f"{r['batch_size']}x{r['seq_len']}", f"{r['tokens_per_s']:,.0f}",
             f"{r['train_flops_per_s'] / 1e9:.1f}", f"{r['matmul_flops_per_s'] / 1e9:.1f}",
             f"{r['matmul_drift']:.0%}", f"{r['fraction']:.0%}"] for r in results]


HEADERS = ["candidate", "params", "precision", "threads", "batch x seq", "tokens/s",
           "train GFLOP/s", "fp32 mm GFLOP/s", "mm drift", "fraction of mm"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=available_cores())
    parser.add_argument("--seconds", type=float, default=5.0, help="training time per measurement")
    parser.add_argument("--batch-size", type=int, default=ProxyBudget().batch_size)
    parser.add_argument("--seq-len", type=int, default=ProxyBudget().seq_len)
    parser.add_argument("--precision", choices=["fp32", "bf16", "both"], default="both")
    parser.add_argument("--sweep", action="store_true",
                        help="1M and 10M models over batch size x seq len x {1, all} threads")
    parser.add_argument("--candidates", default=",".join(n for n, _ in CANDIDATES),
                        help="comma-separated subset of: %(default)s")
    parser.add_argument("--json", action="store_true", help="print JSON instead of markdown")
    args = parser.parse_args(argv)
    wanted = [c.strip() for c in args.candidates.split(",") if c.strip()]
    unknown = sorted(set(wanted) - {n for n, _ in CANDIDATES})
    if unknown:
        parser.error(f"unknown candidates {unknown}")
    chosen = [(n, f) for n, f in CANDIDATES if n in wanted]

    info = machine_info(args.threads)
    data = prepare(DataSpec())
    precisions = [False, True] if args.precision == "both" else [args.precision == "bf16"]
    plan: list[tuple[str, dict[str, Any], int, int, int]] = []
    if args.sweep:
        thread_options = sorted({1, args.threads})
        for name, fields in chosen:
            if name in ("1M", "10M"):
                plan += [(name, fields, b, t, n) for b, t in SWEEP_SHAPES for n in thread_options]
    else:
        plan = [(name, fields, args.batch_size, args.seq_len, args.threads)
                for name, fields in chosen]
    results = []
    saved_env = os.environ.get("NAS_CPU_BF16")
    try:
        for name, fields, b, t, n in plan:
            arch = Architecture(**fields, vocab_size=data.vocab_size, max_seq_len=max(t, 256))
            for bf16 in precisions:
                results.append(measure(name, arch, data, batch_size=b, seq_len=t, threads=n,
                                       bf16=bf16, seconds=args.seconds))
                if not args.json:
                    print(f"  measured {name} {'bf16' if bf16 else 'fp32'} {b}x{t} "
                          f"threads={n}", file=sys.stderr, flush=True)
    finally:
        if saved_env is None:
            os.environ.pop("NAS_CPU_BF16", None)
        else:
            os.environ["NAS_CPU_BF16"] = saved_env
    info["loadavg_1m_end"] = round(os.getloadavg()[0], 2)
    if args.json:
        print(json.dumps({"machine": info, "data": data.description, "results": results}, indent=2))
        return 0
    print("# Proxy training throughput\n")
    print(format_machine(info))
    print(f"- data: {data.description}; load average (1 min) at end {info['loadavg_1m_end']}\n")
    print(markdown_table(HEADERS, _rows(results)))
    big = [r for r in results if r["params"] >= 1e6]
    for precision in sorted({r["precision"] for r in big}):
        worst = min(r["fraction"] for r in big if r["precision"] == precision)
        print(f"\n{precision}: lowest fraction of fp32 matmul for candidates >= 1M params: "
              f"{worst:.0%} (goal >= 50%)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
