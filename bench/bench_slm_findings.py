"""Item 5: do small-LM design findings show up with the slm space's structure? Two scales.

    python -m bench.bench_slm_findings [--tokens 300000] [--seeds 2]      # reduced scale, CPU
    python -m bench.bench_slm_findings --scale slm --device cuda [--shard K/N]   # slm scale, GPU
    python -m bench.bench_slm_findings --report
    python -m bench.bench_slm_findings --smoke   # seconds: the tied pair, 2k tokens, BPE 300

Both scales run the same three *paired* comparisons with the slm space's structure (softmax
attention, GQA with 2 KV heads, SwiGLU ffn_mult 2.75, BPE vocabulary, lr 2e-3, warm-up 5%),
seeds 0 and 1, and are resumable: one JSON line per finished run in
``slm_findings/slm_findings.jsonl`` under the results directory (``$NAS_BENCH_RESULTS``), and a
restarted run skips what is there. Rows without a ``"scale"`` field are reduced-scale rows.

Reduced scale (``--scale reduced``, the default): `slm.yaml`'s models cannot be trained
meaningfully on a 2-core machine, so ~1.4-2M parameters, BPE vocabulary 2048 (trained by
`nas.data` on tinyshakespeare), 300k training tokens (batch 16 x 128), scored on 32k held-out
tokens, one CPU thread:

* tied embeddings: L8 d128 tied vs untied (same shape; tying saves vocab x d_model params);
* deep-and-thin vs shallow-and-wide at equal size: L20 d80 (1.63M) vs L3 d192 (1.64M);
* immediate block-wise sharing at fixed size: L6 d128 unshared vs L12 d128 ``repeat:2``
  (the same 1.37M unique parameters, each block run twice in a row: 2x compute).

``--tokens 900000 --seeds 1 --only deep-thin,shallow-wide`` repeats one pair at 3x the tokens.

slm scale (``--scale slm``, for a GPU): slm.yaml's own scale and budget shape: ~19-22M
parameters, BPE vocabulary 8192, batch 32 x 256, lr 2e-3, warm-up 5%, scored on 131,072
held-out tokens, ``--tokens`` (default 20M, 4x slm.yaml's 5M) each:

* tied embeddings: L10 d384 tied (19.25M) vs untied (22.40M);
* deep-and-thin vs shallow-and-wide: L26 d256 (21.28M) vs L6 d512 (21.11M), 0.8% apart;
* block-wise sharing: L10 d384 vs L20 d384 ``repeat:2`` (19.25M unique parameters each; the
  unshared model is the tied-embeddings pair's L10 d384 tied, the same run, not trained twice).

Corpus: the ~3.5 MB of real text at hand would be seen ~6 times in 20M BPE tokens, so the slm
scale trains on code: the running Python's ``*.py`` files, the standard library first, then
each site-packages directory, each in sorted order of relative path (files over 1 MB, mostly
generated tables, skipped), taken until the next file would pass ``--corpus-bytes`` (100 MB:
~3.8 bytes per BPE token on code, so ~23M training tokens and 20M is under one epoch; BPE
training and tokenizing took ~6 s per 20 MB on one core here).
`nas.data` splits it by file (10% of files held out, by a hash of the path), trains the BPE on
the training files only and caches both. The corpus (files, MB, largest packages, a digest of
the file list), training tokens available and epochs are recorded in every row and the report.

``--shard K/N`` runs only the units whose index is K modulo N, units ordered deepest model
first (kernel launches, one per layer op, dominate these small models' GPU steps), so N
processes started at once share the GPU and get similar work; a file lock lets the first one
build the tokenizer and token cache while the others wait, then read it. ``--report`` (or the
end of an unsharded run) prints every row in the file, grouped by scale, device and tokens.

``--smoke``: the reduced scale's tied-embeddings pair, one seed, 2k tokens, a BPE of 300 on the
smoke text, and the slm scale's corpus walk (files listed, nothing trained); a temporary folder.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import fcntl
import hashlib
import os
import sysconfig
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from bench.common import (
    SHARED_DATA,
    add_smoke_flag,
    append_jsonl,
    available_cores,
    format_machine,
    machine_info,
    markdown_table,
    parse_shard,
    read_jsonl,
    results_dir,
    smoke_text,
    start_smoke,
)

if TYPE_CHECKING:
    from nas.architecture import Architecture
    from nas.data import TokenData

MAX_FILE_BYTES = 1_000_000


def results_path() -> Path:
    return results_dir("slm_findings") / "slm_findings.jsonl"  # read at call time: --smoke moves it


# ----- the two scales --------------------------------------------------------------------
@dataclass(frozen=True)
class Scale:
    name: str
    vocab: int
    corpus_path: Path | None  # reduced scale: one text file; slm scale: the code corpus
    batch_size: int
    seq_len: int
    val_tokens: int
    tokens: int  # default training tokens per run
    device: str  # default device
    models: tuple[tuple[str, tuple[int, int, int], dict[str, Any]], ...]  # name, (L, d, heads), kw
    pairs: tuple[tuple[str, str, str], ...]  # label, a, b: reported as loss(a) - loss(b)

    def architectures(self) -> dict[str, Architecture]:
        from nas.architecture import Architecture

        out = {}
        for name, (n_layer, d_model, n_head), kw in self.models:
            fields = dict(n_layer=n_layer, d_model=d_model, n_head=n_head, n_kv_head=2,
                          ffn_mult=2.75, vocab_size=self.vocab, max_seq_len=512,
                          tie_embeddings=True)
            out[name] = Architecture(**{**fields, **kw})
        return out


REDUCED = Scale(
    name="reduced", vocab=2048, corpus_path=SHARED_DATA / "tinyshakespeare.txt", batch_size=16,
    seq_len=128, val_tokens=32_768, tokens=300_000,
    device="cpu",
    models=(("L8 d128 tied", (8, 128, 4), {}),
            ("L8 d128 untied", (8, 128, 4), {"tie_embeddings": False}),
            ("L20 d80 (deep-thin)", (20, 80, 4), {}),
            ("L3 d192 (shallow-wide)", (3, 192, 4), {}),
            ("L6 d128 unshared", (6, 128, 4), {}),
            ("L12 d128 repeat:2", (12, 128, 4), {"sharing": "repeat:2"})),
    pairs=(("tied embeddings (tied - untied)", "L8 d128 tied", "L8 d128 untied"),
           ("deep-thin - shallow-wide", "L20 d80 (deep-thin)", "L3 d192 (shallow-wide)"),
           ("block-wise sharing (repeat:2 - unshared)", "L12 d128 repeat:2", "L6 d128 unshared")),
)
# head_dim 64 throughout, as slm.yaml's widths give it.
SLM = Scale(
    name="slm", vocab=8192, corpus_path=None, batch_size=32, seq_len=256, val_tokens=131_072,
    tokens=20_000_000,
    device="cuda",
    models=(("L10 d384 tied", (10, 384, 6), {}),
            ("L10 d384 untied", (10, 384, 6), {"tie_embeddings": False}),
            ("L26 d256 (deep-thin)", (26, 256, 4), {}),
            ("L6 d512 (shallow-wide)", (6, 512, 8), {}),
            ("L20 d384 repeat:2", (20, 384, 6), {"sharing": "repeat:2"})),
    pairs=(("tied embeddings (tied - untied)", "L10 d384 tied", "L10 d384 untied"),
           ("deep-thin - shallow-wide", "L26 d256 (deep-thin)", "L6 d512 (shallow-wide)"),
           ("block-wise sharing (repeat:2 - unshared)", "L20 d384 repeat:2", "L10 d384 tied")),
)
SCALES = {s.name: s for s in (REDUCED, SLM)}


# ----- data ------------------------------------------------------------------------------
def _python_roots() -> list[Path]:
    """The standard library, then every site-packages directory, each once."""
    import site

    paths = sysconfig.get_paths()
    candidates = [paths["stdlib"], paths["purelib"], paths["platlib"], *site.getsitepackages()]
    roots: list[Path] = []
    for c in candidates:
        p = Path(c)
        if p.is_dir() and p.resolve() not in {r.resolve() for r in roots}:
            roots.append(p)
    return roots


def code_files(max_bytes: int) -> tuple[list[Path], dict[str, Any]]:
    """The code corpus's files (rule in the module docstring) and a description of them."""
    seen: set[str] = set()
    chosen: list[Path] = []
    packages: Counter[str] = Counter()
    total = 0
    for i, root in enumerate(_python_roots()):
        rel: list[str] = []
        for dirpath, dirnames, filenames in os.walk(root):
            # site-packages inside the stdlib tree (conda, venvs) is its own root, walked later.
            dirnames[:] = [d for d in dirnames if d not in ("site-packages", "dist-packages",
                                                            "__pycache__")]
            base = Path(dirpath).relative_to(root)
            rel += [(base / f).as_posix() for f in filenames if f.endswith(".py")]
        for name in sorted(rel):
            path = root / name
            real = os.path.realpath(path)
            size = path.stat().st_size
            if real in seen or size == 0 or size > MAX_FILE_BYTES:
                continue
            if total + size > max_bytes:
                return chosen, _describe(chosen, packages, total, max_bytes)
            seen.add(real)
            chosen.append(path)
            packages["stdlib" if i == 0 else name.split("/")[0]] += size
            total += size
    return chosen, _describe(chosen, packages, total, max_bytes)


def _describe(files: list[Path], packages: Counter[str], total: int,
              max_bytes: int) -> dict[str, Any]:
    digest = hashlib.sha256("\n".join(f"{p}:{p.stat().st_size}" for p in files).encode())
    top = ", ".join(f"{name} {size / total:.0%}" for name, size in packages.most_common(6))
    return {
        "corpus": (f"{len(files):,} .py files of Python {sysconfig.get_python_version()} "
                   f"(stdlib, then site-packages; sorted; cap {max_bytes / 1e6:g} MB): "
                   f"{total / 1e6:.1f} MB; largest: {top}"),
        "corpus_bytes": max_bytes, "corpus_files": len(files), "corpus_mb": round(total / 1e6, 2),
        "corpus_digest": digest.hexdigest()[:12],
    }


@contextlib.contextmanager
def _exclusive(name: str) -> Iterator[None]:
    """A machine-wide lock: concurrent shards build the BPE and token cache once, not N times."""
    with open(Path(tempfile.gettempdir()) / name, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def load_data(scale: Scale, corpus_bytes: int) -> tuple[TokenData, dict[str, Any]]:
    """(TokenData, description fields for the rows) for the scale."""
    from nas.data import prepare
    from nas.specs import DataSpec

    if scale.corpus_path is not None:
        data = prepare(DataSpec(corpus=(str(scale.corpus_path),), tokenizer=f"bpe:{scale.vocab}"))
        return data, {"corpus": data.description}
    files, info = code_files(corpus_bytes)
    spec = DataSpec(corpus=tuple(str(p) for p in files), tokenizer=f"bpe:{scale.vocab}")
    started = time.perf_counter()
    with _exclusive(f"nas-slm-findings-{info['corpus_digest']}.lock"):
        data = prepare(spec)
    # data.description starts with every path of the corpus: too long to print or store.
    print(f"data: {info['corpus']}; bpe:{scale.vocab} tokens: train {len(data.train):,}, "
          f"val {len(data.val):,} ({time.perf_counter() - started:.0f} s to prepare or load)",
          flush=True)
    return data, {**info, "train_tokens_available": int(len(data.train)),
                  "val_tokens_available": int(len(data.val))}


# ----- runs ------------------------------------------------------------------------------
def _key(row: dict[str, Any]) -> tuple:
    """What makes two rows the same run; old rows lack scale, device and corpus fields."""
    return (row.get("scale", "reduced"), row.get("device", "cpu"), row.get("corpus_bytes"),
            row["name"], row["seed"], row["tokens"])


def units(scale: Scale, seeds: int, only: str) -> list[tuple[str, int]]:
    """(model name, seed) in a fixed order, deepest first so round-robin shards balance."""
    archs = scale.architectures()
    names = [n for n in archs if not only or any(o in n for o in only.split(","))]
    names.sort(key=lambda n: (-archs[n].n_layer, -archs[n].training_flops_per_token(128), n))
    return [(n, s) for n in names for s in range(seeds)]


def collect(scale: Scale, *, tokens: int, seeds: int, only: str, device: str, threads: int,
            corpus_bytes: int, val_tokens: int, shard: tuple[int, int]) -> None:
    import torch

    from nas.proxy import train
    from nas.specs import ProxyBudget

    torch.set_num_threads(threads)
    corpus_key = corpus_bytes if scale.name == "slm" else None  # reduced rows have none

    def done(name: str, seed: int) -> bool:
        key = (scale.name, device, corpus_key, name, seed, tokens)
        return key in {_key(r) for r in read_jsonl(results_path())}

    mine = [u for i, u in enumerate(units(scale, seeds, only)) if i % shard[1] == shard[0]]
    if all(done(*u) for u in mine):  # resumed after the last unit: no need to load the data
        print(f"shard {shard[0]}/{shard[1]}: nothing left to run", flush=True)
        return
    data, corpus = load_data(scale, corpus_bytes)
    budget = ProxyBudget(tokens=tokens, batch_size=scale.batch_size, seq_len=scale.seq_len,
                         lr=2e-3, warmup_frac=0.05, val_tokens=val_tokens)
    context = {"scale": scale.name, "device": device, "threads": threads,
               "torch": torch.__version__,
               "batch_size": scale.batch_size, "seq_len": scale.seq_len,
               "epochs": round(tokens / len(data.train), 3), **corpus}
    if device == "cuda":
        context["gpu"] = torch.cuda.get_device_name(0)
    archs = scale.architectures()
    for name, seed in mine:
        arch = archs[name]
        if done(name, seed):  # another process may have run it meanwhile
            continue
        t0 = time.perf_counter()
        r = train(arch, budget, data, device=device, seed=seed, threads=threads).result
        seconds = time.perf_counter() - t0
        append_jsonl(results_path(), {
            "name": name, "seed": seed, "tokens": tokens, "arch": arch.to_dict(),
            "params": arch.n_params, "val_loss": r.val_loss, "status": r.status,
            "reason": r.reason, "tokens_per_s": r.tokens_per_s, "seconds": seconds,
            "val_tokens": val_tokens, "tokens_per_param": round(tokens / arch.n_params, 3),
            **context})
        print(f"{scale.name} {name} s{seed}: {r.val_loss:.4f} {r.status} ({seconds:.0f} s, "
              f"{r.tokens_per_s:,.0f} tokens/s)", flush=True)


# ----- report ----------------------------------------------------------------------------
def _fmt_tokens(n: int) -> str:
    return f"{n / 1e6:g}M" if n >= 1_000_000 else f"{n / 1e3:g}k"


def _group_header(rows: list[dict[str, Any]]) -> str:
    r = rows[-1]
    scale, device, tokens = r.get("scale", "reduced"), r.get("device", "cpu"), r["tokens"]
    if r.get("gpu"):
        where = f"cuda ({r['gpu']})"
    else:
        threads = r.get("threads", 1)  # old rows: one thread
        where = f"{device}, {threads} thread{'s' if threads > 1 else ''}"
    lines = [f"### {scale} scale, {_fmt_tokens(tokens)} training tokens per run, {where}"]
    if r.get("corpus_files"):
        lines.append(f"- corpus: {r['corpus']} (file list digest {r['corpus_digest']})")
        lines.append(f"- training tokens available {r['train_tokens_available']:,} "
                     f"(so {r['epochs']:g} epochs), scored on {r['val_tokens']:,} held-out tokens")
    return "\n".join(lines)


def _group_tables(rows: list[dict[str, Any]], scale: Scale) -> str:
    from nas.architecture import Architecture

    loss: dict[str, dict[int, float]] = {}
    by_name: dict[str, dict[str, Any]] = {}
    speed: dict[str, list[float]] = {}
    for r in rows:
        loss.setdefault(r["name"], {})[r["seed"]] = r["val_loss"]
        by_name[r["name"]] = r
        speed.setdefault(r["name"], []).append(r.get("tokens_per_s", 0.0))
    seq_len = rows[-1].get("seq_len", scale.seq_len)
    table = []
    for name, r in by_name.items():
        arch = Architecture.from_dict(r["arch"])
        table.append([name, f"{r['params'] / 1e6:.2f}M", f"{r['tokens'] / r['params']:.3g}",
                      f"{arch.training_flops_per_token(seq_len) / 1e6:.1f}",
                      " / ".join(f"{loss[name][s]:.4f}" for s in sorted(loss[name])),
                      f"{np.median(speed[name]):,.0f}"])
    text = markdown_table(["model", "params", "tokens/param", "train MFLOP/token",
                           "val loss (seed 0 / 1)", "tokens/s"], table)
    pairs = []
    for label, a, b in scale.pairs:
        seeds = sorted(set(loss.get(a, {})) & set(loss.get(b, {})))
        if not seeds:
            continue
        d = [loss[a][s] - loss[b][s] for s in seeds]
        pairs.append([label, f"{(by_name[a]['params'] - by_name[b]['params']) / 1e6:+.2f}M",
                      " / ".join(f"{x:+.4f}" for x in d), f"{np.mean(d):+.4f}", len(seeds)])
    if pairs:
        text += "\n\n" + markdown_table(["comparison", "params difference",
                                         "loss difference per seed", "mean", "seeds"], pairs)
    return text


def report() -> str:
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in read_jsonl(results_path()):
        groups.setdefault(_key(r)[:3] + (r["tokens"],), []).append(r)
    order = sorted(groups, key=lambda k: (list(SCALES).index(k[0]), k[1], k[2] or 0, k[3]))
    parts = [_group_header(groups[k]) + "\n\n" + _group_tables(groups[k], SCALES[k[0]])
             for k in order]
    return "\n\n".join(parts) if parts else f"no rows in {results_path()}"


def smoke(args: argparse.Namespace) -> Scale:
    """The reduced scale shrunk to seconds (one pair, one seed); the slm corpus walk is checked."""
    start_smoke()
    files, info = code_files(2_000_000)
    print(f"slm corpus walk: {len(files)} files; {info['corpus']}", flush=True)
    args.scale, args.tokens, args.seeds, args.only = "reduced", 2048, 1, "L8 d128"
    args.shard = None
    # 300: the byte alphabet plus a few merges, so the BPE trains in well under a second.
    return dataclasses.replace(REDUCED, vocab=300, corpus_path=smoke_text(), val_tokens=2048)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scale", choices=list(SCALES), default="reduced")
    ap.add_argument("--device", choices=["cpu", "cuda"], default=None,
                    help="default: cpu for reduced, cuda for slm")
    ap.add_argument("--tokens", type=int, default=None,
                    help="training tokens per run (default: 300k reduced, 20M slm)")
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--corpus-bytes", type=int, default=100_000_000,
                    help="slm scale: size cap of the code corpus")
    ap.add_argument("--val-tokens", type=int, default=None,
                    help="held-out tokens scored (default: 32k reduced, 131k slm)")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch CPU threads (default: 1 on cpu; cores / shards on cuda)")
    ap.add_argument("--shard", default=None, help="K/N: run the units whose index is K mod N")
    ap.add_argument("--report", action="store_true", help="only print the report")
    ap.add_argument("--only", default="", help="comma-separated substrings of model names to run")
    add_smoke_flag(ap)
    args = ap.parse_args()
    if args.report:
        print(report())
        return
    scale = SCALES[args.scale]
    if args.smoke:
        scale = smoke(args)
    device = args.device or scale.device
    shard = parse_shard(args.shard)
    if device == "cuda":
        import torch

        if not torch.cuda.is_available():
            ap.error("--device cuda: torch sees no CUDA device (use --device cpu)")
    threads = args.threads or (max(1, available_cores() // shard[1]) if device == "cuda" else 1)
    print(format_machine(machine_info(threads=threads)), flush=True)
    collect(scale, tokens=args.tokens or scale.tokens, seeds=args.seeds, only=args.only,
            device=device, threads=threads, corpus_bytes=args.corpus_bytes,
            val_tokens=args.val_tokens or scale.val_tokens, shard=shard)
    if shard[1] == 1:  # N shards would print N interleaved reports: run --report after them
        print(report())
    else:
        print(f"shard {shard[0]}/{shard[1]} done", flush=True)


if __name__ == "__main__":
    main()
