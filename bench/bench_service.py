"""Service and Pareto scaling: a 10,000-candidate search served, and the 2-D front's growth.

    python -m bench.bench_service            # prints markdown, ~1 minute
    python -m bench.bench_service --write    # also replaces the section in BENCHMARKS.md
    python -m bench.bench_service --smoke    # seconds: 300 candidates, 1 rep, up to 10k points

1. A SQLite database is filled with one search of ``--candidates`` (10,000) synthetic complete
   candidates (tiny-space architectures, a val_loss / decode-latency trade-off with noise, 2%
   infeasible, a latency per candidate, a proxy loss curve of 50 points and one Pareto
   snapshot per candidate, as the driver writes them) by bulk inserts into the store's tables.
2. Server time of each route, measured in-process with FastAPI's TestClient (no network, so
   it is the app's time: routing, store reads, analysis, figures, JSON): the median of
   ``--reps`` requests after one warm-up, with the app's per-search cache dropped before each
   request (first read: everything read and computed), kept (a poll that finds nothing new),
   and made stale by a write just before (served from the previous view while a background
   rebuild runs).
3. `nas.pareto.non_dominated_sort` and `pareto_front` on n = 1k ... 1M random two-objective
   points (fastest of several runs); ``t / (n log2 n)`` staying flat (or falling) is growth no
   worse than n log n. The ratio is also divided by a reference measured right before each
   row (sorting 1M floats with NumPy), so drift of this shared machine divides out.
"""

from __future__ import annotations

import argparse
import logging
import math
import re
import statistics
import tempfile
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import ROOT, add_smoke_flag, format_machine, machine_info, markdown_table, start_smoke

SECTION = "## Service and Pareto scaling"
READ = "store.candidates (lean: no loss curves)"


# ----- a big synthetic search ------------------------------------------------------------
def fill_store(url: str, n: int, name: str = "big", seed: int = 0) -> None:
    """One finished search of ``n`` complete candidates, written with bulk inserts."""
    from sqlalchemy import insert

    from nas import pareto
    from nas.space import load_space
    from nas.store import Store
    from nas.store.tables import Candidate, Latency, Metric, ParetoSnapshot, utcnow

    rng = np.random.default_rng(seed)
    space = load_space("tiny")
    store = Store(url)
    search = store.create_search(
        name, space=space.to_dict(), space_hash=space.hash,
        profiles=[{"name": "cpu-1t", "intra_op_threads": 1}],
        objectives=[(o.metric, o.optuna_direction) for o in space.objectives],
        constraints=space.constraint_texts(), data=space.data.to_dict(),
        budget=space.budget.to_dict(), trials=n, study_name=f"nas:{name}")
    archs = [space.sample_random(rng) for _ in range(n)]
    params = np.array([a.n_params for a in archs], dtype=float)
    decode = 0.02 + 2e-7 * params * rng.lognormal(0, 0.3, n)
    val_loss = 3.4 - 0.09 * np.log(params) + rng.normal(0, 0.05, n)
    start = utcnow() - timedelta(seconds=n)
    curve = [[int(t), float(4.5 - t / 2e5)] for t in np.linspace(4096, 2e5, 50)]
    cand_rows, metric_rows, latency_rows = [], [], []
    for i, arch in enumerate(archs):
        cid = i + 1
        t = start + timedelta(seconds=i)
        cand_rows.append({
            "id": cid, "search_id": search.id, "trial_number": i, "architecture": arch.to_dict(),
            "arch_hash": arch.hash, "state": "complete", "error": "", "attempts": 1,
            "timings": {"train": 3.0, "export": 0.5, "latency": 1.0, "total": 4.5},
            "proxy": {"val_loss": float(val_loss[i]), "curve": curve, "tokens": 200000,
                      "tokens_per_s": 4e4, "seconds": 5.0, "status": "ok", "reason": "",
                      "device": "cpu"},
            "node": "bench", "started_at": t, "finished_at": t})
        # 2% break the params constraint of the tiny space (its bound is 1.5e6).
        metrics = {"val_loss": float(val_loss[i]), "latency:cpu-1t:decode_ms": float(decode[i]),
                   "latency:cpu-1t:prefill_ms": float(decode[i] * 8),
                   "params": float(params[i]) if rng.random() > 0.02 else 2e6}
        metric_rows += [{"candidate_id": cid, "name": k, "value": v} for k, v in metrics.items()]
        latency_rows.append({
            "candidate_id": cid, "profile": "cpu-1t", "profile_hash": "bench", "arch_hash": arch.hash,
            "prefill_median_ms": float(decode[i] * 8), "prefill_p90_ms": float(decode[i] * 9),
            "prefill_cv": 0.05, "prefill_n": 200, "decode_median_ms": float(decode[i]),
            "decode_p90_ms": float(decode[i] * 1.1), "decode_cv": 0.03, "decode_n": 200,
            "node": "bench", "measured_at": t})
    # A snapshot per candidate, as the driver writes them; the front is tracked incrementally.
    feasible = np.array([m["value"] <= 1.5e6 for m in metric_rows if m["name"] == "params"])
    values = np.column_stack([val_loss, decode])
    reference = pareto.reference_point(values[feasible], ["min", "min"]).tolist()
    snapshots, front = [], np.zeros(0, dtype=int)
    for i in range(n):
        if feasible[i]:
            cand = np.append(front, i)
            front = cand[pareto.pareto_front(values[cand], ["min", "min"])]
        hv = pareto.hypervolume(values[front], ["min", "min"], reference) if len(front) else 0.0
        snapshots.append({"search_id": search.id, "n_complete": i + 1, "hypervolume": hv,
                          "front": [int(k) + 1 for k in front],
                          "created_at": start + timedelta(seconds=i)})
    with store.engine.begin() as conn:
        conn.execute(insert(Candidate), cand_rows)
        conn.execute(insert(Metric), metric_rows)
        conn.execute(insert(Latency), latency_rows)
        conn.execute(insert(ParetoSnapshot), snapshots)
    store.update_search(name, reference_point=reference)
    store.set_status(name, "finished")
    store.close()


# ----- server time -------------------------------------------------------------------------
def route_times(url: str, name: str, reps: int) -> tuple[list[list[Any]], dict[str, float]]:
    """Median seconds per route, cold (cache dropped) and warm, plus the cold breakdown."""
    from fastapi.testclient import TestClient

    from nas.fronts import analyze
    from nas.service import create_app
    from nas.store import Store

    store = Store(url)
    app = create_app(store)
    client = TestClient(app)
    candidate = store.candidate_by_trial(name, 0).id
    routes = [
        ("search page (HTML)", f"/searches/{name}"),
        ("searches page (HTML)", "/"),
        ("candidate page (HTML)", f"/candidates/{candidate}"),
        ("GET /api/searches", "/api/searches"),
        ("GET /api/searches/{name}", f"/api/searches/{name}"),
        ("GET /api/searches/{name}/front", f"/api/searches/{name}/front"),
        ("GET /api/searches/{name}/candidates (all)", f"/api/searches/{name}/candidates"),
        ("GET /api/searches/{name}/candidates?limit=100", f"/api/searches/{name}/candidates?limit=100"),
        ("GET /api/searches/{name}/figures", f"/api/searches/{name}/figures"),
        ("GET /api/candidates/{id}", f"/api/candidates/{candidate}"),
    ]
    views = app.state.views
    rows = []
    for label, path in routes:
        timings = {}
        for mode in ("cold", "warm", "changed"):
            samples = []
            client.get(path)  # warm-up (and, for "warm", fills the cache)
            for _ in range(reps):
                if mode == "cold":
                    views.clear()
                elif mode == "changed":
                    store.set_status(name, "finished")  # a write: the cached view is now stale
                start = time.perf_counter()
                response = client.get(path)
                samples.append(time.perf_counter() - start)
                assert response.status_code == 200, (path, response.status_code)
                # Let the background rebuild land before the next rep (the cache has no public
                # "idle" query; only this benchmark needs one).
                while views._refreshing:  # noqa: SLF001
                    time.sleep(0.01)
            timings[mode] = statistics.median(samples)
        rows.append([label, f"{timings['cold'] * 1e3:.0f}", f"{timings['warm'] * 1e3:.1f}",
                     f"{timings['changed'] * 1e3:.1f}", f"{len(response.content) / 1e6:.2f}"])
    # Where a cold request's time goes.
    parts: dict[str, float] = {}
    for label, fn in [("store.list_searches", lambda: store.list_searches()),
                      ("store.get_search", lambda: store.get_search(name)),
                      (READ, lambda: store.candidates(name, with_proxy=False)),
                      ("store.pareto_snapshots", lambda: store.pareto_snapshots(name))]:
        samples = []
        for _ in range(reps):
            start = time.perf_counter()
            fn()
            samples.append(time.perf_counter() - start)
        parts[label] = statistics.median(samples)
    search, records = store.get_search(name), store.candidates(name, with_proxy=False)
    samples = []
    for _ in range(reps):
        start = time.perf_counter()
        analyze(search, records)
        samples.append(time.perf_counter() - start)
    parts["nas.fronts.analyze"] = statistics.median(samples)
    store.close()
    return rows, parts


# ----- Pareto scaling ------------------------------------------------------------------------
def pareto_scaling(sizes: list[int], seed: int = 0) -> tuple[list[list[Any]], float]:
    from nas import pareto

    rng = np.random.default_rng(seed)
    ref_data = rng.random(1_000_000)
    refs = []
    rows = []
    for shape in ("uniform", "one front"):
        for n in sizes:
            if shape == "uniform":
                values = rng.random((n, 2))
            else:  # every point non-dominated: the largest possible front
                x = rng.random(n)
                values = np.column_stack([x, 1 - x])
            # The fastest of several runs: other load on a shared machine only ever adds time.
            reps = 7 if n <= 10_000 else 5 if n <= 100_000 else 3
            # NumPy's n log n constant on this machine, measured right before each row.
            ref = min(_time(lambda: np.sort(ref_data), 5))
            refs.append(ref)
            ref_per = ref / (1e6 * math.log2(1e6))
            t_sort = min(_time(lambda v=values: pareto.non_dominated_sort(v, ["min", "min"]), reps))
            t_front = min(_time(lambda v=values: pareto.pareto_front(v, ["min", "min"]), reps))
            nlogn = n * math.log2(n)
            rows.append([shape, f"{n:,}", f"{t_sort * 1e3:.1f}", f"{t_sort / nlogn * 1e9:.1f}",
                         f"{t_sort / nlogn / ref_per:.1f}", f"{t_front * 1e3:.1f}",
                         f"{t_front / nlogn * 1e9:.1f}"])
    return rows, statistics.median(refs)


def _time(fn: Callable[[], object], reps: int) -> list[float]:
    out = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


# ----- report --------------------------------------------------------------------------------
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--candidates", type=int, default=10_000)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--sizes", default="1000,10000,100000,1000000")
    parser.add_argument("--write", action="store_true", help="replace the section in BENCHMARKS.md")
    add_smoke_flag(parser)
    args = parser.parse_args()
    if args.smoke:
        if args.write:
            parser.error("--smoke numbers do not belong in BENCHMARKS.md: drop --write")
        start_smoke()
        args.candidates, args.reps, args.sizes = 300, 1, "1000,10000"

    machine = format_machine(machine_info(threads=1))
    print(machine, flush=True)
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{Path(tmp) / 'nas.db'}"
        start = time.perf_counter()
        fill_store(url, args.candidates)
        fill_s = time.perf_counter() - start
        print(f"filled {args.candidates:,} candidates in {fill_s:.1f}s", flush=True)
        routes, parts = route_times(url, "big", args.reps)
    pareto_rows, ref = pareto_scaling([int(s) for s in args.sizes.split(",")])

    lines = [SECTION, "",
             f"`python -m bench.bench_service` (`--write` updates this section). One search of "
             f"{args.candidates:,} synthetic complete candidates in SQLite (bulk-inserted in "
             f"{fill_s:.1f}s; 50-point loss curves, one Pareto snapshot each, as the driver writes "
             f"them); times are server time in-process (FastAPI TestClient, no network), median "
             f"of {args.reps}. *First read*: the app's per-search cache dropped first, so the "
             "request reads the store and computes the front and figures; *unchanged*: the "
             "cache is current (a page's 2.5 s poll while nothing happened); *after a write*: "
             "the search changed just before the request, which gets the previous view at once "
             "while a background thread rebuilds it (stale-while-revalidate; the response's "
             "`version` tells the page to fetch again). The search page and `GET "
             "/api/searches/{name}` never read candidates at all.", "", machine, "",
             markdown_table(["route", "first read (ms)", "unchanged (ms)", "after a write (ms)",
                             "response (MB)"], routes), "",
             "Where a first read's time goes (median, ms):", "",
             markdown_table(["step", "ms"], [[k, f"{v * 1e3:.0f}"] for k, v in parts.items()]), "",
             f"`Store.candidates` is {100 * parts[READ] / sum(parts.values()):.0f}% of a first "
             "read, even in the lean form the service uses (`with_proxy=False` skips decoding the "
             "50-point loss curves, which no list, table or figure needs: that was ~60% of the "
             "full read). Once read, a search is served from the app's cached view.", "",
             "Two-objective Pareto computation (`nas.pareto`, random points; `one front`: every "
             "point non-dominated; fastest of 3-7 runs). `ns/(n log2 n)` flat or falling means "
             "growth no worse than "
             f"n log n; `vs sort` divides it by the same ratio for NumPy sorting 1M floats, "
             f"measured right before each row (median {ref * 1e3:.0f} ms), so drift of this "
             "shared machine divides out.", "",
             markdown_table(["points", "n", "sort all fronts (ms)", "ns/(n log2 n)", "vs sort",
                             "first front (ms)", "ns/(n log2 n)"], pareto_rows), ""]
    text = "\n".join(lines)
    print(text)
    if args.write:
        _write_section(ROOT / "BENCHMARKS.md", text)
        print(f"updated {ROOT / 'BENCHMARKS.md'}")


def _write_section(path: Path, text: str) -> None:
    """Replace our section (up to the next '## ' heading) or append it; others stay as they are."""
    old = path.read_text() if path.exists() else "# Benchmarks\n"
    pattern = re.compile(rf"^{re.escape(SECTION)}\n.*?(?=^## |\Z)", re.S | re.M)
    new = pattern.sub(lambda _: text + "\n", old) if pattern.search(old) else \
        old.rstrip("\n") + "\n\n" + text + "\n"
    path.write_text(new)


if __name__ == "__main__":
    main()
