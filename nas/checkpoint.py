"""Hugging Face Llama/Mistral checkpoints: written for an export, read by `load` and for parents.

A checkpoint directory is ``config.json`` + safetensors weights (+ ``tokenizer.json``), the
layout ``transformers`` writes with ``save_pretrained``. We write it for every export (the
config only where the architecture maps) and read it back in two places: `load` (our exports,
and any transformers-saved Llama/Mistral directory) and `read_checkpoint` (a parent model that
a search derives candidates from). One mapping serves both ways, so what we write is exactly
what we can read.

One weights layout for every reader. The safetensors file holds one tensor per *layer
application* under Llama's names (``model.layers.{i}.self_attn.q_proj.weight``, ...), so a shared
block (``sharing`` all / repeat:k) is unrolled into identical copies, and tied embeddings store
only ``model.embed_tokens.weight`` (transformers ties ``lm_head`` from ``tie_word_embeddings``).
transformers reads the file as is; `from_hf_state_dict` re-ties the copies into one block and
refuses a file whose copies differ. The price is size for shared models (the block is stored
``repeat`` times); the ONNX graphs keep unique weights. Linear attention, which has no
transformers equivalent, uses the same layout, so there is one rule to document.

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

Importing this module loads no torch (the file names and the config mapping are plain data for
the CLI, the model card and the service); torch and safetensors load when tensors are touched.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from nas.architecture import Architecture
from nas.errors import ArchitectureError, ConfigError, ExportError, NotFoundError

if TYPE_CHECKING:
    from torch import Tensor

    from nas.data import Tokenizer
    from nas.model import NasLM

__all__ = ["ARCHITECTURE_FILE", "CONFIG_FILE", "GENERATION_CONFIG_FILE", "HF_ATOL", "TOKENIZER_CONFIG_FILE",
           "TOKENIZER_FILE", "WEIGHTS_FILE", "WEIGHTS_INDEX_FILE", "Checkpoint", "CheckpointError",
           "architecture_from_hf_config", "from_hf_state_dict", "generation_config", "hf_config",
           "hf_unsupported_reason", "load", "read_architecture", "read_checkpoint", "read_weights",
           "to_hf_state_dict", "tokenizer_config", "write_checkpoint"]

ARCHITECTURE_FILE = "architecture.json"  # ours: the lossless `Architecture` (sharing, linear attention)
CONFIG_FILE = "config.json"
GENERATION_CONFIG_FILE = "generation_config.json"
TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
WEIGHTS_FILE = "model.safetensors"
WEIGHTS_INDEX_FILE = "model.safetensors.index.json"  # how transformers names sharded weights

# transformers vs our model on the same weights: max |logit difference| (fp32). Same math in a
# different order of operations: well below this in practice (BENCHMARKS.md has the numbers).
HF_ATOL = 1e-4

MODEL_TYPES = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM"}
# Buffers some writers store that are derived from the config (checked below), never weights.
_DERIVED_BUFFERS = ("rotary_emb.inv_freq",)


class CheckpointError(ExportError):
    """A checkpoint's weights do not describe the architecture its files name."""


class Checkpoint(NamedTuple):
    """A checkpoint directory read into our terms (`read_checkpoint`)."""

    directory: Path
    architecture: Architecture
    model: NasLM  # eval mode, CPU, fp32
    tokenizer_file: Path  # tokenizer.json, as the `tokenizers` library reads it
    config: dict[str, Any] | None  # config.json as written (None for one of our unmapped exports)


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
    ``special_tokens`` (`nas.data.Tokenizer.special_tokens`) names the BOS/EOS/pad ids, so
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


# ----- weights ----------------------------------------------------------------------------
def _hf_names(arch: Architecture, model: NasLM) -> list[tuple[str, int, str]]:
    """(HF name, unique block or -1, name inside the block / our top-level name) per tensor."""
    names = [("model.embed_tokens.weight", -1, "embed_tokens.weight")]
    block_keys = list(model.layers[0].state_dict())
    for i, block in enumerate(arch.layer_to_block):
        names += [(f"model.layers.{i}.{key}", block, key) for key in block_keys]
    names.append(("model.norm.weight", -1, "norm.weight"))
    if not arch.tie_embeddings:
        names.append(("lm_head.weight", -1, "lm_head.weight"))
    return names


def to_hf_state_dict(model: NasLM, arch: Architecture) -> dict[str, Tensor]:
    """HF Llama names, one entry per layer application (shared blocks copied), fp32 on the CPU;
    no ``lm_head.weight`` with tied embeddings."""
    import torch

    if model.arch != arch:
        raise CheckpointError(f"model was built for {model.arch.describe()}, not {arch.describe()}")
    ours = model.state_dict()
    blocks = [block.state_dict() for block in model.layers]
    out = {}
    for hf_name, block, key in _hf_names(arch, model):
        tensor = ours[key] if block < 0 else blocks[block][key]
        # safetensors refuses tensors that share storage: every entry is its own copy.
        out[hf_name] = tensor.detach().to("cpu", torch.float32).clone().contiguous()
    return out


def from_hf_state_dict(arch: Architecture, state: Mapping[str, Tensor],
                       source: str = "weights") -> NasLM:
    """Our model from `to_hf_state_dict`'s layout, re-tying shared blocks (eval mode, CPU, fp32).

    Every copy of a shared block must equal the first: otherwise the file is not ``arch``.
    """
    import torch

    from nas.model import build_model

    model = build_model(arch)  # initial values are all overwritten below
    names = _hf_names(arch, model)
    expected = {n for n, _, _ in names}
    extra = {n for n in set(state) - expected if not n.endswith(_DERIVED_BUFFERS)}
    if arch.tie_embeddings and "lm_head.weight" in extra:
        # Some writers store the tied head anyway: accept it only if it *is* the embedding.
        if not torch.equal(state["lm_head.weight"], state.get("model.embed_tokens.weight", torch.empty(0))):
            raise CheckpointError(f"{source}: lm_head.weight differs from the embedding, but "
                                  "tie_embeddings=true")
        extra.discard("lm_head.weight")
    missing = sorted(expected - set(state))
    if missing or extra:
        raise CheckpointError(f"{source}: does not match {arch.describe()}: missing {missing[:5]}, "
                              f"unexpected {sorted(extra)[:5]}")
    ours = model.state_dict()
    blocks = [block.state_dict() for block in model.layers]
    first: dict[int, int] = {}  # unique block -> first layer application that filled it
    with torch.no_grad():
        for hf_name, block, key in names:
            target = ours[key] if block < 0 else blocks[block][key]
            tensor = state[hf_name]
            if tensor.shape != target.shape:
                raise CheckpointError(f"{source}: {hf_name} has shape {tuple(tensor.shape)}, "
                                      f"{arch.describe()} needs {tuple(target.shape)}")
            layer = int(hf_name.split(".")[2]) if block >= 0 else -1
            if block >= 0 and first.setdefault(block, layer) != layer:
                if not torch.equal(target, tensor.to(target.dtype)):
                    raise CheckpointError(
                        f"{source}: {hf_name} differs from model.layers.{first[block]}.{key}, but "
                        f"sharing={arch.sharing!r} makes layers {first[block]} and {layer} one block")
                continue
            target.copy_(tensor)  # state_dict tensors alias the parameters, ties included
    return model.eval()


def read_weights(directory: str | os.PathLike[str]) -> dict[str, Tensor]:
    """The state dict of a checkpoint directory: ``model.safetensors``, or the shards its
    ``model.safetensors.index.json`` lists. Pickled weights (``pytorch_model.bin``) are refused:
    loading a pickle runs code from the file."""
    from safetensors.torch import load_file

    root = Path(directory)
    if (root / WEIGHTS_FILE).is_file():
        return load_file(str(root / WEIGHTS_FILE))
    index_path = root / WEIGHTS_INDEX_FILE
    if not index_path.is_file():
        pickled = " (pytorch_model.bin is not read: save it with safe_serialization=True)" if (
            root / "pytorch_model.bin").is_file() else ""
        raise NotFoundError(f"{root}: no {WEIGHTS_FILE} or {WEIGHTS_INDEX_FILE}{pickled}")
    weight_map = _read_json(index_path).get("weight_map")
    if not isinstance(weight_map, Mapping) or not weight_map:
        raise ConfigError("weight_map must map tensor names to shard files", source=str(index_path),
                          field="weight_map", value=weight_map)
    state: dict[str, Tensor] = {}
    for shard in sorted(set(weight_map.values())):
        path = root / str(shard)
        if path.parent != root or not path.is_file():
            raise NotFoundError(f"{index_path}: shard {shard!r} is not a file in {root}")
        state.update(load_file(str(path)))
    return state


def write_checkpoint(root: Path, model: NasLM, tokenizer: Tokenizer) -> dict[str, Any] | None:
    """Write weights, tokenizer files and, where ``model.arch`` maps, ``config.json`` and
    ``generation_config.json`` into ``root``; returns the config written (None when unmapped)."""
    from safetensors.torch import save

    arch = model.arch
    # Serialised in memory and written like every other file: safetensors' save_file creates
    # its file 0600, which would hide the weights from a deployment's user; this honours umask.
    (root / WEIGHTS_FILE).write_bytes(save(
        to_hf_state_dict(model, arch),
        metadata={"format": "pt", "nas.architecture": arch.to_json(),
                  "nas.layout": "hf-llama: one tensor per layer application"}))
    special = tokenizer.special_tokens
    config = hf_config(arch, special)
    if config is not None:
        _write_json(root / CONFIG_FILE, config)
        generation = generation_config(special)
        if generation is not None:
            _write_json(root / GENERATION_CONFIG_FILE, generation)
    tokenizer.save(root)
    _write_json(root / TOKENIZER_CONFIG_FILE, tokenizer_config(arch, special))
    return config


# ----- reading a directory ----------------------------------------------------------------
def read_architecture(directory: str | os.PathLike[str]) -> Architecture:
    """The architecture of a checkpoint directory: our ``architecture.json`` where there is one
    (it says what config.json cannot: sharing, linear attention), else ``config.json``."""
    root = Path(directory)
    ours, config = root / ARCHITECTURE_FILE, root / CONFIG_FILE
    if ours.is_file():
        return Architecture.from_json(ours.read_text(), source=str(ours))
    if config.is_file():
        return architecture_from_hf_config(_read_json(config), source=str(config))
    if not root.is_dir():
        raise NotFoundError(f"{root}: no such directory")
    raise NotFoundError(f"{root}: no {ARCHITECTURE_FILE} (not a directory written by nas export) "
                        f"and no {CONFIG_FILE} (not a Hugging Face checkpoint)")


def load(directory: str | os.PathLike[str]) -> NasLM:
    """The PyTorch model (eval mode, CPU, fp32) of an exported directory or of a Llama/Mistral
    checkpoint directory that transformers saved."""
    root = Path(directory)
    arch = read_architecture(root)
    return from_hf_state_dict(arch, read_weights(root), source=str(root))


def read_checkpoint(directory: str | os.PathLike[str]) -> Checkpoint:
    """A parent model: architecture, weights and tokenizer of a checkpoint directory.

    The tokenizer is required (a candidate derived from a parent keeps the parent's token ids),
    and must fit the model's vocabulary.
    """
    from tokenizers import Tokenizer as HFTokenizer

    root = Path(directory)
    arch = read_architecture(root)  # the cheap checks first: config, then tokenizer, then weights
    tokenizer_file = root / TOKENIZER_FILE
    if not tokenizer_file.is_file():
        raise NotFoundError(f"{root}: no {TOKENIZER_FILE} (the parent's tokenizer, as "
                            "tokenizer.save_pretrained writes it)")
    try:
        vocab = HFTokenizer.from_file(str(tokenizer_file)).get_vocab_size(with_added_tokens=True)
    except Exception as err:  # noqa: BLE001 - tokenizers raises a bare Exception for a malformed file
        raise ConfigError(f"not a tokenizers file: {err}", source=str(tokenizer_file)) from None
    if vocab > arch.vocab_size:
        raise ConfigError(f"has {vocab} tokens, more than the model's vocab_size={arch.vocab_size}",
                          source=str(tokenizer_file), field="vocab_size", value=vocab)
    model = from_hf_state_dict(arch, read_weights(root), source=str(root))
    config_path = root / CONFIG_FILE
    config = _read_json(config_path) if config_path.is_file() else None
    return Checkpoint(root, arch, model, tokenizer_file, config)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ConfigError(f"not readable JSON: {err}", source=str(path)) from None
    if not isinstance(data, dict):
        raise ConfigError(f"must hold a JSON object, not {type(data).__name__}", source=str(path))
    return data


def _write_json(path: Path, data: Mapping[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, allow_nan=False) + "\n")
