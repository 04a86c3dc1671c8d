"""Corpora, tokenizers, splits and the on-disk cache."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from nas import data as data_mod
from nas.data import (
    check_fits,
    load_tokenizer,
    prepare,
    stdlib_files,
    validation_batches,
)
from nas.errors import DataError
from nas.specs import DataSpec, ProxyBudget
from nas.tokenizer import EOS_TOKEN, BPETokenizer, ByteTokenizer

SHAKESPEARE = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "tinyshakespeare.txt"
TRICKY = "def f(x):\n\treturn x  # héllo wörld, 日本語, emoji 🎉, nul \x00 and \r\n line ends\n"


@pytest.fixture(scope="module")
def stdlib_byte(tmp_path_factory: pytest.TempPathFactory) -> data_mod.TokenData:
    return prepare(DataSpec(), tmp_path_factory.mktemp("cache"))


def _write_docs(root: Path, n: int) -> None:
    for i in range(n):
        (root / f"doc{i:02d}.txt").write_text(f"document {i}\n" + "the quick brown fox. " * 40)


def test_stdlib_corpus_is_deterministic_and_real(stdlib_byte: data_mod.TokenData,
                                                 tmp_path: Path) -> None:
    again = prepare(DataSpec(), tmp_path)  # a different cache: tokenized from scratch
    assert np.array_equal(stdlib_byte.train, again.train)
    assert np.array_equal(stdlib_byte.val, again.val)
    assert len(stdlib_byte.train) > 1_000_000 and len(stdlib_byte.val) > 50_000
    assert stdlib_byte.train.dtype == np.uint8 and stdlib_byte.vocab_size == 256
    assert stdlib_byte.tokenizer_name == "byte" and stdlib_byte.spec_hash == DataSpec().hash
    assert "stdlib" in stdlib_byte.description and "files" in stdlib_byte.description
    names = [p.as_posix() for p in stdlib_files()]
    assert names == sorted(names) and not any("/test/" in n or "idlelib" in n for n in names)
    assert sum(os.path.getsize(p) for p in names) <= data_mod.STDLIB_CAP_BYTES


def test_cached_arrays_are_reused(tmp_path: Path) -> None:
    first = prepare(DataSpec(), tmp_path)
    (entry,) = (tmp_path / "data").glob("*.npz")
    mtime = entry.stat().st_mtime_ns
    second = prepare(DataSpec(), tmp_path)
    assert entry.stat().st_mtime_ns == mtime
    assert np.array_equal(first.train, second.train)
    assert not list((tmp_path / "data").glob("*.tmp"))  # no temporary file left behind


def test_byte_tokenizer_round_trip(tmp_path: Path) -> None:
    tok = ByteTokenizer()
    ids = tok.encode(TRICKY)
    assert ids == list(TRICKY.encode("utf-8")) and max(ids) < tok.vocab_size
    assert tok.decode(ids) == TRICKY
    # The shipped tokenizer.json encodes exactly like the byte tokenizer.
    from tokenizers import Tokenizer

    shipped = Tokenizer.from_file(str(tok.save(tmp_path)))
    assert shipped.encode(TRICKY).ids == ids and shipped.decode(ids) == TRICKY


def test_bpe_trained_once_then_loaded_from_cache(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    _write_docs(corpus, 30)
    spec = DataSpec(corpus=(str(corpus / "*.txt"),), tokenizer="bpe:300")
    cache = tmp_path / "cache"
    td = prepare(spec, cache)
    assert td.vocab_size == 300 and td.tokenizer_name == "bpe:300" and td.train.dtype == np.uint16
    assert int(td.train.max()) < 300
    (saved,) = (cache / "tokenizers").glob("*.json")
    mtime = saved.stat().st_mtime_ns

    def no_training(*args: object, **kwargs: object) -> None:
        raise AssertionError("the cached tokenizer should have been loaded, not retrained")

    monkeypatch.setattr(BPETokenizer, "train", no_training)
    tok = load_tokenizer(spec, cache)
    assert saved.stat().st_mtime_ns == mtime
    assert tok.decode(tok.encode(TRICKY)) == TRICKY  # byte-level: unseen characters round-trip
    assert len(tok.encode("the quick brown fox. " * 4)) < len("the quick brown fox. " * 4)
    assert (tok.save(tmp_path / "export")).name == "tokenizer.json"


def test_bpe_ends_every_document_with_end_of_text(tmp_path: Path) -> None:
    """The BPE's special token is what lets an exported model's `generate` stop."""
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    _write_docs(corpus, 30)
    spec = DataSpec(corpus=(str(corpus / "*.txt"),), tokenizer="bpe:300")
    td = prepare(spec, tmp_path / "cache")
    tok = load_tokenizer(spec, tmp_path / "cache")
    assert isinstance(tok, BPETokenizer) and tok.eos_id == 0
    assert tok.special_tokens == {role: (EOS_TOKEN, 0)
                                  for role in ("bos_token", "eos_token", "pad_token")}
    docs = data_mod._read_documents(data_mod._resolve_corpus(spec))
    train_texts, val_texts = data_mod._split_documents(docs, spec.val_fraction, spec.seed)
    assert int((td.train == 0).sum()) == len(train_texts) and int((td.val == 0).sum()) == len(val_texts)
    assert td.train[-1] == 0 and td.val[-1] == 0
    assert 0 not in tok.encode("the quick brown fox.\n") and tok.decode([0]) == ""
    assert ByteTokenizer().special_tokens == {}


def test_split_by_document_is_disjoint_and_fixed(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i in range(40):
        (corpus / f"doc{i:02d}.txt").write_text(f"unique-{i:02d} " * 50 + "\n")
    spec = DataSpec(corpus=(str(corpus / "*.txt"),))
    td = prepare(spec, tmp_path / "c1")
    tok = ByteTokenizer()
    train_text, val_text = tok.decode(td.train), tok.decode(td.val)
    in_train = {i for i in range(40) if f"unique-{i:02d}" in train_text}
    in_val = {i for i in range(40) if f"unique-{i:02d}" in val_text}
    assert in_val and in_train and not in_train & in_val and in_train | in_val == set(range(40))
    # A different cache (fresh tokenization) and another seed: val fixed, then moved.
    assert np.array_equal(prepare(spec, tmp_path / "c2").val, td.val)
    other = prepare(DataSpec(corpus=spec.corpus, seed=1), tmp_path / "c2")
    assert not np.array_equal(other.val, td.val)


def test_validation_batches_are_the_same_fixed_windows(stdlib_byte: data_mod.TokenData) -> None:
    budget = ProxyBudget(seq_len=32, val_tokens=1000)
    vb = validation_batches(stdlib_byte, budget)
    assert vb.inputs.shape == (31, 32) and vb.inputs.dtype == np.int64
    flat = stdlib_byte.val[: 31 * 32 + 1].astype(np.int64)
    assert np.array_equal(vb.inputs.ravel(), flat[:-1]) and np.array_equal(vb.targets.ravel(), flat[1:])
    assert np.array_equal(validation_batches(stdlib_byte, budget).inputs, vb.inputs)


@pytest.mark.skipif(not SHAKESPEARE.is_file(), reason="shared tinyshakespeare.txt not present")
def test_single_file_corpus_splits_its_tail(tmp_path: Path) -> None:
    td = prepare(DataSpec(corpus=(str(SHAKESPEARE),)), tmp_path)
    text = SHAKESPEARE.read_text(encoding="utf-8")
    val_text = ByteTokenizer().decode(td.val)
    assert text.rstrip("\n").endswith(val_text.rstrip("\n")) and 0.08 < len(val_text) / len(text) < 0.12
    assert str(SHAKESPEARE.resolve()) in td.description or "tinyshakespeare" in td.description


def test_user_file_and_glob_corpora(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "one.txt").write_text("alpha " * 500)
    (tmp_path / "a" / "two.md").write_text("beta " * 500)
    (tmp_path / "b.txt").write_text("gamma " * 500)
    spec = DataSpec(corpus=(str(tmp_path / "b.txt"), str(tmp_path / "a" / "**" / "*.txt")))
    td = prepare(spec, tmp_path / "cache")
    text = ByteTokenizer().decode(np.concatenate([td.train, td.val]))
    assert "alpha" in text and "gamma" in text and "beta" not in text
    # Sorted and de-duplicated: listing the same files another way gives the same data.
    spec2 = DataSpec(corpus=(str(tmp_path / "a" / "one.txt"), str(tmp_path / "*.txt"),
                             str(tmp_path / "b.txt")))
    td2 = prepare(spec2, tmp_path / "cache")
    assert np.array_equal(td.train, td2.train) and np.array_equal(td.val, td2.val)
    # A changed file invalidates the cache entry.
    (tmp_path / "b.txt").write_text("delta " * 600)
    assert "delta" in ByteTokenizer().decode(np.concatenate(
        [prepare(spec, tmp_path / "cache").train, prepare(spec, tmp_path / "cache").val]))


def test_errors_name_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "missing.txt"
    with pytest.raises(DataError, match=str(missing)):
        prepare(DataSpec(corpus=(str(missing),)), tmp_path)
    pattern = str(tmp_path / "nothing" / "*.txt")
    with pytest.raises(DataError, match="glob matches no files") as err:
        prepare(DataSpec(corpus=(pattern,)), tmp_path)
    assert pattern in str(err.value)
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n")
    with pytest.raises(DataError, match="empty") as err:
        prepare(DataSpec(corpus=(str(empty),)), tmp_path)
    assert str(empty) in str(err.value)
    binary = tmp_path / "blob.bin"
    binary.write_bytes(bytes(range(128, 256)) * 50)
    with pytest.raises(DataError, match="not UTF-8") as err:
        prepare(DataSpec(corpus=(str(binary),)), tmp_path)
    assert str(binary) in str(err.value)
    with pytest.raises(DataError, match="directory") as err:
        prepare(DataSpec(corpus=(str(tmp_path),)), tmp_path)
    assert str(tmp_path) in str(err.value)
    if os.geteuid() != 0:  # root reads files whatever their mode
        locked = tmp_path / "locked.txt"
        locked.write_text("secret")
        locked.chmod(0)
        with pytest.raises(DataError, match="cannot read") as err:
            prepare(DataSpec(corpus=(str(locked),)), tmp_path)
        assert str(locked) in str(err.value)


def test_unreadable_file_error_names_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "x.txt"
    path.write_text("hello " * 100)
    real = Path.read_bytes

    def denied(self: Path) -> bytes:
        if self.name == "x.txt":
            raise PermissionError(13, "Permission denied")
        return real(self)

    monkeypatch.setattr(Path, "read_bytes", denied)
    with pytest.raises(DataError, match="cannot read") as err:
        prepare(DataSpec(corpus=(str(path),)), tmp_path)
    assert str(path) in str(err.value)


def test_corpus_smaller_than_one_batch(tmp_path: Path) -> None:
    small = tmp_path / "small.txt"
    small.write_text("to be or not to be\n" * 20)
    td = prepare(DataSpec(corpus=(str(small),)), tmp_path)
    with pytest.raises(DataError, match="fewer than one batch") as err:
        check_fits(td, ProxyBudget(batch_size=16, seq_len=64))
    assert str(small) in str(err.value) and f"{len(td.train):,}" in str(err.value)
    check_fits(td, ProxyBudget(batch_size=2, seq_len=8))


def test_cache_dir_defaults_to_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NAS_CACHE_DIR", str(tmp_path / "env-cache"))
    text = tmp_path / "t.txt"
    text.write_text("some text\n" * 200)
    prepare(DataSpec(corpus=(str(text),)))
    assert len(list((tmp_path / "env-cache" / "data").glob("*.npz"))) == 1


# ----- binary files are not corpora ----------------------------------------------------------
def _refused(path: Path, cache: Path) -> str:
    with pytest.raises(DataError) as err:
        prepare(DataSpec(corpus=(str(path),)), cache)
    message = str(err.value)
    assert message.startswith(f"{path}: "), message
    return message


def test_random_bytes_are_refused(tmp_path: Path) -> None:
    blob = tmp_path / "random.bin"
    blob.write_bytes(os.urandom(64_000))  # ~43% undecodable, NUL bytes, control characters
    message = _refused(blob, tmp_path)
    assert "is binary, not text (" in message or "is not UTF-8 text (" in message


def test_random_bytes_without_nul_are_refused_as_undecodable(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    blob = tmp_path / "random.bin"
    blob.write_bytes(rng.integers(1, 256, size=64_000, dtype=np.uint8).tobytes())
    message = _refused(blob, tmp_path)
    assert "is not UTF-8 text (" in message
    assert "% of its characters are undecodable bytes; at most 1%)" in message


def test_elf_like_binary_is_refused_for_its_nul_bytes(tmp_path: Path) -> None:
    elf = tmp_path / "a.out"
    header = b"\x7fELF\x02\x01\x01" + bytes(9) + b"\x02\x00\x3e\x00"
    elf.write_bytes(header + bytes(8000) + b"GCC: (GNU) 12.2.0\0.text\0.data\0" + bytes(4000))
    assert _refused(elf, tmp_path) == f"{elf}: is binary, not text (contains NUL bytes, the first at byte 7)"


def test_control_characters_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "terminal.log"
    path.write_text("ok\x1b\x07\x08 " * 3000)  # valid UTF-8, but 50% control characters
    assert "is binary, not text (50.0% of its characters are control characters" in _refused(path, tmp_path)


def test_text_with_a_few_bad_bytes_still_trains(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    text = ("An ordinary line of prose, with tabs\tand form feeds\f, CRLF endings\r\n"
            "and unicode: na\u00efve caf\u00e9 \u2014 \ufffd kept as is.\n") * 400
    raw = text.encode("utf-8")
    raw = raw[:1000] + b"\xff\xfe" + raw[1000:5000] + b"\x1b[0m\x0b" + raw[5000:] + b"\xc3"
    path.write_bytes(raw)
    data = prepare(DataSpec(corpus=(str(path),)), tmp_path)
    assert len(data.train) + len(data.val) > 40_000


def test_a_tokenizer_file_encodes_like_the_tokenizer_it_was_saved_from(tmp_path: Path) -> None:
    # A parent's tokenizer.json (here: the byte tokenizer as `nas export` writes it) gives the
    # ids the parent was trained on; the cache keys on the file's content, not its path.
    corpus = tmp_path / "text.txt"
    corpus.write_text("déjà vu, the quick brown fox\n" * 400)
    ByteTokenizer().save(tmp_path / "parent")
    spec = DataSpec(corpus=(str(corpus),), tokenizer=f"file:{tmp_path / 'parent' / 'tokenizer.json'}")
    assert spec.vocab_size == 256 and spec.tokenizer_file == str(tmp_path / "parent" / "tokenizer.json")
    from_file = prepare(spec, cache_dir=tmp_path / "cache")
    as_bytes = prepare(DataSpec(corpus=(str(corpus),)), cache_dir=tmp_path / "cache")
    assert np.array_equal(from_file.train, as_bytes.train) and np.array_equal(from_file.val, as_bytes.val)
    assert from_file.tokenizer_name == spec.tokenizer

    # Another tokenizer at the same path: not served from the cache.
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = Tokenizer(models.WordLevel({"<unk>": 0, "the": 1, "fox": 2}, unk_token="<unk>"))
    words.pre_tokenizer = pre_tokenizers.Whitespace()
    words.save(str(tmp_path / "parent" / "tokenizer.json"))
    with pytest.raises(DataError, match=r"cannot encode this text: \d+\.\d% of its tokens are the unknown"):
        prepare(spec, cache_dir=tmp_path / "cache")


def test_a_missing_or_malformed_tokenizer_file_names_the_field(tmp_path: Path) -> None:
    from nas.errors import ConfigError

    with pytest.raises(ConfigError, match=r"tokenizer='file:.*nope.json': cannot read the tokenizer"):
        DataSpec(tokenizer=f"file:{tmp_path / 'nope.json'}").validate()
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(ConfigError, match=r"data.tokenizer='file:.*bad.json' is not a tokenizers file"):
        DataSpec(tokenizer=f"file:{tmp_path / 'bad.json'}").validate()
    with pytest.raises(ConfigError, match=r"must be 'byte', 'bpe:<vocab size >= 260>' or 'file:"):
        DataSpec(tokenizer="file:").validate()
