"""Tokenizers: UTF-8 bytes, a byte-level BPE trained on a corpus, or a given tokenizers file.

``byte`` (256 ids = the UTF-8 bytes, no special tokens) or ``bpe:N``: byte-level BPE from the
``tokenizers`` library trained on the *training* split only, so any text round-trips exactly.
The BPE has one special token, ``<|endoftext|>`` (``EOS_TOKEN``, id 0), appended after every
document, so a trained model learns where text ends and ``generate`` can stop there; like
GPT-2's, it is also the BOS and padding token. (A literal ``<|endoftext|>`` in a corpus
becomes that token.) Bytes have no spare id, so byte-level models stop by length or a stop
string instead.

A given file (``data.tokenizer: file:<tokenizer.json>``, a parent model's) is read as it is:
its ids are the parent's embedding rows, so nothing about it is retrained or renumbered.
`nas.data` picks, trains and caches them; this module is only the tokenizers themselves.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from tokenizers import Tokenizer as HFTokenizer

EOS_TOKEN = "<|endoftext|>"  # the BPE's end-of-text (and BOS/pad) token: see the docstring


class Tokenizer(Protocol):
    name: str
    vocab_size: int

    @property
    def special_tokens(self) -> dict[str, tuple[str, int]]:
        """Role (``bos_token``, ``eos_token``, ``pad_token``) -> (text, id); empty if none."""
        ...

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...

    def save(self, directory: str | Path) -> Path: ...


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character map, which byte-level BPE vocabularies use."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
                 *range(ord("®"), ord("ÿ") + 1)]
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return {b: chr(c) for b, c in zip(printable, chars)}


class ByteTokenizer:
    """UTF-8 bytes as ids: no training, nothing unknown, exact round trip."""

    name = "byte"
    vocab_size = 256

    @property
    def special_tokens(self) -> dict[str, tuple[str, int]]:
        return {}  # all 256 ids are bytes: there is no id left for an end-of-text token

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: Sequence[int]) -> str:
        return bytes(int(i) for i in ids).decode("utf-8", errors="replace")

    def save(self, directory: str | Path) -> Path:
        """Write an equivalent ``tokenizer.json`` (byte-level BPE without merges)."""
        from tokenizers import Tokenizer as HFTokenizer
        from tokenizers import decoders, models, pre_tokenizers

        mapping = _bytes_to_unicode()
        tok = HFTokenizer(models.BPE(vocab={mapping[b]: b for b in range(256)}, merges=[]))
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
        tok.decoder = decoders.ByteLevel()
        path = Path(directory) / "tokenizer.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        tok.save(str(path))
        return path


class BPETokenizer:
    """Byte-level BPE (``tokenizers``): every string encodes, and decodes back exactly."""

    def __init__(self, tokenizer: HFTokenizer, vocab_size: int) -> None:
        self._tok = tokenizer
        self.vocab_size = vocab_size  # nominal size from the spec; ids are always below it
        self.name = f"bpe:{vocab_size}"

    @classmethod
    def train(cls, texts: Sequence[str], vocab_size: int) -> BPETokenizer:
        from tokenizers import Tokenizer as HFTokenizer
        from tokenizers import decoders, models, pre_tokenizers, trainers

        tok = HFTokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size, min_frequency=2, show_progress=False, special_tokens=[EOS_TOKEN],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
        tok.train_from_iterator(texts, trainer=trainer, length=len(texts))
        return cls(tok, vocab_size)

    @classmethod
    def from_file(cls, path: str | Path, vocab_size: int) -> BPETokenizer:
        from tokenizers import Tokenizer as HFTokenizer

        return cls(HFTokenizer.from_file(str(path)), vocab_size)

    @property
    def unk_id(self) -> int | None:
        """The unknown token's id, for a model (word-level, WordPiece) that has one."""
        unk = getattr(self._tok.model, "unk_token", None)
        return None if not unk else self._tok.token_to_id(unk)

    @property
    def eos_id(self) -> int | None:
        """The end-of-text id (None for a tokenizer file written before it existed)."""
        return self._tok.token_to_id(EOS_TOKEN)

    @property
    def special_tokens(self) -> dict[str, tuple[str, int]]:
        eos = self.eos_id
        if eos is None:
            return {}
        return {role: (EOS_TOKEN, eos) for role in ("bos_token", "eos_token", "pad_token")}

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text).ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [e.ids for e in self._tok.encode_batch(list(texts))]

    def decode(self, ids: Sequence[int]) -> str:
        return self._tok.decode([int(i) for i in ids])

    def to_json(self) -> str:
        return self._tok.to_str()

    def save(self, directory: str | Path) -> Path:
        path = Path(directory) / "tokenizer.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        self._tok.save(str(path))
        return path
