"""`nas export`: round trips for every attention kind and sharing mode, picking, bad input.

One SQLite store per module holds a real search: candidates built with `build_model` (norm
weights perturbed, so every tensor matters), stored with their weights like the driver stores
them. Every export is checked against our model, `nas.load`, ONNX Runtime and, where the
architecture maps, transformers.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

import nas
from nas import export as export_mod
from nas.architecture import Architecture, static_metrics
from nas.checkpoint import to_hf_state_dict
from nas.errors import ConfigError, ExportError, NotFoundError
from nas.export import (
    HF_ATOL,
    NotExportableError,
    export_candidate,
)
from nas.fronts import load_front
from nas.hf_config import hf_config
from nas.model import NasLM, build_model
from nas.model_card import generation_settings
from nas.pick import parse_where, pick_candidate
from nas.proxy import weights_to_bytes
from nas.results import CandidateResult, LatencyStats, ProfileLatency, ProxyResult
from nas.space import load_space
from nas.store import Store

ROOT = Path(__file__).resolve().parents[1]
SEARCH = "s"
WINDOW = 6
ONNX_RTOL = 1e-4  # nas.onnx_export.PARITY_RTOL, relative to the output's scale

# Every attention kind x every sharing mode, tied and untied embeddings alternating (each kind
# gets both), and MHA / GQA / MQA across the sharing modes.
CASES: list[Architecture] = []
for _kind, _window in (("softmax", None), ("sliding_window", WINDOW), ("linear", None)):
    for _j, (_sharing, _layers) in enumerate((("none", 2), ("all", 2), ("repeat:2", 4))):
        CASES.append(Architecture(
            n_layer=_layers, d_model=32, n_head=4, n_kv_head=(4, 2, 1)[_j], ffn_mult=2.0,
            attention=_kind, window=_window, sharing=_sharing, tie_embeddings=len(CASES) % 2 == 0,
            vocab_size=256, max_seq_len=64))
FAILED, RUNNING, NO_WEIGHTS = len(CASES), len(CASES) + 1, len(CASES) + 2


@dataclass
class Env:
    store: Store
    url: str
    models: dict[int, NasLM]  # trial -> the model whose weights the store holds


def _perturbed(arch: Architecture, seed: int) -> NasLM:
    model = build_model(arch, seed=seed)
    gen = torch.Generator().manual_seed(100 + seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name:  # ones at init: make a wrong mapping of norms visible
                param.add_(0.2 * torch.randn(param.shape, generator=gen))
    return model.eval()


def _result(arch: Architecture, val_loss: float, decode_ms: float,
            weights: bytes | None) -> CandidateResult:
    lat = ProfileLatency("cpu-1t", "ph-cpu-1t", node="node-a",
                         prefill=LatencyStats(median_ms=1.5, p90_ms=1.8, cv=0.04, n=20),
                         decode=LatencyStats(median_ms=decode_ms, p90_ms=decode_ms * 1.1, cv=0.03, n=20))
    return CandidateResult(
        arch, "complete", metrics={**static_metrics(arch), "val_loss": val_loss, **lat.metrics()},
        proxy=ProxyResult(val_loss=val_loss, curve=((512, 4.0), (1024, val_loss)), tokens=1024,
                          tokens_per_s=1e4, seconds=0.1),
        latencies=(lat,), timings={"train": 0.1, "export": 0.1, "latency": 0.1, "total": 0.3},
        weights=weights, node="node-a")


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Env:
    root = tmp_path_factory.mktemp("export-store")
    corpus = root / "corpus.txt"  # small real text: --train-tokens and rebuilds train on it
    corpus.write_text((ROOT / "nas" / "architecture.py").read_text() * 3)
    url = f"sqlite:///{root / 'nas.db'}"
    store = Store(url)
    store.create_search(
        SEARCH, space=load_space("tiny").to_dict(), space_hash="h",
        profiles=[{"name": "cpu-1t", "batch": 1, "prompt_len": 128, "past_len": 128,
                   "intra_op_threads": 1}],
        objectives=[("val_loss", "minimize"), ("latency:cpu-1t:decode_ms", "minimize")],
        constraints=["params <= 1500000"],
        data={"corpus": [str(corpus)], "tokenizer": "byte", "val_fraction": 0.1, "seed": 0},
        budget={"tokens": 2048, "batch_size": 4, "seq_len": 32, "val_tokens": 512},
        trials=20, study_name="study-s")
    models = {}
    for trial, arch in enumerate(CASES):  # a front: lower loss costs latency
        models[trial] = _perturbed(arch, trial)
        store.finish_candidate(SEARCH, trial, _result(arch, 3.0 - 0.1 * trial, 0.1 + 0.05 * trial,
                                                      weights_to_bytes(models[trial])))
    store.start_candidate(SEARCH, FAILED, CASES[0])
    store.fail_candidate(SEARCH, FAILED, "training loss nan at step 3 of 16")
    store.start_candidate(SEARCH, RUNNING, CASES[1])
    store.finish_candidate(SEARCH, NO_WEIGHTS, _result(CASES[0], 5.0, 9.0, weights=None))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("NAS_CACHE_DIR", str(root / "cache"))  # prepare() caches tokenized data here
        yield Env(store, url, models)
    store.close()


def _ids(arch: Architecture, length: int = 2 * WINDOW + 3) -> torch.Tensor:
    return torch.randint(0, arch.vocab_size, (2, length), generator=torch.Generator().manual_seed(7))


def _close(got: np.ndarray, want: torch.Tensor) -> None:
    w = want.detach().numpy()
    assert got.shape == w.shape
    assert np.abs(got - w).max() <= ONNX_RTOL * max(1.0, float(np.abs(w).max()))


def _onnx_round_trip(out: Path, model: NasLM) -> None:
    """ONNX Runtime prefill of all but the last token, then one decode step, vs `model`."""
    import onnxruntime as ort

    arch = model.arch
    ids = _ids(arch)
    with torch.no_grad():
        want = model(ids)
    prefill = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    decode = ort.InferenceSession(str(out / "decode.onnx"), providers=["CPUExecutionProvider"])
    logits, *cache = prefill.run(None, {"input_ids": ids[:, :-1].numpy()})
    _close(logits, want[:, :-1])
    feeds = {"input_ids": ids[:, -1:].numpy(),
             "position_ids": np.full((2, 1), ids.shape[1] - 1, dtype=np.int64)}
    feeds.update({f"past.{name}": c for name, c in zip(model.cache_names(), cache)})
    step = decode.run(None, feeds)[0]
    _close(step, want[:, -1:])


def _hf_logits(directory: Path, ids: torch.Tensor, **kwargs: object) -> torch.Tensor:
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(str(directory), **kwargs).eval()
    with torch.no_grad():
        return hf(ids).logits


def _export(env: Env, trial: int, out: Path, **kwargs: object) -> Path:
    pick = pick_candidate(env.store, SEARCH, trial=trial)
    return export_candidate(env.store, pick.search, pick.candidate, out, **kwargs)  # type: ignore[arg-type]


def _leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


# ----- round trips --------------------------------------------------------------------------
@pytest.mark.parametrize("trial", range(len(CASES)), ids=[
    f"{a.attention}-{a.sharing}-{'tied' if a.tie_embeddings else 'untied'}-kv{a.n_kv_head}" for a in CASES])
def test_round_trip(env: Env, trial: int, tmp_path: Path) -> None:
    arch, ours = CASES[trial], env.models[trial]
    out = _export(env, trial, tmp_path / "export")
    files = {p.name for p in out.iterdir()}
    assert {"architecture.json", "metrics.json", "model.onnx", "decode.onnx", "model.safetensors",
            "tokenizer.json", "tokenizer_config.json", "README.md"} <= files
    assert _leftovers(tmp_path) == []
    assert out.stat().st_mode & 0o777 == 0o755
    assert Architecture.from_json((out / "architecture.json").read_text()) == arch

    # nas.load: the same logits, and shared blocks / tied embeddings are one tensor again.
    loaded = nas.load(out)
    ids = _ids(arch)
    with torch.no_grad():
        want = ours(ids)
        assert torch.equal(loaded(ids), want)
    assert sum(p.numel() for p in loaded.parameters()) == arch.n_params
    _onnx_round_trip(out, loaded)

    weights = load_file(str(out / "model.safetensors"))
    assert {k for k in weights if k.endswith("q_proj.weight")} == {
        f"model.layers.{i}.self_attn.q_proj.weight" for i in range(arch.n_layer)}
    assert ("lm_head.weight" in weights) is not arch.tie_embeddings

    card = (out / "README.md").read_text()
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["search"] == SEARCH and metrics["trial"] == trial
    assert metrics["objectives"]["val_loss"]["value"] == pytest.approx(3.0 - 0.1 * trial)
    assert metrics["latency"]["cpu-1t"]["decode"]["median_ms"] == pytest.approx(0.1 + 0.05 * trial)
    assert metrics["latency"]["cpu-1t"]["shape"]["past_len"] == 128
    assert metrics["data"]["tokenizer"] == "byte" and metrics["proxy_budget"]["tokens"] == 2048
    assert metrics["parity"]["nas_load"] == 0.0
    assert max(metrics["parity"]["onnx"].values()) < 1e-4
    assert f"| val_loss (objective, minimize) | {3.0 - 0.1 * trial:.4g} |" in card

    if arch.attention == "linear":
        assert "config.json" not in files and hf_config(arch) is None
        assert metrics["huggingface"]["mapped"] is False
        assert "Hugging Face transformers: not available" in card
        assert metrics["parity"]["transformers"].startswith("not applicable")
        return
    config = json.loads((out / "config.json").read_text())
    assert config["num_hidden_layers"] == arch.n_layer
    assert config["tie_word_embeddings"] is arch.tie_embeddings
    assert config.get("sliding_window") == arch.window
    assert metrics["parity"]["transformers"] <= HF_ATOL
    for implementation in ("eager", "sdpa"):
        hf = _hf_logits(out, ids, attn_implementation=implementation)
        assert (hf - want).abs().max() <= HF_ATOL, implementation
    assert "AutoModelForCausalLM.from_pretrained('.')" in card


def test_sliding_window_has_no_off_by_one(env: Env, tmp_path: Path) -> None:
    """Mistral's ``sliding_window=w`` keeps keys s > t - w: ours exactly; w +- 1 is visibly not."""
    trial = CASES.index(next(a for a in CASES if a.attention == "sliding_window"))
    out = _export(env, trial, tmp_path / "export")
    ids = _ids(CASES[trial], 3 * WINDOW)
    with torch.no_grad():
        want = env.models[trial](ids)
    config_path = out / "config.json"
    config = json.loads(config_path.read_text())
    diffs = {}
    for window in (WINDOW - 1, WINDOW, WINDOW + 1):
        config_path.write_text(json.dumps({**config, "sliding_window": window}))
        diffs[window] = float((_hf_logits(out, ids, attn_implementation="eager") - want).abs().max())
    assert diffs[WINDOW] <= HF_ATOL
    assert diffs[WINDOW - 1] > 100 * HF_ATOL and diffs[WINDOW + 1] > 100 * HF_ATOL


def test_transformers_cached_decoding_matches_past_the_window(env: Env, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    trial = CASES.index(next(a for a in CASES if a.attention == "sliding_window" and a.repeat > 1))
    out = _export(env, trial, tmp_path / "export")
    ids = _ids(CASES[trial], 3 * WINDOW)
    hf = AutoModelForCausalLM.from_pretrained(str(out)).eval()
    with torch.no_grad():
        want = env.models[trial](ids)
        step = hf(ids[:, :2], use_cache=True)
        logits, past = [step.logits], step.past_key_values
        for t in range(2, ids.shape[1]):
            step = hf(ids[:, t:t + 1], past_key_values=past, use_cache=True)
            logits.append(step.logits)
            past = step.past_key_values
    assert (torch.cat(logits, dim=1) - want).abs().max() <= HF_ATOL


def test_tokenizer_files_load_in_transformers(env: Env, tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    out = _export(env, 0, tmp_path / "export")
    text = "def f(x):\n    return x  # héllo"
    tokenizer = AutoTokenizer.from_pretrained(str(out))
    assert tokenizer(text)["input_ids"] == list(text.encode("utf-8"))  # the byte tokenizer
    assert tokenizer.decode(list(text.encode("utf-8"))) == text


def test_load_refuses_shared_copies_that_differ(env: Env, tmp_path: Path) -> None:
    trial = CASES.index(next(a for a in CASES if a.sharing == "all"))
    out = _export(env, trial, tmp_path / "export")
    weights = load_file(str(out / "model.safetensors"))
    weights["model.layers.1.mlp.up_proj.weight"] += 1e-3
    save_file(weights, str(out / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ExportError, match=r"model.layers.1.mlp.up_proj.weight differs from "
                                          r"model.layers.0.mlp.up_proj.weight.*sharing='all'"):
        nas.load(out)
    with pytest.raises(NotFoundError, match="no architecture.json"):
        nas.load(tmp_path)


def test_hf_state_dict_names_match_transformers() -> None:
    from transformers import AutoConfig, AutoModelForCausalLM

    for arch in (CASES[0], CASES[1]):
        config = AutoConfig.for_model(**hf_config(arch))
        hf = AutoModelForCausalLM.from_config(config)
        ours = to_hf_state_dict(build_model(arch), arch)
        expected = {k for k in hf.state_dict() if not (arch.tie_embeddings and k == "lm_head.weight")}
        assert set(ours) == expected
        assert all(ours[k].shape == v.shape for k, v in hf.state_dict().items() if k in ours)


def test_train_tokens_continues_training_and_still_round_trips(env: Env, tmp_path: Path) -> None:
    trial = CASES.index(next(a for a in CASES if a.attention == "softmax" and a.sharing == "repeat:2"))
    events: list[tuple[str, int, int, str]] = []
    out = _export(env, trial, tmp_path / "export", train_tokens=2048,
                  progress=lambda *event: events.append(event))
    loaded = nas.load(out)
    ids = _ids(CASES[trial])
    with torch.no_grad():
        got = loaded(ids)
        assert not torch.allclose(got, env.models[trial](ids))  # the weights moved
    assert sum(p.numel() for p in loaded.parameters()) == CASES[trial].n_params  # still shared
    _onnx_round_trip(out, loaded)
    assert (_hf_logits(out, ids) - got).abs().max() <= HF_ATOL
    continued = json.loads((out / "metrics.json").read_text())["weights"]["continued_training"]
    assert continued["tokens"] == 2048 and np.isfinite(continued["val_loss"])
    train_events = [e for e in events if e[0] == "train"]
    assert train_events and train_events[-1][1] == train_events[-1][2] == 16  # 2048 / (4 * 32) steps
    assert "more tokens at export" in (out / "README.md").read_text()


def test_missing_weights_are_rebuilt_by_repeating_the_proxy_run(env: Env, tmp_path: Path) -> None:
    out = _export(env, NO_WEIGHTS, tmp_path / "export")
    assert "repeated" in json.loads((out / "metrics.json").read_text())["weights"]["source"]
    _onnx_round_trip(out, nas.load(out))


# ----- picking ------------------------------------------------------------------------------
def test_pick_knee_is_the_fronts_knee(env: Env) -> None:
    chosen = pick_candidate(env.store, SEARCH, pick="knee")
    assert chosen.candidate.id == load_front(env.store, SEARCH).knee_id
    assert "knee" in chosen.reason


def test_pick_best_with_where(env: Env) -> None:
    records = env.store.candidates(SEARCH, states=["complete"])
    assert pick_candidate(env.store, SEARCH, pick="best:val_loss").candidate.trial_number == len(CASES) - 1
    assert pick_candidate(env.store, SEARCH, pick="best:latency:cpu-1t:decode_ms").candidate.trial_number == 0
    assert pick_candidate(env.store, SEARCH, pick="best:val_loss:max").candidate.trial_number == NO_WEIGHTS
    bound = sorted(r.metrics["params"] for r in records)[3]
    expected = min((r for r in records if r.metrics["params"] <= bound), key=lambda r: r.metrics["val_loss"])
    chosen = pick_candidate(env.store, SEARCH, pick="best:val_loss", where=[f"params<={bound:g}"])
    assert chosen.candidate.id == expected.id and f"params <= {bound:g}" in chosen.reason
    knee = pick_candidate(env.store, SEARCH, pick="knee", where=[f"params<={bound:g}"]).candidate
    assert knee.metrics["params"] <= bound


def test_pick_bad_input_says_what_exists(env: Env) -> None:
    smallest = min(env.store.candidates(SEARCH, states=["complete"]), key=lambda r: r.metrics["params"])
    with pytest.raises(NotFoundError, match=rf"meets params <= 10 .*closest: trial {smallest.trial_number} "
                                            rf"\(params={smallest.metrics['params']:,.0f}\)"):
        pick_candidate(env.store, SEARCH, pick="best:val_loss", where=["params<=10"])
    with pytest.raises(NotFoundError, match=r"no search named 'nope' \(existing: s\)"):
        pick_candidate(env.store, "nope", trial=0)
    with pytest.raises(NotFoundError, match=rf"no trial 99 \(trials: 0-{NO_WEIGHTS}\)"):
        pick_candidate(env.store, SEARCH, trial=99)
    with pytest.raises(ConfigError, match=r"unknown metric 'loss' \(known: .*val_loss"):
        pick_candidate(env.store, SEARCH, pick="best:loss")
    with pytest.raises(ConfigError, match="exactly one of --trial"):
        pick_candidate(env.store, SEARCH)
    with pytest.raises(ConfigError, match="'knee' or 'best:METRIC'"):
        pick_candidate(env.store, SEARCH, pick="fastest")
    with pytest.raises(ConfigError, match="METRIC<=NUMBER"):
        parse_where("params < 5")


# ----- refusals and atomicity ------------------------------------------------------------------
def test_failed_and_running_candidates_are_refused(env: Env, tmp_path: Path) -> None:
    with pytest.raises(NotExportableError,
                       match=r"trial 9 of search .* is failed: training loss nan at step 3"):
        _export(env, FAILED, tmp_path / "failed")
    with pytest.raises(NotExportableError, match=r"is still running"):
        _export(env, RUNNING, tmp_path / "running")
    assert list(tmp_path.iterdir()) == []


def test_existing_directory_needs_force(env: Env, tmp_path: Path) -> None:
    out = _export(env, 0, tmp_path / "export")
    with pytest.raises(ExportError, match="already exists; pass --force"):
        _export(env, 1, out)
    assert json.loads((out / "metrics.json").read_text())["trial"] == 0
    _export(env, 1, out, force=True)
    assert json.loads((out / "metrics.json").read_text())["trial"] == 1
    assert _leftovers(tmp_path) == []
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep me")
    with pytest.raises(ExportError, match="not a nas export .* even with --force"):
        _export(env, 0, precious, force=True)
    assert (precious / "notes.txt").read_text() == "keep me"


def test_failure_mid_export_leaves_nothing_behind(env: Env, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    import nas.onnx_export

    def broken(*args: object, **kwargs: object) -> None:
        raise ExportError("prefill graph: simulated failure")

    monkeypatch.setattr(nas.onnx_export, "export_onnx", broken)
    with pytest.raises(ExportError, match="simulated failure"):
        _export(env, 0, tmp_path / "export")
    assert list(tmp_path.iterdir()) == []


def test_failed_verification_keeps_the_previous_export(env: Env, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    out = _export(env, 0, tmp_path / "export")
    before = sorted((p.name, p.stat().st_size) for p in out.iterdir())
    real = export_mod._transformers_logits
    monkeypatch.setattr(export_mod, "_transformers_logits", lambda root, ids: real(root, ids) + 1e-3)
    with pytest.raises(ExportError, match="transformers' model from config.json differs"):
        _export(env, 1, out, force=True)
    assert sorted((p.name, p.stat().st_size) for p in out.iterdir()) == before
    assert _leftovers(tmp_path) == []


# ----- CLI ----------------------------------------------------------------------------------
def _cli(env: Env, *args: str):  # noqa: ANN202 - click's Result
    from nas.cli import app

    return CliRunner().invoke(app, ["export", *args, "--db", env.url])


def test_cli_trial_pick_and_where(env: Env, tmp_path: Path) -> None:
    result = _cli(env, SEARCH, "--trial", "4", "-o", str(tmp_path / "a"))
    assert result.exit_code == 0, result.output
    assert "trial 4" in result.output and "from_pretrained" in result.output
    assert json.loads((tmp_path / "a" / "metrics.json").read_text())["trial"] == 4

    knee = load_front(env.store, SEARCH).knee_id
    result = _cli(env, SEARCH, "--pick", "knee", "-o", str(tmp_path / "b"))
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "b" / "metrics.json").read_text())["candidate_id"] == knee

    bound = CASES[2].n_params
    result = _cli(env, SEARCH, "--pick", "best:val_loss", "--where", f"params<={bound}",
                  "-o", str(tmp_path / "c"), "--train-tokens", "1024")
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "c" / "metrics.json").read_text())
    assert metrics["metrics"]["params"] <= bound
    assert metrics["weights"]["continued_training"]["tokens"] == 1024

    result = _cli(env, SEARCH, "--trial", "4", "-o", str(tmp_path / "a"))
    assert isinstance(result.exception, ExportError) and "--force" in str(result.exception)
    result = _cli(env, SEARCH, "--trial", str(FAILED), "-o", str(tmp_path / "d"))
    assert isinstance(result.exception, NotExportableError)
    assert "is failed: training loss nan" in str(result.exception)
    assert not (tmp_path / "d").exists()


def test_cli_reports_bad_input_without_a_traceback(env: Env, tmp_path: Path) -> None:
    run = subprocess.run([sys.executable, "-m", "nas", "export", "nope", "--trial", "0",
                          "-o", str(tmp_path / "x"), "--db", env.url],
                         capture_output=True, text=True, cwd=ROOT, timeout=120,
                         env={**os.environ, "COLUMNS": "200"})
    assert run.returncode == 2
    assert "no search named 'nope' (existing: s)" in run.stderr
    assert "Traceback" not in run.stderr


# ----- file modes, special tokens and the card's generation example --------------------------
def test_exported_files_follow_the_umask(env: Env, tmp_path: Path) -> None:
    """Every file, model.safetensors included (safetensors writes 0600 itself), is 0666 & ~umask."""
    for umask in (0o022, 0o027):
        old = os.umask(umask)
        try:
            out = _export(env, 0, tmp_path / f"export-{umask:o}")
        finally:
            os.umask(old)
        modes = {p.name: p.stat().st_mode & 0o777 for p in out.iterdir()}
        assert modes == dict.fromkeys(modes, 0o666 & ~umask), modes


@dataclass
class Trained:
    out: Path  # the exported directory
    arch: Architecture


@pytest.fixture(scope="module")
def bpe_export(tmp_path_factory: pytest.TempPathFactory) -> Trained:
    """A really (briefly) trained BPE candidate of a stored search, exported."""
    from nas.data import prepare
    from nas.proxy import train
    from nas.specs import DataSpec, ProxyBudget

    root = tmp_path_factory.mktemp("bpe-export")
    corpus = root / "corpus"
    corpus.mkdir()
    for path in sorted((ROOT / "nas").glob("*.py")):
        (corpus / path.name).write_text(path.read_text())
    spec = DataSpec(corpus=(str(corpus / "*.py"),), tokenizer="bpe:300")
    budget = ProxyBudget(tokens=4096, batch_size=4, seq_len=32, val_tokens=512)
    arch = Architecture(n_layer=1, d_model=32, n_head=2, ffn_mult=2.0, vocab_size=300, max_seq_len=64)
    with pytest.MonkeyPatch.context() as mp, Store(f"sqlite:///{root / 'nas.db'}") as store:
        mp.setenv("NAS_CACHE_DIR", str(root / "cache"))
        trained = train(arch, budget, prepare(spec), threads=1)
        store.create_search("bpe", space=load_space("tiny").to_dict(), space_hash="h",
                            profiles=[{"name": "cpu-1t"}], objectives=[("val_loss", "minimize")],
                            constraints=[], data=spec.to_dict(), budget=budget.to_dict(), trials=1,
                            study_name="study-bpe")
        store.finish_candidate("bpe", 0, _result(arch, trained.result.val_loss, 1.0,
                                                 weights_to_bytes(trained.model)))
        pick = pick_candidate(store, "bpe", trial=0)
        out = export_candidate(store, pick.search, pick.candidate, root / "export")
    return Trained(out, arch)


def test_bpe_special_tokens_are_named_in_config_and_tokenizer(bpe_export: Trained) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from nas.tokenizer import EOS_TOKEN

    out = bpe_export.out
    config = json.loads((out / "config.json").read_text())
    generation = json.loads((out / "generation_config.json").read_text())
    tokenizer_config = json.loads((out / "tokenizer_config.json").read_text())
    for role in ("bos", "eos", "pad"):
        assert config[f"{role}_token_id"] == generation[f"{role}_token_id"] == 0
        assert tokenizer_config[f"{role}_token"] == EOS_TOKEN
    tokenizer = AutoTokenizer.from_pretrained(str(out))
    assert tokenizer.eos_token == EOS_TOKEN and tokenizer.eos_token_id == 0 == tokenizer.pad_token_id
    model = AutoModelForCausalLM.from_pretrained(str(out))
    assert model.generation_config.eos_token_id == 0 and model.config.eos_token_id == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["special_tokens"]["eos_token"] == {"token": EOS_TOKEN, "id": 0}
    card = (out / "README.md").read_text()
    assert f"stops at the end-of-text token `{EOS_TOKEN}` (id 0)" in card


def test_generate_stops_at_end_of_text(bpe_export: Trained) -> None:
    """With eos_token_id from the export, `generate` ends where the model emits end-of-text."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, LogitsProcessor, LogitsProcessorList

    class EndAfter(LogitsProcessor):  # the model emits end-of-text as its third new token
        def __init__(self, start: int) -> None:
            self.start = start

        def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
            if input_ids.shape[1] - self.start == 2:
                scores[:, :] = -float("inf")
                scores[:, 0] = 0.0
            return scores

    tokenizer = AutoTokenizer.from_pretrained(str(bpe_export.out))
    model = AutoModelForCausalLM.from_pretrained(str(bpe_export.out)).eval()
    inputs = tokenizer("def ", return_tensors="pt")
    start = inputs["input_ids"].shape[1]
    out = model.generate(**inputs, max_new_tokens=20, do_sample=False,
                         logits_processor=LogitsProcessorList([EndAfter(start)]))
    assert out.shape[1] == start + 3 and int(out[0, -1]) == 0


def _card_example(out: Path) -> str:
    """The card's transformers block: the one that calls `generate`."""
    card = (out / "README.md").read_text()
    blocks = [b.split("```", 1)[0] for b in card.split("```python\n")[1:]]
    (block,) = [b for b in blocks if "model.generate(" in b]
    return block


@pytest.mark.parametrize("which", ["bpe", "byte"])
def test_the_cards_generation_example_runs(which: str, env: Env, bpe_export: Trained, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture) -> None:
    """Exactly the card's code, run in the exported directory, generates within its bounds."""
    out = bpe_export.out if which == "bpe" else _export(env, 0, tmp_path / "export")
    arch = bpe_export.arch if which == "bpe" else CASES[0]
    code = _card_example(out)
    if which == "byte":
        assert "stop_strings=['\\n\\n']" in code and "tokenizer=tokenizer" in code
        assert not (out / "generation_config.json").exists()  # no ids to name
        assert "has no special tokens" in (out / "README.md").read_text()
    else:
        assert "stop_strings" not in code
    monkeypatch.chdir(out)
    scope: dict[str, object] = {}
    exec(compile(code, str(out / "README.md"), "exec"), scope)  # noqa: S102 - our own card
    generated = scope["out"]
    prompt_len = scope["inputs"]["input_ids"].shape[1]  # type: ignore[index]
    max_new = generation_settings(arch, {} if which == "byte" else {"eos_token": 0},
                                             None)["kwargs"]["max_new_tokens"]
    assert prompt_len < generated.shape[1] <= prompt_len + max_new <= arch.max_seq_len  # type: ignore[attr-defined]
    assert capsys.readouterr().out.startswith("The ")
