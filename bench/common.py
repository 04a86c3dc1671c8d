"""The one helper module of the benchmarks: where results go, what every row records, the machine.

Run every benchmark from the repository root as a module (``python -m bench.<name>``), so
``bench`` and ``nas`` import without ``sys.path`` edits.

* Results: one folder per study, ``bench/results/<study>/`` (`results_dir`); ``$NAS_BENCH_RESULTS``
  moves the root (the GPU machine writes straight into its ``$OUT``). Long collections append
  one JSON line per finished unit and skip finished units when restarted, so a run that is
  killed (or runs out of time) resumes where it stopped.
* Provenance: `append_jsonl` stamps every row with the commit (``-dirty`` when tracked files
  outside ``bench/results`` differ from it) and the versions of the packages results depend on,
  so a number can always be traced to the code and libraries that produced it.
* Drift: these machines are shared and drift, so a benchmark reports a speed as a ratio against
  a reference measured in the same run, ideally right next to each measurement (`matmul_flops`
  is cheap enough to call before and after every item), and prints the machine it ran on
  (`format_machine`).
* ``--smoke`` (`add_smoke_flag`, `start_smoke`): tiny sizes, a temporary results folder and
  cache, so ``tests/test_bench_smoke.py`` can run every script in seconds and none can rot.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import functools
import importlib.metadata
import json
import os
import platform
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from nas.architecture import Architecture
    from nas.data import TokenData
    from nas.space import SearchSpace

ROOT = Path(__file__).resolve().parents[1]
COMMITTED_RESULTS = ROOT / "bench" / "results"  # inputs some analyses read, even in smoke mode
SHARED_DATA = Path(os.environ.get("NAS_BENCH_DATA", "/work/shared/data"))
VERSIONED = ("torch", "onnxruntime", "optuna", "numpy")
_CPU_FLAGS_OF_INTEREST = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16",
                          "amx_tile")
_SMOKE: dict[str, Path] = {}  # "dir": the smoke run's temporary folder, once started


# ----- results ---------------------------------------------------------------------------
def results_root() -> Path:
    """Read at call time: ``--smoke`` and ``$NAS_BENCH_RESULTS`` redirect it."""
    if "dir" in _SMOKE:
        return _SMOKE["dir"] / "results"
    return Path(os.environ.get("NAS_BENCH_RESULTS", COMMITTED_RESULTS))


def results_dir(study: str) -> Path:
    return results_root() / study


def read_jsonl(*paths: Path) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for path in paths:
        if not path.is_file():
            continue
        for line in path.read_text().splitlines():
            line = line.strip()
            # A line cut by a kill is skipped: its unit is redone.
            if line:
                with contextlib.suppress(json.JSONDecodeError):
                    rows.append(json.loads(line))
    return rows


def append_jsonl(path: Path, row: dict[str, Any]) -> None:
    """Append ``row`` with `provenance` added (its own keys win, so old fields keep meaning)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:  # one write per line: O_APPEND keeps concurrent writers whole
        fh.write(json.dumps({**provenance(), **row}, sort_keys=True) + "\n")


@functools.lru_cache(maxsize=1)
def provenance() -> dict[str, Any]:
    """``{"commit": ..., "versions": {...}}``, computed once per process, before any writes.

    Appending to a tracked results file must not mark the tree dirty, so ``bench/results`` is
    left out of the check; untracked files are too (new results files are untracked).
    ``$NAS_BENCH_COMMIT`` names the commit where there is no git checkout (the GPU machine).
    """
    return {"commit": _commit(), "versions": {
        "python": platform.python_version(), **{p: _version(p) for p in VERSIONED}}}


def _commit() -> str:
    if os.environ.get("NAS_BENCH_COMMIT"):
        return os.environ["NAS_BENCH_COMMIT"]
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True,
                              text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".",
                                ":(exclude)bench/results"], cwd=ROOT, capture_output=True,
                               text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("-dirty" if dirty else "")


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def parse_shard(text: str | None) -> tuple[int, int]:
    """``"K/N"`` -> (K, N): this process takes the units whose index is K modulo N."""
    if not text:
        return 0, 1
    k, _, n = text.partition("/")
    shard, shards = int(k), int(n)
    if not 0 <= shard < shards:
        raise ValueError(f"--shard {text}: want K/N with 0 <= K < N")
    return shard, shards


# ----- smoke mode --------------------------------------------------------------------------
def add_smoke_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--smoke", action="store_true",
                        help="seconds-long run at tiny sizes; results go to a temporary folder")


def start_smoke() -> Path:
    """Send results, the product's caches and bench caches to a fresh temporary folder.

    Set in the environment too, so subprocesses (sweeps, `nas search`) write there as well; a
    subprocess started with ``--smoke`` joins its parent's folder (``$NAS_BENCH_SMOKE_DIR``).
    """
    if "dir" not in _SMOKE:
        inherited = os.environ.get("NAS_BENCH_SMOKE_DIR")
        _SMOKE["dir"] = Path(inherited or tempfile.mkdtemp(prefix="nas-bench-smoke-"))
        os.environ["NAS_BENCH_SMOKE_DIR"] = str(_SMOKE["dir"])
        os.environ["NAS_BENCH_RESULTS"] = str(_SMOKE["dir"] / "results")
        os.environ["NAS_CACHE_DIR"] = str(_SMOKE["dir"] / "cache")
        os.environ["NAS_BENCH_CACHE"] = str(_SMOKE["dir"] / "bench-cache")
        print(f"smoke results: {_SMOKE['dir'] / 'results'}", flush=True)
    return _SMOKE["dir"]


def smoke_text() -> Path:
    """A small real text file (this package's own source, ~200 KB) for smoke runs."""
    path = start_smoke() / "smoke.txt"
    if not path.is_file():
        chunks, size = [], 0
        for src in sorted((ROOT / "nas").rglob("*.py")):
            text = src.read_text(encoding="utf-8")
            chunks.append(text)
            size += len(text)
            if size > 200_000:
                break
        path.write_text("\n".join(chunks), encoding="utf-8")
    return path


# ----- corpora and candidates --------------------------------------------------------------
def byte_tokens(path: Path) -> np.ndarray:
    return np.frombuffer(path.read_bytes(), dtype=np.uint8).copy()


def corpus(name: str) -> TokenData:
    """Byte-level `TokenData` for a benchmark corpus.

    ``shakespeare``: tinyshakespeare.txt, its last 10% held out (nas.data.prepare's rule for one
    document). ``wikitext``: WikiText-2 ``valid.txt`` to train, ``test.txt`` to evaluate.
    ``stdlib``: the product's embedded corpus (the tiny space's own data). ``smoke``:
    `smoke_text`, so smoke runs need no shared data and tokenize in milliseconds.
    """
    from nas.data import TokenData, prepare
    from nas.specs import DataSpec

    if name == "shakespeare":
        return prepare(DataSpec(corpus=(str(SHARED_DATA / "tinyshakespeare.txt"),)))
    if name == "wikitext":
        train = byte_tokens(SHARED_DATA / "wikitext-2" / "valid.txt")
        val = byte_tokens(SHARED_DATA / "wikitext-2" / "test.txt")
        return TokenData(train, val, 256, "byte", f"wikitext-2 valid ({len(train):,} bytes) -> "
                         f"test ({len(val):,} bytes)", "wikitext2-valid-test", "wikitext-2")
    if name == "stdlib":
        return prepare(DataSpec())
    if name == "smoke":
        return prepare(DataSpec(corpus=(str(smoke_text()),)))
    raise ValueError(name)


def uses_feature(arch: Architecture) -> bool:
    """Sharing, GQA/MQA or non-softmax attention: what parameter count cannot see."""
    return arch.sharing != "none" or arch.n_kv_head < arch.n_head or arch.attention != "softmax"


def sample_archs(space: SearchSpace, n: int, seed: int,
                 max_params: float | None = None) -> list[Architecture]:
    """``n`` distinct uniformly sampled candidates of ``space`` meeting its shape constraints."""
    rng = np.random.default_rng(seed)
    out: list[Architecture] = []
    seen: set[str] = set()
    while len(out) < n:
        a = space.sample_random(rng)
        if a.hash in seen or space.check_static(a):
            continue
        if max_params is not None and a.n_params > max_params:
            continue
        seen.add(a.hash)
        out.append(a)
    return out


# ----- the machine ---------------------------------------------------------------------------
def available_cores() -> int:
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _cpuinfo() -> tuple[str, list[str]]:
    model: str = platform.processor() or platform.machine()
    flags: list[str] = []
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return model, flags
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name" and value.strip():
            model = value.strip()
        elif key.strip() == "flags":
            present = set(value.split())
            flags = [f for f in _CPU_FLAGS_OF_INTEREST if f in present]
            break
    return model, flags


def machine_info(threads: int | None = None) -> dict[str, Any]:
    """What a benchmark result depends on: CPU, cores, threads, code, libraries, date, load."""
    import torch

    model, flags = _cpuinfo()
    versions = provenance()["versions"]
    return {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "host": platform.node(),
        "cpu": model,
        "cpu_flags": flags,
        "cores": os.cpu_count(),
        "cores_available": available_cores(),
        "threads": threads if threads is not None else torch.get_num_threads(),
        "commit": provenance()["commit"],
        "python": versions["python"],
        "torch": torch.__version__,
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "onnxruntime": versions["onnxruntime"],
        "optuna": versions["optuna"],
        "numpy": versions["numpy"],
        # libgomp's spin-waiting decides how training threads behave on a shared machine.
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "default"),
        "loadavg_1m": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
    }


def format_machine(info: dict[str, Any]) -> str:
    """A few markdown lines describing the machine (for stdout and BENCHMARKS.md)."""
    flags = " ".join(info["cpu_flags"]) or "-"
    return "\n".join([
        f"- machine: {info['cpu']} ({info['cores']} cores, {info['cores_available']} available; "
        f"flags: {flags}); host {info['host']}",
        f"- software: commit {info['commit']}; Python {info['python']}, torch {info['torch']} "
        f"({info['torch_cpu_capability']}), onnxruntime {info['onnxruntime']}, optuna "
        f"{info['optuna']}, numpy {info['numpy']}",
        f"- run: {info['date']}, {info['threads']} threads (OMP_WAIT_POLICY "
        f"{info['omp_wait_policy']}), load average (1 min) at start {info['loadavg_1m']}",
    ])


def timed_rounds(fn: Callable[[], object], rounds: int = 5, min_round_s: float = 0.05) -> list[float]:
    """Seconds per call of ``fn`` in each of ``rounds`` rounds (calls repeated to fill a round)."""
    fn()  # warm-up: first calls allocate and pick kernels
    start = time.perf_counter()
    fn()
    once = max(time.perf_counter() - start, 1e-6)
    reps = max(1, int(min_round_s / once))
    out = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(reps):
            fn()
        out.append((time.perf_counter() - start) / reps)
    return out


def matmul_flops(threads: int | None = None, n: int = 1024, rounds: int = 5,
                 dtype: str = "float32") -> float:
    """Median FLOP/s of ``torch.mm`` on (n x n) matrices with ``threads`` intra-op threads.

    The machine's own reference speed: a training throughput divided by it is comparable
    across runs and machines. The previous thread count is restored afterwards.
    """
    import torch

    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        gen = torch.Generator().manual_seed(0)
        kind = getattr(torch, dtype)
        a = torch.randn(n, n, generator=gen).to(kind)
        b = torch.randn(n, n, generator=gen).to(kind)
        out = torch.empty(n, n, dtype=kind)
        seconds = timed_rounds(lambda: torch.mm(a, b, out=out), rounds=rounds)
    finally:
        torch.set_num_threads(previous)
    return 2 * n**3 / statistics.median(seconds)


def markdown_table(headers: list[str], rows: Iterable[list[Any]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(" --- " for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)
