"""Item 1 data: proxy loss on a budget ladder vs a 10x reference, on two real corpora.

    python -m bench.collect_fidelity                 # resumable: rerun to continue
    python -m bench.collect_fidelity --reverse       # a second worker from the other end
    python -m bench.collect_fidelity --n 40 --ladder 25000,50000,100000,200000 --ref 500000  (defaults)
    python -m bench.collect_fidelity --smoke         # seconds: 1 candidate, 2k-4k tokens, a temp folder
    # a 10x reference on a GPU machine, four processes sharing the GPU, both seeds everywhere:
    for k in 0 1 2 3; do python -m bench.collect_fidelity --kinds ref --ref 2000000 \
        --ceiling-every 1 --device cuda --shard $k/4 --worker gpu & done; wait

Rerunning with the defaults completes whatever is missing (runs are skipped by
(candidate, corpus, tokens, seed, kind)); two workers (plain and ``--reverse``) meet in the middle.

Candidates: ``--n`` distinct uniform draws from `tiny.yaml` (params <= 1.5M, byte tokens);
>= 25% use sharing, GQA or non-softmax attention (the analysis prints the share). Each is
trained with the tiny space's budget at every ladder rung (scored on the product's 16k
validation tokens) and at the reference budget ``--ref`` (scored on 64k validation tokens, so
the reference is the more precise one) with seed 0, and with seed 1 for every ``--ceiling-every``-th
candidate (default 4; the seed-to-seed ceiling). Corpora: tinyshakespeare (last 10% held out) and WikiText-2
(valid.txt to train, test.txt to evaluate). One thread per process; one JSON line per run in
bench/results/fidelity/fidelity_<worker>.jsonl; every worker skips runs any worker has finished.
Units are ordered seed 0 first, candidate by candidate, so a partial run has complete
candidates; ``--shard K/N`` splits them between processes (``--device cuda``: on one GPU).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import time
from pathlib import Path

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
    uses_feature,
)

CORPORA = ("shakespeare", "wikitext")
SEED = 7
# --smoke: one small candidate, tiny budgets, both corpora replaced by the smoke text.
SMOKE = {"n": 1, "ladder": "2048", "ref": 4096, "ceiling_every": 1, "val_tokens": 2048,
         "max_params": 2e5}


def results_files() -> list[Path]:
    return sorted(results_dir("fidelity").glob("fidelity_*.jsonl"))


def plan(n_archs: int, ladder: list[int], ref: int, kinds: set[str],
         ceiling_every: int) -> list[tuple[int, str, int, int, str]]:
    """Every (candidate, corpus, tokens, seed, kind) unit, seed 0 first so a partial run has
    complete seed-0 candidates, then the second seed for every ``ceiling_every``-th one."""
    units = []
    for i in range(n_archs):
        for c in CORPORA:
            if "proxy" in kinds:
                units += [(i, c, t, 0, "proxy") for t in ladder]
            if "ref" in kinds:
                units.append((i, c, ref, 0, "ref"))
    if "ref" in kinds and ceiling_every:
        units += [(i, c, ref, 1, "ref") for i in range(0, n_archs, ceiling_every) for c in CORPORA]
    return units


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=40)
    ap.add_argument("--ladder", default="25000,50000,100000,200000")
    ap.add_argument("--ref", type=int, default=500_000)
    ap.add_argument("--kinds", default="proxy,ref", help="which units: proxy, ref or both")
    ap.add_argument("--ceiling-every", type=int, default=4,
                    help="second seed at the reference for every k-th candidate (0: none)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda (the reference on a GPU)")
    ap.add_argument("--shard", default=None, help="K/N: this process takes units K mod N")
    ap.add_argument("--reverse", action="store_true")
    ap.add_argument("--worker", default=None)
    add_smoke_flag(ap)
    ap.set_defaults(val_tokens=None, max_params=None)  # only --smoke changes these
    args = ap.parse_args()
    if args.smoke:
        start_smoke()
        for key, value in SMOKE.items():
            setattr(args, key, value)
    torch.set_num_threads(1)
    print(format_machine(machine_info(threads=1)), flush=True)
    from nas.proxy import train
    from nas.space import load_space

    shard, shards = parse_shard(args.shard)
    worker = args.worker or ("b" if args.reverse else "a")
    out = results_dir("fidelity") / f"fidelity_{worker}.jsonl"
    space = load_space("tiny")
    ladder = [int(x) for x in args.ladder.split(",") if x]
    archs = sample_archs(space, args.n, SEED, max_params=args.max_params)
    print(f"{sum(map(uses_feature, archs))}/{len(archs)} use sharing, GQA or non-softmax", flush=True)
    datasets = {c: corpus("smoke" if args.smoke else c) for c in CORPORA}
    ref_val_tokens = args.val_tokens or 65536  # the reference is scored on 4x the product's tokens
    proxy_val_tokens = args.val_tokens or space.budget.val_tokens
    units = plan(len(archs), ladder, args.ref, set(args.kinds.split(",")), args.ceiling_every)
    units = units[shard::shards]
    if args.reverse:
        units.reverse()
    gpu = torch.cuda.get_device_name() if args.device.startswith("cuda") else None
    for i, c, tokens, seed, kind in units:
        arch = archs[i]
        done = {(r["hash"], r["corpus"], r["tokens"], r["seed"], r["kind"])
                for r in read_jsonl(*results_files())}
        if (arch.hash, c, tokens, seed, kind) in done:
            continue
        budget = dataclasses.replace(space.budget, tokens=tokens, max_seconds=None,
                                     val_tokens=ref_val_tokens if kind == "ref" else proxy_val_tokens)
        # The CPU's matmul speed says how loaded the machine was; meaningless beside a GPU run.
        ref = None if gpu else matmul_flops(threads=1, n=512, rounds=3)
        t0 = time.perf_counter()
        r = train(arch, budget, datasets[c], device=args.device, seed=seed, threads=1).result
        row = {"i": i, "hash": arch.hash, "arch": arch.to_dict(), "params": arch.n_params,
               "corpus": c, "tokens": tokens, "seed": seed, "kind": kind,
               "val_loss": r.val_loss, "status": r.status, "tokens_per_s": r.tokens_per_s,
               "seconds": time.perf_counter() - t0, "matmul_flops_ref": ref,
               "train_flops_per_token": arch.training_flops_per_token(budget.seq_len),
               "loadavg": os.getloadavg()[0], "worker": worker, "device": r.device, "gpu": gpu,
               "torch": torch.__version__}
        append_jsonl(out, row)
        print(f"[{i}] {c} {kind} {tokens} s{seed} {arch.describe()} "
              f"loss={r.val_loss:.3f} {row['seconds']:.1f}s", flush=True)


if __name__ == "__main__":
    main()
