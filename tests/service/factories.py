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


# A search trained by successive halving (rungs at 512 / 1,024 / 2,048 tokens, eta 2):
# trial -> its validation loss at each rung it reached, and how it ended. Trials 0, 1 and 4
# complete (they are POINTS 0, 1, 2: the front); 2 and 5 are pruned at rung 1, 3 at rung 2.
RUNG_TOKENS = (512, 1024, 2048)
RUNG_TRIALS: dict[int, tuple[tuple[float, ...], str]] = {
    0: ((3.6, 3.2, 3.0), "complete"), 1: ((3.5, 3.0, 2.8), "complete"),
    2: ((4.0,), "pruned"), 3: ((3.9, 3.7), "pruned"),
    4: ((3.4, 3.0, 2.6), "complete"), 5: ((4.2,), "pruned"),
}
RUNG_COUNTS = [(0, 512, 6, 2), (1, 1024, 4, 1), (2, 2048, 3, 0)]  # (rung, tokens, reached, pruned)
RUNG_TOKENS_SPENT = 3 * 2048 + 2 * 512 + 1024


def make_rung_search(store: Store, name: str = "rungs") -> dict[int, int]:
    """A finished search with rungs, written as the driver writes one: each promoted rung with
    its checkpoint (`Store.record_rung`), the last with the result, a snapshot with the tokens
    spent after each complete candidate. Returns {trial number: candidate id}."""
    import dataclasses

    from nas.results import RungLoss

    space = load_space("tiny").to_dict()
    fidelity = {"min_tokens": RUNG_TOKENS[0], "eta": 2, "rung_tokens": list(RUNG_TOKENS)}
    store.create_search(
        name, space=space, space_hash=f"hash-{name}", profiles=[{"name": "cpu-1t"}],
        objectives=[("val_loss", "minimize"), (LATENCY, "minimize")], constraints=["params <= 1500000"],
        data={"corpus": ["stdlib"], "tokenizer": "byte"},
        budget={"tokens": RUNG_TOKENS[-1], "batch_size": 8, "seq_len": 32},
        trials=len(RUNG_TRIALS), study_name=f"nas:{name}", fidelity=fidelity)
    ids: dict[int, int] = {}
    spent, complete = 0, []
    points = iter(POINTS)
    for k, (losses, state) in RUNG_TRIALS.items():
        ids[k] = store.start_candidate(name, k, arch(k))
        rungs = [RungLoss(i, RUNG_TOKENS[i], loss, 0.1 * (i + 1)) for i, loss in enumerate(losses)]
        for rung in rungs[:-1]:
            store.record_rung(name, k, rung, b"checkpoint")
        spent += rungs[-1].tokens
        if state == "complete":
            val_loss, decode, params = next(points)
            done = dataclasses.replace(result(k, val_loss, decode, params), rung=rungs[-1])
        else:
            full = result(k, 9.9, 0.3, 1e5)
            done = dataclasses.replace(
                full, state="pruned", weights=None, rung=rungs[-1],
                metrics={m: v for m, v in full.metrics.items() if m != "val_loss"},
                error=f"pruned at rung {len(rungs)} of {len(RUNG_TOKENS)} ({rungs[-1].tokens:,} tokens, "
                      f"val_loss {losses[-1]:.4f}): not in the top 1/2 of the candidates that reached it")
        store.finish_candidate(name, k, done)
        if state == "complete":
            complete.append(ids[k])
            store.add_pareto_snapshot(name, len(complete), 0.1 * len(complete), complete, tokens=spent)
    store.update_search(name, reference_point=[3.5, 0.5])
    store.set_status(name, "finished")
    return ids


def run_rung_search(db_url: str, directory: Any, name: str = "halving", trials: int = 6) -> Any:
    """A real search with successive halving, not a replay: the driver, Ray, real training,
    export and timing, on the e2e space with rungs at 1,024 / 2,048 / 4,096 tokens (eta 2).

    Its objectives are val_loss and params: training is deterministic on CPU and params exact,
    so who is promoted does not depend on timing noise (6 trials: 3 complete, 3 pruned at the
    first two rungs, in about 25 s on 2 cores). Returns the driver's outcome.
    """
    from pathlib import Path

    import yaml

    from harness import DATA, PROFILE
    from nas.hardware import load_profiles
    from nas.search import SearchDriver, SearchRequest

    spec = yaml.safe_load((DATA / "e2e.yaml").read_text())
    spec.update(objectives={"val_loss": "min", "params": "min"}, fidelity={"min_tokens": 1024, "eta": 2})
    path = Path(directory) / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    request = SearchRequest(space=load_space(path), name=name, profiles=tuple(load_profiles([PROFILE])),
                            trials=trials, db_url=db_url, workers=1)
    with Store(db_url) as store:
        return SearchDriver(request, store).run()
