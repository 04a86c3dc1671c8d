"""What one successive-halving decision costs as a rung fills: `RungLadder`'s arrivals (their
fronts kept by `nas.pareto.GrowingFronts`) and `nas.fidelity.promotes`, against the plain rule
measured in the same run (every arrival converted from lists and non-dominated-sorted whole,
then crowding in its front), which is what the driver did before.

Two kinds of arrivals: along a noisy loss-latency trade-off (few points dominate any other),
and as `bench.fake_evaluator` draws them from a wide space (deep fronts, so an arrival may
move many fronts down). Both rules answer every decision the same (checked here); the time
is the median over ``--decisions`` arrivals at each size, and the mean over the last 1,000
arrivals of filling the rung (what the driver pays per arrival).

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


def layers_by_width(rng: np.random.Generator, n: int) -> np.ndarray:
    """As `bench.fake_evaluator` draws them from a wide space: latency grows with layers x width,
    loss falls with parameters (layers x width^2), so one latency holds many losses and the
    fronts run deep (~80 at 10,000): the case where an arrival moves many fronts down."""
    layers, width = rng.integers(1, 13, n), rng.integers(4, 21, n) * 8
    latency = layers * width * (1 + 0.05 * rng.standard_normal(n))
    loss = 3 - 0.2 * np.log(layers * 12.0 * width**2) + 0.05 * rng.standard_normal(n)
    return np.column_stack([loss, latency])


POINTS = {"trade-off": trade_off, "layers x width": layers_by_width}


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


def compare_at(points: np.ndarray, size: int, eta: int) -> list[str]:
    """Fill a rung with ``points[:size]`` (each arrival decided as the driver does, the last
    1,000 timed: the mean is what a driver pays, push-downs included), then time the rest
    against the plain rule, checking that both decide alike."""
    arrivals, as_lists, filling = GrowingFronts(BOTH), [], []
    for trial, p in enumerate(points[:size]):
        t_fill, _ = timed(decide, arrivals, p.tolist(), eta)
        if trial >= size - 1000:
            filling.append(t_fill)
        as_lists.append(p.tolist())
    plain, ladder, promoted = [], [], 0
    for trial in range(size, len(points)):
        mine = points[trial].tolist()
        t_plain, want = timed(plain_rule, mine, as_lists, eta)
        t_ladder, got = timed(decide, arrivals, mine, eta)
        assert got == want, (size, trial)  # the same decision, every time
        plain.append(t_plain)
        ladder.append(t_ladder)
        promoted += got
        as_lists.append(mine)
    p, m = statistics.median(plain), statistics.median(ladder)
    return [f"{size:,}", f"{p:.2f}", f"{m:.2f}", f"{p / m:.1f}x", f"{statistics.mean(filling):.2f}",
            f"{promoted}/{len(plain)}"]


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
    for name, draw in POINTS.items():
        for size in sizes:
            rows.append([name, *compare_at(draw(rng, size + decisions), size, args.eta)])
    print(markdown_table(["points", "arrivals at the rung", "plain rule ms", "ladder ms", "speed-up",
                          "ladder ms while filling", "promoted"], rows))


if __name__ == "__main__":
    main()
