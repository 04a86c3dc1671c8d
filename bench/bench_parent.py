"""Issue 15's benchmark: a parent trained by `nas` on WikiText-2, candidates derived from it.

    python -m bench.bench_parent                              # every phase, resumable
    python -m bench.bench_parent --phase candidates --shard 1/2   # a second process (second core)
    python -m bench.bench_parent --phase report               # the tables from stored rows
    python -m bench.bench_parent --smoke                      # seconds: a tiny parent, 3 candidates

Phases (``--phase parent,candidates,search,report``, default all; rerun to continue a killed one):

1. **parent**: `nas.proxy.train` trains ``PARENT`` (L6 d192 h6/kv2 ffn3, BPE 4096, 3.4M params)
   on WikiText-2 for ``--parent-tokens``, one thread, in chunks of ``--chunk-steps`` whose
   training checkpoints (`train(stop_at=, resume=)`: bitwise the same as one unbroken run) let a
   killed run resume. Written as `nas export` writes a model (`nas.checkpoint.write_checkpoint`
   plus ``architecture.json``) to ``bench/results/parent/parent/`` (gitignored, like ``work/``).
2. **candidates**: ``--candidates`` distinct architectures at 20-70% of the parent's parameters,
   drawn (``--seed``) from the grid `grid` (every field a derivation of the parent), taken round
   robin over depth, width, GQA and sharing so each is covered. Each is scored on the same
   validation tokens after: the derivation alone (``derived``, 0 tokens), inherited + distilled
   for N and 10N tokens (``distill``), from scratch for N, 3N and 10N (``scratch``); the first
   candidate also distils from a precomputed `TeacherCache` (``distill_cached``) for the cost
   line. One row per (candidate, kind, tokens), keyed by the parent's fingerprint.
3. **search**: a real search (`SearchDriver`, Ray) from the parent over the same grid and
   parameter range, distilling N tokens per candidate, objectives val_loss and
   ``latency:cpu-1t-int8:decode_ms``; the parent's own latency is measured the same way (its ONNX
   graphs, `nas.latency.measure` on the timing core) before and after, and its loss on the same
   validation tokens.
4. **report**: goals 1-3 of the issue and the cost, as markdown (also ``report.log``).

Data: the shared folder has WikiText-2's valid and test splits only (no train split); both are
the corpus and `nas.data.prepare`'s rule holds out the last 10% (of test.txt) for validation. A
BPE of 4096 is trained on the training part; once the parent exists, every later phase reads the
data through the parent's tokenizer.json, as the search does (checked to give the same tokens).
Every run uses the parent's budget shape (batch, seq_len, lr) and ``--val-tokens``.

Time with the defaults, one thread of a 2-core AMD EPYC (88 GFLOP/s fp32 matmul), measured on
a few steps of each: parent 2,030 tokens/s, so ~25 min for 3M tokens; a candidate's six runs
~130-260 s (distilling 1,800-3,000 tokens/s, from scratch 2,800-6,600, scoring with the KL
~3-4 s), ~110 min for 32 (``--shard 0/2`` and ``1/2`` on two free cores halve it); the search
~10 min (24 trials of ~20 s). About 2.5 hours in all; ``--smoke`` ~30 s.
"""

from __future__ import annotations

import argparse
import itertools
import math
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.common import (
    SHARED_DATA,
    add_smoke_flag,
    append_jsonl,
    format_machine,
    machine_info,
    markdown_table,
    matmul_flops,
    parse_shard,
    read_jsonl,
    results_dir,
    smoke_text,
    start_smoke,
)
from nas.architecture import Architecture
from nas.data import TokenData
from nas.specs import DataSpec, ProxyBudget

STUDY = "parent"
PHASES = ("parent", "candidates", "search", "report")
PARENT = Architecture(n_layer=6, d_model=192, n_head=6, n_kv_head=2, ffn_mult=3.0, vocab_size=4096,
                      max_seq_len=256)  # 256 positions: cpu-1t-int8 times 128 prompt + 128 past
SMOKE_PARENT = Architecture(n_layer=2, d_model=32, n_head=4, n_kv_head=2, ffn_mult=2.0,
                            vocab_size=512, max_seq_len=256)
PROFILE = "cpu-1t-int8"
DECODE = f"latency:{PROFILE}:decode_ms"
SHARE = (0.2, 0.7)  # candidates' parameters as a share of the parent's
FEATURES = ("depth", "width", "gqa", "sharing")
SEARCH_NAME = "from-parent"
SMOKE = {"parent_tokens": 20_000, "candidates": 3, "n_tokens": 512, "search_trials": 2,
         "batch_size": 4, "seq_len": 32, "val_tokens": 2048, "chunk_steps": 100}


# ----- data and the parent ---------------------------------------------------------------------
def corpus_paths(smoke: bool) -> tuple[str, ...]:
    if smoke:
        return (str(smoke_text()),)
    return tuple(str(SHARED_DATA / "wikitext-2" / f) for f in ("valid.txt", "test.txt"))


def parent_arch(smoke: bool) -> Architecture:
    return SMOKE_PARENT if smoke else PARENT


def bpe_spec(args: argparse.Namespace) -> DataSpec:
    return DataSpec(corpus=corpus_paths(args.smoke), tokenizer=f"bpe:{parent_arch(args.smoke).vocab_size}")


def file_spec(args: argparse.Namespace) -> DataSpec:
    """The data as a search from the parent reads it: through the parent's tokenizer.json."""
    return DataSpec(corpus=corpus_paths(args.smoke), tokenizer=f"file:{parent_dir() / 'tokenizer.json'}")


def parent_dir() -> Path:
    return results_dir(STUDY) / "parent"


def work_dir() -> Path:
    """Training checkpoints, the search's database and space: gitignored, never committed."""
    path = results_dir(STUDY) / "work"
    path.mkdir(parents=True, exist_ok=True)
    return path


def budget(args: argparse.Namespace, tokens: int) -> ProxyBudget:
    return ProxyBudget(tokens=tokens, batch_size=args.batch_size, seq_len=args.seq_len, lr=args.lr,
                       val_tokens=args.val_tokens, max_seconds=None)


def train_parent(args: argparse.Namespace) -> None:
    """Phase 1, in chunks whose training checkpoints survive a kill."""
    from nas.data import load_tokenizer, prepare
    from nas.proxy import train
    from nas.util import stable_hash

    arch, spec = parent_arch(args.smoke), bpe_spec(args)
    b = budget(args, args.parent_tokens)
    key = stable_hash({"arch": arch.to_dict(), "budget": b.to_dict(), "data": spec.to_dict()})
    if (parent_dir() / "config.json").is_file() and any(
            r.get("key") == key for r in read_jsonl(results_dir(STUDY) / "parent.jsonl")):
        print(f"parent: done ({parent_dir()})", flush=True)
        return
    data = prepare(spec)
    print(f"parent: {arch.describe()}, {arch.n_params:,} params, {b.tokens:,} tokens "
          f"({b.steps} steps of {b.batch_size} x {b.seq_len}); {data.description}", flush=True)
    ckpt = work_dir() / f"parent-{key}.ckpt"
    chunks = [r for r in read_jsonl(results_dir(STUDY) / "parent_chunks.jsonl") if r["key"] == key]
    resume = ckpt.read_bytes() if ckpt.is_file() else None
    step = int(torch.load(ckpt, weights_only=True)["step"]) if resume else 0
    ref = matmul_flops(threads=1)
    while True:
        stop = min(b.steps, step + args.chunk_steps)
        started = time.perf_counter()
        out = train(arch, b, data, seed=0, threads=1, stop_at=stop, resume=resume)
        r = out.result
        if r.status != "ok":
            raise SystemExit(f"parent training {r.status} at step {stop}: {r.reason}")
        chunk = {"key": key, "step": stop, "val_loss": r.val_loss, "seconds": time.perf_counter() - started,
                 "train_seconds": (stop - step) * b.batch_size * b.seq_len / r.tokens_per_s}
        append_jsonl(results_dir(STUDY) / "parent_chunks.jsonl", chunk)
        chunks = [c for c in chunks if c["step"] != stop] + [chunk]
        print(f"  step {stop}/{b.steps}: val_loss {r.val_loss:.3f} ({r.tokens_per_s:,.0f} tokens/s)",
              flush=True)
        if out.checkpoint is None:
            break
        ckpt.write_bytes(out.checkpoint)
        resume, step = out.checkpoint, stop
    write_parent(out.model, load_tokenizer(spec))
    ref_after = matmul_flops(threads=1)
    train_s = sum(c["train_seconds"] for c in chunks)
    fingerprint = open_parent_ref(args).fingerprint
    append_jsonl(results_dir(STUDY) / "parent.jsonl", {
        "kind": "parent", "key": key, "fingerprint": fingerprint, "arch": arch.to_dict(),
        "describe": arch.describe(), "params": arch.n_params, "tokens": b.tokens,
        "budget": b.to_dict(), "data": data.description, "val_loss": r.val_loss,
        "seconds": sum(c["seconds"] for c in chunks), "train_seconds": train_s,
        "tokens_per_s": b.steps * b.batch_size * b.seq_len / train_s,
        "matmul_flops_ref": [ref, ref_after], "machine": machine_info(threads=1)})
    ckpt.unlink(missing_ok=True)
    print(f"parent: val_loss {r.val_loss:.3f}, fingerprint {fingerprint}", flush=True)


def write_parent(model: Any, tokenizer: Any) -> None:
    """As tests/parents.py::nas_parent: `nas export`'s files plus our architecture.json; written
    to a temporary folder and renamed, so a half-written parent never looks finished."""
    from nas.checkpoint import write_checkpoint
    from nas.hf_config import ARCHITECTURE_FILE

    final = parent_dir()
    tmp = final.with_name(final.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    (tmp / ARCHITECTURE_FILE).write_text(model.arch.to_json())
    write_checkpoint(tmp, model, tokenizer)
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)


def search_data(args: argparse.Namespace) -> TokenData:
    """The data through the parent's tokenizer, refused if it differs from the BPE the parent
    was trained on (then the parent's loss and the candidates' would not be comparable)."""
    from nas.data import prepare

    data, trained_on = prepare(file_spec(args)), prepare(bpe_spec(args))
    if not (np.array_equal(data.train, trained_on.train) and np.array_equal(data.val, trained_on.val)):
        raise SystemExit("the parent's tokenizer.json gives other tokens than the BPE it was trained on")
    return data


def open_parent_ref(args: argparse.Namespace) -> Any:
    """The `nas.parent.ParentRef` a search would make: same importance, same fingerprint."""
    from nas.parent import load_parent
    from nas.specs import ParentSpec

    if not (parent_dir() / "config.json").is_file():
        raise SystemExit(f"no parent at {parent_dir()}: run --phase parent first")
    # The candidate runs distil from the parent itself (the exact KL); the search (phase 3)
    # uses the product's default, the cached top-k logits.
    return load_parent(ParentSpec(path=str(parent_dir()), teacher="worker"), search_data(args),
                       budget(args, args.n_tokens), seed=0, threads=1)


def current_parent() -> dict[str, Any] | None:
    rows = [r for r in read_jsonl(results_dir(STUDY) / "parent.jsonl") if r.get("kind") == "parent"]
    return rows[-1] if rows else None


# ----- candidates ------------------------------------------------------------------------------
def grid(parent: Architecture) -> dict[str, list[Any]]:
    """Values derivable from ``parent``: every depth; d_model at 1/4, 1/2 and all of the parent's
    head_dim (n_head stays the parent's: a space lists n_head and d_model independently, and only
    then is every pair derivable); kv heads dividing the parent's; FFN multipliers up to the
    parent's; sharing none or repeat:2."""
    head_dims = [d for d in (parent.head_dim // 4, parent.head_dim // 2, parent.head_dim)
                 if d >= 2 and d % 2 == 0]
    return {"n_layer": list(range(1, parent.n_layer + 1)),
            "d_model": [parent.n_head * d for d in head_dims],
            "n_kv_head": [k for k in range(1, parent.n_kv_head + 1) if parent.n_kv_head % k == 0],
            "ffn_mult": [m for m in (1.5, 2.0, 3.0) if m <= parent.ffn_mult],
            "sharing": ["none", "repeat:2"]}


def features(parent: Architecture, arch: Architecture) -> list[str]:
    return [name for name, on in zip(FEATURES, (
        arch.n_layer < parent.n_layer,
        arch.d_model < parent.d_model or arch.ffn_hidden < parent.ffn_hidden,
        arch.n_kv_head < parent.n_kv_head, arch.sharing != "none")) if on]


def feasible(parent: Architecture) -> list[Architecture]:
    """Every grid point derivable from ``parent`` at `SHARE` of its parameters, grid order."""
    from nas.derivation import candidate_architecture, check_derivable
    from nas.errors import NasError

    g, out = grid(parent), []
    for n_layer, d_model, kv, mult, sharing in itertools.product(*g.values()):
        if sharing == "repeat:2" and n_layer % 2:
            continue
        try:
            arch = candidate_architecture(parent, Architecture(
                n_layer=n_layer, d_model=d_model, n_head=parent.n_head, n_kv_head=kv, ffn_mult=mult,
                sharing=sharing, tie_embeddings=parent.tie_embeddings, vocab_size=parent.vocab_size,
                max_seq_len=parent.max_seq_len))
            check_derivable(parent, arch)
        except NasError:
            continue
        if SHARE[0] <= arch.n_params / parent.n_params <= SHARE[1]:
            out.append(arch)
    return out


def draw(parent: Architecture, n: int, seed: int) -> list[Architecture]:
    """``n`` distinct candidates: a seeded shuffle of `feasible`, taken round robin over
    `FEATURES` (the next one with that feature) so every kind of derivation is covered."""
    pool = feasible(parent)
    order = [pool[i] for i in np.random.default_rng(seed).permutation(len(pool))]
    chosen: list[Architecture] = []
    for j in range(min(n, len(order))):
        rest = [a for a in order if a not in chosen]
        with_feature = [a for a in rest if FEATURES[j % len(FEATURES)] in features(parent, a)]
        chosen.append((with_feature or rest)[0])
    return chosen


def units(n_tokens: int) -> list[tuple[str, int]]:
    """Per candidate, cheapest first: goal 1 needs the first five."""
    return [("derived", 0), ("distill", n_tokens), ("scratch", n_tokens), ("scratch", 3 * n_tokens),
            ("scratch", 10 * n_tokens), ("distill", 10 * n_tokens)]


def run_candidates(args: argparse.Namespace) -> None:
    """Phase 2: every (candidate, kind, tokens) unit not yet stored for this parent."""
    from nas.distill import build_teacher_cache
    from nas.parent import derived_start, parent_model
    from nas.proxy import train, validation_scores

    ref = open_parent_ref(args)
    data = search_data(args)
    teacher = parent_model(ref)
    archs = draw(ref.architecture, args.candidates, args.seed)
    print(f"candidates: {len(archs)} of {len(feasible(ref.architecture))} feasible; features: "
          + ", ".join(f"{f} {sum(f in features(ref.architecture, a) for a in archs)}" for f in FEATURES),
          flush=True)
    out = results_dir(STUDY) / "candidates.jsonl"
    shard, shards = parse_shard(args.shard)
    n = args.n_tokens
    for i, arch in list(enumerate(archs))[shard::shards]:
        done = {(r["hash"], r["kind"], r["tokens"]) for r in read_jsonl(out)
                if r.get("fingerprint") == ref.fingerprint}
        todo = [u for u in units(n) if (arch.hash, *u) not in done]
        cached = [("distill_cached", t) for t in (n, 10 * n)] if i == 0 else []
        cached = [u for u in cached if (arch.hash, *u) not in done]
        if not todo and not cached:
            continue
        flops = matmul_flops(threads=1)
        base = {"i": i, "hash": arch.hash, "arch": arch.to_dict(), "describe": arch.describe(),
                "params": arch.n_params, "share": arch.n_params / ref.architecture.n_params,
                "features": features(ref.architecture, arch), "fingerprint": ref.fingerprint,
                "derivation": ref.plan(arch).describe(), "matmul_flops_ref": flops}
        for kind, tokens in todo:
            started = time.perf_counter()
            start = derived_start(ref, arch)[0] if kind != "scratch" else None
            if kind == "derived":
                b = budget(args, n)
                loss, kl = validation_scores(start, data, b, teacher=teacher)
                row = {"val_loss": loss, "val_kl": kl, "status": "ok"}
            else:
                r = train(arch, budget(args, tokens), data, seed=0, threads=1, model=start,
                          teacher=teacher if kind == "distill" else None).result
                row = {"val_loss": r.val_loss, "val_kl": r.val_kl, "status": r.status,
                       "tokens_per_s": r.tokens_per_s, "train_seconds": r.tokens / r.tokens_per_s}
            row.update(kind=kind, tokens=tokens, seconds=time.perf_counter() - started,
                       loadavg=os.getloadavg()[0])
            append_jsonl(out, {**base, **row})
            print(f"[{i}] {arch.describe()} {kind}@{tokens:,}: {row['val_loss']:.3f} "
                  f"({row['seconds']:.1f} s)", flush=True)
        if cached:  # the cost line: the same distillation from the parent's cached top-k logits
            started = time.perf_counter()
            cache = build_teacher_cache(teacher, budget(args, 10 * n), data, seed=0, device="cpu",
                                        threads=1)
            build_s = time.perf_counter() - started
            for kind, tokens in cached:
                started = time.perf_counter()
                r = train(arch, budget(args, tokens), data, seed=0, threads=1,
                          model=derived_start(ref, arch)[0], teacher_cache=cache).result
                append_jsonl(out, {**base, "kind": kind, "tokens": tokens, "val_loss": r.val_loss,
                                   "val_kl": r.val_kl, "status": r.status, "tokens_per_s": r.tokens_per_s,
                                   "train_seconds": r.tokens / r.tokens_per_s,
                                   "seconds": time.perf_counter() - started, "cache_k": cache.k,
                                   "cache_build_seconds": build_s, "cache_steps": cache.steps,
                                   "cache_mb": cache.nbytes / 1e6})
                print(f"[{i}] {kind}@{tokens:,}: {r.val_loss:.3f} (cache built in {build_s:.1f} s)",
                      flush=True)


# ----- search ----------------------------------------------------------------------------------
def space_yaml(args: argparse.Namespace, parent: Architecture) -> dict[str, Any]:
    g = grid(parent)
    arch = {k: {"choices": v} for k, v in g.items()}
    arch.update(n_head=parent.n_head, attention="softmax", tie_embeddings=parent.tie_embeddings,
                max_seq_len=parent.max_seq_len)
    return {"name": "bench-parent", "seed": 0, "trials": args.search_trials, "sampler": "tpe",
            "profiles": [PROFILE], "objectives": {"val_loss": "min", DECODE: "min"},
            "constraints": [f"params >= {SHARE[0] * parent.n_params:.0f}",
                            f"params <= {SHARE[1] * parent.n_params:.0f}"],
            "budget": budget(args, args.n_tokens).to_dict(),
            "data": {"corpus": list(corpus_paths(args.smoke))},
            "parent": {"path": str(parent_dir())}, "architecture": arch}


def parent_latency(ref: Any) -> dict[str, float]:
    """The parent timed as the search times a candidate: its graphs, on the timing core."""
    from nas.affinity import plan_cores
    from nas.hardware import load_profile
    from nas.latency import measure
    from nas.onnx_export import export_onnx
    from nas.parent import parent_model

    with tempfile.TemporaryDirectory(prefix="nas-bench-parent-") as tmp:
        graphs = export_onnx(parent_model(ref), ref.architecture, Path(tmp))
        result = measure(graphs, load_profile(PROFILE), cpus=set(plan_cores(1).measure_cores))
    return {"decode_ms": result.decode.median_ms, "prefill_ms": result.prefill.median_ms}


def run_search(args: argparse.Namespace) -> None:
    import yaml

    from nas.derivation import Derivation
    from nas.hardware import load_profiles
    from nas.parent import parent_model
    from nas.proxy import validation_loss
    from nas.search import SearchDriver, SearchRequest
    from nas.space import load_space
    from nas.store import Store

    ref = open_parent_ref(args)
    out = results_dir(STUDY) / "search.jsonl"
    if any(r.get("fingerprint") == ref.fingerprint and r["trials"] == args.search_trials
           and r["n_tokens"] == args.n_tokens for r in read_jsonl(out)):
        print("search: done", flush=True)
        return
    path = work_dir() / "search-space.yaml"
    path.write_text(yaml.safe_dump(space_yaml(args, ref.architecture), sort_keys=False))
    space = load_space(path)
    b = space.budget
    parent_loss = validation_loss(parent_model(ref), search_data(args), b)
    before = parent_latency(ref)
    db = f"sqlite:///{work_dir() / f'search-{ref.fingerprint}.db'}"
    request = SearchRequest(space=space, name=SEARCH_NAME, profiles=load_profiles([PROFILE]),
                            trials=args.search_trials, db_url=db, no_fidelity=True)
    started = time.perf_counter()
    store = Store(db)
    outcome = SearchDriver(request, store).run()
    wall = time.perf_counter() - started
    after = parent_latency(ref)
    front = {c.trial_number for c in outcome.front}
    candidates = [{
        "trial": c.trial_number, "arch": c.architecture.to_dict(), "describe": c.architecture.describe(),
        "params": c.architecture.n_params, "state": c.state, "error": c.error[:300],
        "val_loss": c.metrics.get("val_loss"), "val_kl": c.metrics.get("val_kl"),
        "decode_ms": c.metrics.get(DECODE), "prefill_ms": c.metrics.get(f"latency:{PROFILE}:prefill_ms"),
        "seconds": c.timings.get("total"), "front": c.trial_number in front,
        "derivation": Derivation.from_dict(c.derivation).describe() if c.derivation else None}
        for c in store.candidates(SEARCH_NAME)]
    store.close()
    append_jsonl(out, {
        "kind": "search", "fingerprint": ref.fingerprint, "trials": args.search_trials,
        "n_tokens": args.n_tokens, "status": outcome.status, "n_complete": outcome.n_complete,
        "n_failed": outcome.n_failed, "n_infeasible": outcome.n_infeasible, "seconds": wall,
        "tokens": outcome.tokens, "parent_val_loss": parent_loss,
        "parent_decode_ms": [before["decode_ms"], after["decode_ms"]],
        "parent_prefill_ms": [before["prefill_ms"], after["prefill_ms"]],
        "candidates": candidates, "machine": machine_info(threads=1)})
    print(f"search: {outcome.n_complete} complete in {wall:.0f} s; parent decode "
          f"{before['decode_ms']:.3f} / {after['decode_ms']:.3f} ms", flush=True)


# ----- report ----------------------------------------------------------------------------------
def _rho(a: list[float], b: list[float]) -> str:
    """Spearman rho [bootstrap 95%] over the candidates with both values finite."""
    from bench.analyze_fidelity import _rho as rho
    from bench.analyze_fidelity import boot, fmt

    pairs = [(x, y) for x, y in zip(a, b) if math.isfinite(x) and math.isfinite(y)]
    if len(pairs) < 3:
        return "- (fewer than 3 candidates)"
    x, y = np.array(pairs).T
    if len(pairs) < 5:
        return f"{rho(x, y):.3f} (n={len(pairs)}: too few for an interval)"
    return fmt(*boot(x, y, rho, np.random.default_rng(0))) + f" (n={len(pairs)})"


def _catch_up(c: dict[tuple[str, int], float], n: int) -> str:
    """The smallest r in 1, 3, 10 at which scratch@rN <= inherited@N, else ">10"."""
    target = c.get(("distill", n), math.nan)
    for r in (1, 3, 10):
        if c.get(("scratch", r * n), math.inf) <= target:
            return str(r)
    return ">10"


def report(args: argparse.Namespace) -> str:
    parent = current_parent()
    lines = ["# Search from a parent (issue 15)\n", format_machine(machine_info(threads=1))]
    if parent is None:
        return "\n".join(lines + ["\nno parent trained yet"])
    fp, n = parent["fingerprint"], args.n_tokens
    lines.append(f"- parent {parent['describe']}, {parent['params']:,} params, {parent['tokens']:,} "
                 f"tokens in {parent['seconds']:.0f} s ({parent['tokens_per_s']:,.0f} tokens/s, one "
                 f"thread, on {parent['machine']['host']} {parent['machine']['date']}); val_loss "
                 f"{parent['val_loss']:.3f}; {parent['data']}")
    rows = [r for r in read_jsonl(results_dir(STUDY) / "candidates.jsonl") if r.get("fingerprint") == fp]
    by: dict[str, dict[tuple[str, int], float]] = {}
    meta: dict[str, dict[str, Any]] = {}
    for r in rows:
        by.setdefault(r["hash"], {})[(r["kind"], r["tokens"])] = r["val_loss"]
        meta.setdefault(r["hash"], r)
    order = sorted(by, key=lambda h: meta[h]["i"])
    kinds = [("derived", 0), ("distill", n), ("scratch", n), ("scratch", 3 * n), ("scratch", 10 * n),
             ("distill", 10 * n)]
    table, wins, ratios = [], [], {"1": 0, "3": 0, "10": 0, ">10": 0}
    for h in order:
        c, m = by[h], meta[h]
        full = all(k in c for k in kinds[:5])
        if full:
            wins.append(c[("distill", n)] < c[("scratch", 10 * n)])
            ratios[_catch_up(c, n)] += 1
        table.append([m["i"], m["describe"], f"{100 * m['share']:.0f}%", ",".join(m["features"]),
                      *(f"{c[k]:.3f}" if k in c else "-" for k in kinds),
                      _catch_up(c, n) if full else "-"])
    lines += [f"\n## Candidates: {len(order)} derived, N = {n:,} tokens\n", markdown_table(
        ["#", "architecture", "params", "derivation", "derived only", "distil N", "scratch N",
         "scratch 3N", "scratch 10N", "distil 10N", "catch-up"], table)]
    share = f"{sum(wins)}/{len(wins)} ({100 * sum(wins) / len(wins):.0f}%)" if wins else "-"
    lines += [f"\n**Goal 1** (inherited + distilled for N beats scratch for 10N, >= 80%): {share}. "
              "Catch-up ratio (smallest r with scratch@rN <= distil@N): "
              + ", ".join(f"{k}: {v}" for k, v in ratios.items())]

    def col(kind: str, tokens: int) -> list[float]:
        return [by[h].get((kind, tokens), math.nan) for h in order]

    pairs = [(("distill", n), ("distill", 10 * n)), (("scratch", n), ("scratch", 10 * n)),
             (("derived", 0), ("distill", 10 * n))]
    lines += ["\n**Goal 2** (Spearman rho >= 0.9 between the N- and 10N-token distilled losses):\n",
              markdown_table(["ranking", "vs", "Spearman rho [95% CI]"], [
                  [f"{a[0]} {a[1]:,}", f"{b[0]} {b[1]:,}", _rho(col(*a), col(*b))] for a, b in pairs])]
    lines += search_report(fp)
    lines += cost_report(rows, n)
    return "\n".join(lines)


def search_report(fp: str) -> list[str]:
    rows = [r for r in read_jsonl(results_dir(STUDY) / "search.jsonl") if r.get("fingerprint") == fp]
    if not rows:
        return ["\n**Goal 3**: no search yet"]
    s = rows[-1]
    p_loss, p_decode = s["parent_val_loss"], statistics.mean(s["parent_decode_ms"])
    done = sorted((c for c in s["candidates"] if c["state"] == "complete"), key=lambda c: c["decode_ms"])
    table = [[c["trial"], c["describe"], f"{c['decode_ms']:.3f}", f"{p_decode / c['decode_ms']:.2f}x",
              f"{c['val_loss']:.3f}", f"{c['val_loss'] - p_loss:+.3f}", "yes" if c["front"] else ""]
             for c in done]
    fast = [c for c in done if p_decode / c["decode_ms"] >= 2]
    close = [c for c in fast if c["val_loss"] - p_loss <= 0.1]
    if close:
        verdict = (f"{len(close)} candidate(s) >= 2x faster within +0.1 nats; best: trial "
                   f"{min(close, key=lambda c: c['val_loss'])['trial']}")
    elif fast:
        best = min(fast, key=lambda c: c["val_loss"])
        verdict = (f"none within +0.1 nats; closest >= 2x faster: trial {best['trial']} "
                   f"({best['describe']}, {p_decode / best['decode_ms']:.2f}x, "
                   f"{best['val_loss'] - p_loss:+.3f} nats)")
    elif done:
        best = done[0]
        verdict = (f"no candidate >= 2x faster; fastest: trial {best['trial']} "
                   f"({p_decode / best['decode_ms']:.2f}x, {best['val_loss'] - p_loss:+.3f} nats)")
    else:
        verdict = "no complete candidate"
    return [f"\n**Goal 3** (search from the parent: >= 2x faster decode on {PROFILE} within +0.1 "
            f"nats): {verdict}.\n",
            f"Parent: val_loss {p_loss:.3f}, decode {s['parent_decode_ms'][0]:.3f} / "
            f"{s['parent_decode_ms'][1]:.3f} ms (before / after the search), prefill "
            f"{statistics.mean(s['parent_prefill_ms']):.2f} ms. Search: {s['trials']} trials, "
            f"{s['n_complete']} complete, {s['n_failed']} failed, {s['n_infeasible']} infeasible, "
            f"{s['seconds']:.0f} s ({s['seconds'] / max(1, s['n_complete']):.1f} s per complete "
            f"candidate).\n",
            markdown_table(["trial", "architecture", "decode ms", "speed-up", "val_loss",
                            "vs parent", "front"], table)]


def cost_report(rows: list[dict[str, Any]], n: int) -> list[str]:
    groups: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["kind"], r["tokens"]), []).append(r)
    def speed(g: list[dict[str, Any]]) -> str:
        rates = [r["tokens_per_s"] for r in g if r.get("tokens_per_s")]
        return f"{statistics.median(rates):,.0f}" if rates else "-"

    table = [[kind, f"{tokens:,}", len(g), f"{statistics.median(r['seconds'] for r in g):.1f}", speed(g)]
             for (kind, tokens), g in sorted(groups.items())]
    flops = [r["matmul_flops_ref"] / 1e9 for r in rows]
    lines = ["\n## Cost (one thread)\n", markdown_table(
        ["kind", "tokens", "runs", "median s per candidate", "median training tokens/s"], table)]
    totals: dict[str, float] = {}
    for r in rows:
        if r["kind"] != "distill_cached":
            totals[r["hash"]] = totals.get(r["hash"], 0.0) + r["seconds"]
    if totals:
        lines.append(f"\nall six runs of one candidate: median {statistics.median(totals.values()):.0f} s, "
                     f"{sum(totals.values()) / 60:.0f} min for {len(totals)} candidates")
    if flops:
        lines.append(f"\nmatmul reference before each candidate: {min(flops):.0f}-{max(flops):.0f} "
                     f"GFLOP/s (median {statistics.median(flops):.0f})")
    cached = {r["tokens"]: r for r in groups.get(("distill_cached", n), []) +
              groups.get(("distill_cached", 10 * n), [])}
    worker = {r["tokens"]: r for r in rows if r["kind"] == "distill" and r["i"] == 0}
    for tokens in sorted(set(cached) & set(worker)):
        c, w = cached[tokens], worker[tokens]
        build = c["cache_build_seconds"] * tokens / (10 * n)  # the build is per step: N's prefix
        lines.append(f"- distil {tokens:,} tokens, candidate 0: teacher in the worker {w['seconds']:.1f} s "
                     f"({w['tokens_per_s']:,.0f} tokens/s, val_loss {w['val_loss']:.3f}); cached top-"
                     f"{c['cache_k']} {c['seconds']:.1f} s ({c['tokens_per_s']:,.0f} tokens/s, val_loss "
                     f"{c['val_loss']:.3f}) + {build:.1f} s to build the cache once per search "
                     f"({c['cache_mb'] * tokens / (10 * n):.1f} MB)")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--phase", default=",".join(PHASES), help="comma-separated: " + ",".join(PHASES))
    ap.add_argument("--parent-tokens", type=int, default=3_000_000)
    ap.add_argument("--n-tokens", type=int, default=20_000, help="N: the short distillation budget")
    ap.add_argument("--candidates", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0, help="draws the candidates")
    ap.add_argument("--search-trials", type=int, default=24)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--val-tokens", type=int, default=16_384)
    ap.add_argument("--chunk-steps", type=int, default=300, help="parent steps between checkpoints")
    ap.add_argument("--shard", default=None, help="K/N: this process takes candidates K mod N")
    add_smoke_flag(ap)
    args = ap.parse_args()
    phases = [p for p in args.phase.split(",") if p]
    if set(phases) - set(PHASES):
        ap.error(f"--phase: unknown {sorted(set(phases) - set(PHASES))}; known: {', '.join(PHASES)}")
    if args.smoke:
        start_smoke()
        for key, value in SMOKE.items():
            setattr(args, key, value)
    torch.set_num_threads(1)
    print(format_machine(machine_info(threads=1)), flush=True)
    steps = {"parent": train_parent, "candidates": run_candidates, "search": run_search}
    for phase in phases:
        if phase in steps:
            steps[phase](args)
    if "report" in phases:
        text = report(args)
        (results_dir(STUDY) / "report.log").write_text(text + "\n")
        print(text, flush=True)


if __name__ == "__main__":
    main()
