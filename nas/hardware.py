"""Hardware profiles: *where* and *how* a candidate's latency is measured, as data.

A profile is a small YAML file, ``hardware_profiles/<name>.yaml``; its name is the file
name, so ``latency:cpu-1t:decode_ms`` always points at ``cpu-1t.yaml``. Keys are the
fields of `HardwareProfile`; unknown keys, wrong types and out-of-range values are
errors that name the file, the key and the value.

Bare names are the profiles shipped as package data (`nas.builtin`: found through
`importlib.resources`, so a wheel install has them; the repository's ``hardware_profiles/`` is a
symlink to that directory). Anything that looks like a path (a ``/`` or a ``.yaml``/``.yml``
suffix) is loaded as that file instead: that is how users bring their own machines.

A profile may also describe a deployment *workload* (`HardwareProfile.workload_metrics`):
decode at longer contexts (``decode_contexts``), a whole reply of ``new_tokens`` after the
prompt at ``batch`` concurrent sequences (time to first token, end-to-end time, throughput),
and the peak memory of running it. Without those keys a profile times what it always did,
under the metric names it always had, and keeps its hash.

Metric names (the convention everything else parses, `nas.objectives`):
``latency:<p>:prefill_ms`` and ``latency:<p>:decode_ms`` (at ``past_len``) as before;
``latency:<p>:decode_ms@<context>`` one new token after ``context`` cached ones;
``latency:<p>:ttft_ms`` the prompt through the prefill graph until the first token's logits;
``latency:<p>:generate_ms`` the prompt plus ``new_tokens`` decode steps through the decode
graph, its cache growing (or sliding) as in deployment; ``throughput:<p>:tokens_per_s``
``batch * new_tokens`` over that time; ``memory:<p>:peak_mb`` measured peak resident-set growth
of running the workload; ``memory:<p>:estimate_mb`` the closed-form weights plus KV cache.

This module imports no onnxruntime: the driver and the CLI load and hash profiles on
machines that may not measure anything. `check_available` imports it lazily.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nas.architecture import Architecture
from nas.builtin import shipped_files
from nas.errors import ConfigError, NotFoundError, ProviderError
from nas.util import stable_hash

PRECISIONS: tuple[str, ...] = ("fp32", "int8")

# Bump when `nas.latency` changes *how* it measures (statistics, feeds, session options):
# it is part of `HardwareProfile.hash`, so latencies cached under the old method miss.
MEASUREMENT_VERSION = 1

# Fields that are counts, with the smallest value that makes sense for each.
_MIN_COUNT: dict[str, int] = {
    "intra_op_threads": 1, "batch": 1, "prompt_len": 1, "past_len": 1,
    "warmup": 0, "repeats": 1, "rounds": 1, "generate_repeats": 1,
}
GRAPH_OPTIMIZATIONS: tuple[str, ...] = ("disable", "basic", "extended", "all")
EXECUTION_MODES: tuple[str, ...] = ("sequential", "parallel")
# Workload and session fields added after profiles were first hashed: left out of the hash at
# these defaults, so every existing profile keeps its hash (and its cached latencies).
_LATER_DEFAULTS: dict[str, Any] = {
    "decode_contexts": (), "new_tokens": None, "generate_repeats": 3,
    "graph_optimization": "all", "execution_mode": "sequential", "allow_spinning": None,
}


@dataclass(frozen=True)
class HardwareProfile:
    """How to time a candidate: execution provider, threads, shapes, precision, repetitions.

    Each of the ``rounds`` rounds times ``repeats`` runs of the prefill and of the decode
    graph, after ``warmup`` untimed runs of each; ``LatencyStats.n == rounds * repeats``.
    """

    name: str
    provider: str = "CPUExecutionProvider"
    intra_op_threads: int = 1
    batch: int = 1
    prompt_len: int = 128  # prefill: one forward of batch x prompt_len tokens
    past_len: int = 128  # decode: one new token with past_len tokens cached
    precision: str = "fp32"  # "int8": ONNX Runtime dynamic quantization of the weights
    warmup: int = 5
    repeats: int = 20
    rounds: int = 5
    ray_resource: str | None = None  # Ray custom resource held by nodes that are this hardware
    description: str = ""
    # ----- the workload (optional) -----
    decode_contexts: tuple[int, ...] = ()  # decode_ms@<c>: one new token after c cached ones
    new_tokens: int | None = None  # a reply: prompt, then this many decode steps (ttft, generate)
    generate_repeats: int = 3  # timed replies per round (a reply is ~new_tokens decode steps)
    # ----- ONNX Runtime session options -----
    graph_optimization: str = "all"  # disable | basic | extended | all
    execution_mode: str = "sequential"  # sequential | parallel
    allow_spinning: bool | None = None  # session.intra_op.allow_spinning; None: ORT's default

    def __post_init__(self) -> None:
        if isinstance(self.decode_contexts, list):  # YAML lists; tuples keep it hashable
            object.__setattr__(self, "decode_contexts", tuple(self.decode_contexts))
        _validate(self)

    @property
    def hash(self) -> str:
        """Stable id of everything that changes a measurement (all fields but `description`).

        The name is included on purpose: two profiles with equal settings but different
        names usually stand for different machines, and a false cache hit is worse than
        a miss. `MEASUREMENT_VERSION` is included so a change of method invalidates caches.
        """
        data = self.to_dict()
        del data["description"]
        for name, default in _LATER_DEFAULTS.items():
            if data[name] == default or (name == "decode_contexts" and not data[name]):
                del data[name]
        data["measurement_version"] = MEASUREMENT_VERSION
        return stable_hash(data)

    @property
    def has_workload(self) -> bool:
        """Whether the profile names a deployment workload beyond one prefill and one decode."""
        return bool(self.decode_contexts) or self.new_tokens is not None

    @property
    def memory_context(self) -> int:
        """The most tokens a sequence of the workload holds: what its KV cache is sized for."""
        reply = self.prompt_len + (self.new_tokens or 0)
        return max([reply, self.past_len + 1, *(c + 1 for c in self.decode_contexts)])

    def workload_metrics(self) -> tuple[str, ...]:
        """The metrics a measurement on this profile yields, beyond prefill_ms and decode_ms."""
        names = [f"latency:{self.name}:decode_ms@{c}" for c in self.decode_contexts]
        if self.new_tokens is not None:
            names += [f"latency:{self.name}:ttft_ms", f"latency:{self.name}:generate_ms",
                      f"throughput:{self.name}:tokens_per_s"]
        if self.has_workload:
            names += [f"memory:{self.name}:peak_mb", f"memory:{self.name}:estimate_mb"]
        return tuple(names)

    def metric_names(self) -> tuple[str, ...]:
        """Every metric a measurement on this profile yields."""
        return (f"latency:{self.name}:prefill_ms", f"latency:{self.name}:decode_ms",
                *self.workload_metrics())

    def memory_estimate_bytes(self, arch: Architecture) -> int:
        """Closed form: the weights at this profile's precision plus ``batch`` KV caches (or
        linear-attention states) at `memory_context`. Activations and the runtime's own
        buffers are not in it; the benchmark reports how far measured peaks are from it."""
        weights = arch.weight_bytes("int8" if self.precision == "int8" else "fp32")
        return weights + self.batch * arch.kv_cache_bytes(self.memory_context)

    @property
    def positions_needed(self) -> int:
        """The longest context the timed graphs see: the prefill graph runs ``prompt_len``
        positions (0 .. prompt_len-1), the decode graph adds one token at position
        ``past_len`` (and at each of ``decode_contexts``), and a reply of ``new_tokens``
        ends at position ``prompt_len + new_tokens - 1``."""
        return max(self.prompt_len, self.memory_context)

    def _timed_shapes(self) -> str:
        parts = [f"prompt_len={self.prompt_len}", f"past_len={self.past_len} (+1 new token)"]
        if self.decode_contexts:
            parts.append(f"decode_contexts={list(self.decode_contexts)} (+1)")
        if self.new_tokens is not None:
            parts.append(f"new_tokens={self.new_tokens} after the prompt")
        return ", ".join(parts[:-1]) + " and " + parts[-1]

    def check_context(self, max_seq_len: int, *, source: str | None, field: str,
                      note: str = "") -> None:
        """Raise `ConfigError` when a model of ``max_seq_len`` positions cannot run this
        profile's shapes: its latency would be timed, and its export configured, for a
        context the model was never meant to hold."""
        if max_seq_len >= self.positions_needed:
            return
        raise ConfigError(
            f"{field}={max_seq_len}{note} is too short for hardware profile {self.name!r}, which "
            f"times {self._timed_shapes()}: needs {field} >= {self.positions_needed}",
            source=source, field=field, value=max_seq_len)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["decode_contexts"] = list(self.decode_contexts)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str | None = None) -> HardwareProfile:
        """Build from a mapping; errors name ``source``, the key and the value."""
        if not isinstance(data, Mapping):
            raise ConfigError(f"a hardware profile must be a mapping, got {type(data).__name__}",
                              source=source)
        known = [f.name for f in dataclasses.fields(cls)]
        for key in data:
            if key not in known:
                raise ConfigError(f"unknown key {key!r} (known: {', '.join(known)})",
                                  source=source, field=str(key), value=data[key])
        if "name" not in data:
            raise ConfigError("missing key 'name'", source=source, field="name")
        try:
            return cls(**dict(data))
        except ConfigError as err:
            if source and err.source is None:
                raise ConfigError(str(err), source=source, field=err.field, value=err.value) from None
            raise


def _fail(field: str, value: Any, reason: str) -> None:
    raise ConfigError(f"{field}={value!r} {reason}", field=field, value=value)


def _validate(p: HardwareProfile) -> None:
    for field in ("name", "provider"):
        value = getattr(p, field)
        if not isinstance(value, str) or not value.strip():
            _fail(field, value, "must be a non-empty string")
    for field, minimum in _MIN_COUNT.items():
        value = getattr(p, field)
        if not isinstance(value, int) or isinstance(value, bool):
            _fail(field, value, "must be an integer")
        if value < minimum:
            _fail(field, value, f"must be >= {minimum}")
    if p.precision not in PRECISIONS:
        _fail("precision", p.precision, f"must be one of {', '.join(PRECISIONS)}")
    if p.ray_resource is not None and (not isinstance(p.ray_resource, str) or not p.ray_resource):
        _fail("ray_resource", p.ray_resource, "must be a non-empty string or absent")
    if not isinstance(p.description, str):
        _fail("description", p.description, "must be a string")
    _validate_workload(p)
    if p.graph_optimization not in GRAPH_OPTIMIZATIONS:
        _fail("graph_optimization", p.graph_optimization,
              f"must be one of {', '.join(GRAPH_OPTIMIZATIONS)}")
    if p.execution_mode not in EXECUTION_MODES:
        _fail("execution_mode", p.execution_mode, f"must be one of {', '.join(EXECUTION_MODES)}")
    if p.execution_mode == "parallel" and p.intra_op_threads < 2:
        # ONNX Runtime makes no inter-op pool for one thread and would silently run sequentially.
        _fail("execution_mode", p.execution_mode,
              f"needs intra_op_threads >= 2 (got {p.intra_op_threads}): with one thread ONNX "
              "Runtime runs sequentially")
    if p.allow_spinning is not None and not isinstance(p.allow_spinning, bool):
        _fail("allow_spinning", p.allow_spinning, "must be true, false or absent")


def _validate_workload(p: HardwareProfile) -> None:
    contexts = p.decode_contexts
    if not isinstance(contexts, tuple) or not all(
            isinstance(c, int) and not isinstance(c, bool) for c in contexts):
        _fail("decode_contexts", list(contexts) if isinstance(contexts, tuple) else contexts,
              "must be a list of integers")
    if any(c < 1 for c in contexts):
        _fail("decode_contexts", list(contexts), "must be >= 1 each")
    if len(set(contexts)) != len(contexts):
        _fail("decode_contexts", list(contexts), "names a context twice")
    if p.new_tokens is not None and (not isinstance(p.new_tokens, int)
                                     or isinstance(p.new_tokens, bool) or p.new_tokens < 1):
        _fail("new_tokens", p.new_tokens, "must be an integer >= 1 or absent")


# ----- loading -----------------------------------------------------------------------------
def _looks_like_path(text: str) -> bool:
    return Path(text).suffix in (".yaml", ".yml") or "/" in text or os.sep in text


def _profile_files() -> dict[str, Path]:
    """Bare name -> shipped file."""
    return shipped_files("hardware_profiles")


def list_profiles() -> list[str]:
    """Names of the profiles `load_profile` resolves without a path."""
    return sorted(_profile_files())


def load_profile_file(path: str | Path) -> HardwareProfile:
    """Load one YAML file; its ``name`` defaults to (and must equal) the file's stem."""
    import yaml  # not at top level: keeps `import nas.hardware` minimal

    path = Path(path)
    source = str(path)
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as err:
        raise NotFoundError(f"{source}: cannot read hardware profile: {err.strerror}") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"not valid YAML: {err}", source=source) from None
    if not isinstance(data, Mapping):
        raise ConfigError(f"a hardware profile must be a mapping, got {type(data).__name__}",
                          source=source)
    data = dict(data)
    name = data.setdefault("name", path.stem)
    if name != path.stem:
        # Metric names carry the profile name; a copied file that kept the old name would
        # silently merge two machines' latencies.
        raise ConfigError(f"name={name!r} must equal the file name {path.stem!r} (or be left out)",
                          source=source, field="name", value=name)
    return HardwareProfile.from_dict(data, source=source)


def load_profile(name_or_path: str | Path) -> HardwareProfile:
    """A shipped profile by name (``"cpu-1t"``) or a YAML file by path."""
    text = str(name_or_path).strip()
    if isinstance(name_or_path, Path) or _looks_like_path(text):
        return load_profile_file(text)
    files = _profile_files()
    if text not in files:
        raise NotFoundError(f"unknown hardware profile {text!r} (available: "
                            f"{', '.join(sorted(files)) or 'none'}; or give a path to a .yaml file)")
    return load_profile_file(files[text])


def load_profiles(spec: str | Iterable[str | Path]) -> tuple[HardwareProfile, ...]:
    """Several profiles from ``"cpu-1t,cpu-2t"`` or an iterable of names/paths."""
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    profiles = tuple(load_profile(item) for item in items if str(item).strip())
    if not profiles:
        raise ConfigError("no hardware profile given", field="profiles", value=spec)
    names = [p.name for p in profiles]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ConfigError(f"hardware profile {duplicates[0]!r} is given twice",
                          field="profiles", value=spec)
    return profiles


def check_available(profile: HardwareProfile) -> None:
    """Raise `ProviderError` if the installed ONNX Runtime lacks the profile's provider."""
    import onnxruntime

    available = onnxruntime.get_available_providers()
    if profile.provider not in available:
        raise ProviderError(
            f"provider={profile.provider!r} is not available in onnxruntime "
            f"{onnxruntime.__version__} (available: {', '.join(available)})",
            source=f"hardware profile {profile.name!r}", field="provider", value=profile.provider)
