"""Issue 16 workloads: what GQA, a sliding window and linear attention buy at a long context,
measured peak memory against the closed-form estimate, and what the workloads cost a trial.

    python -m bench.bench_workloads            # ~7 minutes on a 2-core VM, pinned to core 0
    python -m bench.bench_workloads report     # tables and section.md from the stored rows
    python -m bench.bench_workloads --quick    # the smoke check (= --smoke): seconds, tiny sizes

Units (one JSON line each in bench/results/workloads/workloads.jsonl; ``--resume`` skips the
finished ones, otherwise a run starts the file afresh; stdout is copied to workloads.log):

* ``long``: `nas.latency.measure` on ``cpu-1t-long`` (int8, prompt 512, decode at 2048 cached
  tokens, 128-token replies) for six architectures of equal width and depth (L4 d256, 8 heads,
  vocab 4096, max_seq_len 4096): MHA, GQA with 2 and 1 KV heads, sliding windows of 256 and
  512, linear attention. Ratios of ``decode_ms@2048`` and ``peak_mb`` to MHA softmax, with the
  direction theory predicts (every one below 1: a smaller cache is less to read each step and
  less to hold).
* ``memory``: measured ``peak_mb`` (`nas.memory`) against ``estimate_mb`` (weights plus KV cache,
  `HardwareProfile.memory_estimate_bytes`) on ``cpu-1t-long`` over the six above and eight more
  varied architectures (depth, width, vocabulary, KV heads, kind, sharing, tying).
* ``cost``: seconds one ``measure()`` takes on ``cpu-1t-int8`` (no workload), ``cpu-1t-long`` and
  ``cpu-1t-batch8`` for three of the architectures: the time the workloads add to a trial.
* ``reference``: ``torch.mm`` GFLOP/s (one thread) at the start and the end, so a rerun on another
  (or a quieter) machine can be compared.

Architectures are untrained (latency and memory depend on shape only), exported once into
``$NAS_BENCH_CACHE/workload_graphs`` (default ``~/.cache/nas-bench``).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from bench.common import (
    add_smoke_flag,
    append_jsonl,
    format_machine,
    machine_info,
    markdown_table,
    matmul_flops,
    read_jsonl,
    results_dir,
    start_smoke,
)

if TYPE_CHECKING:
    from nas.architecture import Architecture
    from nas.hardware import HardwareProfile

CPUS = {0}
BASELINE = "mha"


def _arch(**kw: Any) -> Architecture:
    from nas.architecture import Architecture

    return Architecture(**kw)


def long_archs(smoke: bool) -> dict[str, Architecture]:
    """Equal width and depth; only the attention's cache differs."""
    base = (dict(n_layer=2, d_model=64, n_head=4, vocab_size=256, max_seq_len=256) if smoke else
            dict(n_layer=4, d_model=256, n_head=8, vocab_size=4096, max_seq_len=4096))
    heads = base["n_head"]
    windows = (16, 32) if smoke else (256, 512)
    return {
        "mha": _arch(**base, n_kv_head=heads),
        "gqa2": _arch(**base, n_kv_head=2),
        "mqa": _arch(**base, n_kv_head=1),
        f"swa{windows[0]}": _arch(**base, n_kv_head=heads, attention="sliding_window", window=windows[0]),
        f"swa{windows[1]}": _arch(**base, n_kv_head=heads, attention="sliding_window", window=windows[1]),
        "linear": _arch(**base, n_kv_head=heads, attention="linear"),
    }


def memory_archs(smoke: bool) -> dict[str, Architecture]:
    """Eight more, varied in everything the estimate depends on."""
    if smoke:
        return {"m-l3d32": _arch(n_layer=3, d_model=32, n_head=2, vocab_size=128, max_seq_len=256),
                "m-lin": _arch(n_layer=2, d_model=64, n_head=4, attention="linear", vocab_size=256,
                               max_seq_len=256)}
    seq: dict[str, Any] = dict(max_seq_len=4096, vocab_size=4096)
    swa = "sliding_window"
    return {
        "m-l2d128-v8k-untied": _arch(n_layer=2, d_model=128, n_head=4, tie_embeddings=False,
                                     **{**seq, "vocab_size": 8192}),
        "m-l6d192-kv2": _arch(n_layer=6, d_model=192, n_head=6, n_kv_head=2, ffn_mult=2.75, **seq),
        "m-l8d128-swa512-rep2": _arch(n_layer=8, d_model=128, n_head=4, n_kv_head=1, attention=swa,
                                      window=512, sharing="repeat:2", **seq),
        "m-l4d384-linear": _arch(n_layer=4, d_model=384, n_head=6, attention="linear", **seq),
        "m-l3d256-shared": _arch(n_layer=3, d_model=256, n_head=8, n_kv_head=4, ffn_mult=2.0, sharing="all",
                                 **seq),
        "m-l6d256-swa256-untied": _arch(n_layer=6, d_model=256, n_head=4, n_kv_head=2, attention=swa,
                                        window=256, tie_embeddings=False, **{**seq, "vocab_size": 8192}),
        "m-l2d512": _arch(n_layer=2, d_model=512, n_head=8, ffn_mult=2.75, **seq),
        "m-l10d128-rep2": _arch(n_layer=10, d_model=128, n_head=2, sharing="repeat:2", **seq),
    }


COST_ARCHS = ("mha", "linear")


def profiles(smoke: bool) -> dict[str, HardwareProfile]:
    from nas.hardware import load_profile

    names = ("cpu-1t-int8", "cpu-1t-long", "cpu-1t-batch8")
    loaded = {name: load_profile(name) for name in names}
    if not smoke:
        return loaded
    fast = dict(warmup=1, repeats=3, rounds=2, generate_repeats=1)
    return {"cpu-1t-int8": dataclasses.replace(loaded["cpu-1t-int8"], prompt_len=16, past_len=16, **fast),
            "cpu-1t-long": dataclasses.replace(loaded["cpu-1t-long"], prompt_len=32, past_len=16,
                                               decode_contexts=(128,), new_tokens=8, **fast),
            "cpu-1t-batch8": dataclasses.replace(loaded["cpu-1t-batch8"], prompt_len=16, past_len=16,
                                                 new_tokens=4, **fast)}


# ----- running -----------------------------------------------------------------------------
def results_path() -> Path:
    return results_dir("workloads") / "workloads.jsonl"


def graphs_dir() -> Path:
    """Read at call time: ``--smoke`` moves ``$NAS_BENCH_CACHE`` to its temporary folder."""
    return Path(os.environ.get("NAS_BENCH_CACHE", Path.home() / ".cache" / "nas-bench")) / "workload_graphs"


def graphs_for(arch: Architecture) -> Any:
    from nas.latency import GraphPair

    folder = graphs_dir() / arch.hash
    pair = GraphPair(folder / "model.onnx", folder / "decode.onnx")
    if not (pair.prefill.is_file() and pair.decode.is_file()):
        import torch

        from nas.model import build_model
        from nas.onnx_export import export_onnx

        torch.set_num_threads(1)
        export_onnx(build_model(arch, seed=0), arch, folder, check=False)
    return pair


class Log:
    """print() to stdout and to workloads.log."""

    def __init__(self, path: Path, append: bool) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(path, "a" if append else "w")  # noqa: SIM115 - closed in close()

    def __call__(self, *parts: Any) -> None:
        line = " ".join(str(p) for p in parts)
        print(line, flush=True)
        self._file.write(line + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def _latency_row(result: Any) -> dict[str, Any]:
    from nas.results import to_jsonable

    return {"metrics": result.metrics(), "latency": to_jsonable(result)}


def run(smoke: bool, resume: bool) -> None:
    from nas.latency import measure
    from nas.memory import measure_peak

    out = results_path()
    if not resume and out.exists():
        out.unlink()
    done = {tuple(r["key"]) for r in read_jsonl(out)}
    log = Log(out.with_suffix(".log"), append=resume)
    log(format_machine(machine_info(threads=1)))
    cpus = CPUS if hasattr(os, "sched_setaffinity") and os.sched_getaffinity(0) >= CPUS else None
    log(f"- timing pinned to cores {sorted(cpus) if cpus else 'unpinned'}")
    started = time.perf_counter()

    def unit(key: tuple[str, ...], fn: Any) -> None:
        if key in done:
            return
        t0 = time.perf_counter()
        row = fn()
        row.update(key=list(key), seconds=time.perf_counter() - t0)
        append_jsonl(out, row)
        done.add(key)
        log(f"{'/'.join(key)}: {row['seconds']:.1f} s" + (f" ({row['note']})" if row.get("note") else ""))

    def reference() -> dict[str, Any]:
        return {"gflops": matmul_flops(threads=1, n=256 if smoke else 1024) / 1e9,
                "machine": machine_info(threads=1)}

    unit(("reference", "start"), reference)
    profs = profiles(smoke)
    long = profs["cpu-1t-long"]
    longs = long_archs(smoke)

    def measured(arch: Architecture, profile: HardwareProfile) -> Any:
        def fn() -> dict[str, Any]:
            graphs = graphs_for(arch)  # export outside the timed seconds below
            t0 = time.perf_counter()
            result = measure(graphs, profile, cpus=cpus)
            row = {"measure_seconds": time.perf_counter() - t0, "arch": arch.to_dict(),
                   "n_params": arch.n_params, **_latency_row(result)}
            row["note"] = ", ".join(f"{k.split(':', 1)[1]} {v:.3g}" for k, v in result.metrics().items()
                                    if "@" in k or "peak" in k)
            return row
        return fn

    for name, arch in longs.items():
        unit(("long", name), measured(arch, long))

    def peak_only(arch: Architecture, profile: HardwareProfile) -> Any:
        def fn() -> dict[str, Any]:
            graphs = graphs_for(arch)
            t0 = time.perf_counter()
            report = measure_peak(graphs.prefill, graphs.decode, profile, cpus=cpus)
            return {"memory_seconds": time.perf_counter() - t0, "arch": arch.to_dict(),
                    "n_params": arch.n_params, "report": report,
                    "estimate_mb": profile.memory_estimate_bytes(arch) / 1e6,
                    "note": f"peak {report['peak_mb']:.1f} MB"}
        return fn

    # All fourteen through the child on its own (the six long ones a second time: the two
    # children's peaks show how reproducible a reading is), with the growth per phase.
    for name, arch in {**longs, **memory_archs(smoke)}.items():
        unit(("memory", name), peak_only(arch, long))
    for name in COST_ARCHS:
        for profile_name in ("cpu-1t-int8", "cpu-1t-batch8"):
            unit(("cost", name, profile_name), measured(longs[name], profs[profile_name]))
    unit(("reference", "end"), reference)
    log(f"- total {time.perf_counter() - started:.0f} s")
    log.close()
    report(smoke)


# ----- report ------------------------------------------------------------------------------
def _fmt(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}g}"


def report(smoke: bool) -> str:
    from nas.architecture import Architecture

    rows = read_jsonl(results_path())
    by_key = {tuple(r["key"]): r for r in rows}
    if not rows:
        print(f"no rows in {results_path()}", file=sys.stderr)
        return ""
    profs = profiles(smoke)
    long = profs["cpu-1t-long"]
    context = max(long.decode_contexts)
    at = f"latency:cpu-1t-long:decode_ms@{context}"
    peak_key, est_key = "memory:cpu-1t-long:peak_mb", "memory:cpu-1t-long:estimate_mb"
    longs = {k[1]: r for k, r in by_key.items() if k[0] == "long"}
    lines = ["### Workloads: long context, measured memory, cost (`python -m bench.bench_workloads`)", ""]
    first = rows[0]
    start = by_key.get(("reference", "start"), {})
    if "machine" in start:
        lines.append(format_machine(start["machine"]))
    else:  # rows from before the machine was stored with them: the run's log has it
        log = results_path().with_suffix(".log")
        lines += [line for line in (log.read_text().splitlines() if log.is_file() else [])
                  if line.startswith(("- machine:", "- software:", "- run:", "- timing pinned"))]
    lines.append(f"- rows from commit {first.get('commit')}; onnxruntime {first['versions']['onnxruntime']}")
    ref = [by_key.get(("reference", p), {}).get("gflops") for p in ("start", "end")]
    lines.append(f"- reference: torch.mm one thread {_fmt(ref[0])} GFLOP/s at the start, {_fmt(ref[1])} "
                 "at the end (a rerun elsewhere compares against these)")
    lines += ["", f"**Long-context value** on `cpu-1t-long` (one thread, int8, prompt {long.prompt_len}, "
              f"decode at {context} cached tokens, {long.new_tokens}-token replies); equal width and depth; "
              f"ratios against `{BASELINE}` (softmax, MHA):", ""]
    base = longs.get(BASELINE)
    base_arch = Architecture.from_dict(base["arch"]) if base else None
    table, directions = [], []
    for name, row in longs.items():
        arch = Architecture.from_dict(row["arch"])
        m = row["metrics"]
        ratio_decode = m[at] / base["metrics"][at] if base else None
        ratio_peak = m[peak_key] / base["metrics"][peak_key] if base else None
        if name != BASELINE and base:
            directions.append((name, ratio_decode, ratio_peak,
                               arch.kv_cache_bytes(context + 1) / base_arch.kv_cache_bytes(context + 1)))
        table.append([name, arch.describe(), f"{arch.n_params / 1e6:.2f}",
                      f"{arch.kv_cache_bytes(context + 1) / 1e6:.2f}",
                      _fmt(m["latency:cpu-1t-long:decode_ms"]), _fmt(m[at]), _fmt(ratio_decode),
                      _fmt(m["latency:cpu-1t-long:ttft_ms"]), _fmt(m["latency:cpu-1t-long:generate_ms"]),
                      _fmt(m["throughput:cpu-1t-long:tokens_per_s"]), _fmt(m[peak_key]), _fmt(ratio_peak),
                      _fmt(m[est_key])])
    lines.append(markdown_table(
        ["arch", "shape", "params M", f"KV cache @{context} MB", f"decode_ms (past {long.past_len})",
         f"decode_ms@{context}", "ratio", "ttft_ms", "generate_ms", "tokens/s", "peak_mb", "ratio",
         "estimate_mb"], table))
    ok = [n for n, d, p, _ in directions if d < 1 and p < 1]
    missed = [f"{n} (decode {d:.2f}, peak {p:.2f})" for n, d, p, _ in directions if n not in ok]
    lines += ["", f"Direction theory predicts (both ratios below 1): {len(ok)} of {len(directions)} "
              f"({', '.join(ok) or 'none'})."
              + (f" Not as predicted: {', '.join(missed)}." if missed else "")]
    # ----- memory
    points, phases, again = [], {}, []
    for key, row in by_key.items():
        if key[0] == "memory":
            points.append((key[1], row["estimate_mb"], row["report"]["peak_mb"]))
            phases[key[1]] = row["report"].get("phases", {})
            if key[1] in longs:
                again.append(row["report"]["peak_mb"] / longs[key[1]]["metrics"][peak_key] - 1)
    if points:
        est = np.array([p[1] for p in points])
        peak = np.array([p[2] for p in points])
        rel = (peak - est) / est
        slope, intercept = np.polyfit(est, peak, 1)
        worst = int(np.argmax(np.abs(rel)))
        lines += ["", f"**Memory**: measured `peak_mb` against `estimate_mb` (weights at int8 plus the fp32 "
                  f"KV cache at {long.memory_context} tokens) on `cpu-1t-long`, {len(points)} "
                  "architectures:", ""]
        headers = ["arch", "estimate_mb", "peak_mb", "peak - estimate MB", "relative error",
                   "sessions MB", "+ reply MB", "+ decodes MB"]
        table = []
        for n, e, p in sorted(points, key=lambda t: t[1]):
            ph = phases.get(n, {})
            sessions, reply = ph.get("sessions"), ph.get("reply")
            table.append([n, f"{e:.1f}", f"{p:.1f}", f"{p - e:+.1f}", f"{(p - e) / e:+.0%}",
                          _fmt(sessions), _fmt(None if reply is None else reply - sessions),
                          _fmt(None if reply is None else p - reply)])
        lines.append(markdown_table(headers, table))
        lines += ["", f"Median relative error {np.median(rel):+.0%} (median |error| "
                  f"{np.median(np.abs(rel)):.0%}), worst {rel[worst]:+.0%} ({points[worst][0]}). "
                  f"Least-squares fit: peak = {intercept:.1f} MB + {slope:.2f} x estimate."
                  + (f" The six long-context architectures measured twice (by `measure()` and by a "
                     f"child on its own) agree within {max(abs(a) for a in again):.1%}." if again else "")]
    # ----- cost
    cost = []
    for name in COST_ARCHS:
        seconds = {p: by_key.get(("cost", name, p), {}).get("measure_seconds")
                   for p in ("cpu-1t-int8", "cpu-1t-batch8")}
        seconds["cpu-1t-long"] = longs.get(name, {}).get("measure_seconds")
        if any(v is None for v in seconds.values()):
            continue
        cost.append([name, f"{seconds['cpu-1t-int8']:.1f}", f"{seconds['cpu-1t-long']:.1f}",
                     f"{seconds['cpu-1t-batch8']:.1f}",
                     f"{seconds['cpu-1t-long'] - seconds['cpu-1t-int8']:+.1f}",
                     f"{seconds['cpu-1t-batch8'] - seconds['cpu-1t-int8']:+.1f}"])
    mem_seconds = [r["memory_seconds"] for k, r in by_key.items() if k[0] == "memory"]
    mem_long = [r["memory_seconds"] for k, r in by_key.items() if k[0] == "memory" and k[1] in longs]
    if cost:
        lines += ["", "**Cost**: seconds of one `measure()` (sessions, int8 cache hit, timing, and for the "
                  "workload profiles the memory child), same architectures:", ""]
        lines.append(markdown_table(["arch", "cpu-1t-int8 s", "cpu-1t-long s", "cpu-1t-batch8 s",
                                     "long added s", "batch8 added s"], cost))
        if mem_seconds:
            lines += ["", "The memory child alone (process start, ONNX Runtime import, sessions, the "
                      f"workload twice) took a median {statistics.median(mem_seconds):.1f} s "
                      f"({min(mem_seconds):.1f}-{max(mem_seconds):.1f} s) over all {len(mem_seconds)}"
                      + (f", {statistics.median(mem_long):.1f} s for the L4 d256 ones" if mem_long else "")
                      + "."]
        split = []
        for name in COST_ARCHS:
            for prof in ("cpu-1t-int8", "cpu-1t-long", "cpu-1t-batch8"):
                row = longs.get(name) if prof == "cpu-1t-long" else by_key.get(("cost", name, prof))
                if row:
                    parts = _split(row, profs[prof])
                    split.append([name, prof, f"{row['measure_seconds']:.1f}",
                                  *(f"{parts[k]:.1f}" for k in ("prompt", "decode", "replies", "rest"))])
        lines += ["", "Where a measurement's seconds go (timed runs x their median, warm-ups included; "
                  "rest = sessions, int8 cache look-up, the memory child, retried runs, and time off "
                  "the core, since the medians are CPU time):", ""]
        lines.append(markdown_table(["arch", "profile", "total s", "prompt blocks s", "decode blocks s",
                                     "replies s", "rest s"], split))
    added = _cpu_added(by_key, longs, profs)
    lines += ["", "**Reading**", "", *_reading(directions, points, phases, cost, added)]
    text = "\n".join(lines) + "\n"
    path = results_dir("workloads") / "section.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    print(text)
    return text


def _split(row: dict[str, Any], profile: HardwareProfile) -> dict[str, float]:
    """Seconds of one measurement by part, from the medians and the run counts."""
    stats = row["latency"]
    per_block = profile.rounds * (profile.warmup + profile.repeats) / 1e3
    prompt = stats["prefill"]["median_ms"] * per_block
    decode = (stats["decode"]["median_ms"] + sum(s["median_ms"] for n, s in stats["workload"]
                                                 if n.startswith("decode_ms@"))) * per_block
    generate = dict((n, s) for n, s in stats["workload"]).get("generate_ms")
    replies = (generate["median_ms"] * profile.rounds * (1 + profile.generate_repeats) / 1e3
               if generate else 0.0)
    return {"prompt": prompt, "decode": decode, "replies": replies,
            "rest": row["measure_seconds"] - prompt - decode - replies}


def _cpu_added(by_key: dict[tuple[str, ...], dict[str, Any]], longs: dict[str, dict[str, Any]],
               profs: dict[str, HardwareProfile]) -> dict[str, list[float]]:
    """Timed CPU seconds (prompt, decode and reply runs) a workload profile adds over cpu-1t-int8."""
    out: dict[str, list[float]] = {"cpu-1t-long": [], "cpu-1t-batch8": []}
    for name in COST_ARCHS:
        base = by_key.get(("cost", name, "cpu-1t-int8"))
        rows = {"cpu-1t-long": longs.get(name), "cpu-1t-batch8": by_key.get(("cost", name, "cpu-1t-batch8"))}
        if not base:
            continue
        timed = sum(v for k, v in _split(base, profs["cpu-1t-int8"]).items() if k != "rest")
        for prof, row in rows.items():
            if row:
                out[prof].append(sum(v for k, v in _split(row, profs[prof]).items() if k != "rest") - timed)
    return out


def _span(values: list[float]) -> str:
    low, high = min(values), max(values)
    return f"{low:+.0f}" if round(low) == round(high) else f"{low:+.0f} to {high:+.0f}"


def _reading(directions: list[tuple[str, float, float, float]], points: list[tuple[str, float, float]],
             phases: dict[str, dict[str, float]], cost: list[list[str]],
             cpu_added: dict[str, list[float]]) -> list[str]:
    """Plain sentences from the numbers, so a rerun's fragment reads true for its own numbers."""
    out = []
    if directions:
        decode = ", ".join(f"{n} {d:.2f} (cache {c:.2f})" for n, d, _, c in directions)
        peak = [p for _, _, p, _ in directions]
        verdict = ("follows the cache" if all(d < 1 for _, d, _, _ in directions)
                   else "does not follow the cache everywhere")
        out.append(f"- Decode at the long context {verdict}: against MHA, {decode}. Peak memory "
                   f"falls less ({min(peak):.2f}-{max(peak):.2f} of MHA's): the weights, the prompt's "
                   "activations and the runtime's buffers are the same for all of them.")
    if points:
        gaps = [p - e for _, e, p in points]
        reply = [ph["reply"] - ph["sessions"] for ph in phases.values() if "reply" in ph and "sessions" in ph]
        out.append(f"- The closed-form estimate (weights plus one KV cache) is a lower bound, not a "
                   f"prediction: measured peaks exceed it by {min(gaps):.0f}-{max(gaps):.0f} MB."
                   + (f" Most of that is the reply ({min(reply):.0f}-{max(reply):.0f} MB: the prompt's "
                      "activations, attention scores and logits, which ONNX Runtime's arena keeps) and a "
                      "decode step holding past and present caches at once." if reply else "")
                   + " Constrain on `peak_mb`; `estimate_mb` ranks caches, it does not size a device.")
    if cost:
        added = [float(row[4]) for row in cost]
        batch = [float(row[5]) for row in cost]
        out.append(f"- A workload profile adds {_span(added)} s (cpu-1t-long) and "
                   f"{_span(batch)} s (cpu-1t-batch8) to a candidate's timing on this "
                   "machine, next to cpu-1t-int8's own time"
                   + (f"; of that, timed runs on the core are {_span(cpu_added['cpu-1t-long'])} s and "
                      f"{_span(cpu_added['cpu-1t-batch8'])} s (the split above), the rest is sessions, "
                      "the memory child and time the shared machine gave to other processes."
                      if cpu_added.get("cpu-1t-long") and cpu_added.get("cpu-1t-batch8") else "."))
    out.append("- Shared 2-core VM: other processes ran during the run (load average in the machine "
               "line); CPU-time clocks keep the latencies usable, the seconds in the cost table are "
               "wall time and include that load.")
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", nargs="?", choices=("all", "report"), default="all")
    parser.add_argument("--resume", action="store_true", help="keep finished units of an earlier run")
    parser.add_argument("--quick", action="store_true", help="the smoke check (same as --smoke)")
    add_smoke_flag(parser)
    args = parser.parse_args(argv)
    smoke = args.smoke or args.quick
    if smoke:
        start_smoke()
    if args.action == "report":
        print(format_machine(machine_info(threads=1)))
        report(smoke)
    else:
        run(smoke, args.resume)


if __name__ == "__main__":
    main()
