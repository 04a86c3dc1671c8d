"""The driver at scale: the real driver, Optuna, store and Ray against a simulated evaluator.

    python -m bench.bench_scale            # 10,000 candidates, SQLite and PostgreSQL, 64 and 256 in flight
    python -m bench.bench_scale --quick    # 1,000 candidates, 64 in flight, SQLite
    python -m bench.bench_scale --write    # also writes bench/results/scale/ (rows + section.md)

Each run starts a fresh database (a SQLite file, or a PostgreSQL database ``nas_scale_<pid>_<k>``
on 127.0.0.1:5432, dropped afterwards) and runs `nas.search.SearchDriver` on the ``tiny`` space
(successive halving on unless ``--no-fidelity``) with ``--inflight`` candidates in flight.
Training and timing are `bench.fake_evaluator` sleeps (async actors: hundreds in flight in a
few processes), so the driver, not the evaluator, limits the rate: training sleeps 0.1-1 s,
so 256 in flight could finish far more candidates per second than any driver writes.

The driver is measured from outside: its methods are wrapped (never edited) and each call's
exclusive time (its own, less the wrapped calls inside it) is charged to a step, per window
of ``--window`` finished candidates: ask, tell (Optuna), store (the candidate's writes and
its latency-cache read), front (the in-memory front and progress), snapshot (the Pareto
snapshot write), rungs (successive-halving decisions), ray (submit, wait, get) and the rest
of the loop. Also per window: finished candidates per second, SQL statements per candidate
(every engine in the process, counted with SQLAlchemy's ``before_cursor_execute``) and the
driver's RSS. At the end: the database size and the page and API latencies
(`bench.bench_service.route_times`).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import logging
import os
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from bench.common import (
    add_smoke_flag,
    format_machine,
    machine_info,
    markdown_table,
    results_dir,
    start_smoke,
)
from bench.fake_evaluator import FakeEvaluator, StepTimes

PG_ADMIN = "host=127.0.0.1 port=5432 user=postgres dbname=postgres connect_timeout=3"
STUDY = "scale"
# step -> [(class path, method names)]: what each wrapped call is charged to.
STEPS: dict[str, list[tuple[str, tuple[str, ...]]]] = {
    "ask": [("nas.search.study:SearchStudy", ("ask",))],
    "tell": [("nas.search.study:SearchStudy", ("_tell", "mark_repeat", "enqueue_unseen"))],
    # The driver's writes go through `WriteBatch`: one `write_together` per burst.
    "store": [("nas.store:Store", ("write_together", "start_candidate", "finish_candidate", "record_shape",
                                   "record_rung", "cached_latency", "find_search"))],
    # `_finished`: what follows a finished trial's committed write (once per finished trial).
    "front": [("nas.search.front:LiveFront", ("load", "add", "set_tokens", "snapshot_due")),
              ("nas.search.collect:ResultHandling", ("_finished",))],
    "snapshot": [("nas.store:Store", ("add_pareto_snapshot",))],
    "rungs": [("nas.search.rungs:RungLadder", ("decide",))],
    "ray": [("nas.search.executor:RayExecutor", ("submit_shape", "submit_train", "submit_measure",
                                                 "wait", "get"))],
}
# `--wide`: tiny's fidelity, budget and profiles with finer depth, width and FFN grids, so that
# 10,000 draws are nearly all distinct (tiny has 19,430 architectures: half the draws near
# 10,000 repeat one, each an extra ask and tell); the size constraint widened to match.
WIDE = {"n_layer": {"range": [1, 12]}, "d_model": {"range": [32, 160], "step": 8},
        "ffn_mult": {"choices": [2.0, 2.5, 3.0, 3.5, 4.0]}}
FINISHED = "_finished"  # the wrapped call that marks one more finished candidate
LOOP = ("nas.search.driver:SearchDriver", "_search")


@dataclass
class Window:
    """One window of finished candidates: seconds per step, statements, wall clock, memory."""

    seconds: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    statements: int = 0
    ended_at: float = 0.0
    rss_mb: float = 0.0


class Probe:
    """Wraps the driver's methods and charges exclusive time to steps, per window of finished
    candidates (a finished candidate is a call of the driver's `FINISHED`)."""

    def __init__(self, window: int) -> None:
        self.window = window
        self.finished = 0
        self.windows: list[Window] = [Window()]
        self.started_at = 0.0
        self._stack: list[float] = []  # child seconds of each open wrapped call
        self._process = psutil.Process()
        self._lock = threading.Lock()  # the heartbeat thread writes to the store too

    @property
    def current(self) -> Window:
        return self.windows[-1]

    def _charge(self, step: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        probe = self

        @functools.wraps(fn)
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            if threading.current_thread() is not threading.main_thread():
                return fn(*args, **kwargs)  # the heartbeat: not the loop's time
            probe._stack.append(0.0)
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                elapsed = time.perf_counter() - start
                children = probe._stack.pop()
                if probe._stack:
                    probe._stack[-1] += elapsed
                probe.current.seconds[step] += elapsed - children
                if fn.__name__ == FINISHED:
                    probe._finished_one()
        return wrapped

    def _finished_one(self) -> None:
        self.finished += 1
        if self.finished % self.window == 0:
            self.current.ended_at = time.perf_counter()
            self.current.rss_mb = self._process.memory_info().rss / 2**20
            print(f"  {self.finished:,} finished, {time.perf_counter() - self.started_at:.0f} s", flush=True)
            self.windows.append(Window())

    def _count_statement(self, *_args: Any) -> None:
        with self._lock:
            self.current.statements += 1

    @contextlib.contextmanager
    def installed(self) -> Iterator[Probe]:
        import importlib

        from sqlalchemy import event
        from sqlalchemy.engine import Engine

        patched: list[tuple[Any, str, Any]] = []
        for step, places in STEPS.items():
            for where, names in places:
                module, cls_name = where.split(":")
                cls = getattr(importlib.import_module(module), cls_name)
                for name in names:
                    if name in vars(cls):
                        patched.append((cls, name, vars(cls)[name]))
                        setattr(cls, name, self._charge(step, vars(cls)[name]))
        module, cls_name = LOOP[0].split(":")
        loop_cls = getattr(importlib.import_module(module), cls_name)
        loop = vars(loop_cls)[LOOP[1]]

        def timed_loop(driver: Any, *args: Any) -> Any:
            self.started_at = time.perf_counter()
            return loop(driver, *args)

        patched.append((loop_cls, LOOP[1], loop))
        setattr(loop_cls, LOOP[1], timed_loop)
        event.listen(Engine, "before_cursor_execute", self._count_statement)
        try:
            yield self
        finally:
            event.remove(Engine, "before_cursor_execute", self._count_statement)
            for cls, name, original in reversed(patched):
                setattr(cls, name, original)

    def rows(self) -> list[dict[str, Any]]:
        """Per complete window: candidates/s, ms per candidate by step, statements, RSS."""
        out, previous = [], self.started_at
        for k, w in enumerate(self.windows):
            if not w.ended_at:
                continue
            wall = w.ended_at - previous
            accounted = sum(w.seconds.values())
            out.append({"upto": (k + 1) * self.window, "per_s": self.window / wall,
                        "ms": {**{s: 1e3 * w.seconds.get(s, 0.0) / self.window for s in STEPS},
                               "other": 1e3 * max(0.0, wall - accounted) / self.window},
                        "statements": w.statements / self.window, "rss_mb": w.rss_mb})
            previous = w.ended_at
        return out


# ----- databases ---------------------------------------------------------------------------
@contextlib.contextmanager
def database(kind: str, k: int, tmp: Path) -> Iterator[str]:
    if kind == "sqlite":
        yield f"sqlite:///{tmp / f'scale-{k}.db'}"
        return
    import psycopg

    name = f"nas_scale_{os.getpid()}_{k}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def database_mb(url: str) -> float:
    if url.startswith("sqlite:///"):
        path = Path(url.removeprefix("sqlite:///"))
        return sum(p.stat().st_size for p in path.parent.glob(path.name + "*")) / 2**20
    import psycopg

    name = url.rsplit("/", 1)[1]
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        return conn.execute("SELECT pg_database_size(%s)", (name,)).fetchone()[0] / 2**20


# ----- one run ------------------------------------------------------------------------------
@dataclass
class Run:
    db: str
    inflight: int
    candidates: int
    seconds: float
    windows: list[dict[str, Any]]
    status: str
    finished: int
    db_mb: float
    rss_mb: float
    routes: list[list[Any]]


def run_one(kind: str, inflight: int, n: int, args: argparse.Namespace, k: int, tmp: Path) -> Run:
    from bench.bench_service import route_times
    from nas.search import SearchDriver, SearchRequest, resolve_profiles
    from nas.space import load_space
    from nas.space.parse import parse_space
    from nas.store import Store

    space = load_space("tiny")
    fields = space.to_dict()
    if args.sampler != space.sampler.name or args.history:  # random: the driver's costs without TPE's
        fields["sampler"] = {"name": args.sampler, **({"history": args.history} if args.history else {})}
    if args.wide:
        fields["architecture"] = {**fields["architecture"], **WIDE}
        fields["constraints"] = ["params <= 6e6"]
    if fields != space.to_dict():
        space = parse_space(fields, "bench_scale", "tiny")
    low, high = (float(x) for x in args.train_s.split(","))
    fake = FakeEvaluator(StepTimes(train=(low, high)), mode="actors", actors=args.actors)
    with database(kind, k, tmp) as url:
        request = SearchRequest(space, STUDY, resolve_profiles(space, None), trials=n, db_url=url,
                                workers=inflight, timing="overlap", retime=False,
                                no_fidelity=args.no_fidelity)
        probe = Probe(args.window)
        store = Store(url)
        with probe.installed():
            started = time.perf_counter()
            outcome = SearchDriver(request, store, tasks=fake.tasks).run()
            seconds = time.perf_counter() - started
        finished = sum(r.state != "running" for r in store.candidates(STUDY, with_proxy=False))
        store.close()
        rss = psutil.Process().memory_info().rss / 2**20
        db_mb = database_mb(url)
        routes = route_times(url, STUDY, args.reps)[0] if args.reps else []
    return Run(kind, inflight, n, seconds, probe.rows(), outcome.status, finished, db_mb, rss, routes)


# ----- report -------------------------------------------------------------------------------
def window_table(run: Run) -> str:
    steps = [*STEPS, "other"]
    rows = [[f"{w['upto']:,}", f"{w['per_s']:.1f}", *(f"{w['ms'][s]:.2f}" for s in steps),
             f"{w['statements']:.1f}", f"{w['rss_mb']:.0f}"] for w in run.windows]
    return markdown_table(["finished", "per s", *(f"{s} ms" for s in steps), "SQL/cand", "RSS MB"], rows)


def summary_row(run: Run) -> list[Any]:
    rates = [w["per_s"] for w in run.windows]
    return [run.db, run.inflight, f"{run.finished:,}", f"{run.seconds:.0f}",
            f"{run.finished / run.seconds:.1f}", f"{min(rates):.1f}" if rates else "-",
            f"{rates[-1]:.1f}" if rates else "-", f"{run.db_mb:.0f}", f"{run.rss_mb:.0f}"]


def report(runs: list[Run], machine: str, args: argparse.Namespace) -> str:
    lines = ["## The driver at scale", "",
             f"`python -m bench.bench_scale` (the real driver, Optuna ({args.sampler} sampler"
             f"{f', history {args.history}' if args.history else ''}), store "
             "and local Ray; "
             f"`bench.fake_evaluator` sleeps instead of training and timing: training "
             f"{args.train_s.replace(',', '-')} s per rung, "
             f"{'no rungs' if args.no_fidelity else 'successive halving as in the tiny space'}). "
             "Milliseconds of driver time per finished candidate, per window, by step "
             "(exclusive time of wrapped methods; *other*: the rest of the loop's wall time, "
             "mostly waiting for results).", "", machine, "",
             markdown_table(["database", "in flight", "finished", "seconds", "per s (all)",
                             "per s (slowest window)", "per s (last window)", "database MB",
                             "driver RSS MB"], [summary_row(r) for r in runs]), ""]
    for run in runs:
        lines += [f"### {run.db}, {run.inflight} in flight, {run.candidates:,} candidates", "",
                  window_table(run), ""]
        if run.routes:
            lines += ["Pages and API at the end (server time, ms; median of "
                      f"{args.reps}):", "",
                      markdown_table(["route", "first read", "unchanged", "after a write", "MB"],
                                     run.routes), ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--candidates", type=int, default=10_000)
    parser.add_argument("--inflight", default="64,256", help="comma-separated")
    parser.add_argument("--db", default="sqlite,postgres", help="sqlite, postgres, or both")
    parser.add_argument("--window", type=int, default=1000, help="finished candidates per window")
    parser.add_argument("--train-s", default="0.1,1.0", help="LOW,HIGH seconds a rung's training sleeps")
    parser.add_argument("--actors", type=int, default=4, help="processes running the sleeps")
    parser.add_argument("--reps", type=int, default=3, help="requests per route at the end (0: none)")
    parser.add_argument("--sampler", default="tpe", help="the space's sampler (tpe, random, nsga2)")
    parser.add_argument("--history", type=int, default=0,
                        help="sampler history: condition on the N latest finished trials (0: all)")
    parser.add_argument("--no-fidelity", action="store_true", help="one rung: the whole budget")
    parser.add_argument("--wide", action="store_true",
                        help="finer depth/width/FFN grids: few repeat draws in 10,000 (WIDE)")
    parser.add_argument("--quick", action="store_true", help="1,000 candidates, 64 in flight, SQLite")
    parser.add_argument("--write", action="store_true", help="write bench/results/scale/")
    add_smoke_flag(parser)
    args = parser.parse_args()
    if args.quick:
        args.candidates, args.inflight, args.db, args.window = 1000, "64", "sqlite", 250
    if args.smoke:
        start_smoke()
        args.candidates, args.inflight, args.db, args.window, args.reps = 120, "16", "sqlite", 40, 1
        args.train_s = "0.01,0.05"
    logging.basicConfig(level=logging.WARNING)
    machine = format_machine(machine_info(threads=1))
    print(machine, flush=True)
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        k = 0
        for kind in args.db.split(","):
            for inflight in (int(x) for x in args.inflight.split(",")):
                run = run_one(kind, inflight, args.candidates, args, k, Path(tmp))
                k += 1
                print(f"{kind} {inflight} in flight: {run.finished:,} finished in {run.seconds:.0f}s "
                      f"({run.status})", flush=True)
                print(window_table(run), flush=True)
                runs.append(run)
    text = report(runs, machine, args)
    print(text)
    if args.write:
        out = results_dir(STUDY)
        out.mkdir(parents=True, exist_ok=True)
        (out / "section.md").write_text(text + "\n")
        with open(out / "runs.jsonl", "a") as fh:
            for run in runs:
                fh.write(json.dumps({**run.__dict__, "machine": machine, "args": vars(args)}) + "\n")
        print(f"wrote {out}")


if __name__ == "__main__":
    main()
