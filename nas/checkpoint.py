"""Hugging Face Llama/Mistral checkpoints: written for an export, read by `load` and for parents.

A checkpoint directory is ``config.json`` + safetensors weights (+ ``tokenizer.json``), the
layout ``transformers`` writes with ``save_pretrained``. We write it for every export (the
config only where the architecture maps) and read it back in two places: `load` (our exports,
and any transformers-saved Llama/Mistral directory) and `read_checkpoint` (a parent model that
a search derives candidates from). The file names and the config.json <-> `Architecture`
mapping, which need no torch, are `nas.hf_config`'s; this module is the weights.

One weights layout for every reader. The safetensors file holds one tensor per *layer
application* under Llama's names (``model.layers.{i}.self_attn.q_proj.weight``, ...), so a shared
block (``sharing`` all / repeat:k) is unrolled into identical copies, and tied embeddings store
only ``model.embed_tokens.weight`` (transformers ties ``lm_head`` from ``tie_word_embeddings``).
transformers reads the file as is; `from_hf_state_dict` re-ties the copies into one block and
refuses a file whose copies differ. The price is size for shared models (the block is stored
``repeat`` times); the ONNX graphs keep unique weights. Linear attention, which has no
transformers equivalent, uses the same layout, so there is one rule to document.

Importing this module loads no torch (`nas.load` imports it up front); torch, safetensors and
tokenizers load when tensors are touched.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from nas.architecture import Architecture
from nas.errors import ConfigError, ExportError, NotFoundError
from nas.hf_config import (
    CONFIG_FILE,
    GENERATION_CONFIG_FILE,
    TOKENIZER_CONFIG_FILE,
    TOKENIZER_FILE,
    WEIGHTS_FILE,
    WEIGHTS_INDEX_FILE,
    generation_config,
    hf_config,
    read_architecture,
    read_json,
    tokenizer_config,
)

if TYPE_CHECKING:
    from torch import Tensor

    from nas.model import NasLM
    from nas.tokenizer import Tokenizer

__all__ = ["HF_ATOL", "Checkpoint", "CheckpointError", "from_hf_state_dict", "load", "read_checkpoint",
           "read_weights", "to_hf_state_dict", "write_checkpoint"]

# transformers vs our model on the same weights: max |logit difference| (fp32). Same math in a
# different order of operations: well below this in practice (BENCHMARKS.md has the numbers).
HF_ATOL = 1e-4

# Buffers some writers store that are derived from the config (`nas.hf_config` checks it), never weights.
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
    weight_map = read_json(index_path).get("weight_map")
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
    config = read_json(config_path) if config_path.is_file() else None
    return Checkpoint(root, arch, model, tokenizer_file, config)


def _write_json(path: Path, data: Mapping[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, allow_nan=False) + "\n")
