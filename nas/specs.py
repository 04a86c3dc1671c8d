"""Small, picklable descriptions of *how* to evaluate: the proxy budget and the data.

They live apart from `proxy` and `data` so that the search space, the store and the
CLI can read and write them without importing torch.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from nas.errors import ConfigError
from nas.util import stable_hash


def _from_mapping(cls: type, data: Mapping[str, Any], source: str | None, section: str) -> Any:
    known = {f.name: f for f in dataclasses.fields(cls)}
    for key in data:
        if key not in known:
            raise ConfigError(f"{section}: unknown key {key!r} (known: {', '.join(known)})",
                              source=source, field=f"{section}.{key}", value=data[key])
    obj = cls(**dict(data))
    obj.validate(source)
    return obj


@dataclass(frozen=True)
class ProxyBudget:
    """How long and how a candidate is trained before it is scored."""

    tokens: int = 500_000  # training tokens per candidate (BENCHMARKS.md, item 1)
    batch_size: int = 16
    seq_len: int = 64
    lr: float = 3e-3
    warmup_frac: float = 0.1
    min_lr_frac: float = 0.1  # cosine decays to lr * min_lr_frac
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    max_seconds: float | None = None  # optional wall-clock cap
    val_tokens: int = 32_768  # the fixed validation set every candidate is scored on

    def validate(self, source: str | None = None) -> None:
        positive = ("tokens", "batch_size", "seq_len", "lr", "val_tokens")
        for name in positive:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise ConfigError(f"budget.{name}={value!r} must be a positive number",
                                  source=source, field=f"budget.{name}", value=value)
        for name in ("warmup_frac", "min_lr_frac"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not 0 <= value <= 1:
                raise ConfigError(f"budget.{name}={value!r} must be between 0 and 1",
                                  source=source, field=f"budget.{name}", value=value)
        if self.max_seconds is not None and self.max_seconds <= 0:
            raise ConfigError(f"budget.max_seconds={self.max_seconds!r} must be positive",
                              source=source, field="budget.max_seconds", value=self.max_seconds)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str | None = None) -> ProxyBudget:
        return _from_mapping(cls, data, source, "budget")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def steps(self) -> int:
        return max(1, self.tokens // (self.batch_size * self.seq_len))


@dataclass(frozen=True)
class DataSpec:
    """Which text and which tokenizer. ``corpus`` is ``"stdlib"`` (embedded) or paths/globs."""

    corpus: tuple[str, ...] = ("stdlib",)
    tokenizer: str = "byte"  # "byte" or "bpe:<vocab size>"
    val_fraction: float = 0.1
    seed: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.corpus, str):
            object.__setattr__(self, "corpus", (self.corpus,))
        else:
            object.__setattr__(self, "corpus", tuple(self.corpus))

    def validate(self, source: str | None = None) -> None:
        if not self.corpus:
            raise ConfigError("data.corpus=[] must name 'stdlib' or at least one path",
                              source=source, field="data.corpus", value=[])
        tok = self.tokenizer
        if tok != "byte":
            prefix, _, size = tok.partition(":")
            if prefix != "bpe" or not size.isdigit() or int(size) < 260:
                raise ConfigError(f"data.tokenizer={tok!r} must be 'byte' or 'bpe:<vocab size >= 260>'",
                                  source=source, field="data.tokenizer", value=tok)
        if not 0 < self.val_fraction < 0.5:
            raise ConfigError(f"data.val_fraction={self.val_fraction!r} must be in (0, 0.5)",
                              source=source, field="data.val_fraction", value=self.val_fraction)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str | None = None) -> DataSpec:
        return _from_mapping(cls, data, source, "data")

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["corpus"] = list(self.corpus)
        return out

    @property
    def vocab_size(self) -> int:
        return 256 if self.tokenizer == "byte" else int(self.tokenizer.split(":", 1)[1])

    @property
    def hash(self) -> str:
        return stable_hash(self.to_dict())
