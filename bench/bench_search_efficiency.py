"""Item 4: replay the product's samplers against a stored table of evaluated architectures.

    python -m bench.bench_search_efficiency                  # ~1-2 minutes, no training
    python -m bench.bench_search_efficiency --trials 50 --seeds 10 --json
    python -m bench.bench_search_efficiency --table tiny_table_200k    # the second table
    python -m bench.bench_search_efficiency --smoke          # seconds: 12 trials, 2 seeds, tpe and random

The table (bench/results/search_efficiency/tiny_table.jsonl, made by bench/collect_table.py) holds uniformly
drawn `tiny.yaml` candidates, each really trained (proxy loss), exported and timed (cpu-1t
decode ms). A replayed search is exactly the driver's ask/tell loop with the space's own
sampler (`nas.space.make_sampler`; the space's options resolved for ``--trials``):
``trial = study.ask(); arch = space.suggest(trial)``; a candidate that breaks the shape
constraint (params <= 1.5M) is told PRUNED with its partial constraints, as the driver does.

Lookup. The tiny space has ~10^4 architectures and the table a few hundred, so a suggestion is
rarely in the table. Re-evaluating the missing ones is not affordable here (seconds each,
thousands of suggestions), so each suggestion is mapped to its *nearest* table entry (a
1-nearest-neighbour surrogate, distance over the architecture fields: |log2| differences of
n_layer, d_model, n_head, n_kv_head, ffn_mult, plus 1 per mismatch of attention kind,
window, sharing and tied embeddings). The sampler is told that entry's real measured values
for the parameters it suggested, and the replay's front is built from the entries actually
picked, so every point on it is a real measurement and the replayed hypervolume can never
exceed the table front's. The share of exact hits is reported. Random search runs through the
same mapping (Optuna's RandomSampler), plus a mapping-free baseline: 50 entries drawn
uniformly from the table (the table is itself a uniform sample of the space).

Hypervolume: `nas.pareto.hypervolume` on (val_loss, decode ms), both minimised, reference =
`nas.pareto.reference_point` of the whole table (nadir pushed out by 10% of the range); each
replay's hypervolume is divided by the table front's. Test: one-sided Mann-Whitney U of the
default sampler's relative hypervolumes against random search's.
"""

from __future__ import annotations

import argparse
import json
import math
import time
import warnings
from typing import TYPE_CHECKING, Any

import numpy as np
import yaml

from bench.collect_table import load_rows
from bench.common import add_smoke_flag, format_machine, machine_info, markdown_table

if TYPE_CHECKING:
    from nas.architecture import Architecture
    from nas.space import SearchSpace

OBJ = ("val_loss", "latency:cpu-1t:decode_ms")


def features(a: Architecture) -> np.ndarray:
    attn = {"softmax": 0, "sliding_window": 1, "linear": 2}[a.attention]
    share = {"none": 0, "all": 1}.get(a.sharing, 2)
    return np.array([math.log2(a.n_layer), math.log2(a.d_model), math.log2(a.n_head),
                     math.log2(a.n_kv_head), math.log2(a.ffn_mult), attn, a.window or 0,
                     share, float(a.tie_embeddings)])


def distance(f: np.ndarray, table: np.ndarray) -> np.ndarray:
    num = np.abs(table[:, :5] - f[:5]).sum(axis=1)
    cat = (table[:, 5] != f[5]).astype(float) + (table[:, 6] != f[6]) + (table[:, 7] != f[7]) + \
          (table[:, 8] != f[8])
    return num + cat


def load_table(name: str = "tiny_table") -> tuple[list[dict[str, Any]], list[Architecture], np.ndarray]:
    from nas.architecture import Architecture

    rows = [r for r in load_rows(name)
            if r.get("status") != "diverged" and "decode_ms" in r and math.isfinite(r["val_loss"])]
    seen, out = set(), []
    for r in rows:
        if r["hash"] not in seen:
            seen.add(r["hash"])
            out.append(r)
    archs = [Architecture.from_dict(r["arch"]) for r in out]
    values = np.array([[r["val_loss"], r["decode_ms"]] for r in out])
    return out, archs, values


def space_for(sampler: str, seed: int, trials: int) -> SearchSpace:
    from nas.space import SearchSpace, load_space

    d = load_space("tiny").to_dict()
    d["trials"] = trials
    d["seed"] = seed
    # "tpe" or "tpe:n_startup_trials=5,n_ei_candidates=48"; options not given are re-resolved
    # for this many trials, as the product does.
    name, _, opts = sampler.partition(":")
    d["sampler"] = {"name": name, **{k: yaml.safe_load(v) for k, v in
                                     (o.split("=", 1) for o in opts.split(",") if o)}}
    return SearchSpace.from_dict(d)


def replay(sampler: str, seed: int, trials: int, values: np.ndarray, feats: np.ndarray,
           hashes: dict[str, int]) -> tuple[list[int], int, int]:
    import optuna
    from optuna.trial import TrialState

    from nas.architecture import static_metrics
    from nas.space import make_sampler

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space = space_for(sampler, seed, trials)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        study = optuna.create_study(directions=space.directions(), sampler=make_sampler(space))
        picked, exact, pruned = [], 0, 0
        for _ in range(trials):
            trial = study.ask()
            arch = space.suggest(trial)
            if space.check_static(arch):
                for key, value in space.constraint_dict(static_metrics(arch), partial=True).items():
                    trial.set_constraint(key, value)
                study.tell(trial, state=TrialState.PRUNED)
                pruned += 1
                continue
            j = hashes.get(arch.hash)
            if j is None:
                j = int(np.argmin(distance(features(arch), feats)))
            else:
                exact += 1
            metrics = static_metrics(arch)
            metrics.update({OBJ[0]: values[j, 0], OBJ[1]: values[j, 1]})
            for key, value in space.constraint_dict(metrics).items():
                trial.set_constraint(key, value)
            study.tell(trial, space.objective_values(metrics))
            picked.append(j)
    return picked, exact, pruned


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trials", type=int, default=50)
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--samplers", default="tpe,nsga2,random",
                    help="comma-free list separated by ; when options are given, e.g. "
                    "'tpe;tpe:n_startup_trials=20;random'")
    ap.add_argument("--table", default="tiny_table",
                    help="bench/results/search_efficiency/<table>.jsonl from collect_table.py "
                    "(tiny_table_200k: the "
                    "second table, at the default budget of its time)")
    ap.add_argument("--json", action="store_true")
    add_smoke_flag(ap)
    args = ap.parse_args()
    draws = 1000  # uniform table draws, the mapping-free baseline
    if args.smoke:  # reads the stored table and writes nothing: a short replay is all it needs
        args.trials, args.seeds, args.samplers, draws = 12, 2, "tpe,random", 20
    from scipy.stats import mannwhitneyu

    from nas.pareto import hypervolume, pareto_front, reference_point

    print(format_machine(machine_info()))
    rows, archs, values = load_table(args.table)
    dirs = ["min", "min"]
    ref = reference_point(values, dirs)
    hv_table = hypervolume(values, dirs, ref)
    front = pareto_front(values, dirs)
    print(f"\ntable: {len(rows)} candidates, front of {len(front)}, reference {ref.round(4).tolist()}, "
          f"table hypervolume {hv_table:.5f}")
    feats = np.stack([features(a) for a in archs])
    hashes = {a.hash: i for i, a in enumerate(archs)}
    results: dict[str, list[float]] = {}
    extra: dict[str, list[tuple]] = {}
    t0 = time.perf_counter()
    for sampler in (args.samplers.split(";") if ";" in args.samplers else args.samplers.split(",")):
        for seed in range(args.seeds):
            picked, exact, pruned = replay(sampler, seed, args.trials, values, feats, hashes)
            hv = hypervolume(values[sorted(set(picked))], dirs, ref) / hv_table if picked else 0.0
            results.setdefault(sampler, []).append(hv)
            extra.setdefault(sampler, []).append((exact, pruned, len(set(picked))))
    seconds = time.perf_counter() - t0
    rng = np.random.default_rng(0)
    uni = []
    for _ in range(draws):
        idx = rng.choice(len(values), size=min(args.trials, len(values)), replace=False)
        uni.append(hypervolume(values[idx], dirs, ref) / hv_table)
    results["uniform table draw"] = uni
    table = []
    rand = results.get("random")
    for name, hv in results.items():
        hv = np.asarray(hv)
        ex = extra.get(name)
        p = "-"
        if rand is not None and name not in ("random",):
            p = f"{mannwhitneyu(hv, rand, alternative='greater').pvalue:.3g}"
        table.append([name, len(hv), f"{np.median(hv) * 100:.1f}%", f"{hv.min() * 100:.1f}%",
                      f"{hv.max() * 100:.1f}%", p,
                      f"{np.mean([e[0] for e in ex]):.1f}" if ex else "-",
                      f"{np.mean([e[1] for e in ex]):.1f}" if ex else "-",
                      f"{np.mean([e[2] for e in ex]):.1f}" if ex else "-"])
    print(f"\n{args.trials} trials x {args.seeds} seeds per sampler ({seconds:.0f} s); "
          "hypervolume relative to the table front's\n")
    print(markdown_table(["sampler", "runs", "median HV", "min", "max", "p (> random, MWU)",
                          "exact hits", "pruned (params)", "distinct entries"], table))
    if args.json:
        print(json.dumps({k: list(map(float, v)) for k, v in results.items() if k != "uniform table draw"}))


if __name__ == "__main__":
    main()
