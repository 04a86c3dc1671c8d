"""Item 4: replay the product's search loop on the exact tabular benchmark, full budget and
successive halving, and report hypervolume against the table's true front by training tokens.

    python -m bench.bench_search_efficiency --methods tpe,tpe+sh:50000/3 --seeds 30   # resumable
    python -m bench.bench_search_efficiency --report          # every stored method's tables, no replay
    python -m bench.bench_search_efficiency                   # every method BENCHMARKS.md reports: hours
    python -m bench.bench_search_efficiency --smoke           # seconds: a 3-architecture table

The table (``bench/results/search_efficiency/tabular.jsonl``, `bench.collect_tabular`) holds
every architecture of ``bench/spaces/tabular.yaml`` trained once to the full budget, with its
val loss at every rung end of eta 2, 3 and 4 down to ~15k tokens, its training seconds and its
measured cpu-1t decode latency. Every suggestion is looked up *exactly* (the space is the
table); an architecture missing from the table stops the replay.

A replay is the driver's loop (`nas.search.driver`, `nas.search.study`) on an in-memory study:

* the product's sampler (`nas.space.make_sampler` on the space with ``sampler`` and ``seed`` set;
  options resolved for the space's ``trials: 48``: TPE and GP 10 start-up trials, NSGA-II
  population 12), made afresh for each ask with `nas.space.trial_seed` as the driver does;
* shape-only constraint violators are told PRUNED with their partial constraints; a draw of an
  architecture already evaluated or in flight is told its result (a follower of an in-flight
  one when it finishes) and uses no budget; after 20 such draws in a row an unseen architecture
  is enqueued (`SearchStudy.enqueue_unseen`'s rule);
* two asynchronous workers: a candidate takes its shape step (the export and timing seconds the
  table measured), then trains rung by rung, each rung taking its tokens x the architecture's
  measured seconds per token, so candidates arrive at rungs in a realistic order;
* successive halving (``<sampler>+sh:<min_tokens>/<eta>``): `nas.search.rungs.RungLadder`
  decides each arrival with the table's loss at that rung (the rung loss the product sees,
  cosine over the whole budget), a pruned candidate is told PRUNED with its shape-step
  constraints, a complete one its full-budget values and constraints -- exactly the driver.

Training tokens are counted when a rung finishes; the hypervolume (`nas.pareto.hypervolume`,
reference `nas.pareto.reference_point` of the whole table) of the complete candidates' true
values is divided by the table front's. Each run stops asking once it has spent
``--budgets`` full budgets of tokens (full-budget methods: 48 = 48 trials).

Goals (issue 14): (a) the best successive-halving method reaches full-budget TPE's median
hypervolume at 48 trials with at most 1/3 of its tokens (median over seeds); (b) at equal tokens
it beats full-budget random search (one-sided Mann-Whitney U, scipy, p < 0.05); (c) Spearman
rho between the first rung's loss (where promotion is first decided) and the full-budget loss,
over the whole table, per fidelity setting.
"""

from __future__ import annotations

import argparse
import dataclasses
import heapq
import math
import os
import time
import warnings
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from bench.collect_tabular import SPACE, evaluate, load_space_file, smoke_space, table_order
from bench.common import (
    add_smoke_flag,
    append_jsonl,
    format_machine,
    machine_info,
    markdown_table,
    read_jsonl,
    results_dir,
    start_smoke,
)

if TYPE_CHECKING:
    import optuna

    from nas.architecture import Architecture
    from nas.fidelity import Fidelity
    from nas.space import SearchSpace

STUDY = "search_efficiency"
DIRS = ("min", "min")
REPEATS_BEFORE_RANDOM = 20  # nas.search.driver
WORKERS = 2
SAMPLERS = ("tpe", "nsga2", "random", "gp")
# Fidelity settings the table's recorded points allow (min_tokens, eta); rungs in tokens:
FIDELITIES = ((15_625, 2), (31_250, 2), (62_500, 2), (125_000, 2), (18_518, 3), (55_555, 3),
              (166_666, 3), (31_250, 4), (125_000, 4))
# What BENCHMARKS.md reports (and --report shows); its commands run them in cheap-to-dear order.
DEFAULT_METHODS = (
    "random,tpe,nsga2,gp,"
    + ",".join(f"{s}+sh:{m}/{e}" for m, e in FIDELITIES for s in ("random", "nsga2", "tpe"))
    + ",gp+sh:55555/3,"
    + ",".join(f"random+oracle:{f}" for f in ("15625/2", "55555/3", "31250/4", "125000/4"))
    + ",nsga2+oracle:55555/3,tpe+oracle:55555/3")
CHECKPOINTS = (4, 8, 12, 16, 24, 32, 48)  # full budgets of tokens at which HV is reported


# ----- the table ---------------------------------------------------------------------------
@dataclass
class Table:
    space: SearchSpace
    rows: dict[str, dict[str, Any]]  # arch hash -> row
    values: np.ndarray  # (n, 2) true (val_loss, decode ms) of the rows that trained
    reference: np.ndarray
    hv: float
    listed: list[Architecture] = field(default_factory=list)

    def loss_at(self, arch_hash: str, step: int) -> float:
        for p in self.rows[arch_hash]["points"]:
            if p["step"] == step:
                return float(p["val_loss"])
        raise KeyError(f"table row {arch_hash} has no loss at step {step}")

    def metrics(self, arch: Architecture) -> dict[str, float]:
        """What the shape step gives the driver: static metrics and the measured latency."""
        from nas.architecture import static_metrics

        row = self.rows[arch.hash]
        return {**static_metrics(arch), "latency:cpu-1t:decode_ms": row["decode_ms"],
                "latency:cpu-1t:prefill_ms": row["prefill_ms"]}


def table_path(name: str) -> Path:
    return results_dir(STUDY) / f"{name}.jsonl"


def load_table(name: str, space: SearchSpace) -> Table:
    from nas.pareto import hypervolume, reference_point

    rows = {}
    for r in read_jsonl(table_path(name)):
        rows.setdefault(r["hash"], r)
    listed = space.distinct_architectures() or []
    missing = [a for a in listed if a.hash not in rows]
    if missing:
        raise SystemExit(f"{table_path(name)}: {len(missing)} of {len(listed)} architectures of "
                         f"{space.source} are not in the table yet (bench.collect_tabular)")
    ok = [r for r in rows.values() if r["status"] == "ok" and math.isfinite(r["val_loss"])]
    values = np.array([[r["val_loss"], r["decode_ms"]] for r in ok])
    reference = reference_point(values, DIRS)
    return Table(space, rows, values, reference, hypervolume(values, DIRS, reference), listed)


# ----- one replay --------------------------------------------------------------------------
@dataclass
class Method:
    """``tpe`` (full budget), ``tpe+sh:31250/4`` (successive halving, min_tokens/eta), or
    ``tpe+oracle:31250/4``: the same rungs, but promotion sees the full-budget loss at every rung
    (a perfect rung schedule: the bound any learning-rate schedule could reach)."""

    sampler: str
    fidelity: Fidelity | None
    oracle: bool = False

    @classmethod
    def parse(cls, text: str) -> Method:
        from nas.fidelity import Fidelity

        kind = "+oracle:" if "+oracle:" in text else "+sh:"
        sampler, _, sh = text.partition(kind)
        if sampler not in SAMPLERS:
            raise SystemExit(f"unknown sampler {sampler!r} in {text!r}; known: {', '.join(SAMPLERS)}")
        if not sh:
            return cls(sampler, None)
        m, _, e = sh.partition("/")
        return cls(sampler, Fidelity(int(m), int(e)), oracle=kind == "+oracle:")

    @property
    def name(self) -> str:
        if self.fidelity is None:
            return self.sampler
        kind = "oracle" if self.oracle else "sh"
        return f"{self.sampler}+{kind}:{self.fidelity.min_tokens}/{self.fidelity.eta}"


def make_sampler(space: SearchSpace, seed: int) -> optuna.samplers.BaseSampler:
    """The product's sampler for the space (``sampler.name`` set per method), as the driver makes it."""
    from nas.space import make_sampler as product_sampler

    return product_sampler(space, seed=seed)


@dataclass(order=True)
class _Event:
    time: float
    seq: int
    number: int = field(compare=False)


@dataclass
class _Entry:
    number: int
    arch: Architecture
    trial: Any
    rung: int = 0
    followers: list[Any] = field(default_factory=list)


def replay(table: Table, method: Method, seed: int, budgets: float) -> dict[str, Any]:
    """One search, as the driver runs it, against the table. Returns its trajectory:
    (tokens spent, hypervolume / table's) after every finished rung, and its counts."""
    import optuna
    from optuna.trial import TrialState

    from nas.pareto import hypervolume
    from nas.results import RungLoss
    from nas.search.rungs import RungLadder
    from nas.space import SearchSpace, trial_seed

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    d = table.space.to_dict()
    d["seed"] = seed
    d["sampler"] = {"name": method.sampler}  # options resolved for the space's trials, as loaded
    space = SearchSpace.from_dict(d, source=table.space.source)
    ladder = RungLadder(space, method.fidelity)
    budget_tokens = budgets * space.budget.steps * space.budget.batch_size * space.budget.seq_len
    study = optuna.create_study(directions=space.directions())
    inflight: dict[int, _Entry] = {}
    by_hash: dict[str, _Entry] = {}
    finished: dict[str, tuple[str, dict[str, float]]] = {}  # hash -> (state, metrics)
    events: list[_Event] = []
    clock, seq, spent, hv = 0.0, 0, 0, 0.0
    complete_values: list[list[float]] = []
    trajectory: list[tuple[int, float]] = [(0, 0.0)]
    counts = {"asked": 0, "repeats": 0, "rejected": 0, "started": 0, "pruned": 0, "complete": 0,
              "failed": 0, "enqueued": 0}
    repeats_in_a_row = 0
    effective = len(table.listed)

    def ask() -> tuple[Any, Architecture]:
        study.sampler = make_sampler(space, trial_seed(space.seed, counts["asked"]))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            trial = study.ask()
            arch = space.suggest(trial)
        counts["asked"] += 1
        return trial, arch

    def tell(trial: Any, state: str, metrics: dict[str, float]) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if state == "complete":
                for key, value in space.constraint_dict(metrics).items():
                    trial.set_constraint(key, value)
                study.tell(trial, space.objective_values(metrics))
            elif state in ("pruned", "rejected"):
                for key, value in space.constraint_dict(metrics, partial=True).items():
                    trial.set_constraint(key, value)
                study.tell(trial, state=TrialState.PRUNED)
            else:
                study.tell(trial, state=TrialState.FAIL)

    def schedule(entry: _Entry, start_delay: float = 0.0) -> None:
        nonlocal seq
        row = table.rows[entry.arch.hash]
        before = ladder.tokens[entry.rung - 1] if entry.rung else 0
        seconds = (ladder.tokens[entry.rung] - before) * row["seconds_per_token"]
        seq += 1
        heapq.heappush(events, _Event(clock + start_delay + seconds, seq, entry.number))

    def finish(entry: _Entry, state: str, metrics: dict[str, float]) -> None:
        counts[state] += 1
        finished.setdefault(entry.arch.hash, (state, metrics))
        tell(entry.trial, state, metrics)
        for follower in entry.followers:
            tell(follower, *finished[entry.arch.hash])
        inflight.pop(entry.number)
        by_hash.pop(entry.arch.hash)

    def fill() -> None:
        nonlocal repeats_in_a_row
        rejections = 0
        while (spent < budget_tokens and effective - len(finished) - len(inflight) > 0
               and len(inflight) < WORKERS):
            trial, arch = ask()
            if space.check_static(arch):
                from nas.architecture import static_metrics

                tell(trial, "rejected", static_metrics(arch))
                counts["rejected"] += 1
                rejections += 1
                if rejections > 500:
                    raise RuntimeError("500 shape-constraint rejections in a row")
                continue
            if arch.hash in by_hash or arch.hash in finished:
                counts["repeats"] += 1
                if arch.hash in by_hash:
                    by_hash[arch.hash].followers.append(trial)
                else:
                    tell(trial, *finished[arch.hash])
                repeats_in_a_row += 1
                if repeats_in_a_row >= REPEATS_BEFORE_RANDOM:
                    repeats_in_a_row = 0
                    rng = np.random.default_rng(trial_seed(space.seed, counts["asked"]))
                    unseen = [a for a in table.listed if a.hash not in finished and a.hash not in by_hash]
                    if unseen:
                        study.enqueue_trial(space.params_for(unseen[int(rng.integers(len(unseen)))]))
                        counts["enqueued"] += 1
                continue
            repeats_in_a_row = 0
            if arch.hash not in table.rows:
                raise SystemExit(f"{arch.describe()} ({arch.hash}) is not in the table")
            entry = _Entry(trial.number, arch, trial)
            inflight[entry.number] = entry
            by_hash[arch.hash] = entry
            counts["started"] += 1
            row = table.rows[arch.hash]
            schedule(entry, start_delay=row["seconds"]["export"] + row["seconds"]["latency"])

    fill()
    while events:
        event = heapq.heappop(events)
        clock = event.time
        entry = inflight[event.number]
        row = table.rows[entry.arch.hash]
        metrics = table.metrics(entry.arch)
        step = ladder.steps[entry.rung]
        before = ladder.tokens[entry.rung - 1] if entry.rung else 0
        spent += ladder.tokens[entry.rung] - before
        if row["status"] != "ok" and all(p["step"] != step for p in row["points"]):
            finish(entry, "failed", metrics)
        elif ladder.is_last(entry.rung):
            metrics["val_loss"] = row["val_loss"]
            finish(entry, "complete", metrics)
            complete_values.append([row["val_loss"], row["decode_ms"]])
        else:
            loss = row["val_loss"] if method.oracle else table.loss_at(entry.arch.hash, step)
            decision = ladder.decide(entry.number, RungLoss(entry.rung, ladder.tokens[entry.rung], loss),
                                     metrics)
            if decision.promoted:
                entry.rung += 1
                schedule(entry)
            else:
                finish(entry, "pruned", metrics)
        if complete_values:
            hv = hypervolume(np.array(complete_values), DIRS, table.reference) / table.hv
        trajectory.append((spent, hv))
        fill()
    per_budget = ladder.tokens[-1]
    return {"method": method.name, "seed": seed, "budgets": budgets, "per_budget_tokens": per_budget,
            "trajectory": [[t, round(h, 6)] for t, h in trajectory], "counts": counts,
            "rungs": list(ladder.tokens), "sim_seconds": clock}


def hv_at(run: dict[str, Any], budgets: float) -> float:
    """Hypervolume after spending at most ``budgets`` full budgets of tokens."""
    limit = budgets * run["per_budget_tokens"] + 1e-6
    best = 0.0
    for tokens, hv in run["trajectory"]:
        if tokens <= limit:
            best = hv
    return best


def budgets_to(run: dict[str, Any], target: float) -> float:
    """Full budgets of tokens spent when the hypervolume first reached ``target`` (inf: never)."""
    for tokens, hv in run["trajectory"]:
        if hv >= target - 1e-12:
            return tokens / run["per_budget_tokens"]
    return math.inf


# ----- running many ------------------------------------------------------------------------
_TABLE: dict[str, Table] = {}


def _worker_replay(args: tuple[str, str, str, int, float, str | None]) -> dict[str, Any]:
    table_name, space_path, method, seed, budgets, smoke_dir = args
    if smoke_dir:
        os.environ["NAS_BENCH_SMOKE_DIR"] = smoke_dir
        start_smoke()
    if table_name not in _TABLE:
        space = smoke_space() if smoke_dir else load_space_file(space_path)
        _TABLE[table_name] = load_table(table_name, space)
    started = time.perf_counter()
    run = replay(_TABLE[table_name], Method.parse(method), seed, budgets)
    run["seconds"] = time.perf_counter() - started
    return run


def run_all(table_name: str, space_path: str, methods: Sequence[str], seeds: int, budgets_full: float,
            budgets_sh: float, processes: int, out: Path, space_hash: str,
            smoke_dir: str | None = None) -> None:
    done = {(r["method"], r["seed"], r["budgets"]) for r in read_jsonl(out)
            if r.get("space_hash") == space_hash}
    todo = []
    for method in methods:
        budgets = budgets_full if Method.parse(method).fidelity is None else budgets_sh
        for seed in range(seeds):
            if not any(m == method and s == seed and b >= budgets for m, s, b in done):
                todo.append((table_name, space_path, method, seed, budgets, smoke_dir))
    print(f"{len(todo)} replays to run ({len(done)} stored) in {processes} processes", flush=True)
    started = time.perf_counter()
    if processes <= 1:
        results = map(_worker_replay, todo)
        for run in results:
            append_jsonl(out, {**run, "table": table_name, "space_hash": space_hash})
        return
    with ProcessPoolExecutor(processes) as pool:
        for n, run in enumerate(pool.map(_worker_replay, todo, chunksize=1)):
            append_jsonl(out, {**run, "table": table_name, "space_hash": space_hash})
            if (n + 1) % 20 == 0 or n + 1 == len(todo):
                print(f"  {n + 1}/{len(todo)} replays, {time.perf_counter() - started:.0f} s "
                      f"(last: {run['method']} seed {run['seed']}, {run['seconds']:.1f} s)", flush=True)


# ----- the report --------------------------------------------------------------------------
def spearman_table(table: Table, fidelities: Sequence[Fidelity]) -> list[list[Any]]:
    """Spearman rho (bootstrap 95% interval) of each fidelity's first rung, and of every rung
    before the last, against the full-budget loss, over the whole table."""
    from scipy.stats import spearmanr

    from nas.errors import ConfigError
    from nas.fidelity import check_fidelity, rung_steps

    ok = [r for r in table.rows.values() if r["status"] == "ok"]
    final = np.array([r["val_loss"] for r in ok])
    params = np.array([r["params"] for r in ok], dtype=float)
    recorded = {p["step"] for p in ok[0]["points"]}
    per_step = table.space.budget.batch_size * table.space.budget.seq_len
    rng = np.random.default_rng(0)
    out = []
    for fidelity in fidelities:
        min_tokens, eta = fidelity.min_tokens, fidelity.eta
        try:
            check_fidelity(fidelity, table.space.budget)
        except ConfigError:  # not a valid setting for this budget (the smoke table's)
            continue
        steps = rung_steps(fidelity, table.space.budget)
        if len(steps) < 2 or not set(steps) <= recorded:
            continue
        cells = []
        for step in steps[:-1]:
            first = np.array([next(p["val_loss"] for p in r["points"] if p["step"] == step) for r in ok])
            rho = spearmanr(first, final).statistic
            boots = []
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # a tiny (smoke) table resamples constant columns
                for _ in range(500):
                    idx = rng.integers(len(ok), size=len(ok))
                    boots.append(spearmanr(first[idx], final[idx]).statistic)
            lo, hi = np.nanpercentile(boots, [2.5, 97.5])
            cells.append(f"{rho:.3f} [{lo:.2f}, {hi:.2f}] @{step * per_step / 1000:.1f}k")
        out.append([f"{min_tokens}/{eta}", len(steps), cells[0], "; ".join(cells[1:]) or "-"])
    out.append(["params (no training)", "-", f"{spearmanr(-params, final).statistic:.3f}", "-"])
    return out


def report(table: Table, runs: list[dict[str, Any]], methods: Sequence[str]) -> dict[str, Any]:
    from scipy.stats import mannwhitneyu

    by: dict[str, list[dict[str, Any]]] = {}
    for run in runs:
        by.setdefault(run["method"], []).append(run)
    by = {m: sorted(by[m], key=lambda r: r["seed"]) for m in methods if m in by}
    summary: dict[str, Any] = {}
    tpe48 = [hv_at(r, 48) for r in by.get("tpe", [])]
    target = float(np.median(tpe48)) if tpe48 else math.nan
    random_runs = by.get("random", [])
    print(f"\ntable: {len(table.rows)} architectures, front of "
          f"{len(__import__('nas.pareto', fromlist=['pareto_front']).pareto_front(table.values, DIRS))}, "
          f"reference {table.reference.round(4).tolist()}; target = full-budget TPE's median HV at "
          f"48 trials = {target:.4f} of the table front's\n")
    rows = []
    for method, rs in by.items():
        cells = [method, len(rs)]
        for b in CHECKPOINTS:
            hvs = [hv_at(r, b) for r in rs if b <= r["budgets"]]
            cells.append(f"{np.median(hvs) * 100:.1f}%" if len(hvs) == len(rs) else "-")
        to = [budgets_to(r, target) for r in rs]
        med = float(np.median(to))
        cells.append(f"{med:.1f}" if math.isfinite(med) else f"> {rs[0]['budgets']:g}")
        cells.append(f"{sum(math.isfinite(t) for t in to)}/{len(to)}")
        tpe_runs = by.get("tpe", [])
        p16 = pt16 = math.nan
        if random_runs and method != "random":
            p16 = mannwhitneyu([hv_at(r, 16) for r in rs], [hv_at(r, 16) for r in random_runs],
                               alternative="greater").pvalue
        if tpe_runs and method not in ("random", "tpe"):
            pt16 = mannwhitneyu([hv_at(r, 16) for r in rs], [hv_at(r, 16) for r in tpe_runs],
                                alternative="greater").pvalue
        cells += [f"{p:.2g}" if math.isfinite(p) else "-" for p in (p16, pt16)]
        per_budget = [r["counts"]["started"] / (r["trajectory"][-1][0] / r["per_budget_tokens"]) for r in rs]
        cells.append(f"{np.median(per_budget):.2f}")
        cells.append(f"{np.median([r['seconds'] for r in rs]):.1f}")
        rows.append(cells)
        summary[method] = {"budgets_to_target": to, "hv16": [hv_at(r, 16) for r in rs],
                           "hv48": [hv_at(r, 48) for r in rs], "p16_vs_random": p16}
    headers = (["method", "seeds"] + [f"HV @{b}" for b in CHECKPOINTS]
               + ["budgets to target (median)", "seeds reaching", "p > random @16 budgets",
                  "p > full tpe @16", "candidates per budget", "replay s"])
    print("Median hypervolume (of the table front's) after spending N full budgets of training tokens "
          "(1 budget = 500k tokens; a full-budget run spends 1 per trial)\n")
    print(markdown_table(headers, rows))
    # The oracle is a bound, not a method; a method with fewer seeds than the most is not ranked.
    most = max((len(rs) for rs in by.values()), default=0)
    sh = {m: s for m, s in summary.items() if "+sh:" in m and len(by[m]) == most}
    if sh and math.isfinite(target):
        best = min(sh, key=lambda m: (np.median(sh[m]["budgets_to_target"]), -np.median(sh[m]["hv16"])))
        med = float(np.median(sh[best]["budgets_to_target"]))
        print(f"\n(a) best successive-halving method {best}: median {med:.1f} full budgets to reach "
              f"TPE@48's {target:.4f} (goal <= 16 = 1/3 of 48): {'PASS' if med <= 16 else 'FAIL'}")
        p = sh[best]["p16_vs_random"]
        print(f"(b) {best} vs full-budget random at 16 budgets of tokens: median HV "
              f"{np.median(sh[best]['hv16']) * 100:.1f}% vs "
              f"{np.median([hv_at(r, 16) for r in random_runs]) * 100:.1f}%, one-sided Mann-Whitney "
              f"p = {p:.3g}: {'PASS' if p < 0.05 else 'FAIL'}")
        summary["_best"] = best
    summary["_target"] = target
    print("\n(c) Spearman rho against the full-budget loss over the whole table (bootstrap 95%), "
          "first rung (where promotion is first decided), then later rungs\n")
    from nas.fidelity import Fidelity

    fidelities = {Fidelity(m, e) for m, e in FIDELITIES}
    fidelities |= {f for f in (Method.parse(m).fidelity for m in methods) if f is not None}
    print(markdown_table(["min_tokens/eta", "rungs", "first rung", "later rungs"],
                         spearman_table(table, sorted(fidelities, key=lambda f: (f.eta, f.min_tokens)))))
    return summary


# ----- main --------------------------------------------------------------------------------
def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--table", default="tabular")
    ap.add_argument("--space", default=str(SPACE))
    ap.add_argument("--methods", default=DEFAULT_METHODS,
                    help="comma-separated: tpe | nsga2 | random | gp, optionally +sh:<min_tokens>/<eta>")
    ap.add_argument("--seeds", type=int, default=20)
    ap.add_argument("--budgets", type=float, default=48, help="full-budget runs: tokens to spend, in budgets")
    ap.add_argument("--budgets-sh", type=float, default=48, help="successive halving: the same")
    ap.add_argument("--processes", type=int, default=2)
    ap.add_argument("--replays", default="replays", help="stored runs: <name>.jsonl next to the table")
    ap.add_argument("--report", action="store_true", help="only report the stored replays")
    add_smoke_flag(ap)
    args = ap.parse_args()
    smoke_dir = None
    if args.smoke:
        smoke_dir = str(start_smoke())
        args.seeds, args.budgets, args.budgets_sh, args.processes = 2, 3, 3, 1
        args.methods = "random,tpe,nsga2,gp,tpe+sh:2048/2,random+sh:4096/2"
        space = smoke_table()
    else:
        space = load_space_file(args.space)
    print(format_machine(machine_info(threads=1)), flush=True)
    table = load_table(args.table, space)
    methods = [m for m in args.methods.split(",") if m]
    for m in methods:
        Method.parse(m)
    out = results_dir(STUDY) / f"{args.replays}.jsonl"
    if not args.report:
        run_all(args.table, args.space, methods, args.seeds, args.budgets, args.budgets_sh,
                args.processes, out, space.hash, smoke_dir)
    longest: dict[tuple[str, int], dict[str, Any]] = {}  # a longer run's prefix is the shorter run
    for r in read_jsonl(out):
        key = (r["method"], r["seed"])
        if r.get("space_hash") == space.hash and r["seed"] < args.seeds and (
                key not in longest or r["budgets"] > longest[key]["budgets"]):
            longest[key] = r
    report(table, list(longest.values()), methods)


def smoke_table() -> SearchSpace:
    """The smoke space's three architectures trained at its 16-step budget into the smoke folder."""
    from bench.collect_tabular import record_steps
    from bench.common import corpus
    from nas.hardware import load_profile

    space = smoke_space()
    path = table_path("tabular")
    if not path.is_file():
        profile = dataclasses.replace(load_profile("cpu-1t"), warmup=1, repeats=3, rounds=2)
        steps = record_steps(space, (2, 4), 2048)
        data = corpus("smoke")
        budget = dataclasses.replace(space.budget, max_seconds=None)
        for i, arch in enumerate(table_order(space)):
            append_jsonl(path, evaluate(i, arch, space, budget, data, steps, profile))
    return space


if __name__ == "__main__":
    main()
