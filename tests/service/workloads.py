"""A search on a workload profile whose front was re-timed, written through the Store API.

Trials (val_loss, decode_ms@2048 in ms) as the search measured them: 0 (3.0, 1.0),
1 (2.8, 2.0), 2 (2.6, 4.0) are the front, 3 (2.9, 3.0) is dominated by 1, 4 (3.2, 5.0) by
everything. Re-timing 1 times 0-3 together: 1 comes out at 3.5 ms and 2 at 3.4 ms, so 1 is
now dominated by 2 and leaves the front, 3 (2.2 ms) enters it; 1 and 2 overlap (their 95%
intervals do), so their order on the latency is unresolved.
"""

from __future__ import annotations

from typing import Any

from nas.architecture import Architecture
from nas.hardware import HardwareProfile
from nas.results import CandidateResult, LatencyStats, MachineInfo, ProfileLatency, ProxyResult
from nas.space import load_space
from nas.store import Store

LONG = "cpu-1t-long"
OBJECTIVE = f"latency:{LONG}:decode_ms@2048"
WORKLOAD_PROFILE = HardwareProfile(name=LONG, prompt_len=512, past_len=128, decode_contexts=(2048,),
                                   new_tokens=128, rounds=2, repeats=5)
MACHINE = MachineInfo(cpu_model="Test CPU 9000", cores=2, flags=("avx2", "avx512_vnni", "sse4_2"),
                      onnxruntime="1.22.0", onnx="1.17.0", hostname="node-a")
SEARCHED: dict[int, tuple[float, float]] = {0: (3.0, 1.0), 1: (2.8, 2.0), 2: (2.6, 4.0),
                                            3: (2.9, 3.0), 4: (3.2, 5.0)}
# Re-timing 1: trial -> (decode_ms@2048 median, its 95% interval)
RETIMED: dict[int, tuple[float, tuple[float, float]]] = {
    0: (1.05, (1.0, 1.1)), 1: (3.5, (3.35, 3.65)), 2: (3.4, (3.3, 3.6)), 3: (2.2, (2.1, 2.3))}
FRONT_BEFORE, FRONT_AFTER = (0, 1, 2), (0, 2, 3)
UNRESOLVED_TRIALS = (2, 1)  # on OBJECTIVE
NEW_TOKENS = WORKLOAD_PROFILE.new_tokens


def arch(k: int) -> Architecture:
    return Architecture(n_layer=1 + k % 3, d_model=(32, 48, 64)[k % 3], n_head=2, n_kv_head=(1, 2)[k % 2],
                        attention="softmax", sharing="none", tie_embeddings=True, max_seq_len=2304)


def stats(median: float, ci: tuple[float, float] | None = None) -> LatencyStats:
    return LatencyStats(median_ms=median, p90_ms=median * 1.1, cv=0.03, n=10,
                        ci_low_ms=None if ci is None else ci[0], ci_high_ms=None if ci is None else ci[1])


def measurement(k: int, decode_long: float, ci: tuple[float, float] | None = None,
                number: int = 0) -> ProfileLatency:
    """Trial ``k``'s measurement on the long profile; intervals (scaled from ``ci``) on every
    quantity when ``ci`` is given, as a re-timing writes them."""
    scale = (lambda x: (x * ci[0] / decode_long, x * ci[1] / decode_long)) if ci else (lambda x: None)
    generate = 40.0 + 10 * k
    return ProfileLatency(
        profile=LONG, profile_hash="ph-long", node="node-a",
        prefill=stats(8.0 + k, scale(8.0 + k)), decode=stats(0.5 + k / 10, scale(0.5 + k / 10)),
        workload=(("decode_ms@2048", stats(decode_long, ci)), ("ttft_ms", stats(9.0 + k, scale(9.0 + k))),
                  ("generate_ms", stats(generate, scale(generate)))),
        tokens_per_s=NEW_TOKENS / generate * 1000, peak_mb=20.0 + k, estimate_mb=18.0 + k,
        machine=MACHINE, measurement=number)


def make_retimed_search(store: Store, name: str = "long") -> dict[int, int]:
    """The search above, finished and re-timed once. Returns {trial number: candidate id}."""
    space = load_space("tiny").to_dict()
    store.create_search(
        name, space=space, space_hash=f"hash-{name}", profiles=[WORKLOAD_PROFILE.to_dict()],
        objectives=[("val_loss", "minimize"), (OBJECTIVE, "minimize")], constraints=[],
        data={"corpus": ["stdlib"], "tokenizer": "byte"}, budget={"tokens": 2048},
        trials=len(SEARCHED), study_name=f"nas:{name}")
    ids: dict[int, int] = {}
    for k, (val_loss, decode_long) in SEARCHED.items():
        lat = measurement(k, decode_long)
        ids[k] = store.start_candidate(name, k, arch(k))
        store.finish_candidate(name, k, CandidateResult(
            architecture=arch(k), state="complete",
            metrics={"val_loss": val_loss, "params": float(arch(k).n_params), **lat.metrics()},
            proxy=ProxyResult(val_loss=val_loss, curve=((0, 5.0), (2048, val_loss)), tokens=2048,
                              tokens_per_s=1e4, seconds=0.1),
            latencies=(lat,), timings={"total": 1.0}, weights=b"w", node="node-a"))
    store.add_pareto_snapshot(name, len(SEARCHED), 0.5, [ids[t] for t in FRONT_BEFORE])
    store.update_search(name, reference_point=[3.5, 6.0])
    store.set_status(name, "finished")
    a, b = UNRESOLVED_TRIALS
    store.record_retime(
        name, latencies={ids[k]: [measurement(k, median, ci)] for k, (median, ci) in RETIMED.items()},
        machine=MACHINE, profiles=[LONG], members=[ids[k] for k in RETIMED],
        front_before=[ids[t] for t in FRONT_BEFORE], front_after=[ids[t] for t in FRONT_AFTER],
        unresolved=[(ids[a], ids[b], OBJECTIVE)], rounds=2, seconds=1.5)
    return ids


def api_latency(data: dict[str, Any]) -> ProfileLatency:
    """A `ProfileLatencyOut` JSON read back as the `ProfileLatency` it shows."""
    def back(s: dict[str, Any]) -> LatencyStats:
        return LatencyStats(s["median_ms"], s["p90_ms"], s["cv"], s["n"], s["ci_low_ms"], s["ci_high_ms"])

    every = {name: back(s) for name, s in data["stats"].items()}
    machine = data["machine"]
    return ProfileLatency(
        profile=data["profile"], profile_hash=data["profile_hash"], node=data["node"],
        prefill=back(data["prefill"]), decode=back(data["decode"]),
        workload=tuple((n, s) for n, s in every.items() if n not in ("prefill_ms", "decode_ms")),
        tokens_per_s=data["tokens_per_s"], peak_mb=data["peak_mb"], estimate_mb=data["estimate_mb"],
        machine=None if machine is None else MachineInfo.from_dict(machine),
        measurement=data["measurement"])
