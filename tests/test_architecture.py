"""Architecture: validation names the field, JSON round trip, stable hash, exact formulas."""

import dataclasses
import json

import pytest

from nas.architecture import Architecture, static_metrics
from nas.errors import ArchitectureError


def test_defaults_are_valid_and_round_trip():
    arch = Architecture()
    assert Architecture.from_json(arch.to_json()) == arch
    assert Architecture.from_dict(json.loads(arch.to_json())).hash == arch.hash


@pytest.mark.parametrize("arch", [
    Architecture(n_layer=4, d_model=96, n_head=6, n_kv_head=2, ffn_mult=2.5, attention="sliding_window",
                 window=32, sharing="repeat:2", tie_embeddings=False, vocab_size=1000, max_seq_len=128),
    Architecture(n_layer=3, attention="linear", sharing="all"),
])
def test_round_trip_is_lossless(arch):
    again = Architecture.from_json(arch.to_json())
    assert again == arch and again.hash == arch.hash


def test_hash_is_canonical():
    assert Architecture(ffn_mult=2).hash == Architecture(ffn_mult=2.0).hash
    assert Architecture(n_layer=2).hash != Architecture(n_layer=3).hash
    # Pinned: the hash must not change between releases or processes.
    assert Architecture().hash == "f44973438e2e7d68"


def test_numeric_constants_change_the_hash_only_off_their_defaults():
    # A parent's rotary base and norm epsilon (issue 15) are fields; every architecture stored
    # before they existed (here one from bench/results/fidelity) must keep its hash.
    old = Architecture(n_layer=1, d_model=48, n_head=2, vocab_size=256)
    assert old.hash == "49b9341e11fc8d5e" and "rope_theta" not in old.to_dict()
    llama3 = dataclasses.replace(old, rope_theta=500000, rms_norm_eps=1e-6)
    assert llama3.rope_theta == 500000.0 and isinstance(llama3.rope_theta, float)
    assert llama3.hash != old.hash and Architecture.from_dict(llama3.to_dict()) == llama3
    assert dataclasses.replace(old, rope_theta=10000).hash == old.hash
    for field, value in (("rope_theta", 0.0), ("rms_norm_eps", float("nan")), ("rope_theta", "1e4")):
        with pytest.raises(ArchitectureError, match=rf"^{field}=.* must be a positive number"):
            dataclasses.replace(old, **{field: value})


@pytest.mark.parametrize("kwargs, message", [
    (dict(d_model=64, n_head=8, n_kv_head=3), "n_kv_head=3 must divide n_head=8"),
    (dict(d_model=64, n_head=5, n_kv_head=5), "n_head=5 must divide d_model=64"),
    (dict(d_model=48, n_head=16, n_kv_head=16), "head_dim=d_model/n_head=3"),
    (dict(attention="sliding_window"), "window=None must be a positive integer"),
    (dict(attention="softmax", window=16), "window=16 is only allowed with attention='sliding_window'"),
    (dict(attention="flash"), "attention='flash' must be one of"),
    (dict(n_layer=3, sharing="repeat:2"), "sharing='repeat:2' needs k=2 to divide n_layer=3"),
    (dict(sharing="repeat:1"), "needs k >= 2"),
    (dict(sharing="sometimes"), "sharing='sometimes' must be"),
    (dict(n_layer=0), "n_layer=0 must be >= 1"),
    (dict(n_layer=2.5), "n_layer=2.5 must be an integer"),
    (dict(tie_embeddings="yes"), "tie_embeddings='yes' must be true or false"),
    (dict(ffn_mult=-1.0), "ffn_mult=-1.0 must be a positive number"),
])
def test_invalid_values_name_field_and_value(kwargs, message):
    with pytest.raises(ArchitectureError, match=message.replace("(", r"\(").replace(")", r"\)")):
        Architecture(**kwargs)


def test_from_dict_names_source_and_unknown_key():
    with pytest.raises(ArchitectureError, match=r"^arch.json: unknown field 'depth'"):
        Architecture.from_dict({"depth": 3}, source="arch.json")
    with pytest.raises(ArchitectureError, match=r"^arch.json: n_kv_head=3 must divide n_head=4"):
        Architecture.from_dict({"n_kv_head": 3}, source="arch.json")


def test_n_kv_head_defaults_to_n_head_everywhere():
    """One default: `nas evaluate`'s JSON, a space and the API all mean multi-head attention."""
    arch = Architecture.from_dict({"n_layer": 1, "d_model": 32, "n_head": 2})
    assert arch.n_kv_head == 2
    assert Architecture(n_head=8, d_model=64).n_kv_head == 8
    assert Architecture.from_json(arch.to_json()) == arch  # resolved value round-trips
    assert Architecture(n_head=2, d_model=32, n_kv_head=None) == Architecture(
        n_head=2, d_model=32, n_kv_head=2
    )


@pytest.mark.parametrize(
    "data, message",
    [
        # A field's own value is checked before any relation between fields.
        (
            {"n_layer": 1, "d_model": 32, "n_head": 2, "attention": "bogus"},
            "attention='bogus' must be one of",
        ),
        (
            {"d_model": 32, "n_head": 2, "n_kv_head": 4, "attention": "bogus"},
            "attention='bogus' must be one of",
        ),
        ({"d_model": 48, "n_head": 5, "ffn_mult": -1}, "ffn_mult=-1.0 must be a positive number"),
        ({"n_layer": 3, "n_kv_head": 3, "sharing": "sometimes"}, "sharing='sometimes' must be"),
        ({"attention": "softmax", "window": 0}, "window=0 must be a positive integer"),
    ],
)
def test_first_reported_error_is_the_real_one(data, message):
    with pytest.raises(ArchitectureError, match="^arch.json: " + message.replace("(", r"\(")):
        Architecture.from_dict(data, source="arch.json")


def test_parameter_counts_by_hand():
    # d=64, V=256, h=256 (4x), 2 unique blocks, tied.
    arch = Architecture()
    block = 2 * 64 + 4 * 64 * 64 + 3 * 64 * 256
    assert arch.block_params == block
    assert arch.n_params == 256 * 64 + 2 * block + 64
    untied = Architecture(tie_embeddings=False)
    assert untied.n_params - arch.n_params == 256 * 64
    shared = Architecture(n_layer=4, sharing="repeat:2")
    assert shared.n_params == arch.n_params  # 4 applications of 2 unique blocks
    assert Architecture(n_layer=6, sharing="all").n_unique_blocks == 1


def test_gqa_shrinks_params_and_cache():
    mha = Architecture(d_model=64, n_head=8, n_kv_head=8)
    mqa = Architecture(d_model=64, n_head=8, n_kv_head=1)
    assert mha.n_params - mqa.n_params == 2 * 2 * 64 * (64 - 8)
    assert mha.kv_cache_bytes_per_token == 8 * mqa.kv_cache_bytes_per_token


def test_cache_and_flops_by_attention_kind():
    soft = Architecture(max_seq_len=512)
    window = Architecture(attention="sliding_window", window=32, max_seq_len=512)
    linear = Architecture(attention="linear", max_seq_len=512)
    assert window.kv_cache_bytes(512) == soft.kv_cache_bytes(32)
    assert linear.kv_cache_bytes(512) == linear.kv_cache_bytes(8) > 0
    assert soft.flops_per_token_decode(511) > window.flops_per_token_decode(511)
    assert window.flops_per_token_decode(10) == soft.flops_per_token_decode(10)
    # Sliding window prefill averages min(t, W) keys; equals softmax when W >= T.
    assert Architecture(attention="sliding_window", window=128).flops_per_token_prefill(
        128
    ) == soft.flops_per_token_prefill(128)
    dense = 2 * 2 * (2 * 64 * 64 + 2 * 64 * 64 + 3 * 64 * 256) + 2 * 256 * 64
    assert soft.flops_per_token_decode(0) == dense + 2 * 4 * 64 * 1


def test_int8_weight_bytes():
    arch = Architecture()
    norms = 2 * 2 * 64 + 64
    assert arch.weight_bytes("int8") == arch.n_params - norms + 4 * norms
    with pytest.raises(ArchitectureError, match="precision='fp16'"):
        arch.weight_bytes("fp16")


def test_static_metrics_are_consistent():
    m = static_metrics(Architecture())
    assert m["params"] == Architecture().n_params
    assert m["weights_mb"] == pytest.approx(4 * m["params"] / 1e6)
