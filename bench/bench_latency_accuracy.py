"""Item 2: latency accuracy over many architectures -- CV, sweep-to-sweep rank agreement,
and the error of timing while a training process runs on the other core.

    python -m bench.bench_latency_accuracy all [--n 60] [--pause-pid PID ...]   # ~6 minutes
    python -m bench.bench_latency_accuracy report                               # tables only
    python -m bench.bench_latency_accuracy all --smoke   # seconds: 5 small candidates, 2 sweeps

``all`` = ``export`` then four sweeps, each a fresh process (``sweep --tag T --condition C``):
idle1, busy1, idle2, busy2 (interleaved so slow drift of the machine hits both conditions).

* export: ``--n`` distinct uniform draws from `tiny.yaml` (params <= 1.5M), untrained weights
  (latency depends on shape, not weights), exported with `nas.onnx_export.export_onnx` into
  ``$NAS_BENCH_CACHE/latency_graphs`` (default ``~/.cache/nas-bench``; graphs are weights:
  kept out of the repository).
* sweep: `nas.latency.measure(graphs, cpu-1t, cpus={0})` -- the product's measurement, pinned to
  core 0 -- for every candidate; one JSON line per candidate in
  bench/results/latency_accuracy/latency_sweeps.jsonl (resumable by (tag, hash)).
  ``--condition busy``: a real proxy-training loop (`nas.proxy.train`, 1.1M-parameter
  candidate, one thread) runs pinned to core 1 for the whole sweep -- what a search that trains
  on one core while timing on the other sees. ``idle``: no training of ours runs, i.e. the
  policy "timing waits for training to pause". ``--pause-pid``: our own long-running benchmark
  processes, stopped (SIGSTOP) for the sweep and continued after, so they do not count as load.
  Other users' processes on this shared machine are not controlled: the load average is logged.
* report: median and p95 of the within-measurement robust CV (profile cpu-1t: 10 rounds x 40
  runs), Kendall tau between the two idle sweeps and between the two busy sweeps, and the
  relative error busy vs idle (per candidate: busy median / mean of the idle medians - 1).

``--smoke``: five candidates of <= 200k parameters, cpu-1t with 1 warm-up and 2 x 3 timed runs,
the sweeps idle1 and busy1 only, results and graphs in a temporary folder.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from bench.common import (
    ROOT,
    add_smoke_flag,
    append_jsonl,
    format_machine,
    machine_info,
    markdown_table,
    read_jsonl,
    results_dir,
    sample_archs,
    start_smoke,
)

if TYPE_CHECKING:
    from nas.architecture import Architecture
    from nas.hardware import HardwareProfile

SEED = 99
SWEEPS = (("idle1", "idle"), ("busy1", "busy"), ("idle2", "idle"), ("busy2", "busy"))
SMOKE_SWEEPS = SWEEPS[:2]
SMOKE_MAX_PARAMS = 2e5


def sweeps_path() -> Path:
    return results_dir("latency_accuracy") / "latency_sweeps.jsonl"


def graphs_dir() -> Path:
    """Read at call time: ``--smoke`` moves ``$NAS_BENCH_CACHE`` to its temporary folder."""
    cache = os.environ.get("NAS_BENCH_CACHE", Path.home() / ".cache" / "nas-bench")
    return Path(cache) / "latency_graphs"


def _archs(n: int, smoke: bool) -> list[Architecture]:
    from nas.space import load_space

    return sample_archs(load_space("tiny"), n, SEED, max_params=SMOKE_MAX_PARAMS if smoke else None)


def _profile(smoke: bool) -> HardwareProfile:
    from nas.hardware import load_profile

    profile = load_profile("cpu-1t")
    return dataclasses.replace(profile, warmup=1, repeats=3, rounds=2) if smoke else profile


def export(n: int, smoke: bool) -> None:
    import torch

    from nas.model import build_model
    from nas.onnx_export import export_onnx

    torch.set_num_threads(1)
    for arch in _archs(n, smoke):
        d = graphs_dir() / arch.hash
        if (d / "decode.onnx").is_file() and (d / "model.onnx").is_file():
            continue
        export_onnx(build_model(arch, seed=0), arch, d, check=False)
    print(f"{n} candidates exported to {graphs_dir()}", flush=True)


def _load_loop(seconds: float) -> None:
    """A real training load: proxy-train a 1.1M-parameter candidate again and again, core 1."""
    import torch

    from bench.common import corpus
    from nas.architecture import Architecture
    from nas.proxy import train
    from nas.specs import ProxyBudget

    os.sched_setaffinity(0, {1})
    torch.set_num_threads(1)
    arch = Architecture(n_layer=6, d_model=128, n_head=4, ffn_mult=4.0, vocab_size=256, max_seq_len=256)
    data = corpus("stdlib")
    end = time.time() + seconds
    while time.time() < end:
        train(arch, ProxyBudget(tokens=50_000, val_tokens=4096), data, threads=1)


def sweep(tag: str, condition: str, n: int, pause: list[int], smoke: bool) -> None:
    from nas.latency import GraphPair, measure

    profile = _profile(smoke)
    out = sweeps_path()
    done = {r["hash"] for r in read_jsonl(out) if r["tag"] == tag}
    archs = [a for a in _archs(n, smoke) if a.hash not in done]
    if not archs:
        return
    load = None
    for pid in pause:
        os.kill(pid, signal.SIGSTOP)
    try:
        if condition == "busy":
            load = subprocess.Popen([sys.executable, "-m", "bench.bench_latency_accuracy", "_load",
                                     "--seconds", "3600"], cwd=ROOT)
            time.sleep(1 if smoke else 3)  # let it reach its training loop
        for arch in archs:
            d = graphs_dir() / arch.hash
            lat = measure(GraphPair(d / "model.onnx", d / "decode.onnx"), profile, cpus={0})
            append_jsonl(out, {"tag": tag, "condition": condition, "hash": arch.hash,
                               "params": arch.n_params, "describe": arch.describe(),
                               "decode_ms": lat.decode.median_ms, "decode_cv": lat.decode.cv,
                               "prefill_ms": lat.prefill.median_ms, "prefill_cv": lat.prefill.cv,
                               "decode_p90": lat.decode.p90_ms, "prefill_p90": lat.prefill.p90_ms,
                               "loadavg": os.getloadavg()[0], "time": time.time(), "pid": os.getpid()})
    finally:
        if load is not None:
            load.terminate()
            load.wait()
        for pid in pause:
            os.kill(pid, signal.SIGCONT)
    print(f"sweep {tag} ({condition}): {len(archs)} candidates", flush=True)


def _kendall(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.stats import kendalltau

    return float(kendalltau(a, b).statistic)


def report() -> str:
    rows = read_jsonl(sweeps_path())
    by = {}
    for r in rows:
        by.setdefault(r["tag"], {})[r["hash"]] = r
    out = []
    table = []
    for tag, cond in SWEEPS:
        if tag not in by:
            continue
        rs = list(by[tag].values())
        load = np.array([r["loadavg"] for r in rs])
        for g in ("decode", "prefill"):
            cv = np.array([r[f"{g}_cv"] for r in rs]) * 100
            table.append([tag, cond, g, len(rs), f"{np.median(cv):.2f}%", f"{np.percentile(cv, 95):.2f}%",
                          f"{load.min():.1f}-{load.max():.1f}"])
    out.append("Within-measurement CV (robust, 1.4826 MAD / median of 400 runs):\n")
    out.append(markdown_table(["sweep", "condition", "graph", "n", "median CV", "p95 CV",
                               "load avg (1 min)"], table))
    table = []

    def common(t1: str, t2: str) -> list[str]:
        hs = sorted(set(by.get(t1, {})) & set(by.get(t2, {})))
        return hs

    pairs = [("idle1", "idle2"), ("busy1", "busy2"), ("idle1", "busy1"), ("idle2", "busy2")]
    for t1, t2 in pairs:
        hs = common(t1, t2)
        if len(hs) < 5:
            continue
        for g in ("decode", "prefill"):
            a = np.array([by[t1][h][f"{g}_ms"] for h in hs])
            b = np.array([by[t2][h][f"{g}_ms"] for h in hs])
            rel = np.abs(b / a - 1) * 100
            table.append([f"{t1} vs {t2}", g, len(hs), f"{_kendall(a, b):.3f}",
                          f"{np.median(rel):.2f}%", f"{np.percentile(rel, 95):.2f}%"])
    out.append("\nSweep-to-sweep agreement (separate processes):\n")
    out.append(markdown_table(["pair", "graph", "n", "Kendall tau", "median |rel. diff|",
                               "p95 |rel. diff|"], table))
    # busy vs idle: each busy sweep against the mean of the idle sweeps
    idle_tags = [t for t, c in SWEEPS if c == "idle" and t in by]
    busy_tags = [t for t, c in SWEEPS if c == "busy" and t in by]
    table = []
    for bt in busy_tags:
        hs = sorted(set(by[bt]).intersection(*[set(by[t]) for t in idle_tags])) if idle_tags else []
        if len(hs) < 5:
            continue
        for g in ("decode", "prefill"):
            idle = np.array([np.mean([by[t][h][f"{g}_ms"] for t in idle_tags]) for h in hs])
            busy = np.array([by[bt][h][f"{g}_ms"] for h in hs])
            rel = (busy / idle - 1) * 100
            table.append([bt, g, len(hs), f"{np.median(rel):+.2f}%", f"{np.median(np.abs(rel)):.2f}%",
                          f"{np.percentile(np.abs(rel), 95):.2f}%", f"{_kendall(idle, busy):.3f}"])
    out.append("\nBusy (training on core 1) vs idle (training paused), timing pinned to core 0:\n")
    out.append(markdown_table(["busy sweep", "graph", "n", "median signed error", "median |error|",
                               "p95 |error|", "tau vs idle"], table))
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("cmd", choices=["all", "export", "sweep", "report", "_load"])
    ap.add_argument("--n", type=int, default=60)
    ap.add_argument("--tag")
    ap.add_argument("--condition", choices=["idle", "busy"])
    ap.add_argument("--pause-pid", type=int, action="append", default=[])
    ap.add_argument("--seconds", type=float, default=600)
    add_smoke_flag(ap)
    args = ap.parse_args()
    if args.cmd == "_load":
        _load_loop(args.seconds)
        return
    if args.smoke:
        start_smoke()  # the environment carries it to the sweep processes
        args.n = 5
    if args.cmd != "report":
        print(format_machine(machine_info(threads=1)), flush=True)
    if args.cmd in ("all", "export"):
        export(args.n, args.smoke)
    if args.cmd == "sweep":
        sweep(args.tag, args.condition, args.n, args.pause_pid, args.smoke)
    if args.cmd == "all":
        for tag, cond in SMOKE_SWEEPS if args.smoke else SWEEPS:
            cmd = [sys.executable, "-m", "bench.bench_latency_accuracy", "sweep", "--tag", tag,
                   "--condition", cond, "--n", str(args.n)]
            for pid in args.pause_pid:
                cmd += ["--pause-pid", str(pid)]
            subprocess.run(cmd + (["--smoke"] if args.smoke else []), check=True, cwd=ROOT)
    if args.cmd in ("all", "report"):
        print(report())


if __name__ == "__main__":
    main()
