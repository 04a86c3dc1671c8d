"""Every benchmark script in its ``--smoke`` mode, so none can rot unnoticed.

Each script runs once as ``python -m bench.<name> --smoke`` in its own subprocess (the way
BENCHMARKS.md runs them). They run a few at a time: most of a smoke run is start-up and
waiting (imports, Ray), not CPU, so the whole set stays near the slowest script's time.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
# Script -> extra arguments before --smoke; slowest first, so it starts first.
SCRIPTS: dict[str, list[str]] = {
    "bench_overhead": [],
    "bench_latency_accuracy": ["all"],
    "bench_slm_findings": [],
    "bench_parent": [],
    "bench_service": [],
    "bench_latency_stability": [],
    "bench_throughput": [],
    "collect_tabular": [],
    "bench_demo": [],
    "collect_fidelity": [],
    "bench_search_efficiency": [],
    "analyze_fidelity": [],
    "compare_schedules": [],
    "bench_retime": [],
    "bench_workloads": [],
    "bench_distill": [],
    "bench_scale": [],
    "profile_driver": [],
    "bench_sampler_ask": [],
    "bench_rungs": [],
}
# Scripts that write results rows: each row must carry the commit and the package versions.
WRITERS = {"bench_overhead", "bench_latency_accuracy", "bench_slm_findings", "collect_tabular", "bench_demo",
           "collect_fidelity", "bench_search_efficiency", "bench_distill", "bench_parent", "bench_retime",
           "bench_workloads"}
ANALYSES = {"analyze_fidelity", "compare_schedules"}  # tables of stored rows, not measurements
NEEDS_TWO_CORES = {"bench_latency_accuracy"}  # it times on core 0 while training on core 1
PARALLEL = 3
TIMEOUT_S = 300


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in folder.rglob("*") if p.is_file()}


def _run(name: str) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("NAS_BENCH_RESULTS", "NAS_BENCH_SMOKE_DIR", "NAS_BENCH_CACHE")}
    env["OMP_NUM_THREADS"] = "1"
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", f"bench.{name}", *SCRIPTS[name], "--smoke"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
    return {"rc": done.returncode, "stdout": done.stdout, "stderr": done.stderr,
            "seconds": time.perf_counter() - start}


@pytest.fixture(scope="module")
def runs() -> Any:
    names = [n for n in SCRIPTS if n not in NEEDS_TWO_CORES or _cores() >= 2]
    before = _snapshot(BENCH / "results")
    with ThreadPoolExecutor(PARALLEL) as pool:
        results = dict(zip(names, pool.map(_run, names)))
    after = _snapshot(BENCH / "results")
    yield {"results": results, "committed_unchanged": before == after}
    for result in results.values():
        for folder in set(re.findall(r"^smoke results: (.+)/results$", result["stdout"], re.M)):
            if Path(folder).name.startswith("nas-bench-smoke-"):
                shutil.rmtree(folder, ignore_errors=True)


def test_every_script_is_smoke_tested() -> None:
    scripts = {p.stem for p in BENCH.glob("*.py")} - {"__init__", "common", "fake_evaluator"}
    assert scripts == set(SCRIPTS), "add new bench scripts (with a --smoke mode) to SCRIPTS"


@pytest.mark.parametrize("name", list(SCRIPTS))
def test_smoke_run(runs: dict[str, Any], name: str) -> None:
    if name not in runs["results"]:
        pytest.skip(f"{name} needs two cores")
    result = runs["results"][name]
    assert result["rc"] == 0, f"{name} failed:\n{result['stdout'][-3000:]}\n{result['stderr'][-3000:]}"
    if name not in ANALYSES:
        assert re.search(r"^- software: commit \S+; Python", result["stdout"], re.M), result["stdout"]
    if name in WRITERS:
        (folder,) = set(re.findall(r"^smoke results: (.+)$", result["stdout"], re.M))
        rows = [json.loads(line) for path in Path(folder).rglob("*.jsonl")
                for line in path.read_text().splitlines() if line.strip()]
        assert rows, f"{name} wrote no results rows under {folder}"
        for row in rows:
            assert row["commit"] and set(row["versions"]) == {"python", "torch", "onnxruntime",
                                                               "optuna", "numpy"}


def test_smoke_runs_leave_committed_results_alone(runs: dict[str, Any]) -> None:
    assert runs["committed_unchanged"]
