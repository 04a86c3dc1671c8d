"""The default search for real (what `make demo` runs), with rungs and without, side by side.

    python -m bench.bench_demo                 # ~10 minutes: tiny with its rungs, then --no-fidelity
    python -m bench.bench_demo --trials 40 --full-trials 12
    python -m bench.bench_demo --smoke         # seconds: the e2e test space, 3 trials each

Not a replay: each run is the product's driver (Ray locally, real export, timing and
training) on a fresh SQLite database, as `nas search tiny` runs it. For each run it reports
the wall time, the candidates by state, the front, its hypervolume against ONE reference
point computed from both runs' complete candidates (so the two compare), the training tokens
spent, and the store's peak size while it ran: checkpoint bytes (polled every 0.2 s) and
the database file. It also sizes a checkpoint of a 22M-parameter candidate against its
weights (one real optimizer step), since storage is bounded by running candidates x that.

Rows go to bench/results/demo/demo.jsonl. The machine and its matmul throughput are printed
first (these machines are shared; compare runs from the same session).
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bench.common import (
    ROOT,
    add_smoke_flag,
    append_jsonl,
    format_machine,
    machine_info,
    markdown_table,
    matmul_flops,
    provenance,
    results_dir,
    start_smoke,
)


class StorePeak:
    """Polls a search's checkpoint bytes and the database file size from a thread."""

    def __init__(self, db_path: Path, search: str) -> None:
        self.db_path, self.search = db_path, search
        self.checkpoints = self.file = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        from nas.store import Store

        store: Any = None
        while not self._stop.wait(0.2):
            try:
                if store is None and self.db_path.exists():
                    store = Store(f"sqlite:///{self.db_path}", must_exist=True)
                if store is not None and store.find_search(self.search) is not None:
                    self.checkpoints = max(self.checkpoints, store.checkpoint_bytes(self.search))
                files = [self.db_path, self.db_path.with_name(self.db_path.name + "-wal")]
                self.file = max(self.file, sum(p.stat().st_size for p in files if p.exists()))
            except Exception:  # noqa: BLE001 - the database is being created; poll again
                continue
        if store is not None:
            store.close()

    def __enter__(self) -> StorePeak:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def run_search(space: Any, profiles: Any, trials: int, no_fidelity: bool, folder: Path) -> dict[str, Any]:
    from nas.search import SearchDriver, SearchRequest
    from nas.store import Store

    db_path = folder / ("full.db" if no_fidelity else "rungs.db")
    db = f"sqlite:///{db_path}"
    name = "full" if no_fidelity else "rungs"
    request = SearchRequest(space=space, name=name, profiles=profiles, trials=trials, db_url=db,
                            no_fidelity=no_fidelity)
    store = Store(db)
    started = time.perf_counter()
    with StorePeak(db_path, name) as peak:
        outcome = SearchDriver(request, store).run()
    wall = time.perf_counter() - started
    records = store.candidates(name, with_proxy=False)
    objectives = space.objective_names()
    complete = [r for r in records if r.state == "complete"]
    row = {
        "run": "--no-fidelity" if no_fidelity else "rungs", "trials": trials, "wall_s": round(wall, 1),
        "status": outcome.status, "complete": outcome.n_complete, "pruned": outcome.n_pruned,
        "failed": outcome.n_failed, "infeasible": outcome.n_infeasible, "front": len(outcome.front),
        "tokens": outcome.tokens, "peak_checkpoint_mb": round(peak.checkpoints / 2**20, 2),
        "peak_db_mb": round(peak.file / 2**20, 2), "end_checkpoint_bytes": store.checkpoint_bytes(name),
        "fidelity": store.get_search(name).fidelity,
        "points": [[r.metrics[m] for m in objectives] for r in complete],
        "front_points": [[r.metrics[m] for m in objectives] for r in outcome.front],
    }
    store.close()
    return row


def checkpoint_size() -> dict[str, Any]:
    """A 22M-parameter candidate's checkpoint (weights + AdamW moments + data position) after one
    real step, against its safetensors weights."""
    from nas.architecture import Architecture
    from nas.data import prepare
    from nas.proxy import train, weights_to_bytes
    from nas.specs import DataSpec, ProxyBudget

    arch = Architecture(n_layer=8, d_model=432, n_head=8, n_kv_head=4, ffn_mult=4.0, vocab_size=256,
                        max_seq_len=256, tie_embeddings=True)
    budget = ProxyBudget(tokens=2 * 16 * 64, batch_size=16, seq_len=64, val_tokens=1024)
    trained = train(arch, budget, prepare(DataSpec()), seed=0, threads=None, stop_at=1)
    assert trained.checkpoint is not None
    weights = len(weights_to_bytes(trained.model))
    return {"params": arch.n_params, "weights_mb": round(weights / 2**20, 1),
            "checkpoint_mb": round(len(trained.checkpoint) / 2**20, 1),
            "ratio": round(len(trained.checkpoint) / weights, 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--space", default="tiny", help="space name or file (default: tiny, as make demo)")
    ap.add_argument("--trials", type=int, default=None,
                    help="trials of the run with rungs (default: the space's)")
    ap.add_argument("--full-trials", type=int, default=12,
                    help="trials of the --no-fidelity run (default 12; 0 skips it)")
    add_smoke_flag(ap)
    args = ap.parse_args()
    from nas import pareto
    from nas.search import resolve_profiles
    from nas.space import load_space

    if args.smoke:  # the e2e test space with rungs: seconds per candidate
        import yaml

        spec = yaml.safe_load((ROOT / "tests" / "data" / "e2e.yaml").read_text())
        spec["fidelity"] = {"min_tokens": 1024, "eta": 2}
        path = start_smoke() / "rungs-smoke.yaml"
        path.write_text(yaml.safe_dump(spec))
        args.space, args.trials, args.full_trials = str(path), 3, 3
    info = machine_info(threads=1)
    print(format_machine(info))
    print(f"reference: fp32 matmul {matmul_flops(threads=1) / 1e9:.1f} GFLOP/s on one thread", flush=True)
    space = load_space(args.space)
    from nas.hardware import load_profiles

    files = [ROOT / "tests" / "data" / "e2e-1t.yaml"] if args.smoke else None
    profiles = resolve_profiles(space, load_profiles(files) if files else None)
    rows = []
    with tempfile.TemporaryDirectory(prefix="nas-bench-demo-") as tmp:
        for no_fidelity, trials in ((False, args.trials or space.trials), (True, args.full_trials)):
            if not trials:  # --full-trials 0: the run with rungs only
                continue
            rows.append(run_search(space, profiles, trials, no_fidelity, Path(tmp)))
            print(f"{rows[-1]['run']}: {rows[-1]['wall_s']} s, front {rows[-1]['front']}", flush=True)
    directions = space.directions()
    everything = [p for row in rows for p in row["points"]]
    reference = pareto.reference_point(everything, directions) if everything else None
    for row in rows:
        row["hypervolume"] = (pareto.hypervolume(row["front_points"], directions, reference)
                              if reference is not None and row["front_points"] else 0.0)
    size = checkpoint_size() if not args.smoke else {}
    print(markdown_table(
        ["run", "trials", "wall s", "complete", "pruned", "front", "hypervolume", "training tokens",
         "peak checkpoints MB", "peak db MB"],
        [[r["run"], r["trials"], r["wall_s"], r["complete"], r["pruned"], r["front"],
          f"{r['hypervolume']:.4g}", f"{r['tokens']:,}", r["peak_checkpoint_mb"], r["peak_db_mb"]]
         for r in rows]))
    if size:
        print(f"\ncheckpoint of a {size['params'] / 1e6:.1f}M-parameter candidate: "
              f"{size['checkpoint_mb']} MB, {size['ratio']}x its {size['weights_mb']} MB of weights")
    out = results_dir("demo") / "demo.jsonl"
    for row in rows:
        append_jsonl(out, {**provenance(), "machine": info, "space": args.space,
                           "checkpoint_size": size, **{k: v for k, v in row.items() if k != "points"},
                           "reference": None if reference is None else [float(x) for x in reference]})
    print(f"rows appended to {out}")


if __name__ == "__main__":
    main()
