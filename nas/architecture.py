"""The frozen `Architecture`: the one value that crosses every boundary.

search -> model -> ONNX -> store -> API -> export all speak in `Architecture`.
This module imports no torch, so the CLI and service start fast.

Counting conventions (exact, closed form, tested against the built module):

* ``n_layer`` is the *effective* depth: the number of block applications.
  Sharing changes how many *unique* blocks hold weights, never the compute.
  ``sharing="all"`` uses 1 unique block; ``"repeat:k"`` uses ``n_layer / k``
  unique blocks, each run k times in a row (MobileLLM's immediate block-wise
  sharing); ``"none"`` uses ``n_layer``.
* Parameters are counted once however often they are used (tied embeddings,
  shared blocks). "Embedding" parameters are the token embedding and, when not
  tied, the output projection; everything else is "non-embedding".
* FLOPs count matrix multiplications only, 2 per multiply-add; element-wise
  work (norms, activations, rotary, softmax) is left out. The output
  projection over the whole vocabulary is counted for every token.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from nas.errors import ArchitectureError
from nas.util import stable_hash

AttentionKind = Literal["softmax", "sliding_window", "linear"]
ATTENTION_KINDS: tuple[str, ...] = ("softmax", "sliding_window", "linear")
FFN_MULTIPLE_OF = 16  # SwiGLU hidden size is rounded up to this, as Llama does.
Precision = Literal["fp32", "int8"]


@dataclass(frozen=True)
class Architecture:
    """A pre-norm decoder (RMSNorm, rotary positions, SwiGLU) with every choice the search makes."""

    n_layer: int = 2
    d_model: int = 64
    n_head: int = 4
    # None (left out) means n_head: plain multi-head attention. This is the one default
    # for `nas evaluate`, search spaces and the API alike; it is resolved in __post_init__.
    n_kv_head: int | None = None
    ffn_mult: float = 4.0
    attention: str = "softmax"
    window: int | None = None
    sharing: str = "none"
    tie_embeddings: bool = True
    vocab_size: int = 256
    max_seq_len: int = 256
    # Fixed by most models, but a parent checkpoint (issue 15) may say otherwise, and a candidate
    # derived from it must compute what the parent computed. Left out of `to_dict` (and so of the
    # hash) at these defaults: every architecture stored before the fields existed keeps its hash.
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0

    def __post_init__(self) -> None:
        if self.n_kv_head is None:
            object.__setattr__(self, "n_kv_head", self.n_head)
        if isinstance(self.ffn_mult, int) and not isinstance(self.ffn_mult, bool):
            # 2 and 2.0 are the same architecture: one canonical form keeps the hash stable.
            object.__setattr__(self, "ffn_mult", float(self.ffn_mult))
        for name in _FLOAT_FIELDS:  # 10000 and 10000.0 are one rotary base: one hash
            value = getattr(self, name)
            if _is_int(value):
                object.__setattr__(self, name, float(value))
        _validate(self)

    # ----- derived shape -------------------------------------------------------------
    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_head

    @property
    def kv_dim(self) -> int:
        """Width of the key (and of the value) projection."""
        return self.n_kv_head * self.head_dim

    @property
    def ffn_hidden(self) -> int:
        raw = self.ffn_mult * self.d_model
        return FFN_MULTIPLE_OF * math.ceil(raw / FFN_MULTIPLE_OF - 1e-9)

    @property
    def repeat(self) -> int:
        """How many times in a row each unique block runs."""
        if self.sharing == "all":
            return self.n_layer
        if self.sharing.startswith("repeat:"):
            return int(self.sharing.split(":", 1)[1])
        return 1

    @property
    def n_unique_blocks(self) -> int:
        return self.n_layer // self.repeat

    @property
    def layer_to_block(self) -> tuple[int, ...]:
        """Index of the unique block used at each of the ``n_layer`` applications."""
        return tuple(i // self.repeat for i in range(self.n_layer))

    # ----- parameters and memory ----------------------------------------------------------
    @property
    def block_params(self) -> int:
        d, kv, h = self.d_model, self.kv_dim, self.ffn_hidden
        norms = 2 * d
        attention = d * d + 2 * d * kv + d * d  # q, k, v, o
        ffn = 3 * d * h  # gate, up, down
        return norms + attention + ffn

    @property
    def embedding_params(self) -> int:
        tables = 1 if self.tie_embeddings else 2
        return tables * self.vocab_size * self.d_model

    @property
    def n_params(self) -> int:
        """Unique parameters of the built model (shared and tied weights counted once)."""
        return self.embedding_params + self.non_embedding_params

    @property
    def non_embedding_params(self) -> int:
        return self.n_unique_blocks * self.block_params + self.d_model  # + final norm

    def weight_bytes(self, precision: Precision = "fp32") -> int:
        """Bytes of weights: fp32 everywhere, or int8 matrices with fp32 norm vectors.

        The int8 figure is the payload of dynamic quantization (one byte per matrix
        weight); the per-tensor scales and zero points are a few bytes and not counted.
        """
        if precision == "fp32":
            return 4 * self.n_params
        if precision == "int8":
            norm_params = self.n_unique_blocks * 2 * self.d_model + self.d_model
            return (self.n_params - norm_params) + 4 * norm_params
        raise ArchitectureError(f"precision={precision!r} must be 'fp32' or 'int8'",
                                field="precision", value=precision)

    @property
    def kv_cache_bytes_per_token(self) -> int:
        """fp32 bytes the cache grows by per token (0 for linear attention's fixed state)."""
        if self.attention == "linear":
            return 0
        return 2 * self.n_layer * self.kv_dim * 4

    def kv_cache_bytes(self, context_len: int, bytes_per_value: int = 4) -> int:
        """Cache size for one sequence holding ``context_len`` tokens."""
        if self.attention == "linear":
            # Per layer: state S (n_kv, hd, hd) and normaliser z (n_kv, hd).
            per_layer = self.n_kv_head * (self.head_dim * self.head_dim + self.head_dim)
            return self.n_layer * per_layer * bytes_per_value
        kept = context_len if self.attention == "softmax" else min(context_len, self.window or 0)
        return 2 * self.n_layer * self.kv_dim * kept * bytes_per_value

    # ----- compute -------------------------------------------------------------------
    def _dense_flops_per_token(self) -> int:
        d, kv, h = self.d_model, self.kv_dim, self.ffn_hidden
        per_layer = 2 * (2 * d * d + 2 * d * kv + 3 * d * h)
        return self.n_layer * per_layer + 2 * self.vocab_size * self.d_model

    def _mixing_flops(self, keys: float) -> float:
        """Token-mixing FLOPs for one token of one layer attending to ``keys`` keys."""
        if self.attention == "linear":
            hd = self.head_dim
            # state update phi(k)^T v per kv head; read-out phi(q) S and phi(q).z per head.
            return 2 * (self.n_kv_head * hd * hd + self.n_head * hd * hd + self.n_head * hd)
        return 4 * self.d_model * keys  # q.k and attention-weighted v

    def flops_per_token_decode(self, past_len: int) -> float:
        """Forward FLOPs to produce one token with ``past_len`` tokens already cached."""
        keys = past_len + 1
        if self.attention == "sliding_window":
            keys = min(keys, self.window or keys)
        return self._dense_flops_per_token() + self.n_layer * self._mixing_flops(keys)

    def flops_per_token_prefill(self, prompt_len: int) -> float:
        """Forward FLOPs per token, averaged over a causal prompt of ``prompt_len`` tokens."""
        if prompt_len < 1:
            raise ArchitectureError(f"prompt_len={prompt_len} must be >= 1",
                                    field="prompt_len", value=prompt_len)
        t = prompt_len
        if self.attention == "softmax":
            mean_keys = (t + 1) / 2
        elif self.attention == "sliding_window":
            w = self.window or t
            total = t * (t + 1) / 2 if t <= w else w * (w + 1) / 2 + (t - w) * w
            mean_keys = total / t
        else:
            mean_keys = 0.0  # linear attention's cost does not depend on context
        return self._dense_flops_per_token() + self.n_layer * self._mixing_flops(mean_keys)

    def training_flops_per_token(self, seq_len: int) -> float:
        """Forward + backward: the usual 3x the forward cost."""
        return 3 * self.flops_per_token_prefill(seq_len)

    # ----- identity and serialisation ------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Every field, except the numeric constants still at their defaults (see above)."""
        data = dataclasses.asdict(self)
        for name, default in _FLOAT_FIELDS.items():
            if data[name] == default:
                del data[name]
        return data

    def to_json(self, indent: int | None = None) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str | None = None) -> Architecture:
        """Build from a mapping; unknown keys and wrong types are errors naming the key."""
        if not isinstance(data, Mapping):
            raise ArchitectureError(f"an architecture must be a mapping, got {type(data).__name__}",
                                    source=source)
        known = {f.name for f in dataclasses.fields(cls)}
        for key in data:
            if key not in known:
                raise ArchitectureError(
                    f"unknown field {key!r} (known: {', '.join(sorted(known))})",
                    source=source, field=str(key), value=data[key])
        try:
            return cls(**dict(data))
        except ArchitectureError as err:
            if source and err.source is None:
                raise ArchitectureError(str(err), source=source, field=err.field,
                                        value=err.value) from None
            raise

    @classmethod
    def from_json(cls, text: str, source: str | None = None) -> Architecture:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ArchitectureError(f"not valid JSON: {err}", source=source) from None
        return cls.from_dict(data, source=source)

    @property
    def hash(self) -> str:
        """Stable across processes and machines: sha256 of the canonical JSON."""
        return stable_hash(self.to_dict())

    def describe(self) -> str:
        """A short human label, e.g. ``L4 d64 h4/kv2 ffn4 sliding_window(32) repeat:2 tied``."""
        attention = f"{self.attention}({self.window})" if self.window else self.attention
        tied = "tied" if self.tie_embeddings else "untied"
        return (f"L{self.n_layer} d{self.d_model} h{self.n_head}/kv{self.n_kv_head} "
                f"ffn{self.ffn_mult:g} {attention} {self.sharing} {tied}")


# ----- validation ------------------------------------------------------------------------
_INT_FIELDS = ("n_layer", "d_model", "n_head", "n_kv_head", "vocab_size", "max_seq_len")
# Positive numeric constants of the model's math, with the defaults `to_dict` leaves out.
_FLOAT_FIELDS = {"rms_norm_eps": 1e-5, "rope_theta": 10000.0}
_CHECK_ORDER = (*_INT_FIELDS, "ffn_mult", "attention", "window", "sharing", "tie_embeddings",
                *_FLOAT_FIELDS)


def _fail(field: str, value: Any, reason: str) -> None:
    raise ArchitectureError(f"{field}={value!r} {reason}", field=field, value=value)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_field(name: str, value: Any) -> Any:
    """One field's own value, leaving out its relations to the other fields; returns the
    canonical value (``ffn_mult`` as a float). A search space checks every value it lists
    with this (`nas.space`), so a field has one rule wherever it is written."""
    if name in _INT_FIELDS:
        if not _is_int(value):
            _fail(name, value, "must be an integer")
        if value < 1:
            _fail(name, value, "must be >= 1")
        if name == "vocab_size" and value < 2:
            _fail(name, value, "must be >= 2")
    elif name == "ffn_mult":
        if _is_int(value):
            value = float(value)
        if not isinstance(value, float) or not math.isfinite(value) or value <= 0:
            _fail(name, value, "must be a positive number")
    elif name == "attention":
        if not isinstance(value, str) or value not in ATTENTION_KINDS:
            _fail(name, value, f"must be one of {', '.join(ATTENTION_KINDS)}")
    elif name == "window":
        if value is not None and (not _is_int(value) or value < 1):
            _fail(name, value, "must be a positive integer")
    elif name == "sharing":
        _sharing_k(value)
    elif name == "tie_embeddings":
        if not isinstance(value, bool):
            _fail(name, value, "must be true or false")
    elif name in _FLOAT_FIELDS:
        if _is_int(value):
            value = float(value)
        if not isinstance(value, float) or not math.isfinite(value) or value <= 0:
            _fail(name, value, "must be a positive number")
    else:
        raise KeyError(name)
    return value


def _validate(arch: Architecture) -> None:
    """Each field's own value first, then the relations between fields: the first error
    reported is then the real one (``attention='bogus'`` is not blamed on ``n_kv_head``)."""
    for name in _CHECK_ORDER:
        check_field(name, getattr(arch, name))
    sharing_k = _sharing_k(arch.sharing)
    # Relations between fields.
    if arch.d_model % arch.n_head:
        _fail("n_head", arch.n_head, f"must divide d_model={arch.d_model}")
    if arch.head_dim % 2:
        _fail("n_head", arch.n_head,
              f"gives head_dim=d_model/n_head={arch.head_dim}, which must be even for rotary positions")
    if arch.n_kv_head > arch.n_head or arch.n_head % arch.n_kv_head:
        _fail("n_kv_head", arch.n_kv_head, f"must divide n_head={arch.n_head}")
    if arch.attention == "sliding_window" and arch.window is None:
        _fail("window", arch.window, "must be a positive integer when attention='sliding_window'")
    if arch.attention != "sliding_window" and arch.window is not None:
        _fail("window", arch.window,
              f"is only allowed with attention='sliding_window' (attention={arch.attention!r})")
    if sharing_k and arch.n_layer % sharing_k:
        _fail("sharing", arch.sharing, f"needs k={sharing_k} to divide n_layer={arch.n_layer}")


def _sharing_k(sharing: Any) -> int | None:
    """k of ``'repeat:k'`` (None for 'none' and 'all'); any other value is an error."""
    if not isinstance(sharing, str):
        _fail("sharing", sharing, "must be 'none', 'all' or 'repeat:k'")
    if sharing in ("none", "all"):
        return None
    prefix, _, k_text = sharing.partition(":")
    if prefix != "repeat" or not k_text.isdigit():
        _fail("sharing", sharing, "must be 'none', 'all' or 'repeat:k' with an integer k >= 2")
    k = int(k_text)
    if k < 2:
        _fail("sharing", sharing, "needs k >= 2 ('repeat:1' is 'none')")
    return k


def static_metrics(arch: Architecture) -> dict[str, float]:
    """Metrics known from the shape alone: checked as constraints before any training."""
    return {
        "params": float(arch.n_params),
        "non_embedding_params": float(arch.non_embedding_params),
        "weights_mb": arch.weight_bytes("fp32") / 1e6,
        "weights_int8_mb": arch.weight_bytes("int8") / 1e6,
        "kv_cache_mb": arch.kv_cache_bytes(arch.max_seq_len) / 1e6,
        "decode_mflops": arch.flops_per_token_decode(arch.max_seq_len - 1) / 1e6,
    }


STATIC_METRICS: tuple[str, ...] = (
    "params", "non_embedding_params", "weights_mb", "weights_int8_mb", "kv_cache_mb", "decode_mflops",
)
