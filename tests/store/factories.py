"""Result records for store tests."""

from __future__ import annotations

from nas.architecture import Architecture
from nas.results import CandidateResult, LatencyStats, ProfileLatency, ProxyResult


def latency(profile: str = "cpu", profile_hash: str = "ph-cpu", decode_ms: float = 0.5,
            node: str = "node-a") -> ProfileLatency:
    return ProfileLatency(profile=profile, profile_hash=profile_hash, node=node,
                          prefill=LatencyStats(median_ms=2.0, p90_ms=2.5, cv=0.05, n=20),
                          decode=LatencyStats(median_ms=decode_ms, p90_ms=decode_ms * 1.2, cv=0.1, n=20))


def result(arch: Architecture, state: str = "complete", *, val_loss: float = 3.0,
           weights: bytes | None = b"safetensors-bytes", **latency_kw: object) -> CandidateResult:
    lat = latency(**latency_kw)  # type: ignore[arg-type]
    return CandidateResult(
        architecture=arch, state=state,  # type: ignore[arg-type]
        metrics={"val_loss": val_loss, "params": float(arch.n_params), **lat.metrics()},
        proxy=ProxyResult(val_loss=val_loss, curve=((0, 5.5), (512, 4.0), (1024, val_loss)),
                          tokens=1024, tokens_per_s=1e4, seconds=0.1),
        latencies=(lat,), timings={"train": 1.5, "export": 0.5, "latency": 1.0, "total": 3.0},
        weights=weights, node="node-a")
