"""Small, picklable descriptions of *how* to evaluate: the proxy budget and the data.

They live apart from `proxy` and `data` so that the search space, the store and the
CLI can read and write them without importing torch.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
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
    # Distillation from a parent (used only when `nas.proxy.train` gets a teacher):
    # loss = w * T^2 * KL(teacher/T || student/T) + (1 - w) * cross-entropy.
    distill_weight: float = 0.5
    distill_temperature: float = 1.0
    # "cosine" (the default): warm-up, then cosine to the end of the budget; a rung's loss is
    # the raw loss where it stops. "wsd" (warmup-stable-decay): the rate stays at ``lr`` and
    # decays linearly to ``lr * min_lr_frac`` over the last ``cooldown_frac`` of the budget;
    # a rung before the last is scored on a cooldown branch of ``cooldown_frac`` x its steps,
    # thrown away after scoring (`nas.proxy.train`).
    schedule: str = "cosine"
    cooldown_frac: float = 0.2

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
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"budget.schedule={self.schedule!r} must be one of {', '.join(SCHEDULES)}",
                              source=source, field="budget.schedule", value=self.schedule)
        c = self.cooldown_frac
        if isinstance(c, bool) or not isinstance(c, (int, float)) or not 0 < c < 1:
            raise ConfigError(f"budget.cooldown_frac={c!r} must be between 0 and 1 (exclusive)",
                              source=source, field="budget.cooldown_frac", value=c)
        w = self.distill_weight
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not 0 <= w <= 1:
            raise ConfigError(f"budget.distill_weight={w!r} must be between 0 and 1 "
                              "(0: cross-entropy only, 1: KL to the parent only)",
                              source=source, field="budget.distill_weight", value=w)
        t = self.distill_temperature
        if (isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t)
                or t <= 0):
            raise ConfigError(f"budget.distill_temperature={t!r} must be a positive number",
                              source=source, field="budget.distill_temperature", value=t)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str | None = None) -> ProxyBudget:
        return _from_mapping(cls, data, source, "budget")

    def to_dict(self) -> dict[str, Any]:
        """Every field, except the distillation and schedule settings while at their defaults:
        the budget is part of `SearchSpace.hash`, so spaces written before them keep their hash."""
        out = dataclasses.asdict(self)
        for name in _LEFT_OUT_AT_DEFAULT:
            if out[name] == _BUDGET_DEFAULTS[name]:
                del out[name]
        return out

    @property
    def steps(self) -> int:
        return max(1, self.tokens // (self.batch_size * self.seq_len))


SCHEDULES = ("cosine", "wsd")
_LEFT_OUT_AT_DEFAULT = ("distill_weight", "distill_temperature", "schedule", "cooldown_frac")
_BUDGET_DEFAULTS = {f.name: f.default for f in dataclasses.fields(ProxyBudget)}


@dataclass(frozen=True)
class DataSpec:
    """Which text and which tokenizer. ``corpus`` is ``"stdlib"`` (embedded) or paths/globs."""

    corpus: tuple[str, ...] = ("stdlib",)
    # "byte", "bpe:<vocab size>" (trained on the corpus), or "file:<tokenizer.json>": a given
    # tokenizer, a parent model's (issue 15), whose ids must stay the parent's.
    tokenizer: str = "byte"
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
            prefix, _, rest = tok.partition(":")
            if not ((prefix == "bpe" and rest.isdigit() and int(rest) >= 260)
                    or (prefix == "file" and rest)):
                raise ConfigError(f"data.tokenizer={tok!r} must be 'byte', 'bpe:<vocab size >= 260>' "
                                  "or 'file:<path to tokenizer.json>'",
                                  source=source, field="data.tokenizer", value=tok)
            if prefix == "file":
                _file_vocab_size(rest, source)  # a readable tokenizers file, checked up front
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
        if self.tokenizer == "byte":
            return 256
        prefix, _, rest = self.tokenizer.partition(":")
        return _file_vocab_size(rest) if prefix == "file" else int(rest)

    @property
    def tokenizer_file(self) -> str | None:
        """The tokenizer.json of a ``file:`` tokenizer, else None."""
        prefix, _, rest = self.tokenizer.partition(":")
        return rest if prefix == "file" else None

    @property
    def hash(self) -> str:
        return stable_hash(self.to_dict())


@functools.lru_cache(maxsize=16)
def _read_vocab_size(path: str, mtime_ns: int) -> int:  # noqa: ARG001 - part of the cache key
    from tokenizers import Tokenizer

    return Tokenizer.from_file(path).get_vocab_size(with_added_tokens=True)


def _file_vocab_size(path: str, source: str | None = None) -> int:
    """The ids a tokenizers file can produce (added tokens included); cached per file version."""
    field = "data.tokenizer"
    try:
        mtime = os.stat(path).st_mtime_ns
    except OSError as err:
        raise ConfigError(f"{field}='file:{path}': cannot read the tokenizer file "
                          f"({err.strerror or err})", source=source, field=field,
                          value=f"file:{path}") from None
    try:
        return _read_vocab_size(path, mtime)
    except Exception as err:  # noqa: BLE001 - tokenizers raises a bare Exception for a malformed file
        raise ConfigError(f"{field}='file:{path}' is not a tokenizers file (tokenizer.json): {err}",
                          source=source, field=field, value=f"file:{path}") from None


DEPTH_STRATEGIES = ("importance", "uniform")
TEACHER_SOURCES = ("cache", "worker")


@dataclass(frozen=True)
class ParentSpec:
    """A parent model a search derives its candidates from (issue 15): a local Hugging Face
    Llama/Mistral checkpoint directory, or one `nas export` wrote. Read, never written.

    ``depth``: how a shallower candidate picks the parent layers it keeps (`nas.derive`):
    ``importance`` (the blocks that change their input most) or ``uniform`` (evenly spaced).
    ``calibration_tokens``: training tokens the importance of layers, heads and channels is
    measured on, once per search.
    ``teacher``: where the parent's logits for distillation come from. ``cache`` (the default):
    its top ``teacher_top_k`` logits on every training batch, computed once by the driver
    (every candidate draws the same batches) and shared; a distilling step then costs what a
    plain one does, where ``worker`` (the parent run on every batch in every worker) costs ~2x
    (BENCHMARKS.md, issue 15). ``worker`` gives the exact KL; the cache's is a lower bound
    (top-k plus one bucket for the rest), exact at k = vocab.
    """

    path: str  # absolute once a space is loaded (relative paths are the space file's)
    depth: str = "importance"
    calibration_tokens: int = 16_384
    teacher: str = "cache"
    teacher_top_k: int = 32

    def validate(self, source: str | None = None) -> None:
        if not isinstance(self.path, str) or not self.path:
            raise ConfigError(f"parent.path={self.path!r} must name a checkpoint directory",
                              source=source, field="parent.path", value=self.path)
        if not os.path.isdir(self.path):
            raise ConfigError(f"parent.path={self.path!r}: no such directory (a Hugging Face "
                              "checkpoint: config.json, safetensors weights, tokenizer.json)",
                              source=source, field="parent.path", value=self.path)
        if self.depth not in DEPTH_STRATEGIES:
            raise ConfigError(f"parent.depth={self.depth!r} must be one of {', '.join(DEPTH_STRATEGIES)}",
                              source=source, field="parent.depth", value=self.depth)
        tokens = self.calibration_tokens
        if isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 64:
            raise ConfigError(f"parent.calibration_tokens={tokens!r} must be an integer >= 64",
                              source=source, field="parent.calibration_tokens", value=tokens)
        if self.teacher not in TEACHER_SOURCES:
            raise ConfigError(f"parent.teacher={self.teacher!r} must be one of {', '.join(TEACHER_SOURCES)}",
                              source=source, field="parent.teacher", value=self.teacher)
        top_k = self.teacher_top_k
        if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
            raise ConfigError(f"parent.teacher_top_k={top_k!r} must be a positive integer",
                              source=source, field="parent.teacher_top_k", value=top_k)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str | None = None) -> ParentSpec:
        return _from_mapping(cls, data, source, "parent")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def tokenizer(self) -> str:
        """The search's ``data.tokenizer``: the parent's own, so token ids stay its embedding rows."""
        return f"file:{os.path.join(self.path, 'tokenizer.json')}"
