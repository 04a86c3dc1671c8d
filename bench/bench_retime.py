"""Issue 16 "Ordering": do two re-timings of a front agree on its order?

    python -m bench.bench_retime [all] [--n 30] [--cpu 0]   # ~5 minutes on a 2-core VM
    python -m bench.bench_retime report                     # tables from the last run
    python -m bench.bench_retime --quick                    # ~1 minute: 8 small candidates, few
                                                            # runs, results in a temporary folder
                                                            # (--smoke is the same)

``all``: ``--n`` front-like candidates (untrained architectures of `tiny.yaml`, <= 1.5M
parameters and <= 1.2 decode MFLOPs, picked from 400 uniform draws so that their decode MFLOPs
are spread evenly on a log scale: a range of latencies with near neighbours all along it) are
exported once into ``$NAS_BENCH_CACHE/retime_graphs``; then four fresh processes time them on
``cpu-1t`` pinned to ``--cpu``, in this order:

* ``together1``, ``together2``: `nas.latency.measure_together` over all candidates, the
  re-timing ``nas retime`` runs (every round visits every candidate in a fresh random order;
  seeds 1 and 2), each median with its bootstrap 95% interval;
* ``alone1``, ``alone2`` (between and after them): `nas.latency.measure` one candidate at a
  time, in a fresh random order per sweep -- how a search times them, except that a search
  spaces them minutes apart (training in between), so drift hurts it more than here.

Report, per mode and graph (decode is the objective; prefill for comparison): over the pairs
whose medians differ by >= 3% (mean of the two sweeps), the share ordered the same in both sweeps
(goal >= 99%); Kendall tau between the two sweeps (goal >= 0.97; scipy's tau-b, or the same
computed here where scipy is missing); and for ``together``, how often a pair whose 95% intervals
are disjoint in one sweep is ordered the same in the other (the intervals' honesty). Rows go to
bench/results/retime/sweeps.jsonl (tagged by run), the report to report.log and section.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

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
    start_smoke,
)

if TYPE_CHECKING:
    from nas.architecture import Architecture
    from nas.hardware import HardwareProfile

SEED = 16
DRAWS = 400
MAX_PARAMS, QUICK_MAX_PARAMS = 1.5e6, 2e5
MAX_DECODE_MFLOPS = 1.2  # keeps 4 sweeps of 30 on cpu-1t near 5 minutes on a loaded 2-core VM
SWEEPS = (("together1", "together", 1), ("alone1", "alone", 1),
          ("together2", "together", 2), ("alone2", "alone", 2))
DIFF = 0.03  # pairs whose medians differ by at least this much must be ordered the same
GOAL_SAME, GOAL_TAU = 0.99, 0.97
GRAPHS = ("decode", "prefill")


def graphs_dir() -> Path:
    """Read at call time: ``--smoke`` moves ``$NAS_BENCH_CACHE`` to its temporary folder."""
    return Path(os.environ.get("NAS_BENCH_CACHE", Path.home() / ".cache" / "nas-bench")) / "retime_graphs"


def candidates(n: int, quick: bool) -> list[Architecture]:
    """``n`` distinct draws of tiny.yaml spread evenly in log decode MFLOPs (deterministic)."""
    from bench.common import sample_archs
    from nas.architecture import static_metrics
    from nas.space import load_space

    pool = sample_archs(load_space("tiny"), DRAWS, SEED, max_params=QUICK_MAX_PARAMS if quick else MAX_PARAMS)
    pool = sorted((a for a in pool if static_metrics(a)["decode_mflops"] <= MAX_DECODE_MFLOPS),
                  key=lambda a: static_metrics(a)["decode_mflops"])
    flops = np.log([static_metrics(a)["decode_mflops"] for a in pool])
    chosen: list[Architecture] = []
    for target in np.linspace(flops[0], flops[-1], n):
        left = [i for i in range(len(pool)) if pool[i] not in chosen]
        chosen.append(pool[min(left, key=lambda i: abs(flops[i] - target))])
    return chosen


def profile(quick: bool) -> HardwareProfile:
    from nas.hardware import load_profile

    cpu = load_profile("cpu-1t")
    return dataclasses.replace(cpu, warmup=1, repeats=5, rounds=4) if quick else cpu


def export(archs: list[Architecture]) -> None:
    import torch

    from nas.model import build_model
    from nas.onnx_export import export_onnx

    torch.set_num_threads(1)
    for arch in archs:
        d = graphs_dir() / arch.hash
        if not ((d / "decode.onnx").is_file() and (d / "model.onnx").is_file()):
            export_onnx(build_model(arch, seed=0), arch, d, check=False)


def sweep(run: str, tag: str, mode: str, seed: int, n: int, cpu: int, quick: bool) -> None:
    """One fresh process: every candidate timed once, together or one at a time."""
    from nas.latency import GraphPair, measure, measure_together

    archs = candidates(n, quick)
    prof = profile(quick)
    graphs = {a.hash: GraphPair(graphs_dir() / a.hash / "model.onnx", graphs_dir() / a.hash / "decode.onnx")
              for a in archs}
    started = time.perf_counter()
    if mode == "together":
        timed = measure_together(graphs, prof, {cpu}, seed=seed)
    else:
        order = np.random.default_rng(seed).permutation(len(archs))
        timed = {archs[i].hash: measure(graphs[archs[i].hash], prof, {cpu}) for i in order}
    seconds = time.perf_counter() - started
    for arch in archs:
        lat = timed[arch.hash]
        row: dict[str, Any] = {"run": run, "tag": tag, "mode": mode, "hash": arch.hash,
                               "describe": arch.describe(), "params": arch.n_params,
                               "sweep_seconds": seconds, "loadavg": os.getloadavg()[0],
                               "machine": lat.machine.summary if lat.machine else None}
        for graph in GRAPHS:
            stats = getattr(lat, graph)
            row.update({f"{graph}_ms": stats.median_ms, f"{graph}_cv": stats.cv,
                        f"{graph}_ci": [stats.ci_low_ms, stats.ci_high_ms]})
        append_jsonl(sweeps_path(), row)
    print(f"sweep {tag}: {len(archs)} candidates {mode} in {seconds:.0f}s", flush=True)


def sweeps_path() -> Path:
    return results_dir("retime") / "sweeps.jsonl"


# ----- the report ---------------------------------------------------------------------------
def kendall_tau(a: np.ndarray, b: np.ndarray) -> float:
    """Kendall's tau-b: scipy's where installed, else the O(n^2) definition."""
    try:
        from scipy.stats import kendalltau
    except ImportError:
        concordant = discordant = ties_a = ties_b = 0
        for i, j in itertools.combinations(range(len(a)), 2):
            da, db = np.sign(a[i] - a[j]), np.sign(b[i] - b[j])
            if da == 0 and db == 0:
                continue
            if da == 0:
                ties_a += 1
            elif db == 0:
                ties_b += 1
            elif da == db:
                concordant += 1
            else:
                discordant += 1
        n0 = concordant + discordant
        return (concordant - discordant) / math.sqrt((n0 + ties_a) * (n0 + ties_b))
    return float(kendalltau(a, b).statistic)


def agreement(first: list[dict[str, Any]], second: list[dict[str, Any]], graph: str) -> dict[str, Any]:
    """The ordering numbers of two sweeps of the same candidates on one graph."""
    by_hash = {r["hash"]: r for r in second}
    pairs = [(r, by_hash[r["hash"]]) for r in first if r["hash"] in by_hash]
    a = np.array([p[0][f"{graph}_ms"] for p in pairs])
    b = np.array([p[1][f"{graph}_ms"] for p in pairs])
    mean = (a + b) / 2
    wide = same = disjoint = disjoint_same = 0
    for i, j in itertools.combinations(range(len(pairs)), 2):
        agree = np.sign(a[i] - a[j]) == np.sign(b[i] - b[j])
        if abs(mean[i] - mean[j]) / min(mean[i], mean[j]) >= DIFF:
            wide += 1
            same += bool(agree)
        ci = [pairs[k][0][f"{graph}_ci"] for k in (i, j)]
        if all(c and c[0] is not None for c in ci) and (ci[0][1] < ci[1][0] or ci[1][1] < ci[0][0]):
            disjoint += 1
            disjoint_same += bool(agree)
    rel = np.abs(b / a - 1)
    return {"n": len(pairs), "pairs": len(pairs) * (len(pairs) - 1) // 2, "wide": wide,
            "same": same / wide if wide else math.nan, "tau": kendall_tau(a, b),
            "disjoint": disjoint, "disjoint_same": disjoint_same / disjoint if disjoint else math.nan,
            "median_rel_diff": float(np.median(rel)), "spread": float(mean.max() / mean.min())}


def report(run: str | None = None) -> str:
    rows = read_jsonl(sweeps_path())
    if not rows:
        return "no sweeps recorded yet"
    run = run or rows[-1]["run"]
    rows = [r for r in rows if r["run"] == run]
    by_tag = {tag: [r for r in rows if r["tag"] == tag] for tag, _, _ in SWEEPS}
    table, verdicts = [], []
    for mode in ("together", "alone"):
        first, second = by_tag[f"{mode}1"], by_tag[f"{mode}2"]
        if not first or not second:
            continue
        for graph in GRAPHS:
            got = agreement(first, second, graph)
            goal = got["same"] >= GOAL_SAME and got["tau"] >= GOAL_TAU
            table.append([mode, graph, got["n"], f"{got['spread']:.1f}x", f"{got['wide']} of {got['pairs']}",
                          f"{100 * got['same']:.1f}%", f"{got['tau']:.3f}",
                          f"{100 * got['median_rel_diff']:.1f}%",
                          (f"{100 * got['disjoint_same']:.1f}% of {got['disjoint']}"
                           if mode == "together" else "-"),
                          f"{first[0]['sweep_seconds']:.0f} / {second[0]['sweep_seconds']:.0f}"])
            if graph == "decode":
                verdicts.append(f"- {mode}, decode: {'meets' if goal else 'misses'} the goals: same "
                                f"order {100 * got['same']:.1f}% (goal >= {100 * GOAL_SAME:.0f}%), "
                                f"Kendall tau {got['tau']:.3f} (goal >= {GOAL_TAU})")
    machine = rows[0].get("machine") or "unknown"
    loads = [r["loadavg"] for r in rows]
    lines = [f"run {run}: {machine}; load average {min(loads):.2f}-{max(loads):.2f} during the sweeps", "",
             markdown_table(["mode", "graph", "n", "latency range", "pairs >= 3% apart", "same order",
                             "Kendall tau", "median abs. rel. diff", "disjoint 95% CIs same order",
                             "sweep s (1 / 2)"], table), "", *verdicts]
    return "\n".join(lines)


def history() -> str:
    """Every run recorded in sweeps.jsonl, decode only: together vs one at a time."""
    rows = read_jsonl(sweeps_path())
    table = []
    for run in dict.fromkeys(r["run"] for r in rows):
        mine = [r for r in rows if r["run"] == run]
        got = {}
        for mode in ("together", "alone"):
            first, second = ([r for r in mine if r["tag"] == f"{mode}{k}"] for k in (1, 2))
            got[mode] = agreement(first, second, "decode") if first and second else None
        if None in got.values():
            continue
        loads = [r["loadavg"] for r in mine]
        seconds = sorted({r["sweep_seconds"] for r in mine})
        table.append([run, f"{min(loads):.2f}-{max(loads):.2f}", f"{seconds[0]:.0f}-{seconds[-1]:.0f}",
                      *(f"{100 * got[m]['same']:.1f}% / {got[m]['tau']:.3f}" for m in ("together", "alone"))])
    return markdown_table(["run", "load average", "sweep s", "together: same order / tau",
                           "one at a time: same order / tau"], table)


def section(text: str, header: str) -> str:
    return "\n".join([
        "### The front re-timed together (issue 16: ordering)", "",
        "`python -m bench.bench_retime`: the same front-like candidates (tiny space, spread in "
        "latency) timed on cpu-1t in two independent sweeps, each a fresh process: together "
        "(`measure_together`, what `nas retime` and the end of a search run: interleaved rounds, "
        "random order, bootstrap 95% intervals) and one at a time (`measure`, as a search times "
        "them, there minutes apart). Pairs >= 3% apart must keep their order in >= 99% of cases, "
        "Kendall tau >= 0.97.", "", header, "", text, "", "Every run so far (decode):", "",
        history(), ""])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", nargs="?", default="all", choices=["all", "report", "_sweep"])
    parser.add_argument("--n", type=int, default=30)
    parser.add_argument("--cpu", type=int, default=0, help="core to time on")
    parser.add_argument("--quick", action="store_true",
                        help="8 small candidates, few runs, results in a temporary folder (= --smoke)")
    parser.add_argument("--run", help="(internal) run id")
    parser.add_argument("--tag")
    parser.add_argument("--mode")
    parser.add_argument("--seed", type=int, default=0)
    add_smoke_flag(parser)
    args = parser.parse_args()
    quick = args.quick or args.smoke
    if quick:
        start_smoke()
    n = 8 if quick and args.n == 30 else args.n
    if args.command == "_sweep":
        sweep(args.run, args.tag, args.mode, args.seed, n, args.cpu, quick)
        return
    if args.command == "all":
        from nas.machine import local_machine

        run = time.strftime("%Y%m%dT%H%M%S") + ("-quick" if quick else "")
        info = machine_info(threads=1)
        here = local_machine()
        header = format_machine(info) + f"\n- timing machine: {here.summary} [{here.hash}]"
        print(header, flush=True)
        started = time.perf_counter()
        export(candidates(n, quick))
        print(f"{n} candidates exported to {graphs_dir()} in {time.perf_counter() - started:.0f}s",
              flush=True)
        for tag, mode, seed in SWEEPS:
            command = [sys.executable, "-m", "bench.bench_retime", "_sweep", "--run", run, "--tag", tag,
                       "--mode", mode, "--seed", str(seed), "--n", str(n), "--cpu", str(args.cpu)]
            subprocess.run(command + (["--quick"] if quick else []), cwd=ROOT, check=True)
        text = report(run)
        print(text)
        out = results_dir("retime")
        out.mkdir(parents=True, exist_ok=True)
        (out / "report.log").write_text(header + "\n\n" + text + "\n")
        (out / "section.md").write_text(section(text, header))
        print(json.dumps({"seconds": round(time.perf_counter() - started)}))
        return
    print(report(args.run))


if __name__ == "__main__":
    main()
