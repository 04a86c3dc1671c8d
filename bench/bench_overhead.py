"""Item 3b: where a search trial's wall time goes, and 1 vs 2 workers.

    python -m bench.bench_overhead [--trials 8] [--pause-pid PID ...]   # ~4 minutes
    python -m bench.bench_overhead --smoke     # one 1-trial search, 2k tokens, few timed runs

Runs the real product twice (`nas search` as a subprocess, fresh SQLite database each time):
the tiny space with its own budget, profile and corpus, but the *random* sampler with a fixed
seed so both runs evaluate the same candidates in the same order, once with ``--workers 1``
and once with ``--workers 2``. From the store it reads each candidate's ``timings``
(train = build + proxy training + scoring, export, latency) and its started/finished times:

* per trial: share of the trial's wall time (store started_at -> finished_at) outside training;
* per search: share of (wall x workers) not spent training, and the command's total wall time
  including Ray start-up (reported apart);
* parallel efficiency: wall(1 worker) / (2 x wall(2 workers)), on identical work.

``--pause-pid``: our own long-running benchmark processes, stopped (SIGSTOP) while the
searches run and continued after. Other users' load is not controlled: the load average is
printed. Each search's row goes to bench/results/overhead/overhead.jsonl.

``--smoke``: only ``--workers 1``, one trial of a small corner of the space (1-2 layers, width
32-48) on 2k tokens of the smoke text, timed by a cpu-1t with few runs; a temporary folder.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from bench.common import (
    ROOT,
    add_smoke_flag,
    append_jsonl,
    format_machine,
    machine_info,
    markdown_table,
    results_dir,
    smoke_text,
    start_smoke,
)


def _ts(s: str) -> float:
    return datetime.fromisoformat(s).timestamp()


def read_db(path: str) -> dict[str, Any]:
    con = sqlite3.connect(path)
    s = con.execute("select started_at, finished_at from nas_searches").fetchone()
    rows = con.execute("select timings, started_at, finished_at, state from nas_candidates "
                       "order by trial_number").fetchall()
    cands = []
    for t, a, b, state in rows:
        t = json.loads(t) if isinstance(t, str) else t
        if state != "complete" or not b:
            continue
        cands.append({"timings": t, "wall": _ts(b) - _ts(a), "start": _ts(a), "end": _ts(b)})
    return {"search_wall": _ts(s[1]) - _ts(s[0]) if s[1] else None, "candidates": cands}


def run(trials: int, workers: int, space_file: Path, tmp: Path,
        profile_file: Path | None) -> dict[str, Any]:
    db = tmp / f"w{workers}.db"
    cmd = [sys.executable, "-m", "nas", "search", str(space_file), "--name", f"w{workers}",
           "--trials", str(trials), "--workers", str(workers), "--db", f"sqlite:///{db}",
           "--no-progress"]
    if profile_file is not None:
        cmd += ["--profiles", str(profile_file)]
    load0 = os.getloadavg()[0]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode:
        print(proc.stdout[-3000:], proc.stderr[-3000:])
        raise SystemExit(f"nas search failed ({proc.returncode})")
    info = read_db(str(db))
    c = info["candidates"]
    train = np.array([x["timings"].get("train", 0) for x in c])
    export = np.array([x["timings"].get("export", 0) for x in c])
    lat = np.array([x["timings"].get("latency", 0) for x in c])
    twall = np.array([x["wall"] for x in c])
    span = max(x["end"] for x in c) - min(x["start"] for x in c)
    row = {"workers": workers, "trials": trials, "complete": len(c), "command_wall": wall,
           "search_wall": info["search_wall"], "trials_span": span,
           "train_s": float(train.sum()), "export_s": float(export.sum()),
           "latency_s": float(lat.sum()), "trial_wall_s": float(twall.sum()),
           "per_trial_outside_training": [float(1 - tr / w) for tr, w in zip(train, twall)],
           "loadavg_start": load0, "loadavg_end": os.getloadavg()[0], "time": time.time()}
    append_jsonl(results_dir("overhead") / "overhead.jsonl", row)
    return row


def report(rows: list[dict[str, Any]]) -> str:
    table = []
    for r in rows:
        out = np.array(r["per_trial_outside_training"]) * 100
        busy = r["search_wall"] * r["workers"]
        table.append([r["workers"], r["complete"], f"{r['command_wall']:.1f}", f"{r['search_wall']:.1f}",
                      f"{r['train_s']:.1f}", f"{r['export_s']:.1f}", f"{r['latency_s']:.1f}",
                      f"{np.median(out):.1f}% / {out.mean():.1f}%",
                      f"{(1 - r['train_s'] / r['trial_wall_s']) * 100:.1f}%",
                      f"{(1 - r['train_s'] / busy) * 100:.1f}%",
                      f"{r['loadavg_start']:.1f}/{r['loadavg_end']:.1f}"])
    text = markdown_table(["workers", "trials", "command wall s", "search wall s", "train s", "export s",
                           "latency s", "outside training per trial (median / mean)",
                           "outside training, sum over trials", "search wall x workers not training",
                           "load avg start/end"], table)
    by = {r["workers"]: r for r in rows}
    if 1 in by and 2 in by:
        eff = by[1]["search_wall"] / (2 * by[2]["search_wall"])
        eff_cmd = by[1]["command_wall"] / (2 * by[2]["command_wall"])
        text += (f"\n\nParallel efficiency 1 -> 2 workers: {eff * 100:.0f}% on search wall time "
                 f"(speed-up {2 * eff:.2f}x), {eff_cmd * 100:.0f}% on command wall time incl. start-up.")
    return text


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trials", type=int, default=8)
    ap.add_argument("--pause-pid", type=int, action="append", default=[])
    add_smoke_flag(ap)
    args = ap.parse_args()
    if args.smoke:
        start_smoke()
        args.trials = 1
    print(format_machine(machine_info(threads=1)), flush=True)
    from nas.space import load_space

    d = load_space("tiny").to_dict()
    d["sampler"] = "random"
    d["name"] = "tiny-random"
    d.pop("fidelity", None)  # where a full-budget trial's time goes: one rung, the whole budget
    rows = []
    with tempfile.TemporaryDirectory(prefix="nas-overhead-") as tmp:
        profile_file = smoke_inputs(d, Path(tmp)) if args.smoke else None
        space_file = Path(tmp) / "tiny-random.yaml"
        space_file.write_text(yaml.safe_dump(d, sort_keys=False))
        for pid in args.pause_pid:
            os.kill(pid, signal.SIGSTOP)
        try:
            for w in (1,) if args.smoke else (1, 2):
                rows.append(run(args.trials, w, space_file, Path(tmp), profile_file))
                print(f"workers={w}: {rows[-1]['command_wall']:.1f}s", flush=True)
        finally:
            for pid in args.pause_pid:
                os.kill(pid, signal.SIGCONT)
    print(report(rows))


def smoke_inputs(space: dict[str, Any], tmp: Path) -> Path:
    """Shrink ``space`` in place to seconds per trial; return a cpu-1t profile with few runs."""
    from nas.hardware import load_profile

    space["budget"].update(tokens=2048, val_tokens=2048)
    space["data"]["corpus"] = [str(smoke_text())]
    space["architecture"].update(n_layer={"range": [1, 2], "step": 1}, d_model={"choices": [32, 48]},
                                 sharing={"choices": ["none"]})
    profile = load_profile("cpu-1t").to_dict()
    profile.update(warmup=1, repeats=3, rounds=2)
    path = tmp / "cpu-1t.yaml"  # a profile's name is its file's name: the objectives name cpu-1t
    path.write_text(yaml.safe_dump({k: v for k, v in profile.items() if k != "name"}))
    return path


if __name__ == "__main__":
    main()
