"""A candidate's initial weights from a parent model: weight inheritance (issue 15).

`parent_importance` runs the parent once over calibration tokens with hooks and measures what
each part contributes (`nas.derivation.Importance`, cached by the driver). `derive` then cuts a
candidate `Architecture` out of the parent's weights, keeping the layers, heads and channels
`nas.derivation` plans (its docstring has those rules) and doing this to them:

* **Residual width**: one set of ``d_model`` channels for the whole model, the largest
  channel importance (Minitron: mean ``|x|`` of every RMSNorm's output), kept in parent order
  and applied to ``embed_tokens`` columns, every norm weight, the residual side of every
  projection and ``lm_head``. RMSNorm divides by the root mean square over the channels it
  sees, so dropping channels changes that denominator: each norm weight is rescaled by
  ``sqrt(f * d / d')``, ``f`` the share of that norm's input energy (mean ``x^2`` on the
  calibration tokens) in the kept channels: exact when the dropped channels carry no energy,
  right on average otherwise.
* **GQA**: a candidate kv head's k and v rows are the planned weighted mean of its parent kv
  heads' rows.
* **head_dim**: softmax divides scores by ``sqrt(head_dim)``; q is scaled by ``sqrt(m)``, so a
  candidate score is ``m`` times the kept pairs' sum over the parent's ``sqrt(hd)``: the kept
  pairs sample the spectrum evenly, so this estimates the parent's whole score (unbiased when
  pairs contribute alike) and keeps the softmax's temperature.
* **Attention kind**: the projections are reused whatever the kinds (softmax -> sliding window
  computes the same within the window; -> linear relies on distillation to adapt).
* **Sharing**: a unique candidate block replacing several kept parent layers is their mean,
  each pruned first (a parent block shared by several applications is pruned once, on its
  importance summed over them, so its copies stay identical and their mean is itself).
* **Embeddings**: a tied candidate takes the parent's input embedding; an untied candidate of a
  tied parent gets a copy of it as ``lm_head``.

Measured on a trained parent (L4 d128 h4, stdlib bytes, val 2.08 nats), derived to d_model 64
(head_dim 32 -> 16) with no training: 2.80 nats; 2.90 without the norm rescale, 2.92 with v/o
taking the q/k dims, 2.85 without the q factor and 2.91 with ``1/sqrt(m)`` (the exact partial
sum); a fresh initialisation scores 5.4. Halving the depth: 2.18 by importance (layers 0, 2),
2.30 uniform (0, 3).

`derive` never writes to the parent and is deterministic (ties go to the lower index). It
imports torch only when called.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from nas.architecture import Architecture
from nas.derivation import (
    BlockPlan,
    Derivation,
    Importance,
    Vectors,
    planned,
    summed,
    top_indices,
)

if TYPE_CHECKING:
    from torch import Tensor

    from nas.model import NasLM

__all__ = ["derive", "parent_importance"]


# ----- importance ---------------------------------------------------------------------------
def parent_importance(model: NasLM, tokens: Tensor, batch_size: int = 8) -> Importance:
    """Measure `Importance` with one no-grad forward over ``tokens`` (B, T) int64, in chunks
    of ``batch_size`` rows; hooks are removed afterwards and the model is left as it was."""
    import torch

    arch = model.arch
    if tokens.dim() != 2 or tokens.dtype != torch.int64:
        raise ValueError(f"tokens must be (B, T) int64, got {tuple(tokens.shape)} {tokens.dtype}")
    acc = _Accumulators(arch, model.embed_tokens.weight.device)
    handles = _register(model, acc)
    try:
        with torch.no_grad():
            for start in range(0, tokens.shape[0], batch_size):
                acc.layer = 0
                model(tokens[start:start + batch_size].to(model.embed_tokens.weight.device))
    finally:
        for handle in handles:
            handle.remove()
    return acc.result(tokens.numel())


class _Accumulators:
    """float64 sums over tokens on the model's device (no sync per hook); ``layer`` is the
    application the hooks are in."""

    def __init__(self, arch: Architecture, device: Any) -> None:
        import torch

        n, d, kw = arch.n_layer, arch.d_model, {"dtype": torch.float64, "device": device}
        self.arch, self.layer = arch, 0
        self.block = torch.zeros(n, **kw)
        self.channels = torch.zeros(d, **kw)
        self.heads = torch.zeros(n, arch.n_head, **kw)
        self.ffn = torch.zeros(n, arch.ffn_hidden, **kw)
        self.head_channels = torch.zeros(n, arch.n_head * arch.head_dim, **kw)
        self.norm_energy = torch.zeros(2 * n + 1, d, **kw)

    def norm(self, site: int, x: Tensor, out: Tensor) -> None:
        self.channels += out.detach().abs().double().sum((0, 1))
        self.norm_energy[site] += x.detach().double().pow(2).sum((0, 1))

    def result(self, n_tokens: int) -> Importance:
        def rows(t: Tensor) -> Vectors:
            return tuple(tuple(row) for row in (t / n_tokens).cpu().tolist())

        return Importance(block=tuple((self.block / n_tokens).cpu().tolist()),
                          channels=tuple((self.channels / n_tokens).cpu().tolist()),
                          heads=rows(self.heads), ffn=rows(self.ffn),
                          head_channels=rows(self.head_channels),
                          norm_energy=rows(self.norm_energy), tokens=n_tokens)


def _register(model: NasLM, acc: _Accumulators) -> list[Any]:
    """Hooks on every unique block; a shared block fires once per application, in order."""
    import torch.nn.functional as F

    arch = acc.arch

    def on_block(_m: Any, args: tuple[Tensor, ...], out: tuple[Tensor, Any]) -> None:
        cos = F.cosine_similarity(args[0].double(), out[0].double(), dim=-1)  # (B, T)
        acc.block[acc.layer] += (1.0 - cos).sum()
        acc.layer += 1

    def on_attention_out(_m: Any, args: tuple[Tensor, ...]) -> None:
        out = args[0].detach().double()  # (B, T, H * hd): o_proj's input
        b, t, _ = out.shape
        acc.heads[acc.layer] += out.view(b, t, arch.n_head, arch.head_dim).norm(dim=-1).sum((0, 1))
        acc.head_channels[acc.layer] += out.abs().sum((0, 1))

    def on_ffn(_m: Any, args: tuple[Tensor, ...]) -> None:
        acc.ffn[acc.layer] += args[0].detach().double().abs().sum((0, 1))

    handles = []
    for block in model.layers:
        handles += [
            block.register_forward_hook(on_block),
            block.input_layernorm.register_forward_hook(
                lambda _m, a, o: acc.norm(2 * acc.layer, a[0], o)),
            block.post_attention_layernorm.register_forward_hook(
                lambda _m, a, o: acc.norm(2 * acc.layer + 1, a[0], o)),
            block.self_attn.o_proj.register_forward_pre_hook(on_attention_out),
            block.mlp.down_proj.register_forward_pre_hook(on_ffn),
        ]
    handles.append(model.norm.register_forward_hook(lambda _m, a, o: acc.norm(2 * arch.n_layer, a[0], o)))
    return handles


# ----- derivation -----------------------------------------------------------------------------
def derive(parent: NasLM, importance: Importance, arch: Architecture, *, parent_id: str,
           depth: str = "importance") -> tuple[NasLM, Derivation]:
    """A candidate `NasLM` for ``arch`` (with the parent's eps and rotary base) from ``parent``'s
    weights, by the rules of this module's and `nas.derivation`'s docstrings, and the record of
    how (`nas.derivation.plan`). CPU, fp32.
    Raises `ConfigError` naming the field and value for what the parent cannot give, a bad
    ``depth``, or importance measured on another architecture."""
    import torch

    from nas.model import build_model

    p_arch = parent.arch
    record, arch, plans = planned(p_arch, importance, arch, parent_id, depth)
    d_keep = top_indices(importance.channels, arch.d_model)
    with torch.no_grad():
        pruned = {u: _prune(parent.layers[u], p, d_keep, importance, p_arch, arch) for u, p in plans.items()}
        model = build_model(arch)  # every weight is overwritten below
        for block, group in zip(model.layers, record.blocks, strict=True):
            _load(block, _mean([pruned[p_arch.layer_to_block[i]] for i in group]))
        keep = torch.tensor(d_keep)
        model.embed_tokens.weight.copy_(_cpu(parent.embed_tokens.weight)[:, keep])
        if not arch.tie_embeddings:  # a tied parent's lm_head *is* its embedding
            model.lm_head.weight.copy_(_cpu(parent.lm_head.weight)[:, keep])
        final = _norm_scale(importance.norm_energy[-1], d_keep)
        model.norm.weight.copy_(_cpu(parent.norm.weight)[keep] * final)
    return model, record


def _prune(block: Any, plan: BlockPlan, d_keep: list[int], imp: Importance, parent: Architecture,
           arch: Architecture) -> dict[str, Tensor]:
    """One parent block cut down to the candidate's shape: {Block state_dict key: tensor}."""
    import torch

    hd = parent.head_dim
    keep = torch.tensor(d_keep)
    attn, mlp = block.self_attn, block.mlp
    q = _cpu(attn.q_proj.weight)[:, keep]  # (H * hd, d')
    k, v = _cpu(attn.k_proj.weight)[:, keep], _cpu(attn.v_proj.weight)[:, keep]  # (KV * hd, d')
    o = _cpu(attn.o_proj.weight)[keep]  # (d', H * hd)

    def rows(head: int, dims: Sequence[int]) -> Tensor:
        return torch.tensor([head * hd + i for i in dims])

    softmax = "linear" not in (parent.attention, arch.attention)
    q_scale = math.sqrt(hd / arch.head_dim) if softmax else 1.0
    q_rows = torch.cat([rows(h, plan.qk_dims) for h in plan.heads])
    run = arch.n_head // arch.n_kv_head
    o_cols = torch.cat([rows(h, plan.v_dims[i // run]) for i, h in enumerate(plan.heads)])

    def pooled(weight: Tensor, dims: Sequence[Sequence[int]]) -> Tensor:
        return torch.cat([_weighted(weight, rows, kvs, d) for kvs, d in zip(plan.kv_weights, dims,
                                                                           strict=True)])

    apps = plan.applications
    input_scale = _norm_scale(summed(imp.norm_energy, [2 * a for a in apps]), d_keep)
    post_scale = _norm_scale(summed(imp.norm_energy, [2 * a + 1 for a in apps]), d_keep)
    ffn = torch.tensor(plan.ffn)
    return {
        "input_layernorm.weight": _cpu(block.input_layernorm.weight)[keep] * input_scale,
        "self_attn.q_proj.weight": q[q_rows] * q_scale if q_scale != 1.0 else q[q_rows],
        "self_attn.k_proj.weight": pooled(k, [plan.qk_dims] * arch.n_kv_head),
        "self_attn.v_proj.weight": pooled(v, plan.v_dims),
        "self_attn.o_proj.weight": o[:, o_cols],
        "post_attention_layernorm.weight": _cpu(block.post_attention_layernorm.weight)[keep] * post_scale,
        "mlp.gate_proj.weight": _cpu(mlp.gate_proj.weight)[ffn][:, keep],
        "mlp.up_proj.weight": _cpu(mlp.up_proj.weight)[ffn][:, keep],
        "mlp.down_proj.weight": _cpu(mlp.down_proj.weight)[keep][:, ffn],
    }


def _weighted(weight: Tensor, rows: Any, kv_weights: Mapping[int, float],
              dims: Sequence[int]) -> Tensor:
    """Sum over parent kv heads of weight * their rows (one head at weight 1: an exact copy)."""
    parts = [weight[rows(kv, dims)] if w == 1.0 else w * weight[rows(kv, dims)]
             for kv, w in kv_weights.items()]
    out = parts[0]
    for part in parts[1:]:
        out = out + part
    return out


def _norm_scale(energy: Sequence[float], d_keep: Sequence[int]) -> float:
    """sqrt(f * d / d'), f the kept share of the norm input's energy (see the module docstring);
    exactly 1 when every channel is kept."""
    if len(d_keep) == len(energy):
        return 1.0
    total = sum(energy)
    if total <= 0:
        return 1.0
    share = sum(energy[i] for i in d_keep) / total
    return math.sqrt(share * len(energy) / len(d_keep))


def _mean(blocks: list[dict[str, Tensor]]) -> dict[str, Tensor]:
    """The mean of pruned blocks; one block (or copies of one) is returned as it is, exactly."""
    import torch

    first = blocks[0]
    if all(b is first for b in blocks):
        return first
    return {key: torch.stack([b[key] for b in blocks]).mean(0) for key in first}


def _load(block: Any, state: Mapping[str, Tensor]) -> None:
    own = block.state_dict()
    if set(own) != set(state):
        raise RuntimeError(f"derived block has keys {sorted(state)}, the model's are {sorted(own)}")
    for key, tensor in state.items():
        if own[key].shape != tensor.shape:
            raise RuntimeError(f"derived {key} has shape {tuple(tensor.shape)}, the model needs "
                               f"{tuple(own[key].shape)}")
        own[key].copy_(tensor)


def _cpu(t: Tensor) -> Tensor:
    import torch

    return t.detach().to("cpu", torch.float32)
