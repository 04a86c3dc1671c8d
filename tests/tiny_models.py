"""Tiny architectures shared by the model and ONNX tests (2 layers, width 32: milliseconds each)."""

from __future__ import annotations

import pytest
import torch

from nas.architecture import Architecture

KINDS = ("softmax", "sliding_window", "linear")
SHARINGS = ("none", "all", "repeat:2")


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # Tiny matmuls on a shared 2-core machine: a second OpenMP thread only waits for a busy core.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny(attention: str = "softmax", sharing: str = "none", **kw) -> Architecture:
    base = dict(n_layer=2, d_model=32, n_head=4, n_kv_head=2, vocab_size=64, max_seq_len=32,
                attention=attention, window=3 if attention == "sliding_window" else None, sharing=sharing)
    base.update(kw)
    return Architecture(**base)
