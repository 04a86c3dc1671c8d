"""Proxy-training throughput against the machine's own fp32 matmul speed (or a GPU's bf16 one).

    python -m bench.bench_throughput            # markdown table, ~1-2 minutes
    python -m bench.bench_throughput --json     # the same numbers as JSON
    python -m bench.bench_throughput --sweep    # batch size x seq len x threads, 1M and 10M models
    python -m bench.bench_throughput --device cuda   # GPU: model-FLOP utilisation, ~3 minutes
    python -m bench.bench_throughput --smoke [--device cuda]   # seconds: the 0.1M model, 0.5 s

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

``--device cuda`` trains with the real ``nas.proxy.train(..., device="cuda")`` (bf16 autocast,
fp32 weights and loss) and reports model-FLOP utilisation (MFU): the same achieved FLOP/s (still
matmul FLOPs only, so elementwise ops, norms and the optimizer count as overhead) divided by the
GPU's bf16 dense ``torch.mm`` FLOP/s on 8192^3 matrices, measured right before and after each
candidate (`matmul_flops_cuda`: the peak this GPU reaches now, not the datasheet's). Candidates:
the five above plus slm-scale ones (vocabulary 8192, ffn_mult 2.75, GQA; the tokens are still
the byte corpus's, which changes nothing about speed), each at the tiny space's batch (16 x 64),
slm.yaml's (32 x 256) and a bigger one (128 x 256). Every measurement is also appended to
``throughput/throughput_cuda.jsonl`` in the results directory (``$NAS_BENCH_RESULTS``).

``--smoke``: the 0.1M candidate only, 0.5 s of training, fp32 on one thread (CPU) or the tiny
space's batch (CUDA), on the smoke text; a temporary folder.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from typing import Any

from bench.common import (
    add_smoke_flag,
    append_jsonl,
    available_cores,
    corpus,
    format_machine,
    machine_info,
    markdown_table,
    matmul_flops,
    results_dir,
    start_smoke,
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
# slm.yaml-like shapes (BPE vocabulary 8192, SwiGLU 2.75, head_dim 64, GQA): GPU only by default.
_SLM = dict(ffn_mult=2.75, vocab_size=8192, max_seq_len=512)
SLM_CANDIDATES: list[tuple[str, dict[str, Any]]] = [
    ("slm-6.5M", dict(n_layer=6, d_model=256, n_head=4, n_kv_head=2, **_SLM)),
    ("slm-19M", dict(n_layer=10, d_model=384, n_head=6, n_kv_head=2, **_SLM)),
    ("slm-45M", dict(n_layer=6, d_model=768, n_head=12, n_kv_head=4, **_SLM)),
]
SWEEP_SHAPES = [(16, 64), (32, 64), (32, 128), (64, 128)]
# The tiny space's budget batch, slm.yaml's, and a bigger one: how MFU grows with batch.
GPU_SHAPES = [(16, 64), (32, 256), (128, 256)]
MATMUL_N_CUDA = 8192


def matmul_flops_cuda(n: int = MATMUL_N_CUDA, rounds: int = 5, reps: int = 10,
                      warmup: int = 3) -> float:
    """Median bf16 FLOP/s of ``torch.mm`` on (n x n) matrices on the current CUDA device.

    The GPU's dense matmul peak as this run finds it (clocks, power cap, other processes), timed
    with CUDA events over ``reps`` back-to-back calls per round so launch gaps do not count.
    """
    import torch

    gen = torch.Generator(device="cuda").manual_seed(0)
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16, generator=gen)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16, generator=gen)
    out = torch.empty_like(a)
    for _ in range(warmup):  # first calls pick the cuBLAS kernel and raise the clocks
        torch.mm(a, b, out=out)
    torch.cuda.synchronize()
    seconds = []
    for _ in range(rounds):
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(reps):
            torch.mm(a, b, out=out)
        end.record()
        end.synchronize()
        seconds.append(start.elapsed_time(end) / 1e3 / reps)  # elapsed_time is in ms
    del a, b, out
    torch.cuda.empty_cache()
    return 2 * n**3 / statistics.median(seconds)


def reference_flops(device: str, threads: int) -> float:
    """The same-run reference speed: fp32 mm on the CPU's threads, or bf16 mm on the GPU."""
    return matmul_flops_cuda() if device == "cuda" else matmul_flops(threads)


def gpu_info() -> dict[str, Any]:
    import torch

    props = torch.cuda.get_device_properties(0)
    return {"gpu": torch.cuda.get_device_name(0), "cuda": torch.version.cuda,
            "gpu_memory_gib": round(props.total_memory / 2**30, 1),
            "bf16": torch.cuda.is_bf16_supported()}


def measure(name: str, arch: Architecture, data: TokenData, *, batch_size: int, seq_len: int,
            threads: int, bf16: bool, seconds: float, device: str = "cpu") -> dict[str, Any]:
    from nas.proxy import train

    budget = ProxyBudget(tokens=200_000_000, batch_size=batch_size, seq_len=seq_len,
                         max_seconds=seconds, val_tokens=batch_size * seq_len)
    marks: list[tuple[float, int]] = []  # (time, steps done) at each progress report

    def on_progress(step: int, total: int, loss: float) -> None:  # noqa: ARG001 - train's signature
        marks.append((time.perf_counter(), step))

    if device == "cpu":
        os.environ["NAS_CPU_BF16"] = "1" if bf16 else "0"
    ref_before = reference_flops(device, threads)
    result = train(arch, budget, data, device=device, threads=threads, progress=on_progress).result
    ref_after = reference_flops(device, threads)
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
        **({"device": device} if device != "cpu" else {}),  # CPU rows keep their old keys
    }


def _rows(results: list[dict[str, Any]]) -> list[list[Any]]:
    return [[r["candidate"], f"{r['params'] / 1e6:.2f}M", r["precision"], r["threads"],
             f"{r['batch_size']}x{r['seq_len']}", f"{r['tokens_per_s']:,.0f}",
             f"{r['train_flops_per_s'] / 1e9:.1f}", f"{r['matmul_flops_per_s'] / 1e9:.1f}",
             f"{r['matmul_drift']:.0%}", f"{r['fraction']:.0%}"] for r in results]


HEADERS = ["candidate", "params", "precision", "threads", "batch x seq", "tokens/s",
           "train GFLOP/s", "fp32 mm GFLOP/s", "mm drift", "fraction of mm"]


def _cuda_rows(results: list[dict[str, Any]]) -> list[list[Any]]:
    return [[r["candidate"], f"{r['params'] / 1e6:.2f}M", f"{r['batch_size']}x{r['seq_len']}",
             f"{r['tokens_per_s']:,.0f}", f"{r['train_flops_per_s'] / 1e12:.1f}",
             f"{r['matmul_flops_per_s'] / 1e12:.0f}", f"{r['matmul_drift']:.0%}",
             f"{r['fraction']:.1%}"] for r in results]


CUDA_HEADERS = ["candidate", "params", "batch x seq", "tokens/s", "train TFLOP/s",
                "bf16 mm TFLOP/s", "mm drift", "MFU"]


def _plan(chosen: list[tuple[str, dict[str, Any]]], shapes: list[tuple[int, int]],
          threads: int) -> list[tuple[str, dict[str, Any], int, int, int]]:
    return [(name, fields, b, t, threads) for name, fields in chosen for b, t in shapes]


def _architecture(fields: dict[str, Any], vocab_size: int, seq_len: int) -> Architecture:
    # The slm candidates fix their own vocabulary; the others take the byte corpus's.
    return Architecture(**{"vocab_size": vocab_size, "max_seq_len": max(seq_len, 256), **fields})


def run_plan(plan: list[tuple[str, dict[str, Any], int, int, int]], data: TokenData,
             precisions: list[bool], seconds: float, device: str,
             quiet: bool) -> list[dict[str, Any]]:
    results = []
    saved_env = os.environ.get("NAS_CPU_BF16")
    try:
        for name, fields, b, t, n in plan:
            arch = _architecture(fields, data.vocab_size, t)
            for bf16 in precisions:
                row = measure(name, arch, data, batch_size=b, seq_len=t, threads=n, bf16=bf16,
                              seconds=seconds, device=device)
                results.append(row)
                if device == "cuda":  # one line per measurement: a killed run keeps its rows
                    append_jsonl(results_dir("throughput") / "throughput_cuda.jsonl", row)
                if not quiet:
                    print(f"  measured {name} {'bf16' if bf16 else 'fp32'} {b}x{t} "
                          f"threads={n}", file=sys.stderr, flush=True)
    finally:
        if saved_env is None:
            os.environ.pop("NAS_CPU_BF16", None)
        else:
            os.environ["NAS_CPU_BF16"] = saved_env
    return results


def print_cpu_report(info: dict[str, Any], data: TokenData, results: list[dict[str, Any]]) -> None:
    print("# Proxy training throughput\n")
    print(format_machine(info))
    print(f"- data: {data.description}; load average (1 min) at end {info['loadavg_1m_end']}\n")
    print(markdown_table(HEADERS, _rows(results)))
    big = [r for r in results if r["params"] >= 1e6]
    for precision in sorted({r["precision"] for r in big}):
        worst = min(r["fraction"] for r in big if r["precision"] == precision)
        print(f"\n{precision}: lowest fraction of fp32 matmul for candidates >= 1M params: "
              f"{worst:.0%} (goal >= 50%)")


def print_cuda_report(info: dict[str, Any], data: TokenData,
                      results: list[dict[str, Any]]) -> None:
    print("# Proxy training throughput on the GPU\n")
    print(format_machine(info))
    print(f"- gpu: {info['gpu']} ({info['gpu_memory_gib']} GiB), CUDA {info['cuda']}; "
          f"training: nas.proxy.train with bf16 autocast")
    print(f"- data: {data.description}; load average (1 min) at end {info['loadavg_1m_end']}")
    peaks = [r["matmul_flops_per_s"] for r in results]
    print(f"- measured bf16 dense matmul peak (torch.mm {MATMUL_N_CUDA}^3, before and after each "
          f"candidate): median {statistics.median(peaks) / 1e12:.0f} TFLOP/s, range "
          f"{min(peaks) / 1e12:.0f}-{max(peaks) / 1e12:.0f}")
    print("- MFU = arch.training_flops_per_token(seq_len) x tokens/s (matmul FLOPs only: 3x the "
          "forward's) / that peak\n")
    print(markdown_table(CUDA_HEADERS, _cuda_rows(results)))
    shapes = sorted({(r["batch_size"], r["seq_len"]) for r in results}, key=lambda s: s[0] * s[1])
    names = list(dict.fromkeys(r["candidate"] for r in results))
    mfu = {(r["candidate"], r["batch_size"], r["seq_len"]): r["fraction"] for r in results}
    table = [[n] + [f"{mfu[(n, b, t)]:.1%}" if (n, b, t) in mfu else "-" for b, t in shapes]
             for n in names]
    print("\nMFU by batch shape:\n")
    print(markdown_table(["candidate"] + [f"{b}x{t}" for b, t in shapes], table))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--threads", type=int, default=available_cores())
    parser.add_argument("--seconds", type=float, default=5.0, help="training time per measurement")
    parser.add_argument("--batch-size", type=int, default=None,
                        help=f"default {ProxyBudget().batch_size}; on cuda: all of {GPU_SHAPES}")
    parser.add_argument("--seq-len", type=int, default=None,
                        help=f"default {ProxyBudget().seq_len}; on cuda: all of {GPU_SHAPES}")
    parser.add_argument("--precision", choices=["fp32", "bf16", "both"], default="both",
                        help="CPU only: CUDA always trains with nas.proxy's bf16 autocast")
    parser.add_argument("--sweep", action="store_true",
                        help="1M and 10M models over batch size x seq len x {1, all} threads")
    all_candidates = CANDIDATES + SLM_CANDIDATES
    parser.add_argument("--candidates", default=None,
                        help="comma-separated subset of: "
                             f"{','.join(n for n, _ in all_candidates)} (default: the first "
                             f"{len(CANDIDATES)} on cpu, all on cuda)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of markdown")
    add_smoke_flag(parser)
    args = parser.parse_args(argv)
    cuda = args.device == "cuda"
    if args.smoke:
        start_smoke()
        args.candidates, args.seconds, args.threads, args.sweep = "0.1M", 0.5, 1, False
        if cuda:
            args.batch_size, args.seq_len = GPU_SHAPES[0]
        else:
            args.precision = "fp32"
    default = all_candidates if cuda else CANDIDATES
    wanted = [c.strip() for c in (args.candidates or ",".join(n for n, _ in default)).split(",")
              if c.strip()]
    unknown = sorted(set(wanted) - {n for n, _ in all_candidates})
    if unknown:
        parser.error(f"unknown candidates {unknown}")
    chosen = [(n, f) for n, f in all_candidates if n in wanted]
    if cuda:
        import torch

        if not torch.cuda.is_available():
            parser.error("--device cuda: torch sees no CUDA device")
        if args.sweep or args.precision == "fp32":
            parser.error("--device cuda: --sweep and --precision fp32 are CPU-only")

    info = machine_info(args.threads)
    if cuda:
        info.update(gpu_info())
    data = corpus("smoke") if args.smoke else prepare(DataSpec())
    budget = ProxyBudget()
    if args.batch_size is None and args.seq_len is None and cuda:
        shapes = GPU_SHAPES
    else:
        shapes = [(args.batch_size or budget.batch_size, args.seq_len or budget.seq_len)]
    precisions = [args.precision == "bf16"] if args.precision != "both" else [False, True]
    if cuda:  # nas.proxy trains CUDA with bf16 autocast only
        precisions = [True]
    if args.sweep:
        thread_options = sorted({1, args.threads})
        plan = [(name, fields, b, t, n) for name, fields in chosen if name in ("1M", "10M")
                for b, t in SWEEP_SHAPES for n in thread_options]
    else:
        plan = _plan(chosen, shapes, args.threads)
    results = run_plan(plan, data, precisions, args.seconds, args.device, args.json)
    info["loadavg_1m_end"] = round(os.getloadavg()[0], 2)
    if args.json:
        print(json.dumps({"machine": info, "data": data.description, "results": results}, indent=2))
    elif cuda:
        print_cuda_report(info, data, results)
    else:
        print_cpu_report(info, data, results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
