"""Item 1 (and 3a) tables from the runs bench/collect_fidelity.py and collect_table.py stored.

    python -m bench.analyze_fidelity                 # seconds; reads bench/results/fidelity/*.jsonl
    python -m bench.analyze_fidelity --ref 500000    # against the earlier 500k reference
    python -m bench.analyze_fidelity --smoke         # the committed rows, 50 bootstrap resamples

Per corpus and ladder rung: Spearman rho and Kendall tau between the proxy's loss and the
reference loss (seed 0 at the reference budget), with 95% bootstrap intervals (2000 resamples
of the candidates); the same for the training-free parameter-count proxy (more parameters =
predicted better, i.e. rho(-params, reference loss)); the paired bootstrap interval of the
difference; the seed-to-seed ceiling (rho between two seeds at the reference budget); and
top-k recall: of the reference's best k, the share inside the proxy's best 2k (k = 10 when
n >= 40, else n // 4, stated in the table).
Throughput (item 3a): achieved training FLOP/s (`Architecture.training_flops_per_token` x
tokens/s) over the one-thread fp32 matmul FLOP/s measured right before each run.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

import numpy as np
from scipy.stats import kendalltau, spearmanr

from bench.common import add_smoke_flag, markdown_table, read_jsonl, results_dir

Stat = Callable[[np.ndarray, np.ndarray], float]
_RESAMPLES = {"n": 2000}  # bootstrap resamples; --smoke lowers it


def _rho(a: np.ndarray, b: np.ndarray) -> float:
    return spearmanr(a, b).statistic


def _tau(a: np.ndarray, b: np.ndarray) -> float:
    return kendalltau(a, b).statistic


def boot(a: Any, b: Any, fn: Stat, rng: np.random.Generator,
         c: Any = None) -> tuple[float, float, float]:
    """Point estimate and 95% percentile interval; with ``c``: fn(a, b) - fn(c, b), paired."""
    a, b = np.asarray(a), np.asarray(b)
    n = len(a)
    point = fn(a, b) - (fn(c, b) if c is not None else 0)
    stats = []
    for _ in range(_RESAMPLES["n"]):
        i = rng.integers(0, n, n)
        if len(set(i)) < 3:
            continue
        s = fn(a[i], b[i]) - (fn(np.asarray(c)[i], b[i]) if c is not None else 0)
        if np.isfinite(s):
            stats.append(s)
    lo, hi = np.percentile(stats, [2.5, 97.5])
    return point, lo, hi


def recall(proxy: np.ndarray, ref: np.ndarray, k: int) -> float:
    best = set(np.argsort(ref)[:k])
    top = set(np.argsort(proxy)[: 2 * k])
    return len(best & top) / k


def fmt(p: float, lo: float, hi: float) -> str:
    return f"{p:.3f} [{lo:.3f}, {hi:.3f}]"


def _where(rows: list[dict]) -> str:
    devices = sorted({r.get("gpu") or "CPU" for r in rows})
    return ", ".join(devices)


def fidelity(ref_tokens: int | None = None) -> str:
    """``ref_tokens``: the reference budget (default: the longest); shorter references become
    one more rung of the ladder."""
    rows = [r for r in read_jsonl(*sorted(results_dir("fidelity").glob("fidelity_*.jsonl")))
            if np.isfinite(r["val_loss"])]
    if ref_tokens is None:
        ref_tokens = max(r["tokens"] for r in rows if r["kind"] == "ref")
    rng = np.random.default_rng(0)
    out = []
    for corpus in ("shakespeare", "wikitext"):
        rs = [r for r in rows if r["corpus"] == corpus]
        refs = [r for r in rs if r["kind"] == "ref" and r["tokens"] == ref_tokens]
        ref = {r["hash"]: r for r in refs if r["seed"] == 0}
        ref1 = {r["hash"]: r for r in refs if r["seed"] == 1}
        # Every seed-0 run that is not the reference predicts it: the ladder and other references.
        rungs = sorted({r["tokens"] for r in rs if r["seed"] == 0 and r["tokens"] != ref_tokens})
        table = []
        for t in rungs:
            px = {r["hash"]: r for r in rs if r["seed"] == 0 and r["tokens"] == t}
            hs = sorted(set(px) & set(ref))
            if len(hs) < 5:
                continue
            p = np.array([px[h]["val_loss"] for h in hs])
            y = np.array([ref[h]["val_loss"] for h in hs])
            k = 10 if len(hs) >= 40 else max(2, len(hs) // 4)
            table.append([f"proxy {t // 1000}k tokens ({_where(list(px.values()))})", len(hs),
                          fmt(*boot(p, y, _rho, rng)),
                          fmt(*boot(p, y, _tau, rng)), f"{recall(p, y, k):.2f} (top {k} in {2 * k})",
                          fmt(*boot(p, y, _rho, rng, c=-np.array([ref[h]["params"] for h in hs])))])
        hs = sorted(ref)
        if len(hs) >= 5:
            y = np.array([ref[h]["val_loss"] for h in hs])
            q = -np.array([ref[h]["params"] for h in hs], dtype=float)
            k = 10 if len(hs) >= 40 else max(2, len(hs) // 4)
            table.append(["parameter count", len(hs), fmt(*boot(q, y, _rho, rng)),
                          fmt(*boot(q, y, _tau, rng)),
                          f"{recall(q, y, k):.2f} (top {k} in {2 * k})", "-"])
            other = [h for h in hs if h in ref1]
            if len(other) >= 4:
                a = np.array([ref[h]["val_loss"] for h in other])
                b = np.array([ref1[h]["val_loss"] for h in other])
                d = np.abs(a - b)
                table.append([f"seed ceiling (seed 0 vs 1 at ref, mean abs. diff {d.mean():.3f} nats)",
                              len(other), fmt(*boot(a, b, _rho, rng)), fmt(*boot(a, b, _tau, rng)), "-", "-"])
        out.append(f"\n{corpus}: reference = {ref_tokens // 1000}k tokens, seed 0, trained on "
                   f"{_where(list(ref.values()))}\n")
        out.append(markdown_table(["predictor", "n", "Spearman rho [95% CI]", "Kendall tau [95% CI]",
                                   "top-k recall", "rho minus param-count rho [95% CI]"], table))
        feats = [r for r in ref.values() if r["arch"]["sharing"] != "none" or
                 r["arch"]["n_kv_head"] < r["arch"]["n_head"] or r["arch"]["attention"] != "softmax"]
        out.append(f"\n{len(feats)} of {len(ref)} candidates use sharing, GQA or non-softmax attention.")
    return "\n".join(out)


def throughput() -> str:
    rows = (read_jsonl(*sorted(results_dir("fidelity").glob("fidelity_*.jsonl")))
            + read_jsonl(results_dir("search_efficiency") / "tiny_table.jsonl"))
    bins = [(0, 1e5), (1e5, 3e5), (3e5, 1e6), (1e6, 2e6)]
    table = []
    for lo, hi in bins:
        sel = [r for r in rows if lo <= r["params"] < hi and r.get("tokens_per_s")
               and r.get("status") == "ok" and r.get("matmul_flops_ref")]
        if not sel:
            continue
        frac = np.array([r["train_flops_per_token"] * r["tokens_per_s"] / r["matmul_flops_ref"] for r in sel])
        ref = np.array([r["matmul_flops_ref"] for r in sel]) / 1e9
        table.append([f"{lo / 1e6:g}-{hi / 1e6:g}M", len(sel), f"{np.median(frac) * 100:.1f}%",
                      f"{np.percentile(frac, 10) * 100:.1f}-{np.percentile(frac, 90) * 100:.1f}%",
                      f"{np.median(ref):.0f}"])
    return markdown_table(["params", "runs", "median achieved / matmul", "p10-p90",
                           "matmul ref GFLOP/s (median)"], table)


def table_breakdown() -> str:
    """Where a table candidate's evaluation time went (bench/collect_table.py, one thread)."""
    rows = [r for r in read_jsonl(results_dir("search_efficiency") / "tiny_table.jsonl") if "seconds" in r]
    if not rows:
        return ""
    table = []
    for lo, hi in [(0, 2e5), (2e5, 5e5), (5e5, 2e6)]:
        sel = [r["seconds"] for r in rows if lo <= r["params"] < hi]
        if not sel:
            continue
        tot = {k: sum(x[k] for x in sel) for k in ("train", "export", "latency")}
        allv = sum(tot.values())
        at_500k = 1 - 10 * tot["train"] / (10 * tot["train"] + tot["export"] + tot["latency"])
        table.append([f"{lo / 1e6:g}-{hi / 1e6:g}M", len(sel), f"{tot['train'] / len(sel):.2f}",
                      f"{tot['export'] / len(sel):.2f}", f"{tot['latency'] / len(sel):.2f}",
                      f"{(1 - tot['train'] / allv) * 100:.0f}%",
                      f"{at_500k * 100:.0f}%"])
    return markdown_table(["params", "candidates", "train s (50k tokens)", "export s", "latency s",
                           "outside training", "same at 500k tokens (train x10)"], table)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ref", type=int, default=None, help="reference tokens (default: longest)")
    add_smoke_flag(ap)
    args = ap.parse_args()
    if args.smoke:  # reads the stored rows and writes nothing: fewer resamples is all it needs
        _RESAMPLES["n"] = 50
    print(fidelity(args.ref))
    print("\nThroughput of the proxy runs above (one thread, fp32):\n")
    print(throughput())
    print("\nTable candidates (50k tokens): mean seconds per step\n")
    print(table_breakdown())


if __name__ == "__main__":
    main()
