"""CPU core reservation: training and timing never share a core.

A latency measured while another process trains on the same core is noise, so a
node's cores are split in two sets: the last ``measure_cores`` cores time graphs,
the rest train. ``pin`` moves *every* thread of the calling process (not only the
calling thread, which is all ``sched_setaffinity(0, ...)`` changes on Linux), so
thread pools created earlier by PyTorch or ONNX Runtime follow too.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Iterator


def available_cores() -> list[int]:
    """Cores this process may run on (respects cgroup/taskset limits)."""
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))


def pin(cores: set[int] | list[int] | tuple[int, ...]) -> None:
    """Restrict every thread of this process to ``cores`` (no-op where unsupported)."""
    if not cores or not hasattr(os, "sched_setaffinity"):
        return
    target = set(cores)
    try:
        thread_ids = [int(t) for t in os.listdir("/proc/self/task")]
    except OSError:
        thread_ids = [0]
    for tid in thread_ids:
        with contextlib.suppress(OSError):  # a thread may have exited meanwhile
            os.sched_setaffinity(tid, target)


@contextlib.contextmanager
def pinned(cores: set[int] | list[int] | tuple[int, ...] | None) -> Iterator[None]:
    """Pin for the duration of a block, then restore the previous affinity."""
    if not cores or not hasattr(os, "sched_getaffinity"):
        yield
        return
    before = os.sched_getaffinity(0)
    pin(cores)
    try:
        yield
    finally:
        pin(before)


@dataclass(frozen=True)
class CorePlan:
    """How one node's cores are split between training and latency measurement."""

    train_cores: tuple[int, ...]
    measure_cores: tuple[int, ...]
    exclusive: bool  # True: too few cores to split, so measuring waits for training to pause

    @property
    def train_slots(self) -> int:
        return max(1, len(self.train_cores))

    def describe(self) -> str:
        if self.exclusive:
            return (f"cores {list(self.measure_cores)} are shared: latency is measured only while "
                    "no candidate trains")
        return f"training on cores {list(self.train_cores)}, timing on cores {list(self.measure_cores)}"


def plan_cores(measure_threads: int, cores: list[int] | None = None) -> CorePlan:
    """Reserve the last ``measure_threads`` cores for timing, the rest for training."""
    cores = cores if cores is not None else available_cores()
    measure_threads = max(1, min(measure_threads, len(cores)))
    if len(cores) - measure_threads < 1:
        return CorePlan(tuple(cores), tuple(cores), exclusive=True)
    return CorePlan(tuple(cores[:-measure_threads]), tuple(cores[-measure_threads:]), exclusive=False)
