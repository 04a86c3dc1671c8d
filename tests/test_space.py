"""nas.space: shipped spaces, valid sampling with real Optuna studies, errors naming the input."""

from __future__ import annotations

import pickle
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest
import yaml

from nas.architecture import Architecture, static_metrics
from nas.errors import ConfigError, SearchError
from nas.hardware import load_profiles
from nas.space import SearchSpace, list_spaces, load_space, make_sampler

optuna = pytest.importorskip("optuna")
optuna.logging.set_verbosity(optuna.logging.WARNING)
from optuna.trial import TrialState  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

MINIMAL = """
objectives: {val_loss: min}
architecture:
  n_layer: {range: [1, 4]}
  d_model: {choices: [32, 64]}
  n_head: {choices: [2, 4]}
"""


@pytest.fixture(scope="module")
def tiny() -> SearchSpace:
    return load_space("tiny")


@pytest.fixture(scope="module")
def slm() -> SearchSpace:
    return load_space("slm")


def write(tmp_path: Path, text: str, name: str = "bad.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def tiny_with(overrides: dict) -> dict:
    data = load_space("tiny").to_dict()
    for dotted, value in overrides.items():
        *parents, last = dotted.split(".")
        node = data
        for p in parents:
            node = node[p]
        if value is DELETE:
            node.pop(last, None)
        else:
            node[last] = value
    return data


DELETE = object()


# ----- shipped spaces ----------------------------------------------------------------------
def test_shipped_spaces_load(tiny, slm):
    assert {"tiny", "slm"} <= set(list_spaces())
    assert tiny.name == "tiny" and tiny.profiles == ("cpu-1t",)
    assert tiny.objective_names() == ["val_loss", "latency:cpu-1t:decode_ms"]
    assert tiny.directions() == ["minimize", "minimize"]
    assert tiny.data.tokenizer == "byte" and tiny.budget.seq_len <= 256
    assert slm.profiles == ("cpu-1t", "cpu-1t-int8", "cpu-1t-long", "cpu-1t-batch8")
    assert slm.data.vocab_size == 8192
    assert [c.text for c in slm.constraints][:2] == ["params >= 5000000", "params <= 50000000"]
    by_path = load_space(ROOT / "search_spaces" / "tiny.yaml")
    assert by_path == tiny and by_path.hash == tiny.hash


def test_shipped_tiny_spans_the_intended_sizes(tiny):
    rng = np.random.default_rng(0)
    params = [tiny.sample_random(rng).n_params for _ in range(400)]
    assert 10_000 < min(params) < 100_000 and 500_000 < max(params) < 2_000_000


def test_modules_import_without_heavy_dependencies():
    code = ("import sys, nas.space, nas.pareto, nas.objectives, nas.fronts; "
            "bad = [m for m in ('optuna', 'torch', 'ray', 'onnxruntime') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


# ----- sampling with real studies ----------------------------------------------------------
def check_arch(space: SearchSpace, arch: Architecture, params: dict) -> None:
    assert isinstance(arch, Architecture)  # constructing it ran Architecture's validation
    assert arch.vocab_size == space.data.vocab_size
    assert space.contains(arch)
    for field_name, spec in space.architecture.items():
        if spec.kind == "fixed" and spec.values[0] not in ("n_head", None):
            assert getattr(arch, field_name) == spec.values[0]
    # Conditional parameters appear exactly when their parent makes them valid.
    assert ("window" in params) == (arch.attention == "sliding_window")
    for name in params:
        field_name, _, parent = name.partition("|")
        if parent:
            parent_field, parent_value = parent.split("=")
            assert str(getattr(arch, parent_field)) == parent_value
    assert space.params_for(arch) == params


def record_constraints(trial: optuna.trial.Trial, space: SearchSpace, metrics: dict,
                       partial: bool = False) -> None:
    """What the driver does before ``study.tell`` (public Optuna API only)."""
    for key, value in space.constraint_dict(metrics, partial).items():
        trial.set_constraint(key, value)


def constraint_values(space: SearchSpace, metrics: dict, partial: bool = False) -> list[float]:
    return list(space.constraint_dict(metrics, partial).values())


def run_study(space: SearchSpace, n: int, fake_metrics: bool = True) -> optuna.Study:
    study = optuna.create_study(directions=space.directions(), sampler=make_sampler(space))
    for _ in range(n):
        trial = study.ask()
        arch = space.suggest(trial)
        check_arch(space, arch, trial.params)
        metrics = static_metrics(arch)
        if space.check_static(arch):
            record_constraints(trial, space, metrics, partial=True)
            study.tell(trial, state=TrialState.PRUNED)
            continue
        # A made-up but shape-dependent score, so that TPE/NSGA-II actually model something.
        metrics["val_loss"] = 6.0 - np.log10(arch.n_params) + 0.1 * (arch.attention == "linear")
        for profile in load_profiles(",".join(space.profiles)):
            for metric in profile.metric_names():  # every measured metric, made up from the FLOPs
                metrics[metric] = metrics["decode_mflops"] / (10 if "decode" in metric else 1)
        record_constraints(trial, space, metrics)
        study.tell(trial, space.objective_values(metrics))
    return study


@pytest.mark.parametrize("sampler,n", [("tpe", 150), ("nsga2", 300), ("random", 300)])
def test_suggest_with_real_studies_gives_only_valid_candidates(tiny, sampler, n):
    space = SearchSpace.from_dict({**tiny.to_dict(), "sampler": sampler})
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)  # no deprecated constraints_func
        study = run_study(space, n)
    # One distribution per parameter name across the whole study.
    seen: dict = {}
    for t in study.trials:
        for name, dist in t.distributions.items():
            assert seen.setdefault(name, dist) == dist
    assert any(name.startswith("n_head|d_model=") for name in seen)
    assert any(name.startswith("n_kv_head|n_head=") for name in seen)
    assert any(name.startswith("sharing|n_layer=") for name in seen)
    assert "sharing|n_layer=1" not in seen  # only 'none' is distinct at depth 1
    assert "window" in seen


def test_suggest_on_slm_respects_fixed_fields_and_constraints(slm):
    study = run_study(slm, 60)
    archs = [slm.suggest(optuna.trial.FixedTrial(t.params)) for t in study.trials]
    assert {a.max_seq_len for a in archs} == {4096} and {a.vocab_size for a in archs} == {8192}
    # A window is sampled only for sliding-window candidates.
    assert all(("window" in t.params) == (a.attention == "sliding_window")
               for t, a in zip(study.trials, archs, strict=True))
    for t in study.best_trials:
        assert all(v <= 0 for v in t.constraints.values())
        assert 5e6 <= t.values[2] <= 5e7
    pruned = [t for t in study.trials if t.state == TrialState.PRUNED]
    assert pruned and all(any(v > 0 for v in t.constraints.values()) for t in pruned)


def test_sample_random_is_valid_and_covers_every_choice(tiny):
    rng = np.random.default_rng(1)
    archs = [tiny.sample_random(rng) for _ in range(600)]
    for arch in archs:
        assert tiny.contains(arch)
        assert (arch.window is not None) == (arch.attention == "sliding_window")
    for field_name, spec in tiny.architecture.items():
        if spec.kind != "fixed":
            assert {getattr(a, field_name) for a in archs} >= set(spec.values) - {None}
    again = [tiny.sample_random(np.random.default_rng(1)) for _ in range(1)]
    assert again[0] == archs[0]


def test_params_for_round_trips_and_rejects_foreign_architectures(tiny):
    arch = Architecture(n_layer=4, d_model=96, n_head=4, n_kv_head=2, ffn_mult=3,
                        attention="sliding_window", window=32, sharing="repeat:2",
                        tie_embeddings=False, vocab_size=256, max_seq_len=256)
    params = tiny.params_for(arch)
    assert params["n_head|d_model=96"] == 4 and params["sharing|n_layer=4"] == "repeat:2"
    assert tiny.suggest(optuna.trial.FixedTrial(params)) == arch
    for foreign in [arch.__class__(**{**arch.to_dict(), "d_model": 80, "n_head": 4}),
                    arch.__class__(**{**arch.to_dict(), "vocab_size": 300}),
                    arch.__class__(**{**arch.to_dict(), "max_seq_len": 128})]:
        assert not tiny.contains(foreign)


def test_seeded_samplers_repeat_themselves(tiny):
    def first_archs(space):
        study = optuna.create_study(directions=space.directions(), sampler=make_sampler(space))
        return [space.suggest(study.ask()) for _ in range(5)]

    space = SearchSpace.from_dict({**tiny.to_dict(), "sampler": "random", "seed": 7})
    assert first_archs(space) == first_archs(space)
    assert isinstance(make_sampler(tiny), optuna.samplers.TPESampler)
    nsga = SearchSpace.from_dict({**tiny.to_dict(), "sampler": {"name": "nsga2"}})
    assert isinstance(make_sampler(nsga), optuna.samplers.NSGAIISampler)
    assert dict(nsga.sampler.options)["population_size"] == 7  # scaled to 30 trials
    gp = SearchSpace.from_dict({**tiny.to_dict(), "sampler": {"name": "gp"}})
    assert isinstance(make_sampler(gp), optuna.samplers.GPSampler)
    assert dict(gp.sampler.options)["n_startup_trials"] == 10  # scaled to 30 trials, as TPE's
    assert first_archs(gp) == first_archs(gp)


# ----- constraints ---------------------------------------------------------------------------
def test_static_constraints_are_checked(tiny):
    big = Architecture(n_layer=6, d_model=128, n_head=4, n_kv_head=4, ffn_mult=4.0,
                       tie_embeddings=False, vocab_size=256)
    small = Architecture(n_layer=2, d_model=64, vocab_size=256)
    assert big.n_params > 1.5e6 >= small.n_params
    assert tiny.check_static(small) == []
    (message,) = tiny.check_static(big)
    assert message == f"params={big.n_params} violates params <= 1500000"
    assert tiny.constraint_dict(static_metrics(big), partial=True)["params <= 1500000"] == pytest.approx(
        big.n_params / 1.5e6 - 1)


def test_constraint_values_follow_optunas_convention(slm):
    workload = {"latency:cpu-1t-long:ttft_ms": 100.0, "memory:cpu-1t-long:peak_mb": 100.0,
                "throughput:cpu-1t-batch8:tokens_per_s": 500.0}
    metrics = {"params": 4e6, "latency:cpu-1t:decode_ms": 10.0, **workload}
    low, high, latency, ttft, peak, throughput = constraint_values(slm, metrics)
    assert ttft < 0 and peak < 0 and throughput < 0  # well inside: negative
    assert constraint_values(slm, {**metrics, "throughput:cpu-1t-batch8:tokens_per_s": 50.0})[5] > 0
    assert low > 0 and high < 0 and latency < 0  # too small: only the lower bound is violated
    assert constraint_values(slm, {**metrics, "params": 6e6})[0] <= 0
    assert not slm.is_feasible(metrics) and slm.is_feasible({**metrics, "params": 6e6})
    with pytest.raises(SearchError, match="latency:cpu-1t:decode_ms"):
        constraint_values(slm, {"params": 6e6, **workload})
    assert constraint_values(slm, {"params": 6e6}, partial=True)[2] == 0.0
    assert constraint_values(slm, {**metrics, "latency:cpu-1t:decode_ms": float("nan")})[2] > 0
    with pytest.raises(SearchError, match="params"):
        slm.objective_values({"val_loss": 3.0, "latency:cpu-1t-long:decode_ms@2048": 1.0})


def test_driver_helpers(slm):
    assert slm.metric_names() == ["val_loss", "latency:cpu-1t-long:decode_ms@2048", "params",
                                  "latency:cpu-1t:decode_ms", "latency:cpu-1t-long:ttft_ms",
                                  "memory:cpu-1t-long:peak_mb", "throughput:cpu-1t-batch8:tokens_per_s"]
    assert slm.constraint_texts() == ["params >= 5000000", "params <= 50000000",
                                      "latency:cpu-1t:decode_ms <= 50",
                                      "latency:cpu-1t-long:ttft_ms <= 1000",
                                      "memory:cpu-1t-long:peak_mb <= 400",
                                      "throughput:cpu-1t-batch8:tokens_per_s >= 100"]
    assert slm.vocab_size == 8192


def test_impossible_static_constraint_is_detected_at_load(tmp_path):
    path = write(tmp_path, MINIMAL + "constraints: ['params <= 1000']\n")
    with pytest.raises(ConfigError) as info:
        load_space(path)
    message = str(info.value)
    assert "bad.yaml" in message and "constraints" in message and "params <= 1000" in message
    assert "smallest params seen: " in message
    # Each bound alone is reachable, both together are not.
    path = write(tmp_path, MINIMAL + "constraints: ['params <= 30000', 'weights_mb >= 0.2']\n")
    with pytest.raises(ConfigError, match="together"):
        load_space(path)


# ----- identity -----------------------------------------------------------------------------
def test_hash_is_stable_and_round_trips(tiny):
    text = (ROOT / "search_spaces" / "tiny.yaml").read_text()
    from_text = SearchSpace.from_yaml_text(text, source="api")
    assert from_text.hash == tiny.hash == load_space("tiny").hash
    snapshot = tiny.to_dict()
    back = SearchSpace.from_dict(snapshot)
    assert back == tiny and back.hash == tiny.hash and back.to_dict() == snapshot
    dumped = yaml.safe_dump(snapshot, sort_keys=False)  # what a store or an API would send
    assert SearchSpace.from_yaml_text(dumped).hash == tiny.hash
    assert SearchSpace.from_dict(tiny_with({"description": "other"})).hash == tiny.hash
    changed = tiny_with({"architecture.d_model": {"choices": [32, 64]}})
    assert SearchSpace.from_dict(changed).hash != tiny.hash
    assert SearchSpace.from_dict(tiny_with({"seed": 1})).hash != tiny.hash
    swapped = tiny_with({"objectives": {"latency:cpu-1t:decode_ms": "min", "val_loss": "min"}})
    assert SearchSpace.from_dict(swapped).hash != tiny.hash
    assert len(tiny.hash) == 16 and int(tiny.hash, 16) >= 0
    assert pickle.loads(pickle.dumps(tiny)) == tiny  # travels to workers and back


def test_from_yaml_text_and_defaults():
    space = SearchSpace.from_yaml_text(MINIMAL, source="<api>")
    assert space.name == "space" and space.sampler.name == "tpe"
    arch = space.sample_random(np.random.default_rng(0))
    assert arch.n_kv_head == arch.n_head  # n_kv_head left out: plain multi-head
    assert arch.attention == "softmax" and arch.vocab_size == 256
    with pytest.raises(ConfigError, match=r"^<api>: "):
        SearchSpace.from_yaml_text(MINIMAL + "bogus: 1\n", source="<api>")


def test_fixed_vocab_size_matching_the_tokenizer_is_accepted(tmp_path):
    space = load_space(write(tmp_path, MINIMAL + "  vocab_size: 256\n", "ok.yaml"))
    assert space.data.vocab_size == 256


# ----- bad input: every error names file, key and value --------------------------------------
BAD = [
    # (yaml appended to / replacing MINIMAL, key in message, value in message)
    ("bogus: 1", "bogus", "1"),
    ("budget: {tokenz: 5}", "budget.tokenz", "5"),
    ("budget: {tokens: -5}", "budget.tokens", "-5"),
    ("budget: 5", "budget", "5"),
    ("data: {corpus: stdlib, vocab: 3}", "data.vocab", "3"),
    ("data: {tokenizer: 'bpe:10'}", "data.tokenizer", "bpe:10"),
    ("sampler: cmaes", "sampler.name", "cmaes"),
    ("sampler: {name: nsga2, population: 8}", "sampler.population", "8"),
    ("sampler: {name: tpe, n_startup_trials: -1}", "sampler.n_startup_trials", "-1"),
    ("trials: 0", "trials", "0"),
    ("seed: abc", "seed", "abc"),
    ("profiles: cpu-1t", "profiles", "cpu-1t"),
    ("profiles: ['cpu:1t']", "profiles", "cpu:1t"),
    ("objectives: {val_los: min}", "objectives.val_los", "val_los"),
    ("objectives: {val_loss: smallest}", "objectives.val_loss", "smallest"),
    ("objectives: {}", "objectives", "{}"),
    ("objectives: {latency:gpu:decode_ms: min}", "objectives.latency:gpu:decode_ms", "gpu"),
    ("objectives: {latency:cpu-1t:encode_ms: min}\nprofiles: [cpu-1t]",
     "objectives.latency:cpu-1t:encode_ms", "latency:cpu-1t:encode_ms"),
    ("constraints: ['params 5e6']", "constraints[0]", "params 5e6"),
    ("constraints: ['params < 5e6']", "constraints[0]", "params < 5e6"),
    ("constraints: ['params <= five']", "constraints[0]", "params <= five"),
    ("constraints: ['flops <= 5']", "constraints[0]", "flops"),
    ("constraints: ['latency:cpu-1t:decode_ms <= 2']", "constraints[0]", "cpu-1t"),
    ("constraints: params <= 5", "constraints", "params <= 5"),
]

BAD_ARCH = [
    # (architecture lines, key in message, value in message)
    ("  depth: 3", "architecture.depth", "3"),
    ("  n_layer: four", "architecture.n_layer", "four"),
    ("  n_layer: 0", "architecture.n_layer", "0"),
    ("  n_layer: [1, 2]", "architecture.n_layer", "[1, 2]"),
    ("  n_layer: {choice: [1, 2]}", "architecture.n_layer.choice", "[1, 2]"),
    ("  n_layer: {choices: []}", "architecture.n_layer.choices", "[]"),
    ("  n_layer: {choices: [2, 2]}", "architecture.n_layer.choices", "[2, 2]"),
    ("  n_layer: {range: [6, 2]}", "architecture.n_layer.range", "[6, 2]"),
    ("  n_layer: {range: [1, 6], step: 2}", "architecture.n_layer.step", "2"),
    ("  n_layer: {range: [1, 2], choices: [1]}", "architecture.n_layer", "range"),
    ("  n_layer: {choices: [1, 2], step: 2}", "architecture.n_layer.step", "2"),
    ("  ffn_mult: {range: [2, 4]}", "architecture.ffn_mult.range", "[2, 4]"),
    ("  ffn_mult: -1", "architecture.ffn_mult", "-1"),
    ("  attention: {choices: [softmax, flash]}", "architecture.attention.choices", "flash"),
    ("  tie_embeddings: maybe", "architecture.tie_embeddings", "maybe"),
    ("  sharing: {choices: [none, 'repeat:1']}", "architecture.sharing.choices", "repeat:1"),
    ("  sharing: 'repeat:3'", "architecture.n_layer", "1"),
    ("  sharing: {choices: [none, 'repeat:8']}", "architecture.sharing", "repeat:8"),
    ("  vocab_size: 512", "architecture.vocab_size", "512"),
    ("  vocab_size: {choices: [256, 512]}", "architecture.vocab_size", "choices"),
    ("  n_kv_head: 3", "architecture.d_model", "32"),
    ("  n_kv_head: {choices: [1, 3]}", "architecture.n_kv_head", "3"),
    ("  attention: sliding_window", "architecture.window", "None"),
    ("  window: 16", "architecture.window", "16"),
    ("  max_seq_len: 32", "budget.seq_len", "64"),
]


def _check_error(path: Path, key: str, value: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_space(path)
    message = str(info.value)
    assert message.startswith(f"{path.name}: ") or f"{path}: " in message, message
    assert key in message and value in message, message
    assert info.value.source is not None and key.split("[")[0] in (info.value.field or ""), \
        (info.value.field, message)


@pytest.mark.parametrize("extra,key,value", BAD)
def test_bad_top_level_values_name_file_key_and_value(tmp_path, extra, key, value):
    text = MINIMAL.replace("objectives: {val_loss: min}\n", "") if "objectives" in extra \
        else MINIMAL
    _check_error(write(tmp_path, text + extra + "\n"), key, value)


@pytest.mark.parametrize("lines,key,value", BAD_ARCH)
def test_bad_architecture_values_name_file_key_and_value(tmp_path, lines, key, value):
    body = MINIMAL
    field_name = lines.strip().split(":")[0]
    # Replace a field MINIMAL already sets rather than giving it twice.
    body = "\n".join(line for line in body.splitlines()
                     if not line.strip().startswith(f"{field_name}:"))
    _check_error(write(tmp_path, body + "\n" + lines + "\n"), key, value)


def test_d_model_without_any_valid_head_count(tmp_path):
    path = write(tmp_path, """
        objectives: {val_loss: min}
        architecture:
          d_model: {choices: [64, 30]}
          n_head: {choices: [2, 4]}
    """)
    _check_error(path, "architecture.d_model", "30")
    path = write(tmp_path, """
        objectives: {val_loss: min}
        architecture:
          d_model: 64
          n_head: {choices: [4, 3]}
    """)
    _check_error(path, "architecture.n_head", "3")


def test_unreadable_or_malformed_files(tmp_path):
    _check_error(write(tmp_path, "objectives: [unclosed\n"), "", "")
    _check_error(write(tmp_path, "- a\n- b\n"), "", "")
    with pytest.raises(ConfigError, match="not a known search space"):
        load_space("no_such_space")
    with pytest.raises(ConfigError, match="cannot read"):
        load_space(tmp_path / "missing.yaml")


def test_max_seq_len_must_hold_every_profiles_shapes() -> None:
    """Where a space meets its profiles (the CLI, the API), a too-short context is refused."""
    from nas.hardware import load_profile, load_profiles
    from nas.search import resolve_profiles

    e2e = load_space(ROOT / "tests" / "data" / "e2e.yaml")  # max_seq_len 64
    fits = load_profile(ROOT / "tests" / "data" / "e2e-1t.yaml")  # 32 + 32 + 1
    assert resolve_profiles(e2e, (fits,)) == (fits,)
    with pytest.raises(ConfigError, match=r"e2e.yaml: architecture.max_seq_len=64 is too short for "
                                          r"hardware profile 'cpu-1t', which times prompt_len=128 "
                                          r"and past_len=128 \(\+1 new token\): needs "
                                          r"architecture.max_seq_len >= 129$"):
        resolve_profiles(e2e, (fits, *load_profiles("cpu-1t")))
    data = yaml.safe_load((ROOT / "tests" / "data" / "e2e.yaml").read_text())
    data["architecture"]["max_seq_len"] = {"choices": [129, 64, 256]}
    mixed = SearchSpace.from_dict(data, source="mixed.yaml")
    with pytest.raises(ConfigError, match=r"^mixed.yaml: architecture.max_seq_len=64 \(its shortest "
                                          r"choice\) is too short") as err:
        mixed.check_profiles(load_profiles("cpu-1t"))
    assert err.value.field == "architecture.max_seq_len"
    tiny_space = load_space("tiny")  # the shipped spaces fit their shipped profiles
    tiny_space.check_profiles(load_profiles(",".join(tiny_space.profiles)))
    slm = load_space("slm")
    slm.check_profiles(load_profiles(",".join(slm.profiles)))
