"""Item 4 data: a table of evaluated `tiny.yaml` architectures (proxy loss, latency, params).

    python bench/collect_table.py --n 300            # resumable: rerun to continue
    python bench/collect_table.py --n 300 --tokens 50000

Each candidate is a uniform draw from the tiny space (distinct, meeting its shape constraint
params <= 1.5M), proxy-trained on the space's own corpus (stdlib, byte tokens) with the space's
budget except ``--tokens``, exported with the product's parity-checked ONNX export, and timed
with `nas.latency.measure` on cpu-1t -- the same calls a search trial makes, one thread.
One JSON line per candidate in bench/results/tiny_table.jsonl, with the seconds each step took
and an fp32 matmul reference measured right before the candidate (item 3 reads them).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from bench._util import RESULTS, append_jsonl, corpus, read_jsonl, sample_archs
from bench.common import format_machine, machine_info, matmul_flops

OUT = RESULTS / "tiny_table.jsonl"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--tokens", type=int, default=50_000)
    ap.add_argument("--seed", type=int, default=1234)
    args = ap.parse_args()
    torch.set_num_threads(1)
    print(format_machine(machine_info(threads=1)), flush=True)
    from nas.hardware import load_profile
    from nas.latency import measure
    from nas.onnx_export import export_onnx
    from nas.proxy import train
    from nas.space import load_space

    space = load_space("tiny")
    budget = dataclasses.replace(space.budget, tokens=args.tokens, max_seconds=None)
    profile = load_profile("cpu-1t")
    data = corpus("stdlib")
    done = {r["hash"] for r in read_jsonl(OUT)}
    archs = sample_archs(space, args.n, args.seed)
    print(f"{len(done)} of {len(archs)} done; budget {budget.tokens} tokens", flush=True)
    for i, arch in enumerate(archs):
        if arch.hash in done:
            continue
        t0 = time.perf_counter()
        ref = matmul_flops(threads=1, n=512, rounds=3)
        t1 = time.perf_counter()
        trained = train(arch, budget, data, threads=1)
        t2 = time.perf_counter()
        row = {"i": i, "hash": arch.hash, "arch": arch.to_dict(), "params": arch.n_params,
               "val_loss": trained.result.val_loss, "status": trained.result.status,
               "tokens_per_s": trained.result.tokens_per_s, "tokens": budget.tokens,
               "train_flops_per_token": arch.training_flops_per_token(budget.seq_len),
               "matmul_flops_ref": ref, "loadavg": __import__("os").getloadavg()[0]}
        if trained.result.status != "diverged":
            with tempfile.TemporaryDirectory() as tmp:
                graphs = export_onnx(trained.model, arch, Path(tmp))
                t3 = time.perf_counter()
                lat = measure(graphs, profile)
                t4 = time.perf_counter()
            row.update(decode_ms=lat.decode.median_ms, prefill_ms=lat.prefill.median_ms,
                       decode_cv=lat.decode.cv, prefill_cv=lat.prefill.cv,
                       seconds={"ref": t1 - t0, "train": t2 - t1, "export": t3 - t2,
                                "latency": t4 - t3})
        append_jsonl(OUT, row)
        print(f"[{i}] {arch.describe()} params={arch.n_params} loss={row['val_loss']:.3f} "
              f"decode={row.get('decode_ms', float('nan')):.3f}ms "
              f"{time.perf_counter() - t0:.1f}s", flush=True)


if __name__ == "__main__":
    main()
