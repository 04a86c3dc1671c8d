"""Synthetic searches written through the Store API: fast, and with a front we know."""

from __future__ import annotations

from typing import Any

from nas.architecture import Architecture
from nas.results import CandidateResult, LatencyStats, ProfileLatency, ProxyResult
from nas.space import load_space
from nas.store import Store

LATENCY = "latency:cpu-1t:decode_ms"
# (val_loss, decode ms, params): 0, 1, 2 are the front (knee 1); 3 and 4 are dominated;
# 5 would dominate everything but breaks the tiny space's `params <= 1.5e6`.
POINTS: list[tuple[float, float, float]] = [
    (3.0, 0.10, 20_000), (2.8, 0.20, 60_000), (2.6, 0.40, 200_000),
    (2.9, 0.30, 90_000), (3.1, 0.15, 40_000), (2.0, 0.05, 2_000_000),
]
FRONT_TRIALS = [0, 1, 2]
INFEASIBLE_TRIAL = 5


def arch(k: int) -> Architecture:
    return Architecture(n_layer=1 + k % 4, d_model=(32, 48, 64)[k % 3], n_head=2,
                        n_kv_head=(1, 2)[k % 2], attention=("softmax", "linear")[k % 2],
                        sharing="none", tie_embeddings=bool(k % 2), max_seq_len=256)


def result(k: int, val_loss: float, decode_ms: float, params: float) -> CandidateResult:
    a = arch(k)
    lat = ProfileLatency(profile="cpu-1t", profile_hash="ph-cpu-1t", node="node-a",
                         prefill=LatencyStats(median_ms=decode_ms * 8, p90_ms=decode_ms * 9,
                                              cv=0.05, n=200),
                         decode=LatencyStats(median_ms=decode_ms, p90_ms=decode_ms * 1.1,
                                             cv=0.02, n=200))
    curve = tuple((t, 5.0 - t / 1000) for t in range(256, 2049, 256))
    return CandidateResult(
        architecture=a, state="complete",
        metrics={"val_loss": val_loss, LATENCY: decode_ms, "params": params,
                 "latency:cpu-1t:prefill_ms": decode_ms * 8},
        proxy=ProxyResult(val_loss=val_loss, curve=curve, tokens=2048, tokens_per_s=1e4,
                          seconds=0.2),
        latencies=(lat,), timings={"train": 1.0, "export": 0.2, "latency": 0.5, "total": 1.7},
        weights=b"weights", node="node-a")


def make_search(store: Store, name: str = "demo", *, points=POINTS, failed: int = 1,
                running: int = 0, status: str = "finished", three_objectives: bool = False,
                snapshots: bool = True) -> dict[str, Any]:
    """A search with ``points`` complete candidates (trial k = points[k]), then ``failed``
    failed and ``running`` running ones. Returns {trial number: candidate id}."""
    space = load_space("tiny").to_dict()
    objectives = [("val_loss", "minimize"), (LATENCY, "minimize")]
    if three_objectives:
        objectives.append(("params", "minimize"))
        space["objectives"] = {m: "min" for m, _ in objectives}
    store.create_search(
        name, space=space, space_hash=f"hash-{name}", profiles=[{"name": "cpu-1t"}],
        objectives=objectives, constraints=["params <= 1500000"],
        data={"corpus": ["stdlib"], "tokenizer": "byte"}, budget={"tokens": 2048},
        trials=len(points) + failed + running + 2, study_name=f"nas:{name}")
    ids: dict[int, int] = {}
    complete: list[int] = []
    for k, (val_loss, decode, params) in enumerate(points):
        ids[k] = store.start_candidate(name, k, arch(k))
        store.finish_candidate(name, k, result(k, val_loss, decode, params))
        complete.append(ids[k])
        if snapshots:
            front = [ids[t] for t in FRONT_TRIALS if t <= k] or [ids[0]]
            store.add_pareto_snapshot(name, len(complete), 0.1 * len(complete) if k >= 2 else None,
                                      front)
    base = len(points)
    for j in range(failed):
        ids[base + j] = store.start_candidate(name, base + j, arch(base + j))
        store.fail_candidate(name, base + j, "RuntimeError: <script>alert(1)</script> diverged")
    base += failed
    for j in range(running):
        ids[base + j] = store.start_candidate(name, base + j, arch(base + j))
    if points:
        store.update_search(name, reference_point=[3.5, 0.5] + ([3e6] if three_objectives else []))
    if status != "running":
        store.set_status(name, status)
    return ids
