"""A simulated evaluator for the real driver: Ray work that sleeps and returns synthetic records.

`SearchDriver(request, store, tasks=FakeEvaluator(...).tasks)` runs the real driver, Optuna
study, store and Ray against it (`nas.search.executor.RayExecutor`'s ``tasks_factory`` seam):
only training and timing are replaced. Each step sleeps for a random time drawn from its
range, then returns what the real task would: a `ShapeOutput` whose "graphs" carry the
architecture (so the timing step, which only sees graph bytes, times the same shape), a
`ProfileLatency` per profile and a `TrainOutput` (with a checkpoint when it stops at a rung).

The metrics are a deterministic function of the architecture plus noise seeded by its hash
and the evaluator's seed, so two runs agree and a repeat of a shape gets the same numbers:
loss falls with parameters and tokens seen, latency grows with layers and width.

Two ways to run the sleeps (``mode``):

- ``"tasks"``: real Ray remote functions, scheduled with the driver's own options (CPUs, GPUs,
  custom resources, label selectors): what placement tests need. Every task in flight holds a
  worker process (~50 MB each), so hundreds in flight cost gigabytes.
- ``"actors"``: ``actors`` async actors each run many sleeps at once; the driver still gets
  ObjectRefs, waits on them with ``ray.wait`` and pays Ray's per-call cost and result
  transfer, but the scheduling options are not applied. What the driver-throughput benchmark
  uses, so 256 in flight fit on a laptop.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import itertools
import json
import math
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from nas.architecture import Architecture, static_metrics
from nas.evaluate import ShapeOutput, TrainOutput
from nas.hardware import HardwareProfile
from nas.results import LatencyStats, ProfileLatency, ProxyResult
from nas.search.executor import RayTasks
from nas.specs import ProxyBudget

MODES = ("tasks", "actors")


@dataclass(frozen=True)
class StepTimes:
    """Seconds each step sleeps, drawn uniformly from ``(low, high)`` per call."""

    shape: tuple[float, float] = (0.001, 0.005)
    measure: tuple[float, float] = (0.001, 0.005)
    train: tuple[float, float] = (0.01, 0.02)

    def draw(self, step: str, rng: random.Random) -> float:
        low, high = getattr(self, step)
        return rng.uniform(low, high)


def _noise(arch_hash: str, seed: int, what: str) -> float:
    """A standard normal number fixed by (architecture, seed, what): reproducible noise."""
    digest = hashlib.blake2b(f"{arch_hash}:{seed}:{what}".encode(), digest_size=8).digest()
    return random.Random(int.from_bytes(digest, "big")).gauss(0.0, 1.0)


def synthetic_loss(arch: Architecture, tokens: int, budget_tokens: int, seed: int = 0) -> float:
    """Validation loss after ``tokens``: lower for more parameters and more tokens, with noise."""
    params = static_metrics(arch)["params"]
    final = 3.2 - 0.18 * math.log10(max(params, 1.0)) + 0.03 * _noise(arch.hash, seed, "loss")
    return final + 0.6 * (budget_tokens / max(tokens, 1)) ** 0.5 - 0.6


def synthetic_latency(arch: Architecture, profile: HardwareProfile, seed: int = 0) -> ProfileLatency:
    """A latency record with every metric ``profile`` yields, growing with depth and width."""
    work = arch.n_layer * arch.d_model * (1.0 + arch.ffn_mult) / 1e4
    noise = 1.0 + 0.02 * _noise(arch.hash, seed, profile.name)

    def stats(ms: float) -> LatencyStats:
        return LatencyStats(median_ms=ms, p90_ms=ms * 1.05, cv=0.02, n=profile.repeats)

    decode = 0.05 + work * noise
    workload: list[tuple[str, LatencyStats]] = [
        (f"decode_ms@{c}", stats(decode * (1.0 + c / 4096))) for c in profile.decode_contexts]
    tokens_per_s = peak = estimate = None
    if profile.new_tokens is not None:
        ttft = decode * profile.prompt_len / 4
        generate = ttft + decode * profile.new_tokens
        workload += [("ttft_ms", stats(ttft)), ("generate_ms", stats(generate))]
        tokens_per_s = profile.batch * profile.new_tokens / (generate / 1000.0)
    if profile.has_workload:
        estimate = profile.memory_estimate_bytes(arch) / 2**20
        peak = estimate * 1.3
    return ProfileLatency(profile=profile.name, profile_hash=profile.hash,
                          prefill=stats(decode * profile.prompt_len / 4), decode=stats(decode),
                          workload=tuple(workload), tokens_per_s=tokens_per_s, peak_mb=peak,
                          estimate_mb=estimate)


def fake_shape(arch: Architecture, node: str = "") -> ShapeOutput:
    """The shape step: "graphs" that name the architecture, for `fake_measure` to read back."""
    graph = json.dumps(arch.to_dict(), sort_keys=True).encode()
    return ShapeOutput(graph, graph, timings={"export": 0.0}, node=node)


def fake_measure(prefill: bytes, profile: HardwareProfile, seed: int = 0, node: str = "") -> ProfileLatency:
    latency = synthetic_latency(Architecture.from_dict(json.loads(prefill)), profile, seed)
    return dataclasses.replace(latency, node=node)


def fake_train(arch: Architecture, budget: ProxyBudget, stop_at: int | None, seconds: float,
               seed: int = 0, node: str = "") -> TrainOutput:
    """One rung's training: to step ``stop_at`` (with a checkpoint to go on from), or to the end."""
    per_step = budget.batch_size * budget.seq_len
    end_step = max(1, budget.tokens // per_step)
    steps = end_step if stop_at is None else min(stop_at, end_step)
    tokens = steps * per_step
    loss = synthetic_loss(arch, tokens, budget.tokens, seed)
    curve = tuple((int(tokens * k / 4), loss + 0.5 * (4 - k) / 4) for k in range(1, 5))
    proxy = ProxyResult(val_loss=loss, curve=curve, tokens=tokens,
                        tokens_per_s=tokens / max(seconds, 1e-6), seconds=seconds)
    checkpoint = f"ckpt:{arch.hash}:{steps}".encode() if stop_at is not None else None
    weights = None if checkpoint is not None else b"\0" * 64
    return TrainOutput(proxy, weights=weights, checkpoint=checkpoint, timings={"train": seconds},
                       node=node)


class _ActorCall:
    """Quacks like a remote function (``.options(...).remote(...)``) but calls an actor method,
    round-robin over the pool; the scheduling options are recorded, not applied."""

    def __init__(self, actors: Sequence[Any], method: str) -> None:
        self._methods = [getattr(a, method) for a in actors]
        self._next = itertools.cycle(range(len(actors)))
        self.last_options: dict[str, Any] = {}

    def options(self, **options: Any) -> _ActorCall:
        self.last_options = options
        return self

    def remote(self, *args: Any) -> Any:
        return self._methods[next(self._next)].remote(*args)


@dataclass(frozen=True)
class FakeEvaluator:
    """Builds the simulated `RayTasks`; pass ``.tasks`` as the driver's ``tasks``."""

    times: StepTimes = StepTimes()
    seed: int = 0
    mode: str = "tasks"
    actors: int = 4  # actor mode: processes running the sleeps

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode={self.mode!r} must be one of {', '.join(MODES)}")

    def tasks(self, ray: Any) -> RayTasks:
        return _actor_tasks(ray, self) if self.mode == "actors" else _remote_tasks(ray, self)


def _remote_tasks(ray: Any, fake: FakeEvaluator) -> RayTasks:
    times, seed = fake.times, fake.seed

    def node() -> str:
        return ray.get_runtime_context().get_node_id()

    @ray.remote
    def shape(arch: Architecture, _seed: int, _threads: int, _measure_threads: int) -> ShapeOutput:
        time.sleep(times.draw("shape", random.Random()))
        return fake_shape(arch, node())

    @ray.remote
    def measure(prefill: bytes, _decode: bytes, profile: HardwareProfile, _threads: int) -> ProfileLatency:
        time.sleep(times.draw("measure", random.Random()))
        return fake_measure(prefill, profile, seed, node())

    @ray.remote
    def train(arch: Architecture, budget: ProxyBudget, _data: Any, _seed: int, _threads: int,
              _measure_threads: int, stop_at: int | None = None, _resume: bytes | None = None,
              _parent: Any = None) -> TrainOutput:
        seconds = times.draw("train", random.Random())
        time.sleep(seconds)
        return fake_train(arch, budget, stop_at, seconds, seed, node())

    @ray.remote
    def retime(*_args: Any) -> Any:
        raise NotImplementedError("the fake evaluator does not re-time: run with retime=False")

    return RayTasks(train=train, measure=measure, shape=shape, retime=retime)


def _actor_tasks(ray: Any, fake: FakeEvaluator) -> RayTasks:
    times, seed = fake.times, fake.seed

    @ray.remote(num_cpus=0, max_concurrency=10_000)
    class Sleeper:
        def __init__(self) -> None:
            self.rng = random.Random()
            self.node = ray.get_runtime_context().get_node_id()

        async def shape(self, arch: Architecture, *_args: Any) -> ShapeOutput:
            await asyncio.sleep(times.draw("shape", self.rng))
            return fake_shape(arch, self.node)

        async def measure(self, prefill: bytes, _decode: bytes, profile: HardwareProfile,
                          *_args: Any) -> ProfileLatency:
            await asyncio.sleep(times.draw("measure", self.rng))
            return fake_measure(prefill, profile, seed, self.node)

        async def train(self, arch: Architecture, budget: ProxyBudget, _data: Any, _seed: int,
                        _threads: int, _measure_threads: int, stop_at: int | None = None,
                        *_rest: Any) -> TrainOutput:
            seconds = times.draw("train", self.rng)
            await asyncio.sleep(seconds)
            return fake_train(arch, budget, stop_at, seconds, seed, self.node)

        async def retime(self, *_args: Any) -> Any:
            raise NotImplementedError("the fake evaluator does not re-time: run with retime=False")

    pool = [Sleeper.remote() for _ in range(max(1, fake.actors))]
    return RayTasks(train=_ActorCall(pool, "train"), measure=_ActorCall(pool, "measure"),
                    shape=_ActorCall(pool, "shape"), retime=_ActorCall(pool, "retime"))
