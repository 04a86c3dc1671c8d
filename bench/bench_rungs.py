"""What one successive-halving decision costs as a rung fills: `RungLadder`'s arrivals (their
fronts kept by `nas.pareto.GrowingFronts`) and `nas.fidelity.promotes`, against the plain rule
measured in the same run (every arrival converted from lists and non-dominated-sorted whole,
then crowding in its front), which is what the driver did before.

Arrivals lie along a loss-latency trade-off with noise, as `bench.fake_evaluator`'s do (few
points dominate any other, the hard case for the shortcuts). Both answer every decision
the same (checked here); the time is the median over ``--decisions`` arrivals at each size.

    python -m bench.bench_rungs [--sizes 1000,5000,10000] [--decisions 60] [--eta 4]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from bench.common import add_smoke_flag, format_machine, machine_info, markdown_table, start_smoke
from nas.fidelity import promotes
from nas.pareto import GrowingFronts, crowding_distance, non_dominated_sort

BOTH = ["min", "min"]


def trade_off(rng: np.random.Generator, n: int) -> np.ndarray:
    latency = rng.lognormal(0.0, 0.6, n)
    loss = 3.0 + 0.8 / latency + rng.normal(0.0, 0.08, n)
    return np.column_stack([loss, latency])


def plain_rule(arrival: list[float], earlier: list[list[float]], eta: int) -> bool:
    values = np.asarray([*earlier, arrival], dtype=float)
    me, allowed = len(values) - 1, max(1, len(values) // eta)
    fronts = non_dominated_sort(values, BOTH)
    mine = next(i for i, front in enumerate(fronts) if me in front)
    crowding = crowding_distance(values[fronts[mine]], BOTH)
    above = sum(len(f) for f in fronts[:mine]) + int(np.sum(crowding > crowding[fronts[mine].index(me)]))
    return above < allowed


def decide(arrivals: GrowingFronts, mine: list[float], eta: int) -> bool:
    """As `RungLadder.decide` does, including recording the arrival."""
    standing = arrivals.add(len(arrivals), mine)
    return promotes(standing, len(arrivals), eta)


def timed(call, *args) -> tuple[float, bool]:
    start = time.perf_counter()
    answer = call(*args)
    return (time.perf_counter() - start) * 1e3, answer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1000,5000,10000", help="arrivals already at the rung")
    parser.add_argument("--decisions", type=int, default=60, help="arrivals timed at each size")
    parser.add_argument("--eta", type=int, default=4)
    add_smoke_flag(parser)
    args = parser.parse_args()
    sizes, decisions = [int(s) for s in args.sizes.split(",")], args.decisions
    if args.smoke:
        start_smoke()
        sizes, decisions = [200], 5
    print(format_machine(machine_info(threads=1)), flush=True)
    rng = np.random.default_rng(0)
    rows = []
    for size in sizes:
        points = trade_off(rng, size + decisions)
        arrivals, as_lists = GrowingFronts(BOTH), []
        for trial, p in enumerate(points[:size]):
            arrivals.add(trial, p)
            as_lists.append(p.tolist())
        plain, ladder, promoted = [], [], 0
        for trial in range(size, size + decisions):
            mine = points[trial].tolist()
            t_plain, want = timed(plain_rule, mine, as_lists, args.eta)
            t_ladder, got = timed(decide, arrivals, mine, args.eta)
            assert got == want, (size, trial)  # the same decision, every time
            plain.append(t_plain)
            ladder.append(t_ladder)
            promoted += got
            as_lists.append(mine)
        p, m = statistics.median(plain), statistics.median(ladder)
        rows.append([f"{size:,}", f"{p:.2f}", f"{m:.2f}", f"{p / m:.1f}x", f"{promoted}/{decisions}"])
    print(markdown_table(["arrivals at the rung", "plain rule ms", "ladder ms", "speed-up", "promoted"],
                         rows))

if __name__ == "__main__":
    main()
