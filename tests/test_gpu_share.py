"""A training task's share of a GPU: the floor it checks, and the refusal a user reads.

The allocator cap itself (``torch.cuda.set_per_process_memory_fraction``) needs a GPU; these
tests pin the parts that decide whether a candidate is let onto one."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from harness import DATA
from nas.architecture import Architecture
from nas.data import prepare
from nas.evaluate import train_and_export
from nas.gpu_share import GpuShare, current_share, training_floor_bytes
from nas.model import build_model
from nas.proxy import make_optimizer
from nas.space import load_space

SPACE = load_space(DATA / "e2e.yaml")


def _arch() -> Architecture:
    return SPACE.sample_random(np.random.default_rng(0))


def test_the_floor_is_what_one_real_step_holds_besides_activations():
    """Weights, gradients and AdamW's moments after a real step, plus one fp32 logits tensor."""
    arch, budget = _arch(), SPACE.budget
    model = build_model(arch)
    optimizer = make_optimizer(model, budget)
    x = torch.randint(0, arch.vocab_size, (budget.batch_size, budget.seq_len))
    logits = model(x)
    torch.nn.functional.cross_entropy(logits.reshape(-1, arch.vocab_size), x.reshape(-1)).backward()
    optimizer.step()
    params = list({id(p): p for p in model.parameters()}.values())
    held = sum(p.numel() * p.element_size() for p in params)
    held += sum(p.grad.numel() * p.grad.element_size() for p in params if p.grad is not None)
    held += sum(t.numel() * t.element_size() for state in optimizer.state.values()
                for t in state.values() if torch.is_tensor(t) and t.dim() > 0)
    logits_bytes = budget.batch_size * budget.seq_len * arch.vocab_size * 4
    assert training_floor_bytes(arch, budget) == held + logits_bytes
    assert training_floor_bytes(arch, budget, teacher_params=1000) == held + logits_bytes + 4000


def test_a_share_refuses_a_candidate_whose_floor_does_not_fit_and_says_what_to_change():
    arch, budget = _arch(), SPACE.budget
    floor = training_floor_bytes(arch, budget)
    fits = GpuShare(0.25, total_bytes=4 * floor)
    assert fits.refusal(arch, budget) is None
    tight = GpuShare(0.25, total_bytes=4 * floor - 8)
    reason = tight.refusal(arch, budget)
    assert reason is not None
    assert f"{arch.n_params:,} parameters" in reason and "--gpus-per-trial 0.25" in reason
    assert f"{floor / 1e9:.2f} GB" in reason and "budget.batch_size" in reason
    assert tight.refusal(arch, budget, teacher_params=0) == reason
    assert "and the parent" in (fits.refusal(arch, budget, teacher_params=floor) or "")


def test_a_refused_candidate_is_never_trained():
    arch, budget = _arch(), SPACE.budget
    data = prepare(SPACE.data)
    share = GpuShare(0.5, total_bytes=training_floor_bytes(arch, budget))  # half of what it needs
    output = train_and_export(arch, budget, data, threads=1, export=False, gpu_share=share)
    assert not output.ok and output.proxy is None and output.timings == {"train": 0.0}
    assert output.error.startswith("refused before training: it needs at least")


@pytest.mark.parametrize("fraction", [0.0, 1.0, 2.0])
def test_whole_gpus_or_none_hold_no_share(fraction):
    assert current_share(fraction) is None


def test_a_fraction_without_a_gpu_holds_no_share_and_bad_fractions_are_refused():
    if not torch.cuda.is_available():
        assert current_share(0.25) is None
    for bad in (0.0, 1.5, float("nan")):
        with pytest.raises(ValueError, match="fraction="):
            GpuShare(bad, total_bytes=1)
