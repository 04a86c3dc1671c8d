"""A training task's share of one GPU: ``--gpus-per-trial 0.25`` packs four candidates on it.

Ray's fractional GPUs only schedule: four tasks asking 0.25 each land on one GPU, and nothing
stops one of them from taking all its memory and crashing the other three with out-of-memory
errors. So a task that holds a share

* refuses, before allocating anything, a candidate whose training floor
  (`training_floor_bytes`) exceeds its share of the GPU's memory, with a reason that names
  both numbers and what to change; and
* caps its own PyTorch allocator at the share (``torch.cuda.set_per_process_memory_fraction``),
  so a candidate the floor let through but that needs more fails alone, with an out-of-memory
  error of its own (`describe_oom`), while its neighbours go on.

The floor is a lower bound, never an estimate that could refuse a candidate that fits: fp32
weights, gradients and AdamW's two moments (16 bytes per parameter), plus one fp32
(batch x seq_len x vocab) tensor, the log-softmax the cross-entropy keeps for its backward,
plus the parent's fp32 weights when a worker distils from it (`nas.proxy.train` documents
the measured extra). Activations come on top and are what the allocator cap catches.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from nas.architecture import Architecture
from nas.specs import ProxyBudget

_OPTIMIZER_BYTES_PER_PARAM = 16  # fp32 weight + gradient + AdamW exp_avg + exp_avg_sq
_GB = 1e9


def training_floor_bytes(arch: Architecture, budget: ProxyBudget, *, teacher_params: int = 0) -> int:
    """Bytes training ``arch`` needs at the very least (see the module docstring)."""
    logits = budget.batch_size * budget.seq_len * arch.vocab_size * 4
    return _OPTIMIZER_BYTES_PER_PARAM * arch.n_params + logits + 4 * teacher_params


@dataclass(frozen=True)
class GpuShare:
    """``fraction`` of a GPU with ``total_bytes`` of memory, held by one training task."""

    fraction: float
    total_bytes: int

    def __post_init__(self) -> None:
        if not (0 < self.fraction <= 1) or math.isnan(self.fraction):
            raise ValueError(f"fraction={self.fraction!r} must be in (0, 1]")

    @property
    def bytes(self) -> int:
        return int(self.fraction * self.total_bytes)

    def describe(self) -> str:
        return (f"its share of the GPU, {self.bytes / _GB:.2f} GB ({self.fraction:g} of "
                f"{self.total_bytes / _GB:.1f} GB, --gpus-per-trial {self.fraction:g})")

    def refusal(self, arch: Architecture, budget: ProxyBudget, *, teacher_params: int = 0) -> str | None:
        """Why ``arch`` cannot train within this share, or None when its floor fits."""
        floor = training_floor_bytes(arch, budget, teacher_params=teacher_params)
        if floor <= self.bytes:
            return None
        return (f"refused before training: it needs at least {floor / _GB:.2f} GB of GPU memory "
                f"(weights, gradients and AdamW state of {arch.n_params:,} parameters and the "
                f"{budget.batch_size}x{budget.seq_len}x{arch.vocab_size} logits"
                f"{', and the parent' if teacher_params else ''}), more than {self.describe()}; "
                f"give it a larger --gpus-per-trial or a smaller budget.batch_size")

    def describe_oom(self) -> str:
        return (f"out of GPU memory within {self.describe()}: its activations did not fit; "
                f"the other candidates on the GPU were not affected")

    def apply(self) -> None:
        """Cap this process's PyTorch allocator at the share (on the current CUDA device)."""
        import torch

        torch.cuda.set_per_process_memory_fraction(self.fraction)


def current_share(fraction: float) -> GpuShare | None:
    """The share a task asking ``fraction`` GPUs holds on this process's GPU; None without a
    GPU, or when it asked for whole GPUs (then nothing else runs there)."""
    if not 0 < fraction < 1:
        return None
    import torch

    if not torch.cuda.is_available():
        return None
    return GpuShare(fraction, torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory)
