"""Item 4 data: a table of evaluated `tiny.yaml` architectures (proxy loss, latency, params).

    python -m bench.collect_table --n 300            # resumable: rerun to continue
    python -m bench.collect_table --n 300 --tokens 50000
    python -m bench.collect_table --smoke            # seconds: 2 candidates, train-only then timed
    # many cores elsewhere: train only, 12 processes; then time the rows here, one core
    for k in $(seq 0 11); do python -m bench.collect_table --tokens 200000 --table tiny_table_200k \
        --train-only --shard $k/12 & done; wait
    python -m bench.collect_table --tokens 200000 --table tiny_table_200k --latency-only

Each candidate is a uniform draw from the tiny space (distinct, meeting its shape constraint
params <= 1.5M), proxy-trained on the space's own corpus (stdlib, byte tokens) with the space's
budget except ``--tokens``, exported with the product's parity-checked ONNX export, and timed
with `nas.latency.measure` on cpu-1t -- the same calls a search trial makes, one thread.
One JSON line per candidate in bench/results/search_efficiency/tiny_table.jsonl, with the seconds
each step took and an fp32 matmul reference measured right before the candidate (item 3 reads them).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from bench.common import (
    add_smoke_flag,
    append_jsonl,
    corpus,
    format_machine,
    machine_info,
    matmul_flops,
    parse_shard,
    read_jsonl,
    results_dir,
    sample_archs,
    start_smoke,
)

if TYPE_CHECKING:
    from nas.architecture import Architecture
    from nas.data import TokenData
    from nas.hardware import HardwareProfile
    from nas.specs import ProxyBudget

STUDY = "search_efficiency"  # the table is item 4's data
_PROFILE: dict[str, HardwareProfile] = {}  # "smoke": cpu-1t with few timed runs


def table_paths(name: str) -> tuple[Path, Path]:
    """The table's rows, and the latency rows ``--latency-only`` adds for ``--train-only`` ones."""
    return results_dir(STUDY) / f"{name}.jsonl", results_dir(STUDY) / f"{name}_latency.jsonl"


def timing_profile() -> HardwareProfile:
    from nas.hardware import load_profile

    return _PROFILE.get("smoke") or load_profile("cpu-1t")


def load_rows(name: str) -> list[dict[str, Any]]:
    """The table's rows, with latency from the separate latency file merged in by hash."""
    rows_path, latency_path = table_paths(name)
    latency = {r["hash"]: r for r in read_jsonl(latency_path)}
    rows = []
    for r in read_jsonl(rows_path):
        if "decode_ms" not in r and r["hash"] in latency:
            lat = latency[r["hash"]]
            r = {**r, **{k: lat[k] for k in ("decode_ms", "prefill_ms", "decode_cv", "prefill_cv")}}
        rows.append(r)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--tokens", type=int, default=50_000)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--table", default="tiny_table", help="results file name (no .jsonl)")
    ap.add_argument("--shard", default=None, help="K/N: this process takes candidates K mod N")
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--train-only", action="store_true",
                      help="train and score only (a many-core machine); time later")
    mode.add_argument("--latency-only", action="store_true",
                      help="export and time the --train-only rows here (latency is shape-only)")
    add_smoke_flag(ap)
    args = ap.parse_args()
    if args.smoke:
        smoke(args)
    torch.set_num_threads(1)
    print(format_machine(machine_info(threads=1)), flush=True)
    from nas.space import load_space

    space = load_space("tiny")
    budget = dataclasses.replace(space.budget, tokens=args.tokens, max_seconds=None,
                                 val_tokens=2048 if args.smoke else space.budget.val_tokens)
    shard, shards = parse_shard(args.shard)
    archs = sample_archs(space, args.n, args.seed, max_params=2e5 if args.smoke else None)
    rows_path, latency_path = table_paths(args.table)
    if args.latency_only:
        time_rows(rows_path, latency_path)
        return
    done = {r["hash"] for r in read_jsonl(rows_path)}
    print(f"{len(done)} of {len(archs)} done; budget {budget.tokens} tokens", flush=True)
    data = corpus("smoke" if args.smoke else "stdlib")
    for i, arch in enumerate(archs):
        if arch.hash in done or i % shards != shard:
            continue
        row = evaluate(i, arch, budget, data, with_latency=not args.train_only)
        append_jsonl(rows_path, row)
        print(f"[{i}] {arch.describe()} params={arch.n_params} loss={row['val_loss']:.3f} "
              f"decode={row.get('decode_ms', float('nan')):.3f}ms "
              f"{sum(row['seconds'].values()):.1f}s", flush=True)
    if args.smoke:  # the --latency-only pass over the rows just trained
        time_rows(rows_path, latency_path)
        print(f"{len(load_rows(args.table))} rows with latency merged", flush=True)


def smoke(args: argparse.Namespace) -> None:
    """Two small candidates, 2k tokens, trained only, then timed with few runs: both passes."""
    from nas.hardware import load_profile

    start_smoke()
    args.n, args.tokens, args.train_only, args.latency_only = 2, 2048, True, False
    _PROFILE["smoke"] = dataclasses.replace(load_profile("cpu-1t"), warmup=1, repeats=3, rounds=2)


def evaluate(i: int, arch: Architecture, budget: ProxyBudget, data: TokenData,
             with_latency: bool) -> dict[str, Any]:
    """Train (and unless told otherwise export and time) one candidate, as a trial does."""
    from nas.proxy import train

    t0 = time.perf_counter()
    ref = matmul_flops(threads=1, n=512, rounds=3)
    t1 = time.perf_counter()
    trained = train(arch, budget, data, threads=1)
    t2 = time.perf_counter()
    row = {"i": i, "hash": arch.hash, "arch": arch.to_dict(), "params": arch.n_params,
           "val_loss": trained.result.val_loss, "status": trained.result.status,
           "tokens_per_s": trained.result.tokens_per_s, "tokens": budget.tokens,
           "train_flops_per_token": arch.training_flops_per_token(budget.seq_len),
           "matmul_flops_ref": ref, "loadavg": os.getloadavg()[0], "torch": torch.__version__,
           "seconds": {"ref": t1 - t0, "train": t2 - t1}}
    if with_latency and trained.result.status != "diverged":
        row.update(measure_latency(trained.model, arch))
        row["seconds"].update(row.pop("latency_seconds"))
    return row


def measure_latency(model: Any, arch: Architecture) -> dict[str, Any]:
    from nas.latency import measure
    from nas.onnx_export import export_onnx

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        graphs = export_onnx(model, arch, Path(tmp))
        t1 = time.perf_counter()
        lat = measure(graphs, timing_profile())
        t2 = time.perf_counter()
    return {"decode_ms": lat.decode.median_ms, "prefill_ms": lat.prefill.median_ms,
            "decode_cv": lat.decode.cv, "prefill_cv": lat.prefill.cv,
            "latency_seconds": {"export": t1 - t0, "latency": t2 - t1}}


def time_rows(rows_path: Path, latency_path: Path) -> None:
    """Export and time every scored row that has no latency yet (untrained weights: the graph
    and its cost depend on the shape only)."""
    from nas.architecture import Architecture
    from nas.model import build_model

    timed = {r["hash"] for r in read_jsonl(latency_path)}
    todo = [r for r in read_jsonl(rows_path) if "decode_ms" not in r and r["hash"] not in timed
            and r["status"] != "diverged"]
    print(f"{len(todo)} rows to time", flush=True)
    for r in todo:
        arch = Architecture.from_dict(r["arch"])
        lat = measure_latency(build_model(arch).eval(), arch)
        append_jsonl(latency_path, {"hash": r["hash"], "loadavg": os.getloadavg()[0], **lat})
        print(f"[{r['i']}] {arch.describe()} decode={lat['decode_ms']:.3f}ms", flush=True)


if __name__ == "__main__":
    main()
