"""Corpora, tokenizers and deterministic train/validation splits, cached on disk.

Corpora (``DataSpec.corpus``)
-----------------------------
* ``"stdlib"`` (the embedded default; no download): the running Python's own standard
  library. Rule: every ``*.py`` file under ``sysconfig.get_paths()["stdlib"]``, taken in
  sorted order of its relative POSIX path, skipping any file inside a directory named in
  ``_STDLIB_SKIP_DIRS`` (tests, idlelib, lib2to3, ensurepip, encodings tables,
  site-packages, generated pydoc topics, ...) or whose name starts with ``test_`` or
  ``_sysconfigdata`` (machine-specific). Files are added while the running total stays
  within ``STDLIB_CAP_BYTES`` (4 MB); the first file that would pass the cap ends the
  selection. The text therefore depends only on the Python version, which is part of
  the cache key.
* Anything else is a path or a glob pattern (``**`` allowed). Entries are expanded,
  de-duplicated by resolved path and sorted. A directory is an error (use a glob).

Every document is decoded as UTF-8 with ``errors="replace"``. A file that is not text is a
`DataError` naming it and the reason, so a binary never trains silently: any NUL byte
(executables, archives, UTF-16), more than ``MAX_UNDECODABLE_SHARE`` (1%) of its characters
undecodable, or more than ``MAX_CONTROL_SHARE`` (1%) control characters other than tab,
newline, carriage return and form feed. A few stray bad bytes in real text pass. A file that
decodes to nothing is an error too.

Split (by document, so no file is in both halves)
-------------------------------------------------
A document goes to validation when a stable hash of ``(seed, its path relative to the
corpus root)`` falls below ``val_fraction``. With few documents that rule can leave the
validation share far from ``val_fraction`` (e.g. one file such as tinyshakespeare), so when
the share lands outside ``[val_fraction / 2, 2 * val_fraction]`` the corpus is instead
concatenated in order and its last ``val_fraction`` of characters, from the next line
start, is validation. Documents are joined with ``"\\n"``.

Tokenizers (`nas.tokenizer`: byte, trained BPE, or a given file such as a parent's). A trained
BPE is cached as ``<cache>/tokenizers/<key>.json``; tokenized corpora as
``<cache>/data/<key>.npz``. Keys hash the spec, the rule version and the corpus identity
(Python version for stdlib; resolved paths, sizes and mtimes for user files). Files are
written to a temporary name and ``os.replace``-d, so concurrent writers are safe.
The cache directory is ``cache_dir``, else ``$NAS_CACHE_DIR``, else ``~/.cache/nas``.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import os
import platform
import re
import sysconfig
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, NamedTuple

import numpy as np

from nas.errors import DataError
from nas.specs import DataSpec, ProxyBudget
from nas.tokenizer import BPETokenizer, ByteTokenizer, Tokenizer
from nas.util import stable_hash

STDLIB_CAP_BYTES = 4_000_000
_STDLIB_SKIP_DIRS = frozenset({
    "site-packages", "dist-packages", "test", "tests", "idlelib", "lib2to3", "ensurepip",
    "encodings", "turtledemo", "pydoc_data", "__pycache__", "__phello__",
})
# Bump when the selection, split or tokenization rules change: old caches become stale.
_RULES_VERSION = 2  # 2: binary files are refused (no cached binary served); BPE adds end-of-text
# What makes a file "not text" (shares of its decoded characters); see the module docstring.
MAX_UNDECODABLE_SHARE = 0.01
MAX_CONTROL_SHARE = 0.01
MAX_UNKNOWN_SHARE = 0.01  # a given tokenizer's unknown-token share above which text is refused
_MOSTLY = 0.5  # beyond this share of undecodable characters, the message just says "mostly"
# C0 and C1 control characters except \t \n \f \r (NUL is refused on its own, first).
_CONTROL_CHARS = re.compile("[\x01-\x08\x0b\x0e-\x1f\x7f-\x9f]")
_DOC_SEPARATOR = "\n"


# ----- corpus ------------------------------------------------------------------------------
class _Document(NamedTuple):
    name: str  # path relative to the corpus root: what the split hashes
    text: str


@dataclass(frozen=True)
class _Corpus:
    label: str  # how errors and descriptions name it
    identity: dict  # what the cache key hashes
    files: tuple[Path, ...] | None  # None for stdlib: listed lazily, only on a cache miss


def _cache_root(cache_dir: str | Path | None) -> Path:
    if cache_dir is not None:
        return Path(cache_dir)
    env = os.environ.get("NAS_CACHE_DIR")
    return Path(env) if env else Path.home() / ".cache" / "nas"


def _stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def stdlib_files() -> list[Path]:
    """The stdlib corpus files, by the rule in the module docstring."""
    root = _stdlib_root()
    rel: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in _STDLIB_SKIP_DIRS]  # prune whole trees
        base = Path(dirpath).relative_to(root)
        rel += [(base / f).as_posix() for f in filenames
                if f.endswith(".py") and not f.startswith(("test_", "_sysconfigdata"))]
    chosen: list[Path] = []
    total = 0
    for name in sorted(rel):
        path = root / name
        size = path.stat().st_size
        if total + size > STDLIB_CAP_BYTES:
            break
        chosen.append(path)
        total += size
    return chosen


def _resolve_corpus(spec: DataSpec) -> _Corpus:
    if tuple(spec.corpus) == ("stdlib",):
        identity = {"stdlib": platform.python_implementation() + " " + platform.python_version(),
                    "cap": STDLIB_CAP_BYTES}
        return _Corpus(f"stdlib (Python {platform.python_version()})", identity, None)
    files: dict[Path, None] = {}
    for entry in spec.corpus:
        if entry == "stdlib":
            raise DataError("corpus 'stdlib' cannot be mixed with paths; list files or globs only")
        expanded = os.path.expanduser(entry)
        if glob.has_magic(expanded):
            matches = sorted(glob.glob(expanded, recursive=True))
            matches = [m for m in matches if os.path.isfile(m)]
            if not matches:
                raise DataError(f"{entry}: glob matches no files")
        else:
            if not os.path.exists(expanded):
                raise DataError(f"{entry}: no such file")
            if os.path.isdir(expanded):
                raise DataError(f"{entry}: is a directory; name files or a glob like '{entry}/**/*.txt'")
            matches = [expanded]
        for m in matches:
            files[Path(m).resolve()] = None
    ordered = tuple(sorted(files))
    stats = []
    for path in ordered:
        try:
            st = path.stat()
        except OSError as err:
            raise DataError(f"{path}: cannot read ({err.strerror})") from None
        stats.append([str(path), st.st_size, st.st_mtime_ns])
    label = ", ".join(spec.corpus)
    return _Corpus(label, {"files": stats}, ordered)


def _read_text(path: Path) -> str:
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise DataError(f"{path}: cannot read ({err.strerror or err})") from None
    text = raw.decode("utf-8", errors="replace")
    check_is_text(raw, text, str(path))
    return text


def check_is_text(raw: bytes, text: str, name: str) -> None:
    """Raise `DataError` naming ``name`` when ``raw`` (decoded: ``text``) is not text.

    Training on a binary "works" and yields a meaningless model, so it is refused here,
    where every corpus (``--data``, a space's ``corpus:``, ``nas evaluate``) is read.
    """
    nul = raw.find(b"\0")
    if nul >= 0:
        raise DataError(f"{name}: is binary, not text (contains NUL bytes, the first at byte {nul:,})")
    if not text:
        return
    # U+FFFD that was in the file as such (EF BF BD) is text, not a decoding failure.
    undecodable = text.count("\ufffd") - raw.count("\ufffd".encode())
    if undecodable > _MOSTLY * len(text):
        raise DataError(f"{name}: is not UTF-8 text (mostly undecodable bytes)")
    if undecodable > MAX_UNDECODABLE_SHARE * len(text):
        raise DataError(f"{name}: is not UTF-8 text ({100 * undecodable / len(text):.1f}% of its "
                        f"characters are undecodable bytes; at most {100 * MAX_UNDECODABLE_SHARE:g}%)")
    controls = sum(1 for _ in _CONTROL_CHARS.finditer(text))
    if controls > MAX_CONTROL_SHARE * len(text):
        raise DataError(f"{name}: is binary, not text ({100 * controls / len(text):.1f}% of its "
                        f"characters are control characters; at most {100 * MAX_CONTROL_SHARE:g}% "
                        "besides tab, newline, carriage return and form feed)")


def _read_documents(corpus: _Corpus) -> list[_Document]:
    if corpus.files is None:
        root = _stdlib_root()
        files = stdlib_files()
    else:
        files = list(corpus.files)
        root = Path(os.path.commonpath([str(p.parent) for p in files]))
    docs = [_Document(p.relative_to(root).as_posix(), _read_text(p)) for p in files]
    if len(docs) == 1 and not docs[0].text.strip():
        raise DataError(f"{files[0]}: is empty (no text after UTF-8 decoding)")
    docs = [d for d in docs if d.text.strip()]
    if not docs:
        raise DataError(f"{corpus.label}: corpus is empty (no text in {len(files)} files)")
    return docs


def _hash_fraction(seed: int, name: str) -> float:
    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def _split_documents(docs: Sequence[_Document], val_fraction: float,
                    seed: int) -> tuple[list[str], list[str]]:
    """(train texts, val texts): by document hash, or the corpus tail for few documents."""
    in_val = [_hash_fraction(seed, d.name) < val_fraction for d in docs]
    train = [d.text for d, v in zip(docs, in_val) if not v]
    val = [d.text for d, v in zip(docs, in_val) if v]
    total = sum(len(d.text) for d in docs)
    share = sum(len(t) for t in val) / total
    if val_fraction / 2 <= share <= 2 * val_fraction:
        return train, val
    text = _DOC_SEPARATOR.join(d.text for d in docs)
    cut = int(len(text) * (1 - val_fraction))
    newline = text.find("\n", cut)
    if 0 <= newline < len(text) - 1:
        cut = newline + 1  # start validation at a line, not mid-word
    return [text[:cut]], [text[cut:]]


# ----- cache helpers -------------------------------------------------------------------------
def _key(*parts: object) -> str:
    return stable_hash(parts, length=24)


def _atomic_write(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """Write via a temporary file in the same directory, then rename over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _tokenizer_key(spec: DataSpec, corpus: _Corpus) -> str:
    return _key("tokenizer", _RULES_VERSION, spec.tokenizer, spec.val_fraction, spec.seed,
                corpus.identity)


def _load_or_train_bpe(spec: DataSpec, corpus: _Corpus, cache: Path,
                       train_texts: Sequence[str] | None) -> BPETokenizer:
    path = cache / "tokenizers" / f"{_tokenizer_key(spec, corpus)}.json"
    if path.is_file():
        try:
            return BPETokenizer.from_file(path, spec.vocab_size)
        except Exception:  # noqa: BLE001 - a damaged cache entry is retrained, not fatal
            pass
    if train_texts is None:
        train_texts, _ = _split_documents(_read_documents(corpus), spec.val_fraction, spec.seed)
    tok = BPETokenizer.train(train_texts, spec.vocab_size)
    blob = tok.to_json().encode()
    _atomic_write(path, lambda fh: fh.write(blob))
    return tok


def _file_tokenizer(spec: DataSpec) -> BPETokenizer:
    """A given tokenizers file (a parent's): its ids are the parent's embedding rows."""
    path = spec.tokenizer_file
    assert path is not None
    tok = BPETokenizer.from_file(path, spec.vocab_size)
    tok.name = spec.tokenizer
    return tok


def _tokenizer_identity(spec: DataSpec) -> tuple[str, ...]:
    """What a cache key needs beyond the spec: a ``file:`` tokenizer's content, not its path."""
    path = spec.tokenizer_file
    return () if path is None else (hashlib.sha256(Path(path).read_bytes()).hexdigest(),)


def load_tokenizer(spec: DataSpec, cache_dir: str | Path | None = None) -> Tokenizer:
    """The spec's tokenizer; a BPE is trained on the training split once, then cached."""
    spec.validate()
    if spec.tokenizer == "byte":
        return ByteTokenizer()
    if spec.tokenizer_file is not None:
        return _file_tokenizer(spec)
    return _load_or_train_bpe(spec, _resolve_corpus(spec), _cache_root(cache_dir), None)


def check_encodes(tok: Tokenizer, tokens: np.ndarray, corpus: str) -> None:
    """Refuse a corpus a given tokenizer cannot encode: more than 1% unknown-token ids.

    A byte-level or byte-fallback tokenizer encodes everything; a word-level or a narrow
    SentencePiece vocabulary maps foreign text to ``<unk>``, and a parent distilled on
    ``<unk>`` learns nothing about the text.
    """
    unk_id = getattr(tok, "unk_id", None)
    if unk_id is None or not len(tokens):
        return
    share = float(np.mean(tokens == unk_id))
    if share > MAX_UNKNOWN_SHARE:
        raise DataError(f"{corpus}: the tokenizer {tok.name} cannot encode this text: "
                        f"{share:.1%} of its tokens are the unknown token (more than "
                        f"{MAX_UNKNOWN_SHARE:.0%}); use a corpus in the parent's language and "
                        "script, or a parent whose tokenizer covers it")


# ----- tokenized data ------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class TokenData:
    """A tokenized corpus: the training and validation token streams."""

    train: np.ndarray  # the smallest of uint8 / uint16 / uint32 that holds every id
    val: np.ndarray
    vocab_size: int
    tokenizer_name: str
    description: str  # human text: corpus, files, bytes, tokens
    spec_hash: str  # DataSpec.hash of the spec it came from
    corpus: str = ""  # how errors name the corpus (paths/globs as given, or "stdlib (...)")


def _token_dtype(vocab_size: int) -> type:
    if vocab_size <= 2**8:
        return np.uint8
    return np.uint16 if vocab_size <= 2**16 else np.uint32


def _tokenize(tok: Tokenizer, texts: Sequence[str], dtype: type) -> np.ndarray:
    if not texts:
        return np.zeros(0, dtype=dtype)
    joined = [t + _DOC_SEPARATOR for t in texts]
    parts: list[np.ndarray]
    if isinstance(tok, BPETokenizer):
        # Each document ends with its newline and then end-of-text: where text stops is learnt.
        end = [] if tok.eos_id is None else [tok.eos_id]
        parts = [np.asarray(ids + end, dtype=dtype) for ids in tok.encode_batch(joined)]
    else:
        parts = [np.frombuffer(t.encode("utf-8"), dtype=np.uint8) for t in joined]
    return np.concatenate(parts).astype(dtype, copy=False)


def prepare(spec: DataSpec, cache_dir: str | Path | None = None) -> TokenData:
    """Tokenize the spec's corpus into train/val arrays; deterministic and cached on disk."""
    spec.validate()
    corpus = _resolve_corpus(spec)
    cache = _cache_root(cache_dir)
    key = _key('data', _RULES_VERSION, spec.to_dict(), corpus.identity, *_tokenizer_identity(spec))
    path = cache / "data" / f"{key}.npz"
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as npz:
                meta = json.loads(str(npz["meta"]))
                return TokenData(npz["train"], npz["val"], meta["vocab_size"],
                                 meta["tokenizer_name"], meta["description"], spec.hash,
                                 corpus.label)
        except Exception:  # noqa: BLE001 - unreadable cache entry: rebuild it
            pass
    docs = _read_documents(corpus)
    train_texts, val_texts = _split_documents(docs, spec.val_fraction, spec.seed)
    tok: Tokenizer
    if spec.tokenizer == "byte":
        tok = ByteTokenizer()
    elif spec.tokenizer_file is not None:
        tok = _file_tokenizer(spec)
    else:
        tok = _load_or_train_bpe(spec, corpus, cache, train_texts)
    dtype = _token_dtype(spec.vocab_size)
    train = _tokenize(tok, train_texts, dtype)
    val = _tokenize(tok, val_texts, dtype)
    check_encodes(tok, train, corpus.label)
    n_bytes = sum(len(d.text.encode("utf-8")) for d in docs)
    description = (f"{corpus.label}: {len(docs)} files, {n_bytes / 1e6:.2f} MB; "
                   f"{tok.name} tokens: train {len(train):,}, val {len(val):,}")
    meta = {"vocab_size": spec.vocab_size, "tokenizer_name": tok.name, "description": description}

    def write(fh: BinaryIO) -> None:
        np.savez(fh, train=train, val=val, meta=np.array(json.dumps(meta)))

    _atomic_write(path, write)
    return TokenData(train, val, spec.vocab_size, tok.name, description, spec.hash, corpus.label)


# ----- what training and scoring read -------------------------------------------------------
class ValBatches(NamedTuple):
    inputs: np.ndarray  # (n_windows, seq_len) int64
    targets: np.ndarray  # (n_windows, seq_len) int64, inputs shifted by one token


def check_fits(data: TokenData, budget: ProxyBudget) -> None:
    """Raise `DataError` naming the corpus when it cannot fill one batch or one window."""
    need_train = budget.batch_size * budget.seq_len + 1
    name = data.corpus or data.description
    if len(data.train) < need_train:
        raise DataError(
            f"{name}: training split has {len(data.train):,} tokens, fewer than one batch "
            f"(batch_size={budget.batch_size} x seq_len={budget.seq_len} + 1 = {need_train:,})")
    if len(data.val) < budget.seq_len + 1:
        raise DataError(
            f"{name}: validation split has {len(data.val):,} tokens, fewer than one window "
            f"(seq_len={budget.seq_len} + 1)")


def validation_batches(data: TokenData, budget: ProxyBudget) -> ValBatches:
    """The fixed scoring set: the first ``val_tokens`` validation tokens in seq_len windows.

    Windows do not overlap and depend only on (data, val_tokens, seq_len), so every
    candidate scored with the same budget sees exactly the same tokens.
    """
    check_fits(data, budget)
    t = budget.seq_len
    usable = min(budget.val_tokens, len(data.val) - 1)
    n = max(1, usable // t)
    tokens = data.val[: n * t + 1].astype(np.int64)
    return ValBatches(tokens[:-1].reshape(n, t), tokens[1:].reshape(n, t))
