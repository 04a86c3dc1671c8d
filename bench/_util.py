"""Helpers shared by the accuracy benchmarks: resumable JSONL results and the real corpora.

Every long benchmark appends one JSON line per finished unit of work to a file under
``bench/results/`` and skips the units already there when restarted, so a run that is
killed (or runs out of time) resumes where it stopped.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable

import numpy as np

# NAS_BENCH_RESULTS: write elsewhere (the GPU machine writes straight into its $OUT).
RESULTS = Path(os.environ.get("NAS_BENCH_RESULTS", Path(__file__).resolve().parent / "results"))
SHARED_DATA = Path(os.environ.get("NAS_BENCH_DATA", "/work/shared/data"))


def read_jsonl(*paths: Path) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for path in paths:
        if not path.is_file():
            continue
        for line in path.read_text().splitlines():
            line = line.strip()
            if line:
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:  # a line cut by a kill: ignore, it is redone
                    pass
    return rows


def append_jsonl(path: Path, row: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:  # one write per line: O_APPEND keeps concurrent writers whole
        fh.write(json.dumps(row, sort_keys=True) + "\n")


def byte_tokens(path: Path) -> np.ndarray:
    return np.frombuffer(path.read_bytes(), dtype=np.uint8).copy()


def corpus(name: str):
    """Byte-level `TokenData` for a benchmark corpus.

    ``shakespeare``: tinyshakespeare.txt, its last 10% held out (nas.data.prepare's rule for one
    document). ``wikitext``: WikiText-2 ``valid.txt`` to train, ``test.txt`` to evaluate.
    ``stdlib``: the product's embedded corpus (the tiny space's own data).
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
    raise ValueError(name)


def uses_feature(arch) -> bool:
    """Sharing, GQA/MQA or non-softmax attention: what parameter count cannot see."""
    return arch.sharing != "none" or arch.n_kv_head < arch.n_head or arch.attention != "softmax"


def sample_archs(space, n: int, seed: int, max_params: float | None = None) -> list:
    """``n`` distinct uniformly sampled candidates of ``space`` meeting its shape constraints."""
    rng = np.random.default_rng(seed)
    out, seen = [], set()
    while len(out) < n:
        a = space.sample_random(rng)
        if a.hash in seen or space.check_static(a):
            continue
        if max_params is not None and a.n_params > max_params:
            continue
        seen.add(a.hash)
        out.append(a)
    return out


def parse_shard(text: str | None) -> tuple[int, int]:
    """``"K/N"`` -> (K, N): this process takes the units whose index is K modulo N."""
    if not text:
        return 0, 1
    k, _, n = text.partition("/")
    shard, shards = int(k), int(n)
    if not 0 <= shard < shards:
        raise ValueError(f"--shard {text}: want K/N with 0 <= K < N")
    return shard, shards


def done_keys(rows: Iterable[dict[str, Any]], fields: tuple[str, ...]) -> set[tuple]:
    return {tuple(r.get(f) for f in fields) for r in rows}
