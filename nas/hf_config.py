"""The torch-free half of a Hugging Face checkpoint: file names and config.json <-> `Architecture`.

A foundation module (no torch, no safetensors): the CLI, the model card, the service and the
space-load checks of a search from a parent (`nas.space.parent`) need the file names and the
architecture a directory describes, and must start fast. `nas.checkpoint` reads and writes the
weights, by this mapping, so what we write is exactly what we can read.

The config mapping (`hf_config` one way, `architecture_from_hf_config` the other): ``softmax`` is
``LlamaForCausalLM``; ``sliding_window`` is ``MistralForCausalLM`` with ``sliding_window =
window``: transformers keeps key s for query t iff ``s > t - sliding_window``
(``masking_utils.sliding_window_overlay``), exactly our ``t - window < s <= t``, so there is no
off-by-one (the export tests show window +- 1 gives different logits). ``linear`` has no mapping
(`hf_unsupported_reason`). The rotary base and the norm epsilon are `Architecture` fields (a
parent's values carry over to its candidates); biases, the activation and rope scaling are not:
`nas.model` fixes them, so a config with other values is refused, naming the field, rather than
read into a model that computes something else. The config spells
rope both as ``rope_parameters`` (transformers 5) and ``rope_theta`` (4.x) so both versions read it.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from nas.architecture import Architecture
from nas.errors import ArchitectureError, ConfigError, NotFoundError

__all__ = ["ARCHITECTURE_FILE", "CONFIG_FILE", "GENERATION_CONFIG_FILE", "MODEL_TYPES",
           "TOKENIZER_CONFIG_FILE", "TOKENIZER_FILE", "WEIGHTS_FILE", "WEIGHTS_INDEX_FILE",
           "architecture_from_hf_config", "generation_config", "hf_config", "hf_unsupported_reason",
           "read_architecture", "read_json", "tokenizer_config"]

ARCHITECTURE_FILE = "architecture.json"  # ours: the lossless `Architecture` (sharing, linear attention)
CONFIG_FILE = "config.json"
GENERATION_CONFIG_FILE = "generation_config.json"
TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
WEIGHTS_FILE = "model.safetensors"
WEIGHTS_INDEX_FILE = "model.safetensors.index.json"  # how transformers names sharded weights

MODEL_TYPES = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM"}


# ----- Architecture -> config.json --------------------------------------------------------
def hf_unsupported_reason(arch: Architecture) -> str | None:
    """Why ``arch`` has no transformers equivalent, or None when `hf_config` maps it."""
    if arch.attention == "linear":
        return ("linear attention (elu+1 feature map, no rotary, O(1) recurrent state) has no "
                "Llama-style equivalent in transformers")
    return None


def hf_config(arch: Architecture,
              special_tokens: Mapping[str, tuple[str, int]] | None = None) -> dict[str, Any] | None:
    """The ``config.json`` that makes transformers build ``arch`` (None for linear attention).

    Block sharing needs no field: the weights are unrolled, one copy per layer application.
    ``special_tokens`` (`nas.tokenizer.Tokenizer.special_tokens`) names the BOS/EOS/pad ids, so
    ``generate`` stops at end-of-text; the byte tokenizer has none, and they stay null.
    """
    if hf_unsupported_reason(arch) is not None:
        return None
    sliding = arch.attention == "sliding_window"
    config: dict[str, Any] = {
        "architectures": [MODEL_TYPES["mistral" if sliding else "llama"]],
        "model_type": "mistral" if sliding else "llama",
        "vocab_size": arch.vocab_size,
        "hidden_size": arch.d_model,
        "intermediate_size": arch.ffn_hidden,
        "num_hidden_layers": arch.n_layer,
        "num_attention_heads": arch.n_head,
        "num_key_value_heads": arch.n_kv_head,
        "head_dim": arch.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": arch.max_seq_len,
        "rms_norm_eps": arch.rms_norm_eps,
        "rope_parameters": {"rope_type": "default", "rope_theta": arch.rope_theta},
        "rope_theta": arch.rope_theta,  # transformers 4.x reads this; 5.x folds it into rope_parameters
        "tie_word_embeddings": arch.tie_embeddings,
        "attention_dropout": 0.0,
        "initializer_range": 0.02,
        "use_cache": True,
        **_special_ids(special_tokens),
        "torch_dtype": "float32",
    }
    if sliding:
        config["sliding_window"] = arch.window  # same semantics as ours: see the module docstring
    else:
        config.update(attention_bias=False, mlp_bias=False, pretraining_tp=1)
    return config


def _special_ids(special_tokens: Mapping[str, tuple[str, int]] | None) -> dict[str, int | None]:
    """``{bos,eos,pad}_token_id``: the tokenizer's ids, null where it has no such token."""
    special = special_tokens or {}
    return {f"{role}_id": (special[role][1] if role in special else None)
            for role in ("bos_token", "eos_token", "pad_token")}


def generation_config(special_tokens: Mapping[str, tuple[str, int]] | None) -> dict[str, Any] | None:
    """``generation_config.json``: the ids ``generate`` stops at and pads with, or None when
    the tokenizer has no special tokens (then there is nothing to say; the card says how to
    stop). No ``max_length``: transformers warns when it meets the card's ``max_new_tokens``."""
    ids = {k: v for k, v in _special_ids(special_tokens).items() if v is not None}
    return ids or None


def tokenizer_config(arch: Architecture, special_tokens: Mapping[str, tuple[str, int]]) -> dict[str, Any]:
    """``tokenizer_config.json``: what ``AutoTokenizer`` needs beside ``tokenizer.json``."""
    return {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": arch.max_seq_len,
            "clean_up_tokenization_spaces": False,
            **{role: text for role, (text, _id) in special_tokens.items()}}


# ----- config.json -> Architecture --------------------------------------------------------
# Architecture field <- config.json field, for naming the config's field in errors.
_FIELDS = {"vocab_size": "vocab_size", "d_model": "hidden_size", "n_layer": "num_hidden_layers",
           "n_head": "num_attention_heads", "n_kv_head": "num_key_value_heads",
           "max_seq_len": "max_position_embeddings", "window": "sliding_window",
           "tie_embeddings": "tie_word_embeddings", "ffn_mult": "intermediate_size",
           "rms_norm_eps": "rms_norm_eps", "rope_theta": "rope_theta"}


def architecture_from_hf_config(config: Mapping[str, Any], source: str = CONFIG_FILE) -> Architecture:
    """The `Architecture` a Llama/Mistral ``config.json`` describes (the inverse of `hf_config`).

    Refuses, naming the field and its value, whatever our model would compute differently:
    another model type, activation, rotary scaling, biases, a head_dim
    other than hidden_size / heads, an FFN width our rounding cannot produce, quantization.
    ``ffn_mult`` is ``intermediate_size / hidden_size``: the config holds the width, not the
    multiplier a search sampled (2.7 and 3.0 both build 96 at d_model=32); our exports keep the
    exact `Architecture` in architecture.json, which `read_architecture` prefers.
    """
    def fail(field: str, reason: str) -> ConfigError:
        value = config.get(field)
        return ConfigError(f"{field}={value!r} {reason}", source=source, field=field, value=value)

    model_type = config.get("model_type")
    if model_type not in MODEL_TYPES:
        raise fail("model_type", f"is not one nas can read (known: {', '.join(MODEL_TYPES)})")
    rms_norm_eps, rope_theta = _check_fixed_math(config, fail)
    missing = [f for f in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                           "num_attention_heads", "max_position_embeddings") if f not in config]
    if missing:
        raise ConfigError(f"has no {', '.join(missing)} (every {model_type} config.json names them)",
                          source=source, field=missing[0])
    d_model, n_head = config["hidden_size"], config["num_attention_heads"]
    window = config.get("sliding_window") if model_type == "mistral" else None
    fields = {
        "vocab_size": config["vocab_size"], "d_model": d_model, "n_layer": config["num_hidden_layers"],
        "n_head": n_head, "n_kv_head": config.get("num_key_value_heads") or n_head,
        "max_seq_len": config["max_position_embeddings"],
        "attention": "softmax" if window is None else "sliding_window", "window": window,
        "tie_embeddings": config.get("tie_word_embeddings", False),  # both configs' default
        "ffn_mult": (config["intermediate_size"] / d_model
                     if isinstance(config["intermediate_size"], int) and isinstance(d_model, int)
                     and d_model > 0 else config["intermediate_size"]),
        "rms_norm_eps": rms_norm_eps, "rope_theta": rope_theta,
    }
    try:
        arch = Architecture(**fields)
    except ArchitectureError as err:
        field = _FIELDS.get(err.field or "", err.field or "")
        raise ConfigError(f"{field}={config.get(field)!r}: not a nas Architecture: {err}",
                          source=source, field=field, value=config.get(field)) from None
    head_dim = config.get("head_dim")
    if head_dim is not None and head_dim != arch.head_dim:
        raise fail("head_dim", f"is not hidden_size / num_attention_heads = {arch.head_dim}, the "
                               "only head_dim nas builds")
    if arch.ffn_hidden != config["intermediate_size"]:
        raise fail("intermediate_size", f"is not a multiple of 16: nas rounds the SwiGLU width up to "
                                        f"one (it would build {arch.ffn_hidden})")
    return arch


def _check_fixed_math(config: Mapping[str, Any],
                      fail: Callable[[str, str], ConfigError]) -> tuple[Any, Any]:
    """Refuse what `nas.model` cannot compute; returns the config's (norm epsilon, rotary base),
    the two constants `Architecture` carries (missing ones are the defaults of both libraries)."""
    defaults = {f.name: f.default for f in dataclasses.fields(Architecture)}
    if config.get("hidden_act", "silu") != "silu":
        raise fail("hidden_act", "must be 'silu': nas's feed-forward is SwiGLU")
    for field in ("attention_bias", "mlp_bias"):
        if config.get(field):
            raise fail(field, "must be false: nas's projections have no bias")
    if config.get("quantization_config"):
        raise fail("quantization_config", "must be absent: nas reads fp32/fp16/bf16 weights")
    rope = config.get("rope_parameters") or {}
    if not isinstance(rope, Mapping):
        raise fail("rope_parameters", "must be a mapping")
    if rope.get("rope_type", "default") != "default" or config.get("rope_scaling"):
        field = "rope_scaling" if config.get("rope_scaling") else "rope_parameters"
        raise fail(field, "must be the default rotary embedding: nas has no rope scaling")
    theta = rope.get("rope_theta", config.get("rope_theta", defaults["rope_theta"]))
    return config.get("rms_norm_eps", defaults["rms_norm_eps"]), theta


# ----- reading a directory ----------------------------------------------------------------
def read_architecture(directory: str | os.PathLike[str]) -> Architecture:
    """The architecture of a checkpoint directory: our ``architecture.json`` where there is one
    (it says what config.json cannot: sharing, linear attention), else ``config.json``."""
    root = Path(directory)
    ours, config = root / ARCHITECTURE_FILE, root / CONFIG_FILE
    if ours.is_file():
        return Architecture.from_json(ours.read_text(), source=str(ours))
    if config.is_file():
        return architecture_from_hf_config(read_json(config), source=str(config))
    if not root.is_dir():
        raise NotFoundError(f"{root}: no such directory")
    raise NotFoundError(f"{root}: no {ARCHITECTURE_FILE} (not a directory written by nas export) "
                        f"and no {CONFIG_FILE} (not a Hugging Face checkpoint)")


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from ``path``; `ConfigError` naming the file for anything else."""
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ConfigError(f"not readable JSON: {err}", source=str(path)) from None
    if not isinstance(data, dict):
        raise ConfigError(f"must hold a JSON object, not {type(data).__name__}", source=str(path))
    return data
