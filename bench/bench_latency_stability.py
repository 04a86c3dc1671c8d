"""How reproducible is `nas.latency.measure`? Within one run and across fresh processes.

    python -m bench.bench_latency_stability [--processes 5] [--profile cpu-1t] [--cpus 1] [--json]
    python -m bench.bench_latency_stability --smoke   # seconds: 2 candidates, 2 processes, few runs

Real candidates from the default (tiny) search space are exported once; then each of
``--processes`` fresh Python processes measures every candidate once with the profile's
warm-up, rounds and repeats (`nas.latency.time_samples`, what `measure` runs), timing the fixed
reference graph (`reference_model`) in the same rounds. Per candidate and graph (prefill,
decode) it reports:

* ``cv``: the robust within-run CV (1.4826 MAD / median of single runs, as `LatencyStats.cv`),
  median over processes (max in brackets);
* ``spread``: (max - min) / median of the per-process medians -- the range of answers a user
  could have been given, relative to the typical one;
* ``spread/ref``: the same for median / reference median, i.e. with drift divided out;
* ``ref spread``: the reference graph's own spread (what drift there was to divide out);
* ``retried``: runs repeated per measurement because a thread was preempted (median);
* ``s/measure``: wall seconds of one `measure` of the candidate (reference time removed).

Goals: within-run CV <= 2%, across-process spread <= 3%. The header prints the machine and
how contended its CPUs were during the run (Linux PSI: share of time some runnable task
waited for a CPU), since on a shared machine that decides most of the outcome.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import ROOT, add_smoke_flag, format_machine, machine_info, markdown_table, start_smoke

# From the default search space (search_spaces/tiny.yaml), smallest to largest, one per
# attention kind so the decode graphs differ in kind (KV cache, window, recurrent state).
CANDIDATES: dict[str, dict[str, Any]] = {
    "L2 d64": dict(n_layer=2, d_model=64, n_head=4, n_kv_head=4),
    "L4 d96 linear": dict(n_layer=4, d_model=96, n_head=4, n_kv_head=4, attention="linear"),
    "L4 d128 gqa": dict(n_layer=4, d_model=128, n_head=4, n_kv_head=2),
    "L6 d128 window repeat:2": dict(n_layer=6, d_model=128, n_head=8, n_kv_head=2,
                                    attention="sliding_window", window=32, sharing="repeat:2"),
}
SMOKE_CANDIDATES = 2


def reference_model() -> bytes:
    """A fixed graph (an MLP of 256-wide MatMuls, 16 rows) timed next to candidates to expose drift.

    Cache-resident and shape-fixed, so its time moves only with the machine, not the candidate.
    """
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    width, layers, rows = 256, 4, 16
    nodes, inits = [], []
    x = "x"
    for i in range(layers):
        w = rng.standard_normal((width, width)).astype(np.float32) * 0.05
        inits.append(numpy_helper.from_array(w, f"w{i}"))
        nodes.append(helper.make_node("MatMul", [x, f"w{i}"], [f"h{i}"]))
        nodes.append(helper.make_node("Relu", [f"h{i}"], [f"a{i}"]))
        x = f"a{i}"
    graph = helper.make_graph(
        nodes, "reference",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [rows, width])],
        [helper.make_tensor_value_info(x, TensorProto.FLOAT, [rows, width])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return model.SerializeToString()


def cpu_pressure_us() -> int | None:
    """Total µs some task waited for a CPU since boot (Linux PSI), None where unavailable."""
    try:
        some = Path("/proc/pressure/cpu").read_text().splitlines()[0]
    except OSError:
        return None
    return int(some.rsplit("total=", 1)[1])


def export_candidates(out: Path, labels: list[str]) -> dict[str, tuple[str, str]]:
    from nas.architecture import Architecture
    from nas.model import build_model
    from nas.onnx_export import export_onnx

    graphs = {}
    for label in labels:
        arch = Architecture(**CANDIDATES[label])
        exported = export_onnx(build_model(arch), arch, out / arch.hash)
        graphs[label] = (str(exported.prefill), str(exported.decode))
    return graphs


def worker(config: dict[str, Any]) -> dict[str, Any]:
    """One fresh process: measure every candidate once, return the raw samples."""
    from nas.hardware import HardwareProfile
    from nas.latency import GraphPair, time_samples

    profile = HardwareProfile.from_dict(config["profile"])
    cpus = set(config["cpus"]) if config["cpus"] else None
    reference = reference_model()
    out = {}
    for label, (prefill, decode) in config["graphs"].items():
        start = time.perf_counter()
        samples = time_samples(GraphPair(Path(prefill), Path(decode)), profile, cpus,
                               reference=reference, cache_dir=Path(config["cache_dir"]))
        assert samples.reference is not None
        # What `measure` alone would have taken: minus the reference's warm-up and timed runs.
        per_run = float(samples.reference.mean()) / 1e3
        reference_s = per_run * profile.rounds * (profile.warmup + profile.repeats)
        out[label] = {"prefill": samples.prefill.tolist(), "decode": samples.decode.tolist(),
                      "reference": samples.reference.tolist(), "retried": samples.retried,
                      "seconds": time.perf_counter() - start - reference_s}
    return out


def spread(values: list[float]) -> float:
    return (max(values) - min(values)) / statistics.median(values)


def analyse(runs: list[dict[str, Any]], labels: list[str]) -> list[dict[str, Any]]:
    from nas.latency import summarize

    rows = []
    for label in labels:
        for graph in ("prefill", "decode"):
            stats = [summarize(np.array(run[label][graph])) for run in runs]
            refs = [summarize(np.array(run[label]["reference"])) for run in runs]
            medians = [s.median_ms for s in stats]
            rows.append({
                "candidate": label, "graph": graph,
                "median_ms": statistics.median(medians),
                "medians_ms": medians,
                "cv": statistics.median(s.cv for s in stats),
                "cv_max": max(s.cv for s in stats),
                "spread": spread(medians),
                "spread_ref": spread([s.median_ms / r.median_ms for s, r in zip(stats, refs)]),
                "ref_spread": spread([r.median_ms for r in refs]),
                "retried": statistics.median(run[label]["retried"] for run in runs),
                "seconds": statistics.median(run[label]["seconds"] for run in runs),
            })
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    headers = ["candidate", "graph", "median ms", "cv (max)", "spread", "spread/ref", "ref spread",
               "retried", "s/measure"]
    cells = [[r["candidate"], r["graph"], f"{r['median_ms']:.3f}", f"{r['cv']:.1%} ({r['cv_max']:.1%})",
              f"{r['spread']:.1%}", f"{r['spread_ref']:.1%}", f"{r['ref_spread']:.1%}",
              f"{r['retried']:g}", f"{r['seconds']:.2f}"] for r in rows]
    return markdown_table(headers, cells)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--processes", type=int, default=5)
    parser.add_argument("--profile", default="cpu-1t", help="profile name or YAML path")
    parser.add_argument("--cpus", default="", help="comma-separated cores to pin to (default: none)")
    for key in ("warmup", "repeats", "rounds"):
        parser.add_argument(f"--{key}", type=int, help=f"override the profile's {key}")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    add_smoke_flag(parser)
    args = parser.parse_args()
    if args.worker:
        json.dump(worker(json.load(sys.stdin)), sys.stdout)
        return
    labels = list(CANDIDATES)
    if args.smoke:  # writes no results; the temporary folder holds the product's caches
        start_smoke()
        args.processes, args.warmup, args.repeats, args.rounds = 2, 1, 5, 2
        labels = labels[:SMOKE_CANDIDATES]

    from nas.hardware import load_profile

    profile = load_profile(args.profile)
    overrides = {k: getattr(args, k) for k in ("warmup", "repeats", "rounds") if getattr(args, k)}
    profile = dataclasses.replace(profile, **overrides)
    cpus = [int(c) for c in args.cpus.split(",") if c.strip()]
    info = machine_info(threads=profile.intra_op_threads)
    if not args.json:
        print(format_machine(info))
        print(f"profile {profile.name}: threads={profile.intra_op_threads} precision={profile.precision} "
              f"warmup={profile.warmup} repeats={profile.repeats} rounds={profile.rounds} "
              f"cpus={cpus or 'unpinned'}", flush=True)
    with tempfile.TemporaryDirectory(prefix="nas-bench-latency-") as tmp:
        graphs = export_candidates(Path(tmp), labels)
        config = {"profile": profile.to_dict(), "cpus": cpus, "graphs": graphs,
                  "cache_dir": str(Path(tmp, "int8"))}
        pressure_before, started = cpu_pressure_us(), time.perf_counter()
        runs = []
        for _ in range(args.processes):
            done = subprocess.run([sys.executable, "-m", "bench.bench_latency_stability", "--worker"],
                                  input=json.dumps(config), capture_output=True, text=True,
                                  check=True, cwd=ROOT)
            runs.append(json.loads(done.stdout))
        elapsed = time.perf_counter() - started
        pressure_after = cpu_pressure_us()
    pressure = (None if pressure_before is None or pressure_after is None
                else (pressure_after - pressure_before) / 1e6 / elapsed)
    rows = analyse(runs, labels)
    if args.json:
        print(json.dumps({"machine": info, "profile": profile.to_dict(), "cpus": cpus,
                          "processes": args.processes, "cpu_pressure": pressure,
                          "load_avg": os.getloadavg(), "seconds": elapsed, "rows": rows}, indent=2))
        return
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    contention = "n/a" if pressure is None else f"{pressure:.0%}"
    print(f"{args.processes} fresh processes in {elapsed:.0f} s; CPU pressure during the run "
          f"{contention}; load average at the end {load}\n")
    print(table(rows))
    print("\ncv: robust within-run CV, median (max) over processes; spread: (max-min)/median of "
          "the per-process medians; spread/ref: the same for median/reference median; "
          "ref spread: the reference graph's own spread.")


if __name__ == "__main__":
    main()
