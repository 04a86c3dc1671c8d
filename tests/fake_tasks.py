"""A small simulated evaluator for tests: `SearchDriver(..., tasks=fake_tasks(...))`.

The real driver, study, store and Ray run; only the three Ray steps are replaced by short
sleeps that return records the driver cannot tell from real ones (bench/fake_evaluator.py is
the benchmark's larger version). Metrics are a fixed function of the architecture plus noise
seeded by its hash, so a repeat of a shape gets the same numbers.

``actors=0``: real Ray remote functions, scheduled with the driver's options (what placement
tests check; a training task also records the GPUs Ray assigned it and when it ran, in its
timings). ``actors=k``: k async actors run every sleep, so hundreds can be in flight in a few
processes (scheduling options are then not applied).
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
import random
import sys
import time
from collections.abc import Callable
from typing import Any

from nas.architecture import Architecture, static_metrics
from nas.evaluate import ShapeOutput, TrainOutput
from nas.results import LatencyStats, ProfileLatency, ProxyResult
from nas.search.executor import RayTasks


def _noise(arch: Architecture) -> float:
    return random.Random(hashlib.blake2b(arch.hash.encode(), digest_size=8).digest()).gauss(0.0, 0.05)


def shape_output(arch: Architecture, node: str) -> ShapeOutput:
    graph = json.dumps(arch.to_dict()).encode()  # the timing step reads the shape back from it
    return ShapeOutput(graph, graph, timings={"export": 0.0}, node=node)


def latency(prefill: bytes, profile: Any, node: str) -> ProfileLatency:
    arch = Architecture.from_dict(json.loads(prefill))
    ms = 0.01 + arch.n_layer * arch.d_model / 1000.0

    def stats(x: float) -> LatencyStats:
        return LatencyStats(median_ms=x, p90_ms=x, cv=0.0, n=1)

    return ProfileLatency(profile.name, profile.hash, prefill=stats(ms * 4), decode=stats(ms), node=node)


def train_output(arch: Architecture, budget: Any, stop_at: int | None, timings: dict[str, float],
                 node: str) -> TrainOutput:
    per_step = budget.batch_size * budget.seq_len
    steps = budget.tokens // per_step if stop_at is None else stop_at
    tokens = steps * per_step
    params = static_metrics(arch)["params"]
    loss = 4.0 - 0.2 * params ** 0.1 + _noise(arch) + 0.3 * (budget.tokens / tokens - 1)
    proxy = ProxyResult(val_loss=loss, curve=((tokens, loss),), tokens=tokens, tokens_per_s=1e6,
                        seconds=timings["train"])
    if stop_at is not None:
        return TrainOutput(proxy, checkpoint=b"checkpoint", timings=timings, node=node)
    return TrainOutput(proxy, weights=b"\0" * 16, timings=timings, node=node)


def fake_tasks(train_s: tuple[float, float] = (0.001, 0.02), actors: int = 4) -> Callable[[Any], RayTasks]:
    """The driver's ``tasks`` factory; training sleeps uniformly in ``train_s`` seconds."""

    def build(ray: Any) -> RayTasks:
        # Workers cannot import tests/ (not a package on their path): send this module's code.
        ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
        return _actors(ray, train_s, actors) if actors else _remote(ray, train_s)

    return build


def _remote(ray: Any, train_s: tuple[float, float]) -> RayTasks:
    def node() -> str:
        return ray.get_runtime_context().get_node_id()

    @ray.remote
    def shape(arch: Architecture, *_: Any) -> ShapeOutput:
        return shape_output(arch, node())

    @ray.remote
    def measure(prefill: bytes, _decode: bytes, profile: Any, *_: Any) -> ProfileLatency:
        return latency(prefill, profile, node())

    @ray.remote
    def train(arch: Architecture, budget: Any, _data: Any, _seed: int, _threads: int, _mt: int,
              stop_at: int | None = None, *_: Any) -> TrainOutput:
        started = time.time()
        time.sleep(random.uniform(*train_s))
        gpus = ray.get_runtime_context().get_assigned_resources().get("GPU", 0.0)
        timings = {"train": time.time() - started, "gpus": gpus, "started": started, "ended": time.time()}
        return train_output(arch, budget, stop_at, timings, node())

    return RayTasks(train=train, measure=measure, shape=shape, retime=None)


class _Round:
    """``.options(...).remote(...)`` over a pool of actor methods, round-robin."""

    def __init__(self, methods: list[Any]) -> None:
        self._next = itertools.cycle(methods)

    def options(self, **_: Any) -> _Round:
        return self

    def remote(self, *args: Any) -> Any:
        return next(self._next).remote(*args)


def _actors(ray: Any, train_s: tuple[float, float], n: int) -> RayTasks:
    @ray.remote(num_cpus=0, max_concurrency=10_000)
    class Sleeper:
        def __init__(self) -> None:
            self.node = ray.get_runtime_context().get_node_id()

        async def shape(self, arch: Architecture, *_: Any) -> ShapeOutput:
            return shape_output(arch, self.node)

        async def measure(self, prefill: bytes, _decode: bytes, profile: Any, *_: Any) -> ProfileLatency:
            return latency(prefill, profile, self.node)

        async def train(self, arch: Architecture, budget: Any, _data: Any, _seed: int, _threads: int,
                        _mt: int, stop_at: int | None = None, *_: Any) -> TrainOutput:
            seconds = random.uniform(*train_s)
            await asyncio.sleep(seconds)
            return train_output(arch, budget, stop_at, {"train": seconds}, self.node)

    pool = [Sleeper.remote() for _ in range(n)]
    return RayTasks(train=_Round([a.train for a in pool]), measure=_Round([a.measure for a in pool]),
                    shape=_Round([a.shape for a in pool]), retime=None)
