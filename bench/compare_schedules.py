"""Issue 14, the rung schedule: do rung losses rank like the full-budget loss under cosine and
under another schedule (warmup-stable-decay with a cooldown branch per rung, a shorter warm-up)?

Reads two tables `bench.collect_tabular` wrote for the same space: the cosine one (the item-4
table, ``tabular``) and one trained with ``--schedule wsd`` (``tabular_wsd``; a partial table is
a uniform sample, so the architectures both hold are compared). For each rung point both hold:
Spearman rho between the rung's loss and the same run's full-budget loss, with a 95% bootstrap
interval over architectures and the paired interval of the difference (other - base). Also
rho between the two schedules' final losses, their mean final loss, and what a row's training
cost (the branches included).

    python -m bench.compare_schedules [--base tabular] [--other tabular_wsd]
    python -m bench.compare_schedules --smoke    # the committed rows, 50 resamples
"""

from __future__ import annotations

import argparse
import statistics
from typing import Any

import numpy as np

from bench.analyze_fidelity import _RESAMPLES, _rho, boot
from bench.collect_tabular import table_path
from bench.common import add_smoke_flag, markdown_table, read_jsonl


def _rows(table: str) -> dict[str, dict[str, Any]]:
    return {r["hash"]: r for r in read_jsonl(table_path(table)) if r.get("status") == "ok"}


def _at(row: dict[str, Any], step: int) -> float:
    return next(p["val_loss"] for p in row["points"] if p["step"] == step)


def _interval(point: float, lo: float, hi: float) -> str:
    return f"{point:.2f} [{lo:.2f}, {hi:.2f}]"


def compare(base_name: str, base: dict[str, dict[str, Any]], other_name: str,
            other: dict[str, dict[str, Any]]) -> str:
    both = sorted(set(base) & set(other))
    if len(both) < 5:
        return f"only {len(both)} architectures in both tables: too few to compare"
    rng = np.random.default_rng(0)
    steps = sorted(set.intersection(*({p["step"] for p in other[h]["points"]} for h in both))
                   & {p["step"] for p in base[both[0]]["points"]})
    final = steps[-1]
    tokens = {p["step"]: p["tokens"] for p in other[both[0]]["points"]}
    base_final = np.array([_at(base[h], final) for h in both])
    other_final = np.array([_at(other[h], final) for h in both])
    rows = []
    for step in steps[:-1]:
        b = np.array([_at(base[h], step) for h in both])
        o = np.array([_at(other[h], step) for h in both])
        rows.append([f"{tokens[step]:,}", _interval(*boot(b, base_final, _rho, rng)),
                     _interval(*boot(o, other_final, _rho, rng)),
                     _interval(*_paired(o, other_final, b, base_final, rng))])
    table = markdown_table(["rung ends at (tokens)", f"{base_name}: rho(rung, final)",
                            f"{other_name}: rho(rung, final)", f"{other_name} - {base_name} (paired)"], rows)
    cost = [statistics.median(sum(p["call_seconds"] for p in t[h]["points"]) for h in both)
            for t in (base, other)]
    finals = _interval(*boot(other_final, base_final, _rho, rng))
    return (f"{len(both)} architectures in both tables; final = {tokens[final]:,} tokens\n\n{table}\n\n"
            f"- rho({other_name} final, {base_name} final) = {finals}\n"
            f"- mean final loss: {base_name} {base_final.mean():.4f}, {other_name} {other_final.mean():.4f} "
            f"({other_name} lower for {int(np.sum(other_final < base_final))} of {len(both)})\n"
            f"- median training seconds per architecture (every rung call, branches included): "
            f"{base_name} {cost[0]:.1f}, {other_name} {cost[1]:.1f}")


def _paired(o: np.ndarray, o_final: np.ndarray, b: np.ndarray, b_final: np.ndarray,
            rng: np.random.Generator) -> tuple[float, float, float]:
    """rho(o, o_final) - rho(b, b_final), bootstrapped over architectures (`boot`, with both
    tables' columns side by side so one resample draws the same architectures for both)."""
    def difference(rungs: np.ndarray, finals: np.ndarray) -> float:
        return _rho(rungs[:, 0], finals[:, 0]) - _rho(rungs[:, 1], finals[:, 1])

    return boot(np.column_stack([o, b]), np.column_stack([o_final, b_final]), difference, rng)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", default="tabular", help="the reference table (cosine)")
    parser.add_argument("--other", default="tabular_wsd", help="the table trained otherwise")
    add_smoke_flag(parser)
    args = parser.parse_args()
    if args.smoke:
        _RESAMPLES["n"] = 50
    print(compare(args.base, _rows(args.base), args.other, _rows(args.other)))


if __name__ == "__main__":
    main()
