"""Pydantic models of the JSON API: what clients see, kept apart from the store's tables."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from nas.names import NAME_PATTERN
from nas.service.launcher import MAX_TRIALS, MAX_YAML_BYTES
from nas.states import CANDIDATE_STATES, SHOWN_STATUSES

ProfileName = Annotated[str, StringConstraints(pattern=NAME_PATTERN)]
# "driver lost": stored as running or stopping, but its driver stopped beating (resume it).
SearchStatus = Literal[SHOWN_STATUSES]  # type: ignore[valid-type] - the one list, nas.states
CandidateState = Literal[CANDIDATE_STATES]  # type: ignore[valid-type]


class ErrorOut(BaseModel):
    detail: str


class ObjectiveOut(BaseModel):
    metric: str
    direction: Literal["min", "max"]


class SearchSummaryOut(BaseModel):
    name: str
    status: SearchStatus
    trials: int = Field(description="trials budget")
    n_complete: int
    n_failed: int
    n_pruned: int
    n_running: int = Field(description="in flight under a live driver")
    n_interrupted: int = Field(0, description="left running by a driver that stopped or died; "
                               "re-run when the search is resumed")
    n_infeasible: int = Field(0, description="broke a constraint in the shape step (latency, size): "
                              "stored with its reason, never trained")
    front_size: int
    hypervolume: float | None
    created_at: datetime
    updated_at: datetime = Field(description="last write to the search or its candidates: poll it")
    finished_at: datetime | None
    version: str = Field(description="changes whenever the search or its candidates do; "
                                     "figures and candidate lists say which version they show")
    url: str = Field(description="the search's page")


class FidelityOut(BaseModel):
    min_tokens: int = Field(description="the first rung's size")
    eta: int = Field(description="the factor between rungs; the top 1/eta at each rung go on")
    rung_tokens: list[int] = Field(description="training tokens at the end of each rung")


class RungCountOut(BaseModel):
    rung: int = Field(description="0 = the first rung (pages and messages count from 1)")
    tokens: int = Field(description="training tokens a candidate has seen at the end of this rung")
    reached: int = Field(description="candidates whose loss at this rung is stored")
    pruned: int = Field(description="of those, the ones successive halving stopped here")


class SearchOut(SearchSummaryOut):
    objectives: list[ObjectiveOut]
    constraints: list[str]
    profiles: list[str]
    budget: dict[str, Any]
    data: dict[str, Any]
    space: dict[str, Any]
    reference_point: list[float] | None
    error: str
    started_at: datetime | None
    fidelity: FidelityOut | None = Field(description="successive halving's settings; null: every "
                                         "candidate trains the whole budget (one rung)")
    rung_tokens: list[int] = Field(description="training tokens at the end of each rung (one rung "
                                   "without fidelity)")
    rungs: list[RungCountOut] = Field(description="per rung: candidates that reached it and were "
                                      "pruned there; from the candidates, as of their latest view")
    tokens_spent: int | None = Field(description="training tokens spent on every rung of every "
                                     "candidate; null if some were stored before rungs were")
    parent: dict[str, Any] | None = Field(None, description="the parent checkpoint candidates "
                                          "are derived from: path, fingerprint, depth, "
                                          "architecture, params; null: trained from scratch")


class HypervolumePointOut(BaseModel):
    n_complete: int = Field(description="distinct complete candidates when the snapshot was taken")
    hypervolume: float | None
    front_size: int
    tokens: int | None = Field(description="training tokens spent by then; null in snapshots "
                               "taken before rungs were recorded")
    created_at: datetime


class CandidateRef(BaseModel):
    id: int
    trial_number: int | None = Field(description="what pages and the CLI show; null for a "
                                     "candidate no longer in the search")
    url: str = Field(description="the candidate's page")


class UnresolvedOut(BaseModel):
    id: int = Field(description="the other member of the pair")
    trial_number: int | None
    metric: str = Field(description="the objective on which their 95% intervals overlap")


class CandidateBrief(BaseModel):
    id: int
    search: str
    trial_number: int
    state: CandidateState
    error: str
    architecture: dict[str, Any]
    description: str = Field(description="short label, e.g. 'L4 d64 h4/kv2 ffn4 softmax none tied'")
    arch_hash: str
    params: int
    metrics: dict[str, float | None] = Field(description="null where a value is NaN or infinite")
    on_front: bool
    knee: bool
    feasible: bool | None = Field(description="meets every constraint; null unless complete")
    tokens: int = Field(0, description="training tokens spent on it, every rung it reached")
    intervals: dict[str, list[float]] = Field(
        default_factory=dict, description="bootstrap 95% interval [low, high] of each metric "
        "whose measurement in force has one (re-timed latencies and throughputs), e.g. "
        "'latency:cpu-1t:decode_ms': [0.1203, 0.1261]; {} unless re-timed")
    unresolved: list[UnresolvedOut] = Field(
        default_factory=list, description="front members whose order against this one the "
        "latest re-timing did not resolve (their intervals overlap on an objective)")
    url: str = Field(description="the candidate's page")


class MachineOut(BaseModel):
    cpu_model: str
    cores: int = Field(description="cores the measuring process could run on")
    flags: list[str] = Field(description="the CPU's instruction-set flags, sorted")
    onnxruntime: str
    onnx: str
    hostname: str = Field(description="the host (Ray node) that took it; not part of the hash")
    hash: str = Field(description="what makes two measurements comparable: CPU model, cores, "
                      "flags and runtime versions")
    summary: str


class UnresolvedPairOut(BaseModel):
    a: CandidateRef
    b: CandidateRef
    metric: str


class RetimeOut(BaseModel):
    number: int = Field(description="1, 2, ... within the search; measurements it took carry it")
    search: str
    created_at: datetime
    machine: MachineOut | None = Field(description="the kind of machine every member was timed on")
    profiles: list[str]
    members: list[CandidateRef] = Field(description="timed together, interleaved in rounds: the "
                                        "front and its nearest dominated neighbours")
    front_before: list[CandidateRef]
    front_after: list[CandidateRef] = Field(description="the front recomputed from the re-timed values")
    entered: list[CandidateRef] = Field(description="on the front after, not before")
    left: list[CandidateRef] = Field(description="on the front before, not after")
    unresolved: list[UnresolvedPairOut] = Field(description="pairs whose 95% intervals overlap "
                                                "on an objective: their order is not resolved")
    n_unresolved: int
    rounds: int
    seconds: float


class FrontOut(BaseModel):
    search: str
    objectives: list[ObjectiveOut]
    reference_point: list[float] | None
    hypervolume: float
    knee_id: int | None = Field(description="the knee's candidate id (its URL); null without a front")
    knee_trial: int | None = Field(description="the knee's trial number, as pages and the CLI show it")
    candidates: list[CandidateBrief] = Field(description="the front, by the first objective")
    retime: RetimeOut | None = Field(None, description="the latest re-timing of the front; null "
                                     "if it was never re-timed")


class LatencyStatsOut(BaseModel):
    median_ms: float | None
    p90_ms: float | None
    cv: float | None = Field(description="robust coefficient of variation (1.4826 MAD / median)")
    n: int = Field(description="timed repetitions kept")
    ci_low_ms: float | None = Field(None, description="bootstrap 95% interval of the median; "
                                    "null unless re-timed (`nas retime`)")
    ci_high_ms: float | None = None


class ProfileLatencyOut(BaseModel):
    profile: str
    profile_hash: str
    node: str
    measurement: int = Field(0, description="0: taken by the search; k: the k-th re-timing")
    prefill: LatencyStatsOut = Field(description="the same as stats['prefill_ms']")
    decode: LatencyStatsOut = Field(description="the same as stats['decode_ms'] (at past_len)")
    stats: dict[str, LatencyStatsOut] = Field(
        default_factory=dict, description="every timed quantity by metric suffix: prefill_ms, "
        "decode_ms, and a workload profile's decode_ms@<context>, ttft_ms, generate_ms "
        "(the metric is latency:<profile>:<suffix>)")
    tokens_per_s: float | None = Field(None, description="throughput:<profile>:tokens_per_s")
    peak_mb: float | None = Field(None, description="measured peak memory of the workload "
                                  "(memory:<profile>:peak_mb)")
    estimate_mb: float | None = Field(None, description="closed form: weights plus KV cache")
    memory_diff_mb: float | None = Field(None, description="peak_mb - estimate_mb")
    retimed: bool = Field(False, description="its quantities carry 95% intervals")
    machine: MachineOut | None = Field(None, description="null for measurements stored before "
                                       "machines were recorded")


class RungLossOut(BaseModel):
    rung: int = Field(description="0 = the first rung (pages and messages count from 1)")
    tokens: int = Field(description="training tokens seen by the end of this rung, in all")
    val_loss: float | None = Field(description="validation loss at the end of this rung")
    seconds: float | None = Field(description="training seconds of this rung alone")


class CandidateOut(CandidateBrief):
    attempts: int
    latencies: list[ProfileLatencyOut] = Field(description="per profile, the measurement in "
                                               "force (the latest)")
    latency_history: list[ProfileLatencyOut] = Field(
        default_factory=list, description="every measurement, by profile then number: the "
        "search's (0) and each re-timing's; earlier ones are kept, never overwritten")
    proxy: dict[str, Any] = Field(description="the proxy training run: val_loss, curve, tokens...")
    rungs: list[RungLossOut] = Field(description="its validation loss at every rung it reached, "
                                     "first rung first (a pruned candidate stopped at the last)")
    timings: dict[str, float | None]
    node: str
    started_at: datetime
    finished_at: datetime | None
    has_weights: bool
    derivation: dict[str, Any] | None = Field(None, description="how its initial weights came "
                                              "from the search's parent (parent fingerprint, "
                                              "depth, blocks: the parent layers of each unique "
                                              "block, (parent, candidate) widths, kv_pooling); "
                                              "null without a parent")
    search_url: str
    export_url: str = Field(description="zip of the exported model (architecture, ONNX, weights)")


class LaunchIn(BaseModel):
    """A search to start: a shipped space by name, or a whole space as YAML text."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=NAME_PATTERN, description="letters, digits, '.', '_', '-'; at most 64")
    space: str | None = Field(None, pattern=NAME_PATTERN, description="a shipped space, e.g. 'tiny'")
    space_yaml: str | None = Field(None, min_length=1, max_length=MAX_YAML_BYTES,
                                   description="a search space as YAML (corpus: stdlib only)")
    profiles: list[ProfileName] | None = Field(None, min_length=1, max_length=8,
                                       description="shipped hardware profiles; default: the space's")
    trials: int | None = Field(None, ge=1, le=MAX_TRIALS, description="default: the space's")
    no_fidelity: bool = Field(False, description="give every candidate the whole token budget, "
                              "ignoring the space's fidelity (successive halving), as "
                              "`nas search --no-fidelity`")

    @model_validator(mode="after")
    def _one_space(self) -> LaunchIn:
        if (self.space is None) == (self.space_yaml is None):
            raise ValueError("give exactly one of 'space' (a name) or 'space_yaml' (YAML text)")
        return self


class LaunchOut(BaseModel):
    name: str
    status: Literal["starting"]
    pid: int
    url: str = Field(description="the search's page (it shows 'starting' until the search exists)")
    api_url: str


class StopOut(BaseModel):
    name: str
    status: SearchStatus
