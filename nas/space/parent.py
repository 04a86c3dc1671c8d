"""A search space's ``parent:`` section: which checkpoint candidates are derived from (issue 15).

``parent: DIR`` or ``parent: {path: DIR, depth: importance | uniform, calibration_tokens: N}``.
A relative DIR is the space file's (a space is written next to the models it searches), so the
same YAML works from any working directory. A parent fixes three things a plain space chooses:
the tokenizer (the parent's, so token ids stay its embedding rows), the vocabulary, and the
model's numeric constants (norm epsilon, rotary base). Every architecture value the space lists
must be derivable from the parent: the errors name the space file, the field and the value.
Only config.json is read here (no torch, no weights): the weights are read once per search,
by the driver (`nas.parent`).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nas.architecture import Architecture
from nas.derivation import beyond_parent
from nas.errors import ConfigError, NasError
from nas.hf_config import TOKENIZER_FILE, WEIGHTS_FILE, WEIGHTS_INDEX_FILE, read_architecture
from nas.specs import ParentSpec

if TYPE_CHECKING:
    from nas.space.model import SearchSpace


def parse_parent(value: Any, source: str | None) -> ParentSpec | None:
    """The ``parent`` section, its path made absolute; None when the space has none."""
    if value is None:
        return None
    data = {"path": value} if isinstance(value, (str, os.PathLike)) else value
    if not isinstance(data, Mapping):
        raise ConfigError(f"parent={value!r} must be a directory or a mapping with a path",
                          source=source, field="parent", value=value)
    data = dict(data)
    path = data.get("path")
    if isinstance(path, (str, os.PathLike)) and str(path):
        data["path"] = resolve_parent_path(path, source)
    return ParentSpec.from_dict(data, source=source)


def resolve_parent_path(path: str | os.PathLike[str], source: str | None) -> str:
    """Absolute: relative to the space file's directory when the space came from a file."""
    candidate = Path(path).expanduser()
    if not candidate.is_absolute() and source and not source.startswith("<") and Path(source).is_file():
        candidate = Path(source).resolve().parent / candidate
    return str(candidate.resolve())


def parent_architecture(spec: ParentSpec, source: str | None) -> Architecture:
    """The parent's `Architecture`, from its config (or our architecture.json); the files a
    search needs must all be there, so a missing one is found before anything starts.

    Read once per directory state: parsing a space reads it for the vocabulary and the space
    it builds reads it again; the directory's files' mtimes key the cache, so an edit is seen.
    """
    root = Path(spec.path)
    stamp = tuple(sorted((f.name, f.stat().st_mtime_ns) for f in root.iterdir())) if root.is_dir() else ()
    return _checked_architecture(spec.path, stamp, source)


@functools.lru_cache(maxsize=16)
def _checked_architecture(path: str, _stamp: tuple[tuple[str, int], ...],
                          source: str | None) -> Architecture:
    root = Path(path)
    try:
        arch = read_architecture(root)
    except NasError as err:
        # Name the file inside the parent once, relative to it: the path is already in front.
        text = str(err).replace(f"{root}/", "").replace(f"{root}: ", "")
        raise ConfigError(f"parent.path={path!r}: {text}", source=source, field="parent.path",
                          value=path) from None
    if not (root / WEIGHTS_FILE).is_file() and not (root / WEIGHTS_INDEX_FILE).is_file():
        pickled = " (pytorch_model.bin is not read: save with safe_serialization=True)" if (
            root / "pytorch_model.bin").is_file() else ""
        raise ConfigError(f"parent.path={path!r} has no {WEIGHTS_FILE} or "
                          f"{WEIGHTS_INDEX_FILE}{pickled}", source=source, field="parent.path",
                          value=path)
    if not (root / TOKENIZER_FILE).is_file():
        raise ConfigError(f"parent.path={path!r} has no {TOKENIZER_FILE} (the parent's "
                          "tokenizer, as tokenizer.save_pretrained writes it): a search from a "
                          "parent uses the parent's tokenizer", source=source, field="parent.path",
                          value=path)
    return arch


def parent_data(data: Any, spec: ParentSpec, source: str | None) -> Any:
    """The ``data`` section with the parent's tokenizer; a different tokenizer is an error."""
    if not isinstance(data, Mapping):
        return data  # the data section's own parser names the error
    given = data.get("tokenizer")
    if given is not None and given != spec.tokenizer:
        raise ConfigError(f"data.tokenizer={given!r} conflicts with parent.path={spec.path!r}: a "
                          "search from a parent uses the parent's tokenizer; leave data.tokenizer out",
                          source=source, field="data.tokenizer", value=given)
    return {**data, "tokenizer": spec.tokenizer}


def check_within_parent(space: SearchSpace, parent: Architecture) -> None:
    """Every value the space lists can be derived from ``parent`` (`nas.derivation.beyond_parent`);
    so can the head width of every (d_model, n_head) pair and the FFN width of every
    (d_model, ffn_mult) pair."""
    source = space.source
    for name, spec in space.architecture.items():
        for value in spec.values:
            if value in (None, "n_head"):
                continue
            reason = beyond_parent(parent, name, value)
            if reason:
                raise ConfigError(f"architecture.{name}={value!r} {reason}", source=source,
                                  field=f"architecture.{name}", value=value)
    for d_model in space.architecture["d_model"].values:
        for n_head in space.heads_for(d_model):
            head_dim = d_model // n_head
            if head_dim > parent.head_dim or parent.head_dim % head_dim:
                raise ConfigError(
                    f"architecture.n_head={n_head!r} with d_model={d_model} gives head_dim="
                    f"{head_dim}, which must divide the parent's head_dim={parent.head_dim} (a "
                    "candidate keeps every k-th rotary pair of each parent head); list only "
                    "n_head values that give such a head_dim", source=source,
                    field="architecture.n_head", value=n_head)
            for ffn_mult in space.architecture["ffn_mult"].values:
                ffn = Architecture(n_layer=1, d_model=d_model, n_head=n_head, ffn_mult=ffn_mult).ffn_hidden
                if ffn > parent.ffn_hidden:
                    raise ConfigError(
                        f"architecture.ffn_mult={ffn_mult!r} with d_model={d_model} gives {ffn} FFN "
                        f"channels, more than the parent's {parent.ffn_hidden}", source=source,
                        field="architecture.ffn_mult", value=ffn_mult)


def with_parent(space: SearchSpace, path: str | os.PathLike[str]) -> SearchSpace:
    """``space`` searched from the parent at ``path`` (``nas search --parent DIR``; relative to
    the working directory): the parent's tokenizer replaces the space's, and every listed value
    is checked against the parent as if the YAML had said ``parent: DIR``."""
    from nas.space.parse import parse_space

    snapshot = space.to_dict()
    options = dict(snapshot.get("parent") or {})
    options["path"] = str(Path(path).expanduser().resolve())
    data = {k: v for k, v in snapshot["data"].items() if k != "tokenizer"}
    return parse_space({**snapshot, "parent": options, "data": data}, space.source, space.name)
