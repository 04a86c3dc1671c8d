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
    # Bootstrap 95% interval of median_ms (rounds resampled); re-timed measurements only.
    ci_low_ms: float | None = None
    ci_high_ms: float | None = None


@dataclass(frozen=True)
class MachineInfo:
    """What took a measurement: numbers from different machines are never silently compared.

    `hash` covers what changes a timing (CPU model, cores, flags, runtime versions), not the
    host's name: two identical nodes of a cluster are the same kind of machine.
    """

    cpu_model: str
    cores: int
    flags: tuple[str, ...]  # /proc/cpuinfo "flags" (x86) or "Features" (ARM), sorted
    onnxruntime: str
    onnx: str
    hostname: str = ""

    @property
    def hash(self) -> str:
        from nas.util import stable_hash

        return stable_hash({"cpu_model": self.cpu_model, "cores": self.cores,
                            "flags": list(self.flags), "onnxruntime": self.onnxruntime,
                            "onnx": self.onnx})

    @property
    def summary(self) -> str:
        """One line for pages and errors: ``AMD EPYC 7B13, 2 cores, ORT 1.22.0``."""
        return f"{self.cpu_model}, {self.cores} cores, onnxruntime {self.onnxruntime}"

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "flags": list(self.flags)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MachineInfo:
        return cls(cpu_model=str(data["cpu_model"]), cores=int(data["cores"]),
                   flags=tuple(data.get("flags", ())), onnxruntime=str(data["onnxruntime"]),
                   onnx=str(data.get("onnx", "")), hostname=str(data.get("hostname", "")))


@dataclass(frozen=True)
class ProfileLatency:
    """Latency (and, for a workload profile, memory) of one candidate on one hardware profile.

    ``workload`` holds the workload's timings by metric suffix (``ttft_ms``, ``generate_ms``,
    ``decode_ms@2048``; see `nas.hardware` for the convention); `metrics` names them in full.
    """

    profile: str
    profile_hash: str
    prefill: LatencyStats  # one forward of batch x prompt_len tokens
    decode: LatencyStats  # one new token with past_len tokens cached
    node: str = ""  # hostname / Ray node id where it was measured
    workload: tuple[tuple[str, LatencyStats], ...] = ()
    tokens_per_s: float | None = None  # batch * new_tokens / generate time
    peak_mb: float | None = None  # measured peak resident-set growth of running the workload
    estimate_mb: float | None = None  # closed form: weights + KV cache (HardwareProfile)
    machine: MachineInfo | None = None
    measurement: int = 0  # 0: taken by the search; k > 0: the k-th re-timing (nas retime)

    def stats(self) -> dict[str, LatencyStats]:
        """Every timed quantity by metric suffix: prefill_ms, decode_ms and the workload's."""
        return {"prefill_ms": self.prefill, "decode_ms": self.decode, **dict(self.workload)}

    def metrics(self) -> dict[str, float]:
        out = {f"latency:{self.profile}:{name}": s.median_ms for name, s in self.stats().items()}
        if self.tokens_per_s is not None:
            out[f"throughput:{self.profile}:tokens_per_s"] = self.tokens_per_s
        if self.peak_mb is not None:
            out[f"memory:{self.profile}:peak_mb"] = self.peak_mb
        if self.estimate_mb is not None:
            out[f"memory:{self.profile}:estimate_mb"] = self.estimate_mb
        return out


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
