"""The PyTorch decoder: exact parameter counts, attention kinds, caches, sharing and tying."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from nas.architecture import Architecture
from nas.model import NasLM, build_model, lm_loss, repeat_kv, rotary_cos_sin, unique_parameter_count
from tests.tiny_models import KINDS, SHARINGS, one_thread, tiny  # noqa: F401 - fixture


def ids(batch: int, seq: int, vocab: int = 64, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, vocab, (batch, seq), generator=torch.Generator().manual_seed(seed))


# ----- parameter counts and initialisation ---------------------------------------------------
@pytest.mark.parametrize("arch", [
    tiny(),
    tiny(tie_embeddings=False),
    tiny(n_kv_head=4),  # MHA
    tiny(n_kv_head=1),  # MQA
    tiny("sliding_window", "all", n_layer=3),
    tiny("linear", "repeat:2", n_layer=4, tie_embeddings=False),
    tiny("softmax", "repeat:3", n_layer=6, n_kv_head=1),
    tiny(d_model=48, n_head=6, n_kv_head=3, ffn_mult=2.7, vocab_size=1000),
    Architecture(),
], ids=lambda a: a.describe())
def test_unique_parameter_count_equals_architecture(arch):
    model = build_model(arch)
    assert unique_parameter_count(model) == arch.n_params
    assert len(model.layers) == arch.n_unique_blocks
    assert model.layers[0].mlp.gate_proj.out_features == arch.ffn_hidden


def test_init_is_deterministic_and_leaves_global_rng_alone():
    arch = tiny()
    state = torch.random.get_rng_state()
    a, b, c = build_model(arch, seed=1), build_model(arch, seed=1), build_model(arch, seed=2)
    assert torch.equal(torch.random.get_rng_state(), state)
    for (name, pa), pb, pc in zip(a.named_parameters(), b.parameters(), c.parameters()):
        assert torch.equal(pa, pb), name
        if "layernorm" in name or name == "norm.weight":
            assert torch.equal(pa, torch.ones_like(pa))
        else:
            assert not torch.equal(pa, pc), name


def test_residual_projections_are_scaled():
    arch = tiny(n_layer=8, d_model=64, n_head=4, n_kv_head=4)
    model = build_model(arch)
    expected = 0.02 / math.sqrt(2 * arch.n_layer)
    assert model.layers[0].self_attn.o_proj.weight.std().item() == pytest.approx(expected, rel=0.1)
    assert model.layers[0].mlp.down_proj.weight.std().item() == pytest.approx(expected, rel=0.1)
    assert model.layers[0].self_attn.q_proj.weight.std().item() == pytest.approx(0.02, rel=0.1)


def test_loss_at_init_is_near_uniform():
    arch = tiny()
    model = build_model(arch)
    x = ids(2, 16)
    loss = model.loss(x[:, :-1], x[:, 1:])
    assert loss.item() == pytest.approx(math.log(arch.vocab_size), abs=0.05)
    assert lm_loss(model(x[:, :-1]), x[:, 1:]).item() == pytest.approx(loss.item())


# ----- attention ---------------------------------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
def test_gqa_equals_mha_with_repeated_kv_weights(kind):
    """Query head i reads kv head i // (n_head // n_kv_head), exactly as HF's repeat_kv."""
    gqa_arch = tiny(kind, n_kv_head=2, window=5 if kind == "sliding_window" else None)
    mha_arch = tiny(kind, n_kv_head=4, window=5 if kind == "sliding_window" else None)
    gqa, mha = build_model(gqa_arch, seed=3).eval(), build_model(mha_arch, seed=4).eval()
    hd, rep = gqa_arch.head_dim, gqa_arch.n_head // gqa_arch.n_kv_head
    state = {}
    for name, p in gqa.state_dict().items():
        if name.endswith(("k_proj.weight", "v_proj.weight")):
            p = p.view(gqa_arch.n_kv_head, hd, -1).repeat_interleave(rep, dim=0).reshape(-1, p.shape[1])
        state[name] = p
    mha.load_state_dict(state)
    x = ids(2, 10)
    with torch.no_grad():
        torch.testing.assert_close(gqa(x), mha(x), rtol=1e-5, atol=1e-6)


def test_repeat_kv_maps_query_head_to_kv_head():
    kv = torch.arange(3.0).view(1, 3, 1, 1)  # kv head j holds value j
    assert repeat_kv(kv, 2).flatten().tolist() == [0, 0, 1, 1, 2, 2]


def test_window_covering_the_sequence_equals_softmax():
    softmax = build_model(tiny("softmax"), seed=5).eval()
    window = build_model(tiny("sliding_window", window=12), seed=5).eval()
    narrow = build_model(tiny("sliding_window", window=4), seed=5).eval()
    x = ids(2, 12)
    with torch.no_grad():
        torch.testing.assert_close(window(x), softmax(x), rtol=1e-5, atol=1e-6)
        assert not torch.allclose(narrow(x), softmax(x), atol=1e-4)


@pytest.mark.parametrize("kind, window", [("softmax", None), ("sliding_window", 3), ("linear", None)])
def test_receptive_field(kind, window):
    """One layer: changing token s changes logits at t exactly when t - window < s <= t."""
    arch = tiny(kind, n_layer=1, window=window)
    model = build_model(arch, seed=6).eval()
    x = ids(1, 10)
    y = x.clone()
    s = 4
    y[0, s] = (x[0, s] + 1) % arch.vocab_size
    with torch.no_grad():
        changed = (model(x) - model(y)).abs().amax(-1)[0] > 1e-6
    expected = [s <= t and (window is None or t - window < s) for t in range(10)]
    assert changed.tolist() == expected


@pytest.mark.parametrize("n_kv_head", [4, 2, 1])
def test_linear_recurrent_equals_parallel(n_kv_head):
    arch = tiny("linear", n_kv_head=n_kv_head)
    attn = build_model(arch, seed=7).layers[0].self_attn
    b, t, hd = 2, 9, arch.head_dim
    g = torch.Generator().manual_seed(0)
    q = torch.randn(b, arch.n_head, t, hd, generator=g)
    k = torch.randn(b, n_kv_head, t, hd, generator=g)
    v = torch.randn(b, n_kv_head, t, hd, generator=g)
    parallel, (state, norm) = attn._linear_parallel(q, k, v, want_cache=True)
    past = (torch.zeros(b, n_kv_head, hd, hd), torch.zeros(b, n_kv_head, hd))
    steps = []
    for i in range(t):
        out, past = attn._linear_recurrent(q[:, :, i:i + 1], k[:, :, i:i + 1], v[:, :, i:i + 1], past)
        steps.append(out)
    torch.testing.assert_close(torch.cat(steps, dim=2), parallel, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(past[0], state, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(past[1], norm, rtol=1e-5, atol=1e-5)


def test_rotary_matches_llama_default():
    positions = torch.tensor([[0, 1, 5]])
    cos, sin = rotary_cos_sin(positions, 8, torch.float32, 10000.0)
    inv_freq = 1.0 / (10000 ** (torch.arange(0, 8, 2).float() / 8))
    angles = positions[0, :, None].float() * inv_freq
    torch.testing.assert_close(cos[0], torch.cat((angles, angles), -1).cos())
    torch.testing.assert_close(sin[0], torch.cat((angles, angles), -1).sin())


# ----- caches: decode equals the full forward ----------------------------------------------
@pytest.mark.parametrize("sharing", SHARINGS)
@pytest.mark.parametrize("kind", KINDS)
def test_decode_with_cache_equals_full_forward(kind, sharing):
    arch = tiny(kind, sharing, n_layer=4)  # window 3: decoding runs well past it
    model = build_model(arch, seed=8).eval()
    b, t, prompt = 2, 10, 4
    x = ids(b, t)
    with torch.no_grad():
        full = model(x)
        logits, cache = model.prefill(x[:, :prompt])
        torch.testing.assert_close(logits, full[:, :prompt], rtol=1e-5, atol=1e-5)
        for pos in range(prompt, t):
            step, cache = model.decode_step(x[:, pos:pos + 1], torch.full((b, 1), pos), cache)
            torch.testing.assert_close(step[:, 0], full[:, pos], rtol=1e-5, atol=1e-5)
            assert_cache_shapes(arch, cache, b, pos + 1)
        # From an empty context, token by token.
        cache = model.empty_cache(b)
        for pos in range(t):
            step, cache = model.decode_step(x[:, pos:pos + 1], torch.full((b, 1), pos), cache)
            torch.testing.assert_close(step[:, 0], full[:, pos], rtol=1e-5, atol=1e-5)


def assert_cache_shapes(arch: Architecture, cache: tuple, batch: int, positions: int) -> None:
    assert len(cache) == 2 * arch.n_layer  # per application, even when weights are shared
    hd, kv = arch.head_dim, arch.n_kv_head
    if arch.attention == "linear":
        expected = [(batch, kv, hd, hd), (batch, kv, hd)] * arch.n_layer
    else:
        kept = positions if arch.attention == "softmax" else min(positions, arch.window)
        expected = [(batch, kv, kept, hd)] * (2 * arch.n_layer)
    assert [tuple(c.shape) for c in cache] == expected


def test_decode_rejects_a_wrong_cache_or_several_tokens():
    model = build_model(tiny())
    with pytest.raises(ValueError, match="cache has 2 tensors"):
        model.decode_step(ids(1, 1), torch.zeros(1, 1, dtype=torch.long), model.empty_cache(1)[:2])
    with pytest.raises(ValueError, match="one token per row"):
        model.decode_step(ids(1, 2), torch.zeros(1, 2, dtype=torch.long), model.empty_cache(1))


def test_cache_names_follow_the_graph_contract():
    assert build_model(tiny()).cache_names() == ["0.key", "0.value", "1.key", "1.value"]
    assert build_model(tiny("linear")).cache_names()[:2] == ["0.state", "0.norm"]


# ----- sharing and tying ---------------------------------------------------------------------
def unshared_copy(model: NasLM) -> NasLM:
    """The same network with every application's block weights copied into a block of its own."""
    arch = model.arch
    flat = build_model(dataclasses.replace(arch, sharing="none"))
    source = model.state_dict()
    state = {}
    for name in flat.state_dict():
        src = name
        if name.startswith("layers."):
            _, i, rest = name.split(".", 2)
            src = f"layers.{arch.layer_to_block[int(i)]}.{rest}"
        state[name] = source[src].clone()
    flat.load_state_dict(state)
    return flat


@pytest.mark.parametrize("sharing", ["all", "repeat:2"])
def test_shared_blocks_are_one_set_of_weights_used_at_every_application(sharing):
    arch = tiny("softmax", sharing, n_layer=4, tie_embeddings=False)
    shared = build_model(arch, seed=9)
    flat = unshared_copy(shared)
    x = ids(2, 8)
    shared.loss(x[:, :-1], x[:, 1:]).backward()
    flat.loss(x[:, :-1], x[:, 1:]).backward()
    assert shared(x).detach().allclose(flat(x).detach(), atol=1e-6)
    # The gradient of a shared weight is the sum over the applications that use it.
    for block in range(arch.n_unique_blocks):
        apps = [i for i, b in enumerate(arch.layer_to_block) if b == block]
        assert len(apps) == arch.repeat
        for name, p in shared.layers[block].named_parameters():
            per_app = [flat.layers[i].get_parameter(name).grad for i in apps]
            assert all(g.abs().sum() > 0 for g in per_app), name
            torch.testing.assert_close(p.grad, sum(per_app), rtol=1e-4, atol=1e-7)


def test_tied_embeddings_share_one_tensor():
    tied, untied = build_model(tiny()), build_model(tiny(tie_embeddings=False))
    assert tied.lm_head.weight is tied.embed_tokens.weight
    assert untied.lm_head.weight is not untied.embed_tokens.weight
    x = ids(2, 6)
    tied.loss(x[:, :-1], x[:, 1:]).backward()
    # Both uses contribute: rows of tokens never seen as input still get a gradient via lm_head.
    unseen = sorted(set(range(64)) - set(x[:, :-1].flatten().tolist()))
    assert tied.embed_tokens.weight.grad[unseen].abs().sum() > 0


# ----- Hugging Face Llama --------------------------------------------------------------------
@pytest.mark.parametrize("tie", [True, False])
def test_matches_hugging_face_llama(tie):
    """Softmax without sharing is LlamaForCausalLM after prefixing names with ``model.``."""
    transformers = pytest.importorskip("transformers")
    arch = tiny(n_kv_head=2, tie_embeddings=tie)
    model = build_model(arch, seed=11).eval()
    config = transformers.LlamaConfig(
        vocab_size=arch.vocab_size, hidden_size=arch.d_model, intermediate_size=arch.ffn_hidden,
        num_hidden_layers=arch.n_layer, num_attention_heads=arch.n_head,
        num_key_value_heads=arch.n_kv_head, head_dim=arch.head_dim, rms_norm_eps=1e-5,
        rope_theta=10000.0, max_position_embeddings=arch.max_seq_len, tie_word_embeddings=tie,
        attention_bias=False, mlp_bias=False)
    hf = transformers.LlamaForCausalLM(config).eval()
    state = {(k if k == "lm_head.weight" else f"model.{k}"): v for k, v in model.state_dict().items()}
    hf.load_state_dict(state, strict=True)
    x = ids(2, 12)
    with torch.no_grad():
        torch.testing.assert_close(model(x), hf(x).logits, rtol=1e-5, atol=1e-5)
