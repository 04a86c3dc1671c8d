"""What a candidate derived from a parent keeps of it (issue 15): the rules, without weights.

Torch-free on purpose: the space-load checks (`nas.space.parent`: every listed value must be
derivable) and the driver's record of every candidate (`plan`, infeasible and pruned ones too)
need these rules in processes that never build a model, and must not pay for torch. `nas.derive`
measures `Importance` on the parent and cuts the weights by the indices planned here.

Which parent indices a candidate keeps:

* **Depth**: the candidate's ``n_layer`` applications take ``n_layer`` parent layer
  applications, in parent order (always a valid order: the residual stream is only ever read
  by later layers), chosen by ``depth``: ``"importance"`` keeps the layers with the largest
  block influence (ShortGPT: ``1 - mean cos(x_in, x_out)``, a block that barely changes its
  input is the cheapest to drop), ``"uniform"`` keeps evenly spaced ones, first and last
  included (the benchmark measures which is better).
* **FFN**: the ``ffn_hidden`` channels with the largest mean ``|silu(gate) * up|``.
* **Query heads**: the ``n_head`` heads with the largest mean L2 norm of their attention output,
  chosen over all of a layer's heads (indices mean nothing: fixed index groups could drop the
  two best heads for being neighbours), kept in parent order and cut into ``n_kv_head`` runs:
  run j reads candidate kv head j, so heads that read one parent kv head stay together.
* **GQA**: candidate kv head j is the mean of the parent kv heads its run reads, weighted by how
  many of the run read each (the weights that minimise the summed squared change of the keys
  those heads see); a parent kv head none of whose query heads was kept is not pooled. Keeping
  every head thus pools whole groups of ``n_kv / n_kv'`` (the usual GQA conversion; ``n_kv'``
  must divide ``n_kv``), ``n_kv' == n_head'`` is exact head pruning, and parent == candidate
  is the identity.
* **head_dim**: for ``hd' = hd / m`` (integer m), q and k keep the rotary pairs ``i = i' * m``
  (``i' < hd'/2``) and their second-half partners ``hd/2 + i' * m``: `nas.model.rotate_half`
  pairs channel ``i`` with ``i + hd/2`` and gives it frequency ``theta^(-2i/hd)``, so the
  candidate's pair i' turns at ``theta^(-2i'/hd') = theta^(-2i/hd)``, the parent's frequency,
  exactly (`nas.derive` rescales q for the softmax temperature). Values and ``o_proj`` carry no
  rotary structure, so their head dims are the ones with the largest mean ``|attention
  output|`` over each candidate kv head's query heads.
* The candidate inherits the parent's ``rms_norm_eps`` and ``rope_theta``
  (`candidate_architecture`): it must compute what the parent computed.

Everything here is deterministic: ties go to the lower index.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from nas.architecture import Architecture
from nas.errors import ConfigError
from nas.specs import DEPTH_STRATEGIES

__all__ = ["BlockPlan", "Derivation", "Importance", "Vectors", "beyond_parent", "candidate_architecture",
           "check_derivable", "plan", "planned", "select_layers", "summed", "top_indices"]

Vectors = tuple[tuple[float, ...], ...]


# ----- importance ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Importance:
    """What each part of a parent does on calibration tokens; one value per layer *application*
    (measured by `nas.derive.parent_importance`, cached by the driver: `to_dict`).

    ``norm_energy`` has one row per RMSNorm site: ``2 * i`` and ``2 * i + 1`` are application
    i's input and post-attention norms, the last row the final norm.
    """

    block: tuple[float, ...]  # 1 - mean cos(x_in, x_out) (ShortGPT block influence)
    channels: tuple[float, ...]  # per residual channel: mean |norm output|, summed over norms
    heads: Vectors  # per application, per query head: mean L2 norm of its attention output
    ffn: Vectors  # per application, per FFN channel: mean |silu(gate) * up|
    head_channels: Vectors  # per application, per (query head, dim): mean |attention output|
    norm_energy: Vectors  # per norm site, per residual channel: mean x^2 of the norm's input
    tokens: int  # calibration tokens measured

    def to_dict(self) -> dict[str, Any]:
        return {f.name: _lists(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Importance:
        names = [f.name for f in dataclasses.fields(cls)]
        missing = [n for n in names if n not in data]
        if missing:
            raise ConfigError(f"importance has no {', '.join(missing)}", field=missing[0])
        return cls(**{n: _tuples(data[n]) for n in names})

    def check(self, arch: Architecture) -> None:
        """Refuse importance measured on another architecture (a stale cache entry)."""
        shapes = {"block": (arch.n_layer,), "channels": (arch.d_model,),
                  "heads": (arch.n_layer, arch.n_head), "ffn": (arch.n_layer, arch.ffn_hidden),
                  "head_channels": (arch.n_layer, arch.n_head * arch.head_dim),
                  "norm_energy": (2 * arch.n_layer + 1, arch.d_model)}
        for name, shape in shapes.items():
            value = getattr(self, name)
            got = (len(value),) if len(shape) == 1 else (len(value), *{len(row) for row in value})
            if got != shape:
                raise ConfigError(f"importance.{name} has shape {got}, the parent "
                                  f"{arch.describe()} needs {shape}", field=f"importance.{name}")


def _lists(value: Any) -> Any:
    return [_lists(v) for v in value] if isinstance(value, tuple) else value


def _tuples(value: Any) -> Any:
    return tuple(_tuples(v) for v in value) if isinstance(value, list) else value


# ----- what can be derived ------------------------------------------------------------------
_AT_MOST = {"n_layer": "layers", "d_model": "residual channels", "n_head": "query heads",
            "max_seq_len": "positions"}
_INHERITED = ("rms_norm_eps", "rope_theta", "vocab_size")
_FREE = ("ffn_mult", "attention", "window", "sharing", "tie_embeddings")  # any value derives


def beyond_parent(parent: Architecture, field: str, value: Any) -> str | None:
    """Why ``field=value`` cannot be derived from ``parent`` whatever the other fields are, or
    None. The reason follows the value, as `nas.architecture` words errors:
    ``f"{field}={value!r} {reason}"``. ``ffn_mult`` and head_dim depend on ``d_model`` and
    ``n_head`` too: `check_derivable` checks those on a whole architecture. Values are assumed
    valid on their own (`nas.architecture.check_field` first); an unknown field is a KeyError."""
    if field in _AT_MOST:
        limit = getattr(parent, field)
        if value > limit:
            return f"is more than the parent's {limit} {_AT_MOST[field]} ({field}={limit})"
    elif field == "n_kv_head":
        if value > parent.n_kv_head or parent.n_kv_head % value:
            return (f"must divide the parent's n_kv_head={parent.n_kv_head}: each candidate kv head "
                    "mean-pools a group of the parent's")
    elif field in _INHERITED:
        if value != getattr(parent, field):
            return (f"differs from the parent's {field}={getattr(parent, field)!r}: a derived "
                    "candidate keeps the parent's")
    elif field not in _FREE:
        raise KeyError(field)
    return None


def candidate_architecture(parent: Architecture, arch: Architecture) -> Architecture:
    """``arch`` with the parent's norm epsilon and rotary base: what `nas.derive.derive` builds."""
    return dataclasses.replace(arch, rms_norm_eps=parent.rms_norm_eps, rope_theta=parent.rope_theta)


def check_derivable(parent: Architecture, arch: Architecture) -> None:
    """Raise `ConfigError` naming the field and value of ``arch`` that ``parent`` cannot give.

    ``arch`` is checked as given: pass `candidate_architecture` (as `nas.derive.derive` does)
    when the candidate is to inherit the parent's epsilon and rotary base.
    """
    for f in dataclasses.fields(Architecture):
        value = getattr(arch, f.name)
        reason = beyond_parent(parent, f.name, value)
        if reason:
            raise ConfigError(f"{f.name}={value!r} {reason}", field=f.name, value=value)
    if arch.head_dim > parent.head_dim or parent.head_dim % arch.head_dim:
        raise ConfigError(
            f"n_head={arch.n_head} gives head_dim=d_model/n_head={arch.head_dim} at d_model="
            f"{arch.d_model}, which must divide the parent's head_dim={parent.head_dim} (the kept "
            "rotary pairs are every (parent/candidate)-th)", field="n_head", value=arch.n_head)
    if arch.ffn_hidden > parent.ffn_hidden:
        raise ConfigError(
            f"ffn_mult={arch.ffn_mult:g} gives {arch.ffn_hidden} FFN channels at d_model="
            f"{arch.d_model}, more than the parent's {parent.ffn_hidden}",
            field="ffn_mult", value=arch.ffn_mult)


# ----- the record -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Derivation:
    """How a candidate came from its parent: stored with the candidate, shown on its page.
    Pairs are (parent, candidate)."""

    parent: str  # the parent's fingerprint, as the caller names it
    depth: str  # "importance" or "uniform"
    blocks: tuple[tuple[int, ...], ...]  # per candidate unique block: the parent layers it replaces
    n_layer: tuple[int, int]
    d_model: tuple[int, int]
    n_head: tuple[int, int]
    n_kv_head: tuple[int, int]
    head_dim: tuple[int, int]
    ffn: tuple[int, int]  # FFN channels (ffn_hidden)
    kv_pooling: int  # most parent kv heads mean-pooled into one candidate kv head
    attention: tuple[str, str]
    tie_embeddings: tuple[bool, bool]
    params: tuple[int, int]  # unique parameters

    def to_dict(self) -> dict[str, Any]:
        return {f.name: _lists(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Derivation:
        names = {f.name for f in dataclasses.fields(cls)}
        if set(data) != names:
            raise ConfigError(f"a derivation has the fields {', '.join(sorted(names))}; got "
                              f"{', '.join(sorted(map(str, data)))}", field="derivation")
        return cls(**{n: _tuples(data[n]) for n in names})

    def describe(self) -> str:
        """One line, e.g. ``from 3f2a: layers 0,1,3 by importance; d 64→32, heads 4/kv2→4/kv1
        (kv pooled ×2), head_dim 16→8, ffn 128→64; 52k→14k params (27%)``."""
        if all(len(b) == 1 for b in self.blocks):
            layers = "layers " + ",".join(str(b[0]) for b in self.blocks)
        else:
            layers = "blocks " + "".join("(" + "+".join(map(str, b)) + ")" for b in self.blocks)
        parts = [f"d {_arrow(self.d_model)}",
                 f"heads {self.n_head[0]}/kv{self.n_kv_head[0]}→{self.n_head[1]}/kv{self.n_kv_head[1]}"
                 + (f" (kv pooled ×{self.kv_pooling})" if self.kv_pooling > 1 else ""),
                 f"head_dim {_arrow(self.head_dim)}", f"ffn {_arrow(self.ffn)}"]
        if self.attention[0] != self.attention[1]:
            parts.append(_arrow(self.attention))
        if self.tie_embeddings[0] != self.tie_embeddings[1]:
            parts.append(_arrow(tuple("tied" if t else "untied" for t in self.tie_embeddings)))
        share = 100 * self.params[1] / self.params[0]
        return (f"from {self.parent}: {layers} by {self.depth}; {', '.join(parts)}; "
                f"{_count(self.params[0])}→{_count(self.params[1])} params ({share:.0f}%)")


def _arrow(pair: tuple[Any, ...]) -> str:
    return str(pair[0]) if pair[0] == pair[1] else f"{pair[0]}→{pair[1]}"


def _count(n: int) -> str:
    return f"{n / 1e6:.1f}M" if n >= 1e6 else f"{n / 1e3:.0f}k"


# ----- planning -------------------------------------------------------------------------------
def select_layers(importance: Importance, n_parent: int, n: int, depth: str) -> tuple[int, ...]:
    """The ``n`` parent layer applications a candidate keeps, in parent order."""
    if depth == "uniform":
        if n == 1:
            return (0,)
        step = (n_parent - 1) / (n - 1)  # >= 1, so the rounded positions are distinct
        return tuple(math.floor(i * step + 0.5) for i in range(n))
    if depth == "importance":
        return tuple(top_indices(importance.block, n))
    raise ConfigError(f"depth={depth!r} must be one of {', '.join(DEPTH_STRATEGIES)}",
                      field="depth", value=depth)


def top_indices(scores: Sequence[float], k: int) -> list[int]:
    """Indices of the k largest scores in ascending order; ties go to the lower index."""
    return sorted(sorted(range(len(scores)), key=lambda i: (-scores[i], i))[:k])


def summed(rows: Vectors, applications: Sequence[int]) -> list[float]:
    """The rows of ``applications`` summed column-wise: a shared block's importance."""
    return [sum(col) for col in zip(*(rows[a] for a in applications), strict=True)]


def plan(parent: Architecture, importance: Importance, arch: Architecture, *, parent_id: str,
         depth: str = "importance") -> Derivation:
    """How `nas.derive.derive` would make ``arch`` from ``parent``, without building weights (the
    driver's record of every candidate, infeasible and pruned ones too). Raises as it does."""
    return planned(parent, importance, arch, parent_id, depth)[0]


def planned(parent: Architecture, importance: Importance, arch: Architecture, parent_id: str,
            depth: str) -> tuple[Derivation, Architecture, dict[int, BlockPlan]]:
    """`plan`'s record, the candidate architecture (`candidate_architecture`) and, per parent
    unique block the candidate uses, the indices it keeps: what `nas.derive.derive` cuts by."""
    arch = candidate_architecture(parent, arch)
    check_derivable(parent, arch)
    importance.check(parent)
    layers = select_layers(importance, parent.n_layer, arch.n_layer, depth)
    used = sorted({parent.layer_to_block[i] for i in layers})  # the parent blocks to prune
    plans = {u: _block_plan(importance, parent, arch, u) for u in used}
    k = arch.repeat
    record = Derivation(
        parent=parent_id, depth=depth,
        blocks=tuple(layers[b * k:(b + 1) * k] for b in range(arch.n_unique_blocks)),
        n_layer=(parent.n_layer, arch.n_layer), d_model=(parent.d_model, arch.d_model),
        n_head=(parent.n_head, arch.n_head), n_kv_head=(parent.n_kv_head, arch.n_kv_head),
        head_dim=(parent.head_dim, arch.head_dim), ffn=(parent.ffn_hidden, arch.ffn_hidden),
        kv_pooling=max(len(w) for p in plans.values() for w in p.kv_weights),
        attention=(parent.attention, arch.attention),
        tie_embeddings=(parent.tie_embeddings, arch.tie_embeddings),
        params=(parent.n_params, arch.n_params))  # exact: Architecture.n_params is tested
    return record, arch, plans


@dataclass(frozen=True)
class BlockPlan:
    """Which parent indices one pruned parent block keeps (per unique parent block)."""

    applications: tuple[int, ...]  # the parent applications that run this block
    heads: tuple[int, ...]  # kept query heads, candidate order: run j reads candidate kv head j
    kv_weights: tuple[dict[int, float], ...]  # per candidate kv head: parent kv head -> weight
    qk_dims: tuple[int, ...]  # kept dims of each q/k head (rotary pairs i'*m, then partners)
    v_dims: tuple[tuple[int, ...], ...]  # per candidate kv head: kept dims of v / o_proj
    ffn: tuple[int, ...]


def _block_plan(imp: Importance, parent: Architecture, arch: Architecture, unique: int) -> BlockPlan:
    """A parent block shared by several applications is planned once, on its importance summed
    over them, so every copy is cut alike."""
    apps = tuple(i for i, b in enumerate(parent.layer_to_block) if b == unique)
    hd, hd_c, per_kv = parent.head_dim, arch.head_dim, arch.n_head // arch.n_kv_head
    heads = tuple(top_indices(summed(imp.heads, apps), arch.n_head))
    runs = [heads[j * per_kv:(j + 1) * per_kv] for j in range(arch.n_kv_head)]
    parent_per_kv = parent.n_head // parent.n_kv_head
    kv_weights = []
    for run in runs:
        counts: dict[int, int] = {}
        for h in run:
            counts[h // parent_per_kv] = counts.get(h // parent_per_kv, 0) + 1
        kv_weights.append({kv: c / per_kv for kv, c in sorted(counts.items())})
    m = hd // hd_c
    half = [i * m for i in range(hd_c // 2)]
    qk_dims = tuple(half + [hd // 2 + i for i in half])
    channels = summed(imp.head_channels, apps)
    v_dims = tuple(tuple(top_indices([sum(channels[h * hd + j] for h in run) for j in range(hd)], hd_c))
                   for run in runs)
    return BlockPlan(apps, heads, tuple(kv_weights), qk_dims, v_dims,
                     tuple(top_indices(summed(imp.ffn, apps), arch.ffn_hidden)))
