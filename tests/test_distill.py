"""Distillation in the proxy trainer: the loss, val_kl, rungs, settings and the teacher cache."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from nas.data import TokenData, validation_batches
from nas.distill import TeacherCache, build_teacher_cache, kl_mean, log_probs, topk_kl_mean, topk_of
from nas.errors import ArchitectureError, ConfigError
from nas.model import build_model
from nas.proxy import _Batches, make_optimizer, train, validation_scores
from nas.space import load_space
from nas.specs import ProxyBudget
from tests.tiny_models import one_thread, tiny  # noqa: F401  (one_thread: autouse fixture)

VOCAB = 64
STUDENT = tiny(n_layer=1, d_model=16, n_head=2, n_kv_head=1)
TEACHER_ARCH = tiny()
BUDGET = ProxyBudget(tokens=4096, batch_size=8, seq_len=16, lr=3e-2, warmup_frac=0.0,
                     val_tokens=1024)


def _markov_tokens(n: int, seed: int) -> np.ndarray:
    """A sparse random bigram chain: learnable, so a trained teacher has a non-uniform opinion."""
    rng = np.random.default_rng(0)
    table = rng.dirichlet(np.full(VOCAB, 0.1), size=VOCAB)  # the same chain for both splits
    cumulative = table.cumsum(axis=1)
    draws = np.random.default_rng(seed).random(n)
    out = np.empty(n, dtype=np.uint8)
    token = 0
    for i in range(n):
        token = min(int(np.searchsorted(cumulative[token], draws[i])), VOCAB - 1)
        out[i] = token
    return out


@pytest.fixture(scope="module")
def data() -> TokenData:
    return TokenData(_markov_tokens(40_000, 1), _markov_tokens(4_000, 2), VOCAB, "synthetic",
                     "bigram chain", "synthetic-bigram")


@pytest.fixture(scope="module")
def teacher(data: TokenData) -> torch.nn.Module:
    budget = dataclasses.replace(BUDGET, tokens=32_768)
    return train(TEACHER_ARCH, budget, data, threads=1, seed=5).model


def _weights_equal(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def _first_batch(data: TokenData, budget: ProxyBudget, seed: int) -> torch.Tensor:
    return _Batches(data.train, budget, seed, torch.device("cpu")).next()[0]


# ----- the loss ------------------------------------------------------------------------------
def test_a_distillation_step_lowers_the_kl_on_its_batch(data: TokenData, teacher) -> None:
    budget = dataclasses.replace(BUDGET, tokens=BUDGET.batch_size * BUDGET.seq_len,
                                 distill_weight=1.0)  # one step, KL only
    x = _first_batch(data, budget, seed=0)
    student = build_model(STUDENT)
    with torch.no_grad():
        before = float(kl_mean(teacher(x).flatten(0, 1), log_probs(student(x).flatten(0, 1))))
    stepped = train(STUDENT, budget, data, threads=1, model=student, teacher=teacher).model
    with torch.no_grad():
        after = float(kl_mean(teacher(x).flatten(0, 1), log_probs(stepped(x).flatten(0, 1))))
    assert before > 0.1  # the trained teacher is far from a fresh student
    assert after < before - 0.05


def test_a_step_is_the_mixed_loss_of_the_formula(data: TokenData, teacher) -> None:
    """One step of train against one written out: w * T^2 * KL(t/T || s/T) + (1 - w) * CE."""
    w, temp = 0.3, 2.0
    budget = dataclasses.replace(BUDGET, tokens=BUDGET.batch_size * BUDGET.seq_len,
                                 distill_weight=w, distill_temperature=temp, grad_clip=0.0)
    teacher_before = {k: v.clone() for k, v in teacher.state_dict().items()}
    stepped = train(STUDENT, budget, data, threads=1, teacher=teacher).model
    x, y = _Batches(data.train, budget, 0, torch.device("cpu")).next()
    by_hand = build_model(STUDENT)
    opt = make_optimizer(by_hand, budget)
    s = by_hand(x).flatten(0, 1)
    with torch.no_grad():
        t = teacher(x).flatten(0, 1)
    p_t = F.softmax(t / temp, -1)
    kl = (p_t * (p_t.log() - F.log_softmax(s / temp, -1))).sum(-1).mean()
    (w * temp**2 * kl + (1 - w) * F.cross_entropy(s, y.flatten())).backward()
    opt.step()
    # Adam divides by sqrt(v): where a gradient is ~0 a last-bit difference in its reduction
    # order (train runs on one thread, this test on the default) moves a weight by ~1e-5.
    for name, value in by_hand.state_dict().items():
        torch.testing.assert_close(stepped.state_dict()[name], value, rtol=1e-4, atol=5e-5)
    # The parent is read, never written: no gradients, same weights.
    assert all(p.grad is None for p in teacher.parameters())
    assert all(torch.equal(v, teacher_before[k]) for k, v in teacher.state_dict().items())


def test_zero_weight_is_plain_training_bitwise(data: TokenData, teacher) -> None:
    plain = train(STUDENT, BUDGET, data, threads=1)
    zero = train(STUDENT, dataclasses.replace(BUDGET, distill_weight=0.0), data, threads=1,
                 teacher=teacher)
    assert _weights_equal(plain.model, zero.model)
    assert zero.result.val_loss == plain.result.val_loss and zero.result.curve == plain.result.curve
    mixed = train(STUDENT, BUDGET, data, threads=1, teacher=teacher)  # w = 0.5 does change it
    assert not _weights_equal(plain.model, mixed.model)


def test_distilled_student_is_closer_to_its_teacher(data: TokenData, teacher) -> None:
    plain = train(STUDENT, BUDGET, data, threads=1)
    distilled = train(STUDENT, BUDGET, data, threads=1, teacher=teacher)
    _, plain_kl = validation_scores(plain.model, data, BUDGET, teacher=teacher)
    assert distilled.result.val_kl is not None and plain_kl is not None
    assert distilled.result.val_kl < 0.8 * plain_kl
    # The curve stays cross-entropy: comparable with from-scratch runs, same scale.
    assert abs(distilled.result.curve[-1][1] - plain.result.curve[-1][1]) < 0.5


def test_val_kl_is_the_kl_on_the_validation_tokens(data: TokenData, teacher) -> None:
    plain = train(STUDENT, BUDGET, data, threads=1).result
    assert plain.val_kl is None
    run = train(STUDENT, BUDGET, data, threads=1, teacher=teacher)
    batches = validation_batches(data, BUDGET)
    x, y = torch.from_numpy(batches.inputs), torch.from_numpy(batches.targets)
    with torch.no_grad():
        s = F.log_softmax(run.model(x).double(), -1)
        t = F.log_softmax(teacher(x).double(), -1)
    expected_kl = float((t.exp() * (t - s)).sum(-1).mean())
    expected_ce = float(-s.gather(-1, y[..., None]).mean())
    assert run.result.val_kl == pytest.approx(expected_kl, rel=1e-4)
    assert run.result.val_loss == pytest.approx(expected_ce, rel=1e-5)  # still plain CE
    assert validation_scores(teacher, data, BUDGET, teacher=teacher)[1] == pytest.approx(0, abs=1e-6)


@pytest.mark.parametrize("stop_at", [1, 3])
def test_continuing_with_a_teacher_is_bitwise(data: TokenData, teacher, stop_at: int) -> None:
    straight = train(STUDENT, BUDGET, data, threads=1, teacher=teacher)
    first = train(STUDENT, BUDGET, data, threads=1, teacher=teacher, stop_at=stop_at)
    assert first.checkpoint is not None and first.result.val_kl is not None
    rest = train(STUDENT, BUDGET, data, threads=1, teacher=teacher, resume=first.checkpoint)
    assert _weights_equal(rest.model, straight.model)
    assert rest.result.val_loss == straight.result.val_loss
    assert rest.result.val_kl == straight.result.val_kl and rest.result.curve == straight.result.curve
    without = train(STUDENT, BUDGET, data, threads=1, resume=first.checkpoint)  # teacher forgotten
    assert not _weights_equal(without.model, straight.model)


# ----- settings --------------------------------------------------------------------------------
@pytest.mark.parametrize(("name", "value"), [
    ("distill_weight", -0.1), ("distill_weight", 1.5), ("distill_weight", True),
    ("distill_weight", float("nan")), ("distill_temperature", 0.0),
    ("distill_temperature", -2.0), ("distill_temperature", float("inf")),
])
def test_bad_distill_settings_name_the_field(name: str, value: float) -> None:
    with pytest.raises(ConfigError) as err:
        ProxyBudget.from_dict({name: value}, source="space.yaml")
    assert err.value.field == f"budget.{name}" and f"budget.{name}={value!r}" in str(err.value)
    assert str(err.value).startswith("space.yaml: ")


def test_teacher_with_another_vocabulary_is_refused(data: TokenData) -> None:
    other = build_model(tiny(vocab_size=128))
    with pytest.raises(ArchitectureError, match="vocab_size=128") as err:
        train(STUDENT, BUDGET, data, threads=1, teacher=other)
    assert err.value.field == "vocab_size"


def test_default_budget_serialises_as_before_so_space_hashes_stay() -> None:
    before = {"tokens": 500_000, "batch_size": 16, "seq_len": 64, "lr": 3e-3, "warmup_frac": 0.1,
              "min_lr_frac": 0.1, "weight_decay": 0.1, "grad_clip": 1.0, "max_seconds": None,
              "val_tokens": 32_768}
    assert ProxyBudget().to_dict() == before
    changed = ProxyBudget(distill_weight=0.25, distill_temperature=2.0)
    assert changed.to_dict() == {**before, "distill_weight": 0.25, "distill_temperature": 2.0}
    assert ProxyBudget.from_dict(changed.to_dict()) == changed
    # Computed with the code before distillation existed (git archive of a1398ad); slm's changed
    # since, with its file (workload profiles, issue 16), and is pinned at that file.
    assert load_space("tiny").hash == "0497deb8a147169c"
    assert load_space("slm").hash == "5e781cd02f65c1af"


# ----- the teacher cache ---------------------------------------------------------------------
def test_topk_kl_is_exact_at_full_k_and_a_lower_bound_below() -> None:
    gen = torch.Generator().manual_seed(0)
    t, s = torch.randn(40, VOCAB, generator=gen) * 3, torch.randn(40, VOCAB, generator=gen) * 3
    for temperature in (1.0, 2.5):
        s_logp = log_probs(s, temperature)
        full = float(kl_mean(t, s_logp, temperature))
        idx, vals, rest = topk_of(t, VOCAB, temperature, torch.float32)
        assert rest is None
        exact = float(topk_kl_mean(s_logp, idx.long(), vals, rest, temperature))
        assert exact == pytest.approx(full, rel=1e-5)
        idx, vals, rest = topk_of(t, 8, temperature, torch.float32)
        bucketed = float(topk_kl_mean(s_logp, idx.long(), vals, rest, temperature))
        assert bucketed == pytest.approx(_bucketed_kl(t, s, 8, temperature), rel=1e-5)
        assert 0 < bucketed < full  # data-processing inequality
    # A student certain of the teacher's top-k (its rest rounds to 0) gets a large, finite loss.
    idx, vals, rest = topk_of(t, 8, 1.0, torch.float32)
    certain = torch.full_like(s, -1e4).scatter(-1, idx.long(), 0.0).requires_grad_()
    loss = topk_kl_mean(log_probs(certain), idx.long(), vals, rest)
    loss.backward()
    assert math.isfinite(loss.item()) and loss.item() > 1 and torch.isfinite(certain.grad).all()


def _bucketed_kl(t: torch.Tensor, s: torch.Tensor, k: int, temperature: float) -> float:
    """KL of the two distributions lumped into the teacher's top-k tokens + one rest bucket."""
    p, q = (F.softmax(x.double() / temperature, -1) for x in (t, s))
    top = t.topk(k, -1).indices
    p_top, q_top = p.gather(-1, top), q.gather(-1, top)
    p_b = torch.cat([p_top, 1 - p_top.sum(-1, keepdim=True)], -1)
    q_b = torch.cat([q_top, 1 - q_top.sum(-1, keepdim=True)], -1)
    return float((p_b * (p_b / q_b).log()).sum(-1).mean())


def test_cache_at_full_k_trains_like_the_teacher(data: TokenData, teacher) -> None:
    budget = dataclasses.replace(BUDGET, distill_temperature=2.0)
    cache = build_teacher_cache(teacher, budget, data, k=VOCAB, threads=1, value_dtype=torch.float32)
    live = train(STUDENT, budget, data, threads=1, teacher=teacher).result
    cached = train(STUDENT, budget, data, threads=1, teacher_cache=cache).result
    assert cached.val_loss == pytest.approx(live.val_loss, rel=1e-4)
    assert cached.val_kl == pytest.approx(live.val_kl, rel=1e-3)
    assert [c for _, c in cached.curve] == pytest.approx([c for _, c in live.curve], rel=1e-4)


def test_cache_at_small_k_distils_and_survives_bytes(data: TokenData, teacher) -> None:
    cache = build_teacher_cache(teacher, BUDGET, data, k=8, threads=1)
    assert cache.steps == BUDGET.steps and cache.k == 8
    assert cache.mb_per_million_tokens() == pytest.approx(8 * 2 + 8 * 2 + 2)  # int16 + fp16 + rest
    again = TeacherCache.from_bytes(cache.to_bytes())
    first = train(STUDENT, BUDGET, data, threads=1, teacher_cache=cache).result
    second = train(STUDENT, BUDGET, data, threads=1, teacher_cache=again).result
    assert first.val_loss == second.val_loss and first.val_kl == second.val_kl
    _, plain_kl = validation_scores(train(STUDENT, BUDGET, data, threads=1).model, data, BUDGET,
                                    teacher_cache=cache)
    assert first.val_kl is not None and plain_kl is not None and first.val_kl < 0.8 * plain_kl


def test_cache_for_another_run_is_refused(data: TokenData, teacher) -> None:
    cache = build_teacher_cache(teacher, BUDGET, data, k=4, threads=1)
    with pytest.raises(ValueError, match="seed: cache 0, run 1"):
        train(STUDENT, BUDGET, data, threads=1, seed=1, teacher_cache=cache)
    longer = dataclasses.replace(BUDGET, tokens=2 * BUDGET.tokens)
    with pytest.raises(ValueError, match="steps: cache covers"):
        train(STUDENT, longer, data, threads=1, teacher_cache=cache)
    with pytest.raises(ValueError, match="not both"):
        train(STUDENT, BUDGET, data, threads=1, teacher=teacher, teacher_cache=cache)
    assert math.isfinite(train(STUDENT, BUDGET, data, threads=1, teacher_cache=cache).result.val_loss)
