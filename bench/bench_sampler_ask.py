"""How a sampler's ask grows with the study, and what ``sampler: {history: N}`` does to it.

    python -m bench.bench_sampler_ask                  # up to 5,000 finished trials
    python -m bench.bench_sampler_ask --max 10000 --history 1000

An in-memory Optuna study on the ``tiny`` space, filled with finished trials (random values
for the objectives; constraint values on every trial, as the driver records them). At each
checkpoint n, the median time of a few asks (``study.ask()`` plus the space's suggestions,
with a freshly seeded sampler, as `nas.search.study.SearchStudy.ask` does) for: TPE as the
product builds it, TPE with ``history``, and the random sampler as the reference measured in
the same run (it reads no history, so it shows the machine's drift). No storage: the
storage's share is `bench.profile_driver`'s.
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings
from typing import Any

import numpy as np

from bench.common import add_smoke_flag, format_machine, machine_info, markdown_table, start_smoke


def _ask_seconds(study: Any, space: Any, sampler: Any, reps: int) -> float:
    from optuna.trial import TrialState

    times = []
    for _ in range(reps):
        study.sampler = sampler
        started = time.perf_counter()
        trial = study.ask()
        space.suggest(trial)
        times.append(time.perf_counter() - started)
        study.tell(trial, state=TrialState.FAIL)  # failed trials are not conditioned on
    return statistics.median(times)


def main() -> None:
    import optuna

    from nas.space import load_space
    from nas.space.adapter import make_sampler
    from nas.space.parse import parse_space

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--max", type=int, default=5000, help="finished trials at the last checkpoint")
    parser.add_argument("--history", type=int, default=1000)
    parser.add_argument("--reps", type=int, default=5, help="asks timed per checkpoint and sampler")
    add_smoke_flag(parser)
    args = parser.parse_args()
    if args.smoke:
        start_smoke()
        args.max, args.history, args.reps = 120, 40, 2
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    print(format_machine(machine_info(threads=1)), flush=True)

    tiny = load_space("tiny")
    spaces = {
        "tpe": tiny,
        f"tpe, history {args.history}": parse_space(
            {**tiny.to_dict(), "sampler": {"name": "tpe", "history": args.history}}, "bench", "tiny"),
        "random": parse_space({**tiny.to_dict(), "sampler": "random"}, "bench", "tiny"),
    }
    checkpoints = sorted({c for c in (args.max // 20, args.max // 4, args.max // 2, args.max) if c})
    study = optuna.create_study(directions=tiny.directions())
    rng = np.random.default_rng(0)
    constraint = tiny.constraint_texts()[0] if tiny.constraint_texts() else None
    rows = []
    filler = make_sampler(spaces["random"], seed=0)
    done = 0
    for n in checkpoints:
        while done < n:  # fill with uniform draws: every sampler then sees the same history
            study.sampler = filler
            trial = study.ask()
            tiny.suggest(trial)
            if constraint is not None:
                trial.set_constraint(constraint, float(rng.normal()))
            study.tell(trial, [float(v) for v in rng.random(len(tiny.directions()))])
            done += 1
        row = [f"{n:,}"]
        for space in spaces.values():
            seconds = _ask_seconds(study, space, make_sampler(space, seed=n), args.reps)
            row.append(f"{seconds * 1e3:.1f}")
        rows.append(row)
        print(" ".join(row), flush=True)
    print(markdown_table(["finished trials", *(f"{name} ask (ms)" for name in spaces)], rows))


if __name__ == "__main__":
    main()
