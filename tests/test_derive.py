"""`nas.derive`: a candidate's initial weights from a parent (importance, pruning, kv pooling,
block merging), checked against parents that transformers and `nas.checkpoint` really write."""

from __future__ import annotations

import dataclasses
import json
import math
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from nas.architecture import Architecture
from nas.checkpoint import read_checkpoint
from nas.derivation import Derivation, Importance, beyond_parent, check_derivable, plan
from nas.derive import derive, parent_importance
from nas.errors import ConfigError
from nas.model import NasLM, apply_rotary, build_model, rotary_cos_sin, unique_parameter_count
from tests.parents import VOCAB, hf_config, hf_parent, nas_parent
from tests.tiny_models import one_thread, tiny  # noqa: F401 - fixture


def _ids(length: int = 12, vocab: int = VOCAB, rows: int = 2, seed: int = 5) -> torch.Tensor:
    return torch.randint(0, vocab, (rows, length), generator=torch.Generator().manual_seed(seed))


def _importance(model: NasLM, **replace: Any) -> Importance:
    imp = parent_importance(model, _ids(16, model.arch.vocab_size, rows=4, seed=1))
    return dataclasses.replace(imp, **replace)


def _derive(parent: NasLM, arch: Architecture, imp: Importance | None = None,
            **kw: Any) -> tuple[NasLM, Derivation]:
    return derive(parent, imp or _importance(parent), arch, parent_id="parent", **kw)


def _scrambled(arch: Architecture, seed: int = 3) -> NasLM:
    """A parent of our own with norm weights away from 1, so a misplaced norm shows."""
    model = build_model(arch, seed=seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name:
                param.add_(0.2 * torch.randn(param.shape, generator=torch.Generator().manual_seed(7)))
    return model


# ----- identity and exact cases -----------------------------------------------------------
@pytest.mark.parametrize("kind,overrides", [
    ("llama", {}),  # GQA 4/2, tied
    ("llama", {"num_key_value_heads": 4, "tie_word_embeddings": False}),  # MHA: n_kv == n_head
    ("mistral", {"tie_word_embeddings": False}),  # sliding window
])
def test_the_identity_derivation_reproduces_a_transformers_parent(kind: str, overrides: dict[str, Any],
                                                                  tmp_path: Path) -> None:
    hf = hf_parent(tmp_path, hf_config(kind, **overrides))
    parent = read_checkpoint(tmp_path)
    model, record = _derive(parent.model, parent.architecture)
    assert model.arch == parent.architecture
    assert record.kv_pooling == 1 and record.blocks == ((0,), (1,))
    ids = _ids(12)  # longer than the Mistral window
    with torch.no_grad():
        # Every weight is copied, not recomputed: the same math on the same numbers, bitwise.
        assert torch.equal(model(ids), parent.model(ids))
        # transformers computes in another order: the tolerance of tests/test_checkpoint.py.
        torch.testing.assert_close(model(ids), hf(ids).logits, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("arch", [tiny(sharing="repeat:2", n_layer=4, vocab_size=256),
                                  tiny("linear", tie_embeddings=False, vocab_size=256)],
                         ids=lambda a: a.describe())
def test_the_identity_derivation_of_our_own_checkpoint(arch: Architecture, tmp_path: Path) -> None:
    nas_parent(tmp_path, _scrambled(arch))
    parent = read_checkpoint(tmp_path)
    model, record = _derive(parent.model, parent.architecture)
    if arch.sharing == "repeat:2":  # each shared block replaces two applications of one parent block
        assert record.blocks == ((0, 1), (2, 3))
    ids = _ids(10, 256)
    with torch.no_grad():
        assert torch.equal(model(ids), parent.model(ids))


def test_gqa_pooling_is_the_mean_of_the_kv_heads_it_merges(tmp_path: Path) -> None:
    hf_parent(tmp_path, hf_config(num_key_value_heads=2))
    parent = read_checkpoint(tmp_path).model
    hd = parent.arch.head_dim
    model, record = _derive(parent, dataclasses.replace(parent.arch, n_kv_head=1))
    assert record.kv_pooling == 2 and record.n_kv_head == (2, 1)
    for ours, theirs in zip(model.layers, parent.layers, strict=True):
        for name in ("k_proj", "v_proj"):
            heads = getattr(theirs.self_attn, name).weight.detach().view(2, hd, -1)  # (KV, hd, d)
            torch.testing.assert_close(getattr(ours.self_attn, name).weight, heads.mean(0),
                                       rtol=0, atol=1e-7)
        # Every query head is kept: q and o are the parent's, untouched.
        assert torch.equal(ours.self_attn.q_proj.weight, theirs.self_attn.q_proj.weight)
        assert torch.equal(ours.self_attn.o_proj.weight, theirs.self_attn.o_proj.weight)


@pytest.mark.parametrize("head_scores,weights", [
    ((5, 4, 3, 2, 0, 0, 0, 0), {0: 1.0}),  # all kept heads read kv head 0: it alone, exactly
    ((5, 4, 3, 0, 2, 0, 0, 0), {0: 0.75, 1: 0.25}),  # 3 read kv head 0, 1 reads kv head 1
])
def test_pooling_weighs_the_kv_heads_the_kept_query_heads_read(head_scores: tuple[int, ...],
                                                               weights: dict[int, float]) -> None:
    arch = Architecture(n_layer=1, d_model=64, n_head=8, n_kv_head=2, vocab_size=VOCAB, max_seq_len=32)
    parent = _scrambled(arch)
    imp = _importance(parent, channels=tuple(float(64 - i) for i in range(64)),  # keep 0..31
                      heads=(tuple(map(float, head_scores)),))
    model, record = _derive(parent, dataclasses.replace(arch, d_model=32, n_head=4, n_kv_head=1), imp)
    assert record.kv_pooling == len(weights)
    heads = parent.layers[0].self_attn.k_proj.weight.detach()[:, :32].view(2, 8, 32)  # (KV, hd, d')
    expected = sum(w * heads[kv] for kv, w in weights.items())
    torch.testing.assert_close(model.layers[0].self_attn.k_proj.weight, expected, rtol=0, atol=1e-7)


def test_mha_to_smaller_mha_is_exact_head_pruning() -> None:
    """Heads 1 and 3 matter most: the candidate's two heads are exactly those (q, k, v rows and
    o columns), each with its own kv head, not a mean."""
    arch = tiny(n_kv_head=4)  # d 32, 4 heads of 8
    parent = _scrambled(arch)
    d = arch.d_model
    imp = _importance(parent, channels=tuple(float(d - i) for i in range(d)),  # keep channels 0..15
                      heads=((0.1, 5.0, 0.2, 3.0),) * arch.n_layer)
    model, record = _derive(parent, tiny(d_model=16, n_head=2, n_kv_head=2), imp)
    assert record.kv_pooling == 1 and record.head_dim == (8, 8)
    rows = torch.cat([torch.arange(8, 16), torch.arange(24, 32)])  # heads 1 and 3
    for ours, theirs in zip(model.layers, parent.layers, strict=True):
        for name in ("q_proj", "k_proj", "v_proj"):
            expected = getattr(theirs.self_attn, name).weight[rows][:, :16]
            assert torch.equal(getattr(ours.self_attn, name).weight, expected), name
        assert torch.equal(ours.self_attn.o_proj.weight, theirs.self_attn.o_proj.weight[:16][:, rows])


def test_pruning_what_a_parent_never_uses_computes_what_it_computes() -> None:
    """A parent whose residual channels 16..31 stay zero, whose kv head 1 (read by heads 2, 3)
    has zero values and whose FFN channels 64..127 have zero gates: importance finds exactly
    those dead, and the candidate without them (d 16, 2 heads / 1 kv head, ffn 64) gives the
    parent's logits. The RMSNorm rescale is what makes that exact: the candidate's norms see 16
    channels, the parent's 32 (exact but for the norms' epsilon, made negligible here)."""
    arch = tiny(ffn_mult=4.0, rms_norm_eps=1e-12)  # d 32, 4 heads of 8 / 2 kv heads, ffn 128
    parent = _scrambled(arch)
    with torch.no_grad():
        parent.embed_tokens.weight[:, 16:] = 0.0
        for block in parent.layers:
            block.self_attn.o_proj.weight[16:] = 0.0
            block.mlp.down_proj.weight[16:] = 0.0
            block.self_attn.v_proj.weight[8:] = 0.0  # kv head 1
            block.mlp.gate_proj.weight[64:] = 0.0
    imp = parent_importance(parent, _ids(16, rows=4))
    assert imp.channels[16:] == (0.0,) * 16 and min(imp.channels[:16]) > 0
    model, record = _derive(parent, tiny(d_model=16, n_head=2, n_kv_head=1, ffn_mult=4.0), imp)
    assert record.kv_pooling == 1
    ids = _ids(12)
    with torch.no_grad():
        torch.testing.assert_close(model(ids), parent(ids), rtol=1e-5, atol=1e-5)


def test_head_dim_pruning_keeps_the_rotary_frequencies() -> None:
    """head_dim 16 -> 8 (d_model 64 -> 32, all 4 heads kept). In a parent whose dropped rotary
    pairs (odd i, and their partners i + 8) are zero in q and k, the candidate's attention
    scores at every position pair are the parent's times m = 2 (the documented q factor): a kept
    pair turning at any other frequency, or a wrong partner, would break that."""
    arch = Architecture(n_layer=1, d_model=64, n_head=4, n_kv_head=2, vocab_size=64, max_seq_len=32)
    parent = _scrambled(arch)
    hd = arch.head_dim
    dropped = torch.tensor([i for i in range(hd) if (i % (hd // 2)) % 2])  # odd pairs, both halves
    with torch.no_grad():
        for name in ("q_proj", "k_proj"):
            w = getattr(parent.layers[0].self_attn, name).weight
            w.view(-1, hd, arch.d_model)[:, dropped] = 0.0
    imp = _importance(parent, channels=tuple(float(64 - i) for i in range(64)))  # keep 0..31
    cand_arch = dataclasses.replace(arch, d_model=32)
    model, record = _derive(parent, cand_arch, imp)
    assert record.head_dim == (16, 8)

    def scores(m: NasLM, x: torch.Tensor) -> torch.Tensor:
        a, attn = m.arch, m.layers[0].self_attn
        b, t, _ = x.shape
        pos = torch.arange(t).expand(b, t)
        cos, sin = rotary_cos_sin(pos, a.head_dim, x.dtype, a.rope_theta)
        q = apply_rotary(attn.q_proj(x).view(b, t, a.n_head, -1).transpose(1, 2), cos, sin)
        k = apply_rotary(attn.k_proj(x).view(b, t, a.n_kv_head, -1).transpose(1, 2), cos, sin)
        k = k.repeat_interleave(a.n_head // a.n_kv_head, dim=1)
        return q @ k.transpose(-1, -2) / math.sqrt(a.head_dim)  # (B, H, T, T)

    x = torch.randn(2, 24, 64, generator=torch.Generator().manual_seed(2))
    x[..., 32:] = 0.0  # the dropped residual channels
    with torch.no_grad():
        torch.testing.assert_close(scores(model, x[..., :32]), 2 * scores(parent, x), rtol=1e-5, atol=1e-5)


def test_depth_by_importance_drops_the_blocks_that_do_nothing() -> None:
    """Blocks 0 and 2 write nothing into the residual stream (zero o_proj and down_proj): their
    block influence is 0, importance keeps 1 and 3 (uniform would keep 0 and 3), and the
    candidate computes exactly what the parent computes."""
    arch = tiny(n_layer=4)
    parent = _scrambled(arch)
    with torch.no_grad():
        for i in (0, 2):
            parent.layers[i].self_attn.o_proj.weight.zero_()
            parent.layers[i].mlp.down_proj.weight.zero_()
    imp = parent_importance(parent, _ids(16, rows=4))
    assert max(abs(imp.block[0]), abs(imp.block[2])) < 1e-12 and min(imp.block[1], imp.block[3]) > 1e-3
    model, record = _derive(parent, tiny(n_layer=2), imp)
    assert record.blocks == ((1,), (3,))
    assert _derive(parent, tiny(n_layer=2), imp, depth="uniform")[1].blocks == ((0,), (3,))
    ids = _ids(12)
    with torch.no_grad():
        torch.testing.assert_close(model(ids), parent(ids), rtol=1e-6, atol=1e-6)


# ----- shapes and counts --------------------------------------------------------------------
PARENT = Architecture(n_layer=4, d_model=64, n_head=8, n_kv_head=4, vocab_size=VOCAB, max_seq_len=32,
                      tie_embeddings=False)
VARIANTS = [dict(n_layer=2), dict(d_model=32), dict(d_model=32, n_head=4, n_kv_head=2),
            dict(n_kv_head=2), dict(n_kv_head=1), dict(ffn_mult=2.0), dict(sharing="repeat:2"),
            dict(sharing="all", n_layer=3), dict(tie_embeddings=True),
            dict(attention="linear", n_kv_head=2), dict(attention="sliding_window", window=4),
            dict(n_layer=2, d_model=48, n_head=6, n_kv_head=2, ffn_mult=3.0, sharing="repeat:2",
                 tie_embeddings=True)]


@pytest.mark.parametrize("tied_parent", [False, True])
def test_derived_parameters_are_the_architectures(tied_parent: bool) -> None:
    parent = _scrambled(dataclasses.replace(PARENT, tie_embeddings=tied_parent))
    imp = _importance(parent)
    for variant in VARIANTS:
        arch = Architecture(**{**PARENT.to_dict(), **variant})
        for depth in ("importance", "uniform"):
            model, record = derive(parent, imp, arch, parent_id="p", depth=depth)
            assert unique_parameter_count(model) == arch.n_params == record.params[1], variant
            assert plan(parent.arch, imp, arch, parent_id="p", depth=depth) == record
            assert len(record.blocks) == arch.n_unique_blocks
            assert sum(map(len, record.blocks)) == arch.n_layer
            with torch.no_grad():
                assert torch.isfinite(model(_ids())).all()


def test_an_untied_candidate_of_a_tied_parent_copies_the_embedding() -> None:
    parent = _scrambled(tiny())
    model, _ = _derive(parent, tiny(tie_embeddings=False))
    assert torch.equal(model.lm_head.weight, parent.embed_tokens.weight)
    assert model.lm_head.weight.data_ptr() != model.embed_tokens.weight.data_ptr()


def test_derive_leaves_the_parent_alone_and_repeats_itself() -> None:
    parent = _scrambled(PARENT)
    before = {k: v.clone() for k, v in parent.state_dict().items()}
    imp = _importance(parent)
    arch = Architecture(**{**PARENT.to_dict(), **VARIANTS[-1]})
    first, record = derive(parent, imp, arch, parent_id="p")
    second, again = derive(parent, imp, arch, parent_id="p")
    assert record == again
    for key, value in first.state_dict().items():
        assert torch.equal(value, second.state_dict()[key]), key
    for key, value in parent.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_the_candidate_inherits_the_parents_epsilon_and_rotary_base() -> None:
    parent = _scrambled(tiny(rms_norm_eps=1e-6, rope_theta=500000.0))
    model, _ = _derive(parent, tiny(d_model=16, n_head=2, n_kv_head=1))
    assert (model.arch.rms_norm_eps, model.arch.rope_theta) == (1e-6, 500000.0)


def test_records_round_trip_through_json() -> None:
    parent = _scrambled(PARENT)
    imp = _importance(parent)
    assert Importance.from_dict(json.loads(json.dumps(imp.to_dict()))) == imp
    _, record = derive(parent, imp, Architecture(**{**PARENT.to_dict(), **VARIANTS[-1]}), parent_id="ab12")
    assert Derivation.from_dict(json.loads(json.dumps(record.to_dict()))) == record
    assert record.describe() == ("from ab12: blocks (1+2) by importance; d 64→48, heads 8/kv4→6/kv2 "
                                 "(kv pooled ×2), head_dim 8, ffn 256→144, untied→tied; "
                                 f"{record.params[0] / 1e3:.0f}k→{record.params[1] / 1e3:.0f}k params "
                                 f"({100 * record.params[1] / record.params[0]:.0f}%)")
    stale = r"importance.block has shape \(2,\), the parent L4 d64 h8/kv4 .* needs \(4,\)"
    with pytest.raises(ConfigError, match=stale):
        derive(parent, _importance(_scrambled(tiny())), PARENT, parent_id="p")


# ----- what cannot be derived ---------------------------------------------------------------
@pytest.mark.parametrize("change,message", [
    ({"n_layer": 5}, r"n_layer=5 is more than the parent's 4 layers"),
    ({"d_model": 96, "n_head": 12, "n_kv_head": 4},
     r"d_model=96 is more than the parent's 64 residual channels"),
    ({"n_head": 16, "n_kv_head": 4, "d_model": 64}, r"n_head=16 is more than the parent's 8 query heads"),
    ({"n_kv_head": 8}, r"n_kv_head=8 must divide the parent's n_kv_head=4"),
    ({"n_head": 6, "n_kv_head": 3, "d_model": 48}, r"n_kv_head=3 must divide the parent's n_kv_head=4"),
    ({"vocab_size": 128}, r"vocab_size=128 differs from the parent's vocab_size=64"),
    ({"max_seq_len": 64}, r"max_seq_len=64 is more than the parent's 32 positions"),
    ({"rope_theta": 5e5}, r"rope_theta=500000.0 differs from the parent's rope_theta=10000.0"),
    ({"n_head": 4, "n_kv_head": 2}, r"n_head=4 gives head_dim=d_model/n_head=16 at d_model=64, which "
                                    r"must divide the parent's head_dim=8"),
    ({"d_model": 48, "n_head": 8}, r"n_head=8 gives head_dim=d_model/n_head=6 at d_model=48, which "
                                   r"must divide the parent's head_dim=8"),
    ({"ffn_mult": 5.0}, r"ffn_mult=5 gives 320 FFN channels at d_model=64, more than the parent's 256"),
])
def test_values_beyond_the_parent_are_refused_naming_field_and_value(change: dict[str, Any],
                                                                     message: str) -> None:
    arch = Architecture(**{**PARENT.to_dict(), **change})
    field = re.match(r"(\w+)=", message).group(1)  # type: ignore[union-attr]
    with pytest.raises(ConfigError, match=f"^{message}") as err:
        check_derivable(PARENT, arch)
    assert err.value.field == field and err.value.value == getattr(arch, field)
    if field not in ("n_head", "ffn_mult"):  # those two are refused for the combination only
        reason = beyond_parent(PARENT, field, getattr(arch, field))
        assert reason and f"{field}={getattr(arch, field)!r} {reason}" == str(err.value)
    parent = _scrambled(PARENT)
    if field == "rope_theta":  # derive gives the candidate the parent's (`candidate_architecture`)
        assert _derive(parent, arch)[0].arch.rope_theta == PARENT.rope_theta
    else:
        with pytest.raises(ConfigError, match=f"^{message}"):
            _derive(parent, arch)


def test_values_within_the_parent_are_derivable() -> None:
    for field, value in [("n_layer", 1), ("d_model", 8), ("n_head", 1), ("n_kv_head", 2), ("ffn_mult", 9.0),
                         ("attention", "linear"), ("window", 1000), ("sharing", "all"),
                         ("tie_embeddings", True), ("vocab_size", VOCAB), ("max_seq_len", 32)]:
        assert beyond_parent(PARENT, field, value) is None, field
    with pytest.raises(KeyError):
        beyond_parent(PARENT, "n_layers", 2)
    parent = _scrambled(PARENT)
    with pytest.raises(ConfigError, match=r"^depth='random' must be one of importance, uniform"):
        _derive(parent, PARENT, depth="random")


def test_checking_derivability_imports_no_torch() -> None:
    code = ("import sys; from nas.derivation import check_derivable; "
            "from nas.architecture import Architecture; "
            "check_derivable(Architecture(), Architecture(n_layer=1)); assert 'torch' not in sys.modules")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr


# ----- on real text ---------------------------------------------------------------------------
def test_a_derived_candidate_starts_near_its_trained_parent(tmp_path: Path) -> None:
    """A parent trained briefly on the embedded corpus (byte tokens), written and read back as a
    checkpoint, derived at half its width (head_dim halved too) with no training: its
    validation loss is much nearer the parent's than a fresh initialisation's."""
    from nas.data import prepare
    from nas.proxy import train, validation_loss
    from nas.specs import DataSpec, ProxyBudget

    data = prepare(DataSpec(), tmp_path / "cache")
    arch = Architecture(n_layer=2, d_model=64, n_head=4, vocab_size=256, max_seq_len=64)
    budget = ProxyBudget(tokens=120 * 8 * 64, batch_size=8, seq_len=64, val_tokens=8192)
    trained = train(arch, budget, data, device="cpu", threads=1).model
    nas_parent(tmp_path / "parent", trained)
    parent = read_checkpoint(tmp_path / "parent").model
    calibration = torch.from_numpy(data.train[:8 * 64].astype(np.int64)).view(8, 64)
    half = dataclasses.replace(arch, d_model=32)
    model, _ = derive(parent, parent_importance(parent, calibration), half, parent_id="p")
    parent_loss = validation_loss(parent, data, budget)
    derived, fresh = validation_loss(model, data, budget), validation_loss(build_model(half), data, budget)
    assert derived - parent_loss < 0.5 * (fresh - parent_loss), (parent_loss, derived, fresh)
