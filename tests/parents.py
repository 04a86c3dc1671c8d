"""Parent checkpoints for the tests that read them (`nas.checkpoint`, `nas.derive`).

Real ``save_pretrained`` output of tiny transformers Llama/Mistral models, and directories our
own `nas.checkpoint.write_checkpoint` writes, so what a search reads as a parent in the tests
is what transformers and ``nas export`` actually write.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from nas.architecture import Architecture
from nas.model import NasLM

transformers = pytest.importorskip("transformers")

VOCAB = 64
WINDOW = 3


def hf_config(kind: str = "llama", **overrides: Any) -> Any:
    """A tiny Llama (or Mistral, sliding window) config: 2 layers, width 32, 4 heads / 2 kv."""
    common = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32,
                  rms_norm_eps=1e-5, tie_word_embeddings=True)
    common.update(overrides)
    if kind == "mistral":
        return transformers.MistralConfig(sliding_window=WINDOW, **common)
    return transformers.LlamaConfig(**common)


def save_tokenizer(directory: Path, size: int = VOCAB) -> None:
    """A word-level tokenizer.json as `PreTrainedTokenizerFast.save_pretrained` writes it."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"<unk>": 0, **{f"w{i}": i for i in range(1, size)}}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="<unk>")
    fast.save_pretrained(directory)


def hf_parent(directory: Path, config: Any, seed: int = 0, tokenizer: bool = True,
              **save: Any) -> Any:
    """A tiny transformers model with every weight random (norms too), saved to ``directory``."""
    torch.manual_seed(seed)
    cls = transformers.MistralForCausalLM if config.model_type == "mistral" else transformers.LlamaForCausalLM
    hf = cls(config).eval()
    with torch.no_grad():
        for name, param in hf.named_parameters():
            if "norm" in name:  # ones at init: make a wrong mapping of norms visible
                param.add_(0.2 * torch.randn_like(param))
    hf.save_pretrained(directory, **save)
    if tokenizer:
        save_tokenizer(directory)
    return hf


def nas_parent(directory: Path, model: NasLM) -> Architecture:
    """``model`` written as `nas export` writes its weights, with the byte tokenizer and our
    ``architecture.json`` (which says what config.json cannot: sharing, linear attention)."""
    from nas.checkpoint import write_checkpoint
    from nas.hf_config import ARCHITECTURE_FILE
    from nas.tokenizer import ByteTokenizer

    directory.mkdir(parents=True, exist_ok=True)
    (directory / ARCHITECTURE_FILE).write_text(model.arch.to_json())
    write_checkpoint(directory, model, ByteTokenizer())
    return model.arch
