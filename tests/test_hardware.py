"""Hardware profiles: shipped files load, hashes are stable, bad input names file, key and value."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from nas.builtin import shipped_dir
from nas.errors import ConfigError, NotFoundError, ProviderError
from nas.hardware import (
    HardwareProfile,
    check_available,
    list_profiles,
    load_profile,
    load_profiles,
)

SHIPPED = ("cpu-1t", "cpu-2t", "cpu-1t-int8")


def write(tmp_path: Path, text: str, name: str = "box") -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_profiles_load_and_are_available(name):
    profile = load_profile(name)
    assert profile.name == name
    assert profile.provider == "CPUExecutionProvider"
    assert (profile.batch, profile.prompt_len, profile.past_len) == (1, 128, 128)
    check_available(profile)
    assert HardwareProfile.from_dict(profile.to_dict()) == profile


def test_shipped_profiles_differ_where_named():
    one, two, int8 = (load_profile(n) for n in SHIPPED)
    assert (one.intra_op_threads, two.intra_op_threads, int8.intra_op_threads) == (1, 2, 1)
    assert (one.precision, two.precision, int8.precision) == ("fp32", "fp32", "int8")
    assert set(SHIPPED) <= set(list_profiles())


def test_shipped_profiles_are_package_data_and_the_checkout_dir_links_to_them():
    # Package data is what a wheel install has; the top-level directory README names is the
    # same directory, so a checkout has one copy of each file.
    root = Path(__file__).resolve().parents[1]
    assert shipped_dir("hardware_profiles") == root / "nas" / "builtin" / "hardware_profiles"
    assert (root / "hardware_profiles").resolve() == shipped_dir("hardware_profiles")


def test_load_by_path_and_comma_list(tmp_path):
    path = write(tmp_path, "intra_op_threads: 2\ndescription: my laptop\n")
    assert load_profile(path) == load_profile(str(path)) == HardwareProfile(
        name="box", intra_op_threads=2, description="my laptop")
    profiles = load_profiles(f"cpu-1t, {path}")
    assert [p.name for p in profiles] == ["cpu-1t", "box"]


def test_hash_is_stable_and_tracks_measured_fields():
    base = HardwareProfile(name="x")
    assert base.hash == HardwareProfile(name="x").hash
    assert base.hash == dataclasses.replace(base, description="other words").hash
    for change in ({"intra_op_threads": 2}, {"precision": "int8"}, {"past_len": 64},
                   {"repeats": 3}, {"ray_resource": "pi5"}, {"name": "y"}):
        assert dataclasses.replace(base, **change).hash != base.hash, change
    # Pinned: the hash keys the latency cache across processes and releases.
    code = "from nas.hardware import HardwareProfile; print(HardwareProfile(name='x').hash)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == base.hash


@pytest.mark.parametrize("text, field, words", [
    ("intra_op_thread: 2\n", "intra_op_thread", ["unknown key", "known:", "intra_op_threads"]),
    ("batch: two\n", "batch", ["batch='two'", "integer"]),
    ("batch: true\n", "batch", ["integer"]),
    ("repeats: 0\n", "repeats", ["repeats=0", ">= 1"]),
    ("prompt_len: -5\n", "prompt_len", [">= 1"]),
    ("warmup: -1\n", "warmup", [">= 0"]),
    ("precision: int4\n", "precision", ["precision='int4'", "fp32, int8"]),
    ("provider: ''\n", "provider", ["non-empty"]),
    ("ray_resource: 3\n", "ray_resource", ["ray_resource=3"]),
    ("name: other\n", "name", ["name='other'", "file name 'box'"]),
])
def test_bad_values_name_file_key_and_value(tmp_path, text, field, words):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_profile(path)
    message = str(info.value)
    assert message.startswith(f"{path}: ")
    assert info.value.field == field
    for word in words:
        assert word in message


def test_not_a_mapping_or_not_yaml(tmp_path):
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_profile(write(tmp_path, "- 1\n- 2\n"))
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_profile(write(tmp_path, "batch: [1\n"))


def test_unknown_provider_lists_available_ones():
    profile = HardwareProfile(name="gpu", provider="NoSuchExecutionProvider")
    with pytest.raises(ProviderError) as info:
        check_available(profile)
    assert info.value.field == "provider"
    assert "NoSuchExecutionProvider" in str(info.value)
    assert "available: " in str(info.value) and "CPUExecutionProvider" in str(info.value)


def test_unknown_profile_name_lists_known_ones(tmp_path):
    with pytest.raises(NotFoundError) as info:
        load_profile("cpu-99t")
    assert "cpu-99t" in str(info.value)
    for name in SHIPPED:
        assert name in str(info.value)
    with pytest.raises(NotFoundError, match="cannot read"):
        load_profile(tmp_path / "missing.yaml")


def test_load_profiles_rejects_duplicates_and_empty():
    with pytest.raises(ConfigError, match="given twice"):
        load_profiles("cpu-1t,cpu-1t")
    with pytest.raises(ConfigError, match="no hardware profile"):
        load_profiles(" , ")


def test_import_is_light():
    code = ("import sys, nas.hardware; "
            "print(sorted(m for m in ('onnxruntime', 'torch', 'onnx', 'ray') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_positions_needed_is_what_the_graphs_run() -> None:
    """Prefill runs prompt_len positions; decode adds one token after past_len cached ones."""
    assert HardwareProfile("p", prompt_len=128, past_len=128).positions_needed == 129
    assert HardwareProfile("p", prompt_len=200, past_len=16).positions_needed == 200
    profile = HardwareProfile("p", prompt_len=32, past_len=32)
    profile.check_context(33, source="arch.json", field="max_seq_len")  # fits exactly
    with pytest.raises(ConfigError) as err:
        profile.check_context(32, source="arch.json", field="max_seq_len")
    assert str(err.value) == ("arch.json: max_seq_len=32 is too short for hardware profile 'p', which "
                              "times prompt_len=32 and past_len=32 (+1 new token): needs "
                              "max_seq_len >= 33")
    assert (err.value.field, err.value.value) == ("max_seq_len", 32)


WORKLOAD_SHIPPED = ("cpu-1t-long", "cpu-1t-batch8")


@pytest.mark.parametrize("name", WORKLOAD_SHIPPED)
def test_shipped_workload_profiles_load_and_name_their_metrics(name):
    profile = load_profile(name)
    check_available(profile)
    assert profile.has_workload and HardwareProfile.from_dict(profile.to_dict()) == profile
    names = profile.metric_names()
    assert names[:2] == (f"latency:{name}:prefill_ms", f"latency:{name}:decode_ms")
    assert {f"latency:{name}:ttft_ms", f"latency:{name}:generate_ms", f"throughput:{name}:tokens_per_s",
            f"memory:{name}:peak_mb", f"memory:{name}:estimate_mb"} <= set(names)
    assert all(f"latency:{name}:decode_ms@{c}" in names for c in profile.decode_contexts)


def test_workload_and_session_fields_leave_old_hashes_alone_and_count_when_set():
    from nas.hardware import MEASUREMENT_VERSION
    from nas.util import stable_hash

    base = HardwareProfile(name="x")
    old = {k: v for k, v in base.to_dict().items()
           if k not in ("description", "decode_contexts", "new_tokens", "generate_repeats",
                        "graph_optimization", "execution_mode", "allow_spinning")}
    assert base.hash == stable_hash({**old, "measurement_version": MEASUREMENT_VERSION})
    for change in ({"decode_contexts": (2048,)}, {"new_tokens": 8}, {"generate_repeats": 5},
                   {"graph_optimization": "basic"}, {"execution_mode": "parallel", "intra_op_threads": 2},
                   {"allow_spinning": False}):
        assert dataclasses.replace(base, **change).hash != base.hash, change
