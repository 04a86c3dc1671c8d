"""CPU core reservation: training and timing never share a core.

A latency measured while another process trains on the same core is noise, so a
node's cores are split in two sets: the last ``measure_cores`` cores time graphs,
the rest train. ``pin`` moves *every* thread of the calling process (not only the
calling thread, which is all ``sched_setaffinity(0, ...)`` changes on Linux), so
thread pools created earlier by PyTorch or ONNX Runtime follow too.

The plan comes from the *node's* cores (`node_cores`), never from whatever this process
was last pinned to: Ray reuses worker processes, so a timing task may run in the worker
that trained a moment ago. `node_cores` is the affinity this process had when this module
was imported, before any pin of ours (inherited from the raylet or the shell, so it
honours ``taskset`` and container cpusets), narrowed to the cgroup's current cpuset where
one is readable. And every pin is undone when its task ends: `pinned` restores each
thread's previous affinity, including threads the block started (they inherited the pin).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

# cgroup v2, then v1: the cores the container may use now (may shrink while we run).
_CPUSET_FILES = (Path("/sys/fs/cgroup/cpuset.cpus.effective"),
                 Path("/sys/fs/cgroup/cpuset/cpuset.effective_cpus"))


def available_cores() -> list[int]:
    """Cores this process may run on *now* (respects cgroup/taskset limits and our pins)."""
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))


_BASELINE: tuple[int, ...] = tuple(available_cores())  # before any pin: see the docstring


def parse_cpu_list(text: str) -> set[int]:
    """``"0-3,8,10-11"`` (the kernel's cpu list format) -> {0, 1, 2, 3, 8, 10, 11}."""
    cores: set[int] = set()
    for part in text.strip().split(","):
        if not part:
            continue
        lo, _, hi = part.partition("-")
        cores.update(range(int(lo), int(hi or lo) + 1))
    return cores


def _cgroup_cores() -> set[int] | None:
    for path in _CPUSET_FILES:
        with contextlib.suppress(OSError, ValueError):
            cores = parse_cpu_list(path.read_text())
            if cores:
                return cores
    return None


def node_cores() -> list[int]:
    """The cores this node gives us to split, independent of any pin this process holds."""
    cores = set(_BASELINE)
    allowed = _cgroup_cores()
    if allowed is not None and cores & allowed:
        cores &= allowed
    return sorted(cores)


def _thread_ids() -> list[int]:
    try:
        return [int(t) for t in os.listdir("/proc/self/task")]
    except OSError:
        return [0]


def pin(cores: set[int] | list[int] | tuple[int, ...]) -> None:
    """Restrict every thread of this process to ``cores`` (no-op where unsupported).

    Prefer `pinned`, which undoes it: a bare pin outlives the task in a reused worker.
    """
    if not cores or not hasattr(os, "sched_setaffinity"):
        return
    target = set(cores)
    for tid in _thread_ids():
        with contextlib.suppress(OSError):  # a thread may have exited meanwhile
            os.sched_setaffinity(tid, target)


def thread_affinities() -> dict[int, set[int]]:
    """Thread id -> its affinity, for every thread of this process (what `pinned` restores)."""
    found: dict[int, set[int]] = {}
    if not hasattr(os, "sched_getaffinity"):
        return found
    for tid in _thread_ids():
        with contextlib.suppress(OSError):
            found[tid] = set(os.sched_getaffinity(tid))
    return found


@contextlib.contextmanager
def pinned(cores: set[int] | list[int] | tuple[int, ...] | None) -> Iterator[None]:
    """Pin every thread for the duration of a block, then give each its previous affinity back.

    Threads started inside the block inherited the pin; they get the calling thread's
    previous affinity, which is what they would have inherited without it.
    """
    if not cores or not hasattr(os, "sched_getaffinity"):
        yield
        return
    before = thread_affinities()
    default = set(os.sched_getaffinity(0))
    pin(cores)
    try:
        yield
    finally:
        for tid in _thread_ids():
            with contextlib.suppress(OSError):  # exited, or a core went away meanwhile
                os.sched_setaffinity(tid, before.get(tid, default))


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
    """Reserve the last ``measure_threads`` cores for timing, the rest for training.

    ``cores`` defaults to `node_cores`, so every process on a node, pinned or not, makes the
    same plan.
    """
    cores = cores if cores is not None else node_cores()
    measure_threads = max(1, min(measure_threads, len(cores)))
    if len(cores) - measure_threads < 1:
        return CorePlan(tuple(cores), tuple(cores), exclusive=True)
    return CorePlan(tuple(cores[:-measure_threads]), tuple(cores[-measure_threads:]), exclusive=False)
