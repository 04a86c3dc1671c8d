"""`nas.checkpoint`: reading transformers-saved Llama/Mistral directories, refusing what we cannot
map (naming the file, field and value), and writing checkpoints we read back.

The parents here are real ``save_pretrained`` output of tiny transformers models (2 layers, width
32), so what the next issues read (a parent model) is what transformers actually writes.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

import nas
from nas.architecture import Architecture
from nas.checkpoint import CheckpointError, load, read_checkpoint, write_checkpoint
from nas.errors import ConfigError, NotFoundError
from nas.hf_config import architecture_from_hf_config, hf_config, read_architecture
from nas.model import build_model
from tests.parents import VOCAB, WINDOW
from tests.parents import hf_config as _config
from tests.parents import hf_parent as _parent
from tests.parents import save_tokenizer as _save_tokenizer
from tests.tiny_models import one_thread, tiny  # noqa: F401 - fixture


def _ids(length: int = 12) -> torch.Tensor:
    return torch.randint(0, VOCAB, (2, length), generator=torch.Generator().manual_seed(5))


@pytest.mark.parametrize("kind,tie", [("llama", True), ("llama", False), ("mistral", False)])
def test_reads_a_transformers_checkpoint_with_the_same_logits(kind: str, tie: bool, tmp_path: Path) -> None:
    hf = _parent(tmp_path, _config(kind, tie_word_embeddings=tie))
    parent = read_checkpoint(tmp_path)
    arch = parent.architecture
    assert arch == Architecture(
        n_layer=2, d_model=32, n_head=4, n_kv_head=2, ffn_mult=2.0, vocab_size=VOCAB, max_seq_len=32,
        attention="sliding_window" if kind == "mistral" else "softmax",
        window=WINDOW if kind == "mistral" else None, tie_embeddings=tie)
    assert parent.tokenizer_file == tmp_path / "tokenizer.json"
    assert parent.config is not None and parent.config["model_type"] == kind
    ids = _ids(4 * WINDOW)  # longer than the window: a wrong window shows in the logits
    with torch.no_grad():
        torch.testing.assert_close(parent.model(ids), hf(ids).logits, rtol=1e-5, atol=1e-5)
    assert sum(p.numel() for p in parent.model.parameters()) == arch.n_params
    assert torch.equal(nas.load(tmp_path)(ids), parent.model(ids))  # nas.load reads parents too


def test_reads_sharded_and_half_precision_weights(tmp_path: Path) -> None:
    hf = _parent(tmp_path, _config(), max_shard_size="20KB")
    assert (tmp_path / "model.safetensors.index.json").is_file()
    assert not (tmp_path / "model.safetensors").exists()
    with torch.no_grad():
        torch.testing.assert_close(load(tmp_path)(_ids()), hf(_ids()).logits, rtol=1e-5, atol=1e-5)

    half = tmp_path / "bf16"
    hf.to(torch.bfloat16).save_pretrained(half)
    model = load(half)
    assert model.embed_tokens.weight.dtype == torch.float32
    assert torch.equal(model.embed_tokens.weight, hf.model.embed_tokens.weight.float())


def test_our_checkpoints_read_back_with_sharing(tmp_path: Path) -> None:
    """`write_checkpoint` unrolls a shared block; `read_checkpoint` (via architecture.json) re-ties it."""
    from nas.tokenizer import ByteTokenizer

    arch = tiny(sharing="repeat:2", n_layer=4, vocab_size=256)
    model = build_model(arch, seed=3).eval()
    (tmp_path / "architecture.json").write_text(arch.to_json())
    config = write_checkpoint(tmp_path, model, ByteTokenizer())
    assert config == json.loads((tmp_path / "config.json").read_text()) == hf_config(arch, {})
    parent = read_checkpoint(tmp_path)
    assert parent.architecture == arch  # architecture.json wins: config.json cannot say repeat:2
    assert sum(p.numel() for p in parent.model.parameters()) == arch.n_params
    ids = torch.randint(0, 256, (2, 10), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(parent.model(ids), model(ids))
    # Without architecture.json the same files are an unshared Llama that computes the same.
    (tmp_path / "architecture.json").unlink()
    unrolled = read_architecture(tmp_path)
    assert unrolled == Architecture(**{**arch.to_dict(), "sharing": "none"})
    with torch.no_grad():
        torch.testing.assert_close(load(tmp_path)(ids), model(ids), rtol=0, atol=0)


@pytest.mark.parametrize("arch", [tiny(), tiny(tie_embeddings=False, n_kv_head=1), tiny("sliding_window"),
                                  tiny(ffn_mult=2.7)], ids=lambda a: a.describe())
def test_config_mapping_round_trips(arch: Architecture) -> None:
    back = architecture_from_hf_config(hf_config(arch))  # type: ignore[arg-type]
    # config.json holds the FFN width, not the multiplier a search sampled: 2.7 and 3.0 both
    # build 96 at d_model=32, and the width is what the weights need.
    assert back.ffn_hidden == arch.ffn_hidden and back.ffn_mult == arch.ffn_hidden / arch.d_model
    assert back == Architecture(**{**arch.to_dict(), "ffn_mult": back.ffn_mult})


@pytest.mark.parametrize("change,message", [
    ({"model_type": "gpt2"}, r"model_type='gpt2' is not one nas can read \(known: llama, mistral\)"),
    ({"rms_norm_eps": -1.0}, r"rms_norm_eps=-1.0: .*must be a positive number"),
    ({"rope_parameters": {"rope_type": "llama3", "rope_theta": 10000.0}},
     r"rope_parameters=.* must be the default"),
    ({"rope_parameters": None, "rope_theta": "big"}, r"rope_theta='big': .*must be a positive number"),
    ({"hidden_act": "gelu"}, r"hidden_act='gelu' must be 'silu'"),
    ({"attention_bias": True}, r"attention_bias=True must be false"),
    ({"intermediate_size": 72}, r"intermediate_size=72 is not a multiple of 16.*would build 80"),
    ({"head_dim": 16}, r"head_dim=16 is not hidden_size / num_attention_heads = 8"),
    ({"num_attention_heads": 3}, r"num_attention_heads=3: .*must divide d_model=32"),
    ({"num_key_value_heads": 3}, r"num_key_value_heads=3: .*must divide n_head=4"),
    ({"hidden_size": None}, r"hidden_size=None: "),
])
def test_unmappable_configs_name_file_field_and_value(change: dict[str, Any], message: str,
                                                      tmp_path: Path) -> None:
    config = {**hf_config(tiny()), **change}  # type: ignore[dict-item]
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(path))}: {message}"):
        read_architecture(tmp_path)


def test_missing_and_mismatched_files_are_named(tmp_path: Path) -> None:
    with pytest.raises(NotFoundError, match="no architecture.json .* and no config.json"):
        nas.load(tmp_path)
    _parent(tmp_path, _config(), tokenizer=False)
    load(tmp_path)  # a model needs no tokenizer ...
    with pytest.raises(NotFoundError, match=rf"{re.escape(str(tmp_path))}: no tokenizer.json"):
        read_checkpoint(tmp_path)  # ... a parent does: candidates keep its token ids
    _save_tokenizer(tmp_path, VOCAB + 8)
    with pytest.raises(ConfigError, match=r"tokenizer.json: has 72 tokens, more than the model's "
                                          r"vocab_size=64"):
        read_checkpoint(tmp_path)

    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "num_hidden_layers": 3}))
    with pytest.raises(CheckpointError, match=r"missing \['model.layers.2.input_layernorm.weight'"):
        load(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({**config, "vocab_size": 80}))
    with pytest.raises(CheckpointError,
                       match=r"model.embed_tokens.weight has shape \(64, 32\), .* needs \(80, 32\)"):
        load(tmp_path)

    (tmp_path / "model.safetensors").rename(tmp_path / "pytorch_model.bin")
    with pytest.raises(NotFoundError, match="no model.safetensors .*pytorch_model.bin is not read"):
        load(tmp_path)


def test_nas_load_imports_neither_the_exporter_nor_torch_up_front() -> None:
    """``nas.load`` is the checkpoint reader: importing it must not pull in the exporter (ONNX,
    the store); `nas.checkpoint` and `nas.model_card` import without torch."""
    code = ("import sys, nas, nas.checkpoint, nas.model_card; nas.load; "
            "assert 'torch' not in sys.modules, 'torch'; "
            "from nas import load; assert load.__module__ == 'nas'; "
            "import nas.checkpoint as c; c.load; assert 'nas.export' not in sys.modules, 'nas.export'")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr


def test_a_parents_rotary_base_and_norm_epsilon_carry_over(tmp_path: Path) -> None:
    # Llama 3 uses rope_theta 500000, many checkpoints rms_norm_eps 1e-6: the candidate must
    # compute what the parent computes, and stored architectures keep their hashes.
    config = _config(rms_norm_eps=1e-6)
    config.rope_parameters = {"rope_type": "default", "rope_theta": 500000.0}
    hf = _parent(tmp_path, config)
    arch = read_checkpoint(tmp_path).architecture
    assert (arch.rms_norm_eps, arch.rope_theta) == (1e-6, 500000.0)
    assert {"rms_norm_eps", "rope_theta"} <= set(arch.to_dict())
    assert "rope_theta" not in tiny().to_dict()  # defaults stay out of the hash
    ids = _ids(12)
    with torch.no_grad():
        torch.testing.assert_close(nas.load(tmp_path)(ids), hf(ids).logits, rtol=1e-5, atol=1e-5)
    assert architecture_from_hf_config(hf_config(arch)) == arch  # type: ignore[arg-type]
