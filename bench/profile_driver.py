"""Where one driver's time goes: cProfile of the real driver against simulated candidates.

    python -m bench.profile_driver --db postgres --n 600 --inflight 256 --sampler random

The same setup as `bench.bench_scale` (the ``tiny`` space, `bench.fake_evaluator` async actors,
training sleeping 0.1-1 s), profiled as a whole: prints the machine, the finished candidates
per second and the 45 heaviest calls by cumulative time. The numbers behind
`nas/search/mirror.py` in BENCHMARKS.md ("Many workers through one driver") come from here.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import tempfile
import time
from pathlib import Path

from bench.bench_scale import database
from bench.common import add_smoke_flag, format_machine, machine_info, start_smoke
from bench.fake_evaluator import FakeEvaluator, StepTimes


def main() -> None:
    from nas.search import SearchDriver, SearchRequest, resolve_profiles
    from nas.space import load_space
    from nas.space.parse import parse_space
    from nas.store import Store

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", default="postgres", choices=("sqlite", "postgres"))
    parser.add_argument("--n", type=int, default=600, help="candidates")
    parser.add_argument("--inflight", type=int, default=256)
    parser.add_argument("--sampler", default="random")
    parser.add_argument("--out", default=None, help="also write the raw profile here")
    add_smoke_flag(parser)
    args = parser.parse_args()
    if args.smoke:
        start_smoke()
        args.db, args.n, args.inflight = "sqlite", 40, 16
    print(format_machine(machine_info(threads=1)), flush=True)
    space = load_space("tiny")
    space = parse_space({**space.to_dict(), "sampler": args.sampler}, "profile_driver", "tiny")
    fake = FakeEvaluator(StepTimes(train=(0.1, 1.0)), mode="actors", actors=4)
    with tempfile.TemporaryDirectory() as tmp, database(args.db, 0, Path(tmp)) as url:
        request = SearchRequest(space, "scale", resolve_profiles(space, None), trials=args.n, db_url=url,
                                workers=args.inflight, timing="overlap", retime=False)
        store = Store(url)
        profile = cProfile.Profile()
        started = time.perf_counter()
        profile.enable()
        outcome = SearchDriver(request, store, tasks=fake.tasks).run()
        profile.disable()
        seconds = time.perf_counter() - started
        store.close()
    print(f"{outcome.status}: {args.n} candidates in {seconds:.1f} s, {args.n / seconds:.2f} per s "
          f"({args.db}, {args.sampler}, {args.inflight} in flight)")
    if args.out:
        profile.dump_stats(args.out)
    pstats.Stats(profile).sort_stats("cumulative").print_stats(45)


if __name__ == "__main__":
    main()
