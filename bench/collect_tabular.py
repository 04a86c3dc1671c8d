"""Item 4 data: an exact tabular benchmark -- every architecture of a small sub-space of tiny.yaml,
trained once to the full budget, with its loss at every rung any fidelity setting could use.

    python -m bench.collect_tabular                       # resumable: rerun to continue
    for k in 0 1; do nohup python -m bench.collect_tabular --shard $k/2 > /tmp/tab$k.log 2>&1 & done
    python -m bench.collect_tabular --status              # rows done, per shard, and the time spent
    python -m bench.collect_tabular --smoke               # seconds: 3 archs, 16 steps, a temp folder

The space is ``bench/spaces/tabular.yaml`` (``--space``): tiny's objectives, constraint, budget
(500k tokens, batch 16 x 64), corpus and profile, with the architecture narrowed to 324 distinct
shapes (`SearchSpace.distinct_architectures`), so a replay (`bench.bench_search_efficiency`)
looks every suggestion up *exactly*. For each architecture, in a fixed shuffled order (a partial
table is a uniform sample), one process (``--shard K/N``; pinned to core K when there are that
many) does what a search trial does, one thread:

1. the shape step: `nas.evaluate.export_shape` (untrained, seed 0, parity-checked ONNX) and
   `nas.evaluate.measure_profile` on cpu-1t (decode and prefill ms, CV);
2. training with the product's rung mechanics: `nas.proxy.train(..., stop_at=s, resume=ckpt)`
   from one step to the next of the union of `nas.fidelity.rung_steps` for eta in ``--etas``
   (min_tokens down to ``--min-tokens``), ending at the budget. Continuing a checkpoint is
   bitwise the same as training without a break and the schedule is always cosine over the whole
   budget, so the val loss at each point IS the rung loss a search with that fidelity sees.

One JSON line per architecture in ``bench/results/search_efficiency/<table>.jsonl`` (default
``tabular``): the loss, cumulative training seconds and tokens at every point, the latency, the
params, seconds per step of the evaluation and an fp32 matmul reference measured right before it.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from bench.common import (
    ROOT,
    add_smoke_flag,
    append_jsonl,
    corpus,
    format_machine,
    machine_info,
    matmul_flops,
    parse_shard,
    read_jsonl,
    results_dir,
    start_smoke,
)

if TYPE_CHECKING:
    from nas.architecture import Architecture
    from nas.data import TokenData
    from nas.hardware import HardwareProfile
    from nas.space import SearchSpace

STUDY = "search_efficiency"
SPACE = ROOT / "bench" / "spaces" / "tabular.yaml"
ETAS = (2, 3, 4)
MIN_TOKENS = 15_000
ORDER_SEED = 1234


def table_path(name: str) -> Path:
    return results_dir(STUDY) / f"{name}.jsonl"


def load_space_file(path: Path | str = SPACE) -> SearchSpace:
    from nas.space import load_space

    return load_space(path)


def smoke_space() -> SearchSpace:
    """Three architectures (L1 d32, each attention kind), 16 steps, a small validation set."""
    from nas.space import SearchSpace

    d = load_space_file().to_dict()
    d["name"] = "tabular-smoke"
    d["budget"] = {**d["budget"], "tokens": 16 * 1024, "val_tokens": 2048}
    d["architecture"] = {**d["architecture"], "n_layer": 1, "d_model": 32, "n_head": 1,
                         "n_kv_head": 1, "ffn_mult": 2.0, "tie_embeddings": True,
                         }
    return SearchSpace.from_dict(d, source="<tabular smoke>")


def record_steps(space: SearchSpace, etas: tuple[int, ...], min_tokens: int) -> list[int]:
    """The union of every fidelity setting's rung ends (eta in ``etas``, first rung at least
    ``min_tokens``), ascending, the budget's last step included."""
    from nas.fidelity import Fidelity, rung_steps

    steps = {space.budget.steps}
    for eta in etas:
        steps.update(rung_steps(Fidelity(min_tokens, eta), space.budget))
    return sorted(steps)


def table_order(space: SearchSpace) -> list[Architecture]:
    """Every architecture of the space, shuffled once with a fixed seed."""
    archs = space.distinct_architectures()
    if archs is None:
        raise SystemExit(f"{space.source}: too many architectures to list")
    perm = np.random.default_rng(ORDER_SEED).permutation(len(archs))
    return [archs[i] for i in perm]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--space", default=str(SPACE), help="the space file (default bench/spaces/tabular.yaml)")
    ap.add_argument("--table", default="tabular", help="results file name (no .jsonl)")
    ap.add_argument("--shard", default=None, help="K/N: this process takes architectures K mod N")
    ap.add_argument("--etas", default=",".join(map(str, ETAS)))
    ap.add_argument("--min-tokens", type=int, default=MIN_TOKENS,
                    help="record every rung of eta in --etas down to this many tokens")
    ap.add_argument("--no-pin", action="store_true", help="do not pin shard K to core K")
    ap.add_argument("--status", action="store_true", help="print progress and exit")
    ap.add_argument("--schedule", default=None, choices=["cosine", "wsd"],
                    help="the budget's learning-rate schedule (default: the space's)")
    ap.add_argument("--warmup-frac", type=float, default=None,
                    help="the budget's warm-up fraction (default: the space's)")
    ap.add_argument("--no-latency", action="store_true",
                    help="skip the shape step (a rank-correlation study; a replay needs latency)")
    add_smoke_flag(ap)
    args = ap.parse_args()
    profile: HardwareProfile | None = None
    if args.smoke:
        from nas.hardware import load_profile

        start_smoke()
        space = smoke_space()
        args.min_tokens = 2048
        profile = dataclasses.replace(load_profile("cpu-1t"), warmup=1, repeats=3, rounds=2)
    else:
        space = load_space_file(args.space)
    if args.status:
        status(space, args.table)
        return
    import torch

    from nas.hardware import load_profile

    profile = profile or load_profile(space.profiles[0])
    shard, shards = parse_shard(args.shard)
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    if not args.no_pin and shards > 1 and len(cores) >= shards:
        os.sched_setaffinity(0, {cores[shard]})  # before torch starts its thread pool
    torch.set_num_threads(1)
    print(format_machine(machine_info(threads=1)), flush=True)
    etas = tuple(int(e) for e in args.etas.split(","))
    steps = record_steps(space, etas, args.min_tokens)
    budget = dataclasses.replace(space.budget, max_seconds=None)  # a loaded machine must not cut a row
    if args.schedule:
        budget = dataclasses.replace(budget, schedule=args.schedule)
    if args.warmup_frac is not None:
        budget = dataclasses.replace(budget, warmup_frac=args.warmup_frac)
    archs = table_order(space)
    path = table_path(args.table)
    done = {r["hash"] for r in read_jsonl(path)}
    mine = [(i, a) for i, a in enumerate(archs) if i % shards == shard and a.hash not in done]
    per_step = budget.batch_size * budget.seq_len
    print(f"space {space.name} ({space.source}): {len(archs)} architectures, {len(done)} in the table, "
          f"{len(mine)} for shard {shard}/{shards}; points (steps) {steps} = tokens "
          f"{[s * per_step for s in steps]}; pinned to {sorted(os.sched_getaffinity(0))}", flush=True)
    data = corpus("smoke" if args.smoke else "stdlib")
    started = time.perf_counter()
    for n, (i, arch) in enumerate(mine):
        row = evaluate(i, arch, space, budget, data, steps, None if args.no_latency else profile)
        row["shard"] = f"{shard}/{shards}"
        append_jsonl(path, row)
        elapsed = time.perf_counter() - started
        print(f"[{n + 1}/{len(mine)} #{i}] {arch.describe()} params={arch.n_params} "
              f"loss={row['val_loss']:.4f} decode={row.get('decode_ms', float('nan')):.4f}ms "
              f"train={row['train_seconds']:.1f}s total={row['seconds']['total']:.1f}s "
              f"(elapsed {elapsed / 60:.1f} min, eta {elapsed / (n + 1) * (len(mine) - n - 1) / 60:.1f} min)",
              flush=True)
    if args.smoke:
        status(space, args.table)


def evaluate(i: int, arch: Architecture, space: SearchSpace, budget: Any, data: TokenData,
             steps: list[int], profile: HardwareProfile | None) -> dict[str, Any]:
    """The shape step (without ``profile``: none) and the segmented training of one
    architecture, as a trial does them."""
    from nas.evaluate import export_shape, measure_profile
    from nas.proxy import train

    t0 = time.perf_counter()
    ref = matmul_flops(threads=1, n=512, rounds=3)
    t1 = time.perf_counter()
    shape = export_shape(arch, seed=space.seed, threads=1) if profile else None
    t2 = time.perf_counter()
    row: dict[str, Any] = {"i": i, "hash": arch.hash, "arch": arch.to_dict(), "params": arch.n_params,
                           "space": space.name, "space_hash": space.hash, "matmul_flops_ref": ref,
                           "loadavg": os.getloadavg()[0], "budget_tokens": budget.tokens,
                           "schedule": budget.schedule, "warmup_frac": budget.warmup_frac}
    if shape is not None and not shape.ok:
        row.update(status="failed", error=shape.error, val_loss=float("inf"), points=[],
                   train_seconds=0.0, seconds={"ref": t1 - t0, "export": t2 - t1, "total": t2 - t0})
        return row
    if shape is not None:
        assert shape.prefill_onnx is not None and shape.decode_onnx is not None and profile
        lat = measure_profile(shape.prefill_onnx, shape.decode_onnx, profile)
        row.update({"decode_ms": lat.decode.median_ms, "prefill_ms": lat.prefill.median_ms,
                    "decode_cv": lat.decode.cv, "prefill_cv": lat.prefill.cv, "profile": profile.name})
    t3 = time.perf_counter()
    per_step = budget.batch_size * budget.seq_len
    points, checkpoint, train_seconds, status_, reason = [], None, 0.0, "ok", ""
    for step in steps:
        last = step == budget.steps
        trained = train(arch, budget, data, seed=space.seed, threads=1,
                        stop_at=None if last else step, resume=checkpoint)
        result = trained.result
        segment = (step - (points[-1]["step"] if points else 0)) * per_step
        train_seconds += segment / result.tokens_per_s if result.tokens_per_s > 0 else 0.0
        points.append({"step": step, "tokens": step * per_step, "val_loss": result.val_loss,
                       "train_seconds": train_seconds, "call_seconds": result.seconds})
        checkpoint = trained.checkpoint
        if result.status != "ok":
            status_, reason = result.status, result.reason
            break
    t4 = time.perf_counter()
    row.update({"status": status_, "reason": reason, "points": points,
                "val_loss": points[-1]["val_loss"] if status_ == "ok" else float("inf"),
                "train_seconds": train_seconds, "tokens": points[-1]["tokens"],
                "seconds_per_token": train_seconds / max(1, points[-1]["tokens"]),
                "seconds": {"ref": t1 - t0, "export": t2 - t1, "latency": t3 - t2,
                            "train_total": t4 - t3, "total": t4 - t0}})
    return row


def status(space: SearchSpace, table: str) -> None:
    rows = read_jsonl(table_path(table))
    total = len(space.distinct_architectures() or [])
    by_shard: dict[str, list[float]] = {}
    for r in rows:
        by_shard.setdefault(r.get("shard", "?"), []).append(r["seconds"]["total"])
    print(f"{len(rows)} of {total} rows in {table_path(table)}")
    for shard, secs in sorted(by_shard.items()):
        print(f"  shard {shard}: {len(secs)} rows, {sum(secs) / 60:.1f} min, median "
              f"{statistics.median(secs):.1f} s per row")


if __name__ == "__main__":
    main()
