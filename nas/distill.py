"""Distillation from a parent model: the KL terms and a cache of the parent's top-k logits.

`nas.proxy.train` mixes ``w * T^2 * KL(softmax(t/T) || softmax(s/T)) + (1 - w) * CE`` (Hinton
et al.: T^2 keeps the KL's gradients on the CE's scale as T grows). The teacher's logits come
either from the parent itself, run in the worker on every batch (`kl_mean`), or from a
`TeacherCache`: the parent's top-k logits on every training batch a budget's schedule draws,
computed once (`build_teacher_cache`) and reused by every candidate of a search,
which all draw the same batches (same seed). The cached KL (`topk_kl_mean`) compares the two
distributions on the k cached tokens plus one bucket holding the rest of the vocabulary: by
the data-processing inequality it is at most the full KL, and equal to it when k = vocab.

`build_teacher_cache` replays `nas.proxy`'s own seeded window generator, under its autocast,
so the cached batches are the ones training draws.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor

from nas.data import TokenData, check_fits, validation_batches
from nas.specs import ProxyBudget

if TYPE_CHECKING:
    from nas.model import NasLM

CACHE_FORMAT = "nas-teacher-cache-1"


def log_probs(logits: Tensor, temperature: float = 1.0) -> Tensor:
    """log softmax(logits / T) in fp32; no scaled copy at T = 1."""
    logits = logits.float()
    return F.log_softmax(logits if temperature == 1 else logits / temperature, dim=-1)


def kl_mean(teacher_logits: Tensor, student_logp: Tensor, temperature: float = 1.0) -> Tensor:
    """Mean over positions of KL(softmax(t/T) || softmax(s/T)).

    teacher_logits (N, V); student_logp (N, V) = `log_probs` (student logits, T): the caller
    computes it once, so at T = 1 the cross-entropy reuses it (one (N, V) tensor less kept
    for the backward pass; at slm's batch one is 268 MB).
    """
    t = log_probs(teacher_logits, temperature)
    return F.kl_div(student_logp, t, log_target=True, reduction="sum") / student_logp.shape[0]


def topk_kl_mean(student_logp: Tensor, indices: Tensor, teacher_topk: Tensor,
                 teacher_rest: Tensor | None, temperature: float = 1.0) -> Tensor:
    """The KL of `kl_mean` on k + 1 buckets: the teacher's top-k tokens and "the rest".

    student_logp (N, V) as in `kl_mean`; indices (N, k) int64; teacher_topk (N, k) raw
    teacher logits; teacher_rest (N,) = logsumexp(t/T) over the other V - k tokens, None when
    k = V. The student's rest is 1 - (its top-k mass), in float64 on (N, k): a masked
    logsumexp over (N, V) would be exact but keeps another (N, V) tensor for the backward
    pass. The float64 sum is exact to ~1e-7 (the fp32 log-probs' own error); the clamp keeps
    a student that is all but certain from log(0).
    """
    s_top = student_logp.gather(-1, indices)  # (N, k)
    t = teacher_topk.float() / temperature
    if teacher_rest is not None:
        rest = (1 - s_top.double().exp().sum(-1)).clamp_min(1e-12).log().float()  # (N,)
        s_top = torch.cat([s_top, rest[:, None]], dim=-1)
        t = torch.cat([t, teacher_rest.float()[:, None]], dim=-1)
    t = F.log_softmax(t, dim=-1)  # normalises the buckets: their mass sums to one
    return F.kl_div(s_top, t, log_target=True, reduction="sum") / student_logp.shape[0]


def topk_of(teacher_logits: Tensor, k: int, temperature: float,
            value_dtype: torch.dtype) -> tuple[Tensor, Tensor, Tensor | None]:
    """(indices, top-k raw logits, logsumexp(t/T) of the rest or None when k = V) per position.

    teacher_logits (..., V); indices are stored as int16 when the vocabulary fits (V <= 32768).
    """
    logits = teacher_logits.float()
    vocab = logits.shape[-1]
    values, indices = logits.topk(k, dim=-1, sorted=False)
    rest = None
    if k < vocab:
        masked = (logits / temperature).scatter(-1, indices, float("-inf"))
        rest = torch.logsumexp(masked, dim=-1).to(value_dtype)
    index_dtype = torch.int16 if vocab <= 2**15 else torch.int32
    return indices.to(index_dtype), values.to(value_dtype), rest


@dataclass
class TopK:
    """Top-k teacher logits for a run of positions (leading dims: steps or windows, B, T)."""

    indices: Tensor  # (..., k) int16 / int32
    values: Tensor  # (..., k) raw logits, float16 or float32
    rest: Tensor | None  # (...,) logsumexp(t/T) of the rest; None when k = vocab

    def to(self, device: torch.device) -> TopK:
        return TopK(self.indices.to(device), self.values.to(device),
                    None if self.rest is None else self.rest.to(device))

    def flat(self, i: int | slice) -> tuple[Tensor, Tensor, Tensor | None]:
        """Entry (or slice) ``i`` of the leading dim, flattened to (N, k) int64, (N, k), (N,)."""
        k = self.indices.shape[-1]
        rest = None if self.rest is None else self.rest[i].reshape(-1)
        return self.indices[i].reshape(-1, k).long(), self.values[i].reshape(-1, k), rest

    @property
    def nbytes(self) -> int:
        parts = [self.indices, self.values] + ([] if self.rest is None else [self.rest])
        return sum(t.numel() * t.element_size() for t in parts)


@dataclass
class TeacherCache:
    """A parent's top-k logits on a budget's training batches, and on the validation windows.

    ``train`` holds step ``i``'s batch at ``[i]`` (shape (steps, B, T, k)); ``val`` the fixed
    validation windows (n, T, k), with its rest at temperature 1 (val_kl is reported at T = 1).
    ``key`` says what it was computed for; `check` refuses a run it does not fit. The parent's
    weights are not in the key (only its architecture's hash): pick the cache by parent.
    """

    train: TopK
    val: TopK
    key: dict[str, Any] = field(default_factory=dict)

    @property
    def steps(self) -> int:
        return self.train.indices.shape[0]

    @property
    def k(self) -> int:
        return self.train.indices.shape[-1]

    @property
    def nbytes(self) -> int:
        return self.train.nbytes + self.val.nbytes

    def mb_per_million_tokens(self) -> float:
        """Training-stream size: what grows with the budget (validation is fixed)."""
        positions = self.train.indices.numel() // self.k
        return self.train.nbytes / positions  # bytes per token = MB per million tokens

    def check(self, key: dict[str, Any], steps: int) -> None:
        """Raise ValueError naming every field where this cache differs from the run's ``key``."""
        wrong = [f"{name}: cache {self.key.get(name)!r}, run {value!r}"
                 for name, value in key.items() if self.key.get(name) != value]
        if self.steps < steps:
            wrong.append(f"steps: cache covers {self.steps}, run needs {steps}")
        if wrong:
            raise ValueError("the teacher cache was computed for another run: " + "; ".join(wrong))

    def to_bytes(self) -> bytes:
        buffer = io.BytesIO()
        parts = {f"{name}.{part}": getattr(getattr(self, name), part)
                 for name in ("train", "val") for part in ("indices", "values", "rest")}
        torch.save({"format": CACHE_FORMAT, "key": self.key, **parts}, buffer)
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> TeacherCache:
        saved = torch.load(io.BytesIO(data), weights_only=True)
        if saved.get("format") != CACHE_FORMAT:
            raise ValueError(f"not a teacher cache of format {CACHE_FORMAT}")
        topks = {name: TopK(saved[f"{name}.indices"], saved[f"{name}.values"], saved[f"{name}.rest"])
                 for name in ("train", "val")}
        return cls(topks["train"], topks["val"], dict(saved["key"]))


def cache_key(vocab_size: int, budget: ProxyBudget, data: TokenData, seed: int) -> dict[str, Any]:
    """What a `TeacherCache` depends on besides the parent: the batches (seed, shape, training
    stream), the validation windows and the temperature of its rest bucket."""
    return {"vocab_size": vocab_size, "data": data.spec_hash, "train_tokens": len(data.train),
            "val_tokens": budget.val_tokens, "val_length": len(data.val), "seed": seed,
            "batch_size": budget.batch_size, "seq_len": budget.seq_len,
            "temperature": budget.distill_temperature}


@torch.no_grad()
def build_teacher_cache(teacher: NasLM, budget: ProxyBudget, data: TokenData, seed: int = 0,
                        k: int = 32, device: str = "auto", threads: int | None = None,
                        value_dtype: torch.dtype = torch.float16) -> TeacherCache:
    """The parent's top-k logits on every batch ``train(..., seed=seed)`` draws for ``budget``
    (its last rung's steps; earlier rungs read a prefix) and on the validation windows.

    The teacher runs under the training autocast, as it would in the worker; values are
    stored as ``value_dtype`` (fp16 halves the size; logits need no more than its 3 digits).
    """
    # Training's own seeded window generator and autocast: anything else draws other batches.
    from nas.proxy import _autocast, _Batches, cpu_threads, default_threads, resolve_device

    budget.validate()
    check_fits(data, budget)
    vocab = teacher.arch.vocab_size
    if not 1 <= k <= vocab:
        raise ValueError(f"k={k} must be within 1..vocab_size={vocab}")
    dev = resolve_device(device)
    threads_ctx = cpu_threads(threads or default_threads()) if dev.type == "cpu" else contextlib.nullcontext()
    with threads_ctx:
        model = teacher.to(dev).eval()
        steps = budget.steps
        batches = _Batches(data.train, budget, seed, dev, steps)
        parts = []
        for _ in range(steps):
            x, _ = batches.next()
            with _autocast(dev):
                logits = model(x)
            parts.append([t.cpu() if t is not None else None for t in
                          topk_of(logits, k, budget.distill_temperature, value_dtype)])
        val_inputs = torch.from_numpy(validation_batches(data, budget).inputs).to(dev)
        val_parts = [[t.cpu() if t is not None else None for t in
                      topk_of(model(val_inputs[i:i + budget.batch_size]), k, 1.0, value_dtype)]
                     for i in range(0, len(val_inputs), budget.batch_size)]
    return TeacherCache(_stack(parts, torch.stack), _stack(val_parts, torch.cat),
                        {**cache_key(vocab, budget, data, seed), "k": k, "teacher": teacher.arch.hash})


def _stack(parts: list[list[torch.Tensor | None]], join: Callable) -> TopK:
    indices, values, rest = zip(*parts)
    return TopK(join(indices), join(values), None if rest[0] is None else join(rest))
