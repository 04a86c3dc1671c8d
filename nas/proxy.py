"""Proxy training: a short, seeded run whose validation loss ranks candidates.

`train` runs AdamW (betas 0.9/0.95, weight decay on matrices only) with linear warm-up and
cosine decay to ``lr * min_lr_frac`` (or warmup-stable-decay: ``budget.schedule``,
`nas.schedule`), gradient clipping and random training windows drawn from a generator
seeded by ``seed``; same seed and thread count give identical results on CPU.
It never raises for a run that goes wrong numerically: a non-finite loss, or one far worse
than uniform guessing, ends the run as ``"diverged"`` (val_loss=inf, the step in the reason),
and ``budget.max_seconds`` ends it as ``"timeout"`` (still evaluated).

The run is scored in fp32 on `nas.data.validation_batches` (the same tokens for every
candidate). ``tokens_per_s`` covers the training loop; ``seconds`` the whole call.

Distillation from a parent (`train`'s ``teacher`` or ``teacher_cache``; the loss terms and the
cache live in `nas.distill`) changes the training loss only: val_loss stays the plain
cross-entropy, and the KL to the parent is reported beside it (``ProxyResult.val_kl``).
Cost (measured by bench/bench_distill.py): the parent's forward on every batch took a
9.2M student's step from 9.8 to 18.7 s (19.3M parent, 1 thread, batch 32 x 256); a top-k
cache, built once per (parent, data, budget, seed) for every candidate, cost no measurable
time per step.

Speed choices (the measurements behind them are in BENCHMARKS.md, "Measurements behind design
choices"):

* bf16 autocast on CPU: OFF by default, ``NAS_CPU_BF16=1`` turns it on. It is faster only for
  the larger candidates (the smallest train slower: casts dominate) and its effect on the
  ranking is not measured yet. When on, it is on for every size so all candidates of a search
  train alike. Weights and optimizer state stay fp32; the loss and evaluation run in fp32.
* AdamW ``fused=True``: the optimizer step is several times cheaper than ``foreach``.
* ``torch.compile`` rejected: compiling the first step takes far longer than a whole proxy run,
  and the compiled steps were no faster.
* Losses stay in a device tensor, read every ``_CHECK_EVERY`` steps (or 0.5 s) instead of a
  per-step ``.item()`` (a host sync on CUDA); divergence is still pinned to its exact step.
* ``zero_grad(set_to_none=True)``; evaluation under ``torch.inference_mode``. Most CPU time is
  in ``aten::mm``: little Python overhead is left.

Threads: ``threads`` (default: every core this process may use) is set with
``torch.set_num_threads`` and restored. libgomp spins between parallel regions, so when another
process shares the cores multi-threaded training collapses (``OMP_WAIT_POLICY=PASSIVE`` helps
there but costs on an idle machine). Give training reserved cores (`nas.affinity`) or one thread.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from nas.architecture import Architecture
from nas.data import TokenData, check_fits, validation_batches
from nas.distill import TeacherCache, cache_key, kl_mean, log_probs, topk_kl_mean
from nas.errors import ArchitectureError
from nas.model import NasLM, build_model
from nas.results import ProxyResult, ProxyStatus
from nas.schedule import cooldown_steps, decayed, lr_schedule
from nas.specs import ProxyBudget

Progress = Callable[[int, int, float], None]  # (step, total steps, recent training loss)

CURVE_POINTS = 50
# The loss buffer is read (divergence, progress) every _CHECK_EVERY steps, or sooner when a
# read is _READ_EVERY_S old, so slow big models still report and stop promptly.
_CHECK_EVERY = 16
_READ_EVERY_S = 0.5
# A loss this many times worse than guessing uniformly (ln V) only comes from a blown-up run.
_DIVERGED_FACTOR = 3.0
CHECKPOINT_FORMAT = "nas-train-1"


@dataclass
class TrainedModel:
    result: ProxyResult
    model: NasLM  # on the CPU, in eval mode
    checkpoint: bytes | None = None  # set when it stopped at a rung before the budget's end


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def default_threads() -> int:
    """All cores this process may run on (respects taskset / cgroup affinity)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


@contextlib.contextmanager
def cpu_threads(n: int) -> Iterator[None]:
    """Set torch's intra-op thread count for the block, restoring the previous one."""
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def make_optimizer(model: NasLM, budget: ProxyBudget) -> torch.optim.AdamW:
    # parameters() yields shared/tied weights once, so no tensor is stepped twice.
    params = list(model.parameters())
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": budget.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    # fused: one kernel for all tensors, several times faster than foreach on CPU (BENCHMARKS.md).
    return torch.optim.AdamW(groups, lr=budget.lr, betas=(0.9, 0.95), fused=True)


def cpu_bf16_autocast() -> bool:
    """Whether CPU training runs under bf16 autocast: only when ``$NAS_CPU_BF16=1`` and the CPU
    has native bf16 dot products (AVX512-BF16 or AMX); elsewhere oneDNN emulates bf16, which is
    usually slower than fp32. Off by default: its effect on the ranking is not yet measured."""
    if os.environ.get("NAS_CPU_BF16", "").strip() != "1":
        return False
    cpu = torch.cpu
    return bool(getattr(cpu, "_is_avx512_bf16_supported", lambda: False)()
                or getattr(cpu, "_is_amx_tile_supported", lambda: False)())


def _autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """Training-forward precision; evaluation always runs in fp32 so scores stay comparable."""
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.autocast("cuda", dtype=torch.bfloat16)
    if device.type == "cpu" and cpu_bf16_autocast():
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


class _Batches:
    """Random (input, target) windows from the training stream, seeded.

    On a GPU the token stream lives on the device and all window starts are drawn up front
    (numpy gives the same draws either way), so a step gathers on the device instead of
    pinning and copying a batch: the copy and its synchronisation dominated small-model steps.
    """

    def __init__(self, tokens: np.ndarray, budget: ProxyBudget, seed: int,
                 device: torch.device, steps: int = 0) -> None:
        self.tokens = tokens
        self.b, self.t = budget.batch_size, budget.seq_len
        self.rng = np.random.default_rng(seed)
        self.offsets = np.arange(self.t + 1)
        self.device = device
        self.step = 0
        if device.type == "cuda":
            self.tokens_dev = torch.from_numpy(tokens.astype(np.int64)).to(device)
            starts = self.rng.integers(0, len(tokens) - self.t, size=(max(steps, 1), self.b))
            self.starts_dev = torch.from_numpy(starts).to(device)
            self.offsets_dev = torch.arange(self.t + 1, device=device)

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.device.type == "cuda":
            window = self.tokens_dev[self.starts_dev[self.step][:, None] + self.offsets_dev]
            self.step += 1
            return window[:, :-1], window[:, 1:]
        starts = self.rng.integers(0, len(self.tokens) - self.t, size=self.b)
        window = torch.from_numpy(self.tokens[starts[:, None] + self.offsets].astype(np.int64))
        return window[:, :-1], window[:, 1:]  # (B, T) each


def _curve(losses: np.ndarray, tokens_per_step: int) -> tuple[tuple[int, float], ...]:
    """About CURVE_POINTS (tokens seen, mean training loss over the interval) points."""
    n = len(losses)
    if n == 0:
        return ()
    edges = np.linspace(0, n, min(CURVE_POINTS, n) + 1).round().astype(int)
    return tuple((int(hi * tokens_per_step), float(losses[lo:hi].mean()))
                 for lo, hi in zip(edges[:-1], edges[1:]) if hi > lo)


def validation_loss(model: NasLM, data: TokenData, budget: ProxyBudget,
             device: torch.device | str = "cpu") -> float:
    """Mean validation loss (nats/token) on the fixed validation windows."""
    return validation_scores(model, data, budget, device)[0]


@torch.inference_mode()
def validation_scores(model: NasLM, data: TokenData, budget: ProxyBudget,
                      device: torch.device | str = "cpu", teacher: NasLM | None = None,
                      teacher_cache: TeacherCache | None = None) -> tuple[float, float | None]:
    """(mean cross-entropy, mean KL(teacher || model) or None) per token on the fixed validation
    windows, at temperature 1, in fp32 (the score must not depend on the CPU's bf16). The KL
    comes from ``teacher`` or, on its top-k + rest buckets, from ``teacher_cache``."""
    device = torch.device(device)
    batches = validation_batches(data, budget)
    inputs = torch.from_numpy(batches.inputs).to(device)
    targets = torch.from_numpy(batches.targets).to(device)
    was_training = model.training
    model.eval()
    total = torch.zeros((), dtype=torch.float64, device=device)
    kl = torch.zeros((), dtype=torch.float64, device=device)
    chunk = max(budget.batch_size, 1)
    cached = None if teacher_cache is None else teacher_cache.val.to(device)
    for i in range(0, len(inputs), chunk):
        logits = model(inputs[i:i + chunk])
        # cross_entropy is nll_loss of log_softmax: the same numbers, one softmax for both.
        logp = log_probs(logits.reshape(-1, logits.shape[-1]))
        total += F.nll_loss(logp, targets[i:i + chunk].reshape(-1), reduction="sum").double()
        if teacher is not None:
            kl += kl_mean(teacher(inputs[i:i + chunk]).reshape(logp.shape), logp).double() * len(logp)
        elif cached is not None:
            kl += topk_kl_mean(logp, *cached.flat(slice(i, i + chunk))).double() * len(logp)
    model.train(was_training)
    n = targets.numel()
    distilled = teacher is not None or teacher_cache is not None
    return float(total) / n, (float(kl) / n if distilled else None)


def train(arch: Architecture, budget: ProxyBudget, data: TokenData, device: str = "auto",
          seed: int = 0, threads: int | None = None,
          progress: Progress | None = None, model: NasLM | None = None, *,
          stop_at: int | None = None, resume: bytes | None = None,
          teacher: NasLM | None = None, teacher_cache: TeacherCache | None = None) -> TrainedModel:
    """Train ``arch`` for ``budget.tokens`` tokens and score it on the fixed validation set.

    ``model``: continue training these weights (in place; built for ``arch``) instead of a
    fresh initialisation, with a fresh optimizer and schedule (``nas export --train-tokens``).

    ``stop_at``: stop after this many optimizer steps of the budget's schedule (a rung of
    `nas.fidelity`), score, and hand back a `TrainedModel.checkpoint`; ``resume``: continue
    from such a checkpoint. The schedule is always the whole budget's: with ``cosine`` a
    rung's loss is the raw loss at that step; with ``wsd`` the rate is still flat there, so
    the rung is scored after a cooldown branch (`cooldown_steps`: ``cooldown_frac`` x the
    rung's steps, decaying linearly from the rung's rate, on the batches that come next),
    and the returned model is the branch's. Either way the checkpoint is taken at the
    rung's step, before any branch: training to step a, then on to b, gives the same weights
    as training to b without a break (bitwise on CPU). A branch's tokens are not in
    ``result.tokens`` (the position in the budget); its time is in ``result.seconds``.

    ``teacher``: distil from this parent (same vocab_size): the loss is
    ``w * T^2 * KL(softmax(t/T) || softmax(s/T)) + (1 - w) * CE`` with ``w, T =
    budget.distill_weight, budget.distill_temperature`` (at ``w = 0`` the teacher is not run
    while training: plain training, bitwise). It runs in eval mode under no_grad on the
    training device (moved there in place, so a worker's one parent stays put between
    candidates) and under the same autocast as the student. It is not in rung checkpoints:
    pass it again with ``resume``. ``teacher_cache`` (`nas.distill.build_teacher_cache`) replaces it with
    the parent's top-k logits on the same batches, computed once for every candidate.
    ``val_loss`` stays the plain cross-entropy, comparable with from-scratch candidates;
    ``result.val_kl`` is KL(teacher || student) per token on the same tokens at T = 1 (on the
    cache's top-k + rest buckets with a cache: a lower bound, exact at k = vocab). The curve
    and the divergence check stay on the cross-entropy part.

    Memory of a distilling worker, on top of the student's own run: the parent's fp32
    weights (4 bytes/parameter, loaded once per process) plus, per step, the parent's logits
    and their log-softmax and KL temporaries, about 3.5 fp32 (B*T, V) tensors (its forward
    runs under no_grad, so its other activations are one layer's, small next to the logits):
    extra ~= 4 * parent_params + 14 * B * T * V bytes. Measured (bench/bench_distill.py, peak
    RSS of one step, batch 32 x 256, vocab 8192, so one (B*T, V) tensor is 268 MB; 9.2M
    student): 2.87 GB without a teacher, 3.83 GB with a 19.3M parent (+0.96 GB), 2.62 GB with
    a cache and no parent. A cache costs ``cache.nbytes`` instead: 130 bytes per training
    token at k = 32 (int16 indices, fp16 values), 650 MB for slm's 5M-token budget.
    """
    if model is not None and resume is not None:
        raise ValueError("give model or resume, not both")
    if teacher is not None and teacher_cache is not None:
        raise ValueError("give teacher or teacher_cache, not both")
    if stop_at is not None and not 1 <= stop_at <= budget.steps:
        raise ValueError(f"stop_at={stop_at} must be within the budget's 1..{budget.steps} steps")
    if model is not None and model.arch != arch:
        raise ArchitectureError(f"model was built for {model.arch.describe()}, not {arch.describe()}")
    budget.validate()
    if arch.vocab_size < data.vocab_size:
        raise ArchitectureError(
            f"vocab_size={arch.vocab_size} is smaller than the tokenizer's "
            f"{data.vocab_size} ({data.tokenizer_name})", field="vocab_size", value=arch.vocab_size)
    check_fits(data, budget)
    if teacher is not None and teacher.arch.vocab_size != arch.vocab_size:
        raise ArchitectureError(
            f"the teacher's vocab_size={teacher.arch.vocab_size} differs from the student's "
            f"vocab_size={arch.vocab_size}: distillation compares their logits token by token",
            field="vocab_size", value=teacher.arch.vocab_size)
    if teacher_cache is not None:
        teacher_cache.check(cache_key(arch.vocab_size, budget, data, seed), budget.steps)
    dev = resolve_device(device)
    threads_ctx = cpu_threads(threads or default_threads()) if dev.type == "cpu" else contextlib.nullcontext()
    with threads_ctx:
        return _train(arch, budget, data, dev, seed, progress, model, stop_at, resume,
                      teacher, teacher_cache)


class _Teacher:
    """The KL term of a distilling step, from the parent itself or from its cached top-k."""

    def __init__(self, budget: ProxyBudget, dev: torch.device, model: NasLM | None,
                 cache: TeacherCache | None) -> None:
        self.model = None if model is None else model.to(dev).eval()
        self.cached = None if cache is None else cache.train.to(dev)
        self.weight, self.temperature = budget.distill_weight, budget.distill_temperature
        self.dev = dev

    def kl(self, step: int, x: torch.Tensor, student_logp: torch.Tensor) -> torch.Tensor:
        """Mean KL per position at the budget's temperature; student log-probs (B*T, V)."""
        if self.cached is not None:
            return topk_kl_mean(student_logp, *self.cached.flat(step), self.temperature)
        assert self.model is not None
        with torch.no_grad(), _autocast(self.dev):
            logits = self.model(x)
        return kl_mean(logits.reshape(student_logp.shape), student_logp, self.temperature)

    def loss(self, step: int, x: torch.Tensor, student: torch.Tensor,
             y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mixed loss, its cross-entropy); student logits (B*T, V) fp32, targets (B*T,)."""
        t = self.temperature
        logp = log_probs(student, t)
        # At T = 1 the CE reuses the KL's log-softmax (cross_entropy is nll_loss of it).
        ce = F.nll_loss(logp, y) if t == 1 else F.cross_entropy(student, y)
        return self.weight * t * t * self.kl(step, x, logp) + (1 - self.weight) * ce, ce


def _train(arch: Architecture, budget: ProxyBudget, data: TokenData, dev: torch.device,
           seed: int, progress: Progress | None, init: NasLM | None = None,
           stop_at: int | None = None, resume: bytes | None = None,
           teacher: NasLM | None = None, cache: TeacherCache | None = None) -> TrainedModel:
    started = time.perf_counter()
    model = (build_model(arch, seed=seed) if init is None else init).to(dev)
    model.train()
    distilled = teacher is not None or cache is not None
    # At w = 0 the KL term is multiplied away: skip the teacher (and stay bitwise plain).
    distill = (_Teacher(budget, dev, teacher, cache)
               if distilled and budget.distill_weight > 0 else None)
    opt = make_optimizer(model, budget)
    params = [p for group in opt.param_groups for p in group["params"]]
    steps = budget.steps
    stop = stop_at or steps
    batches = _Batches(data.train, budget, seed, dev, steps)
    tokens_per_step = budget.batch_size * budget.seq_len
    lrs = lr_schedule(budget, steps)
    losses = torch.empty(steps, dtype=torch.float32, device=dev)
    start, earlier_seconds = 0, 0.0
    if resume is not None:
        start, earlier_seconds = _restore(resume, model, opt, batches, losses)
        if start >= stop:
            raise ValueError(f"the checkpoint is at step {start}, not before stop_at={stop}")
    limit = _DIVERGED_FACTOR * math.log(arch.vocab_size)
    status: ProxyStatus = "ok"
    reason = ""
    done = checked = kept = start
    train_start = read_at = time.perf_counter()
    for step in range(start, stop):
        loss, ce = _step(model, opt, params, batches, lrs[step], budget, dev, distill, step)
        # The curve keeps the cross-entropy (comparable with from-scratch runs); a non-finite
        # mixed loss still marks the step as diverged.
        losses[step] = (loss.detach() if distill is None else
                        torch.where(torch.isfinite(loss.detach()), ce.detach(), loss.detach()))
        done = step + 1
        now = time.perf_counter()
        timed_out = (budget.max_seconds is not None
                     and earlier_seconds + now - train_start > budget.max_seconds)
        if done % _CHECK_EVERY and done != stop and not timed_out and now - read_at < _READ_EVERY_S:
            continue
        read_at = now
        recent = losses[checked:done].cpu().numpy()
        bad = np.flatnonzero(~np.isfinite(recent) | (recent > limit))
        if bad.size:
            at = checked + int(bad[0])
            status = "diverged"
            reason = (f"training loss {recent[bad[0]]:.4g} at step {at + 1} of {steps} "
                      f"({'not finite' if not np.isfinite(recent[bad[0]]) else f'> {limit:.3g}'}; "
                      f"lr={lrs[at]:.3g})")
            kept = at  # the curve keeps only the steps before the first bad loss
            break
        checked = kept = done
        if progress is not None:
            progress(done, steps, float(recent.mean()))
        if timed_out and done < stop:
            status = "timeout"
            reason = (f"stopped at max_seconds={budget.max_seconds:g} after {done} of {steps} steps "
                      f"({done * tokens_per_step:,} of {steps * tokens_per_step:,} tokens)")
            break
    train_seconds = time.perf_counter() - train_start
    curve = _curve(losses[:kept].cpu().numpy(), tokens_per_step)
    checkpoint = None
    if status == "ok" and done < steps:
        checkpoint = _checkpoint(done, model, opt, batches, losses, earlier_seconds + train_seconds)
        # WSD: score the rung where a run of this length would end, on a branch the
        # checkpoint (taken first) knows nothing of; the next rung goes on from the stable rate.
        branch = cooldown_steps(budget, done)
        for i in range(branch):
            _step(model, opt, params, batches, decayed(budget, lrs[done - 1], i + 1, branch),
                  budget, dev, distill, done + i)
    val_loss, val_kl = math.inf, None
    if status != "diverged":
        val_loss, val_kl = validation_scores(model, data, budget, dev,
                                             None if teacher is None else teacher.to(dev).eval(),
                                             cache)
        if not math.isfinite(val_loss):
            status, reason, val_loss, val_kl = ("diverged", f"validation loss is {val_loss}",
                                                math.inf, None)
    trained_tokens = done * tokens_per_step
    segment_tokens = (done - start) * tokens_per_step
    result = ProxyResult(
        val_loss=val_loss, curve=curve, tokens=trained_tokens,
        tokens_per_s=segment_tokens / train_seconds if train_seconds > 0 else 0.0,
        seconds=time.perf_counter() - started, status=status, reason=reason, device=str(dev),
        val_kl=val_kl)
    return TrainedModel(result, model.cpu().eval(), checkpoint)


def _step(model: NasLM, opt: torch.optim.Optimizer, params: list[torch.Tensor], batches: _Batches,
          lr: float, budget: ProxyBudget, dev: torch.device, distill: _Teacher | None,
          step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimizer step at ``lr`` on the next batch: (loss, its cross-entropy part)."""
    x, y = batches.next()
    for group in opt.param_groups:
        group["lr"] = lr
    with _autocast(dev):
        logits = model(x)
    flat = logits.reshape(-1, logits.shape[-1]).float()
    if distill is None:
        loss = ce = F.cross_entropy(flat, y.reshape(-1))
    else:
        loss, ce = distill.loss(step, x, flat, y.reshape(-1))
    loss.backward()
    if budget.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(params, budget.grad_clip, foreach=True)
    opt.step()
    opt.zero_grad(set_to_none=True)
    return loss, ce


# ----- checkpoints between rungs ---------------------------------------------------------
def _checkpoint(step: int, model: NasLM, opt: torch.optim.Optimizer, batches: _Batches,
                losses: torch.Tensor, train_seconds: float) -> bytes:
    """Everything a later rung needs to go on as if never stopped: weights, AdamW moments,
    the data position (the window generator's state) and the losses so far (for the curve).
    About 3x the weights. torch.save keeps tied/shared tensors shared."""
    buffer = io.BytesIO()
    torch.save({"format": CHECKPOINT_FORMAT, "step": step,
                "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
                "optimizer": opt.state_dict(), "rng": batches.rng.bit_generator.state,
                "losses": losses[:step].detach().cpu(), "train_seconds": train_seconds}, buffer)
    return buffer.getvalue()


def _restore(data: bytes, model: NasLM, opt: torch.optim.Optimizer, batches: _Batches,
             losses: torch.Tensor) -> tuple[int, float]:
    """Load a `_checkpoint` in place; (its step, training seconds before it)."""
    saved = torch.load(io.BytesIO(data), weights_only=True)
    if saved.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"not a training checkpoint of format {CHECKPOINT_FORMAT}")
    model.load_state_dict(saved["model"])
    opt.load_state_dict(saved["optimizer"])
    batches.rng.bit_generator.state = saved["rng"]
    step = int(saved["step"])
    batches.step = step  # the GPU path drew every window up front from the seed
    losses[:step] = saved["losses"].to(losses.device)
    return step, float(saved["train_seconds"])


# ----- weights ---------------------------------------------------------------------------
def _unique_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """state_dict with every storage once: safetensors refuses aliased tensors (tied/shared)."""
    seen: set[tuple[int, int]] = set()
    unique: dict[str, torch.Tensor] = {}
    for name, tensor in model.state_dict().items():
        key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset())
        if key in seen:
            continue
        seen.add(key)
        unique[name] = tensor.detach().cpu().contiguous()
    return unique


def weights_to_bytes(model: torch.nn.Module) -> bytes:
    """safetensors bytes of the model's unique tensors (ties are restored by `build_model`)."""
    from safetensors.torch import save

    arch = getattr(model, "arch", None)
    metadata = {"architecture": arch.to_json()} if isinstance(arch, Architecture) else None
    return save(_unique_state(model), metadata=metadata)


def weights_from_bytes(arch: Architecture, data: bytes) -> NasLM:
    """Rebuild ``arch`` and load weights saved by `weights_to_bytes` (eval mode, CPU)."""
    from safetensors.torch import load

    saved = load(data)
    model = build_model(arch)
    expected = _unique_state(model)
    missing = sorted(set(expected) - set(saved))
    unexpected = sorted(set(saved) - set(expected))
    wrong = sorted(n for n in set(saved) & set(expected) if saved[n].shape != expected[n].shape)
    if missing or unexpected or wrong:
        raise ValueError(f"weights do not match {arch.describe()}: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}, wrong shape {wrong[:5]}")
    state = model.state_dict()
    with torch.no_grad():
        for name, tensor in saved.items():
            state[name].copy_(tensor)  # state_dict tensors alias the parameters, ties included
    return model.eval()
