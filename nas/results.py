"""Plain result records that workers return and the driver stores (no torch import).

They are frozen dataclasses of plain Python values so they pickle through Ray and
serialise to JSON for the store and the API.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

from nas.architecture import Architecture

ProxyStatus = Literal["ok", "diverged", "timeout"]
CandidateState = Literal["complete", "failed", "pruned", "infeasible"]


@dataclass(frozen=True)
class LatencyStats:
    """Robust summary of repeated timings of one graph, in milliseconds."""

    median_ms: float
    p90_ms: float
    cv: float  # coefficient of variation (robust: 1.4826 * MAD / median)
    n: int  # timed repetitions kept (warm-ups discarded)


@dataclass(frozen=True)
class ProfileLatency:
    """Latency of one candidate on one hardware profile."""

    profile: str
    profile_hash: str
    prefill: LatencyStats  # one forward of batch x prompt_len tokens
    decode: LatencyStats  # one new token with past_len tokens cached
    node: str = ""  # hostname / Ray node id where it was measured

    def metrics(self) -> dict[str, float]:
        return {
            f"latency:{self.profile}:prefill_ms": self.prefill.median_ms,
            f"latency:{self.profile}:decode_ms": self.decode.median_ms,
        }


@dataclass(frozen=True)
class ProxyResult:
    """Outcome of a short proxy training run."""

    val_loss: float  # nats/token on the fixed validation tokens (inf when diverged)
    curve: tuple[tuple[int, float], ...]  # (tokens seen, training loss)
    tokens: int  # training tokens actually consumed
    tokens_per_s: float
    seconds: float
    status: ProxyStatus = "ok"
    reason: str = ""
    device: str = "cpu"
    # Distilled runs only: mean KL(parent || candidate) in nats/token on the same validation
    # tokens as val_loss (temperature 1); None when trained without a teacher.
    val_kl: float | None = None


@dataclass(frozen=True)
class RungLoss:
    """A candidate's validation loss at the end of one rung of successive halving."""

    rung: int  # 0 = the first (smallest) rung
    tokens: int  # training tokens seen by then, in all
    val_loss: float
    seconds: float = 0.0  # training seconds of this rung alone


@dataclass(frozen=True)
class CandidateResult:
    """Everything one evaluation produced; the driver writes it in one transaction."""

    architecture: Architecture
    state: CandidateState
    metrics: dict[str, float] = field(default_factory=dict)
    proxy: ProxyResult | None = None
    latencies: tuple[ProfileLatency, ...] = ()
    error: str = ""
    timings: dict[str, float] = field(default_factory=dict)  # seconds: train, export, latency, total
    weights: bytes | None = None  # safetensors bytes of the trained model
    node: str = ""
    rung: RungLoss | None = None  # the rung it ended at, written with it (complete or pruned)
    # How its initial weights came from the search's parent (`nas.derivation.Derivation.to_dict`,
    # plain JSON); None when it trained from scratch.
    derivation: dict[str, Any] | None = None


def to_jsonable(value: Any) -> Any:
    """Dataclasses (recursively) to dicts and tuples to lists, for JSON columns and APIs."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        if isinstance(value, Architecture):
            return value.to_dict()
        return {f.name: to_jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)
                if f.name != "weights"}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    return value
