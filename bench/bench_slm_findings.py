"""Item 5 (reduced scale): do small-LM design findings show up with the slm space's structure?

    python bench/bench_slm_findings.py [--tokens 300000] [--seeds 2]    # resumable
    python bench/bench_slm_findings.py --report

`slm.yaml`'s models (5-50M parameters, 5M tokens each) cannot be trained meaningfully on this
2-core machine, so this runs *paired* comparisons with the slm space's structure (softmax
attention, GQA with 2 KV heads, SwiGLU ffn_mult 2.75, BPE vocabulary, lr 2e-3, warm-up 5%) at
~1.4-2M parameters, BPE vocabulary 2048 (trained by `nas.data` on tinyshakespeare), 300k
training tokens (batch 16 x 128), scored on 32k held-out tokens, one thread, seeds 0 and 1:

* tied embeddings: L8 d128 tied vs untied (same shape; tying saves vocab x d_model params);
* deep-and-thin vs shallow-and-wide at equal size: L20 d80 (1.63M) vs L3 d192 (1.64M);
* immediate block-wise sharing at fixed size: L6 d128 unshared vs L12 d128 ``repeat:2``
  (the same 1.37M unique parameters, each block run twice in a row: 2x compute).
One JSON line per run in bench/results/slm_findings.jsonl. ``--tokens 900000 --seeds 1 --only
deep-thin,shallow-wide`` repeats one pair at 3x the tokens (reported as "@900k").
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

from bench._util import RESULTS, SHARED_DATA, append_jsonl, read_jsonl
from bench.common import format_machine, machine_info, markdown_table

OUT = RESULTS / "slm_findings.jsonl"
V = 2048


def models():
    from nas.architecture import Architecture

    def A(L, d, **kw):
        base = dict(n_layer=L, d_model=d, n_head=4, n_kv_head=2, ffn_mult=2.75, vocab_size=V,
                    max_seq_len=512, tie_embeddings=True)
        base.update(kw)
        return Architecture(**base)

    return {
        "L8 d128 tied": A(8, 128), "L8 d128 untied": A(8, 128, tie_embeddings=False),
        "L20 d80 (deep-thin)": A(20, 80), "L3 d192 (shallow-wide)": A(3, 192),
        "L6 d128 unshared": A(6, 128), "L12 d128 repeat:2": A(12, 128, sharing="repeat:2"),
    }


PAIRS = [("tied embeddings (tied - untied)", "L8 d128 tied", "L8 d128 untied"),
         ("deep-thin - shallow-wide", "L20 d80 (deep-thin)", "L3 d192 (shallow-wide)"),
         ("block-wise sharing (repeat:2 - unshared)", "L12 d128 repeat:2", "L6 d128 unshared")]


def collect(tokens: int, seeds: int, only: str = "") -> None:
    import torch

    from nas.data import prepare
    from nas.proxy import train
    from nas.specs import DataSpec, ProxyBudget

    torch.set_num_threads(1)
    data = prepare(DataSpec(corpus=(str(SHARED_DATA / "tinyshakespeare.txt"),), tokenizer=f"bpe:{V}"))
    print(data.description, flush=True)
    budget = ProxyBudget(tokens=tokens, batch_size=16, seq_len=128, lr=2e-3, warmup_frac=0.05,
                         val_tokens=32768)
    for seed in range(seeds):
        for name, arch in models().items():
            if only and not any(o in name for o in only.split(",")):
                continue
            done = {(r["name"], r["seed"], r["tokens"]) for r in read_jsonl(OUT)}
            if (name, seed, tokens) in done:
                continue
            t0 = time.perf_counter()
            r = train(arch, budget, data, seed=seed, threads=1).result
            append_jsonl(OUT, {"name": name, "seed": seed, "tokens": tokens, "arch": arch.to_dict(),
                               "params": arch.n_params, "val_loss": r.val_loss, "status": r.status,
                               "tokens_per_s": r.tokens_per_s, "seconds": time.perf_counter() - t0})
            print(f"{name} s{seed}: {r.val_loss:.4f} ({time.perf_counter() - t0:.0f}s)", flush=True)


def report() -> str:
    rows = read_jsonl(OUT)
    loss: dict[str, dict[int, float]] = {}
    params = {}
    for r in rows:
        key = r["name"] if r["tokens"] == 300_000 else f"{r['name']} @{r['tokens'] // 1000}k"
        loss.setdefault(key, {})[r["seed"]] = r["val_loss"]
        params[key] = r["params"]
    ms = models()
    table = [[n, f"{params[n] / 1e6:.2f}M",
              f"{ms[n.split(' @')[0]].training_flops_per_token(128) / 1e6:.1f}",
              " / ".join(f"{loss[n][s]:.4f}" for s in sorted(loss.get(n, {})))] for n in loss]
    text = markdown_table(["model", "params", "train MFLOP/token", "val loss (seed 0 / 1)"], table)
    t2 = []
    pairs = list(PAIRS)
    for tok in sorted({r["tokens"] for r in rows} - {300_000}):
        pairs += [(f"{label} @{tok // 1000}k", f"{a} @{tok // 1000}k", f"{b} @{tok // 1000}k")
                  for label, a, b in PAIRS]
    for label, a, b in pairs:
        seeds = sorted(set(loss.get(a, {})) & set(loss.get(b, {})))
        if not seeds:
            continue
        d = [loss[a][s] - loss[b][s] for s in seeds]
        t2.append([label, f"{(params[a] - params[b]) / 1e6:+.2f}M",
                   " / ".join(f"{x:+.4f}" for x in d), f"{np.mean(d):+.4f}", len(seeds)])
    text += "\n\n" + markdown_table(["comparison", "params difference", "loss difference per seed",
                                     "mean", "seeds"], t2)
    return text


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=300_000)
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--report", action="store_true")
    ap.add_argument("--only", default="", help="comma-separated substrings of model names to run")
    args = ap.parse_args()
    if not args.report:
        print(format_machine(machine_info(threads=1)), flush=True)
        collect(args.tokens, args.seeds, args.only)
    print(report())


if __name__ == "__main__":
    main()
