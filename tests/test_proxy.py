"""Proxy training: learning, determinism, divergence, timeout, weights round trip."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import safetensors.torch
import torch

from nas.architecture import Architecture
from nas.data import TokenData, prepare
from nas.errors import DataError
from nas.model import build_model
from nas.proxy import lr_schedule, train, weights_from_bytes, weights_to_bytes
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
