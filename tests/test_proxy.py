"""Proxy training: learning, determinism, divergence, timeout, weights round trip."""

from __future__ import annotations

import io
import math
from pathlib import Path

import pytest
import safetensors.torch
import torch

from nas.architecture import Architecture
from nas.data import TokenData, prepare
from nas.errors import DataError
from nas.model import build_model
from nas.proxy import train, validation_loss, weights_from_bytes, weights_to_bytes
from nas.schedule import cooldown_steps, lr_schedule
from nas.specs import DataSpec, ProxyBudget

TINY = Architecture(n_layer=2, d_model=32, n_head=2, n_kv_head=2, max_seq_len=64)
BUDGET = ProxyBudget(tokens=8192, batch_size=8, seq_len=32, lr=1e-2, val_tokens=2048)


@pytest.fixture(scope="module")
def stdlib(tmp_path_factory: pytest.TempPathFactory) -> TokenData:
    return prepare(DataSpec(), tmp_path_factory.mktemp("cache"))


def test_loss_goes_down_on_real_text(stdlib: TokenData) -> None:
    seen: list[tuple[int, int, float]] = []
    result = train(TINY, BUDGET, stdlib, threads=1,
                   progress=lambda step, total, loss: seen.append((step, total, loss))).result
    assert result.status == "ok" and result.reason == ""
    assert result.val_loss < math.log(256) - 1.0  # clearly better than uniform over bytes
    assert result.curve[-1][1] < result.curve[0][1] - 1.0
    assert result.tokens == BUDGET.steps * BUDGET.batch_size * BUDGET.seq_len
    assert 0 < len(result.curve) <= 50 and result.curve[-1][0] == result.tokens
    assert result.tokens_per_s > 0 and result.seconds > 0 and result.device == "cpu"
    assert seen and seen[-1][:2] == (BUDGET.steps, BUDGET.steps)


def test_same_seed_same_result_and_threads_restored(stdlib: TokenData) -> None:
    before = torch.get_num_threads()
    a = train(TINY, BUDGET, stdlib, seed=3, threads=1).result
    b = train(TINY, BUDGET, stdlib, seed=3, threads=1).result
    c = train(TINY, BUDGET, stdlib, seed=4, threads=1).result
    assert torch.get_num_threads() == before
    assert a.val_loss == b.val_loss and a.curve == b.curve
    assert c.val_loss != a.val_loss


def test_divergence_is_a_status_not_an_exception(stdlib: TokenData) -> None:
    budget = ProxyBudget(tokens=16384, batch_size=8, seq_len=32, lr=1e4, warmup_frac=0.0,
                         val_tokens=2048)
    result = train(TINY, budget, stdlib, threads=1).result
    assert result.status == "diverged" and result.val_loss == float("inf")
    assert "step" in result.reason
    assert result.tokens < budget.tokens
    assert all(math.isfinite(loss) for _, loss in result.curve)  # storable as strict JSON


def test_max_seconds_gives_timeout_and_still_evaluates(stdlib: TokenData) -> None:
    budget = ProxyBudget(tokens=10_000_000, batch_size=8, seq_len=32, max_seconds=0.01,
                         val_tokens=2048)
    result = train(TINY, budget, stdlib, threads=1).result
    assert result.status == "timeout" and "max_seconds" in result.reason
    assert 0 < result.tokens < budget.tokens and math.isfinite(result.val_loss)


def test_lr_schedule_warms_up_then_decays() -> None:
    budget = ProxyBudget(lr=1.0, warmup_frac=0.1, min_lr_frac=0.1)
    lrs = lr_schedule(budget, 100)
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert lrs[-1] == pytest.approx(0.1) and all(a >= b for a, b in zip(lrs[9:], lrs[10:]))


def test_wsd_schedule_is_flat_then_decays_over_its_cooldown() -> None:
    budget = ProxyBudget(lr=1.0, warmup_frac=0.1, min_lr_frac=0.1, schedule="wsd", cooldown_frac=0.2)
    lrs = lr_schedule(budget, 100)
    assert lrs[:10] == pytest.approx([(i + 1) / 10 for i in range(10)])
    assert lrs[10:80] == [1.0] * 70  # stable
    assert lrs[80] < 1.0 and lrs[-1] == pytest.approx(0.1)
    assert all(a > b for a, b in zip(lrs[80:], lrs[81:]))  # linear, to the end
    steps = budget.steps
    assert cooldown_steps(budget, 50) == 10 and cooldown_steps(budget, steps) == 0
    assert cooldown_steps(ProxyBudget(), 50) == 0  # cosine: rungs are scored raw


WSD = ProxyBudget(tokens=8192, batch_size=8, seq_len=32, lr=1e-2, val_tokens=2048, schedule="wsd",
                  cooldown_frac=0.25)


def test_a_wsd_rung_is_scored_on_its_cooldown_branch_and_continues_bitwise(stdlib: TokenData) -> None:
    """The rung's model and score are the branch's; its checkpoint is not: going on from it
    gives the weights of training straight through (bitwise on CPU, one thread)."""
    rung = train(TINY, WSD, stdlib, seed=3, threads=1, stop_at=8)
    at_step = torch.load(io.BytesIO(rung.checkpoint), weights_only=True)["model"]
    branch = rung.model.state_dict()
    matrices = [k for k, v in at_step.items() if v.dim() == 2]
    assert matrices and not any(torch.equal(branch[k], at_step[k]) for k in matrices)  # trained on
    assert rung.result.val_loss == pytest.approx(validation_loss(rung.model, stdlib, WSD), abs=1e-6)
    assert rung.result.tokens == 8 * 8 * 32  # the position in the budget, not the branch
    resumed = train(TINY, WSD, stdlib, seed=3, threads=1, resume=rung.checkpoint)
    straight = train(TINY, WSD, stdlib, seed=3, threads=1)
    for (key, a), (_, b) in zip(resumed.model.state_dict().items(), straight.model.state_dict().items()):
        assert torch.equal(a, b), key
    assert resumed.result.val_loss == straight.result.val_loss


@pytest.mark.parametrize("arch", [
    TINY,
    Architecture(n_layer=2, d_model=32, n_head=2, n_kv_head=1, tie_embeddings=False),
    Architecture(n_layer=4, d_model=32, n_head=2, n_kv_head=2, sharing="all"),
    Architecture(n_layer=4, d_model=32, n_head=4, n_kv_head=2, sharing="repeat:2",
                 attention="sliding_window", window=8),
    Architecture(n_layer=2, d_model=32, n_head=2, n_kv_head=2, attention="linear",
                 tie_embeddings=False, sharing="all"),
], ids=lambda a: a.describe())
def test_weights_round_trip(arch: Architecture) -> None:
    model = build_model(arch, seed=1)
    with torch.no_grad():  # move away from the seed-0 init that weights_from_bytes starts from
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    blob = weights_to_bytes(model)
    restored = weights_from_bytes(arch, blob)
    ids = torch.randint(0, arch.vocab_size, (2, 16))
    with torch.no_grad():
        assert torch.equal(model.eval()(ids), restored(ids))
    if arch.tie_embeddings:
        assert restored.lm_head.weight is restored.embed_tokens.weight
    n_saved = sum(t.numel() for t in safetensors.torch.load(blob).values())
    assert n_saved == arch.n_params  # shared and tied tensors stored once


def test_corpus_smaller_than_one_batch_names_it(tmp_path: Path) -> None:
    small = tmp_path / "tiny.txt"
    small.write_text("a short text\n" * 10)
    data = prepare(DataSpec(corpus=(str(small),)), tmp_path / "cache")
    with pytest.raises(DataError, match="fewer than one batch") as err:
        train(TINY, BUDGET, data, threads=1)
    assert str(small) in str(err.value)


def test_weights_for_another_architecture_are_refused() -> None:
    blob = weights_to_bytes(build_model(TINY))
    with pytest.raises(ValueError, match="do not match"):
        weights_from_bytes(Architecture(n_layer=2, d_model=64, n_head=2, n_kv_head=2), blob)
