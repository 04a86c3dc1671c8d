"""The candidate model: one pre-norm decoder that implements every `Architecture` field.

Names and math follow Hugging Face's Llama (``embed_tokens``, ``layers.{i}.self_attn.q_proj``,
``mlp.gate_proj``, ``norm``, ``lm_head``; LlamaRMSNorm; default rotary embedding; ``repeat_kv``),
so a softmax architecture without sharing is a `LlamaForCausalLM` after prefixing ``model.``
(with ``rms_norm_eps=1e-5``, ``rope_theta=10000``, ``attention_bias=False``, ``mlp_bias=False``).

Shapes: B batch, T new tokens, P cached positions, H ``n_head``, KV ``n_kv_head``,
hd ``head_dim``, d ``d_model``, V ``vocab_size``.

Sharing: ``layers`` holds the *unique* blocks; ``arch.layer_to_block`` says which block runs at
each of the ``n_layer`` applications, so shared weights are literally the same Parameters and
their gradients sum over applications. The cache is per application (sharing weights does not
share activations).

The cache is a flat tuple of plain tensors (two per application) so it maps one-to-one onto the
ONNX graphs' ``past.{i}.*`` inputs and ``present.{i}.*`` outputs:

* ``softmax``: key, value ``(B, KV, P, hd)``.
* ``sliding_window``: key, value ``(B, KV, min(P, window), hd)``: only the last ``window``
  positions are kept, so memory is O(window); rotary is applied before caching, so the absolute
  positions live in the cached keys and ``position_ids`` carries the new token's position.
* ``linear``: state ``S = sum_s phi(k_s)^T v_s`` ``(B, KV, hd, hd)`` and normaliser
  ``z = sum_s phi(k_s)`` ``(B, KV, hd)``: O(1) in the context length.

Decoding assumes every row of the batch has the same number of cached positions (no padding).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nas.architecture import Architecture

Cache = tuple[Tensor, ...]

LINEAR_ATTENTION_EPS = 1e-6  # keeps the normaliser positive; phi > 0 already, so it rarely matters
INIT_STD = 0.02


class RMSNorm(nn.Module):
    """LlamaRMSNorm: normalise in fp32, scale by a learned weight (initialised to ones)."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.variance_epsilon = eps

    def forward(self, x: Tensor) -> Tensor:
        dtype = x.dtype
        x = x.to(torch.float32)
        variance = x.pow(2).mean(-1, keepdim=True)
        x = x * torch.rsqrt(variance + self.variance_epsilon)
        return self.weight * x.to(dtype)


def rotary_cos_sin(position_ids: Tensor, head_dim: int, dtype: torch.dtype,
                   theta: float) -> tuple[Tensor, Tensor]:
    """Llama's default rotary table for the given positions: cos, sin each (B, T, hd).

    Computed from ``position_ids`` on every call (a few hundred FLOPs) rather than kept as a
    ``max_seq_len``-sized buffer, so the graphs carry no position table and any position works.
    """
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32,
                                                   device=position_ids.device) / head_dim))
    freqs = position_ids.to(torch.float32)[:, :, None] * inv_freq  # (B, T, hd/2)
    emb = torch.cat((freqs, freqs), dim=-1)  # (B, T, hd)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def rotate_half(x: Tensor) -> Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """x (B, heads, T, hd); cos/sin (B, T, hd)."""
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)  # (B, 1, T, hd): broadcast over heads
    return x * cos + rotate_half(x) * sin


def repeat_kv(x: Tensor, n_rep: int) -> Tensor:
    """(B, KV, S, hd) -> (B, KV * n_rep, S, hd); query head i reads kv head i // n_rep (as HF)."""
    if n_rep == 1:
        return x
    b, kv, s, hd = x.shape
    return x[:, :, None, :, :].expand(b, kv, n_rep, s, hd).reshape(b, kv * n_rep, s, hd)


def phi(x: Tensor) -> Tensor:
    """Linear attention's positive feature map elu(x) + 1 (Katharopoulos et al., 2020)."""
    return F.elu(x) + 1.0


class Attention(nn.Module):
    """Causal self-attention of one kind: softmax, sliding window or linear.

    Linear attention uses no rotary embedding: the relative-position property of rotary holds for
    the dot product q.k, but linear attention scores phi(q).phi(k) with a nonlinear phi, so
    rotating before phi does not give relative positions, and rotating after phi breaks the
    positivity the normaliser relies on (denominators can reach zero). Order still enters through
    the causal sum, as in the original linear transformer.
    """

    def __init__(self, arch: Architecture) -> None:
        super().__init__()
        self.kind = arch.attention
        self.window = arch.window or 0
        self.n_head, self.n_kv_head, self.head_dim = arch.n_head, arch.n_kv_head, arch.head_dim
        self.n_rep = arch.n_head // arch.n_kv_head
        d = arch.d_model
        self.q_proj = nn.Linear(d, arch.n_head * arch.head_dim, bias=False)
        self.k_proj = nn.Linear(d, arch.kv_dim, bias=False)
        self.v_proj = nn.Linear(d, arch.kv_dim, bias=False)
        self.o_proj = nn.Linear(arch.n_head * arch.head_dim, d, bias=False)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor,
                past: tuple[Tensor, Tensor] | None = None,
                want_cache: bool = True) -> tuple[Tensor, tuple[Tensor, Tensor] | None]:
        """x (B, T, d). ``past`` None: a causal prefill of T tokens; else decode with T == 1."""
        b, t, _ = x.shape
        q = self.q_proj(x).view(b, t, self.n_head, self.head_dim).transpose(1, 2)  # (B, H, T, hd)
        k = self.k_proj(x).view(b, t, self.n_kv_head, self.head_dim).transpose(1, 2)  # (B, KV, T, hd)
        v = self.v_proj(x).view(b, t, self.n_kv_head, self.head_dim).transpose(1, 2)  # (B, KV, T, hd)
        if self.kind == "linear":
            if past is None:
                out, cache = self._linear_parallel(q, k, v, want_cache)
            else:
                out, cache = self._linear_recurrent(q, k, v, past)
        else:
            q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
            if past is None:
                out, cache = self._softmax_prefill(q, k, v, want_cache)
            else:
                out, cache = self._softmax_decode(q, k, v, past)
        out = out.transpose(1, 2).flatten(2)  # (B, T, H * hd)
        return self.o_proj(out), cache

    # ----- softmax and sliding window ---------------------------------------------------
    def _softmax_prefill(self, q: Tensor, k: Tensor, v: Tensor,
                         want_cache: bool) -> tuple[Tensor, tuple[Tensor, Tensor] | None]:
        keys, values = repeat_kv(k, self.n_rep), repeat_kv(v, self.n_rep)  # (B, H, T, hd)
        if self.kind == "softmax":
            out = F.scaled_dot_product_attention(q, keys, values, is_causal=True)  # (B, H, T, hd)
            return out, ((k, v) if want_cache else None)
        # Query t sees key s iff t - window < s <= t: a band built from one arange, so it exports.
        pos = torch.arange(q.shape[2], device=q.device)
        distance = pos[:, None] - pos[None, :]  # (T, T): t - s
        band = (distance >= 0) & (distance < self.window)
        out = F.scaled_dot_product_attention(q, keys, values, attn_mask=band)
        if not want_cache:
            return out, None
        return out, (k[:, :, -self.window:], v[:, :, -self.window:])  # (B, KV, min(T, window), hd)

    def _softmax_decode(self, q: Tensor, k: Tensor, v: Tensor,
                        past: tuple[Tensor, Tensor]) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        k = torch.cat((past[0], k), dim=2)  # (B, KV, P + 1, hd)
        v = torch.cat((past[1], v), dim=2)
        if self.kind == "sliding_window":
            # The cache holds at most `window` positions, all before the new token, so after
            # dropping the oldest every remaining key is inside the window: no mask needed.
            k, v = k[:, :, -self.window:], v[:, :, -self.window:]  # (B, KV, min(P + 1, window), hd)
        # One query attends to every kept key: no causal mask. The n_rep query heads that share a
        # kv head go into SDPA's query-length dim, so the cache is read once per kv head rather
        # than copied n_rep times (decode is memory-bound: that copy is what GQA saves).
        grouped = q.reshape(-1, self.n_kv_head, self.n_rep, self.head_dim)  # (B, KV, n_rep, hd)
        out = F.scaled_dot_product_attention(grouped, k, v)  # (B, KV, n_rep, hd)
        return out.reshape(-1, self.n_head, 1, self.head_dim), (k, v)  # (B, H, 1, hd)

    # ----- linear ------------------------------------------------------------------------
    def _linear_parallel(self, q: Tensor, k: Tensor, v: Tensor,
                         want_cache: bool) -> tuple[Tensor, tuple[Tensor, Tensor] | None]:
        fq, fk = phi(q), phi(k)  # (B, H, T, hd), (B, KV, T, hd)
        t = q.shape[2]
        causal = torch.ones(t, t, dtype=torch.bool, device=q.device).tril()  # (T, T)
        scores = fq @ repeat_kv(fk, self.n_rep).transpose(-1, -2)  # (B, H, T, T)
        scores = scores.masked_fill(~causal, 0.0)
        out = (scores @ repeat_kv(v, self.n_rep)) / (scores.sum(-1, keepdim=True) + LINEAR_ATTENTION_EPS)
        if not want_cache:
            return out, None
        state = fk.transpose(-1, -2) @ v  # (B, KV, hd, hd): sum over T of phi(k_t)^T v_t
        norm = fk.sum(dim=2)  # (B, KV, hd)
        return out, (state, norm)

    def _linear_recurrent(self, q: Tensor, k: Tensor, v: Tensor,
                          past: tuple[Tensor, Tensor]) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        fq, fk = phi(q), phi(k)  # (B, H, 1, hd), (B, KV, 1, hd)
        state = past[0] + fk.transpose(-1, -2) @ v  # (B, KV, hd, hd)
        norm = past[1] + fk[:, :, 0]  # (B, KV, hd)
        # Group the query heads by the kv head they read, as repeat_kv does: head i -> i // n_rep.
        fq = fq.reshape(-1, self.n_kv_head, self.n_rep, self.head_dim)  # (B, KV, n_rep, hd)
        num = fq @ state  # (B, KV, n_rep, hd)
        den = fq @ norm.unsqueeze(-1)  # (B, KV, n_rep, 1)
        out = (num / (den + LINEAR_ATTENTION_EPS)).reshape(-1, self.n_head, 1, self.head_dim)
        return out, (state, norm)


class MLP(nn.Module):
    """SwiGLU: down(silu(gate(x)) * up(x))."""

    def __init__(self, d_model: int, hidden: int) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(d_model, hidden, bias=False)
        self.up_proj = nn.Linear(d_model, hidden, bias=False)
        self.down_proj = nn.Linear(hidden, d_model, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    """Pre-norm decoder layer (LlamaDecoderLayer)."""

    def __init__(self, arch: Architecture) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(arch.d_model, arch.rms_norm_eps)
        self.self_attn = Attention(arch)
        self.post_attention_layernorm = RMSNorm(arch.d_model, arch.rms_norm_eps)
        self.mlp = MLP(arch.d_model, arch.ffn_hidden)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, past: tuple[Tensor, Tensor] | None = None,
                want_cache: bool = True) -> tuple[Tensor, tuple[Tensor, Tensor] | None]:
        h, cache = self.self_attn(self.input_layernorm(x), cos, sin, past, want_cache)
        x = x + h
        x = x + self.mlp(self.post_attention_layernorm(x))
        return x, cache


class NasLM(nn.Module):
    """Decoder-only LM. ``layers`` holds the unique blocks; ``layer_to_block`` maps applications."""

    def __init__(self, arch: Architecture) -> None:
        super().__init__()
        self.arch = arch
        self.layer_to_block = arch.layer_to_block
        self.embed_tokens = nn.Embedding(arch.vocab_size, arch.d_model)
        self.layers = nn.ModuleList(Block(arch) for _ in range(arch.n_unique_blocks))
        self.norm = RMSNorm(arch.d_model, arch.rms_norm_eps)
        self.lm_head = nn.Linear(arch.d_model, arch.vocab_size, bias=False)
        if arch.tie_embeddings:
            self.lm_head.weight = self.embed_tokens.weight

    def _run(self, input_ids: Tensor, position_ids: Tensor, past: Cache | None,
             want_cache: bool) -> tuple[Tensor, Cache]:
        x = self.embed_tokens(input_ids)  # (B, T, d)
        cos, sin = rotary_cos_sin(position_ids, self.arch.head_dim, x.dtype,
                                  self.arch.rope_theta)  # (B, T, hd) each
        cache: list[Tensor] = []
        for i, block_index in enumerate(self.layer_to_block):
            layer_past = None if past is None else (past[2 * i], past[2 * i + 1])
            x, layer_cache = self.layers[block_index](x, cos, sin, layer_past, want_cache)
            if layer_cache is not None:
                cache.extend(layer_cache)
        return self.lm_head(self.norm(x)), tuple(cache)  # logits (B, T, V)

    @staticmethod
    def _positions(input_ids: Tensor) -> Tensor:
        b, t = input_ids.shape
        return torch.arange(t, device=input_ids.device).unsqueeze(0).expand(b, t)  # (B, T)

    def forward(self, input_ids: Tensor) -> Tensor:
        """input_ids (B, T) int64 -> logits (B, T, V); no cache is built."""
        return self._run(input_ids, self._positions(input_ids), None, want_cache=False)[0]

    def prefill(self, input_ids: Tensor) -> tuple[Tensor, Cache]:
        """Causal forward over a prompt from position 0: logits (B, T, V) and the cache."""
        return self._run(input_ids, self._positions(input_ids), None, want_cache=True)

    def decode_step(self, input_ids: Tensor, position_ids: Tensor,
                    cache: Cache) -> tuple[Tensor, Cache]:
        """One new token per row: input_ids, position_ids (B, 1) -> logits (B, 1, V), new cache."""
        if input_ids.shape[1] != 1:
            raise ValueError("decode_step takes one token per row, got input_ids of shape "
                             f"{tuple(input_ids.shape)}")
        if len(cache) != 2 * self.arch.n_layer:
            raise ValueError(f"cache has {len(cache)} tensors, expected 2 * n_layer = "
                             f"{2 * self.arch.n_layer}")
        return self._run(input_ids, position_ids, cache, want_cache=True)

    def empty_cache(self, batch: int) -> Cache:
        """The cache of an empty context (zero positions; zero linear state)."""
        a = self.arch
        weight = self.embed_tokens.weight
        kw = dict(dtype=weight.dtype, device=weight.device)
        if a.attention == "linear":
            pair = (torch.zeros(batch, a.n_kv_head, a.head_dim, a.head_dim, **kw),
                    torch.zeros(batch, a.n_kv_head, a.head_dim, **kw))
        else:
            pair = (torch.zeros(batch, a.n_kv_head, 0, a.head_dim, **kw),
                    torch.zeros(batch, a.n_kv_head, 0, a.head_dim, **kw))
        return tuple(t for _ in range(a.n_layer) for t in pair)

    def cache_names(self) -> list[str]:
        """``{i}.key``/``{i}.value`` or ``{i}.state``/``{i}.norm`` per application, cache order."""
        parts = ("state", "norm") if self.arch.attention == "linear" else ("key", "value")
        return [f"{i}.{p}" for i in range(self.arch.n_layer) for p in parts]

    def loss(self, input_ids: Tensor, targets: Tensor) -> Tensor:
        """Mean next-token cross-entropy in nats."""
        return lm_loss(self(input_ids), targets)


def lm_loss(logits: Tensor, targets: Tensor) -> Tensor:
    """logits (B, T, V), targets (B, T) -> mean cross-entropy in nats."""
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1))


def unique_parameter_count(module: nn.Module) -> int:
    """Parameters counted once however often they are used (``parameters()`` de-duplicates)."""
    return sum(p.numel() for p in module.parameters())


def build_model(arch: Architecture, seed: int = 0) -> NasLM:
    """A freshly initialised `NasLM`, identical for identical (arch, seed).

    Linear and embedding weights ~ N(0, 0.02); the projections that write into the residual
    stream (``o_proj``, ``down_proj``) are scaled by 1/sqrt(2 * n_layer) (GPT-2) so the residual
    variance does not grow with depth; norm weights are ones. Initialisation draws from a private
    generator, so building a model leaves the global RNG untouched.
    """
    with torch.random.fork_rng(devices=[]):  # nn.Linear's own init draws from the global RNG
        model = NasLM(arch)
    generator = torch.Generator().manual_seed(seed)
    residual_std = INIT_STD / math.sqrt(2 * arch.n_layer)
    with torch.no_grad():
        # named_parameters() yields each shared/tied Parameter once, in a fixed order.
        for name, param in model.named_parameters():
            if name.endswith("layernorm.weight") or name == "norm.weight":
                param.fill_(1.0)
            else:
                std = residual_std if name.endswith(("o_proj.weight", "down_proj.weight")) else INIT_STD
                param.normal_(0.0, std, generator=generator)
    return model
